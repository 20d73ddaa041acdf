//! HTTP exchanges to SERVER / CLIENT spans with the stable HTTP semantic
//! conventions.
use std::{borrow::Cow, net::SocketAddr};

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

/// The `http.request.method` value: the method, if the conventions name
/// it, else `_OTHER` (the original then goes in `method_original`).
pub fn method_label(m: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|k| **k == m)
        .copied()
        .unwrap_or("_OTHER")
}

/// `host[:port]` from a Host header.
fn split_host(h: &str) -> (&str, Option<u16>) {
    if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port
        let (ip, tail) = rest.split_once(']').unwrap_or((rest, ""));
        return (ip, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (h, None),
    }
}

/// A client's `server.address` and `server.port`: the Host header, else
/// the peer.
pub fn server_of(
    host: Option<(&str, Option<u16>)>,
    peer: Option<SocketAddr>,
) -> (Cow<'_, str>, u16) {
    match (host, peer) {
        (Some((h, p)), peer) => (h.into(), p.or(peer.map(|x| x.port())).unwrap_or(80)),
        (None, Some(p)) => (super::ip_text(p.ip()).into(), p.port()),
        (None, None) => ("unknown".into(), 80),
    }
}

/// The client's view of the server it called.
pub fn client_server<'a>(conn: &ConnInfo, ex: &'a Exchange) -> (Cow<'a, str>, u16) {
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
    let m = method_label(&req.method);
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
    a.push(("http.request.method", Value::fixed(m)));
    if m == "_OTHER" {
        a.push(("http.request.method_original", req.method.as_str().into()));
    }
    a.push(("http.response.status_code", Value::Int(status as i64)));
    a.push(("network.protocol.name", Value::fixed("http")));
    a.push(("network.protocol.version", Value::fixed(ex.version())));
    let tuple = conn.tuple;
    let peer: Option<SocketAddr> = tuple.map(|t| t.remote);
    if let Some(p) = peer {
        a.push(("network.peer.address", Value::Ip(p.ip())));
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
        a.push(("url.scheme", Value::fixed(scheme(conn))));
        a.push(("http.route", r.into()));
        let local = tuple.map(|t| t.local);
        match (&host, local) {
            (Some((h, port)), l) => {
                a.push(("server.address", (*h).into()));
                if let Some(port) = port.or(l.map(|l| l.port())) {
                    a.push(("server.port", Value::Int(port as i64)));
                }
            }
            (None, Some(l)) => {
                a.push(("server.address", Value::Ip(l.ip())));
                a.push(("server.port", Value::Int(l.port() as i64)));
            }
            (None, None) => {}
        }
        if let Some(p) = peer {
            a.push(("client.address", Value::Ip(p.ip())));
        }
    } else {
        let (addr, port) = server_of(host, peer);
        a.push(("server.address", addr.as_ref().into()));
        a.push(("server.port", Value::Int(port as i64)));
        a.push((
            "url.full",
            url_full(conn, &addr, port, &req.target, query.as_deref()).into(),
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
        a.push((
            "error.type",
            itoa::Buffer::new().format(status).to_owned().into(),
        ));
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
        let mut n = String::with_capacity(m.len() + 1 + r.len());
        n.push_str(m);
        n.push(' ');
        n.push_str(r);
        n
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

/// A client's `url.full`: scheme, authority (the port only when not the
/// scheme's default), path and query, written without `fmt`.
fn url_full(conn: &ConnInfo, host: &str, port: u16, target: &str, query: Option<&str>) -> String {
    let scheme = scheme(conn);
    let path = route::path(target);
    let default_port = if conn.tls { 443 } else { 80 };
    let mut digits = itoa::Buffer::new();
    let port = if port == default_port {
        ""
    } else {
        digits.format(port)
    };
    let q = query.unwrap_or("");
    let mut u = String::with_capacity(
        scheme.len() + 4 + host.len() + port.len() + path.len() + 1 + q.len(),
    );
    u.push_str(scheme);
    u.push_str("://");
    u.push_str(host);
    if !port.is_empty() {
        u.push(':');
        u.push_str(port);
    }
    u.push_str(path);
    if query.is_some() {
        u.push('?');
        u.push_str(q);
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers() {
        assert_eq!(split_host("example.com:8080"), ("example.com", Some(8080)));
        assert_eq!(split_host("example.com"), ("example.com", None));
        assert_eq!(split_host("[::1]:9000"), ("::1", Some(9000)));
        assert_eq!(split_host("::1"), ("::1", None));
    }

    #[test]
    fn unknown_methods_are_other() {
        assert_eq!(method_label("PURGE"), "_OTHER");
        assert_eq!(method_label("GET"), "GET");
    }
}
