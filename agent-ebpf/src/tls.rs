//! TLS plaintext from the library's own calls (OpenSSL 1.1 and 3.x, and
//! binaries that export its API), through uprobes attached by user space
//! (`agent/src/probes/tls.rs`) to each library file traced processes map.
//!
//! - At `SSL_read`/`SSL_write` (and `_ex`) entry: the `SSL *`, the buffer,
//!   where `_ex` writes its count, and the time and tick, in `TLS_ACTIVE`.
//! - Any socket syscall the thread makes before the call returns carries
//!   that connection's records (`capture::enter` asks [`inside_call`]): it
//!   names the socket (`TLS_FD`, for later calls that return buffered
//!   plaintext with no syscall), marks it `sock_flags::TLS`, and is not
//!   reported itself: no ciphertext reaches user space.
//! - At return: one data record of the plaintext moved, on that socket,
//!   flagged `data_flags::TLS`, built by the same `capture::emit` as
//!   socket payload, so everything downstream reads it the same way.
//!
//! The handshake functions are hooked only to learn the socket and keep the
//! handshake's ciphertext out. No struct offsets are read: which socket an
//! `SSL` uses is learnt from the syscalls, so every OpenSSL version, and any
//! BIO that ends in a syscall of the calling thread, works the same.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use sonde_common::{sock_flags, sock_key, stat, syscall, SockInfo};

use crate::{
    capture::{emit, Source},
    filter::should_trace,
    maps::{count, ActiveCall, TlsCall, TlsKey, SOCKS, TLS_ACTIVE, TLS_FD},
    tick,
};

/// What a `TlsCall` is.
mod op {
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const HANDSHAKE: u8 = 3;
}

#[inline(always)]
fn begin(ctx: &ProbeContext, op: u8, ex: bool) {
    let id = bpf_get_current_pid_tgid();
    if !should_trace((id >> 32) as u32) {
        return;
    }
    let tid = id as u32;
    let arg = |n| ctx.arg::<u64>(n).unwrap_or(0);
    if op == op::READ {
        // A read may start other work on this thread: a new tick, as for a
        // socket read (it may return buffered plaintext with no syscall).
        tick::bump(tid, true);
    }
    let call = TlsCall {
        ssl: arg(0),
        buf: if op == op::HANDSHAKE { 0 } else { arg(1) },
        out_len: if ex { arg(3) } else { 0 },
        enter_ns: unsafe { bpf_ktime_get_ns() },
        fd: -1,
        op,
        _pad: [0; 3],
        tick: tick::current(tid),
        _pad2: 0,
    };
    // A handshake inside another hooked call (SSL_connect calling
    // SSL_do_handshake) belongs to the outer one: never replace it.
    let flags = if op == op::HANDSHAKE { 1 } else { 0 }; // BPF_NOEXIST
    if TLS_ACTIVE.insert(&id, &call, flags).is_err() && op != op::HANDSHAKE {
        count(stat::MAP_FULL);
    }
}

#[uprobe]
pub fn tls_read(ctx: ProbeContext) -> u32 {
    begin(&ctx, op::READ, false);
    0
}

#[uprobe]
pub fn tls_read_ex(ctx: ProbeContext) -> u32 {
    begin(&ctx, op::READ, true);
    0
}

#[uprobe]
pub fn tls_write(ctx: ProbeContext) -> u32 {
    begin(&ctx, op::WRITE, false);
    0
}

#[uprobe]
pub fn tls_write_ex(ctx: ProbeContext) -> u32 {
    begin(&ctx, op::WRITE, true);
    0
}

#[uprobe]
pub fn tls_handshake(ctx: ProbeContext) -> u32 {
    begin(&ctx, op::HANDSHAKE, false);
    0
}

#[uretprobe]
pub fn tls_handshake_ret(_ctx: RetProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if let Some(c) = unsafe { TLS_ACTIVE.get(&id) } {
        if c.op == op::HANDSHAKE {
            let _ = TLS_ACTIVE.remove(&id);
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
    let key = TlsKey {
        tgid,
        _pad: 0,
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
    };
    let _ = TLS_FD.remove(&key);
    0
}

#[inline(always)]
fn finish(ctx: &RetProbeContext, op: u8) {
    let id = bpf_get_current_pid_tgid();
    let Some(c) = (unsafe { TLS_ACTIVE.get(&id) }).copied() else {
        return;
    };
    let _ = TLS_ACTIVE.remove(&id);
    if c.op != op {
        return;
    }
    // `SSL_read`/`SSL_write` return the count; `_ex` return 1 and store it.
    let rv = ctx.ret::<i32>() as i64;
    let bytes = if c.out_len != 0 {
        if rv != 1 {
            return;
        }
        unsafe { bpf_probe_read_user(c.out_len as *const u64) }.unwrap_or(0) as i64
    } else {
        rv
    };
    if bytes <= 0 {
        return;
    }
    let tgid = (id >> 32) as u32;
    let fd = if c.fd >= 0 {
        c.fd
    } else {
        let key = TlsKey {
            tgid,
            _pad: 0,
            ssl: c.ssl,
        };
        match unsafe { TLS_FD.get(&key) } {
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
    let call = ActiveCall {
        enter_ns: c.enter_ns,
        arg0: c.buf,
        arg1: bytes as u64,
        fd,
        syscall: if op == op::READ {
            syscall::TLS_READ
        } else {
            syscall::TLS_WRITE
        },
        tcp_seen: 0,
        _pad: [0; 2],
        tick: c.tick,
        _pad2: 0,
    };
    emit(id, tgid, &call, bytes, &info, Source::Buf(c.buf));
}

/// Called by every socket syscall entry on a tracked socket: whether the
/// thread is inside a hooked TLS call, whose records that syscall carries.
/// If so, the socket is named for the call and marked as TLS.
#[inline(always)]
pub fn inside_call(id: u64, tgid: u32, fd: i32) -> bool {
    let Some(c) = TLS_ACTIVE.get_ptr_mut(&id) else {
        return false;
    };
    let ssl = unsafe {
        (*c).fd = fd;
        (*c).ssl
    };
    let key = TlsKey { tgid, _pad: 0, ssl };
    if unsafe { TLS_FD.get(&key) }.copied() != Some(fd) {
        let _ = TLS_FD.insert(&key, &fd, 0);
    }
    if let Some(s) = SOCKS.get_ptr_mut(&sock_key(tgid, fd as u32)) {
        let s: &mut SockInfo = unsafe { &mut *s };
        if s.flags & sock_flags::TLS == 0 {
            s.flags |= sock_flags::TLS;
        }
    }
    true
}
