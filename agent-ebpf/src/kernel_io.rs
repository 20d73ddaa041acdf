//! Socket I/O that no syscall tracepoint sees: io_uring's sends and
//! receives. Optional, and only where the kernel has kprobes.
//!
//! * `io_uring:io_uring_file_get` fires when io_uring resolves a request's
//!   (non-fixed) fd, just before it issues the request on the same thread.
//!   For a tracked socket it parks (tgid, fd) for that thread in `URING_FD`.
//! * The next `tcp_sendmsg`/`tcp_recvmsg` on that thread ties the kernel
//!   socket to (tgid, fd) in `SK_SOCK`, so later calls on that socket (poll
//!   retries in task_work, io-wq workers) are known by the socket alone.
//! * A call inside a traced syscall (`THREADS` holds it, live) is left to the
//!   tracepoints, so nothing is reported twice.
//! * The kprobes cost something on every TCP send and receive of the node,
//!   so user space attaches them only once `URING_SEEN` says io_uring was
//!   used on a tracked socket; the tracepoints above are cheap (io_uring
//!   users only) and attached from the start.
//! * The payload is found through `msghdr.msg_iter`, whose layout differs
//!   between releases: user space reads it from BTF into
//!   `SONDE_KERNEL_LAYOUT` (no CO-RE relocations from Rust).
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{kprobe, kretprobe, map, tracepoint},
    maps::{Array, LruHashMap},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use sonde_common::{sock_key, syscall, KernelLayout, SockInfo};

use crate::{
    capture::{emit, record_tick, Source},
    ctx::field,
    filter::should_trace,
    maps::{active_live, ActiveCall, SOCKS},
};

#[unsafe(no_mangle)]
static SONDE_KERNEL_LAYOUT: KernelLayout = KernelLayout {
    msg_iter: 0,
    iter_type: 0,
    iter_count: 0,
    iter_ptr: 0,
    iter_nr_segs: 0,
    iter_offset: 0,
    uring_fd: 0,
    iter_type_mask: 0,
    iter_iovec: 0,
    iter_ubuf: 0,
    valid: 0,
};

#[inline(always)]
fn layout() -> KernelLayout {
    unsafe { core::ptr::read_volatile(&SONDE_KERNEL_LAYOUT) }
}

/// Kernel socket (`struct sock *`) -> sock_key of the fd io_uring used for it.
#[map]
pub static SK_SOCK: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);

/// Thread (pid_tgid) -> sock_key of the request io_uring is issuing on it.
#[map]
static URING_FD: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// Set to 1 by the first io_uring request on a tracked socket: user space
/// then attaches the kprobes.
#[map]
pub static URING_SEEN: Array<u32> = Array::with_max_entries(1, 0);

const SRC_UBUF: u8 = 1;
const SRC_IOVEC: u8 = 2;

/// A `tcp_sendmsg`/`tcp_recvmsg` between entry and return.
#[repr(C)]
#[derive(Clone, Copy)]
struct KernelCall {
    /// fd, syscall kind, entry time; arg0/arg1: buffer, or iovec array and count.
    call: ActiveCall,
    /// The socket's owner (the thread may be an io_uring worker).
    tgid: u32,
    src: u8,
    _pad: [u8; 3],
}

#[map]
static KCALLS: LruHashMap<u64, KernelCall> = LruHashMap::with_max_entries(16384, 0);

#[tracepoint]
pub fn io_uring_file_get(ctx: TracePointContext) -> u32 {
    let l = layout();
    if l.valid == 0 {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let fd: i32 = field(&ctx, l.uring_fd as usize);
    if fd < 0 || !should_trace(tgid) {
        return 0;
    }
    let key = sock_key(tgid, fd as u32);
    if unsafe { SOCKS.get(&key) }.is_some() {
        let _ = URING_FD.insert(&id, &key, 0);
        if let Some(seen) = URING_SEEN.get_ptr_mut(0) {
            unsafe { *seen = 1 };
        }
    } else {
        let _ = URING_FD.remove(&id);
    }
    0
}

/// A request whose fd was resolved but never reached TCP (a poll, a
/// shutdown) must not name the next socket this thread touches.
#[tracepoint]
pub fn sys_exit_io_uring_enter(_ctx: TracePointContext) -> u32 {
    let _ = URING_FD.remove(&bpf_get_current_pid_tgid());
    0
}

#[inline(always)]
fn read<T: Default>(addr: u64) -> T {
    unsafe { bpf_probe_read_kernel(addr as *const T) }.unwrap_or_default()
}

#[inline(always)]
fn on_entry(ctx: &ProbeContext, sc: u8) {
    let l = layout();
    if l.valid == 0 {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    if active_live(id).is_some() {
        return; // inside a traced syscall: its tracepoints report it
    }
    let (Some(sk), Some(msg)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return;
    };
    let key = match unsafe { URING_FD.get(&id) } {
        Some(k) => {
            let k = *k;
            let _ = URING_FD.remove(&id);
            let _ = SK_SOCK.insert(&sk, &k, 0);
            k
        }
        None => match unsafe { SK_SOCK.get(&sk) } {
            Some(k) => *k,
            None => return,
        },
    };
    let it = msg + l.msg_iter as u64;
    let ty = read::<u8>(it + l.iter_type as u64) & l.iter_type_mask;
    let ptr: u64 = read(it + l.iter_ptr as u64);
    let (src, arg0, arg1) = if ty == l.iter_ubuf {
        (SRC_UBUF, ptr + read::<u64>(it + l.iter_offset as u64), 0)
    } else if ty == l.iter_iovec {
        (SRC_IOVEC, ptr, read::<u64>(it + l.iter_nr_segs as u64))
    } else {
        return; // kernel pages (splice, sendfile): no user buffer to copy
    };
    let kc = KernelCall {
        call: ActiveCall {
            tcp_seen: 1,
            ..ActiveCall::new(
                unsafe { bpf_ktime_get_ns() },
                arg0,
                arg1,
                key as u32 as i32,
                sc,
                0,
            )
        },
        tgid: (key >> 32) as u32,
        src,
        _pad: [0; 3],
    };
    let _ = KCALLS.insert(&id, &kc, 0);
}

#[inline(always)]
fn on_return(ctx: &RetProbeContext, sc: u8) {
    let id = bpf_get_current_pid_tgid();
    let Some(kc) = (unsafe { KCALLS.get(&id) }).copied() else {
        return;
    };
    let _ = KCALLS.remove(&id);
    // Both functions return int: the upper half of the register is not
    // the sign (-EAGAIN arrives as 0x00000000fffffff5).
    let rv = ctx.ret::<i32>() as i64;
    if kc.call.syscall != sc || rv <= 0 {
        return;
    }
    let info = unsafe { SOCKS.get(&sock_key(kc.tgid, kc.call.fd as u32)) }
        .copied()
        .unwrap_or(SockInfo::default());
    let src = if kc.src == SRC_UBUF {
        Source::Buf(kc.call.arg0)
    } else {
        Source::KernelIov(kc.call.arg0, kc.call.arg1)
    };
    let tick = record_tick(&kc.call, crate::tick::current(id as u32));
    emit(id, kc.tgid, &kc.call, rv, &info, src, tick);
    if !syscall::is_egress(sc) {
        crate::tick::loud_thread(id as u32);
    }
}

#[kprobe]
pub fn tcp_sendmsg_entry(ctx: ProbeContext) -> u32 {
    on_entry(&ctx, syscall::TCP_SENDMSG);
    0
}

#[kretprobe]
pub fn tcp_sendmsg_return(ctx: RetProbeContext) -> u32 {
    on_return(&ctx, syscall::TCP_SENDMSG);
    0
}

#[kprobe]
pub fn tcp_recvmsg_entry(ctx: ProbeContext) -> u32 {
    on_entry(&ctx, syscall::TCP_RECVMSG);
    0
}

#[kretprobe]
pub fn tcp_recvmsg_return(ctx: RetProbeContext) -> u32 {
    on_return(&ctx, syscall::TCP_RECVMSG);
    0
}
