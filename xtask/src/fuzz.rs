//! `cargo xtask fuzz`: the libFuzzer targets in fuzz/ (cargo-fuzz layout,
//! a workspace of its own) built with the nightly the eBPF build already
//! uses, seeded from the protocols' recorded captures, and a pass/fail line
//! per target.
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{run::sh, toolchain};

/// Every target in fuzz/fuzz_targets/, in the order they run.
pub const TARGETS: [&str; 4] = ["ring_record", "protocols", "sql", "amqp_table"];

/// Per target when neither a time nor a run count is given.
const DEFAULT_SECONDS: u64 = 60;

/// A unit slower than this is a hang, reported like a crash.
const UNIT_TIMEOUT_S: u64 = 10;

pub struct Options {
    /// Empty: every target.
    pub targets: Vec<String>,
    pub seconds: Option<u64>,
    pub runs: Option<u64>,
}

struct Outcome {
    target: String,
    execs: Option<u64>,
    seconds: f64,
    failure: Option<String>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repo")
        .to_path_buf()
}

/// Beside the workspace's own build, never inside it: the fuzz build has
/// other flags (sancov, ASan) and would otherwise rebuild everything twice.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("fuzz")
}

/// `cargo` of the nightly, with nothing of the stable cargo that runs
/// xtask leaking into it.
fn nightly_cargo() -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo"]);
    for v in ["CARGO", "RUSTC", "RUSTDOC", "RUSTC_WRAPPER", "RUSTFLAGS"] {
        c.env_remove(v);
    }
    // `cargo run` gave xtask CARGO_MANIFEST_DIR, CARGO_PKG_*, ...; build
    // scripts that watch such variables (ring, cc) would see a change and
    // rebuild half the tree whenever the fuzz build is run by hand instead.
    for (k, _) in std::env::vars_os() {
        if k.to_str()
            .is_some_and(|k| k.starts_with("CARGO_") && k != "CARGO_HOME")
        {
            c.env_remove(k);
        }
    }
    // The fuzzers need the parsers, not the eBPF programs: skip building them.
    c.env("AYA_BUILD_SKIP", "1");
    c.current_dir(root());
    c
}

/// The cargo-fuzz build flags: release with debug assertions (overflow
/// checks on), ASan, our target dir. `build` and `run` must agree on them
/// or `run` rebuilds.
fn build_flags(c: &mut Command) -> &mut Command {
    c.args([
        "--release",
        "--debug-assertions",
        "--sanitizer",
        "address",
        "--target-dir",
    ])
    .arg(target_dir())
}

pub fn ensure_cargo_fuzz() -> Result<()> {
    let found = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if found.is_ok_and(|s| s.success()) {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz (once; a few minutes)");
    sh(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
        .context("installing cargo-fuzz")
}

fn host_triple() -> Result<String> {
    let out = Command::new("rustup")
        .args(["run", "nightly", "rustc", "-vV"])
        .output()
        .context("running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .context("`rustc +nightly -vV` printed no host")
}

pub fn fuzz(opts: &Options) -> Result<()> {
    let targets: Vec<String> = if opts.targets.is_empty() {
        TARGETS.iter().map(|t| t.to_string()).collect()
    } else {
        opts.targets.clone()
    };
    if let Some(bad) = targets.iter().find(|t| !TARGETS.contains(&t.as_str())) {
        bail!("no fuzz target {bad:?}; there are {}", TARGETS.join(", "));
    }
    toolchain::ensure_nightly_rust_src()?;
    ensure_cargo_fuzz()?;

    eprintln!(
        "xtask: building the fuzz targets (nightly, ASan, sancov; the first time takes minutes)"
    );
    sh(build_flags(nightly_cargo().args(["fuzz", "build"])))
        .context("building the fuzz targets")?;

    // The seed writer is built with the targets (same flags, so the parsers
    // are compiled once) and checks every seed as it writes it.
    let seeds = target_dir()
        .join(host_triple()?)
        .join("release")
        .join("seeds");
    let corpus = root().join("fuzz").join("corpus");
    sh(Command::new(&seeds)
        .arg(&corpus)
        .env("ASAN_OPTIONS", "detect_leaks=0"))
    .context("writing the seed corpora")?;

    let mut outcomes = vec![];
    for t in &targets {
        outcomes.push(run_target(t, opts, &corpus)?);
    }
    eprintln!("\nxtask: fuzzing");
    eprintln!(
        "  {:<12} {:>12} {:>8}  result",
        "target", "execs", "seconds"
    );
    for o in &outcomes {
        let execs = o.execs.map_or("?".to_string(), |n| n.to_string());
        let result = o.failure.as_deref().unwrap_or("ok");
        eprintln!(
            "  {:<12} {:>12} {:>8.0}  {result}",
            o.target, execs, o.seconds
        );
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.failure.is_some())
        .map(|o| o.target.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (inputs in fuzz/artifacts/, logs in {})",
            failed.join(", "),
            target_dir().join("logs").display()
        );
    }
    Ok(())
}

/// One target, its libFuzzer output in a log file (it prints a status line
/// per new input); a failure prints the log's tail.
fn run_target(target: &str, opts: &Options, seeds: &Path) -> Result<Outcome> {
    // New inputs go to a working corpus outside the repo, which grows from
    // run to run; the committed seeds are only read.
    let work = target_dir().join("corpus").join(target);
    let logs = target_dir().join("logs");
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(&logs)?;
    let log_path = logs.join(format!("{target}.log"));
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;

    let mut c = nightly_cargo();
    c.args(["fuzz", "run"]);
    build_flags(&mut c)
        .arg(target)
        .arg(&work)
        .arg(seeds.join(target))
        .arg("--");
    c.args([
        "-print_final_stats=1",
        &format!("-timeout={UNIT_TIMEOUT_S}"),
    ]);
    let seconds = match (opts.seconds, opts.runs) {
        (None, None) => Some(DEFAULT_SECONDS),
        (s, _) => s,
    };
    if let Some(s) = seconds {
        c.arg(format!("-max_total_time={s}"));
    }
    if let Some(n) = opts.runs {
        c.arg(format!("-runs={n}"));
    }
    eprintln!(
        "xtask: fuzzing {target} ({}; log: {})",
        describe(seconds, opts.runs),
        log_path.display()
    );
    let start = Instant::now();
    let status = c
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("starting cargo fuzz run {target}"))?;
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let execs = text
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok());
    let failure = (!status.success()).then(|| {
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        eprintln!(
            "---- {target}: last lines of {}\n{}",
            log_path.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        text.lines()
            .find(|l| l.contains("Test unit written to"))
            .map(|l| l.trim().to_string())
            .unwrap_or_else(|| format!("failed ({status})"))
    });
    Ok(Outcome {
        target: target.to_string(),
        execs,
        seconds: start.elapsed().as_secs_f64(),
        failure,
    })
}

fn describe(seconds: Option<u64>, runs: Option<u64>) -> String {
    match (seconds, runs) {
        (Some(s), Some(n)) => format!("{n} runs or {s} s"),
        (Some(s), None) => format!("{s} s"),
        (None, Some(n)) => format!("{n} runs"),
        (None, None) => unreachable!("a default time is set"),
    }
}
