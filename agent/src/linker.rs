//! Stage 7, intra-process causality: which request a client call (DB or
//! outgoing HTTP) was made for.
//!
//! When a server connection finishes reading a request, the request is *in
//! flight* until its response is written; its span ids and sampling decision
//! are fixed at that moment. A client call made by a process nests under:
//! 1. the most recent request in flight on the same thread (thread-per-request
//!    servers: the thread that read the request makes the calls), else
//! 2. the only request in flight in that process (one request at a time on an
//!    event loop, or work handed to another thread), else
//! 3. nothing: it stays a root span (ambiguous, or outside any request).
use std::collections::HashMap;

use crate::spans::sampler::Sampler;

/// The trace context a request fixed for its span and its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanCtx {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub sampled: bool,
}

#[derive(Debug, Clone)]
struct InFlight {
    conn: u64,
    tid: u32,
    /// CLOCK_MONOTONIC ns the request was fully read.
    since_ns: u64,
    ctx: SpanCtx,
}

/// Bound on requests in flight per process (a stalled server must not grow memory).
const MAX_PER_PROCESS: usize = 4096;

#[derive(Default)]
pub struct Linker {
    by_pid: HashMap<u32, Vec<InFlight>>,
}

impl Linker {
    /// A server connection of `pid` read a request on thread `tid`; its
    /// context comes from the incoming traceparent, if any.
    pub fn request_started(
        &mut self,
        pid: u32,
        conn: u64,
        tid: u32,
        since_ns: u64,
        incoming: Option<crate::spans::traceparent::TraceParent>,
        sampler: &Sampler,
    ) {
        let trace_id = incoming.map_or_else(crate::spans::new_trace_id, |t| t.trace_id);
        let ctx = SpanCtx {
            trace_id,
            span_id: crate::spans::new_span_id(),
            parent_span_id: incoming.map(|t| t.parent_id),
            sampled: sampler.should_sample(&trace_id, incoming.map(|t| t.sampled)),
        };
        let list = self.by_pid.entry(pid).or_default();
        if list.len() >= MAX_PER_PROCESS {
            list.remove(0);
        }
        list.push(InFlight { conn, tid, since_ns, ctx });
    }

    /// The response of the oldest request in flight on `conn` was written.
    pub fn request_finished(&mut self, pid: u32, conn: u64) -> Option<SpanCtx> {
        let list = self.by_pid.get_mut(&pid)?;
        let i = list.iter().position(|f| f.conn == conn)?;
        let f = list.remove(i);
        if list.is_empty() {
            self.by_pid.remove(&pid);
        }
        Some(f.ctx)
    }

    /// A late partner: the oldest request in flight on `conn` that started
    /// its own trace (no parent) joins `parent`'s instead. Returns false if
    /// there is no such request (answered already, or it had a parent).
    pub fn adopt(&mut self, pid: u32, conn: u64, parent: &SpanCtx) -> bool {
        let Some(f) = self.by_pid.get_mut(&pid).and_then(|l| l.iter_mut().find(|f| f.conn == conn)) else { return false };
        if f.ctx.parent_span_id.is_some() {
            return false;
        }
        f.ctx.trace_id = parent.trace_id;
        f.ctx.parent_span_id = Some(parent.span_id);
        f.ctx.sampled = parent.sampled;
        true
    }

    /// A server connection closed: its unanswered requests are over.
    pub fn connection_closed(&mut self, pid: u32, conn: u64) {
        if let Some(list) = self.by_pid.get_mut(&pid) {
            list.retain(|f| f.conn != conn);
            if list.is_empty() {
                self.by_pid.remove(&pid);
            }
        }
    }

    /// The request a client call of `pid` on thread `tid`, started at
    /// `start_ns`, belongs to.
    pub fn parent_of(&self, pid: u32, tid: u32, start_ns: u64) -> Option<SpanCtx> {
        let list = self.by_pid.get(&pid)?;
        let same_thread = list.iter().filter(|f| f.tid == tid && f.since_ns <= start_ns).min_by_key(|f| f.since_ns);
        if let Some(f) = same_thread {
            return Some(f.ctx);
        }
        match list.as_slice() {
            [only] if only.since_ns <= start_ns => Some(only.ctx),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(l: &mut Linker, pid: u32, conn: u64, tid: u32, at: u64) -> SpanCtx {
        l.request_started(pid, conn, tid, at, None, &Sampler::AlwaysOn);
        l.by_pid[&pid].last().unwrap().ctx
    }

    #[test]
    fn same_thread_wins_then_the_only_request_then_none() {
        let mut l = Linker::default();
        let a = started(&mut l, 1, 10, 100, 5);
        let b = started(&mut l, 1, 11, 101, 6);
        assert_eq!(l.parent_of(1, 100, 7), Some(a), "thread 100 handles request a");
        assert_eq!(l.parent_of(1, 101, 7), Some(b));
        assert_eq!(l.parent_of(1, 999, 7), None, "two in flight, other thread: ambiguous");
        assert_eq!(l.parent_of(1, 100, 4), None, "a call before the request arrived is not its child");
        assert_eq!(l.request_finished(1, 11), Some(b));
        assert_eq!(l.parent_of(1, 999, 7), Some(a), "the only request in flight (event loop, worker thread)");
        assert_eq!(l.parent_of(2, 100, 7), None, "other process");
        l.connection_closed(1, 10);
        assert_eq!(l.parent_of(1, 100, 7), None, "outside any request: a root");
    }

    #[test]
    fn prefetched_work_on_one_thread_is_handled_oldest_first() {
        let mut l = Linker::default();
        let first = started(&mut l, 1, 10, 100, 5);
        let second = started(&mut l, 1, 11, 100, 6); // read in the same batch
        assert_eq!(l.parent_of(1, 100, 7), Some(first));
        l.request_finished(1, 10);
        assert_eq!(l.parent_of(1, 100, 8), Some(second));
    }

    #[test]
    fn a_late_client_record_is_adopted_by_the_waiting_request() {
        let mut l = Linker::default();
        let own = started(&mut l, 1, 10, 100, 5);
        let client = SpanCtx { trace_id: [9; 16], span_id: [8; 8], parent_span_id: None, sampled: true };
        assert!(l.adopt(1, 10, &client));
        let now = l.parent_of(1, 100, 6).unwrap();
        assert_eq!((now.trace_id, now.span_id, now.parent_span_id), (client.trace_id, own.span_id, Some(client.span_id)));
        assert!(!l.adopt(1, 10, &client), "only once");
        assert!(!l.adopt(1, 99, &client), "unknown connection");
    }

    #[test]
    fn incoming_traceparent_and_sampling_are_fixed_at_request_time() {
        let mut l = Linker::default();
        let tp = crate::spans::traceparent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        l.request_started(1, 10, 100, 5, Some(tp), &Sampler::default());
        let ctx = l.parent_of(1, 100, 6).unwrap();
        assert_eq!(ctx.trace_id, tp.trace_id);
        assert_eq!(ctx.parent_span_id, Some(tp.parent_id));
        assert!(!ctx.sampled, "parent-based: the caller did not sample");
    }
}
