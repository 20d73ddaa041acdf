//! Messaging continuity: a delivery with no `traceparent` finds the publish
//! seen on this node that sent it.
use std::{
    collections::{hash_map::DefaultHasher, HashMap, VecDeque},
    hash::{Hash, Hasher},
    sync::Arc,
};

use crate::{connections::process::ProcessInfo, protocols::amqp::Message, spans::SpanCtx};
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
const MAX_ENTRIES: usize = 100_000;

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
            .push_back((at_ns, publish));
        self.order.push_back((at_ns, key));
    }

    /// A process on this node published to `dest` within the window.
    pub fn publishes_to(&self, dest: u64, at_ns: u64) -> bool {
        self.destinations
            .get(&dest)
            .is_some_and(|t| at_ns.saturating_sub(*t) < WINDOW_NS)
    }

    pub fn lookup(&mut self, key: u64, at_ns: u64) -> Option<Publish> {
        self.expire(at_ns);
        self.by_key
            .get(&key)?
            .iter()
            .rev()
            .find(|(t, _)| *t <= at_ns)
            .map(|(_, p)| p.clone())
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
        SpanCtx {
            trace_id: [n; 16],
            span_id: [n; 8],
            parent_span_id: None,
            sampled: true,
        }
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
    fn latest_publish_within_the_window_wins_and_fan_out_shares_it() {
        let mut c = Continuity::default();
        c.published(1, 7, 100, publish(1));
        c.published(1, 7, 200, publish(2));
        let found = |c: &mut Continuity, key, at| c.lookup(key, at).map(|p| p.ctx);
        assert_eq!(found(&mut c, 1, 300), Some(ctx(2)));
        assert_eq!(
            found(&mut c, 1, 301),
            Some(ctx(2)),
            "a second queue of the fan-out"
        );
        assert_eq!(
            found(&mut c, 1, 150),
            Some(ctx(1)),
            "not a publish from the future"
        );
        assert_eq!(found(&mut c, 2, 300), None);
        assert_eq!(found(&mut c, 1, 200 + WINDOW_NS + 1), None, "expired");
        assert_eq!(c.evicted, 0, "expiry is not an eviction");
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
        assert!(c.lookup(0, 2000).is_none() && c.lookup(5, 2000).is_some());
    }
}
