//! Process lifecycle: sockets vanish without close() when a process exits or
//! execs (CLOEXEC). User space cleans its tables and the kernel maps.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use sonde_common::{kind, ConnEvent, CONN_EVENT_SIZE};

use crate::{capture::output, filter::should_trace};

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
        notify(kind::PROC_EXIT);
    }
    0
}

#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    crate::goroutine::thread_gone(id as u32);
    // A call of the old image is never returned from.
    crate::tls::thread_gone(id);
    notify(kind::PROC_EXEC);
    0
}
