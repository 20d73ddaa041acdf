//! Go runtimes: attaches the goroutine uprobes (`agent-ebpf/src/goroutine.rs`)
//! to the Go binaries of traced processes, once per file.
//!
//! `uprobes.rs` hands each new process's executable here (read through
//! `/proc/<pid>/exe`, which also reaches into a container's mount
//! namespace); if it is a Go program built with the register ABI on amd64,
//! four uprobes go on its runtime. Uprobes are per file, so every process running the same
//! binary is covered by one attachment; the kernel's pid and cgroup
//! filters still decide which of them produce records.
use std::path::Path;

use aya::programs::uprobe::UProbeAttachLocation;
use object::{Object, ObjectSection};

use super::{uprobes::LinkSet, Probes};
use crate::stats::Stats;

/// Program in the eBPF object -> runtime function it attaches to.
pub const GO_PROBES: &[(&str, &str)] = &[
    ("go_execute", "runtime.execute"),
    ("go_send", "runtime.send"),
    ("go_newproc1", "runtime.newproc1"),
    ("go_runqput", "runtime.runqput"),
];

/// What was found in an executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binary {
    NotGo,
    /// A Go program the probes understand, and its Go version.
    Go(String),
    /// A Go program they do not: why (a metric label).
    Unsupported(&'static str),
}

/// Reads an executable's Go build info (the `.go.buildinfo` section).
pub fn inspect<'a>(elf: impl object::ReadRef<'a>) -> Binary {
    let Ok(file) = object::File::parse(elf) else {
        return Binary::NotGo;
    };
    let Some(data) = file
        .section_by_name(".go.buildinfo")
        .and_then(|s| s.data().ok())
    else {
        return Binary::NotGo;
    };
    if file.architecture() != object::Architecture::X86_64 {
        return Binary::Unsupported("architecture");
    }
    match build_version(data) {
        Some(v) if register_abi(&v) => Binary::Go(v),
        // Go before 1.17 passes arguments on the stack; before 1.18 the
        // version is not inline (and 1.17 is long out of support).
        _ => Binary::Unsupported("go_version"),
    }
}

/// The Go version in a `.go.buildinfo` section of the inline format (Go
/// 1.18+): a 32-byte header (magic, pointer size, flags bit 2 = inline),
/// then the version as a uvarint-prefixed string.
fn build_version(data: &[u8]) -> Option<String> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    if !data.starts_with(MAGIC) || data.get(15)? & 2 == 0 {
        return None;
    }
    let rest = data.get(32..)?;
    let (mut len, mut used) = (0usize, 0usize);
    for (i, &b) in rest.iter().enumerate().take(4) {
        len |= ((b & 0x7f) as usize) << (7 * i);
        used = i + 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    let v = rest.get(used..used.checked_add(len)?)?;
    std::str::from_utf8(v).ok().map(str::to_string)
}

/// Whether version `go1.N[.x]` (or a devel/tip build) uses the register ABI.
fn register_abi(version: &str) -> bool {
    let Some(rest) = version.strip_prefix("go1.") else {
        return version.starts_with("devel");
    };
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    minor.parse::<u32>().is_ok_and(|m| m >= 17)
}

/// Attaches the goroutine probes to executable `exe` (of process `pid`),
/// whose bytes are `elf`, if it is a Go program they understand; counts
/// the outcome. Whether they are attached.
pub(super) fn on_executable<'a>(
    pid: u32,
    exe: &str,
    elf: impl object::ReadRef<'a>,
    p: &mut Probes,
    stats: &Stats,
) -> bool {
    let version = match inspect(elf) {
        Binary::NotGo => return false,
        Binary::Unsupported(why) => {
            tracing::info!(pid, why, "Go program left without goroutine probes");
            Stats::inc(&stats.go_unsupported);
            return false;
        }
        Binary::Go(v) => v,
    };
    match attach(p, exe) {
        Ok(()) => {
            tracing::info!(pid, %version, "goroutine probes attached");
            Stats::inc(&stats.go_attached);
            return true;
        }
        Err(AttachError::Stripped(sym)) => {
            tracing::info!(pid, %version, sym, "Go program has no runtime symbols (stripped): goroutines not followed");
            Stats::inc(&stats.go_stripped);
        }
        Err(AttachError::Kernel(e)) => {
            tracing::warn!(pid, %version, "goroutine probes not attached: {e}");
            Stats::inc(&stats.go_failed);
        }
    }
    false
}

enum AttachError {
    Stripped(&'static str),
    Kernel(String),
}

/// Attaches every goroutine probe to the executable at `exe`, or none:
/// half a set would mislead (a goroutine without its hand-offs).
fn attach(p: &mut Probes, exe: &str) -> Result<(), AttachError> {
    let mut set = LinkSet::default();
    for (program, symbol) in GO_PROBES {
        let at = UProbeAttachLocation::Symbol(symbol);
        if let Err(e) = set.attach(p, program, at, Path::new(exe)) {
            set.undo(p);
            return Err(if e.no_symbol() {
                AttachError::Stripped(symbol)
            } else {
                AttachError::Kernel(format!("{symbol}: {e}"))
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(version: &str) -> Vec<u8> {
        let mut d = b"\xff Go buildinf:".to_vec();
        d.extend_from_slice(&[8, 2]);
        d.resize(32, 0);
        d.push(version.len() as u8);
        d.extend_from_slice(version.as_bytes());
        d
    }

    #[test]
    fn reads_the_inline_build_version() {
        assert_eq!(
            build_version(&section("go1.19.8")).as_deref(),
            Some("go1.19.8")
        );
        let mut old = section("go1.16");
        old[15] = 0; // pointer format: no inline version
        assert_eq!(build_version(&old), None);
        // Truncated or lying lengths never panic.
        let full = section("go1.21.0");
        for n in 0..full.len() {
            let _ = build_version(&full[..n]);
        }
        let mut lying = section("go1.21.0");
        lying[32] = 0xff;
        assert_eq!(build_version(&lying), None);
    }

    #[test]
    fn register_abi_from_go_1_17() {
        assert!(register_abi("go1.17"));
        assert!(register_abi("go1.19.8"));
        assert!(register_abi("go1.23rc1"));
        assert!(!register_abi("go1.16.15"));
        assert!(!register_abi("go1.9"));
        assert!(register_abi("devel go1.24-abc"));
        assert!(!register_abi("gccgo"));
    }

    #[test]
    fn this_test_binary_is_not_go() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(inspect(me.as_slice()), Binary::NotGo);
        assert_eq!(inspect(&b"garbage"[..]), Binary::NotGo);
    }
}
