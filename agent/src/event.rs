//! Decoding of ring-buffer records into owned Rust values.
//!
//! The kernel writes the `repr(C)` structs of `sonde-common`; records are
//! validated for length and kind here so later stages never see a torn or
//! unknown record. A malformed record is an error, counted by the reader.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use sonde_common as common;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("data record claims {claimed} payload bytes but carries {actual}")]
    PayloadLength { claimed: u32, actual: usize },
    #[error(
        "exec record claims {claimed} bytes of strings ({args} of arguments) but carries {actual}"
    )]
    ExecLength {
        claimed: u32,
        args: u32,
        actual: usize,
    },
}

/// One record from the kernel.
#[derive(Debug, Clone)]
pub enum KernelEvent {
    Data(DataRecord),
    Conn(ConnRecord),
    Context(ContextRecord),
    HandOff(HandOffRecord),
    Exec(ExecRecord),
}

/// A traced process exec'd: what identifies its new image, copied by the
/// kernel at the exec (`proc.rs` in agent-ebpf). Used when the process is
/// gone before user space reads its /proc entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRecord {
    pub pid: u32,
    pub ts_ns: u64,
    pub comm: Comm,
    /// The file exec'd, as passed to execve.
    pub filename: String,
    /// The argument strings, then the environment strings, NUL-separated
    /// (cut at `MAX_EXEC_BLOCK`); the first `args_len` bytes are arguments.
    pub strings: Vec<u8>,
    pub args_len: usize,
}

/// Go: goroutine `from` wrote on socket `fd` of `pid`, then handed a value
/// to goroutine `to`, which waited on a channel (`goroutine.rs` in
/// agent-ebpf). net/http's transport tells a request's goroutine this way
/// that the request it handed over is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandOffRecord {
    pub pid: u32,
    pub fd: i32,
    pub ts_ns: u64,
    pub from: u32,
    pub to: u32,
    /// The entry of `from`'s last write on the socket (its record's).
    pub wrote_ns: u64,
    /// The goroutine that started `to` (0: unknown), and when.
    pub to_origin: u32,
    pub to_origin_ns: u64,
}

/// Trace context the kernel decided, with `traceparent` injection on
/// (`inject.rs` in agent-ebpf).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextRecord {
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    /// The entry of the syscall whose data record it goes with.
    pub enter_ns: u64,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Injected: the request the call was made for, as the kernel saw it.
    pub parent_id: Option<[u8; 8]>,
    pub sampled: bool,
    /// Injected into a client's request; else a server request's ids.
    pub injected: bool,
}

/// Payload movement on a tracked socket.
#[derive(Debug, Clone)]
pub struct DataRecord {
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    /// CLOCK_MONOTONIC nanoseconds at syscall entry and exit.
    pub enter_ns: u64,
    pub exit_ns: u64,
    /// The thread's tick (see `tick.rs` in agent-ebpf); 0 when unknown.
    pub tick: u32,
    /// Go: the goroutine that made the call, and its lineage (see
    /// `goroutine.rs` in agent-ebpf); 0 elsewhere.
    pub task: u32,
    pub lineage: common::Lineage,
    /// Python: the contextvars context the call ran in (see `python.rs` in
    /// agent-ebpf); 0 elsewhere.
    pub py_task: u32,
    /// Bytes the syscall moved (may exceed `payload.len()`).
    pub bytes: u64,
    pub syscall: Syscall,
    pub direction: Direction,
    /// Role as the kernel knew it (`SOCKS`); the table's value wins.
    pub role: Role,
    pub flags: u8,
    /// The task's comm at the time of the call.
    pub comm: Comm,
    pub payload: Vec<u8>,
}

impl DataRecord {
    pub fn truncated(&self) -> bool {
        self.flags & common::data_flags::TRUNCATED != 0
    }

    /// TLS plaintext, from a library call (`tls.rs` in agent-ebpf).
    pub fn tls(&self) -> bool {
        self.flags & common::data_flags::TLS != 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    Connect,
    Accept,
    Tuple,
    Close,
    Listen,
    ProcExit,
    ProcExec,
    ServerEstab,
    /// A process whose pipes are followed forked: `ret` is the child.
    Fork,
}

/// Connection or process lifecycle.
#[derive(Debug, Clone)]
pub struct ConnRecord {
    pub kind: ConnKind,
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub ts_ns: u64,
    pub ret: i64,
    pub role: Role,
    pub flags: u16,
    /// Both ends, when `HAS_TUPLE`.
    pub tuple: Option<SocketTuple>,
    /// Remote end only, when `HAS_REMOTE` (from the syscall's sockaddr).
    pub remote: Option<SocketAddr>,
    /// accept: the listening fd.
    pub listen_fd: i32,
    /// listen: the local port (0 if unknown).
    pub listen_port: u16,
    /// The task's comm; empty for TUPLE records.
    pub comm: Comm,
    /// connect: the thread's tick at the call (0: unknown).
    pub tick: u32,
}

/// A task name as the kernel stores it: up to 15 bytes, NUL-padded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Comm(pub [u8; 16]);

impl Comm {
    pub fn as_string(&self) -> String {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.0[..end]).into_owned()
    }
}

impl ConnRecord {
    pub fn tcp_confirmed(&self) -> bool {
        self.flags & common::conn_flags::TCP_CONFIRMED != 0
    }

    /// About one of the agent's own sockets.
    pub fn own(&self) -> bool {
        self.flags & common::conn_flags::OWN != 0
    }
}

/// Local and remote address of a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct SocketTuple {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Unknown,
    Client,
    Server,
    /// A pipe between processes of one service (`connections/pipes.rs`).
    Pipe,
}

impl Role {
    pub fn from_raw(r: u8) -> Self {
        match r {
            common::role::CLIENT => Role::Client,
            common::role::SERVER => Role::Server,
            common::role::PIPE => Role::Pipe,
            _ => Role::Unknown,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Client => "client",
            Role::Server => "server",
            Role::Pipe => "pipe",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The process sent these bytes.
    Egress,
    /// The process received these bytes.
    Ingress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Syscall {
    Read,
    Write,
    Readv,
    Writev,
    Sendto,
    Recvfrom,
    Sendmsg,
    Recvmsg,
    Sendmmsg,
    Recvmmsg,
    Sendfile,
    /// `tcp_sendmsg` / `tcp_recvmsg` outside a traced syscall (io_uring),
    /// seen by kprobe.
    #[serde(rename = "tcp_sendmsg")]
    TcpSendmsg,
    #[serde(rename = "tcp_recvmsg")]
    TcpRecvmsg,
    /// The plaintext of `SSL_read` / `SSL_write` (and `_ex`), by uprobe.
    #[serde(rename = "tls_read")]
    TlsRead,
    #[serde(rename = "tls_write")]
    TlsWrite,
    Unknown,
}

impl Syscall {
    pub fn from_raw(s: u8) -> Self {
        use common::syscall as s_;
        match s {
            s_::READ => Syscall::Read,
            s_::WRITE => Syscall::Write,
            s_::READV => Syscall::Readv,
            s_::WRITEV => Syscall::Writev,
            s_::SENDTO => Syscall::Sendto,
            s_::RECVFROM => Syscall::Recvfrom,
            s_::SENDMSG => Syscall::Sendmsg,
            s_::RECVMSG => Syscall::Recvmsg,
            s_::SENDMMSG => Syscall::Sendmmsg,
            s_::RECVMMSG => Syscall::Recvmmsg,
            s_::SENDFILE => Syscall::Sendfile,
            s_::TCP_SENDMSG => Syscall::TcpSendmsg,
            s_::TCP_RECVMSG => Syscall::TcpRecvmsg,
            s_::TLS_READ => Syscall::TlsRead,
            s_::TLS_WRITE => Syscall::TlsWrite,
            _ => Syscall::Unknown,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Syscall::Read => "read",
            Syscall::Write => "write",
            Syscall::Readv => "readv",
            Syscall::Writev => "writev",
            Syscall::Sendto => "sendto",
            Syscall::Recvfrom => "recvfrom",
            Syscall::Sendmsg => "sendmsg",
            Syscall::Recvmsg => "recvmsg",
            Syscall::Sendmmsg => "sendmmsg",
            Syscall::Recvmmsg => "recvmmsg",
            Syscall::Sendfile => "sendfile",
            Syscall::TcpSendmsg => "tcp_sendmsg",
            Syscall::TcpRecvmsg => "tcp_recvmsg",
            Syscall::TlsRead => "tls_read",
            Syscall::TlsWrite => "tls_write",
            Syscall::Unknown => "unknown",
        }
    }
}

fn read_pod<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; T is a repr(C) Pod from sonde-common and the
    // read is unaligned-safe.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

fn ip(family: u16, raw: &[u8; 16]) -> IpAddr {
    if family == libc::AF_INET6 as u16 {
        let v6 = Ipv6Addr::from(*raw);
        // Dual-stack sockets carry IPv4 peers as ::ffff:a.b.c.d.
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

pub fn tuple_from_raw(t: &common::Tuple) -> SocketTuple {
    SocketTuple {
        local: SocketAddr::new(ip(t.family, &t.laddr), t.lport),
        remote: SocketAddr::new(ip(t.family, &t.raddr), t.rport),
    }
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let hdr: common::EventHeader = read_pod(bytes).ok_or(DecodeError::Short(bytes.len()))?;
    match hdr.kind {
        common::kind::DATA => {
            let ev: common::DataEvent = read_pod(bytes).ok_or(DecodeError::Short(bytes.len()))?;
            let payload = &bytes[common::DATA_EVENT_SIZE..];
            if payload.len() < ev.captured as usize {
                return Err(DecodeError::PayloadLength {
                    claimed: ev.captured,
                    actual: payload.len(),
                });
            }
            Ok(KernelEvent::Data(DataRecord {
                pid: hdr.tgid,
                tid: hdr.tid,
                fd: hdr.fd,
                enter_ns: ev.enter_ns,
                exit_ns: hdr.ts_ns,
                tick: ev.tick,
                task: ev.task,
                lineage: ev.lineage,
                py_task: ev.py_task,
                bytes: ev.bytes.max(0) as u64,
                syscall: Syscall::from_raw(ev.syscall),
                direction: if ev.direction == common::direction::EGRESS {
                    Direction::Egress
                } else {
                    Direction::Ingress
                },
                role: Role::from_raw(ev.role),
                flags: ev.flags,
                comm: Comm(hdr.comm),
                payload: payload[..ev.captured as usize].to_vec(),
            }))
        }
        common::kind::CONTEXT => {
            let ev: common::ContextEvent =
                read_pod(bytes).ok_or(DecodeError::Short(bytes.len()))?;
            Ok(KernelEvent::Context(ContextRecord {
                pid: hdr.tgid,
                tid: hdr.tid,
                fd: hdr.fd,
                enter_ns: ev.enter_ns,
                trace_id: ev.trace_id,
                span_id: ev.span_id,
                parent_id: (ev.parent_id != [0; 8]).then_some(ev.parent_id),
                sampled: ev.sampled != 0,
                injected: ev.what == common::context::INJECTED,
            }))
        }
        common::kind::HANDOFF => {
            let ev: common::HandOffEvent =
                read_pod(bytes).ok_or(DecodeError::Short(bytes.len()))?;
            Ok(KernelEvent::HandOff(HandOffRecord {
                pid: hdr.tgid,
                fd: hdr.fd,
                ts_ns: hdr.ts_ns,
                from: ev.from,
                to: ev.to,
                wrote_ns: ev.wrote_ns,
                to_origin: ev.to_origin,
                to_origin_ns: ev.to_origin_ns,
            }))
        }
        common::kind::EXEC => {
            let ev: common::ExecEvent = read_pod(bytes).ok_or(DecodeError::Short(bytes.len()))?;
            let strings = &bytes[common::EXEC_EVENT_SIZE..];
            if strings.len() < ev.block_len as usize || ev.args_len > ev.block_len {
                return Err(DecodeError::ExecLength {
                    claimed: ev.block_len,
                    args: ev.args_len,
                    actual: strings.len(),
                });
            }
            let end = ev.filename.iter().position(|&b| b == 0);
            let filename = &ev.filename[..end.unwrap_or(ev.filename.len())];
            Ok(KernelEvent::Exec(ExecRecord {
                pid: hdr.tgid,
                ts_ns: hdr.ts_ns,
                comm: Comm(hdr.comm),
                filename: String::from_utf8_lossy(filename).into_owned(),
                strings: strings[..ev.block_len as usize].to_vec(),
                args_len: ev.args_len as usize,
            }))
        }
        k @ common::kind::CONNECT..=common::kind::FORK => {
            let ev: common::ConnEvent = read_pod(bytes).ok_or(DecodeError::Short(bytes.len()))?;
            let kind = match k {
                common::kind::CONNECT => ConnKind::Connect,
                common::kind::ACCEPT => ConnKind::Accept,
                common::kind::TUPLE => ConnKind::Tuple,
                common::kind::CLOSE => ConnKind::Close,
                common::kind::LISTEN => ConnKind::Listen,
                common::kind::PROC_EXIT => ConnKind::ProcExit,
                common::kind::PROC_EXEC => ConnKind::ProcExec,
                common::kind::FORK => ConnKind::Fork,
                _ => ConnKind::ServerEstab,
            };
            let has = |f: u16| ev.flags & f != 0;
            let tuple = has(common::conn_flags::HAS_TUPLE).then(|| tuple_from_raw(&ev.tuple));
            let remote = (has(common::conn_flags::HAS_REMOTE) || tuple.is_some())
                .then(|| tuple_from_raw(&ev.tuple).remote);
            Ok(KernelEvent::Conn(ConnRecord {
                kind,
                pid: hdr.tgid,
                tid: hdr.tid,
                fd: hdr.fd,
                ts_ns: hdr.ts_ns,
                ret: ev.ret,
                role: Role::from_raw(ev.role),
                flags: ev.flags,
                tuple,
                remote,
                listen_fd: ev.aux,
                listen_port: ev.tuple.lport,
                comm: Comm(hdr.comm),
                tick: ev.tick,
            }))
        }
        k => Err(DecodeError::UnknownKind(k)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_bytes<T>(v: &T) -> Vec<u8> {
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
            .to_vec()
    }

    #[test]
    fn decodes_data_with_payload() {
        let ev = common::DataEvent {
            hdr: common::EventHeader {
                kind: common::kind::DATA,
                tgid: 7,
                tid: 8,
                fd: 3,
                ts_ns: 20,
                ..Default::default()
            },
            enter_ns: 10,
            bytes: 100,
            syscall: common::syscall::WRITEV,
            direction: common::direction::EGRESS,
            role: common::role::CLIENT,
            flags: common::data_flags::TRUNCATED,
            captured: 4,
            tick: 5,
            task: common::goroutine_id(0xc000_1234_5678),
            lineage: common::Lineage {
                origin: 1,
                waker: 2,
                waker_origin: 3,
                ..Default::default()
            },
            py_task: 0,
            _pad: 0,
        };
        let mut b = as_bytes(&ev);
        b.extend_from_slice(b"GET ");
        let KernelEvent::Data(d) = decode(&b).unwrap() else {
            panic!("not data")
        };
        assert_eq!(
            (d.pid, d.tid, d.fd, d.enter_ns, d.exit_ns, d.bytes, d.tick),
            (7, 8, 3, 10, 20, 100, 5)
        );
        assert_eq!(d.task, 0x8000_0000 | (0xc000_1234_5678u64 >> 3) as u32);
        assert_eq!(
            (d.lineage.origin, d.lineage.waker, d.lineage.waker_origin),
            (1, 2, 3)
        );
        assert_eq!(d.syscall, Syscall::Writev);
        assert_eq!(d.direction, Direction::Egress);
        assert_eq!(d.role, Role::Client);
        assert!(d.truncated());
        assert_eq!(d.payload, b"GET ");
    }

    #[test]
    fn rejects_short_and_lying_records() {
        assert_eq!(decode(&[1, 0, 0]).unwrap_err(), DecodeError::Short(3));
        let ev = common::DataEvent {
            hdr: common::EventHeader {
                kind: common::kind::DATA,
                ..Default::default()
            },
            captured: 50,
            ..Default::default()
        };
        let b = as_bytes(&ev);
        assert!(matches!(
            decode(&b),
            Err(DecodeError::PayloadLength {
                claimed: 50,
                actual: 0
            })
        ));
        let mut h = as_bytes(&common::ConnEvent::default());
        h[0] = 99;
        assert_eq!(decode(&h).unwrap_err(), DecodeError::UnknownKind(99));
    }

    #[test]
    fn decodes_exec_records_and_rejects_lying_lengths() {
        let mut ev = common::ExecEvent {
            hdr: common::EventHeader {
                kind: common::kind::EXEC,
                tgid: 9,
                ..Default::default()
            },
            args_len: 3,
            block_len: 8,
            ..Default::default()
        };
        ev.filename[..9].copy_from_slice(b"/bin/curl");
        let mut bytes = as_bytes(&ev);
        bytes.extend_from_slice(b"ls\0A=1\0\0junk");
        let KernelEvent::Exec(e) = decode(&bytes).unwrap() else {
            panic!()
        };
        assert_eq!((e.pid, e.filename.as_str()), (9, "/bin/curl"));
        assert_eq!(
            (e.strings.as_slice(), e.args_len),
            (b"ls\0A=1\0\0".as_slice(), 3)
        );
        // Claims more strings than it carries, or more arguments than strings.
        for (block, args) in [(20, 3), (8, 9)] {
            ev.block_len = block;
            ev.args_len = args;
            let mut bytes = as_bytes(&ev);
            bytes.extend_from_slice(b"ls\0A=1\0\0junk");
            assert!(
                matches!(decode(&bytes), Err(DecodeError::ExecLength { .. })),
                "{block} {args}"
            );
        }
    }

    #[test]
    fn maps_v4_in_v6_tuples_to_v4() {
        let mut t = common::Tuple {
            family: 10,
            lport: 80,
            rport: 5000,
            ..Default::default()
        };
        t.laddr[10] = 0xff;
        t.laddr[11] = 0xff;
        t.laddr[12..].copy_from_slice(&[127, 0, 0, 1]);
        t.raddr = Ipv6Addr::LOCALHOST.octets();
        let s = tuple_from_raw(&t);
        assert_eq!(s.local, "127.0.0.1:80".parse().unwrap());
        assert_eq!(s.remote, "[::1]:5000".parse().unwrap());
    }
}
