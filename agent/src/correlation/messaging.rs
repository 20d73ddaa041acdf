//! Messaging operations: a publish joins the request that made it; a
//! delivery is in flight (like a server request) from its read to its
//! acknowledgement, in the trace of its header or of the publish seen on
//! this node that sent it.
use super::{continuity, Correlator, Evidence, Item, Linked};
use crate::{
    connections::ConnInfo,
    protocols::amqp::{AmqpOut, Message, Outcome},
    spans::{traceparent, traceparent::TraceParent, SpanCtx},
};

/// Bound on deliveries read and not yet acknowledged.
const MAX_DELIVERIES: usize = 65536;

/// A delivery being processed: its span is built at the acknowledgement.
pub(super) struct Delivery {
    msg: Message,
    queue: Option<String>,
    start_ns: u64,
    key: u64,
    publish: Option<continuity::Publish>,
    evidence: Evidence,
}

/// A delivery processed, from its read to its acknowledgement.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub msg: Message,
    pub queue: Option<String>,
    pub delivery_tag: u64,
    pub outcome: Outcome,
    pub start_ns: u64,
    pub end_ns: u64,
    /// The publish it matched, for the producer -> consumer graph edge.
    pub publish: Option<continuity::Publish>,
}

/// A linker key for one delivery (distinct from connection ids, which are small).
fn delivery_key(conn: u64, channel: u16, tag: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (conn, channel, tag).hash(&mut h);
    h.finish() | 1 << 63
}

fn header(msg: &Message) -> Option<TraceParent> {
    msg.props
        .header("traceparent")
        .as_deref()
        .and_then(traceparent::parse)
}

impl Correlator {
    pub(super) fn messaging(&mut self, c: ConnInfo, op: AmqpOut, out: &mut Vec<Linked>) {
        match op {
            AmqpOut::Published {
                ref msg,
                first,
                last,
                ..
            } => {
                // An instrumented publisher names its own trace in the headers.
                let own = header(msg);
                let (mut ctx, mut evidence) = self.call_context(&c, first, None);
                match own {
                    Some(tp) if ctx.parent_span_id.is_none() => {
                        ctx = SpanCtx {
                            trace_id: tp.trace_id,
                            sampled: self.sampler.should_sample(&tp.trace_id, None),
                            ..ctx
                        };
                        evidence = Evidence::Header;
                    }
                    // The request it was made for is in another trace: the
                    // header's wins.
                    Some(tp) if ctx.trace_id != tp.trace_id => {
                        ctx = SpanCtx {
                            trace_id: tp.trace_id,
                            parent_span_id: None,
                            ..ctx
                        };
                        evidence = Evidence::Header;
                    }
                    _ => {}
                }
                let secs = last.exit_ns.saturating_sub(first.enter_ns) as f64 / 1e9;
                let publish = continuity::Publish {
                    ctx,
                    producer: c.process.clone(),
                    secs,
                };
                self.continuity
                    .published(continuity::message_key(msg), first.enter_ns, publish);
                self.emit(
                    Linked {
                        conn: c,
                        ctx,
                        evidence,
                        item: Item::Publish(Box::new(op)),
                    },
                    out,
                );
            }
            AmqpOut::DeliveryStarted {
                channel,
                delivery_tag,
                queue,
                msg,
                at,
                ..
            } => {
                // The parent: the context in the headers, else the publish seen here.
                let header = header(&msg);
                let publish = match header {
                    Some(_) => None,
                    None => self
                        .continuity
                        .lookup(continuity::message_key(&msg), at.exit_ns),
                };
                let incoming = header.or(publish.as_ref().map(|p| TraceParent {
                    trace_id: p.ctx.trace_id,
                    parent_id: p.ctx.span_id,
                    sampled: p.ctx.sampled,
                }));
                let evidence = match (header, &publish) {
                    (Some(_), _) => Evidence::Header,
                    (None, Some(_)) => Evidence::PublishMatch,
                    (None, None) => Evidence::Root,
                };
                if self.deliveries.len() >= MAX_DELIVERIES {
                    self.drops.deliveries += 1;
                    return;
                }
                let key = delivery_key(c.id, channel, delivery_tag);
                self.linker.request_started(
                    c.pid,
                    key,
                    c.id,
                    at.tid,
                    at.exit_ns,
                    incoming,
                    &self.sampler,
                );
                let d = Delivery {
                    msg,
                    queue,
                    start_ns: at.exit_ns,
                    key,
                    publish,
                    evidence,
                };
                self.deliveries.insert((c.id, channel, delivery_tag), d);
            }
            AmqpOut::DeliveryFinished {
                channel,
                delivery_tag,
                outcome,
                at,
            } => {
                let Some(d) = self.deliveries.remove(&(c.id, channel, delivery_tag)) else {
                    return;
                };
                let Some(ctx) = self.linker.request_finished(c.pid, d.key) else {
                    return;
                };
                let end_ns = if outcome == Outcome::Closed {
                    d.start_ns
                } else {
                    at.enter_ns
                };
                let consumed = Consumed {
                    msg: d.msg,
                    queue: d.queue,
                    delivery_tag,
                    outcome,
                    start_ns: d.start_ns,
                    end_ns,
                    publish: d.publish,
                };
                self.emit(
                    Linked {
                        conn: c,
                        ctx,
                        evidence: d.evidence,
                        item: Item::Process(Box::new(consumed)),
                    },
                    out,
                );
            }
            AmqpOut::Received { first, .. } => {
                let (ctx, evidence) = self.call_context(&c, first, None);
                self.emit(
                    Linked {
                        conn: c,
                        ctx,
                        evidence,
                        item: Item::Receive(Box::new(op)),
                    },
                    out,
                );
            }
        }
    }

    /// Deliveries of a closed connection that never finished are forgotten
    /// with it (the parser reports them `Closed` first).
    pub(super) fn forget_deliveries(&mut self, conn: u64) {
        self.deliveries.retain(|(c, _, _), _| *c != conn);
    }
}
