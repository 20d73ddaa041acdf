//! The table of tracepoint programs the agent attaches, and what losing each
//! one costs. The loader walks it; `sonde doctor` prints it.

/// How much the agent depends on a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Capture cannot work without it: the loader fails.
    Required,
    /// A gap in coverage (one syscall family); the loader warns and goes on.
    Optional,
}

#[derive(Debug, Clone, Copy)]
pub struct TracepointSpec {
    /// Function name in the eBPF object.
    pub program: &'static str,
    pub category: &'static str,
    pub name: &'static str,
    pub need: Need,
    /// What is lost without it.
    pub covers: &'static str,
}

macro_rules! tp {
    ($cat:literal, $name:ident, $need:ident, $covers:literal) => {
        TracepointSpec {
            program: stringify!($name),
            category: $cat,
            name: stringify!($name),
            need: Need::$need,
            covers: $covers,
        }
    };
}

pub const TRACEPOINTS: &[TracepointSpec] = &[
    tp!(
        "sock",
        inet_sock_set_state,
        Required,
        "TCP classification and 4-tuples"
    ),
    tp!(
        "syscalls",
        sys_enter_connect,
        Required,
        "client connections"
    ),
    tp!("syscalls", sys_exit_connect, Required, "client connections"),
    tp!(
        "syscalls",
        sys_enter_accept4,
        Required,
        "server connections (accept4)"
    ),
    tp!(
        "syscalls",
        sys_exit_accept4,
        Required,
        "server connections (accept4)"
    ),
    tp!(
        "syscalls",
        sys_enter_accept,
        Optional,
        "server connections (accept)"
    ),
    tp!(
        "syscalls",
        sys_exit_accept,
        Optional,
        "server connections (accept)"
    ),
    tp!("syscalls", sys_enter_listen, Optional, "listener detection"),
    tp!("syscalls", sys_exit_listen, Optional, "listener detection"),
    tp!("syscalls", sys_enter_close, Required, "connection close"),
    tp!("syscalls", sys_enter_read, Required, "read payload"),
    tp!("syscalls", sys_exit_read, Required, "read payload"),
    tp!("syscalls", sys_enter_write, Required, "write payload"),
    tp!("syscalls", sys_exit_write, Required, "write payload"),
    tp!("syscalls", sys_enter_readv, Optional, "readv payload"),
    tp!("syscalls", sys_exit_readv, Optional, "readv payload"),
    tp!("syscalls", sys_enter_writev, Optional, "writev payload"),
    tp!("syscalls", sys_exit_writev, Optional, "writev payload"),
    tp!(
        "syscalls",
        sys_enter_sendto,
        Required,
        "send/sendto payload"
    ),
    tp!("syscalls", sys_exit_sendto, Required, "send/sendto payload"),
    tp!(
        "syscalls",
        sys_enter_recvfrom,
        Required,
        "recv/recvfrom payload"
    ),
    tp!(
        "syscalls",
        sys_exit_recvfrom,
        Required,
        "recv/recvfrom payload"
    ),
    tp!("syscalls", sys_enter_sendmsg, Optional, "sendmsg payload"),
    tp!("syscalls", sys_exit_sendmsg, Optional, "sendmsg payload"),
    tp!("syscalls", sys_enter_recvmsg, Optional, "recvmsg payload"),
    tp!("syscalls", sys_exit_recvmsg, Optional, "recvmsg payload"),
    tp!("syscalls", sys_enter_sendmmsg, Optional, "sendmmsg payload"),
    tp!("syscalls", sys_exit_sendmmsg, Optional, "sendmmsg payload"),
    tp!("syscalls", sys_enter_recvmmsg, Optional, "recvmmsg payload"),
    tp!("syscalls", sys_exit_recvmmsg, Optional, "recvmmsg payload"),
    tp!(
        "syscalls",
        sys_enter_sendfile64,
        Optional,
        "sendfile byte counts"
    ),
    tp!(
        "syscalls",
        sys_exit_sendfile64,
        Optional,
        "sendfile byte counts"
    ),
    tp!(
        "syscalls",
        sys_enter_epoll_wait,
        Optional,
        "event-loop ticks (causality)"
    ),
    tp!(
        "syscalls",
        sys_enter_epoll_pwait,
        Optional,
        "event-loop ticks (causality)"
    ),
    tp!(
        "syscalls",
        sys_enter_epoll_pwait2,
        Optional,
        "event-loop ticks (causality)"
    ),
    tp!(
        "syscalls",
        sys_enter_poll,
        Optional,
        "event-loop ticks (causality)"
    ),
    tp!(
        "syscalls",
        sys_enter_ppoll,
        Optional,
        "event-loop ticks (causality)"
    ),
    tp!(
        "syscalls",
        sys_enter_select,
        Optional,
        "event-loop ticks (causality)"
    ),
    tp!(
        "syscalls",
        sys_enter_pselect6,
        Optional,
        "event-loop ticks (causality)"
    ),
    tp!(
        "syscalls",
        sys_enter_getsockopt,
        Optional,
        "event-loop ticks (causality)"
    ),
    tp!(
        "sched",
        sched_switch,
        Optional,
        "event-loop ticks (causality)"
    ),
    tp!(
        "syscalls",
        sys_enter_clone,
        Optional,
        "pre-fork pool pipes (forks)"
    ),
    tp!(
        "syscalls",
        sys_exit_clone,
        Optional,
        "pre-fork pool pipes (forks)"
    ),
    tp!(
        "syscalls",
        sys_enter_clone3,
        Optional,
        "pre-fork pool pipes (forks)"
    ),
    tp!(
        "syscalls",
        sys_exit_clone3,
        Optional,
        "pre-fork pool pipes (forks)"
    ),
    tp!(
        "syscalls",
        sys_enter_fork,
        Optional,
        "pre-fork pool pipes (forks)"
    ),
    tp!(
        "syscalls",
        sys_exit_fork,
        Optional,
        "pre-fork pool pipes (forks)"
    ),
    tp!(
        "syscalls",
        sys_enter_vfork,
        Optional,
        "pre-fork pool pipes (forks)"
    ),
    tp!(
        "syscalls",
        sys_exit_vfork,
        Optional,
        "pre-fork pool pipes (forks)"
    ),
    tp!(
        "sched",
        sched_process_exit,
        Optional,
        "prompt cleanup at process exit"
    ),
    tp!(
        "sched",
        sched_process_exec,
        Optional,
        "prompt cleanup at exec"
    ),
];

/// How an io_uring-path program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelIoHook {
    /// A tracepoint in this category.
    Tracepoint(&'static str),
    Kprobe,
    Kretprobe,
}

#[derive(Debug, Clone, Copy)]
pub struct KernelIoSpec {
    pub program: &'static str,
    pub hook: KernelIoHook,
    /// The tracepoint or kernel function.
    pub target: &'static str,
}

impl KernelIoSpec {
    pub fn hook_name(&self) -> String {
        match self.hook {
            KernelIoHook::Tracepoint(cat) => format!("tracepoint/{cat}/{}", self.target),
            KernelIoHook::Kprobe => format!("kprobe/{}", self.target),
            KernelIoHook::Kretprobe => format!("kretprobe/{}", self.target),
        }
    }
}

/// What the io_uring path covers, for the report.
pub const KERNEL_IO_COVERS: &str = "io_uring socket payload (send/recv not made by a syscall)";

/// The io_uring path (`agent-ebpf/src/kernel_io.rs`): all optional, used
/// only where the kernel has kprobes and its BTF gives the msghdr layout.
pub const KERNEL_IO: &[KernelIoSpec] = &[
    KernelIoSpec {
        program: "io_uring_file_get",
        hook: KernelIoHook::Tracepoint("io_uring"),
        target: "io_uring_file_get",
    },
    KernelIoSpec {
        program: "sys_exit_io_uring_enter",
        hook: KernelIoHook::Tracepoint("syscalls"),
        target: "sys_exit_io_uring_enter",
    },
    KernelIoSpec {
        program: "tcp_sendmsg_entry",
        hook: KernelIoHook::Kprobe,
        target: "tcp_sendmsg",
    },
    KernelIoSpec {
        program: "tcp_sendmsg_return",
        hook: KernelIoHook::Kretprobe,
        target: "tcp_sendmsg",
    },
    KernelIoSpec {
        program: "tcp_recvmsg_entry",
        hook: KernelIoHook::Kprobe,
        target: "tcp_recvmsg",
    },
    KernelIoSpec {
        program: "tcp_recvmsg_return",
        hook: KernelIoHook::Kretprobe,
        target: "tcp_recvmsg",
    },
];
