//! RabbitMQ operations to PRODUCER / CONSUMER spans (stable messaging
//! semantic conventions), and the publish -> deliver continuity index.
use std::sync::Arc;

use super::{Attributes, Resource, Span, SpanCtx, SpanKind, Status, Value};
use crate::{
    clock::Clock,
    connections::ConnInfo,
    protocols::{
        amqp::{Message, Outcome},
        SegTime,
    },
};

/// The default exchange has an empty name; semconv calls it this.
fn exchange_name(e: &str) -> &str {
    if e.is_empty() {
        "amq.default"
    } else {
        e
    }
}

fn common(conn: &ConnInfo, msg: &Message, a: &mut Attributes) {
    a.push(("messaging.system", "rabbitmq".into()));
    if !msg.routing_key.is_empty() {
        a.push((
            "messaging.rabbitmq.destination.routing_key",
            msg.routing_key.clone().into(),
        ));
    }
    if let Some(id) = &msg.props.message_id {
        a.push(("messaging.message.id", id.clone().into()));
    }
    if let Some(c) = &msg.props.correlation_id {
        a.push(("messaging.message.conversation_id", c.clone().into()));
    }
    a.push((
        "messaging.message.body.size",
        Value::Int(msg.body_size as i64),
    ));
    if let Some(peer) = conn.remote() {
        a.push(("server.address", Value::Ip(peer.ip())));
        a.push(("server.port", Value::Int(peer.port() as i64)));
        a.push(("network.peer.address", Value::Ip(peer.ip())));
        a.push(("network.peer.port", Value::Int(peer.port() as i64)));
    }
}

#[allow(clippy::too_many_arguments)]
fn span(
    kind: SpanKind,
    name: String,
    a: Attributes,
    status: Status,
    start: u64,
    end: u64,
    ctx: &SpanCtx,
    clock: &Clock,
    resource: Arc<Resource>,
) -> Span {
    Span {
        trace_id: ctx.trace_id,
        span_id: ctx.span_id,
        parent_span_id: ctx.parent_span_id,
        trace_state: String::new(),
        kind,
        name,
        start_unix_ns: clock.unix_ns(start),
        end_unix_ns: clock.unix_ns(end.max(start)),
        attributes: a,
        status,
        resource,
    }
}

#[allow(clippy::too_many_arguments)]
pub fn publish(
    conn: &ConnInfo,
    msg: &Message,
    first: SegTime,
    last: SegTime,
    confirmed: Option<bool>,
    returned: &Option<(u16, String)>,
    ctx: &SpanCtx,
    clock: &Clock,
    resource: Arc<Resource>,
) -> Span {
    let dest = exchange_name(&msg.exchange).to_string();
    let mut a: Attributes = vec![
        ("messaging.operation.type", "send".into()),
        ("messaging.operation.name", "publish".into()),
        ("messaging.destination.name", dest.clone().into()),
    ];
    common(conn, msg, &mut a);
    if let Some(c) = confirmed {
        a.push(("messaging.rabbitmq.publish.confirmed", Value::Bool(c)));
    }
    let status = match (returned, confirmed) {
        (Some((code, text)), _) => {
            a.push(("error.type", format!("{code}").into()));
            Status::Error(format!("returned: {code} {text}"))
        }
        (None, Some(false)) => {
            a.push(("error.type", "nack".into()));
            Status::Error("broker nacked the publish".into())
        }
        _ => Status::Unset,
    };
    span(
        SpanKind::Producer,
        format!("publish {dest}"),
        a,
        status,
        first.enter_ns,
        last.exit_ns,
        ctx,
        clock,
        resource,
    )
}

#[allow(clippy::too_many_arguments)]
pub fn consume(
    conn: &ConnInfo,
    msg: &Message,
    queue: Option<&str>,
    delivery_tag: Option<u64>,
    operation: &'static str,
    outcome: Option<Outcome>,
    start: u64,
    end: u64,
    ctx: &SpanCtx,
    clock: &Clock,
    resource: Arc<Resource>,
) -> Span {
    let dest = queue
        .filter(|q| !q.is_empty())
        .unwrap_or(exchange_name(&msg.exchange))
        .to_string();
    let mut a: Attributes = vec![
        ("messaging.operation.type", operation.into()),
        (
            "messaging.operation.name",
            if operation == "receive" {
                "get"
            } else {
                "process"
            }
            .into(),
        ),
        ("messaging.destination.name", dest.clone().into()),
    ];
    common(conn, msg, &mut a);
    if let Some(t) = delivery_tag {
        a.push((
            "messaging.rabbitmq.message.delivery_tag",
            Value::Int(t as i64),
        ));
    }
    if let Some(o) = outcome {
        a.push((
            "messaging.rabbitmq.message.outcome",
            format!("{o:?}").to_ascii_lowercase().into(),
        ));
    }
    let name = format!("{operation} {dest}");
    span(
        SpanKind::Consumer,
        name,
        a,
        Status::Unset,
        start,
        end,
        ctx,
        clock,
        resource,
    )
}
