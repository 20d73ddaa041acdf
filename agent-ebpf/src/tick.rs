//! Per-thread ticks: evidence of which input a thread's writes follow.
//!
//! A thread's tick advances whenever it may turn to other work: it starts a
//! read of any fd, it polls for readiness (epoll, poll, select), it asks a
//! socket's pending error (`getsockopt`: how every event loop learns that
//! a non-blocking connect completed, and then writes on it), or it goes
//! to sleep. A data record carries its thread's tick (a read's at its exit,
//! a write's at its entry), so user space can tell that a write followed a
//! given socket read with nothing in between: the event-loop callback that
//! read request X is the one that wrote the query. Without it, a thread
//! serving several requests at once leaves every call ambiguous.
//!
//! Only threads that read a tracked socket get an entry; every other read,
//! poll and switch on the node costs one failed lookup.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};

use aya_ebpf::EbpfContext;

use crate::maps::TICKS;

/// Advances `tid`'s tick; `create`: start one for a thread that has none.
#[inline(always)]
pub fn bump(tid: u32, create: bool) {
    if let Some(t) = TICKS.get_ptr_mut(&tid) {
        // Only the thread itself (or the scheduler on its behalf, while it
        // is not running) writes its entry.
        unsafe { *t = (*t).wrapping_add(1) };
    } else if create {
        let _ = TICKS.insert(&tid, &1, 0);
    }
}

/// The thread's tick now (0: it never read a tracked socket).
#[inline(always)]
pub fn current(tid: u32) -> u32 {
    unsafe { TICKS.get(&tid) }.copied().unwrap_or(0)
}

macro_rules! poll_probes {
    ($($name:ident),*) => {$(
        #[tracepoint]
        pub fn $name(_ctx: TracePointContext) -> u32 {
            bump(bpf_get_current_pid_tgid() as u32, false);
            0
        }
    )*};
}

poll_probes!(
    sys_enter_epoll_wait,
    sys_enter_epoll_pwait,
    sys_enter_epoll_pwait2,
    sys_enter_poll,
    sys_enter_ppoll,
    sys_enter_select,
    sys_enter_pselect6,
    sys_enter_getsockopt
);

// `sched:sched_switch` fields (format stable since 4.x): prev_pid at 24,
// prev_state (long) at 32.
const PREV_PID: usize = 24;
const PREV_STATE: usize = 32;
/// State bits of a task that blocks (S, D, T, t, X, Z, P, I). A preempted
/// task reports 0 or TASK_REPORT_MAX (0x100): it did not turn to other work.
const BLOCKED: i64 = 0xff;

#[tracepoint]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    // Scalar fields at constant offsets: direct context loads, no helper.
    // SAFETY: both lie within the tracepoint's record (format above).
    let state = unsafe { *(ctx.as_ptr().add(PREV_STATE) as *const i64) };
    if state & BLOCKED != 0 {
        let tid = unsafe { *(ctx.as_ptr().add(PREV_PID) as *const i32) };
        bump(tid as u32, false);
    }
    0
}
