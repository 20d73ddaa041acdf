//! Who gets traced: never the agent itself, and only the configured pids or
//! cgroups when a filter is enabled.
use aya_ebpf::helpers::bpf_get_current_cgroup_id;

use crate::maps::{filter_cgroups, filter_pids, self_tgid, CGROUP_FILTER, PID_FILTER};

#[inline(always)]
pub fn should_trace(tgid: u32) -> bool {
    if tgid == self_tgid() {
        return false;
    }
    if filter_pids() && unsafe { PID_FILTER.get(&tgid) }.is_none() {
        return false;
    }
    if filter_cgroups() {
        let cg = unsafe { bpf_get_current_cgroup_id() };
        if unsafe { CGROUP_FILTER.get(&cg) }.is_none() {
            return false;
        }
    }
    true
}
