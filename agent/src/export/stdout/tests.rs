use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::{tree::render, Format, Printer};
use crate::export::assemble::{Assembler, Finished, MAX_AGE, NO_ROOT_IDLE, QUIET};

fn texts(traces: Vec<Finished>) -> Vec<String> {
    traces.into_iter().map(super::text).collect()
}
use crate::spans::{Resource, Span, SpanKind, Status, Value};

const T0: u64 = 1_700_000_000_000_000_000;

fn span(
    service: &str,
    kind: SpanKind,
    name: &str,
    id: u8,
    parent: Option<u8>,
    start_us: u64,
    dur_us: u64,
) -> Span {
    Span {
        trace_id: [7; 16],
        span_id: [id; 8],
        parent_span_id: parent.map(|p| [p; 8]),
        trace_state: String::new(),
        kind,
        name: name.into(),
        start_unix_ns: T0 + start_us * 1000,
        end_unix_ns: T0 + (start_us + dur_us) * 1000,
        attributes: vec![],
        status: Status::Unset,
        // As `ResourceBuilder` makes it: the name among the attributes.
        resource: Arc::new(Resource {
            service_name: service.into(),
            service_namespace: None,
            attributes: vec![("service.name".into(), service.to_string().into())],
        }),
    }
}

/// The demo's login flow, spans in the order they finish.
fn login() -> Vec<Span> {
    use SpanKind::*;
    let mut server = span("login", Server, "POST /login", 2, Some(1), 100, 9_000);
    server
        .attributes
        .push(("http.response.status_code", Value::Int(200)));
    server.attributes.push(("url.path", "/login".into()));
    let mut user = span(
        "accusr",
        Server,
        "GET /users/{id}",
        6,
        Some(4),
        2_100,
        2_000,
    );
    user.attributes.push(("url.path", "/users/42".into()));
    let mut cache = span("login", Client, "GET", 5, Some(2), 600, 300);
    cache.status = Status::Error("connection reset".into());
    vec![
        span("login", Client, "SELECT users", 3, Some(2), 200, 1_500),
        user,
        span("login", Client, "GET /users/{id}", 4, Some(2), 2_000, 2_400),
        cache,
        server,
        span("loadgen", Client, "POST /login", 1, None, 0, 9_300),
    ]
}

#[test]
fn tree_golden() {
    let text = render(&[7; 16], login(), false);
    let want = "\
trace 07070707070707070707070707070707 · 6 spans · 9.300ms · 1 error
  loadgen CLIENT POST /login  9.300ms at +0.000ms
    login SERVER POST /login  9.000ms at +0.100ms 200
      login CLIENT SELECT users  1.500ms at +0.200ms
      login CLIENT GET  0.300ms at +0.600ms ERROR(connection reset)
      login CLIENT GET /users/{id}  2.400ms at +2.000ms
        accusr SERVER GET /users/{id}  2.000ms at +2.100ms /users/42
";
    assert_eq!(text, want, "\n{text}");
}

#[test]
fn spans_whose_parent_is_elsewhere_start_the_tree() {
    // A trace continued from an incoming traceparent: the server span's
    // parent is in another agent; a late consumer's parent is printed.
    use SpanKind::*;
    let spans = vec![
        span("orders", Server, "POST /orders", 2, Some(99), 0, 5_000),
        span("orders", Client, "INSERT orders", 3, Some(2), 1_000, 500),
        span(
            "mail",
            Consumer,
            "process orders",
            8,
            Some(77),
            9_000,
            1_000,
        ),
    ];
    let text = render(&[7; 16], spans, true);
    let want = "\
trace 07070707070707070707070707070707 (late spans) · 3 spans · 10.000ms
  orders SERVER POST /orders  5.000ms at +0.000ms
    orders CLIENT INSERT orders  0.500ms at +1.000ms
  mail CONSUMER process orders  1.000ms at +9.000ms
";
    assert_eq!(text, want, "\n{text}");
}

#[test]
fn a_parent_cycle_from_the_wire_still_prints_every_span_once() {
    use SpanKind::*;
    let spans = vec![
        span("a", Server, "x", 1, Some(2), 0, 10),
        span("b", Server, "y", 2, Some(1), 5, 10),
    ];
    let text = render(&[7; 16], spans, false);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.contains("a SERVER x") && text.contains("b SERVER y"),
        "{text}"
    );
}

#[test]
fn a_trace_waits_for_its_root_then_for_quiet() {
    let t = Instant::now();
    let mut a = Assembler::default();
    let mut spans = login();
    let root = spans.pop().unwrap();
    for s in spans {
        assert!(a.push(s, t).is_none());
    }
    // No root yet: not due after QUIET.
    assert!(a.due(Some(t + QUIET)).is_empty());
    let at = t + Duration::from_millis(200);
    assert!(a.push(root, at).is_none());
    assert!(
        a.due(Some(at + QUIET / 2)).is_empty(),
        "printed before quiet"
    );
    let trees = texts(a.due(Some(at + QUIET)));
    assert_eq!(trees.len(), 1);
    assert_eq!(trees[0].lines().count(), 7, "{}", trees[0]);
    assert!(a.due(None).is_empty(), "printed twice");
}

#[test]
fn a_late_span_prints_as_the_traces_late_spans() {
    use SpanKind::*;
    let t = Instant::now();
    let mut a = Assembler::default();
    a.push(span("web", Server, "GET /", 1, None, 0, 100), t);
    assert_eq!(a.due(Some(t + QUIET)).len(), 1);
    let later = t + Duration::from_secs(2);
    a.push(
        span("mail", Consumer, "process orders", 9, Some(1), 500, 100),
        later,
    );
    // Its root is printed already: it waits NO_ROOT_IDLE, not QUIET.
    assert!(a.due(Some(later + QUIET)).is_empty());
    let trees = texts(a.due(Some(later + NO_ROOT_IDLE)));
    assert_eq!(trees.len(), 1);
    assert!(trees[0].contains("(late spans)"), "{}", trees[0]);
}

#[test]
fn a_busy_trace_is_printed_at_max_age() {
    use SpanKind::*;
    let t = Instant::now();
    let mut a = Assembler::default();
    let mut now = t;
    for i in 0..40u8 {
        now = t + MAX_AGE * u32::from(i) / 40;
        a.push(span("w", Client, "q", i + 2, Some(1), 0, 1), now);
        assert!(a.due(Some(now)).is_empty());
    }
    let trees = a.due(Some(t + MAX_AGE));
    assert_eq!(
        trees.len(),
        1,
        "kept past MAX_AGE (last span at {:?})",
        now - t
    );
}

#[test]
fn bounds_print_early_and_lose_nothing() {
    use SpanKind::*;
    let t = Instant::now();
    let mut a = Assembler::default();
    let mut printed = 0;
    // Many open traces: past the bound, the oldest is printed at once.
    for n in 0..5_000u32 {
        let mut s = span("w", Server, "GET /", 1, None, 0, 1);
        s.trace_id[..4].copy_from_slice(&n.to_be_bytes());
        s.parent_span_id = Some([9; 8]); // root elsewhere: never due by QUIET
        if let Some(tree) = a.push(s, t).map(super::text) {
            assert!(tree.starts_with("trace 00000"), "not the oldest: {tree}");
            printed += 1;
        }
    }
    assert!(printed > 0);
    printed += a.due(None).len();
    assert_eq!(printed, 5_000);
}

#[test]
fn printer_formats() {
    let spans = login();
    let mut lines = Printer::new(Format::Lines, vec![]);
    let mut json = Printer::new(Format::Json, vec![]);
    let mut tree = Printer::new(Format::Tree, vec![]);
    let t = Instant::now();
    for s in spans {
        lines.span(s.clone(), t);
        json.span(s.clone(), t);
        tree.span(s, t);
    }
    let lines = String::from_utf8(lines.into_inner()).unwrap();
    assert_eq!(lines.lines().count(), 6);
    tree.poll(Some(t));
    assert!(tree.out.is_empty(), "printed before the trace was quiet");
    tree.poll(None);
    let tree = String::from_utf8(tree.into_inner()).unwrap();
    assert_eq!(tree, render(&[7; 16], login(), false));

    let json = String::from_utf8(json.into_inner()).unwrap();
    let rows: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6);
    let server = &rows[4];
    assert_eq!(server["traceId"], "07070707070707070707070707070707");
    assert_eq!(server["spanId"], "0202020202020202");
    assert_eq!(server["parentSpanId"], "0101010101010101");
    assert_eq!(server["kind"], "SPAN_KIND_SERVER");
    assert_eq!(server["name"], "POST /login");
    assert_eq!(
        server["startTimeUnixNano"],
        (T0 + 100_000).to_string(),
        "times are decimal strings"
    );
    assert_eq!(server["attributes"][0]["key"], "http.response.status_code");
    assert_eq!(server["attributes"][1]["value"]["stringValue"], "/login");
    assert_eq!(server["attributes"][0]["value"]["intValue"], "200");
    assert_eq!(
        server["resource"]["attributes"][0]["value"]["stringValue"],
        "login"
    );
    assert_eq!(
        server["resource"]["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["key"] == "service.name")
            .count(),
        1,
        "the service's name once"
    );
    assert_eq!(rows[3]["status"]["code"], "STATUS_CODE_ERROR");
    assert!(
        rows[5].get("parentSpanId").is_none(),
        "a root has no parent"
    );
}
