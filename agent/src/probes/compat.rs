//! The oldest kernel each program of `programs.rs::TRACEPOINTS` runs on,
//! and why: when its tracepoint appeared, and the newest eBPF feature it
//! uses. The loader skips a program this kernel is too old for, with that
//! reason, instead of feeding it to a verifier that would refuse it; `sonde
//! doctor` prints the table; `cargo xtask vm-test` proves it on a matrix of
//! kernels (it must hold on every one of them).

/// A kernel version (major, minor).
pub type Version = (u32, u32);

/// An eBPF feature a program uses, and the release that brought it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// BPF_MAP_TYPE_RINGBUF: every program reports through it.
    RingBuf,
    /// bpf_probe_read_user: payload and sockaddr copies.
    ProbeReadUser,
    /// Bounded loops: the iovec walks of the vectored calls.
    BoundedLoop,
}

impl Feature {
    pub fn since(self) -> Version {
        match self {
            Feature::RingBuf => (5, 8),
            Feature::ProbeReadUser => (5, 5),
            Feature::BoundedLoop => (5, 3),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Feature::RingBuf => "BPF ring buffer",
            Feature::ProbeReadUser => "bpf_probe_read_user",
            Feature::BoundedLoop => "bounded loops",
        }
    }
}

/// One program's requirements.
#[derive(Debug, Clone, Copy)]
pub struct Compat {
    pub program: &'static str,
    /// The release that added its tracepoint.
    pub tracepoint_since: Version,
    pub features: &'static [Feature],
}

impl Compat {
    /// The oldest kernel it runs on, and the requirement that sets it.
    pub fn minimum(&self) -> (Version, String) {
        let mut best = (self.tracepoint_since, "its tracepoint".to_string());
        for f in self.features {
            if f.since() > best.0 {
                best = (f.since(), f.name().to_string());
            }
        }
        best
    }
}

use Feature::*;

const DATA: &[Feature] = &[RingBuf, ProbeReadUser];
const VECTORED: &[Feature] = &[RingBuf, ProbeReadUser, BoundedLoop];
const EVENT: &[Feature] = &[RingBuf];
/// Tick programs only update a map, but they load with the object, which
/// needs the ring buffer.
const TICK: &[Feature] = &[RingBuf];
// The mmsg exits walk messages x iovecs (4 x 12). They load on old
// verifiers because each segment's outcome is forgotten before the next
// (`copy_iov` in agent-ebpf); `sonde doctor -v` shows what each program cost
// the verifier.
const MMSG: &[Feature] = VECTORED;

macro_rules! c {
    ($p:ident, $maj:literal, $min:literal, $f:expr) => {
        Compat {
            program: stringify!($p),
            tracepoint_since: ($maj, $min),
            features: $f,
        }
    };
}

/// Syscall tracepoints date from 2.6.33 (CONFIG_FTRACE_SYSCALLS); the
/// families added later are noted.
pub const TABLE: &[Compat] = &[
    c!(inet_sock_set_state, 4, 16, EVENT),
    c!(sys_enter_connect, 2, 6, DATA),
    c!(sys_exit_connect, 2, 6, EVENT),
    c!(sys_enter_accept4, 2, 6, EVENT),
    c!(sys_exit_accept4, 2, 6, DATA),
    c!(sys_enter_accept, 2, 6, EVENT),
    c!(sys_exit_accept, 2, 6, DATA),
    c!(sys_enter_listen, 2, 6, EVENT),
    c!(sys_exit_listen, 2, 6, EVENT),
    c!(sys_enter_close, 2, 6, EVENT),
    c!(sys_enter_read, 2, 6, EVENT),
    c!(sys_exit_read, 2, 6, DATA),
    c!(sys_enter_write, 2, 6, EVENT),
    c!(sys_exit_write, 2, 6, DATA),
    c!(sys_enter_readv, 2, 6, EVENT),
    c!(sys_exit_readv, 2, 6, VECTORED),
    c!(sys_enter_writev, 2, 6, EVENT),
    c!(sys_exit_writev, 2, 6, VECTORED),
    c!(sys_enter_sendto, 2, 6, EVENT),
    c!(sys_exit_sendto, 2, 6, DATA),
    c!(sys_enter_recvfrom, 2, 6, EVENT),
    c!(sys_exit_recvfrom, 2, 6, DATA),
    c!(sys_enter_sendmsg, 2, 6, EVENT),
    c!(sys_exit_sendmsg, 2, 6, VECTORED),
    c!(sys_enter_recvmsg, 2, 6, EVENT),
    c!(sys_exit_recvmsg, 2, 6, VECTORED),
    // sendmmsg arrived in 3.0; recvmmsg in 2.6.33.
    c!(sys_enter_sendmmsg, 3, 0, EVENT),
    c!(sys_exit_sendmmsg, 3, 0, MMSG),
    c!(sys_enter_recvmmsg, 2, 6, EVENT),
    c!(sys_exit_recvmmsg, 2, 6, MMSG),
    c!(sys_enter_sendfile64, 2, 6, EVENT),
    c!(sys_exit_sendfile64, 2, 6, EVENT),
    // Ticks: a map update, no ring output. epoll_pwait2 arrived in 5.11.
    c!(sys_enter_epoll_wait, 2, 6, TICK),
    c!(sys_enter_epoll_pwait, 2, 6, TICK),
    c!(sys_enter_epoll_pwait2, 5, 11, TICK),
    c!(sys_enter_poll, 2, 6, TICK),
    c!(sys_enter_ppoll, 2, 6, TICK),
    c!(sys_enter_select, 2, 6, TICK),
    c!(sys_enter_pselect6, 2, 6, TICK),
    c!(sys_enter_getsockopt, 2, 6, TICK),
    c!(sched_switch, 2, 6, TICK),
    // Forks of processes whose pipes are followed (pre-fork pools); clone3
    // arrived in 5.3.
    c!(sys_enter_clone, 2, 6, EVENT),
    c!(sys_exit_clone, 2, 6, EVENT),
    c!(sys_enter_clone3, 5, 3, EVENT),
    c!(sys_exit_clone3, 5, 3, EVENT),
    c!(sys_enter_fork, 2, 6, EVENT),
    c!(sys_exit_fork, 2, 6, EVENT),
    c!(sys_enter_vfork, 2, 6, EVENT),
    c!(sys_exit_vfork, 2, 6, EVENT),
    c!(sched_process_exit, 2, 6, EVENT),
    // sched_process_exec arrived in 3.4.
    c!(sched_process_exec, 3, 4, EVENT),
    // The io_uring path: its tracepoints came with io_uring's in 5.5 (the
    // syscall itself in 5.1); the kprobed functions are as old as TCP.
    c!(io_uring_file_get, 5, 5, EVENT),
    c!(sys_exit_io_uring_enter, 5, 1, EVENT),
    c!(tcp_sendmsg_entry, 2, 6, EVENT),
    c!(tcp_sendmsg_return, 2, 6, VECTORED),
    c!(tcp_recvmsg_entry, 2, 6, EVENT),
    c!(tcp_recvmsg_return, 2, 6, VECTORED),
];

pub fn of(program: &str) -> Option<&'static Compat> {
    TABLE.iter().find(|c| c.program == program)
}

/// The oldest kernel the agent runs on: the newest minimum of its required
/// programs (optional ones are skipped, with their reason, where too old).
pub fn agent_minimum() -> (Version, String) {
    use crate::probes::programs::{Need, TRACEPOINTS};
    TRACEPOINTS
        .iter()
        .filter(|t| t.need == Need::Required)
        .filter_map(|t| of(t.program))
        .map(Compat::minimum)
        .max_by_key(|(v, _)| *v)
        .unwrap_or(((0, 0), String::new()))
}

/// (major, minor) of a release string such as "6.1.0-50-amd64".
pub fn parse_release(release: &str) -> Option<Version> {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// This kernel's version.
pub fn running() -> Option<Version> {
    parse_release(
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()?
            .trim(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::programs::{KERNEL_IO, TRACEPOINTS};

    #[test]
    fn every_program_has_an_entry_and_the_ring_buffer_sets_the_floor() {
        let programs = TRACEPOINTS
            .iter()
            .map(|t| t.program)
            .chain(KERNEL_IO.iter().map(|k| k.program));
        for p in programs {
            let c = of(p).unwrap_or_else(|| panic!("{p} has no compat entry"));
            assert!(c.minimum().0 >= (5, 8), "{p}");
        }
        assert_eq!(TABLE.len(), TRACEPOINTS.len() + KERNEL_IO.len());
        assert_eq!(agent_minimum(), ((5, 8), "BPF ring buffer".into()));
        let kernel_io = of("tcp_recvmsg_return").unwrap().minimum();
        assert_eq!(
            kernel_io,
            ((5, 8), "BPF ring buffer".into()),
            "the kprobe path runs wherever the agent does"
        );
        assert_eq!(of("io_uring_file_get").unwrap().tracepoint_since, (5, 5));
    }

    #[test]
    fn releases_parse() {
        assert_eq!(parse_release("6.1.0-50-amd64"), Some((6, 1)));
        assert_eq!(parse_release("5.10.0-32-cloud-amd64"), Some((5, 10)));
        assert_eq!(parse_release("6.18.2"), Some((6, 18)));
        assert_eq!(parse_release("garbage"), None);
    }
}
