//! The task that gives traced processes their user-space probes: the
//! goroutine probes on Go runtimes (`goruntime.rs`), the loop-phase probes
//! on libuv programs (`libuv.rs`) and the TLS plaintext probes on OpenSSL
//! (`tls.rs`); and that enters the threads of CPython
//! processes in the kernel's `PY_THREADS` (`python.rs`), again every
//! [`PYTHON_REFRESH`] for the threads they start later.
//!
//! The connection table names every process it sees for the first time
//! (and again after an exec). The pipeline names a process again when one
//! of its connections carries TLS records sonde cannot read: it may have
//! loaded its TLS library after it was first inspected (Python imports
//! `ssl` on first use), so its maps are read again, at most once per
//! [`RESCAN_EVERY`].
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use aya::programs::{
    uprobe::{UProbeAttachLocation, UProbeError, UProbeLinkId, UProbeScope},
    ProgramError, UProbe,
};
use tokio::sync::mpsc;

use super::{goruntime, gotls, libuv, python, tls, Probes};
use crate::stats::Stats;

/// Uprobes attached as one set, taken back together when the set cannot be
/// whole (the goroutine probes, a TLS library's hooks, or one entry and
/// return pair). Kept, the links live as long as their programs: dropping
/// the session detaches everything at once.
#[derive(Default)]
pub struct LinkSet(Vec<(&'static str, UProbeLinkId)>);

/// Why one uprobe did not attach.
#[derive(Debug)]
pub enum LinkError {
    /// The program is not in the eBPF object (a build defect).
    Missing(String),
    Load(&'static str, ProgramError),
    Attach(ProgramError),
}

impl LinkError {
    /// The target file does not define the symbol (not there, or stripped).
    pub fn no_symbol(&self) -> bool {
        matches!(
            self,
            LinkError::Attach(ProgramError::UProbeError(UProbeError::SymbolError { .. }))
        )
    }
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Missing(e) => f.write_str(e),
            LinkError::Load(program, e) => write!(f, "{program}: load: {e}"),
            LinkError::Attach(e) => {
                write!(f, "{e}")?;
                match std::error::Error::source(e) {
                    Some(cause) => write!(f, ": {cause}"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl LinkSet {
    /// Loads `program` (once) and attaches it at `at` in the file `target`.
    pub fn attach(
        &mut self,
        probes: &mut Probes,
        program: &'static str,
        at: UProbeAttachLocation<'_>,
        target: &std::path::Path,
    ) -> Result<(), LinkError> {
        let p: &mut UProbe = probes.program(program).map_err(LinkError::Missing)?;
        if p.fd().is_err() {
            p.load().map_err(|e| LinkError::Load(program, e))?;
        }
        let link = p
            .attach(at, target, UProbeScope::AllProcesses)
            .map_err(LinkError::Attach)?;
        self.0.push((program, link));
        Ok(())
    }

    /// Keeps `other`'s links as part of this set.
    pub fn extend(&mut self, other: LinkSet) {
        self.0.extend(other.0);
    }

    /// Detaches every link of the set.
    pub fn undo(self, probes: &mut Probes) {
        for (program, link) in self.0 {
            if let Ok(p) = probes.program::<UProbe>(program) {
                let _ = p.detach(link);
            }
        }
    }
}

/// How often the threads of followed Python processes are walked again
/// (threads started since are entered; until then their calls nest by the
/// thread rules).
pub const PYTHON_REFRESH: Duration = Duration::from_secs(2);

/// Bound on Python processes followed.
const MAX_PYTHON: usize = 4096;

/// The least time between two inspections of one process's libraries.
pub const RESCAN_EVERY: Duration = Duration::from_secs(5);

/// Processes remembered for the rescan limit.
const MAX_RESCANNED: usize = 4096;

/// The TLS library files found so far, and what became of each (status
/// and `/metrics`).
pub type Libraries = Arc<Mutex<Vec<tls::Library>>>;

/// Most library files listed (a node with more has them counted only).
pub const MAX_LIBRARIES: usize = 256;

pub struct Inspector {
    pub probes: Weak<Mutex<Probes>>,
    pub stats: Arc<Stats>,
    pub go: bool,
    /// The goroutine probes at entries, not calls (`ProbeConfig`).
    pub go_at_entries: bool,
    pub python: bool,
    /// OpenSSL's probes at the public entries (`ProbeConfig`).
    pub tls_at_entries: bool,
    pub tls: bool,
    /// The loop-phase probes on libuv programs (`libuv.rs`).
    pub libuv: bool,
    pub libraries: Libraries,
    finder: python::Finder,
    /// Followed Python processes -> the threads entered so far.
    python_threads: HashMap<u32, std::collections::HashSet<u32>>,
    /// Interpreter files (device, inode) whose context copies are probed,
    /// with the links (kept: dropped, they would detach).
    python_files: HashMap<(u64, u64), Option<LinkSet>>,
    exes: tls::Seen,
    shared: tls::Seen,
    rescanned: HashMap<u32, Instant>,
}

impl Inspector {
    pub fn new(
        probes: Weak<Mutex<Probes>>,
        stats: Arc<Stats>,
        go: bool,
        python: bool,
        tls: bool,
        libraries: Libraries,
    ) -> Inspector {
        Inspector {
            probes,
            stats,
            go,
            go_at_entries: false,
            python,
            tls_at_entries: false,
            tls,
            libuv: false,
            libraries,
            finder: python::Finder::default(),
            python_threads: HashMap::new(),
            python_files: HashMap::new(),
            exes: Default::default(),
            shared: Default::default(),
            rescanned: HashMap::new(),
        }
    }

    /// Inspects a new process: its executable, then its shared libraries.
    /// False once the probes are gone.
    fn new_process(&mut self, pid: u32) -> bool {
        let Some(probes) = self.probes.upgrade() else {
            return false;
        };
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let inside = std::fs::read_link(&exe).map(|l| l.to_string_lossy().into_owned());
        if self.go || self.tls || self.libuv {
            if let Some((file, elf)) = self.exes.open_first_time(&exe) {
                let mut p = probes.lock().unwrap_or_else(|e| e.into_inner());
                let target = tls::fd_path(&file);
                let name = target.to_string_lossy().into_owned();
                let go = self.go
                    && goruntime::on_executable(
                        pid,
                        &name,
                        &elf,
                        self.go_at_entries,
                        &mut p,
                        &self.stats,
                    );
                let inside = inside.unwrap_or(name.clone());
                // After the goroutine probes (not delayed by this scan of the
                // symbol table), and not on a Go program (no libuv).
                if self.libuv && !go {
                    libuv::on_executable(pid, &inside, &target, &elf, &mut p, &self.stats);
                }
                // Go's crypto/tls needs the goroutine probes: its calls are
                // keyed by goroutine.
                if go && self.tls {
                    let lib = match gotls::attach(&mut p, &name, &elf) {
                        Ok(None) => None,
                        Ok(Some(hooks)) => {
                            tracing::info!(
                                pid,
                                path = inside,
                                hooks,
                                "Go crypto/tls probes attached"
                            );
                            Some(("attached", hooks))
                        }
                        Err(e) => {
                            tracing::warn!(
                                pid,
                                path = inside,
                                "Go crypto/tls probes not attached: {e}"
                            );
                            Some(("failed", 0))
                        }
                    };
                    if let Some((outcome, hooks)) = lib {
                        self.found(tls::Library {
                            path: inside.clone(),
                            kind: tls::Kind::Go,
                            outcome,
                            hooks,
                            inner: 0,
                        });
                    }
                } else if self.tls {
                    self.openssl_file(pid, inside, &target, tls::Kind::Static, &elf, &mut p);
                }
            }
        }
        self.libraries_of(pid, &probes);
        if self.python {
            self.python_threads_of(pid, &probes, true);
        }
        true
    }

    /// Enters the threads of Python process `pid` not entered yet (`fresh`:
    /// a process seen for the first time, or again after an exec).
    fn python_threads_of(&mut self, pid: u32, probes: &Arc<Mutex<Probes>>, fresh: bool) {
        // Announced (logged, counted) once its copies are probed and its
        // threads entered: a test, or a user, that waits for the count
        // then sees every call's task from the first request.
        let (threads, interpreter, announce) = match self.finder.threads_of(pid) {
            Ok(f) => {
                let announce = (fresh || !self.python_threads.contains_key(&pid))
                    .then_some((f.minor, f.threads.len()));
                (f.threads, f.interpreter, announce)
            }
            Err(python::Skip::NotPython) => {
                self.python_threads.remove(&pid);
                return;
            }
            Err(why) => {
                if fresh {
                    tracing::info!(pid, ?why, "Python process left to the thread rules");
                    Stats::inc(&self.stats.python_unsupported);
                }
                self.python_threads.remove(&pid);
                return;
            }
        };
        if fresh {
            self.python_threads.remove(&pid);
            self.python_copies(pid, interpreter, probes);
        }
        if self.python_threads.len() < MAX_PYTHON || self.python_threads.contains_key(&pid) {
            let known = self.python_threads.entry(pid).or_default();
            let new: Vec<python::PyThread> = threads
                .into_iter()
                .filter(|t| !known.contains(&t.tid))
                .collect();
            if !new.is_empty() {
                let mut p = probes.lock().unwrap_or_else(|e| e.into_inner());
                match p.enter_python_threads(pid, &new) {
                    // A thread refused (a full map) is offered again at the
                    // next walk.
                    Ok(entered) => known.extend(entered),
                    Err(e) => tracing::warn!(pid, "Python threads not entered: {e}"),
                }
            }
        }
        if let Some((minor, threads)) = announce {
            tracing::info!(pid, version = %format!("3.{minor}"), threads, "Python tasks followed");
            Stats::inc(&self.stats.python_followed);
        }
    }

    /// Probes the context copies of Python process `pid`'s interpreter
    /// file, once per file: a child task's calls then name the task that
    /// created it (`agent-ebpf/src/python.rs`). Without them (a build that
    /// does not export `PyContext_CopyCurrent`), those calls stay roots.
    fn python_copies(
        &mut self,
        pid: u32,
        python::Interpreter { file, key }: python::Interpreter,
        probes: &Arc<Mutex<Probes>>,
    ) {
        if self.python_files.contains_key(&key) {
            return;
        }
        if self.python_files.len() >= MAX_LIBRARIES {
            tracing::debug!(
                pid,
                "Python context copies not probed: {MAX_LIBRARIES} interpreter files are"
            );
            return;
        }
        let mut p = probes.lock().unwrap_or_else(|e| e.into_inner());
        let mut links = LinkSet::default();
        let at = UProbeAttachLocation::Symbol("PyContext_CopyCurrent");
        let attached = links.attach(&mut p, python::COPY_RETURN, at, &file);
        let links = match attached {
            Ok(()) => {
                tracing::info!(pid, file = %file.display(), "Python context copies probed");
                Some(links)
            }
            Err(e) => {
                tracing::warn!(pid, file = %file.display(), "Python context copies not probed (child tasks' calls stay roots): {e}");
                links.undo(&mut p);
                None
            }
        };
        self.python_files.insert(key, links);
    }

    /// Walks the followed Python processes again for new threads; forgets
    /// those that are gone. False once the probes are gone.
    fn refresh_python(&mut self) -> bool {
        let Some(probes) = self.probes.upgrade() else {
            return false;
        };
        let pids: Vec<u32> = self.python_threads.keys().copied().collect();
        for pid in pids {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                self.python_threads.remove(&pid);
                continue;
            }
            self.python_threads_of(pid, &probes, false);
        }
        true
    }

    /// Inspects a process's shared libraries again (it showed TLS records
    /// sonde cannot read), unless it was inspected within `RESCAN_EVERY`.
    fn rescan(&mut self, pid: u32) -> bool {
        let Some(probes) = self.probes.upgrade() else {
            return false;
        };
        let now = Instant::now();
        if self
            .rescanned
            .get(&pid)
            .is_some_and(|t| now.duration_since(*t) < RESCAN_EVERY)
        {
            return true;
        }
        if self.rescanned.len() >= MAX_RESCANNED {
            self.rescanned
                .retain(|_, t| now.duration_since(*t) < RESCAN_EVERY);
        }
        self.rescanned.insert(pid, now);
        self.libraries_of(pid, &probes);
        true
    }

    fn libraries_of(&mut self, pid: u32, probes: &Arc<Mutex<Probes>>) {
        if !self.tls {
            return;
        }
        for (path, open) in tls::shared_libraries(pid) {
            // Held open while attaching, and named through our own fd: the
            // process (a short-lived client) may be gone by then, and with
            // it its `/proc/<pid>/root`.
            let Some((file, elf)) = self.shared.open_first_time(&open) else {
                continue;
            };
            let mut p = probes.lock().unwrap_or_else(|e| e.into_inner());
            let target = tls::fd_path(&file);
            self.openssl_file(pid, path, &target, tls::Kind::Shared, &elf, &mut p);
        }
    }

    /// Attaches the OpenSSL hooks to one file (`tls::on_file`) and keeps
    /// what became of it.
    fn openssl_file<'a>(
        &mut self,
        pid: u32,
        path: String,
        target: &std::path::Path,
        kind: tls::Kind,
        elf: impl object::ReadRef<'a>,
        p: &mut Probes,
    ) {
        if let Some(lib) = tls::on_file(pid, path, target, kind, elf, self.tls_at_entries, p) {
            self.found(lib);
        }
    }

    fn found(&mut self, lib: tls::Library) {
        let counter = match lib.outcome {
            "attached" => &self.stats.tls_attached,
            "no_symbols" => &self.stats.tls_no_symbols,
            _ => &self.stats.tls_failed,
        };
        Stats::inc(counter);
        let mut list = self.libraries.lock().unwrap_or_else(|e| e.into_inner());
        if list.len() < MAX_LIBRARIES {
            list.push(lib);
        }
    }
}

/// First the TLS libraries of every running process `traced` accepts (so
/// a server that opens no new socket before its first TLS request is
/// covered); then the processes named on `new` (new processes) and
/// `rescan` (TLS records seen that sonde cannot read), until both channels
/// close or the probes are gone. File reads and attachments run on the
/// blocking pool.
pub async fn run(
    mut new: mpsc::Receiver<u32>,
    mut rescan: mpsc::Receiver<u32>,
    mut inspector: Inspector,
    traced: impl Fn(u32) -> bool + Send + 'static,
) {
    if inspector.tls {
        let started = tokio::task::spawn_blocking(move || {
            let pids: Vec<u32> = std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|&pid| traced(pid))
                .collect();
            for pid in pids {
                // Held per process only: a session dropped meanwhile ends
                // the scan (and frees its probes) at once.
                let probes = inspector.probes.upgrade()?;
                inspector.libraries_of(pid, &probes);
            }
            Some(inspector)
        })
        .await;
        match started {
            Ok(Some(i)) => inspector = i,
            _ => return,
        }
    }
    let mut refresh = tokio::time::interval(PYTHON_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let work = tokio::select! {
            Some(pid) = new.recv() => Work::New(pid),
            Some(pid) = rescan.recv() => Work::Rescan(pid),
            _ = refresh.tick(), if !inspector.python_threads.is_empty() => Work::RefreshPython,
            else => return,
        };
        let done = tokio::task::spawn_blocking(move || {
            let alive = match work {
                Work::New(pid) => inspector.new_process(pid),
                Work::Rescan(pid) => inspector.rescan(pid),
                Work::RefreshPython => inspector.refresh_python(),
            };
            (alive, inspector)
        })
        .await;
        match done {
            Ok((true, i)) => inspector = i,
            _ => return,
        }
    }
}

enum Work {
    New(u32),
    Rescan(u32),
    RefreshPython,
}
