//! Pipes between the processes of one service (a pre-fork pool hands each
//! task to a worker process over a pipe, and takes its result back).
//!
//! The kernel reports what user space needs to find them: the forks of the
//! processes it follows (`PIPE_PROCS`), whose children inherit their pipes.
//! User space puts the pipes a parent and its child share into `SOCKS`
//! (role PIPE); from then on their reads and writes are captured like a
//! socket's (`capture.rs`), and a close removes them like a socket's
//! (`conn.rs`).
//!
//! Forks are seen at the exit of `clone`, `clone3`, `fork` and `vfork` in
//! the parent (the return value is the child's pid), and only for a new
//! process: a clone with CLONE_THREAD is a thread of the same process.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use sonde_common::{kind, syscall};

use crate::{
    conn::{conn_event, send, take},
    ctx::{arg, ret},
    maps::{active_begin, ActiveCall, PIPE_PROCS},
};

const CLONE_THREAD: u64 = 0x0001_0000;

/// Saves a pending fork-family call.
#[inline(always)]
fn remember(sc: u8) {
    let id = bpf_get_current_pid_tgid();
    let call = ActiveCall::new(unsafe { bpf_ktime_get_ns() }, 0, 0, -1, sc, 0);
    active_begin(id, &call);
}

/// A fork-family call of a process whose pipes are followed; `flags`: the
/// clone flags (0 for fork and vfork).
#[inline(always)]
fn fork_enter(flags: u64) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if flags & CLONE_THREAD != 0 || unsafe { PIPE_PROCS.get(&tgid) }.is_none() {
        return;
    }
    remember(syscall::FORK);
}

#[inline(always)]
fn fork_exit(ctx: &TracePointContext) {
    let id = bpf_get_current_pid_tgid();
    let Some(call) = take(id, syscall::FORK) else {
        return;
    };
    // The parent's return: the child's pid (0 is the child's own return).
    let child = ret(ctx);
    if child <= 0 {
        return;
    }
    let mut ev = conn_event(kind::FORK, (id >> 32) as u32, id as u32, -1);
    ev.ret = child;
    ev.enter_ns = call.enter_ns;
    send(&ev);
}

#[tracepoint]
pub fn sys_enter_clone(ctx: TracePointContext) -> u32 {
    fork_enter(arg(&ctx, 0));
    0
}

#[tracepoint]
pub fn sys_exit_clone(ctx: TracePointContext) -> u32 {
    fork_exit(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_clone3(ctx: TracePointContext) -> u32 {
    // `struct clone_args` starts with its u64 flags.
    let flags = unsafe { bpf_probe_read_user(arg(&ctx, 0) as *const u64) }.unwrap_or(0);
    fork_enter(flags);
    0
}

#[tracepoint]
pub fn sys_exit_clone3(ctx: TracePointContext) -> u32 {
    fork_exit(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_fork(_ctx: TracePointContext) -> u32 {
    fork_enter(0);
    0
}

#[tracepoint]
pub fn sys_exit_fork(ctx: TracePointContext) -> u32 {
    fork_exit(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_vfork(_ctx: TracePointContext) -> u32 {
    fork_enter(0);
    0
}

#[tracepoint]
pub fn sys_exit_vfork(ctx: TracePointContext) -> u32 {
    fork_exit(&ctx);
    0
}
