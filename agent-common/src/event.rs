//! Records the kernel writes into the `EVENTS` ring buffer.
//!
//! Every record starts with an [`EventHeader`]; `kind` says which struct it
//! is. A [`DataEvent`] is followed by `captured` payload bytes.

/// Discriminant stored in [`EventHeader::kind`].
pub mod kind {
    /// A read/write-family syscall moved bytes on a tracked socket.
    pub const DATA: u8 = 1;
    /// `connect()` returned on a TCP socket (0 or EINPROGRESS).
    pub const CONNECT: u8 = 2;
    /// `accept()`/`accept4()` returned a new socket.
    pub const ACCEPT: u8 = 3;
    /// The 4-tuple of a client socket, once TCP reached ESTABLISHED.
    pub const TUPLE: u8 = 4;
    /// `close()` of a tracked socket or listener.
    pub const CLOSE: u8 = 5;
    /// `listen()` on a TCP socket.
    pub const LISTEN: u8 = 6;
    /// The thread-group leader exited: all its sockets are gone.
    pub const PROC_EXIT: u8 = 7;
    /// The process called execve: CLOEXEC sockets are gone.
    pub const PROC_EXEC: u8 = 8;
    /// A server-side socket reached ESTABLISHED (softirq; owner unknown yet).
    /// Lets user space give a tuple to an accept() that passed no sockaddr.
    pub const SERVER_ESTAB: u8 = 9;
    /// A process whose pipes are followed (`PIPE_PROCS`) forked: `ret` is
    /// the child's pid. The child shares its parent's pipes.
    pub const FORK: u8 = 10;
    /// Trace context the kernel decided (`context::*` says which): only
    /// with `--context-propagation traceparent` (`inject.rs` in agent-ebpf).
    pub const CONTEXT: u8 = 11;
    /// Go: a goroutine that wrote on a tracked socket then, in the same
    /// run, handed a value to a goroutine waiting on a channel (a
    /// [`HandOffEvent`]; `goroutine.rs` in agent-ebpf).
    pub const HANDOFF: u8 = 12;
    /// A traced process exec'd: its new image's file name, arguments and
    /// environment (an [`ExecEvent`]), copied while it surely lives. User
    /// space reads a process's identity from /proc at its first network
    /// act, and a process that ends first (a CLI run) would otherwise take
    /// its `OTEL_SERVICE_NAME` with it. Follows the `PROC_EXEC` record.
    pub const EXEC: u8 = 13;
}

/// What a [`ContextEvent`] reports.
pub mod context {
    /// A server read the start of an HTTP/1.x request: the ids the kernel
    /// gave it (its span, and its trace: the incoming `traceparent`'s, or
    /// new). Its thread's injected calls name them; user space adopts them
    /// for the request's SERVER span. `enter_ns` is the read's.
    pub const SERVER: u8 = 1;
    /// A `traceparent` was written into an outgoing request: the CLIENT
    /// span's ids as injected, and its parent (0: a new trace). `enter_ns`
    /// is the write's.
    pub const INJECTED: u8 = 2;
}

/// Which syscall produced a [`DataEvent`].
pub mod syscall {
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const READV: u8 = 3;
    pub const WRITEV: u8 = 4;
    pub const SENDTO: u8 = 5;
    pub const RECVFROM: u8 = 6;
    pub const SENDMSG: u8 = 7;
    pub const RECVMSG: u8 = 8;
    pub const SENDMMSG: u8 = 9;
    pub const RECVMMSG: u8 = 10;
    pub const SENDFILE: u8 = 11;
    /// Not syscalls: `tcp_sendmsg` / `tcp_recvmsg` seen by kprobe outside
    /// any traced syscall (io_uring), where the kernel offers kprobes.
    pub const TCP_SENDMSG: u8 = 12;
    pub const TCP_RECVMSG: u8 = 13;
    /// Not syscalls: the plaintext of a TLS library call (`SSL_read`,
    /// `SSL_write` and their `_ex` forms), seen by uprobe, on the socket
    /// the library moved its records through.
    pub const TLS_READ: u8 = 14;
    pub const TLS_WRITE: u8 = 15;
    // Not data syscalls, but tracked across enter/exit the same way.
    pub const CONNECT: u8 = 20;
    pub const ACCEPT: u8 = 21;
    pub const LISTEN: u8 = 22;
    pub const FORK: u8 = 23;

    /// Whether the syscall sends (egress) rather than receives.
    pub const fn is_egress(sc: u8) -> bool {
        matches!(
            sc,
            WRITE | WRITEV | SENDTO | SENDMSG | SENDMMSG | SENDFILE | TCP_SENDMSG | TLS_WRITE
        )
    }
}

pub mod direction {
    pub const EGRESS: u8 = 1;
    pub const INGRESS: u8 = 2;
}

pub mod role {
    pub const UNKNOWN: u8 = 0;
    /// The socket came from `connect()`.
    pub const CLIENT: u8 = 1;
    /// The socket came from `accept()`.
    pub const SERVER: u8 = 2;
    /// A pipe between processes of one service, followed because it may
    /// hand work over (a pre-fork pool's tasks and results).
    pub const PIPE: u8 = 3;
}

/// Bits of [`DataEvent::flags`].
pub mod data_flags {
    /// User space marked the connection quiet: timing and byte counts only.
    pub const PAYLOAD_SKIPPED: u8 = 1;
    /// The syscall has no user buffer to copy from (sendfile).
    pub const NO_PAYLOAD_SOURCE: u8 = 2;
    /// Fewer bytes were captured than transferred.
    pub const TRUNCATED: u8 = 4;
    /// Reading the user buffer faulted; the payload is missing or partial.
    pub const READ_FAULT: u8 = 8;
    /// TLS plaintext, from the library's call rather than the socket.
    pub const TLS: u8 = 16;
}

/// Bits of [`ConnEvent::flags`].
pub mod conn_flags {
    /// `tuple` holds both ends.
    pub const HAS_TUPLE: u16 = 1;
    /// Only the remote end of `tuple` is set (from the syscall's sockaddr).
    pub const HAS_REMOTE: u16 = 2;
    /// The kernel saw TCP state changes for this socket, or its listener is a
    /// TCP listener: it is certainly TCP. Without it user space must check.
    pub const TCP_CONFIRMED: u16 = 4;
    /// TUPLE/CLOSE of one of the agent's own sockets: the far end of such a
    /// connection (a local collector) must not be traced either.
    pub const OWN: u16 = 8;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    pub kind: u8,
    pub _pad: [u8; 3],
    /// Process id (thread-group id) in the root pid namespace.
    pub tgid: u32,
    /// Thread id in the root pid namespace.
    pub tid: u32,
    pub fd: i32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event was produced.
    pub ts_ns: u64,
    /// `comm` of the current task. Names short-lived processes that exit
    /// before user space reads /proc. Zero for records made in softirq (TUPLE).
    pub comm: [u8; 16],
}

/// An address pair. IPv4 addresses use the first 4 bytes of the arrays.
/// Ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// AF_INET (2) or AF_INET6 (10); 0 when unknown.
    pub family: u16,
    pub lport: u16,
    pub rport: u16,
    pub _pad: u16,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DataEvent {
    pub hdr: EventHeader,
    /// Timestamp at syscall entry; `hdr.ts_ns` is the exit.
    pub enter_ns: u64,
    /// Bytes transferred by this call (for mmsg: by this message).
    pub bytes: i64,
    pub syscall: u8,
    pub direction: u8,
    pub role: u8,
    pub flags: u8,
    /// Payload bytes following this header in the record.
    pub captured: u32,
    /// The thread's tick (advanced at every read, poll and sleep of the
    /// thread): a write with its thread's last read's tick followed that
    /// read with nothing in between. 0: unknown.
    pub tick: u32,
    /// Go: the goroutine that made the call (see [`Lineage`]); 0 elsewhere.
    pub task: u32,
    pub lineage: Lineage,
    /// Python: the contextvars context the call ran in (an asyncio task's
    /// own; see [`python_task_id`]); 0 elsewhere or unknown.
    pub py_task: u32,
    /// Explicit, so that every byte of the record is initialised (the fuzz
    /// seeds and the tests write records byte for byte).
    pub _pad: u32,
}

/// Go: where a goroutine's work came from, as the runtime's own uprobes saw
/// it (`goroutine.rs` in agent-ebpf). Goroutines are named by a 31-bit fold
/// of their `g` address with the top bit set, so they never equal a thread
/// id. 0 everywhere: unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lineage {
    /// The goroutine whose `go` statement started the caller. Python: the
    /// context the caller's context was copied from (the task that created
    /// its task), see `python.rs` in agent-ebpf.
    pub origin: u32,
    /// A write: the goroutine that sent the caller a value on a channel it
    /// was waiting on, just before the run in which it wrote.
    pub waker: u32,
    /// The waker's own origin.
    pub waker_origin: u32,
    pub _pad: u32,
    /// When `origin` started the caller (CLOCK_MONOTONIC ns): only work it
    /// had begun by then can have been handed over by that `go`. Python:
    /// when the caller's context was created.
    pub origin_ns: u64,
    /// When `waker_origin` started the waker. Python: when `origin`'s own
    /// context was created (0: unknown); a context's address is reused
    /// once it is freed, and this tells its lives apart.
    pub waker_origin_ns: u64,
}

impl Lineage {
    /// Nothing known.
    pub const NONE: Lineage = Lineage {
        origin: 0,
        waker: 0,
        waker_origin: 0,
        _pad: 0,
        origin_ns: 0,
        waker_origin_ns: 0,
    };
}

/// A goroutine's creator and when it made it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoOrigin {
    pub creator: u32,
    pub _pad: u32,
    pub at_ns: u64,
}

/// The name sonde gives goroutine `g` (see [`Lineage`]).
#[inline(always)]
pub fn goroutine_id(g: u64) -> u32 {
    ((g >> 3) as u32) | 0x8000_0000
}

/// The name sonde gives the Python context object at `ctx` (a `PyObject`
/// address, 16-byte aligned): a 31-bit fold with the top bit set, so that
/// 0 stays "none".
#[inline(always)]
pub fn python_task_id(ctx: u64) -> u32 {
    ((ctx >> 4) as u32) | 0x8000_0000
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnEvent {
    pub hdr: EventHeader,
    pub enter_ns: u64,
    /// Syscall return value (0/-EINPROGRESS for connect, new fd for accept).
    pub ret: i64,
    pub tuple: Tuple,
    pub flags: u16,
    pub role: u8,
    pub _pad: u8,
    /// accept: the listening fd. Otherwise 0.
    pub aux: i32,
    /// connect: the thread's tick when it called connect (0: unknown).
    pub tick: u32,
    pub _pad2: u32,
}

/// A [`kind::HANDOFF`] record. `hdr.fd` is the socket the writer wrote on
/// last in its run; `hdr.ts_ns` is the hand-off's time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HandOffEvent {
    pub hdr: EventHeader,
    /// The goroutine that wrote, then sent (see [`Lineage`] for names).
    pub from: u32,
    /// The goroutine it handed a value to.
    pub to: u32,
    /// The entry of the writer's last write on `hdr.fd` (its data record's
    /// `enter_ns`).
    pub wrote_ns: u64,
    /// The goroutine whose `go` statement started `to` (0: unknown), and
    /// when.
    pub to_origin: u32,
    pub _pad: u32,
    pub to_origin_ns: u64,
}

/// Bytes of an exec's argument and environment strings an [`ExecEvent`]
/// carries at most; what lies past it is cut.
pub const MAX_EXEC_BLOCK: usize = 16384;
/// Bytes of an [`ExecEvent`]'s file name, NUL included.
pub const EXEC_FILENAME: usize = 128;

/// A [`kind::EXEC`] record, followed by `block_len` bytes: the new image's
/// argument strings (`args_len` bytes), then its environment strings, each
/// NUL-terminated, as the kernel laid them out on the new stack.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub hdr: EventHeader,
    pub args_len: u32,
    pub block_len: u32,
    /// The file exec'd, as passed to execve (NUL-terminated, cut).
    pub filename: [u8; EXEC_FILENAME],
}

impl Default for ExecEvent {
    fn default() -> Self {
        ExecEvent {
            hdr: EventHeader::default(),
            args_len: 0,
            block_len: 0,
            filename: [0; EXEC_FILENAME],
        }
    }
}

/// A [`kind::CONTEXT`] record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ContextEvent {
    pub hdr: EventHeader,
    /// The syscall's entry (matches the data record of the same call).
    pub enter_ns: u64,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// INJECTED: the request the call was made for (0: none, a new trace).
    pub parent_id: [u8; 8],
    /// [`context`] value.
    pub what: u8,
    pub sampled: u8,
    pub _pad: [u8; 6],
}

pub const CONTEXT_EVENT_SIZE: usize = core::mem::size_of::<ContextEvent>();
pub const DATA_EVENT_SIZE: usize = core::mem::size_of::<DataEvent>();
pub const CONN_EVENT_SIZE: usize = core::mem::size_of::<ConnEvent>();
pub const HANDOFF_EVENT_SIZE: usize = core::mem::size_of::<HandOffEvent>();
pub const EXEC_EVENT_SIZE: usize = core::mem::size_of::<ExecEvent>();
pub const HEADER_SIZE: usize = core::mem::size_of::<EventHeader>();
