//! Messaging operations: a publish joins the request that made it; a
//! delivery is in flight (like a server request) from its read to its
//! acknowledgement, in the trace of its header or of the publish seen on
//! this node that sent it.
use foldhash::HashMap;

use super::{
    continuity,
    holds::{self, Held, HeldFor},
    Ambiguity, Correlator, Evidence, Item, Linked,
};
use crate::{
    connections::ConnInfo,
    protocols::{
        amqp::{AmqpOut, Message, Outcome},
        SegTime,
    },
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

/// A delivery read before the record of its publish (seen on this node).
pub(super) struct Waiter {
    queue: String,
    pid: u32,
    conn: u64,
    channel: u16,
    delivery_tag: u64,
    /// Its linker key.
    key: u64,
    since: u64,
}

/// Deliveries waiting for their publish's record, by message key. `len`
/// counts the waiters (the bound is on it); those whose hold is over are
/// swept out as time passes.
#[derive(Default)]
pub(super) struct LateDeliveries {
    by_msg: HashMap<u64, Vec<Waiter>>,
    len: usize,
}

impl LateDeliveries {
    /// Adds a waiter; false if the bound is reached (the caller counts it).
    fn push(&mut self, msg_key: u64, w: Waiter) -> bool {
        self.expire_key(msg_key, w.since);
        if self.len >= MAX_DELIVERIES {
            return false;
        }
        self.by_msg.entry(msg_key).or_default().push(w);
        self.len += 1;
        true
    }

    fn take(&mut self, msg_key: u64) -> Option<Vec<Waiter>> {
        let w = self.by_msg.remove(&msg_key)?;
        self.len -= w.len();
        Some(w)
    }

    fn retain(&mut self, mut keep: impl FnMut(&Waiter) -> bool) {
        let len = &mut self.len;
        self.by_msg.retain(|_, ws| {
            let before = ws.len();
            ws.retain(&mut keep);
            *len -= before - ws.len();
            !ws.is_empty()
        });
    }

    fn expire_key(&mut self, msg_key: u64, now_ns: u64) {
        if let Some(ws) = self.by_msg.get_mut(&msg_key) {
            let before = ws.len();
            ws.retain(|w| now_ns.saturating_sub(w.since) < holds::HOLD_NS);
            self.len -= before - ws.len();
            if ws.is_empty() {
                self.by_msg.remove(&msg_key);
            }
        }
    }

    /// Forgets the waits whose hold is over (all of them with None).
    pub(super) fn expire(&mut self, now_ns: Option<u64>) {
        match now_ns {
            Some(now) => self.retain(|w| now.saturating_sub(w.since) < holds::HOLD_NS),
            None => *self = Self::default(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }
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
    pub(super) fn messaging(
        &mut self,
        c: ConnInfo,
        op: AmqpOut,
        now_ns: u64,
        out: &mut Vec<Linked>,
    ) {
        match op {
            AmqpOut::PublishSent {
                channel,
                seq,
                ref msg,
                first,
                last,
            } => {
                // Fixed now: a consumer may get the message before the
                // broker's confirm completes the publish.
                let (ctx, evidence) = self.publish_written(&c, msg, (first, last), now_ns, out);
                if self.sent.len() >= MAX_DELIVERIES {
                    self.drops.deliveries += 1;
                    return;
                }
                self.sent.insert((c.id, channel, seq), (ctx, evidence));
            }
            AmqpOut::Published {
                channel,
                ref msg,
                first,
                last,
                seq,
                ..
            } => {
                let sent = seq.and_then(|s| self.sent.remove(&(c.id, channel, s)));
                let (ctx, evidence) = match sent {
                    Some(fixed) => fixed,
                    None => self.publish_written(&c, msg, (first, last), now_ns, out),
                };
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
                redelivered,
            } => {
                // The parent: the context in the headers, else the publish seen here.
                let header = header(&msg);
                let found = match header {
                    Some(_) => continuity::Found::Nothing,
                    None => {
                        let q = queue.as_deref().unwrap_or_default();
                        self.continuity.lookup(
                            continuity::message_key(&msg),
                            at.exit_ns,
                            q,
                            redelivered,
                        )
                    }
                };
                let ambiguous = matches!(found, continuity::Found::Ambiguous);
                self.counts.ambiguous[Ambiguity::IdenticalMessages as usize] +=
                    u64::from(ambiguous);
                let publish = found.publish();
                let incoming = header.or(publish.as_ref().map(|p| TraceParent {
                    trace_id: p.ctx.trace_id,
                    parent_id: p.ctx.span_id,
                    sampled: p.ctx.sampled,
                }));
                let evidence = match (header, &publish) {
                    (Some(_), _) => Evidence::Header,
                    (None, Some(_)) => Evidence::PublishMatch,
                    (None, None) if ambiguous => Evidence::Ambiguous,
                    (None, None) => Evidence::Root,
                };
                if self.deliveries.len() >= MAX_DELIVERIES {
                    self.drops.deliveries += 1;
                    return;
                }
                let key = delivery_key(c.id, channel, delivery_tag);
                let ctx = self.linker.request_started(
                    c.pid,
                    key,
                    c.id,
                    at.tid,
                    at.exit_ns,
                    incoming,
                    &self.sampler,
                );
                // The thread's next writes in the tick of this read are its.
                self.linker.delivery_read(c.pid, at, key, c.id, ctx.span_id);
                // Its publish may be on this node, its record not in yet
                // (the publisher's write exited after the consumer read it):
                // hold the delivery's trace for it.
                let dest = continuity::destination_key(&msg);
                if incoming.is_none()
                    && !ambiguous
                    && self.continuity.publishes_to(dest, at.exit_ns)
                {
                    self.wait_for_publish(
                        &c,
                        (&msg, queue.as_deref()),
                        (channel, delivery_tag, key),
                        at.exit_ns,
                        ctx,
                        now_ns,
                        out,
                    );
                }
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
                // Only an ack (nack, reject) says what the thread did; a
                // closed channel or lost frames say nothing of its work.
                let finished = match outcome {
                    Outcome::Closed | Outcome::Lost | Outcome::AutoAck => {
                        self.linker.request_finished(c.pid, d.key)
                    }
                    Outcome::Ack | Outcome::Nack | Outcome::Reject => {
                        self.linker.delivery_acked(c.pid, d.key, at)
                    }
                };
                let Some(ctx) = finished else {
                    return;
                };
                let end_ns = if matches!(outcome, Outcome::Closed | Outcome::Lost) {
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
            AmqpOut::Blind { blind } => self.linker.set_blind(c.pid, c.id, blind),
            AmqpOut::GhostFinished { at, .. } => self.linker.ghost_acked(c.pid, c.id, at),
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
        self.sent.retain(|(c, _, _), _| *c != conn);
        self.late_deliveries.retain(|w| w.conn != conn);
    }

    /// Holds a delivery that matched no publish, until its publish's record
    /// comes (or the hold ends).
    #[allow(clippy::too_many_arguments)]
    fn wait_for_publish(
        &mut self,
        c: &ConnInfo,
        (msg, queue): (&Message, Option<&str>),
        (channel, delivery_tag, key): (u16, u64, u64),
        since: u64,
        ctx: SpanCtx,
        now_ns: u64,
        out: &mut Vec<Linked>,
    ) {
        let msg_key = continuity::message_key(msg);
        let w = Waiter {
            queue: queue.unwrap_or_default().to_string(),
            pid: c.pid,
            conn: c.id,
            channel,
            delivery_tag,
            key,
            since,
        };
        if !self.late_deliveries.push(msg_key, w) {
            self.drops.deliveries += 1;
            return;
        }
        let held = Held {
            conn: key,
            since,
            key: HeldFor::Publish(msg_key),
            items: vec![],
            why: None,
            parent: None,
        };
        self.holds.start(ctx.trace_id, held, now_ns, out);
    }

    /// A publish written from `first` to `last`: its context, indexed for
    /// the deliveries of its message.
    fn publish_written(
        &mut self,
        c: &ConnInfo,
        msg: &Message,
        (first, last): (SegTime, SegTime),
        now_ns: u64,
        out: &mut Vec<Linked>,
    ) -> (SpanCtx, Evidence) {
        let (ctx, evidence) = self.publish_context(c, msg, first);
        let secs = last.exit_ns.saturating_sub(first.enter_ns) as f64 / 1e9;
        let publish = continuity::Publish {
            ctx,
            producer: c.process.clone(),
            secs,
        };
        self.publish_seen(msg, first.enter_ns, publish, now_ns, out);
        (ctx, evidence)
    }

    /// A publish was seen on this node: deliveries later are matched to it
    /// through the continuity index; deliveries already read that wait for
    /// it join its trace now.
    fn publish_seen(
        &mut self,
        msg: &Message,
        at_ns: u64,
        publish: continuity::Publish,
        now_ns: u64,
        out: &mut Vec<Linked>,
    ) {
        let msg_key = continuity::message_key(msg);
        let ctx = publish.ctx;
        self.continuity.published(
            msg_key,
            continuity::destination_key(msg),
            at_ns,
            publish.clone(),
        );
        let Some(waiters) = self.late_deliveries.take(msg_key) else {
            return;
        };
        // Two waiting on one queue: identical messages in flight, of which
        // this is one. Which delivery is its, the wire does not say.
        let mut queues: Vec<&str> = waiters.iter().map(|w| w.queue.as_str()).collect();
        queues.sort_unstable();
        let before = queues.len();
        queues.dedup();
        if queues.len() < before {
            self.counts.ambiguous[Ambiguity::IdenticalMessages as usize] += before as u64;
            return;
        }
        for w in waiters {
            // Published before it was delivered, within the hold.
            if w.since < at_ns || w.since - at_ns >= holds::HOLD_NS {
                continue;
            }
            if let Some(d) = self
                .deliveries
                .get_mut(&(w.conn, w.channel, w.delivery_tag))
            {
                d.publish = Some(publish.clone());
                d.evidence = Evidence::PublishMatch;
            }
            self.continuity.taken(msg_key, at_ns, &w.queue);
            let in_flight = self.linker.adopt(w.pid, w.key, &ctx);
            let held = self.holds.take_request(w.key, w.since);
            let held = self.adopt_held(held, &ctx, now_ns, out);
            if in_flight || held {
                self.counts.late_partners_adopted += 1;
            }
        }
    }

    /// A publish's context: the request it was made for, unless an
    /// instrumented publisher named its own trace in the headers.
    fn publish_context(
        &mut self,
        c: &ConnInfo,
        msg: &Message,
        first: SegTime,
    ) -> (SpanCtx, Evidence) {
        let own = header(msg);
        let (ctx, evidence) = self.call_context(c, first, None);
        match own {
            Some(tp) if ctx.parent_span_id.is_none() => (
                SpanCtx {
                    trace_id: tp.trace_id,
                    sampled: self.sampler.should_sample(&tp.trace_id, None),
                    ..ctx
                },
                Evidence::Header,
            ),
            // The request it was made for is in another trace: the
            // header's wins.
            Some(tp) if ctx.trace_id != tp.trace_id => (
                SpanCtx {
                    trace_id: tp.trace_id,
                    parent_span_id: None,
                    ..ctx
                },
                Evidence::Header,
            ),
            _ => (ctx, evidence),
        }
    }
}

#[cfg(test)]
mod tests;
