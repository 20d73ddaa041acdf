//! libuv event loops (Node.js): each phase that runs callbacks after the
//! poll phase's starts a tick of its own (`agent-ebpf/src/tick.rs`,
//! `uv_phase`).
//!
//! The tick rule takes a write for the request whose input its thread read
//! last with nothing in between. libuv runs each ready socket's callback in
//! the poll phase (its read, then the JavaScript it wakes, then that
//! JavaScript's writes), so a callback's writes follow its own read. But
//! after the last of them it runs the check phase (`setImmediate`) and then
//! the timers, with no syscall in between: a handler resumed there wrote
//! after another request's read, and took that request for its parent. A
//! Node.js service whose handlers yield with `setImmediate` or a 0 ms timer
//! between their calls, measured outside this repository with 40 requests
//! and 8 in flight, had 59 to 68 of its 120 calls under another request.
//! With a tick at each of those phases, such a call has no read in its tick
//! and goes to the other rules (a root, when several requests are in
//! flight).
//!
//! `uv__run_check` and `uv__run_timers` are functions of their own in libuv
//! (`uv_run` calls them), found in the executable's symbol table: Node.js
//! links libuv statically and keeps its symbols. The pending queue and the
//! closing handles, run inline in `uv_run`, get no tick (a write callback
//! there that writes a call is not followed).
use std::path::Path;

use aya::programs::uprobe::UProbeAttachLocation;
use object::{Object, ObjectSection, ObjectSymbol};

use super::{uprobes::LinkSet, Probes};
use crate::stats::Stats;

/// The program, and the loop phases it goes on.
pub const PROGRAM: &str = "uv_phase";
pub const PHASES: [&str; 2] = ["uv__run_check", "uv__run_timers"];

/// The file offsets of [`PHASES`]' entries in an executable, if it defines
/// both (a libuv program with its symbols).
pub fn phases<'a>(elf: impl object::ReadRef<'a>) -> Option<[u64; 2]> {
    let file = object::File::parse(elf).ok()?;
    let mut found = [None; 2];
    for sym in file.symbols() {
        let Ok(name) = sym.name() else {
            continue;
        };
        let Some(i) = PHASES.iter().position(|p| *p == name) else {
            continue;
        };
        if !sym.is_definition() || found[i].is_some() {
            continue;
        }
        let section = file.section_by_index(sym.section_index()?).ok()?;
        let (offset, _) = section.file_range()?;
        found[i] = sym
            .address()
            .checked_sub(section.address())
            .and_then(|d| d.checked_add(offset));
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    Some([found[0]?, found[1]?])
}

/// Attaches the phase probes to executable `target` (named `name` in the
/// logs) if it is a libuv program; both or none. Counted in
/// `sonde_libuv_binaries_total`.
pub fn on_executable<'a>(
    pid: u32,
    name: &str,
    target: &Path,
    elf: impl object::ReadRef<'a>,
    probes: &mut Probes,
    stats: &Stats,
) {
    let Some(offsets) = phases(elf) else {
        return;
    };
    let mut links = LinkSet::default();
    let attached = offsets.iter().try_for_each(|&o| {
        links.attach(
            probes,
            PROGRAM,
            UProbeAttachLocation::AbsoluteOffset(o),
            target,
        )
    });
    match attached {
        Ok(()) => {
            // The links live as long as the program (the session).
            tracing::info!(pid, path = name, "libuv loop phases probed");
            Stats::inc(&stats.libuv_attached);
        }
        Err(e) => {
            tracing::warn!(pid, path = name, "libuv loop phases not probed (calls resumed by setImmediate or a timer stay to the other rules): {e}");
            links.undo(probes);
            Stats::inc(&stats.libuv_failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_both_phases_or_none() {
        // This test binary has no libuv; garbage is no ELF.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(phases(&me[..]), None);
        assert_eq!(phases(&b"garbage"[..]), None);
    }
}
