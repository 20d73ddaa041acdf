//! Per-process facts the later stages need: name, container, network
//! namespace. Read once from /proc and cached until exit or exec.
use foldhash::HashMap;
use std::sync::Arc;

use super::cgroup;
use crate::{event::ExecRecord, stats::Stats};

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
    /// Start time in clock ticks after boot (with pid, identifies the process).
    pub start_ticks: u64,
    /// `OTEL_SERVICE_NAME` from the process's own environment.
    pub otel_service_name: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES` from the process's own environment.
    pub otel_resource_attributes: Vec<(String, String)>,
}

impl ProcessInfo {
    /// Whether one of `names` names this process (its comm or executable).
    pub fn named(&self, names: &[String]) -> bool {
        names
            .iter()
            .any(|n| *n == self.comm || self.exe_name.as_deref() == Some(n))
    }

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
            .map(|b| nul_separated(&b))
            .unwrap_or_default();
        let container_id = std::fs::read_to_string(format!("{dir}/cgroup"))
            .ok()
            .and_then(|s| cgroup::container_id(&s));
        let netns = netns_of(pid);
        let start_ticks = std::fs::read_to_string(format!("{dir}/stat"))
            .ok()
            .and_then(|s| parse_start_ticks(&s))
            .unwrap_or(0);
        let env = std::fs::read(format!("{dir}/environ")).unwrap_or_default();
        let (otel_service_name, otel_resource_attributes) = otel_env(&env);
        ProcessInfo {
            pid,
            comm,
            exe_name,
            cmdline,
            container_id,
            netns,
            start_ticks,
            otel_service_name,
            otel_resource_attributes,
        }
    }

    /// Whether /proc had no image for it: the process had exited, or was
    /// exiting (a zombie keeps its stat, comm and cgroup, but neither its
    /// executable nor its environment).
    pub fn gone(&self) -> bool {
        self.exe_name.is_none()
    }

    /// Fills in what /proc no longer had from `at_exec` (the kernel's copy
    /// of this process's exec). /proc's environment is the one exec laid
    /// out, so one without OTel variables is taken as unread.
    fn fill_from(&mut self, at_exec: ProcessInfo) {
        if self.comm.is_empty() {
            self.comm = at_exec.comm;
        }
        if self.exe_name.is_none() {
            self.exe_name = at_exec.exe_name;
        }
        if self.cmdline.is_empty() {
            self.cmdline = at_exec.cmdline;
        }
        if self.otel_service_name.is_none() && self.otel_resource_attributes.is_empty() {
            self.otel_service_name = at_exec.otel_service_name;
            self.otel_resource_attributes = at_exec.otel_resource_attributes;
        }
    }

    /// A process's record from what the kernel copied at its exec: the
    /// executable's name, the command line (its first `CMDLINE_MAX`
    /// bytes) and the OTel variables of its environment. Its container and
    /// start time are unknown: this names a process gone before /proc was
    /// read.
    pub fn from_exec(e: &ExecRecord) -> ProcessInfo {
        let (args, env) = e.strings.split_at(e.args_len.min(e.strings.len()));
        let args = &args[..args.len().min(CMDLINE_MAX)];
        let (otel_service_name, otel_resource_attributes) = otel_env(env);
        ProcessInfo {
            pid: e.pid,
            comm: e.comm.as_string(),
            exe_name: std::path::Path::new(&e.filename)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned()),
            cmdline: nul_separated(args),
            otel_service_name,
            otel_resource_attributes,
            ..ProcessInfo::default()
        }
    }
}

/// The strings of a NUL-separated block (a command line), empty ones
/// skipped.
fn nul_separated(b: &[u8]) -> Vec<String> {
    b.split(|&c| c == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Bytes of an exec's command line kept for a process not yet looked up.
const CMDLINE_MAX: usize = 1024;

/// Field 22 of /proc/<pid>/stat. The command name (field 2) may contain
/// spaces and parentheses, so count from the last ')'.
pub fn parse_start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Parses `OTEL_RESOURCE_ATTRIBUTES` syntax: `k=v,k2=v2`, values
/// percent-encoded. Malformed pairs are skipped.
pub fn parse_resource_attributes(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_string(), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        if let (b'%', Some(Ok(v))) = (b[i], hex.map(|h| u8::from_str_radix(h, 16))) {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The OTel variables of a NUL-separated environment block.
fn otel_env(env: &[u8]) -> (Option<String>, Vec<(String, String)>) {
    let mut name = None;
    let mut attrs = vec![];
    for var in env.split(|&b| b == 0) {
        let var = String::from_utf8_lossy(var);
        if let Some(v) = var.strip_prefix("OTEL_SERVICE_NAME=") {
            if !v.trim().is_empty() {
                name = Some(v.trim().to_string());
            }
        } else if let Some(v) = var.strip_prefix("OTEL_RESOURCE_ATTRIBUTES=") {
            attrs = parse_resource_attributes(v);
        }
    }
    (name, attrs)
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
    /// Told each process seen for the first time (or since its exec): the
    /// capture stage inspects its executable for a Go runtime.
    notices: Option<tokio::sync::mpsc::Sender<u32>>,
    /// What the kernel copied at each exec whose process has not been
    /// looked up yet: the fallback for one gone by its first network act.
    execs: HashMap<u32, ProcessInfo>,
    stats: Arc<Stats>,
}

/// Exec records held at most; beyond it they are dropped, counted.
const EXECS_MAX: usize = 2048;

impl ProcessCache {
    pub fn new(stats: Arc<Stats>) -> Self {
        ProcessCache {
            stats,
            ..Default::default()
        }
    }

    /// Names every new process on `tx`; a full queue counts a drop.
    pub fn notify_new(&mut self, tx: tokio::sync::mpsc::Sender<u32>) {
        self.notices = Some(tx);
    }

    /// Holds what the kernel copied at a process's exec until the process
    /// is first looked up (or exits, or execs again).
    pub fn exec_seen(&mut self, e: ExecRecord) {
        if self.by_pid.contains_key(&e.pid) {
            return; // looked up since its exec already
        }
        if self.execs.len() >= EXECS_MAX && !self.execs.contains_key(&e.pid) {
            Stats::inc(&self.stats.exec_records_dropped);
            return;
        }
        self.execs.insert(e.pid, ProcessInfo::from_exec(&e));
    }

    /// The process's info; what the kernel copied at its exec, else `comm`
    /// (from the kernel record), names it when it has already exited and
    /// /proc has nothing.
    pub fn get(&mut self, pid: u32, comm: &str) -> Arc<ProcessInfo> {
        let (notices, stats, execs) = (&self.notices, &self.stats, &mut self.execs);
        let entry = self.by_pid.entry(pid).or_insert_with(|| {
            if let Some(tx) = notices {
                if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) = tx.try_send(pid) {
                    Stats::inc(&stats.process_notices_dropped);
                }
            }
            let mut info = ProcessInfo::read(pid);
            let at_exec = execs.remove(&pid);
            let (gone, held) = (info.gone(), at_exec.is_some());
            match (gone, held) {
                (true, true) => Stats::inc(&stats.processes_gone_named_at_exec),
                (true, false) => Stats::inc(&stats.processes_gone),
                _ => {}
            }
            if let Some(e) = at_exec {
                info.fill_from(e);
            }
            tracing::debug!(
                pid,
                comm = info.comm,
                exe = info.exe_name,
                service = info.otel_service_name,
                record_comm = comm,
                start = info.start_ticks,
                gone,
                held,
                args = info.cmdline.len(),
                "process: first sight"
            );
            Arc::new(info)
        });
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
        self.execs.remove(&pid);
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_otel_variables_from_an_environment_block() {
        let env = b"PATH=/bin\0OTEL_SERVICE_NAME=checkout\0OTEL_RESOURCE_ATTRIBUTES=service.namespace=shop,deployment.environment=prod%2Ceu,bad\0";
        let (name, attrs) = otel_env(env);
        assert_eq!(name.as_deref(), Some("checkout"));
        assert_eq!(
            attrs,
            vec![
                ("service.namespace".to_string(), "shop".to_string()),
                ("deployment.environment".to_string(), "prod,eu".to_string())
            ]
        );
        assert_eq!(otel_env(b"OTEL_SERVICE_NAME=\0"), (None, vec![]));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn an_exec_record_names_the_process_within_bounds() {
        let long = vec![b'a'; 3000];
        let args = [b"tool\0".as_slice(), &long, b"\0"].concat();
        let env = b"OTEL_RESOURCE_ATTRIBUTES=service.name=from-attrs\0HOME=/root\0";
        let e = ExecRecord {
            pid: 7,
            ts_ns: 1,
            comm: Default::default(),
            filename: "./bin/tool".into(),
            strings: [args.as_slice(), env].concat(),
            args_len: args.len(),
        };
        let p = ProcessInfo::from_exec(&e);
        assert_eq!(p.exe_name.as_deref(), Some("tool"));
        assert_eq!(p.cmdline[0], "tool");
        assert_eq!(p.cmdline[1].len(), CMDLINE_MAX - 5, "cut at CMDLINE_MAX");
        assert_eq!(
            p.otel_resource_attributes,
            [("service.name".to_string(), "from-attrs".to_string())]
        );
        assert_eq!(
            (p.start_ticks, p.container_id),
            (0, None),
            "unknown at exec"
        );
        // A record cut inside its arguments has no environment.
        let cut = ExecRecord {
            strings: b"tool\0-v".to_vec(),
            args_len: 99,
            ..e
        };
        let p = ProcessInfo::from_exec(&cut);
        assert_eq!(p.cmdline, ["tool", "-v"]);
        assert_eq!(p.otel_service_name, None);
    }

    #[test]
    fn start_ticks_survive_odd_command_names() {
        let stat =
            "42 (we (ird) name) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_ticks(stat), Some(987654));
        assert_eq!(parse_start_ticks("garbage"), None);
    }
}
