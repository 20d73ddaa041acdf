//! `sonde probe-cost`: what sonde's kernel programs cost per event, from
//! the kernel's own BPF run-time statistics (`BPF_ENABLE_STATS`, the same
//! counters as `kernel.bpf_stats_enabled`), sampled over a window while
//! an agent runs.
use std::{collections::BTreeMap, time::Duration};

use super::{
    goruntime::GO_PROBES,
    programs::{KERNEL_IO, TRACEPOINTS},
};

/// The kernel keeps 15 bytes of a program's name.
const NAME_LEN: usize = 15;

/// Run time and runs per (truncated) program name.
type Sample = BTreeMap<String, (u64, u64)>;

/// One program's cost over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct Cost {
    pub program: String,
    pub runs: u64,
    pub ns: u64,
}

impl Cost {
    pub fn ns_per_run(&self) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            self.ns as f64 / self.runs as f64
        }
    }
}

fn ours(name: &str) -> bool {
    TRACEPOINTS
        .iter()
        .map(|t| t.program)
        .chain(KERNEL_IO.iter().map(|k| k.program))
        .chain(GO_PROBES.iter().map(|(p, _)| *p))
        .any(|p| &p[..p.len().min(NAME_LEN)] == name)
}

fn sample() -> Result<Sample, String> {
    super::runtime::sample(|p| p.name_as_str().filter(|n| ours(n)).map(String::from))
        .map_err(|e| format!("listing BPF programs failed ({e}); fix: run as root (CAP_SYS_ADMIN)"))
}

/// The cost of each sonde program over `window` (programs whose names
/// share 15 bytes, such as the epoll enters, are summed).
pub fn measure(window: Duration) -> Result<Vec<Cost>, String> {
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| {
        format!("cannot enable BPF run-time statistics ({e}); fix: run as root on a kernel 5.8 or newer")
    })?;
    let before = sample()?;
    if before.is_empty() {
        return Err(
            "no sonde programs are loaded; fix: start `sonde run` (or `cargo xtask run`) first"
                .into(),
        );
    }
    std::thread::sleep(window);
    let after = sample()?;
    Ok(delta(&before, &after))
}

fn delta(before: &Sample, after: &Sample) -> Vec<Cost> {
    let mut out: Vec<Cost> = after
        .iter()
        .map(|(name, &(ns, runs))| {
            let (ns0, runs0) = before.get(name).copied().unwrap_or_default();
            Cost {
                program: name.clone(),
                runs: runs.saturating_sub(runs0),
                ns: ns.saturating_sub(ns0),
            }
        })
        .filter(|c| c.runs > 0)
        .collect();
    out.sort_by_key(|c| std::cmp::Reverse(c.ns));
    out
}

/// The table `sonde probe-cost` prints.
pub fn render(costs: &[Cost], window: Duration) -> String {
    let secs = window.as_secs_f64();
    let mut s = format!(
        "{:<16} {:>12} {:>12} {:>10}\n",
        "program", "runs/s", "ns/run", "CPU %"
    );
    let line = |s: &mut String, name: &str, runs: u64, ns: u64| {
        let per = if runs == 0 {
            0.0
        } else {
            ns as f64 / runs as f64
        };
        s.push_str(&format!(
            "{name:<16} {:>12.0} {per:>12.0} {:>10.3}\n",
            runs as f64 / secs,
            ns as f64 / secs / 1e7
        ));
    };
    for c in costs {
        line(&mut s, &c.program, c.runs, c.ns);
    }
    let sum = |f: &dyn Fn(&Cost) -> bool| {
        costs
            .iter()
            .filter(|c| f(c))
            .fold((0, 0), |(r, n), c| (r + c.runs, n + c.ns))
    };
    let tick = |c: &Cost| {
        TICK_PROGRAMS
            .iter()
            .any(|p| p[..p.len().min(NAME_LEN)] == c.program)
    };
    let (r, n) = sum(&tick);
    line(&mut s, "(tick probes)", r, n);
    let (r, n) = sum(&|c: &Cost| GO_PROBES.iter().any(|(p, _)| *p == c.program));
    if r > 0 {
        line(&mut s, "(go probes)", r, n);
    }
    let (r, n) = sum(&|_| true);
    line(&mut s, "(all)", r, n);
    s
}

/// The programs that only keep threads' ticks (`agent-ebpf/src/tick.rs`).
pub const TICK_PROGRAMS: &[&str] = &[
    "sys_enter_epoll_wait",
    "sys_enter_epoll_pwait",
    "sys_enter_epoll_pwait2",
    "sys_enter_poll",
    "sys_enter_ppoll",
    "sys_enter_select",
    "sys_enter_pselect6",
    "sys_enter_getsockopt",
    "sched_switch",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_sum_truncated_names_and_skip_idle_programs() {
        assert!(
            ours("sys_enter_epoll")
                && ours("sched_switch")
                && ours("sys_exit_read")
                && !ours("other_prog")
        );
        let before = Sample::from([
            ("sched_switch".into(), (1_000, 10)),
            ("sys_exit_read".into(), (500, 5)),
        ]);
        let after = Sample::from([
            ("sched_switch".into(), (3_000, 30)),
            ("sys_exit_read".into(), (500, 5)),
            ("sys_enter_epoll".into(), (800, 4)),
        ]);
        let d = delta(&before, &after);
        assert_eq!(
            d,
            vec![
                Cost {
                    program: "sched_switch".into(),
                    runs: 20,
                    ns: 2_000
                },
                Cost {
                    program: "sys_enter_epoll".into(),
                    runs: 4,
                    ns: 800
                },
            ]
        );
        assert_eq!(d[0].ns_per_run(), 100.0);
        let table = render(&d, Duration::from_secs(2));
        assert!(
            table.contains("(tick probes)")
                && table
                    .lines()
                    .any(|l| l.starts_with("(tick probes)") && l.contains(" 117 ")),
            "{table}"
        );
    }
}
