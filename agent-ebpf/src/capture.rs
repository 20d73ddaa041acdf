//! Data syscalls: remember the arguments at enter, copy the payload at exit.
//!
//! At exit the return value says how many bytes moved; for reads the user
//! buffer now holds them, for writes it still does. Only fds in `SOCKS` are
//! considered, so files and pipes cost one hash lookup.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user, generated,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use sonde_common::{
    data_flags, direction, kind, role, sock_flags, sock_key, stat, syscall, DataEvent, SockInfo,
    DATA_EVENT_SIZE, MAX_CAPTURE, MAX_IOV, MAX_IOV_WHOLE, MAX_MMSG,
};

use crate::{
    ctx::{arg, ret},
    filter::should_trace,
    inject,
    maps::{
        capture_size, count, inject_on, thread, thread_live, thread_new, wakeup_bytes, ActiveCall,
        EVENTS, SCRATCH, SOCKS, TICK_TLS,
    },
    tick, tls,
};

/// `struct iovec` from the user ABI.
#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

// Offsets in `struct user_msghdr` / `struct mmsghdr` (x86_64 and all LP64).
const MSGHDR_IOV: u64 = 16;
const MSGHDR_IOVLEN: u64 = 24;
const MMSGHDR_SIZE: u64 = 64;
const MMSGHDR_LEN: u64 = 56;

#[inline(always)]
fn enter(ctx: &TracePointContext, sc: u8) {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let fd = arg(ctx, 0) as i32;
    if fd < 0 || !should_trace(tgid) {
        return;
    }
    let tid = id as u32;
    let info = unsafe { SOCKS.get(&sock_key(tgid, fd as u32)) }.copied();
    let tracked = info.is_some();
    // The thread's entry, looked up once for its tick and its call slot;
    // a call on a tracked socket creates it.
    let slot = match thread(tid) {
        None if tracked => thread_new(tid, tick::NONE),
        p => p,
    };
    // Any read may start other work on this thread: a new tick.
    let t = match slot {
        Some(p) if syscall::is_egress(sc) => tick::of(unsafe { &(*p).tick }),
        Some(p) => tick::on_read(
            unsafe { &mut (*p).tick },
            tracked,
            if tracked { fd } else { -1 },
        ),
        None => tick::NONE,
    };
    let (Some(info), Some(slot)) = (info, slot) else {
        return;
    };
    let runtime = crate::goroutine::runtime(tid);
    let goroutine = runtime.unwrap_or(0);
    // TLS records: the plaintext comes from the library's call (`tls.rs`);
    // the ciphertext is never reported, inside a hooked call or outside
    // (the close_notify of `SSL_shutdown`).
    let marked = info.flags & sock_flags::TLS != 0;
    if tls::inside_call(
        id,
        tgid,
        fd,
        t.flags & TICK_TLS != 0,
        goroutine,
        marked,
        || first_bytes::<2>(ctx, sc),
    ) || marked
    {
        return;
    }
    // A released socket: only a write that may tell user space that a
    // request's input wrote something is reported (`tick::quiet_unneeded`).
    // The slot's call is voided, so that this call's exit finds none.
    if info.flags & sock_flags::QUIET != 0
        && tick::quiet_unneeded(syscall::is_egress(sc), &t, goroutine)
    {
        count(stat::QUIET_SKIPPED);
        // SAFETY: a map value, this thread's own.
        unsafe { (*slot).call.live = 0 };
        return;
    }
    let mut call = ActiveCall::new(
        unsafe { bpf_ktime_get_ns() },
        arg(ctx, 1),
        arg(ctx, 2),
        fd,
        sc,
        t.n,
    );
    call.sock = info;
    call.no_goroutine = (goroutine == 0) as u8;
    if runtime == Some(0) {
        call.py_task = crate::python::task(id);
        if call.py_task != 0 {
            let now = call.enter_ns;
            if let Some(o) = crate::python::origin(id, call.py_task, now) {
                call.py_origin = o;
                // When the creator itself was created: a context's address
                // is reused, and this tells its lives apart.
                call.py_origin_born =
                    crate::python::origin(id, o.creator, now).map_or(0, |c| c.at_ns);
            }
        }
    }
    // A pipe's write is reported at entry, before its bytes are in the
    // pipe: its reader may return them (and its record be written) before
    // this thread reaches the syscall's exit, and a hand-off must come
    // before the read of it. A write that then fails or stops short shifts
    // the offsets user space matches reads by; it checks them by content.
    if info.role == role::PIPE && sc == syscall::WRITE {
        let len = arg(ctx, 2) as i64;
        if len > 0 {
            emit(id, tgid, &call, len, &info, Source::Buf(call.arg0), t.n);
        }
        return;
    }
    // A client's write that begins like a request: the ids its
    // `traceparent` will carry are decided now, before its bytes reach
    // the socket's `sk_msg` program.
    if inject_on()
        && syscall::is_egress(sc)
        && info.role == role::CLIENT
        && info.flags & sock_flags::QUIET == 0
        && inject::is_method(u32::from_le_bytes(first_bytes::<4>(ctx, sc)))
    {
        inject::prepare(id, fd, call.enter_ns);
    }
    // SAFETY: a map value; only this thread writes its own call
    // (inet_sock_set_state runs inside it, on its behalf).
    unsafe { (*slot).call = call };
}

/// The first `N` bytes a write syscall sends; zeros for any other.
#[inline(always)]
fn first_bytes<const N: usize>(ctx: &TracePointContext, sc: u8) -> [u8; N] {
    let iov = match sc {
        syscall::WRITE | syscall::SENDTO => {
            return unsafe { bpf_probe_read_user(arg(ctx, 1) as *const [u8; N]) }.unwrap_or([0; N])
        }
        syscall::WRITEV => arg(ctx, 1),
        syscall::SENDMSG => read_msghdr_iov(arg(ctx, 1)).0,
        _ => return [0; N],
    };
    let Ok(v) = (unsafe { bpf_probe_read_user(iov as *const Iovec) }) else {
        return [0; N];
    };
    unsafe { bpf_probe_read_user(v.base as *const [u8; N]) }.unwrap_or([0; N])
}

#[inline(always)]
fn exit(ctx: &TracePointContext, sc: u8) {
    let id = bpf_get_current_pid_tgid();
    // One lookup of the thread's entry: its call, and its tick now.
    let Some(p) = thread_live(id) else {
        return;
    };
    // SAFETY: a map value, this thread's own.
    let (call, now) = unsafe {
        (*p).call.live = 0;
        ((*p).call, tick::of(&(*p).tick).n)
    };
    let tick = record_tick(&call, now);
    if inject_on() && syscall::is_egress(sc) {
        inject::write_done(id);
    }
    // A stale entry from a call whose exit we missed (attach race): ignore.
    if call.syscall != sc {
        count(stat::ORPHAN_EXITS);
        return;
    }
    let rv = ret(ctx);
    if rv <= 0 {
        return;
    }
    // A read is about to be reported with the tick as it is now. (Here,
    // not after the records: after `recvmmsg`'s loop it would be verified
    // once per state the loop leaves.)
    if !syscall::is_egress(sc) {
        // SAFETY: a map value, this thread's own.
        tick::loud(unsafe { &mut (*p).tick });
    }
    let tgid = (id >> 32) as u32;
    // The socket as it was at entry (it may have been closed by another
    // thread since: the bytes are reported anyway, user space knows the
    // connection). Only a payload past the capture size looks again, for
    // `WHOLE`, which user space may have set while a read was blocked.
    // A batch looks the socket up as before: its loop carries whatever the
    // verifier knows of `info` into every message, and from the entry's
    // copy that took it 65% more work.
    let info = if matches!(sc, syscall::SENDMMSG | syscall::RECVMMSG) {
        unsafe { SOCKS.get(&sock_key(tgid, call.fd as u32)) }
            .copied()
            .unwrap_or_default()
    } else if rv as u64 > capture_size() as u64 && call.sock.flags & sock_flags::WHOLE == 0 {
        unsafe { SOCKS.get(&sock_key(tgid, call.fd as u32)) }
            .copied()
            .unwrap_or(call.sock)
    } else {
        call.sock
    };
    match call.syscall {
        syscall::READ | syscall::WRITE | syscall::SENDTO | syscall::RECVFROM => {
            emit(id, tgid, &call, rv, &info, Source::Buf(call.arg0), tick);
        }
        syscall::READV | syscall::WRITEV => {
            emit(
                id,
                tgid,
                &call,
                rv,
                &info,
                Source::Iov(call.arg0, call.arg1),
                tick,
            );
        }
        syscall::SENDMSG | syscall::RECVMSG => {
            let (iov, iovlen) = read_msghdr_iov(call.arg0);
            emit(id, tgid, &call, rv, &info, Source::Iov(iov, iovlen), tick);
        }
        syscall::SENDMMSG | syscall::RECVMMSG => {
            // rv is the number of messages; each reports its own length.
            for i in 0..MAX_MMSG {
                if i as i64 >= rv {
                    break;
                }
                let mh = call.arg0 + i as u64 * MMSGHDR_SIZE;
                let len: u32 =
                    unsafe { bpf_probe_read_user((mh + MMSGHDR_LEN) as *const u32) }.unwrap_or(0);
                if len == 0 {
                    continue;
                }
                let (iov, iovlen) = read_msghdr_iov(mh);
                emit(
                    id,
                    tgid,
                    &call,
                    len as i64,
                    &info,
                    Source::BatchIov(iov, iovlen),
                    tick,
                );
            }
        }
        syscall::SENDFILE => emit(id, tgid, &call, rv, &info, Source::None, tick),
        _ => {}
    }
    if inject_on() && info.role == role::SERVER && syscall::is_egress(call.syscall) {
        inject::server_wrote(id, tgid, call.fd);
    }
}

/// A record's tick: a write follows what its thread read before it (the
/// tick at its entry); a read is the input of the tick that follows it, as
/// it is at the read's exit (`now`: the thread may have slept inside).
#[inline(always)]
pub fn record_tick(call: &ActiveCall, now: u32) -> u32 {
    if syscall::is_egress(call.syscall) {
        call.tick
    } else {
        now
    }
}

#[inline(always)]
fn read_msghdr_iov(msg: u64) -> (u64, u64) {
    let iov = unsafe { bpf_probe_read_user((msg + MSGHDR_IOV) as *const u64) }.unwrap_or(0);
    let n = unsafe { bpf_probe_read_user((msg + MSGHDR_IOVLEN) as *const u64) }.unwrap_or(0);
    (iov, n)
}

pub enum Source {
    /// A flat user buffer.
    Buf(u64),
    /// A user iovec array and its length.
    Iov(u64, u64),
    /// One message of a sendmmsg/recvmmsg batch: like `Iov`, but never
    /// walked past `MAX_IOV` (the batch loop multiplies the verifier's cost).
    BatchIov(u64, u64),
    /// A kernel copy of a user iovec array (a `struct iov_iter`'s), and its
    /// length. The segments still point into user memory.
    KernelIov(u64, u64),
    /// No user buffer (sendfile).
    None,
}

/// Sends one data record for `call`'s connection. `tgid` owns the socket;
/// `id`'s thread made the call (an io_uring worker may act for its owner).
/// `tick`: the record's tick (`record_tick`).
///
/// The record is built in the per-CPU scratch in three steps, and the order
/// is for the verifier: it explores every path through the payload copy
/// (one per iovec segment and outcome) and every path through the goroutine
/// lookup, and only states it cannot tell apart are pruned. Values kept in
/// registers across both would multiply those paths; values stored in map
/// memory are forgotten, so the paths meet again. Hence: the header first,
/// then the copy, then the copied length read back from the map. Built the
/// other way, 6.1's verifier passed its million-instruction limit on
/// `sys_exit_writev` (found by `vm-test`).
#[inline(always)]
pub fn emit(
    id: u64,
    tgid: u32,
    call: &ActiveCall,
    bytes: i64,
    info: &SockInfo,
    src: Source,
    tick: u32,
) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let egress = syscall::is_egress(call.syscall);
    let batch = matches!(src, Source::BatchIov(..));
    // No lookups for a thread that ran no goroutine at entry; but always in
    // a batch, whose loop would carry this check's two outcomes into every
    // message's verification (three times the verifier's work).
    let (task, lineage) = if call.no_goroutine != 0 && !batch {
        let l = sonde_common::Lineage {
            origin: call.py_origin.creator,
            origin_ns: call.py_origin.at_ns,
            waker_origin_ns: call.py_origin_born,
            ..sonde_common::Lineage::NONE
        };
        (0, l)
    } else {
        crate::goroutine::current(id, egress)
    };
    // SAFETY: the scratch is 8-aligned and larger than a header.
    let ev = unsafe { &mut *(scratch as *mut DataEvent) };
    *ev = DataEvent {
        hdr: sonde_common::EventHeader {
            kind: kind::DATA,
            _pad: [0; 3],
            tgid,
            tid: id as u32,
            fd: call.fd,
            ts_ns: unsafe { bpf_ktime_get_ns() },
            comm: bpf_get_current_comm().unwrap_or_default(),
        },
        enter_ns: call.enter_ns,
        bytes,
        syscall: call.syscall,
        direction: if egress {
            direction::EGRESS
        } else {
            direction::INGRESS
        },
        role: info.role,
        flags: 0,
        captured: 0,
        tick,
        task,
        lineage,
        py_task: call.py_task,
        _pad: 0,
    };
    let base = unsafe { (*scratch).buf.as_mut_ptr() };
    let mut flags = 0u8;
    let mut want = capture_size() as u64;
    if (bytes as u64) < want {
        want = bytes as u64;
    }
    let quiet = info.flags & sock_flags::QUIET != 0;
    if quiet {
        flags |= data_flags::PAYLOAD_SKIPPED;
        want = 0;
    }
    // `captured` was zeroed with the header; the copies count into it.
    let done = &mut ev.captured as *mut u32;
    let fault = match src {
        // A framed protocol's socket gets the ceiling (`sock_flags::WHOLE`),
        // on plain reads and writes only: the vectored copies' loops stay
        // bounded by the one constant size.
        Source::Buf(p) if !quiet && info.flags & sock_flags::WHOLE != 0 => {
            let whole = if (bytes as u64) < MAX_CAPTURE as u64 {
                bytes as u64
            } else {
                MAX_CAPTURE as u64
            };
            copy_buf(base, done, p, whole)
        }
        Source::Buf(p) => copy_buf(base, done, p, want),
        // Vectored: up to the ceiling too, through more entries.
        Source::Iov(iov, n) if !quiet && info.flags & sock_flags::WHOLE != 0 => {
            copy_iov::<MAX_IOV_WHOLE>(base, done, iov, n, whole_want(bytes), false)
        }
        Source::KernelIov(iov, n) if !quiet && info.flags & sock_flags::WHOLE != 0 => {
            copy_iov::<MAX_IOV_WHOLE>(base, done, iov, n, whole_want(bytes), true)
        }
        Source::Iov(iov, n) | Source::BatchIov(iov, n) => {
            copy_iov::<MAX_IOV>(base, done, iov, n, want, false)
        }
        Source::KernelIov(iov, n) => copy_iov::<MAX_IOV>(base, done, iov, n, want, true),
        Source::None => {
            flags |= data_flags::NO_PAYLOAD_SOURCE;
            false
        }
    };
    // Read back from the map, the length is one unknown value whatever
    // path the copy took: one state for the verifier from here on.
    let captured = unsafe { core::ptr::read_volatile(done) } as usize;
    if fault {
        flags |= data_flags::READ_FAULT;
        count(stat::READ_FAULTS);
    }
    if (captured as i64) < bytes {
        flags |= data_flags::TRUNCATED;
    }
    // An HTTP/2 preface: HPACK will need every header frame of this socket,
    // from its very next call. User space asks too (`CopyWhole`), but a
    // client writes its first HEADERS microseconds after the preface.
    if info.flags & sock_flags::WHOLE == 0 && captured >= 8 {
        let head = unsafe { core::ptr::read_unaligned(base.add(DATA_EVENT_SIZE) as *const u64) };
        if head == u64::from_le_bytes(*b"PRI * HT") {
            if let Some(p) = SOCKS.get_ptr_mut(&sock_key(tgid, call.fd as u32)) {
                unsafe { (*p).flags |= sock_flags::WHOLE };
            }
        }
    }
    if matches!(call.syscall, syscall::TLS_READ | syscall::TLS_WRITE) {
        flags |= data_flags::TLS;
    }
    ev.flags = flags;
    let len = if captured > MAX_CAPTURE {
        DATA_EVENT_SIZE + MAX_CAPTURE
    } else {
        DATA_EVENT_SIZE + captured
    };
    // A server's read that starts a request: its trace context is named
    // now, and reported before the request's own record.
    if inject_on() && !egress && info.role == role::SERVER && !batch {
        inject::server_read(id, tgid, call.fd, call.enter_ns);
    }
    let record = unsafe { core::slice::from_raw_parts(base as *const u8, len) };
    output(record);
    // Go: a goroutine's write, remembered for its next hand-off (`go_send`).
    // After the record, read back from the map, and never in a batch's loop
    // (Go makes none): its branches must not multiply the copy's states.
    // A goroutine's read of a client socket may be its last write's reply
    // (`goroutine::replied`).
    if !batch {
        let ev = unsafe { &*(scratch as *const DataEvent) };
        let task = unsafe { core::ptr::read_volatile(&ev.task) };
        if task != 0 {
            let client = unsafe { core::ptr::read_volatile(&ev.role) } == role::CLIENT;
            let fd = unsafe { core::ptr::read_volatile(&ev.hdr.fd) };
            if egress {
                let enter_ns = unsafe { core::ptr::read_volatile(&ev.enter_ns) };
                crate::goroutine::wrote(id, task, if client { fd } else { -1 }, enter_ns);
            } else if client {
                crate::goroutine::replied(id, task, fd);
            }
        }
    }
}

/// The header of a `kind` record about `fd` of thread `id` (pid_tgid),
/// stamped now, with no command name (the reader has the process's).
#[inline(always)]
pub fn header(kind: u8, id: u64, fd: i32) -> sonde_common::EventHeader {
    sonde_common::EventHeader {
        kind,
        _pad: [0; 3],
        tgid: (id >> 32) as u32,
        tid: id as u32,
        fd,
        ts_ns: unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() },
        comm: [0; 16],
    }
}

/// Writes a record, waking the reader only once enough data is queued: the
/// reader also drains on a short timer, so batching costs no lost events.
#[inline(always)]
pub fn output(record: &[u8]) {
    output_with(record, false)
}

/// `urgent`: wake the reader now, because user space must act while the
/// socket still exists (a /proc lookup).
#[inline(always)]
pub fn output_with(record: &[u8], urgent: bool) {
    // Once, as the queue crosses the threshold: a record written above it
    // finds the reader already woken. Each wakeup is an interrupt this CPU
    // sends itself (a hypervisor exit in a VM); one per record, while the
    // reader caught up, was a quarter of the data programs' time at 35,000
    // requests/s.
    let queued = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let threshold = wakeup_bytes();
    let flags = if urgent || (queued < threshold && queued + record.len() as u64 >= threshold) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output::<[u8]>(record, flags as u64).is_ok() {
        count(stat::EVENTS);
    } else {
        count(stat::RINGBUF_DROPS);
    }
}

/// Copies up to `want` bytes of a flat buffer, counting them in `done`.
/// Returns whether the read faulted.
#[inline(always)]
fn copy_buf(base: *mut u8, done: *mut u32, src: u64, want: u64) -> bool {
    let mut n = want as usize;
    if n > MAX_CAPTURE {
        n = MAX_CAPTURE;
    }
    if n == 0 {
        return false;
    }
    let n = verifier_bound(n, 2 * MAX_CAPTURE);
    if !read_user(unsafe { base.add(DATA_EVENT_SIZE) }, n, src) {
        return true;
    }
    unsafe { core::ptr::write_volatile(done, n as u32) };
    false
}

/// Copies `n` bytes of the task's memory at `src` to `dst`; false if the
/// read faulted.
#[inline(always)]
pub fn read_user(dst: *mut u8, n: usize, src: u64) -> bool {
    unsafe { generated::bpf_probe_read_user(dst as *mut _, n as u32, src as *const _) >= 0 }
}

/// `v`, known to be below `pow2` at runtime, masked so that the verifier
/// knows it too. Verifiers before 6.7 do not follow a comparison between two
/// registers (`off < want`), and may not see a comparison with a constant
/// either: LLVM may compare one copy of a value and pass another, reloaded
/// from the stack, that the comparison never refined. A mask is applied to
/// the value passed. `black_box` keeps LLVM, which can prove the mask
/// changes nothing, from deleting it.
#[inline(always)]
pub fn verifier_bound(v: usize, pow2: usize) -> usize {
    core::hint::black_box(v) & (pow2 - 1)
}

/// Bytes to copy on a `WHOLE` socket: all of them, up to the ceiling.
#[inline(always)]
fn whole_want(bytes: i64) -> u64 {
    if (bytes as u64) < MAX_CAPTURE as u64 {
        bytes as u64
    } else {
        MAX_CAPTURE as u64
    }
}

/// Const-bounded iovec walk: copies up to `want` bytes across the first
/// `N` segments, packed one after the other, counting them in `done` (the
/// record's `captured`, in map memory). `kernel_array`: the iovec array
/// itself is in kernel memory (the segments never are). Returns whether a
/// read faulted.
///
/// The running count is read back from the map at each segment: the
/// verifier then forgets how the earlier segments went, and every path
/// meets at the next one. Kept in a register, each segment's outcomes
/// (short, clamped, empty) multiply the states of all that follow.
#[inline(always)]
fn copy_iov<const N: usize>(
    base: *mut u8,
    done: *mut u32,
    iov: u64,
    iovcnt: u64,
    want: u64,
    kernel_array: bool,
) -> bool {
    let want = if want as usize > MAX_CAPTURE {
        MAX_CAPTURE
    } else {
        want as usize
    };
    unsafe { core::ptr::write_volatile(done, 0) };
    for i in 0..N {
        let off = unsafe { core::ptr::read_volatile(done) } as usize;
        if i as u64 >= iovcnt || off >= want {
            break;
        }
        let at = unsafe { (iov as *const Iovec).add(i) };
        let v = if kernel_array {
            unsafe { bpf_probe_read_kernel(at) }
        } else {
            unsafe { bpf_probe_read_user(at) }
        };
        let Ok(v): Result<Iovec, _> = v else {
            return true;
        };
        let mut n = v.len as usize;
        if n > want - off {
            n = want - off;
        }
        if n == 0 {
            continue;
        }
        // off < want <= MAX_CAPTURE: the mask changes nothing at runtime; it
        // bounds the destination (see `verifier_bound`).
        let n = verifier_bound(n, 2 * MAX_CAPTURE);
        let o = verifier_bound(off, MAX_CAPTURE);
        if !read_user(unsafe { base.add(DATA_EVENT_SIZE + o) }, n, v.base) {
            return true;
        }
        unsafe { core::ptr::write_volatile(done, (o + n) as u32) };
    }
    false
}

macro_rules! data_probes {
    ($($enter:ident, $exit:ident, $sc:expr;)*) => {$(
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            enter(&ctx, $sc);
            0
        }
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            exit(&ctx, $sc);
            0
        }
    )*};
}

data_probes! {
    sys_enter_read, sys_exit_read, syscall::READ;
    sys_enter_write, sys_exit_write, syscall::WRITE;
    sys_enter_readv, sys_exit_readv, syscall::READV;
    sys_enter_writev, sys_exit_writev, syscall::WRITEV;
    sys_enter_sendto, sys_exit_sendto, syscall::SENDTO;
    sys_enter_recvfrom, sys_exit_recvfrom, syscall::RECVFROM;
    sys_enter_sendmsg, sys_exit_sendmsg, syscall::SENDMSG;
    sys_enter_recvmsg, sys_exit_recvmsg, syscall::RECVMSG;
    sys_enter_sendmmsg, sys_exit_sendmmsg, syscall::SENDMMSG;
    sys_enter_recvmmsg, sys_exit_recvmmsg, syscall::RECVMMSG;
    sys_enter_sendfile64, sys_exit_sendfile64, syscall::SENDFILE;
}
