//! The ambiguous cases of linking spans, on the real kernel:
//! - two requests in flight at once on an event loop's one thread: the call
//!   made while both were in flight stays a root (counted), never the
//!   wrong request's child; calls made with one request in flight nest;
//! - a keep-alive pool whose connections pass between threads: each server
//!   span is the child of the client span of the same request;
//! - a peer off this node (another network namespace, invisible to the
//!   agent): the call stays a CLIENT span with the peer's address, and the
//!   service-graph edge is labelled by that address.
//!
//! (A late partner, an event order no live test can force, is covered by
//! the protocol stage's unit tests.) Needs root; run through `cargo xtask test`.
#[path = "../http/support.rs"]
mod support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
};

use libtest_mimic::{Arguments, Trial};
use sonde_otlp_receiver::{proto::trace::v1::span::SpanKind, ReceivedSpan};
use support::*;

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "the linking suite needs root to load eBPF programs. Run `sudo -E cargo xtask test`."
        );
        std::process::exit(1);
    }
    let trials = vec![
        Trial::test("event_loop_with_two_requests_in_flight", || {
            event_loop();
            Ok(())
        }),
        Trial::test("asyncio_work_after_the_response", || {
            work_after_the_response();
            Ok(())
        }),
        Trial::test("asyncio_gather_eight_in_flight", || {
            asyncio_eight_in_flight(Loop::Gather);
            Ok(())
        }),
        Trial::test("asyncio_eight_in_flight", || {
            asyncio_eight_in_flight(Loop::Asyncio);
            Ok(())
        }),
        Trial::test("uvloop_eight_in_flight", || {
            asyncio_eight_in_flight(Loop::Uvloop);
            Ok(())
        }),
        Trial::test("node_event_loop_eight_in_flight", || {
            node_event_loop(None, None);
            Ok(())
        }),
        Trial::test("node_event_loop_with_a_capped_pool", || {
            node_event_loop(Some(2), None);
            Ok(())
        }),
        Trial::test("node_event_loop_yielding_with_set_immediate", || {
            node_event_loop(None, Some("immediate"));
            Ok(())
        }),
        Trial::test("node_event_loop_yielding_with_a_timer", || {
            node_event_loop(None, Some("timeout"));
            Ok(())
        }),
        // A second call whose tick had no input took the loop's one other
        // request in flight (1 of 40 in a fresh-clone CI run) until an event
        // loop's one request stopped counting (`event_loop`).
        Trial::test("node_event_loop_calling_after_the_response", || {
            node_event_loop(None, Some("after"));
            Ok(())
        }),
        Trial::test("go_goroutines_eight_in_flight", || {
            go_goroutines();
            Ok(())
        }),
        Trial::test("go_two_replicas_eight_in_flight_each", || {
            go_two_replicas();
            Ok(())
        }),
        Trial::test("go_audit_worker_paused_and_answered_late", || {
            go_late_and_paused();
            Ok(())
        }),
        Trial::test("go_query_worker_pool_eight_in_flight", || {
            go_query_pool();
            Ok(())
        }),
        Trial::test("go_probes_at_entries_eight_in_flight", || {
            go_probes_at_entries();
            Ok(())
        }),
        Trial::test("java_thread_pool_eight_in_flight", || {
            java_pool(None);
            Ok(())
        }),
        Trial::test("java_thread_pool_fixed_client_executor", || {
            java_pool(Some("fixed"));
            Ok(())
        }),
        Trial::test("prefork_pool_eight_in_flight", || {
            prefork_pool();
            Ok(())
        }),
        Trial::test("keep_alive_pool_shared_by_threads", || {
            keep_alive_pool();
            Ok(())
        }),
        Trial::test("off_node_peer_stays_a_client_span", || {
            off_node_peer();
            Ok(())
        }),
    ];
    libtest_mimic::run(&args, trials).exit();
}

/// GET /r/<id> for each id of `ids` from `in_flight` clients at once (one
/// connection per request); each answer must be 200 with the id as body.
fn load(port: u16, ids: std::ops::Range<usize>, in_flight: usize) {
    std::thread::scope(|scope| {
        for t in 0..in_flight {
            let ids = ids.clone();
            scope.spawn(move || {
                for i in ids.skip(t).step_by(in_flight) {
                    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    write!(
                        s,
                        "GET /r/{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                    )
                    .unwrap();
                    let mut body = String::new();
                    s.read_to_string(&mut body).unwrap();
                    assert!(
                        body.starts_with("HTTP/1.1 200") && body.ends_with(&format!("\r\n{i}")),
                        "{body}"
                    );
                }
            });
        }
    });
}

/// One service's spans of a run, found by what the test systems put in
/// them (the request's id in paths and query aliases).
struct Found<'a> {
    spans: &'a [ReceivedSpan],
    service: &'a str,
}

impl<'a> Found<'a> {
    fn mine(&self) -> impl Iterator<Item = &'a ReceivedSpan> + '_ {
        self.spans.iter().filter(|s| s.service() == self.service)
    }

    /// The SERVER span of the request for `path`.
    fn server(&self, path: &str) -> &'a ReceivedSpan {
        self.mine()
            .find(|s| kind_of(s) == SpanKind::Server && s.attr("url.path").as_deref() == Some(path))
            .unwrap_or_else(|| panic!("{}: no server span {path}", self.service))
    }

    /// The query whose text ends with `tail` (the id rides in an alias).
    fn query(&self, tail: &str) -> &'a ReceivedSpan {
        self.mine()
            .find(|s| s.attr("db.query.text").is_some_and(|q| q.ends_with(tail)))
            .unwrap_or_else(|| panic!("{}: no query {tail}", self.service))
    }

    /// The CLIENT call to downstream `path`; the downstream's SERVER span
    /// must join it, whatever the call's own parent.
    fn call(&self, path: &str) -> &'a ReceivedSpan {
        let c = self
            .mine()
            .find(|s| {
                kind_of(s) == SpanKind::Client
                    && s.attr("url.full").is_some_and(|u| u.ends_with(path))
            })
            .unwrap_or_else(|| panic!("{}: no call {path}", self.service));
        let d = self
            .spans
            .iter()
            .find(|s| s.service() == "downstream" && s.attr("url.path").as_deref() == Some(path))
            .unwrap_or_else(|| panic!("no downstream span {path}"));
        assert_eq!(
            (&d.span.trace_id, &d.span.parent_span_id),
            (&c.span.trace_id, &c.span.span_id),
            "{path}"
        );
        c
    }
}

/// The agent's ambiguous calls by reason (`sonde_calls_ambiguous_total`),
/// those that happened.
fn ambiguity(a: &Agent) -> String {
    let m = http_get(&a.metrics, "/metrics").unwrap_or_default();
    m.lines()
        .filter(|l| l.starts_with("sonde_calls_ambiguous_total{") && !l.ends_with(" 0"))
        .map(|l| l.trim_start_matches("sonde_calls_ambiguous_total"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn kind_of(s: &ReceivedSpan) -> SpanKind {
    SpanKind::try_from(s.span.kind).unwrap_or(SpanKind::Unspecified)
}

fn send(port: u16, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s
}

fn answer(mut s: TcpStream) {
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}

/// The agent, a downstream service, and `async_server.py` (named
/// `service`) calling it; the guards, then the server's port.
fn async_server(service: &str, fanout: &str, event_loop: &str) -> ((Agent, Proc, Proc), u16) {
    let a = agent(&[]);
    let down = free_port();
    let down_proc = python_server(down, "downstream");
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.arg(fixture("linking/async_server.py"))
        .args([port.to_string(), down.to_string()])
        .env("OTEL_SERVICE_NAME", service)
        .env("FANOUT", fanout)
        .env("LOOP", event_loop);
    let srv = ready(cmd);
    python_followed(&a, 2);
    ((a, srv, down_proc), port)
}

/// Waits until the agent follows the tasks of `n` Python processes (it
/// does so within moments of a process's first network work; calls made
/// before stay to the thread rules).
fn python_followed(a: &Agent, n: usize) {
    wait_metric(
        &a.metrics,
        "sonde_python_processes_total",
        &["followed"],
        n as f64,
        10,
    );
}

fn event_loop() {
    let ((a, _srv, _down), port) = async_server("loop", "", "asyncio");

    let before = http_get(&a.metrics, "/metrics").unwrap();
    answer(send(port, "/solo"));
    // /a and /b on two connections: the server holds /a until /b is read.
    let sa = send(port, "/a");
    let sb = send(port, "/b");
    answer(sa);
    answer(sb);

    let is_down_client = |s: &ReceivedSpan| s.service() == "loop" && kind_of(s) == SpanKind::Client;
    let spans = wait_spans(&a.store, |s| {
        s.iter().filter(|x| is_down_client(x)).count() >= 3
            && s.iter()
                .filter(|x| x.service() == "loop" && kind_of(x) == SpanKind::Server)
                .count()
                >= 3
            && s.iter().filter(|x| x.service() == "downstream").count() >= 3
    });
    let server = |path: &str| {
        spans
            .iter()
            .find(|s| {
                s.service() == "loop"
                    && kind_of(s) == SpanKind::Server
                    && s.attr("url.path").as_deref() == Some(path)
            })
            .unwrap()
    };
    let call = |path: &str| {
        spans
            .iter()
            .find(|s| is_down_client(s) && s.attr("url.full").is_some_and(|u| u.ends_with(path)))
            .unwrap_or_else(|| panic!("no call {path}"))
    };
    assert_eq!(
        call("/from-solo").span.parent_span_id,
        server("/solo").span.span_id,
        "one request in flight: its call nests"
    );
    assert_eq!(
        call("/from-b").span.parent_span_id,
        server("/b").span.span_id,
        "/a answered: /b alone in flight"
    );
    // Made while /a and /b were in flight on one thread: no tick or thread
    // names /a, but the task that made it wrote /a's response.
    assert_eq!(
        call("/from-a").span.parent_span_id,
        server("/a").span.span_id,
        "under the request its task answered (evidence {:?}; calls left roots, by why: {})",
        call("/from-a").attr("sonde.link.evidence"),
        http_get(&a.metrics, "/metrics")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("sonde_calls_ambiguous_total"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_eq!(
        call("/from-a").attr("sonde.link.evidence").as_deref(),
        Some("task")
    );
    // The downstream server joins each call's trace all the same.
    for path in ["/from-solo", "/from-a", "/from-b"] {
        let c = call(path);
        let d = spans
            .iter()
            .find(|s| s.service() == "downstream" && s.attr("url.path").as_deref() == Some(path))
            .unwrap();
        assert_eq!(
            (d.span.trace_id.as_slice(), d.span.parent_span_id.as_slice()),
            (c.span.trace_id.as_slice(), c.span.span_id.as_slice())
        );
    }
    let after = http_get(&a.metrics, "/metrics").unwrap();
    let ambiguous = prom_sum(&after, "sonde_calls_ambiguous_total", &[])
        - prom_sum(&before, "sonde_calls_ambiguous_total", &[]);
    assert_eq!(ambiguous, 0.0, "no call is left ambiguous");
}

/// The Python event loops of `asyncio_eight_in_flight`.
#[derive(Clone, Copy)]
enum Loop {
    Asyncio,
    /// Both calls at once, in tasks `asyncio.gather` creates.
    Gather,
    Uvloop,
}

/// asyncio: a handler's task answers /bg, then goes on working (as a
/// response's background task does) and calls downstream while /c, read
/// by another context, is the only request in flight. /c is not that
/// call's parent: it stays a root, counted as `after_answer`.
fn work_after_the_response() {
    let ((a, _srv, _down), port) = async_server("after", "", "asyncio");
    answer(send(port, "/bg"));
    answer(send(port, "/c"));
    let spans = wait_spans(&a.store, |s| {
        s.iter().any(|x| {
            x.service() == "after"
                && kind_of(x) == SpanKind::Client
                && x.attr("url.full").is_some_and(|u| u.ends_with("/from-bg"))
        }) && s
            .iter()
            .any(|x| x.service() == "after" && x.attr("url.path").as_deref() == Some("/c"))
    });
    let call = spans
        .iter()
        .find(|s| {
            s.service() == "after" && s.attr("url.full").is_some_and(|u| u.ends_with("/from-bg"))
        })
        .unwrap();
    let c = spans
        .iter()
        .find(|s| s.service() == "after" && s.attr("url.path").as_deref() == Some("/c"))
        .unwrap();
    assert_ne!(call.span.parent_span_id, c.span.span_id, "under /c");
    assert!(
        call.span.parent_span_id.is_empty(),
        "a root, not under {:?}",
        spans
            .iter()
            .find(|s| s.span.span_id == call.span.parent_span_id)
            .map(|s| s.span.name.clone())
    );
    assert_eq!(
        call.attr("sonde.link.evidence").as_deref(),
        Some("ambiguous")
    );
    let text = http_get(&a.metrics, "/metrics").unwrap();
    assert_eq!(
        prom_sum(&text, "sonde_calls_ambiguous_total", &["after_answer"]),
        1.0,
        "{}",
        ambiguity(&a)
    );
}

/// Every span of `n` requests to `service` that each make two downstream
/// calls has arrived: the service's SERVER spans, its CLIENT spans and the
/// downstream's. The downstream's come first (a call's server ends before
/// its client, a request's calls before the request), so counting them
/// alone let the check start while the service's last spans were still
/// held for their partners or queued for export.
fn two_calls_each_exported(s: &[ReceivedSpan], service: &str, n: usize) -> bool {
    let of = |kind: SpanKind| {
        s.iter()
            .filter(|x| x.service() == service && kind_of(x) == kind)
            .count()
    };
    s.iter().filter(|x| x.service() == "downstream").count() >= 2 * n
        && of(SpanKind::Server) >= n
        && of(SpanKind::Client) >= 2 * n
}

/// Python asyncio, under the load of the Node.js test below
/// (`async_server.py` /r/<id>: two sequential calls, each on a new
/// connection): a task's continuation runs in the loop's next iteration,
/// after a poll, so no tick links a call to its request. Whatever is linked must be under the right request; the rest
/// stays roots (ARCHITECTURE.md, "Per runtime class"). `gather`: the two
/// calls are made at once, each in a task `asyncio.gather` creates, which
/// never answers a request: they wait for their creator's answer.
/// `Uvloop`: the sequential calls on uvloop, which runs the task steps
/// woken by a loop iteration's reads right after them, in their tick: a
/// task's write there follows reads made for other requests, and only a
/// read in the task's own context is evidence.
fn asyncio_eight_in_flight(variant: Loop) {
    const N: usize = 40;
    const IN_FLIGHT: usize = 8;
    let (service, fanout, event_loop) = match variant {
        Loop::Asyncio => ("asyncio-loop", "", "asyncio"),
        Loop::Gather => ("asyncio-gather", "gather", "asyncio"),
        Loop::Uvloop => ("uvloop", "", "uvloop"),
    };
    let ((a, _srv, _down), port) = async_server(service, fanout, event_loop);
    load(port, 0..N, IN_FLIGHT);
    let spans = wait_spans(&a.store, |s| two_calls_each_exported(s, service, N));
    let found = Found {
        spans: &spans,
        service,
    };
    let (mut linked, mut wrong, mut roots) = (0, vec![], vec![]);
    let mut by_evidence = std::collections::BTreeMap::<String, usize>::new();
    for id in 0..N {
        let srv = found.server(&format!("/r/{id}"));
        for k in [1, 2] {
            let c = found.call(&format!("/down/{id}/{k}"));
            *by_evidence
                .entry(c.attr("sonde.link.evidence").unwrap_or_default())
                .or_default() += 1;
            if c.span.parent_span_id == srv.span.span_id {
                assert_eq!(c.span.trace_id, srv.span.trace_id);
                linked += 1;
            } else if !c.span.parent_span_id.is_empty() {
                wrong.push(format!("/down/{id}/{k}"));
            } else {
                // When the call began, in µs after its request did.
                let after =
                    c.span.start_time_unix_nano as i64 - srv.span.start_time_unix_nano as i64;
                roots.push(format!("/down/{id}/{k} (+{} µs)", after / 1000));
            }
        }
    }
    eprintln!(
        "{service}, {N} requests, {IN_FLIGHT} in flight: {linked} of {} calls under their request, {} wrong parents; by evidence {by_evidence:?}; roots {roots:?} ({})",
        2 * N,
        wrong.len(),
        ambiguity(&a)
    );
    assert!(wrong.is_empty(), "calls under another request: {wrong:?}");
    // 80 of 80 in 11 of 14 runs on the development machine, 79 in three
    // (ARCHITECTURE.md, "Per runtime class"): one call short is tolerated,
    // not two.
    assert!(
        linked + 1 >= 2 * N,
        "every call but at most one under its request: {linked} of {}",
        2 * N
    );
}

/// Node.js serves 40 requests, 8 in flight, on its one event-loop thread;
/// each makes two sequential downstream calls. Every request's tree is
/// checked exactly: its server span, its two calls under it (by the id in
/// their paths), the downstream's spans under those. No call may sit under
/// another request; calls without evidence stay roots and are counted.
///
/// `max_sockets`: cap the client pool, so that calls wait for connections
/// other requests free (the hand-off no tick can tell from the request's
/// own next call): those must stay roots, never under the wrong request.
///
/// `yielding` (`immediate`, `timeout`): the handler yields to the loop
/// between its calls, and libuv runs the rest in its check or timer phase,
/// after the poll phase read other sockets with no syscall between. The
/// second call has no evidence of its own there (the phase probes give it
/// a tick with no read): a root, or under its request as the only one in
/// flight; never under the request read last (before those probes: 59 to
/// 68 of 120 calls of such a service measured outside the repository).
/// `after`: the handler answers after its first call and makes the second
/// after its response, in the tick of the first's reply: no request in
/// flight is its parent (before `after_answer`, such calls of an Express
/// service took the only other request in flight, 21 and 24 of 40).
fn node_event_loop(max_sockets: Option<usize>, yielding: Option<&str>) {
    const N: usize = 40;
    const IN_FLIGHT: usize = 8;
    let a = agent(&[]);
    let down = free_port();
    let _down = python_server(down, "downstream");
    let port = free_port();
    let mut cmd = Command::new("node");
    cmd.arg(fixture("linking/node_server.js"))
        .args([
            port.to_string(),
            down.to_string(),
            max_sockets.unwrap_or(0).to_string(),
        ])
        .env("OTEL_SERVICE_NAME", "node-loop")
        .env("YIELD", yielding.unwrap_or_default());
    let _srv = ready(cmd);
    if yielding.is_some_and(|y| y != "after") {
        // Node.js keeps libuv's symbols: the phase probes must be on it.
        wait_metric(
            &a.metrics,
            "sonde_libuv_binaries_total",
            &["attached"],
            1.0,
            10,
        );
    }
    load(port, 0..N, IN_FLIGHT);
    let spans = wait_spans(&a.store, |s| two_calls_each_exported(s, "node-loop", N));
    let found = Found {
        spans: &spans,
        service: "node-loop",
    };
    let (mut complete, mut orphans, mut wrong) = (0, 0, vec![]);
    let mut alone = vec![];
    for id in 0..N {
        let srv = found.server(&format!("/r/{id}"));
        let mut whole = true;
        for k in [1, 2] {
            let c = found.call(&format!("/down/{id}/{k}"));
            if c.span.parent_span_id == srv.span.span_id {
                assert_eq!(c.span.trace_id, srv.span.trace_id);
                let evidence = c.attr("sonde.link.evidence");
                match evidence.as_deref() {
                    Some("tick" | "connect") => {}
                    // Exact too: the loop's thread (or the process) had
                    // this one request in flight, as the last of the load's
                    // requests has once the others are answered.
                    Some("same_thread" | "only_in_flight") => alone.push(format!("/down/{id}/{k}")),
                    other => panic!("/down/{id}/{k}: {other:?}"),
                }
            } else if c.span.parent_span_id.is_empty() {
                eprintln!(
                    "/down/{id}/{k}: a root ({:?})",
                    c.attr("sonde.link.evidence")
                );
                orphans += 1;
                whole = false;
            } else {
                wrong.push(format!("/down/{id}/{k}"));
                whole = false;
            }
        }
        complete += whole as usize;
    }
    eprintln!(
        "node event loop, {N} requests, {IN_FLIGHT} in flight, pool cap {max_sockets:?}, yielding {yielding:?}: {complete} complete, {orphans} calls left roots ({}), {} wrong parents, {alone:?} linked as the one request in flight",
        ambiguity(&a),
        wrong.len()
    );
    assert!(wrong.is_empty(), "calls under another request: {wrong:?}");
    if yielding.is_some() {
        // The first calls follow their request's read, as without yielding.
        let first = (0..N)
            .filter(|id| {
                found.call(&format!("/down/{id}/1")).span.parent_span_id
                    == found.server(&format!("/r/{id}")).span.span_id
            })
            .count();
        assert!(first * 20 >= N * 17, "{first} of {N} first calls linked");
        return;
    }
    // With 8 in flight, one request alone happens only as the load drains
    // (its last requests); more means the tick rule stopped deciding.
    assert!(alone.len() <= IN_FLIGHT, "{alone:?}");
    if max_sockets.is_none() {
        // Measured 39 to 40 of 40 on a warm machine, 35 in one cold
        // fresh-clone run, 38 to 40 with a CPU hog beside it. A root is a
        // second call written on the connection its first reply freed
        // while another request waited (`pool_hand_off`), or a call Node
        // wrote after reading other sockets in the same loop iteration
        // (`several_in_flight`): ambiguous by design (ARCHITECTURE.md,
        // "Causality"), and more frequent the more the machine is loaded.
        // Wrong parents stay 0.
        assert!(
            complete * 20 >= N * 17,
            "{complete} of {N} complete ({orphans} roots)"
        );
    }
}

/// A Go net/http service (`fixtures/linking/go_server.go`), GOMAXPROCS=2:
/// 40 requests, 8 in flight. Each hands a Redis write to a worker goroutine
/// that takes queued records without parking, makes a PostgreSQL query on
/// its own goroutine, an HTTP call that net/http's transport writes from
/// another goroutine (handed over on a channel), and a second call from a
/// goroutine the handler starts. Every call must nest under its own request
/// through the goroutine probes (evidence `goroutine`); none under another
/// request.
fn go_goroutines() {
    go_services(&["go-svc"], Sites::Calls);
}

/// The same, each handler sleeping 3 to 24 ms between handing its audit
/// record over and waiting for it to be written (`AUDIT_LATE`), and the
/// worker yielding between each write and its answer (`AUDIT_YIELD`):
/// - the worker, done first, blocks sending on the unbuffered `written`;
///   the handler's receive readies it, and only `runtime.recv` (probe
///   `go_recv`, after `go_send_park` kept the worker's write) tells which
///   request the write was for. Without that pair, 7 and 11 of 40 audit
///   records were roots in two runs here;
/// - the yield ends the worker's run between its write and its answer, as
///   a preemption, or a write syscall that outlasted its P, does; only
///   `go_paused` keeps the write for the next run (without it, 1 of 40
///   complete in two runs).
///
/// Under load, both left 1 to 3 of 40 audit records roots in the trials
/// above (ci71: 37 of 40).
fn go_late_and_paused() {
    go_services(&["go-late"], Sites::LateAndPaused);
}

/// The same, each request's query made by a pool of 2 worker goroutines
/// fed by a buffered channel (`QUERY_POOL`), its answer taken by the
/// handler after its first call. A worker writes the query, parks until
/// the reply comes, reads it, and answers in a run without a write; with 8
/// requests in flight most jobs come from the buffer, so nothing hands the
/// worker its job. Only the reply (`goroutine::replied`: the worker's read
/// of the socket its kept write was on) carries the write into the run
/// that answers; without it, 29 of 40 such queries were roots outside this
/// repository.
fn go_query_pool() {
    go_services(&["go-pool"], Sites::QueryPool);
}

/// The same, with the probes at the runtime functions' entries: what a Go
/// binary whose code lacks the calls they go on gets (`goruntime.rs`).
fn go_probes_at_entries() {
    go_services(&["go-entries"], Sites::Entries);
}

/// Where the goroutine probes go.
#[derive(Clone, Copy, PartialEq)]
enum Sites {
    /// At the calls found in the runtime's code (the default).
    Calls,
    /// At the functions' entries (`--go-probes-at-entries`).
    Entries,
    /// At the calls, the worker yielding and the handlers receiving late
    /// (`go_late_and_paused`).
    LateAndPaused,
    /// At the calls, the queries made by a worker pool (`go_query_pool`).
    QueryPool,
}

/// Two processes of the same Go binary (replicas of one service, as on a
/// Kubernetes node), each under 8 requests in flight at the same time. Their
/// goroutines live at the same addresses, so the kernel must keep each
/// process's hand-offs and goroutine origins apart: a hand-off one replica
/// records must never be taken by the other's goroutine at that address.
fn go_two_replicas() {
    go_services(&["go-replica-a", "go-replica-b"], Sites::Calls);
}

/// Requests per Go service, and in flight at once.
const GO_N: usize = 40;
const GO_IN_FLIGHT: usize = 8;

/// Runs one process of `go_server.go` per name in `services` (one binary),
/// loads them all at once, service `k` with request ids from `k * 1000`,
/// and checks every request's tree.
fn go_services(services: &[&str], sites: Sites) {
    let (n, in_flight) = (GO_N, GO_IN_FLIGHT);
    let dir = std::env::temp_dir().join(format!("sonde-go-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = go_build("linking/go_server.go", &dir);
    let (_dbs, db_ports) = server_script("db_servers.py");
    let a = agent(match sites {
        Sites::Calls | Sites::LateAndPaused | Sites::QueryPool => &[],
        Sites::Entries => &["--go-probes-at-entries"],
    });
    let down = free_port();
    let _down = python_server(down, "downstream");
    let servers: Vec<(Proc, u16)> = services
        .iter()
        .map(|service| {
            let port = free_port();
            let mut cmd = Command::new(&bin);
            cmd.args([
                port.to_string(),
                down.to_string(),
                db_ports["postgres"].to_string(),
                db_ports["redis"].to_string(),
                // The cold requests meet before their first call (see below).
                in_flight.to_string(),
            ])
            .env("OTEL_SERVICE_NAME", service)
            .env("GOMAXPROCS", "2");
            match sites {
                Sites::LateAndPaused => {
                    cmd.env("AUDIT_LATE", "3ms").env("AUDIT_YIELD", "1");
                }
                Sites::QueryPool => {
                    cmd.env("QUERY_POOL", "2");
                }
                _ => {}
            }
            (ready(cmd), port)
        })
        .collect();
    // The agent inspects the new process and attaches the probes (once per
    // file: every replica is covered by one attachment).
    let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = http_get(&a.metrics, "/metrics").unwrap_or_default();
        if prom_sum(&text, "sonde_go_binaries_total", &["outcome=\"attached\""]) >= 1.0 {
            break;
        }
        // Its first connection (this request) makes the agent see it.
        for (_, port) in &servers {
            let _ = TcpStream::connect(("127.0.0.1", *port));
        }
        assert!(
            std::time::Instant::now() < end,
            "goroutine probes never attached:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Ids N.. first: one request per client, all at once, which makes the
    // transport dial its connections (their first requests are placed by
    // the hand-off that follows the write: ARCHITECTURE.md, "Per runtime
    // class"); then ids 0..N on a warm pool.
    // The server holds these IN_FLIGHT requests until all have arrived: on
    // a loaded machine one could otherwise finish before the last came, the
    // pool would hold fewer connections than requests in flight, and the
    // warm run would dial (CI once: 37 of 40, the 3 roots such dials).
    std::thread::scope(|scope| {
        for (k, (_, port)) in servers.iter().enumerate() {
            let (port, base) = (*port, k * 1000);
            scope.spawn(move || {
                load(port, base + n..base + n + in_flight, in_flight);
                load(port, base..base + n, in_flight);
            });
        }
    });
    let spans = wait_spans(&a.store, |s| {
        s.iter().filter(|x| x.service() == "downstream").count()
            >= 2 * (n + in_flight) * services.len()
            && services.iter().all(|service| {
                let mine = || s.iter().filter(|x| x.service() == *service);
                mine().filter(|x| kind_of(x) == SpanKind::Server).count() >= n + in_flight
                    // An audit record's call, or a pool's query, waits for
                    // its writer's hand-off (`HeldFor::Handed`) and may come
                    // last.
                    && ["RPUSH audit:r", " AS r"].iter().all(|call| {
                        mine()
                            .filter(|x| {
                                x.attr("db.query.text")
                                    .is_some_and(|q| q.contains(call))
                            })
                            .count()
                            >= n + in_flight
                    })
            })
    });
    for (k, service) in services.iter().enumerate() {
        go_trees(&spans, service, k * 1000, sites);
    }
    // The kernel's goroutine table (65,536 ways in sets of 4) holds the few
    // hundred goroutines of these processes without giving any one's way to
    // another: an eviction here means the sets are not spread.
    let metrics = http_get(&a.metrics, "/metrics").expect("metrics");
    assert_eq!(
        prom_sum(&metrics, "sonde_kernel_goroutines_evicted_total", &[]),
        0.0,
        "goroutine origins evicted"
    );
    // Nor do a few hundred goroutines lose a hand-off in the hand-off
    // table (sets of 2 ways).
    assert_eq!(
        prom_sum(&metrics, "sonde_kernel_goroutine_handoffs_lost_total", &[]),
        0.0,
        "goroutine hand-offs lost"
    );
    // `sonde probe-cost` under more of this load (ids past the checked
    // ones): the goroutine probes, and the empty uprobe timed beside them.
    let mut next = 50_000;
    let table = probe_cost_under(2, || {
        load(servers[0].1, next..next + in_flight, in_flight);
        next += in_flight;
    });
    // New goroutines and hand-offs were learnt at the calls found in the
    // binary's code (newproc's of runqput, send's of goready), not by the
    // entry probes that stand in where they are not found; or, asked, by
    // those.
    let (ran, not) = match sites {
        Sites::Calls | Sites::QueryPool => (
            ["go_spawned ", "go_send_ready "].as_slice(),
            ["go_newproc1 ", "go_runqput ", "go_send "].as_slice(),
        ),
        Sites::LateAndPaused => (
            [
                "go_spawned ",
                "go_send_ready ",
                "go_send_park ",
                "go_recv ",
                "go_paused ",
            ]
            .as_slice(),
            ["go_newproc1 ", "go_runqput ", "go_send "].as_slice(),
        ),
        Sites::Entries => (
            ["go_newproc1 ", "go_runqput ", "go_send "].as_slice(),
            ["go_spawned ", "go_send_ready "].as_slice(),
        ),
    };
    for name in ["go_execute ", "(go probes)", "(uprobe floor) "]
        .iter()
        .chain(ran)
    {
        let (runs, ns) = cost_row(&table, name);
        assert!(runs > 0.0 && ns > 0.0, "{name}: {table}");
    }
    for name in not {
        assert!(
            !table.lines().any(|l| l.starts_with(name)),
            "{name}: {table}"
        );
    }
    assert!(
        table.contains("(uprobe floor): an empty uprobe on runtime.execute of"),
        "{table}"
    );
    eprintln!("{table}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Checks the tree of each request of Go service `service` (ids from
/// `base`): its query and both calls under its own server span, linked by
/// the goroutine probes.
fn go_trees(spans: &[ReceivedSpan], service: &str, base: usize, sites: Sites) {
    let (n, in_flight) = (GO_N, GO_IN_FLIGHT);
    let found = Found { spans, service };
    let (mut complete, mut roots, mut wrong) = (0, vec![], vec![]);
    let mut cold = 0;
    let (mut by_goroutine, mut fallback) = (0, vec![]);
    let mut audit_roots = 0;
    for id in base..base + n + in_flight {
        let srv = found.server(&format!("/r/{id}"));
        let mut whole = true;
        for (what, c) in [
            ("audit", found.query(&format!(" audit:r{id}"))),
            ("query", found.query(&format!("AS r{id}"))),
            ("call 1", found.call(&format!("/down/{id}/1"))),
            ("call 2", found.call(&format!("/down/{id}/2"))),
        ] {
            if c.span.parent_span_id == srv.span.span_id {
                assert_eq!(c.span.trace_id, srv.span.trace_id);
                // The goroutine probes must be what links them. When they
                // have nothing (a `writeLoop` that took the request from the
                // channel's buffer, without a wakeup: ARCHITECTURE.md, "Per
                // runtime class"), the call waits for its writer's hand-off;
                // the only request in flight is never taken for a Go call
                // (a worker's next job may be another request's).
                match c.attr("sonde.link.evidence").as_deref() {
                    Some("goroutine") => by_goroutine += 1,
                    Some("only_in_flight") => fallback.push(format!("/r/{id} {what}")),
                    other => panic!("{service} /r/{id} {what}: evidence {other:?}"),
                }
            } else if c.span.parent_span_id.is_empty() {
                roots.push(format!(
                    "/r/{id} {what} ({})",
                    c.attr("sonde.link.evidence").unwrap_or_default()
                ));
                // At the entries, some audit records the worker took from
                // the buffer miss their hand-off (checked below).
                if what == "audit" && sites == Sites::Entries {
                    audit_roots += 1;
                } else {
                    whole = false;
                }
            } else {
                let under = spans
                    .iter()
                    .find(|p| p.span.span_id == c.span.parent_span_id)
                    .and_then(|p| p.attr("url.path"))
                    .unwrap_or_default();
                wrong.push(format!("/r/{id} {what} under {under:?}"));
                whole = false;
            }
        }
        if id < base + n {
            complete += whole as usize;
        } else {
            cold += whole as usize;
        }
    }
    eprintln!(
        "{service}, {n} requests, {in_flight} in flight: {complete} complete (cold pool: {cold} of {in_flight}), {} calls left roots, {} wrong parents, {by_goroutine} linked by goroutine, {fallback:?} by the only request in flight; roots: {roots:?}",
        roots.len(),
        wrong.len()
    );
    assert!(
        fallback.is_empty(),
        "{service}: {by_goroutine} calls linked by goroutine, {} by the only request in flight: {fallback:?}",
        fallback.len()
    );
    assert!(
        wrong.is_empty(),
        "{service}: calls under another request: {wrong:?}"
    );
    // Measured 39 to 40 of 40; 38 to 40 on a slower instance (2026-12-05),
    // its roots audit records left ambiguous: a worker answering a late
    // receiver, or paused between its write and its answer. Both are
    // followed since 2026-12-06 (`go_late_and_paused`): 40 of 40 in five
    // runs beside a CPU hog. A root is still possible for a call on a
    // connection the transport dialed during the run (its first request,
    // see above).
    assert!(
        complete * 100 >= n * 95,
        "{service}: {complete} of {n} complete; roots: {roots:?}"
    );
    // At the entries, measured 0 to 4 of 48 audit records roots (0 to 3 at
    // the calls, counted in `complete` above): ARCHITECTURE.md, "Per
    // runtime class".
    assert!(
        audit_roots * 5 <= n + in_flight,
        "{service}: {audit_roots} audit records roots: {roots:?}"
    );
    // Measured 8 of 8 (0 to 4 before the writer's hand-off was followed).
    // One may miss it: a request's goroutine not yet waiting when its
    // request is written is told through the channel's buffer.
    assert!(
        cold + 1 >= in_flight,
        "{service}: cold pool: {cold} of {in_flight} complete; roots: {roots:?}"
    );
}

/// A Java service (`fixtures/linking/PoolServer.java`): the JDK HttpServer
/// on a fixed pool of 8 workers, JDBC on the worker, and the JDK
/// HttpClient, which writes each request from one of its own threads after
/// a chain of hand-offs (worker -> client executor -> selector). 40
/// requests, 8 in flight. The queries nest under their request (the worker
/// that read it makes them); the HttpClient's requests have no evidence
/// sonde can trust (ARCHITECTURE.md, "Wakeups") and must stay roots: never
/// under another request. `executor` `fixed`: the client's work runs on 2
/// threads sharing a queue, each writing several requests in a run.
fn java_pool(executor: Option<&str>) {
    const N: usize = 40;
    const IN_FLIGHT: usize = 8;
    let dir = std::env::temp_dir().join(format!("sonde-java-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let built = Command::new("javac")
        .arg("-d")
        .arg(&dir)
        .arg(fixture("linking/PoolServer.java"))
        .status()
        .expect("javac (openjdk) is on the machine");
    assert!(built.success(), "javac PoolServer.java: {built}");
    let (_dbs, db_ports) = server_script("db_servers.py");
    let a = agent(&[]);
    let down = free_port();
    let _down = python_server(down, "downstream");
    let port = free_port();
    let mut cmd = Command::new("java");
    cmd.arg("-cp")
        .arg(format!("/usr/share/java/postgresql.jar:{}", dir.display()))
        .arg("PoolServer")
        .args([
            port.to_string(),
            down.to_string(),
            db_ports["postgres"].to_string(),
        ])
        .args(executor)
        .env("OTEL_SERVICE_NAME", "java-pool");
    let _srv = ready(cmd);
    load(port, 0..N, IN_FLIGHT);
    let spans = wait_spans(&a.store, |s| {
        s.iter().filter(|x| x.service() == "downstream").count() >= N
            && s.iter()
                .filter(|x| x.service() == "java-pool" && kind_of(x) == SpanKind::Server)
                .count()
                >= N
    });
    let found = Found {
        spans: &spans,
        service: "java-pool",
    };
    let (mut queries, mut calls_linked, mut wrong) = (0, 0, vec![]);
    let mut by_evidence = std::collections::BTreeMap::<String, usize>::new();
    for id in 0..N {
        let path = format!("/r/{id}");
        let srv = found.server(&path);
        let q = found.query(&format!("AS r{id}"));
        let c = found.call(&format!("/down/{id}/1"));
        *by_evidence
            .entry(c.attr("sonde.link.evidence").unwrap_or_default())
            .or_default() += 1;
        for (what, span) in [("query", q), ("call", c)] {
            if span.span.parent_span_id == srv.span.span_id {
                assert_eq!(span.span.trace_id, srv.span.trace_id);
                match what {
                    "query" => queries += 1,
                    _ => calls_linked += 1,
                }
            } else if !span.span.parent_span_id.is_empty() {
                wrong.push(format!("{path} {what}"));
            }
        }
    }
    eprintln!(
        "java thread pool (client executor {}), {N} requests, {IN_FLIGHT} in flight: {queries} of {N} queries and {calls_linked} of {N} HttpClient calls under their request, {} wrong parents; calls by evidence {by_evidence:?}",
        executor.unwrap_or("default"),
        wrong.len()
    );
    assert!(wrong.is_empty(), "calls under another request: {wrong:?}");
    assert_eq!(queries, N, "every JDBC query nests under its request");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A pre-fork pool (`prefork_server.py`): a threaded front hands each of
/// 40 requests, 8 in flight, to one of 4 worker processes over a pipe; the
/// worker makes a query and a downstream call for it. Each request's tree
/// is checked exactly: both calls under the front's server span, linked
/// through the pipe (`sonde.link.evidence` = pipe); none under another
/// request.
fn prefork_pool() {
    const N: usize = 40;
    const IN_FLIGHT: usize = 8;
    let (_dbs, db_ports) = server_script("db_servers.py");
    let a = agent(&[]);
    let down = free_port();
    let _down = python_server(down, "downstream");
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.arg(fixture("linking/prefork_server.py"))
        .args([
            port.to_string(),
            down.to_string(),
            db_ports["postgres"].to_string(),
            "4".into(),
        ])
        .env("OTEL_SERVICE_NAME", "prefork");
    let _srv = ready(cmd);
    // The agent follows the pool's pipes once it has seen the front listen
    // (a task written before that is not seen: its calls stay roots).
    let followed = || {
        http_get(&a.metrics, "/metrics")
            .map_or(0.0, |m| prom_sum(&m, "sonde_pipes_followed_total", &[]))
    };
    // At least the task and result pipes of 4 workers, both ends, and no
    // more to come (the workers also share the ones they inherited).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut last = -1.0;
    loop {
        let now = followed();
        if now >= 16.0 && now == last {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pool's pipes were never followed: {now}"
        );
        last = now;
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    load(port, 0..N, IN_FLIGHT);
    let spans = wait_spans(&a.store, |s| {
        s.iter().filter(|x| x.service() == "downstream").count() >= N
            && s.iter()
                .filter(|x| x.service() == "prefork" && x.attr("db.query.text").is_some())
                .count()
                >= N
    });
    let found = Found {
        spans: &spans,
        service: "prefork",
    };
    let (mut complete, mut wrong, mut roots) = (0, vec![], 0);
    for id in 0..N {
        let path = format!("/r/{id}");
        let srv = found.server(&path);
        let q = found.query(&format!("AS r{id}"));
        let c = found.call(&format!("/down/{id}/1"));
        let mut whole = true;
        for (what, span) in [("query", q), ("call", c)] {
            assert_ne!(pid_of(span), pid_of(srv), "{path} {what}: made by a worker");
            if span.span.parent_span_id == srv.span.span_id {
                assert_eq!(span.span.trace_id, srv.span.trace_id);
                assert_eq!(
                    span.attr("sonde.link.evidence").as_deref(),
                    Some("pipe"),
                    "{path} {what}"
                );
            } else if span.span.parent_span_id.is_empty() {
                eprintln!(
                    "{path} {what}: a root ({:?})",
                    span.attr("sonde.link.evidence")
                );
                roots += 1;
                whole = false;
            } else {
                wrong.push(format!("{path} {what}"));
                whole = false;
            }
        }
        complete += usize::from(whole);
    }
    eprintln!(
        "pre-fork pool, {N} requests, {IN_FLIGHT} in flight, 4 workers: {complete} of {N} complete, {roots} calls left roots, {} wrong parents",
        wrong.len()
    );
    let metrics = http_get(&a.metrics, "/metrics").expect("metrics");
    eprintln!(
        "pipe reads unmatched: {}, calls ambiguous: {}",
        prom_sum(&metrics, "sonde_handoffs_unmatched_total", &[]),
        ambiguity(&a)
    );
    assert!(wrong.is_empty(), "calls under another request: {wrong:?}");
    assert_eq!(complete, N, "every worker's calls under their request");
}

fn keep_alive_pool() {
    const N: usize = 40;
    let a = agent(&[]);
    let port = free_port();
    let _srv = python_server(port, "pooled");
    // The client stays alive (stdin open) until its spans are in.
    let mut client = Command::new("python3")
        .arg(fixture("linking/pool_client.py"))
        .args([port.to_string(), N.to_string(), "2".into(), "4".into()])
        .env("OTEL_SERVICE_NAME", "pool-client")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut used: Vec<(String, String)> = vec![];
    for line in std::io::BufRead::lines(std::io::BufReader::new(client.stdout.take().unwrap())) {
        let line = line.unwrap();
        if line == "DONE" {
            break;
        }
        used.push(
            line.split_once(' ')
                .map(|(i, p)| (i.to_string(), p.to_string()))
                .unwrap(),
        );
    }
    let _client = Proc(client);
    assert_eq!(used.len(), N);
    let conns: std::collections::HashSet<&str> = used.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(
        conns.len(),
        2,
        "the pool's two connections carried all requests"
    );

    let spans = wait_spans(&a.store, |s| {
        s.iter()
            .filter(|x| x.service() == "pooled" && kind_of(x) == SpanKind::Server)
            .count()
            >= N
            && s.iter().filter(|x| x.service() == "pool-client").count() >= N
    });
    for (i, _) in &used {
        let path = format!("/pool/{i}");
        let srv = spans
            .iter()
            .find(|s| {
                s.service() == "pooled" && s.attr("url.path").as_deref() == Some(path.as_str())
            })
            .unwrap();
        let cli = spans
            .iter()
            .find(|s| {
                s.service() == "pool-client"
                    && s.attr("url.full").is_some_and(|u| u.ends_with(&path))
            })
            .unwrap_or_else(|| panic!("no client span for {path}"));
        assert_eq!(
            srv.span.parent_span_id, cli.span.span_id,
            "{path}: the server span is the same request's child"
        );
        assert_eq!(srv.span.trace_id, cli.span.trace_id);
    }
}

/// A network namespace with a veth pair: the "remote host" 10.231.0.2.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("sonde-off{}", std::process::id());
        let ip = |args: &[&str]| {
            let st = Command::new("ip")
                .args(args)
                .status()
                .expect("ip (iproute2)");
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &name]);
        let (host_if, peer_if) = (
            format!("so{}a", std::process::id() % 100000),
            format!("so{}b", std::process::id() % 100000),
        );
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ]);
        ip(&["link", "set", &peer_if, "netns", &name]);
        ip(&["addr", "add", "10.231.0.1/30", "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &name, "addr", "add", "10.231.0.2/30", "dev", &peer_if]);
        ip(&["-n", &name, "link", "set", &peer_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn off_node_peer() {
    const N: usize = 5;
    let a = agent(&["--exclude-process", "offnode-peer"]);
    let ns = Netns::new();
    // The peer runs under its own name, which the agent is told to ignore:
    // to the agent it is a host it cannot see.
    let dir = std::env::temp_dir().join(format!("sonde-offnode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let python = String::from_utf8(
        Command::new("python3")
            .args([
                "-c",
                "import os,sys;print(os.path.realpath(sys.executable))",
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let peer_bin = dir.join("offnode-peer");
    let _ = std::fs::remove_file(&peer_bin);
    std::os::unix::fs::symlink(&python, &peer_bin).unwrap();
    let port = free_port();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0])
        .arg(&peer_bin)
        .arg(fixture("http_server.py"))
        .args([port.to_string(), "10.231.0.2".into()]);
    let _peer = ready(cmd);

    for i in 0..N {
        let out = Command::new("curl")
            .args([
                "-sf",
                "-o",
                "/dev/null",
                &format!("http://10.231.0.2:{port}/offnode/{i}"),
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(out.success());
    }
    let spans = wait_spans(&a.store, |s| {
        s.iter()
            .filter(|x| x.service() == "curl" && kind_of(x) == SpanKind::Client)
            .count()
            >= N
    });
    let calls: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.service() == "curl").collect();
    assert_eq!(calls.len(), N);
    for c in &calls {
        assert_eq!(kind_of(c), SpanKind::Client);
        assert!(c.span.parent_span_id.is_empty());
        assert_eq!(c.attr("server.address").as_deref(), Some("10.231.0.2"));
        assert_eq!(c.attr("server.port"), Some(port.to_string()));
        assert_eq!(
            c.attr("network.peer.address").as_deref(),
            Some("10.231.0.2")
        );
    }
    assert!(
        !spans.iter().any(|s| kind_of(s) == SpanKind::Server
            && s.attr("url.path")
                .is_some_and(|p| p.starts_with("/offnode"))),
        "the peer is invisible: no SERVER span"
    );
    let text = http_get(&a.metrics, "/metrics").unwrap();
    let edge = prom_sum(
        &text,
        "traces_service_graph_request_total{",
        &[
            "client=\"curl\"",
            &format!("server=\"10.231.0.2:{port}\""),
            "connection_type=\"virtual_node\"",
        ],
    );
    assert_eq!(edge, N as f64, "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
