//! Threads that multiplex calls: a thread that writes a call while another
//! call of its own is still unanswered does not block on its calls (an
//! event loop, asyncio, a reactor). On such a thread, "the delivery it
//! works on" is not one at a time, so the consumer rules that assume it
//! (`ack`, the oldest delivery, learning how a consumer acks) give up.
//! The tick rule, which follows each callback's own read, is unaffected.
use foldhash::{HashMap, HashSet};
use smallvec::SmallVec;

/// Bound on unanswered calls remembered (one per client connection).
const MAX_OUTSTANDING: usize = 65536;

#[derive(Default)]
pub(super) struct Multiplex {
    /// Client connection -> (pid, tid) that wrote a call still unanswered.
    outstanding: HashMap<u64, (u32, u32)>,
    /// Per (pid, tid): its connections in `outstanding`. Inline: a thread
    /// that blocks on its calls has one, and it comes and goes per call.
    by_thread: HashMap<(u32, u32), SmallVec<[u64; 2]>>,
    /// Threads seen with two calls unanswered at once.
    pub(super) threads: HashSet<(u32, u32)>,
    /// Entries forgotten because a bound was reached.
    pub(super) dropped: u64,
}

impl Multiplex {
    /// Thread `tid` of `pid` wrote on client connection `conn` of a
    /// protocol whose requests are answered.
    pub(super) fn wrote(&mut self, pid: u32, tid: u32, conn: u64) {
        if self.outstanding.contains_key(&conn) {
            return; // the same call's next write, or pipelining
        }
        let mine = self.by_thread.entry((pid, tid)).or_default();
        if !mine.is_empty() {
            super::bounded_insert(&mut self.threads, (pid, tid), &mut self.dropped);
        }
        mine.push(conn);
        if self.outstanding.len() >= MAX_OUTSTANDING {
            self.dropped += self.outstanding.len() as u64;
            self.outstanding.clear();
            self.by_thread.clear();
            return;
        }
        self.outstanding.insert(conn, (pid, tid));
    }

    /// Client connection `conn` read its answer (or closed).
    pub(super) fn answered(&mut self, conn: u64) {
        let Some(k) = self.outstanding.remove(&conn) else {
            return;
        };
        if let Some(list) = self.by_thread.get_mut(&k) {
            list.retain(|c| *c != conn);
            if list.is_empty() {
                self.by_thread.remove(&k);
            }
        }
    }

    pub(super) fn is_multiplexed(&self, pid: u32, tid: u32) -> bool {
        self.threads.contains(&(pid, tid))
    }

    /// Entries held, for the agent's own gauges.
    pub(super) fn len(&self) -> usize {
        self.outstanding.len() + self.threads.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_call_before_the_first_is_answered_marks_the_thread() {
        let mut m = Multiplex::default();
        // Blocking: write, answer, write.
        m.wrote(1, 10, 100);
        m.wrote(1, 10, 100);
        m.answered(100);
        m.wrote(1, 10, 101);
        m.answered(101);
        assert!(!m.is_multiplexed(1, 10));
        // Another thread's unanswered call is no sign.
        m.wrote(1, 11, 102);
        m.wrote(1, 10, 103);
        assert!(!m.is_multiplexed(1, 10));
        // A call while its own is unanswered.
        m.wrote(1, 10, 104);
        assert!(m.is_multiplexed(1, 10));
        assert!(!m.is_multiplexed(1, 11));
        for c in [102, 103, 104] {
            m.answered(c);
        }
        assert_eq!(m.outstanding.len(), 0);
        assert!(m.by_thread.is_empty());
    }
}
