//! `traceparent` injection suite on the real kernel (`sock_ops` + `sk_msg`).
//!
//! Two nodes on one machine: two network namespaces joined by a veth
//! pair, each node's processes in a cgroup of its own, and one sonde per
//! node limited to its cgroup (`--cgroup`), both exporting to one receiver.
//! Node A runs the client (`front`, 40 requests, 8 in flight, each with its
//! own id) and `back`; node B runs `mid`, which calls `back` on node A and
//! Redis on node B. Neither sonde sees the other node's half of a
//! connection: only the injected header can join the traces.
//!
//! And the safety cases: byte sequences a client sends, compared with what
//! the server received (identical but for one header line where one is
//! due), including pipelining, split writes, a large head, an existing
//! header, HTTP/1.0, `Expect: 100-continue`, TLS and non-HTTP bytes.
//!
//! Needs root; run through `cargo xtask test`.
#[path = "../http/support.rs"]
mod support;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
};

use libtest_mimic::{Arguments, Trial};
use sonde_otlp_receiver::{proto::trace::v1::span::SpanKind, ReceivedSpan, Store};
use support::*;

const REQUESTS: usize = 40;

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the inject suite needs root. Run `sudo -E cargo xtask test`.");
        std::process::exit(1);
    }
    let t = |name: &str, f: fn()| {
        Trial::test(name, move || {
            f();
            Ok(())
        })
    };
    libtest_mimic::run(
        &args,
        vec![
            t("two_nodes_one_trace_per_request_with_injection", || {
                two_nodes(true)
            }),
            t("two_nodes_split_traces_without_injection", || {
                two_nodes(false)
            }),
            t("safety_cases_bytes_identical_but_the_header", safety),
            t(
                "an_sdk_instrumented_service_joins_the_trace",
                sdk_downstream,
            ),
            t("one_node_the_header_and_the_socket_pair_agree", one_node),
            t("unsampled_requests_get_flags_00_or_nothing", unsampled),
        ],
    )
    .exit();
}

fn run(cmd: &str, args: &[&str]) {
    let ok = Command::new(cmd)
        .args(args)
        .stderr(Stdio::inherit())
        .status()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(ok.success(), "{cmd} {args:?}: {ok}");
}

fn cgroup2_root() -> PathBuf {
    sonde::connections::cgroup::cgroup2_mount().expect("cgroup v2 is mounted")
}

/// A simulated node: a network namespace and a cgroup.
struct Node {
    ns: String,
    cg: PathBuf,
    ip: &'static str,
}

impl Node {
    /// A command run in this node (its cgroup, then its namespace).
    fn command(&self, argv: &[&str], service: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec ip netns exec {} \"$@\"",
                self.cg.display(),
                self.ns
            ))
            .arg("sh")
            .args(argv)
            .env("OTEL_SERVICE_NAME", service);
        c
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        // Its processes are gone by now (dropped first); an empty cgroup goes.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.cg).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// Two nodes joined by a veth pair: A at 10.77.0.1, B at 10.77.0.2.
fn two_node_net() -> (Node, Node) {
    let tag = std::process::id() % 100_000;
    let mk = |name: &str, ip: &'static str| {
        let ns = format!("sonde-{name}-{tag}");
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", &ns]);
        let cg = cgroup2_root().join(format!("sonde-test-{name}-{tag}"));
        let _ = std::fs::create_dir(&cg);
        Node { ns, cg, ip }
    };
    let (a, b) = (mk("a", "10.77.0.1"), mk("b", "10.77.0.2"));
    let (va, vb) = (format!("sva{tag}"), format!("svb{tag}"));
    run(
        "ip",
        &["link", "add", &va, "type", "veth", "peer", "name", &vb],
    );
    for (n, v) in [(&a, &va), (&b, &vb)] {
        run("ip", &["link", "set", v, "netns", &n.ns]);
        let cidr = format!("{}/24", n.ip);
        run(
            "ip",
            &["netns", "exec", &n.ns, "ip", "addr", "add", &cidr, "dev", v],
        );
        run(
            "ip",
            &["netns", "exec", &n.ns, "ip", "link", "set", v, "up"],
        );
        run(
            "ip",
            &["netns", "exec", &n.ns, "ip", "link", "set", "lo", "up"],
        );
    }
    (a, b)
}

fn kind_of(s: &ReceivedSpan) -> SpanKind {
    SpanKind::try_from(s.span.kind).unwrap_or(SpanKind::Unspecified)
}

/// A span's request id: the last path segment of its URL, or the key of
/// its Redis command.
fn request_id(s: &ReceivedSpan) -> Option<String> {
    if let Some(u) = s.attr("url.full").or_else(|| s.attr("url.path")) {
        return u.rsplit('/').next().map(str::to_string);
    }
    let q = s.attr("db.query.text")?;
    q.split("req-").nth(1).map(|k| k.trim().to_string())
}

fn agent_env(grpc: u16) -> Vec<(&'static str, String)> {
    vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{grpc}"),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "600000".into()),
    ]
}

fn two_nodes(inject: bool) {
    let (a, b) = two_node_net();
    let rt = runtime();
    let store = Arc::new(Store::default());
    let grpc = free_port();
    let _rx = receiver(&rt, store.clone(), grpc, free_port());
    let env = agent_env(grpc);
    let agent = |node: &Node| {
        let cg = node.cg.to_string_lossy().into_owned();
        let prom = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            "--cgroup",
            &cg,
            "--prometheus-listen",
            &prom,
            "--view-listen",
            "off",
        ];
        if inject {
            args.extend(["--context-propagation", "traceparent"]);
        }
        (sonde(&args, &env), prom)
    };
    let (_sonde_a, prom_a) = agent(&a);
    let (_sonde_b, prom_b) = agent(&b);

    let script = |name: &str| fixture(&format!("inject/{name}"));
    let script_s = |name: &str| script(name).to_string_lossy().into_owned();
    let mut redis = b
        .command(
            &[
                "redis-server",
                "--bind",
                b.ip,
                "--port",
                "6390",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            "redis",
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-server (installed by `cargo xtask test`)");
    let mut out = BufReader::new(redis.stdout.take().unwrap());
    let mut l = String::new();
    while !l.contains("Ready to accept") {
        l.clear();
        assert!(out.read_line(&mut l).unwrap() > 0, "redis-server exited");
    }
    let _redis = Proc(redis);
    let back = script_s("node_service.py");
    let _back = ready(a.command(&["python3", &back, "back", a.ip, "8081"], "back"));
    let back_url = format!("http://{}:8081", a.ip);
    let redis_at = format!("{}:6390", b.ip);
    let _mid = ready(b.command(
        &["python3", &back, "mid", b.ip, "8080", &back_url, &redis_at],
        "mid",
    ));
    let front = script_s("front.py");
    let mid_url = format!("http://{}:8080", b.ip);
    let n = REQUESTS.to_string();
    let done = a
        .command(&["python3", &front, &mid_url, &n], "front")
        .output()
        .expect("front");
    assert!(done.status.success(), "front failed: {done:?}");
    let answered = String::from_utf8_lossy(&done.stdout)
        .lines()
        .filter(|l| l.ends_with(" 200"))
        .count();
    assert_eq!(answered, REQUESTS, "every request answered");

    let spans = settle(&store, |s| s.len() >= 5 * REQUESTS);
    let by_id = |service: &str, kind: SpanKind, id: &str, db: bool| -> Vec<&ReceivedSpan> {
        spans
            .iter()
            .filter(|s| s.service() == service && kind_of(s) == kind)
            .filter(|s| s.attr("db.system.name").is_some() == db)
            .filter(|s| request_id(s).as_deref() == Some(id))
            .collect()
    };
    let mut complete = 0;
    let mut split = 0;
    let mut problems = vec![];
    for i in 0..REQUESTS {
        let id = i.to_string();
        let one = |service, kind, db| {
            let v = by_id(service, kind, &id, db);
            (v.len() == 1).then(|| v[0])
        };
        let (Some(client), Some(server), Some(call), Some(backend), Some(redis)) = (
            one("front", SpanKind::Client, false),
            one("mid", SpanKind::Server, false),
            one("mid", SpanKind::Client, false),
            one("back", SpanKind::Server, false),
            one("mid", SpanKind::Client, true),
        ) else {
            problems.push(format!("request {id}: a span is missing or doubled"));
            continue;
        };
        // On node B, the local edges hold either way.
        assert_eq!(
            call.span.parent_span_id, server.span.span_id,
            "request {id}: mid's call under mid's request"
        );
        assert_eq!(
            redis.span.parent_span_id, server.span.span_id,
            "request {id}: the Redis call under mid's request"
        );
        let joined = |child: &ReceivedSpan, parent: &ReceivedSpan| {
            child.span.trace_id == parent.span.trace_id
                && child.span.parent_span_id == parent.span.span_id
        };
        if joined(server, client)
            && joined(backend, call)
            && server.span.trace_id == call.span.trace_id
        {
            complete += 1;
        } else if server.span.trace_id != client.span.trace_id
            && server.span.parent_span_id.is_empty()
            && backend.span.trace_id != call.span.trace_id
        {
            split += 1;
        } else {
            problems.push(format!(
                "request {id}: neither joined nor cleanly split: traces client {} server {} call {} back {}; client {} server {} (parent {}) call {} back {} (parent {})",
                &hex(&client.span.trace_id)[..8],
                &hex(&server.span.trace_id)[..8],
                &hex(&call.span.trace_id)[..8],
                &hex(&backend.span.trace_id)[..8],
                hex(&client.span.span_id),
                hex(&server.span.span_id),
                hex(&server.span.parent_span_id),
                hex(&call.span.span_id),
                hex(&backend.span.span_id),
                hex(&backend.span.parent_span_id),
            ));
        }
        // No span of this request names another request's span as parent.
        for s in [client, server, call, backend, redis] {
            if s.span.parent_span_id.is_empty() {
                continue;
            }
            let parent = spans
                .iter()
                .find(|p| p.span.span_id == s.span.parent_span_id);
            if let Some(p) = parent {
                assert_eq!(
                    request_id(p).as_deref(),
                    Some(id.as_str()),
                    "wrong parent for {}",
                    s.span.name
                );
            }
        }
    }
    let metrics = |prom: &str| http_get(prom, "/metrics").unwrap_or_default();
    let (ma, mb) = (metrics(&prom_a), metrics(&prom_b));
    let injected = |m: &str| {
        prom_sum(
            m,
            "sonde_traceparent_injections_total",
            &["outcome=\"injected\""],
        )
    };
    let counters = |m: &str| {
        m.lines()
            .filter(|l| l.starts_with("sonde_traceparent_"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    eprintln!(
        "injection {}: {complete} joined, {split} split of {REQUESTS}; problems: {problems:#?}\nnode A:\n{}\nnode B:\n{}",
        if inject { "on" } else { "off" },
        counters(&ma),
        counters(&mb),
    );
    if inject {
        assert_eq!(complete, REQUESTS, "one trace per request: {problems:#?}");
        // Node A injected every front request, node B every call to back.
        assert!(injected(&ma) >= REQUESTS as f64, "{ma}");
        assert!(injected(&mb) >= REQUESTS as f64, "{mb}");
        for m in [&ma, &mb] {
            let n = |name: &str, label: &str| prom_sum(m, name, &[label]);
            assert_eq!(
                n("sonde_traceparent_injections_total", "outcome=\"failed\""),
                0.0,
                "{m}"
            );
            assert_eq!(
                n("sonde_traceparent_injected_calls_total", "agreed=\"false\""),
                0.0,
                "the kernel and causality name the same parents: {m}"
            );
        }
    } else {
        assert_eq!(
            split, REQUESTS,
            "split traces without injection: {problems:#?}"
        );
        assert_eq!(injected(&ma) + injected(&mb), 0.0);
    }
}

/// The Python interpreter under another name (its processes' comm), so
/// that sonde can tell them apart.
fn python_named(dir: &std::path::Path, name: &str) -> PathBuf {
    let python = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    let python = String::from_utf8_lossy(&python.stdout).trim().to_string();
    let link = dir.join(name);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&python, &link).unwrap();
    link
}

/// The `front` client on this node: `REQUESTS` requests to the local
/// `port`, 8 in flight, each answered.
fn front_on_loopback(port: &str) {
    let done = Command::new("python3")
        .arg(fixture("inject/front.py"))
        .arg(format!("http://127.0.0.1:{port}"))
        .arg(REQUESTS.to_string())
        .env("OTEL_SERVICE_NAME", "front")
        .output()
        .expect("front");
    assert!(done.status.success(), "front failed: {done:?}");
}

/// A Flask service under OpenTelemetry SDK auto-instrumentation, not
/// traced by sonde (excluded by name), called by a client sonde traces:
/// every SDK server span is the child of sonde's client span for the same
/// request, in its trace.
fn sdk_downstream() {
    let dir = tempdir("inject-sdk");
    let rt = runtime();
    let store = Arc::new(Store::default());
    let (grpc, http) = (free_port(), free_port());
    let _rx = receiver(&rt, store.clone(), grpc, http);
    // The SDK's process gets a name of its own, so sonde can leave it out.
    let sdk_python = python_named(&dir, "sdkpython");
    let _sonde = sonde(
        &[
            "--context-propagation",
            "traceparent",
            "--exclude-process",
            "sdkpython",
            "--prometheus-listen",
            "off",
            "--view-listen",
            "off",
        ],
        &agent_env(grpc),
    );
    let port = free_port();
    let mut app = Command::new("opentelemetry-instrument");
    app.arg(&sdk_python)
        .arg(fixture("inject/sdk_app.py"))
        .arg(port.to_string())
        .env("OTEL_SERVICE_NAME", "sdk-app")
        .env("OTEL_TRACES_EXPORTER", "otlp")
        .env("OTEL_METRICS_EXPORTER", "none")
        .env("OTEL_LOGS_EXPORTER", "none")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{http}"),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .stderr(Stdio::null());
    let _app = ready(app);
    front_on_loopback(&port.to_string());
    let of = |spans: &[ReceivedSpan], service: &str, id: &str| -> Vec<ReceivedSpan> {
        spans
            .iter()
            .filter(|s| s.service() == service)
            .filter(|s| {
                ["url.full", "url.path", "http.target", "http.url"]
                    .iter()
                    .filter_map(|k| s.attr(k))
                    .any(|u| u.ends_with(&format!("/req/{id}")))
            })
            .cloned()
            .collect()
    };
    let spans = settle(&store, |s| {
        (0..REQUESTS).all(|i| {
            let id = i.to_string();
            !of(s, "front", &id).is_empty() && !of(s, "sdk-app", &id).is_empty()
        })
    });
    let mut joined = 0;
    for i in 0..REQUESTS {
        let id = i.to_string();
        let (client, server) = (of(&spans, "front", &id), of(&spans, "sdk-app", &id));
        assert_eq!(client.len(), 1, "one client span for {id}");
        assert!(
            server.iter().all(|s| kind_of(s) == SpanKind::Server),
            "sonde left the SDK's process alone"
        );
        let (c, s) = (&client[0], &server[0]);
        if s.span.trace_id == c.span.trace_id && s.span.parent_span_id == c.span.span_id {
            joined += 1;
        }
    }
    eprintln!("SDK service: {joined} of {REQUESTS} joined sonde's trace");
    assert_eq!(joined, REQUESTS);
}

/// On one node the server end reads the header sonde wrote and is also
/// stitched to its client by the socket pair: both name the same parent,
/// and each request has exactly one SERVER span, under its CLIENT span.
fn one_node() {
    let rt = runtime();
    let store = Arc::new(Store::default());
    let grpc = free_port();
    let _rx = receiver(&rt, store.clone(), grpc, free_port());
    let prom = format!("127.0.0.1:{}", free_port());
    let _sonde = sonde(
        &[
            "--context-propagation",
            "traceparent",
            "--prometheus-listen",
            &prom,
            "--view-listen",
            "off",
        ],
        &agent_env(grpc),
    );
    let port = free_port().to_string();
    let service = fixture("inject/node_service.py");
    let mut back = Command::new("python3");
    back.arg(&service)
        .args(["back", "127.0.0.1", &port])
        .env("OTEL_SERVICE_NAME", "back");
    let _back = ready(back);
    front_on_loopback(&port);
    // A request's CLIENT spans from `front` and SERVER spans from `back`.
    fn pair<'a>(
        spans: &'a [ReceivedSpan],
        id: &str,
    ) -> (Vec<&'a ReceivedSpan>, Vec<&'a ReceivedSpan>) {
        let of = |service: &str, kind: SpanKind| -> Vec<&'a ReceivedSpan> {
            spans
                .iter()
                .filter(|s| s.service() == service && kind_of(s) == kind)
                .filter(|s| request_id(s).as_deref() == Some(id))
                .collect()
        };
        (of("front", SpanKind::Client), of("back", SpanKind::Server))
    }
    // Every request's pair, not a span count: a client's span goes out
    // when its response has been read, which can be a batch after its
    // server's.
    let spans = settle(&store, |s| {
        (0..REQUESTS).all(|i| {
            let (client, server) = pair(s, &i.to_string());
            (client.len(), server.len()) == (1, 1)
        })
    });
    for i in 0..REQUESTS {
        let id = i.to_string();
        let (client, server) = pair(&spans, &id);
        if (client.len(), server.len()) != (1, 1) {
            // What there is: the spans of this request under any service or
            // kind, and those with no request id.
            let seen: Vec<String> = spans
                .iter()
                .filter(|s| {
                    let r = request_id(s);
                    r.is_none() || r.as_deref() == Some(id.as_str())
                })
                .map(|s| {
                    format!(
                        "{} {:?} {} {:?}",
                        s.service(),
                        kind_of(s),
                        s.span.name,
                        request_id(s)
                    )
                })
                .collect();
            let m = http_get(&prom, "/metrics").unwrap_or_default();
            let counters: Vec<&str> = m
                .lines()
                .filter(|l| {
                    (l.starts_with("sonde_dropped_total{") || l.starts_with("sonde_traceparent"))
                        && !l.ends_with(" 0")
                })
                .collect();
            panic!(
                "request {id}: {} client and {} server spans; its spans and those \
                 without an id: {seen:#?}; of {} spans in all; counters: {counters:#?}",
                client.len(),
                server.len(),
                spans.len()
            );
        }
        assert_eq!(
            server[0].span.trace_id, client[0].span.trace_id,
            "request {id}"
        );
        assert_eq!(
            server[0].span.parent_span_id, client[0].span.span_id,
            "request {id}"
        );
    }
    let m = http_get(&prom, "/metrics").unwrap_or_default();
    assert!(
        prom_sum(
            &m,
            "sonde_traceparent_injected_calls_total",
            &["agreed=\"true\""]
        ) >= REQUESTS as f64,
        "{m}"
    );
}

/// The raw peer of the safety cases (`fixtures/inject/raw_peer.py`): a
/// server that answers each connection with what it received, on a plain
/// port, a TLS port and port 80 when it is free.
struct RawPeer {
    dir: PathBuf,
    port: u16,
    tls_port: u16,
    port80: bool,
    _server: Proc,
}

impl RawPeer {
    fn start(dir: &std::path::Path) -> RawPeer {
        certificate(dir);
        let (port, tls_port) = (free_port(), free_port());
        let mut server = Command::new("python3")
            .arg(fixture("inject/raw_peer.py"))
            .args(["server", &port.to_string(), &tls_port.to_string()])
            .arg(dir)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut l = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut l)
            .unwrap();
        assert!(l.starts_with("READY"), "{l}");
        RawPeer {
            dir: dir.to_path_buf(),
            port,
            tls_port,
            port80: l.trim() == "READY 80",
            _server: Proc(server),
        }
    }

    /// Sends `cases` from `python` (its name is the process's comm); what
    /// the server received, by case name.
    fn send(&self, python: &std::path::Path, cases: &[Case]) -> HashMap<String, String> {
        let spec: Vec<serde_json::Value> = cases
            .iter()
            .map(|c| {
                let mut v = c.opts.clone();
                v["name"] = c.name.into();
                v["writes"] = c.writes.iter().map(|w| b64(w)).collect::<Vec<_>>().into();
                v
            })
            .collect();
        let spec_file = self.dir.join("cases.json");
        std::fs::write(&spec_file, serde_json::to_vec(&spec).unwrap()).unwrap();
        let out = Command::new(python)
            .arg(fixture("inject/raw_peer.py"))
            .args(["client", &self.port.to_string(), &self.tls_port.to_string()])
            .arg(&spec_file)
            .output()
            .expect("python3");
        assert!(out.status.success(), "client: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// With the sampler keeping no trace, a request's header says so (flags
/// 00); with `--context-propagation-omit-unsampled` it gets none.
fn unsampled() {
    let peer = RawPeer::start(&tempdir("inject-unsampled"));
    let request = "GET /u HTTP/1.1\r\nHost: x\r\n\r\n";
    let case = [Case {
        name: "u",
        writes: vec![request.as_bytes().to_vec()],
        injected: false,
        opts: serde_json::json!({}),
    }];
    let received = |extra: &[&str]| -> String {
        let mut args = vec![
            "--context-propagation",
            "traceparent",
            "--prometheus-listen",
            "off",
            "--view-listen",
            "off",
        ];
        args.extend(extra);
        let _sonde = sonde(&args, &[("OTEL_TRACES_SAMPLER", "always_off".into())]);
        peer.send(std::path::Path::new("python3"), &case)["u"].clone()
    };
    let flagged = received(&[]);
    let line = "GET /u HTTP/1.1\r\n".len();
    assert!(
        regex_free_header(&flagged.as_bytes()[line..line + 70]),
        "{flagged:?}"
    );
    assert_eq!(&flagged[line + 65..line + 70], "-00\r\n", "{flagged:?}");
    assert_eq!(received(&["--context-propagation-omit-unsampled"]), request);
}

/// One safety case: the writes a client makes, and whether the first
/// request of them must carry an injected header.
struct Case {
    name: &'static str,
    writes: Vec<Vec<u8>>,
    injected: bool,
    opts: serde_json::Value,
}

/// Standard base64, as Python's `base64.b64decode` reads it.
fn b64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= c.len() {
                out.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn safety() {
    let dir = tempdir("inject-safety");
    let peer = RawPeer::start(&dir);
    let rt = runtime();
    let store = Arc::new(Store::default());
    let grpc = free_port();
    let _rx = receiver(&rt, store.clone(), grpc, free_port());
    let prom = format!("127.0.0.1:{}", free_port());
    let (port, port80) = (peer.port, peer.port80);
    // A connection opened before the agent is never enrolled: its
    // requests go out untouched, counted `not_enrolled`.
    let mut early = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _sonde = sonde(
        &[
            "--context-propagation",
            "traceparent",
            "--context-propagation-exclude",
            "pyexcluded",
            "--prometheus-listen",
            &prom,
            "--view-listen",
            "off",
        ],
        &agent_env(grpc),
    );
    {
        use std::io::{Read, Write};
        let request = b"GET /early HTTP/1.1\r\nHost: x\r\n\r\n";
        early.write_all(request).unwrap();
        early.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        early.read_to_string(&mut answer).unwrap();
        assert_eq!(
            answer,
            b64(request),
            "an early connection's request untouched"
        );
    }

    let big = format!(
        "GET /big HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(3000)
    );
    let json = |v: serde_json::Value| v;
    let mut cases = vec![
        Case { name: "simple", writes: vec![b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()], injected: true, opts: json(serde_json::json!({})) },
        Case {
            name: "pipelined",
            writes: vec![b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nGET /p2 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()],
            injected: true,
            opts: json(serde_json::json!({})),
        },
        Case {
            name: "split_writes",
            writes: vec![b"GET /s HTTP/1.1\r\nHo".to_vec(), b"st: x\r\n\r\n".to_vec()],
            injected: false,
            opts: json(serde_json::json!({"pause": true})),
        },
        Case { name: "head_larger_than_a_message", writes: vec![big.into_bytes()], injected: false, opts: json(serde_json::json!({})) },
        Case {
            name: "has_traceparent",
            writes: vec![b"GET /t HTTP/1.1\r\nHost: x\r\nTraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n".to_vec()],
            injected: false,
            opts: json(serde_json::json!({})),
        },
        Case { name: "http_1_0", writes: vec![b"GET /old HTTP/1.0\r\n\r\n".to_vec()], injected: true, opts: json(serde_json::json!({})) },
        Case {
            name: "expect_100_continue",
            writes: vec![
                b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\nExpect: 100-continue\r\n\r\n".to_vec(),
                b"GET body!".to_vec(),
            ],
            injected: true,
            opts: json(serde_json::json!({"wait_continue": true})),
        },
        Case {
            name: "tls",
            writes: vec![b"GET /secret HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()],
            injected: false,
            opts: json(serde_json::json!({"tls": true})),
        },
        Case {
            name: "not_http_get_command",
            writes: vec![b"GET some-key\r\n\r\n".to_vec()],
            injected: false,
            opts: json(serde_json::json!({})),
        },
    ];
    if port80 {
        cases.push(Case {
            name: "not_http_on_port_80",
            writes: vec![b"HELO example\r\n".to_vec(), b"GET x\r\n\r\n".to_vec()],
            injected: false,
            opts: json(serde_json::json!({"port80": true})),
        });
    } else {
        eprintln!("port 80 is taken on this machine: that case is left out");
    }
    let got = peer.send(std::path::Path::new("python3"), &cases);
    // A process excluded by name sends its requests untouched.
    let excluded = peer.send(
        &python_named(&dir, "pyexcluded"),
        &[Case {
            name: "excluded",
            writes: vec![b"GET /ex HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()],
            injected: false,
            opts: serde_json::json!({}),
        }],
    );
    assert_eq!(excluded["excluded"], "GET /ex HTTP/1.1\r\nHost: x\r\n\r\n");
    let header = regex_free_header;
    for c in &cases {
        let sent: Vec<u8> = c.writes.concat();
        let received = got[c.name].as_bytes().to_vec();
        if !c.injected {
            assert_eq!(
                String::from_utf8_lossy(&received),
                String::from_utf8_lossy(&sent),
                "{}: the server must receive the bytes sent",
                c.name
            );
            continue;
        }
        let line = sent.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        assert_eq!(
            received.len(),
            sent.len() + 70,
            "{}: one header line added",
            c.name
        );
        assert_eq!(received[..line], sent[..line], "{}", c.name);
        assert!(
            header(&received[line..line + 70]),
            "{}: {:?}",
            c.name,
            String::from_utf8_lossy(&received[line..line + 70])
        );
        assert_eq!(
            received[line + 70..],
            sent[line..],
            "{}: the rest unchanged",
            c.name
        );
    }
    let m = http_get(&prom, "/metrics").unwrap_or_default();
    let outcome = |o: &str| {
        prom_sum(
            &m,
            "sonde_traceparent_injections_total",
            &[&format!("outcome=\"{o}\"")],
        )
    };
    let injected = cases.iter().filter(|c| c.injected).count() as f64;
    assert!(outcome("injected") >= injected, "{m}");
    assert!(
        outcome("partial_head") >= 2.0,
        "split writes and the large head: {m}"
    );
    assert!(outcome("has_traceparent") >= 1.0, "{m}");
    assert!(outcome("not_http1") >= 1.0, "{m}");
    assert_eq!(outcome("failed"), 0.0, "{m}");
    assert!(outcome("not_enrolled") >= 1.0, "the early connection: {m}");
}

/// `traceparent: 00-<32 hex>-<16 hex>-0[01]\r\n`, lowercase.
fn regex_free_header(h: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(h) else {
        return false;
    };
    let Some(v) = s
        .strip_prefix("traceparent: ")
        .and_then(|v| v.strip_suffix("\r\n"))
    else {
        return false;
    };
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && (parts[3] == "00" || parts[3] == "01")
}
