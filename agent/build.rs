//! Builds `agent-ebpf` for the BPF target with aya-build and leaves the object
//! in OUT_DIR, where `include_bytes_aligned!` embeds it into the binary.
//!
//! `AYA_BUILD_SKIP=1` skips it for check-only runs (clippy, docs); the binary
//! then refuses to load probes and says why.
use std::{env, path::PathBuf};

use anyhow::{anyhow, Context as _};

/// Where `cargo xtask setup` caches tools; keep in sync with xtask/src/toolchain.rs.
fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = env::var_os("SONDE_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("sonde"));
    }
    env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("sonde"))
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=SONDE_CACHE_DIR");
    let skip = env::var("AYA_BUILD_SKIP")
        .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        .unwrap_or(false);
    if skip {
        println!("cargo:rustc-cfg=sonde_no_ebpf");
    }
    println!("cargo::rustc-check-cfg=cfg(sonde_no_ebpf)");

    // Prefer the bpf-linker that `cargo xtask setup` built against the
    // nightly's own LLVM; fall back to whatever is on PATH.
    if let Some(bin) = cache_dir().map(|d| d.join("bpf-linker").join("bin")) {
        if bin.join("bpf-linker").exists() {
            let path = env::var_os("PATH").unwrap_or_default();
            let mut paths = vec![bin.clone()];
            paths.extend(env::split_paths(&path));
            // SAFETY: build scripts are single-threaded at this point.
            unsafe { env::set_var("PATH", env::join_paths(paths)?) };
            println!(
                "cargo:rerun-if-changed={}",
                bin.join("bpf-linker").display()
            );
        }
    }
    if !skip && which_bpf_linker().is_none() {
        return Err(anyhow!(
            "bpf-linker not found. The eBPF programs cannot be linked without it.\n\
             Fix: run `cargo xtask setup` (builds bpf-linker against the nightly's LLVM \
             and caches it in ~/.cache/sonde), or set AYA_BUILD_SKIP=1 for a check-only build."
        ));
    }

    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "sonde-ebpf")
        .ok_or_else(|| anyhow!("sonde-ebpf package not found in the workspace"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed. If the error mentions rust-src or build-std, \
         run `cargo xtask setup`",
    )
}

fn which_bpf_linker() -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|p| p.join("bpf-linker"))
        .find(|p| p.is_file())
}
