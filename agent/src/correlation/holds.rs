//! Provisional traces: a server request from a client on this node whose
//! client record has not come yet, or a delivery whose publish, seen on
//! this node, has not come yet. Everything of its trace (the server or
//! consumer span and the calls it made) is held until the late record
//! names the real trace, or the wait is over. See "Socket-pair stitching" in
//! ARCHITECTURE.md.
use foldhash::HashMap;
use smallvec::SmallVec;
use std::{collections::VecDeque, hash::Hash};

use super::{relay::ClientKey, Linked};

/// How long a finished server span waits for a late client on this node.
pub const HOLD_NS: u64 = 1_000_000_000;
/// How long a call held for its Python task waits for that task's (or its
/// creator's) response: as long as the handler may still run. A handler
/// that waited on a slow call (a 1 s SYN retransmit, a slow query) for
/// longer than `HOLD_NS` answered after its earlier calls had gone out
/// roots.
pub const TASK_HOLD_NS: u64 = 10_000_000_000;
/// Bound on held traces; the oldest goes out as it is when full.
const MAX_HELD: usize = 4096;
/// How long an adopted trace's provisional id is still renamed: the
/// contexts it already gave (a call queued for a downstream server, a
/// request in flight there) make items for as long as those calls last.
pub const ALIAS_NS: u64 = 60_000_000_000;
/// Bound on renamed provisional ids.
const MAX_ALIASES: usize = 65536;

/// What a held trace waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeldFor {
    /// A server request: its client's record, by the client's (local,
    /// remote) endpoints and the HTTP/2 stream (0 for HTTP/1.x).
    Client(ClientKey, u32),
    /// A delivery: the publish that sent it, by message key.
    Publish(u64),
    /// Python: a client call no rule placed, made by asyncio task `task`
    /// of process `pid`: the request whose response that task writes next,
    /// if it was read before the call (`causality/python.rs`).
    /// `born`: when the task's context was created (0: unknown); a
    /// context's address is reused, and this tells its lives apart.
    Task { pid: u32, task: u32, born: u64 },
    /// A consumer's call after its thread acknowledged a delivery, before
    /// anything says whether consumer (`pid`, channel connection `source`)
    /// acks first: the acknowledged delivery's if it does
    /// (`Held::parent`), a root otherwise (`causality/rules.rs`, `by_ack`).
    AckMode { pid: u32, source: u64 },
    /// Go: a call on `conn` written by goroutine `writer` (serving no
    /// request) in a write that entered at `since`: the request of the
    /// goroutine `writer` hands a value to next, in the same run
    /// (`causality/goroutines.rs`).
    Handed { conn: u64, writer: u32, since: u64 },
}

impl HeldFor {
    /// How long a trace held for this waits, and which of `Holds::order`'s
    /// queues keeps it (each queue's waits are all as long, so each stays
    /// in the order its waits end).
    fn wait(&self) -> (u64, usize) {
        match self {
            HeldFor::Task { .. } => (TASK_HOLD_NS, 1),
            _ => (HOLD_NS, 0),
        }
    }
}

/// Where an adopted provisional trace went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alias {
    pub trace_id: [u8; 16],
    pub sampled: bool,
    /// The parent its root took, and why: the root's own span may come
    /// after the adoption (an HTTP call still waiting for its response).
    pub root_parent: Option<([u8; 8], super::Evidence)>,
}

pub struct Held {
    /// The server connection and its request's first read.
    pub conn: u64,
    pub since: u64,
    /// The late record it waits for.
    pub key: HeldFor,
    pub items: Vec<Linked>,
    /// A call held for its task: why no rule placed it, counted if it
    /// goes out a root.
    pub why: Option<super::Ambiguity>,
    /// The request the held call was made for if its wait ends in favour
    /// (`HeldFor::AckMode`).
    pub parent: Option<crate::spans::SpanCtx>,
}

/// Held trace ids under one key, oldest first (almost always one).
struct Index<K>(HashMap<K, SmallVec<[[u8; 16]; 1]>>);

impl<K> Default for Index<K> {
    fn default() -> Self {
        Index(HashMap::default())
    }
}

impl<K: Hash + Eq> Index<K> {
    fn add(&mut self, k: K, trace_id: [u8; 16]) {
        self.0.entry(k).or_default().push(trace_id);
    }

    fn oldest(&self, k: &K) -> Option<[u8; 16]> {
        self.0.get(k).and_then(|ids| ids.first().copied())
    }

    fn remove(&mut self, k: &K, trace_id: &[u8; 16]) {
        if let Some(ids) = self.0.get_mut(k) {
            ids.retain(|t| t != trace_id);
            if ids.is_empty() {
                self.0.remove(k);
            }
        }
    }
}

/// Held traces, found by what they wait for or by the request they hold,
/// in one hash lookup: a scan of every held trace per request was most of
/// correlation's time at nginx's rate (tens of traces held at any time).
#[derive(Default)]
pub struct Holds {
    /// Each held trace, with the end of its wait.
    by_trace: HashMap<[u8; 16], (Held, u64)>,
    by_key: Index<HeldFor>,
    /// By (`conn`, `since`): the request or delivery held.
    by_request: Index<(u64, u64)>,
    /// Trace ids in the order their wait ends (monotonic ns), one queue
    /// per length of wait (`HeldFor::wait`). An entry whose trace was taken
    /// since stays until it comes to the front (or the next compaction),
    /// and is skipped there.
    order: [VecDeque<([u8; 16], u64)>; 2],
    /// Provisional trace ids of adopted traces -> the real trace (id,
    /// sampled), for the items their contexts still make.
    aliases: HashMap<[u8; 16], Alias>,
    /// The same ids in the order their renaming ends (monotonic ns).
    alias_order: VecDeque<([u8; 16], u64)>,
    /// Traces let go before their wait ended, because too many were held.
    pub released_early: u64,
    /// Server requests and deliveries whose wait for their client's or
    /// publish's record ended with none: they went out roots.
    pub partners_not_come: u64,
    /// Why each call held for its task and let go as a root (drained into
    /// `sonde_calls_ambiguous_total`).
    pub unlinked: Vec<super::Ambiguity>,
}

impl Holds {
    /// Starts holding `trace_id`'s items until `now_ns` plus its key's wait.
    pub fn start(&mut self, trace_id: [u8; 16], held: Held, now_ns: u64, out: &mut Vec<Linked>) {
        if self.by_trace.len() >= MAX_HELD {
            self.released_early += 1;
            self.release_oldest(out);
        }
        let (wait, queue) = held.key.wait();
        let until = now_ns + wait;
        if let Some((_, old)) = self.take(trace_id) {
            // Held twice: the first hold's items go out as they are.
            self.unlinked.extend(old.why);
            out.extend(old.items);
        }
        self.by_key.add(held.key, trace_id);
        self.by_request.add((held.conn, held.since), trace_id);
        self.by_trace.insert(trace_id, (held, until));
        let order = &mut self.order[queue];
        if order.len() >= 2 * MAX_HELD {
            let live = &self.by_trace;
            order.retain(|(t, u)| live.get(t).is_some_and(|(_, until)| until == u));
        }
        order.push_back((trace_id, until));
    }

    /// A held trace was adopted into `real`: items that still carry its
    /// provisional id (`from`) move there too, until `now_ns + ALIAS_NS`.
    pub fn alias(&mut self, from: [u8; 16], real: Alias, now_ns: u64) {
        if self.alias_order.len() >= MAX_ALIASES {
            if let Some((old, _)) = self.alias_order.pop_front() {
                self.aliases.remove(&old);
                self.released_early += 1;
            }
        }
        self.aliases.insert(from, real);
        self.alias_order.push_back((from, now_ns + ALIAS_NS));
    }

    /// The real trace of a provisional id that was adopted.
    pub fn renamed(&self, trace_id: &[u8; 16]) -> Option<Alias> {
        self.aliases.get(trace_id).copied()
    }

    /// Holds `item` if its trace is held; else hands it back.
    pub fn hold(&mut self, item: Linked) -> Option<Linked> {
        match self.by_trace.get_mut(&item.ctx.trace_id) {
            Some((h, _)) => {
                h.items.push(item);
                None
            }
            None => Some(item),
        }
    }

    /// Takes the oldest held trace waiting for `key` out of the wait, with
    /// its (provisional) trace id.
    pub fn take_for(&mut self, key: &HeldFor) -> Option<([u8; 16], Held)> {
        let trace_id = self.by_key.oldest(key)?;
        self.take(trace_id)
    }

    /// Takes the held trace of the request (or delivery) `conn` read at
    /// `since` out of the wait, with its (provisional) trace id.
    pub fn take_request(&mut self, conn: u64, since: u64) -> Option<([u8; 16], Held)> {
        let trace_id = self.by_request.oldest(&(conn, since))?;
        self.take(trace_id)
    }

    fn take(&mut self, trace_id: [u8; 16]) -> Option<([u8; 16], Held)> {
        let (h, _) = self.by_trace.remove(&trace_id)?;
        self.unindex(&trace_id, &h);
        Some((trace_id, h))
    }

    fn unindex(&mut self, trace_id: &[u8; 16], h: &Held) {
        self.by_key.remove(&h.key, trace_id);
        self.by_request.remove(&(h.conn, h.since), trace_id);
    }

    /// Lets the trace whose wait ends first go, as it is.
    fn release_oldest(&mut self, out: &mut Vec<Linked>) {
        loop {
            let queue = match (self.order[0].front(), self.order[1].front()) {
                (Some(a), Some(b)) => usize::from(b.1 < a.1),
                (Some(_), None) => 0,
                (None, Some(_)) => 1,
                (None, None) => return,
            };
            let Some((trace_id, until)) = self.order[queue].pop_front() else {
                return;
            };
            if self.release_if_due(trace_id, until, out).is_some() {
                return;
            }
        }
    }

    /// Lets `trace_id` go if it is still held with the wait `until` (an
    /// entry of `order` that was taken, or held again, since is skipped):
    /// what it waited for.
    fn release_if_due(
        &mut self,
        trace_id: [u8; 16],
        until: u64,
        out: &mut Vec<Linked>,
    ) -> Option<HeldFor> {
        if self
            .by_trace
            .get(&trace_id)
            .is_none_or(|(_, u)| *u != until)
        {
            return None;
        }
        let (_, h) = self.take(trace_id)?;
        self.unlinked.extend(h.why);
        out.extend(h.items);
        Some(h.key)
    }

    /// Ends the waits that are over at `now_ns` (all of them with None, at
    /// shutdown): their items go out as they are.
    pub fn release_due(&mut self, now_ns: Option<u64>, out: &mut Vec<Linked>) {
        for queue in 0..self.order.len() {
            while let Some(&(trace_id, until)) = self.order[queue].front() {
                if now_ns.is_some_and(|n| until > n) {
                    break;
                }
                self.order[queue].pop_front();
                let ended = self.release_if_due(trace_id, until, out);
                if now_ns.is_some()
                    && matches!(ended, Some(HeldFor::Client(..) | HeldFor::Publish(_)))
                {
                    self.partners_not_come += 1;
                }
            }
        }
        while let Some(&(from, until)) = self.alias_order.front() {
            if now_ns.is_some_and(|n| until > n) {
                break;
            }
            self.alias_order.pop_front();
            self.aliases.remove(&from);
        }
    }

    /// Held traces and renamed provisional ids.
    pub fn len(&self) -> usize {
        self.by_trace.len() + self.aliases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_trace.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(conn: u64, since: u64, key: HeldFor) -> Held {
        Held {
            conn,
            since,
            key,
            items: vec![],
            why: None,
            parent: None,
        }
    }

    fn id(n: u64) -> [u8; 16] {
        n.to_le_bytes().repeat(2).try_into().unwrap()
    }

    /// Holds trace `n`, waiting for publish `n`, of request (`n`, 0).
    fn start_n(h: &mut Holds, n: u64, now_ns: u64, out: &mut Vec<Linked>) {
        h.start(id(n), held(n, 0, HeldFor::Publish(n)), now_ns, out);
    }

    #[test]
    fn a_wait_is_found_by_its_key_or_its_request_and_the_oldest_first() {
        let (mut h, mut out) = (Holds::default(), vec![]);
        let key = HeldFor::Publish(7);
        h.start(id(1), held(10, 100, key), 0, &mut out);
        h.start(id(2), held(11, 200, key), 5, &mut out);
        h.start(id(3), held(12, 300, HeldFor::Publish(8)), 9, &mut out);
        assert_eq!(h.take_for(&key).map(|(t, _)| t), Some(id(1)));
        assert_eq!(h.take_request(10, 100).map(|(t, _)| t), None, "taken");
        assert_eq!(
            h.take_request(12, 300).map(|(t, h)| (t, h.conn)),
            Some((id(3), 12))
        );
        assert_eq!(h.take_for(&HeldFor::Publish(8)).map(|(t, _)| t), None);
        assert_eq!(h.take_for(&key).map(|(t, _)| t), Some(id(2)));
        assert!(h.is_empty());
        assert!(h.by_key.0.is_empty() && h.by_request.0.is_empty());
    }

    #[test]
    fn a_trace_held_again_is_found_under_its_new_wait_only() {
        let (mut h, mut out) = (Holds::default(), vec![]);
        let key = HeldFor::Publish(7);
        h.start(id(1), held(10, 100, key), 0, &mut out);
        h.start(id(1), held(11, 200, key), 5, &mut out);
        assert!(h.take_request(10, 100).is_none());
        assert_eq!(
            h.take_for(&key).map(|(t, h)| (t, h.conn)),
            Some((id(1), 11))
        );
        assert!(h.is_empty() && h.by_key.0.is_empty() && h.by_request.0.is_empty());
        // The first wait's entry in `order` ends nothing.
        h.start(id(1), held(12, 300, key), 10, &mut out);
        h.release_due(Some(HOLD_NS), &mut out);
        assert!(h.take_request(12, 300).is_some());
    }

    #[test]
    fn waits_end_in_order_and_a_taken_trace_is_skipped() {
        let (mut h, mut out) = (Holds::default(), vec![]);
        for n in 0..4 {
            start_n(&mut h, n, n, &mut out);
        }
        assert!(h.take_request(1, 0).is_some());
        h.release_due(Some(2 + HOLD_NS), &mut out);
        // 0 and 2 ended; 1 was taken before; 3 still waits.
        assert_eq!(h.by_trace.len(), 1);
        assert_eq!(h.partners_not_come, 2, "0 and 2 went out roots");
        assert!(h.take_request(3, 0).is_some());
        // Its entry in `order` stays until it comes to the front.
        assert_eq!(h.order[0].len(), 1);
        h.release_due(None, &mut out);
        assert!(h.order[0].is_empty() && h.is_empty());
        // A task's wait that ends is counted by its `why`, not here; nor is
        // what shutdown lets go.
        h.start(
            id(9),
            held(
                9,
                0,
                HeldFor::Task {
                    pid: 1,
                    task: 2,
                    born: 0,
                },
            ),
            0,
            &mut out,
        );
        h.start(id(10), held(10, 0, HeldFor::Publish(10)), 0, &mut out);
        h.release_due(Some(HOLD_NS), &mut out);
        assert_eq!(h.partners_not_come, 3);
        start_n(&mut h, 11, 0, &mut out);
        h.release_due(None, &mut out);
        assert_eq!(h.partners_not_come, 3);
    }

    #[test]
    fn a_task_waits_longer_than_a_partner_and_neither_blocks_the_other() {
        let (mut h, mut out) = (Holds::default(), vec![]);
        let task = HeldFor::Task {
            pid: 1,
            task: 2,
            born: 3,
        };
        h.start(id(1), held(1, 0, task), 0, &mut out);
        start_n(&mut h, 2, 5, &mut out);
        // The partner's wait ends first though its hold began later.
        h.release_due(Some(5 + HOLD_NS), &mut out);
        assert!(h.take_request(2, 0).is_none(), "the publish's wait ended");
        assert_eq!(h.partners_not_come, 1);
        h.release_due(Some(TASK_HOLD_NS - 1), &mut out);
        assert_eq!(h.by_trace.len(), 1, "the task still waits");
        h.release_due(Some(TASK_HOLD_NS), &mut out);
        assert!(h.is_empty());
        // When full, the wait that ends first goes, whichever its queue.
        h.start(id(3), held(3, 0, task), 0, &mut out);
        for n in 0..MAX_HELD as u64 - 1 {
            start_n(&mut h, 10 + n, 100, &mut out);
        }
        start_n(&mut h, 1 << 20, 100, &mut out);
        assert_eq!(h.released_early, 1);
        assert!(h.take_request(3, 0).is_some(), "the task's wait ends last");
        assert!(h.take_request(10, 0).is_none(), "the first publish went");
    }

    #[test]
    fn when_full_the_trace_whose_wait_ends_first_goes() {
        let (mut h, mut out) = (Holds::default(), vec![]);
        for n in 0..MAX_HELD as u64 {
            start_n(&mut h, n, n, &mut out);
            // Taken again at once: `order` keeps the entry, and compacts.
            if n % 2 == 1 {
                assert!(h.take_request(n, 0).is_some());
            }
        }
        assert_eq!(h.by_trace.len(), MAX_HELD / 2);
        assert!(h.order[0].len() < 2 * MAX_HELD);
        for n in MAX_HELD as u64..(MAX_HELD + MAX_HELD / 2) as u64 {
            start_n(&mut h, n, n, &mut out);
        }
        assert_eq!(h.by_trace.len(), MAX_HELD);
        assert_eq!(h.released_early, 0);
        h.start(
            id(0xee),
            held(1 << 40, 0, HeldFor::Publish(1 << 40)),
            1 << 41,
            &mut out,
        );
        assert_eq!(h.released_early, 1);
        assert!(h.take_request(0, 0).is_none(), "the oldest went");
        assert!(h.take_request(2, 0).is_some(), "the next stays");
    }
}
