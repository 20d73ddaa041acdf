//! Process lifecycle: sockets vanish without close() when a process exits or
//! execs (CLOEXEC). User space cleans its tables and the kernel maps.
//!
//! At exec the kernel also copies what identifies the new image (its file
//! name, arguments and environment: an `EXEC` record), because user space
//! reads a process's identity from /proc only at its first network act, and
//! a short-lived process can be gone by then.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
    },
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
    EbpfContext,
};
use sonde_common::{
    kind, ConnEvent, EventHeader, ExecEvent, ProcLayout, CONN_EVENT_SIZE, EXEC_EVENT_SIZE,
    MAX_EXEC_BLOCK,
};

use crate::{
    capture::{output, read_user, verifier_bound},
    filter::should_trace,
    maps::NEW_PROCS,
};

#[unsafe(no_mangle)]
static SONDE_PROC_LAYOUT: ProcLayout = ProcLayout {
    task_mm: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    mm_env_end: 0,
    valid: 0,
    _pad: [0; 7],
};

#[inline(always)]
fn proc_layout() -> ProcLayout {
    unsafe { core::ptr::read_volatile(&SONDE_PROC_LAYOUT) }
}

/// Per-CPU staging area for one `EXEC` record. 8-aligned: the record's
/// header is written in place.
#[repr(C, align(8))]
pub struct ExecScratch {
    pub buf: [u8; EXEC_EVENT_SIZE + MAX_EXEC_BLOCK],
}

#[map]
static EXEC_SCRATCH: PerCpuArray<ExecScratch> = PerCpuArray::with_max_entries(1, 0);

/// `sched_process_exec`'s `filename` (a `__data_loc`: offset in the low 16
/// bits, from the start of the record).
const EXEC_FILENAME_LOC: usize = 8;

#[inline(always)]
fn notify(k: u8) {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !should_trace(tgid) {
        return;
    }
    let mut ev = ConnEvent::default();
    ev.hdr.kind = k;
    ev.hdr.tgid = tgid;
    ev.hdr.tid = id as u32;
    ev.hdr.fd = -1;
    ev.hdr.ts_ns = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    output(unsafe { core::slice::from_raw_parts(&ev as *const _ as *const u8, CONN_EVENT_SIZE) });
}

#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    crate::goroutine::thread_gone(id as u32);
    crate::maps::thread_gone(id as u32);
    crate::tls::thread_gone(id);
    if crate::maps::inject_on() {
        crate::inject::thread_gone(id);
    }
    // Fires per thread; only the group leader's exit ends the process.
    if (id >> 32) as u32 == id as u32 {
        let _ = NEW_PROCS.remove(&((id >> 32) as u32));
        notify(kind::PROC_EXIT);
    }
    0
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    crate::goroutine::thread_gone(id as u32);
    // A call of the old image is never returned from.
    crate::tls::thread_gone(id);
    let tgid = (id >> 32) as u32;
    if !should_trace(tgid) {
        return 0;
    }
    // Its first connect, accept or listen wakes the reader (`maps.rs`).
    let _ = NEW_PROCS.insert(&tgid, &1, 0);
    notify(kind::PROC_EXEC);
    exec_identity(&ctx, id);
    0
}

/// Writes the `EXEC` record of the current task's new image: the file name
/// from the tracepoint, then `mm->arg_start .. min(env_end, arg_start +
/// MAX_EXEC_BLOCK - 1)` (the arguments, then the environment).
#[inline(always)]
fn exec_identity(ctx: &TracePointContext, id: u64) {
    let Some(scratch) = EXEC_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let base = scratch as *mut u8;
    let ev = scratch as *mut ExecEvent;
    unsafe {
        (*ev).hdr = EventHeader {
            kind: kind::EXEC,
            _pad: [0; 3],
            tgid: (id >> 32) as u32,
            tid: id as u32,
            fd: -1,
            ts_ns: bpf_ktime_get_ns(),
            comm: bpf_get_current_comm().unwrap_or_default(),
        };
        (*ev).args_len = 0;
        (*ev).block_len = 0;
        (*ev).filename[0] = 0;
        if let Ok(loc) = ctx.read_at::<u32>(EXEC_FILENAME_LOC) {
            let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
            let _ = bpf_probe_read_kernel_str_bytes(src, &mut (*ev).filename);
        }
    }
    let n = copy_strings(base, proc_layout());
    let len = EXEC_EVENT_SIZE + verifier_bound(n, MAX_EXEC_BLOCK);
    output(unsafe { core::slice::from_raw_parts(base as *const u8, len) });
}

/// Copies the new image's argument and environment strings after the
/// record's header; returns the bytes copied (0 on any fault).
#[inline(always)]
fn copy_strings(base: *mut u8, l: ProcLayout) -> usize {
    if l.valid == 0 {
        return 0;
    }
    let read = |at: u64| -> u64 {
        if at < 4096 {
            return 0;
        }
        unsafe { bpf_probe_read_kernel(at as *const u64) }.unwrap_or(0)
    };
    let task = unsafe { bpf_get_current_task() };
    let mm = read(task + l.task_mm as u64);
    let (start, args_end, end) = (
        read(mm + l.mm_arg_start as u64),
        read(mm + l.mm_arg_end as u64),
        read(mm + l.mm_env_end as u64),
    );
    if mm == 0 || start == 0 || args_end < start || end < args_end {
        return 0;
    }
    let mut n = (end - start) as usize;
    if n > MAX_EXEC_BLOCK - 1 {
        n = MAX_EXEC_BLOCK - 1;
    }
    let n = verifier_bound(n, MAX_EXEC_BLOCK);
    if n == 0 || !read_user(unsafe { base.add(EXEC_EVENT_SIZE) }, n, start) {
        return 0;
    }
    let ev = base as *mut ExecEvent;
    let args = (args_end - start) as usize;
    unsafe {
        (*ev).args_len = if args < n { args as u32 } else { n as u32 };
        (*ev).block_len = n as u32;
    }
    n
}
