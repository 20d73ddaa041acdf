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
//! Only threads that read a tracked socket (or made a hooked TLS call)
//! have a tick (`TICKING`, in their `THREADS` entry); every other read,
//! poll and switch on the node costs one lookup that finds none.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{tracepoint, uprobe},
    programs::{ProbeContext, TracePointContext},
};

use aya_ebpf::EbpfContext;

use crate::maps::{thread, thread_new, Tick, TICKING, TICK_LOUD, TICK_TLS};

/// Advances `tid`'s tick and activity, if it has a tick: it turned to
/// something other than a tracked socket's read (a poll, a sleep).
#[inline(always)]
pub fn bump(tid: u32) {
    if let Some(p) = thread(tid) {
        // Only the thread itself (or the scheduler on its behalf, while it
        // is not running) writes its entry.
        on_read(unsafe { &mut (*p).tick }, false, -1);
    }
}

/// A read on a thread whose entry is `t`: advances its tick if it has one,
/// or starts it if `create`. Returns the tick now.
#[inline(always)]
pub fn on_read(t: &mut Tick, create: bool, read_fd: i32) -> Tick {
    if t.flags & TICKING != 0 {
        advance(t, read_fd);
        *t
    } else if create {
        *t = started(read_fd, t.flags);
        *t
    } else {
        NONE
    }
}

/// A thread's tick as it reads: zeros if it has none.
#[inline(always)]
pub fn of(t: &Tick) -> Tick {
    if t.flags & TICKING != 0 {
        *t
    } else {
        NONE
    }
}

/// The first tick of a thread, begun by a read of `read_fd`.
#[inline(always)]
fn started(read_fd: i32, flags: u32) -> Tick {
    Tick {
        n: 1,
        read_fd,
        activity: 1,
        flags: (flags & !TICK_LOUD) | TICKING,
    }
}

/// A new tick and activity, begun by a read of `read_fd` (-1: not a
/// tracked socket's).
#[inline(always)]
fn advance(t: &mut Tick, read_fd: i32) {
    t.n = t.n.wrapping_add(1);
    t.activity = t.activity.wrapping_add(1);
    t.read_fd = read_fd;
    t.flags &= !TICK_LOUD;
}

/// A read's record carrying the thread's tick as it is now was written:
/// the tick is `TICK_LOUD` until it moves.
#[inline(always)]
pub fn loud(t: &mut Tick) {
    if t.flags & TICKING != 0 {
        t.flags |= TICK_LOUD;
    }
}

/// [`loud`], for thread `tid`.
#[inline(always)]
pub fn loud_thread(tid: u32) {
    if let Some(p) = thread(tid) {
        // SAFETY: a map value; only the thread itself writes its tick.
        loud(unsafe { &mut (*p).tick });
    }
}

/// Whether a call on a released socket (`sock_flags::QUIET`) need not be
/// reported. Only one place uses such a call: a write that follows a
/// request's input, in the tick its read's record carried, tells user
/// space that the input's tick wrote something (rules `connect` and the
/// stalled case of `tick`). Every input user space marks came in a
/// reported read, so every other call on the socket, its reads included,
/// is unneeded. `tick`: the thread's tick at the call (for a write, the
/// one its record would carry). A goroutine's calls stand for the
/// goroutine, not the thread, and are all reported as before.
#[inline(always)]
pub fn quiet_unneeded(egress: bool, tick: &Tick, goroutine: u32) -> bool {
    goroutine == 0 && !(egress && tick.flags & TICK_LOUD != 0)
}

/// The tick of a thread that has none.
pub const NONE: Tick = Tick {
    n: 0,
    read_fd: -1,
    activity: 0,
    flags: 0,
};

/// `tid`'s tick, followed from now on: started (zeros, nothing advanced)
/// if it was not, the thread's entry created if it had none. None: the map
/// refused the entry (counted).
#[inline(always)]
fn followed(tid: u32) -> Option<&'static mut Tick> {
    let p = thread(tid).or_else(|| thread_new(tid, NONE))?;
    // SAFETY: a map value; only the thread itself writes its tick here.
    let t = unsafe { &mut (*p).tick };
    if t.flags & TICKING == 0 {
        *t = Tick {
            flags: (t.flags & !TICK_LOUD) | TICKING,
            ..NONE
        };
    }
    Some(t)
}

/// Starts following `tid`'s tick if it is not followed, without advancing
/// anything, so that its polls, reads and sleeps from now on are seen.
#[inline(always)]
pub fn watch(tid: u32) {
    let _ = followed(tid);
}

/// A hooked TLS call enters on `tid`: a read advances the tick as a socket
/// read does (it may return buffered plaintext with no syscall); the tick
/// is started if need be and marked `TICK_TLS`. Returns the tick now.
#[inline(always)]
pub fn tls_call(tid: u32, read: bool) -> u32 {
    let Some(t) = followed(tid) else {
        return read as u32;
    };
    if read {
        advance(t, -1);
    }
    t.flags |= TICK_TLS;
    t.n
}

/// The thread's tick now (zeros: it has none).
#[inline(always)]
pub fn get(tid: u32) -> Tick {
    thread(tid).map_or(NONE, |p| of(unsafe { &(*p).tick }))
}

/// The thread's tick count now (0: it has no tick).
#[inline(always)]
pub fn current(tid: u32) -> u32 {
    get(tid).n
}

/// The thread's activity now (see `Tick::activity`).
#[inline(always)]
pub fn activity(tid: u32) -> u32 {
    get(tid).activity
}

/// The tracked socket whose read began the thread's current activity, if
/// a read did: the input that whatever the thread does now follows from.
#[inline(always)]
pub fn read_socket(tid: u32) -> i32 {
    get(tid).read_fd
}

macro_rules! poll_probes {
    ($($name:ident),*) => {$(
        #[tracepoint]
        pub fn $name(_ctx: TracePointContext) -> u32 {
            bump(bpf_get_current_pid_tgid() as u32);
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

/// libuv (Node.js): after the poll phase's callbacks, the loop runs its
/// check phase (`setImmediate`) and its timers with no syscall between, so
/// a continuation there would seem to follow the poll phase's last read.
/// User space attaches this at the entries of `uv__run_check` and
/// `uv__run_timers` (`agent/src/probes/libuv.rs`): each starts a tick.
#[uprobe]
pub fn uv_phase(_ctx: ProbeContext) -> u32 {
    bump(bpf_get_current_pid_tgid() as u32);
    0
}

// `sched:sched_switch` fields (format stable since 4.x): prev_pid at 24,
// prev_state (long) at 32.
const PREV_PID: usize = 24;
const PREV_STATE: usize = 32;
/// State bits of a task that blocks (S, D, T, t, X, Z, P, I). A preempted
/// task reports 0 or TASK_REPORT_MAX (0x100): it did not turn to other work.
const BLOCKED: i64 = 0xff;
/// TASK_UNINTERRUPTIBLE alone: a page fault or a kernel lock.
const UNINTERRUPTIBLE: i64 = 0x2;

#[tracepoint]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    // Scalar fields at constant offsets: direct context loads, no helper.
    // SAFETY: both lie within the tracepoint's record (format above).
    let state = unsafe { *(ctx.as_ptr().add(PREV_STATE) as *const i64) };
    if state & BLOCKED != 0 {
        let tid = unsafe { *(ctx.as_ptr().add(PREV_PID) as *const i32) } as u32;
        if state & BLOCKED == UNINTERRUPTIBLE {
            // The tick advances (the causality rules' meaning, unchanged);
            // the activity and its input stay.
            if let Some(p) = thread(tid) {
                let t = unsafe { &mut (*p).tick };
                if t.flags & TICKING != 0 {
                    t.n = t.n.wrapping_add(1);
                    t.flags &= !TICK_LOUD;
                }
            }
        } else {
            bump(tid);
        }
    }
    0
}
