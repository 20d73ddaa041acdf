//! Helpers: spawning peers and collecting what the agent reports about them.
use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use sonde::{
    connections::StreamEvent,
    event::DataRecord,
    session::{Session, SessionConfig},
};

/// Upper bound for waiting on events, so a broken probe fails the test
/// instead of hanging it. Never an assertion on speed.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A child killed and reaped on drop: a failing test leaves no server
/// (or capturing agent) behind.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // A no-op once the child has been waited for.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Peer {
    pub child: Child,
    /// Started with `--wait`: holds its exchange until `go`.
    waiting: bool,
    out: BufReader<ChildStdout>,
    pub pid: u32,
    pub fd: i32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl Peer {
    fn spawn(args: &[String]) -> (Child, BufReader<ChildStdout>) {
        let exe = std::env::current_exe().expect("own executable");
        let mut child = Command::new(exe)
            .arg("peer")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn peer");
        let out = BufReader::new(child.stdout.take().unwrap());
        (child, out)
    }

    fn line(out: &mut BufReader<ChildStdout>, prefix: &str) -> String {
        loop {
            let mut l = String::new();
            if out.read_line(&mut l).unwrap() == 0 {
                panic!("peer exited before printing {prefix}");
            }
            if let Some(rest) = l.trim_end().strip_prefix(prefix) {
                return rest.trim().to_string();
            }
        }
    }

    fn from(child: Child, mut out: BufReader<ChildStdout>, waiting: bool) -> Peer {
        let sock = Self::line(&mut out, "SOCKET");
        let field = |k: &str| {
            sock.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k} in {sock}"))
                .to_string()
        };
        Peer {
            pid: child.id(),
            fd: field("fd").parse().unwrap(),
            local: field("local").parse().unwrap(),
            remote: field("remote").parse().unwrap(),
            child,
            waiting,
            out,
        }
    }

    /// (pid, fd) of the peer's socket.
    pub fn key(&self) -> (u32, i32) {
        (self.pid, self.fd)
    }

    /// The fd of the second connection a peer of mode `two` printed.
    pub fn side_fd(&mut self) -> i32 {
        Self::line(&mut self.out, "SIDE")
            .trim_start_matches("fd=")
            .parse()
            .unwrap()
    }

    /// Lets a `--wait` peer go on.
    pub fn go(&mut self) {
        Self::line(&mut self.out, "READY");
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the peer to finish its exchange and exit successfully.
    pub fn finish(mut self) {
        Self::line(&mut self.out, "DONE");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "peer {} failed: {status}", self.pid);
    }
}

/// Starts a server and a client peer speaking `mode`.
pub fn pair(mode: &str, extra: &[&str]) -> (Peer, Peer) {
    let mut args: Vec<String> = vec!["server".into(), mode.into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let (schild, mut sout) = Peer::spawn(&args);
    let port = Peer::line(&mut sout, "LISTEN");
    let mut args: Vec<String> = vec!["client".into(), mode.into(), port];
    args.extend(extra.iter().map(|s| s.to_string()));
    let (cchild, cout) = Peer::spawn(&args);
    let waiting = extra.contains(&"--wait");
    let client = Peer::from(cchild, cout, waiting);
    let server = Peer::from(schild, sout, waiting);
    (server, client)
}

/// Lets both peers finish their exchange and returns every event up to the
/// close of both sockets.
pub fn complete(
    rt: &tokio::runtime::Runtime,
    session: &mut Session,
    mut server: Peer,
    mut client: Peer,
) -> Vec<StreamEvent> {
    let (s, c) = (server.key(), client.key());
    if server.waiting {
        server.go();
        client.go();
    }
    client.finish();
    server.finish();
    collect(rt, session, |ev| closed(ev, s) && closed(ev, c))
}

/// The payload bytes `pid` moved in one direction, concatenated in order.
pub fn bytes_of(events: &[StreamEvent], pid: u32, dir: sonde::event::Direction) -> Vec<u8> {
    data_of(events, pid)
        .iter()
        .filter(|(_, d)| d.direction == dir)
        .flat_map(|(_, d)| d.payload.clone())
        .collect()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn start(rt: &tokio::runtime::Runtime, cfg: SessionConfig) -> Session {
    let _guard = rt.enter();
    Session::start(cfg).unwrap_or_else(|e| panic!("agent did not start: {e}"))
}

/// Collects events until `done` holds for the events gathered so far.
pub fn collect(
    rt: &tokio::runtime::Runtime,
    session: &mut Session,
    mut done: impl FnMut(&[StreamEvent]) -> bool,
) -> Vec<StreamEvent> {
    rt.block_on(async {
        let mut got = vec![];
        let end = Instant::now() + DEADLINE;
        while !done(&got) {
            let left = end.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, session.events.recv()).await {
                Ok(Some(ev)) => got.push(ev),
                Ok(None) => panic!("agent stream ended"),
                Err(_) => panic!(
                    "gave up waiting for events after {DEADLINE:?}; got {} events: {:#?}",
                    got.len(),
                    got.iter().rev().take(10).collect::<Vec<_>>()
                ),
            }
        }
        got
    })
}

/// True once the close of `peer`'s socket was reported.
pub fn closed(events: &[StreamEvent], peer: (u32, i32)) -> bool {
    events
        .iter()
        .any(|e| matches!(e, StreamEvent::Close(c, _) if (c.pid, c.fd) == peer))
}

/// Data events of one process.
pub fn data_of(
    events: &[StreamEvent],
    pid: u32,
) -> Vec<(&sonde::connections::ConnInfo, &DataRecord)> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Data(c, d) if c.pid == pid => Some((c, d)),
            _ => None,
        })
        .collect()
}
