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
//! `copy_context` call): a uprobe at its return on the interpreter file
//! (attached by user space) keeps, for each new context, the context it
//! was copied from and when (`PY_ORIGINS`). A call made in a child task
//! (`asyncio.gather`, `create_task`, a client library's own task) carries
//! its context's origin, the task that started it.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, uretprobe},
    maps::Array,
    programs::RetProbeContext,
};
use sonde_common::{python_task_id, GoOrigin};

use crate::maps::{go_hash, go_key, PY_THREADS};

/// A context's origin, in one way of `PY_ORIGINS`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OriginSlot {
    /// (tgid << 32 | context name); 0: a free way.
    key: u64,
    origin: GoOrigin,
    /// When the context was last created or named by a call's record: a
    /// full set gives up the way touched longest ago.
    touched_ns: u64,
}

/// `PY_ORIGINS`' shape: 2^15 sets of 2 ways (65,536 contexts, 2 MiB; a
/// set is one 64-byte cache line). With 4 ways a copy cost 35-40 ns more
/// (README, "Python child tasks"); with 2 no more than the direct-mapped
/// table did.
const SET_BITS: u32 = 15;
const WAYS: u32 = 2;

/// (tgid, context name), keyed as goroutines are (`maps::go_key`) -> the
/// context it was copied from and when (`GoOrigin`'s `creator` holds a
/// context's name here), in a set-associative table. Most copies are a
/// `call_soon` callback's context, which lives for one callback; a task
/// that serves a request lives through hundreds of them. When the table was
/// direct-mapped (each key one slot), any copy could take a live task's
/// slot: at 2,000 requests/s and 13 copies each, 65,536 slots turn over
/// every 2.5 s, so a handler that runs 100 ms lost its origin once in 25,
/// and its children's calls went out roots. Here a copy that finds its set
/// full takes the way touched longest ago (its creation, or a call naming
/// it): a callback's context, not a task that keeps making calls.
/// Evictions are counted (`stat::PY_ORIGIN_EVICTED`); an evicted context's
/// calls stay to the other rules, and a reader checks the key, so a way
/// given to another context never lends it this one's origin. Contexts are
/// freed and their addresses reused without a trace; a reused address gets
/// its new origin at its copy.
#[map]
static PY_ORIGINS: Array<OriginSlot> = Array::with_max_entries(1 << (SET_BITS + 1), 0);

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

/// Where context `task` (a name) of the process of thread `id` (its
/// pid_tgid) was copied from, if this agent saw its copy. A hit marks the
/// context touched at `now`.
#[inline(always)]
pub fn origin(id: u64, task: u32, now: u64) -> Option<GoOrigin> {
    let key = go_key(id, task);
    let first = go_hash(key, SET_BITS) * WAYS;
    for w in 0..WAYS {
        let e = PY_ORIGINS.get_ptr_mut(first + w)?;
        // SAFETY: a map value. The key is read before and after the body: a
        // writer that gives the way to another context clears it first and
        // sets it last (`py_copy_context_ret`); stores and loads keep their
        // order on x86-64, the only architecture whose uprobes attach.
        unsafe {
            if core::ptr::read_volatile(&(*e).key) == key {
                let origin = core::ptr::read_volatile(&(*e).origin);
                if core::ptr::read_volatile(&(*e).key) != key {
                    return None;
                }
                // A racing writer may have taken the way since: its new
                // context then looks touched now, which costs it nothing.
                core::ptr::write_volatile(&mut (*e).touched_ns, now);
                return Some(origin);
            }
        }
    }
    None
}

/// At `PyContext_CopyCurrent`'s return: the new context (its return value)
/// was copied from the thread's current one, which the copy does not change
/// (a thread that had none gets an empty one first, and the copy is of
/// that). So one program at the return learns both, and the entry needs
/// none: this was an entry and a return uprobe handing the copied context
/// and the time over in a per-CPU entry, two runs and two reads of the
/// thread's state per copy (README, "Python child tasks").
#[uretprobe]
pub fn py_copy_context_ret(ctx: RetProbeContext) -> u32 {
    let new: u64 = ctx.ret();
    if new == 0 {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    let from = context(id);
    if from == 0 {
        return 0;
    }
    let at_ns = unsafe { bpf_ktime_get_ns() };
    let key = go_key(id, python_task_id(new));
    let origin = GoOrigin {
        creator: python_task_id(from),
        _pad: 0,
        at_ns,
    };
    // The way: the context's own (a reused address), else a free one, else
    // the one touched longest ago.
    let first = go_hash(key, SET_BITS) * WAYS;
    let mut way: Option<(*mut OriginSlot, u64)> = None;
    for w in 0..WAYS {
        let Some(e) = PY_ORIGINS.get_ptr_mut(first + w) else {
            return 0;
        };
        // SAFETY: a map value.
        let (k, touched) = unsafe {
            (
                core::ptr::read_volatile(&(*e).key),
                core::ptr::read_volatile(&(*e).touched_ns),
            )
        };
        let rank = match k {
            k if k == key => 0,
            0 => 1,
            _ => touched.saturating_add(2),
        };
        if way.is_none_or(|(_, r)| rank < r) {
            way = Some((e, rank));
        }
    }
    let Some((e, rank)) = way else {
        return 0;
    };
    if rank > 1 {
        crate::maps::count(sonde_common::stat::PY_ORIGIN_EVICTED);
    }
    // SAFETY: a map value. The key is cleared before the body and set after
    // it, so that a reader (`origin`), which reads the key on both sides,
    // does not pair one context's key with another's origin while one
    // writer writes. (Two writers of one way within the same few
    // nanoseconds, on two CPUs, could still interleave.)
    unsafe {
        core::ptr::write_volatile(&mut (*e).key, 0);
        core::ptr::write_volatile(&mut (*e).origin, origin);
        core::ptr::write_volatile(&mut (*e).touched_ns, at_ns);
        core::ptr::write_volatile(&mut (*e).key, key);
    }
    0
}
