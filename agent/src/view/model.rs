//! What the view shows, as data: the read-only endpoint serves it as JSON
//! and `sonde top` draws it, the same whether it runs the pipeline itself
//! or reads another agent's endpoint.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Seconds the rates and percentiles cover (less just after a start).
    pub window_secs: f64,
    pub services: Vec<ServiceRow>,
    pub edges: Vec<EdgeRow>,
    /// Per service, its slowest and its failed recent traces.
    pub traces: Vec<TraceSummary>,
    /// Spans the view has taken in since it started.
    pub spans_seen: u64,
    /// Services and edges not shown because the view's bounds were full.
    #[serde(default)]
    pub refused: u64,
}

/// A service's requests (served HTTP requests, processed messages) over
/// the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceRow {
    pub name: String,
    pub rate: f64,
    /// 0..=1.
    pub error_ratio: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Mean per request: time not covered by its calls, and time covered.
    pub self_ms: f64,
    pub downstream_ms: f64,
    /// The peer that took the largest share of its downstream time.
    pub top_peer: Option<String>,
    /// That share, 0..=1.
    pub top_peer_share: f64,
}

/// Calls from a service to a peer: another service on this node, or a
/// database, broker or address it calls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EdgeRow {
    pub client: String,
    pub server: String,
    pub rate: f64,
    pub error_ratio: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceSummary {
    pub trace_id: String,
    /// The service it is listed under, and that service's request in it.
    pub service: String,
    pub name: String,
    pub duration_ms: f64,
    pub spans: usize,
    pub errors: usize,
    /// Why it is listed: among the slowest, or failed.
    pub slow: bool,
    pub failed: bool,
    /// Seconds since it finished.
    pub age_secs: f64,
}

/// One trace as a waterfall: spans in tree order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceDetail {
    pub trace_id: String,
    pub duration_ms: f64,
    pub spans: Vec<WaterfallRow>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WaterfallRow {
    pub depth: usize,
    pub service: String,
    pub kind: String,
    pub name: String,
    /// From the trace's first span start.
    pub start_ms: f64,
    pub duration_ms: f64,
    /// `None`: ok; else the error (may be empty).
    pub error: Option<String>,
    /// The concrete target or status code, where the name has a template.
    pub detail: String,
}
