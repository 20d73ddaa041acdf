//! Kernel struct offsets the kprobe path needs, which differ between kernel
//! releases. The eBPF side never compiles them in (no CO-RE relocations from
//! Rust): user space reads them from the running kernel's BTF and the io_uring
//! tracepoint's format file, and sets them as a load-time global. A layout
//! with `valid == 0` keeps the kprobe programs from doing anything.

/// Where the payload of a `struct msghdr` passed to `tcp_sendmsg` /
/// `tcp_recvmsg` lives, and where `io_uring:io_uring_file_get` keeps its fd.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    /// `msghdr.msg_iter`.
    pub msg_iter: u32,
    /// `iov_iter`'s type: `iter_type` (u8, 6.0+) or the low byte of `type`
    /// (5.x, where bit 0 is the direction).
    pub iter_type: u32,
    /// `iov_iter.count`: bytes left in the iterator.
    pub iter_count: u32,
    /// The union holding `iov` / `__iov` / `ubuf`.
    pub iter_ptr: u32,
    /// `iov_iter.nr_segs`.
    pub iter_nr_segs: u32,
    /// `iov_iter.iov_offset`: bytes of the first segment already consumed.
    pub iter_offset: u32,
    /// `fd` in the `io_uring_file_get` tracepoint's context.
    pub uring_fd: u32,
    /// Mask applied to the type byte before comparing.
    pub iter_type_mask: u8,
    /// `ITER_IOVEC` after the mask.
    pub iter_iovec: u8,
    /// `ITER_UBUF` after the mask, or [`KernelLayout::NO_UBUF`] before 6.0.
    pub iter_ubuf: u8,
    /// Non-zero once user space filled this in from BTF.
    pub valid: u8,
}

impl KernelLayout {
    /// A type value no kernel uses: "this kernel has no ITER_UBUF".
    pub const NO_UBUF: u8 = 0xff;
}

/// The path from the current task to the `struct sock` behind one of its
/// fds: `task_struct.files` -> `files_struct.fdt` -> `fdtable.fd[fd]` ->
/// `file.private_data` (a `struct socket` for a socket's file) ->
/// `socket.sk`. `accept()` exit follows it to find the tuple of a socket
/// accepted without a sockaddr (libuv passes NULL), which the kernel saw
/// reach ESTABLISHED under that `struct sock *`. Read from BTF by user
/// space like [`KernelLayout`]; with `valid == 0` accept falls back to the
/// sockaddr and, without one, to user space's `/proc` lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdLayout {
    /// `task_struct.files`.
    pub task_files: u32,
    /// `files_struct.fdt`.
    pub files_fdt: u32,
    /// `fdtable.max_fds`.
    pub fdt_max_fds: u32,
    /// `fdtable.fd`.
    pub fdt_fd: u32,
    /// `file.private_data`.
    pub file_private_data: u32,
    /// `socket.sk`.
    pub socket_sk: u32,
    /// Non-zero once user space filled this in from BTF.
    pub valid: u8,
    pub _pad: [u8; 7],
}

/// From the current task to its argument and environment strings:
/// `current->mm->{arg_start, arg_end, env_end}` (exec lays the arguments,
/// then the environment, out contiguously on the new stack). Read from BTF
/// by user space like [`FdLayout`]; with `valid == 0` no exec records carry
/// them, and a process that exits before user space reads /proc loses its
/// environment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcLayout {
    /// `task_struct.mm`.
    pub task_mm: u32,
    /// `mm_struct.arg_start`, `.arg_end` and `.env_end`.
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub mm_env_end: u32,
    /// Non-zero once user space filled this in from BTF.
    pub valid: u8,
    pub _pad: [u8; 7],
}
