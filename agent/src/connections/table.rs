//! The connection table proper.
//!
//! Kernel records for one connection can arrive slightly out of order (they
//! come from different CPUs and contexts: the client's tuple is reported
//! from softirq, often before connect() returns), so every record upserts.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    sync::Arc,
};

use sonde_common::{role as raw_role, SockInfo};

use super::{
    pipes::{self, Follow, Pipes},
    process::{ProcessCache, ProcessInfo},
    procnet,
};
use crate::{
    event::{
        ConnKind, ConnRecord, ContextRecord, DataRecord, HandOffRecord, KernelEvent, Role,
        SocketTuple,
    },
    probes::SocketRegistry,
    stats::Stats,
};

/// What downstream stages know about a connection. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Unique for the agent's lifetime; (pid, fd) pairs are reused.
    pub id: u64,
    pub pid: u32,
    pub fd: i32,
    pub role: Role,
    pub tuple: Option<SocketTuple>,
    pub process: Arc<ProcessInfo>,
    /// CLOCK_MONOTONIC ns of the connect/accept (0 for pre-existing ones).
    pub opened_ns: u64,
    /// Found by the startup scan rather than seen opening.
    pub preexisting: bool,
    /// The remote end is one of the agent's own sockets (sonde's export
    /// traffic arriving at a local collector): never traced.
    pub peer_is_agent: bool,
    /// A client connection: the thread that called connect and its tick
    /// then ((0, 0): unknown). Causality gives its first call to the
    /// request that opened it.
    pub opened_by: (u32, u32),
    /// Its payload is TLS plaintext, from the library's calls (the kernel
    /// never reported its ciphertext).
    pub tls: bool,
    /// A followed pipe (`Role::Pipe`): its inode, the same in every process
    /// that shares it.
    pub pipe: Option<u64>,
}

impl ConnInfo {
    pub fn remote(&self) -> Option<SocketAddr> {
        self.tuple.map(|t| t.remote)
    }
}

/// The per-connection stream the protocol stages consume.
#[derive(Debug, Clone)]
pub enum StreamEvent {
    Open(ConnInfo),
    /// A client connection's local endpoint became known after its open
    /// (the ESTABLISHED record comes from softirq, after connect()).
    Tuple(ConnInfo),
    Data(ConnInfo, DataRecord),
    /// Trace context the kernel named for one of the connection's
    /// syscalls (`traceparent` injection).
    Context(ConnInfo, ContextRecord),
    /// Go: the goroutine that wrote on the connection handed a value to
    /// another (`correlation/causality`, rule `goroutine`).
    HandOff(ConnInfo, HandOffRecord),
    Close(ConnInfo, u64),
}

impl StreamEvent {
    pub fn conn(&self) -> &ConnInfo {
        match self {
            StreamEvent::Open(c)
            | StreamEvent::Tuple(c)
            | StreamEvent::Data(c, _)
            | StreamEvent::Context(c, _)
            | StreamEvent::HandOff(c, _)
            | StreamEvent::Close(c, _) => c,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Untrack {
    Yes,
    No,
}

/// Which connection currently owns each (pid, fd), shared with whoever
/// writes per-socket kernel flags later (the release of a connection must
/// not hit a newer socket that reused its fd).
pub type Owners = Arc<std::sync::Mutex<HashMap<(u32, i32), u64>>>;

struct Conn {
    info: ConnInfo,
    /// Opened by connect/accept (or the scan); a Tuple record alone does not
    /// count, it may precede its connect().
    confirmed: bool,
    /// A /proc lookup for the tuple was tried already.
    resolve_tried: bool,
    /// The last sweep found its fd (or process) gone: the next one ends it
    /// if its close still has not come (see `sweep`).
    gone: bool,
}

/// Server sockets established but not yet accepted are forgotten after this
/// long (kernel clock): an accept queue that old belongs to a process we do
/// not trace.
const PENDING_TTL_NS: u64 = 2_000_000_000;
/// Bound on the pending list, whatever the rate of untraced accepts.
const PENDING_MAX: usize = 4096;

pub struct ConnTable<R: SocketRegistry> {
    conns: BTreeMap<(u32, i32), Conn>,
    /// Listening sockets: (pid, fd) -> local port.
    listeners: HashMap<(u32, i32), u16>,
    /// Tuples of server sockets established and not yet accepted, oldest first.
    pending: VecDeque<(u64, SocketTuple)>,
    /// The agent's own connections, (local, remote). Both ends: Linux gives
    /// a local port to connections to different peers at once, so a traced
    /// client may share the agent's local address (found by the churn
    /// suite: its server took such clients for the agent and left them
    /// unparsed).
    own: HashSet<(SocketAddr, SocketAddr)>,
    owners: Owners,
    processes: ProcessCache,
    registry: R,
    stats: Arc<Stats>,
    next_id: u64,
    /// Which pipes are followed (`pipes.rs`).
    pipes: Pipes,
    /// Sweeps so far, and records lost upstream as of the last one (see
    /// `sweep`).
    sweeps: u64,
    lost_seen: u64,
    /// Connections the last sweep found gone, to be looked at again.
    suspected: usize,
}

/// One sweep in this many looks at every connection's fd even though no
/// record was lost: a socket closed by something other than `close()`
/// (`close_range`, an io_uring close, `dup2` over it) leaves no record.
const FULL_SWEEP_EVERY: u64 = 6;

fn raw(role: Role) -> u8 {
    match role {
        Role::Client => raw_role::CLIENT,
        Role::Server => raw_role::SERVER,
        Role::Unknown => raw_role::UNKNOWN,
        Role::Pipe => raw_role::PIPE,
    }
}

impl<R: SocketRegistry> ConnTable<R> {
    pub fn new(registry: R, stats: Arc<Stats>) -> Self {
        ConnTable {
            conns: BTreeMap::new(),
            listeners: HashMap::new(),
            pending: VecDeque::new(),
            own: HashSet::new(),
            owners: Owners::default(),
            processes: ProcessCache::new(stats.clone()),
            registry,
            stats,
            next_id: 1,
            sweeps: 0,
            lost_seen: 0,
            suspected: 0,
            pipes: Pipes::default(),
        }
    }

    /// The shared (pid, fd) -> connection id map.
    pub fn owners(&self) -> Owners {
        self.owners.clone()
    }

    pub fn processes(&mut self) -> &mut ProcessCache {
        &mut self.processes
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Registers what the startup scan found, in the kernel and here.
    pub fn seed(&mut self, scan: &procnet::ScanResult, out: &mut Vec<StreamEvent>) {
        for &(pid, fd, port) in &scan.listeners {
            self.registry.track_listener(pid, fd, port);
            self.listeners.insert((pid, fd), port);
        }
        for s in &scan.sockets {
            self.registry.track(
                s.pid,
                s.fd,
                SockInfo {
                    role: raw(s.role),
                    ..Default::default()
                },
            );
            let c = self.open(s.pid, s.fd, s.role, 0, "", out);
            c.info.tuple = Some(s.tuple);
            c.info.preexisting = true;
            c.confirmed = true;
            Stats::inc(&self.stats.preexisting_connections);
        }
    }

    /// Applies one kernel record, appending what it means downstream to `out`.
    pub fn apply(&mut self, ev: KernelEvent, out: &mut Vec<StreamEvent>) {
        match ev {
            KernelEvent::Data(d) => self.on_data(d, out),
            // Its connection is open: the kernel names contexts only on
            // sockets it tracks, after their open record.
            KernelEvent::Context(r) => {
                if let Some(conn) = self.conns.get(&(r.pid, r.fd)) {
                    out.push(StreamEvent::Context(conn.info.clone(), r));
                }
            }
            KernelEvent::HandOff(r) => {
                if let Some(conn) = self.conns.get(&(r.pid, r.fd)) {
                    out.push(StreamEvent::HandOff(conn.info.clone(), r));
                }
            }
            KernelEvent::Exec(e) => self.processes.exec_seen(e),
            KernelEvent::Conn(c) if c.own() => self.on_own(&c),
            KernelEvent::Conn(c) => match c.kind {
                ConnKind::Connect => {
                    self.activate_pipes(c.pid, out);
                    self.on_connect(c, out)
                }
                ConnKind::Accept => {
                    self.activate_pipes(c.pid, out);
                    self.on_accept(c, out)
                }
                ConnKind::Tuple => self.on_tuple(c, out),
                // The kernel removed its map entries itself at close().
                ConnKind::Close => self.close(c.pid, c.fd, c.ts_ns, Untrack::No, out),
                ConnKind::Listen => {
                    self.activate_pipes(c.pid, out);
                    // A server is inspected (Go runtime, TLS library, Python
                    // threads) before its first client, not at it.
                    let _ = self.processes.get(c.pid, &c.comm.as_string());
                    self.listeners.insert((c.pid, c.fd), c.listen_port);
                }
                ConnKind::Fork => {
                    let mut follow = vec![];
                    if let Ok(child) = u32::try_from(c.ret) {
                        self.pipes.forked(c.pid, child, &mut follow);
                    }
                    self.follow_pipes(follow, c.ts_ns, out);
                }
                ConnKind::ServerEstab => self.on_server_estab(c),
                ConnKind::ProcExit => self.on_exit(c.pid, c.ts_ns, out),
                ConnKind::ProcExec => self.on_exec(c.pid, c.ts_ns, out),
            },
        }
    }

    /// Creates a connection, closing a stale one on the same (pid, fd).
    fn open(
        &mut self,
        pid: u32,
        fd: i32,
        role: Role,
        ts: u64,
        comm: &str,
        out: &mut Vec<StreamEvent>,
    ) -> &mut Conn {
        if self.conns.contains_key(&(pid, fd)) {
            // The fd was reused without us seeing close: end the old one. Its
            // kernel entry already belongs to the new socket: keep it.
            self.close(pid, fd, ts, Untrack::No, out);
        }
        let info = ConnInfo {
            id: self.next_id,
            pid,
            fd,
            role,
            tuple: None,
            process: self.processes.get(pid, comm),
            opened_ns: ts,
            preexisting: false,
            peer_is_agent: false,
            opened_by: (0, 0),
            tls: false,
            pipe: None,
        };
        self.next_id += 1;
        self.owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((pid, fd), info.id);
        Stats::inc(&self.stats.connections_opened);
        self.conns.entry((pid, fd)).or_insert(Conn {
            info,
            confirmed: false,
            resolve_tried: false,
            gone: false,
        })
    }

    /// `pid` does network work: its pipes, and its children's, are followed.
    fn activate_pipes(&mut self, pid: u32, out: &mut Vec<StreamEvent>) {
        if self.pipes.is_followed(pid) {
            return;
        }
        tracing::debug!(pid, "pipes: network work");
        let mut follow = vec![];
        self.pipes.activate(pid, &mut follow);
        self.follow_pipes(follow, 0, out);
    }

    fn follow_pipes(&mut self, follow: Vec<Follow>, ts: u64, out: &mut Vec<StreamEvent>) {
        for f in follow {
            tracing::debug!(?f, "pipes");
            match f {
                Follow::Forks(pid) => self.registry.follow_forks(pid, true),
                Follow::Fd { pid, fd, inode } => {
                    self.registry.track(
                        pid,
                        fd,
                        SockInfo {
                            role: raw_role::PIPE,
                            ..Default::default()
                        },
                    );
                    Stats::inc(&self.stats.pipes_followed);
                    let conn = self.open(pid, fd, Role::Pipe, ts, "", out);
                    conn.confirmed = true;
                    conn.resolve_tried = true;
                    conn.info.pipe = Some(inode);
                    out.push(StreamEvent::Open(conn.info.clone()));
                }
            }
        }
        self.stats
            .pipes_forgotten
            .store(self.pipes.forgotten, std::sync::atomic::Ordering::Relaxed);
    }

    fn on_connect(&mut self, c: ConnRecord, out: &mut Vec<StreamEvent>) {
        let key = (c.pid, c.fd);
        // A Tuple record that raced ahead of its connect() made a provisional entry.
        let provisional =
            matches!(self.conns.get(&key), Some(x) if !x.confirmed && x.info.role == Role::Client);
        if !provisional {
            self.open(c.pid, c.fd, Role::Client, c.ts_ns, &c.comm.as_string(), out);
        }
        // A provisional entry was opened from softirq, without a comm.
        let process = self.processes.get(c.pid, &c.comm.as_string());
        let conn = self.conns.get_mut(&key).expect("just inserted");
        conn.info.process = process;
        conn.confirmed = true;
        conn.info.opened_ns = c.ts_ns;
        conn.info.opened_by = (c.tid, c.tick);
        if conn.info.tuple.is_none() {
            // Remote only for now; the Tuple record completes it.
            if let Some(remote) = c.remote {
                let unspecified = SocketAddr::new(
                    if remote.is_ipv4() {
                        [0u8; 4].into()
                    } else {
                        [0u16; 8].into()
                    },
                    0,
                );
                conn.info.tuple = Some(SocketTuple {
                    local: unspecified,
                    remote,
                });
            }
        }
        out.push(StreamEvent::Open(conn.info.clone()));
    }

    fn on_tuple(&mut self, c: ConnRecord, out: &mut Vec<StreamEvent>) {
        let Some(tuple) = c.tuple else { return };
        let key = (c.pid, c.fd);
        match self.conns.get_mut(&key) {
            Some(conn) => {
                let changed = conn.info.tuple != Some(tuple);
                conn.info.tuple = Some(tuple);
                if changed && conn.confirmed {
                    out.push(StreamEvent::Tuple(conn.info.clone()));
                }
            }
            None => {
                let conn = self.open(c.pid, c.fd, Role::Client, c.ts_ns, "", out);
                conn.info.tuple = Some(tuple);
            }
        }
    }

    /// The agent's own socket connected or closed.
    fn on_own(&mut self, c: &ConnRecord) {
        let Some(t) = c.tuple else { return };
        match c.kind {
            ConnKind::Tuple if self.own.len() < 65536 => {
                self.own.insert((t.local, t.remote));
            }
            ConnKind::Close => {
                self.own.remove(&(t.local, t.remote));
            }
            _ => {}
        }
    }

    fn on_server_estab(&mut self, c: ConnRecord) {
        let Some(t) = c.tuple else { return };
        while let Some(&(ts, _)) = self.pending.front() {
            if self.pending.len() < PENDING_MAX && c.ts_ns.saturating_sub(ts) < PENDING_TTL_NS {
                break;
            }
            self.pending.pop_front();
        }
        self.pending.push_back((c.ts_ns, t));
    }

    /// The tuple of a socket accept() returned without a sockaddr: the
    /// pending established socket on the listener's port, if it is the only
    /// one. Several candidates (a backlog, or the same port in several
    /// network namespaces) are ambiguous and left to /proc.
    fn claim_pending(&mut self, pid: u32, listen_fd: i32) -> Option<SocketTuple> {
        let port = *self.listeners.get(&(pid, listen_fd))?;
        let mut matches = self
            .pending
            .iter()
            .enumerate()
            .filter(|(_, (_, t))| t.local.port() == port);
        let (i, _) = matches.next()?;
        if matches.next().is_some() {
            return None;
        }
        self.pending.remove(i).map(|(_, t)| t)
    }

    fn on_accept(&mut self, c: ConnRecord, out: &mut Vec<StreamEvent>) {
        let mut tuple = c.tuple;
        if tuple.is_none() {
            tuple = self.claim_pending(c.pid, c.listen_fd);
        }
        if !c.tcp_confirmed() || tuple.is_none() {
            // The kernel lacked the sockaddr: ask /proc, which also tells
            // whether this is TCP at all.
            Stats::inc(&self.stats.proc_lookups);
            match procnet::resolve(c.pid, c.fd) {
                Some(found) => {
                    if !c.tcp_confirmed() {
                        self.registry.track(
                            c.pid,
                            c.fd,
                            SockInfo {
                                role: raw_role::SERVER,
                                ..Default::default()
                            },
                        );
                        let port = found.tuple.local.port();
                        self.registry.track_listener(c.pid, c.listen_fd, port);
                        self.listeners.insert((c.pid, c.listen_fd), port);
                    }
                    tuple = Some(found.tuple);
                }
                None if !c.tcp_confirmed() => return, // unix socket or already gone
                None => Stats::inc(&self.stats.unresolved_sockets),
            }
        }
        // Whichever way its tuple was learnt, an accepted socket is no
        // longer a candidate for the next accept: in a burst (a client
        // opening its pool), the last of them is claimed unambiguously
        // even if its peer has already gone from /proc.
        if let Some(t) = tuple {
            self.pending.retain(|(_, p)| *p != t);
        }
        let peer_is_agent = tuple.is_some_and(|t| self.own.contains(&(t.remote, t.local)));
        let conn = self.open(c.pid, c.fd, Role::Server, c.ts_ns, &c.comm.as_string(), out);
        conn.confirmed = true;
        conn.info.tuple = tuple;
        conn.info.peer_is_agent = peer_is_agent;
        out.push(StreamEvent::Open(conn.info.clone()));
    }

    fn on_data(&mut self, d: DataRecord, out: &mut Vec<StreamEvent>) {
        let key = (d.pid, d.fd);
        if !self.conns.contains_key(&key) {
            // Data before (or without) its open record: place it via /proc.
            let role = d.role;
            Stats::inc(&self.stats.proc_lookups);
            let found = procnet::resolve(d.pid, d.fd);
            if found.is_none() {
                Stats::inc(&self.stats.unresolved_sockets);
            }
            let role =
                found
                    .as_ref()
                    .map_or(role, |f| if role == Role::Unknown { f.role } else { role });
            let conn = self.open(d.pid, d.fd, role, d.enter_ns, &d.comm.as_string(), out);
            conn.confirmed = true;
            conn.resolve_tried = true;
            conn.info.tuple = found.map(|f| f.tuple);
            out.push(StreamEvent::Open(conn.info.clone()));
        }
        let conn = self.conns.get_mut(&key).expect("present");
        conn.info.tls |= d.tls();
        let incomplete = conn.info.tuple.is_none_or(|t| t.local.port() == 0);
        if incomplete && !conn.resolve_tried {
            conn.resolve_tried = true;
            Stats::inc(&self.stats.proc_lookups);
            if let Some(found) = procnet::resolve(d.pid, d.fd) {
                conn.info.tuple = Some(found.tuple);
            }
        }
        out.push(StreamEvent::Data(conn.info.clone(), d));
    }

    /// Ends a connection. `untrack`: also remove the kernel's map entries,
    /// which only user space can do when a socket vanished without close()
    /// (exit, exec). After a close() the kernel already removed them, and by
    /// the time this runs the fd may belong to a new socket whose entry a
    /// removal here would wipe out.
    fn close(&mut self, pid: u32, fd: i32, ts: u64, untrack: Untrack, out: &mut Vec<StreamEvent>) {
        if self.listeners.remove(&(pid, fd)).is_some() && untrack == Untrack::Yes {
            self.registry.untrack_listener(pid, fd);
        }
        if let Some(conn) = self.conns.remove(&(pid, fd)) {
            if untrack == Untrack::Yes {
                self.registry.untrack(pid, fd);
            }
            self.owners
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(pid, fd));
            Stats::inc(&self.stats.connections_closed);
            out.push(StreamEvent::Close(conn.info, ts));
        }
    }

    fn fds_of(&self, pid: u32) -> Vec<i32> {
        self.conns
            .range((pid, i32::MIN)..=(pid, i32::MAX))
            .map(|(&(_, fd), _)| fd)
            .collect()
    }

    fn on_exit(&mut self, pid: u32, ts: u64, out: &mut Vec<StreamEvent>) {
        tracing::debug!(pid, ts, "process: exit");
        for fd in self.fds_of(pid) {
            self.close(pid, fd, ts, Untrack::Yes, out);
        }
        let listeners: Vec<_> = self
            .listeners
            .keys()
            .filter(|(p, _)| *p == pid)
            .copied()
            .collect();
        for (p, fd) in listeners {
            self.listeners.remove(&(p, fd));
            self.registry.untrack_listener(p, fd);
        }
        if self.pipes.forget(pid) {
            self.registry.follow_forks(pid, false);
        }
        self.processes.forget(pid);
    }

    /// After execve the process has a new name, and CLOEXEC sockets are gone.
    fn on_exec(&mut self, pid: u32, ts: u64, out: &mut Vec<StreamEvent>) {
        tracing::debug!(pid, ts, "process: exec");
        self.processes.forget(pid);
        if self.pipes.forget(pid) {
            self.registry.follow_forks(pid, false);
        }
        for fd in self.fds_of(pid) {
            if procnet::is_socket(pid, fd) {
                let process = self.processes.get(pid, "");
                if let Some(c) = self.conns.get_mut(&(pid, fd)) {
                    c.info.process = process;
                }
            } else {
                self.close(pid, fd, ts, Untrack::Yes, out);
            }
        }
    }

    /// Drops connections of processes that no longer exist: the safety net
    /// for exits whose record was lost. Call periodically.
    /// Connections, listeners, pending accepts and own endpoints held.
    pub fn entries(&self) -> usize {
        self.conns.len()
            + self.listeners.len()
            + self.pending.len()
            + self.own.len()
            + self.pipes.entries()
    }

    /// Ends what the kernel's records no longer will: a close whose record
    /// was dropped (ring buffer full) leaves its connection behind, its fd
    /// no longer a socket; an exit's, all of its process's. /proc shows the
    /// present, while the records may lag behind it (a loaded or slow
    /// machine): a connection is ended only when two sweeps in a row find
    /// it gone, so its last records and its close, still queued at the
    /// first, are read first. (An fd reused by a new socket is handled at
    /// that socket's open.)
    ///
    /// `lost`: the records lost before this table so far (the ring buffer's
    /// drops, the reader's, undecodable ones). Each fd is looked at
    /// (`readlink`, a path walk and a permission check) only when some were
    /// lost since the last sweep, when the last sweep suspected a
    /// connection, and at every `FULL_SWEEP_EVERY`th sweep; otherwise every
    /// close was read, and only exits are checked (one `stat` per process).
    /// Under 10,000 idle keep-alive connections (20,000 tracked ends), a
    /// `readlink` of every fd every 10 s was three quarters of the agent's
    /// CPU.
    pub fn sweep(&mut self, lost: u64, out: &mut Vec<StreamEvent>) {
        for pid in self.pipes.sweep() {
            self.registry.follow_forks(pid, false);
        }
        self.sweeps += 1;
        let look = lost != self.lost_seen
            || self.suspected > 0
            || self.sweeps.is_multiple_of(FULL_SWEEP_EVERY);
        self.lost_seen = lost;
        self.suspected = 0;
        let mut pids: Vec<u32> = self.conns.keys().map(|&(p, _)| p).collect();
        pids.dedup();
        for pid in pids {
            let exited = !std::path::Path::new(&format!("/proc/{pid}")).exists();
            if !exited && !look {
                continue;
            }
            let fds = self.fds_of(pid);
            let mut ended = vec![];
            for &fd in &fds {
                let Some(c) = self.conns.get_mut(&(pid, fd)) else {
                    continue;
                };
                let gone = exited
                    || match c.info.pipe {
                        Some(ino) => pipes::inode(pid, fd) != Some(ino),
                        None => !procnet::is_socket(pid, fd),
                    };
                if gone && c.gone {
                    ended.push(fd);
                } else if gone {
                    self.suspected += 1;
                }
                c.gone = gone;
            }
            if exited && ended.len() == fds.len() {
                self.on_exit(pid, 0, out);
                continue;
            }
            let untrack = if exited { Untrack::Yes } else { Untrack::No };
            for fd in ended {
                Stats::inc(&self.stats.swept_closes);
                self.close(pid, fd, 0, untrack, out);
            }
        }
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
