//! Programs that exist only so `sonde doctor` can test whether this kernel
//! lets us load and attach each program type. They do nothing.
use aya_ebpf::{
    macros::{fentry, kprobe, sk_msg, uprobe},
    programs::{FEntryContext, ProbeContext, SkMsgContext},
};

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
