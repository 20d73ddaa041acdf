//! Contexts the kernel named (`traceparent` injection, `inject.rs` in
//! agent-ebpf), waiting for the record of their syscall: a server's read
//! that started a request, or a client's write that a header was injected
//! into. Each is reported just before its syscall's data record, on the
//! same connection, and matched to it by the syscall's entry time; one
//! whose record never came (the parser did not see a request start there)
//! is dropped once a later record of its connection is taken, and counted.
use std::collections::VecDeque;

use foldhash::HashMap;

use crate::event::ContextRecord;

/// Contexts kept per connection: a record comes right after its context,
/// so more than a few waiting means their records were not requests.
const PER_CONNECTION: usize = 8;
/// Connections with contexts waiting.
const CONNECTIONS: usize = 16384;

#[derive(Default)]
pub struct KernelContexts {
    by_conn: HashMap<u64, VecDeque<ContextRecord>>,
    /// Contexts dropped: never matched, or over a bound.
    pub dropped: u64,
}

impl KernelContexts {
    pub fn named(&mut self, conn: u64, r: ContextRecord) {
        if !self.by_conn.contains_key(&conn) && self.by_conn.len() >= CONNECTIONS {
            self.dropped += 1;
            return;
        }
        let q = self.by_conn.entry(conn).or_default();
        if q.len() >= PER_CONNECTION {
            q.pop_front();
            self.dropped += 1;
        }
        q.push_back(r);
    }

    /// The context of connection `conn`'s syscall that entered at
    /// `enter_ns`, of the given kind. Older ones of that kind are dropped:
    /// their syscalls' records went by without starting a request.
    pub fn take(&mut self, conn: u64, enter_ns: u64, injected: bool) -> Option<ContextRecord> {
        let q = self.by_conn.get_mut(&conn)?;
        let mut found = None;
        q.retain(|r| {
            if r.injected != injected || r.enter_ns > enter_ns || found.is_some() {
                return true;
            }
            if r.enter_ns == enter_ns {
                found = Some(*r);
            } else {
                self.dropped += 1;
            }
            false
        });
        if q.is_empty() {
            self.by_conn.remove(&conn);
        }
        found
    }

    pub fn closed(&mut self, conn: u64) {
        if let Some(q) = self.by_conn.remove(&conn) {
            self.dropped += q.len() as u64;
        }
    }

    /// Contexts waiting, all connections.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.by_conn.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(enter_ns: u64, injected: bool, n: u8) -> ContextRecord {
        ContextRecord {
            pid: 1,
            tid: 1,
            fd: 3,
            enter_ns,
            trace_id: [n; 16],
            span_id: [n; 8],
            parent_id: None,
            sampled: true,
            injected,
        }
    }

    #[test]
    fn a_record_takes_its_own_syscalls_context_and_older_ones_are_counted() {
        let mut k = KernelContexts::default();
        k.named(7, ctx(10, true, 1));
        k.named(7, ctx(20, true, 2));
        k.named(7, ctx(25, false, 3));
        k.named(7, ctx(30, true, 4));
        // The write at 20 started a request; the one at 10 did not.
        assert_eq!(k.take(7, 20, true).map(|r| r.span_id), Some([2; 8]));
        assert_eq!(k.dropped, 1);
        // Another kind is not taken, nor a later one.
        assert_eq!(k.take(7, 25, true), None);
        assert_eq!(k.take(7, 25, false).map(|r| r.span_id), Some([3; 8]));
        assert_eq!(k.len(), 1);
        k.closed(7);
        assert_eq!((k.len(), k.dropped), (0, 2));
        assert_eq!(k.take(7, 30, true), None);
    }

    #[test]
    fn bounded_per_connection() {
        let mut k = KernelContexts::default();
        for i in 0..PER_CONNECTION as u64 + 3 {
            k.named(1, ctx(i, false, 1));
        }
        assert_eq!((k.len(), k.dropped), (PER_CONNECTION, 3));
    }
}
