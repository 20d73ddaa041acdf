//! Types shared by the eBPF programs (`sonde-ebpf`) and user space (`sonde`).
//!
//! Everything here is `#[repr(C)]` and plain old data: the kernel writes these
//! structs into the ring buffer and the maps, and user space reads them back
//! byte for byte. Changing a layout is a protocol change between the two
//! halves; both are built from the same tree, so they never disagree at
//! runtime, but keep fields naturally aligned and padding explicit.
#![no_std]

pub mod event;
pub mod layout;
pub mod maps;

pub use event::*;
pub use layout::{FdLayout, KernelLayout, ProcLayout};
pub use maps::*;
// `kind`, `syscall`, ... are modules of constants; re-export them at the root.

/// Hard ceiling of payload bytes copied per syscall. The per-CPU scratch
/// buffer is sized from it and the verifier proves every copy against it.
/// `--capture-size` may pick anything from 0 up to this.
pub const MAX_CAPTURE: usize = 8192;

/// Default payload prefix: large enough for a typical HTTP header block with
/// cookies, or a long SQL statement.
pub const DEFAULT_CAPTURE: u32 = 2048;

/// iovec entries walked per vectored call (readv/writev/sendmsg/recvmsg).
/// Bytes in later entries are still counted, just not copied.
pub const MAX_IOV: usize = 12;

/// The same on a framed protocol's socket (`sock_flags::WHOLE`): gRPC's
/// C core writes a call as one sendmsg of many small slices (frame
/// headers, header-block pieces, message prefixes), and HPACK needs them all.
pub const MAX_IOV_WHOLE: usize = 64;

/// Messages of a sendmmsg/recvmmsg batch that get a data event each.
pub const MAX_MMSG: usize = 4;

/// Names of the load-time globals user space sets with `EbpfLoader::set_global`.
pub mod globals {
    pub const SELF_TGID: &str = "SONDE_SELF_TGID";
    pub const CAPTURE_SIZE: &str = "SONDE_CAPTURE_SIZE";
    pub const FILTER_PIDS: &str = "SONDE_FILTER_PIDS";
    pub const FILTER_CGROUPS: &str = "SONDE_FILTER_CGROUPS";
    pub const WAKEUP_BYTES: &str = "SONDE_WAKEUP_BYTES";
    pub const KERNEL_LAYOUT: &str = "SONDE_KERNEL_LAYOUT";
    /// Where an fd's `struct sock` is (`layout::FdLayout`).
    pub const FD_LAYOUT: &str = "SONDE_FD_LAYOUT";
    /// Where a task's argument and environment strings are (`layout::ProcLayout`).
    pub const PROC_LAYOUT: &str = "SONDE_PROC_LAYOUT";
    /// 1: write `traceparent` into traced processes' HTTP/1.x requests.
    pub const INJECT: &str = "SONDE_INJECT";
    /// 1: write nothing into unsampled requests (else flags `00`).
    pub const INJECT_OMIT_UNSAMPLED: &str = "SONDE_INJECT_OMIT_UNSAMPLED";
    /// 1: some processes are excluded from injection (by name or cgroup).
    pub const INJECT_EXCLUSIONS: &str = "SONDE_INJECT_EXCLUSIONS";
    /// The sampler, as the kernel applies it to the traces it starts
    /// (`crate::sampling`).
    pub const SAMPLING: &str = "SONDE_SAMPLING";
}

/// The trace sampler in a form the kernel can apply: the same decision
/// user space's `OTEL_TRACES_SAMPLER` makes for the same trace id.
pub mod sampling {
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Sampling {
        /// Keep a trace whose id's low 8 bytes (big-endian) are below this
        /// (`u64::MAX` with `all`).
        pub threshold: u64,
        /// Keep every trace (ratio 1, always_on).
        pub all: u8,
        /// Follow an incoming `traceparent`'s sampled flag.
        pub parent_based: u8,
        pub _pad: [u8; 6],
    }

    impl Sampling {
        #[inline(always)]
        pub fn root(&self, trace_id: &[u8; 16]) -> bool {
            let mut low = 0u64;
            let mut i = 8;
            while i < 16 {
                low = (low << 8) | trace_id[i] as u64;
                i += 1;
            }
            self.all != 0 || low < self.threshold
        }

        #[inline(always)]
        pub fn decide(&self, trace_id: &[u8; 16], parent_sampled: Option<bool>) -> bool {
            match parent_sampled {
                Some(s) if self.parent_based != 0 => s,
                _ => self.root(trace_id),
            }
        }
    }
}

/// Names of the maps user space opens.
pub mod map_names {
    pub const EVENTS: &str = "EVENTS";
    pub const SOCKS: &str = "SOCKS";
    pub const LISTENERS: &str = "LISTENERS";
    pub const PIPE_PROCS: &str = "PIPE_PROCS";
    pub const PID_FILTER: &str = "PID_FILTER";
    pub const CGROUP_FILTER: &str = "CGROUP_FILTER";
    pub const STATS: &str = "STATS";
    pub const URING_SEEN: &str = "URING_SEEN";
    pub const INJECT_SOCKS: &str = "INJECT_SOCKS";
    pub const INJECT_EXCLUDE_COMM: &str = "INJECT_EXCLUDE_COMM";
    pub const INJECT_EXCLUDE_CGROUP: &str = "INJECT_EXCLUDE_CGROUP";
    pub const GO_CURRENT: &str = "GO_CURRENT";
    pub const GO_OVERFLOW: &str = "GO_OVERFLOW";
    pub const PY_THREADS: &str = "PY_THREADS";
}

/// Packs a (tgid, fd) pair into the u64 key of `SOCKS` and `LISTENERS`.
#[inline(always)]
pub const fn sock_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}
