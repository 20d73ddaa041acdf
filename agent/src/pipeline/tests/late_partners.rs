//! Late partners: a server's records before its client's on this node, or
//! a client's too late to be adopted.
use super::*;

/// One exchange whose server read enters the ring before its client's
/// write record (the client's thread preempted before its syscall
/// returned), the server's read at `at`.
fn server_read_first(client: &ConnInfo, server: &ConnInfo, at: u64) -> [StreamEvent; 4] {
    [
        data(server, Direction::Ingress, at, REQ),
        data(client, Direction::Egress, at - 100, REQ),
        data(server, Direction::Egress, at + 1_000, RESP),
        data(client, Direction::Ingress, at + 1_100, RESP),
    ]
}

#[test]
fn a_server_request_read_before_its_clients_write_record_joins_the_clients_trace() {
    let mut l7 = l7();
    let (client, server) = loopback_pair();
    let spans = feed(
        &mut l7,
        vec![],
        [
            StreamEvent::Open(client.clone()),
            StreamEvent::Open(server.clone()),
        ]
        .into_iter()
        .chain(server_read_first(&client, &server, 1_000)),
    );
    let [srv, cli] = spans.as_slice() else {
        panic!("{spans:?}")
    };
    assert_eq!((srv.kind.as_str(), cli.kind.as_str()), ("SERVER", "CLIENT"));
    assert_eq!(srv.trace_id, cli.trace_id, "one trace");
    assert_eq!(
        srv.parent_span_id,
        Some(cli.span_id),
        "the server span is the client span's child"
    );
    assert_eq!(l7.counts().late_partners_adopted, 1, "counted");
}

#[test]
fn a_server_span_finished_before_its_local_clients_write_record_is_held_and_joins() {
    let mut l7 = l7();
    let (client, server) = loopback_pair();
    let mut spans = feed(
        &mut l7,
        vec![],
        [
            StreamEvent::Open(client.clone()),
            StreamEvent::Open(server.clone()),
            // The client's thread stayed preempted for the whole request.
            data(&server, Direction::Ingress, 1_000, REQ),
            data(&server, Direction::Egress, 2_000, RESP),
        ],
    );
    assert!(spans.is_empty(), "held for its client: {spans:?}");
    spans = feed(
        &mut l7,
        spans,
        [
            data(&client, Direction::Egress, 900, REQ),
            data(&client, Direction::Ingress, 2_100, RESP),
        ],
    );
    let [srv, cli] = spans.as_slice() else {
        panic!("{spans:?}")
    };
    assert_eq!((srv.kind.as_str(), cli.kind.as_str()), ("SERVER", "CLIENT"));
    assert_eq!(srv.trace_id, cli.trace_id, "one trace");
    assert_eq!(
        srv.parent_span_id,
        Some(cli.span_id),
        "the server span is the client span's child"
    );
    assert_eq!(l7.counts().late_partners_adopted, 1, "counted");
    l7.release_held(None, &mut spans);
    assert_eq!(spans.len(), 2, "nothing else was held");
}

#[test]
fn the_calls_a_late_partnered_request_made_move_into_its_clients_trace_too() {
    let mut l7 = l7();
    let (client, server) = loopback_pair();
    // The server's own downstream call, on the thread serving the request.
    let downstream = conn(
        3,
        200,
        Role::Client,
        "127.0.0.1:6000",
        "10.9.9.9:8080",
        "callee",
    );
    let mut spans = feed(
        &mut l7,
        vec![],
        [
            StreamEvent::Open(client.clone()),
            StreamEvent::Open(server.clone()),
            StreamEvent::Open(downstream.clone()),
            data(&server, Direction::Ingress, 1_000, REQ),
            data(
                &downstream,
                Direction::Egress,
                1_100,
                b"GET /down HTTP/1.1\r\nHost: d\r\n\r\n",
            ),
            data(&downstream, Direction::Ingress, 1_200, RESP),
            data(&server, Direction::Egress, 2_000, RESP),
        ],
    );
    assert!(
        spans.is_empty(),
        "the whole provisional trace is held: {spans:?}"
    );
    spans = feed(
        &mut l7,
        spans,
        [
            data(&client, Direction::Egress, 900, REQ),
            data(&client, Direction::Ingress, 2_100, RESP),
        ],
    );
    let [down, srv, cli] = spans.as_slice() else {
        panic!("{spans:?}")
    };
    assert_eq!(
        (down.kind.as_str(), srv.kind.as_str(), cli.kind.as_str()),
        ("CLIENT", "SERVER", "CLIENT")
    );
    assert!(
        spans.iter().all(|s| s.trace_id == cli.trace_id),
        "one trace: {spans:?}"
    );
    assert_eq!(srv.parent_span_id, Some(cli.span_id));
    assert_eq!(
        down.parent_span_id,
        Some(srv.span_id),
        "the downstream call stays under its request"
    );
}

#[test]
fn a_held_server_span_goes_out_alone_when_its_client_never_comes() {
    let mut l7 = l7();
    // Its client end is not traced: only the server's records come.
    let (_, server) = loopback_pair();
    let mut spans = feed(
        &mut l7,
        vec![],
        [
            StreamEvent::Open(server.clone()),
            data(&server, Direction::Ingress, 1_000, REQ),
            data(&server, Direction::Egress, 2_000, RESP),
        ],
    );
    assert!(spans.is_empty());
    l7.release_held(Some(NOW + HOLD_NS - 1), &mut spans);
    assert!(spans.is_empty(), "its wait is not over yet");
    assert_eq!(l7.counts().partners_not_come, 0);
    l7.release_held(Some(NOW + HOLD_NS), &mut spans);
    let [srv] = spans.as_slice() else {
        panic!("{spans:?}")
    };
    assert_eq!((srv.kind.as_str(), srv.parent_span_id), ("SERVER", None));
    assert_eq!(l7.counts().partners_not_come, 1, "a counted root");
}

#[test]
fn server_spans_of_off_node_clients_are_not_held() {
    let mut l7 = l7();
    let server = conn(
        2,
        200,
        Role::Server,
        "10.0.0.1:80",
        "192.0.2.7:5000",
        "callee",
    );
    let spans = feed(
        &mut l7,
        vec![],
        [
            StreamEvent::Open(server.clone()),
            data(&server, Direction::Ingress, 1_000, REQ),
            data(&server, Direction::Egress, 2_000, RESP),
        ],
    );
    let [srv] = spans.as_slice() else {
        panic!("exported at once: {spans:?}")
    };
    assert_eq!(srv.kind.as_str(), "SERVER");
}

#[test]
fn a_partner_later_than_the_window_is_not_adopted() {
    let mut l7 = l7();
    let (client, server) = loopback_pair();
    let late = LATE_PARTNER_WINDOW_NS + 10_000;
    let spans = feed(
        &mut l7,
        vec![],
        [
            StreamEvent::Open(client.clone()),
            StreamEvent::Open(server.clone()),
            data(&server, Direction::Ingress, late, REQ),
            data(&client, Direction::Egress, 1_000, REQ),
            data(&server, Direction::Egress, late + 1_000, RESP),
            data(&client, Direction::Ingress, late + 2_000, RESP),
        ],
    );
    let [srv, cli] = spans.as_slice() else {
        panic!("{spans:?}")
    };
    assert_ne!(
        srv.trace_id, cli.trace_id,
        "not stitched: exported as they are"
    );
    assert_eq!(srv.parent_span_id, None);
    assert_eq!(l7.counts().late_partners_adopted, 0);
    assert_eq!(l7.drops().late_partners_missed, 1, "counted as missed");
}

/// The next request on a keep-alive connection, read on time, after one
/// whose client record came late: its server span must be the child of its
/// own client span, never of the late one's.
fn next_request_keeps_its_own_parent(first_req: &[u8], late: u64) -> crate::correlation::Drops {
    const REQ2: &[u8] = b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut l7 = l7();
    let (client, server) = loopback_pair();
    let t2 = late + 10_000;
    let spans = feed(
        &mut l7,
        vec![],
        [
            StreamEvent::Open(client.clone()),
            StreamEvent::Open(server.clone()),
            // The first exchange: the server's records before the client's.
            data(&server, Direction::Ingress, late, first_req),
            data(&server, Direction::Egress, late + 1_000, RESP),
            data(&client, Direction::Egress, 1_000, first_req),
            data(&client, Direction::Ingress, late + 2_000, RESP),
            // The second, in order.
            data(&client, Direction::Egress, t2, REQ2),
            data(&server, Direction::Ingress, t2 + 1_000, REQ2),
            data(&server, Direction::Egress, t2 + 2_000, RESP),
            data(&client, Direction::Ingress, t2 + 3_000, RESP),
        ],
    );
    let mut spans = spans;
    l7.release_held(None, &mut spans);
    let second = |kind: crate::spans::SpanKind| {
        spans
            .iter()
            .find(|s| s.kind == kind && s.name.contains("second"))
            .unwrap_or_else(|| panic!("no {kind:?} span of /second in {spans:?}"))
    };
    let (srv, cli) = (
        second(crate::spans::SpanKind::Server),
        second(crate::spans::SpanKind::Client),
    );
    assert_eq!(srv.parent_span_id, Some(cli.span_id), "{spans:#?}");
    assert_eq!(srv.trace_id, cli.trace_id);
    l7.drops()
}

#[test]
fn a_late_client_of_a_request_with_a_traceparent_is_not_handed_to_the_next() {
    // Found by the VM matrix on 6.1 (TCG): the late client record of a
    // request that carried a traceparent was queued for the server, and the
    // connection's next request popped it.
    const TP_REQ: &[u8] = b"GET /first HTTP/1.1\r\nHost: x\r\n\
        traceparent: 00-0000000000000000000000000000001d-000000000000001e-01\r\n\r\n";
    let drops = next_request_keeps_its_own_parent(TP_REQ, 5_000);
    assert_eq!(drops.late_partners_missed, 0, "the header linked it");
}

#[test]
fn a_partner_too_late_is_not_handed_to_the_next_request() {
    let drops = next_request_keeps_its_own_parent(REQ, LATE_PARTNER_WINDOW_NS + 10_000);
    assert_eq!(drops.late_partners_missed, 1);
}

#[test]
fn a_keep_alive_connection_between_requests_holds_no_stitch_entry_and_still_pairs_late() {
    let mut l7 = l7();
    let (client, server) = loopback_pair();
    // entries(): [2] client contexts queued for servers (and their index by
    // local endpoint), [3] client connections with requests unanswered.
    let stitch = |l7: &L7| {
        let e = l7.p.entries();
        (e[2], e[3])
    };
    let mut spans = feed(
        &mut l7,
        vec![],
        [
            StreamEvent::Open(client.clone()),
            StreamEvent::Open(server.clone()),
            data(&client, Direction::Egress, 900, REQ),
            data(&server, Direction::Ingress, 1_000, REQ),
            data(&server, Direction::Egress, 2_000, RESP),
            data(&client, Direction::Ingress, 2_100, RESP),
        ],
    );
    assert_eq!(spans.len(), 2, "{spans:?}");
    // The drained queues are gone; only the local endpoint's index stays
    // (a late server of this connection finds its client through it).
    assert_eq!(stitch(&l7), (1, 0), "idle between requests");
    // The next request on the same connection, its server's read first.
    spans = feed(&mut l7, vec![], server_read_first(&client, &server, 3_000));
    let [srv, cli] = spans.as_slice() else {
        panic!("{spans:?}")
    };
    assert_eq!((srv.kind.as_str(), cli.kind.as_str()), ("SERVER", "CLIENT"));
    assert_eq!(srv.parent_span_id, Some(cli.span_id), "paired late");
    assert_eq!(l7.counts().late_partners_adopted, 1, "counted");
    assert_eq!(stitch(&l7), (1, 0), "idle again");
    feed(
        &mut l7,
        vec![],
        [
            StreamEvent::Close(client.clone(), 5_000),
            StreamEvent::Close(server.clone(), 5_000),
        ],
    );
    assert_eq!(stitch(&l7), (0, 0), "the index goes with the connection");
}

/// A server on this node whose client is not traced (its records never
/// come), three requests on one keep-alive connection.
fn untraced_client_requests(l7: &mut L7) -> (ConnInfo, Vec<Span>) {
    // Its client end is not traced: only the server's records come.
    let (_, server) = loopback_pair();
    let mut spans = feed(
        l7,
        vec![],
        [
            StreamEvent::Open(server.clone()),
            data(&server, Direction::Ingress, 1_000, REQ),
            data(&server, Direction::Egress, 2_000, RESP),
        ],
    );
    assert!(spans.is_empty(), "the first is held: {spans:?}");
    spans = feed(
        l7,
        spans,
        [
            data(&server, Direction::Ingress, 3_000, REQ),
            data(&server, Direction::Egress, 4_000, RESP),
            data(&server, Direction::Ingress, 5_000, REQ),
            data(&server, Direction::Egress, 6_000, RESP),
        ],
    );
    (server, spans)
}

#[test]
fn a_connection_whose_client_records_never_come_stops_holding_at_its_second_request() {
    let mut l7 = l7();
    let (_, mut spans) = untraced_client_requests(&mut l7);
    // The client wrote the first request, and its record entered the ring,
    // before it could write the second: none is coming.
    assert_eq!(spans.len(), 3, "none held past the second read: {spans:?}");
    for s in &spans {
        assert_eq!((s.kind.as_str(), s.parent_span_id), ("SERVER", None));
    }
    let ids: std::collections::HashSet<_> = spans.iter().map(|s| s.trace_id).collect();
    assert_eq!(ids.len(), 3, "a trace each");
    assert_eq!(l7.counts().partnerless, 1, "the connection, once");
    assert_eq!(
        l7.drops().late_partners_missed,
        1,
        "the first request's wait"
    );
    assert_eq!(l7.drops().held_early, 0);
    l7.release_held(None, &mut spans);
    assert_eq!(spans.len(), 3, "nothing else was held");
}

#[test]
fn a_client_record_on_a_partnerless_connection_is_not_handed_to_a_later_request() {
    const REQ4: &[u8] = b"GET /fourth HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut l7 = l7();
    let (server, mut spans) = untraced_client_requests(&mut l7);
    // The client's records come after all (the first one was lost): a
    // context queued now would be popped by the next request, whose own
    // record is not the one queued.
    let (client, _) = loopback_pair();
    spans = feed(
        &mut l7,
        spans,
        [
            StreamEvent::Open(client.clone()),
            data(&client, Direction::Egress, 4_900, REQ),
            data(&client, Direction::Ingress, 6_100, RESP),
            data(&server, Direction::Ingress, 7_000, REQ4),
            data(&client, Direction::Egress, 6_900, REQ4),
            data(&server, Direction::Egress, 8_000, RESP),
            data(&client, Direction::Ingress, 8_100, RESP),
        ],
    );
    l7.release_held(None, &mut spans);
    let servers: Vec<_> = spans
        .iter()
        .filter(|s| s.kind.as_str() == "SERVER")
        .collect();
    assert_eq!(servers.len(), 4, "{spans:#?}");
    for s in servers {
        assert_eq!(s.parent_span_id, None, "roots, never a wrong parent: {s:?}");
    }
    assert_eq!(spans.len(), 6, "and both client spans: {spans:#?}");
    assert_eq!(
        l7.drops().late_partners_missed,
        3,
        "the first wait and both records"
    );
    assert_eq!(l7.counts().late_partners_adopted, 0);
}

#[test]
fn a_partnerless_connection_is_forgotten_at_its_close() {
    let mut l7 = l7();
    let (server, mut spans) = untraced_client_requests(&mut l7);
    // entries()[4]: server waits, their source index, partnerless connections.
    assert_eq!(l7.p.entries()[4], 1, "marked");
    spans = feed(&mut l7, spans, [StreamEvent::Close(server.clone(), 7_000)]);
    assert_eq!(l7.p.entries()[4], 0, "forgotten with the connection");
    // A new connection from the same endpoint (a traced client this time)
    // is stitched again.
    let (client, server) = loopback_pair();
    spans.clear();
    spans = feed(
        &mut l7,
        spans,
        [
            StreamEvent::Open(client.clone()),
            StreamEvent::Open(server.clone()),
        ]
        .into_iter()
        .chain(server_read_first(&client, &server, 8_000)),
    );
    let [srv, cli] = spans.as_slice() else {
        panic!("{spans:?}")
    };
    assert_eq!(srv.parent_span_id, Some(cli.span_id), "stitched late");
}

#[test]
fn pipelined_requests_read_at_once_before_their_clients_record_still_pair() {
    const REQ2: &[u8] = b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n";
    let both = [REQ, REQ2].concat();
    let mut l7 = l7();
    let (client, server) = loopback_pair();
    let mut spans = feed(
        &mut l7,
        vec![],
        [
            StreamEvent::Open(client.clone()),
            StreamEvent::Open(server.clone()),
            // One write of both requests, read at once by the server before
            // the client's record enters the ring.
            data(&server, Direction::Ingress, 1_000, &both),
            data(&client, Direction::Egress, 900, &both),
            data(&server, Direction::Egress, 2_000, RESP),
            data(&server, Direction::Egress, 2_500, RESP),
            data(&client, Direction::Ingress, 3_000, &[RESP, RESP].concat()),
        ],
    );
    l7.release_held(None, &mut spans);
    assert_eq!(spans.len(), 4, "{spans:#?}");
    for path in ["/late", "/second"] {
        let of = |kind: &str| {
            spans
                .iter()
                .find(|s| s.kind.as_str() == kind && s.name.contains(path))
                .unwrap_or_else(|| panic!("no {kind} span of {path} in {spans:#?}"))
        };
        assert_eq!(
            of("SERVER").parent_span_id,
            Some(of("CLIENT").span_id),
            "{path}"
        );
    }
    assert_eq!(l7.counts().partnerless, 0);
}
