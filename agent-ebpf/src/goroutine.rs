//! Go: which goroutine made each socket call, and where its work came from.
//!
//! Go runs many goroutines on a few threads and moves them between threads
//! without a syscall, so a thread says nothing about which request a call
//! belongs to. Uprobes on the runtime (attached by user space to
//! Go binaries of traced processes, `agent/src/probes/goruntime.rs`) tell:
//! - `runtime.execute(gp)`, at its call `casgstatus(gp, ..)` (found in the
//!   binary's code; else at its entry): `gp` now runs on this thread; data
//!   records carry it as their `task`;
//! - `runtime.newproc`'s call of `runqput(pp, newg, ..)` (in its closure
//!   `runtime.newproc.func1`, which user space finds in the binary's code):
//!   the goroutine running on this thread started `newg` (its *origin*).
//!   Where that call is not found, the pair `runtime.newproc1(fn,
//!   callergp, ..)` then `runtime.runqput(pp, newg, ..)` on the same thread
//!   tells the same, at two traps per new goroutine and one at every other
//!   run-queue insert;
//! - `runtime.send(c, sg, ..)`, a channel send to a goroutine waiting on
//!   that channel, at its call `goready(gp, ..)` (found in the binary's
//!   code), else at its entry (the receiver is then `sg.g`, the sudog's
//!   first field in every Go release, read from memory): the sender hands
//!   it a value. When the receiver next runs, its writes carry
//!   the sender (and the sender's origin) as their lineage. Other wakeups
//!   (unlocks, timers) hand nothing over and are not followed;
//! - `runtime.chansend`'s call of `gopark`: the sender blocks, no receiver
//!   waiting. If it wrote on a socket in this run and handed nothing over
//!   since, that write is kept as its *parked write* (`go_send_park`), and
//!   `runtime.recv(c, sg, ..)` (`go_recv`), where a receiver that came late
//!   takes a waiting sender's value, reports the hand-off that `send` would
//!   have reported had the receiver been first;
//! - `runtime.exitsyscall0`'s and `runtime.goschedImpl`'s calls of
//!   `casgstatus(gp, ..)` (`go_paused`): `gp` stops without waiting for
//!   anything (its syscall outlasted its P, or it was preempted); its
//!   unhanded write is kept, and its next run goes on with it;
//! - and, from the data records, a goroutine's read of the client socket its
//!   last unhanded write was on (`replied`): that write's reply, after which
//!   its run goes on from the write, however long it waited.
//!
//! All are called with Go's register ABI (Go 1.17+ on amd64): arguments in
//! RAX, RBX, RCX; the running goroutine's `g` in R14.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::uprobe,
    programs::ProbeContext,
};
use sonde_common::{
    goroutine_id, kind, GoOrigin, GoThread, HandOffEvent, Lineage, HANDOFF_EVENT_SIZE,
};

use crate::maps::{
    go_born, go_hand, go_key, go_origin, go_overflow_mark, go_overflow_used, go_take_handed,
    go_write_forget, go_write_keep, go_write_on, slot_claim, slot_free, slot_get, GO_CURRENT,
    GO_SLOTS,
};

/// `tid`'s entry: its slot's, else the overflow's (and Python threads').
#[inline(always)]
fn thread(tid: u32) -> Option<*mut GoThread> {
    slot_get(&GO_SLOTS, tid).or_else(|| {
        if go_overflow_used() {
            GO_CURRENT.get_ptr_mut(&tid)
        } else {
            None
        }
    })
}

/// Registers of a Go ABIInternal call: (arg0, arg1, g).
#[inline(always)]
fn regs(ctx: &ProbeContext) -> Option<(u64, u64, u64)> {
    #[cfg(bpf_target_arch = "x86_64")]
    {
        // SAFETY: a uprobe's context is its pt_regs.
        let r = unsafe { &*ctx.regs };
        Some((r.rax, r.rbx, r.r14))
    }
    #[cfg(not(bpf_target_arch = "x86_64"))]
    {
        let _ = ctx;
        None
    }
}

#[uprobe]
pub fn go_execute(ctx: ProbeContext) -> u32 {
    let Some((gp, _, _)) = regs(&ctx) else {
        return 0;
    };
    let id = bpf_get_current_pid_tgid();
    let tid = id as u32;
    let task = goroutine_id(gp);
    // A hand-off holds for this run of the goroutine only. A kept write
    // (`kept_write`) is taken with it: a paused one goes on in this run; a
    // parked one is over (no receiver took its value while it waited).
    let taken = go_take_handed(go_key(id, task));
    let (handed, resumed) = match taken.as_ref().map(|h| (h, kept_write_of(h))) {
        Some((h, None)) => (Some(*h), None),
        Some((_, Some(w))) => (None, w.paused.then_some(w)),
        None => (None, None),
    };
    let (writer, wrote_fd, wrote_ns) = match resumed {
        Some(w) => (task, w.fd, w.wrote_ns),
        None => (0, -1, 0),
    };
    // The thread's one entry, updated in place: this runs at every
    // goroutine switch.
    match thread(tid) {
        Some(p) => {
            // SAFETY: a map value only this thread writes.
            let t = unsafe { &mut *p };
            t.running = task;
            t.writer = writer;
            match handed {
                Some(h) => {
                    t.task = task;
                    t.handed = h;
                    t.wrote_fd = -1;
                    t.wrote_ns = 0;
                }
                None => {
                    t.task = 0;
                    if resumed.is_some() {
                        t.wrote_fd = wrote_fd;
                        t.wrote_ns = wrote_ns;
                    }
                }
            }
        }
        None => {
            let t = GoThread {
                running: task,
                task: if handed.is_some() { task } else { 0 },
                handed: handed.unwrap_or_default(),
                writer,
                wrote_fd,
                wrote_ns,
                spawning: 0,
                _pad: 0,
            };
            if slot_claim(&GO_SLOTS, tid, &t).is_none() {
                go_overflow_mark();
                if GO_CURRENT.insert(&tid, &t, 0).is_err() {
                    crate::maps::count(sonde_common::stat::MAP_FULL);
                }
            }
        }
    }
    0
}

/// At `runtime.send`'s call `goready(gp, ..)` (found by user space in the
/// binary's code): the receiver's `g` is in RAX, so nothing is read from
/// the program's memory. The receiver cannot run before `goready`, so its
/// hand-off is in place before its next `go_execute`, as from the entry.
#[uprobe]
pub fn go_send_ready(ctx: ProbeContext) -> u32 {
    let Some((receiver, _, g)) = regs(&ctx) else {
        return 0;
    };
    send(g, || Some(receiver));
    0
}

/// At `runtime.send(c, sg, ..)`'s entry, where `go_send_ready`'s call site
/// is not found: the receiver is `sg.g` (the sudog's first field in every
/// Go release), read from the program's memory.
#[uprobe]
pub fn go_send(ctx: ProbeContext) -> u32 {
    let Some((_, sg, g)) = regs(&ctx) else {
        return 0;
    };
    send(g, || unsafe { bpf_probe_read_user(sg as *const u64) }.ok());
    0
}

/// Goroutine `g` sends a value to the goroutine `receiver()` names, which
/// waits for it.
#[inline(always)]
fn send(g: u64, receiver: impl FnOnce() -> Option<u64>) {
    let id = bpf_get_current_pid_tgid();
    let tid = id as u32;
    // The sender is the goroutine running here (send runs on its stack).
    let waker = goroutine_id(g);
    let Some(t) = thread(tid) else {
        return;
    };
    // SAFETY: a map value only this thread writes.
    let t = unsafe { &mut *t };
    if t.running != waker {
        return;
    }
    let Some(receiver) = receiver() else {
        return;
    };
    let origin = go_origin(go_key(id, waker)).unwrap_or_default();
    let handed = Lineage {
        waker,
        waker_origin: origin.creator,
        waker_origin_ns: origin.at_ns,
        ..Lineage::default()
    };
    let receiver = goroutine_id(receiver);
    go_hand(go_key(id, receiver), handed);
    // Its first hand-off since it wrote on a socket in this run: net/http's
    // `writeLoop` tells the request's goroutine that its request is
    // written. User space links the call to that goroutine's request when
    // nothing else does (`correlation/causality`, rule `goroutine`).
    // Only for a run that was handed nothing: a write after a hand-off
    // names its sender already (`current`), and user space places it by
    // that.
    if wrote_unhanded(t, waker) {
        t.writer = 0;
        go_write_forget(go_key(id, waker));
        report_hand_off(id, waker, receiver, t.wrote_fd, t.wrote_ns);
    }
    // An answer to the goroutine that handed this run its work (a worker
    // telling a job's goroutine that the job is done; net/http's
    // `writeLoop` telling a request's goroutine that its request is
    // written): that work is over. If the run goes on to take another job
    // from a channel's buffer, without parking, nothing readies it, and its
    // writes for that job would carry the last sender as their lineage,
    // under that sender's request. They carry none now; the hand-off after
    // them (above) places them.
    if t.task == waker && t.handed.waker == receiver {
        t.task = 0;
    }
}

/// Whether goroutine `g`, running on the thread whose entry is `t`, wrote
/// on a socket in this run, and was handed nothing for it and handed
/// nothing over since: a write its next hand-off places.
#[inline(always)]
fn wrote_unhanded(t: &GoThread, g: u32) -> bool {
    t.writer == g && t.task != g
}

/// Reports that goroutine `from` of process `id` (pid_tgid), having written
/// on `fd` in the write that entered at `wrote_ns`, handed a value to
/// goroutine `to`.
#[inline(always)]
fn report_hand_off(id: u64, from: u32, to: u32, fd: i32, wrote_ns: u64) {
    let to_origin = go_origin(go_key(id, to)).unwrap_or_default();
    let ev = HandOffEvent {
        hdr: crate::capture::header(kind::HANDOFF, id, fd),
        from,
        to,
        wrote_ns,
        to_origin: to_origin.creator,
        _pad: 0,
        to_origin_ns: to_origin.at_ns,
    };
    crate::capture::output(unsafe {
        core::slice::from_raw_parts(&ev as *const HandOffEvent as *const u8, HANDOFF_EVENT_SIZE)
    });
}

/// A goroutine's client write whose hand-off has not come, kept past the
/// goroutine's run (`kept_write`).
#[derive(Clone, Copy)]
struct KeptWrite {
    fd: i32,
    wrote_ns: u64,
    /// Paused (`go_paused`): the goroutine did not stop for other work of
    /// its own, and its next run goes on from the write. Else parked
    /// (`go_send_park`): only the receiver that takes its value uses it.
    paused: bool,
}

/// A kept write, in `GO_HANDOFFS` where the goroutine's hand-off would be:
/// `waker` 0, which no hand-off has (every goroutine id has its top bit
/// set); the socket in `origin`, the write's entry in `origin_ns`, paused
/// or parked in `waker_origin`. One table, so that the goroutine's next run
/// (`go_execute`), which takes its hand-off there anyway, takes it too at
/// no added cost.
#[inline(always)]
fn kept_write(w: KeptWrite) -> Lineage {
    Lineage {
        origin: w.fd as u32,
        origin_ns: w.wrote_ns,
        waker_origin: w.paused as u32,
        ..Lineage::default()
    }
}

/// `h` as a kept write, if it is one.
#[inline(always)]
fn kept_write_of(h: &Lineage) -> Option<KeptWrite> {
    (h.waker == 0).then_some(KeptWrite {
        fd: h.origin as i32,
        wrote_ns: h.origin_ns,
        paused: h.waker_origin != 0,
    })
}

/// Keeps the unhanded write of goroutine `g` (its `g` pointer), stopping on
/// the thread whose entry is `t`, of process `id` (pid_tgid), if it has one
/// (`wrote_unhanded`).
#[inline(always)]
fn keep_write(id: u64, t: &GoThread, g: u32, paused: bool) {
    if t.running == g && wrote_unhanded(t, g) {
        let w = KeptWrite {
            fd: t.wrote_fd,
            wrote_ns: t.wrote_ns,
            paused,
        };
        go_hand(go_key(id, g), kept_write(w));
    }
}

/// At `runtime.exitsyscall0`'s and `runtime.goschedImpl`'s calls of
/// `casgstatus(gp, .., _Grunnable)` (on the thread's system stack): the
/// goroutine `gp` (RAX), back from a syscall that outlasted its P (the
/// scheduler gave the P to another thread meanwhile), or preempted, or
/// yielding, goes back to a run queue without waiting for anything. Its
/// next run goes on from where this one stopped, so its unhanded write is
/// kept for it (`go_execute` gives it back). Without this, a worker whose
/// write syscall was slow (a busy machine) lost the write at that switch,
/// and its answer named no call.
#[uprobe]
pub fn go_paused(ctx: ProbeContext) -> u32 {
    if let Some(((gp, _, _), id, t)) = on_thread(&ctx) {
        // SAFETY: a map value.
        keep_write(id, unsafe { &*t }, goroutine_id(gp), true);
    }
    0
}

/// At `runtime.chansend`'s calls of `gopark(unlockf, &c.lock, ..)`: the
/// sender, running here, blocks until a receiver takes its value; its
/// unhanded write is kept, parked. It is already in the channel's queue of
/// senders, but no receiver can take it out before `gopark` releases the
/// channel's lock, so the write is kept before `go_recv` can look for it.
/// A nil channel's send parks for ever, with no `unlockf`.
#[uprobe]
pub fn go_send_park(ctx: ProbeContext) -> u32 {
    let Some(((unlockf, _, g), id, t)) = on_thread(&ctx) else {
        return 0;
    };
    if unlockf != 0 {
        // SAFETY: a map value.
        keep_write(id, unsafe { &*t }, goroutine_id(g), false);
    }
    0
}

/// At `runtime.recv(c, sg, ..)` (after its stack check: the arguments are
/// the entry's): the goroutine running here takes the value of the sender
/// `sg.g` (the sudog's first field), which waited for it. If that sender
/// parked with a write (`go_send_park`), this is its hand-off, reported as
/// `send` reports one. Only for an unbuffered channel (`c.dataqsiz`, the
/// second word of every Go release's `hchan`, is 0): from a full buffer
/// the receiver takes the oldest value, another send's, and the sender's
/// goes into the buffer.
#[uprobe]
pub fn go_recv(ctx: ProbeContext) -> u32 {
    let Some((c, sg, g)) = regs(&ctx) else {
        return 0;
    };
    let Ok(sender) = (unsafe { bpf_probe_read_user(sg as *const u64) }) else {
        return 0;
    };
    let id = bpf_get_current_pid_tgid();
    let sender = goroutine_id(sender);
    // Taken, whatever it holds: the sender runs next, and its run would
    // drop it anyway (`go_execute`).
    let Some(w) = go_take_handed(go_key(id, sender))
        .as_ref()
        .and_then(kept_write_of)
    else {
        return 0;
    };
    let buffered = unsafe { bpf_probe_read_user((c + 8) as *const u64) };
    if buffered != Ok(0) {
        return 0;
    }
    go_write_forget(go_key(id, sender));
    report_hand_off(id, sender, goroutine_id(g), w.fd, w.wrote_ns);
    0
}

/// At `runtime.newproc`'s call `runqput(pp, newg, true)`: the `go`
/// statement of the goroutine this thread runs made `newg` (RBX). newproc
/// switched to the thread's system stack to get here, which is no
/// goroutine switch, so the thread's entry still names the caller (set by
/// `go_execute`, through which every switch passes). A thread that ran no
/// goroutine since the probes were attached has no entry, and its new
/// goroutine goes without an origin.
#[uprobe]
pub fn go_spawned(ctx: ProbeContext) -> u32 {
    if let Some(((_, newg, _), id, t)) = on_thread(&ctx) {
        // SAFETY: a map value.
        born(id, newg, unsafe { (*t).running });
    }
    0
}

/// A probe's registers (`regs`), pid_tgid and thread entry; None off
/// x86-64, or on a thread that ran no goroutine since the probes were
/// attached.
#[inline(always)]
fn on_thread(ctx: &ProbeContext) -> Option<((u64, u64, u64), u64, *mut GoThread)> {
    let r = regs(ctx)?;
    let id = bpf_get_current_pid_tgid();
    Some((r, id, thread(id as u32)?))
}

/// Goroutine `creator` (0: unknown) of process `id` (pid_tgid) just made
/// the goroutine whose `g` is `newg`.
#[inline(always)]
fn born(id: u64, newg: u64, creator: u32) {
    if creator == 0 {
        return;
    }
    let origin = GoOrigin {
        creator,
        _pad: 0,
        at_ns: unsafe { bpf_ktime_get_ns() },
    };
    go_born(go_key(id, goroutine_id(newg)), origin);
}

/// The pair's first half, where `go_spawned`'s call site is not found.
#[uprobe]
pub fn go_newproc1(ctx: ProbeContext) -> u32 {
    let Some((_, callergp, _)) = regs(&ctx) else {
        return 0;
    };
    // A thread that ran no goroutine since the probes were attached has no
    // entry: its new goroutine goes without an origin.
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(t) = thread(tid) {
        // SAFETY: a map value only this thread writes.
        unsafe { (*t).spawning = goroutine_id(callergp) };
    }
    0
}

/// The pair's second half: every run-queue insert.
#[uprobe]
pub fn go_runqput(ctx: ProbeContext) -> u32 {
    // Only the runqput that follows newproc1 on this thread queues a new
    // goroutine; the others (readying, stealing) find nothing here.
    // The mark is spent (0: goroutine ids have their top bit set).
    let Some(((_, gp, _), id, t)) = on_thread(&ctx) else {
        return 0;
    };
    // SAFETY: a map value only this thread writes.
    let t = unsafe { &mut *t };
    let creator = t.spawning;
    t.spawning = 0;
    born(id, gp, creator);
    0
}

/// The goroutine running on thread `id` (pid_tgid) and its lineage, for a
/// data record (`egress`: a write, which also carries the hand-off of this
/// run).
#[inline(always)]
pub fn current(id: u64, egress: bool) -> (u32, Lineage) {
    let Some(t) = thread(id as u32) else {
        return (0, Lineage::default());
    };
    // SAFETY: a map value.
    let t = unsafe { &*t };
    let task = t.running;
    if task == 0 {
        return (0, Lineage::default());
    }
    let mut l = Lineage::default();
    if egress && t.task == task {
        l = t.handed;
    }
    if let Some(o) = go_origin(go_key(id, task)) {
        l.origin = o.creator;
        l.origin_ns = o.at_ns;
    }
    (task, l)
}

/// Goroutine `task` on thread `id` (pid_tgid) wrote, in a call that
/// entered at `enter_ns`, on client socket `fd` (-1: on another socket):
/// remembered for its next hand-off in this run (`go_send`); a write on
/// another socket ends what the last client write's hand-off could mean.
/// A client write in a run handed nothing is also kept past the run, for
/// its reply (`replied`).
#[inline(always)]
pub fn wrote(id: u64, task: u32, fd: i32, enter_ns: u64) {
    if let Some(t) = thread(id as u32) {
        // SAFETY: a map value only this thread writes.
        let t = unsafe { &mut *t };
        t.writer = if fd < 0 { 0 } else { task };
        t.wrote_fd = fd;
        t.wrote_ns = enter_ns;
        let key = go_key(id, task);
        if fd >= 0 && t.task != task {
            go_write_keep(key, fd, enter_ns);
        } else {
            go_write_forget(key);
        }
    }
}

/// Goroutine `task` on thread `id` (pid_tgid) read client socket `fd`. A
/// client call's reply most often comes after its writer stopped to wait
/// for it (Go parks a goroutine whose read would block), which ended the
/// write's run: a worker that writes a query, waits, reads the reply and
/// answers the job's goroutine answered in a run with no write. If the
/// goroutine's kept write (`wrote`) was on this socket, the reply is that
/// write's, and the run goes on from the write: its next hand-off names it,
/// as one in the write's own run would. Only a read of the same socket does
/// this: whatever else the goroutine did after its wait may be other work.
#[inline(always)]
pub fn replied(id: u64, task: u32, fd: i32) {
    let Some(t) = thread(id as u32) else {
        return;
    };
    // SAFETY: a map value only this thread writes.
    let t = unsafe { &mut *t };
    // Already this run's (its write was in it), or a run handed something,
    // whose hand-off is never reported.
    if t.running != task || t.writer == task || t.task == task {
        return;
    }
    if let Some(wrote_ns) = go_write_on(go_key(id, task), fd) {
        t.writer = task;
        t.wrote_fd = fd;
        t.wrote_ns = wrote_ns;
    }
}

/// `tid`'s entry in `GO_CURRENT`: the goroutine it runs (top bit set),
/// `Some(0)` for a Python thread (`python.rs`), None for any other.
#[inline(always)]
pub fn runtime(tid: u32) -> Option<u32> {
    // SAFETY: a map value.
    thread(tid).map(|t| unsafe { (*t).running })
}

/// Thread `tid` exited or exec'd: it runs no goroutine any more.
#[inline(always)]
pub fn thread_gone(tid: u32) {
    if !slot_free(&GO_SLOTS, tid) && GO_CURRENT.remove(&tid).is_ok() {
        let _ = crate::maps::PY_THREADS.remove(&tid);
    }
}
