//! Seeing through TCP relays (Docker's `docker-proxy`, which serves
//! published ports on loopback): a relay accepts a connection and opens one
//! to the backend for it, then copies bytes both ways (with splice(2), so
//! sonde sees no payload). Its two connections are paired in the order it
//! accepts and connects, and the pair lets the backend's server end find
//! the client end it is serving for socket-pair stitching, as if the relay
//! were not there. A relay makes no spans of its own.
//!
//! Limit: pairing is by order, exact while the relay sets up one
//! connection at a time; two connections accepted at the same instant may
//! pair crosswise (their requests still join a trace, possibly the other's).
use foldhash::HashMap;
use std::{collections::VecDeque, net::SocketAddr};

use crate::{connections::ConnInfo, event::Role};

/// A connection as its client sees it: (client's local, client's remote).
pub type ClientKey = (SocketAddr, SocketAddr);

#[derive(Default, Clone)]
pub struct Relays {
    /// Per relay process: accepted connections (keys of their clients) and
    /// backend connections (keys as the relay's client end), not yet paired.
    accepted: HashMap<u32, VecDeque<(u64, ClientKey)>>,
    connected: HashMap<u32, VecDeque<(u64, ClientKey)>>,
    /// Backend connection key -> key of the client it relays for, and back.
    upstream: HashMap<ClientKey, ClientKey>,
    downstream: HashMap<ClientKey, ClientKey>,
    /// Relay connection id -> the key it was paired under.
    by_conn: HashMap<u64, ClientKey>,
}

/// Bound on pairs and unpaired connections per relay.
const MAX_PAIRS: usize = 65536;

impl Relays {
    /// A relay connection whose endpoints are known (open, or its tuple
    /// arrived): queue it, and pair the oldest accepted with the oldest
    /// backend connection.
    pub fn on_known(&mut self, c: &ConnInfo) {
        let Some(t) = c.tuple.filter(|t| t.local.port() != 0) else {
            return;
        };
        if self.by_conn.contains_key(&c.id) || self.by_conn.len() >= MAX_PAIRS {
            return;
        }
        let (queue, key) = match c.role {
            Role::Server => (self.accepted.entry(c.pid).or_default(), (t.remote, t.local)),
            _ => (
                self.connected.entry(c.pid).or_default(),
                (t.local, t.remote),
            ),
        };
        if queue.iter().any(|(id, _)| *id == c.id) {
            return;
        }
        queue.push_back((c.id, key));
        let (Some(a), Some(b)) = (
            self.accepted.get_mut(&c.pid),
            self.connected.get_mut(&c.pid),
        ) else {
            return;
        };
        while let (Some(&(in_id, client)), Some(&(out_id, backend))) = (a.front(), b.front()) {
            a.pop_front();
            b.pop_front();
            self.upstream.insert(backend, client);
            self.downstream.insert(client, backend);
            self.by_conn.insert(in_id, client);
            self.by_conn.insert(out_id, backend);
        }
    }

    /// A relay connection closed (or its process exited): forget it,
    /// paired or not.
    pub fn on_close(&mut self, c: &ConnInfo) {
        for queues in [&mut self.accepted, &mut self.connected] {
            if let Some(q) = queues.get_mut(&c.pid) {
                q.retain(|(id, _)| *id != c.id);
                if q.is_empty() {
                    queues.remove(&c.pid);
                }
            }
        }
        if let Some(key) = self.by_conn.remove(&c.id) {
            if let Some(client) = self.upstream.remove(&key) {
                self.downstream.remove(&client);
            }
            if let Some(backend) = self.downstream.remove(&key) {
                self.upstream.remove(&backend);
            }
        }
    }

    /// The connection a server end really serves: through any relays, the
    /// original client's key.
    pub fn origin(&self, mut key: ClientKey) -> ClientKey {
        for _ in 0..8 {
            match self.upstream.get(&key) {
                Some(k) => key = *k,
                None => break,
            }
        }
        key
    }

    /// The connection that finally reaches the server, through any relays.
    pub fn destination(&self, mut key: ClientKey) -> ClientKey {
        for _ in 0..8 {
            match self.downstream.get(&key) {
                Some(k) => key = *k,
                None => break,
            }
        }
        key
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        connections::process::ProcessInfo,
        event::{Role, SocketTuple},
    };

    fn conn(id: u64, role: Role, local: &str, remote: &str) -> ConnInfo {
        ConnInfo {
            id,
            pid: 7,
            fd: id as i32,
            role,
            tuple: Some(SocketTuple {
                local: local.parse().unwrap(),
                remote: remote.parse().unwrap(),
            }),
            process: Arc::new(ProcessInfo {
                pid: 7,
                comm: "docker-proxy".into(),
                ..Default::default()
            }),
            opened_ns: 0,
            preexisting: false,
            peer_is_agent: false,
            opened_by: (0, 0),
            tls: false,
            pipe: None,
        }
    }

    #[test]
    fn pairs_in_order_and_maps_both_ways() {
        let mut r = Relays::default();
        let in1 = conn(1, Role::Server, "127.0.0.1:8080", "127.0.0.1:5001");
        let in2 = conn(2, Role::Server, "127.0.0.1:8080", "127.0.0.1:5002");
        let out1 = conn(3, Role::Client, "172.17.0.1:6001", "172.17.0.2:80");
        let out2 = conn(4, Role::Client, "172.17.0.1:6002", "172.17.0.2:80");
        assert!(in1.process.named(&["docker-proxy".into()]));
        for c in [&in1, &in2, &out1, &out2] {
            r.on_known(c);
        }
        let client1 = (
            "127.0.0.1:5001".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap(),
        );
        let backend1 = (
            "172.17.0.1:6001".parse().unwrap(),
            "172.17.0.2:80".parse().unwrap(),
        );
        let backend2 = (
            "172.17.0.1:6002".parse().unwrap(),
            "172.17.0.2:80".parse().unwrap(),
        );
        assert_eq!(r.origin(backend1), client1);
        assert_eq!(r.destination(client1), backend1);
        assert_eq!(r.origin(backend2).0.port(), 5002);
        r.on_close(&out1);
        assert_eq!(r.origin(backend1), backend1, "forgotten on close");
        assert_eq!(r.destination(client1), client1);
    }

    #[test]
    fn an_accept_whose_backend_failed_does_not_shift_the_pairing() {
        let mut r = Relays::default();
        let dead = conn(1, Role::Server, "127.0.0.1:8080", "127.0.0.1:5001");
        r.on_known(&dead);
        r.on_close(&dead); // the dial failed: the relay closed the inbound end
        r.on_known(&conn(2, Role::Server, "127.0.0.1:8080", "127.0.0.1:5002"));
        r.on_known(&conn(3, Role::Client, "172.17.0.1:6001", "172.17.0.2:80"));
        assert_eq!(
            r.origin((
                "172.17.0.1:6001".parse().unwrap(),
                "172.17.0.2:80".parse().unwrap()
            ))
            .0
            .port(),
            5002
        );
    }
}
