//! Python: which contextvars context (an asyncio task's own) made each
//! socket call.
//!
//! asyncio runs every step of a task inside the task's context, and every
//! other callback inside one of its own, so the context a call runs in
//! names the task that made it, as a goroutine does in Go. CPython keeps the
//! current one in the thread's `PyThreadState::context`; user space finds
//! each thread's state in the interpreter's memory and enters the address
//! of that field in `PY_THREADS` (with `running` 0 in `GO_CURRENT`, so that only
//! Python threads pay for the lookup). A thread's context cannot change
//! while it is inside a syscall: the call's entry reads it once.
use aya_ebpf::helpers::bpf_probe_read_user;
use sonde_common::python_task_id;

use crate::maps::PY_THREADS;

/// The context the Python thread `id` (pid_tgid) runs in, as a task id;
/// 0 if it has no entry, the entry is another process's (a reused tid), or
/// the read fails.
#[inline(always)]
pub fn task(id: u64) -> u32 {
    let Some(t) = (unsafe { PY_THREADS.get(&(id as u32)) }).copied() else {
        return 0;
    };
    if t.tgid != (id >> 32) as u32 {
        return 0;
    }
    match unsafe { bpf_probe_read_user(t.context_at as *const u64) } {
        Ok(ctx) if ctx != 0 => python_task_id(ctx),
        _ => 0,
    }
}
