//! `traceparent` injection (`--context-propagation traceparent`): loads and
//! attaches the `sock_ops` and `sk_msg` programs of `inject.rs` in
//! agent-ebpf, and fills their exclusion maps. Everything else happens in
//! the kernel; user space only reads what it reports.
use std::{fs::File, os::unix::fs::MetadataExt, path::PathBuf};

use aya::{
    maps::{HashMap as BpfHashMap, SockHash},
    programs::{links::CgroupAttachMode, SkMsg, SockOps},
};
use sonde_common::{map_names, sampling::Sampling};

use super::{AttachState, Need, ProbeStatus, Probes};

#[derive(Debug, Clone, PartialEq)]
pub struct InjectConfig {
    /// Write nothing into unsampled requests (else flags `00`).
    pub omit_unsampled: bool,
    /// Processes never injected into, by `comm` (up to 15 bytes).
    pub exclude_processes: Vec<String>,
    /// Cgroup v2 directories whose processes are never injected into
    /// (with the cgroups under them when sonde starts).
    pub exclude_cgroups: Vec<PathBuf>,
    /// The trace sampler, as the kernel applies it to traces it starts.
    pub sampling: Sampling,
}

/// Attaches the injection programs. `cgroups`: the traced cgroups
/// (`--cgroup`), else the whole node.
pub fn attach(probes: &mut Probes, cfg: &InjectConfig, cgroups: &[PathBuf]) -> Result<(), String> {
    exclude(probes, cfg)?;
    let socks = probes
        .ebpf
        .map(map_names::INJECT_SOCKS)
        .ok_or("the eBPF object has no INJECT_SOCKS map")?;
    let socks: SockHash<_, u64> = SockHash::try_from(socks).map_err(|e| e.to_string())?;
    let fd = socks.fd().try_clone().map_err(|e| e.to_string())?;
    let msg: &mut SkMsg = probes.program("sonde_inject")?;
    msg.load()
        .map_err(|e| format!("the sk_msg program was refused: {e:#}"))?;
    msg.attach(&fd)
        .map_err(|e| format!("attaching the sk_msg program: {e:#}"))?;
    probes.report.push(ProbeStatus {
        hook: "sk_msg/INJECT_SOCKS".into(),
        program: "sonde_inject",
        need: Need::Optional,
        covers: "traceparent injection (writes the header)",
        state: AttachState::Attached,
    });
    let ops: &mut SockOps = probes.program("sonde_inject_enrol")?;
    ops.load()
        .map_err(|e| format!("the sock_ops program was refused: {e:#}"))?;
    let roots: Vec<PathBuf> = if cgroups.is_empty() {
        vec![crate::connections::cgroup::cgroup2_mount()
            .ok_or("cgroup v2 is not mounted (no cgroup2 in /proc/self/mountinfo)")?]
    } else {
        cgroups.to_vec()
    };
    for cg in &roots {
        let dir = File::open(cg).map_err(|e| format!("cgroup {}: {e}", cg.display()))?;
        ops.attach(dir, CgroupAttachMode::Single).map_err(|e| {
            let cause = std::error::Error::source(&e).map(|s| format!(": {s}"));
            format!(
                "attaching sock_ops to {}: {e}{}",
                cg.display(),
                cause.unwrap_or_default()
            )
        })?;
    }
    for cg in &roots {
        probes.report.push(ProbeStatus {
            hook: format!("sock_ops/{}", cg.display()),
            program: "sonde_inject_enrol",
            need: Need::Optional,
            covers: "traceparent injection (enrols outgoing connections)",
            state: AttachState::Attached,
        });
    }
    tracing::info!(
        cgroups = ?roots,
        omit_unsampled = cfg.omit_unsampled,
        "writing traceparent into traced processes' HTTP/1.x requests"
    );
    Ok(())
}

fn exclude(probes: &mut Probes, cfg: &InjectConfig) -> Result<(), String> {
    let map = probes
        .ebpf
        .map_mut(map_names::INJECT_EXCLUDE_COMM)
        .ok_or("the eBPF object has no INJECT_EXCLUDE_COMM map")?;
    let mut comms: BpfHashMap<_, [u8; 16], u8> =
        BpfHashMap::try_from(map).map_err(|e| e.to_string())?;
    for name in &cfg.exclude_processes {
        comms
            .insert(comm_key(name), 1, 0)
            .map_err(|e| format!("excluding {name}: {e}"))?;
    }
    let map = probes
        .ebpf
        .map_mut(map_names::INJECT_EXCLUDE_CGROUP)
        .ok_or("the eBPF object has no INJECT_EXCLUDE_CGROUP map")?;
    let mut ids: BpfHashMap<_, u64, u8> = BpfHashMap::try_from(map).map_err(|e| e.to_string())?;
    for dir in &cfg.exclude_cgroups {
        for id in cgroup_tree(dir)? {
            ids.insert(id, 1, 0)
                .map_err(|e| format!("excluding cgroup {}: {e}", dir.display()))?;
        }
    }
    Ok(())
}

/// A process name as the kernel's `comm`: its first 15 bytes, NUL-padded.
pub fn comm_key(name: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    for (k, b) in key.iter_mut().zip(name.bytes().take(15)) {
        *k = b;
    }
    key
}

/// The cgroup v2 ids (directory inodes) of `dir` and every cgroup under it.
fn cgroup_tree(dir: &std::path::Path) -> Result<Vec<u64>, String> {
    let mut ids = vec![];
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let meta = std::fs::metadata(&d).map_err(|e| format!("cgroup {}: {e}", d.display()))?;
        ids.push(meta.ino());
        if let Ok(entries) = std::fs::read_dir(&d) {
            todo.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    #[test]
    fn comm_keys_are_the_kernels_fifteen_bytes() {
        assert_eq!(&super::comm_key("curl")[..5], b"curl\0");
        let long = super::comm_key("a-very-long-process-name");
        assert_eq!(&long[..15], b"a-very-long-pro");
        assert_eq!(long[15], 0);
    }

    #[test]
    fn a_cgroup_tree_holds_its_descendants() {
        let dir = std::env::temp_dir().join(format!("sonde-cg-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        let ids = super::cgroup_tree(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(ids.len(), 3);
        assert!(super::cgroup_tree(&dir).unwrap_err().contains("sonde-cg-"));
    }
}
