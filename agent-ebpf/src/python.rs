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
//!
//! A task's context is a copy of the context current when it was created
//! (`PyContext_CopyCurrent`, which `asyncio.Task` and every other
//! `copy_context` call): a uprobe at its entry and return on the
//! interpreter file (attached by user space) keeps, for each new context,
//! the context it was copied from and when (`PY_ORIGINS`). A call made in
//! a child task (`asyncio.gather`, `create_task`, a client library's own
//! task) carries its context's origin, the task that started it.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use sonde_common::{python_task_id, GoOrigin};

use crate::maps::PY_THREADS;

/// Thread id -> the context it is copying (`PyContext_CopyCurrent`, from
/// its entry to its return), and when it entered.
#[map]
static PY_COPYING: LruHashMap<u32, GoOrigin> = LruHashMap::with_max_entries(4096, 0);

/// (tgid << 32 | context name) -> the context it was copied from and when
/// (`GoOrigin`'s `creator` holds a context's name here). LRU: contexts are
/// freed and their addresses reused without a trace; a reused address
/// gets its new origin at its copy, and an old entry ages out.
#[map]
static PY_ORIGINS: LruHashMap<u64, GoOrigin> = LruHashMap::with_max_entries(16384, 0);

/// The context the Python thread `id` (pid_tgid) runs in, as a task id;
/// 0 if it has no entry, the entry is another process's (a reused tid), or
/// the read fails.
#[inline(always)]
pub fn task(id: u64) -> u32 {
    match context(id) {
        0 => 0,
        ctx => python_task_id(ctx),
    }
}

/// The address of the context the Python thread `id` runs in; 0 if none.
#[inline(always)]
fn context(id: u64) -> u64 {
    let Some(t) = (unsafe { PY_THREADS.get(&(id as u32)) }).copied() else {
        return 0;
    };
    if t.tgid != (id >> 32) as u32 {
        return 0;
    }
    unsafe { bpf_probe_read_user(t.context_at as *const u64) }.unwrap_or(0)
}

/// Where context `task` (a name) of process `tgid` was copied from, if
/// this agent saw its copy.
#[inline(always)]
pub fn origin(tgid: u32, task: u32) -> Option<GoOrigin> {
    unsafe { PY_ORIGINS.get(&(((tgid as u64) << 32) | task as u64)) }.copied()
}

#[uprobe]
pub fn py_copy_context(_ctx: ProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let from = context(id);
    if from != 0 {
        let o = GoOrigin {
            creator: python_task_id(from),
            _pad: 0,
            at_ns: unsafe { bpf_ktime_get_ns() },
        };
        let _ = PY_COPYING.insert(&(id as u32), &o, 0);
    }
    0
}

#[uretprobe]
pub fn py_copy_context_ret(ctx: RetProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tid = id as u32;
    let Some(o) = (unsafe { PY_COPYING.get(&tid) }).copied() else {
        return 0;
    };
    let _ = PY_COPYING.remove(&tid);
    let new: u64 = ctx.ret();
    if new != 0 {
        let key = ((id >> 32) << 32) | python_task_id(new) as u64;
        let _ = PY_ORIGINS.insert(&key, &o, 0);
    }
    0
}
