//! `cargo xtask image`: a static musl build of sonde in a FROM scratch
//! image tagged `sonde:dev`, built by the local Docker engine with no
//! registry involved.
use std::process::Command;

use anyhow::{Context, Result};

use crate::{apt, docker, run, toolchain};

pub const TARGET: &str = "x86_64-unknown-linux-musl";
pub const TAG: &str = "sonde:dev";

pub fn build() -> Result<()> {
    toolchain::setup(false)?;
    // ring compiles C for the target: musl-gcc.
    apt::ensure(&["musl-tools"])?;
    run::sh(Command::new("rustup").args(["target", "add", TARGET]))
        .context("rustup target add (the musl standard library)")?;
    run::sh(run::cargo().args([
        "build",
        "--release",
        "--package",
        "sonde",
        "--target",
        TARGET,
    ]))?;
    docker::ensure_engine()?;
    let context = std::env::current_dir()?.join("target/image");
    std::fs::create_dir_all(&context)?;
    let binary = run::target_dir().join(TARGET).join("release/sonde");
    std::fs::copy(&binary, context.join("sonde"))
        .with_context(|| format!("copying the musl binary {}", binary.display()))?;
    run::sh(
        Command::new("docker")
            .args([
                "build",
                "--quiet",
                "--tag",
                TAG,
                "--file",
                "deploy/image.Dockerfile",
            ])
            .arg(&context),
    )?;
    eprintln!("xtask: built image {TAG}");
    Ok(())
}
