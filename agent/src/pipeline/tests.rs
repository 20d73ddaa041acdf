//! Event orders the kernel can deliver but a live test cannot force:
//! stream events fed through dispatch, correlation and telemetry in that
//! order.
use std::sync::Arc;

use super::*;
use crate::{
    connections::{process::ProcessInfo, ConnInfo},
    correlation::holds::HOLD_NS,
    event::{Comm, DataRecord, Direction, Role, SocketTuple, Syscall},
    metrics::Registry,
};

/// The pipeline's clock in these tests (CLOCK_MONOTONIC ns).
const NOW: u64 = 10_000_000_000;
const LATE_PARTNER_WINDOW_NS: u64 = 1_000_000_000;

struct L7 {
    p: Pipeline,
    commands: Vec<Command>,
}

impl L7 {
    fn on_event(&mut self, ev: StreamEvent, spans: &mut Vec<Span>) {
        self.p.on_event(ev, NOW, spans, &mut self.commands);
    }

    fn release_held(&mut self, now: Option<u64>, spans: &mut Vec<Span>) {
        self.p.release_held(now, spans);
    }

    fn counts(&self) -> crate::correlation::Counts {
        self.p.correlation.counts()
    }

    fn drops(&self) -> crate::correlation::Drops {
        self.p.correlation.drops()
    }
}

fn conn(id: u64, pid: u32, role: Role, local: &str, remote: &str, service: &str) -> ConnInfo {
    ConnInfo {
        id,
        pid,
        fd: 3,
        role,
        tuple: Some(SocketTuple {
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
        }),
        process: Arc::new(ProcessInfo {
            pid,
            comm: service.into(),
            otel_service_name: Some(service.into()),
            ..Default::default()
        }),
        opened_ns: 1,
        preexisting: false,
        peer_is_agent: false,
        opened_by: (0, 0),
        tls: false,
    }
}

fn data(c: &ConnInfo, dir: Direction, at: u64, bytes: &[u8]) -> StreamEvent {
    data_on(c, dir, at, (c.pid, 0), bytes)
}

/// A data record made on thread `tid` at its tick `tick`.
fn data_on(
    c: &ConnInfo,
    dir: Direction,
    at: u64,
    (tid, tick): (u32, u32),
    bytes: &[u8],
) -> StreamEvent {
    StreamEvent::Data(
        c.clone(),
        DataRecord {
            pid: c.pid,
            tid,
            fd: c.fd,
            enter_ns: at,
            exit_ns: at + 10,
            tick,
            task: 0,
            lineage: Default::default(),
            bytes: bytes.len() as u64,
            syscall: if dir == Direction::Egress {
                Syscall::Write
            } else {
                Syscall::Read
            },
            direction: dir,
            role: c.role,
            flags: 0,
            comm: Comm::default(),
            payload: bytes.to_vec(),
        },
    )
}

fn l7() -> L7 {
    L7 {
        p: Pipeline::new(PipelineConfig::new(Registry::shared(0), Sampler::AlwaysOn)),
        commands: vec![],
    }
}

/// A client and a server end of one loopback connection, on this node.
fn loopback_pair() -> (ConnInfo, ConnInfo) {
    (
        conn(
            1,
            100,
            Role::Client,
            "127.0.0.1:5000",
            "127.0.0.1:80",
            "caller",
        ),
        conn(
            2,
            200,
            Role::Server,
            "127.0.0.1:80",
            "127.0.0.1:5000",
            "callee",
        ),
    )
}

/// Feeds `events` in order, adding the spans they make to `spans`.
fn feed(
    l7: &mut L7,
    mut spans: Vec<Span>,
    events: impl IntoIterator<Item = StreamEvent>,
) -> Vec<Span> {
    for ev in events {
        l7.on_event(ev, &mut spans);
    }
    spans
}

const REQ: &[u8] = b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n";
const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

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
            // The client's thread was preempted before its write syscall
            // returned: the server's read enters the ring first.
            data(&server, Direction::Ingress, 1_000, REQ),
            data(&client, Direction::Egress, 900, REQ),
            data(&server, Direction::Egress, 2_000, RESP),
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
    let server = conn(
        2,
        200,
        Role::Server,
        "127.0.0.1:80",
        "127.0.0.1:5000",
        "callee",
    );
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
    l7.release_held(Some(NOW + HOLD_NS), &mut spans);
    let [srv] = spans.as_slice() else {
        panic!("{spans:?}")
    };
    assert_eq!((srv.kind.as_str(), srv.parent_span_id), ("SERVER", None));
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

#[test]
fn excluded_namespaces_are_released_at_open() {
    use crate::metadata::{kube::PodMeta, SharedStore};
    let store = SharedStore::default();
    let pod = Arc::new(PodMeta {
        namespace: "kube-system".into(),
        name: "coredns-1".into(),
        uid: "u1".into(),
        ..Default::default()
    });
    store
        .write()
        .unwrap()
        .set_pod(pod, vec![("c1".into(), "coredns".into())]);
    let mut cfg = PipelineConfig::new(Registry::shared(0), Sampler::AlwaysOn);
    cfg.excluded = Exclusions {
        processes: vec![],
        namespaces: vec!["kube-system".into()],
    };
    cfg.metadata = Some(store);
    let mut l7 = L7 {
        p: Pipeline::new(cfg),
        commands: vec![],
    };
    let mut dns = conn(
        1,
        100,
        Role::Server,
        "10.0.0.2:53",
        "10.0.0.9:4000",
        "coredns",
    );
    Arc::get_mut(&mut dns.process).unwrap().container_id = Some("c1".into());
    let other = conn(2, 200, Role::Server, "10.0.0.3:80", "10.0.0.9:4001", "web");
    let mut spans = vec![];
    l7.on_event(StreamEvent::Open(dns.clone()), &mut spans);
    l7.on_event(StreamEvent::Open(other.clone()), &mut spans);
    l7.on_event(data(&dns, Direction::Ingress, 1_000, REQ), &mut spans);
    l7.on_event(data(&dns, Direction::Egress, 2_000, RESP), &mut spans);
    assert_eq!(
        l7.commands,
        vec![Command::Release {
            conn: 1,
            pid: 100,
            fd: 3
        }],
        "only the excluded namespace's connection"
    );
    assert!(spans.is_empty(), "and it makes no spans");
}

#[test]
fn a_late_client_behind_dnat_is_found_through_conntrack_and_cached() {
    // The client connected to a published address; DNAT sent it to the
    // container, whose server sees another local address.
    let client = conn(
        1,
        100,
        Role::Client,
        "172.30.0.1:5000",
        "172.30.0.1:8080",
        "loadgen",
    );
    let server = conn(
        2,
        200,
        Role::Server,
        "172.30.0.5:80",
        "172.30.0.1:5000",
        "login",
    );
    let mut cfg = PipelineConfig::new(Registry::shared(0), Sampler::AlwaysOn);
    let lookups = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let n = lookups.clone();
    cfg.nat_lookup = Box::new(move |local, remote| {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (local == "172.30.0.5:80".parse().unwrap() && remote == "172.30.0.1:5000".parse().unwrap())
            .then(|| {
                (
                    "172.30.0.1:5000".parse().unwrap(),
                    "172.30.0.1:8080".parse().unwrap(),
                )
            })
    });
    let mut l7 = L7 {
        p: Pipeline::new(cfg),
        commands: vec![],
    };
    let spans = feed(
        &mut l7,
        vec![],
        [
            StreamEvent::Open(client.clone()),
            StreamEvent::Open(server.clone()),
            // The first request's client record is late (its thread was preempted).
            data(&server, Direction::Ingress, 1_000, REQ),
            data(&client, Direction::Egress, 900, REQ),
            data(&server, Direction::Egress, 2_000, RESP),
            data(&client, Direction::Ingress, 2_100, RESP),
            // The next one is in order, and resolves from the cache.
            data(&client, Direction::Egress, 3_000, REQ),
            data(&server, Direction::Ingress, 3_100, REQ),
            data(&server, Direction::Egress, 4_000, RESP),
            data(&client, Direction::Ingress, 4_100, RESP),
        ],
    );
    let [srv1, cli1, srv2, cli2] = spans.as_slice() else {
        panic!("{spans:?}")
    };
    assert_eq!(
        (srv1.trace_id, srv1.parent_span_id),
        (cli1.trace_id, Some(cli1.span_id)),
        "the late first request joins"
    );
    assert_eq!(
        (srv2.trace_id, srv2.parent_span_id),
        (cli2.trace_id, Some(cli2.span_id)),
        "the second stitches at once"
    );
    assert_ne!(cli1.trace_id, cli2.trace_id);
    assert_eq!(
        (l7.counts().late_partners_adopted, l7.counts().nat_resolved),
        (1, 1)
    );
    assert_eq!(
        lookups.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "conntrack read once for the connection"
    );
}

#[test]
fn concurrent_clients_each_get_their_own_server_child() {
    // Eight connections of one client process to one server process, their
    // requests interleaved on the wire: each server span is the child of
    // its own client span, by socket pair, whatever the order.
    let mut l7 = l7();
    let mut events = vec![];
    let pairs: Vec<_> = (0..8u16)
        .map(|i| {
            let cport = 5000 + i;
            let c = conn(
                10 + i as u64,
                100,
                Role::Client,
                &format!("127.0.0.1:{cport}"),
                "127.0.0.1:80",
                "caller",
            );
            let s = conn(
                100 + i as u64,
                200,
                Role::Server,
                "127.0.0.1:80",
                &format!("127.0.0.1:{cport}"),
                "callee",
            );
            events.push(StreamEvent::Open(c.clone()));
            events.push(StreamEvent::Open(s.clone()));
            (c, s)
        })
        .collect();
    let req = |i: usize| format!("GET /item/{i} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();
    for (i, (c, _)) in pairs.iter().enumerate() {
        events.push(data(c, Direction::Egress, 1_000 + i as u64, &req(i)));
    }
    for (i, (_, s)) in pairs.iter().enumerate().rev() {
        events.push(data(s, Direction::Ingress, 2_000 + i as u64, &req(i)));
    }
    for (i, (c, s)) in pairs.iter().enumerate() {
        events.push(data(s, Direction::Egress, 3_000 + i as u64, RESP));
        events.push(data(c, Direction::Ingress, 4_000 + i as u64, RESP));
    }
    let spans = feed(&mut l7, vec![], events);
    assert_eq!(spans.len(), 16);
    for i in 0..8 {
        let path = format!("/item/{i}");
        let of = |kind: &str| {
            spans
                .iter()
                .find(|s| {
                    s.kind.as_str() == kind
                        && s.attributes
                            .iter()
                            .any(|(_, v)| v.to_string().contains(&path))
                })
                .unwrap_or_else(|| panic!("{kind} {path}: {spans:?}"))
        };
        let (cli, srv) = (of("CLIENT"), of("SERVER"));
        assert_eq!(
            (srv.trace_id, srv.parent_span_id),
            (cli.trace_id, Some(cli.span_id)),
            "{path}"
        );
    }
}

/// The server's last write may return after its client has read the
/// response, so the client's exchange can enter the ring first. Its
/// service-graph edge waits for the server's half, and is whole.
#[test]
fn a_client_exchange_before_its_servers_makes_one_whole_graph_edge() {
    let registry = Registry::shared(0);
    let mut l7 = L7 {
        p: Pipeline::new(PipelineConfig::new(registry.clone(), Sampler::AlwaysOn)),
        commands: vec![],
    };
    let (client, server) = loopback_pair();
    let spans = feed(
        &mut l7,
        vec![],
        [
            StreamEvent::Open(client.clone()),
            StreamEvent::Open(server.clone()),
            data(&client, Direction::Egress, 900, REQ),
            data(&server, Direction::Ingress, 1_000, REQ),
            data(&client, Direction::Ingress, 2_100, RESP),
            data(&server, Direction::Egress, 2_000, RESP),
        ],
    );
    let [cli, srv] = spans.as_slice() else {
        panic!("{spans:?}")
    };
    assert_eq!(srv.parent_span_id, Some(cli.span_id));
    let text = crate::metrics::prometheus::render(&registry.lock().unwrap(), &[]);
    let edge = r#"{service_name="caller",client="caller",server="callee"}"#;
    for series in [
        "traces_service_graph_request_total",
        "traces_service_graph_request_server_seconds_count",
    ] {
        assert!(
            text.contains(&format!("{series}{edge} 1")),
            "{series}: {text}"
        );
    }
    assert!(
        !text.contains("connection_type=\"virtual_node\""),
        "no half-edge: {text}"
    );
}

/// One event-loop thread serves two requests at once; each callback's
/// downstream call follows its own request's read (same tick), so each
/// call nests under its own request, and so does a second call that
/// follows the first one's reply (on another connection: on the same one,
/// it could be another request's queued call, see `causality`).
#[test]
fn an_event_loops_interleaved_requests_each_get_their_own_calls() {
    let mut l7 = l7();
    let loop_tid = 200;
    let a = conn(
        2,
        200,
        Role::Server,
        "127.0.0.1:80",
        "10.1.1.1:5000",
        "loop",
    );
    let b = conn(
        3,
        200,
        Role::Server,
        "127.0.0.1:80",
        "10.1.1.1:5001",
        "loop",
    );
    let down_a = conn(
        4,
        200,
        Role::Client,
        "127.0.0.1:6000",
        "10.9.9.9:8080",
        "loop",
    );
    let down_b = conn(
        5,
        200,
        Role::Client,
        "127.0.0.1:6001",
        "10.9.9.9:8080",
        "loop",
    );
    let down_b2 = conn(
        6,
        200,
        Role::Client,
        "127.0.0.1:6002",
        "10.9.9.9:8080",
        "loop",
    );
    let req = |id: &str| format!("GET /{id} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();
    let t = |tick| (loop_tid, tick);
    let spans = feed(
        &mut l7,
        vec![],
        [
            StreamEvent::Open(a.clone()),
            StreamEvent::Open(b.clone()),
            StreamEvent::Open(down_a.clone()),
            StreamEvent::Open(down_b.clone()),
            StreamEvent::Open(down_b2.clone()),
            data_on(&a, Direction::Ingress, 1_000, t(1), &req("a")),
            data_on(&down_a, Direction::Egress, 1_100, t(1), &req("a1")),
            data_on(&b, Direction::Ingress, 1_200, t(2), &req("b")),
            data_on(&down_b, Direction::Egress, 1_300, t(2), &req("b1")),
            // b's reply first; b's second call follows it.
            data_on(&down_b, Direction::Ingress, 1_400, t(3), RESP),
            data_on(&down_b2, Direction::Egress, 1_500, t(3), &req("b2")),
            data_on(&down_a, Direction::Ingress, 1_600, t(4), RESP),
            data_on(&a, Direction::Egress, 1_700, t(4), RESP),
            data_on(&down_b2, Direction::Ingress, 1_800, t(5), RESP),
            data_on(&b, Direction::Egress, 1_900, t(5), RESP),
        ],
    );
    let named = |n: &str| {
        spans
            .iter()
            .find(|s| s.name == n)
            .unwrap_or_else(|| panic!("{n}: {spans:?}"))
    };
    let (sa, sb) = (named("GET /a"), named("GET /b"));
    for (call, parent) in [("GET /a1", sa), ("GET /b1", sb), ("GET /b2", sb)] {
        let s = named(call);
        assert_eq!(
            (s.trace_id, s.parent_span_id),
            (parent.trace_id, Some(parent.span_id)),
            "{call}"
        );
        assert!(
            s.attributes
                .iter()
                .any(|(k, v)| *k == "sonde.link.evidence" && format!("{v:?}") == r#"Str("tick")"#),
            "{call}: {:?}",
            s.attributes
        );
    }
    assert_ne!(sa.trace_id, sb.trace_id);
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

/// Where the time goes: a request of 10 ms made two concurrent calls, 2..6
/// and 3..8 ms; its self time is 10 - 6 = 4 ms (the overlap counts once),
/// next to its 10 ms RED duration.
#[test]
fn a_requests_self_time_leaves_out_its_concurrent_calls_once() {
    const MS: u64 = 1_000_000;
    let registry = Registry::shared(0);
    let mut l7 = L7 {
        p: Pipeline::new(PipelineConfig::new(registry.clone(), Sampler::AlwaysOn)),
        commands: vec![],
    };
    let api = conn(1, 200, Role::Server, "127.0.0.1:80", "10.0.0.9:4000", "api");
    let a = conn(2, 200, Role::Client, "127.0.0.1:5001", "10.0.0.7:80", "api");
    let b = conn(3, 200, Role::Client, "127.0.0.1:5002", "10.0.0.8:80", "api");
    let call = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();
    let mut spans = feed(
        &mut l7,
        vec![],
        [
            StreamEvent::Open(api.clone()),
            StreamEvent::Open(a.clone()),
            StreamEvent::Open(b.clone()),
            // Server span: read exit (10 ns after `at`) to write exit.
            data(&api, Direction::Ingress, 1_000 * MS - 10, &call("/work")),
            data(&a, Direction::Egress, 1_002 * MS, &call("/a")),
            data(&b, Direction::Egress, 1_003 * MS, &call("/b")),
            data(&a, Direction::Ingress, 1_006 * MS - 10, RESP),
            data(&b, Direction::Ingress, 1_008 * MS - 10, RESP),
            data(&api, Direction::Egress, 1_010 * MS - 10, RESP),
        ],
    );
    l7.release_held(None, &mut spans);
    let server = spans
        .iter()
        .find(|s| s.name == "GET /work")
        .expect("server span");
    for c in spans
        .iter()
        .filter(|s| s.kind == crate::spans::SpanKind::Client)
    {
        assert_eq!(c.parent_span_id, Some(server.span_id), "{spans:#?}");
    }
    let text = crate::metrics::prometheus::render(&registry.lock().unwrap(), &[]);
    let sum = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains("http_route=\"/work\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name}: {text}"))
    };
    let own = sum("sonde_request_self_duration_seconds_sum");
    let total = sum("http_server_request_duration_seconds_sum");
    assert!((total - 0.010).abs() < 1e-6, "{total}");
    assert!((own - 0.004).abs() < 1e-6, "self {own}: {text}");
}

/// A server whose TLS library uses a memory BIO (Node.js): its first
/// record, the ClientHello, is read before the library's calls name the
/// socket, so it reaches user space as ciphertext; the plaintext follows.
/// The handshake record must not end the connection's parsing.
#[test]
fn a_handshake_read_before_the_library_names_the_socket_leaves_it_parsed() {
    const HELLO: &[u8] = b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x03";
    let mut l7 = l7();
    let (_, server) = loopback_pair();
    let tls = ConnInfo {
        tls: true,
        ..server.clone()
    };
    let mut spans = feed(
        &mut l7,
        vec![],
        [
            StreamEvent::Open(server.clone()),
            data(&server, Direction::Ingress, 500, HELLO),
            data(&tls, Direction::Ingress, 1_000, REQ),
            data(&tls, Direction::Egress, 2_000, RESP),
        ],
    );
    assert!(l7.commands.is_empty(), "not released: {:?}", l7.commands);
    // Held for a client on this node that never comes.
    l7.release_held(Some(NOW + HOLD_NS), &mut spans);
    let [srv] = spans.as_slice() else {
        panic!("{spans:?}")
    };
    assert!(
        srv.attributes
            .iter()
            .any(|(k, v)| *k == "url.scheme" && format!("{v:?}") == r#"Str("https")"#),
        "{srv:?}"
    );
    let d = l7.p.stats.dispatch.clone();
    assert_eq!(
        d.tls_decrypted.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(d.tls_opaque.load(std::sync::atomic::Ordering::Relaxed), 0);

    // Application data with no plaintext before it: opaque, released.
    let (client, _) = loopback_pair();
    feed(
        &mut l7,
        vec![],
        [
            StreamEvent::Open(client.clone()),
            data(&client, Direction::Egress, 3_000, HELLO),
            data(&client, Direction::Ingress, 4_000, HELLO),
            data(
                &client,
                Direction::Egress,
                5_000,
                b"\x17\x03\x03\x00\x02\xaa\xbb",
            ),
        ],
    );
    assert_eq!(d.tls_opaque.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(
        l7.commands
            == [
                Command::FindTls { pid: 100 },
                Command::Release {
                    conn: 1,
                    pid: 100,
                    fd: 3
                }
            ],
        "{:?}",
        l7.commands
    );
}
