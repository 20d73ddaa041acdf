//! Building, testing and running.
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{apt::effective_uid, toolchain};

/// Runs a command with inherited stdio, failing on a non-zero exit.
pub fn sh(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} exited with {status}");
    }
    Ok(())
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // Let build.rs find the cached bpf-linker even without a PATH entry.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![toolchain::bpf_linker_bin()];
    paths.extend(std::env::split_paths(&path));
    c.env("PATH", std::env::join_paths(paths).expect("PATH"));
    c
}

/// Integration suites that load probes (each a libtest-mimic binary).
const PRIVILEGED_SUITES: [&str; 12] = [
    "capture",
    "http",
    "db",
    "amqp",
    "linking",
    "churn",
    "demo",
    "container",
    "top",
    "tls",
    "http2",
    "inject",
];

/// Cargo's target directory: `CARGO_TARGET_DIR` when set, else `target`.
pub fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::PathBuf::from("target"),
        std::path::PathBuf::from,
    )
}

/// Per fuzz target in the unit phase.
const FUZZ_SMOKE_SECONDS: u64 = 20;

pub fn build(release: bool) -> Result<()> {
    let mut c = cargo();
    c.args(["build", "--package", "sonde"]);
    if release {
        c.arg("--release");
    }
    sh(&mut c)
}

pub fn test(unit: bool, privileged: bool, args: &[String]) -> Result<()> {
    toolchain::setup(privileged)?;
    if unit {
        crate::apt::ensure_python()?;
        crate::k8s_tools::ensure()?;
        eprintln!("xtask: unit tests");
        sh(cargo()
            .args(["test", "--lib", "--bins"])
            .arg("--")
            .args(args))?;
        // Each criterion bench once, untimed: they keep building and
        // running against the code as it is (their figures come from
        // `cargo bench`).
        eprintln!("xtask: benches in test mode");
        sh(cargo().args(["test", "--package", "sonde", "--bench", "*"]))?;
        eprintln!("xtask: Helm chart tests (helm lint, helm template, Kubernetes schemas)");
        sh(cargo()
            .args(["test", "--package", "xtask", "--test", "chart", "--"])
            .args(args)
            .env("SONDE_HELM", crate::k8s_tools::helm()))?;
        // A short run of every fuzz target: the targets still build against
        // the parsers as they are now, and the seeds plus a little mutation
        // find nothing. Long runs are `cargo xtask fuzz --seconds N`.
        eprintln!("xtask: fuzz smoke ({FUZZ_SMOKE_SECONDS} s per target)");
        crate::fuzz::fuzz(&crate::fuzz::Options {
            targets: vec![],
            seconds: Some(FUZZ_SMOKE_SECONDS),
            runs: None,
        })?;
    }
    if privileged {
        if effective_uid() != 0 {
            bail!(
                "the privileged suite loads eBPF programs and needs root (CAP_BPF, CAP_PERFMON, \
                 CAP_SYS_PTRACE). Run `sudo -E cargo xtask test`, or `cargo xtask test --unit`"
            );
        }
        // The demo suite's container run, and the container suite's image.
        crate::docker::ensure_engine()?;
        crate::image::build()?;
        eprintln!("xtask: privileged integration suite on this kernel");
        for suite in PRIVILEGED_SUITES {
            sh(cargo()
                .args(["test", "--package", "sonde", "--test", suite, "--"])
                .args(args))?;
        }
    }
    Ok(())
}

pub fn run(release: bool, args: &[String]) -> Result<()> {
    build(release)?;
    let bin = target_dir()
        .join(if release { "release" } else { "debug" })
        .join("sonde");
    let args: Vec<String> = if args.is_empty() {
        vec!["run".into()]
    } else {
        args.to_vec()
    };
    let mut cmd = if effective_uid() == 0 {
        Command::new(&bin)
    } else {
        eprintln!("xtask: sonde needs root to load its probes; using sudo");
        let mut c = Command::new("sudo");
        c.arg("-E").arg(&bin);
        c
    };
    sh(cmd.args(&args))
}
