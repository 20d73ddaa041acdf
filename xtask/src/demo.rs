//! `cargo xtask demo`: the demo system (demo/) with sonde watching it, and
//! a load driving all three flows. Spans print on stdout (or go to the
//! OTLP endpoint in OTEL_EXPORTER_OTLP_ENDPOINT); metrics are on
//! http://127.0.0.1:9464/metrics.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{apt::effective_uid, docker, run, toolchain};

/// A child stopped with SIGTERM (then SIGKILL) when dropped.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
    }
}

pub fn demo(mode: &str, duration: Option<u64>, sonde_args: &[String]) -> Result<()> {
    if effective_uid() != 0 {
        bail!("the demo loads sonde's eBPF programs and starts servers: run it as root (sudo -E cargo xtask demo)");
    }
    toolchain::setup(true)?;
    if mode == "docker" {
        docker::ensure_engine()?;
    }
    run::build(false)?;
    let root = std::env::current_dir()?;
    let mut args = vec!["run".to_string()];
    args.extend(sonde_args.iter().cloned());
    let sonde = Stopped(
        Command::new(root.join(run::target_dir()).join("debug/sonde"))
            .args(&args)
            .spawn()
            .context("starting sonde")?,
    );
    // Give the probes a moment to attach before the services connect.
    std::thread::sleep(Duration::from_secs(2));
    eprintln!(
        "xtask: starting the demo system ({mode}): PostgreSQL, Redis, RabbitMQ and twelve services"
    );
    let mut system = Command::new("python3")
        .arg(root.join("demo/demo.py"))
        .args(["--mode", mode])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting demo/demo.py")?;
    let mut line = String::new();
    BufReader::new(system.stdout.take().expect("piped")).read_line(&mut line)?;
    let info: serde_json::Value = serde_json::from_str(&line)
        .with_context(|| format!("demo/demo.py did not start: {line:?}"))?;
    let system = Stopped(system);
    let entry = |k: &str| info[k].as_str().unwrap_or_default().to_string();
    eprintln!(
        "xtask: demo up: login {}, ingestion {}, gates {}; load running. Ctrl-C stops everything.",
        entry("login"),
        entry("ingestion"),
        entry("gates")
    );
    let load = Stopped(
        Command::new("python3")
            .arg(root.join("demo/load.py"))
            .args([
                entry("login"),
                entry("ingestion"),
                entry("gates"),
                "--interval".into(),
                "1".into(),
            ])
            .env("OTEL_SERVICE_NAME", "loadgen")
            .stderr(Stdio::null())
            .spawn()
            .context("starting demo/load.py")?,
    );
    let end = duration.map(|s| Instant::now() + Duration::from_secs(s));
    let mut sonde = sonde;
    loop {
        if let Some(status) = sonde.0.try_wait()? {
            bail!("sonde exited with {status}");
        }
        if end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(load);
    drop(system);
    drop(sonde);
    Ok(())
}
