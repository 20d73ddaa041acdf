//! gRPC calls (HTTP/2 exchanges with a gRPC content type) to SERVER /
//! CLIENT spans with the RPC semantic conventions.
use super::{http, Attributes, Span, SpanCtx, SpanKind, Status, Value};
use crate::{
    clock::Clock,
    connections::ConnInfo,
    event::Role,
    protocols::{http::Exchange, http2::GrpcCall},
};

/// Status code names (grpc/doc/statuscodes.md), for `error.type`.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The call's status: its trailers' `grpc-status`; a stream reset or
/// ended without one was cancelled (1) or failed (2) as the client saw it.
pub fn status_code(ex: &Exchange, g: &GrpcCall) -> u32 {
    match (g.status, ex.h2.as_ref().and_then(|h| h.reset)) {
        (Some(s), _) => s,
        // RST_STREAM CANCEL (0x8).
        (None, Some(8)) => 1,
        _ => 2,
    }
}

/// Whether the call failed, seen from `role`: a client counts every
/// non-OK status; a server only those that are its own fault (semconv).
pub fn failed(role: Role, code: u32) -> bool {
    if role == Role::Server {
        matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
    } else {
        code != 0
    }
}

pub fn error_type(code: u32) -> String {
    CODES
        .get(code as usize)
        .map_or_else(|| code.to_string(), |s| s.to_string())
}

pub fn build(
    conn: &ConnInfo,
    ex: &Exchange,
    g: &GrpcCall,
    ctx: &SpanCtx,
    clock: &Clock,
    resource: std::sync::Arc<super::Resource>,
) -> Span {
    let server = conn.role == Role::Server;
    let start = if server {
        ex.request.first.exit_ns
    } else {
        ex.request.first.enter_ns
    };
    let end = ex.response.last.exit_ns.max(start);
    let code = status_code(ex, g);
    let mut a: Attributes = vec![
        ("rpc.system", "grpc".into()),
        ("rpc.service", g.service.clone().into()),
        ("rpc.method", g.method.clone().into()),
        ("rpc.grpc.status_code", Value::Int(code as i64)),
        ("network.protocol.name", "http".into()),
        ("network.protocol.version", "2".into()),
        ("network.transport", "tcp".into()),
    ];
    if let Some(p) = conn.remote() {
        a.push(("network.peer.address", Value::Ip(p.ip())));
        a.push(("network.peer.port", Value::Int(p.port() as i64)));
    }
    let (address, port) = if server {
        let local = conn.tuple.map(|t| t.local);
        (
            local.map_or_else(|| "unknown".into(), |l| super::ip_text(l.ip()).into()),
            local.map_or(0, |l| l.port()),
        )
    } else {
        http::client_server(conn, ex)
    };
    a.push(("server.address", String::from(address).into()));
    a.push(("server.port", Value::Int(port as i64)));
    if let Some(n) = g.sent {
        a.push(("sonde.rpc.request.messages", Value::Int(n as i64)));
    }
    if let Some(n) = g.received {
        a.push(("sonde.rpc.response.messages", Value::Int(n as i64)));
    }
    let error = failed(conn.role, code);
    if error {
        a.push(("error.type", error_type(code).into()));
    }
    Span {
        trace_id: ctx.trace_id,
        span_id: ctx.span_id,
        parent_span_id: ctx.parent_span_id,
        trace_state: String::new(),
        kind: if server {
            SpanKind::Server
        } else {
            SpanKind::Client
        },
        name: format!("{}/{}", g.service, g.method),
        start_unix_ns: clock.unix_ns(start),
        end_unix_ns: clock.unix_ns(end),
        attributes: a,
        status: if error {
            Status::Error(match &g.message {
                Some(m) if !m.is_empty() => format!("{}: {m}", error_type(code)),
                _ => error_type(code),
            })
        } else {
            Status::Unset
        },
        resource,
    }
}
