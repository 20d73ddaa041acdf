//! TCP connection lifecycle from tracepoints only (no kprobes, no CO-RE).
//!
//! * connect: `sock:inet_sock_set_state` CLOSE->SYN_SENT fires inside the
//!   connect() syscall, in the caller's context. That proves the fd is TCP
//!   and ties the kernel `struct sock *` to (tgid, fd). When the socket later
//!   reaches ESTABLISHED (in softirq, any context) its 4-tuple is reported
//!   against that owner.
//! * listen: LISTEN fires inside listen(); the fd joins `LISTENERS`.
//! * accept: the child socket reaches ESTABLISHED before accept() returns it.
//!   Its tuple is parked in `ESTAB_SK` under its `struct sock *`, which
//!   accept()'s exit finds behind the fd it returns (`sock_of_fd`, offsets
//!   from BTF), so a NULL sockaddr (libuv passes one) costs nothing. Without
//!   BTF, it is parked in `PEER_ESTAB` under its remote end, which accept()
//!   reports through its sockaddr, and sent to user space (`SERVER_ESTAB`);
//!   a NULL sockaddr then leaves the tuple to user space's pending list or
//!   /proc lookup, which a lagging agent can reach too late.
//! * close: the fd leaves the maps.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use aya_log_ebpf::debug;
use sonde_common::{
    conn_flags, kind, role, sock_key, stat, syscall, ConnEvent, EventHeader, FdLayout, SockInfo,
    Tuple, CONN_EVENT_SIZE,
};

use crate::{
    capture::output_with,
    ctx::{arg, field, ret},
    filter::should_trace,
    maps::{
        active_begin, active_live, active_take, count, first_network_act, ActiveCall, PeerKey,
        ESTAB_SK, LISTENERS, PEER_ESTAB, SK_OWNER, SOCKS,
    },
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const EINPROGRESS: i64 = 115;

// TCP states (include/net/tcp_states.h).
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

/// `SK_OWNER` value marking a socket of the agent itself.
const SELF_MARK: u64 = u64::MAX;

// `sock:inet_sock_set_state` field offsets, unchanged since Linux 4.16.
// User space checks them against the tracepoint's format file before attaching.
pub const SK_SKADDR: usize = 8;
pub const SK_OLDSTATE: usize = 16;
pub const SK_NEWSTATE: usize = 20;
pub const SK_SPORT: usize = 24;
pub const SK_DPORT: usize = 26;
pub const SK_FAMILY: usize = 28;
pub const SK_PROTOCOL: usize = 30;
pub const SK_SADDR: usize = 32;
pub const SK_DADDR: usize = 36;
pub const SK_SADDR_V6: usize = 40;
pub const SK_DADDR_V6: usize = 56;

#[unsafe(no_mangle)]
static SONDE_FD_LAYOUT: FdLayout = FdLayout {
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_private_data: 0,
    socket_sk: 0,
    valid: 0,
    _pad: [0; 7],
};

#[inline(always)]
fn fd_layout() -> FdLayout {
    unsafe { core::ptr::read_volatile(&SONDE_FD_LAYOUT) }
}

/// The `struct sock *` behind socket `fd` of the current task: `current->
/// files->fdt->fd[fd]->private_data->sk` (a socket's file keeps its
/// `struct socket` there). Read in the task's own syscall, where its fd
/// table cannot change under it but for its other threads; a fault or a
/// NULL anywhere gives None.
#[inline(always)]
fn sock_of_fd(l: &FdLayout, fd: i64) -> Option<u64> {
    let at = |base: u64, off: u32| -> Option<u64> {
        if base == 0 {
            return None;
        }
        let v = unsafe { bpf_probe_read_kernel((base + off as u64) as *const u64) }.ok()?;
        (v != 0).then_some(v)
    };
    let files = at(unsafe { bpf_get_current_task() }, l.task_files)?;
    let fdt = at(files, l.files_fdt)?;
    let max = unsafe { bpf_probe_read_kernel((fdt + l.fdt_max_fds as u64) as *const u32) }.ok()?;
    if fd < 0 || fd >= max as i64 {
        return None;
    }
    let file = at(at(fdt, l.fdt_fd)?, fd as u32 * 8)?;
    at(at(file, l.file_private_data)?, l.socket_sk)
}

/// Saves the pending call. `with_args`: whether the syscall has the two
/// pointer arguments after the fd; reading slots past a syscall's last
/// argument reads past its context, which the kernel refuses at attach.
#[inline(always)]
fn remember(ctx: &TracePointContext, sc: u8, with_args: bool) {
    let id = bpf_get_current_pid_tgid();
    let fd = arg(ctx, 0) as i32;
    if fd < 0 || !should_trace((id >> 32) as u32) {
        return;
    }
    let call = ActiveCall::new(
        unsafe { bpf_ktime_get_ns() },
        if with_args { arg(ctx, 1) } else { 0 },
        if with_args { arg(ctx, 2) } else { 0 },
        fd,
        sc,
        crate::tick::current(id as u32),
    );
    active_begin(id, &call);
}

/// Takes this thread's pending call of kind `sc`, if any.
#[inline(always)]
pub(crate) fn take(id: u64, sc: u8) -> Option<ActiveCall> {
    let call = active_take(id)?;
    if call.syscall != sc {
        count(stat::ORPHAN_EXITS);
        return None;
    }
    Some(call)
}

#[inline(always)]
pub(crate) fn conn_event(k: u8, tgid: u32, tid: u32, fd: i32) -> ConnEvent {
    ConnEvent {
        hdr: EventHeader {
            kind: k,
            _pad: [0; 3],
            tgid,
            tid,
            fd,
            ts_ns: unsafe { bpf_ktime_get_ns() },
            // In softirq (TUPLE) `current` is unrelated to the socket's owner.
            comm: if k == kind::TUPLE || k == kind::SERVER_ESTAB {
                [0; 16]
            } else {
                bpf_get_current_comm().unwrap_or_default()
            },
        },
        ..ConnEvent::default()
    }
}

#[inline(always)]
pub(crate) fn send(ev: &ConnEvent) {
    send_with(ev, false)
}

/// `urgent`: wake the reader now (`capture::output_with`).
#[inline(always)]
fn send_with(ev: &ConnEvent, urgent: bool) {
    let bytes = unsafe {
        core::slice::from_raw_parts(ev as *const ConnEvent as *const u8, CONN_EVENT_SIZE)
    };
    output_with(bytes, urgent);
}

/// Sends a process's connect, accept or listen record, waking the reader
/// if it is the process's first since its exec (`maps::NEW_PROCS`) or if
/// `urgent`.
#[inline(always)]
fn send_network_act(ev: &ConnEvent, urgent: bool) {
    let first = first_network_act(ev.hdr.tgid);
    send_with(ev, urgent || first);
}

/// Reads the family, port and address of a user `struct sockaddr_in{,6}`.
#[inline(always)]
fn read_sockaddr(ptr: u64) -> Option<(u16, u16, [u8; 16])> {
    if ptr == 0 {
        return None;
    }
    let family: u16 = unsafe { bpf_probe_read_user(ptr as *const u16) }.ok()?;
    let port_be: u16 = unsafe { bpf_probe_read_user((ptr + 2) as *const u16) }.ok()?;
    let mut addr = [0u8; 16];
    match family {
        AF_INET => {
            let a: [u8; 4] = unsafe { bpf_probe_read_user((ptr + 4) as *const [u8; 4]) }.ok()?;
            addr[..4].copy_from_slice(&a);
        }
        AF_INET6 => {
            addr = unsafe { bpf_probe_read_user((ptr + 8) as *const [u8; 16]) }.ok()?;
        }
        _ => return Some((family, 0, addr)),
    }
    Some((family, u16::from_be(port_be), addr))
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    remember(&ctx, syscall::CONNECT, true);
    0
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(call) = take(id, syscall::CONNECT) else {
        return 0;
    };
    let rv = ret(&ctx);
    // Not TCP (UDP, unix), or failed before sending a SYN.
    if call.tcp_seen == 0 || (rv != 0 && rv != -EINPROGRESS) {
        return 0;
    }
    let tgid = (id >> 32) as u32;
    let info = SockInfo {
        role: role::CLIENT,
        ..SockInfo::default()
    };
    if SOCKS
        .insert(&sock_key(tgid, call.fd as u32), &info, 0)
        .is_err()
    {
        count(stat::MAP_FULL);
    }
    let mut ev = conn_event(kind::CONNECT, tgid, id as u32, call.fd);
    ev.enter_ns = call.enter_ns;
    ev.ret = rv;
    ev.role = role::CLIENT;
    ev.flags = conn_flags::TCP_CONFIRMED;
    ev.tick = call.tick;
    if let Some((family, port, addr)) = read_sockaddr(call.arg0) {
        ev.tuple.family = family;
        ev.tuple.rport = port;
        ev.tuple.raddr = addr;
        ev.flags |= conn_flags::HAS_REMOTE;
    }
    send_network_act(&ev, false);
    0
}

#[tracepoint]
pub fn sys_enter_listen(ctx: TracePointContext) -> u32 {
    remember(&ctx, syscall::LISTEN, false);
    0
}

#[tracepoint]
pub fn sys_exit_listen(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(call) = take(id, syscall::LISTEN) else {
        return 0;
    };
    if ret(&ctx) != 0 || call.tcp_seen == 0 {
        return 0;
    }
    let tgid = (id >> 32) as u32;
    let port = call.arg1 as u32;
    let _ = LISTENERS.insert(&sock_key(tgid, call.fd as u32), &port, 0);
    debug!(&ctx, "tcp listener pid={} fd={}", tgid, call.fd);
    let mut ev = conn_event(kind::LISTEN, tgid, id as u32, call.fd);
    ev.enter_ns = call.enter_ns;
    ev.flags = conn_flags::TCP_CONFIRMED;
    ev.tuple.lport = port as u16;
    send_network_act(&ev, false);
    0
}

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    remember(&ctx, syscall::ACCEPT, true);
    0
}

#[tracepoint]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    remember(&ctx, syscall::ACCEPT, true);
    0
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    accept_exit(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    accept_exit(&ctx);
    0
}

#[inline(always)]
fn accept_exit(ctx: &TracePointContext) {
    let id = bpf_get_current_pid_tgid();
    let Some(call) = take(id, syscall::ACCEPT) else {
        return;
    };
    let newfd = ret(ctx);
    if newfd < 0 {
        return;
    }
    let tgid = (id >> 32) as u32;
    let mut ev = conn_event(kind::ACCEPT, tgid, id as u32, newfd as i32);
    ev.enter_ns = call.enter_ns;
    ev.ret = newfd;
    ev.aux = call.fd;
    ev.role = role::SERVER;
    let mut tcp = unsafe { LISTENERS.get(&sock_key(tgid, call.fd as u32)) }.is_some();
    let l = fd_layout();
    let parked = if l.valid != 0 {
        sock_of_fd(&l, newfd).and_then(|sk| {
            let t = unsafe { ESTAB_SK.get(&sk) }.copied()?;
            let _ = ESTAB_SK.remove(&sk);
            Some(t)
        })
    } else {
        None
    };
    if let Some(t) = parked {
        // Seen reaching ESTABLISHED by inet_sock_set_state: TCP.
        tcp = true;
        ev.tuple = t;
        ev.flags |= conn_flags::HAS_REMOTE | conn_flags::HAS_TUPLE;
    } else if let Some((family, port, addr)) = read_sockaddr(call.arg0) {
        if family != AF_INET && family != AF_INET6 {
            return; // unix or other: not ours
        }
        // accept() only serves stream sockets; an inet stream socket is TCP.
        tcp = true;
        ev.tuple.family = family;
        ev.tuple.rport = port;
        ev.tuple.raddr = addr;
        ev.flags |= conn_flags::HAS_REMOTE;
        let key = PeerKey {
            family,
            port,
            _pad: 0,
            addr,
        };
        if let Some(t) = unsafe { PEER_ESTAB.get(&key) } {
            ev.tuple = *t;
            ev.flags |= conn_flags::HAS_TUPLE;
            let _ = PEER_ESTAB.remove(&key);
        }
    }
    if tcp {
        ev.flags |= conn_flags::TCP_CONFIRMED;
        let info = SockInfo {
            role: role::SERVER,
            ..SockInfo::default()
        };
        if SOCKS
            .insert(&sock_key(tgid, newfd as u32), &info, 0)
            .is_err()
        {
            count(stat::MAP_FULL);
        }
    } else {
        debug!(
            ctx,
            "accept without sockaddr on unknown listener pid={} fd={}", tgid, call.fd
        );
    }
    // Without a tuple user space must look the socket up before it closes.
    send_network_act(&ev, ev.flags & conn_flags::HAS_TUPLE == 0);
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let fd = arg(&ctx, 0) as i32;
    if fd < 0 || tgid == crate::maps::self_tgid() {
        return 0;
    }
    let key = sock_key(tgid, fd as u32);
    let role = match unsafe { SOCKS.get(&key) } {
        Some(info) => info.role,
        None => {
            if unsafe { LISTENERS.get(&key) }.is_none() {
                return 0;
            }
            let _ = LISTENERS.remove(&key);
            role::UNKNOWN
        }
    };
    let _ = SOCKS.remove(&key);
    let mut ev = conn_event(kind::CLOSE, tgid, id as u32, fd);
    ev.role = role;
    send(&ev);
    0
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if field::<u16>(&ctx, SK_PROTOCOL) != IPPROTO_TCP {
        return 0;
    }
    let sk: u64 = field(&ctx, SK_SKADDR);
    let old: i32 = field(&ctx, SK_OLDSTATE);
    let new: i32 = field(&ctx, SK_NEWSTATE);
    match new {
        TCP_SYN_SENT | TCP_LISTEN => {
            // Runs inside connect()/listen(): mark the pending call as TCP.
            let id = bpf_get_current_pid_tgid();
            if let Some(call) = active_live(id) {
                let call = unsafe { &mut *call };
                if new == TCP_SYN_SENT && call.syscall == syscall::CONNECT {
                    call.tcp_seen = 1;
                    let owner = sock_key((id >> 32) as u32, call.fd as u32);
                    let _ = SK_OWNER.insert(&sk, &owner, 0);
                } else if new == TCP_LISTEN && call.syscall == syscall::LISTEN {
                    call.tcp_seen = 1;
                    call.arg1 = field::<u16>(&ctx, SK_SPORT) as u64;
                }
            } else if new == TCP_SYN_SENT && (id >> 32) as u32 == crate::maps::self_tgid() {
                // The agent's own connect (never in THREADS: it is filtered).
                let _ = SK_OWNER.insert(&sk, &SELF_MARK, 0);
            }
        }
        TCP_ESTABLISHED => {
            let t = read_tuple(&ctx);
            if old == TCP_SYN_SENT {
                if let Some(owner) = unsafe { SK_OWNER.get(&sk) } {
                    let owner = *owner;
                    let mut ev =
                        conn_event(kind::TUPLE, (owner >> 32) as u32, 0, owner as u32 as i32);
                    ev.tuple = t;
                    ev.role = role::CLIENT;
                    ev.flags = conn_flags::HAS_TUPLE | conn_flags::TCP_CONFIRMED;
                    if owner == SELF_MARK {
                        ev.hdr.tgid = crate::maps::self_tgid();
                        ev.hdr.fd = -1;
                        ev.flags |= conn_flags::OWN;
                    }
                    send(&ev);
                }
            } else if old == TCP_SYN_RECV {
                if fd_layout().valid != 0 {
                    // accept() finds it here, whoever accepts: user space
                    // needs no record of it (this fires for every server
                    // socket of the node, traced or not).
                    let _ = ESTAB_SK.insert(&sk, &t, 0);
                    return 0;
                }
                let key = PeerKey {
                    family: t.family,
                    port: t.rport,
                    _pad: 0,
                    addr: t.raddr,
                };
                let _ = PEER_ESTAB.insert(&key, &t, 0);
                let mut ev = conn_event(kind::SERVER_ESTAB, 0, 0, -1);
                ev.tuple = t;
                ev.role = role::SERVER;
                ev.flags = conn_flags::HAS_TUPLE | conn_flags::TCP_CONFIRMED;
                send(&ev);
            }
        }
        TCP_CLOSE => {
            if unsafe { SK_OWNER.get(&sk) }.is_some_and(|o| *o == SELF_MARK) {
                let mut ev = conn_event(kind::CLOSE, crate::maps::self_tgid(), 0, -1);
                ev.tuple = read_tuple(&ctx);
                ev.flags = conn_flags::HAS_TUPLE | conn_flags::OWN;
                send(&ev);
            }
            let _ = SK_OWNER.remove(&sk);
            let _ = ESTAB_SK.remove(&sk);
            let _ = crate::kernel_io::SK_SOCK.remove(&sk);
        }
        _ => {}
    }
    0
}

#[inline(always)]
fn read_tuple(ctx: &TracePointContext) -> Tuple {
    let family: u16 = field(ctx, SK_FAMILY);
    let mut t = Tuple {
        family,
        lport: field(ctx, SK_SPORT),
        rport: field(ctx, SK_DPORT),
        ..Tuple::default()
    };
    if family == AF_INET6 {
        t.laddr = field(ctx, SK_SADDR_V6);
        t.raddr = field(ctx, SK_DADDR_V6);
    } else {
        let s: [u8; 4] = field(ctx, SK_SADDR);
        let d: [u8; 4] = field(ctx, SK_DADDR);
        t.laddr[..4].copy_from_slice(&s);
        t.raddr[..4].copy_from_slice(&d);
    }
    t
}
