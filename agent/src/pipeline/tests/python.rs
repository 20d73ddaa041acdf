//! Python asyncio: calls placed by the task (contextvars context) that made
//! them, once it answers (`correlation/causality/python.rs`).
use super::*;

/// `data_on`, made in Python context `py`.
fn in_py(c: &ConnInfo, dir: Direction, at: u64, tick: u32, py: u32, bytes: &[u8]) -> StreamEvent {
    let mut ev = data_on(c, dir, at, (200, tick), bytes);
    if let StreamEvent::Data(_, d) = &mut ev {
        d.py_task = py;
    }
    ev
}

fn req(id: &str) -> Vec<u8> {
    format!("GET /{id} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
}

fn server(id: u64, port: u16) -> ConnInfo {
    conn(
        id,
        200,
        Role::Server,
        "127.0.0.1:80",
        &format!("10.1.1.1:{port}"),
        "loop",
    )
}

fn client(id: u64, port: u16) -> ConnInfo {
    conn(
        id,
        200,
        Role::Client,
        &format!("127.0.0.1:{port}"),
        "10.9.9.9:8080",
        "loop",
    )
}

fn evidence(s: &Span) -> String {
    s.attributes
        .iter()
        .find(|(k, _)| *k == "sonde.link.evidence")
        .map(|(_, v)| format!("{v:?}"))
        .unwrap_or_default()
}

/// Two requests in flight on one loop thread, each read by its transport's
/// callback (contexts 11, 12) and served by its own task (21, 22), whose
/// calls run a loop iteration after the reads (no tick links them) and
/// whose responses come in the other order. A third task (23) makes a call
/// before its request is read: a root. A context that reads both requests
/// itself (a loop without tasks, 30) is never evidence.
#[test]
fn a_task_s_calls_go_under_the_request_it_answers() {
    let mut l7 = l7();
    let (a, b, c) = (server(2, 5000), server(3, 5001), server(4, 5002));
    let (da, db, dc) = (client(5, 6000), client(6, 6001), client(7, 6002));
    let mut events = opens(&[&a, &b, &c, &da, &db, &dc]);
    events.extend([
        in_py(&a, Direction::Ingress, 1_000, 1, 11, &req("a")),
        in_py(&b, Direction::Ingress, 1_100, 2, 12, &req("b")),
        in_py(&dc, Direction::Egress, 1_150, 3, 23, &req("c0")),
        in_py(&db, Direction::Egress, 1_200, 4, 22, &req("b1")),
        in_py(&da, Direction::Egress, 1_300, 4, 21, &req("a1")),
        in_py(&c, Direction::Ingress, 1_350, 5, 13, &req("c")),
        in_py(&da, Direction::Ingress, 1_400, 6, 31, RESP),
        in_py(&db, Direction::Ingress, 1_500, 7, 32, RESP),
        in_py(&dc, Direction::Ingress, 1_550, 8, 33, RESP),
        in_py(&a, Direction::Egress, 1_600, 9, 21, RESP),
        in_py(&c, Direction::Egress, 1_650, 9, 23, RESP),
        in_py(&b, Direction::Egress, 1_700, 10, 22, RESP),
    ]);
    let mut spans = feed(&mut l7, vec![], events);
    l7.release_held(None, &mut spans);
    for (call, parent) in [("GET /a1", "GET /a"), ("GET /b1", "GET /b")] {
        let (s, p) = (named(&spans, call), named(&spans, parent));
        assert_eq!(
            (s.trace_id, s.parent_span_id),
            (p.trace_id, Some(p.span_id)),
            "{call}"
        );
        assert_eq!(evidence(s), r#"Str("task")"#, "{call}");
    }
    let c0 = named(&spans, "GET /c0");
    assert_eq!(
        c0.parent_span_id, None,
        "made before its task's request was read"
    );
    assert_eq!(evidence(c0), r#"Str("ambiguous")"#);
    assert_eq!(l7.counts().ambiguous.iter().sum::<u64>(), 1);
}

#[test]
fn a_context_that_reads_several_requests_itself_is_no_evidence() {
    let mut l7 = l7();
    let (a, b) = (server(2, 5000), server(3, 5001));
    let (da, db) = (client(5, 6000), client(6, 6001));
    let mut events = opens(&[&a, &b, &da, &db]);
    events.extend([
        in_py(&a, Direction::Ingress, 1_000, 1, 30, &req("a")),
        in_py(&b, Direction::Ingress, 1_100, 2, 30, &req("b")),
        // b's call, then a's response: "the request its context answers
        // next" would put b's call under a.
        in_py(&db, Direction::Egress, 1_200, 3, 30, &req("b1")),
        in_py(&a, Direction::Egress, 1_300, 4, 30, RESP),
        in_py(&db, Direction::Ingress, 1_400, 5, 30, RESP),
        in_py(&b, Direction::Egress, 1_500, 6, 30, RESP),
    ]);
    let mut spans = feed(&mut l7, vec![], events);
    l7.release_held(None, &mut spans);
    let b1 = named(&spans, "GET /b1");
    assert_eq!(b1.parent_span_id, None);
    assert_eq!(evidence(b1), r#"Str("ambiguous")"#);
    assert_eq!(l7.counts().ambiguous.iter().sum::<u64>(), 1);
}

/// A handler that answers seconds after its call (a slow query, a SYN sent
/// again) still takes it: a call held for its task waits `TASK_HOLD_NS`,
/// not the 1 s a late partner waits. One that answers later still goes out
/// a root when that wait ends.
#[test]
fn a_task_that_answers_seconds_later_still_takes_its_call() {
    use crate::correlation::holds::TASK_HOLD_NS;
    const S: u64 = 1_000_000_000;
    let mut l7 = l7();
    let (a, b) = (server(2, 5000), server(3, 5001));
    let (da, db) = (client(5, 6000), client(6, 6001));
    let mut events = opens(&[&a, &b, &da, &db]);
    events.extend([
        in_py(&a, Direction::Ingress, S, 1, 11, &req("a")),
        in_py(&b, Direction::Ingress, S + 100, 2, 12, &req("b")),
        in_py(&da, Direction::Egress, S + 200, 3, 21, &req("a1")),
        in_py(&db, Direction::Egress, S + 300, 3, 22, &req("b1")),
        in_py(&da, Direction::Ingress, S + 400, 4, 31, RESP),
        in_py(&db, Direction::Ingress, S + 500, 5, 32, RESP),
    ]);
    let mut spans = feed(&mut l7, vec![], events);
    // Three seconds on (the harness's events all come at `NOW`), a's task
    // answers; b's answers past the task wait.
    l7.release_held(Some(NOW + 3 * S), &mut spans);
    spans = feed(
        &mut l7,
        spans,
        [in_py(&a, Direction::Egress, 4 * S, 6, 21, RESP)],
    );
    l7.release_held(Some(NOW + TASK_HOLD_NS), &mut spans);
    spans = feed(
        &mut l7,
        spans,
        [in_py(
            &b,
            Direction::Egress,
            S + 600 + TASK_HOLD_NS,
            7,
            22,
            RESP,
        )],
    );
    l7.release_held(None, &mut spans);
    let (a1, ga) = (named(&spans, "GET /a1"), named(&spans, "GET /a"));
    assert_eq!(
        (a1.trace_id, a1.parent_span_id),
        (ga.trace_id, Some(ga.span_id))
    );
    assert_eq!(evidence(a1), r#"Str("task")"#);
    let b1 = named(&spans, "GET /b1");
    assert_eq!(b1.parent_span_id, None, "its task answered after the wait");
    assert_eq!(evidence(b1), r#"Str("ambiguous")"#);
    assert_eq!(l7.counts().ambiguous.iter().sum::<u64>(), 1);
}
