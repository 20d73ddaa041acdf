//! End-to-end RabbitMQ suite on the real kernel: rabbitmq-server from
//! Debian, pika clients without tracing code. An HTTP service publishes per
//! request to a fan-out exchange; two consumers (one per queue) query
//! PostgreSQL and call another HTTP service per message. The receiver must
//! show SERVER -> PRODUCER -> CONSUMER (x2) -> DB and HTTP CLIENT, one trace
//! per request; a publisher-set traceparent is joined instead.
//!
//! Needs root; run through `cargo xtask test`.
#[path = "../http/support.rs"]
mod support;

use std::{
    io::{Read, Write},
    process::Command,
};

use libtest_mimic::{Arguments, Trial};
use sonde_otlp_receiver::{proto::trace::v1::span::SpanKind, ReceivedSpan};
use support::*;

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "the AMQP suite needs root to load eBPF programs. Run `sudo -E cargo xtask test`."
        );
        std::process::exit(1);
    }
    libtest_mimic::run(
        &args,
        vec![
            Trial::test("publish_consume_in_one_trace", || {
                publish_consume();
                Ok(())
            }),
            Trial::test("prefetching_consumers_eight_in_flight", || {
                prefetching_consumers();
                Ok(())
            }),
            Trial::test("consumers_starting_on_a_backlog", || {
                consumers_starting_on_a_backlog();
                Ok(())
            }),
            Trial::test("asyncio_consumer_eight_at_once", || {
                asyncio_consumer();
                Ok(())
            }),
        ],
    )
    .exit();
}

/// The system under test: PostgreSQL and RabbitMQ, the agent, a downstream
/// HTTP service, the orders service (publishes per request to the fan-out
/// exchange `events`) and one consumer per queue (`q.status`, service
/// `status`; `q.mail`, service `mail`), each given `extra` arguments
/// (prefetch, ack mode) to `consumer.py`. Dropped, the agent stops first.
struct System {
    agent: Agent,
    orders_port: u16,
    _consumers: Vec<Proc>,
    _orders: Proc,
    _down: Proc,
    _rabbit: Servers,
    _dbs: Servers,
}

fn system(extra: [&[&str]; 2]) -> System {
    system_of([("consumer.py", extra[0]), ("consumer.py", extra[1])])
}

/// `system`, each queue's consumer a fixture script with its arguments.
fn system_of(consumers_of: [(&str, &[&str]); 2]) -> System {
    let (dbs, db_ports) = server_script("db_servers.py");
    let (rabbit, ports) = server_script("rabbitmq_server.py");
    let amqp = ports["amqp"];
    let agent = agent(&[]);
    let downstream = free_port();
    let down = python_server(downstream, "downstream");
    let orders_port = free_port();
    let mut cmd = Command::new("python3");
    cmd.arg(fixture("amqp/orders_service.py"))
        .args([orders_port.to_string(), amqp.to_string()])
        .env("OTEL_SERVICE_NAME", "orders");
    let orders = ready(cmd);
    let mut consumers = vec![];
    for ((queue, service), (script, extra)) in [("q.status", "status"), ("q.mail", "mail")]
        .into_iter()
        .zip(consumers_of)
    {
        let mut cmd = Command::new("python3");
        cmd.arg(fixture(&format!("amqp/{script}")))
            .args([
                amqp.to_string(),
                queue.to_string(),
                db_ports["postgres"].to_string(),
                downstream.to_string(),
            ])
            .args(extra)
            .env("OTEL_SERVICE_NAME", service);
        consumers.push(ready(cmd));
    }
    System {
        agent,
        orders_port,
        _consumers: consumers,
        _orders: orders,
        _down: down,
        _rabbit: rabbit,
        _dbs: dbs,
    }
}

fn is_consumer(s: &ReceivedSpan) -> bool {
    kind_of(s) == SpanKind::Consumer && s.span.name.starts_with("process ")
}

fn get(port: u16, path: &str, extra: &str) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    assert!(
        buf.starts_with("HTTP/1.0 202") || buf.starts_with("HTTP/1.1 202"),
        "{buf}"
    );
}

fn kind_of(s: &ReceivedSpan) -> SpanKind {
    SpanKind::try_from(s.span.kind).unwrap_or(SpanKind::Unspecified)
}

fn publish_consume() {
    const N: usize = 5;
    let sys = system([&[], &[]]);
    let (store, listen, orders_port) = (&sys.agent.store, &sys.agent.metrics, sys.orders_port);

    for i in 0..N {
        get(orders_port, &format!("/order/{i}"), "");
    }
    let tp_trace = "0af7651916cd43dd8448eb211c80319c";
    let tp_parent = "b7ad6b7169203331";
    get(
        orders_port,
        "/traced",
        &format!("x-test-traceparent: 00-{tp_trace}-{tp_parent}-01\r\n"),
    );

    let spans = wait_spans(store, |s| {
        let consumers: Vec<&ReceivedSpan> = s.iter().filter(|x| is_consumer(x)).collect();
        // Every part of the tree: a request's SERVER span may end after its
        // consumers (the handler can be descheduled between publish and reply).
        let servers = s
            .iter()
            .filter(|x| x.service() == "orders" && kind_of(x) == SpanKind::Server)
            .count();
        servers > N
            && consumers.len() >= 2 * (N + 1)
            && consumers.iter().all(|c| {
                s.iter()
                    .filter(|k| k.span.parent_span_id == c.span.span_id)
                    .count()
                    >= 2
            })
    });
    let by_parent = |id: &[u8]| -> Vec<&ReceivedSpan> {
        spans
            .iter()
            .filter(|s| s.span.parent_span_id == id)
            .collect()
    };
    let servers: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| {
            s.service() == "orders"
                && kind_of(s) == SpanKind::Server
                && s.span.name.starts_with("GET /order")
        })
        .collect();
    assert_eq!(servers.len(), N, "one SERVER span per request");
    for srv in &servers {
        let producers: Vec<_> = by_parent(&srv.span.span_id)
            .into_iter()
            .filter(|s| kind_of(s) == SpanKind::Producer)
            .collect();
        assert_eq!(producers.len(), 1, "the publish nests under its request");
        let p = producers[0];
        assert_eq!(p.span.trace_id, srv.span.trace_id);
        assert_eq!(p.span.name, "publish events");
        assert_eq!(p.attr("messaging.system").as_deref(), Some("rabbitmq"));
        assert_eq!(p.attr("messaging.operation.type").as_deref(), Some("send"));
        assert_eq!(
            p.attr("messaging.destination.name").as_deref(),
            Some("events")
        );
        assert_eq!(
            p.attr("messaging.rabbitmq.destination.routing_key")
                .as_deref(),
            Some("order.created")
        );
        assert!(p.attr("messaging.message.id").is_some());
        let cons: Vec<_> = by_parent(&p.span.span_id)
            .into_iter()
            .filter(|s| is_consumer(s))
            .collect();
        let mut names: Vec<&str> = cons.iter().map(|c| c.span.name.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            vec!["process q.mail", "process q.status"],
            "fan-out: one consumer child per queue"
        );
        for c in cons {
            assert_eq!(
                c.span.trace_id, srv.span.trace_id,
                "one trace from request to consumer"
            );
            assert_eq!(
                c.attr("messaging.message.id"),
                p.attr("messaging.message.id")
            );
            assert!(c.attr("messaging.rabbitmq.message.delivery_tag").is_some());
            let kids = by_parent(&c.span.span_id);
            assert!(
                kids.iter()
                    .any(|k| k.attr("db.system.name").as_deref() == Some("postgresql")),
                "DB call under the consumer"
            );
            assert!(
                kids.iter().any(|k| kind_of(k) == SpanKind::Client
                    && k.attr("http.request.method").as_deref() == Some("GET")),
                "HTTP call under the consumer"
            );
            assert!(kids.iter().all(|k| k.span.trace_id == srv.span.trace_id));
        }
    }
    // The publisher set a traceparent: consumers join that trace instead.
    let joined: Vec<_> = spans
        .iter()
        .filter(|s| is_consumer(s) && hex(&s.span.trace_id) == tp_trace)
        .collect();
    assert_eq!(joined.len(), 2, "both consumers of the traced message");
    assert!(joined
        .iter()
        .all(|c| hex(&c.span.parent_span_id) == tp_parent));
    // Metrics: sent per exchange, consumed and processed per queue.
    let text = http_get(listen, "/metrics").unwrap();
    let value = |name: &str, needles: &[&str]| prom_sum(&text, name, needles);
    let total = (N + 1) as f64;
    assert_eq!(
        value(
            "messaging_client_sent_messages_total{",
            &[
                "service_name=\"orders\"",
                "messaging_destination_name=\"events\""
            ]
        ),
        total,
        "{text}"
    );
    for (svc, q) in [("status", "q.status"), ("mail", "q.mail")] {
        let s = format!("service_name=\"{svc}\"");
        let d = format!("messaging_destination_name=\"{q}\"");
        assert_eq!(
            value("messaging_client_consumed_messages_total{", &[&s, &d]),
            total,
            "{text}"
        );
        assert_eq!(
            value("messaging_process_duration_seconds_count{", &[&s, &d]),
            total,
            "{text}"
        );
    }
    assert_eq!(
        value(
            "messaging_client_operation_duration_seconds_count{",
            &[
                "service_name=\"orders\"",
                "messaging_operation_name=\"publish\""
            ]
        ),
        total
    );
}

/// After one message alone, 40 requests, 8 in flight, each publishing one
/// message; both consumers prefetch 8, one acknowledging after its work
/// (`q.status`), one before it (`q.mail`). Every message must be linked to
/// its publish, with its exact tree (`exact_trees`); no call may sit under
/// another message.
fn prefetching_consumers() {
    const N: usize = 40;
    let sys = system([&["8", "late"], &["8", "early"]]);
    let port = sys.orders_port;
    // One message alone first: how a consumer that acks first works shows
    // only on a delivery that arrives with no other in flight
    // (ARCHITECTURE.md, "Causality"); until then its calls stay roots.
    get(port, "/order/first", "");
    wait_spans(&sys.agent.store, |s| {
        s.iter()
            .filter(|x| {
                x.service() == "downstream"
                    && x.attr("url.path").as_deref() == Some("/notify/first")
            })
            .count()
            >= 2
    });
    orders(port, 0..N);
    let spans = wait_consumed(&sys, N);
    let (report, wrong, whole) = exact_trees(&spans, 0..N);
    eprintln!(
        "prefetching consumers, {N} messages, {IN_FLIGHT} in flight: {}; {} wrong parents",
        report.join("; "),
        wrong.len()
    );
    assert!(wrong.is_empty(), "calls under another message: {wrong:?}");
    // Measured 40 of 40 for both.
    assert!(
        whole.iter().all(|&w| w * 100 >= N * 95),
        "{}",
        report.join("; ")
    );
}

/// Consumers that start on a backlog: 16 messages queue up before either
/// consumes, so the first deliveries arrive together (prefetch unlimited
/// for `q.status`, which acks late; 4 for `q.mail`, which acks first); then
/// 16 more arrive live, 8 in flight. No call may sit under another message.
/// The consumer that acks late is whole from its first delivery (its first
/// call follows the read of the batch); the one that acks first shows it
/// only once a delivery arrives alone, at the backlog's end: its calls
/// after each ack wait until then, and both must be whole.
fn consumers_starting_on_a_backlog() {
    const BACKLOG: usize = 16;
    const N: usize = 32;
    let gate = std::env::temp_dir().join(format!("sonde-amqp-gate-{}", std::process::id()));
    let _ = std::fs::remove_file(&gate);
    let g = gate.to_str().unwrap();
    let sys = system([&["0", "late", g], &["4", "early", g]]);
    let port = sys.orders_port;
    orders(port, 0..BACKLOG);
    // The broker has routed them (the publisher's writes are answered by
    // nothing, so give it a moment).
    std::thread::sleep(std::time::Duration::from_millis(500));
    std::fs::write(&gate, b"go").unwrap();
    wait_consumed(&sys, BACKLOG);
    orders(port, BACKLOG..N);
    let spans = wait_consumed(&sys, N);
    let _ = std::fs::remove_file(&gate);
    let (report, wrong, all) = exact_trees(&spans, 0..N);
    let (_, _, live) = exact_trees(&spans, BACKLOG..N);
    eprintln!(
        "consumers on a backlog of {BACKLOG}, then {} live: {}; live whole: {live:?}; {} wrong parents",
        N - BACKLOG,
        report.join("; "),
        wrong.len()
    );
    assert!(wrong.is_empty(), "calls under another message: {wrong:?}");
    assert!(all[0] * 100 >= N * 95, "q.status: {}", report[0]);
    assert!(all[1] * 100 >= N * 95, "q.mail: {}", report[1]);
    assert!(live[1] * 100 >= (N - BACKLOG) * 95, "q.mail live: {live:?}");
}

/// An asyncio consumer (aio-pika, prefetch 8: eight messages worked on at
/// once on one thread, their calls interleaved) on `q.status`, pika acking
/// late on `q.mail`; 40 messages, 8 in flight. No call may sit under
/// another message: the asyncio consumer writes a call while another of its
/// own is unanswered, which marks its thread as multiplexing, and the
/// consumer rules that assume one delivery at a time give up there (its
/// calls stay roots: ARCHITECTURE.md, "Causality"). pika must stay 95% whole.
fn asyncio_consumer() {
    const N: usize = 40;
    let sys = system_of([
        ("async_consumer.py", &["8"]),
        ("consumer.py", &["8", "late"]),
    ]);
    orders(sys.orders_port, 0..N);
    let spans = wait_consumed(&sys, N);
    let (report, wrong, whole) = exact_trees(&spans, 0..N);
    eprintln!(
        "asyncio and pika consumers, {N} messages, {IN_FLIGHT} in flight: {}; {} wrong parents",
        report.join("; "),
        wrong.len()
    );
    assert!(wrong.is_empty(), "calls under another message: {wrong:?}");
    assert!(whole[1] * 100 >= N * 95, "{}", report[1]);
}

const IN_FLIGHT: usize = 8;

/// Requests `/order/<id>` for `ids`, `IN_FLIGHT` at a time.
fn orders(port: u16, ids: std::ops::Range<usize>) {
    std::thread::scope(|scope| {
        for t in 0..IN_FLIGHT {
            let ids = ids.clone();
            scope.spawn(move || {
                for i in ids.skip(t).step_by(IN_FLIGHT) {
                    get(port, &format!("/order/{i}"), "");
                }
            });
        }
    });
}

/// The spans once both consumers have processed `n` messages and made
/// their calls.
fn wait_consumed(sys: &System, n: usize) -> Vec<ReceivedSpan> {
    wait_spans(&sys.agent.store, |s| {
        s.iter().filter(|x| is_consumer(x)).count() >= 2 * n
            && s.iter().filter(|x| x.service() == "downstream").count() >= 2 * n
    })
}

/// Per queue, for messages `/order/<id>` with `ids`: its CONSUMER span
/// under its own publish (asserted), and that consumer's query and call
/// (the message's id in their alias and path) under that consumer. Returns
/// a report per queue, the calls under another message, and per queue how
/// many messages were whole.
fn exact_trees(
    spans: &[ReceivedSpan],
    ids: std::ops::Range<usize>,
) -> (Vec<String>, Vec<String>, Vec<usize>) {
    let (mut report, mut wrong, mut whole_count) = (vec![], vec![], vec![]);
    let n = ids.len();
    for (queue, service) in [("q.status", "status"), ("q.mail", "mail")] {
        let (mut complete, mut roots) = (0, vec![]);
        for id in ids.clone() {
            let path = format!("/order/{id}");
            let srv = spans
                .iter()
                .find(|s| {
                    s.service() == "orders"
                        && kind_of(s) == SpanKind::Server
                        && s.attr("url.path") == Some(path.clone())
                })
                .unwrap_or_else(|| panic!("no server span {path}"));
            let publish = spans
                .iter()
                .find(|s| {
                    kind_of(s) == SpanKind::Producer && s.span.parent_span_id == srv.span.span_id
                })
                .unwrap_or_else(|| panic!("{path}: no publish under its request"));
            let consumer = spans
                .iter()
                .find(|s| {
                    is_consumer(s)
                        && s.span.name == format!("process {queue}")
                        && s.span.parent_span_id == publish.span.span_id
                })
                .unwrap_or_else(|| panic!("{path}: no {queue} consumer under its publish"));
            assert_eq!(consumer.span.trace_id, srv.span.trace_id, "{path}");
            let alias = format!("AS o{id}");
            let notify = format!("/notify/{id}");
            let mine = |s: &&ReceivedSpan| s.service() == service;
            let query = spans
                .iter()
                .filter(mine)
                .find(|s| s.attr("db.query.text").is_some_and(|q| q.ends_with(&alias)))
                .unwrap_or_else(|| panic!("{service}: no query {alias}"));
            let call = spans
                .iter()
                .filter(mine)
                .find(|s| {
                    kind_of(s) == SpanKind::Client
                        && s.attr("url.full").is_some_and(|u| u.ends_with(&notify))
                })
                .unwrap_or_else(|| panic!("{service}: no call {notify}"));
            let mut whole = true;
            for (what, c) in [("query", query), ("call", call)] {
                if c.span.parent_span_id == consumer.span.span_id {
                    assert_eq!(c.span.trace_id, srv.span.trace_id);
                } else if c.span.parent_span_id.is_empty() {
                    roots.push(format!(
                        "{id} {what} ({})",
                        c.attr("sonde.link.evidence").unwrap_or_default()
                    ));
                    whole = false;
                } else {
                    let under = spans
                        .iter()
                        .find(|p| p.span.span_id == c.span.parent_span_id)
                        .map(|p| {
                            format!(
                                "{} {}",
                                p.span.name,
                                p.attr("messaging.rabbitmq.message.delivery_tag")
                                    .unwrap_or_default()
                            )
                        });
                    wrong.push(format!(
                        "{service} {id} {what} ({}) under {under:?}, delivery {}",
                        c.attr("sonde.link.evidence").unwrap_or_default(),
                        consumer
                            .attr("messaging.rabbitmq.message.delivery_tag")
                            .unwrap_or_default()
                    ));
                    whole = false;
                }
            }
            complete += whole as usize;
        }
        report.push(format!(
            "{queue}: {complete} of {n} complete; roots: {roots:?}"
        ));
        whole_count.push(complete);
    }
    (report, wrong, whole_count)
}
