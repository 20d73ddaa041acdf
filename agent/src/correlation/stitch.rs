//! Socket-pair stitching on one node: an HTTP client's request and the
//! server's read of the same bytes are one hop. The client's context is
//! queued under its (local, remote) endpoints; the server pops it under its
//! (remote, local) ones, seen through relays and DNAT. See "Socket-pair
//! stitching" in ARCHITECTURE.md.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::{
    relay::{ClientKey, Relays},
    Drops, Evidence,
};
use crate::{
    connections::{process::ProcessInfo, ConnInfo},
    event::{Role, SocketTuple},
    spans::SpanCtx,
};

/// Bound on connections with requests awaiting their partner.
pub const MAX_STITCH: usize = 65536;
/// Bound on requests queued per connection.
const MAX_QUEUED: usize = 256;

/// Reads the host's connection tracking table (I/O, so it is handed in:
/// correlation itself does none). Server's (local, remote) -> the client's
/// original view.
pub type NatLookup = Box<dyn FnMut(SocketAddr, SocketAddr) -> Option<ClientKey> + Send>;

/// A server request still waiting for its client's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    pub pid: u32,
    pub conn: u64,
    /// Exit of the read that delivered its first byte.
    pub since: u64,
    /// It carried a traceparent, which already names its client span: the
    /// late record only has to find it (and not wait for the next request).
    pub own_context: bool,
    /// HTTP/2: its stream (0 for HTTP/1.x).
    pub stream: u32,
}

/// A client request written and not yet answered.
#[derive(Debug, Clone, Copy)]
pub struct ClientRequest {
    pub ctx: SpanCtx,
    pub evidence: Evidence,
    /// A server on this node read it: that server's span will come, as
    /// this one's child.
    pub read_on_node: bool,
    /// HTTP/2: its stream (0 for HTTP/1.x).
    pub stream: u32,
}

pub struct Stitcher {
    /// Contexts of HTTP client requests written and not yet read by a
    /// server on this node, by the client's (local, remote), in order, with
    /// the client connection and the HTTP/2 stream (0: HTTP/1.x). A
    /// server takes its request's stream: HTTP/1.x's are in order, and an
    /// HTTP/2 stream has the same id at both ends.
    queued: HashMap<ClientKey, VecDeque<(SpanCtx, u64, u32)>>,
    /// The same clients by their local endpoint alone (-> remote): a server
    /// that sees this endpoint but another local address is behind DNAT.
    by_local: HashMap<SocketAddr, SocketAddr>,
    /// Server connections resolved through conntrack -> the client's view.
    nat: HashMap<u64, ClientKey>,
    nat_lookup: NatLookup,
    /// The same contexts per client connection, for the client span itself.
    client_requests: HashMap<u64, VecDeque<ClientRequest>>,
    /// Server requests that found no partner yet, by the client's view: the
    /// client's record may enter the ring a little after the server's.
    unpartnered: HashMap<ClientKey, VecDeque<Waiting>>,
    /// The same waits by the server's remote endpoint (the client's source):
    /// a late client that connected to another address is behind DNAT.
    waiting_from: HashMap<SocketAddr, ClientKey>,
    /// Server connections, by the client's view, whose client's records do
    /// not come (an untraced process, the agent itself, a connection left
    /// opaque): their requests no longer wait or hold their traces, and a
    /// client record that comes after all is not queued (see `wait`).
    partnerless: HashSet<ClientKey>,
    /// Server ends on this node by their client's (local, remote): names
    /// the peer of a call whose server makes no spans (a database). Keyed
    /// from the client's side, because a forking server (PostgreSQL) closes
    /// its copy at once.
    servers: HashMap<ClientKey, Arc<ProcessInfo>>,
    /// Server connections that carried payload themselves: not a forking
    /// server's hand-off copy, so their server end is forgotten at their own
    /// close (their client may never have been seen).
    served: HashSet<u64>,
    /// Addresses of this node: the local ends of the connections seen.
    node_ips: HashSet<IpAddr>,
    pub relays: Relays,
    /// Server connections matched through conntrack.
    pub nat_resolved: u64,
}

impl Stitcher {
    pub fn new(relays: Relays, nat_lookup: NatLookup) -> Stitcher {
        Stitcher {
            queued: HashMap::new(),
            by_local: HashMap::new(),
            nat: HashMap::new(),
            nat_lookup,
            client_requests: HashMap::new(),
            unpartnered: HashMap::new(),
            waiting_from: HashMap::new(),
            partnerless: HashSet::new(),
            servers: HashMap::new(),
            served: HashSet::new(),
            node_ips: HashSet::new(),
            relays,
            nat_resolved: 0,
        }
    }

    /// How the client end names a server connection: its own tuple
    /// reversed, or through a relay the relayed client's, or through DNAT
    /// (a client with this source endpoint waits on another destination)
    /// the original tuple conntrack holds, resolved once per connection.
    pub fn client_view(&mut self, conn: u64, t: SocketTuple, drops: &mut Drops) -> ClientKey {
        let key = self.relays.origin((t.remote, t.local));
        if self.queued.contains_key(&key) {
            return key;
        }
        if let Some(k) = self.nat.get(&conn) {
            return *k;
        }
        match self.by_local.get(&t.remote) {
            Some(dst) if *dst != t.local => match (self.nat_lookup)(t.local, t.remote) {
                Some(orig) if orig == (t.remote, *dst) => {
                    self.nat_resolved += 1;
                    if self.nat.len() < MAX_STITCH {
                        self.nat.insert(conn, orig);
                    } else {
                        drops.nat_cache += 1;
                    }
                    orig
                }
                _ => key,
            },
            _ => key,
        }
    }

    pub fn is_node_ip(&self, ip: IpAddr) -> bool {
        self.node_ips.contains(&ip)
    }

    fn note_node_ip(&mut self, ip: IpAddr, drops: &mut Drops) {
        if self.node_ips.len() >= MAX_STITCH && !self.node_ips.contains(&ip) {
            drops.node_ips += self.node_ips.len() as u64;
            self.node_ips.clear();
        }
        self.node_ips.insert(ip);
    }

    /// Remembers which process serves a server-side connection.
    pub fn note_server(&mut self, c: &ConnInfo, drops: &mut Drops) {
        if let (Role::Server, Some(t)) = (c.role, c.tuple) {
            self.note_node_ip(t.local.ip(), drops);
            let key = (t.remote, t.local);
            if self.servers.len() >= MAX_STITCH && !self.servers.contains_key(&key) {
                drops.server_index += self.servers.len() as u64;
                self.servers.clear();
            }
            self.servers.insert(key, c.process.clone());
        }
    }

    /// A server connection's first payload: it serves its requests itself.
    pub fn note_served(&mut self, c: &ConnInfo) {
        if c.role == Role::Server {
            self.served.insert(c.id);
        }
    }

    /// The process known to serve the other end of a client connection.
    pub fn server_of(&self, c: &ConnInfo) -> Option<Arc<ProcessInfo>> {
        let t = c.tuple?;
        let (local, remote) = self.relays.destination((t.local, t.remote));
        self.servers.get(&(local, remote)).cloned()
    }

    /// A server read a request (of HTTP/2 `stream`): the context its client
    /// queued, if seen.
    pub fn take_partner(&mut self, key: ClientKey, stream: u32) -> Option<SpanCtx> {
        let (ctx, client, _) = take_dropping_empty(&mut self.queued, &key, |e| e.2 == stream)?;
        self.read_on_node(client, ctx.span_id);
        Some(ctx)
    }

    /// The client request with this span id was read by a server on this
    /// node (now, or before its record came).
    pub fn read_on_node(&mut self, client: u64, span_id: [u8; 8]) {
        if let Some(r) = self
            .client_requests
            .get_mut(&client)
            .and_then(|q| q.iter_mut().find(|r| r.ctx.span_id == span_id))
        {
            r.read_on_node = true;
        }
    }

    /// Parks a server request until its client's record comes.
    ///
    /// An HTTP/1.x request read (in a later read) while the one before it
    /// on the connection still waits shows that the client's records do not
    /// come: the client wrote the earlier request, and its record entered
    /// the ring, before it could write this one. The connection is then
    /// marked partnerless, this request does not wait, and the earlier
    /// waits are returned for the caller to let go. Without this, a server
    /// whose local clients are not traced held every request for a second
    /// and overflowed the hold table at nginx's rate (issue 16).
    pub fn wait(
        &mut self,
        key: ClientKey,
        w: Waiting,
        drops: &mut Drops,
    ) -> Option<VecDeque<Waiting>> {
        if w.stream == 0 {
            let stale = self
                .unpartnered
                .get(&key)
                .is_some_and(|q| q.iter().any(|o| o.stream == 0 && o.since < w.since));
            if stale {
                if self.partnerless.len() < MAX_STITCH {
                    self.partnerless.insert(key);
                } else {
                    drops.stitch_full += 1;
                }
                self.waiting_from.remove(&key.0);
                return self.unpartnered.remove(&key);
            }
        }
        if self.unpartnered.len() >= MAX_STITCH && !self.unpartnered.contains_key(&key) {
            return None;
        }
        let q = self.unpartnered.entry(key).or_default();
        if q.len() >= MAX_QUEUED {
            q.pop_front();
            drops.late_partners_missed += 1;
        }
        q.push_back(w);
        self.waiting_from.insert(key.0, key);
        None
    }

    /// The connection's client records do not come (see `wait`).
    pub fn is_partnerless(&self, key: &ClientKey) -> bool {
        self.partnerless.contains(key)
    }

    pub fn is_waiting(&self, key: &ClientKey) -> bool {
        self.unpartnered.contains_key(key)
    }

    /// A client wrote a request (of HTTP/2 `stream`): the server request
    /// that read it first, if any.
    pub fn take_waiting(&mut self, key: ClientKey, stream: u32) -> Option<Waiting> {
        let q = self.unpartnered.get_mut(&key)?;
        let w = take(q, |w| w.stream == stream);
        if q.is_empty() {
            self.unpartnered.remove(&key);
            self.waiting_from.remove(&key.0);
        }
        w
    }

    /// The same, for a client behind DNAT: a server waits on a request from
    /// this client's source endpoint, but on another address. Conntrack
    /// confirms the pair (read once per such server connection, then cached
    /// for its later requests).
    pub fn take_waiting_behind_nat(
        &mut self,
        key: ClientKey,
        stream: u32,
        drops: &mut Drops,
    ) -> Option<Waiting> {
        let server_view = *self.waiting_from.get(&key.0)?;
        if server_view.1 == key.1 || (self.nat_lookup)(server_view.1, server_view.0) != Some(key) {
            return None;
        }
        let w = self.take_waiting(server_view, stream)?;
        self.nat_resolved += 1;
        if self.nat.len() < MAX_STITCH {
            self.nat.insert(w.conn, key);
        } else {
            drops.nat_cache += 1;
        }
        Some(w)
    }

    /// A client wrote a request with this context: its own span takes it,
    /// and a server on this node will pop it.
    pub fn client_wrote(
        &mut self,
        c: &ConnInfo,
        ctx: SpanCtx,
        evidence: Evidence,
        stream: u32,
        drops: &mut Drops,
    ) {
        let r = ClientRequest {
            ctx,
            evidence,
            read_on_node: false,
            stream,
        };
        push_bounded(self.client_requests.entry(c.id).or_default(), r, drops);
    }

    /// Queues the context for the server end.
    pub fn queue_for_server(&mut self, c: &ConnInfo, ctx: SpanCtx, stream: u32, drops: &mut Drops) {
        let Some(t) = c.tuple else { return };
        let key = (t.local, t.remote);
        if self.queued.len() >= MAX_STITCH && !self.queued.contains_key(&key) {
            drops.stitch_full += 1;
            return;
        }
        push_bounded(
            self.queued.entry(key).or_default(),
            (ctx, c.id, stream),
            drops,
        );
        self.by_local.insert(t.local, t.remote);
        self.note_node_ip(t.local.ip(), drops);
    }

    /// The context fixed when the client wrote its oldest unanswered
    /// request (of HTTP/2 `stream`).
    pub fn client_exchange_done(&mut self, conn: u64, stream: u32) -> Option<ClientRequest> {
        take_dropping_empty(&mut self.client_requests, &conn, |r| r.stream == stream)
    }

    /// A connection closed: whatever waits on it goes.
    pub fn on_close(&mut self, c: &ConnInfo) {
        let served = self.served.remove(&c.id);
        self.relays.on_close(c);
        self.client_requests.remove(&c.id);
        self.nat.remove(&c.id);
        if let Some(t) = c.tuple {
            self.queued.remove(&(t.local, t.remote));
            // Its queue may be gone already (drained), its index entry not.
            if self.by_local.get(&t.local) == Some(&t.remote) {
                self.by_local.remove(&t.local);
            }
            // A server's waits end with it; a server end is forgotten when
            // its client closes (keys are the client's view).
            if self.unpartnered.remove(&(t.remote, t.local)).is_some() {
                self.waiting_from.remove(&t.remote);
            }
            self.partnerless.remove(&(t.remote, t.local));
            self.servers.remove(&(t.local, t.remote));
            if served {
                self.servers.remove(&(t.remote, t.local));
            }
        }
    }

    /// Entries held per map: client contexts queued for servers (and their
    /// local-endpoint index), per client connection, server waits (and their
    /// source index, and the partnerless connections), server ends, DNAT
    /// resolutions.
    pub fn entries(&self) -> [usize; 5] {
        [
            self.queued.len() + self.by_local.len(),
            self.client_requests.len(),
            self.unpartnered.len() + self.waiting_from.len() + self.partnerless.len(),
            self.servers.len() + self.served.len(),
            self.nat.len(),
        ]
    }
}

/// The first entry `is` accepts: the front for HTTP/1.x, whose requests
/// are answered in order.
fn take<T>(q: &mut VecDeque<T>, is: impl Fn(&T) -> bool) -> Option<T> {
    let i = q.iter().position(is)?;
    q.remove(i)
}

/// `take` from the queue under `key`, and the queue goes once drained: a
/// keep-alive connection between requests (most of them, most of the
/// time) then holds no entry and no allocation here (issue 16: memory with
/// 10,000 idle connections).
fn take_dropping_empty<K: std::hash::Hash + Eq, T>(
    map: &mut HashMap<K, VecDeque<T>>,
    key: &K,
    is: impl Fn(&T) -> bool,
) -> Option<T> {
    let q = map.get_mut(key)?;
    let found = take(q, is);
    if q.is_empty() {
        map.remove(key);
    }
    found
}

fn push_bounded<T>(q: &mut VecDeque<T>, ctx: T, drops: &mut Drops) {
    if q.len() >= MAX_QUEUED {
        q.pop_front();
        drops.stitch_queue += 1;
    }
    q.push_back(ctx);
}
