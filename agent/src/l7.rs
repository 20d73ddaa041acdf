//! Stages 4-7 driver: per connection, detect the protocol, feed the parser,
//! pair requests with responses, link client calls to the request that made
//! them, and turn the results into spans (sampled) and RED metrics (always).
//! Connections that speak nothing sonde parses are released: the kernel
//! stops copying their payload.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
};

use crate::{
    conntrack::{ConnInfo, StreamEvent},
    event::{DataRecord, Direction, Role},
    linker::{Linker, Parent, SpanCtx},
    metrics::{self, Labels, SharedRegistry},
    output::Clock,
    relay::{ClientKey, Relays},
    protocols::{
        amqp::{self, AmqpConnection, AmqpOut, Message},
        db::DbCall,
        http::{self, Exchange, HttpConnection, Kind},
        mysql::{self, MysqlConnection},
        postgres::{self, PgConnection},
        redis::{self, RedisConnection},
        Detect, SegTime, Segment,
    },
    spans::{self, http::HttpSpanOptions, sampler::Sampler, Resource, ResourceBuilder, Span, Value},
};

#[derive(Debug, Default)]
pub struct L7Stats {
    pub http_exchanges: AtomicU64,
    pub http_parse_errors: AtomicU64,
    pub http_unmatched_responses: AtomicU64,
    pub http_unanswered_requests: AtomicU64,
    pub db_calls: AtomicU64,
    pub db_parse_errors: AtomicU64,
    pub db_unmatched: AtomicU64,
    pub amqp_parse_errors: AtomicU64,
    /// Connections released because no parser recognised them.
    pub released_connections: AtomicU64,
    /// Server requests whose client record arrived after them, and joined.
    pub late_partners_adopted: AtomicU64,
    /// Server requests whose partner came too late (outside the window,
    /// or after the response), or never (the wait list overflowed).
    pub late_partners_missed: AtomicU64,
    /// Server connections matched to their client through conntrack (DNAT).
    pub nat_resolved: AtomicU64,
    /// Client calls left as roots: several requests could have made them.
    pub calls_ambiguous: AtomicU64,
    pub spans_sampled_out: AtomicU64,
}

enum Proto {
    Detecting,
    Http(HttpConnection),
    Redis(RedisConnection),
    Postgres(PgConnection),
    Mysql(Box<MysqlConnection>),
    Amqp(Box<AmqpConnection>),
    Released,
}

/// A delivery being processed: its span is built at the acknowledgement.
struct Delivery {
    msg: Message,
    queue: Option<String>,
    start: SegTime,
    key: u64,
    /// The matched publish, for the producer -> consumer graph edge.
    publish: Option<spans::messaging::Publish>,
}

/// What is never traced.
#[derive(Debug, Clone, Default)]
pub struct Exclusions {
    /// Processes, by comm or executable name.
    pub processes: Vec<String>,
    /// Kubernetes namespaces (needs pod metadata; a pod not yet known when
    /// its first connection opens is traced until it is).
    pub namespaces: Vec<String>,
}

/// The spans of a server request whose client record is late (see
/// `L7::provisional`).
struct Provisional {
    /// The server connection and the request's first read.
    conn: u64,
    since: u64,
    /// The client's (local, remote) endpoints, once the server closed.
    key: ClientKey,
    spans: Vec<(Span, bool)>,
    /// The server half of its service-graph edge, once the server span is
    /// in: (service, seconds, failed).
    graph: Option<(String, f64, bool)>,
}

/// Asks the kernel to stop copying a connection's payload.
pub type Release = Box<dyn FnMut(u64, u32, i32) + Send>;

pub struct L7 {
    conns: HashMap<u64, Proto>,
    linker: Linker,
    /// Deliveries in processing, by (connection, channel, delivery tag).
    deliveries: HashMap<(u64, u16, u64), Delivery>,
    /// Socket-pair stitching: contexts of HTTP client requests written and
    /// not yet read by a server on this node, by the client's (local, remote)
    /// endpoints, in request order.
    stitch: HashMap<(SocketAddr, SocketAddr), VecDeque<SpanCtx>>,
    /// The same clients by their local endpoint alone (-> remote): a server
    /// that sees this endpoint but another local address is behind DNAT.
    stitch_local: HashMap<SocketAddr, SocketAddr>,
    /// Server connections resolved through conntrack -> the client's view.
    nat: HashMap<u64, ClientKey>,
    /// The same contexts per client connection, for the client span itself.
    client_requests: HashMap<u64, VecDeque<SpanCtx>>,
    /// Service graph: server halves of stitched pairs, by their parent (the
    /// client span id), until the client half completes: (server service,
    /// server seconds, server failed).
    graph_pending: HashMap<[u8; 8], (String, f64, bool)>,
    /// Server requests that found no partner yet, by the server's (remote,
    /// local) endpoints: the client's record may enter the ring a little
    /// after the server's (its thread was preempted before the syscall exit).
    unpartnered: HashMap<(SocketAddr, SocketAddr), VecDeque<(u32, u64, u64)>>,
    /// Server ends of connections on this node, by their (local, remote)
    /// endpoints: names the peer of a client call whose server side makes
    /// no spans (a database server process). Removed when the client end
    /// closes; cleared when full (servers of off-node clients).
    servers: HashMap<(SocketAddr, SocketAddr), Arc<Resource>>,
    /// Traces of server requests still waiting for a client on this node,
    /// by their provisional trace id: their spans (the server span and the
    /// calls it made) are held until the client's record names the real
    /// trace, or the wait is over. See "Socket-pair stitching" in
    /// ARCHITECTURE.md.
    provisional: HashMap<[u8; 16], Provisional>,
    /// The same trace ids in the order their wait ends.
    provisional_order: VecDeque<([u8; 16], std::time::Instant)>,
    /// Addresses of this node (and its containers): the local ends of the
    /// connections seen. Only requests from them can have a late partner,
    /// so only their traces are held.
    node_ips: HashSet<IpAddr>,
    continuity: spans::messaging::Continuity,
    relays: Relays,
    excluded: Exclusions,
    resources: ResourceBuilder,
    registry: SharedRegistry,
    sampler: Sampler,
    clock: Clock,
    http_opts: HttpSpanOptions,
    release: Release,
    pub stats: Arc<L7Stats>,
}

/// Which protocol a connection's first bytes speak.
fn detect(role: Role, dir: Direction, data: &[u8]) -> Option<Proto> {
    let yes = |d: Detect| d != Detect::No;
    match (role, dir) {
        (Role::Server, Direction::Ingress) => yes(http::detect(Kind::Request, data)).then(|| Proto::Http(HttpConnection::default())),
        // A database or other server's side: client spans come from the clients.
        (Role::Server, Direction::Egress) => None,
        (_, Direction::Egress) => {
            if yes(http::detect(Kind::Request, data)) {
                Some(Proto::Http(HttpConnection::default()))
            } else if yes(redis::detect_request(data)) {
                Some(Proto::Redis(RedisConnection::default()))
            } else if yes(postgres::detect_client(data)) {
                Some(Proto::Postgres(PgConnection::new()))
            } else if amqp::detect_client(data) == Detect::Yes {
                Some(Proto::Amqp(Box::default()))
            } else {
                None
            }
        }
        (_, Direction::Ingress) => {
            if yes(mysql::detect_greeting(data)) {
                Some(Proto::Mysql(Box::new(MysqlConnection::new())))
            } else if http::detect(Kind::Response, data) == Detect::Yes {
                Some(Proto::Http(HttpConnection::default()))
            } else {
                None
            }
        }
    }
}

impl L7 {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        relays: Relays,
        excluded: Exclusions,
        resources: ResourceBuilder,
        registry: SharedRegistry,
        sampler: Sampler,
        http_opts: HttpSpanOptions,
        release: Release,
    ) -> L7 {
        L7 {
            conns: HashMap::new(),
            linker: Linker::default(),
            deliveries: HashMap::new(),
            continuity: Default::default(),
            relays,
            excluded,
            stitch: HashMap::new(),
            stitch_local: HashMap::new(),
            nat: HashMap::new(),
            client_requests: HashMap::new(),
            unpartnered: HashMap::new(),
            provisional: HashMap::new(),
            provisional_order: VecDeque::new(),
            node_ips: HashSet::new(),
            servers: HashMap::new(),
            graph_pending: HashMap::new(),
            resources,
            registry,
            sampler,
            clock: Clock::new(),
            http_opts,
            release,
            stats: Arc::new(L7Stats::default()),
        }
    }

    /// Handles one stream event; sampled spans are appended to `spans`.
    pub fn on_event(&mut self, ev: StreamEvent, spans: &mut Vec<Span>) {
        match ev {
            StreamEvent::Open(c) => {
                tracing::debug!(conn = c.id, pid = c.pid, fd = c.fd, role = ?c.role, tuple = ?c.tuple, "l7 open");
                self.conns.insert(c.id, Proto::Detecting);
                // Never parsed: a relay's bytes are its peers', and excluded
                // processes are invisible (not even as a graph peer).
                if self.relays.is_relay(&c) {
                    self.release(&c);
                    self.relays.on_known(&c);
                } else if self.is_excluded(&c) {
                    self.release(&c);
                } else {
                    self.note_server(&c);
                }
            }
            StreamEvent::Tuple(c) => {
                if self.relays.is_relay(&c) {
                    self.relays.on_known(&c);
                }
            }
            StreamEvent::Data(c, d) => self.on_data(&c, &d, spans),
            StreamEvent::Close(c, ts) => {
                let mut state = self.conns.remove(&c.id);
                match &mut state {
                    Some(Proto::Amqp(a)) => {
                        let mut outs = vec![];
                        a.close(SegTime { enter_ns: ts, exit_ns: ts, tid: 0 }, &mut outs);
                        self.emit_amqp(&c, outs, spans);
                    }
                    Some(Proto::Http(h)) => {
                        let mut ex = vec![];
                        h.close(&mut ex);
                        self.emit_http(&c, ex, spans);
                    }
                    _ => {}
                }
                if let Some(p) = &state {
                    self.account(p);
                }
                self.linker.connection_closed(c.pid, c.id);
                self.relays.on_close(&c);
                self.client_requests.remove(&c.id);
                self.nat.remove(&c.id);
                if let Some(t) = c.tuple {
                    if self.stitch.remove(&(t.local, t.remote)).is_some() {
                        self.stitch_local.remove(&t.local);
                    }
                    self.unpartnered.remove(&(t.remote, t.local));
                    // Keyed from the client's side: a server that forks per
                    // connection (PostgreSQL) closes its copy at once.
                    self.servers.remove(&(t.remote, t.local));
                }
            }
        }
    }

    /// How the client end names a server connection: its own tuple
    /// reversed, or through a relay the relayed client's, or through DNAT
    /// (a client with this source endpoint waits on another destination)
    /// the original tuple conntrack holds, resolved once per connection.
    fn client_view(&mut self, conn: u64, t: crate::event::SocketTuple) -> ClientKey {
        let key = self.relays.origin((t.remote, t.local));
        if self.stitch.contains_key(&key) {
            return key;
        }
        if let Some(k) = self.nat.get(&conn) {
            return *k;
        }
        match self.stitch_local.get(&t.remote) {
            Some(dst) if *dst != t.local => match crate::nat::lookup(t.local, t.remote) {
                Some(orig) if orig == (t.remote, *dst) => {
                    self.stats.nat_resolved.fetch_add(1, Relaxed);
                    if self.nat.len() < MAX_STITCH {
                        self.nat.insert(conn, orig);
                    }
                    orig
                }
                _ => key,
            },
            _ => key,
        }
    }

    fn is_excluded(&self, c: &ConnInfo) -> bool {
        let p = &c.process;
        self.excluded.processes.iter().any(|n| *n == p.comm || p.exe_name.as_deref() == Some(n))
            || (!self.excluded.namespaces.is_empty()
                && self.resources.namespace(p).is_some_and(|ns| self.excluded.namespaces.contains(&ns)))
    }

    fn note_node_ip(&mut self, ip: IpAddr) {
        if self.node_ips.len() >= MAX_STITCH {
            self.node_ips.clear();
        }
        self.node_ips.insert(ip);
    }

    /// Remembers which process serves a server-side connection.
    fn note_server(&mut self, c: &ConnInfo) {
        if let (Role::Server, Some(t)) = (c.role, c.tuple) {
            self.note_node_ip(t.local.ip());
            if self.servers.len() >= MAX_STITCH {
                self.servers.clear();
            }
            self.servers.insert((t.local, t.remote), self.resources.get(&c.process));
        }
    }

    /// Adds a finished (closed or released) connection's parser counters.
    fn account(&self, p: &Proto) {
        let (e, u) = match p {
            Proto::Http(h) => {
                self.stats.http_parse_errors.fetch_add(h.parse_errors(), Relaxed);
                self.stats.http_unmatched_responses.fetch_add(h.counters.unmatched_responses, Relaxed);
                self.stats.http_unanswered_requests.fetch_add(h.counters.unanswered_requests, Relaxed);
                return;
            }
            Proto::Amqp(a) => {
                self.stats.amqp_parse_errors.fetch_add(a.parse_errors, Relaxed);
                return;
            }
            Proto::Redis(r) => (r.parse_errors, r.unmatched),
            Proto::Postgres(r) => (r.parse_errors, r.unmatched),
            Proto::Mysql(r) => (r.parse_errors, r.unmatched),
            Proto::Detecting | Proto::Released => return,
        };
        self.stats.db_parse_errors.fetch_add(e, Relaxed);
        self.stats.db_unmatched.fetch_add(u, Relaxed);
    }

    fn release(&mut self, c: &ConnInfo) {
        tracing::debug!(conn = c.id, pid = c.pid, fd = c.fd, role = ?c.role, tuple = ?c.tuple, "l7 release");
        if let Some(old) = self.conns.insert(c.id, Proto::Released) {
            self.account(&old);
        }
        self.stats.released_connections.fetch_add(1, Relaxed);
        (self.release)(c.id, c.pid, c.fd);
    }

    fn on_data(&mut self, c: &ConnInfo, d: &DataRecord, spans: &mut Vec<Span>) {
        if let Proto::Detecting = self.conns.entry(c.id).or_insert(Proto::Detecting) {
            if d.payload.is_empty() {
                return; // nothing to detect on (quiet socket or sendfile)
            }
            self.note_server(c); // its tuple may have been resolved since the open
            // The far end of the agent's own traffic (a local OTLP collector).
            match detect(c.role, d.direction, &d.payload) {
                Some(p) if !c.peer_is_agent => {
                    self.conns.insert(c.id, p);
                }
                _ => return self.release(c),
            }
        }
        let seg = Segment { data: &d.payload, total: d.bytes, enter_ns: d.enter_ns, exit_ns: d.exit_ns, tid: d.tid };
        tracing::debug!(conn = c.id, pid = c.pid, fd = c.fd, role = ?c.role, dir = ?d.direction, bytes = d.bytes, "l7 data");
        // Requests flow out of a client and into a server.
        let outbound = d.direction == Direction::Egress;
        let request_side = match c.role {
            Role::Server => !outbound,
            _ => outbound,
        };
        let mut calls: Vec<DbCall> = vec![];
        let mut amqp_outs: Vec<AmqpOut> = vec![];
        let mut exchanges = vec![];
        let mut fresh = vec![];
        let failed = match self.conns.get_mut(&c.id) {
            Some(Proto::Http(h)) => {
                let side = if request_side { Kind::Request } else { Kind::Response };
                let failed = h.push(side, seg, &mut exchanges).is_err() || h.is_upgraded();
                fresh = h.take_new_requests();
                failed
            }
            Some(Proto::Redis(r)) => {
                r.push(request_side, seg, &mut calls);
                false
            }
            Some(Proto::Postgres(p)) => p.push(request_side, seg, &mut calls).is_err(),
            Some(Proto::Mysql(m)) => m.push(request_side, seg, &mut calls).is_err(),
            Some(Proto::Amqp(a)) => {
                a.push(request_side, seg, &mut amqp_outs);
                false
            }
            _ => return,
        };
        for req in fresh {
            let tp = req.head.traceparent.as_deref().and_then(spans::traceparent::parse);
            if c.role == Role::Server {
                // The client end on this node, if its request was seen: the
                // same connection from the other side, same position.
                // The client's view of this connection, through any relay or NAT.
                let key = c.tuple.map(|t| self.client_view(c.id, t));
                let partner = key.and_then(|k| self.stitch.get_mut(&k)).and_then(|q| q.pop_front());
                let full = self.unpartnered.len() >= MAX_STITCH;
                let room = |k: &ClientKey| !full || self.unpartnered.contains_key(k);
                if let (None, None, Some(k)) = (partner, tp, key.filter(room)) {
                    // Wait (bounded) for a client record that may come late.
                    let q = self.unpartnered.entry(k).or_default();
                    if q.len() >= 256 {
                        q.pop_front();
                        self.stats.late_partners_missed.fetch_add(1, Relaxed);
                    }
                    q.push_back((c.pid, c.id, req.first.exit_ns));
                }
                let incoming = tp.or(partner.map(|p| spans::traceparent::TraceParent {
                    trace_id: p.trace_id,
                    parent_id: p.span_id,
                    sampled: p.sampled,
                }));
                let ctx = self.linker.request_started(c.pid, c.id, c.id, req.first.tid, req.first.exit_ns, incoming, &self.sampler);
                // Its client is on this node but not seen yet: hold the
                // trace's spans until it is (or the wait is over).
                if let (None, Some(k)) = (incoming, key) {
                    if self.node_ips.contains(&k.0.ip()) && self.unpartnered.contains_key(&k) {
                        self.provisional_start(ctx.trace_id, Provisional { conn: c.id, since: req.first.exit_ns, key: k, spans: vec![], graph: None }, spans);
                    }
                }
            } else {
                let ctx = self.client_context(c, req.first, tp);
                push_bounded(self.client_requests.entry(c.id).or_default(), ctx);
                // The server end already read it: its request adopts this context.
                // Or it already answered, and its span is held for this one.
                let key = c.tuple.map(|t| (t.local, t.remote));
                let waiting = key.and_then(|k| self.unpartnered.get_mut(&k)).and_then(|q| q.pop_front());
                if let Some((pid, conn, since)) = waiting {
                    if since.saturating_sub(req.first.enter_ns) < LATE_PARTNER_WINDOW_NS {
                        let in_flight = self.linker.adopt(pid, conn, &ctx);
                        let held = self.adopt_provisional(|p| p.conn == conn && p.since == since, &ctx, spans);
                        if in_flight || held {
                            self.stats.late_partners_adopted.fetch_add(1, Relaxed);
                            continue;
                        }
                    }
                    // Too late: both spans stand as they are.
                    self.stats.late_partners_missed.fetch_add(1, Relaxed);
                    self.end_provisional(|p| p.conn == conn && p.since == since, spans);
                } else if key.is_some_and(|k| self.adopt_provisional(|p| p.key == k, &ctx, spans)) {
                    // The server closed the connection before this record came.
                    self.stats.late_partners_adopted.fetch_add(1, Relaxed);
                    continue;
                }
                if let Some(t) = c.tuple {
                    if self.stitch.len() < MAX_STITCH || self.stitch.contains_key(&(t.local, t.remote)) {
                        push_bounded(self.stitch.entry((t.local, t.remote)).or_default(), ctx);
                        self.stitch_local.insert(t.local, t.remote);
                        self.note_node_ip(t.local.ip());
                    }
                }
            }
        }
        if failed {
            // Not the protocol after all, encrypted, or switched protocols.
            self.release(c);
        }
        if !exchanges.is_empty() {
            tracing::debug!(conn = c.id, n = exchanges.len(), "l7 exchanges");
        }
        self.emit_http(c, exchanges, spans);
        self.emit_db(c, calls, spans);
        self.emit_amqp(c, amqp_outs, spans);
    }

    fn emit_amqp(&mut self, c: &ConnInfo, outs: Vec<AmqpOut>, spans: &mut Vec<Span>) {
        if outs.is_empty() {
            return;
        }
        let resource = self.resources.get(&c.process);
        for o in outs {
            match o {
                AmqpOut::Published { msg, first, last, confirmed, returned, .. } => {
                    let mut span = spans::messaging::publish(c, &msg, first, last, confirmed, &returned, &self.clock, resource.clone());
                    // An instrumented publisher names its own context in the headers.
                    let own = msg.props.header("traceparent").as_deref().and_then(spans::traceparent::parse);
                    if let Some(tp) = own {
                        span.trace_id = tp.trace_id;
                    }
                    let sampled = self.link(c, first, own.is_some(), &mut span);
                    let ctx = SpanCtx { trace_id: span.trace_id, span_id: span.span_id, parent_span_id: span.parent_span_id, sampled };
                    let publish = spans::messaging::Publish { ctx, producer: resource.clone(), secs: duration_secs(&span) };
                    self.continuity.published(spans::messaging::message_key(&msg), first.enter_ns, publish);
                    self.record_messaging(&metrics::MESSAGING_CLIENT_DURATION, "publish", &msg.exchange, &span, &resource);
                    self.record_messaging(&metrics::MESSAGING_SENT, "publish", &msg.exchange, &span, &resource);
                    self.keep(span, sampled, spans);
                }
                AmqpOut::DeliveryStarted { channel, delivery_tag, queue, msg, at, .. } => {
                    // The parent: the context in the headers, else the publish seen here.
                    let header = msg.props.header("traceparent").as_deref().and_then(spans::traceparent::parse);
                    let publish = match header {
                        Some(_) => None,
                        None => self.continuity.lookup(spans::messaging::message_key(&msg), at.exit_ns),
                    };
                    let incoming = header.or(publish.as_ref().map(|p| spans::traceparent::TraceParent {
                        trace_id: p.ctx.trace_id,
                        parent_id: p.ctx.span_id,
                        sampled: p.ctx.sampled,
                    }));
                    let key = delivery_key(c.id, channel, delivery_tag);
                    self.linker.request_started(c.pid, key, c.id, at.tid, at.exit_ns, incoming, &self.sampler);
                    if self.deliveries.len() < 65536 {
                        self.deliveries.insert((c.id, channel, delivery_tag), Delivery { msg, queue, start: at, key, publish });
                    }
                }
                AmqpOut::DeliveryFinished { channel, delivery_tag, outcome, at } => {
                    let Some(d) = self.deliveries.remove(&(c.id, channel, delivery_tag)) else { continue };
                    let Some(ctx) = self.linker.request_finished(c.pid, d.key) else { continue };
                    let end = if outcome == amqp::Outcome::Closed { d.start.exit_ns } else { at.enter_ns };
                    let mut span = spans::messaging::consume(
                        c, &d.msg, d.queue.as_deref(), Some(delivery_tag), "process", Some(outcome), d.start.exit_ns, end, &self.clock, resource.clone(),
                    );
                    span.trace_id = ctx.trace_id;
                    span.span_id = ctx.span_id;
                    span.parent_span_id = ctx.parent_span_id;
                    let dest = d.queue.clone().unwrap_or_default();
                    self.record_messaging(&metrics::MESSAGING_PROCESS_DURATION, "process", &dest, &span, &resource);
                    self.record_messaging(&metrics::MESSAGING_CONSUMED, "process", &dest, &span, &resource);
                    if let Some(p) = &d.publish {
                        let failed = outcome != amqp::Outcome::Ack && outcome != amqp::Outcome::AutoAck;
                        let server = resource.service_name.clone();
                        self.record_edge(&p.producer, server, "messaging_system", failed, p.secs, Some(duration_secs(&span)));
                    }
                    self.keep(span, ctx.sampled, spans);
                }
                AmqpOut::Received { queue, msg, delivery_tag, first, last, .. } => {
                    let empty = Message::default();
                    let m = msg.as_ref().unwrap_or(&empty);
                    let mut span = spans::messaging::consume(
                        c, m, Some(&queue), delivery_tag, "receive", None, first.enter_ns, last.exit_ns, &self.clock, resource.clone(),
                    );
                    let sampled = self.link(c, first, false, &mut span);
                    self.record_messaging(&metrics::MESSAGING_CLIENT_DURATION, "get", &queue, &span, &resource);
                    if msg.is_some() {
                        self.record_messaging(&metrics::MESSAGING_CONSUMED, "get", &queue, &span, &resource);
                    }
                    self.keep(span, sampled, spans);
                }
            }
        }
    }

    fn record_messaging(&self, inst: &'static metrics::Instrument, op: &str, dest: &str, span: &Span, resource: &Arc<Resource>) {
        let value = match inst.kind {
            metrics::InstrumentKind::Counter => 1.0,
            metrics::InstrumentKind::Histogram => duration_secs(span),
        };
        let mut labels: Labels = vec![
            ("messaging.system", "rabbitmq".into()),
            ("messaging.operation.name", op.into()),
            ("messaging.destination.name", if dest.is_empty() { "amq.default".into() } else { dest.to_string() }),
        ];
        if let Some(Value::Str(e)) = span.attr("error.type") {
            labels.push(("error.type", e.clone()));
        }
        self.registry.lock().expect("registry lock").record(inst, resource, labels, value);
    }

    /// The context of an outgoing HTTP request, fixed when it is written: its
    /// own traceparent (an instrumented app), or a child of the request in
    /// flight it was made for, or a new trace.
    fn client_context(&self, c: &ConnInfo, first: SegTime, own: Option<spans::traceparent::TraceParent>) -> SpanCtx {
        let parent = self.parent_of(c, first);
        match (own, parent) {
            (Some(tp), p) => SpanCtx {
                trace_id: tp.trace_id,
                span_id: tp.parent_id,
                parent_span_id: p.filter(|p| p.trace_id == tp.trace_id).map(|p| p.span_id),
                sampled: tp.sampled,
            },
            (None, Some(p)) => SpanCtx { trace_id: p.trace_id, span_id: spans::new_span_id(), parent_span_id: Some(p.span_id), sampled: p.sampled },
            (None, None) => {
                let trace_id = spans::new_trace_id();
                SpanCtx { trace_id, span_id: spans::new_span_id(), parent_span_id: None, sampled: self.sampler.should_sample(&trace_id, None) }
            }
        }
    }

    /// The request a client call was made for (the linker's rules), with
    /// ambiguous calls counted.
    fn parent_of(&self, c: &ConnInfo, first: SegTime) -> Option<SpanCtx> {
        match self.linker.parent_of(c.pid, first.tid, first.enter_ns) {
            Parent::Request(ctx) => Some(ctx),
            Parent::Ambiguous => {
                self.stats.calls_ambiguous.fetch_add(1, Relaxed);
                None
            }
            Parent::None => None,
        }
    }

    /// Gives a client span its parent: the request in flight it was made
    /// for. `own_context`: the call carried its own traceparent (an
    /// instrumented app), whose trace wins if it differs.
    fn link(&self, c: &ConnInfo, first: SegTime, own_context: bool, span: &mut Span) -> bool {
        match self.parent_of(c, first) {
            Some(parent) => {
                if !own_context || span.trace_id == parent.trace_id {
                    span.trace_id = parent.trace_id;
                    span.parent_span_id = Some(parent.span_id);
                }
                parent.sampled
            }
            None => self.sampler.should_sample(&span.trace_id, None),
        }
    }

    /// Records one service-graph edge for a finished client span: to the
    /// server process it was stitched to, else (uninstrumented peer) to the
    /// process known to serve the other end on this node, else to the
    /// peer's address.
    fn graph_edge(&mut self, c: &ConnInfo, span: &Span, resource: &Arc<Resource>, kind: Option<&str>) {
        let (server, server_secs, server_failed, kind) = match self.graph_pending.remove(&span.span_id) {
            Some((svc, secs, failed)) => (svc, Some(secs), failed, kind.unwrap_or("")),
            None => {
                let server_end = c.tuple.map(|t| self.relays.destination((t.local, t.remote))).map(|(l, r)| (r, l));
                let known = server_end.and_then(|k| self.servers.get(&k)).map(|r| r.service_name.clone());
                let peer = known.or_else(|| c.remote().map(|p| p.to_string())).unwrap_or_else(|| "unknown".into());
                (peer, None, false, kind.unwrap_or("virtual_node"))
            }
        };
        let failed = server_failed || matches!(span.status, spans::Status::Error(_));
        self.record_edge(resource, server, kind, failed, duration_secs(span), server_secs);
    }

    /// One request over a service-graph edge, recorded on the client's resource.
    fn record_edge(&self, client: &Arc<Resource>, server: String, kind: &str, failed: bool, client_secs: f64, server_secs: Option<f64>) {
        let mut labels: Labels = vec![("client", client.service_name.clone()), ("server", server)];
        if !kind.is_empty() {
            labels.push(("connection_type", kind.to_string()));
        }
        let mut reg = self.registry.lock().expect("registry lock");
        reg.record(&metrics::GRAPH_REQUESTS, client, labels.clone(), 1.0);
        if failed {
            reg.record(&metrics::GRAPH_FAILED, client, labels.clone(), 1.0);
        }
        reg.record(&metrics::GRAPH_CLIENT_SECONDS, client, labels.clone(), client_secs);
        if let Some(s) = server_secs {
            reg.record(&metrics::GRAPH_SERVER_SECONDS, client, labels, s);
        }
    }

    fn keep(&mut self, span: Span, sampled: bool, spans: &mut Vec<Span>) {
        if let Some(p) = self.provisional.get_mut(&span.trace_id) {
            p.spans.push((span, sampled));
            return;
        }
        tracing::debug!(name = %span.name, kind = span.kind.as_str(), trace = %spans::hex(&span.trace_id), sampled, "l7 span");
        if sampled {
            spans.push(span);
        } else {
            self.stats.spans_sampled_out.fetch_add(1, Relaxed);
        }
    }

    fn emit_http(&mut self, c: &ConnInfo, exchanges: Vec<Exchange>, spans: &mut Vec<Span>) {
        if exchanges.is_empty() {
            return;
        }
        let resource = self.resources.get(&c.process);
        for ex in exchanges {
            self.stats.http_exchanges.fetch_add(1, Relaxed);
            let built = spans::http::build(c, &ex, &self.clock, self.http_opts, resource.clone());
            self.record_http_metrics(c, &ex, &built.span, &built.route, &resource);
            let mut span = built.span;
            let sampled = if c.role == Role::Server {
                let sampled = match self.linker.request_finished(c.pid, c.id) {
                    Some(SpanCtx { trace_id, span_id, parent_span_id, sampled }) => {
                        span.trace_id = trace_id;
                        span.span_id = span_id;
                        span.parent_span_id = parent_span_id;
                        sampled
                    }
                    None => self.sampler.should_sample(&span.trace_id, built.parent_sampled),
                };
                let graph = (resource.service_name.clone(), duration_secs(&span), matches!(span.status, spans::Status::Error(_)));
                match (span.parent_span_id, self.provisional.get_mut(&span.trace_id)) {
                    (Some(parent), _) => self.pend_graph(parent, graph),
                    (None, Some(p)) => p.graph = Some(graph),
                    (None, None) => {}
                }
                sampled
            } else {
                let sampled = match self.client_requests.get_mut(&c.id).and_then(|q| q.pop_front()) {
                    Some(ctx) => {
                        span.trace_id = ctx.trace_id;
                        span.span_id = ctx.span_id;
                        span.parent_span_id = ctx.parent_span_id;
                        ctx.sampled
                    }
                    // A request written before the agent started.
                    None => {
                        let own = ex.request.head.traceparent.as_deref().and_then(spans::traceparent::parse).is_some();
                        self.link(c, ex.request.first, own, &mut span)
                    }
                };
                self.graph_edge(c, &span, &resource, None);
                sampled
            };
            self.keep(span, sampled, spans);
        }
    }

    /// The server half of a service-graph edge, completed when its client
    /// half (the parent span) finishes.
    fn pend_graph(&mut self, parent: [u8; 8], graph: (String, f64, bool)) {
        if self.graph_pending.len() >= MAX_STITCH {
            self.graph_pending.clear();
        }
        self.graph_pending.insert(parent, graph);
    }

    fn provisional_start(&mut self, trace_id: [u8; 16], p: Provisional, spans: &mut Vec<Span>) {
        if self.provisional_order.len() >= MAX_HELD {
            self.release_oldest(spans);
        }
        self.provisional.insert(trace_id, p);
        self.provisional_order.push_back((trace_id, std::time::Instant::now() + LATE_PARTNER_HOLD));
    }

    fn release_oldest(&mut self, spans: &mut Vec<Span>) {
        if let Some((trace_id, _)) = self.provisional_order.pop_front() {
            self.release_trace(trace_id, spans);
        }
    }

    /// Ends a wait: the trace's spans go out as they are.
    fn release_trace(&mut self, trace_id: [u8; 16], spans: &mut Vec<Span>) {
        if let Some(p) = self.provisional.remove(&trace_id) {
            self.keep_all(p.spans, spans);
        }
    }

    fn keep_all(&mut self, held: Vec<(Span, bool)>, spans: &mut Vec<Span>) {
        for (span, sampled) in held {
            self.keep(span, sampled, spans);
        }
    }

    /// Takes the first held request `matches` accepts out of the wait.
    fn take_provisional(&mut self, matches: impl Fn(&Provisional) -> bool) -> Option<Provisional> {
        let trace_id = self.provisional.iter().find(|(_, p)| matches(p)).map(|(t, _)| *t)?;
        self.provisional_order.retain(|(t, _)| *t != trace_id);
        self.provisional.remove(&trace_id)
    }

    /// Ends the wait of the held request `matches` accepts, whose client
    /// came too late to be stitched: its spans go out as they are.
    fn end_provisional(&mut self, matches: impl Fn(&Provisional) -> bool, spans: &mut Vec<Span>) {
        if let Some(p) = self.take_provisional(matches) {
            self.keep_all(p.spans, spans);
        }
    }

    /// The late client's context names the real trace of the first held
    /// request `matches` accepts: its spans move into it, the server span
    /// (the held trace's root) as the client span's child.
    fn adopt_provisional(&mut self, matches: impl Fn(&Provisional) -> bool, ctx: &SpanCtx, spans: &mut Vec<Span>) -> bool {
        let Some(p) = self.take_provisional(matches) else { return false };
        if let Some(graph) = p.graph {
            self.pend_graph(ctx.span_id, graph);
        }
        for (mut span, _) in p.spans {
            span.trace_id = ctx.trace_id;
            if span.parent_span_id.is_none() {
                span.parent_span_id = Some(ctx.span_id);
            }
            self.keep(span, ctx.sampled, spans);
        }
        true
    }

    /// Ends the waits that are over (all of them with `now` = None, at
    /// shutdown): their spans go out as they are.
    pub fn release_held(&mut self, now: Option<std::time::Instant>, spans: &mut Vec<Span>) {
        while let Some((_, until)) = self.provisional_order.front() {
            if now.is_some_and(|n| *until > n) {
                break;
            }
            self.release_oldest(spans);
        }
    }

    fn emit_db(&mut self, c: &ConnInfo, calls: Vec<DbCall>, spans: &mut Vec<Span>) {
        if calls.is_empty() {
            return;
        }
        let resource = self.resources.get(&c.process);
        for call in calls {
            self.stats.db_calls.fetch_add(1, Relaxed);
            let mut span = spans::db::build(c, &call, &self.clock, resource.clone());
            self.record_db_metrics(c, &call, &span, &resource);
            let sampled = self.link(c, call.first, false, &mut span);
            self.graph_edge(c, &span, &resource, Some("database"));
            self.keep(span, sampled, spans);
        }
    }

    fn record_db_metrics(&self, c: &ConnInfo, call: &DbCall, span: &Span, resource: &Arc<Resource>) {
        let secs = duration_secs(span);
        let mut labels: Labels = vec![("db.system.name", call.system.as_str().to_string())];
        if !call.operation.is_empty() {
            labels.push(("db.operation.name", call.operation.clone()));
        }
        if let Some(col) = &call.collection {
            labels.push(("db.collection.name", col.clone()));
        }
        if let Some(ns) = &call.namespace {
            labels.push(("db.namespace", ns.clone()));
        }
        if let Some(e) = &call.error {
            labels.push(("error.type", e.code.clone()));
        }
        if let Some(peer) = c.remote() {
            labels.push(("server.address", peer.ip().to_string()));
            labels.push(("server.port", peer.port().to_string()));
        }
        self.registry.lock().expect("registry lock").record(&metrics::DB_CLIENT_DURATION, resource, labels, secs);
    }

    fn record_http_metrics(&self, c: &ConnInfo, ex: &Exchange, span: &Span, route: &str, resource: &Arc<Resource>) {
        let secs = duration_secs(span);
        let get = |k: &str| span.attr(k).map(|v| match v {
            Value::Str(s) => s.clone(),
            other => other.to_string(),
        });
        let mut labels: Labels = vec![
            ("http.request.method", get("http.request.method").unwrap_or_default()),
            ("http.response.status_code", ex.response.head.status.to_string()),
            ("network.protocol.version", format!("1.{}", ex.request.head.minor)),
        ];
        if let Some(e) = get("error.type") {
            labels.push(("error.type", e));
        }
        let mut reg = self.registry.lock().expect("registry lock");
        if c.role == Role::Server {
            labels.push(("http.route", route.to_string()));
            labels.push(("url.scheme", "http".into()));
            reg.record(&metrics::HTTP_SERVER_DURATION, resource, labels.clone(), secs);
            reg.record(&metrics::HTTP_SERVER_REQUEST_SIZE, resource, labels.clone(), ex.request.body_bytes as f64);
            reg.record(&metrics::HTTP_SERVER_RESPONSE_SIZE, resource, labels, ex.response.body_bytes as f64);
        } else {
            if let Some(a) = get("server.address") {
                labels.push(("server.address", a));
            }
            if let Some(p) = get("server.port") {
                labels.push(("server.port", p));
            }
            reg.record(&metrics::HTTP_CLIENT_DURATION, resource, labels.clone(), secs);
            reg.record(&metrics::HTTP_CLIENT_REQUEST_SIZE, resource, labels.clone(), ex.request.body_bytes as f64);
            reg.record(&metrics::HTTP_CLIENT_RESPONSE_SIZE, resource, labels, ex.response.body_bytes as f64);
        }
    }
}

/// A linker key for one delivery (distinct from connection ids, which are small).
fn delivery_key(conn: u64, channel: u16, tag: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (conn, channel, tag).hash(&mut h);
    h.finish() | 1 << 63
}

/// Bound on connections with requests awaiting their partner.
const MAX_STITCH: usize = 65536;
/// How far a server's read may precede its client's write record and still
/// be stitched (the client's syscall exit was delayed, not the data).
const LATE_PARTNER_WINDOW_NS: u64 = 1_000_000_000;
/// How long a finished server span waits for a late client on this node.
const LATE_PARTNER_HOLD: std::time::Duration = std::time::Duration::from_secs(1);
/// Bound on held server spans; the oldest goes out as it is when full.
const MAX_HELD: usize = 4096;

fn push_bounded(q: &mut VecDeque<SpanCtx>, ctx: SpanCtx) {
    if q.len() >= 256 {
        q.pop_front();
    }
    q.push_back(ctx);
}

fn duration_secs(span: &Span) -> f64 {
    span.end_unix_ns.saturating_sub(span.start_unix_ns) as f64 / 1e9
}

#[cfg(test)]
#[path = "l7_tests.rs"]
mod tests;
