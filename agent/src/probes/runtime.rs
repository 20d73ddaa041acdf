//! What the probes cost: the kernel's own per-program run time and run
//! count, kept while `kernel.bpf_stats_enabled` is 1 (off by default: the
//! accounting itself costs about 20 ns per run). `/metrics` reports them as
//! `sonde_probe_run_seconds_total` and `sonde_probe_runs_total`, so the
//! cost per hooked event is their ratio.
use std::collections::HashMap;

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

impl ProgramIds {
    /// The run time of each of these programs that has run while stats were
    /// on (none when `kernel.bpf_stats_enabled` has stayed 0).
    pub fn runtime(&self) -> Vec<ProgramRuntime> {
        if self.0.is_empty() {
            return vec![];
        }
        let mut out: Vec<ProgramRuntime> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter_map(|info| {
                let program = self.0.get(&info.id())?.clone();
                let runs = info.run_count();
                (runs > 0).then(|| ProgramRuntime {
                    program,
                    run_time_ns: info.run_time().as_nanos() as u64,
                    runs,
                })
            })
            .collect();
        out.sort_by(|a, b| a.program.cmp(&b.program));
        out
    }
}
