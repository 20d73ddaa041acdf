//! Programs that do nothing: `sonde doctor` loads them to test whether this
//! kernel lets us load and attach each program type, and `sonde probe-cost`
//! attaches `sonde_floor` beside the agent's data programs (and
//! `sonde_ufloor` beside its goroutine probes) to measure what the
//! statistics report for a program with no work at all.
use aya_ebpf::{
    macros::{fentry, kprobe, sk_msg, tracepoint, uprobe},
    programs::{FEntryContext, ProbeContext, SkMsgContext, TracePointContext},
};

#[tracepoint]
pub fn sonde_floor(_ctx: TracePointContext) -> u32 {
    0
}

#[uprobe]
pub fn sonde_ufloor(_ctx: ProbeContext) -> u32 {
    0
}

#[kprobe]
pub fn sonde_doctor_kprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[fentry(function = "tcp_sendmsg")]
pub fn sonde_doctor_fentry(_ctx: FEntryContext) -> i32 {
    0
}

#[uprobe]
pub fn sonde_doctor_uprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[sk_msg]
pub fn sonde_doctor_sk_msg(_ctx: SkMsgContext) -> u32 {
    1 // SK_PASS
}
