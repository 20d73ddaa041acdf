//! Stages 4-7 driver: per connection, detect the protocol, feed the parser,
//! pair requests with responses, and turn exchanges into spans (sampled) and
//! RED metrics (always). Connections that speak nothing sonde parses are
//! released: the kernel stops copying their payload.
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
};

use crate::{
    conntrack::{ConnInfo, StreamEvent},
    event::{DataRecord, Direction, Role},
    metrics::{self, Labels, SharedRegistry},
    output::Clock,
    protocols::{
        http::{self, Exchange, HttpConnection, Kind},
        Detect, Segment,
    },
    spans::{self, http::HttpSpanOptions, sampler::Sampler, Resource, ResourceBuilder, Span, Value},
};

#[derive(Debug, Default)]
pub struct L7Stats {
    pub http_exchanges: AtomicU64,
    pub http_parse_errors: AtomicU64,
    pub http_unmatched_responses: AtomicU64,
    pub http_unanswered_requests: AtomicU64,
    /// Connections released because no parser recognised them.
    pub released_connections: AtomicU64,
    pub spans_sampled_out: AtomicU64,
}

enum Proto {
    Detecting,
    Http(HttpConnection),
    Released,
}

/// Asks the kernel to stop copying a connection's payload.
pub type Release = Box<dyn FnMut(u32, i32) + Send>;

pub struct L7 {
    conns: HashMap<u64, Proto>,
    resources: ResourceBuilder,
    registry: SharedRegistry,
    sampler: Sampler,
    clock: Clock,
    http_opts: HttpSpanOptions,
    release: Release,
    pub stats: Arc<L7Stats>,
}

impl L7 {
    pub fn new(
        resources: ResourceBuilder,
        registry: SharedRegistry,
        sampler: Sampler,
        http_opts: HttpSpanOptions,
        release: Release,
    ) -> L7 {
        L7 {
            conns: HashMap::new(),
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
                self.conns.insert(c.id, Proto::Detecting);
            }
            StreamEvent::Data(c, d) => self.on_data(&c, &d, spans),
            StreamEvent::Close(c, _) => {
                if let Some(Proto::Http(mut h)) = self.conns.remove(&c.id) {
                    let mut ex = vec![];
                    h.close(&mut ex);
                    self.account(&h);
                    self.emit(&c, ex, spans);
                }
            }
        }
    }

    fn account(&self, h: &HttpConnection) {
        self.stats.http_parse_errors.fetch_add(h.parse_errors(), Relaxed);
        self.stats.http_unmatched_responses.fetch_add(h.counters.unmatched_responses, Relaxed);
        self.stats.http_unanswered_requests.fetch_add(h.counters.unanswered_requests, Relaxed);
    }

    fn on_data(&mut self, c: &ConnInfo, d: &DataRecord, spans: &mut Vec<Span>) {
        // Which side of an exchange these bytes are: requests flow into a
        // server and out of a client.
        let side = match (c.role, d.direction) {
            (Role::Server, Direction::Ingress) | (Role::Client, Direction::Egress) => Kind::Request,
            (Role::Server, Direction::Egress) | (Role::Client, Direction::Ingress) => Kind::Response,
            (Role::Unknown, Direction::Ingress) => Kind::Request,
            (Role::Unknown, Direction::Egress) => Kind::Response,
        };
        let state = self.conns.entry(c.id).or_insert(Proto::Detecting);
        if let Proto::Detecting = state {
            if d.payload.is_empty() {
                return; // nothing to detect on (quiet socket or sendfile)
            }
            // The far end of the agent's own traffic (a local OTLP collector).
            match http::detect(side, &d.payload) {
                Detect::Yes | Detect::NeedMore if !c.peer_is_agent => *state = Proto::Http(HttpConnection::default()),
                _ => {
                    *state = Proto::Released;
                    self.stats.released_connections.fetch_add(1, Relaxed);
                    (self.release)(c.pid, c.fd);
                    return;
                }
            }
        }
        let Proto::Http(h) = state else { return };
        let seg = Segment { data: &d.payload, total: d.bytes, enter_ns: d.enter_ns, exit_ns: d.exit_ns, tid: d.tid };
        let mut ex = vec![];
        let failed = h.push(side, seg, &mut ex).is_err();
        if failed || h.is_upgraded() {
            // Not HTTP after all, or switched protocols (WebSocket, h2c).
            if let Some(Proto::Http(h)) = self.conns.insert(c.id, Proto::Released) {
                self.account(&h);
            }
            self.stats.released_connections.fetch_add(1, Relaxed);
            (self.release)(c.pid, c.fd);
        }
        self.emit(c, ex, spans);
    }

    fn emit(&mut self, c: &ConnInfo, exchanges: Vec<Exchange>, spans: &mut Vec<Span>) {
        if exchanges.is_empty() {
            return;
        }
        let resource = self.resources.get(&c.process);
        for ex in exchanges {
            self.stats.http_exchanges.fetch_add(1, Relaxed);
            let built = spans::http::build(c, &ex, &self.clock, self.http_opts, resource.clone());
            self.record_metrics(c, &ex, &built.span, &built.route, &resource);
            if self.sampler.should_sample(&built.span.trace_id, built.parent_sampled) {
                spans.push(built.span);
            } else {
                self.stats.spans_sampled_out.fetch_add(1, Relaxed);
            }
        }
    }

    fn record_metrics(&self, c: &ConnInfo, ex: &Exchange, span: &Span, route: &str, resource: &Arc<Resource>) {
        let secs = span.end_unix_ns.saturating_sub(span.start_unix_ns) as f64 / 1e9;
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
