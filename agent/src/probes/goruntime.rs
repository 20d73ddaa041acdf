//! Go runtimes: attaches the goroutine uprobes (`agent-ebpf/src/goroutine.rs`)
//! to the Go binaries of traced processes, once per file.
//!
//! `uprobes.rs` hands each new process's executable here (read through
//! `/proc/<pid>/exe`, which also reaches into a container's mount
//! namespace); if it is a Go program built with the register ABI on amd64,
//! uprobes go on its runtime. Uprobes are per file, so every process running the same
//! binary is covered by one attachment; the kernel's pid and cgroup
//! filters still decide which of them produce records.
//!
//! The probes go on a call inside a runtime function rather than on its
//! entry, found by decoding the function's code (`code.rs`). A uprobe on a
//! call is emulated by the kernel; one on a Go function's entry (its stack
//! check, `CMPQ 0x10(R14), SP`) is single-stepped, a second trap: on this
//! project's VM, a Go service under wrk served about 2.5 times the
//! requests once the probes moved to calls (README, "The goroutine probes
//! at calls").
//! - the goroutine a thread now runs at `runtime.execute`'s call of
//!   `casgstatus(gp, ..)` (`go_execute`, as at its entry: `gp` in RAX);
//! - new goroutines at `runtime.newproc`'s call of `runqput` (`go_spawned`),
//!   where the entries of `newproc1` and `runqput` would take two traps per
//!   new goroutine plus one at every other run-queue insert (in a Go HTTP
//!   service, about three times as many as new goroutines);
//! - hand-offs at `runtime.send`'s call of `goready` (`go_send_ready`),
//!   where the receiver is in a register: at `send`'s entry it must be read
//!   from the program's memory.
//!
//! Where the code does not have that shape (a call not found, or found
//! twice), the entry probes take over: the same evidence, at more cost.
//!
//! Two sets more, each attached where all its sites are found, and not
//! needed for the rest (without one, the hand-offs it follows are not
//! seen, and their calls stay roots; `agent-ebpf/src/goroutine.rs`):
//! - a hand-off whose receiver came after its sender had blocked:
//!   `runtime.chansend`'s calls of `gopark` (`go_send_park`) and
//!   `runtime.recv` after its stack check (`go_recv`);
//! - a write whose goroutine stopped before its hand-off without waiting
//!   for anything: the calls of `casgstatus` in `runtime.exitsyscall0` (a
//!   syscall that outlasted its P) and `runtime.goschedImpl` (preempted or
//!   yielding) (`go_paused`).
use std::path::Path;

use aya::programs::uprobe::UProbeAttachLocation;
use object::{Object, ObjectSection, ObjectSymbol};

use super::{
    code::{call_site, stack_check},
    uprobes::LinkSet,
    Probes,
};
use crate::stats::Stats;

/// A probe on the one call of `callee` inside `function`, and the entry
/// probes that tell the same where that call is not found.
struct CallSite {
    program: &'static str,
    function: &'static str,
    callee: &'static str,
    fallback: &'static [(&'static str, &'static str)],
}

/// How many: `go_execute`, `go_spawned`, `go_send_ready`.
const SITES: usize = 3;

const CALL_SITES: [CallSite; SITES] = [
    // `casgstatus(gp, _Grunnable, _Grunning)`, after `gp` is made the
    // thread's `curg` and before it runs: the goroutine switch.
    CallSite {
        program: "go_execute",
        function: "runtime.execute",
        callee: "runtime.casgstatus",
        fallback: &[("go_execute", "runtime.execute")],
    },
    // `newg := newproc1(..); runqput(pp, newg, true)` in newproc's closure,
    // Go 1.17 to this day.
    CallSite {
        program: "go_spawned",
        function: "runtime.newproc.func1",
        callee: "runtime.runqput",
        fallback: &[
            ("go_newproc1", "runtime.newproc1"),
            ("go_runqput", "runtime.runqput"),
        ],
    },
    // `goready(gp, skip+1)`, send's last call.
    CallSite {
        program: "go_send_ready",
        function: "runtime.send",
        callee: "runtime.goready",
        fallback: &[("go_send", "runtime.send")],
    },
];

/// Every goroutine program, for `sonde probe-cost`.
pub const GO_PROBES: &[&str] = &[
    "go_execute",
    "go_spawned",
    "go_send_ready",
    "go_newproc1",
    "go_runqput",
    "go_send",
    "go_send_park",
    "go_recv",
    "go_paused",
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
/// the outcome. Whether they are attached. `at_entries`: at the functions'
/// entries even where their calls are found.
pub(super) fn on_executable<'a>(
    pid: u32,
    exe: &str,
    elf: impl object::ReadRef<'a>,
    at_entries: bool,
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
    let sites = if at_entries {
        [None; SITES]
    } else {
        call_sites(elf)
    };
    match attach(p, exe, &sites) {
        Ok(()) => {
            let at_calls = sites.iter().filter(|s| s.is_some()).count();
            let late_receivers = attach_late_receivers(p, exe, elf);
            let pauses = attach_pauses(p, exe, elf);
            tracing::info!(pid, %version, at_calls, late_receivers, pauses, "goroutine probes attached");
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

/// For each of `CALL_SITES`, the offset of its call in its function, if
/// the binary has both symbols and the function makes exactly one such
/// call.
pub fn call_sites<'a>(elf: impl object::ReadRef<'a>) -> [Option<u64>; SITES] {
    let Ok(file) = object::File::parse(elf) else {
        return [None; SITES];
    };
    let names: Vec<&str> = CALL_SITES
        .iter()
        .flat_map(|s| [s.function, s.callee])
        .collect();
    let found = functions(&file, &names);
    std::array::from_fn(|i| {
        let (function, callee) = (found[2 * i]?, found[2 * i + 1]?);
        call_site(code(&file, function)?, function.1, callee.1)
    })
}

/// A function symbol: its section, address and size.
type Function = (object::SectionIndex, u64, u64);

/// The functions of `file` named `names`, in their order (None: not
/// defined there).
fn functions<'d, R: object::ReadRef<'d>>(
    file: &object::File<'d, R>,
    names: &[&str],
) -> Vec<Option<Function>> {
    let mut out = vec![None; names.len()];
    for sym in file.symbols().filter(|s| s.is_definition()) {
        let Ok(name) = sym.name() else { continue };
        for (o, n) in out.iter_mut().zip(names) {
            if name == *n {
                *o = sym.section_index().map(|s| (s, sym.address(), sym.size()));
            }
        }
    }
    out
}

/// A function's bytes alone: a file read through a cache reads no more of
/// its section.
fn code<'d, R: object::ReadRef<'d>>(
    file: &object::File<'d, R>,
    (section, at, size): Function,
) -> Option<&'d [u8]> {
    let section = file.section_by_index(section).ok()?;
    section.data_range(at, size).ok().flatten()
}

/// Where `go_execute` goes in a Go executable: its call site when found,
/// else the entry of `runtime.execute` (`sonde probe-cost` puts its empty
/// uprobe there too, to time the same trap).
pub fn execute_location<'a>(elf: impl object::ReadRef<'a>) -> UProbeAttachLocation<'static> {
    let site = &CALL_SITES[0];
    match call_sites(elf)[0] {
        Some(off) => UProbeAttachLocation::SymbolOffset(site.function, off),
        None => UProbeAttachLocation::Symbol(site.function),
    }
}

/// Attaches every goroutine probe to the executable at `exe`, or none:
/// half a set would mislead (a goroutine without its hand-offs). Each of
/// `CALL_SITES` at its call when `sites` has its offset, else by its
/// fallback.
fn attach(p: &mut Probes, exe: &str, sites: &[Option<u64>; SITES]) -> Result<(), AttachError> {
    let mut at = vec![];
    for (site, off) in CALL_SITES.iter().zip(sites) {
        match off {
            Some(off) => at.push((
                site.program,
                site.function,
                UProbeAttachLocation::SymbolOffset(site.function, *off),
            )),
            None => {
                at.extend(site.fallback.iter().map(|&(program, symbol)| {
                    (program, symbol, UProbeAttachLocation::Symbol(symbol))
                }))
            }
        }
    }
    let mut set = LinkSet::default();
    for (program, symbol, location) in at {
        if let Err(e) = set.attach(p, program, location, Path::new(exe)) {
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

/// Where the late receiver's pair goes in a Go executable: every call of
/// `runtime.gopark` in `runtime.chansend` (a blocking send parks there,
/// and a send on a nil channel, which the probe tells apart), and
/// `runtime.recv`'s stack check (its entry if it has none). None where a
/// symbol or the calls are missing.
pub fn late_receiver_sites<'a>(elf: impl object::ReadRef<'a>) -> Option<(Vec<u64>, u64)> {
    let file = object::File::parse(elf).ok()?;
    let found = functions(
        &file,
        &["runtime.chansend", "runtime.gopark", "runtime.recv"],
    );
    let (chansend, gopark, recv) = (found[0]?, found[1]?, found[2]?);
    let parks = super::code::call_sites(code(&file, chansend)?, chansend.1, gopark.1)?;
    let recv = stack_check(code(&file, recv)?).unwrap_or(0);
    (!parks.is_empty()).then_some((parks, recv))
}

/// Attaches the late receiver's pair to the executable at `exe`, both or
/// neither, where their sites are found. Whether they are attached; a
/// failure is logged, and the other goroutine probes stand without them.
fn attach_late_receivers<'a>(p: &mut Probes, exe: &str, elf: impl object::ReadRef<'a>) -> bool {
    let Some((parks, recv)) = late_receiver_sites(elf) else {
        return false;
    };
    let sites = parks
        .iter()
        .map(|&off| ("go_send_park", "runtime.chansend", off))
        .chain([("go_recv", "runtime.recv", recv)]);
    attach_optional(p, exe, sites, "late receivers' hand-offs")
}

/// Attaches each (program, function, offset) of `sites` to the executable
/// at `exe`, all or none. Whether they are; a failure is logged (`what`
/// names what goes unfollowed), and the other goroutine probes stand.
fn attach_optional(
    p: &mut Probes,
    exe: &str,
    sites: impl IntoIterator<Item = (&'static str, &'static str, u64)>,
    what: &str,
) -> bool {
    let mut set = LinkSet::default();
    let target = Path::new(exe);
    let attached = sites.into_iter().try_for_each(|(program, function, off)| {
        let at = UProbeAttachLocation::SymbolOffset(function, off);
        set.attach(p, program, at, target)
    });
    match attached {
        Ok(()) => true,
        Err(e) => {
            set.undo(p);
            tracing::warn!(exe, "{what} not followed: {e}");
            false
        }
    }
}

/// The functions whose one call of `runtime.casgstatus` puts a goroutine
/// back on a run queue without waiting (`go_paused`).
const PAUSES: [&str; 2] = ["runtime.exitsyscall0", "runtime.goschedImpl"];

/// Where `go_paused` goes in a Go executable: the one call of
/// `runtime.casgstatus` in each of `PAUSES`. None where one is missing.
pub fn pause_sites<'a>(elf: impl object::ReadRef<'a>) -> Option<[u64; 2]> {
    let file = object::File::parse(elf).ok()?;
    let found = functions(&file, &[PAUSES[0], PAUSES[1], "runtime.casgstatus"]);
    let casgstatus = found[2]?.1;
    let mut out = [0; 2];
    for (o, f) in out.iter_mut().zip(&found[..2]) {
        let f = (*f)?;
        *o = call_site(code(&file, f)?, f.1, casgstatus)?;
    }
    Some(out)
}

/// Attaches `go_paused` to the executable at `exe`, at both of `PAUSES` or
/// neither, where their calls are found. Whether it is attached; a failure
/// is logged, and the other goroutine probes stand without it.
fn attach_pauses<'a>(p: &mut Probes, exe: &str, elf: impl object::ReadRef<'a>) -> bool {
    let Some(sites) = pause_sites(elf) else {
        return false;
    };
    let sites = PAUSES
        .iter()
        .zip(sites)
        .map(|(function, off)| ("go_paused", *function, off));
    attach_optional(p, exe, sites, "paused goroutines' writes")
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
    fn no_site_outside_go() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(call_sites(me.as_slice()), [None; SITES]);
        assert_eq!(call_sites(&b"garbage"[..]), [None; SITES]);
        assert_eq!(late_receiver_sites(me.as_slice()), None);
        assert_eq!(late_receiver_sites(&b"garbage"[..]), None);
        assert_eq!(pause_sites(me.as_slice()), None);
        assert_eq!(pause_sites(&b"garbage"[..]), None);
    }

    #[test]
    fn this_test_binary_is_not_go() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(inspect(me.as_slice()), Binary::NotGo);
        assert_eq!(inspect(&b"garbage"[..]), Binary::NotGo);
    }
}
