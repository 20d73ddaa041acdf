//! End-to-end HTTP suite on the real kernel: unmodified servers (Python's
//! http.server, nginx) and clients (a keep-alive Python client, curl),
//! `sonde run` as a separate process exporting OTLP to the in-repo receiver,
//! and a real Prometheus scraping sonde's `/metrics`.
//!
//! Needs root; run through `cargo xtask test`.
mod support;

use std::{collections::HashMap, sync::Arc, time::Duration};

use libtest_mimic::{Arguments, Trial};
use sonde_otlp_receiver::{proto::trace::v1::span::SpanKind, ReceivedSpan, Store};
use support::*;

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "the HTTP suite needs root to load eBPF programs. Run `sudo -E cargo xtask test`."
        );
        std::process::exit(1);
    }
    let t = |name: &'static str, f: fn()| {
        Trial::test(name, move || {
            f();
            Ok(())
        })
    };
    libtest_mimic::run(
        &args,
        vec![
            t(
                "python_keepalive_spans_metrics_and_traceparent",
                python_keepalive,
            ),
            t("prometheus_scrape_counts_match_requests", prometheus_scrape),
            t("nginx_and_curl", nginx_and_curl),
            t("otlp_http_protobuf_transport", http_protobuf),
            t("receiver_outage_under_load", receiver_outage),
            t("sigterm_flushes_queued_spans", sigterm_flush),
            t("no_backend_prints_spans_and_serves_metrics", no_backend),
            t("stdout_trees_one_per_request_eight_in_flight", stdout_trees),
            t("probe_cost_and_self_time_on_metrics", probe_cost),
        ],
    )
    .exit();
}

fn base_env(grpc: u16) -> Vec<(&'static str, String)> {
    vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{grpc}"),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500".into()),
    ]
}

fn kind_of(s: &ReceivedSpan) -> SpanKind {
    SpanKind::try_from(s.span.kind).unwrap_or(SpanKind::Unspecified)
}

fn python_keepalive() {
    const N: usize = 120;
    let rt = runtime();
    let store = Arc::new(Store::default());
    let recv = receiver(&rt, store.clone(), 0, 0);
    let _sonde = sonde(
        &["--prometheus-listen", "off"],
        &base_env(recv.grpc_addr.port()),
    );
    let port = free_port();
    let server = python_server(port, "py-web");
    let spid = server.pid();
    let (cpid, calls) = python_client(port, N);
    assert_eq!(calls.len(), N);

    let spans = wait_spans(&store, |s| {
        s.iter().filter(|x| pid_of(x) == spid).count() >= N
            && s.iter().filter(|x| pid_of(x) == cpid).count() >= N
    });
    let mut server_spans: Vec<&ReceivedSpan> = spans.iter().filter(|s| pid_of(s) == spid).collect();
    let mut client_spans: Vec<&ReceivedSpan> = spans.iter().filter(|s| pid_of(s) == cpid).collect();
    // Exactly one of each per request: no duplicates arrive later either.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        store.spans().iter().filter(|s| pid_of(s) == spid).count(),
        N,
        "one SERVER span per request"
    );
    assert_eq!(
        store.spans().iter().filter(|s| pid_of(s) == cpid).count(),
        N,
        "one CLIENT span per request"
    );
    server_spans.sort_by_key(|s| s.span.start_time_unix_nano);
    client_spans.sort_by_key(|s| s.span.start_time_unix_nano);

    for ((call, srv), cli) in calls.iter().zip(&server_spans).zip(&client_spans) {
        let path = call.path.split('?').next().unwrap();
        let route = if path.starts_with("/items/") {
            "/items/{id}"
        } else {
            path
        };
        // SERVER span
        assert_eq!(kind_of(srv), SpanKind::Server);
        assert_eq!(
            srv.service(),
            "py-web",
            "service.name from the process's OTEL_SERVICE_NAME"
        );
        assert_eq!(srv.span.name, format!("{} {route}", call.method));
        assert_eq!(
            srv.attr("http.request.method").as_deref(),
            Some(call.method.as_str())
        );
        assert_eq!(srv.attr("url.path").as_deref(), Some(path));
        assert_eq!(srv.attr("http.route").as_deref(), Some(route));
        assert_eq!(
            srv.attr("http.response.status_code"),
            Some(call.status.to_string())
        );
        assert_eq!(srv.attr("server.port"), Some(port.to_string()));
        assert_eq!(srv.attr("client.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(
            srv.attr("network.peer.address").as_deref(),
            Some("127.0.0.1")
        );
        assert!(srv.attr("network.peer.port").is_some());
        assert_eq!(
            srv.attr("user_agent.original").as_deref(),
            Some("sonde-test-client/1.0")
        );
        assert_eq!(
            srv.attr("http.request.body.size"),
            Some(call.req_body.to_string())
        );
        assert_eq!(
            srv.attr("http.response.body.size"),
            Some(call.resp_body.to_string())
        );
        if call.path.contains('?') {
            assert!(
                srv.attr("url.query").unwrap().contains("token=REDACTED"),
                "query values redacted by default"
            );
        }
        let srv_err = srv.span.status.as_ref().map(|s| s.code) == Some(2);
        assert_eq!(
            srv_err,
            call.status >= 500,
            "server error status for {}",
            call.status
        );
        // CLIENT span
        assert_eq!(kind_of(cli), SpanKind::Client);
        assert_eq!(
            cli.attr("http.response.status_code"),
            Some(call.status.to_string())
        );
        assert_eq!(cli.attr("server.port"), Some(port.to_string()));
        assert_eq!(cli.attr("server.address").as_deref(), Some("127.0.0.1"));
        assert!(cli
            .attr("url.full")
            .unwrap()
            .starts_with(&format!("http://127.0.0.1:{port}{path}")));
        let cli_err = cli.span.status.as_ref().map(|s| s.code) == Some(2);
        assert_eq!(
            cli_err,
            call.status >= 400,
            "client error status for {}",
            call.status
        );
        // Both fit inside the client's own measurement of the call.
        let wall = call.end - call.start;
        assert!(
            cli.duration_ns() <= wall,
            "client span {} > wall {wall} for {call:?}",
            cli.duration_ns()
        );
        // The server span lies inside the client's, as far as timing can
        // prove: it starts after the client began writing, and before the
        // client finished reading. (Its end, the exit of the server's last
        // write, can follow the client's read exit when the server thread
        // is descheduled after the copy: VM steal time, seen under TCG.)
        assert!(
            srv.span.start_time_unix_nano >= cli.span.start_time_unix_nano,
            "server span starts before its client's for {call:?}"
        );
        assert!(
            srv.span.start_time_unix_nano <= cli.span.end_time_unix_nano,
            "server span starts after its client's ended for {call:?}"
        );
        // traceparent: the server joins it; the client span is the parent it names.
        match &call.traceparent {
            Some(tp) => {
                let parts: Vec<&str> = tp.split('-').collect();
                assert_eq!(hex(&srv.span.trace_id), parts[1]);
                assert_eq!(hex(&srv.span.parent_span_id), parts[2]);
                assert_eq!(hex(&cli.span.trace_id), parts[1]);
                assert_eq!(hex(&cli.span.span_id), parts[2]);
            }
            None => {
                // Socket-pair stitching: both ends are on this node, so the
                // server span is the child of the client span.
                assert!(
                    cli.span.parent_span_id.is_empty(),
                    "the client started the trace"
                );
                assert_eq!(
                    srv.span.trace_id, cli.span.trace_id,
                    "one trace across the two processes for {call:?}"
                );
                assert_eq!(
                    srv.span.parent_span_id, cli.span.span_id,
                    "server is the client's child for {call:?}"
                );
            }
        }
    }

    // OTLP metrics: the server duration histogram counts every request per route.
    let mut want: HashMap<String, u64> = HashMap::new();
    for c in &calls {
        let p = c.path.split('?').next().unwrap();
        *want
            .entry(if p.starts_with("/items/") {
                "/items/{id}".into()
            } else {
                p.to_string()
            })
            .or_default() += 1;
    }
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let mut got: HashMap<String, (u64, u64)> = HashMap::new(); // route -> (time, count sum at latest time)
        for p in store.histogram_points() {
            if p.metric != "http.server.request.duration"
                || p.resource.get("process.pid") != Some(&spid.to_string())
            {
                continue;
            }
            let route = p.attributes.get("http.route").cloned().unwrap_or_default();
            let e = got.entry(route).or_insert((0, 0));
            if p.time_unix_nano > e.0 {
                *e = (p.time_unix_nano, 0);
            }
            if p.time_unix_nano == e.0 {
                e.1 += p.count;
            }
        }
        let got: HashMap<String, u64> = got.into_iter().map(|(k, (_, c))| (k, c)).collect();
        if got == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "OTLP metric counts {got:?} != requests {want:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(recv);
}

fn prometheus_scrape() {
    let rt = runtime();
    let store = Arc::new(Store::default());
    let recv = receiver(&rt, store.clone(), 0, 0);
    let metrics_port = free_port();
    let listen = format!("127.0.0.1:{metrics_port}");
    let _sonde = sonde(
        &["--prometheus-listen", &listen],
        &base_env(recv.grpc_addr.port()),
    );
    let port = free_port();
    let _server = python_server(port, "prom-web");
    let (_, calls) = python_client(port, 100);

    // A real Prometheus scrapes sonde every second.
    let dir = tempdir("prometheus");
    let prom_port = free_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: sonde\n    static_configs:\n      - targets: ['{listen}']\n"
        ),
    )
    .unwrap();
    let _prom = Proc(
        std::process::Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus (Debian package `prometheus`)"),
    );
    let mut want: HashMap<String, u64> = HashMap::new();
    for c in &calls {
        let p = c.path.split('?').next().unwrap();
        *want
            .entry(if p.starts_with("/items/") {
                "/items/{id}".into()
            } else {
                p.to_string()
            })
            .or_default() += 1;
    }
    let query = "sum%20by%20(http_route)%20(http_server_request_duration_seconds_count%7Bservice_name%3D%22prom-web%22%7D)";
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let got: HashMap<String, u64> = http_get(
            &format!("127.0.0.1:{prom_port}"),
            &format!("/api/v1/query?query={query}"),
        )
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v["data"]["result"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|r| {
            let route = r["metric"]["http_route"].as_str()?.to_string();
            let n: f64 = r["value"][1].as_str()?.parse().ok()?;
            Some((route, n as u64))
        })
        .collect();
        if got == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus counts {got:?} != requests {want:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Service graph: the client -> prom-web edge counts every request, and
    // failed ones (the client sees 4xx and 5xx as errors). An edge is
    // recorded when both halves are in, which may be a batch after the
    // server's RED count.
    let sum = |text: &str, prefix: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(prefix) && l.contains("server=\"prom-web\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let text = loop {
        let text = http_get(&listen, "/metrics").unwrap();
        if sum(&text, "traces_service_graph_request_total{") == calls.len() as u64 {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let sum = |prefix: &str| sum(&text, prefix);
    let failed = calls.iter().filter(|c| c.status >= 400).count() as u64;
    assert_eq!(
        sum("traces_service_graph_request_failed_total{"),
        failed,
        "{text}"
    );
    assert_eq!(
        sum("traces_service_graph_request_server_seconds_count{"),
        calls.len() as u64,
        "stitched: server side known"
    );
    // sonde's own health series are there beside the RED ones.
    assert!(
        text.contains("sonde_dropped_total{stage=\"ringbuf\"}"),
        "{text}"
    );
    assert!(text.contains("sonde_parse_errors_total{protocol=\"http\"}"));
    assert!(text.contains("sonde_export_failures_total{signal=\"traces\"}"));
    drop(recv);
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "sonde-{tag}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn nginx_and_curl() {
    let rt = runtime();
    let store = Arc::new(Store::default());
    let recv = receiver(&rt, store.clone(), 0, 0);
    let _sonde = sonde(
        &["--prometheus-listen", "off"],
        &base_env(recv.grpc_addr.port()),
    );
    let dir = tempdir("nginx");
    let port = free_port();
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::write(dir.join("www/index.html"), "<html>sonde</html>\n").unwrap();
    let _nginx = nginx(
        &dir,
        port,
        false,
        &format!(
            "root {}/www; location /missing {{ return 404; }}",
            dir.display()
        ),
    );
    let paths = ["/", "/missing", "/index.html", "/missing", "/"];
    // Each curl lives a few milliseconds: its identity must be read from
    // /proc before it exits, at its connect, not at the next timed drain.
    for (i, p) in paths.iter().enumerate() {
        let out = std::process::Command::new("curl")
            .env("OTEL_SERVICE_NAME", format!("curl-{i}"))
            .args([
                "-s",
                "-o",
                "/dev/null",
                &format!("http://127.0.0.1:{port}{p}"),
            ])
            .status()
            .unwrap();
        assert!(out.success());
    }
    let spans = wait_spans(&store, |s| {
        s.iter()
            .filter(|x| {
                x.resource
                    .get("process.executable.name")
                    .map(String::as_str)
                    == Some("nginx")
            })
            .count()
            >= paths.len()
    });
    let mut srv: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|x| {
            x.resource
                .get("process.executable.name")
                .map(String::as_str)
                == Some("nginx")
        })
        .collect();
    srv.sort_by_key(|s| s.span.start_time_unix_nano);
    assert_eq!(srv.len(), paths.len(), "one SERVER span per curl request");
    for (p, s) in paths.iter().zip(&srv) {
        assert_eq!(kind_of(s), SpanKind::Server);
        assert_eq!(s.attr("url.path").as_deref(), Some(*p));
        let want = if *p == "/missing" { "404" } else { "200" };
        assert_eq!(s.attr("http.response.status_code").as_deref(), Some(want));
        assert_eq!(s.service(), "nginx");
        assert!(s.attr("user_agent.original").unwrap().starts_with("curl/"));
    }
    let mut curl: Vec<_> = spans
        .iter()
        .filter(|x| {
            x.resource
                .get("process.executable.name")
                .map(String::as_str)
                == Some("curl")
                && x.attr("server.port") == Some(port.to_string())
        })
        .collect();
    assert_eq!(curl.len(), paths.len(), "one CLIENT span per curl");
    curl.sort_by_key(|s| s.span.start_time_unix_nano);
    let names: Vec<&str> = curl.iter().map(|s| s.service()).collect();
    let want: Vec<String> = (0..paths.len()).map(|i| format!("curl-{i}")).collect();
    assert_eq!(names, want, "each curl named by its own OTEL_SERVICE_NAME");
    for s in &srv {
        let parent = curl
            .iter()
            .find(|c| c.span.span_id == s.span.parent_span_id)
            .expect("nginx span stitched to its curl span");
        assert_eq!(parent.span.trace_id, s.span.trace_id);
    }
    drop(recv);
}

fn http_protobuf() {
    let rt = runtime();
    let store = Arc::new(Store::default());
    let recv = receiver(&rt, store.clone(), 0, 0);
    let env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", recv.http_addr.port()),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ];
    let _sonde = sonde(&["--prometheus-listen", "off"], &env);
    let port = free_port();
    let server = python_server(port, "proto-web");
    let (_, calls) = python_client(port, 10);
    let spid = server.pid();
    let spans = wait_spans(&store, |s| {
        s.iter().filter(|x| pid_of(x) == spid).count() >= calls.len()
    });
    assert!(spans
        .iter()
        .filter(|x| pid_of(x) == spid)
        .all(|s| s.service() == "proto-web"));
    // The receiver's own side of sonde's export traffic is never traced.
    assert!(
        !spans
            .iter()
            .any(|s| s.attr("url.path").as_deref() == Some("/v1/traces")),
        "export traffic traced"
    );
    drop(recv);
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn receiver_outage() {
    let rt = runtime();
    let store = Arc::new(Store::default());
    let grpc = free_port();
    let recv = receiver(&rt, store.clone(), grpc, 0);
    let metrics_port = free_port();
    let listen = format!("127.0.0.1:{metrics_port}");
    let mut env = base_env(grpc);
    env.push(("OTEL_BSP_MAX_QUEUE_SIZE", "512".into()));
    let mut sonde_p = sonde(&["--prometheus-listen", &listen], &env);
    let port = free_port();
    let server = python_server(port, "outage-web");
    let spid = server.pid();
    python_client(port, 5);
    wait_spans(&store, |s| {
        s.iter().filter(|x| pid_of(x) == spid).count() >= 5
    });
    let rss_before = rss_kib(sonde_p.pid());

    // The backend goes away for 30 s while the load goes on.
    rt.block_on(recv.stop());
    let load = std::process::Command::new("python3")
        .arg(fixture("http_client.py"))
        .args([
            port.to_string(),
            "0".into(),
            "--loop-seconds".into(),
            "30".into(),
        ])
        .stdout(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(load.status.success());
    let sent: serde_json::Value = serde_json::from_slice(&load.stdout).unwrap();
    let requests = sent["requests"].as_u64().unwrap();
    assert!(requests > 1000, "the load was real: {requests} requests");

    assert!(
        sonde_p.0.try_wait().unwrap().is_none(),
        "sonde kept running"
    );
    let rss_after = rss_kib(sonde_p.pid());
    // The queue holds at most 512 spans: memory must not track the load.
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    let text = http_get(&listen, "/metrics").unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(-1.0)
    };
    assert!(
        value("sonde_export_failures_total{signal=\"traces\"}") > 0.0,
        "{text}"
    );
    assert!(
        value("sonde_dropped_total{stage=\"export_queue\"}") > 0.0,
        "queue overflow counted: {text}"
    );

    // The backend returns on the same port: export resumes.
    let recv = receiver(&rt, store.clone(), grpc, 0);
    store.clear();
    python_client(port, 3);
    wait_spans(&store, |s| s.iter().any(|x| pid_of(x) == spid));
    drop(recv);
    let _ = sonde_p.0.kill();
}

fn sigterm_flush() {
    let rt = runtime();
    let store = Arc::new(Store::default());
    let recv = receiver(&rt, store.clone(), 0, 0);
    let mut env = base_env(recv.grpc_addr.port());
    // Batches would wait a minute: only the shutdown flush can deliver them.
    env.retain(|(k, _)| *k != "OTEL_BSP_SCHEDULE_DELAY");
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "60000".into()));
    let mut p = sonde(&["--prometheus-listen", "off"], &env);
    let port = free_port();
    let server = python_server(port, "flush-web");
    let spid = server.pid();
    python_client(port, 7);
    assert_eq!(
        store.spans().iter().filter(|x| pid_of(x) == spid).count(),
        0,
        "nothing exported before SIGTERM"
    );
    unsafe { libc::kill(p.pid() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = p.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sonde did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert_eq!(
        store.spans().iter().filter(|x| pid_of(x) == spid).count(),
        7,
        "queued spans flushed at exit"
    );
    drop(recv);
}

/// The README's default: no endpoint anywhere, spans on stdout, metrics on
/// the default Prometheus address.
fn no_backend() {
    use std::io::BufRead;
    let metrics_port = free_port();
    let listen = format!("127.0.0.1:{metrics_port}");
    let (_p, mut out) = sonde_printing(&["--prometheus-listen", &listen], &[]);
    let port = free_port();
    let _server = python_server(port, "plain-web");
    let (_, calls) = python_client(port, 3);
    let mut seen = 0;
    let deadline = std::time::Instant::now() + DEADLINE;
    while seen < calls.len() {
        assert!(std::time::Instant::now() < deadline, "spans not printed");
        let mut l = String::new();
        assert!(out.read_line(&mut l).unwrap() > 0, "sonde stdout closed");
        if l.contains("SERVER") && l.contains("service=plain-web") {
            assert!(l.contains(&format!("server.port={port}")), "{l}");
            seen += 1;
        }
    }
    let text = http_get(&listen, "/metrics").unwrap();
    let count: u64 = text
        .lines()
        .filter(|l| {
            l.starts_with("http_server_request_duration_seconds_count{service_name=\"plain-web\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(count, calls.len() as u64, "{text}");
}

/// `--stdout-format tree`: 40 curl requests to a Python server, 8 in
/// flight, each with its own id in the path. Every request must print as one
/// tree: curl's CLIENT span on top, the server's SERVER span under it, both
/// with the request's own id.
fn stdout_trees() {
    use std::io::Read;
    let port = free_port();
    let _server = python_server(port, "tree-web");
    let (p, mut out) = sonde_printing(
        &["--stdout-format", "tree", "--prometheus-listen", "off"],
        &[],
    );
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "seq 0 39 | xargs -P 8 -I@ curl -sf -o /dev/null http://127.0.0.1:{port}/items/@"
        ))
        .status()
        .unwrap();
    assert!(status.success(), "curl failed");
    // Wait out a tree's quiet time, then stop: the agent prints every
    // pending tree as it ends.
    std::thread::sleep(Duration::from_secs(2));
    drop(p);
    let mut text = String::new();
    out.read_to_string(&mut text).unwrap();
    let mut ids = vec![];
    for block in text
        .split("\ntrace ")
        .filter(|b| b.contains("tree-web SERVER"))
    {
        let spans: Vec<&str> = block.lines().skip(1).collect();
        assert_eq!(
            spans.len(),
            2,
            "not one client and one server span:\n{block}"
        );
        let (client, server) = (spans[0], spans[1]);
        assert!(client.starts_with("  curl CLIENT GET "), "{block}");
        assert!(server.starts_with("    tree-web SERVER GET "), "{block}");
        let id = |l: &str| {
            let at = l
                .rfind("/items/")
                .unwrap_or_else(|| panic!("no path in {l:?}"));
            l[at + 7..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse::<u32>()
                .unwrap()
        };
        assert_eq!(id(client), id(server), "another request's span:\n{block}");
        ids.push(id(server));
    }
    ids.sort_unstable();
    assert_eq!(
        ids,
        (0..40).collect::<Vec<u32>>(),
        "one tree per request:\n{text}"
    );
}

/// Restores `kernel.bpf_stats_enabled` when dropped.
struct BpfStats(String);

impl BpfStats {
    const PATH: &'static str = "/proc/sys/kernel/bpf_stats_enabled";

    fn on() -> BpfStats {
        let old = std::fs::read_to_string(Self::PATH).unwrap();
        std::fs::write(Self::PATH, "1").unwrap();
        BpfStats(old)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, self.0.trim());
    }
}

/// With `kernel.bpf_stats_enabled` on, `/metrics` reports what each probe
/// cost; and every served request has its self time recorded.
fn probe_cost() {
    let metrics_port = free_port();
    let listen = format!("127.0.0.1:{metrics_port}");
    let _stats = BpfStats::on();
    let _sonde = sonde(&["--prometheus-listen", &listen], &[]);
    let port = free_port();
    let _server = python_server(port, "cost-web");
    let (_, calls) = python_client(port, 30);
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let deadline = std::time::Instant::now() + DEADLINE;
    let text = loop {
        let text = http_get(&listen, "/metrics").unwrap();
        let served = value(
            &text,
            "sonde_request_self_duration_seconds_count{service_name=\"cost-web\"",
        );
        if served as usize == calls.len() {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "self times: {text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let runs = value(&text, "sonde_probe_runs_total{program=\"sys_exit_read\"}");
    let secs = value(
        &text,
        "sonde_probe_run_seconds_total{program=\"sys_exit_read\"}",
    );
    assert!(runs >= calls.len() as f64, "runs {runs}: {text}");
    assert!(secs > 0.0, "{text}");
    // Its self time is its duration: the fixture calls nothing.
    let own = value(
        &text,
        "sonde_request_self_duration_seconds_sum{service_name=\"cost-web\"",
    );
    let total = value(
        &text,
        "http_server_request_duration_seconds_sum{service_name=\"cost-web\"",
    );
    assert!((own - total).abs() < 1e-9, "self {own} != total {total}");

    // `sonde probe-cost` over a window with traffic: sonde's read exit,
    // the total, and the empty program's floor, each timed.
    // It ends by itself after the window.
    let table = probe_cost_under(3, || {
        python_client(port, 5);
    });
    for name in ["sys_exit_read ", "(all)", "(floor)"] {
        let (runs, ns) = cost_row(&table, name);
        assert!(runs > 0.0 && ns > 0.0, "{name}: {table}");
    }
    assert!(table.contains("(floor): an empty program"), "{table}");
}
