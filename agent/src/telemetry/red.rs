//! RED metrics from typed records (never from span attributes).
use std::{borrow::Cow, sync::Arc};

use smallvec::smallvec;

use crate::{
    connections::ConnInfo,
    event::Role,
    metrics::{self, Labels, Registry},
    protocols::{db::DbCall, http::Exchange, http2::GrpcCall},
    spans::{self, Resource},
};

/// `route`: the request's `http.route` (`route::route`), computed once per
/// exchange by the caller.
pub fn http(
    reg: &mut Registry,
    c: &ConnInfo,
    ex: &Exchange,
    route: &str,
    secs: f64,
    resource: &Arc<Resource>,
) {
    let status = ex.response.head.status;
    let mut digits = itoa::Buffer::new();
    let status_text = digits.format(status);
    let mut port_digits = itoa::Buffer::new();
    let mut labels: Labels = smallvec![
        (
            "http.request.method",
            spans::http::method_label(&ex.request.head.method).into(),
        ),
        ("http.response.status_code", status_text.into()),
        ("network.protocol.version", ex.version().into()),
    ];
    if let Some(code) = ex.h2.as_ref().and_then(|h| h.reset) {
        labels.push(("error.type", format!("RST_STREAM {code}").into()));
    } else if spans::http::failed(c.role, status) {
        labels.push(("error.type", status_text.into()));
    }
    let (duration, request_size, response_size) = if c.role == Role::Server {
        labels.push(("http.route", route.into()));
        labels.push(("url.scheme", spans::http::scheme(c).into()));
        (
            &metrics::HTTP_SERVER_DURATION,
            &metrics::HTTP_SERVER_REQUEST_SIZE,
            &metrics::HTTP_SERVER_RESPONSE_SIZE,
        )
    } else {
        let (address, port) = spans::http::client_server(c, ex);
        labels.push(("server.address", address));
        labels.push(("server.port", port_digits.format(port).into()));
        (
            &metrics::HTTP_CLIENT_DURATION,
            &metrics::HTTP_CLIENT_REQUEST_SIZE,
            &metrics::HTTP_CLIENT_RESPONSE_SIZE,
        )
    };
    reg.record_all(
        [
            (duration, secs),
            (request_size, ex.request.body_bytes as f64),
            (response_size, ex.response.body_bytes as f64),
        ],
        resource,
        labels,
    );
}

/// A gRPC call: `rpc.server.duration` / `rpc.client.duration`.
pub fn rpc(
    reg: &mut Registry,
    c: &ConnInfo,
    ex: &Exchange,
    g: &GrpcCall,
    secs: f64,
    resource: &Arc<Resource>,
) {
    let code = spans::rpc::status_code(ex, g);
    let mut port_digits = itoa::Buffer::new();
    let mut labels: Labels = smallvec![
        ("rpc.system", "grpc".into()),
        ("rpc.service", g.service.as_str().into()),
        ("rpc.method", g.method.as_str().into()),
        ("rpc.grpc.status_code", code.to_string().into()),
    ];
    if spans::rpc::failed(c.role, code) {
        labels.push(("error.type", spans::rpc::error_type(code).into()));
    }
    let duration = if c.role == Role::Server {
        &metrics::RPC_SERVER_DURATION
    } else {
        let (address, port) = spans::http::client_server(c, ex);
        labels.push(("server.address", address));
        labels.push(("server.port", port_digits.format(port).into()));
        &metrics::RPC_CLIENT_DURATION
    };
    // These two are in milliseconds (semantic conventions).
    reg.record(duration, resource, labels, secs * 1000.0);
}

/// A served request's self time (`self_time.rs`), by method and route.
pub fn http_self(
    reg: &mut Registry,
    ex: &Exchange,
    route: &str,
    secs: f64,
    resource: &Arc<Resource>,
) {
    let labels: Labels = smallvec![
        (
            "http.request.method",
            spans::http::method_label(&ex.request.head.method).into(),
        ),
        ("http.route", route.into()),
    ];
    reg.record(&metrics::REQUEST_SELF_DURATION, resource, labels, secs);
}

/// A processed message's self time, by queue.
pub fn process_self(reg: &mut Registry, dest: &str, secs: f64, resource: &Arc<Resource>) {
    let labels: Labels = smallvec![
        ("messaging.system", "rabbitmq".into()),
        ("messaging.operation.name", "process".into()),
        ("messaging.destination.name", destination(dest)),
    ];
    reg.record(&metrics::REQUEST_SELF_DURATION, resource, labels, secs);
}

/// A queue's name in metrics: the default exchange's by its name.
fn destination(dest: &str) -> Cow<'_, str> {
    if dest.is_empty() {
        "amq.default".into()
    } else {
        dest.into()
    }
}

pub fn db(reg: &mut Registry, c: &ConnInfo, call: &DbCall, secs: f64, resource: &Arc<Resource>) {
    let mut port_digits = itoa::Buffer::new();
    // On the stack: the label borrows it, and the registry copies it only
    // for a new series.
    let peer = c.remote();
    let address = peer.map(|p| spans::IpText::new(p.ip()));
    let mut labels: Labels = smallvec![("db.system.name", call.system.as_str().into())];
    if !call.operation.is_empty() {
        labels.push(("db.operation.name", call.operation.as_str().into()));
    }
    if let Some(col) = &call.collection {
        labels.push(("db.collection.name", col.as_str().into()));
    }
    if let Some(ns) = &call.namespace {
        labels.push(("db.namespace", ns.as_str().into()));
    }
    if let Some(e) = &call.error {
        labels.push(("error.type", e.code.as_str().into()));
    }
    if let (Some(peer), Some(address)) = (peer, address.as_deref()) {
        labels.push(("server.address", address.into()));
        labels.push(("server.port", port_digits.format(peer.port()).into()));
    }
    reg.record(&metrics::DB_CLIENT_DURATION, resource, labels, secs);
}

/// The messaging operations metrics are recorded for.
pub enum Messaging {
    Publish,
    Process,
    /// A Basic.Get; `got`: a message came (not GetEmpty).
    Get {
        got: bool,
    },
}

/// `error.type` of a publish: the broker returned it, or nacked it.
pub fn publish_error(confirmed: Option<bool>, returned: &Option<(u16, String)>) -> Option<String> {
    match (returned, confirmed) {
        (Some((code, _)), _) => Some(code.to_string()),
        (None, Some(false)) => Some("nack".into()),
        _ => None,
    }
}

pub fn messaging(
    reg: &mut Registry,
    op: Messaging,
    dest: &str,
    secs: f64,
    error: Option<&str>,
    resource: &Arc<Resource>,
) {
    let (name, duration, count) = match op {
        Messaging::Publish => (
            "publish",
            &metrics::MESSAGING_CLIENT_DURATION,
            Some(&metrics::MESSAGING_SENT),
        ),
        Messaging::Process => (
            "process",
            &metrics::MESSAGING_PROCESS_DURATION,
            Some(&metrics::MESSAGING_CONSUMED),
        ),
        Messaging::Get { got } => (
            "get",
            &metrics::MESSAGING_CLIENT_DURATION,
            got.then_some(&metrics::MESSAGING_CONSUMED),
        ),
    };
    let mut labels: Labels = smallvec![
        ("messaging.system", "rabbitmq".into()),
        ("messaging.operation.name", name.into()),
        ("messaging.destination.name", destination(dest)),
    ];
    if let Some(e) = error {
        labels.push(("error.type", e.into()));
    }
    match count {
        Some(count) => reg.record_all([(duration, secs), (count, 1.0)], resource, labels),
        None => reg.record(duration, resource, labels, secs),
    }
}
