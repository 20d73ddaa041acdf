//! Field access for `syscalls:sys_{enter,exit}_*` tracepoint contexts.
//!
//! Their layout is fixed by the kernel's syscall tracing ABI, identical on
//! every kernel since 4.x: an 8-byte common header, `int __syscall_nr` at 8,
//! then either six 8-byte arguments from 16 (enter) or `long ret` at 16
//! (exit). Reading the context directly needs no helper and no CO-RE.
use aya_ebpf::programs::TracePointContext;
use aya_ebpf::EbpfContext;

#[inline(always)]
pub fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: the verifier checks context reads against the tracepoint's size;
    // every sys_enter_* context has six argument slots.
    unsafe { *(ctx.as_ptr() as *const u64).add(2 + n) }
}

#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: every sys_exit_* context has `ret` at offset 16.
    unsafe { *(ctx.as_ptr() as *const i64).add(2) }
}

/// Reads a field of a non-syscall tracepoint at a byte offset.
///
/// Goes through `bpf_probe_read_kernel`: LLVM lowers byte-array copies from
/// the context into loads off an adjusted context pointer, which the verifier
/// refuses ("dereference of modified ctx ptr").
#[inline(always)]
pub fn field<T: Copy + Default>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: offsets come from the tracepoint's format (checked by user space).
    unsafe { ctx.read_at::<T>(offset) }.unwrap_or_default()
}
