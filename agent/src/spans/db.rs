//! Database calls to CLIENT spans with the stable DB semantic conventions.
use std::sync::Arc;

use super::{Attributes, Resource, Span, SpanCtx, SpanKind, Status, Value};
use crate::{clock::Clock, connections::ConnInfo, protocols::db::DbCall};

pub fn build(
    conn: &ConnInfo,
    call: DbCall,
    ctx: &SpanCtx,
    clock: &Clock,
    resource: Arc<Resource>,
) -> Span {
    // Room for every attribute below but the error's, and for the link's
    // evidence that telemetry adds: one allocation.
    let mut a: Attributes = Vec::with_capacity(11);
    a.push(("db.system.name", call.system.as_str().into()));
    // The name first: it borrows what the attributes then take.
    let name = match (&call.operation, &call.collection) {
        (op, Some(c)) if !op.is_empty() => format!("{op} {c}"),
        (op, None) if !op.is_empty() => op.clone(),
        _ => call.system.as_str().to_string(),
    };
    if let Some(ns) = call.namespace {
        a.push(("db.namespace", ns.into()));
    }
    if !call.operation.is_empty() {
        a.push(("db.operation.name", call.operation.into()));
    }
    if let Some(c) = call.collection {
        a.push(("db.collection.name", c.into()));
    }
    if !call.query_text.is_empty() {
        a.push(("db.query.text", call.query_text.into()));
    }
    if let Some(rows) = call.rows {
        a.push(("db.response.returned_rows", Value::Int(rows as i64)));
    }
    if let Some(peer) = conn.remote() {
        a.push(("server.address", Value::Ip(peer.ip())));
        a.push(("server.port", Value::Int(peer.port() as i64)));
        a.push(("network.peer.address", Value::Ip(peer.ip())));
        a.push(("network.peer.port", Value::Int(peer.port() as i64)));
    }
    let status = match call.error {
        Some(e) => {
            a.push(("db.response.status_code", e.code.clone().into()));
            a.push(("error.type", e.code.into()));
            Status::Error(e.message)
        }
        None => Status::Unset,
    };
    let start = call.first.enter_ns;
    Span {
        trace_id: ctx.trace_id,
        span_id: ctx.span_id,
        parent_span_id: ctx.parent_span_id,
        trace_state: String::new(),
        kind: SpanKind::Client,
        name,
        start_unix_ns: clock.unix_ns(start),
        end_unix_ns: clock.unix_ns(call.last.exit_ns.max(start)),
        attributes: a,
        status,
        resource,
    }
}
