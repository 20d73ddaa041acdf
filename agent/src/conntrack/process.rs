//! Per-process facts the later stages need: name, container, network
//! namespace. Read once from /proc and cached until exit or exec.
use std::{collections::HashMap, sync::Arc};

use super::cgroup;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// `comm`: the kernel's 15-byte task name.
    pub comm: String,
    /// File name of the executable, if readable.
    pub exe_name: Option<String>,
    pub cmdline: Vec<String>,
    pub container_id: Option<String>,
    /// Inode of the network namespace: tuples are only unique within one.
    pub netns: Option<u64>,
}

impl ProcessInfo {
    /// Reads what /proc offers; a process that already exited gets a bare record.
    pub fn read(pid: u32) -> ProcessInfo {
        let dir = format!("/proc/{pid}");
        let comm = std::fs::read_to_string(format!("{dir}/comm"))
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default();
        let exe_name = std::fs::read_link(format!("{dir}/exe"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        let cmdline = std::fs::read(format!("{dir}/cmdline"))
            .map(|b| {
                b.split(|&c| c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let container_id = std::fs::read_to_string(format!("{dir}/cgroup"))
            .ok()
            .and_then(|s| cgroup::container_id(&s));
        let netns = netns_of(pid);
        ProcessInfo { pid, comm, exe_name, cmdline, container_id, netns }
    }
}

/// Inode of a process's network namespace, from the `net:[N]` link.
pub fn netns_of(pid: u32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Cache of [`ProcessInfo`] by pid.
#[derive(Default)]
pub struct ProcessCache {
    by_pid: HashMap<u32, Arc<ProcessInfo>>,
}

impl ProcessCache {
    /// The process's info; `comm` (from the kernel record) names it when
    /// it has already exited and /proc has nothing.
    pub fn get(&mut self, pid: u32, comm: &str) -> Arc<ProcessInfo> {
        let entry = self.by_pid.entry(pid).or_insert_with(|| Arc::new(ProcessInfo::read(pid)));
        if entry.comm.is_empty() && !comm.is_empty() {
            Arc::make_mut(entry).comm = comm.to_string();
        }
        entry.clone()
    }

    /// Seeds an entry (tests, or callers that already read /proc).
    pub fn insert(&mut self, info: ProcessInfo) {
        self.by_pid.insert(info.pid, Arc::new(info));
    }

    pub fn forget(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }
}
