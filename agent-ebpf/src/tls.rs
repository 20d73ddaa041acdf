//! TLS plaintext from the library's own calls (OpenSSL 1.1 and 3.x, and
//! binaries that export its API), through uprobes attached by user space
//! (`agent/src/probes/tls.rs`) to each library file traced processes map.
//!
//! - At `SSL_read`/`SSL_write` (and `_ex`) entry, or at the internal
//!   function both forms call: the `SSL *`, the buffer, where `_ex` writes
//!   its count, and the time and tick, in the thread's slot of `TLS_SLOTS`
//!   (a goroutine's: in `TLS_ACTIVE`).
//! - Any socket syscall the thread makes before the call returns carries
//!   that connection's records (`capture::enter` asks [`inside_call`]): it
//!   names the socket (`TLS_FD`, for later calls that return buffered
//!   plaintext with no syscall), marks it `sock_flags::TLS`, and is not
//!   reported itself: no ciphertext reaches user space.
//! - One data record of the plaintext, on that socket, flagged
//!   `data_flags::TLS`, built by the same `capture::emit` as socket payload,
//!   so everything downstream reads it the same way: a read's at return,
//!   a write's at its first socket syscall (wire order; see `inside_call`).
//!
//! - A library with a memory BIO (Node.js, Python's `SSLObject`) makes no
//!   syscall inside its calls: the event loop moves the records. Its
//!   object's socket is learnt from the thread's activity instead (see
//!   `tick.rs`): a read's is the socket whose read began it, a write's
//!   the next socket the thread writes a TLS record to in the same
//!   activity (`unknown_socket`).
//!
//! The handshake functions are hooked only to learn the socket and keep the
//! handshake's ciphertext out. No struct offsets are read: which socket an
//! `SSL` uses is learnt from the syscalls, so every OpenSSL version, and any
//! BIO, works the same.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use sonde_common::{goroutine_id, sock_flags, sock_key, stat, syscall, SockInfo};

use crate::{
    capture::{emit, record_tick, Source},
    filter::should_trace,
    maps::{
        count, slot_claim, slot_free, slot_get, ActiveCall, TlsCall, TlsKey, SOCKS, TLS_ACTIVE,
        TLS_FD, TLS_SLOTS,
    },
    tick,
};

/// What a `TlsCall` is.
mod op {
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const HANDSHAKE: u8 = 3;
}

/// `count`: which argument points to where the call stores its count
/// (3: `_ex`'s; 4: after a write's flags, OpenSSL 3.3+), or 0: it returns
/// the count.
#[inline(always)]
fn begin(ctx: &ProbeContext, op: u8, count: u8) {
    let id = bpf_get_current_pid_tgid();
    if !should_trace((id >> 32) as u32) {
        return;
    }
    let tid = id as u32;
    let arg = |n| ctx.arg::<u64>(n).unwrap_or(0);
    // Before the read's own tick: the socket whose read started this one,
    // which a memory BIO's records came from (see `adopt`).
    let guess = if op == op::WRITE {
        -1
    } else {
        tick::read_socket(tid)
    };
    // A read may start other work on this thread: a new tick, as for a
    // socket read (it may return buffered plaintext with no syscall).
    let tick = tick::tls_call(tid, op == op::READ);
    let out_len = match count {
        3 => arg(3),
        4 => arg(4),
        _ => 0,
    };
    open(id, op, arg(0), arg(1), arg(2), out_len, tick, guess);
}

/// Records a call of `op` entered now, under `key` (a thread, or a
/// goroutine): its object, buffer, length, `_ex` count pointer, tick and
/// candidate socket.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn open(key: u64, op: u8, ssl: u64, buf: u64, len: u64, out_len: u64, tick: u32, guess: i32) {
    // A handshake inside another hooked call (SSL_connect calling
    // SSL_do_handshake, or crypto/tls's Read running its handshake) belongs
    // to the outer one: never replace it. A held call (see `hold`) is over.
    if op == op::HANDSHAKE {
        if let Some(outer) = active(key) {
            if unsafe { (*outer).held } == 0 {
                return;
            }
        }
    }
    let call = TlsCall {
        ssl,
        buf: if op == op::HANDSHAKE { 0 } else { buf },
        out_len,
        len: if op == op::WRITE { len } else { 0 },
        enter_ns: unsafe { bpf_ktime_get_ns() },
        fd: -1,
        op,
        sent: 0,
        held: 0,
        _pad: 0,
        tick,
        guess,
    };
    set_active(key, &call);
}

/// Whether `key` is a thread's (its pid_tgid), not a goroutine's
/// (`go_key`: a `goroutine_id`, top bit set, in its low half).
#[inline(always)]
fn is_thread(key: u64) -> bool {
    key as u32 & 0x8000_0000 == 0
}

/// The call in progress of `key` (a thread, or a goroutine). A thread's is
/// in its slot (`TLS_SLOTS`; op 0: none), or in `TLS_ACTIVE` if another
/// thread holds the slot; a goroutine's in `TLS_ACTIVE`.
#[inline(always)]
fn active(key: u64) -> Option<*mut TlsCall> {
    if is_thread(key) {
        if let Some(c) = slot_get(&TLS_SLOTS, key as u32) {
            // SAFETY: a map value only this thread writes.
            return (unsafe { (*c).op } != 0).then_some(c);
        }
    }
    TLS_ACTIVE.get_ptr_mut(&key)
}

/// Makes `call` the call in progress of `key`.
#[inline(always)]
fn set_active(key: u64, call: &TlsCall) {
    if is_thread(key) {
        let tid = key as u32;
        if let Some(c) = slot_get(&TLS_SLOTS, tid) {
            // SAFETY: a map value only this thread writes.
            unsafe { *c = *call };
            return;
        }
        if slot_claim(&TLS_SLOTS, tid, call).is_some() {
            return;
        }
    }
    if TLS_ACTIVE.insert(&key, call, 0).is_err() {
        count(stat::MAP_FULL);
    }
}

/// Ends the call in progress of `key`.
#[inline(always)]
fn end_active(key: u64) {
    if is_thread(key) {
        if let Some(c) = slot_get(&TLS_SLOTS, key as u32) {
            // SAFETY: a map value only this thread writes.
            unsafe { (*c).op = 0 };
            return;
        }
    }
    let _ = TLS_ACTIVE.remove(&key);
}

/// Thread `id` (pid_tgid) exited or exec'd: no call of its is in progress.
#[inline(always)]
pub fn thread_gone(id: u64) {
    if !slot_free(&TLS_SLOTS, id as u32) {
        let _ = TLS_ACTIVE.remove(&id);
    }
}

/// Entry probes: `$name` calls `$begin` with the call's op (and, for
/// OpenSSL, which argument points to its count).
macro_rules! entries {
    ($begin:ident: $($name:ident => ($($arg:expr),*)),* $(,)?) => {$(
        #[uprobe]
        pub fn $name(ctx: ProbeContext) -> u32 {
            $begin(&ctx, $($arg),*);
            0
        }
    )*};
}

entries!(begin:
    tls_read => (op::READ, 0),
    tls_read_ex => (op::READ, 3),
    tls_write => (op::WRITE, 0),
    tls_write_ex => (op::WRITE, 3),
    tls_handshake => (op::HANDSHAKE, 0),
);

// At the internal function both public forms of a read (or write) call,
// where user space finds it (`agent/src/probes/tls.rs`, `INNER`): it takes
// the `_ex` form's arguments (OpenSSL 3.3+'s write: and flags before the
// count's pointer) and returns as it does. The same work as the `_ex`
// entries; their own names keep their run time apart in `probe-cost`.
entries!(begin:
    tls_read_inner => (op::READ, 3),
    tls_write_inner => (op::WRITE, 3),
    tls_write_flags => (op::WRITE, 4),
);

#[uretprobe]
pub fn tls_handshake_ret(_ctx: RetProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if let Some(c) = active(id).map(|c| unsafe { *c }) {
        if c.op == op::HANDSHAKE && c.held == 0 {
            if unknown_socket(id, &c) {
                hold(id, &c, 0);
            } else {
                end_active(id);
            }
        }
    }
    0
}

#[uretprobe]
pub fn tls_read_ret(ctx: RetProbeContext) -> u32 {
    finish(&ctx, op::READ);
    0
}

#[uretprobe]
pub fn tls_write_ret(ctx: RetProbeContext) -> u32 {
    finish(&ctx, op::WRITE);
    0
}

/// `SSL_free`: the object's socket is forgotten with it.
#[uprobe]
pub fn tls_free(ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = TLS_FD.remove(&tls_key(tgid, ctx.arg::<u64>(0).unwrap_or(0)));
    0
}

#[inline(always)]
fn finish(ctx: &RetProbeContext, op: u8) {
    let id = bpf_get_current_pid_tgid();
    let Some(c) = active(id).map(|c| unsafe { *c }) else {
        return;
    };
    if c.op != op || c.held != 0 {
        return;
    }
    if c.sent != 0 {
        // A write whose plaintext went out with its first record (a socket
        // BIO: nginx, curl, libpq): its socket is named, and its count,
        // which an `_ex` form stores in the caller's memory, is not needed.
        end_active(id);
        return;
    }
    // `SSL_read`/`SSL_write` return the count; `_ex` return 1 and store it.
    let rv = ctx.ret::<i32>() as i64;
    let bytes = if c.out_len == 0 {
        rv
    } else if rv == 1 {
        unsafe { bpf_probe_read_user(c.out_len as *const u64) }.unwrap_or(0) as i64
    } else {
        0
    };
    if unknown_socket(id, &c) {
        if op == op::READ && bytes > 0 {
            count(stat::TLS_NO_SOCKET);
        }
        return hold(id, &c, bytes);
    }
    end_active(id);
    deliver(id, &c, bytes, op);
}

/// Whether finished call `c` of thread `id` leaves its object's socket
/// unknown: it reached no socket, none is known for the object, and its
/// candidate (`guess`) is not one. Otherwise the object is bound.
///
/// A library with a memory BIO (Node.js, Python's `SSLObject`) never
/// touches the socket inside its calls: the event loop reads the records
/// from the socket, feeds them to the library and calls `SSL_read` in the
/// same callback, and writes what `SSL_write` produced right after it
/// returns. So a read's socket is the tracked, not yet TLS, socket whose
/// read began the thread's current activity (nothing was read or polled,
/// and the thread did not sleep, in between), and a write's is the next
/// one written in the same activity (`inside_call`). A library that
/// reaches its socket inside the call (any socket BIO) names it there
/// first, so neither guess is used.
#[inline(always)]
fn unknown_socket(id: u64, c: &TlsCall) -> bool {
    let tgid = (id >> 32) as u32;
    if c.fd >= 0 || unsafe { TLS_FD.get(&tls_key(tgid, c.ssl)) }.is_some() {
        return false;
    }
    !(c.guess >= 0 && adopt(tgid, c.ssl, c.guess))
}

/// Keeps finished call `c` of thread `id` (`bytes` moved) for the thread's
/// next socket write in this activity (`inside_call`), which names its
/// socket.
#[inline(always)]
fn hold(id: u64, c: &TlsCall, bytes: i64) {
    // A thread with no tick entry (it never read a tracked socket) gets
    // one, or no later poll would end the hold's activity.
    tick::watch(id as u32);
    if let Some(h) = active(id) {
        unsafe {
            (*h).held = 1;
            (*h).tick = tick::activity(id as u32);
            (*h).len = if c.op == op::WRITE && bytes > 0 {
                bytes as u64
            } else {
                0
            };
        }
    }
}

/// Binds object `ssl` of `tgid` to socket `fd` if that socket is tracked
/// and no other object's records went through it.
#[inline(always)]
fn adopt(tgid: u32, ssl: u64, fd: i32) -> bool {
    let Some(s) = SOCKS.get_ptr_mut(&sock_key(tgid, fd as u32)) else {
        return false;
    };
    let s: &mut SockInfo = unsafe { &mut *s };
    if s.flags & sock_flags::TLS != 0 {
        return false;
    }
    s.flags |= sock_flags::TLS;
    let _ = TLS_FD.insert(&tls_key(tgid, ssl), &fd, 0);
    true
}

#[inline(always)]
fn tls_key(tgid: u32, ssl: u64) -> TlsKey {
    TlsKey { tgid, _pad: 0, ssl }
}

/// Emits the plaintext of finished call `c` of thread `id`: `bytes` moved.
#[inline(always)]
fn deliver(id: u64, c: &TlsCall, bytes: i64, op: u8) {
    if bytes <= 0 {
        return;
    }
    let tgid = (id >> 32) as u32;
    let fd = if c.fd >= 0 {
        c.fd
    } else {
        match unsafe { TLS_FD.get(&tls_key(tgid, c.ssl)) } {
            Some(fd) => *fd,
            None => {
                count(stat::TLS_NO_SOCKET);
                return;
            }
        }
    };
    // Only sockets user space tracks (TCP, not the agent's own).
    let Some(info) = (unsafe { SOCKS.get(&sock_key(tgid, fd as u32)) }).copied() else {
        return;
    };
    let sc = if op == op::READ {
        syscall::TLS_READ
    } else {
        syscall::TLS_WRITE
    };
    let now = tick::get(id as u32);
    // A released socket (`tick::quiet_unneeded`). A write whose tick moved
    // during the library's call is judged by a tick no longer known: it is
    // reported.
    if info.flags & sock_flags::QUIET != 0
        && (op == op::READ || now.n == c.tick)
        && tick::quiet_unneeded(
            op != op::READ,
            &now,
            crate::goroutine::runtime(id as u32).unwrap_or(0),
        )
    {
        count(stat::QUIET_SKIPPED);
        return;
    }
    let call = ActiveCall::new(c.enter_ns, c.buf, bytes as u64, fd, sc, c.tick);
    let tick = record_tick(&call, now.n);
    emit(id, tgid, &call, bytes, &info, Source::Buf(c.buf), tick);
    if op == op::READ {
        tick::loud_thread(id as u32);
    }
}

/// Called by every socket syscall entry on a tracked socket: whether the
/// thread is inside a hooked TLS call, whose records that syscall carries.
/// If so, the socket is named for the call and marked as TLS. `thread_tls`:
/// the thread's tick entry has `TICK_TLS`; `goroutine`: the one it runs
/// (0: none); `marked`: the socket is marked TLS already. `first` reads the
/// first two bytes a write sends.
///
/// A call held at its return (a memory BIO, see `unknown_socket`) is
/// carried by the thread's next write in the same activity, if what it
/// sends starts a TLS record and the socket carries no other object's
/// records.
#[inline(always)]
pub fn inside_call(
    id: u64,
    tgid: u32,
    fd: i32,
    thread_tls: bool,
    goroutine: u32,
    marked: bool,
    first: impl FnOnce() -> [u8; 2],
) -> bool {
    // A thread's call (only a thread that entered one, `TICK_TLS`, can be
    // in one), else (Go) the call of the goroutine it runs.
    let own = if thread_tls { active(id) } else { None };
    let c = match own {
        Some(c) => c,
        None => {
            if goroutine == 0 {
                return false;
            }
            let Some(c) = active(go_key(tgid, goroutine)) else {
                return false;
            };
            c
        }
    };
    let mut call = unsafe { *c };
    if call.held != 0 {
        if call.tick != tick::activity(id as u32) {
            // The activity ended with no socket named: a held write's
            // plaintext is lost, and counted.
            if call.len > 0 {
                count(stat::TLS_NO_SOCKET);
            }
            end_active(id);
            return false;
        }
        if !starts_record(first()) || !adopt(tgid, call.ssl, fd) {
            return false;
        }
        end_active(id);
    } else {
        // The call's first syscall on this socket names it (a call's later
        // ones, on a socket already marked, find that done).
        if call.fd != fd || !marked {
            unsafe { (*c).fd = fd };
            let key = tls_key(tgid, call.ssl);
            if unsafe { TLS_FD.get(&key) }.copied() != Some(fd) {
                let _ = TLS_FD.insert(&key, &fd, 0);
            }
            if !marked {
                if let Some(s) = SOCKS.get_ptr_mut(&sock_key(tgid, fd as u32)) {
                    let s: &mut SockInfo = unsafe { &mut *s };
                    s.flags |= sock_flags::TLS;
                }
            }
        }
        if call.op != op::WRITE || call.sent != 0 {
            return true;
        }
        unsafe { (*c).sent = 1 };
    }
    // A write's plaintext goes out with its first record, not at the
    // call's return: the peer may answer (and this process read the
    // answer) before the writer returns, as a Go goroutine that waits for
    // a P after its syscall does. Reported in wire order, the request is
    // never seen after its response.
    if call.op == op::WRITE {
        call.fd = fd;
        deliver(id, &call, call.len as i64, op::WRITE);
    }
    true
}

/// Whether bytes open a TLS record: a content type (20 to 23), version 3.x.
#[inline(always)]
fn starts_record(b: [u8; 2]) -> bool {
    (20..=23).contains(&b[0]) && b[1] == 3
}

// Go's crypto/tls: `(*Conn).Write(b)` and `(*Conn).Read(b)`, register ABI
// (Go 1.17+, amd64): the receiver in RAX, the slice's pointer and length in
// RBX and RCX, the running g in R14; the result `n` in RAX at return. A
// goroutine may move to another thread inside the call (it parks on
// EAGAIN), so calls are keyed by goroutine, and `inside_call` finds a
// thread's through `GO_CURRENT`. Uretprobes would rewrite the return
// address on a stack Go may move: user space attaches the `_ret` programs
// at each RET instruction of the function instead.

/// `TLS_ACTIVE`'s key for goroutine `g` (a `goroutine_id`, top bit set,
/// so never a thread id) of process `tgid`.
#[inline(always)]
fn go_key(tgid: u32, g: u32) -> u64 {
    ((tgid as u64) << 32) | g as u64
}

/// (RAX, RBX, RCX, R14) of a Go ABIInternal call.
#[inline(always)]
fn go_regs(ctx: &ProbeContext) -> Option<(u64, u64, u64, u64)> {
    #[cfg(bpf_target_arch = "x86_64")]
    {
        // SAFETY: a uprobe's context is its pt_regs.
        let r = unsafe { &*ctx.regs };
        Some((r.rax, r.rbx, r.rcx, r.r14))
    }
    #[cfg(not(bpf_target_arch = "x86_64"))]
    {
        let _ = ctx;
        None
    }
}

#[inline(always)]
fn go_begin(ctx: &ProbeContext, op: u8) {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !should_trace(tgid) {
        return;
    }
    let Some((conn, buf, len, g)) = go_regs(ctx) else {
        return;
    };
    // No tick: a goroutine's records stand for it by task, not by thread.
    open(go_key(tgid, goroutine_id(g)), op, conn, buf, len, 0, 0, -1);
}

#[inline(always)]
fn go_end(ctx: &ProbeContext, op: u8) {
    let id = bpf_get_current_pid_tgid();
    let Some((n, _, _, g)) = go_regs(ctx) else {
        return;
    };
    let key = go_key((id >> 32) as u32, goroutine_id(g));
    let Some(c) = active(key).map(|c| unsafe { *c }) else {
        return;
    };
    if c.op != op {
        return;
    }
    end_active(key);
    if op != op::HANDSHAKE && c.sent == 0 {
        deliver(id, &c, n as i64, op);
    }
}

entries!(go_begin:
    go_tls_write => (op::WRITE),
    go_tls_read => (op::READ),
    go_tls_handshake => (op::HANDSHAKE),
);

// At each RET (see above): plain uprobes, not uretprobes.
entries!(go_end:
    go_tls_write_ret => (op::WRITE),
    go_tls_read_ret => (op::READ),
    go_tls_handshake_ret => (op::HANDSHAKE),
);
