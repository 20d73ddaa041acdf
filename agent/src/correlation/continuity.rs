//! Messaging continuity: a delivery with no `traceparent` finds the publish
//! seen on this node that sent it.
use foldhash::HashMap;
use std::{
    collections::{hash_map::DefaultHasher, VecDeque},
    hash::{Hash, Hasher},
    sync::Arc,
};

use crate::{connections::process::ProcessInfo, protocols::amqp::Message, spans::SpanCtx};
/// Publishes remembered for matching deliveries that carry no traceparent.
///
/// Key: exchange, routing key, message id, correlation id, body size and
/// the body prefix. A delivery takes the publish with its key, within
/// `WINDOW_NS` before it, that no earlier delivery *on the same queue*
/// took: a queue delivers each message once, and fan-out (one publish,
/// several queues) gives each queue's consumer the same parent. Several
/// such publishes in different traces (identical messages in flight at
/// once) are ambiguous: no parent. In one trace, the oldest (queues are
/// FIFO). When every earlier publish already went to this queue, only a
/// delivery the broker marks redelivered takes the latest; any other waits
/// for its own publish, not yet seen.
#[derive(Default)]
pub struct Continuity {
    /// Publishes by key: when, the publish, and the queues it was matched on.
    by_key: HashMap<u64, VecDeque<(u64, Publish, Vec<u64>)>>,
    /// Destinations (exchange, routing key) published to on this node ->
    /// when last: a delivery from one of them may see its publish late.
    destinations: HashMap<u64, u64>,
    order: VecDeque<(u64, u64)>,
    /// Publishes evicted before their window ended (the index was full).
    pub evicted: u64,
}

/// What a delivery learns from the publish it matched: its parent, and the
/// publisher's side of the service-graph edge.
#[derive(Debug, Clone)]
pub struct Publish {
    pub ctx: SpanCtx,
    pub producer: Arc<ProcessInfo>,
    pub secs: f64,
}

pub const WINDOW_NS: u64 = 60_000_000_000;

/// What [`Continuity::lookup`] found.
#[derive(Debug, Clone)]
pub enum Found {
    Publish(Publish),
    /// Identical messages of several traces could have been this one.
    Ambiguous,
    Nothing,
}

impl Found {
    pub fn publish(self) -> Option<Publish> {
        match self {
            Found::Publish(p) => Some(p),
            _ => None,
        }
    }
}
const MAX_ENTRIES: usize = 100_000;

fn queue_key(queue: &str) -> u64 {
    let mut h = DefaultHasher::new();
    queue.hash(&mut h);
    h.finish()
}

/// A message's destination (exchange, routing key).
pub fn destination_key(m: &Message) -> u64 {
    let mut h = DefaultHasher::new();
    (&m.exchange, &m.routing_key).hash(&mut h);
    h.finish()
}

pub fn message_key(m: &Message) -> u64 {
    let mut h = DefaultHasher::new();
    (
        &m.exchange,
        &m.routing_key,
        &m.props.message_id,
        &m.props.correlation_id,
        m.body_size,
        &m.body_prefix,
    )
        .hash(&mut h);
    h.finish()
}

impl Continuity {
    pub fn published(&mut self, key: u64, dest: u64, at_ns: u64, publish: Publish) {
        self.expire(at_ns);
        if self.destinations.len() >= MAX_ENTRIES && !self.destinations.contains_key(&dest) {
            self.destinations
                .retain(|_, t| at_ns.saturating_sub(*t) < WINDOW_NS);
        }
        if self.destinations.len() < MAX_ENTRIES {
            self.destinations.insert(dest, at_ns);
        }
        self.by_key
            .entry(key)
            .or_default()
            .push_back((at_ns, publish, vec![]));
        self.order.push_back((at_ns, key));
    }

    /// A process on this node published to `dest` within the window.
    pub fn publishes_to(&self, dest: u64, at_ns: u64) -> bool {
        self.destinations
            .get(&dest)
            .is_some_and(|t| at_ns.saturating_sub(*t) < WINDOW_NS)
    }

    /// A delivery from `queue` that waited for the publish of `key` at
    /// `at_ns` took it.
    pub fn taken(&mut self, key: u64, at_ns: u64, queue: &str) {
        let queue = queue_key(queue);
        if let Some(e) = self
            .by_key
            .get_mut(&key)
            .and_then(|q| q.iter_mut().rev().find(|e| e.0 == at_ns))
        {
            e.2.push(queue);
        }
    }

    /// The publish a delivery from `queue`, read at `at_ns`, came from.
    pub fn lookup(&mut self, key: u64, at_ns: u64, queue: &str, redelivered: bool) -> Found {
        self.expire(at_ns);
        let Some(q) = self.by_key.get_mut(&key) else {
            return Found::Nothing;
        };
        let queue = queue_key(queue);
        let mut open = q
            .iter_mut()
            .filter(|(t, _, on)| *t <= at_ns && !on.contains(&queue));
        let Some(first) = open.next() else {
            if !redelivered {
                return Found::Nothing;
            }
            // Every earlier publish already came to this queue.
            return q
                .iter()
                .rev()
                .find(|(t, ..)| *t <= at_ns)
                .map_or(Found::Nothing, |(_, p, _)| Found::Publish(p.clone()));
        };
        let trace = first.1.ctx.trace_id;
        if open.any(|(_, p, _)| p.ctx.trace_id != trace) {
            return Found::Ambiguous;
        }
        first.2.push(queue);
        Found::Publish(first.1.clone())
    }

    fn expire(&mut self, now: u64) {
        while let Some(&(t, key)) = self.order.front() {
            let full = self.order.len() > MAX_ENTRIES;
            if !full && now.saturating_sub(t) < WINDOW_NS {
                break;
            }
            self.evicted += u64::from(full && now.saturating_sub(t) < WINDOW_NS);
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
        SpanCtx::filled(n)
    }

    fn publish(n: u8) -> Publish {
        Publish {
            ctx: ctx(n),
            producer: Arc::new(ProcessInfo {
                comm: "producer".into(),
                ..Default::default()
            }),
            secs: 0.001,
        }
    }

    #[test]
    fn each_queue_takes_each_publish_once_and_fan_out_shares_it() {
        let mut c = Continuity::default();
        let found =
            |c: &mut Continuity, key, at, q| c.lookup(key, at, q, false).publish().map(|p| p.ctx);
        c.published(1, 7, 100, publish(1));
        assert_eq!(found(&mut c, 1, 150, "q"), Some(ctx(1)));
        assert_eq!(
            found(&mut c, 1, 151, "other"),
            Some(ctx(1)),
            "a second queue of the fan-out"
        );
        // The same message again, in another trace, after the first was
        // delivered: this delivery is the second one's.
        c.published(1, 7, 200, publish(2));
        assert_eq!(found(&mut c, 1, 300, "q"), Some(ctx(2)));
        assert_eq!(
            found(&mut c, 1, 301, "q"),
            None,
            "taken: its own publish is not seen yet"
        );
        let again = c.lookup(1, 302, "q", true).publish().map(|p| p.ctx);
        assert_eq!(again, Some(ctx(2)), "a redelivery: the latest");
        assert_eq!(
            found(&mut c, 1, 120, "new"),
            Some(ctx(1)),
            "not a publish from the future"
        );
        assert_eq!(found(&mut c, 2, 300, "q"), None);
        assert_eq!(found(&mut c, 1, 200 + WINDOW_NS + 1, "q"), None, "expired");
        assert_eq!(c.evicted, 0, "expiry is not an eviction");
    }

    #[test]
    fn identical_messages_of_two_traces_in_flight_are_ambiguous() {
        let mut c = Continuity::default();
        c.published(1, 7, 100, publish(1));
        c.published(1, 7, 110, publish(2));
        assert!(matches!(c.lookup(1, 200, "q", false), Found::Ambiguous));
        assert!(
            matches!(c.lookup(1, 201, "q", false), Found::Ambiguous),
            "nothing was taken"
        );
        // Twice in one trace: the oldest first (queues are FIFO).
        c.published(5, 7, 100, publish(3));
        c.published(5, 7, 110, publish(3));
        let first = c.lookup(5, 200, "q", false).publish().unwrap();
        assert_eq!(first.ctx, ctx(3));
        assert!(matches!(c.lookup(5, 201, "q", false), Found::Publish(_)));
    }

    #[test]
    fn a_full_index_evicts_the_oldest_and_counts_it() {
        let mut c = Continuity::default();
        for i in 0..MAX_ENTRIES as u64 + 3 {
            c.published(i, 7, 1000 + i, publish(1));
        }
        assert_eq!(
            c.evicted, 2,
            "the index holds MAX_ENTRIES + 1 before it trims"
        );
        assert!(
            c.lookup(0, 2000, "q", false).publish().is_none()
                && c.lookup(5, 2000, "q", false).publish().is_some()
        );
    }
}
