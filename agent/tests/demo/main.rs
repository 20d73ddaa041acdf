//! The demo system end to end on the real kernel (`demo/`): twelve Python
//! services with no tracing code, real PostgreSQL, Redis and RabbitMQ, as
//! host processes and as Docker containers behind published ports, driven by
//! eight load generators at once (eight requests in flight). For every
//! request of every flow the receiver must hold exactly one trace, whose
//! tree (service, kind, name and parent of every span) is the expected one;
//! no span of a demo service made during the load may sit outside those
//! trees; the service-graph counts equal the calls made per edge.
//!
//! Needs root; run through `cargo xtask test`.
#[path = "../http/support.rs"]
mod support;
mod trees;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use libtest_mimic::{Arguments, Trial};
use sonde_otlp_receiver::ReceivedSpan;
use support::*;
use trees::{expected, render, Flow};

/// Requests per flow.
const N: usize = 24;
/// Load generators running at once, each on its own connections and users.
const LOADERS: usize = 8;

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "the demo suite needs root to load eBPF programs. Run `sudo -E cargo xtask test`."
        );
        std::process::exit(1);
    }
    let trials = vec![
        Trial::test("demo_as_host_processes", || {
            demo("host");
            Ok(())
        }),
        Trial::test("demo_as_containers_behind_published_ports", || {
            demo("docker");
            Ok(())
        }),
    ];
    libtest_mimic::run(&args, trials).exit();
}

/// The demo's orchestrator, stopped (stdin closed) on drop.
fn start_demo(mode: &str) -> (Servers, serde_json::Value) {
    let mut cmd = Command::new("python3");
    cmd.arg(demo_file("demo.py")).args(["--mode", mode]);
    let (servers, line) = Servers::start(cmd);
    let info: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("demo.py: {e}: {line:?}"));
    (servers, info)
}

fn demo(mode: &str) {
    let agent = agent(&[]);
    let (store, listen) = (&agent.store, &agent.metrics);
    let (demo_proc, info) = start_demo(mode);
    let addr = |k: &str| info[k].as_str().unwrap().to_string();

    let before = http_get(listen, "/metrics").unwrap();
    let load_start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    // Containers: once through docker-proxy (loopback), once through DNAT
    // (the network's gateway address); each round with its own users.
    let mut rounds = vec![[addr("login"), addr("ingestion"), addr("gates")]];
    if mode == "docker" {
        let nat = |k: &str| info["nat"][k].as_str().unwrap().to_string();
        rounds.push([nat("login"), nat("ingestion"), nat("gates")]);
    }
    // LOADERS generators at once, spread over the rounds, each with its own
    // users (a login's first call per user is a cache miss).
    let per_loader = N / LOADERS;
    let mut loads = vec![];
    for i in 0..LOADERS {
        let entry = &rounds[i % rounds.len()];
        let load = Command::new("python3")
            .arg(demo_file("load.py"))
            .args(entry)
            .args([
                "--count",
                &per_loader.to_string(),
                "--users",
                &N.to_string(),
                "--first-user",
                &(i * per_loader + 1).to_string(),
            ])
            .arg("--hold")
            .env("OTEL_SERVICE_NAME", "loadgen")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("load.py");
        loads.push(Proc(load));
    }
    // The load generators stay alive (stdin open) until the spans are in.
    for load in &mut loads {
        let mut line = String::new();
        BufReader::new(load.0.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let made: HashMap<String, usize> =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("load.py: {e}: {line:?}"));
        assert_eq!(
            (made["login"], made["data"], made["gates"], made["errors"]),
            (per_loader, per_loader, per_loader, 0),
            "{made:?}"
        );
    }

    // Wait for every tree: each flow's root plus its expected span count.
    let want: Vec<(Flow, usize)> = Flow::ALL
        .iter()
        .map(|f| (*f, expected(*f).lines().count()))
        .collect();
    let total: usize = want.iter().map(|(_, n)| n * N).sum();
    let spans = wait_spans(store, |s| {
        let roots = s.iter().filter(|x| x.service() == "loadgen").count();
        let in_traces = {
            let ids: HashSet<&[u8]> = s
                .iter()
                .filter(|x| x.service() == "loadgen")
                .map(|x| x.span.trace_id.as_slice())
                .collect();
            s.iter()
                .filter(|x| ids.contains(x.span.trace_id.as_slice()))
                .count()
        };
        roots >= 3 * N && in_traces >= total
    });

    // One trace per request, and its tree is exactly the expected one.
    let roots: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.service() == "loadgen").collect();
    assert_eq!(roots.len(), 3 * N, "one loadgen CLIENT span per request");
    let mut per_flow: BTreeMap<&str, usize> = BTreeMap::new();
    for root in &roots {
        assert!(
            root.span.parent_span_id.is_empty(),
            "the load generator's call is the root"
        );
        let flow = Flow::of(root).unwrap_or_else(|| panic!("unknown root {}", root.span.name));
        let trace: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.span.trace_id == root.span.trace_id)
            .collect();
        let tree = render(&trace);
        assert_eq!(
            tree,
            expected(flow),
            "{mode}: trace {} of flow {flow:?}",
            hex(&root.span.trace_id)
        );
        *per_flow.entry(flow.name()).or_default() += 1;
    }
    assert_eq!(
        per_flow.values().copied().collect::<Vec<_>>(),
        vec![N; 3],
        "{per_flow:?}"
    );

    // No orphans: every span a demo service made during the load is in one of those traces.
    let services: HashSet<&str> = trees::SERVICES.iter().copied().collect();
    let traces: HashSet<&[u8]> = roots.iter().map(|r| r.span.trace_id.as_slice()).collect();
    let stray: Vec<String> = spans
        .iter()
        .filter(|s| services.contains(s.service()) && s.span.start_time_unix_nano >= load_start)
        .filter(|s| !traces.contains(s.span.trace_id.as_slice()))
        .map(|s| format!("{} {}", s.service(), s.span.name))
        .collect();
    assert!(
        stray.is_empty(),
        "spans outside the flows' traces: {stray:?}"
    );

    // Container metadata on the spans of containerized services.
    if mode == "docker" {
        for s in spans.iter().filter(|s| services.contains(s.service())) {
            let id = s
                .resource
                .get("container.id")
                .unwrap_or_else(|| panic!("{} has no container.id", s.service()));
            assert_eq!(id.len(), 64, "{id}");
        }
    }

    // Service graph: the delta over the load equals the calls made per edge.
    let after = http_get(listen, "/metrics").unwrap();
    if mode == "docker" {
        let nat = prom_sum(&after, "sonde_nat_resolved_total", &[])
            - prom_sum(&before, "sonde_nat_resolved_total", &[]);
        // Half the generators go through DNAT, each with one connection per
        // entry service.
        assert_eq!(
            nat,
            (3 * LOADERS / 2) as f64,
            "one conntrack lookup per DNAT'ed connection"
        );
    }
    let n = N as f64;
    let pg = "postgres";
    let mut edges: Vec<(&str, String, f64)> = vec![
        ("loadgen", "login".into(), n),
        ("loadgen", "ingestion".into(), n),
        ("loadgen", "gates".into(), n),
        ("login", "accusr".into(), n),
        ("login", "wfd".into(), n),
        ("statusup", "status".into(), n),
        ("whpusher", "tsmanager".into(), n),
        ("conditionworker", "emailpusher".into(), n),
        // Uninstrumented peers, by their process name.
        ("accusr", pg.into(), n),
        ("wfd", pg.into(), n),
        ("wfd", "redis-server".into(), 2.0 * n),
        ("status", pg.into(), n),
        ("tsmanager", pg.into(), n),
        ("gates", pg.into(), 3.0 * n),
    ];
    // Messaging edges: producer service -> consumer service.
    edges.extend([
        ("ingestion", "statusup".to_string(), n),
        ("statusup", "condition".to_string(), n),
        ("condition", "whpusher".to_string(), n),
        ("condition", "conditionworker".to_string(), n),
    ]);
    for (client, server, calls) in edges {
        let c = format!("client=\"{client}\"");
        let s = format!("server=\"{server}\"");
        let delta = |t: &str| prom_sum(t, "traces_service_graph_request_total{", &[&c, &s]);
        assert_eq!(
            delta(&after) - delta(&before),
            calls,
            "{mode}: edge {client} -> {server}\n{after}"
        );
    }
    drop(demo_proc);
    drop(agent);
}
