//! The eBPF toolchain: the nightly's rust-src (for `-Z build-std=core`) and
//! bpf-linker built from crates.io against the nightly's own libLLVM, so the
//! linker and rustc agree on the LLVM bitcode version.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{apt, run::sh};

/// bpf-linker release to build; it must offer an `llvm-<major>` feature for
/// the nightly's LLVM major.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Where built tools are cached: outside `target/` so `cargo clean` keeps
/// them. Keep in sync with agent/build.rs.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SONDE_CACHE_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("sonde");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache").join("sonde")
}

pub fn setup(with_apt: bool) -> Result<()> {
    ensure_nightly_rust_src()?;
    ensure_bpf_linker()?;
    if with_apt {
        apt::ensure(apt::TEST_PACKAGES)?;
        apt::ensure_python()?;
        crate::k8s_tools::ensure()?;
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn ensure_nightly_rust_src() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("rustup not found: install rustup (https://rustup.rs), it manages the nightly this build needs")?;
    if !installed.status.success() {
        eprintln!("xtask: installing the nightly toolchain (the eBPF target needs it)");
        sh(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
        .context("installing the nightly toolchain")?;
        return Ok(());
    }
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        eprintln!("xtask: adding rust-src to the nightly");
        sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
            .context("adding rust-src to the nightly")?;
    }
    Ok(())
}

/// The nightly's libLLVM shared object and its LLVM major version.
fn nightly_llvm() -> Result<(PathBuf, String)> {
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("`rustc +nightly -vV` printed no LLVM version")?
        .to_string();
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let so = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so"))
            })
        })
        .with_context(|| {
            format!(
                "no libLLVM shared object in {}: is the nightly complete?",
                lib.display()
            )
        })?;
    Ok((so, major))
}

pub fn bpf_linker_bin() -> PathBuf {
    cache_dir().join("bpf-linker").join("bin")
}

fn ensure_bpf_linker() -> Result<()> {
    let (libllvm, major) = nightly_llvm()?;
    let root = cache_dir().join("bpf-linker");
    let stamp = root.join("stamp");
    let want = format!(
        "bpf-linker {BPF_LINKER_VERSION} llvm-{major} {}\n",
        libllvm.display()
    );
    if root.join("bin/bpf-linker").exists()
        && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&want)
    {
        return Ok(());
    }
    // llvm-sys looks for `<prefix>/lib/libLLVM.so`; point it at the nightly's.
    let prefix = cache_dir().join("llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("symlinking {}", link.display()))?;
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (once; a few minutes)");
    sh(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .arg("--root")
        .arg(&root)
        .env("LLVM_PREFIX", &prefix))
    .with_context(|| {
        format!(
            "building bpf-linker failed. It needs the nightly's LLVM ({major}) to match one of its \
             llvm-* features; if the nightly moved to a newer LLVM, raise BPF_LINKER_VERSION in {}",
            file!()
        )
    })?;
    std::fs::write(&stamp, want)?;
    Ok(())
}
