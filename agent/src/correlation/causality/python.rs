//! Python asyncio: the context a call ran in names its task.
//!
//! asyncio runs each step of a task inside the task's own contextvars
//! context, and every other callback inside a context of its own; the
//! kernel reads the context at each socket call of a followed CPython
//! thread (`agent-ebpf/src/python.rs`). No read ties a task to its request
//! when the call is made: the request was read by the transport's callback,
//! in another context, and the task's continuation runs a loop iteration
//! later, after a poll (asyncio's loop), or right after that iteration's
//! reads of other sockets (uvloop: the tick rule takes a read only in the
//! writing context). What ties them is the task's response: a handler
//! task writes the response of the request it serves, after the calls it
//! made for it. So a call that no rule placed, made by task T, waits (held,
//! `correlation::holds`) for T's next response; if that response's request
//! was read before the call, the call was made for it (evidence `task`).
//!
//! Where that fails, and what guards it:
//! - A context shared by everything on the thread (a loop that runs its
//!   callbacks without contexts, or a thread's base context) would name
//!   whichever request is answered next. Such a context reads the requests
//!   itself, so a context seen reading requests of two connections while
//!   both are in flight is *shared*, and never evidence. asyncio's
//!   transports each read in a context of their own.
//! - A context's address is reused once its task is gone (CPython keeps
//!   freed contexts for reuse). A new task with an old task's address
//!   began after the old one's last call; its requests, read after its
//!   creation, are read after those calls, so the old calls never pass
//!   the "read before the call" check. Calls made after a task's last
//!   response, for a request read after them, stay roots the same way.
//! - A task that works on two requests at once (a batch) and answers them
//!   in another order than it called would mislead; asyncio handlers serve
//!   one request per task.
//!
//! A task the handler starts (`asyncio.gather`'s, `create_task`'s, a client
//! library's own, as Tornado's HTTP client runs each fetch) never writes a
//! response itself. Its context is a copy of its creator's, and the kernel
//! names the creator with each call (`Lineage::origin`, from the uprobes on
//! `PyContext_CopyCurrent`). Such a call waits for its own task's response
//! as above, or for its creator's: the request its creator answers next
//! was the call's if it was read before the child task was created (a
//! task started during an earlier request is no child of the next one, as
//! for a goroutine's `go`).
use super::Linker;
use crate::protocols::SegTime;

/// Bound on the contexts remembered: creators with child tasks whose
/// calls wait, and contexts that answered a request.
const MAX_CONTEXTS: usize = 16384;

/// A child task whose calls wait: its context, when it was created, and
/// when its creator's context was created (that creator's life).
pub(super) type Child = (u32, u64, u64);

impl Linker {
    /// Request `conn` of `pid` was read (its last read) in Python context
    /// `task`. A context that reads a request while another it read, of
    /// another connection, is still in flight multiplexes requests itself.
    pub fn request_read_in(&mut self, pid: u32, conn: u64, task: u32) {
        if task == 0 {
            return;
        }
        let Some(list) = self.by_pid.get_mut(&pid) else {
            return;
        };
        let Some(i) = list.iter().rposition(|f| f.conn == conn) else {
            return;
        };
        list[i].reader = task;
        let source = list[i].source;
        if list
            .iter()
            .any(|f| f.reader == task && f.source != source && f.conn != conn)
        {
            super::bounded_insert(
                &mut self.shared_contexts,
                (pid, task),
                &mut self.marks_dropped,
            );
        }
    }

    /// A response of `pid` was written at `at`: if in a known Python
    /// context, that context answered a request (`after_answer`).
    pub fn context_answered(&mut self, pid: u32, at: SegTime) {
        if at.py_task == 0 {
            return;
        }
        if self.answered.len() >= MAX_CONTEXTS && !self.answered.contains_key(&(pid, at.py_task)) {
            self.marks_dropped += self.answered.len() as u64;
            self.answered.clear();
        }
        self.answered
            .insert((pid, at.py_task), (at.lineage.origin_ns, at.enter_ns));
    }

    /// Whether call `at` of `pid` was made in a Python context (this life
    /// of it: created at the same time) after it answered a request: work
    /// it goes on with after its response, as a background task does
    /// (Starlette runs a response's background tasks in the request's own
    /// task). The thread rules' "the request in flight" is then a request
    /// another context read, never this call's.
    pub(super) fn after_answer(&self, pid: u32, at: SegTime) -> bool {
        at.py_task != 0
            && self
                .answered
                .get(&(pid, at.py_task))
                .is_some_and(|&(born, answered)| {
                    born == at.lineage.origin_ns && answered <= at.enter_ns
                })
    }

    /// Whether Python context `task` of `pid` may name the request a call
    /// was made for (it is not shared by several requests' work).
    pub fn task_context(&self, pid: u32, task: u32) -> bool {
        task != 0 && !self.shared_contexts.contains(&(pid, task))
    }

    /// A call of task `child` waits for a response: its creator `origin`'s
    /// may name it too, for a request read by `origin_ns` (when the child
    /// was created).
    /// `origin_born`: when `origin`'s context was created (its address may
    /// be another context's later).
    pub fn child_task(
        &mut self,
        pid: u32,
        child: u32,
        (origin, origin_ns, origin_born): (u32, u64, u64),
    ) {
        if !self.task_context(pid, origin) || origin == child {
            return;
        }
        if self.py_children.len() >= MAX_CONTEXTS && !self.py_children.contains_key(&(pid, origin))
        {
            self.marks_dropped += self.py_children.len() as u64;
            self.py_children.clear();
        }
        let kids = self.py_children.entry((pid, origin)).or_default();
        if !kids.iter().any(|k| k.0 == child && k.1 == origin_ns) {
            if kids.len() >= 64 {
                kids.remove(0);
                self.marks_dropped += 1;
            }
            kids.push((child, origin_ns, origin_born));
        }
    }

    /// Task `task` of `pid` (whose context was created at `born`, 0:
    /// unknown) answered a request read at `since`: the child tasks it
    /// created since then, whose calls wait. Older children are forgotten
    /// (started for an earlier request, answered already), and so are the
    /// children of another context that had the same address before.
    /// Each child comes with when its context was created (its hold's
    /// `born`).
    pub fn children_since(
        &mut self,
        pid: u32,
        task: u32,
        born: u64,
        since: u64,
    ) -> Vec<(u32, u64)> {
        let Some(kids) = self.py_children.remove(&(pid, task)) else {
            return vec![];
        };
        kids.into_iter()
            .filter(|&(_, at, origin_born)| at >= since && origin_born == born)
            .map(|(c, at, _)| (c, at))
            .collect()
    }
}
