//! Where a request's time goes: its *self time* is its duration minus the
//! time covered by the calls it made (HTTP, database, publish). A service
//! whose requests wait on a slow database shows a small self time and a
//! large downstream time; a service that computes shows the opposite.
//!
//! Calls end before the request they were made for (the request answers
//! after them), so each call's interval is kept under its parent's span id
//! until the parent ends. Concurrent calls cover time once: the union of
//! the intervals counts, clipped to the parent's own. Bounded and cleaned:
//! past `MAX_PARENTS` parents with pending calls the oldest are forgotten,
//! and so is a parent that has not ended `WAIT_NS` after its first call
//! ended (a request whose own record was lost, or a parent in another
//! process); both are counted in `evicted` (such a parent, if it ever
//! ends, reports a larger self time).
use foldhash::HashMap;
use std::collections::VecDeque;

/// Parents with calls awaiting them.
const MAX_PARENTS: usize = 16384;
/// Calls kept per parent; later ones are merged into the last interval.
const MAX_CALLS: usize = 256;
/// How long a parent's calls wait for it after its first call ended.
pub const WAIT_NS: u64 = 30_000_000_000;

/// The end of a parent's first call, and its calls' intervals.
type Waiting = (u64, Vec<(u64, u64)>);

#[derive(Default)]
pub struct SelfTime {
    calls: HashMap<[u8; 8], Waiting>,
    /// Parents by first call, for the oldest-first eviction and expiry; an
    /// entry whose time no longer matches the parent's is stale.
    order: VecDeque<([u8; 8], u64)>,
    pub evicted: u64,
}

impl SelfTime {
    /// A call made for request `parent` (none: a root, ignored), from
    /// `start` to `end` (ns).
    pub fn call_done(&mut self, parent: Option<[u8; 8]>, start: u64, end: u64) {
        let Some(parent) = parent.filter(|_| end >= start) else {
            return;
        };
        if !self.calls.contains_key(&parent) {
            while self.calls.len() >= MAX_PARENTS {
                let Some((old, t)) = self.order.pop_front() else {
                    break;
                };
                self.forget(old, t);
            }
            self.order.push_back((parent, end));
            // Ids of requests done stay queued behind a long one: compact.
            if self.order.len() > 2 * MAX_PARENTS {
                let calls = &self.calls;
                self.order
                    .retain(|(id, t)| calls.get(id).is_some_and(|c| c.0 == *t));
            }
        }
        let (_, v) = self.calls.entry(parent).or_insert((end, vec![]));
        if v.len() < MAX_CALLS {
            v.push((start, end));
        } else if let Some(last) = v.last_mut() {
            // Widening the last interval over-counts downstream time only
            // by the gaps it covers; it never counts a call twice.
            *last = (last.0.min(start), last.1.max(end));
        }
    }

    /// Request `span_id` ended: the time of its `(start, end)` that its
    /// calls covered (the rest is its self time). Forgets its calls.
    pub fn request_done(&mut self, span_id: [u8; 8], start: u64, end: u64) -> u64 {
        let Some((_, calls)) = self.calls.remove(&span_id) else {
            return 0;
        };
        // Lazily: ids already removed are skipped when they reach the front.
        while self
            .order
            .front()
            .is_some_and(|(id, t)| !self.current(id, *t))
        {
            self.order.pop_front();
        }
        covered(calls, start, end)
    }

    /// Forgets, and counts, the parents whose first call ended more than
    /// `WAIT_NS` before `now_ns`.
    pub fn expire(&mut self, now_ns: u64) {
        while let Some(&(id, t)) = self.order.front() {
            if t.saturating_add(WAIT_NS) >= now_ns {
                break;
            }
            self.order.pop_front();
            self.forget(id, t);
        }
    }

    /// Whether `(id, t)` is still the queue entry of a waiting parent.
    fn current(&self, id: &[u8; 8], t: u64) -> bool {
        self.calls.get(id).is_some_and(|c| c.0 == t)
    }

    fn forget(&mut self, id: [u8; 8], t: u64) {
        if self.current(&id, t) {
            self.calls.remove(&id);
            self.evicted += 1;
        }
    }

    /// Parents with pending calls.
    pub fn entries(&self) -> usize {
        self.calls.len()
    }
}

/// Length of the union of `intervals`, clipped to `[start, end]`.
pub fn covered(mut intervals: Vec<(u64, u64)>, start: u64, end: u64) -> u64 {
    intervals.sort_unstable();
    let mut total = 0;
    let mut reach = start;
    for (s, e) in intervals {
        let (s, e) = (s.max(reach), e.min(end));
        if e > s {
            total += e - s;
            reach = e;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_overlapping_and_concurrent_calls_count_once() {
        // Request 0..100. Calls: 10..30 and 20..40 overlap (concurrent),
        // 35..38 lies inside them, 50..60 alone, 90..120 runs past the end.
        let calls = vec![(10, 30), (20, 40), (35, 38), (50, 60), (90, 120)];
        assert_eq!(covered(calls, 0, 100), 30 + 10 + 10);
        // A call before the request began is clipped too.
        assert_eq!(covered(vec![(0, 50)], 20, 100), 30);
        assert_eq!(covered(vec![], 0, 100), 0);
        // Eight identical concurrent calls cover their time once.
        assert_eq!(covered(vec![(10, 20); 8], 0, 100), 10);
    }

    #[test]
    fn calls_wait_for_their_request_and_are_forgotten_with_it() {
        let mut t = SelfTime::default();
        t.call_done(Some([1; 8]), 10, 40);
        t.call_done(Some([2; 8]), 10, 20);
        t.call_done(Some([1; 8]), 30, 60);
        t.call_done(None, 0, 100); // a root call: no request waits for it
        t.call_done(Some([3; 8]), 50, 40); // clocks of two CPUs: ignored
        assert_eq!(t.entries(), 2);
        assert_eq!(t.request_done([1; 8], 0, 100), 50);
        assert_eq!(t.request_done([1; 8], 0, 100), 0, "forgotten");
        assert_eq!(t.request_done([2; 8], 0, 100), 10);
        assert_eq!(t.entries(), 0);
        assert_eq!(t.evicted, 0);
    }

    #[test]
    fn a_parent_that_never_ends_is_forgotten_after_the_wait_and_counted() {
        let mut t = SelfTime::default();
        t.call_done(Some([1; 8]), 10, 40); // its request's record was lost
        t.call_done(Some([2; 8]), 10, 1_000);
        t.expire(40 + WAIT_NS);
        assert_eq!((t.entries(), t.evicted), (2, 0), "not yet");
        t.expire(41 + WAIT_NS);
        assert_eq!((t.entries(), t.evicted), (1, 1));
        assert_eq!(t.request_done([1; 8], 0, 100), 0, "forgotten");
        assert_eq!(t.request_done([2; 8], 0, 2_000), 990, "still waiting");
        // A parent forgotten and then seen again starts afresh; the stale
        // queue entry of its first life does not remove the second.
        t.call_done(Some([1; 8]), 50, 60);
        t.expire(41 + WAIT_NS);
        assert_eq!(t.request_done([1; 8], 0, 100), 10);
        assert_eq!(t.evicted, 1);
    }

    #[test]
    fn a_long_request_does_not_let_the_queue_grow() {
        let mut t = SelfTime::default();
        t.call_done(Some([0xff; 8]), 0, 1); // never done
        for i in 0..(5 * MAX_PARENTS as u64) {
            t.call_done(Some(i.to_be_bytes()), 0, 1);
            t.request_done(i.to_be_bytes(), 0, 1);
        }
        assert!(t.order.len() <= 2 * MAX_PARENTS + 1, "{}", t.order.len());
        assert_eq!((t.entries(), t.evicted), (1, 0));
    }

    #[test]
    fn bounded_oldest_first_and_counted() {
        let mut t = SelfTime::default();
        for i in 0..(MAX_PARENTS as u64 + 10) {
            t.call_done(Some(i.to_be_bytes()), 0, 1);
        }
        assert_eq!(t.entries(), MAX_PARENTS);
        assert_eq!(t.evicted, 10);
        assert_eq!(
            t.request_done(0u64.to_be_bytes(), 0, 10),
            0,
            "the oldest went"
        );
        assert_eq!(t.request_done(10u64.to_be_bytes(), 0, 10), 1);
        // Past the per-parent bound, calls merge into the last interval.
        for i in 0..(MAX_CALLS as u64 + 5) {
            t.call_done(Some([9; 8]), i * 10, i * 10 + 5);
        }
        let covered = t.request_done([9; 8], 0, u64::MAX);
        assert!(covered >= (MAX_CALLS as u64) * 5, "{covered}");
    }
}
