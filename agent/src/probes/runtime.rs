//! What the probes cost: the kernel's own per-program run time and run
//! count, kept while `kernel.bpf_stats_enabled` is 1 (off by default: the
//! accounting itself costs about 20 ns per run). `/metrics` reports them as
//! `sonde_probe_run_seconds_total` and `sonde_probe_runs_total`, so the
//! cost per hooked event is their ratio.
use std::collections::{BTreeMap, HashMap};

use aya::programs::{ProgramError, ProgramInfo};

/// The agent's loaded programs: kernel program id -> program name.
#[derive(Debug, Clone, Default)]
pub struct ProgramIds(pub HashMap<u32, String>);

/// One program's accumulated cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramRuntime {
    pub program: String,
    pub run_time_ns: u64,
    pub runs: u64,
}

/// Run time (ns) and runs of the loaded programs that `pick` names, summed
/// per name. Shared by `/metrics` (the agent's own programs, by id) and
/// `sonde probe-cost` (sonde's programs, by name).
pub fn sample(
    pick: impl Fn(&ProgramInfo) -> Option<String>,
) -> Result<BTreeMap<String, (u64, u64)>, ProgramError> {
    let mut s = BTreeMap::new();
    for p in aya::programs::loaded_programs() {
        let p = p?;
        let Some(name) = pick(&p) else {
            continue;
        };
        let e: &mut (u64, u64) = s.entry(name).or_default();
        e.0 += p.run_time().as_nanos() as u64;
        e.1 += p.run_count();
    }
    Ok(s)
}

impl ProgramIds {
    /// The run time of each of these programs that has run while stats were
    /// on (none when `kernel.bpf_stats_enabled` has stayed 0).
    pub fn runtime(&self) -> Vec<ProgramRuntime> {
        if self.0.is_empty() {
            return vec![];
        }
        sample(|p| self.0.get(&p.id()).cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, (_, runs))| *runs > 0)
            .map(|(program, (run_time_ns, runs))| ProgramRuntime {
                program,
                run_time_ns,
                runs,
            })
            .collect()
    }
}
