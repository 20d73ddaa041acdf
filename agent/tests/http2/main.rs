//! HTTP/2 and gRPC suite on the real kernel: grpcio's server and client
//! (Python, from PyPI) with 8 calls in flight on one channel; nginx serving
//! h2c to curl (`--http2-prior-knowledge`, 8 processes at once) and to
//! nghttp (8 streams multiplexed on one connection); a gRPC channel opened
//! before the agent started (its header table is unknown: nothing of it may
//! be reported). Every call carries its own id in its method or path, and
//! each SERVER span must be the child of the CLIENT span with the same id.
//!
//! Needs root; run through `cargo xtask test`.
#[path = "../http/support.rs"]
mod support;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use libtest_mimic::{Arguments, Trial};
use sonde_otlp_receiver::{proto::trace::v1::span::SpanKind, ReceivedSpan};
use support::*;

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "the HTTP/2 suite needs root to load eBPF programs. Run `sudo -E cargo xtask test`."
        );
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
            t("grpc_python_eight_in_flight_on_one_channel", grpc_python),
            t("grpc_go_eight_in_flight_on_one_connection", grpc_go),
            t("h2c_nginx_curl_and_nghttp_eight_in_flight", h2c_nginx),
            t("grpc_channel_opened_before_the_agent", grpc_preexisting),
            t("https_alpn_h2_nginx_curl_eight_in_flight", https_h2),
        ],
    )
    .exit();
}

fn kind_of(s: &ReceivedSpan) -> SpanKind {
    SpanKind::try_from(s.span.kind).unwrap_or(SpanKind::Unspecified)
}

fn grpc(args: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg(fixture("grpc/grpc_service.py")).args(args);
    c
}

fn grpc_server(port: u16) -> Proc {
    let mut cmd = grpc(&["server", &port.to_string()]);
    cmd.env("OTEL_SERVICE_NAME", "grpc-shop")
        .stdin(Stdio::piped());
    ready(cmd)
}

/// Runs the gRPC client on `jobs`; returns its pid and outcomes.
fn grpc_client(port: u16, jobs: &[(String, String)]) -> (u32, Vec<serde_json::Value>) {
    let jobs: Vec<[&str; 2]> = jobs.iter().map(|(k, i)| [k.as_str(), i.as_str()]).collect();
    let child = grpc(&[
        "client",
        &port.to_string(),
        &serde_json::to_string(&jobs).unwrap(),
    ])
    .stdout(Stdio::piped())
    .spawn()
    .expect("python3 with grpcio (installed by `cargo xtask test`)");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "gRPC client failed");
    (
        pid,
        serde_json::from_slice(&out.stdout).expect("client JSON"),
    )
}

/// The agent's counters of interest that are not 0.
fn counters(metrics: &str) -> String {
    let text = http_get(metrics, "/metrics").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("sonde_") && !l.ends_with(" 0"))
        .filter(|l| {
            [
                "dropped",
                "unpaired",
                "parse_errors",
                "gave_up",
                "connections",
                "unrecognised",
            ]
            .iter()
            .any(|k| l.contains(k))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Until the agent reports a SERVER span of `pid` (its probes are attached
/// and its first connection seen), runs `warm` with a fresh id.
fn warm_up(a: &Agent, pid: u32, warm: impl FnMut(usize)) {
    warm_until(
        a,
        "a request of that pid",
        |s| pid_of(s) == pid && kind_of(s) == SpanKind::Server,
        warm,
    );
}

/// Until the agent reports a span `ready` accepts, runs `warm` with a
/// fresh id.
fn warm_until(
    a: &Agent,
    what: &str,
    ready: impl Fn(&ReceivedSpan) -> bool,
    mut warm: impl FnMut(usize),
) {
    let deadline = Instant::now() + DEADLINE;
    let mut n = 0;
    while !a.store.spans().iter().any(&ready) {
        assert!(
            Instant::now() < deadline,
            "never saw {what}; {}",
            counters(&a.metrics)
        );
        warm(n);
        n += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Asserts one SERVER span of `server` and one CLIENT span of `client` per
/// id, the server's the child of the client's, in its trace.
fn exact_pairs<'a>(
    spans: &'a [ReceivedSpan],
    server: u32,
    client: u32,
    ids: &[String],
    key: impl Fn(&ReceivedSpan) -> Option<String>,
    metrics: &str,
) -> Vec<(&'a ReceivedSpan, &'a ReceivedSpan)> {
    let index = |pid: u32, kind: SpanKind| {
        let mut m: HashMap<String, Vec<&ReceivedSpan>> = HashMap::new();
        for s in spans
            .iter()
            .filter(|s| pid_of(s) == pid && kind_of(s) == kind)
        {
            if let Some(k) = key(s) {
                m.entry(k).or_default().push(s);
            }
        }
        m
    };
    let (servers, clients) = (
        index(server, SpanKind::Server),
        index(client, SpanKind::Client),
    );
    ids.iter()
        .map(|id| {
            let one = |m: &HashMap<String, Vec<&'a ReceivedSpan>>, what: &str| {
                let v = m.get(id).cloned().unwrap_or_default();
                assert_eq!(
                    v.len(),
                    1,
                    "one {what} span for {id}; have {:?}; {}",
                    {
                        let mut k: Vec<_> = m.keys().collect();
                        k.sort();
                        k
                    },
                    counters(metrics)
                );
                v[0]
            };
            let (srv, cli) = (one(&servers, "SERVER"), one(&clients, "CLIENT"));
            assert_eq!(
                srv.span.parent_span_id, cli.span.span_id,
                "{id}: the SERVER span is the child of its CLIENT span; server {:?}; client {:?}",
                srv.span.attributes, cli.span.attributes
            );
            assert_eq!(srv.span.trace_id, cli.span.trace_id, "{id}");
            (srv, cli)
        })
        .collect()
}

/// Waits for a SERVER span of `server` and a CLIENT span of `client` for
/// each gRPC method in `ids`, then asserts them exact pairs.
fn rpc_pairs(
    a: &Agent,
    server: u32,
    client: u32,
    ids: &[String],
) -> Vec<(ReceivedSpan, ReceivedSpan)> {
    let rpc_method = |s: &ReceivedSpan| s.attr("rpc.method");
    let spans = settle(&a.store, |s| {
        let n = |pid: u32| {
            s.iter()
                .filter(|x| pid_of(x) == pid && rpc_method(x).is_some_and(|m| ids.contains(&m)))
                .count()
        };
        n(server) >= ids.len() && n(client) >= ids.len()
    });
    exact_pairs(&spans, server, client, ids, rpc_method, &a.metrics)
        .into_iter()
        .map(|(s, c)| (s.clone(), c.clone()))
        .collect()
}

fn grpc_python() {
    const N: usize = 40;
    let a = agent(&[]);
    let port = free_port();
    let srv = grpc_server(port);
    warm_up(&a, srv.pid(), |n| {
        grpc_client(port, &[("get".into(), format!("warm{n}"))]);
    });
    // Unary calls, a server-streaming call in every ten, a NOT_FOUND in
    // every ten; one channel, 8 in flight.
    let jobs: Vec<(String, String)> = (0..N)
        .map(|i| {
            let kind = if i % 10 == 6 { "watch" } else { "get" };
            let id = if i % 10 == 3 {
                format!("missing{i}")
            } else {
                i.to_string()
            };
            (kind.to_string(), id)
        })
        .collect();
    let (cpid, outcomes) = grpc_client(port, &jobs);
    assert_eq!(outcomes.len(), N);
    let method = |(kind, id): &(String, String)| {
        format!("{}{id}", if kind == "watch" { "Watch" } else { "Get" })
    };
    let ids: Vec<String> = jobs.iter().map(method).collect();
    let pairs = rpc_pairs(&a, srv.pid(), cpid, &ids);
    for ((srv_span, cli), (kind, id)) in pairs.iter().zip(&jobs) {
        let name = format!("sonde.test.Shop/{}", method(&(kind.clone(), id.clone())));
        let code = if id.starts_with("missing") { "5" } else { "0" };
        for s in [srv_span, cli] {
            assert_eq!(s.span.name, name);
            assert_eq!(s.attr("rpc.system").as_deref(), Some("grpc"), "{name}");
            assert_eq!(s.attr("rpc.service").as_deref(), Some("sonde.test.Shop"));
            assert_eq!(
                s.attr("rpc.grpc.status_code").as_deref(),
                Some(code),
                "{name}"
            );
            assert_eq!(s.attr("network.protocol.version").as_deref(), Some("2"));
            let messages = if kind == "watch" {
                "3"
            } else if code == "5" {
                "0"
            } else {
                "1"
            };
            assert_eq!(
                s.attr("sonde.rpc.response.messages").as_deref(),
                Some(messages),
                "{name}"
            );
        }
        // NOT_FOUND fails the call for its client; the server did its job.
        let status = |s: &ReceivedSpan| s.span.status.as_ref().map_or(0, |st| st.code);
        assert_eq!(
            status(cli),
            if code == "5" { 2 } else { 0 },
            "{name} client status"
        );
        assert_eq!(status(srv_span), 0, "{name} server status");
    }
    // An instrumented client's traceparent in the metadata: its CLIENT span
    // takes the header's ids, and the SERVER span is that span's child.
    let (tpid, _) = grpc_client(port, &[("traced".into(), "traced".into())]);
    let traced = |s: &ReceivedSpan| s.attr("rpc.method").as_deref() == Some("Gettraced");
    let spans = settle(&a.store, |s| s.iter().filter(|x| traced(x)).count() >= 2);
    let cli = spans
        .iter()
        .find(|s| traced(s) && pid_of(s) == tpid)
        .expect("CLIENT span of the traced call");
    let srv_span = spans
        .iter()
        .find(|s| traced(s) && pid_of(s) == srv.pid())
        .expect("SERVER span of the traced call");
    assert_eq!(hex(&cli.span.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&cli.span.span_id), "00f067aa0ba902b7");
    assert_eq!(srv_span.span.trace_id, cli.span.trace_id);
    assert_eq!(srv_span.span.parent_span_id, cli.span.span_id);

    let text = http_get(&a.metrics, "/metrics").unwrap_or_default();
    let calls = prom_sum(
        &text,
        "rpc_server_duration_milliseconds_count",
        &["rpc_service=\"sonde.test.Shop\""],
    );
    assert!(
        calls >= N as f64,
        "rpc.server.duration counts every call: {calls}"
    );
    let failed = prom_sum(
        &text,
        "rpc_client_duration_milliseconds_count",
        &["rpc_grpc_status_code=\"5\""],
    );
    assert_eq!(failed, 4.0, "the NOT_FOUND calls, by status");
}

/// grpc-go 1.33 (Debian) server and client, no generated code: 40 unary
/// calls on one connection, 8 in flight, every tenth NOT_FOUND.
fn grpc_go() {
    const N: usize = 40;
    let dir = tempdir("grpc-go");
    let bin = go_build("grpc/grpc_shop.go", &dir);
    let a = agent(&[]);
    let port = free_port().to_string();
    let mut cmd = Command::new(&bin);
    cmd.args(["server", &port])
        .env("OTEL_SERVICE_NAME", "grpc-go-shop");
    let srv = ready(cmd);
    let client = |n: usize, first: usize, how: &str| {
        let child = Command::new(&bin)
            .args([
                "client",
                &port,
                &n.to_string(),
                "8",
                &first.to_string(),
                how,
            ])
            .spawn()
            .expect("grpc_shop client");
        let pid = child.id();
        assert!(
            child.wait_with_output().unwrap().status.success(),
            "Go gRPC client failed"
        );
        pid
    };
    warm_up(&a, srv.pid(), |n| {
        client(1, 1000 + n, "");
    });
    // Then a client that reads the server's SETTINGS before it writes its
    // preface: grpc-go's reader goroutine can do that on a busy machine.
    for (first, how) in [(0, ""), (100, "settings-first")] {
        let cpid = client(N, first, how);
        let ids: Vec<String> = (first..first + N)
            .map(|i| {
                if i % 10 == 3 {
                    format!("Getmissing{i}")
                } else {
                    format!("Get{i}")
                }
            })
            .collect();
        let pairs = rpc_pairs(&a, srv.pid(), cpid, &ids);
        for ((srv_span, cli), id) in pairs.iter().zip(&ids) {
            let code = if id.starts_with("Getmissing") {
                "5"
            } else {
                "0"
            };
            for s in [srv_span, cli] {
                assert_eq!(s.span.name, format!("sonde.test.Shop/{id}"), "{how}");
                assert_eq!(
                    s.attr("rpc.grpc.status_code").as_deref(),
                    Some(code),
                    "{id} {how}"
                );
                assert_eq!(s.attr("rpc.system").as_deref(), Some("grpc"));
            }
        }
    }
}

fn h2c_nginx() {
    const CURLS: usize = 16;
    const MUX: usize = 16;
    let a = agent(&[]);
    let port = free_port();
    let dir = tempdir("h2c");
    let ng = nginx_listening(
        &dir,
        port,
        "http2",
        "location / { return 200 \"$uri\\n\"; }",
    );
    let curl = |path: &str| {
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--http2-prior-knowledge"])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .spawn()
            .expect("curl")
    };
    let workers = children(ng.pid());
    warm_until(
        &a,
        "an h2c request read by nginx",
        |s| workers.contains(&pid_of(s)) && kind_of(s) == SpanKind::Server,
        |n| {
            curl(&format!("/warm{n}")).wait().unwrap();
        },
    );
    // 16 curl processes, 8 at a time; then nghttp with 16 streams on one
    // connection.
    let curl_pids = eight_at_a_time(CURLS, "/c/", curl);
    let urls: Vec<String> = (0..MUX)
        .map(|i| format!("http://127.0.0.1:{port}/m/{i}"))
        .collect();
    let mux = Command::new("nghttp")
        .arg("-n")
        .args(&urls)
        .spawn()
        .expect("nghttp (nghttp2-client)");
    let mux_pid = mux.id();
    assert!(mux.wait_with_output().unwrap().status.success());

    let path = path_at(port);
    let is_ours =
        |s: &ReceivedSpan| path(s).is_some_and(|p| p.starts_with("/c/") || p.starts_with("/m/"));
    let spans = settle(&a.store, |s| {
        s.iter().filter(|x| is_ours(x)).count() >= 2 * (CURLS + MUX)
    });
    let server_of = |id: &str| server_pid(&spans, &path, id, &a.metrics);
    for (id, pid) in &curl_pids {
        let pairs = exact_pairs(
            &spans,
            server_of(id),
            *pid,
            std::slice::from_ref(id),
            &path,
            &a.metrics,
        );
        check_h2(pairs[0]);
    }
    let ids: Vec<String> = (0..MUX).map(|i| format!("/m/{i}")).collect();
    // One connection: one nginx worker serves every stream.
    let pairs = exact_pairs(&spans, server_of("/m/0"), mux_pid, &ids, &path, &a.metrics);
    pairs.into_iter().for_each(check_h2);
    // HTTP/2 requests go into the HTTP histograms, as version 2.
    let text = http_get(&a.metrics, "/metrics").unwrap_or_default();
    let served = prom_sum(
        &text,
        "http_server_request_duration_seconds_count",
        &["network_protocol_version=\"2\""],
    );
    assert!(
        served >= (CURLS + MUX) as f64,
        "every h2c request in http.server.request.duration: {served}"
    );
}

/// HTTP/2 over TLS, negotiated by ALPN: nginx and curl, both OpenSSL (the
/// plaintext comes from the TLS uprobes, the frames parsed as for h2c).
fn https_h2() {
    const N: usize = 16;
    let a = agent(&[]);
    let port = free_port();
    let dir = tempdir("h2tls");
    certificate(&dir);
    let ng = nginx_listening(
        &dir,
        port,
        "ssl http2",
        "location / { return 200 \"$uri\\n\"; }",
    );
    let workers = children(ng.pid());
    let curl = |path: &str| {
        Command::new("curl")
            .args(["-s", "-k", "-o", "/dev/null", "--http2"])
            .arg(format!("https://127.0.0.1:{port}{path}"))
            .spawn()
            .expect("curl")
    };
    warm_until(
        &a,
        "an HTTPS h2 request read by nginx",
        |s| {
            workers.contains(&pid_of(s))
                && s.attr("network.protocol.version").as_deref() == Some("2")
        },
        |n| {
            curl(&format!("/warm{n}")).wait().unwrap();
        },
    );
    let pids = eight_at_a_time(N, "/s/", curl);
    let path = path_at(port);
    let spans = settle(&a.store, |s| {
        s.iter()
            .filter(|x| path(x).is_some_and(|p| p.starts_with("/s/")))
            .count()
            >= 2 * N
    });
    for (id, pid) in &pids {
        let server = server_pid(&spans, &path, id, &a.metrics);
        let pairs = exact_pairs(
            &spans,
            server,
            *pid,
            std::slice::from_ref(id),
            &path,
            &a.metrics,
        );
        check_h2(pairs[0]);
        assert_eq!(pairs[0].0.attr("url.scheme").as_deref(), Some("https"));
    }
}

/// The children of `pid` (nginx's workers).
fn children(pid: u32) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Runs `n` clients, 8 at a time, each on its own path `<prefix><i>`;
/// returns each path's client pid.
fn eight_at_a_time(
    n: usize,
    prefix: &str,
    spawn: impl Fn(&str) -> std::process::Child,
) -> HashMap<String, u32> {
    let mut pids = HashMap::new();
    for batch in 0..n / 8 {
        let kids: Vec<_> = (0..8)
            .map(|i| format!("{prefix}{}", batch * 8 + i))
            .map(|p| (spawn(&p), p))
            .collect();
        for (mut k, p) in kids {
            pids.insert(p, k.id());
            assert!(k.wait().unwrap().success());
        }
    }
    pids
}

/// A span's request path: a server's `url.path`, a client's from `url.full`.
fn path_at(port: u16) -> impl Fn(&ReceivedSpan) -> Option<String> {
    move |s| {
        s.attr("url.path").or_else(|| {
            s.attr("url.full").and_then(|u| {
                u.split_once(&format!(":{port}"))
                    .map(|(_, p)| p.to_string())
            })
        })
    }
}

/// The process whose SERVER span has path `id`.
fn server_pid(
    spans: &[ReceivedSpan],
    path: &impl Fn(&ReceivedSpan) -> Option<String>,
    id: &str,
    metrics: &str,
) -> u32 {
    spans
        .iter()
        .find(|s| kind_of(s) == SpanKind::Server && path(s).as_deref() == Some(id))
        .map(pid_of)
        .unwrap_or_else(|| panic!("no SERVER span for {id}; {}", counters(metrics)))
}

fn check_h2((srv, cli): (&ReceivedSpan, &ReceivedSpan)) {
    for s in [srv, cli] {
        assert_eq!(
            s.attr("network.protocol.version").as_deref(),
            Some("2"),
            "{:?}",
            s.span.attributes
        );
        assert_eq!(s.attr("http.response.status_code").as_deref(), Some("200"));
        assert_eq!(s.attr("http.request.method").as_deref(), Some("GET"));
    }
    assert!(
        srv.span.name == "GET /c/:id" || srv.span.name.starts_with("GET /"),
        "{}",
        srv.span.name
    );
}

/// A channel opened (and used) before the agent starts: its later calls'
/// header blocks refer to a dynamic table the agent never saw. Nothing of
/// that connection is reported (never a span with a wrong method), while a
/// new channel afterwards is.
fn grpc_preexisting() {
    let port = free_port();
    let srv = grpc_server(port);
    // A client that keeps one channel: a call now, the rest on "go".
    let script = format!(
        "import sys, grpc\n\
         ch = grpc.insecure_channel('127.0.0.1:{port}', options=[('grpc.enable_http_proxy', 0)])\n\
         get = lambda i: ch.unary_unary('/sonde.test.Shop/Old' + i)(i.encode(), timeout=10)\n\
         get('0'); print('OPEN', flush=True); sys.stdin.readline()\n\
         for i in range(1, 9): get(str(i))\n\
         print('DONE', flush=True)\n"
    );
    let mut old = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(old.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("OPEN"));
    let a = agent(&[]);
    warm_up(&a, srv.pid(), |n| {
        grpc_client(port, &[("get".into(), format!("new{n}"))]);
    });
    writeln!(old.stdin.as_mut().unwrap(), "go").unwrap();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("DONE"));
    let old_pid = old.id();
    old.wait().unwrap();
    // A fresh channel after it is followed.
    let (cpid, _) = grpc_client(port, &[("get".into(), "after".into())]);
    let spans = settle(&a.store, |s| {
        s.iter()
            .any(|x| pid_of(x) == cpid && x.attr("rpc.method").as_deref() == Some("Getafter"))
    });
    assert!(
        spans
            .iter()
            .any(|x| pid_of(x) == cpid && x.attr("rpc.method").as_deref() == Some("Getafter")),
        "the new channel's call is reported; {}",
        counters(&a.metrics)
    );
    let from_old: Vec<_> = spans
        .iter()
        .filter(|s| {
            pid_of(s) == old_pid || s.attr("rpc.method").is_some_and(|m| m.starts_with("Old"))
        })
        .map(|s| (s.span.name.clone(), s.attr("rpc.method")))
        .collect();
    assert!(
        from_old.is_empty(),
        "nothing of the connection opened before the agent: {from_old:?}"
    );
}
