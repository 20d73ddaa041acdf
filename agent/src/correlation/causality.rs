//! Causality within a process: which request a client call (DB, outgoing
//! HTTP, publish) was made for.
//!
//! When a server connection finishes reading a request, the request is *in
//! flight* until its response is written; its span ids and sampling decision
//! are fixed at that moment. Only requests already read when the call starts
//! count. A client call made by a process nests under:
//! 1. **tick**: the request whose bytes its thread read last, when nothing
//!    came between that read and the call's write. The kernel advances a
//!    thread's tick at every read (of any fd), poll and sleep, and stamps
//!    each record with it, so "same tick" means the callback that read
//!    request X wrote the call: an event loop serving many requests at once
//!    (Node.js) links each call to its own request. A reply read counts as
//!    its call's request's input, when that request was read on this thread
//!    (the next query of the same handler). One exception: a write on the
//!    very connection whose reply opened the tick may be another request's
//!    call that waited for that connection (a pool at its limit hands it
//!    over). It is ambiguous while another request of the thread is
//!    *stalled*: the tick of its last input wrote nothing and connected
//!    nothing (or is forgotten).
//!    Else
//!
//!    A call written in a tick no known read opened (an event loop writes a
//!    new connection's first request once the connect completes) is the
//!    call of the request that opened the connection, if that request did
//!    nothing since: the connect was the last thing its tick did.
//! 2. the request in flight on the same thread (thread-per-request servers:
//!    the thread that read the request makes the calls). Several requests
//!    pipelined on one connection are handled in order: the oldest. Several
//!    from different connections, or several deliveries of one channel
//!    (prefetch: which one a handler works on is not on the wire), are
//!    ambiguous: no parent, counted. Else
//! 3. the only request in flight in that process (work handed to another
//!    thread), else
//! 4. nothing: it stays a root span (ambiguous, or outside any request).
use std::collections::{HashMap, HashSet, VecDeque};

use super::Evidence;
use crate::{
    protocols::SegTime,
    spans::{sampler::Sampler, SpanCtx},
};

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
    /// Calls linked to it by its thread (not by the only-in-flight rule).
    calls: u32,
}

/// Bound on requests in flight per process (a stalled server must not grow memory).
const MAX_PER_PROCESS: usize = 4096;
/// Reads remembered per thread: a call is written within a few reads of
/// its input, or its tick has moved on anyway.
const MARKS_PER_THREAD: usize = 64;
/// Bound on threads with remembered reads.
pub const MAX_THREADS: usize = 16384;

/// A read that delivered a request's input: the request's bytes, or the
/// reply to a call made for it.
#[derive(Debug, Clone, Copy)]
struct Mark {
    tick: u32,
    conn: u64,
    /// The request's span id.
    request: [u8; 8],
    /// A reply to a call (not the request itself).
    reply: bool,
    /// The thread wrote something in this tick.
    wrote: bool,
    /// The thread opened a client connection in this tick.
    connected: bool,
}

#[derive(Debug, Clone, Copy)]
struct Opener {
    tid: u32,
    tick: u32,
    request: [u8; 8],
}

/// The delivery a consumer thread acknowledged last, having made no call
/// for it while it was in flight: a consumer that acks first and then works
/// is working on it now.
#[derive(Debug, Clone, Copy)]
struct Acked {
    ctx: SpanCtx,
    /// Its channel's connection.
    source: u64,
    /// The tick of the ack's write.
    tick: u32,
    at_ns: u64,
}

#[derive(Default)]
pub struct Linker {
    by_pid: HashMap<u32, Vec<InFlight>>,
    /// Recent input reads per pid, per tid.
    marks: HashMap<u32, HashMap<u32, VecDeque<Mark>>>,
    /// Threads in `marks`.
    marked: usize,
    /// Client connections opened in a tick that a request's input opened,
    /// until their first call: conn -> (pid, tid, tick, request).
    openers: HashMap<u64, Opener>,
    /// Consumers (pid, channel connection) seen acknowledging a delivery
    /// after the calls made for it.
    acks_late: HashSet<(u32, u64)>,
    /// Consumers (pid, channel connection) seen making a call right after
    /// acknowledging a delivery, with no other delivery in flight: they ack
    /// first, then work on what they acked.
    acks_early: HashSet<(u32, u64)>,
    /// Per (pid, tid): the delivery acknowledged last with no call made.
    acked: HashMap<(u32, u32), Acked>,
    /// Requests forgotten in flight because their process had too many.
    pub evicted: u64,
    /// Remembered reads dropped because too many threads had some.
    pub marks_dropped: u64,
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
            calls: 0,
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

    /// Threads with remembered reads, and new connections with an opener.
    pub fn marked_threads(&self) -> usize {
        self.marked + self.openers.len()
    }

    /// A client connection of `pid` opened by thread `tid` in `tick`: if a
    /// request's input opened that tick, its first call is that request's.
    pub fn connection_opened(&mut self, pid: u32, conn: u64, (tid, tick): (u32, u32)) {
        if tick == 0 {
            return;
        }
        let mark = self.marks.get_mut(&pid).and_then(|t| t.get_mut(&tid));
        let Some(m) = mark.and_then(|q| q.iter_mut().rev().find(|m| m.tick == tick)) else {
            return;
        };
        m.connected = true;
        let request = m.request;
        if self.openers.len() >= MAX_THREADS {
            self.marks_dropped += self.openers.len() as u64;
            self.openers.clear();
        }
        self.openers.insert(conn, Opener { tid, tick, request });
    }

    /// The read `at` on `conn` delivered input of request `request`: the
    /// request itself, or (`reply`) the reply to a call made for it.
    pub fn read_delivered(
        &mut self,
        pid: u32,
        at: SegTime,
        conn: u64,
        request: [u8; 8],
        reply: bool,
    ) {
        if at.tick == 0 {
            return;
        }
        let known = self
            .marks
            .get(&pid)
            .is_some_and(|t| t.contains_key(&at.tid));
        if self.marked >= MAX_THREADS && !known {
            self.marks_dropped += self.marked as u64;
            self.marks.clear();
            self.marked = 0;
        }
        let q = self
            .marks
            .entry(pid)
            .or_default()
            .entry(at.tid)
            .or_insert_with(|| {
                self.marked += 1;
                VecDeque::new()
            });
        if q.len() >= MARKS_PER_THREAD {
            q.pop_front();
        }
        q.push_back(Mark {
            tick: at.tick,
            conn,
            request,
            reply,
            wrote: false,
            connected: false,
        });
    }

    /// A thread wrote to a connection in `tick`.
    pub fn wrote(&mut self, pid: u32, tid: u32, tick: u32) {
        let found = self
            .marks
            .get_mut(&pid)
            .and_then(|t| t.get_mut(&tid))
            .and_then(|q| q.iter_mut().rev().find(|m| m.tick == tick));
        if let Some(m) = found {
            m.wrote = true;
        }
    }

    /// The response of the oldest request in flight on `conn` was written.
    pub fn request_finished(&mut self, pid: u32, conn: u64) -> Option<SpanCtx> {
        self.finish(pid, conn).map(|f| f.ctx)
    }

    /// Delivery `key` was acknowledged (or rejected) by a write at `at`.
    pub fn delivery_acked(&mut self, pid: u32, key: u64, at: SegTime) -> Option<SpanCtx> {
        let f = self.finish(pid, key)?;
        if f.calls == 0 && at.tick != 0 {
            if self.acked.len() >= MAX_THREADS {
                self.marks_dropped += self.acked.len() as u64;
                self.acked.clear();
            }
            let a = Acked {
                ctx: f.ctx,
                source: f.source,
                tick: at.tick,
                at_ns: at.enter_ns,
            };
            self.acked.insert((pid, at.tid), a);
        } else {
            self.acked.remove(&(pid, at.tid));
        }
        Some(f.ctx)
    }

    fn finish(&mut self, pid: u32, conn: u64) -> Option<InFlight> {
        let list = self.by_pid.get_mut(&pid)?;
        let i = list.iter().position(|f| f.conn == conn)?;
        let f = list.remove(i);
        if list.is_empty() {
            self.by_pid.remove(&pid);
        }
        // A delivery acknowledged after the calls its thread made for it:
        // this consumer acks late, so with several deliveries in flight it
        // works on the oldest.
        if f.conn != f.source && f.calls > 0 {
            if self.acks_late.len() >= MAX_THREADS {
                self.marks_dropped += self.acks_late.len() as u64;
                self.acks_late.clear();
            }
            self.acks_late.insert((pid, f.source));
        }
        Some(f)
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

    /// A connection closed: its unanswered requests are over, and the
    /// reads it delivered are forgotten.
    pub fn connection_closed(&mut self, pid: u32, conn: u64) {
        if let Some(list) = self.by_pid.get_mut(&pid) {
            list.retain(|f| f.conn != conn && f.source != conn);
            if list.is_empty() {
                self.by_pid.remove(&pid);
            }
        }
        if let Some(threads) = self.marks.get_mut(&pid) {
            let before = threads.len();
            threads.retain(|_, q| {
                q.retain(|m| m.conn != conn);
                !q.is_empty()
            });
            self.marked -= before - threads.len();
            if threads.is_empty() {
                self.marks.remove(&pid);
            }
        }
        self.openers.remove(&conn);
        self.acks_late.remove(&(pid, conn));
        self.acks_early.remove(&(pid, conn));
        self.acked.retain(|&(p, _), a| p != pid || a.source != conn);
    }

    /// The request a client call of `pid` on `conn`, whose first write is
    /// `at`, belongs to.
    pub fn parent_of(&mut self, pid: u32, at: SegTime, conn: u64) -> Parent {
        let parent = self.find_parent(pid, at, conn);
        // Count the calls a thread made for each request (see acks_late).
        if let Parent::Request(
            ctx,
            Evidence::Tick | Evidence::Opener | Evidence::SameThread | Evidence::Goroutine,
        ) = parent
        {
            let list = self.by_pid.get_mut(&pid).into_iter().flatten();
            if let Some(f) = list.into_iter().find(|f| f.ctx.span_id == ctx.span_id) {
                f.calls = f.calls.saturating_add(1);
            }
        }
        parent
    }

    fn find_parent(&mut self, pid: u32, at: SegTime, conn: u64) -> Parent {
        let opener = self.openers.remove(&conn);
        if let Some(p) = self.by_ack(pid, at) {
            return p;
        }
        let Some(list) = self.by_pid.get(&pid) else {
            return Parent::None;
        };
        if let Some(p) = self.by_tick(list, pid, at, conn) {
            return p;
        }
        if let Some(p) = opener.and_then(|o| self.by_opener(list, pid, at, o)) {
            // It acted (it waits for this call now, not for a connection).
            if let (Some(o), Some(q)) = (
                opener,
                self.marks.get_mut(&pid).and_then(|t| t.get_mut(&at.tid)),
            ) {
                if let Some(m) = q.iter_mut().rev().find(|m| m.request == o.request) {
                    m.wrote = true;
                }
            }
            return p;
        }
        if let Some(p) = self.on_thread(list, pid, at.tid, at.enter_ns) {
            return match p {
                Parent::Request(ctx, _) if is_goroutine(at.tid) => {
                    Parent::Request(ctx, Evidence::Goroutine)
                }
                p => p,
            };
        }
        if let Some(p) = self.by_lineage(list, pid, at) {
            return p;
        }
        let begun = || list.iter().filter(|f| f.since_ns <= at.enter_ns);
        let mut all = begun();
        match (all.next(), all.next()) {
            (Some(only), None) if self.may_work_on_acked(pid, at.tid, only) => Parent::Ambiguous,
            (Some(only), None) => Parent::Request(only.ctx, Evidence::OnlyInFlight),
            (Some(_), Some(_)) => Parent::Ambiguous,
            _ => Parent::None,
        }
    }

    /// A consumer that acknowledges first, then works: a call of thread
    /// `tid` after its ack of a delivery, until its next ack, is made for
    /// the acknowledged one. Learnt from a call right after an ack (same
    /// tick: nothing read in between) with no other delivery of the channel
    /// in flight; until then a call in the ack's tick is ambiguous (it may
    /// be the next delivery's, of a consumer that acks late).
    fn by_ack(&mut self, pid: u32, at: SegTime) -> Option<Parent> {
        if at.tick == 0 {
            return None;
        }
        let a = *self.acked.get(&(pid, at.tid))?;
        if self.acks_late.contains(&(pid, a.source)) {
            return None;
        }
        let learnt = self.acks_early.contains(&(pid, a.source));
        if at.tick == a.tick {
            if learnt {
                return Some(Parent::Request(a.ctx, Evidence::Ack));
            }
            let others =
                self.by_pid.get(&pid).into_iter().flatten().any(|f| {
                    f.source == a.source && f.conn != f.source && f.since_ns <= at.enter_ns
                });
            if others {
                return Some(Parent::Ambiguous);
            }
            if self.acks_early.len() >= MAX_THREADS {
                self.marks_dropped += self.acks_early.len() as u64;
                self.acks_early.clear();
            }
            self.acks_early.insert((pid, a.source));
            return Some(Parent::Request(a.ctx, Evidence::Ack));
        }
        // Once learnt, the thread works on what it acknowledged last until
        // it acknowledges the next one.
        (learnt && at.enter_ns >= a.at_ns).then_some(Parent::Request(a.ctx, Evidence::Ack))
    }

    /// Whether delivery `f` in flight may not be what its thread works on:
    /// the thread acknowledged another delivery of that channel, without a
    /// call for it, after reading `f`, and the consumer is not known to ack
    /// late (one that acks first works on the acknowledged one).
    fn may_work_on_acked(&self, pid: u32, tid: u32, f: &InFlight) -> bool {
        f.conn != f.source
            && !self.acks_late.contains(&(pid, f.source))
            && self
                .acked
                .get(&(pid, tid))
                .is_some_and(|a| a.source == f.source && a.at_ns >= f.since_ns)
    }

    /// Rule 2: the request in flight on thread (or goroutine) `tid`, read
    /// before `by_ns`. None if there is none.
    fn on_thread(&self, list: &[InFlight], pid: u32, tid: u32, by_ns: u64) -> Option<Parent> {
        let mut same_thread = list.iter().filter(|f| f.since_ns <= by_ns && f.tid == tid);
        let first = same_thread.next()?;
        if self.may_work_on_acked(pid, tid, first) {
            return Some(Parent::Ambiguous);
        }
        let mut oldest = first;
        // Deliveries are keyed apart from their channel's connection.
        let acks_late = self.acks_late.contains(&(pid, first.source));
        for f in same_thread {
            // Two connections, or two deliveries of a consumer not known
            // to ack late (it may ack first, then work): not on the wire.
            if f.source != first.source || (f.conn != f.source && !acks_late) {
                return Some(Parent::Ambiguous);
            }
            if f.since_ns < oldest.since_ns {
                oldest = f;
            }
        }
        Some(Parent::Request(oldest.ctx, Evidence::SameThread))
    }

    /// Go, for a goroutine that serves no request itself: the request of
    /// the goroutine that sent it this call on a channel (net/http's
    /// transport writes from its own goroutine), else of the goroutine that
    /// started that sender, else of the one that started the caller. A
    /// starter counts only with a request it had begun when it ran `go`: a
    /// goroutine started by an earlier request is no child of the next one
    /// its starter serves.
    fn by_lineage(&self, list: &[InFlight], pid: u32, at: SegTime) -> Option<Parent> {
        let l = at.lineage;
        let steps = [
            (l.waker, at.enter_ns),
            (l.waker_origin, l.waker_origin_ns),
            (l.origin, l.origin_ns),
        ];
        for (g, by_ns) in steps {
            if g == 0 {
                continue;
            }
            match self.on_thread(list, pid, g, by_ns) {
                Some(Parent::Request(ctx, _)) => {
                    return Some(Parent::Request(ctx, Evidence::Goroutine))
                }
                Some(p) => return Some(p),
                None => {}
            }
        }
        None
    }

    /// Rule 1, a new connection's first call: the request that opened it,
    /// if the tick of that connect was its last input and wrote nothing.
    fn by_opener(&self, list: &[InFlight], pid: u32, at: SegTime, o: Opener) -> Option<Parent> {
        if o.tid != at.tid {
            return None;
        }
        let f = list
            .iter()
            .find(|f| f.ctx.span_id == o.request && f.tid == at.tid && f.since_ns <= at.enter_ns)?;
        let last = self
            .marks
            .get(&pid)?
            .get(&at.tid)?
            .iter()
            .rev()
            .find(|m| m.request == o.request)?;
        (last.tick == o.tick && !last.wrote).then_some(Parent::Request(f.ctx, Evidence::Opener))
    }

    /// Rule 1: the request whose input this thread read last, with nothing
    /// between that read and the write `at`.
    fn by_tick(&self, list: &[InFlight], pid: u32, at: SegTime, conn: u64) -> Option<Parent> {
        if at.tick == 0 {
            return None;
        }
        let m = self
            .marks
            .get(&pid)?
            .get(&at.tid)?
            .iter()
            .rev()
            .find(|m| m.tick == at.tick)?;
        // Still in flight, and read on this thread: a reply read for a
        // request another thread serves says nothing of this thread's work.
        let f = list
            .iter()
            .find(|f| f.ctx.span_id == m.request && f.tid == at.tid && f.since_ns <= at.enter_ns)?;
        if m.reply && m.conn == conn {
            // Each request's last input before this tick, in one pass over
            // the thread's marks (the newest first).
            let mut last: HashMap<[u8; 8], &Mark> = HashMap::new();
            for k in self.marks[&pid][&at.tid].iter().rev() {
                if k.tick != at.tick {
                    last.entry(k.request).or_insert(k);
                }
            }
            // That input wrote nothing and opened no connection (or is
            // forgotten): the request may be waiting for a pooled one.
            let stalled = |o: &InFlight| {
                last.get(&o.ctx.span_id)
                    .is_none_or(|k| !k.wrote && !k.connected)
            };
            let mut others = list.iter().filter(|o| {
                o.tid == at.tid && o.since_ns <= at.enter_ns && o.ctx.span_id != m.request
            });
            if others.any(stalled) {
                return Some(Parent::Ambiguous);
            }
        }
        Some(Parent::Request(f.ctx, Evidence::Tick))
    }
}

/// Whether a record's thread id names a goroutine (`sonde_common::goroutine_id`).
pub fn is_goroutine(tid: u32) -> bool {
    tid & 0x8000_0000 != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::Lineage;

    /// A write on thread `tid` at `ns`, with no tick.
    fn at(tid: u32, ns: u64) -> SegTime {
        SegTime {
            enter_ns: ns,
            exit_ns: ns,
            tid,
            tick: 0,
            lineage: Default::default(),
        }
    }

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
            l.parent_of(1, at(100, 7), 0),
            Parent::Request(a, Evidence::SameThread),
            "thread 100 handles request a"
        );
        assert_eq!(
            l.parent_of(1, at(101, 7), 0),
            Parent::Request(b, Evidence::SameThread)
        );
        assert_eq!(
            l.parent_of(1, at(999, 7), 0),
            Parent::Ambiguous,
            "two in flight, other thread"
        );
        assert_eq!(
            l.parent_of(1, at(100, 4), 0),
            Parent::None,
            "a call before the request arrived is not its child"
        );
        assert_eq!(l.request_finished(1, 11), Some(b));
        assert_eq!(
            l.parent_of(1, at(999, 7), 0),
            Parent::Request(a, Evidence::OnlyInFlight),
            "the only request in flight (event loop, worker thread)"
        );
        assert_eq!(l.parent_of(2, at(100, 7), 0), Parent::None, "other process");
        l.connection_closed(1, 10);
        assert_eq!(
            l.parent_of(1, at(100, 7), 0),
            Parent::None,
            "outside any request: a root"
        );
    }

    #[test]
    fn prefetched_deliveries_are_ambiguous_until_the_consumer_is_seen_to_ack_late() {
        let mut l = Linker::default();
        // Two deliveries of one channel (connection 3), read in one batch:
        // which one the handler works on is not on the wire (it may have
        // acknowledged the first before working on it).
        l.request_started(1, 10, 3, 100, 5, None, &Sampler::AlwaysOn);
        l.request_started(1, 11, 3, 100, 6, None, &Sampler::AlwaysOn);
        let second = l.by_pid[&1][1].ctx;
        assert_eq!(l.parent_of(1, at(100, 7), 0), Parent::Ambiguous);
        l.request_finished(1, 10);
        assert_eq!(
            l.parent_of(1, at(100, 8), 0),
            Parent::Request(second, Evidence::SameThread),
            "one left"
        );
        // Its call came before its ack: this consumer acks late.
        l.request_finished(1, 11);
        l.request_started(1, 12, 3, 100, 20, None, &Sampler::AlwaysOn);
        l.request_started(1, 13, 3, 100, 21, None, &Sampler::AlwaysOn);
        let oldest = l.by_pid[&1][0].ctx;
        assert_eq!(
            l.parent_of(1, at(100, 22), 0),
            Parent::Request(oldest, Evidence::SameThread)
        );
        // Another channel of the process has not shown it.
        l.request_started(1, 14, 4, 101, 20, None, &Sampler::AlwaysOn);
        l.request_started(1, 15, 4, 101, 21, None, &Sampler::AlwaysOn);
        assert_eq!(l.parent_of(1, at(101, 22), 0), Parent::Ambiguous);
        l.connection_closed(1, 3);
        assert!(
            l.acks_late.is_empty(),
            "forgotten with its channel's connection"
        );
    }

    #[test]
    fn a_consumer_that_acks_first_works_on_what_it_acked() {
        let mut l = Linker::default();
        // Channel connection 3, consumer thread 100. The first delivery
        // arrives alone; the consumer acks it (tick 4), then queries in
        // the same tick: it acks first.
        l.request_started(1, 10, 3, 100, 5, None, &Sampler::AlwaysOn);
        let first = l.by_pid[&1][0].ctx;
        l.delivery_acked(1, 10, in_tick(100, 6, 4));
        assert_eq!(
            l.parent_of(1, in_tick(100, 7, 4), 20),
            Parent::Request(first, Evidence::Ack)
        );
        // Its reply read (tick 5), then the next call of the same work.
        l.read_delivered(1, in_tick(100, 8, 5), 20, first.span_id, true);
        // Meanwhile two more deliveries were read (prefetch).
        l.request_started(1, 11, 3, 100, 8, None, &Sampler::AlwaysOn);
        l.request_started(1, 12, 3, 100, 8, None, &Sampler::AlwaysOn);
        let second = l.by_pid[&1][0].ctx;
        assert_eq!(
            l.parent_of(1, in_tick(100, 9, 5), 21),
            Parent::Request(first, Evidence::Ack),
            "not a delivery still in flight"
        );
        // The second is acked, then worked on, the third still in flight.
        l.delivery_acked(1, 11, in_tick(100, 10, 6));
        assert_eq!(
            l.parent_of(1, in_tick(100, 11, 6), 20),
            Parent::Request(second, Evidence::Ack)
        );
        // Later steps of that work (a poll or a file read came between).
        assert_eq!(
            l.parent_of(1, in_tick(100, 12, 9), 20),
            Parent::Request(second, Evidence::Ack)
        );
        // Another thread's calls are not this consumer's work.
        assert_ne!(
            l.parent_of(1, in_tick(101, 12, 9), 20),
            Parent::Request(second, Evidence::Ack)
        );
    }

    #[test]
    fn before_it_is_learnt_a_call_after_an_ack_with_others_in_flight_is_ambiguous() {
        let mut l = Linker::default();
        // Read together: the call after the first's ack is either the
        // first's (acks early) or the second's (acks late).
        l.request_started(1, 10, 3, 100, 5, None, &Sampler::AlwaysOn);
        l.request_started(1, 11, 3, 100, 5, None, &Sampler::AlwaysOn);
        l.delivery_acked(1, 10, in_tick(100, 6, 4));
        assert_eq!(l.parent_of(1, in_tick(100, 7, 4), 20), Parent::Ambiguous);
        // Nor is the second, the only one in flight, taken for it later.
        assert_eq!(l.parent_of(1, in_tick(100, 8, 7), 20), Parent::Ambiguous);
        assert!(l.acks_early.is_empty());
        l.connection_closed(1, 3);
        assert!(
            l.acked.is_empty(),
            "forgotten with its channel's connection"
        );
    }

    #[test]
    fn pipelined_requests_of_one_connection_are_handled_oldest_first() {
        let mut l = Linker::default();
        let first = started(&mut l, 1, 10, 100, 5);
        started(&mut l, 1, 10, 100, 6);
        assert_eq!(
            l.parent_of(1, at(100, 7), 0),
            Parent::Request(first, Evidence::SameThread)
        );
    }

    /// A write on `tid` at `ns`, in tick `tick`.
    fn in_tick(tid: u32, ns: u64, tick: u32) -> SegTime {
        SegTime {
            enter_ns: ns,
            exit_ns: ns + 1,
            tid,
            tick,
            lineage: Default::default(),
        }
    }

    /// An event loop (one thread) with three requests in flight: each
    /// callback's writes follow its own read.
    #[test]
    fn an_event_loops_calls_follow_the_read_of_their_tick() {
        let mut l = Linker::default();
        let (a, b, c) = (
            started(&mut l, 1, 10, 100, 5),
            started(&mut l, 1, 11, 100, 6),
            started(&mut l, 1, 12, 100, 7),
        );
        l.read_delivered(1, in_tick(100, 5, 21), 10, a.span_id, false);
        l.read_delivered(1, in_tick(100, 6, 22), 11, b.span_id, false);
        l.read_delivered(1, in_tick(100, 7, 23), 12, c.span_id, false);
        assert_eq!(
            l.parent_of(1, in_tick(100, 8, 22), 50),
            Parent::Request(b, Evidence::Tick)
        );
        assert_eq!(
            l.parent_of(1, in_tick(100, 8, 21), 50),
            Parent::Request(a, Evidence::Tick)
        );
        assert_eq!(
            l.parent_of(1, in_tick(100, 8, 24), 50),
            Parent::Ambiguous,
            "a tick no known read opened"
        );
        assert_eq!(
            l.parent_of(1, in_tick(100, 8, 0), 50),
            Parent::Ambiguous,
            "no tick: the old rules"
        );
        assert_eq!(
            l.parent_of(1, in_tick(101, 8, 22), 50),
            Parent::Ambiguous,
            "another thread's tick 22"
        );
        // A's query on connection 50 is answered; A's next query follows
        // that reply, on another connection or (nothing else waiting) on
        // the same.
        l.read_delivered(1, in_tick(100, 9, 25), 50, a.span_id, true);
        assert_eq!(
            l.parent_of(1, in_tick(100, 10, 25), 51),
            Parent::Request(a, Evidence::Tick)
        );
        assert_eq!(
            l.parent_of(1, in_tick(100, 10, 25), 50),
            Parent::Ambiguous,
            "on the connection the reply freed: maybe b's or c's queued query"
        );
        // b's and c's ticks wrote (their calls, on connections of their
        // own): neither waits for a connection.
        l.wrote(1, 100, 22);
        assert_eq!(
            l.parent_of(1, in_tick(100, 10, 25), 50),
            Parent::Ambiguous,
            "c may still wait"
        );
        l.wrote(1, 100, 23);
        assert_eq!(
            l.parent_of(1, in_tick(100, 10, 25), 50),
            Parent::Request(a, Evidence::Tick),
            "nothing else waits"
        );
        // A answered: a later write of its tick is not its call.
        l.request_finished(1, 10);
        assert_eq!(
            l.parent_of(1, in_tick(100, 11, 25), 51),
            Parent::Ambiguous,
            "b and c in flight, no evidence"
        );
    }

    /// An event loop opens a connection for request b; its first call is
    /// written once the connect completes, in a tick no read opened.
    #[test]
    fn a_new_connections_first_call_is_its_openers() {
        let mut l = Linker::default();
        let (a, b) = (
            started(&mut l, 1, 10, 100, 5),
            started(&mut l, 1, 11, 100, 6),
        );
        l.read_delivered(1, in_tick(100, 5, 21), 10, a.span_id, false);
        l.read_delivered(1, in_tick(100, 6, 22), 11, b.span_id, false);
        l.connection_opened(1, 50, (100, 22));
        l.connection_opened(1, 51, (100, 22));
        assert_eq!(
            l.parent_of(1, in_tick(100, 9, 30), 50),
            Parent::Request(b, Evidence::Opener)
        );
        assert_eq!(
            l.parent_of(1, in_tick(100, 9, 31), 50),
            Parent::Ambiguous,
            "only the first call"
        );
        // b went on (its first call): connection 51 may serve anyone now.
        assert_eq!(l.parent_of(1, in_tick(100, 9, 32), 51), Parent::Ambiguous);
        // A connect in a tick no request's read opened names no one.
        l.connection_opened(1, 52, (100, 40));
        assert_eq!(l.parent_of(1, in_tick(100, 9, 41), 52), Parent::Ambiguous);
        l.connection_opened(1, 53, (100, 21));
        l.connection_closed(1, 53);
        assert_eq!(l.marked_threads(), 1, "forgotten at close");
    }

    #[test]
    fn a_reply_read_for_a_request_another_thread_serves_is_no_evidence() {
        let mut l = Linker::default();
        // Requests read by a selector thread (100), worked on by a pool.
        let a = started(&mut l, 1, 10, 100, 5);
        let _b = started(&mut l, 1, 11, 100, 6);
        l.read_delivered(1, in_tick(200, 7, 3), 50, a.span_id, true);
        assert_eq!(l.parent_of(1, in_tick(200, 8, 3), 51), Parent::Ambiguous);
    }

    #[test]
    fn marks_are_bounded_and_forgotten_with_their_connection() {
        let mut l = Linker::default();
        let a = started(&mut l, 1, 10, 100, 5);
        for tick in 1..=MARKS_PER_THREAD as u32 + 5 {
            l.read_delivered(1, in_tick(100, 5, tick), 10, a.span_id, false);
        }
        assert_eq!(l.marks[&1][&100].len(), MARKS_PER_THREAD);
        l.read_delivered(1, in_tick(100, 5, 0), 10, a.span_id, false);
        assert_eq!(
            l.marks[&1][&100].len(),
            MARKS_PER_THREAD,
            "no tick: nothing to remember"
        );
        assert_eq!(l.marked_threads(), 1);
        l.connection_closed(1, 10);
        assert_eq!((l.marked_threads(), l.marks.len()), (0, 0));
        for tid in 0..MAX_THREADS as u32 + 1 {
            l.read_delivered(2, in_tick(tid, 5, 1), 10, a.span_id, false);
        }
        assert_eq!(
            (l.marked_threads(), l.marks_dropped),
            (1, MAX_THREADS as u64),
            "counted when cleared"
        );
    }

    #[test]
    fn an_event_loop_serving_two_connections_at_once_is_ambiguous() {
        let mut l = Linker::default();
        let a = started(&mut l, 1, 10, 100, 5);
        assert_eq!(
            l.parent_of(1, at(100, 6), 0),
            Parent::Request(a, Evidence::SameThread),
            "b not read yet: a's call"
        );
        let b = started(&mut l, 1, 11, 100, 7);
        assert_eq!(
            l.parent_of(1, at(100, 8), 0),
            Parent::Ambiguous,
            "a and b in flight on one thread"
        );
        l.request_finished(1, 10);
        assert_eq!(
            l.parent_of(1, at(100, 9), 0),
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
        let now = l.parent_of(1, at(100, 6), 0).ctx().unwrap();
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
        let ctx = l.parent_of(1, at(100, 6), 0).ctx().unwrap();
        assert_eq!(ctx.trace_id, tp.trace_id);
        assert_eq!(ctx.parent_span_id, Some(tp.parent_id));
        assert!(!ctx.sampled, "parent-based: the caller did not sample");
    }

    /// Goroutines (names with the top bit set), as the Go probes report them.
    const G1: u32 = 0x8000_0001;
    const G2: u32 = 0x8000_0002;
    const WRITER: u32 = 0x8000_0010;
    const SPAWNED: u32 = 0x8000_0020;

    fn go_write(ns: u64, lineage: Lineage) -> SegTime {
        SegTime {
            enter_ns: ns,
            exit_ns: ns + 1,
            tid: WRITER,
            tick: 0,
            lineage,
        }
    }

    #[test]
    fn a_goroutine_serves_its_own_request() {
        let mut l = Linker::default();
        let a = started(&mut l, 1, 10, G1, 5);
        let _b = started(&mut l, 1, 11, G2, 6);
        assert_eq!(
            l.parent_of(1, at(G1, 7), 0),
            Parent::Request(a, Evidence::Goroutine)
        );
    }

    #[test]
    fn a_channel_hand_off_names_the_sender_before_any_starter() {
        let mut l = Linker::default();
        let a = started(&mut l, 1, 10, G1, 5);
        let b = started(&mut l, 1, 11, G2, 6);
        // Net/http's writeLoop, handed the request by G2, started long ago
        // by G1's goroutine (which serves another request now).
        let handed = Lineage {
            waker: G2,
            origin: G1,
            origin_ns: 1,
            ..Default::default()
        };
        assert_eq!(
            l.parent_of(1, go_write(8, handed), 0),
            Parent::Request(b, Evidence::Goroutine)
        );
        // A goroutine G1 started while serving `a` (after it was read).
        let spawned = Lineage {
            origin: G1,
            origin_ns: 6,
            ..Default::default()
        };
        assert_eq!(
            l.parent_of(1, go_write(8, spawned), 0),
            Parent::Request(a, Evidence::Goroutine)
        );
        // The sender serves nothing itself (it was started for `a`).
        let relayed = Lineage {
            waker: SPAWNED,
            waker_origin: G1,
            waker_origin_ns: 7,
            ..Default::default()
        };
        assert_eq!(
            l.parent_of(1, go_write(9, relayed), 0),
            Parent::Request(a, Evidence::Goroutine)
        );
    }

    #[test]
    fn a_goroutine_started_before_its_starters_request_is_not_its_child() {
        let mut l = Linker::default();
        let _a = started(&mut l, 1, 10, G1, 5);
        let _b = started(&mut l, 1, 11, G2, 6);
        // Started by G1 at 3, before G1 read `a`: a worker of an earlier
        // request, now working for whoever fed it.
        let old = Lineage {
            origin: G1,
            origin_ns: 3,
            ..Default::default()
        };
        assert_eq!(l.parent_of(1, go_write(8, old), 0), Parent::Ambiguous);
        // Nothing at all: the thread rules see an unknown goroutine.
        assert_eq!(
            l.parent_of(1, go_write(8, Lineage::default()), 0),
            Parent::Ambiguous
        );
    }
}
