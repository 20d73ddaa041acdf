//! `traceparent` injection (`--context-propagation traceparent`, off by
//! default): the kernel writes a W3C `traceparent` header into the HTTP/1.x
//! requests traced processes send, so that a service on another node (its
//! own sonde, or an OpenTelemetry SDK) continues the trace.
//!
//! The ids are decided here, once, and reported to user space, which gives
//! its spans those same ids (one source of truth):
//! - a server's read that starts a request ([`server_read`]) gets a span id
//!   and a provisional trace id, kept per thread (per goroutine in Go) in
//!   `THREAD_CTX` with the head's first bytes, and reported
//!   (`context::SERVER`). The first call injected for it parses the head
//!   ([`settle`]): an incoming `traceparent` names the trace, as it does in
//!   user space; the loop stays out of the capture programs;
//! - a client's write that may start a request ([`prepare`], at the
//!   syscall's entry) takes its thread's request as parent when the
//!   evidence is plain: the thread serves exactly one request, or wrote in
//!   the very tick it read that request. Anything else starts a new trace:
//!   a split trace, never a wrong parent;
//! - the `sk_msg` program ([`sonde_inject`]) then checks the bytes actually
//!   sent, and pushes the header after the request line only when the
//!   message holds a whole HTTP/1.x head without a `traceparent`; every
//!   request is counted by outcome (`stat::INJECT*`), the injected ones are
//!   reported (`context::INJECTED`).
//!
//! The `sock_ops` program ([`sonde_inject_enrol`]) puts the traced
//! processes' outgoing TCP connections into `INJECT_SOCKS`, the map the
//! `sk_msg` program is attached to: no other socket ever passes through it.
//!
//! Nothing here is loaded or verified unless injection is on: the other
//! programs reach this code behind the `SONDE_INJECT` constant, which the
//! verifier sees and prunes.
use aya_ebpf::{
    bindings::{
        sk_action::SK_PASS, BPF_ANY, BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_prandom_u32, bpf_probe_read_kernel_buf,
        generated::{bpf_get_socket_cookie, bpf_msg_pop_data, bpf_msg_pull_data},
    },
    macros::{map, sk_msg, sock_ops},
    maps::{HashMap, LruHashMap, PerCpuArray, SockHash},
    programs::{SkMsgContext, SockOpsContext},
};
use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;
use sonde_common::{context, kind, stat, ContextEvent, DataEvent, DATA_EVENT_SIZE};

use crate::{
    capture::output,
    filter::should_trace,
    maps::{count, sampling, SCRATCH, SOCKS},
    tick,
};

/// Bytes of a head looked at: a request whose head does not end within
/// them is not injected (`INJECT_PARTIAL_HEAD`).
pub const HEAD_MAX: usize = 2048;
/// Room past `HEAD_MAX` for the compares that start inside it.
const MARGIN: usize = 128;
const NONE: u32 = u32::MAX;
/// `traceparent: 00-<32 hex>-<16 hex>-<2 hex>\r\n`
const HEADER_LEN: usize = 70;
/// The traceparent value: `00-<32>-<16>-<2>`.
const VALUE_LEN: usize = 55;

/// The request a thread (or goroutine) serves, as the kernel named it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ThreadCtx {
    /// The request's trace: new at its read; its `traceparent`'s, once
    /// the first injection for it parsed its head (`parsed`).
    pub trace: [u8; 16],
    pub span: [u8; 8],
    /// Requests read and not yet answered by this thread; more than one
    /// leaves only the tick rule.
    pub open: u32,
    /// The thread that read the latest request, and its tick then.
    pub tid: u32,
    pub tick: u32,
    /// Bytes of the request's head kept in `SERVER_HEADS`.
    pub head_len: u16,
    pub sampled: u8,
    /// The head was parsed: `trace` and `sampled` are final.
    pub parsed: u8,
}

/// Bytes of a server request's head kept for its `traceparent`: a header
/// past them is not followed (its trace is split at this service).
pub const SERVER_HEAD: usize = 1024;

/// The head of the latest request of each `THREAD_CTX` entry, parsed only
/// when a call is injected for it (by the `sk_msg` program: the loop stays
/// out of the capture programs, whose verification it would multiply).
#[map]
static SERVER_HEADS: LruHashMap<u64, [u8; SERVER_HEAD]> = LruHashMap::with_max_entries(4096, 0);

/// Keyed by pid_tgid, or by (tgid, goroutine) in Go.
#[map]
static THREAD_CTX: LruHashMap<u64, ThreadCtx> = LruHashMap::with_max_entries(16384, 0);

/// A write that may carry a request, between its syscall's entry and the
/// `sk_msg` program that runs inside it: the ids to inject.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    pub enter_ns: u64,
    /// The `THREAD_CTX` entry of the request it was made for; 0: none.
    pub ctx_key: u64,
    pub trace: [u8; 16],
    pub span: [u8; 8],
    pub parent: [u8; 8],
    pub fd: i32,
    pub sampled: u8,
    pub _pad: [u8; 3],
}

/// pid_tgid -> the ids for its write in progress. Removed by the `sk_msg`
/// program, or at the syscall's exit when no enrolled socket took it.
#[map]
static INJECT_PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(16384, 0);

/// The outgoing connections of traced processes, by socket cookie. The
/// kernel removes a socket at its close.
#[map]
static INJECT_SOCKS: SockHash<u64> = SockHash::with_max_entries(65536, 0);

/// Sockets a traced process is connecting, by cookie, until ESTABLISHED
/// (which runs in softirq, where the process is not known).
#[map]
static INJECT_CONNECTING: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);

/// Processes excluded from injection, by `comm` and by cgroup v2 id
/// (each excluded directory and its descendants at start), from user space.
#[map]
static INJECT_EXCLUDE_COMM: HashMap<[u8; 16], u8> = HashMap::with_max_entries(256, 0);
#[map]
static INJECT_EXCLUDE_CGROUP: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);

/// A work area: a head being scanned, what the scan found, and the header
/// being written. One per thread in the `sk_msg` program, not per CPU: it
/// runs preemptible (only migration is disabled), so another thread on the
/// same CPU could take a per-CPU area in the middle of a scan.
#[repr(C)]
pub struct Head {
    pub bytes: [u8; HEAD_MAX + MARGIN],
    pub header: [u8; HEADER_LEN + 2],
    /// Where the request line's `\n` is; NONE: not within the bytes.
    pub line_end: u32,
    /// Just past the head's empty line; NONE: not within the bytes.
    pub head_end: u32,
    /// Where the first `traceparent` header's value starts; NONE.
    pub tp_at: u32,
    pub _pad: u32,
    /// A parsed `traceparent`'s trace id, then parent id.
    pub ids: [u8; 24],
}

/// pid_tgid -> its thread's work area, kept while the thread lives (LRU,
/// and removed at its exit).
#[map]
static HEADS: LruHashMap<u64, Head> = LruHashMap::with_max_entries(1024, 0);

/// Zeros a work area starts from (never written).
#[map]
static HEAD_ZERO: PerCpuArray<Head> = PerCpuArray::with_max_entries(1, 0);

/// Starts of the methods a request may begin with, as little-endian u32.
const METHODS: [u32; 8] = [
    u32::from_le_bytes(*b"GET "),
    u32::from_le_bytes(*b"POST"),
    u32::from_le_bytes(*b"PUT "),
    u32::from_le_bytes(*b"HEAD"),
    u32::from_le_bytes(*b"DELE"),
    u32::from_le_bytes(*b"PATC"),
    u32::from_le_bytes(*b"OPTI"),
    u32::from_le_bytes(*b"TRAC"),
];

#[inline(always)]
pub fn is_method(first4: u32) -> bool {
    let mut i = 0;
    while i < METHODS.len() {
        if first4 == METHODS[i] {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        let r = unsafe { bpf_get_prandom_u32() }.to_le_bytes();
        let mut k = 0;
        while k < 4 && i + k < N {
            out[i + k] = r[k];
            k += 1;
        }
        i += 4;
    }
    // All zeros is invalid in W3C and OTLP.
    out[0] |= (out[1] == 0) as u8;
    out
}

/// Finds the request line's end, the head's end and the first
/// `traceparent` header in the first `len` bytes of `h.bytes`. What it finds
/// goes to `h`. A `bpf_loop` (5.17): its callback is verified once, where a
/// loop of `HEAD_MAX` bytes would be walked byte by byte, path by path.
#[inline(always)]
fn scan(h: *mut Head, len: usize) {
    unsafe {
        core::ptr::write_volatile(&mut (*h).line_end, NONE);
        core::ptr::write_volatile(&mut (*h).head_end, NONE);
        core::ptr::write_volatile(&mut (*h).tp_at, NONE);
        let mut c = Scan { h, len: len as u64 };
        bpf_loop(
            HEAD_MAX as u32,
            scan_step as *mut c_void,
            &mut c as *mut Scan as *mut c_void,
            0,
        );
    }
}

#[repr(C)]
struct Scan {
    h: *mut Head,
    len: u64,
}

/// One byte of [`scan`]: 0 goes on, 1 stops.
extern "C" fn scan_step(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the caller's `Scan`, `h` a map value it checked.
    let (h, len) = unsafe { ((*(ctx as *const Scan)).h, (*(ctx as *const Scan)).len) };
    let i = i as usize;
    if h.is_null() || i >= HEAD_MAX || i as u64 + 1 >= len {
        return 1;
    }
    unsafe {
        let b = (*h).bytes.as_ptr();
        if *b.add(i) != b'\n' {
            return 0;
        }
        if (*h).line_end == NONE {
            (*h).line_end = i as u32;
        }
        let next = b.add(i + 1);
        if *next == b'\r' || *next == b'\n' {
            (*h).head_end = (i + 2) as u32;
            return 1;
        }
        if (*h).tp_at == NONE && names_traceparent(next) {
            (*h).tp_at = (i + 13) as u32;
        }
    }
    0
}

/// `traceparent:` at `p`, the name in any case.
#[inline(always)]
fn names_traceparent(p: *const u8) -> bool {
    const NAME: &[u8; 11] = b"traceparent";
    let mut k = 0;
    while k < NAME.len() {
        if unsafe { *p.add(k) } | 0x20 != NAME[k] {
            return false;
        }
        k += 1;
    }
    unsafe { *p.add(11) == b':' }
}

#[inline(always)]
fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Decodes `N` bytes of lowercase hex at `p` into `out` (map memory: the
/// verifier forgets each value, so one path goes through, not one per
/// digit's range). False on a non-hex digit or all zeros.
#[inline(always)]
fn hex_into<const N: usize>(p: *const u8, out: *mut u8) -> bool {
    let mut any = 0u8;
    for j in 0..N {
        let Some(hi) = hex_value(unsafe { *p.add(2 * j) }) else {
            return false;
        };
        let Some(lo) = hex_value(unsafe { *p.add(2 * j + 1) }) else {
            return false;
        };
        unsafe { core::ptr::write_volatile(out.add(j), hi << 4 | lo) };
        any |= unsafe { core::ptr::read_volatile(out.add(j)) };
    }
    any != 0
}

/// A `traceparent` value at `p` that user space's parser accepts too
/// (`spans/traceparent.rs`): version 00, lowercase hex, non-zero ids.
/// Returns (trace, sampled); the ids are left in `h.ids`.
#[inline(always)]
fn parse_value(mut p: *const u8, h: *mut Head) -> Option<([u8; 16], bool)> {
    unsafe {
        // Optional whitespace after the colon.
        let mut k = 0;
        while k < 2 && (*p == b' ' || *p == b'\t') {
            p = p.add(1);
            k += 1;
        }
        if *p != b'0' || *p.add(1) != b'0' || *p.add(2) != b'-' || *p.add(35) != b'-' {
            return None;
        }
        if *p.add(52) != b'-' || !matches!(*p.add(VALUE_LEN), b'\r' | b'\n' | b' ' | b'\t') {
            return None;
        }
        let ids = (*h).ids.as_mut_ptr();
        if !hex_into::<16>(p.add(3), ids) || !hex_into::<8>(p.add(36), ids.add(16)) {
            return None;
        }
        let hi = hex_value(*p.add(53))?;
        let lo = hex_value(*p.add(54))?;
        let mut trace = [0u8; 16];
        core::ptr::copy_nonoverlapping(ids, trace.as_mut_ptr(), 16);
        Some((trace, (hi << 4 | lo) & 1 == 1))
    }
}

/// The key of the request context of thread `id`, or of its goroutine.
#[inline(always)]
fn ctx_key(id: u64, task: u32) -> u64 {
    if task != 0 {
        (id & 0xffff_ffff_0000_0000) | task as u64
    } else {
        id
    }
}

/// A server's read returned: if the record just built in the scratch
/// starts an HTTP/1.x request, name it (ids, per thread), keep its head
/// for the `sk_msg` program, and report it.
#[inline(always)]
pub fn server_read(id: u64, tgid: u32, fd: i32, enter_ns: u64) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the scratch holds the data record `emit` just wrote.
    let ev = unsafe { &*(scratch as *const DataEvent) };
    let captured = unsafe { core::ptr::read_volatile(&ev.captured) } as usize;
    let (task, tick) = (ev.task, ev.tick);
    let b = unsafe { (*scratch).buf.as_ptr().add(DATA_EVENT_SIZE) };
    if captured < 16 {
        return;
    }
    let first4 = unsafe { core::ptr::read_unaligned(b as *const u32) };
    if !is_method(first4) {
        return;
    }
    let key = ctx_key(id, task);
    let trace = random::<16>();
    let c = ThreadCtx {
        trace,
        span: random::<8>(),
        open: 1,
        tid: id as u32,
        tick,
        head_len: if captured < SERVER_HEAD {
            captured as u16
        } else {
            SERVER_HEAD as u16
        },
        sampled: sampling().root(&trace) as u8,
        parsed: 0,
    };
    if !keep_head(key, b, c.head_len as usize) {
        count(stat::MAP_FULL);
        return;
    }
    // A thread's entry is rewritten in place (the common case: a thread
    // serving one request after another), else made.
    if let Some(old) = THREAD_CTX.get_ptr_mut(&key) {
        unsafe {
            *old = ThreadCtx {
                open: (*old).open.saturating_add(1),
                ..c
            }
        };
    } else if THREAD_CTX.insert(&key, &c, BPF_ANY as u64).is_err() {
        count(stat::MAP_FULL);
        return;
    }
    // The socket waits for its answer; the answer's write closes it.
    if let Some(s) = SOCKS.get_ptr_mut(&sonde_common::sock_key(tgid, fd as u32)) {
        unsafe { (*s).flags |= sonde_common::sock_flags::AWAITING };
    }
    report(
        id,
        fd,
        enter_ns,
        &c.trace,
        &c.span,
        &[0; 8],
        context::SERVER,
        c.sampled != 0,
    );
}

/// Keeps the first `len` bytes at `b` (the scratch) as `key`'s head: into
/// its existing entry, only those bytes; a new entry copies a whole one.
#[inline(always)]
fn keep_head(key: u64, b: *const u8, len: usize) -> bool {
    if let Some(h) = SERVER_HEADS.get_ptr_mut(&key) {
        let n = if len < SERVER_HEAD { len } else { SERVER_HEAD };
        // SAFETY: `n` is within the entry and within the scratch.
        let dst = unsafe { &mut (&mut *h)[..n] };
        return unsafe { bpf_probe_read_kernel_buf(b, dst) }.is_ok();
    }
    // SAFETY: the scratch has SERVER_HEAD bytes past the header (the bytes
    // past `captured` are stale, and `head_len` excludes them).
    let head = unsafe { &*(b as *const [u8; SERVER_HEAD]) };
    SERVER_HEADS.insert(&key, head, BPF_ANY as u64).is_ok()
}

/// The request of `THREAD_CTX[key]` gets its final trace: its head's
/// `traceparent`, if it has one (the rule user space applies too).
///
/// A subprogram of its own, returning one constant: however its paths
/// end, its caller continues in one state, so the verifier walks the
/// message's checks that follow once, not once per way this one ended.
#[inline(never)]
fn settle(key: u64, c: *mut ThreadCtx, h: *mut Head) -> u32 {
    settle_inner(key, c, h);
    0
}

#[inline(always)]
fn settle_inner(key: u64, c: *mut ThreadCtx, h: *mut Head) {
    unsafe {
        if (*c).parsed != 0 {
            return;
        }
        (*c).parsed = 1;
        let Some(head) = SERVER_HEADS.get(&key) else {
            return;
        };
        let len = (*c).head_len as usize;
        if len > SERVER_HEAD {
            return;
        }
        if bpf_probe_read_kernel_buf(head.as_ptr(), &mut (&mut (*h).bytes)[..SERVER_HEAD]).is_err()
        {
            return;
        }
        let b = (*h).bytes.as_ptr();
        scan(h, len);
        let at = core::ptr::read_volatile(&(*h).tp_at) as usize;
        let end = core::ptr::read_volatile(&(*h).head_end) as usize;
        if at >= SERVER_HEAD || at >= end || at + VALUE_LEN + 3 > len {
            return;
        }
        if let Some((trace, sampled)) = parse_value(b.add(at), h) {
            (*c).trace = trace;
            (*c).sampled = sampling().decide(&trace, Some(sampled)) as u8;
        }
    }
}

/// A server wrote on `fd`: the first write after a request answers it.
#[inline(always)]
pub fn server_wrote(id: u64, tgid: u32, fd: i32) {
    let Some(s) = SOCKS.get_ptr_mut(&sonde_common::sock_key(tgid, fd as u32)) else {
        return;
    };
    if unsafe { (*s).flags } & sonde_common::sock_flags::AWAITING == 0 {
        return;
    }
    unsafe { (*s).flags &= !sonde_common::sock_flags::AWAITING };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let task = unsafe { (*(scratch as *const DataEvent)).task };
    if let Some(c) = THREAD_CTX.get_ptr_mut(&ctx_key(id, task)) {
        unsafe { (*c).open = (*c).open.saturating_sub(1) };
    }
}

/// A traced client's write is starting, and its bytes begin like a
/// request: decide the ids it will carry, for the `sk_msg` program.
#[inline(always)]
pub fn prepare(id: u64, fd: i32, enter_ns: u64) {
    if crate::maps::inject_exclusions() {
        let comm = bpf_get_current_comm().unwrap_or_default();
        if unsafe { INJECT_EXCLUDE_COMM.get(&comm) }.is_some()
            || unsafe { INJECT_EXCLUDE_CGROUP.get(&bpf_get_current_cgroup_id()) }.is_some()
        {
            return;
        }
    }
    let tid = id as u32;
    let (task, _) = crate::goroutine::current(id, true);
    let mut p = Pending {
        enter_ns,
        ctx_key: 0,
        trace: [0; 16],
        span: random::<8>(),
        parent: [0; 8],
        fd,
        sampled: 0,
        _pad: [0; 3],
    };
    let key = ctx_key(id, task);
    let parent = unsafe { THREAD_CTX.get(&key) }
        .filter(|c| c.open == 1 || (c.open > 1 && c.tid == tid && c.tick == tick::current(tid)));
    match parent {
        // Its trace and flag are settled by the `sk_msg` program.
        Some(c) => {
            p.ctx_key = key;
            p.parent = c.span;
        }
        None => {
            p.trace = random::<16>();
            p.sampled = sampling().root(&p.trace) as u8;
        }
    }
    let _ = INJECT_PENDING.insert(&id, &p, BPF_ANY as u64);
}

/// Thread `id` exited: its request and its write are over.
#[inline(always)]
pub fn thread_gone(id: u64) {
    let _ = THREAD_CTX.remove(&id);
    let _ = SERVER_HEADS.remove(&id);
    let _ = HEADS.remove(&id);
    let _ = INJECT_PENDING.remove(&id);
}

/// The write's syscall returned: ids no `sk_msg` run took are void (its
/// socket is not enrolled), and that request is counted.
#[inline(always)]
pub fn write_done(id: u64) {
    if INJECT_PENDING.remove(&id).is_ok() {
        count(stat::INJECT_NOT_ENROLLED);
    }
}

#[inline(always)]
fn report(
    id: u64,
    fd: i32,
    enter_ns: u64,
    trace: &[u8; 16],
    span: &[u8; 8],
    parent: &[u8; 8],
    what: u8,
    sampled: bool,
) {
    let ev = ContextEvent {
        hdr: crate::capture::header(kind::CONTEXT, id, fd),
        enter_ns,
        trace_id: *trace,
        span_id: *span,
        parent_id: *parent,
        what,
        sampled: sampled as u8,
        _pad: [0; 6],
    };
    // SAFETY: plain old data, read back byte for byte by user space.
    let bytes = unsafe {
        core::slice::from_raw_parts(
            &ev as *const ContextEvent as *const u8,
            core::mem::size_of::<ContextEvent>(),
        )
    };
    output(bytes);
}

#[sock_ops]
pub fn sonde_inject_enrol(ctx: SockOpsContext) -> u32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut _) };
    match ctx.op() {
        // In connect(), in the process's own context.
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
            if should_trace(tgid) {
                let _ = INJECT_CONNECTING.insert(&cookie, &1, BPF_ANY as u64);
            }
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            if unsafe { INJECT_CONNECTING.get(&cookie) }.is_some() {
                let _ = INJECT_CONNECTING.remove(&cookie);
                // SAFETY: the context is the kernel's bpf_sock_ops.
                if INJECT_SOCKS
                    .update(cookie, unsafe { &mut *ctx.ops }, BPF_ANY as u64)
                    .is_err()
                {
                    count(stat::MAP_FULL);
                }
            }
        }
        _ => {}
    }
    1
}

#[sk_msg]
pub fn sonde_inject(ctx: SkMsgContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(p) = (unsafe { INJECT_PENDING.get(&id) }).copied() else {
        return SK_PASS;
    };
    let _ = INJECT_PENDING.remove(&id);
    count(with_head(id, |h| run(&ctx, id, p, h)));
    SK_PASS
}

/// Runs `f` on a work area of this thread's own; INJECT_FAILED without one.
#[inline(always)]
fn with_head(id: u64, f: impl FnOnce(*mut Head) -> u32) -> u32 {
    // A thread keeps its area from one run to the next (LRU; the thread's
    // exit removes it): every field is written before it is read, so it
    // needs no clearing, and the common case costs one lookup.
    if let Some(h) = HEADS.get_ptr_mut(&id) {
        return f(h);
    }
    let Some(zero) = HEAD_ZERO.get_ptr(0) else {
        return stat::INJECT_FAILED;
    };
    if HEADS
        .insert(&id, unsafe { &*zero }, BPF_NOEXIST as u64)
        .is_err()
    {
        return stat::INJECT_FAILED;
    }
    match HEADS.get_ptr_mut(&id) {
        Some(h) => f(h),
        None => stat::INJECT_FAILED,
    }
}

/// Settles the trace of the request the write was made for, then injects.
#[inline(always)]
fn run(ctx: &SkMsgContext, id: u64, mut p: Pending, h: *mut Head) -> u32 {
    if p.ctx_key != 0 {
        let Some(c) = THREAD_CTX.get_ptr_mut(&p.ctx_key) else {
            return stat::INJECT_FAILED;
        };
        // The thread moved on to another request since the syscall began.
        if unsafe { (*c).span } != p.parent {
            return stat::INJECT_FAILED;
        }
        core::hint::black_box(settle(p.ctx_key, c, h));
        p.trace = unsafe { (*c).trace };
        p.sampled = unsafe { (*c).sampled };
    }
    match inject(ctx, id, &p, h) {
        Ok(()) => stat::INJECTED,
        Err(outcome) => outcome,
    }
}

/// Writes the header into `ctx`'s message, or says why not. The message is
/// unchanged on every error.
#[inline(always)]
fn inject(ctx: &SkMsgContext, id: u64, p: &Pending, h: *mut Head) -> Result<(), u32> {
    let size = ctx.size() as usize;
    let n = if size > HEAD_MAX { HEAD_MAX } else { size };
    if n < 16 {
        return Err(stat::INJECT_NOT_HTTP);
    }
    if unsafe { bpf_msg_pull_data(ctx.msg, 0, n as u32, 0) } != 0 {
        return Err(stat::INJECT_FAILED);
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + n > end {
        return Err(stat::INJECT_FAILED);
    }
    let dst = unsafe { &mut (&mut (*h).bytes)[..HEAD_MAX] };
    let src = unsafe { core::slice::from_raw_parts(data as *const u8, n) };
    if unsafe { bpf_probe_read_kernel_buf(src.as_ptr(), &mut dst[..n]) }.is_err() {
        return Err(stat::INJECT_FAILED);
    }
    let b = unsafe { (*h).bytes.as_ptr() };
    if !is_method(unsafe { core::ptr::read_unaligned(b as *const u32) }) {
        return Err(stat::INJECT_NOT_HTTP);
    }
    scan(h, n);
    let line_end = unsafe { core::ptr::read_volatile(&(*h).line_end) } as usize;
    if line_end >= HEAD_MAX {
        return Err(stat::INJECT_PARTIAL_HEAD);
    }
    // `... HTTP/1.x\r\n`: anything else (HTTP/0.9, HTTP/2's preface, a
    // body) is left alone.
    if line_end < 10 || !is_version(unsafe { b.add(line_end - 9) }) {
        return Err(stat::INJECT_NOT_HTTP);
    }
    let head_end = unsafe { core::ptr::read_volatile(&(*h).head_end) } as usize;
    if head_end >= n {
        return Err(stat::INJECT_PARTIAL_HEAD);
    }
    let tp_at = unsafe { core::ptr::read_volatile(&(*h).tp_at) };
    if tp_at != NONE {
        return Err(stat::INJECT_HAS_TRACEPARENT);
    }
    if p.sampled == 0 && crate::maps::inject_omit_unsampled() {
        return Err(stat::INJECT_UNSAMPLED);
    }
    write_header(h, p);
    let at = (line_end + 1) as u32;
    if unsafe { bpf_msg_push_data_raw(ctx, at, HEADER_LEN as u32) } != 0 {
        return Err(stat::INJECT_FAILED);
    }
    if !fill(ctx, h, at) {
        unsafe { bpf_msg_pop_data(ctx.msg, at, HEADER_LEN as u32, 0) };
        return Err(stat::INJECT_FAILED);
    }
    report(
        id,
        p.fd,
        p.enter_ns,
        &p.trace,
        &p.span,
        &p.parent,
        context::INJECTED,
        p.sampled != 0,
    );
    Ok(())
}

#[inline(always)]
unsafe fn bpf_msg_push_data_raw(ctx: &SkMsgContext, at: u32, len: u32) -> i64 {
    unsafe { aya_ebpf::helpers::generated::bpf_msg_push_data(ctx.msg, at, len, 0) }
}

/// `HTTP/1.0\r` or `HTTP/1.1\r` at `p`.
#[inline(always)]
fn is_version(p: *const u8) -> bool {
    const V: &[u8; 7] = b"HTTP/1.";
    let mut k = 0;
    while k < V.len() {
        if unsafe { *p.add(k) } != V[k] {
            return false;
        }
        k += 1;
    }
    unsafe { matches!(*p.add(7), b'0' | b'1') && *p.add(8) == b'\r' }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `traceparent: 00-<trace>-<span>-<flags>\r\n` into `h.header`.
#[inline(always)]
fn write_header(h: *mut Head, p: &Pending) {
    let out = unsafe { &mut (*h).header };
    out[..16].copy_from_slice(b"traceparent: 00-");
    for j in 0..16 {
        out[16 + 2 * j] = HEX[(p.trace[j] >> 4) as usize];
        out[17 + 2 * j] = HEX[(p.trace[j] & 15) as usize];
    }
    out[48] = b'-';
    for j in 0..8 {
        out[49 + 2 * j] = HEX[(p.span[j] >> 4) as usize];
        out[50 + 2 * j] = HEX[(p.span[j] & 15) as usize];
    }
    out[65] = b'-';
    out[66] = b'0';
    out[67] = if p.sampled != 0 { b'1' } else { b'0' };
    out[68] = b'\r';
    out[69] = b'\n';
}

/// Copies the header into the room pushed at `at`.
#[inline(always)]
fn fill(ctx: &SkMsgContext, h: *const Head, at: u32) -> bool {
    if unsafe { bpf_msg_pull_data(ctx.msg, at, at + HEADER_LEN as u32, 0) } != 0 {
        return false;
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + HEADER_LEN > end {
        return false;
    }
    let src = unsafe { &(*h).header };
    for (k, byte) in src.iter().take(HEADER_LEN).enumerate() {
        unsafe { *((data + k) as *mut u8) = *byte };
    }
    true
}
