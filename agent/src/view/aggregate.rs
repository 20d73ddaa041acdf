//! The view's state: whole traces in, services, edges and recent traces
//! out. Pure: no I/O, no clock of its own (callers pass `now`).
use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Instant,
};

use super::{
    model::{EdgeRow, ServiceRow, Snapshot, TraceDetail, TraceSummary, WaterfallRow},
    window::{Window, WINDOW_SECS},
};
use crate::{
    export::{
        assemble::{Assembler, Finished},
        stdout::{detail, tree_order},
    },
    spans::{hex, Span, SpanKind, Status, Value},
    telemetry::self_time::covered,
};

/// Traces kept for the trace lists and the waterfall, newest last, and the
/// spans they may hold in all (a few large traces must not hold gigabytes).
const MAX_TRACES: usize = 2000;
const MAX_KEPT_SPANS: usize = 100_000;
/// Services and edges tracked; past these, new ones are not shown (and
/// counted in `refused`).
const MAX_SERVICES: usize = 512;
const MAX_EDGES: usize = 2048;
/// Traces listed per service and reason.
const LISTED: usize = 10;
/// Traces older than this are not listed.
const LIST_MAX_AGE_SECS: f64 = 300.0;

struct Kept {
    id: [u8; 16],
    spans: Vec<Span>,
    finished: Instant,
}

pub struct View {
    assembler: Assembler,
    start: Instant,
    services: HashMap<String, Window>,
    edges: HashMap<(String, String), Window>,
    traces: VecDeque<Arc<Kept>>,
    kept_spans: usize,
    spans_seen: u64,
    pub refused: u64,
}

impl View {
    pub fn new(now: Instant) -> View {
        View {
            assembler: Assembler::default(),
            start: now,
            services: HashMap::new(),
            edges: HashMap::new(),
            traces: VecDeque::new(),
            kept_spans: 0,
            spans_seen: 0,
            refused: 0,
        }
    }

    fn sec(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs()
    }

    /// A finished span; the view counts it once its trace is whole.
    pub fn span(&mut self, s: Span, now: Instant) {
        self.spans_seen += 1;
        if let Some(t) = self.assembler.push(s, now) {
            self.trace(t, now);
        }
    }

    /// Takes in the traces that are whole at `now`.
    pub fn poll(&mut self, now: Instant) {
        for t in self.assembler.due(Some(now)) {
            self.trace(t, now);
        }
    }

    fn trace(&mut self, t: Finished, now: Instant) {
        let sec = self.sec(now);
        let spans = &t.spans;
        let by_id: HashMap<[u8; 8], usize> = spans
            .iter()
            .enumerate()
            .map(|(i, s)| (s.span_id, i))
            .collect();
        // The server span each client span was stitched to, on this node.
        let mut served: HashMap<[u8; 8], usize> = HashMap::new();
        for (i, s) in spans.iter().enumerate() {
            if matches!(s.kind, SpanKind::Server | SpanKind::Consumer) {
                if let Some(p) = s.parent_span_id.filter(|p| by_id.contains_key(p)) {
                    served.insert(p, i);
                }
            }
        }
        let peer = |c: &Span| match served.get(&c.span_id) {
            Some(&i) => spans[i].resource.service_name.clone(),
            None => peer_name(c),
        };
        let mut children: HashMap<[u8; 8], Vec<usize>> = HashMap::new();
        for (i, s) in spans.iter().enumerate() {
            if let Some(p) = s.parent_span_id {
                if by_id.contains_key(&p) && matches!(s.kind, SpanKind::Client | SpanKind::Producer)
                {
                    children.entry(p).or_default().push(i);
                }
            }
        }
        for s in spans {
            match s.kind {
                SpanKind::Server | SpanKind::Consumer => {
                    let (start, end) = (s.start_unix_ns, s.end_unix_ns.max(s.start_unix_ns));
                    let calls = children.get(&s.span_id).map(Vec::as_slice).unwrap_or(&[]);
                    let down = covered(
                        calls.iter().map(|&c| interval(&spans[c])).collect(),
                        start,
                        end,
                    );
                    let mut by_peer: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
                    for &c in calls {
                        by_peer
                            .entry(peer(&spans[c]))
                            .or_default()
                            .push(interval(&spans[c]));
                    }
                    let Some(w) = self.window(&s.resource.service_name) else {
                        continue;
                    };
                    let b = w.at(sec);
                    b.count += 1;
                    b.errors += u64::from(s.is_error());
                    b.latency.record(end - start);
                    b.self_ns += (end - start) - down;
                    b.downstream_ns += down;
                    for (p, iv) in by_peer {
                        *b.by_peer.entry(p).or_default() += covered(iv, start, end);
                    }
                }
                SpanKind::Client | SpanKind::Producer => {
                    let key = (s.resource.service_name.clone(), peer(s));
                    if !self.edges.contains_key(&key) && self.edges.len() >= MAX_EDGES {
                        self.refused += 1;
                        continue;
                    }
                    let b = self.edges.entry(key).or_default().at(sec);
                    b.count += 1;
                    b.errors += u64::from(s.is_error());
                    b.latency
                        .record(s.end_unix_ns.saturating_sub(s.start_unix_ns));
                }
                SpanKind::Internal => {}
            }
        }
        // Late spans of a kept trace join it.
        if t.late {
            if let Some(k) = self.traces.iter_mut().rev().find(|k| k.id == t.id) {
                self.kept_spans += t.spans.len();
                let mut all = k.spans.clone();
                all.extend(t.spans);
                *k = Arc::new(Kept {
                    id: t.id,
                    spans: all,
                    finished: now,
                });
                self.bound_kept();
                return;
            }
        }
        self.kept_spans += t.spans.len();
        self.traces.push_back(Arc::new(Kept {
            id: t.id,
            spans: t.spans,
            finished: now,
        }));
        self.bound_kept();
    }

    /// The oldest kept traces go while over either bound (the newest stays).
    fn bound_kept(&mut self) {
        while self.traces.len() > 1
            && (self.traces.len() > MAX_TRACES || self.kept_spans > MAX_KEPT_SPANS)
        {
            if let Some(old) = self.traces.pop_front() {
                self.kept_spans -= old.spans.len();
            }
        }
    }

    fn window(&mut self, service: &str) -> Option<&mut Window> {
        if !self.services.contains_key(service) {
            if self.services.len() >= MAX_SERVICES {
                self.refused += 1;
                return None;
            }
            self.services.insert(service.to_string(), Window::default());
        }
        self.services.get_mut(service)
    }

    pub fn snapshot(&mut self, now: Instant) -> Snapshot {
        let sec = self.sec(now);
        let elapsed = now.saturating_duration_since(self.start).as_secs_f64();
        let window_secs = elapsed.clamp(1.0, WINDOW_SECS as f64);
        let mut services = vec![];
        self.services.retain(|_, w| {
            let _ = w.total(sec);
            !w.is_empty()
        });
        for (name, w) in &mut self.services {
            let t = w.total(sec);
            let n = t.count.max(1) as f64;
            let q = |q| t.latency.quantile(q).unwrap_or(0.0) / 1e6;
            let down_total: u64 = t.by_peer.values().sum();
            let top = t.by_peer.iter().max_by_key(|(_, ns)| **ns);
            services.push(ServiceRow {
                name: name.clone(),
                rate: t.count as f64 / window_secs,
                error_ratio: t.errors as f64 / n,
                p50_ms: q(0.5),
                p95_ms: q(0.95),
                p99_ms: q(0.99),
                self_ms: t.self_ns as f64 / n / 1e6,
                downstream_ms: t.downstream_ns as f64 / n / 1e6,
                top_peer: top.filter(|(_, ns)| **ns > 0).map(|(p, _)| p.clone()),
                top_peer_share: top
                    .filter(|_| down_total > 0)
                    .map_or(0.0, |(_, ns)| *ns as f64 / down_total as f64),
            });
        }
        services.sort_by(|a, b| a.name.cmp(&b.name));
        let mut edges = vec![];
        self.edges.retain(|_, w| {
            let _ = w.total(sec);
            !w.is_empty()
        });
        for ((client, server), w) in &mut self.edges {
            let t = w.total(sec);
            let q = |q| t.latency.quantile(q).unwrap_or(0.0) / 1e6;
            edges.push(EdgeRow {
                client: client.clone(),
                server: server.clone(),
                rate: t.count as f64 / window_secs,
                error_ratio: t.errors as f64 / t.count.max(1) as f64,
                p50_ms: q(0.5),
                p99_ms: q(0.99),
            });
        }
        edges.sort_by(|a, b| (&a.client, &a.server).cmp(&(&b.client, &b.server)));
        Snapshot {
            window_secs,
            services,
            edges,
            traces: self.listed(now),
            spans_seen: self.spans_seen,
            refused: self.refused,
        }
    }

    /// Per service: its slowest and its failed recent traces.
    fn listed(&self, now: Instant) -> Vec<TraceSummary> {
        let mut per: HashMap<&str, Vec<TraceSummary>> = HashMap::new();
        for k in self.traces.iter().rev() {
            let age = now.saturating_duration_since(k.finished).as_secs_f64();
            if age > LIST_MAX_AGE_SECS {
                break;
            }
            let errors = k.spans.iter().filter(|s| s.is_error()).count();
            // Each service's outermost request in the trace stands for it.
            let mut seen: Vec<&str> = vec![];
            let mut requests: Vec<&Span> = k
                .spans
                .iter()
                .filter(|s| matches!(s.kind, SpanKind::Server | SpanKind::Consumer))
                .collect();
            requests.sort_by_key(|s| s.start_unix_ns);
            for s in requests {
                let svc = s.resource.service_name.as_str();
                if seen.contains(&svc) {
                    continue;
                }
                seen.push(svc);
                let failed = k
                    .spans
                    .iter()
                    .any(|x| x.is_error() && x.resource.service_name == svc);
                per.entry(svc).or_default().push(TraceSummary {
                    trace_id: hex(&k.id),
                    service: svc.to_string(),
                    name: s.name.clone(),
                    duration_ms: s.end_unix_ns.saturating_sub(s.start_unix_ns) as f64 / 1e6,
                    spans: k.spans.len(),
                    errors,
                    slow: false,
                    failed,
                    age_secs: age,
                });
            }
        }
        let mut out = vec![];
        for (_, mut list) in per {
            let mut failed: Vec<TraceSummary> = list
                .iter()
                .filter(|t| t.failed)
                .take(LISTED)
                .cloned()
                .collect();
            list.sort_by(|a, b| b.duration_ms.total_cmp(&a.duration_ms));
            for mut t in list.into_iter().take(LISTED) {
                t.slow = true;
                match failed.iter_mut().find(|f| f.trace_id == t.trace_id) {
                    Some(f) => f.slow = true,
                    None => out.push(t),
                }
            }
            out.append(&mut failed);
        }
        out.sort_by(|a, b| {
            (&a.service, b.duration_ms)
                .partial_cmp(&(&b.service, a.duration_ms))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        out
    }

    /// One kept trace as a waterfall, by its hex id.
    pub fn trace_detail(&self, id_hex: &str) -> Option<TraceDetail> {
        let k = self.traces.iter().rev().find(|k| hex(&k.id) == id_hex)?;
        let mut spans = k.spans.clone();
        spans.sort_by_key(|s| (s.start_unix_ns, s.end_unix_ns));
        let start = spans.iter().map(|s| s.start_unix_ns).min().unwrap_or(0);
        let end = spans.iter().map(|s| s.end_unix_ns).max().unwrap_or(0);
        let ms = |ns: u64| ns as f64 / 1e6;
        Some(TraceDetail {
            trace_id: id_hex.to_string(),
            duration_ms: ms(end.saturating_sub(start)),
            spans: tree_order(&spans)
                .into_iter()
                .map(|(i, depth)| {
                    let s = &spans[i];
                    WaterfallRow {
                        depth,
                        service: s.resource.service_name.clone(),
                        kind: s.kind.as_str().to_string(),
                        name: s.name.clone(),
                        start_ms: ms(s.start_unix_ns.saturating_sub(start)),
                        duration_ms: ms(s.end_unix_ns.saturating_sub(s.start_unix_ns)),
                        error: match &s.status {
                            Status::Error(m) => Some(m.clone()),
                            _ => None,
                        },
                        detail: detail(s),
                    }
                })
                .collect(),
        })
    }
}

fn interval(s: &Span) -> (u64, u64) {
    (s.start_unix_ns, s.end_unix_ns.max(s.start_unix_ns))
}

/// Who a call went to when no server span on this node answered it: the
/// database or broker by its system and address, else the address.
pub fn peer_name(c: &Span) -> String {
    let text = |k: &str| match c.attr(k) {
        Some(Value::Str(v)) => Some(v.to_string()),
        Some(Value::Ip(ip)) => Some(crate::spans::ip_text(*ip)),
        Some(Value::Int(v)) => Some(v.to_string()),
        _ => None,
    };
    let addr = match (text("server.address"), text("server.port")) {
        (Some(a), Some(p)) => Some(format!("{a}:{p}")),
        (a, _) => a,
    };
    let system = text("db.system.name").or_else(|| text("messaging.system"));
    match (system, addr) {
        (Some(s), Some(a)) => format!("{s} {a}"),
        (Some(s), None) => s,
        (None, Some(a)) => a,
        (None, None) => "unknown".into(),
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
