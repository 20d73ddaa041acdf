//! TCP sockets as /proc shows them: the startup scan for connections that
//! predate the agent, and the fallback when the kernel could not tell a
//! socket's tuple (accept with a NULL sockaddr).
use std::{
    cell::RefCell,
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use procfs::{
    net::{TcpNetEntry, TcpState},
    process::{FDTarget, Process},
};

use crate::event::{Role, SocketTuple};

/// One socket found by the scan.
#[derive(Debug, Clone)]
pub struct FoundSocket {
    pub pid: u32,
    pub fd: i32,
    pub inode: u64,
    pub tuple: SocketTuple,
    pub role: Role,
}

#[derive(Debug, Default)]
pub struct ScanResult {
    pub sockets: Vec<FoundSocket>,
    /// (pid, fd, local port) of TCP listening sockets.
    pub listeners: Vec<(u32, i32, u16)>,
}

/// The TCP tables of one network namespace.
struct NetTables {
    by_inode: HashMap<u64, TcpNetEntry>,
    listening: Vec<SocketAddr>,
}

impl NetTables {
    fn read(p: &Process) -> Option<NetTables> {
        let mut entries = p.tcp().ok()?;
        entries.extend(p.tcp6().unwrap_or_default());
        let listening = entries
            .iter()
            .filter(|e| e.state == TcpState::Listen)
            .map(|e| e.local_address)
            .collect();
        let by_inode = entries
            .into_iter()
            .filter(|e| e.inode != 0)
            .map(|e| (e.inode, e))
            .collect();
        Some(NetTables {
            by_inode,
            listening,
        })
    }

    /// The connected TCP socket `inode`, as `fd` of `pid`; None when the
    /// tables do not list it (not TCP) or it is listening or closing.
    fn connected(&self, pid: u32, fd: i32, inode: u64) -> Option<FoundSocket> {
        let e = self.by_inode.get(&inode)?;
        let tuple = tuple_of(e);
        connected(&e.state).then(|| FoundSocket {
            pid,
            fd,
            inode,
            tuple,
            role: self.role_of(tuple.local),
        })
    }

    /// A connection is the server end when its local port is listened on,
    /// at its address or at the wildcard address.
    fn role_of(&self, local: SocketAddr) -> Role {
        let served = self
            .listening
            .iter()
            .any(|l| l.port() == local.port() && (l.ip() == local.ip() || l.ip().is_unspecified()));
        if served {
            Role::Server
        } else {
            Role::Client
        }
    }
}

fn tuple_of(e: &TcpNetEntry) -> SocketTuple {
    SocketTuple {
        local: unmap(e.local_address),
        remote: unmap(e.remote_address),
    }
}

/// Dual-stack sockets list IPv4 peers as ::ffff:a.b.c.d; the kernel events use
/// plain IPv4 for those (see event.rs), so /proc results must match.
fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

fn connected(state: &TcpState) -> bool {
    !matches!(
        state,
        TcpState::Listen | TcpState::Close | TcpState::TimeWait
    )
}

/// Scans the processes `wanted` accepts for TCP sockets.
pub fn scan(wanted: impl Fn(u32) -> bool) -> ScanResult {
    let mut out = ScanResult::default();
    let mut tables: HashMap<u64, Option<NetTables>> = HashMap::new();
    let Ok(procs) = procfs::process::all_processes() else {
        return out;
    };
    for p in procs.flatten() {
        let pid = p.pid as u32;
        if !wanted(pid) {
            continue;
        }
        let Ok(fds) = p.fd() else { continue };
        let sockets: Vec<(i32, u64)> = fds
            .flatten()
            .filter_map(|f| match f.target {
                FDTarget::Socket(inode) => Some((f.fd, inode)),
                _ => None,
            })
            .collect();
        if sockets.is_empty() {
            continue;
        }
        let Some(ns) = super::process::netns_of(pid) else {
            continue;
        };
        let t = tables.entry(ns).or_insert_with(|| NetTables::read(&p));
        let Some(t) = t else { continue };
        for (fd, inode) in sockets {
            let Some(e) = t.by_inode.get(&inode) else {
                continue;
            }; // not TCP
            if e.state == TcpState::Listen {
                out.listeners.push((pid, fd, e.local_address.port()));
            } else if let Some(s) = t.connected(pid, fd, inode) {
                out.sockets.push(s);
            }
        }
    }
    out
}

/// How long one read of a namespace's TCP tables answers lookups of the
/// sockets it lists. A socket's tuple never changes, and reading the tables
/// costs milliseconds: a burst of accepts without a sockaddr (a client
/// opening its pool) is resolved by one read instead of one each, before
/// the connections are gone.
const FRESH: Duration = Duration::from_secs(1);

thread_local! {
    /// The last tables read, with their namespace and when.
    static RECENT: RefCell<Option<(u64, Instant, NetTables)>> = const { RefCell::new(None) };
}

/// Looks up one fd: its socket inode, then that inode in the process's TCP
/// tables. None when the fd is gone or is not a TCP socket.
pub fn resolve(pid: u32, fd: i32) -> Option<FoundSocket> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let inode: u64 = link
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()?;
    let ns = super::process::netns_of(pid)?;
    let found = |t: &NetTables| t.connected(pid, fd, inode);
    let recent = RECENT.with_borrow(|r| match r {
        Some((n, at, t)) if *n == ns && at.elapsed() < FRESH => found(t),
        _ => None,
    });
    if recent.is_some() {
        return recent;
    }
    let t = NetTables::read(&Process::new(pid as i32).ok()?)?;
    let out = found(&t);
    RECENT.with_borrow_mut(|r| *r = Some((ns, Instant::now(), t)));
    out
}

/// Whether `fd` of `pid` is still a socket (after exec, CLOEXEC ones are not).
pub fn is_socket(pid: u32, fd: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|l| l.to_string_lossy().starts_with("socket:"))
        .unwrap_or(false)
}
