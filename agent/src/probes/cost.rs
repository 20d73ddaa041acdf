//! `sonde probe-cost`: what sonde's kernel programs cost per event, from
//! the kernel's own BPF run-time statistics (`BPF_ENABLE_STATS`, the same
//! counters as `kernel.bpf_stats_enabled`), sampled over a window while
//! an agent runs.
//!
//! The statistics time each run with two clock reads around the program,
//! and the kernel's own work to call it is inside that interval too, so a
//! program that does nothing does not measure 0. That floor differs from
//! machine to machine (a VM's clock reads are slow), so the window also
//! times `sonde_floor`, an empty program, on the data syscalls' tracepoints,
//! and `sonde_ufloor`, an empty uprobe, on the goroutine switch of the Go
//! programs running: a uprobe is called by another path (a trap, then the
//! uprobe's consumers), whose share of the interval is its own.
use std::{
    collections::{BTreeMap, HashSet},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    time::Duration,
};

use aya::programs::{
    uprobe::{UProbeAttachLocation, UProbeScope},
    TracePoint, UProbe,
};

use super::{
    goruntime::GO_PROBES,
    programs::{KERNEL_IO, TRACEPOINTS},
    ProbeConfig, Probes,
};

/// The empty program timed beside sonde's (`agent-ebpf/src/optional.rs`).
pub const FLOOR_PROGRAM: &str = "sonde_floor";

/// The empty uprobe timed beside the goroutine probes.
pub const UPROBE_FLOOR_PROGRAM: &str = "sonde_ufloor";

/// The runtime function `sonde_ufloor` is attached to: the busiest
/// goroutine probe's (`go_execute`).
const UPROBE_FLOOR_HOOK: &str = "runtime.execute";

/// At most this many Go executables get the empty uprobe.
const UPROBE_FLOOR_FILES: usize = 32;

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

/// Program `name` as the kernel keeps it (its first `NAME_LEN` bytes).
fn kernel_name(name: &str) -> &str {
    &name[..name.len().min(NAME_LEN)]
}

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
    is_floor(name)
        || TRACEPOINTS
            .iter()
            .map(|t| t.program)
            .chain(KERNEL_IO.iter().map(|k| k.program))
            .chain(GO_PROBES.iter().copied())
            .chain(super::tls::programs())
            .chain(super::python::PROGRAMS.iter().copied())
            .chain([super::libuv::PROGRAM])
            .any(|p| kernel_name(p) == name)
}

fn sample() -> Result<Sample, String> {
    super::runtime::sample(|p| p.name_as_str().filter(|n| ours(n)).map(String::from))
        .map_err(|e| format!("listing BPF programs failed ({e}); fix: run as root (CAP_SYS_ADMIN)"))
}

fn is_floor(name: &str) -> bool {
    name == FLOOR_PROGRAM || name == UPROBE_FLOOR_PROGRAM
}

/// Whether each floor was timed, and if not, why.
#[derive(Debug, Clone, PartialEq)]
pub struct Floors {
    /// `sonde_floor`, on the data syscalls' tracepoints.
    pub tracepoint: Result<(), String>,
    /// `sonde_ufloor`: on how many Go executables' `runtime.execute`.
    pub uprobe: Result<usize, String>,
}

/// The cost of each sonde program over `window` (programs whose names
/// share 15 bytes, such as the epoll enters, are summed), and the floors:
/// whether each was timed, or why not.
pub fn measure(window: Duration) -> Result<(Vec<Cost>, Floors), String> {
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
    // Attached after the first sample, so their runs all fall in the
    // window; detached when `probes` drops, after the second.
    let (probes, floors) = match Probes::load_object(&ProbeConfig::default()) {
        Ok(mut probes) => {
            let floors = Floors {
                tracepoint: attach_floor(&mut probes),
                uprobe: attach_uprobe_floor(&mut probes),
            };
            (Some(probes), floors)
        }
        Err(e) => (
            None,
            Floors {
                tracepoint: Err(format!("loading it: {e}")),
                uprobe: Err(format!("loading it: {e}")),
            },
        ),
    };
    std::thread::sleep(window);
    let after = sample()?;
    drop(probes);
    Ok((delta(&before, &after), floors))
}

/// Loads `sonde_floor` from a second copy of sonde's object and attaches
/// it to `FLOOR_HOOKS`.
fn attach_floor(probes: &mut Probes) -> Result<(), String> {
    let prog: &mut TracePoint = probes.program(FLOOR_PROGRAM)?;
    prog.load().map_err(|e| format!("loading it: {e}"))?;
    for hook in FLOOR_HOOKS {
        prog.attach("syscalls", hook)
            .map_err(|e| format!("attaching it to syscalls:{hook}: {e}"))?;
    }
    Ok(())
}

/// Loads `sonde_ufloor` and attaches it to `UPROBE_FLOOR_HOOK` in every
/// Go executable that a running process runs: how many.
fn attach_uprobe_floor(probes: &mut Probes) -> Result<usize, String> {
    let files = go_executables();
    if files.is_empty() {
        return Err("no Go program the goroutine probes understand is running".into());
    }
    let prog: &mut UProbe = probes.program(UPROBE_FLOOR_PROGRAM)?;
    prog.load().map_err(|e| format!("loading it: {e}"))?;
    let mut attached = 0;
    let mut failed = None;
    for (f, at) in files {
        match prog.attach(at, &f, UProbeScope::AllProcesses) {
            Ok(_) => attached += 1,
            Err(e) => failed = Some(format!("{}: {e}", f.display())),
        }
    }
    match (attached, failed) {
        (0, Some(why)) => Err(format!("attaching it to {UPROBE_FLOOR_HOOK}: {why}")),
        _ => Ok(attached),
    }
}

/// The distinct executables of running processes that are Go programs the
/// goroutine probes understand (at most `UPROBE_FLOOR_FILES`), by their
/// `/proc/<pid>/exe` path (which reaches into containers), each with the
/// place of its `go_execute`.
fn go_executables() -> Vec<(PathBuf, UProbeAttachLocation<'static>)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for entry in dir.flatten() {
        if out.len() == UPROBE_FLOOR_FILES {
            break;
        }
        let name = entry.file_name();
        if !name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let exe = entry.path().join("exe");
        let Ok(meta) = std::fs::metadata(&exe) else {
            continue;
        };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let Ok(f) = std::fs::File::open(&exe) else {
            continue;
        };
        let elf = object::ReadCache::new(f);
        if matches!(
            super::goruntime::inspect(&elf),
            super::goruntime::Binary::Go(_)
        ) {
            let at = super::goruntime::execute_location(&elf);
            out.push((exe, at));
        }
    }
    out
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
/// total, then the floors (or why one was not timed).
pub fn render(costs: &[Cost], floors: &Floors, window: Duration) -> String {
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
    let is_floor = |c: &Cost| is_floor(&c.program);
    for c in costs.iter().filter(|c| !is_floor(c)) {
        line(&mut s, &c.program, c.runs, c.ns);
    }
    let sum = |f: &dyn Fn(&Cost) -> bool| {
        costs
            .iter()
            .filter(|c| !is_floor(c) && f(c))
            .fold((0, 0), |(r, n), c| (r + c.runs, n + c.ns))
    };
    let tick = |c: &Cost| TICK_PROGRAMS.iter().any(|p| kernel_name(p) == c.program);
    let (r, n) = sum(&tick);
    line(&mut s, "(tick probes)", r, n);
    let (go_runs, n) = sum(&|c: &Cost| GO_PROBES.contains(&c.program.as_str()));
    if go_runs > 0 {
        line(&mut s, "(go probes)", go_runs, n);
    }
    let tls = super::tls::programs();
    let (tls_runs, n) = sum(&|c: &Cost| tls.iter().any(|p| kernel_name(p) == c.program));
    if tls_runs > 0 {
        line(&mut s, "(tls probes)", tls_runs, n);
    }
    let (r, n) = sum(&|_| true);
    line(&mut s, "(all)", r, n);
    let floor = |name: &str| costs.iter().find(|c| c.program == name);
    match (floor(FLOOR_PROGRAM), &floors.tracepoint) {
        (Some(f), Ok(())) => {
            line(&mut s, "(floor)", f.runs, f.ns);
            s.push_str(
                "(floor): an empty program on the data syscalls' tracepoints, timed the same way\n",
            );
        }
        (None, Ok(())) => s.push_str("(floor): the empty program did not run in the window\n"),
        (_, Err(why)) => s.push_str(&format!("(floor): not timed: {why}\n")),
    }
    // Shown beside the goroutine probes only: without them it says nothing
    // about sonde.
    if go_runs > 0 {
        match (floor(UPROBE_FLOOR_PROGRAM), &floors.uprobe) {
            (Some(f), Ok(files)) => {
                line(&mut s, "(uprobe floor)", f.runs, f.ns);
                s.push_str(&format!(
                    "(uprobe floor): an empty uprobe on {UPROBE_FLOOR_HOOK} of {files} Go executable(s), where go_execute is, timed the same way\n"
                ));
            }
            (None, Ok(_)) => {
                s.push_str("(uprobe floor): the empty uprobe did not run in the window\n")
            }
            (_, Err(why)) => s.push_str(&format!("(uprobe floor): not timed: {why}\n")),
        }
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
    "uv_phase",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn timed(go_files: usize) -> Floors {
        Floors {
            tracepoint: Ok(()),
            uprobe: Ok(go_files),
        }
    }

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
        let table = render(&d, &timed(0), Duration::from_secs(2));
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
        let table = render(&costs, &timed(0), Duration::from_secs(1));
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
            &Floors {
                tracepoint: Err("loading it: denied".into()),
                uprobe: Err("loading it: denied".into()),
            },
            Duration::from_secs(1),
        );
        assert!(
            failed.contains("(floor): not timed: loading it: denied"),
            "{failed}"
        );
    }

    /// The uprobe floor shows beside the goroutine probes only, apart from
    /// them and from the total.
    #[test]
    fn the_uprobe_floor_shows_beside_the_goroutine_probes() {
        assert!(ours(UPROBE_FLOOR_PROGRAM) && ours("go_execute"));
        let cost = |p: &str, runs, ns| Cost {
            program: p.into(),
            runs,
            ns,
        };
        let costs = [
            cost("go_execute", 100, 12_000),
            cost("go_send", 50, 15_000),
            cost(UPROBE_FLOOR_PROGRAM, 100, 9_000),
        ];
        let table = render(&costs, &timed(2), Duration::from_secs(1));
        // Runs per second and ns per run of the row named `name`.
        let row = |name: &str| {
            table
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} row in\n{table}"))
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
        };
        assert_eq!(row("(go probes)"), ["150", "180"], "{table}");
        assert_eq!(row("(all)"), ["150", "180"], "{table}");
        assert_eq!(row("(uprobe floor)"), ["100", "90"], "{table}");
        assert!(table.contains("of 2 Go executable(s)"), "{table}");
        let none = Floors {
            tracepoint: Ok(()),
            uprobe: Err("no Go program the goroutine probes understand is running".into()),
        };
        let table = render(&costs[..2], &none, Duration::from_secs(1));
        assert!(
            table.contains("(uprobe floor): not timed: no Go program"),
            "{table}"
        );
        // Without goroutine probes, no uprobe floor line at all.
        let table = render(
            &[cost("sys_exit_read", 10, 3_000)],
            &none,
            Duration::from_secs(1),
        );
        assert!(!table.contains("uprobe floor"), "{table}");
    }
}
