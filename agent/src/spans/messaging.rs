//! RabbitMQ operations to PRODUCER / CONSUMER spans (stable messaging
//! semantic conventions), and the publish -> deliver continuity index.
use std::{
    collections::{hash_map::DefaultHasher, HashMap, VecDeque},
    hash::{Hash, Hasher},
    sync::Arc,
};

use super::{new_span_id, new_trace_id, Attributes, Resource, Span, SpanKind, Status, Value};
use crate::{
    conntrack::ConnInfo,
    linker::SpanCtx,
    output::Clock,
    protocols::{
        amqp::{Message, Outcome},
        SegTime,
    },
};

/// The default exchange has an empty name; semconv calls it this.
fn exchange_name(e: &str) -> &str {
    if e.is_empty() { "amq.default" } else { e }
}

fn common(conn: &ConnInfo, msg: &Message, a: &mut Attributes) {
    a.push(("messaging.system", "rabbitmq".into()));
    if !msg.routing_key.is_empty() {
        a.push(("messaging.rabbitmq.destination.routing_key", msg.routing_key.clone().into()));
    }
    if let Some(id) = &msg.props.message_id {
        a.push(("messaging.message.id", id.clone().into()));
    }
    if let Some(c) = &msg.props.correlation_id {
        a.push(("messaging.message.conversation_id", c.clone().into()));
    }
    a.push(("messaging.message.body.size", Value::Int(msg.body_size as i64)));
    if let Some(peer) = conn.remote() {
        a.push(("server.address", peer.ip().to_string().into()));
        a.push(("server.port", Value::Int(peer.port() as i64)));
        a.push(("network.peer.address", peer.ip().to_string().into()));
        a.push(("network.peer.port", Value::Int(peer.port() as i64)));
    }
}

fn span(kind: SpanKind, name: String, a: Attributes, status: Status, start: u64, end: u64, clock: &Clock, resource: Arc<Resource>) -> Span {
    Span {
        trace_id: new_trace_id(),
        span_id: new_span_id(),
        parent_span_id: None,
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
    span(SpanKind::Producer, format!("publish {dest}"), a, status, first.enter_ns, last.exit_ns, clock, resource)
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
    clock: &Clock,
    resource: Arc<Resource>,
) -> Span {
    let dest = queue.filter(|q| !q.is_empty()).unwrap_or(exchange_name(&msg.exchange)).to_string();
    let mut a: Attributes = vec![
        ("messaging.operation.type", operation.into()),
        ("messaging.operation.name", if operation == "receive" { "get" } else { "process" }.into()),
        ("messaging.destination.name", dest.clone().into()),
    ];
    common(conn, msg, &mut a);
    if let Some(t) = delivery_tag {
        a.push(("messaging.rabbitmq.message.delivery_tag", Value::Int(t as i64)));
    }
    if let Some(o) = outcome {
        a.push(("messaging.rabbitmq.message.outcome", format!("{o:?}").to_ascii_lowercase().into()));
    }
    let name = format!("{operation} {dest}");
    span(SpanKind::Consumer, name, a, Status::Unset, start, end, clock, resource)
}

/// Publishes remembered for matching deliveries that carry no traceparent.
///
/// Key: exchange, routing key, message id, correlation id, body size and
/// the body prefix. A delivery takes the most recent publish with its key
/// within `WINDOW_NS`; a publish is not consumed by a match, so fan-out (one
/// publish, several queues) gives each consumer the same parent. Identical
/// messages published within the window are ambiguous: the latest wins.
#[derive(Default)]
pub struct Continuity {
    by_key: HashMap<u64, VecDeque<(u64, Publish)>>,
    order: VecDeque<(u64, u64)>,
}

/// What a delivery learns from the publish it matched: its parent, and the
/// publisher's side of the service-graph edge.
#[derive(Clone)]
pub struct Publish {
    pub ctx: SpanCtx,
    pub producer: Arc<Resource>,
    pub secs: f64,
}

pub const WINDOW_NS: u64 = 60_000_000_000;
const MAX_ENTRIES: usize = 100_000;

pub fn message_key(m: &Message) -> u64 {
    let mut h = DefaultHasher::new();
    (&m.exchange, &m.routing_key, &m.props.message_id, &m.props.correlation_id, m.body_size, &m.body_prefix).hash(&mut h);
    h.finish()
}

impl Continuity {
    pub fn published(&mut self, key: u64, at_ns: u64, publish: Publish) {
        self.expire(at_ns);
        self.by_key.entry(key).or_default().push_back((at_ns, publish));
        self.order.push_back((at_ns, key));
    }

    pub fn lookup(&mut self, key: u64, at_ns: u64) -> Option<Publish> {
        self.expire(at_ns);
        self.by_key.get(&key)?.iter().rev().find(|(t, _)| *t <= at_ns).map(|(_, p)| p.clone())
    }

    fn expire(&mut self, now: u64) {
        while let Some(&(t, key)) = self.order.front() {
            if self.order.len() <= MAX_ENTRIES && now.saturating_sub(t) < WINDOW_NS {
                break;
            }
            self.order.pop_front();
            if let Some(q) = self.by_key.get_mut(&key) {
                q.pop_front();
                if q.is_empty() {
                    self.by_key.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(n: u8) -> SpanCtx {
        SpanCtx { trace_id: [n; 16], span_id: [n; 8], parent_span_id: None, sampled: true }
    }

    fn publish(n: u8) -> Publish {
        Publish { ctx: ctx(n), producer: Arc::new(Resource { service_name: "producer".into(), service_namespace: None, attributes: vec![] }), secs: 0.001 }
    }

    #[test]
    fn latest_publish_within_the_window_wins_and_fan_out_shares_it() {
        let mut c = Continuity::default();
        c.published(1, 100, publish(1));
        c.published(1, 200, publish(2));
        let found = |c: &mut Continuity, key, at| c.lookup(key, at).map(|p| p.ctx);
        assert_eq!(found(&mut c, 1, 300), Some(ctx(2)));
        assert_eq!(found(&mut c, 1, 301), Some(ctx(2)), "a second queue of the fan-out");
        assert_eq!(found(&mut c, 1, 150), Some(ctx(1)), "not a publish from the future");
        assert_eq!(found(&mut c, 2, 300), None);
        assert_eq!(found(&mut c, 1, 200 + WINDOW_NS + 1), None, "expired");
    }
}
