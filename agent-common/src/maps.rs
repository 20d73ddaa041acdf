//! Values stored in maps that both sides read or write.

/// Value of `SOCKS`, keyed by [`crate::sock_key`]: one tracked TCP socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockInfo {
    /// [`crate::role`] value.
    pub role: u8,
    /// [`sock_flags`] bits; user space sets them.
    pub flags: u8,
    pub _pad: [u8; 6],
}

/// Value of `PY_THREADS`, keyed by thread id: a Python thread of process
/// `tgid`, whose `PyThreadState::context` (the contextvars context it runs
/// in now) is at `context_at` in that process. Written by user space
/// (`agent/src/probes/python.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyThread {
    pub tgid: u32,
    pub _pad: u32,
    pub context_at: u64,
}

/// Value of `GO_CURRENT`, keyed by thread id: the goroutine a Go thread
/// runs now, and what that run was handed and wrote
/// (`agent-ebpf/src/goroutine.rs`). One entry per thread, so that each
/// runtime probe and each socket call of a Go thread finds all of it in one
/// lookup. `running` 0 (never a goroutine, whose ids have the top bit set):
/// a Python thread, entered by user space with its `PY_THREADS` entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoThread {
    pub running: u32,
    /// The goroutine whose run `handed` belongs to (0: that run was handed
    /// nothing).
    pub task: u32,
    pub handed: crate::Lineage,
    /// The goroutine that wrote on a tracked socket in this run (0: none
    /// since the run began, or its hand-off is reported already).
    pub writer: u32,
    /// The socket `writer` wrote on last.
    pub wrote_fd: i32,
    /// The entry of `writer`'s last write.
    pub wrote_ns: u64,
    /// The goroutine in `newproc1` on this thread, until the `runqput`
    /// that follows (both on the thread's system stack, back to back);
    /// spent (0) there. Per thread, not per CPU: the kernel may migrate the
    /// thread between the two, which lost the new goroutine's origin when
    /// this was per CPU.
    pub spawning: u32,
    pub _pad: u32,
}

pub mod sock_flags {
    /// User space released this socket (a protocol it does not parse, or
    /// the unparsed end of one it does, such as a database server's): its
    /// payload is never copied, and its calls are not reported at all,
    /// except a write in a tick that a reported read began (`TICK_LOUD`),
    /// which causality may need (a request's input that wrote something);
    /// that one comes with its timing and byte count. The rest are counted
    /// (`stat::QUIET_SKIPPED`).
    pub const QUIET: u8 = 1;
    /// Copy up to `MAX_CAPTURE` bytes per plain read or write (not vectored
    /// I/O, whose verified loops stay bounded by one size), whatever `--capture-size`
    /// says: user space parses a framed protocol on this socket (AMQP)
    /// whose frame headers must not fall in a truncated tail.
    pub const WHOLE: u8 = 2;
    /// Set by the kernel: a hooked TLS library moved records through this
    /// socket. Its ciphertext is never reported; its plaintext comes from
    /// the library's calls (`data_flags::TLS`).
    pub const TLS: u8 = 4;
    /// Set by the kernel, only with `traceparent` injection on: a server
    /// socket read a request and has not written since (`inject.rs`).
    pub const AWAITING: u8 = 8;
}

/// Indices of the per-CPU `STATS` counters.
pub mod stat {
    /// Records written to the ring buffer.
    pub const EVENTS: u32 = 0;
    /// Records lost because the ring buffer was full.
    pub const RINGBUF_DROPS: u32 = 1;
    /// Faults while copying from user memory.
    pub const READ_FAULTS: u32 = 2;
    /// Inserts refused by a full (non-LRU) map.
    pub const MAP_FULL: u32 = 3;
    /// Exit seen without a matching enter (agent attached mid-call, or map evicted).
    pub const ORPHAN_EXITS: u32 = 4;
    /// A TLS library call returned plaintext, but no socket of its `SSL`
    /// object is known yet (no socket call inside any of its calls).
    pub const TLS_NO_SOCKET: u32 = 5;
    /// A goroutine's entry taken by another goroutine whose set of the
    /// kernel's goroutine table was full: the evicted one's origin and
    /// pending hand-off are lost.
    pub const GO_EVICTED: u32 = 6;
    /// A goroutine hand-off overwritten by another's before its receiver
    /// ran (both ways of its set were held): lost.
    pub const GO_HANDOFF_LOST: u32 = 7;
    /// `traceparent` injection (`inject.rs`), one counter per outcome:
    /// written into an outgoing request;
    pub const INJECTED: u32 = 8;
    /// not an HTTP/1.x request (another protocol, HTTP/2, a body's bytes);
    pub const INJECT_NOT_HTTP: u32 = 9;
    /// the request line or the end of its head is not in this message;
    pub const INJECT_PARTIAL_HEAD: u32 = 10;
    /// the head carries a `traceparent` already;
    pub const INJECT_HAS_TRACEPARENT: u32 = 11;
    /// unsampled, and the user chose to write nothing for those;
    pub const INJECT_UNSAMPLED: u32 = 12;
    /// the kernel refused to grow or map the message (nothing was changed).
    pub const INJECT_FAILED: u32 = 13;
    /// its connection is not enrolled (opened before the agent, or outside
    /// the cgroups the `sock_ops` program is attached to).
    pub const INJECT_NOT_ENROLLED: u32 = 14;
    /// A Python context's origin overwritten by another context's whose
    /// key hashes to the same slot of `PY_ORIGINS` (also how the contexts
    /// of exited processes are reclaimed).
    pub const PY_ORIGIN_EVICTED: u32 = 15;
    /// Calls on a released socket (`sock_flags::QUIET`) left unreported:
    /// not a loss, what user space asked for.
    pub const QUIET_SKIPPED: u32 = 16;
    /// A goroutine's kept client write (`GO_WRITES`) overwritten by
    /// another goroutine's, both ways of its set being held (also how the
    /// writes of goroutines that are gone are reclaimed): if it was still
    /// waiting for its reply, its call stays a root.
    pub const GO_WRITE_EVICTED: u32 = 17;
    pub const COUNT: u32 = 18;
}

#[cfg(feature = "user")]
mod pod {
    use super::SockInfo;
    use crate::event::{ConnEvent, ContextEvent, DataEvent, EventHeader, Tuple};
    use crate::layout::{FdLayout, KernelLayout};
    // SAFETY: all of these are repr(C), Copy, and valid for any bit pattern.
    unsafe impl aya::Pod for SockInfo {}
    unsafe impl aya::Pod for super::PyThread {}
    unsafe impl aya::Pod for super::GoThread {}
    unsafe impl aya::Pod for EventHeader {}
    unsafe impl aya::Pod for Tuple {}
    unsafe impl aya::Pod for DataEvent {}
    unsafe impl aya::Pod for ConnEvent {}
    unsafe impl aya::Pod for ContextEvent {}
    unsafe impl aya::Pod for KernelLayout {}
    unsafe impl aya::Pod for FdLayout {}
    unsafe impl aya::Pod for crate::layout::ProcLayout {}
    unsafe impl aya::Pod for crate::sampling::Sampling {}
}
