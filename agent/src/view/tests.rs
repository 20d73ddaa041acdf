use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::View;
use crate::{
    export::assemble::QUIET,
    spans::{Resource, Span, SpanKind, Status, Value},
};

const T0: u64 = 1_700_000_000_000_000_000;

fn span(
    trace: u8,
    service: &str,
    kind: SpanKind,
    name: &str,
    (id, parent): (u8, Option<u8>),
    (start_ms, end_ms): (u64, u64),
) -> Span {
    Span {
        trace_id: [trace; 16],
        span_id: [trace ^ id; 8],
        parent_span_id: parent.map(|p| [trace ^ p; 8]),
        trace_state: String::new(),
        kind,
        name: name.into(),
        start_unix_ns: T0 + start_ms * 1_000_000,
        end_unix_ns: T0 + end_ms * 1_000_000,
        attributes: vec![],
        status: Status::Unset,
        resource: Arc::new(Resource {
            service_name: service.into(),
            service_namespace: None,
            attributes: vec![],
        }),
    }
}

/// frontend (0..100 ms) calls backend (10..90), which queries PostgreSQL
/// (20..80): the database is the slow dependency.
fn chain(trace: u8) -> Vec<Span> {
    use SpanKind::*;
    let mut db = span(trace, "backend", Client, "SELECT", (4, Some(3)), (20, 80));
    db.attributes = vec![
        ("db.system.name", Value::from("postgresql")),
        ("server.address", Value::from("127.0.0.1")),
        ("server.port", Value::Int(5432)),
    ];
    vec![
        db,
        span(
            trace,
            "backend",
            Server,
            "GET /items",
            (3, Some(2)),
            (12, 88),
        ),
        span(trace, "frontend", Client, "GET", (2, Some(1)), (10, 90)),
        span(trace, "frontend", Server, "GET /", (1, None), (0, 100)),
    ]
}

fn feed(v: &mut View, spans: Vec<Span>, now: Instant) {
    for s in spans {
        v.span(s, now);
    }
    v.poll(now + QUIET);
}

#[test]
fn services_split_their_time_between_self_and_the_peers_they_call() {
    let t = Instant::now();
    let mut v = View::new(t);
    for trace in 1..=20 {
        feed(&mut v, chain(trace), t);
    }
    let snap = v.snapshot(t + QUIET + Duration::from_secs(1));
    let names: Vec<&str> = snap.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["backend", "frontend"]);
    let (back, front) = (&snap.services[0], &snap.services[1]);
    // 20 requests each over the first two seconds of the view.
    assert!((back.rate - 10.0).abs() < 1e-9, "{}", back.rate);
    assert!((front.self_ms - 20.0).abs() < 1e-9, "{front:?}");
    assert!((front.downstream_ms - 80.0).abs() < 1e-9, "{front:?}");
    assert_eq!(front.top_peer.as_deref(), Some("backend"));
    assert!((back.self_ms - 16.0).abs() < 1e-9, "{back:?}");
    assert!((back.downstream_ms - 60.0).abs() < 1e-9, "{back:?}");
    assert_eq!(back.top_peer.as_deref(), Some("postgresql 127.0.0.1:5432"));
    assert!((back.top_peer_share - 1.0).abs() < 1e-9);
    // Percentiles within a bucket (9%) above the true 76 ms.
    assert!(back.p50_ms >= 76.0 && back.p99_ms <= 76.0 * 1.1, "{back:?}");
    let edges: Vec<(&str, &str)> = snap
        .edges
        .iter()
        .map(|e| (e.client.as_str(), e.server.as_str()))
        .collect();
    assert_eq!(
        edges,
        [
            ("backend", "postgresql 127.0.0.1:5432"),
            ("frontend", "backend")
        ]
    );
    assert!(
        (snap.edges[0].p50_ms - 60.0).abs() <= 6.0,
        "{:?}",
        snap.edges[0]
    );
}

#[test]
fn concurrent_calls_count_once_and_share_the_downstream_time() {
    use SpanKind::*;
    let t = Instant::now();
    let mut v = View::new(t);
    let mut a = span(1, "api", Client, "GET", (2, Some(1)), (10, 50));
    a.attributes = vec![("server.address", Value::from("10.0.0.1"))];
    let mut b = span(1, "api", Client, "GET", (3, Some(1)), (30, 70));
    b.attributes = vec![("server.address", Value::from("10.0.0.2"))];
    // Nested under a call, not a call of the request: not counted.
    let nested = span(1, "api", Client, "GET", (4, Some(2)), (0, 100));
    feed(
        &mut v,
        vec![
            a,
            b,
            nested,
            span(1, "api", Server, "GET /", (1, None), (0, 100)),
        ],
        t,
    );
    let snap = v.snapshot(t + QUIET);
    let api = &snap.services[0];
    assert!((api.downstream_ms - 60.0).abs() < 1e-9, "{api:?}");
    assert!((api.self_ms - 40.0).abs() < 1e-9, "{api:?}");
    assert!((api.top_peer_share - 0.5).abs() < 1e-9, "{api:?}");
}

#[test]
fn slow_and_failed_traces_are_listed_per_service_and_open_as_a_waterfall() {
    let t = Instant::now();
    let mut v = View::new(t);
    for trace in 1..=15u8 {
        let mut spans = chain(trace);
        // Trace 15 is the slowest; trace 3 failed in the backend.
        if trace == 15 {
            spans[3].end_unix_ns += 400_000_000;
        }
        if trace == 3 {
            spans[1].status = Status::Error("500".into());
        }
        feed(&mut v, spans, t);
    }
    let snap = v.snapshot(t + QUIET);
    let front: Vec<_> = snap
        .traces
        .iter()
        .filter(|x| x.service == "frontend")
        .collect();
    assert_eq!(front.len(), 10, "the 10 slowest");
    assert!(
        front[0].trace_id.starts_with("0f0f"),
        "slowest first: {front:?}"
    );
    assert!((front[0].duration_ms - 500.0).abs() < 1e-9);
    let failed: Vec<_> = snap
        .traces
        .iter()
        .filter(|x| x.service == "backend" && x.failed)
        .collect();
    assert_eq!(failed.len(), 1, "{:?}", snap.traces);
    assert!(failed[0].trace_id.starts_with("0303"));
    let w = v.trace_detail(&failed[0].trace_id).expect("kept");
    let rows: Vec<(usize, &str, &str)> = w
        .spans
        .iter()
        .map(|r| (r.depth, r.service.as_str(), r.kind.as_str()))
        .collect();
    assert_eq!(
        rows,
        [
            (0, "frontend", "SERVER"),
            (1, "frontend", "CLIENT"),
            (2, "backend", "SERVER"),
            (3, "backend", "CLIENT"),
        ]
    );
    assert_eq!(w.spans[2].error.as_deref(), Some("500"));
    assert!((w.spans[3].start_ms - 20.0).abs() < 1e-9);
    assert!(v.trace_detail("00").is_none());
}

#[test]
fn the_window_slides_and_forgets_idle_services() {
    let t = Instant::now();
    let mut v = View::new(t);
    feed(&mut v, chain(1), t);
    assert_eq!(v.snapshot(t + Duration::from_secs(5)).services.len(), 2);
    let later = t + Duration::from_secs(30);
    let snap = v.snapshot(later);
    assert!(
        snap.services.is_empty() && snap.edges.is_empty(),
        "{snap:?}"
    );
    // The trace is still listed (its list outlives the rate window).
    assert_eq!(snap.traces.len(), 2);
}

#[test]
fn kept_traces_are_bounded_in_number_and_in_spans() {
    use SpanKind::*;
    let t = Instant::now();
    let mut v = View::new(t);
    // 3,000 small traces: the oldest 1,000 go.
    for i in 0..3_000u32 {
        let mut s = span(1, "api", Server, "GET /", (1, None), (0, 1));
        s.trace_id[..4].copy_from_slice(&i.to_be_bytes());
        feed(&mut v, vec![s], t);
    }
    assert_eq!(v.traces.len(), super::MAX_TRACES);
    // Large traces: bounded by the spans they hold.
    for i in 0..400u32 {
        let spans: Vec<Span> = (0..500u32)
            .map(|k| {
                let mut s = span(2, "api", Client, "q", (3, Some(1)), (0, 1));
                s.trace_id[..4].copy_from_slice(&(10_000 + i).to_be_bytes());
                s.span_id[..4].copy_from_slice(&k.to_be_bytes());
                s
            })
            .collect();
        feed(&mut v, spans, t);
    }
    let held: usize = v.traces.iter().map(|k| k.spans.len()).sum();
    assert!(held <= super::MAX_KEPT_SPANS, "{held}");
    assert_eq!(held, v.kept_spans);
}

#[test]
fn services_past_the_bound_are_refused_and_counted() {
    use SpanKind::*;
    let t = Instant::now();
    let mut v = View::new(t);
    for i in 0..(super::MAX_SERVICES as u32 + 8) {
        let mut s = span(1, &format!("svc-{i}"), Server, "GET /", (1, None), (0, 1));
        s.trace_id[..4].copy_from_slice(&i.to_be_bytes());
        feed(&mut v, vec![s], t);
    }
    let snap = v.snapshot(t + QUIET);
    assert_eq!(snap.services.len(), super::MAX_SERVICES);
    assert_eq!(snap.refused, 8);
}
