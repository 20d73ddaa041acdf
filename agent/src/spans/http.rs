//! HTTP exchanges to SERVER / CLIENT spans with the stable HTTP semantic
//! conventions.
use std::net::SocketAddr;

use super::{traceparent, Attributes, Span, SpanCtx, SpanKind, Status, Value};
use crate::{
    clock::Clock,
    connections::ConnInfo,
    event::Role,
    protocols::http::{route, Exchange},
};

/// Methods the semantic conventions name; anything else is `_OTHER`.
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

#[derive(Debug, Clone, Copy, Default)]
pub struct HttpSpanOptions {
    /// Keep `url.query` values (off: values become REDACTED).
    pub keep_query_values: bool,
}

/// The `http.request.method` value, and the original when it is not a known one.
pub fn method(m: &str) -> (String, Option<String>) {
    if KNOWN_METHODS.contains(&m) {
        (m.to_string(), None)
    } else {
        ("_OTHER".into(), Some(m.to_string()))
    }
}

/// `host[:port]` from a Host header.
fn split_host(h: &str) -> (String, Option<u16>) {
    if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port
        let (ip, tail) = rest.split_once(']').unwrap_or((rest, ""));
        return (
            ip.to_string(),
            tail.strip_prefix(':').and_then(|p| p.parse().ok()),
        );
    }
    match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host.to_string(), port.parse().ok()),
        _ => (h.to_string(), None),
    }
}

/// A client's `server.address` and `server.port`: the Host header, else
/// the peer.
pub fn server_of(host: Option<(String, Option<u16>)>, peer: Option<SocketAddr>) -> (String, u16) {
    match (host, peer) {
        (Some((h, p)), peer) => (h, p.or(peer.map(|x| x.port())).unwrap_or(80)),
        (None, Some(p)) => (super::ip_text(p.ip()), p.port()),
        (None, None) => ("unknown".into(), 80),
    }
}

/// The client's view of the server it called.
pub fn client_server(conn: &ConnInfo, ex: &Exchange) -> (String, u16) {
    server_of(
        ex.request.head.host.as_deref().map(split_host),
        conn.remote(),
    )
}

/// `https` for TLS plaintext read from the library's calls.
pub fn scheme(conn: &ConnInfo) -> &'static str {
    if conn.tls {
        "https"
    } else {
        "http"
    }
}

/// Whether the exchange failed, seen from `role` (a client also counts 4xx).
pub fn failed(role: Role, status: u16) -> bool {
    if role == Role::Server {
        status >= 500
    } else {
        status >= 400
    }
}

/// Whether an exchange failed, seen from `role`: its status, a reset
/// stream, or a gRPC call's status.
pub fn exchange_failed(role: Role, ex: &Exchange) -> bool {
    match ex.h2.as_ref() {
        Some(h) => match &h.grpc {
            Some(g) => super::rpc::failed(role, super::rpc::status_code(ex, g)),
            None => h.reset.is_some() || failed(role, ex.response.head.status),
        },
        None => failed(role, ex.response.head.status),
    }
}

/// `r`: the request's route (`route::route`), computed once per exchange.
pub fn build(
    conn: &ConnInfo,
    ex: &Exchange,
    r: &str,
    ctx: &SpanCtx,
    clock: &Clock,
    opts: HttpSpanOptions,
    resource: std::sync::Arc<super::Resource>,
) -> Span {
    let req = &ex.request.head;
    let resp = &ex.response.head;
    let server = conn.role == Role::Server;
    let (m, original) = method(&req.method);
    // Server: from the read that delivered the first request byte (its
    // entry may be an idle wait). Client: from the write of the first byte.
    let start = if server {
        ex.request.first.exit_ns
    } else {
        ex.request.first.enter_ns
    };
    let end = ex.response.last.exit_ns.max(start);
    let status = resp.status;

    // Room for every attribute below, so that building never regrows.
    let mut a: Attributes = Vec::with_capacity(20);
    a.push(("http.request.method", m.clone().into()));
    if let Some(o) = original {
        a.push(("http.request.method_original", o.into()));
    }
    a.push(("http.response.status_code", Value::Int(status as i64)));
    a.push(("network.protocol.name", "http".into()));
    a.push(("network.protocol.version", ex.version().into()));
    let tuple = conn.tuple;
    let peer: Option<SocketAddr> = tuple.map(|t| t.remote);
    // Written once: a server span names the peer twice.
    let peer_address = peer.map(|p| super::ip_text(p.ip()));
    if let (Some(p), Some(address)) = (peer, &peer_address) {
        a.push(("network.peer.address", address.clone().into()));
        a.push(("network.peer.port", Value::Int(p.port() as i64)));
    }
    let host = req.host.as_deref().map(split_host);
    let query = route::query(&req.target).map(|q| {
        if opts.keep_query_values {
            q.to_string()
        } else {
            route::redact_query(q)
        }
    });
    if server {
        a.push(("url.path", route::path(&req.target).to_string().into()));
        if let Some(q) = &query {
            a.push(("url.query", q.clone().into()));
        }
        a.push(("url.scheme", scheme(conn).into()));
        a.push(("http.route", r.into()));
        let local = tuple.map(|t| t.local);
        match (&host, local) {
            (Some((h, port)), l) => {
                a.push(("server.address", h.clone().into()));
                if let Some(port) = port.or(l.map(|l| l.port())) {
                    a.push(("server.port", Value::Int(port as i64)));
                }
            }
            (None, Some(l)) => {
                a.push(("server.address", super::ip_text(l.ip()).into()));
                a.push(("server.port", Value::Int(l.port() as i64)));
            }
            (None, None) => {}
        }
        if let Some(address) = peer_address {
            a.push(("client.address", address.into()));
        }
    } else {
        let (addr, port) = server_of(host, peer);
        a.push(("server.address", addr.clone().into()));
        a.push(("server.port", Value::Int(port as i64)));
        let default_port = if conn.tls { 443 } else { 80 };
        let authority = if port == default_port {
            addr
        } else {
            format!("{addr}:{port}")
        };
        let q = query.as_ref().map(|q| format!("?{q}")).unwrap_or_default();
        a.push((
            "url.full",
            format!(
                "{}://{authority}{}{q}",
                scheme(conn),
                route::path(&req.target)
            )
            .into(),
        ));
    }
    if let Some(ua) = &req.user_agent {
        a.push(("user_agent.original", ua.clone().into()));
    }
    a.push((
        "http.request.body.size",
        Value::Int(ex.request.body_bytes as i64),
    ));
    a.push((
        "http.response.body.size",
        Value::Int(ex.response.body_bytes as i64),
    ));
    let reset = ex.h2.as_ref().and_then(|h| h.reset);
    let error = failed(conn.role, status) || reset.is_some();
    if let Some(code) = reset {
        a.push(("error.type", format!("RST_STREAM {code}").into()));
    } else if error {
        a.push(("error.type", status.to_string().into()));
    }

    // The tracestate travels with the traceparent's trace.
    let tp = req
        .traceparent
        .as_deref()
        .and_then(traceparent::parse)
        .filter(|tp| tp.trace_id == ctx.trace_id);
    let name = if m == "_OTHER" {
        "HTTP".to_string()
    } else {
        format!("{m} {r}")
    };
    Span {
        trace_id: ctx.trace_id,
        span_id: ctx.span_id,
        parent_span_id: ctx.parent_span_id,
        trace_state: if tp.is_some() {
            req.tracestate.clone().unwrap_or_default()
        } else {
            String::new()
        },
        kind: if server {
            SpanKind::Server
        } else {
            SpanKind::Client
        },
        name,
        start_unix_ns: clock.unix_ns(start),
        end_unix_ns: clock.unix_ns(end),
        attributes: a,
        status: if let Some(code) = reset {
            Status::Error(format!("stream reset (error code {code})"))
        } else if error {
            Status::Error(format!("HTTP {status}"))
        } else {
            Status::Unset
        },
        resource,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers() {
        assert_eq!(
            split_host("example.com:8080"),
            ("example.com".into(), Some(8080))
        );
        assert_eq!(split_host("example.com"), ("example.com".into(), None));
        assert_eq!(split_host("[::1]:9000"), ("::1".into(), Some(9000)));
        assert_eq!(split_host("::1"), ("::1".into(), None));
    }

    #[test]
    fn unknown_methods_are_other() {
        assert_eq!(method("PURGE"), ("_OTHER".into(), Some("PURGE".into())));
        assert_eq!(method("GET"), ("GET".into(), None));
    }
}
