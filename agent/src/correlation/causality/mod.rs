//! Causality within a process: which request a client call (DB, outgoing
//! HTTP, publish) was made for.
//!
//! When a server connection finishes reading a request, the request is *in
//! flight* until its response is written; its span ids and sampling decision
//! are fixed at that moment. Only requests already read when the call starts
//! count. A client call made by a process nests under the first of these
//! that decides (`rules.rs`; ARCHITECTURE.md, "Causality", says why each
//! holds and where each gives up):
//! 0. **ack**: for a consumer learnt to acknowledge first and then work,
//!    the delivery its thread acknowledged last;
//! 1. **tick**: the request whose input (the request, or the reply to a
//!    call made for it) its thread read last, with nothing between that
//!    read and the call's write, in the same kernel tick (and, in a followed
//!    CPython thread, the same Python context); else, for a new
//!    connection's first call, the request whose input opened the tick of
//!    the connect (**connect**);
//! 2. **goroutine** / **same_thread**: the request in flight on the
//!    call's goroutine (Go) or thread, but not on a thread seen serving
//!    requests of two connections at once (an event loop: it also runs the
//!    callbacks of answered requests, `event_loop`); for a goroutine serving
//!    none, that of the goroutine that sent it the call on a channel or
//!    started it;
//! 3. **only_in_flight**: the only request in flight in the process;
//! 4. **task** (Python, decided later by the correlator with `python.rs`
//!    here): a call left ambiguous by the rules above, made in an asyncio
//!    task, waits for the response that task writes next;
//! 5. nothing: it stays a root span (ambiguous, or outside any request).
use foldhash::{HashMap, HashSet};
use std::collections::VecDeque;

mod goroutines;
mod multiplex;
mod python;
mod rules;
mod tasks;

use super::{Ambiguity, Evidence};
use crate::{
    protocols::SegTime,
    spans::{sampler::Sampler, SpanCtx},
};

/// What [`Linker::parent_of`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parent {
    /// The request, and the rule that chose it.
    Request(SpanCtx, Evidence),
    /// Several requests could have made the call: it stays a root, counted
    /// by why.
    Ambiguous(Ambiguity),
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
    /// An HTTP/2 stream is its own source (streams are concurrent).
    source: u64,
    /// The socket it arrived on (its requests go when it closes).
    socket: u64,
    tid: u32,
    /// CLOCK_MONOTONIC ns the request was fully read.
    since_ns: u64,
    ctx: SpanCtx,
    /// Calls linked to it by its thread (not by the only-in-flight rule).
    calls: u32,
    /// Order of arrival in the process (deliveries of one read share a time).
    seq: u64,
    /// A task handed over on a pipe (`tasks.rs`), not a request.
    task: Task,
    /// Python: the context the read that completed it ran in (0: unknown).
    reader: u32,
}

/// Whether an [`InFlight`] is a task read from a pipe, and whether its
/// request is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    No,
    /// Its request's context came with it: calls for it are that request's.
    Known,
    /// Its request is not known (no confident parent at the hand-off, or the
    /// read matched no write): calls for it stay roots, counted as ambiguous.
    Unknown,
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
    /// The connection it arrived on (a delivery's channel connection).
    source: u64,
    /// The request's span id.
    request: [u8; 8],
    /// A reply to a call (not the request itself).
    reply: bool,
    /// The thread wrote something in this tick.
    wrote: bool,
    /// The thread opened a client connection in this tick.
    connected: bool,
    /// Python: the context the read ran in (0: none known).
    py_task: u32,
}

#[derive(Debug, Clone, Copy)]
struct Opener {
    tid: u32,
    tick: u32,
    request: [u8; 8],
    /// Python: the context of the read that named `request` (0: none known).
    py_task: u32,
}

/// The delivery a consumer thread acknowledged last. If it made no call
/// for it while it was in flight (`worked` false), a consumer that acks
/// first and then works is working on it now.
#[derive(Debug, Clone, Copy)]
struct Acked {
    /// None: a delivery never seen (its frames were not captured).
    ctx: Option<SpanCtx>,
    /// Its channel's connection.
    source: u64,
    /// The tick of the ack's write.
    tick: u32,
    at_ns: u64,
    worked: bool,
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
    /// Consumers (pid, channel connection) that may have deliveries in
    /// flight that were not seen (their frames were lost): nothing of
    /// theirs is taken as evidence until every delivery is accounted for.
    blind: HashSet<(u32, u64)>,
    /// Consumers seen acknowledging a delivery while an older one of the
    /// channel was still in flight on the thread: they work on several at
    /// once, so "the oldest" says nothing.
    concurrent: HashSet<(u32, u64)>,
    /// Arrival counter for `InFlight::seq`.
    next_seq: u64,
    /// Placing a hand-off (`tasks.rs`): only a rule that names one request
    /// decides, never "the oldest" of several.
    exact: bool,
    /// Threads that write a call while another of theirs is unanswered.
    multiplex: multiplex::Multiplex,
    /// Threads (pid, tid) seen with requests of two connections (or
    /// streams, or channels) in flight at once: event loops. Their one
    /// request in flight is no evidence (`Ambiguity::EventLoop`).
    event_loops: HashSet<(u32, u32)>,
    /// Python contexts (pid, task) seen reading requests of two connections
    /// at once (`python.rs`).
    shared_contexts: HashSet<(u32, u32)>,
    /// Python: tasks (pid, creator) -> the child tasks they created whose
    /// calls wait, and when each was created (`python.rs`).
    py_children: HashMap<(u32, u32), Vec<python::Child>>,
    /// Python: contexts (pid, context) that wrote a response -> when the
    /// context was created and when it last answered (`python.rs`).
    answered: HashMap<(u32, u32), (u64, u64)>,
    /// Go: hand-offs after a write whose call has not come yet.
    handoffs: goroutines::HandOffs,
    /// Go: requests goroutines served that are over, for late records.
    served: goroutines::Served,
    /// Consumers (pid, channel connection) whose way of acking was learnt
    /// since the correlator last asked (true: first), for the calls held
    /// until it was (`take_learnt`).
    learnt: Vec<(u32, u64, bool)>,
    /// Requests forgotten in flight because their process had too many.
    pub evicted: u64,
    /// Remembered reads dropped because too many threads had some.
    marks_dropped: u64,
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
        self.request_started_as(pid, conn, source, tid, since_ns, incoming, None, sampler)
    }

    /// [`Linker::request_started`], with ids the kernel gave the request
    /// (`named`: trace, span). The span id is the kernel's; the trace is
    /// the incoming parent's if there is one (the kernel read the same
    /// header), else the kernel's.
    #[allow(clippy::too_many_arguments)]
    pub fn request_started_as(
        &mut self,
        pid: u32,
        conn: u64,
        source: u64,
        tid: u32,
        since_ns: u64,
        incoming: Option<crate::spans::traceparent::TraceParent>,
        named: Option<([u8; 16], [u8; 8])>,
        sampler: &Sampler,
    ) -> SpanCtx {
        let trace_id = match (incoming, named) {
            (Some(t), _) => t.trace_id,
            (None, Some((trace, _))) => trace,
            (None, None) => crate::spans::new_trace_id(),
        };
        // A request with a parent: its ids continue the caller's trace.
        let ctx = SpanCtx {
            trace_id,
            span_id: named.map_or_else(crate::spans::new_span_id, |(_, span)| span),
            parent_span_id: incoming.map(|t| t.parent_id),
            sampled: sampler.should_sample(&trace_id, incoming.map(|t| t.sampled)),
        };
        let list = self.by_pid.entry(pid).or_default();
        if list.len() >= MAX_PER_PROCESS {
            list.remove(0);
            self.evicted += 1;
        }
        // A thread that reads a request while one of another connection
        // waits on it interleaves them. (A goroutine that does is an HTTP/2
        // connection's reader, whose streams the Go rules follow.)
        if !is_goroutine(tid) && list.iter().any(|f| f.tid == tid && f.source != source) {
            bounded_insert(&mut self.event_loops, (pid, tid), &mut self.marks_dropped);
        }
        self.next_seq += 1;
        list.push(InFlight {
            seq: self.next_seq,
            calls: 0,
            conn,
            source,
            socket: source,
            tid,
            since_ns,
            ctx,
            task: Task::No,
            reader: 0,
        });
        ctx
    }

    /// An HTTP/2 server read the request headers of a stream (`key`) on
    /// connection `socket`: a request like any other, but concurrent with
    /// the connection's other streams rather than queued behind them.
    #[allow(clippy::too_many_arguments)]
    pub fn stream_started(
        &mut self,
        pid: u32,
        key: u64,
        socket: u64,
        tid: u32,
        since_ns: u64,
        incoming: Option<crate::spans::traceparent::TraceParent>,
        sampler: &Sampler,
    ) -> SpanCtx {
        let ctx = self.request_started(pid, key, key, tid, since_ns, incoming, sampler);
        if let Some(f) = self
            .by_pid
            .get_mut(&pid)
            .and_then(|l| l.last_mut())
            .filter(|f| f.conn == key)
        {
            f.socket = socket;
        }
        ctx
    }

    /// Requests in flight, all processes.
    pub fn entries(&self) -> usize {
        self.by_pid.values().map(Vec::len).sum()
    }

    /// Threads with remembered reads, new connections with an opener,
    /// unanswered calls, Go hand-offs waiting for their call, goroutines
    /// whose answered requests are kept, and event loops.
    pub fn marked_threads(&self) -> usize {
        self.marked
            + self.py_children.len()
            + self.answered.len()
            + self.openers.len()
            + self.multiplex.len()
            + self.handoffs.len()
            + self.served.len()
            + self.event_loops.len()
    }

    /// Entries dropped at a bound (`tick_marks` stage).
    pub fn marks_dropped(&self) -> u64 {
        self.marks_dropped + self.multiplex.dropped
    }

    /// Thread `tid` of `pid` wrote on client connection `conn` (a protocol
    /// whose requests are answered: HTTP, databases), or read its answer
    /// (`egress` false).
    pub fn client_io(&mut self, pid: u32, tid: u32, conn: u64, egress: bool) {
        if egress {
            self.multiplex.wrote(pid, tid, conn);
        } else {
            self.multiplex.answered(conn);
        }
    }

    /// A client connection of `pid` opened by thread `tid` in `tick`: if a
    /// request's input opened that tick, its first call is that request's.
    pub fn connection_opened(&mut self, pid: u32, conn: u64, (tid, tick): (u32, u32)) {
        if tick == 0 {
            return;
        }
        let Some(q) = self.marks.get_mut(&pid).and_then(|t| t.get_mut(&tid)) else {
            return;
        };
        let mut in_tick = q.iter_mut().rev().filter(|m| m.tick == tick);
        let Some(m) = in_tick.next() else {
            return;
        };
        // One read delivered several requests (a batch of deliveries, run
        // by an event loop one callback after the other in this tick): any
        // of them may have opened it.
        if in_tick.any(|o| o.request != m.request) {
            tracing::debug!(pid, tid, tick, conn, "connection opened: several requests");
            return;
        }
        m.connected = true;
        let (request, py_task) = (m.request, m.py_task);
        if self.openers.len() >= MAX_THREADS {
            self.marks_dropped += self.openers.len() as u64;
            self.openers.clear();
        }
        self.openers.insert(
            conn,
            Opener {
                tid,
                tick,
                request,
                py_task,
            },
        );
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
        self.mark(pid, at, (conn, conn), request, reply);
    }

    /// The read `at` on channel connection `source` delivered message
    /// `key` (request `request`). One read may carry several deliveries;
    /// the thread's next writes in that tick are the first one's.
    pub fn delivery_read(
        &mut self,
        pid: u32,
        at: SegTime,
        key: u64,
        source: u64,
        request: [u8; 8],
    ) {
        // The Python context that read it (see `on_thread`).
        if at.py_task != 0 {
            if let Some(f) = self
                .by_pid
                .get_mut(&pid)
                .and_then(|l| l.iter_mut().rev().find(|f| f.conn == key))
            {
                f.reader = at.py_task;
            }
        }
        self.mark(pid, at, (key, source), request, false);
    }

    fn mark(
        &mut self,
        pid: u32,
        at: SegTime,
        (conn, source): (u64, u64),
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
            source,
            request,
            reply,
            wrote: false,
            connected: false,
            py_task: at.py_task,
        });
    }

    /// A thread wrote to a connection in `tick` (after every read of the
    /// tick: one read may have delivered several requests).
    pub fn wrote(&mut self, pid: u32, tid: u32, tick: u32) {
        let Some(q) = self.marks.get_mut(&pid).and_then(|t| t.get_mut(&tid)) else {
            return;
        };
        for m in q.iter_mut().rev().skip_while(|m| m.tick != tick) {
            if m.tick != tick {
                break;
            }
            m.wrote = true;
        }
    }

    /// The response of the oldest request in flight on `conn` was written.
    pub fn request_finished(&mut self, pid: u32, conn: u64) -> Option<SpanCtx> {
        self.finish(pid, conn).map(|f| f.ctx)
    }

    /// [`Linker::request_finished`], answered at `end_ns`; with when the
    /// request was fully read.
    pub fn request_answered(&mut self, pid: u32, conn: u64, end_ns: u64) -> Option<(SpanCtx, u64)> {
        let f = self.finish(pid, conn)?;
        self.served(pid, &f, end_ns);
        Some((f.ctx, f.since_ns))
    }

    /// Delivery `key` was acknowledged (or rejected) by a write at `at`.
    pub fn delivery_acked(&mut self, pid: u32, key: u64, at: SegTime) -> Option<SpanCtx> {
        let f = self.finish(pid, key)?;
        self.remember_ack(pid, at, Some(f.ctx), f.source, f.calls > 0);
        Some(f.ctx)
    }

    /// Thread `at.tid` of `pid` acknowledged a delivery (`ctx`; None: one
    /// never seen) of channel connection `source` by the write `at`.
    fn remember_ack(
        &mut self,
        pid: u32,
        at: SegTime,
        ctx: Option<SpanCtx>,
        source: u64,
        worked: bool,
    ) {
        if at.tick == 0 {
            return;
        }
        if self.acked.len() >= MAX_THREADS && !self.acked.contains_key(&(pid, at.tid)) {
            self.marks_dropped += self.acked.len() as u64;
            self.acked.clear();
        }
        let a = Acked {
            ctx,
            source,
            tick: at.tick,
            at_ns: at.enter_ns,
            worked,
        };
        self.acked.insert((pid, at.tid), a);
    }

    fn finish(&mut self, pid: u32, conn: u64) -> Option<InFlight> {
        let list = self.by_pid.get_mut(&pid)?;
        let i = list.iter().position(|f| f.conn == conn)?;
        let f = list.remove(i);
        // A delivery finished while an older one of its channel is still in
        // flight on its thread: the consumer works on several at once.
        let older = list
            .iter()
            .any(|o| o.source == f.source && o.conn != o.source && o.tid == f.tid && o.seq < f.seq);
        // An emptied list stays, with its room, for the process's next
        // request (one allocation per request otherwise); it goes when a
        // connection of the process closes with nothing in flight.
        if f.conn != f.source && older {
            self.acks_late.remove(&(pid, f.source));
            bounded_insert(
                &mut self.concurrent,
                (pid, f.source),
                &mut self.marks_dropped,
            );
        }
        // A delivery acknowledged after the calls its thread made for it:
        // this consumer acks late, so with several deliveries in flight it
        // works on the oldest.
        if f.conn != f.source
            && f.calls > 0
            && self.may_learn(pid, f.source)
            && !self.multiplex.is_multiplexed(pid, f.tid)
        {
            if !self.acks_late.contains(&(pid, f.source)) {
                self.learnt.push((pid, f.source, false));
            }
            bounded_insert(
                &mut self.acks_late,
                (pid, f.source),
                &mut self.marks_dropped,
            );
        }
        Some(f)
    }

    /// Consumers whose way of acking was learnt since the last call: (pid,
    /// channel connection, acks first).
    pub fn take_learnt(&mut self) -> Option<Vec<(u32, u64, bool)>> {
        (!self.learnt.is_empty()).then(|| std::mem::take(&mut self.learnt))
    }

    /// Whether how consumer (`pid`, `source`) works may still be learnt: it
    /// is not known to ack first, nor to work on several deliveries at once,
    /// and every delivery of its channel is seen.
    fn may_learn(&self, pid: u32, source: u64) -> bool {
        let k = (pid, source);
        !self.acks_early.contains(&k) && !self.concurrent.contains(&k) && !self.blind.contains(&k)
    }

    /// Consumer channel connection `source` of `pid` may have deliveries in
    /// flight that were not seen (`blind`), or has them all accounted for
    /// again.
    pub fn set_blind(&mut self, pid: u32, source: u64, blind: bool) {
        if blind {
            bounded_insert(&mut self.blind, (pid, source), &mut self.marks_dropped);
        } else {
            self.blind.remove(&(pid, source));
        }
    }

    /// A delivery that was never seen (its frames were lost) was
    /// acknowledged by a write at `at`: a consumer that acks first works on
    /// it now, so the thread's next calls are no known delivery's.
    pub fn ghost_acked(&mut self, pid: u32, source: u64, at: SegTime) {
        self.remember_ack(pid, at, None, source, false);
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
            list.retain(|f| f.conn != conn && f.source != conn && f.socket != conn);
            if list.is_empty() {
                self.by_pid.remove(&pid);
            }
        }
        if let Some(threads) = self.marks.get_mut(&pid) {
            let before = threads.len();
            threads.retain(|_, q| {
                q.retain(|m| m.conn != conn && m.source != conn);
                !q.is_empty()
            });
            self.marked -= before - threads.len();
            if threads.is_empty() {
                self.marks.remove(&pid);
            }
        }
        self.openers.remove(&conn);
        self.forget_handoff(conn);
        self.multiplex.answered(conn);
        self.acks_late.remove(&(pid, conn));
        self.acks_early.remove(&(pid, conn));
        self.blind.remove(&(pid, conn));
        self.concurrent.remove(&(pid, conn));
        self.acked.retain(|&(p, _), a| p != pid || a.source != conn);
    }

    /// The request a client call of `pid` on `conn`, whose first write is
    /// `at`, belongs to.
    pub fn parent_of(&mut self, pid: u32, at: SegTime, conn: u64) -> Parent {
        let parent = match self.find_parent(pid, at, conn) {
            // Made for a task a pipe handed over: its request's, if known.
            Parent::Request(ctx, _) if self.task_of_span(pid, ctx.span_id) == Task::Unknown => {
                Parent::Ambiguous(Ambiguity::UnknownTask)
            }
            Parent::Request(ctx, _) if self.task_of_span(pid, ctx.span_id) == Task::Known => {
                Parent::Request(ctx, Evidence::Pipe)
            }
            p => p,
        };
        // Count the calls a thread made for each request (see acks_late).
        if let Parent::Request(
            ctx,
            Evidence::Tick
            | Evidence::Opener
            | Evidence::SameThread
            | Evidence::Goroutine
            | Evidence::Pipe,
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
        // (A process with nothing in flight may still have a Go call whose
        // request is over: `goroutines::Served`.)
        let none = Vec::new();
        let list = self.by_pid.get(&pid).unwrap_or(&none);
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
        // Python: a task's work after its own response (`python.rs`).
        let after_answer = self.after_answer(pid, at);
        // The call's own Python context read that request (a delivery).
        let read_here = |span: [u8; 8]| {
            at.py_task != 0
                && list
                    .iter()
                    .any(|f| f.ctx.span_id == span && f.reader == at.py_task)
        };
        if let Some(p) = self.on_thread(list, pid, at.tid, at.enter_ns, at.py_task) {
            return match p {
                Parent::Request(ctx, _) if after_answer && !read_here(ctx.span_id) => {
                    Parent::Ambiguous(Ambiguity::AfterAnswer)
                }
                // No read in its tick named it, and an event loop runs
                // answered requests' callbacks too. (A Python context that
                // read the delivery itself is evidence.)
                Parent::Request(ctx, _)
                    if self.event_loops.contains(&(pid, at.tid)) && !read_here(ctx.span_id) =>
                {
                    Parent::Ambiguous(Ambiguity::EventLoop)
                }
                Parent::Request(ctx, _) if is_goroutine(at.tid) => {
                    Parent::Request(ctx, Evidence::Goroutine)
                }
                p => p,
            };
        }
        // Go: written while its goroutine served a request that is over
        // now (its record came with a late reply).
        if let Some(ctx) = self.served_at(pid, at.tid, at.enter_ns) {
            return Parent::Request(ctx, Evidence::Goroutine);
        }
        if let Some(p) = self.by_lineage(list, pid, at) {
            return p;
        }
        let begun = || list.iter().filter(|f| f.since_ns <= at.enter_ns);
        // Go: the rules above saw every way a request reaches a goroutine;
        // none did. Its writer's next hand-off may still name the request
        // (`goroutines.rs`): the caller waits for it.
        if is_goroutine(at.tid) {
            return match begun().next() {
                Some(_) => Parent::Ambiguous(Ambiguity::Goroutine),
                None => Parent::None,
            };
        }
        let mut all = begun();
        // A consumer of the process may be working on a delivery not seen.
        let blind = self.blind.iter().any(|&(p, _)| p == pid);
        match (all.next(), all.next()) {
            (Some(_), None) if blind => Parent::Ambiguous(Ambiguity::Consumer),
            (Some(only), None) if self.may_work_on_acked(pid, at.tid, only) => {
                Parent::Ambiguous(Ambiguity::Consumer)
            }
            (Some(only), None) if after_answer && only.reader != at.py_task => {
                Parent::Ambiguous(Ambiguity::AfterAnswer)
            }
            (Some(only), None) => Parent::Request(only.ctx, Evidence::OnlyInFlight),
            (Some(_), Some(_)) => Parent::Ambiguous(Ambiguity::Several),
            _ => Parent::None,
        }
    }
}

/// Inserts into a set bounded at `MAX_THREADS` entries, cleared (and
/// counted in `dropped`) when full.
fn bounded_insert<K: std::hash::Hash + Eq>(set: &mut HashSet<K>, k: K, dropped: &mut u64) {
    if set.len() >= MAX_THREADS && !set.contains(&k) {
        *dropped += set.len() as u64;
        set.clear();
    }
    set.insert(k);
}

/// Whether a record's thread id names a goroutine (`sonde_common::goroutine_id`).
pub fn is_goroutine(tid: u32) -> bool {
    tid & 0x8000_0000 != 0
}

#[cfg(test)]
mod tests;
