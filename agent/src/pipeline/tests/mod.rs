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
        pipe: None,
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
            py_task: 0,
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

/// The span named `n`; panics, listing them all, if there is none.
fn named<'a>(spans: &'a [Span], n: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.name == n)
        .unwrap_or_else(|| panic!("{n}: {spans:?}"))
}

/// The `Open` events of `conns`.
fn opens(conns: &[&ConnInfo]) -> Vec<StreamEvent> {
    conns
        .iter()
        .map(|c| StreamEvent::Open((*c).clone()))
        .collect()
}

mod go;
mod inject;
mod late_partners;
mod prefork;
mod python;
mod tls;

const REQ: &[u8] = b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n";
const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

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
    let (sa, sb) = (named(&spans, "GET /a"), named(&spans, "GET /b"));
    for (call, parent) in [("GET /a1", sa), ("GET /b1", sb), ("GET /b2", sb)] {
        let s = named(&spans, call);
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
