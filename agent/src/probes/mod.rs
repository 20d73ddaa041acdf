//! Stage 1: load the eBPF object, set its globals and filters, and attach
//! every tracepoint program, recording per probe whether it attached; where
//! the kernel has kprobes, also the io_uring path (its kprobes deferred
//! until io_uring is used).
pub mod code;
pub mod compat;
pub mod cost;
pub mod goruntime;
pub mod gotls;
pub mod inject;
pub mod layout;
pub mod libuv;
pub mod programs;
pub mod python;
pub mod runtime;
pub mod tls;
pub mod tracefs;
pub mod uprobes;

use std::path::PathBuf;

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{KProbe, TracePoint},
    Ebpf, EbpfLoader,
};
use sonde_common::{globals, map_names, stat, FdLayout, KernelLayout, ProcLayout, SockInfo};

use crate::caps;
use programs::{KernelIoHook, Need, KERNEL_IO, KERNEL_IO_COVERS, TRACEPOINTS};

/// The compiled eBPF object, embedded at build time by build.rs.
#[cfg(not(sonde_no_ebpf))]
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sonde"));
#[cfg(sonde_no_ebpf)]
pub static EBPF_OBJECT: &[u8] = &[];

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Payload bytes copied per syscall (0..=MAX_CAPTURE).
    pub capture_size: u32,
    /// Ring buffer size in bytes; rounded up to a power of two pages.
    pub ringbuf_bytes: u32,
    /// Queued bytes that trigger an immediate reader wakeup.
    pub wakeup_bytes: u64,
    /// Trace only these pids (and whatever user space adds later), if non-empty.
    pub pids: Vec<u32>,
    /// Trace only these cgroup v2 directories, if non-empty.
    pub cgroups: Vec<PathBuf>,
    /// Use kprobes where the kernel has them (the io_uring path).
    pub kprobes: bool,
    /// Attach the goroutine uprobes to the Go programs of traced processes.
    pub go_probes: bool,
    /// Put them at the runtime functions' entries even where their calls
    /// are found (`goruntime.rs`; the fallback's tests).
    pub go_at_entries: bool,
    /// OpenSSL's read and write probes at the public functions' entries
    /// even where the internal function they call is found (`tls.rs`).
    pub tls_at_entries: bool,
    /// Follow the contextvars context (the asyncio task) each thread of a
    /// traced CPython process runs in (`python.rs`).
    pub python_tasks: bool,
    /// Start a tick at the check and timer phases of traced libuv programs'
    /// loops (Node.js; `libuv.rs`).
    pub libuv_phases: bool,
    /// Attach the TLS plaintext uprobes to the OpenSSL libraries of traced
    /// processes.
    pub tls_probes: bool,
    /// Write `traceparent` into traced processes' HTTP/1.x requests.
    pub inject: Option<inject::InjectConfig>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            capture_size: sonde_common::DEFAULT_CAPTURE,
            ringbuf_bytes: default_ringbuf_bytes(),
            wakeup_bytes: 256 << 10,
            pids: vec![],
            cgroups: vec![],
            kprobes: true,
            go_probes: true,
            go_at_entries: false,
            tls_at_entries: false,
            python_tasks: true,
            libuv_phases: true,
            tls_probes: true,
            inject: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this sonde was built without its eBPF programs (AYA_BUILD_SKIP). \
         Fix: rebuild without AYA_BUILD_SKIP after `cargo xtask setup`"
    )]
    NotBuilt,
    #[error("cannot load eBPF programs: {0}")]
    Privilege(String),
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(
        "required probe {hook} could not attach: {reason}. Capture needs it; \
         run `sonde doctor` to see what this kernel supports"
    )]
    Required { hook: String, reason: String },
    #[error("loading the eBPF object failed: {0}. Run `sonde doctor` for a per-feature report")]
    Load(String),
    #[error(
        "--context-propagation traceparent cannot start: {0}. It needs CAP_NET_ADMIN \
         besides the tracing capabilities, cgroup v2, and Linux 5.10 or later; \
         `sonde doctor` says what this node lacks. Or run without --context-propagation"
    )]
    Inject(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachState {
    Attached,
    /// Not attempted: the kernel lacks the hook or its format differs.
    Skipped(String),
    /// Attempted and refused (verifier, permission).
    Failed(String),
    /// Loaded later, when it is needed (the io_uring kprobes).
    Deferred(String),
}

#[derive(Debug, Clone)]
pub struct ProbeStatus {
    pub hook: String,
    /// The program's name in the eBPF object.
    pub program: &'static str,
    pub need: Need,
    pub covers: &'static str,
    pub state: AttachState,
}

/// The loaded, attached probes. Dropping it detaches everything.
pub struct Probes {
    pub ebpf: Ebpf,
    pub report: Vec<ProbeStatus>,
    /// Why the io_uring (kprobe) path is off on this kernel, if it is.
    pub kernel_io_off: Option<String>,
    /// Why the kernel cannot find the tuple of a socket accepted without a
    /// sockaddr (no BTF), if it cannot: `/proc` resolves those then.
    pub accept_tuples_off: Option<String>,
}

/// Whether this kernel offers kprobes at all (none with CONFIG_KPROBES=n).
pub fn kprobes_present() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || tracefs::find().is_some_and(|r| r.join("kprobe_events").exists())
}

/// Why `program` cannot run on `kernel` (per `compat.rs`), if it cannot.
fn too_old(program: &str, kernel: Option<compat::Version>) -> Option<String> {
    let ((maj, min), why) = compat::of(program)?.minimum();
    kernel
        .is_some_and(|k| k < (maj, min))
        .then(|| format!("needs Linux >= {maj}.{min} ({why})"))
}

/// The layout the io_uring path needs, or why it stays off.
fn kernel_io_layout(btf: &Result<btf_rs::Btf, String>) -> Result<KernelLayout, String> {
    if !kprobes_present() {
        return Err("this kernel has no kprobes (CONFIG_KPROBES=n)".into());
    }
    let root = tracefs::find().ok_or("tracefs is not mounted")?;
    layout::resolve(btf.as_ref()?, &root)
}

fn set_memlock_unlimited() {
    // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!("raising RLIMIT_MEMLOCK failed; fine on kernels >= 5.11");
    }
}

/// Reads the cgroup v2 id (the directory's inode) of a cgroup path.
pub fn cgroup_id(path: &PathBuf) -> Result<u64, LoadError> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|e| LoadError::Config(format!("cgroup {}: {e}", path.display())))
}

/// The ring buffer's default size: 2 MiB per online CPU, from 4 to 64 MiB.
///
/// Every CPU writes records, so the rate the ring must absorb while its
/// reader is off the CPU grows with them. Measured on 2 CPUs with nginx at
/// saturation (128,000 records/s of up to 2 KiB): 4 MiB dropped nothing, and
/// 2 MiB dropped records. The kernel maps the ring's pages twice (so that a
/// record can be read across the wrap), so RSS counts it twice: a fixed
/// 8 MiB was 16 MB of a 2-CPU node's agent RSS and still small for 32 CPUs.
pub fn default_ringbuf_bytes() -> u32 {
    ringbuf_for_cpus(aya::util::online_cpus().map_or(1, |c| c.len()))
}

fn ringbuf_for_cpus(cpus: usize) -> u32 {
    const PER_CPU: u64 = 2 << 20;
    (cpus as u64 * PER_CPU).clamp(4 << 20, 64 << 20) as u32
}

/// Rounds a ring buffer size to what the kernel accepts: a power of two,
/// at least one page.
pub fn ringbuf_size(requested: u32) -> u32 {
    let page = 4096u32;
    requested
        .max(page)
        .checked_next_power_of_two()
        .unwrap_or(1 << 31)
}

impl Probes {
    /// Loads the object with `cfg` and attaches every program of the table.
    pub fn load(cfg: &ProbeConfig) -> Result<Probes, LoadError> {
        let mut probes = Self::load_object(cfg)?;
        probes.attach_all()?;
        probes.check_required()?;
        if let Some(i) = &cfg.inject {
            inject::attach(&mut probes, i, &cfg.cgroups).map_err(LoadError::Inject)?;
        }
        Ok(probes)
    }

    /// Loads the object and fills the filter maps, attaching nothing.
    pub fn load_object(cfg: &ProbeConfig) -> Result<Probes, LoadError> {
        if EBPF_OBJECT.is_empty() {
            return Err(LoadError::NotBuilt);
        }
        if cfg.capture_size as usize > sonde_common::MAX_CAPTURE {
            return Err(LoadError::Config(format!(
                "capture size {} exceeds the maximum of {} bytes",
                cfg.capture_size,
                sonde_common::MAX_CAPTURE
            )));
        }
        if let Some(why) = caps::missing_for_tracing(caps::effective()) {
            return Err(LoadError::Privilege(why));
        }
        set_memlock_unlimited();
        let self_tgid = std::process::id();
        let filter_pids = u8::from(!cfg.pids.is_empty());
        let filter_cgroups = u8::from(!cfg.cgroups.is_empty());
        let cgroup_ids = cfg
            .cgroups
            .iter()
            .map(cgroup_id)
            .collect::<Result<Vec<_>, _>>()?;
        // Parsed once for both layouts (tens of milliseconds).
        let btf = layout::kernel_btf(std::path::Path::new(layout::VMLINUX_BTF));
        let _ = tracefs::ensure_mounted(); // attach_all reports it if this failed
        let layout = if cfg.kprobes {
            kernel_io_layout(&btf)
        } else {
            Err("kprobes turned off (--no-kprobes)".into())
        };
        let (layout, kernel_io_off) = match layout {
            Ok(l) => (l, None),
            Err(why) => (KernelLayout::default(), Some(why)),
        };
        let (fd_layout, accept_tuples_off) = match btf
            .as_ref()
            .map_err(Clone::clone)
            .and_then(layout::fd_layout)
        {
            Ok(l) => (l, None),
            Err(why) => (FdLayout::default(), Some(why)),
        };
        let proc_layout = btf
            .as_ref()
            .map_err(Clone::clone)
            .and_then(layout::proc_layout)
            .unwrap_or_else(|why| {
                tracing::info!(
                    "a process that exits before its first network act is read from /proc keeps only its command name: {why}"
                );
                ProcLayout::default()
            });
        drop(btf);
        if let Some(why) = &accept_tuples_off {
            tracing::info!(
                "sockets accepted without a sockaddr (libuv) are resolved through /proc, which a busy agent can reach after they closed: {why}"
            );
        }
        let inject_on = u8::from(cfg.inject.is_some());
        let omit_unsampled = u8::from(cfg.inject.as_ref().is_some_and(|i| i.omit_unsampled));
        let exclusions = u8::from(
            cfg.inject
                .as_ref()
                .is_some_and(|i| !i.exclude_processes.is_empty() || !i.exclude_cgroups.is_empty()),
        );
        let sampling = cfg
            .inject
            .as_ref()
            .map_or_else(Default::default, |i| i.sampling);
        let mut ebpf = EbpfLoader::new()
            .override_global(globals::INJECT, &inject_on, true)
            .override_global(globals::INJECT_OMIT_UNSAMPLED, &omit_unsampled, true)
            .override_global(globals::INJECT_EXCLUSIONS, &exclusions, true)
            .override_global(globals::SAMPLING, &sampling, true)
            .override_global(globals::SELF_TGID, &self_tgid, true)
            .override_global(globals::CAPTURE_SIZE, &cfg.capture_size, true)
            .override_global(globals::FILTER_PIDS, &filter_pids, true)
            .override_global(globals::FILTER_CGROUPS, &filter_cgroups, true)
            .override_global(globals::WAKEUP_BYTES, &cfg.wakeup_bytes, true)
            .override_global(globals::KERNEL_LAYOUT, &layout, true)
            .override_global(globals::FD_LAYOUT, &fd_layout, true)
            .override_global(globals::PROC_LAYOUT, &proc_layout, true)
            .map_max_entries(map_names::EVENTS, ringbuf_size(cfg.ringbuf_bytes))
            .load(EBPF_OBJECT)
            .map_err(|e| LoadError::Load(format!("{e:#}")))?;
        // Parsed into the loader's own structures: its pages are not read again.
        if let Err(why) = crate::memory::drop_static_pages(EBPF_OBJECT) {
            tracing::debug!(%why, "the eBPF object's pages stay resident");
        }
        {
            let mut pids: BpfHashMap<_, u32, u8> =
                BpfHashMap::try_from(ebpf.map_mut(map_names::PID_FILTER).expect("PID_FILTER"))
                    .map_err(|e| LoadError::Load(e.to_string()))?;
            for pid in &cfg.pids {
                pids.insert(pid, 1, 0)
                    .map_err(|e| LoadError::Load(e.to_string()))?;
            }
        }
        {
            let mut cgs: BpfHashMap<_, u64, u8> = BpfHashMap::try_from(
                ebpf.map_mut(map_names::CGROUP_FILTER)
                    .expect("CGROUP_FILTER"),
            )
            .map_err(|e| LoadError::Load(e.to_string()))?;
            for id in &cgroup_ids {
                cgs.insert(id, 1, 0)
                    .map_err(|e| LoadError::Load(e.to_string()))?;
            }
        }
        Ok(Probes {
            ebpf,
            report: vec![],
            kernel_io_off,
            accept_tuples_off,
        })
    }

    /// Attaches every tracepoint of the table, skipping what this kernel
    /// lacks, and records the outcome of each in `report`.
    pub fn attach_all(&mut self) -> Result<(), LoadError> {
        let root = tracefs::ensure_mounted()?;
        let kernel = compat::running();
        for spec in TRACEPOINTS {
            let hook = format!("tracepoint/{}/{}", spec.category, spec.name);
            let state = if let Some(why) = too_old(spec.program, kernel) {
                AttachState::Skipped(why)
            } else if !tracefs::has_tracepoint(&root, spec.category, spec.name) {
                AttachState::Skipped("tracepoint not present on this kernel".into())
            } else if let Some(reason) = self.layout_mismatch(&root, spec.category, spec.name) {
                AttachState::Skipped(reason)
            } else {
                match self.attach_tracepoint(spec.program, spec.category, spec.name) {
                    Ok(()) => AttachState::Attached,
                    Err(e) => AttachState::Failed(e),
                }
            };
            if spec.need == Need::Optional && state != AttachState::Attached {
                tracing::warn!(%hook, covers = spec.covers, ?state, "optional probe not attached");
            }
            self.report.push(ProbeStatus {
                hook,
                program: spec.program,
                need: spec.need,
                covers: spec.covers,
                state,
            });
        }
        self.attach_kernel_io();
        Ok(())
    }

    /// The io_uring path: where the kernel has kprobes and the layout
    /// resolved, its tracepoints and kprobes; else each is skipped with why.
    fn attach_kernel_io(&mut self) {
        if let Some(why) = &self.kernel_io_off {
            tracing::info!("io_uring socket payload is not captured: {why}");
        }
        let kernel = compat::running();
        for spec in KERNEL_IO {
            let state = if let Some(why) = &self.kernel_io_off {
                AttachState::Skipped(format!("{why}: io_uring socket I/O is not captured"))
            } else if let Some(why) = too_old(spec.program, kernel) {
                AttachState::Skipped(why)
            } else {
                match spec.hook {
                    KernelIoHook::Tracepoint(cat) => {
                        match self.attach_tracepoint(spec.program, cat, spec.target) {
                            Ok(()) => AttachState::Attached,
                            Err(e) => AttachState::Failed(e),
                        }
                    }
                    // They fire on every TCP send and receive of the node:
                    // not before something uses io_uring on a traced socket.
                    KernelIoHook::Kprobe | KernelIoHook::Kretprobe => AttachState::Deferred(
                        "attached at the first io_uring request on a traced socket".into(),
                    ),
                }
            };
            if let AttachState::Failed(why) = &state {
                tracing::warn!(hook = %spec.hook_name(), %why, "io_uring path probe refused");
            }
            self.report.push(ProbeStatus {
                hook: spec.hook_name(),
                program: spec.program,
                need: Need::Optional,
                covers: KERNEL_IO_COVERS,
                state,
            });
        }
    }

    /// Attaches what was deferred (io_uring came into use, or doctor tests
    /// that it would load).
    pub fn attach_deferred(&mut self) {
        for i in 0..self.report.len() {
            if !matches!(self.report[i].state, AttachState::Deferred(_)) {
                continue;
            }
            let Some(spec) = KERNEL_IO
                .iter()
                .find(|k| k.hook_name() == self.report[i].hook)
            else {
                continue;
            };
            self.report[i].state = match self.attach_kprobe(spec.program, spec.target) {
                Ok(()) => AttachState::Attached,
                Err(why) => {
                    tracing::warn!(hook = %self.report[i].hook, %why, "io_uring path probe refused");
                    AttachState::Failed(why)
                }
            };
        }
    }

    /// The flag the kernel raises at the first io_uring request on a traced
    /// socket, when something waits for it.
    pub fn take_uring_seen(&mut self) -> Option<Array<MapData, u32>> {
        if !self
            .report
            .iter()
            .any(|p| matches!(p.state, AttachState::Deferred(_)))
        {
            return None;
        }
        Array::try_from(self.ebpf.take_map(map_names::URING_SEEN)?).ok()
    }

    /// Whether every program of the io_uring path is attached.
    pub fn kernel_io_active(&self) -> bool {
        KERNEL_IO.iter().all(|k| {
            self.report
                .iter()
                .any(|p| p.hook == k.hook_name() && p.state == AttachState::Attached)
        })
    }

    /// How many instructions the kernel's verifier processed for a loaded
    /// program (kernels since 5.16 report it): how close it came to the
    /// million-instruction limit that older verifiers apply.
    pub fn verified_insns(&self, name: &str) -> Option<u32> {
        self.ebpf
            .program(name)?
            .info()
            .ok()?
            .verified_instruction_count()
    }

    /// Enters Python threads of process `pid` in `PY_THREADS`, each with
    /// the `running` 0 in `GO_CURRENT` that sends its socket calls there
    /// (`agent-ebpf/src/python.rs`). The threads entered in both; a full
    /// map refuses the rest, whose `PY_THREADS` entry is taken back.
    pub fn enter_python_threads(
        &mut self,
        pid: u32,
        threads: &[python::PyThread],
    ) -> Result<Vec<u32>, String> {
        let mut py: BpfHashMap<_, u32, sonde_common::PyThread> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(map_names::PY_THREADS)
                .ok_or("PY_THREADS missing")?,
        )
        .map_err(|e| e.to_string())?;
        let mut entered = vec![];
        for t in threads {
            let v = sonde_common::PyThread {
                tgid: pid,
                _pad: 0,
                context_at: t.context_at,
            };
            if py.insert(t.tid, v, 0).is_ok() {
                entered.push(t.tid);
            }
        }
        // Before the entries: the kernel looks in GO_CURRENT only once this
        // is set (`agent-ebpf/src/maps.rs`).
        Array::<_, u32>::try_from(
            self.ebpf
                .map_mut(map_names::GO_OVERFLOW)
                .ok_or("GO_OVERFLOW missing")?,
        )
        .and_then(|mut a| a.set(0, 1, 0))
        .map_err(|e| e.to_string())?;
        let mut current: BpfHashMap<_, u32, sonde_common::GoThread> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(map_names::GO_CURRENT)
                .ok_or("GO_CURRENT missing")?,
        )
        .map_err(|e| e.to_string())?;
        // BPF_NOEXIST: a thread the goroutine probes know is Go's.
        let marked: Vec<u32> = entered
            .into_iter()
            .filter(|tid| {
                current
                    .insert(*tid, sonde_common::GoThread::default(), 1)
                    .is_ok()
                    || matches!(current.get(tid, 0), Ok(t) if t.running == 0)
            })
            .collect();
        let mut py: BpfHashMap<_, u32, sonde_common::PyThread> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(map_names::PY_THREADS)
                .ok_or("PY_THREADS missing")?,
        )
        .map_err(|e| e.to_string())?;
        for t in threads {
            if !marked.contains(&t.tid) {
                let _ = py.remove(&t.tid);
            }
        }
        Ok(marked)
    }

    /// The object's program `name`, as its type.
    pub fn program<'a, T>(&'a mut self, name: &str) -> Result<&'a mut T, String>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        self.ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} missing from the object"))?
            .try_into()
            .map_err(|e| format!("{e}"))
    }

    fn attach_kprobe(&mut self, program: &str, function: &str) -> Result<(), String> {
        let prog: &mut KProbe = self.program(program)?;
        prog.load().map_err(|e| format!("verifier/load: {e:#}"))?;
        prog.attach(function, 0)
            .map_err(|e| format!("attach: {e:?}"))?;
        Ok(())
    }

    /// The first required probe that did not attach, as an error.
    pub fn check_required(&self) -> Result<(), LoadError> {
        for p in &self.report {
            if let (Need::Required, AttachState::Skipped(r) | AttachState::Failed(r)) =
                (p.need, &p.state)
            {
                return Err(LoadError::Required {
                    hook: p.hook.clone(),
                    reason: r.clone(),
                });
            }
        }
        Ok(())
    }

    fn layout_mismatch(
        &self,
        root: &std::path::Path,
        category: &str,
        name: &str,
    ) -> Option<String> {
        if name != "inet_sock_set_state" {
            return None;
        }
        let path = root.join("events").join(category).join(name).join("format");
        let format = std::fs::read_to_string(&path).ok()?;
        tracefs::check_layout(&format, &tracefs::INET_SOCK_SET_STATE_LAYOUT)
            .err()
            .map(|r| format!("unexpected tracepoint format: {r}"))
    }

    fn attach_tracepoint(
        &mut self,
        program: &str,
        category: &str,
        name: &str,
    ) -> Result<(), String> {
        let prog: &mut TracePoint = self.program(program)?;
        prog.load().map_err(|e| format!("verifier/load: {e:#}"))?;
        prog.attach(category, name)
            .map_err(|e| format!("attach: {e:?}"))?;
        Ok(())
    }

    /// Takes the event ring buffer (once).
    pub fn take_events(&mut self) -> RingBuf<MapData> {
        let map = self.ebpf.take_map(map_names::EVENTS).expect("EVENTS map");
        RingBuf::try_from(map).expect("EVENTS is a ring buffer")
    }

    /// Takes the maps user space writes: tracked sockets and listeners.
    pub fn take_socket_maps(&mut self) -> KernelSockets {
        let socks = self.ebpf.take_map(map_names::SOCKS).expect("SOCKS map");
        let listeners = self
            .ebpf
            .take_map(map_names::LISTENERS)
            .expect("LISTENERS map");
        let pipe_procs = self
            .ebpf
            .take_map(map_names::PIPE_PROCS)
            .and_then(|m| BpfHashMap::try_from(m).ok());
        KernelSockets {
            socks: BpfHashMap::try_from(socks).expect("SOCKS is a hash map"),
            listeners: BpfHashMap::try_from(listeners).expect("LISTENERS is a hash map"),
            pipe_procs,
        }
    }

    /// Takes the per-CPU counters, with the ids of the programs loaded now
    /// (for their run times).
    pub fn take_stats(&mut self) -> KernelStats {
        let map = self.ebpf.take_map(map_names::STATS).expect("STATS map");
        let programs = self
            .ebpf
            .programs()
            .filter_map(|(name, p)| Some((p.info().ok()?.id(), name.to_string())))
            .collect();
        KernelStats {
            map: PerCpuArray::try_from(map).expect("STATS is a per-CPU array"),
            programs: runtime::ProgramIds(programs),
        }
    }
}

/// The kernel's socket maps, as user space writes them. Shared by the
/// connection table (which mirrors opens and closes into them) and the
/// session (which marks connections quiet for the protocol stages).
pub type SharedSockets = std::sync::Arc<std::sync::Mutex<KernelSockets>>;

#[derive(Debug, thiserror::Error)]
pub enum QuietError {
    #[error("pid {0} fd {1} is not a tracked socket")]
    NotTracked(u32, i32),
    #[error("updating the socket map: {0}")]
    Map(String),
}

impl KernelSockets {
    /// Releases one socket (`sock_flags::QUIET`): its payload is no longer
    /// copied, and the kernel reports only the writes causality may need
    /// (with timing and byte count, `PAYLOAD_SKIPPED` set); the other calls
    /// are counted in `stat::QUIET_SKIPPED`.
    pub fn set_quiet(&mut self, pid: u32, fd: i32) -> Result<(), QuietError> {
        self.set_flag(pid, fd, sonde_common::sock_flags::QUIET)
    }

    /// Copies up to the ceiling for one socket (`sock_flags::WHOLE`).
    pub fn set_whole(&mut self, pid: u32, fd: i32) -> Result<(), QuietError> {
        self.set_flag(pid, fd, sonde_common::sock_flags::WHOLE)
    }

    fn set_flag(&mut self, pid: u32, fd: i32, flag: u8) -> Result<(), QuietError> {
        let key = sonde_common::sock_key(pid, fd as u32);
        let mut info = self
            .socks
            .get(&key, 0)
            .map_err(|_| QuietError::NotTracked(pid, fd))?;
        info.flags |= flag;
        // BPF_EXIST: never resurrect a socket that closed meanwhile.
        self.socks
            .insert(key, info, 2)
            .map_err(|e| QuietError::Map(e.to_string()))
    }
}

pub struct KernelSockets {
    socks: BpfHashMap<MapData, u64, SockInfo>,
    listeners: BpfHashMap<MapData, u64, u32>,
    /// Processes whose forks are reported (`agent-ebpf/src/pipe.rs`).
    pipe_procs: Option<BpfHashMap<MapData, u32, u8>>,
}

/// What the connection table needs from the kernel maps. A trait so the
/// table's unit tests can run without BPF.
pub trait SocketRegistry: Send {
    fn track(&mut self, pid: u32, fd: i32, info: SockInfo);
    fn untrack(&mut self, pid: u32, fd: i32);
    fn track_listener(&mut self, pid: u32, fd: i32, port: u16);
    fn untrack_listener(&mut self, pid: u32, fd: i32);
    /// Report `pid`'s forks (`kind::FORK`): its pipes are followed.
    fn follow_forks(&mut self, pid: u32, on: bool);
}

impl SocketRegistry for SharedSockets {
    fn track(&mut self, pid: u32, fd: i32, info: SockInfo) {
        self.lock()
            .unwrap_or_else(|e| e.into_inner())
            .track(pid, fd, info)
    }
    fn untrack(&mut self, pid: u32, fd: i32) {
        self.lock()
            .unwrap_or_else(|e| e.into_inner())
            .untrack(pid, fd)
    }
    fn track_listener(&mut self, pid: u32, fd: i32, port: u16) {
        self.lock()
            .unwrap_or_else(|e| e.into_inner())
            .track_listener(pid, fd, port)
    }
    fn untrack_listener(&mut self, pid: u32, fd: i32) {
        self.lock()
            .unwrap_or_else(|e| e.into_inner())
            .untrack_listener(pid, fd)
    }
    fn follow_forks(&mut self, pid: u32, on: bool) {
        self.lock()
            .unwrap_or_else(|e| e.into_inner())
            .follow_forks(pid, on)
    }
}

impl SocketRegistry for KernelSockets {
    fn track(&mut self, pid: u32, fd: i32, info: SockInfo) {
        if let Err(e) = self
            .socks
            .insert(sonde_common::sock_key(pid, fd as u32), info, 0)
        {
            tracing::debug!(pid, fd, "SOCKS insert: {e}");
        }
    }
    fn untrack(&mut self, pid: u32, fd: i32) {
        let _ = self.socks.remove(&sonde_common::sock_key(pid, fd as u32));
    }
    fn track_listener(&mut self, pid: u32, fd: i32, port: u16) {
        let _ = self
            .listeners
            .insert(sonde_common::sock_key(pid, fd as u32), port as u32, 0);
    }
    fn untrack_listener(&mut self, pid: u32, fd: i32) {
        let _ = self
            .listeners
            .remove(&sonde_common::sock_key(pid, fd as u32));
    }
    fn follow_forks(&mut self, pid: u32, on: bool) {
        let Some(m) = &mut self.pipe_procs else {
            return;
        };
        let r = if on {
            m.insert(pid, 1, 0)
        } else {
            m.remove(&pid)
        };
        if let Err(e) = r {
            tracing::debug!(pid, on, "PIPE_PROCS: {e}");
        }
    }
}

/// The kernel-side counters, summed over CPUs.
pub struct KernelStats {
    map: PerCpuArray<MapData, u64>,
    /// The programs loaded when the counters were taken.
    pub programs: runtime::ProgramIds,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct KernelCounters {
    pub events: u64,
    pub ringbuf_drops: u64,
    pub read_faults: u64,
    pub map_full: u64,
    pub orphan_exits: u64,
    pub tls_no_socket: u64,
    /// Goroutines whose origin the kernel's goroutine table lost to
    /// another goroutine's (`GOROUTINES`).
    pub go_evicted: u64,
    /// Python contexts whose origin the kernel's table lost to another
    /// context's (`PY_ORIGINS`).
    pub py_origins_evicted: u64,
    /// Calls on released sockets the kernel left unreported, as asked
    /// (`sock_flags::QUIET`).
    pub quiet_skipped: u64,
    /// Goroutine hand-offs overwritten before their receiver ran
    /// (`GO_HANDOFFS`).
    pub go_handoffs_lost: u64,
    /// Goroutines' kept client writes overwritten by another's
    /// (`GO_WRITES`).
    pub go_writes_evicted: u64,
    /// `traceparent` injection, by [`INJECT_OUTCOMES`].
    pub injections: [u64; 7],
}

/// The outcomes of `traceparent` injection, as `STATS` counts them.
pub const INJECT_OUTCOMES: [(&str, u32); 7] = [
    ("injected", stat::INJECTED),
    ("not_http1", stat::INJECT_NOT_HTTP),
    ("partial_head", stat::INJECT_PARTIAL_HEAD),
    ("has_traceparent", stat::INJECT_HAS_TRACEPARENT),
    ("unsampled", stat::INJECT_UNSAMPLED),
    ("failed", stat::INJECT_FAILED),
    ("not_enrolled", stat::INJECT_NOT_ENROLLED),
];

impl KernelStats {
    pub fn read(&self) -> KernelCounters {
        let get = |i: u32| -> u64 { self.map.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0) };
        KernelCounters {
            events: get(stat::EVENTS),
            ringbuf_drops: get(stat::RINGBUF_DROPS),
            read_faults: get(stat::READ_FAULTS),
            map_full: get(stat::MAP_FULL),
            orphan_exits: get(stat::ORPHAN_EXITS),
            tls_no_socket: get(stat::TLS_NO_SOCKET),
            go_evicted: get(stat::GO_EVICTED),
            py_origins_evicted: get(stat::PY_ORIGIN_EVICTED),
            quiet_skipped: get(stat::QUIET_SKIPPED),
            go_handoffs_lost: get(stat::GO_HANDOFF_LOST),
            go_writes_evicted: get(stat::GO_WRITE_EVICTED),
            injections: INJECT_OUTCOMES.map(|(_, i)| get(i)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_grows_with_the_cpus_within_its_bounds() {
        assert_eq!(ringbuf_for_cpus(1), 4 << 20, "at least 4 MiB");
        assert_eq!(ringbuf_for_cpus(2), 4 << 20);
        assert_eq!(ringbuf_for_cpus(8), 16 << 20, "2 MiB each");
        assert_eq!(ringbuf_for_cpus(256), 64 << 20, "at most 64 MiB");
        let here = default_ringbuf_bytes();
        assert_eq!(ringbuf_size(here), here, "already a power of two pages");
    }
}
