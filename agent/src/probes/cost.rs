//! `sonde probe-cost`: what sonde's kernel programs cost per event, from
//! the kernel's own BPF run-time statistics (`BPF_ENABLE_STATS`, the same
//! counters as `kernel.bpf_stats_enabled`), sampled over a window while
//! an agent runs.
//!
//! The statistics time each run with two clock reads around the program,
//! and the kernel's own work to call it is inside that interval too, so a
//! program that does nothing does not measure 0. That floor differs from
//! machine to machine (a VM's clock reads are slow), so the window also
//! times `sonde_floor`, an empty program, on the data syscalls' tracepoints.
use std::{collections::BTreeMap, time::Duration};

use aya::programs::TracePoint;

use super::{
    goruntime::GO_PROBES,
    programs::{KERNEL_IO, TRACEPOINTS},
    ProbeConfig, Probes,
};

/// The empty program timed beside sonde's (`agent-ebpf/src/optional.rs`).
pub const FLOOR_PROGRAM: &str = "sonde_floor";

/// The tracepoints `sonde_floor` is attached to: the busiest data calls'.
const FLOOR_HOOKS: &[&str] = &[
    "sys_enter_read",
    "sys_exit_read",
    "sys_enter_write",
    "sys_exit_write",
    "sys_enter_recvfrom",
    "sys_exit_recvfrom",
    "sys_enter_sendto",
    "sys_exit_sendto",
    "sys_enter_readv",
    "sys_exit_readv",
    "sys_enter_writev",
    "sys_exit_writev",
];

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
    name == FLOOR_PROGRAM
        || TRACEPOINTS
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
/// share 15 bytes, such as the epoll enters, are summed), and the floor:
/// `sonde_floor`'s, or why it could not be timed.
pub fn measure(window: Duration) -> Result<(Vec<Cost>, Result<(), String>), String> {
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
    // Attached after the first sample, so its runs all fall in the window;
    // detached when `floor` drops, after the second.
    let floor = attach_floor();
    std::thread::sleep(window);
    let after = sample()?;
    Ok((delta(&before, &after), floor.map(drop)))
}

/// A second copy of sonde's object, with only `sonde_floor` loaded and
/// attached to `FLOOR_HOOKS`.
fn attach_floor() -> Result<Probes, String> {
    let mut probes =
        Probes::load_object(&ProbeConfig::default()).map_err(|e| format!("loading it: {e}"))?;
    let prog: &mut TracePoint = probes.program(FLOOR_PROGRAM)?;
    prog.load().map_err(|e| format!("loading it: {e}"))?;
    for hook in FLOOR_HOOKS {
        prog.attach("syscalls", hook)
            .map_err(|e| format!("attaching it to syscalls:{hook}: {e}"))?;
    }
    Ok(probes)
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

/// The table `sonde probe-cost` prints: sonde's programs, their groups and
/// total, then the floor (`floor`: why it was not timed, if it was not).
pub fn render(costs: &[Cost], floor: &Result<(), String>, window: Duration) -> String {
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
    let is_floor = |c: &Cost| c.program == FLOOR_PROGRAM;
    for c in costs.iter().filter(|c| !is_floor(c)) {
        line(&mut s, &c.program, c.runs, c.ns);
    }
    let sum = |f: &dyn Fn(&Cost) -> bool| {
        costs
            .iter()
            .filter(|c| !is_floor(c) && f(c))
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
    match (costs.iter().find(|c| is_floor(c)), floor) {
        (Some(f), Ok(())) => {
            line(&mut s, "(floor)", f.runs, f.ns);
            s.push_str(
                "(floor): an empty program on the data syscalls' tracepoints, timed the same way\n",
            );
        }
        (None, Ok(())) => s.push_str("(floor): the empty program did not run in the window\n"),
        (_, Err(why)) => s.push_str(&format!("(floor): not timed: {why}\n")),
    }
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
        let table = render(&d, &Ok(()), Duration::from_secs(2));
        assert!(
            table.contains("(tick probes)")
                && table
                    .lines()
                    .any(|l| l.starts_with("(tick probes)") && l.contains(" 117 ")),
            "{table}"
        );
    }

    /// The floor is its own line, and no group or total counts it.
    #[test]
    fn the_floor_is_shown_apart_from_sonde_s_programs() {
        assert!(ours(FLOOR_PROGRAM));
        let costs = [
            Cost {
                program: "sys_exit_read".into(),
                runs: 10,
                ns: 3_000,
            },
            Cost {
                program: FLOOR_PROGRAM.into(),
                runs: 40,
                ns: 2_000,
            },
        ];
        let table = render(&costs, &Ok(()), Duration::from_secs(1));
        let row = |name: &str| {
            table
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} row in\n{table}"))
                .split_whitespace()
                .skip(1)
                .take(2)
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(row("(all)"), ["10", "300"], "{table}");
        assert_eq!(row("(floor)"), ["40", "50"], "{table}");
        assert!(!table.contains(&format!("\n{FLOOR_PROGRAM} ")), "{table}");
        let failed = render(
            &costs[..1],
            &Err("loading it: denied".into()),
            Duration::from_secs(1),
        );
        assert!(
            failed.contains("(floor): not timed: loading it: denied"),
            "{failed}"
        );
    }
}
