//! Capability checks, so a missing privilege is reported by name up front
//! instead of as an EPERM from deep inside the loader.

pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// The effective capability set of this process.
pub fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_cap_eff(&s))
        .unwrap_or(0)
}

pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

pub fn has(set: u64, cap: u32) -> bool {
    set & (1u64 << cap) != 0
}

/// Why this process cannot load and attach tracing programs, if it cannot.
pub fn missing_for_tracing(set: u64) -> Option<String> {
    if has(set, CAP_SYS_ADMIN) || (has(set, CAP_BPF) && has(set, CAP_PERFMON)) {
        return None;
    }
    let mut missing = vec![];
    if !has(set, CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(set, CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    Some(format!(
        "missing {} (or CAP_SYS_ADMIN). Fix: run as root, e.g. `sudo sonde ...`, or grant \
         them: `setcap cap_bpf,cap_perfmon,cap_sys_ptrace,cap_dac_read_search+ep $(which sonde)`; \
         in Docker add `--cap-add BPF --cap-add PERFMON` (engines that do not know them, such as Docker 20.10: `--cap-add SYS_ADMIN`)",
        missing.join(" and ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_judges_capability_sets() {
        let root = parse_cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n").unwrap();
        assert!(missing_for_tracing(root).is_none());
        let bpf_only = 1u64 << CAP_BPF;
        let why = missing_for_tracing(bpf_only).unwrap();
        assert!(why.starts_with("missing CAP_PERFMON"), "{why}");
        assert!(missing_for_tracing((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_none());
        assert!(missing_for_tracing(0)
            .unwrap()
            .contains("CAP_BPF and CAP_PERFMON"));
    }
}
