//! Tasks handed over on pipes (`correlation/handoff.rs` matches each read to
//! the write that put its bytes in). A worker thread that reads a task is
//! working on it, for the request its dispatcher wrote it for, until it
//! writes to a pipe again (its result) or reads the next task. A task is
//! kept as an [`InFlight`] of the worker's process under the request's own
//! context, so every rule that places a call under a request in flight
//! (tick, same thread, only in flight) places a worker's calls under its
//! task; the evidence is reported as `pipe`.
use super::{InFlight, Linker, Parent, Task};
use crate::{protocols::SegTime, spans::SpanCtx};

/// Key of the task in flight on thread `tid` (bit 63 marks deliveries,
/// bit 62 HTTP/2 streams, bit 61 tasks).
fn task_key(tid: u32) -> u64 {
    tid as u64 | 1 << 61
}

impl Linker {
    /// The request a write on a pipe of `pid` hands a task over for: the
    /// usual rules, but only those that name one request. A dispatcher
    /// hands several on at once, so "the oldest" or "the first read" may be
    /// another's.
    pub fn handoff_parent(&mut self, pid: u32, at: SegTime, pipe: u64) -> Parent {
        self.exact = true;
        let p = self.parent_of(pid, at, pipe);
        self.exact = false;
        p
    }

    /// Thread `at.tid` of `pid` read a task from pipe `pipe`, handed over
    /// for the request `ctx` (None: not known). It ends the task the thread
    /// was on.
    pub fn task_started(&mut self, pid: u32, pipe: u64, at: SegTime, ctx: Option<SpanCtx>) {
        self.task_finished(pid, at.tid);
        let (task, ctx) = match ctx {
            Some(c) => (Task::Known, c),
            // Stands for the unknown request: a call found for it is
            // ambiguous (see `parent_of`), never this placeholder's child.
            None => (
                Task::Unknown,
                SpanCtx {
                    trace_id: crate::spans::new_trace_id(),
                    span_id: crate::spans::new_span_id(),
                    parent_span_id: None,
                    sampled: false,
                },
            ),
        };
        let key = task_key(at.tid);
        let list = self.by_pid.entry(pid).or_default();
        if list.len() >= super::MAX_PER_PROCESS {
            list.remove(0);
            self.evicted += 1;
        }
        self.next_seq += 1;
        list.push(InFlight {
            conn: key,
            // Its own source, like a stream: tasks of one pipe are not
            // worked on in order by one thread.
            source: key,
            socket: pipe,
            tid: at.tid,
            since_ns: at.exit_ns,
            ctx,
            calls: 0,
            seq: self.next_seq,
            task,
            reader: 0,
        });
        self.mark(pid, at, (key, key), ctx.span_id, false);
    }

    /// The task thread `tid` of `pid` works on: Some(its request, if
    /// known), or None if it has none.
    pub fn task_of(&self, pid: u32, tid: u32) -> Option<Option<SpanCtx>> {
        let key = task_key(tid);
        let f = self.by_pid.get(&pid)?.iter().find(|f| f.conn == key)?;
        Some((f.task == Task::Known).then_some(f.ctx))
    }

    /// Thread `tid` of `pid` finished its task (it wrote its result).
    pub fn task_finished(&mut self, pid: u32, tid: u32) {
        self.finish(pid, task_key(tid));
    }

    /// Whether thread `tid` of `pid` has a request (not a task) in flight.
    pub fn serving(&self, pid: u32, tid: u32) -> bool {
        self.by_pid
            .get(&pid)
            .is_some_and(|l| l.iter().any(|f| f.tid == tid && f.task == Task::No))
    }

    /// Whether request `span` in flight in `pid` is a task.
    pub(super) fn task_of_span(&self, pid: u32, span: [u8; 8]) -> Task {
        self.by_pid
            .get(&pid)
            .and_then(|l| l.iter().find(|f| f.ctx.span_id == span))
            .map_or(Task::No, |f| f.task)
    }
}
