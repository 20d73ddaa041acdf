use std::os::fd::AsRawFd;
use std::sync::{atomic::Ordering::Relaxed, Arc};

use sonde_common::{conn_flags, SockInfo};

use super::*;
use crate::event::{
    Comm, ConnKind, ConnRecord, DataRecord, Direction, ExecRecord, KernelEvent, Role, Syscall,
};

/// Pids far above any pid_max: /proc lookups for them find nothing, so the
/// tests exercise the table alone.
const PID: u32 = 0x7fff_ff00;
const OTHER: u32 = 0x7fff_ff01;

#[derive(Default)]
struct Recorder {
    calls: Vec<String>,
}

impl SocketRegistry for Recorder {
    fn track(&mut self, pid: u32, fd: i32, info: SockInfo) {
        self.calls
            .push(format!("track {pid} {fd} role={}", info.role));
    }
    fn untrack(&mut self, pid: u32, fd: i32) {
        self.calls.push(format!("untrack {pid} {fd}"));
    }
    fn track_listener(&mut self, pid: u32, fd: i32, port: u16) {
        self.calls.push(format!("listener {pid} {fd} :{port}"));
    }
    fn untrack_listener(&mut self, _pid: u32, _fd: i32) {}
    fn follow_forks(&mut self, pid: u32, on: bool) {
        self.calls.push(format!("forks {pid} {on}"));
    }
}

fn table() -> ConnTable<Recorder> {
    let mut t = ConnTable::new(Recorder::default(), Arc::new(Stats::default()));
    for pid in [PID, OTHER] {
        t.processes().insert(ProcessInfo {
            pid,
            comm: format!("p{pid}"),
            ..Default::default()
        });
    }
    t
}

fn conn(kind: ConnKind, pid: u32, fd: i32) -> ConnRecord {
    ConnRecord {
        kind,
        pid,
        tid: pid,
        fd,
        ts_ns: 100,
        ret: 0,
        role: Role::Unknown,
        flags: conn_flags::TCP_CONFIRMED,
        tuple: None,
        remote: None,
        listen_fd: 0,
        listen_port: 0,
        comm: Default::default(),
        tick: 0,
    }
}

fn tuple(local: &str, remote: &str) -> SocketTuple {
    SocketTuple {
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
    }
}

fn data(pid: u32, fd: i32, payload: &[u8]) -> KernelEvent {
    KernelEvent::Data(DataRecord {
        pid,
        tid: pid,
        tick: 0,
        task: 0,
        lineage: Default::default(),
        py_task: 0,
        fd,
        enter_ns: 200,
        exit_ns: 210,
        bytes: payload.len() as u64,
        syscall: Syscall::Write,
        direction: Direction::Egress,
        role: Role::Client,
        flags: 0,
        comm: Default::default(),
        payload: payload.to_vec(),
    })
}

fn apply(t: &mut ConnTable<Recorder>, ev: KernelEvent) -> Vec<StreamEvent> {
    let mut out = vec![];
    t.apply(ev, &mut out);
    out
}

#[test]
fn connect_then_tuple_completes_the_connection() {
    let mut t = table();
    let mut c = conn(ConnKind::Connect, PID, 5);
    c.remote = Some("10.0.0.1:80".parse().unwrap());
    let out = apply(&mut t, KernelEvent::Conn(c));
    let [StreamEvent::Open(info)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(info.role, Role::Client);
    assert_eq!(info.remote(), Some("10.0.0.1:80".parse().unwrap()));
    assert_eq!(info.process.comm, format!("p{PID}"));

    let mut tu = conn(ConnKind::Tuple, PID, 5);
    tu.tuple = Some(tuple("10.0.0.2:4000", "10.0.0.1:80"));
    let out = apply(&mut t, KernelEvent::Conn(tu));
    let [StreamEvent::Tuple(known)] = out.as_slice() else {
        panic!("the completed tuple is announced: {out:?}")
    };
    assert_eq!(
        (known.id, known.tuple),
        (info.id, Some(tuple("10.0.0.2:4000", "10.0.0.1:80")))
    );

    let out = apply(&mut t, data(PID, 5, b"GET /"));
    let [StreamEvent::Data(info2, d)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(info2.id, info.id);
    assert_eq!(info2.tuple, Some(tuple("10.0.0.2:4000", "10.0.0.1:80")));
    assert_eq!(d.payload, b"GET /");
}

#[test]
fn tuple_racing_ahead_of_connect_makes_one_connection() {
    let mut t = table();
    let mut tu = conn(ConnKind::Tuple, PID, 7);
    tu.tuple = Some(tuple("127.0.0.1:5000", "127.0.0.1:80"));
    assert!(apply(&mut t, KernelEvent::Conn(tu)).is_empty());
    let out = apply(&mut t, KernelEvent::Conn(conn(ConnKind::Connect, PID, 7)));
    let [StreamEvent::Open(info)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(info.tuple, Some(tuple("127.0.0.1:5000", "127.0.0.1:80")));
    assert_eq!(t.len(), 1);
    assert_eq!(t.stats.connections_opened.load(Relaxed), 1);
}

#[test]
fn accept_with_kernel_tuple_is_a_server_connection() {
    let mut t = table();
    let mut a = conn(ConnKind::Accept, PID, 9);
    a.tuple = Some(tuple("127.0.0.1:80", "127.0.0.1:5000"));
    let out = apply(&mut t, KernelEvent::Conn(a));
    let [StreamEvent::Open(info)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(info.role, Role::Server);
    assert_eq!(info.tuple, Some(tuple("127.0.0.1:80", "127.0.0.1:5000")));
    // The kernel already tracks confirmed sockets: no extra registry writes.
    assert!(t.registry.calls.is_empty(), "{:?}", t.registry.calls);
}

#[test]
fn unconfirmed_accept_that_proc_does_not_know_is_ignored() {
    let mut t = table();
    let mut a = conn(ConnKind::Accept, PID, 9);
    a.flags = 0; // NULL sockaddr, unknown listener: maybe a unix socket
    assert!(apply(&mut t, KernelEvent::Conn(a)).is_empty());
    assert!(t.is_empty());
}

#[test]
fn close_ends_the_stream_and_leaves_the_kernel_entry_alone() {
    let mut t = table();
    apply(&mut t, KernelEvent::Conn(conn(ConnKind::Connect, PID, 5)));
    let out = apply(&mut t, KernelEvent::Conn(conn(ConnKind::Close, PID, 5)));
    assert!(matches!(out.as_slice(), [StreamEvent::Close(c, 100)] if c.fd == 5));
    assert!(t.is_empty());
    // The kernel removed its entry at close(); by now fd 5 may be a new
    // socket whose entry an untrack here would destroy.
    assert!(t.registry.calls.is_empty(), "{:?}", t.registry.calls);
    assert_eq!(t.owners().lock().unwrap().get(&(PID, 5)), None);
    // A second close of the same fd is a no-op.
    assert!(apply(&mut t, KernelEvent::Conn(conn(ConnKind::Close, PID, 5))).is_empty());
}

#[test]
fn fd_reuse_without_close_starts_a_new_connection() {
    let mut t = table();
    let first = apply(&mut t, KernelEvent::Conn(conn(ConnKind::Connect, PID, 5)));
    let out = apply(&mut t, KernelEvent::Conn(conn(ConnKind::Connect, PID, 5)));
    let [StreamEvent::Close(old, _), StreamEvent::Open(new)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(old.id, first[0].conn().id);
    assert_ne!(new.id, old.id);
    assert!(
        t.registry.calls.is_empty(),
        "the kernel entry is the new socket's"
    );
    assert_eq!(t.owners().lock().unwrap().get(&(PID, 5)), Some(&new.id));
}

#[test]
fn process_exit_closes_only_that_process() {
    let mut t = table();
    for fd in [3, 4] {
        apply(&mut t, KernelEvent::Conn(conn(ConnKind::Connect, PID, fd)));
    }
    apply(&mut t, KernelEvent::Conn(conn(ConnKind::Connect, OTHER, 3)));
    let out = apply(&mut t, KernelEvent::Conn(conn(ConnKind::ProcExit, PID, -1)));
    let closed: Vec<_> = out.iter().map(|e| (e.conn().pid, e.conn().fd)).collect();
    assert_eq!(closed, vec![(PID, 3), (PID, 4)]);
    assert_eq!(t.len(), 1);
    // No close() ran in the kernel: its entries go from here.
    assert_eq!(
        t.registry.calls,
        vec![format!("untrack {PID} 3"), format!("untrack {PID} 4")]
    );
}

fn exec(pid: u32, args: &[u8], env: &[u8]) -> KernelEvent {
    let mut comm = [0u8; 16];
    comm[..4].copy_from_slice(b"curl");
    KernelEvent::Exec(ExecRecord {
        pid,
        ts_ns: 50,
        comm: Comm(comm),
        filename: "/usr/bin/curl".into(),
        strings: [args, env].concat(),
        args_len: args.len(),
    })
}

/// A process gone before its first network act is read (a short CLI run)
/// is named from the kernel's copy of its exec; one exec'd again, or
/// exited, leaves nothing behind for a later process with its pid.
#[test]
fn a_process_gone_before_its_lookup_is_named_from_its_exec() {
    const GONE: u32 = 0x7fff_ff10;
    let mut t = table();
    apply(
        &mut t,
        KernelEvent::Conn(conn(ConnKind::ProcExec, GONE, -1)),
    );
    apply(
        &mut t,
        exec(
            GONE,
            b"curl\0-s\0http://user:pw@db/\0",
            b"PATH=/bin\0OTEL_SERVICE_NAME=nightly-export\0",
        ),
    );
    let out = apply(&mut t, KernelEvent::Conn(conn(ConnKind::Connect, GONE, 3)));
    let [StreamEvent::Open(info)] = out.as_slice() else {
        panic!("{out:?}")
    };
    let p = &info.process;
    assert_eq!(p.otel_service_name.as_deref(), Some("nightly-export"));
    assert_eq!(p.exe_name.as_deref(), Some("curl"));
    assert_eq!(p.comm, "curl");
    assert_eq!(p.cmdline, ["curl", "-s", "http://user:pw@db/"]);
    assert_eq!(t.stats.processes_gone_named_at_exec.load(Relaxed), 1);
    assert_eq!(t.stats.processes_gone.load(Relaxed), 0);

    // Its exit forgets it; an exec record with no lookup before the exit
    // is dropped with it.
    apply(
        &mut t,
        KernelEvent::Conn(conn(ConnKind::ProcExit, GONE, -1)),
    );
    apply(&mut t, exec(GONE, b"x\0", b"OTEL_SERVICE_NAME=stale\0"));
    apply(
        &mut t,
        KernelEvent::Conn(conn(ConnKind::ProcExit, GONE, -1)),
    );
    let out = apply(&mut t, KernelEvent::Conn(conn(ConnKind::Connect, GONE, 4)));
    let [StreamEvent::Open(info)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(info.process.otel_service_name, None);
    assert_eq!(t.stats.processes_gone.load(Relaxed), 1);
}

#[test]
fn connections_from_the_agent_itself_are_marked() {
    let mut t = table();
    let mut own = conn(ConnKind::Tuple, 1, -1);
    own.flags |= sonde_common::conn_flags::OWN;
    own.tuple = Some(tuple("127.0.0.1:43000", "127.0.0.1:4317"));
    assert!(
        apply(&mut t, KernelEvent::Conn(own.clone())).is_empty(),
        "no connection for the agent's socket"
    );
    let mut a = conn(ConnKind::Accept, PID, 9);
    a.tuple = Some(tuple("127.0.0.1:4317", "127.0.0.1:43000"));
    let out = apply(&mut t, KernelEvent::Conn(a.clone()));
    assert!(matches!(out.as_slice(), [StreamEvent::Open(i)] if i.peer_is_agent));
    // A traced client given the same local port towards another server
    // (Linux shares ports between different peers) is not the agent.
    let mut other = conn(ConnKind::Accept, PID, 11);
    other.tuple = Some(tuple("127.0.0.1:8080", "127.0.0.1:43000"));
    let out = apply(&mut t, KernelEvent::Conn(other));
    assert!(matches!(out.as_slice(), [StreamEvent::Open(i)] if !i.peer_is_agent));
    // Once the agent's socket closes, the address is anyone's again.
    own.kind = ConnKind::Close;
    apply(&mut t, KernelEvent::Conn(own));
    a.fd = 10;
    let out = apply(&mut t, KernelEvent::Conn(a));
    assert!(matches!(out.as_slice(), [StreamEvent::Open(i)] if !i.peer_is_agent));
}

#[test]
fn sweep_removes_connections_of_dead_processes() {
    let mut t = table();
    apply(&mut t, KernelEvent::Conn(conn(ConnKind::Connect, PID, 3)));
    let mut out = vec![];
    // The first sweep only marks it: its last records may still be queued.
    // (Exits are checked whether or not records were lost.)
    t.sweep(0, &mut out);
    assert!(out.is_empty(), "{out:?}");
    // They come, and find their connection.
    let out = apply(&mut t, data(PID, 3, b"late"));
    assert!(matches!(out.as_slice(), [StreamEvent::Data(..)]), "{out:?}");
    let mut out = vec![];
    t.sweep(0, &mut out);
    assert_eq!(out.len(), 1);
    assert!(t.is_empty());
}

/// A table that knows this test process, whose real fds the sweeps read.
fn own_table() -> (u32, ConnTable<Recorder>) {
    let pid = std::process::id();
    let mut t = table();
    t.processes().insert(ProcessInfo {
        pid,
        comm: "self".into(),
        ..Default::default()
    });
    (pid, t)
}

/// A socket closed while its records lag behind /proc: one sweep does not
/// end it, so its last data arrive to the connection they belong to, not
/// to a new one opened from /proc.
#[test]
fn a_closed_socket_is_swept_only_when_two_sweeps_find_it_gone() {
    let (pid, mut t) = own_table();
    // An fd number no socket of this process has.
    let fd = 100_001;
    apply(&mut t, KernelEvent::Conn(conn(ConnKind::Connect, pid, fd)));
    let mut out = vec![];
    // Its close record was lost.
    t.sweep(1, &mut out);
    assert!(out.is_empty(), "{out:?}");
    let out = apply(&mut t, data(pid, fd, b"tail"));
    assert!(matches!(out.as_slice(), [StreamEvent::Data(..)]), "{out:?}");
    let mut out = vec![];
    t.sweep(1, &mut out);
    assert!(
        matches!(out.as_slice(), [StreamEvent::Close(..)]),
        "{out:?}"
    );
    assert_eq!(t.stats.swept_closes.load(Relaxed), 1);
}

/// With no record lost, every close was read: a sweep looks at fds only
/// at every `FULL_SWEEP_EVERY`th (a socket closed without `close()`, here
/// an fd that is not open), or as soon as records were lost.
#[test]
fn a_sweep_looks_at_fds_after_lost_records_or_at_the_full_sweep() {
    let (pid, mut t) = own_table();
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (closed, file) = (100_002, std::fs::File::open("/proc/self/status").unwrap());
    for fd in [open.as_raw_fd(), closed, file.as_raw_fd()] {
        apply(&mut t, KernelEvent::Conn(conn(ConnKind::Connect, pid, fd)));
    }
    // The fds ended so far, in order of fd.
    let ended = |out: &[StreamEvent]| -> Vec<i32> {
        let mut fds: Vec<i32> = out
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Close(c, _) => Some(c.fd),
                _ => None,
            })
            .collect();
        fds.sort_unstable();
        fds
    };
    let mut out = vec![];
    for _ in 1..FULL_SWEEP_EVERY {
        t.sweep(0, &mut out);
    }
    assert_eq!(
        ended(&out),
        Vec::<i32>::new(),
        "nothing lost, nothing looked at"
    );
    // The full sweep suspects both, the next ends them.
    t.sweep(0, &mut out);
    assert_eq!(ended(&out), Vec::<i32>::new());
    t.sweep(0, &mut out);
    assert_eq!(ended(&out), vec![file.as_raw_fd(), closed]);
    // A record lost: the next sweep looks, the one after ends.
    let other = 100_003;
    apply(
        &mut t,
        KernelEvent::Conn(conn(ConnKind::Connect, pid, other)),
    );
    t.sweep(0, &mut out);
    assert_eq!(ended(&out).len(), 2, "not looked at yet");
    t.sweep(1, &mut out);
    t.sweep(1, &mut out);
    assert_eq!(ended(&out), vec![file.as_raw_fd(), closed, other]);
    assert_eq!(t.len(), 1, "the open socket stays");
    assert_eq!(t.stats.swept_closes.load(Relaxed), 3);
}

#[test]
fn data_for_an_unknown_socket_opens_it_and_counts_the_miss() {
    let mut t = table();
    let out = apply(&mut t, data(PID, 11, b"x"));
    let [StreamEvent::Open(o), StreamEvent::Data(d, _)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(o.id, d.id);
    assert_eq!(o.role, Role::Client); // the kernel's role
    assert_eq!(t.stats.unresolved_sockets.load(Relaxed), 1);
}

#[test]
fn seed_registers_preexisting_sockets_in_kernel_and_table() {
    let mut t = table();
    let scan = procnet::ScanResult {
        sockets: vec![procnet::FoundSocket {
            pid: PID,
            fd: 4,
            inode: 1,
            tuple: tuple("127.0.0.1:80", "127.0.0.1:5555"),
            role: Role::Server,
        }],
        listeners: vec![(PID, 3, 80)],
    };
    let mut out = vec![];
    t.seed(&scan, &mut out);
    assert_eq!(
        t.registry.calls,
        vec![
            format!("listener {PID} 3 :80"),
            format!("track {PID} 4 role=2")
        ]
    );
    let out = apply(&mut t, data(PID, 4, b"HTTP/1.1 200 OK"));
    let [StreamEvent::Data(info, _)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert!(info.preexisting);
    assert_eq!(info.role, Role::Server);
}

fn listen(t: &mut ConnTable<Recorder>, pid: u32, fd: i32, port: u16) {
    let mut l = conn(ConnKind::Listen, pid, fd);
    l.listen_port = port;
    apply(t, KernelEvent::Conn(l));
}

fn estab(t: &mut ConnTable<Recorder>, ts: u64, local: &str, remote: &str) {
    let mut e = conn(ConnKind::ServerEstab, 0, -1);
    e.ts_ns = ts;
    e.tuple = Some(tuple(local, remote));
    apply(t, KernelEvent::Conn(e));
}

fn accept_null(
    t: &mut ConnTable<Recorder>,
    pid: u32,
    listen_fd: i32,
    fd: i32,
) -> Option<SocketTuple> {
    let mut a = conn(ConnKind::Accept, pid, fd);
    a.listen_fd = listen_fd;
    a.ts_ns = 150;
    let out = apply(t, KernelEvent::Conn(a));
    match out.as_slice() {
        [StreamEvent::Open(info)] => info.tuple,
        other => panic!("{other:?}"),
    }
}

#[test]
fn accept_without_sockaddr_takes_the_only_pending_tuple_of_its_port() {
    let mut t = table();
    listen(&mut t, PID, 3, 8080);
    estab(&mut t, 100, "127.0.0.1:9999", "127.0.0.1:1111"); // another port
    estab(&mut t, 110, "127.0.0.1:8080", "127.0.0.1:2222");
    assert_eq!(
        accept_null(&mut t, PID, 3, 10),
        Some(tuple("127.0.0.1:8080", "127.0.0.1:2222"))
    );
    // Claimed: a second accept has nothing left to take.
    assert_eq!(accept_null(&mut t, PID, 3, 11), None);
}

#[test]
fn two_pending_tuples_on_one_port_are_ambiguous() {
    let mut t = table();
    listen(&mut t, PID, 3, 8080);
    estab(&mut t, 100, "127.0.0.1:8080", "127.0.0.1:2222");
    estab(&mut t, 101, "10.1.0.5:8080", "10.1.0.9:3333"); // same port, other netns
    assert_eq!(accept_null(&mut t, PID, 3, 10), None);
}

#[test]
fn accepts_with_a_tuple_clear_their_pending_entry() {
    let mut t = table();
    listen(&mut t, PID, 3, 8080);
    estab(&mut t, 100, "127.0.0.1:8080", "127.0.0.1:2222");
    estab(&mut t, 101, "127.0.0.1:8080", "127.0.0.1:3333");
    let mut a = conn(ConnKind::Accept, PID, 10);
    a.tuple = Some(tuple("127.0.0.1:8080", "127.0.0.1:2222"));
    apply(&mut t, KernelEvent::Conn(a));
    assert_eq!(
        accept_null(&mut t, PID, 3, 11),
        Some(tuple("127.0.0.1:8080", "127.0.0.1:3333"))
    );
}

#[test]
fn stale_pending_tuples_expire() {
    let mut t = table();
    listen(&mut t, PID, 3, 8080);
    estab(&mut t, 100, "127.0.0.1:8080", "127.0.0.1:2222"); // never accepted by us
    estab(
        &mut t,
        100 + PENDING_TTL_NS,
        "127.0.0.1:8080",
        "127.0.0.1:3333",
    );
    assert_eq!(
        accept_null(&mut t, PID, 3, 10),
        Some(tuple("127.0.0.1:8080", "127.0.0.1:3333"))
    );
}

/// A burst of accepts (a client opening its pool): the first ones are
/// ambiguous and learnt from /proc, which takes them out of the pending
/// set, so the last is claimed from it even when its peer has already
/// gone from /proc (user space read the accept late).
#[test]
fn accepts_learnt_from_proc_clear_their_pending_entry() {
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let first = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let second = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    let server = |c: &std::net::TcpStream| SocketTuple {
        local: c.peer_addr().unwrap(),
        remote: c.local_addr().unwrap(),
    };
    let (one, two) = (server(&first), server(&second));
    let pid = std::process::id();
    let mut t = table();
    listen(&mut t, pid, listener.as_raw_fd(), port);
    for (ts, s) in [(100, one), (101, two)] {
        let mut e = conn(ConnKind::ServerEstab, 0, -1);
        e.ts_ns = ts;
        e.tuple = Some(s);
        apply(&mut t, KernelEvent::Conn(e));
    }
    assert_eq!(
        accept_null(&mut t, pid, listener.as_raw_fd(), accepted.as_raw_fd()),
        Some(one),
        "two candidates: from /proc"
    );
    // No such fd in /proc: the one candidate left is its tuple.
    assert_eq!(
        accept_null(&mut t, pid, listener.as_raw_fd(), 100_000),
        Some(two)
    );
}
