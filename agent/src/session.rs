//! Wiring of the capture stages: probes -> reader -> connection table, ending
//! in a channel of [`StreamEvent`]s for whichever consumer runs (the capture
//! printer, or the pipeline).
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    channel,
    connections::{procnet, ConnTable, StreamEvent},
    probes::{
        KernelCounters, KernelStats, ProbeConfig, ProbeStatus, Probes, QuietError, SharedSockets,
    },
    protocols::dispatch::Command,
    reader,
    stats::{Stats, StatsSnapshot},
};

/// Ring records the connection table takes from the reader at once.
const RAW_BATCH: usize = 256;

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub probes: ProbeConfig,
    /// Reader drain interval when the kernel sends no wakeup.
    pub poll_interval: Duration,
    /// Capacity of each inter-stage channel, in events.
    pub channel_capacity: usize,
    /// Scan /proc for connections that predate the agent.
    pub scan_existing: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            probes: ProbeConfig::default(),
            poll_interval: Duration::from_millis(50),
            channel_capacity: 65536,
            scan_existing: true,
        }
    }
}

/// A running capture. Dropping it stops the tasks and detaches the probes.
pub struct Session {
    pub events: channel::Receiver<StreamEvent>,
    pub stats: Arc<Stats>,
    pub probe_report: Vec<ProbeStatus>,
    kernel_stats: Arc<KernelStats>,
    sockets: SharedSockets,
    owners: crate::connections::table::Owners,
    tasks: Vec<JoinHandle<()>>,
    /// Whether the io_uring kprobes are attached (they wait for io_uring).
    kernel_io: Arc<std::sync::atomic::AtomicBool>,
    /// TLS library files found, and what became of each.
    pub tls_libraries: crate::probes::uprobes::Libraries,
    tls_rescan: mpsc::Sender<u32>,
    /// Dropped with the session: stops the connection table's thread.
    _stop_table: tokio::sync::oneshot::Sender<()>,
    _probes: Arc<Mutex<Probes>>,
}

/// Sends the connection table's output (left empty). When the pipeline
/// lags, the payload records past the room left are dropped and counted.
/// Opens, tuples and closes past it never are, since a lost close would
/// leak a connection's parser state: they wait for room (the reader then
/// drops and counts instead). `false`: the pipeline is gone.
async fn send_out(
    tx: &channel::Sender<StreamEvent>,
    out: &mut Vec<StreamEvent>,
    stats: &Stats,
) -> bool {
    // The next pass's output is sized like this one's: it need not regrow.
    let batch = std::mem::replace(out, Vec::with_capacity(out.len()));
    let rest = match tx.try_send(batch) {
        Ok(rest) => rest,
        Err(channel::Closed) => return false,
    };
    if rest.is_empty() {
        return true;
    }
    let before = rest.len();
    let kept: Vec<StreamEvent> = rest
        .into_iter()
        .filter(|ev| !matches!(ev, StreamEvent::Data(..)))
        .collect();
    stats.stream_channel_drops.fetch_add(
        (before - kept.len()) as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    tx.send(kept).await.is_ok()
}

impl Session {
    /// Loads and attaches the probes, seeds pre-existing connections and
    /// starts the stages. Must run inside a tokio runtime.
    pub fn start(cfg: SessionConfig) -> Result<Session, crate::probes::LoadError> {
        let stats = Arc::new(Stats::default());
        let mut probes = Probes::load(&cfg.probes)?;
        spawn_ebpf_logger(&mut probes);
        let ring = probes.take_events();
        let sockets: SharedSockets = Arc::new(Mutex::new(probes.take_socket_maps()));
        let kernel_stats = Arc::new(probes.take_stats());

        let mut table = ConnTable::new(sockets.clone(), stats.clone());
        let owners = table.owners();
        // New processes go to the Go runtime inspector (started below, once
        // the probes are shared).
        let (new_procs_tx, new_procs_rx) = mpsc::channel(1024);
        if cfg.probes.go_probes
            || cfg.probes.tls_probes
            || cfg.probes.python_tasks
            || cfg.probes.libuv_phases
        {
            table.processes().notify_new(new_procs_tx);
        }
        // Processes whose TLS sonde could not read: their libraries again.
        let (tls_rescan_tx, tls_rescan_rx) = mpsc::channel(256);
        let (raw_tx, mut raw_rx) = channel::batched(cfg.channel_capacity);
        let (out_tx, out_rx) = channel::batched(cfg.channel_capacity);

        // Probes are attached before the scan, so a connection opened during
        // the scan is seen by one or the other (or both: upserts make that harmless).
        let mut seeded = vec![];
        if cfg.scan_existing {
            let scan = procnet::scan(scan_filter(&cfg.probes));
            table.seed(&scan, &mut seeded);
        }

        let reader_stats = stats.clone();
        let poll = cfg.poll_interval;
        let reader = tokio::spawn(async move {
            if let Err(e) = reader::run(ring, raw_tx, reader_stats, poll).await {
                tracing::error!("ring buffer reader stopped: {e}");
            }
        });

        let table_stats = stats.clone();
        let lost_stats = kernel_stats.clone();
        // Its /proc reads (process names, unresolved sockets) block, so the
        // table runs on a thread of the blocking pool, not on a worker.
        let rt = tokio::runtime::Handle::current();
        // Dropped with the session: the table's thread stops at once, before
        // its timer can be polled on a runtime that is shutting down (an
        // abort does not reach a blocking thread).
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let conntrack = tokio::task::spawn_blocking(move || {
            rt.block_on(async move {
                let mut out = seeded;
                let mut sweep = tokio::time::interval(Duration::from_secs(10));
                sweep.tick().await;
                let mut trimmer = crate::memory::Trimmer::default();
                let mut raw = Vec::with_capacity(RAW_BATCH);
                loop {
                    if !out.is_empty() && !send_out(&out_tx, &mut out, &table_stats).await {
                        return;
                    }
                    if out_tx.is_closed() {
                        return;
                    }
                    tokio::select! {
                        biased;
                        _ = &mut stop_rx => return,
                        // All that is queued, up to a bound: one pass of
                        // this loop (its select, its sends) per batch, not
                        // per record.
                        n = raw_rx.recv_many(&mut raw, RAW_BATCH) => {
                            if n == 0 {
                                return;
                            }
                            for ev in raw.drain(..) {
                                table.apply(ev, &mut out);
                            }
                        }
                        _ = sweep.tick() => {
                            // Records lost before the table: closes it
                            // may not have read.
                            let lost = lost_stats.read().ringbuf_drops
                                + table_stats
                                    .reader_channel_drops
                                    .load(std::sync::atomic::Ordering::Relaxed)
                                + table_stats
                                    .decode_errors
                                    .load(std::sync::atomic::Ordering::Relaxed);
                            table.sweep(lost, &mut out);
                            if trimmer.observe(table.entries()) {
                                crate::memory::release();
                            }
                        }
                    }
                    table_stats
                        .table_entries
                        .store(table.entries() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            })
        });

        let mut tasks = vec![reader, conntrack];
        let kernel_io = Arc::new(std::sync::atomic::AtomicBool::new(
            probes.kernel_io_active(),
        ));
        let uring_seen = probes.take_uring_seen();
        let probe_report = probes.report.clone();
        let probes = Arc::new(Mutex::new(probes));
        let tls_libraries = crate::probes::uprobes::Libraries::default();
        let mut inspector = crate::probes::uprobes::Inspector::new(
            Arc::downgrade(&probes),
            stats.clone(),
            cfg.probes.go_probes,
            cfg.probes.python_tasks,
            cfg.probes.tls_probes,
            tls_libraries.clone(),
        );
        inspector.go_at_entries = cfg.probes.go_at_entries;
        inspector.tls_at_entries = cfg.probes.tls_at_entries;
        inspector.libuv = cfg.probes.libuv_phases;
        tasks.push(tokio::spawn(crate::probes::uprobes::run(
            new_procs_rx,
            tls_rescan_rx,
            inspector,
            scan_filter(&cfg.probes),
        )));
        if let Some(seen) = uring_seen {
            // Weak: dropping the session detaches everything at once.
            tasks.push(tokio::spawn(attach_when_uring_seen(
                seen,
                Arc::downgrade(&probes),
                kernel_io.clone(),
            )));
        }
        Ok(Session {
            events: out_rx,
            stats,
            probe_report,
            kernel_stats,
            sockets,
            owners,
            tasks,
            kernel_io,
            tls_libraries,
            tls_rescan: tls_rescan_tx,
            _stop_table: stop_tx,
            _probes: probes,
        })
    }

    /// Takes the event stream (for a consumer on another thread).
    pub fn take_events(&mut self) -> channel::Receiver<StreamEvent> {
        std::mem::replace(&mut self.events, channel::batched(1).1)
    }

    /// Why a capture task ended early (a panic, or an error it logged),
    /// if one did.
    pub fn failure(&mut self) -> Option<String> {
        use futures_util::FutureExt;
        for (name, t) in ["ring buffer reader", "connection table"]
            .iter()
            .zip(self.tasks.iter_mut())
        {
            if !t.is_finished() {
                continue;
            }
            return Some(match t.now_or_never() {
                Some(Err(e)) if e.is_panic() => format!(
                    "the {name} task panicked: {}",
                    crate::run::panic_message(&e.into_panic())
                ),
                _ => format!("the {name} task stopped (see the log above)"),
            });
        }
        None
    }

    /// Whether io_uring payload is being captured (the kprobes are attached).
    pub fn kernel_io_attached(&self) -> bool {
        self.kernel_io.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Releases a connection classified as uninteresting
    /// (`KernelSockets::set_quiet`).
    pub fn set_quiet(&self, pid: u32, fd: i32) -> Result<(), QuietError> {
        self.sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_quiet(pid, fd)
    }

    pub fn kernel_counters(&self) -> KernelCounters {
        self.kernel_stats.read()
    }

    /// A handle on the kernel counters that outlives borrows of the session.
    pub fn kernel_stats(&self) -> Arc<KernelStats> {
        self.kernel_stats.clone()
    }

    /// Copies up to the ceiling for one socket (a framed protocol's).
    pub fn set_whole(&self, pid: u32, fd: i32) -> Result<(), QuietError> {
        self.sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_whole(pid, fd)
    }

    /// A handle that applies the pipeline's commands to the kernel's socket
    /// map (stop copying a connection, or copy it whole), unless the fd
    /// already belongs to a newer connection. A socket closed meanwhile is
    /// no error: there is nothing left to change.
    pub fn commander(&self) -> impl FnMut(Command) + Send + 'static {
        let sockets = self.sockets.clone();
        let owners = self.owners.clone();
        let tls_rescan = self.tls_rescan.clone();
        move |cmd| {
            let (conn, pid, fd) = match cmd {
                Command::Release { conn, pid, fd } | Command::CopyWhole { conn, pid, fd } => {
                    (conn, pid, fd)
                }
                Command::FindTls { pid } => {
                    // Full: the process is named again by its next opaque
                    // connection.
                    let _ = tls_rescan.try_send(pid);
                    return;
                }
            };
            let owned = owners
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&(pid, fd))
                == Some(&conn);
            if !owned {
                return;
            }
            let mut s = sockets.lock().unwrap_or_else(|e| e.into_inner());
            let _ = match cmd {
                Command::Release { .. } => s.set_quiet(pid, fd),
                Command::CopyWhole { .. } => s.set_whole(pid, fd),
                Command::FindTls { .. } => return,
            };
        }
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Which pids the startup scan may seed: the kernel filters every later
/// event, so the scan must apply the same filters (and skip the agent).
fn scan_filter(p: &ProbeConfig) -> impl Fn(u32) -> bool {
    let me = std::process::id();
    let pids = p.pids.clone();
    let cgroups: Vec<u64> = p
        .cgroups
        .iter()
        .filter_map(|c| crate::probes::cgroup_id(c).ok())
        .collect();
    let mount = crate::connections::cgroup::cgroup2_mount();
    move |pid| {
        pid != me
            && (pids.is_empty() || pids.contains(&pid))
            && (cgroups.is_empty()
                || mount
                    .as_deref()
                    .and_then(|m| crate::connections::cgroup::cgroup2_id_of(pid, m))
                    .is_some_and(|id| cgroups.contains(&id)))
    }
}

/// Forwards the eBPF programs' aya-log records to `log` (and so to tracing).
fn spawn_ebpf_logger(probes: &mut Probes) {
    match aya_log::EbpfLogger::init(&mut probes.ebpf) {
        Ok(logger) => {
            // SAFETY: the logger owns its map fd for as long as the AsyncFd owns it.
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    logger,
                    tokio::io::Interest::READABLE,
                )
            };
            let Ok(mut fd) = registered else { return };
            tokio::spawn(async move {
                loop {
                    let Ok(mut guard) = fd.readable_mut().await else {
                        return;
                    };
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        Err(e) => tracing::debug!("eBPF logger not initialised: {e}"),
    }
}

/// Attaches the io_uring kprobes once the kernel flags the first io_uring
/// request on a traced socket. Until then they cost nothing; requests made
/// before they are attached (within one poll) are not captured.
async fn attach_when_uring_seen(
    seen: aya::maps::Array<aya::maps::MapData, u32>,
    probes: std::sync::Weak<Mutex<Probes>>,
    attached: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    while seen.get(&0, 0).unwrap_or(0) == 0 {
        poll.tick().await;
    }
    let Some(probes) = probes.upgrade() else {
        return;
    };
    let mut p = probes.lock().unwrap_or_else(|e| e.into_inner());
    p.attach_deferred();
    let active = p.kernel_io_active();
    if active {
        tracing::info!(
            "io_uring is in use on a traced socket: kprobes attached to tcp_sendmsg/tcp_recvmsg"
        );
    }
    attached.store(active, std::sync::atomic::Ordering::Relaxed);
}
