//! Causality within a process: which request a client call (DB, outgoing
//! HTTP, publish) was made for.
//!
//! When a server connection finishes reading a request, the request is *in
//! flight* until its response is written; its span ids and sampling decision
//! are fixed at that moment. Only requests already read when the call starts
//! count. A client call made by a process nests under:
//! 1. the request in flight on the same thread (thread-per-request servers:
//!    the thread that read the request makes the calls). Several on that
//!    thread from one source (pipelined requests of a connection, prefetched
//!    deliveries of a channel) are handled in order: the oldest. Several from
//!    different sources (an event loop serving two connections at once) are
//!    ambiguous: no parent, counted. Else
//! 2. the only request in flight in that process (work handed to another
//!    thread), else
//! 3. nothing: it stays a root span (ambiguous, or outside any request).
use std::collections::HashMap;

use super::Evidence;
use crate::spans::{sampler::Sampler, SpanCtx};

/// What [`Linker::parent_of`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parent {
    /// The request, and the rule that chose it.
    Request(SpanCtx, Evidence),
    /// Several requests could have made the call: it stays a root.
    Ambiguous,
    /// Outside any request.
    None,
}

impl Parent {
    pub fn ctx(self) -> Option<SpanCtx> {
        match self {
            Parent::Request(c, _) => Some(c),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct InFlight {
    /// The request's key (a connection, or a delivery).
    conn: u64,
    /// The connection it came from: requests of one source are sequential.
    source: u64,
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
    /// Requests forgotten in flight because their process had too many.
    pub evicted: u64,
}

impl Linker {
    /// A server connection of `pid` read a request on thread `tid`; its
    /// context comes from the incoming traceparent, if any. `conn` keys the
    /// request; `source` is the connection it arrived on.
    #[allow(clippy::too_many_arguments)]
    pub fn request_started(
        &mut self,
        pid: u32,
        conn: u64,
        source: u64,
        tid: u32,
        since_ns: u64,
        incoming: Option<crate::spans::traceparent::TraceParent>,
        sampler: &Sampler,
    ) -> SpanCtx {
        let trace_id = incoming.map_or_else(crate::spans::new_trace_id, |t| t.trace_id);
        // A request with a parent: its ids continue the caller's trace.
        let ctx = SpanCtx {
            trace_id,
            span_id: crate::spans::new_span_id(),
            parent_span_id: incoming.map(|t| t.parent_id),
            sampled: sampler.should_sample(&trace_id, incoming.map(|t| t.sampled)),
        };
        let list = self.by_pid.entry(pid).or_default();
        if list.len() >= MAX_PER_PROCESS {
            list.remove(0);
            self.evicted += 1;
        }
        list.push(InFlight {
            conn,
            source,
            tid,
            since_ns,
            ctx,
        });
        ctx
    }

    /// Requests in flight, all processes.
    pub fn entries(&self) -> usize {
        self.by_pid.values().map(Vec::len).sum()
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
        let Some(f) = self
            .by_pid
            .get_mut(&pid)
            .and_then(|l| l.iter_mut().find(|f| f.conn == conn))
        else {
            return false;
        };
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
            list.retain(|f| f.conn != conn && f.source != conn);
            if list.is_empty() {
                self.by_pid.remove(&pid);
            }
        }
    }

    /// The request a client call of `pid` on thread `tid`, started at
    /// `start_ns`, belongs to.
    pub fn parent_of(&self, pid: u32, tid: u32, start_ns: u64) -> Parent {
        let Some(list) = self.by_pid.get(&pid) else {
            return Parent::None;
        };
        let begun = || list.iter().filter(|f| f.since_ns <= start_ns);
        let mut same_thread = begun().filter(|f| f.tid == tid);
        if let Some(first) = same_thread.next() {
            let mut oldest = first;
            for f in same_thread {
                if f.source != first.source {
                    return Parent::Ambiguous;
                }
                if f.since_ns < oldest.since_ns {
                    oldest = f;
                }
            }
            return Parent::Request(oldest.ctx, Evidence::SameThread);
        }
        let mut all = begun();
        match (all.next(), all.next()) {
            (Some(only), None) => Parent::Request(only.ctx, Evidence::OnlyInFlight),
            (Some(_), Some(_)) => Parent::Ambiguous,
            _ => Parent::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(l: &mut Linker, pid: u32, conn: u64, tid: u32, at: u64) -> SpanCtx {
        l.request_started(pid, conn, conn, tid, at, None, &Sampler::AlwaysOn);
        l.by_pid[&pid].last().unwrap().ctx
    }

    #[test]
    fn same_thread_wins_then_the_only_request_then_none() {
        let mut l = Linker::default();
        let a = started(&mut l, 1, 10, 100, 5);
        let b = started(&mut l, 1, 11, 101, 6);
        assert_eq!(
            l.parent_of(1, 100, 7),
            Parent::Request(a, Evidence::SameThread),
            "thread 100 handles request a"
        );
        assert_eq!(
            l.parent_of(1, 101, 7),
            Parent::Request(b, Evidence::SameThread)
        );
        assert_eq!(
            l.parent_of(1, 999, 7),
            Parent::Ambiguous,
            "two in flight, other thread"
        );
        assert_eq!(
            l.parent_of(1, 100, 4),
            Parent::None,
            "a call before the request arrived is not its child"
        );
        assert_eq!(l.request_finished(1, 11), Some(b));
        assert_eq!(
            l.parent_of(1, 999, 7),
            Parent::Request(a, Evidence::OnlyInFlight),
            "the only request in flight (event loop, worker thread)"
        );
        assert_eq!(l.parent_of(2, 100, 7), Parent::None, "other process");
        l.connection_closed(1, 10);
        assert_eq!(
            l.parent_of(1, 100, 7),
            Parent::None,
            "outside any request: a root"
        );
    }

    #[test]
    fn prefetched_work_on_one_thread_is_handled_oldest_first() {
        let mut l = Linker::default();
        // Two deliveries of one channel, read in the same batch.
        l.request_started(1, 10, 3, 100, 5, None, &Sampler::AlwaysOn);
        l.request_started(1, 11, 3, 100, 6, None, &Sampler::AlwaysOn);
        let (first, second) = (l.by_pid[&1][0].ctx, l.by_pid[&1][1].ctx);
        assert_eq!(
            l.parent_of(1, 100, 7),
            Parent::Request(first, Evidence::SameThread)
        );
        l.request_finished(1, 10);
        assert_eq!(
            l.parent_of(1, 100, 8),
            Parent::Request(second, Evidence::SameThread)
        );
    }

    #[test]
    fn an_event_loop_serving_two_connections_at_once_is_ambiguous() {
        let mut l = Linker::default();
        let a = started(&mut l, 1, 10, 100, 5);
        assert_eq!(
            l.parent_of(1, 100, 6),
            Parent::Request(a, Evidence::SameThread),
            "b not read yet: a's call"
        );
        let b = started(&mut l, 1, 11, 100, 7);
        assert_eq!(
            l.parent_of(1, 100, 8),
            Parent::Ambiguous,
            "a and b in flight on one thread"
        );
        l.request_finished(1, 10);
        assert_eq!(
            l.parent_of(1, 100, 9),
            Parent::Request(b, Evidence::SameThread),
            "a answered: b's call"
        );
    }

    #[test]
    fn a_late_client_record_is_adopted_by_the_waiting_request() {
        let mut l = Linker::default();
        let own = started(&mut l, 1, 10, 100, 5);
        let client = SpanCtx {
            trace_id: [9; 16],
            span_id: [8; 8],
            parent_span_id: None,
            sampled: true,
        };
        assert!(l.adopt(1, 10, &client));
        let now = l.parent_of(1, 100, 6).ctx().unwrap();
        assert_eq!(
            (now.trace_id, now.span_id, now.parent_span_id),
            (client.trace_id, own.span_id, Some(client.span_id))
        );
        assert!(!l.adopt(1, 10, &client), "only once");
        assert!(!l.adopt(1, 99, &client), "unknown connection");
    }

    #[test]
    fn incoming_traceparent_and_sampling_are_fixed_at_request_time() {
        let mut l = Linker::default();
        let tp = crate::spans::traceparent::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )
        .unwrap();
        l.request_started(1, 10, 10, 100, 5, Some(tp), &Sampler::default());
        let ctx = l.parent_of(1, 100, 6).ctx().unwrap();
        assert_eq!(ctx.trace_id, tp.trace_id);
        assert_eq!(ctx.parent_span_id, Some(tp.parent_id));
        assert!(!ctx.sampled, "parent-based: the caller did not sample");
    }
}
