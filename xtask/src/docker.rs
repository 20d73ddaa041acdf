//! A running Docker engine for the container runs of the demo suite:
//! Debian's docker.io, with dockerd started here when no service manager
//! runs it (a CI machine or a container has no systemd).
use std::{
    process::{Command, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::{bail, Context, Result};

fn engine_answers() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn ensure_engine() -> Result<()> {
    if engine_answers() {
        return Ok(());
    }
    let log_path = crate::toolchain::cache_dir().join("dockerd.log");
    std::fs::create_dir_all(crate::toolchain::cache_dir())?;
    let log = std::fs::File::create(&log_path)?;
    eprintln!("xtask: starting dockerd (log: {})", log_path.display());
    Command::new("dockerd")
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .context("starting dockerd; fix: apt-get install docker.io")?;
    for _ in 0..60 {
        if engine_answers() {
            return Ok(());
        }
        sleep(Duration::from_millis(500));
    }
    bail!(
        "dockerd did not answer within 30 s; see {}",
        log_path.display()
    )
}
