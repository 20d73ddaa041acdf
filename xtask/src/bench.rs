//! `cargo xtask bench`: what sonde costs the services it watches, side by
//! side. Each workload runs under wrk in five arms, alternated round by
//! round: bare (no agent), sonde with metrics only, sonde exporting OTLP to
//! a discarding receiver (`sonde-otlp-receiver --discard`, whose CPU is
//! reported apart), the same at 10% head sampling, and the same with
//! `traceparent` injection; the app workloads (CPython servers, and a Go
//! service) add a sixth, OTLP export with the runtime probes off
//! (`--no-python-tasks --no-go-probes`), and the TLS one OTLP export with
//! OpenSSL's probes at the public entries (`--tls-probes-at-entries`). One
//! table per workload: medians over the rounds, with the spread. The `idle` workload has no wrk: it holds
//! 10,000 answered keep-alive connections open, for the agent's idle CPU
//! and its memory.
//!
//! The probes' own cost comes from the kernel (`kernel.bpf_stats_enabled`,
//! on for the run and restored after): run time per program run, from
//! sonde's `/metrics`.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{apt, run};

pub struct Options {
    pub workloads: Vec<String>,
    pub rounds: usize,
    pub seconds: u64,
    pub connections: Option<u32>,
}

const WORKLOADS: [&str; 6] = ["nginx", "nginx-tls", "python", "db", "go", "idle"];

/// The `idle` workload's open connections (issue 16: RSS with 10,000).
const IDLE_CONNECTIONS: u32 = 10_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Arm {
    Bare,
    Metrics,
    Otlp,
    /// OTLP export with head sampling at `SAMPLED_RATIO`: spans for a
    /// tenth of the traces, RED metrics still for every request.
    Sampled,
    /// OTLP export with `traceparent` injection on: the load generator's
    /// requests get the header (sk_msg), the server's reads are named.
    Injected,
    /// OTLP export without the runtime probes (`--no-python-tasks
    /// --no-go-probes`): what following a runtime's tasks costs, in the
    /// kernel and in the agent (issue 14), against `Otlp`.
    NoRuntime,
    /// OTLP export with OpenSSL's read and write probes at the public
    /// functions' entries (`--tls-probes-at-entries`), where the kernel
    /// single-steps, against `Otlp`, where they sit at the internal
    /// function both forms call.
    TlsEntries,
}

const ARMS: [Arm; 5] = [
    Arm::Bare,
    Arm::Metrics,
    Arm::Otlp,
    Arm::Sampled,
    Arm::Injected,
];

/// `ARMS`, and the one a workload adds: the app workloads (CPython and Go
/// services) `NoRuntime`, the TLS one `TlsEntries`.
fn arms(workload: &str) -> Vec<Arm> {
    let extra = match workload {
        "nginx" => None,
        "nginx-tls" => Some(Arm::TlsEntries),
        _ => Some(Arm::NoRuntime),
    };
    ARMS.iter().copied().chain(extra).collect()
}
const SAMPLED_RATIO: &str = "0.1";

impl Arm {
    fn name(self) -> &'static str {
        match self {
            Arm::Bare => "bare",
            Arm::Metrics => "sonde, metrics only",
            Arm::Otlp => "sonde, OTLP export",
            Arm::Sampled => "sonde, OTLP export, 10% of traces",
            Arm::Injected => "sonde, OTLP export, traceparent injection",
            Arm::NoRuntime => "sonde, OTLP export, runtime probes off",
            Arm::TlsEntries => "sonde, OTLP export, TLS probes at public entries",
        }
    }

    fn exports(self) -> bool {
        matches!(
            self,
            Arm::Otlp | Arm::Sampled | Arm::Injected | Arm::NoRuntime | Arm::TlsEntries
        )
    }
}

/// One arm's run of one round.
#[derive(Default, Clone, Debug)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    agent_mcpu: f64,
    receiver_mcpu: f64,
    rss_mb: f64,
    events: f64,
    probe_ns: f64,
    drops: f64,
    spans: f64,
    /// Served requests in the agent's RED metrics less wrk's completed
    /// requests: 0 when exact, up to the connections' count when requests
    /// in flight as wrk stopped were served but never read by it.
    red_less_wrk: f64,
}

pub fn bench(opts: &Options) -> Result<()> {
    if apt::effective_uid() != 0 {
        bail!("the bench loads sonde's probes: run it as root (sudo -E cargo xtask bench)");
    }
    if let Some(bad) = opts
        .workloads
        .iter()
        .find(|w| !WORKLOADS.contains(&w.as_str()))
    {
        bail!(
            "no workload {bad:?}: the bench has {}",
            WORKLOADS.join(", ")
        );
    }
    apt::ensure(&["wrk", "nginx", "openssl"])?;
    let workloads: Vec<&str> = if opts.workloads.is_empty() {
        WORKLOADS.to_vec()
    } else {
        opts.workloads.iter().map(String::as_str).collect()
    };
    if workloads.contains(&"db") {
        apt::ensure(&["postgresql", "mariadb-server", "redis-server"])?;
        apt::ensure_python()?;
    }
    if workloads.contains(&"go") {
        apt::ensure(&["golang-go"])?;
    }
    run::build(true)?;
    run::sh(run::cargo().args(["build", "--release", "--package", "sonde-otlp-receiver"]))?;
    let bin = run::target_dir().join("release");
    let _stats = BpfStats::on()?;
    let tck = clock_ticks()?;
    let mut report = String::new();
    for w in workloads {
        let server = Server::start(w)?;
        if w == "idle" {
            report += &idle(&bin, &server.url, opts, tck)?;
            continue;
        }
        let conns = opts
            .connections
            .unwrap_or(if w.starts_with("nginx") { 32 } else { 16 });
        // Warm the server up (and the page cache), untimed.
        wrk(&server.url, conns, 2)?;
        let arms = arms(w);
        let samples = alternate(w, &arms, opts.rounds, |arm| {
            measure(&bin, arm, &server, conns, opts.seconds, tck)
        })?;
        report += &table(w, conns, opts, &arms, &samples);
    }
    println!("{report}");
    Ok(())
}

/// What `arm` runs beside the workload: the discarding receiver when it
/// exports, and the agent (none when bare), with its `/metrics` address.
fn start_arm(bin: &Path, arm: Arm) -> Result<(Option<Receiver>, String, Option<Agent>)> {
    let receiver = match arm.exports() {
        true => Some(Receiver::start(&bin.join("sonde-otlp-receiver"))?),
        false => None,
    };
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let agent = match arm {
        Arm::Bare => None,
        _ => Some(Agent::start(
            &bin.join("sonde"),
            &metrics,
            receiver.as_ref().map(|r| r.grpc.as_str()),
            (arm == Arm::Sampled).then_some(SAMPLED_RATIO),
            arm,
        )?),
    };
    Ok((receiver, metrics, agent))
}

fn measure(
    bin: &Path,
    arm: Arm,
    server: &Server,
    conns: u32,
    secs: u64,
    tck: f64,
) -> Result<Sample> {
    let url = server.url.as_str();
    let (receiver, metrics, mut agent) = start_arm(bin, arm)?;
    if let Some(a) = agent.as_mut() {
        a.route = server.route;
    }
    let before = agent.as_ref().map(|a| a.reading(&metrics)).transpose()?;
    let recv_before = receiver
        .as_ref()
        .map(|r| cpu_ticks(r.child.id()))
        .transpose()?;
    let started = Instant::now();
    let out = wrk(url, conns, secs)?;
    let wall = started.elapsed().as_secs_f64();
    let after = agent.as_ref().map(|a| a.reading(&metrics)).transpose()?;
    let mut s = parse_wrk(&out).with_context(|| format!("wrk printed:\n{out}"))?;
    if let (Some(a), Some(b)) = (&after, &before) {
        s.agent_mcpu = (a.ticks - b.ticks) / tck / wall * 1000.0;
        s.events = a.events - b.events;
        s.drops = a.drops - b.drops;
        a.log_drops(url);
        let runs = a.probe_runs - b.probe_runs;
        s.probe_ns = if runs > 0.0 {
            (a.probe_secs - b.probe_secs) / runs * 1e9
        } else {
            0.0
        };
        s.rss_mb = a.hwm_kib / 1024.0;
    }
    if let (Some(agent), Some(b)) = (&agent, &before) {
        // The last requests' records are still on their way through the
        // pipeline: read the count once it has settled.
        let mut served = b.served;
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(250));
            let now = agent.reading(&metrics)?.served;
            if now == served {
                break;
            }
            served = now;
        }
        s.red_less_wrk = served - b.served - s.requests as f64;
    }
    if let (Some(r), Some(t0)) = (&receiver, recv_before) {
        s.receiver_mcpu = (cpu_ticks(r.child.id())? - t0) / tck / wall * 1000.0;
        // What the agent sends arrives in batches: let the last one land.
        std::thread::sleep(Duration::from_secs(2));
        s.spans = r.spans();
    }
    drop(agent);
    drop(receiver);
    Ok(s)
}

/// Runs every arm once per round, the order rotated each round so that
/// no arm always runs first.
fn alternate<S>(
    workload: &str,
    arms: &[Arm],
    rounds: usize,
    mut run: impl FnMut(Arm) -> Result<S>,
) -> Result<Vec<(Arm, S)>> {
    let mut samples = vec![];
    for round in 0..rounds {
        let mut order = arms.to_vec();
        order.rotate_left(round % arms.len());
        for arm in order {
            eprintln!(
                "xtask: bench {workload}, round {}, {}",
                round + 1,
                arm.name()
            );
            samples.push((arm, run(arm)?));
        }
    }
    Ok(samples)
}

/// The `idle` workload: `IDLE_CONNECTIONS` keep-alive connections to
/// nginx, each answered once and then held open, doing nothing, while the
/// agent runs with metrics only and with OTLP export. What a node full of
/// quiet pooled connections costs: the agent's CPU while nothing moves, and
/// its memory (peak, while idle, and 21 s after every connection closed).
fn idle(bin: &Path, url: &str, opts: &Options, tck: f64) -> Result<String> {
    let arms = [Arm::Metrics, Arm::Otlp];
    let addr = url
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .context("the idle server's url")?;
    let (host, port) = addr.rsplit_once(':').context("the idle server's port")?;
    let rows = alternate("idle", &arms, opts.rounds, |arm| {
        idle_round(bin, arm, host, port, opts.seconds, tck)
    })?;
    let mut t = format!(
        "\nidle: {IDLE_CONNECTIONS} keep-alive connections to nginx, one request each, then held open \
         {}s, {} rounds (median [min-max])\n\n\
         | arm | connections tracked | requests counted | opening s | agent mCPU, idle | peak RSS MB | RSS MB, idle | RSS MB, 21 s after close | connections closed | drops |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        opts.seconds, opts.rounds
    );
    for arm in arms {
        let cell =
            |f: fn(&IdleSample) -> f64, digits: usize| spread(&column(&rows, arm, f), digits);
        t += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            arm.name(),
            cell(|s| s.opened, 0),
            cell(|s| s.served, 0),
            cell(|s| s.opening_secs, 1),
            cell(|s| s.idle_mcpu, 1),
            cell(|s| s.hwm_mb, 1),
            cell(|s| s.rss_idle_mb, 1),
            cell(|s| s.rss_closed_mb, 1),
            cell(|s| s.closed, 0),
            cell(|s| s.drops, 0),
        );
    }
    Ok(t)
}

#[derive(Default)]
struct IdleSample {
    /// Connections the agent started tracking while they opened (both
    /// ends: the clients' and nginx's).
    opened: f64,
    /// Requests in the RED metrics: one per connection when exact.
    served: f64,
    opening_secs: f64,
    idle_mcpu: f64,
    hwm_mb: f64,
    rss_idle_mb: f64,
    rss_closed_mb: f64,
    closed: f64,
    drops: f64,
}

fn idle_round(
    bin: &Path,
    arm: Arm,
    host: &str,
    port: &str,
    secs: u64,
    tck: f64,
) -> Result<IdleSample> {
    let (receiver, metrics, agent) = start_arm(bin, arm)?;
    let agent = agent.context("the idle workload runs with the agent")?;
    let before = agent.reading(&metrics)?;
    let mut clients = Command::new("python3")
        .arg("-c")
        .arg(include_str!("idle_clients.py"))
        .args([host, port, &IDLE_CONNECTIONS.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the idle workload's clients (python3)")?;
    let mut line = String::new();
    BufReader::new(clients.stdout.take().expect("piped")).read_line(&mut line)?;
    let Some(opening) = line.trim().strip_prefix("ready ") else {
        stop(&mut clients);
        bail!("the idle workload's clients did not open their connections: {line:?}");
    };
    let mut s = IdleSample {
        opening_secs: opening.parse().context("the clients' opening time")?,
        ..Default::default()
    };
    // Let the last records through the pipeline before the idle window.
    std::thread::sleep(Duration::from_secs(2));
    let quiet = agent.reading(&metrics)?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let end = agent.reading(&metrics)?;
    s.idle_mcpu = (end.ticks - quiet.ticks) / tck / t0.elapsed().as_secs_f64() * 1000.0;
    s.opened = end.opened - before.opened;
    s.served = end.served - before.served;
    s.rss_idle_mb = rss_kib(agent.child.id())? / 1024.0;
    // Closing: stdin's end tells the clients to close every connection.
    drop(clients.stdin.take());
    let _ = clients.wait();
    let mut closed = 0.0;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(250));
        closed = agent.reading(&metrics)?.closed - before.closed;
        if closed >= s.opened {
            break;
        }
    }
    let last = agent.reading(&metrics)?;
    s.closed = closed;
    s.drops = last.drops - before.drops;
    last.log_drops("idle");
    s.hwm_mb = last.hwm_kib / 1024.0;
    // The agent gives freed memory back at the second of its 10 s sweeps
    // after the connection table halved (`agent/src/memory.rs`).
    std::thread::sleep(Duration::from_secs(21));
    s.rss_closed_mb = rss_kib(agent.child.id())? / 1024.0;
    drop(agent);
    drop(receiver);
    Ok(s)
}

/// The table of one workload: medians over the rounds, spread in brackets.
fn table(
    workload: &str,
    conns: u32,
    opts: &Options,
    arms: &[Arm],
    samples: &[(Arm, Sample)],
) -> String {
    let of = |arm: Arm, f: fn(&Sample) -> f64| column(samples, arm, f);
    let bare_rps = median(&of(Arm::Bare, |s| s.rps));
    let bare_p50 = median(&of(Arm::Bare, |s| s.p50_ms));
    let bare_p99 = median(&of(Arm::Bare, |s| s.p99_ms));
    let mut t = format!(
        "\n{workload}: wrk -t2 -c{conns} -d{}s, {} rounds (median [min-max])\n\n\
         | arm | req/s | x bare | p50 ms | x bare | p99 ms | x bare | agent mCPU | mCPU per 1k req/s | receiver mCPU | peak RSS MB | events/req | probe ns/run | drops | spans/req | RED - wrk |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        opts.seconds, opts.rounds
    );
    for &arm in arms {
        let cell = |f: fn(&Sample) -> f64, digits: usize| spread(&of(arm, f), digits);
        let rps = median(&of(arm, |s| s.rps));
        let p50 = median(&of(arm, |s| s.p50_ms));
        let p99 = median(&of(arm, |s| s.p99_ms));
        let agent = arm != Arm::Bare;
        let per_k: Vec<f64> = samples
            .iter()
            .filter(|(a, _)| *a == arm)
            .map(|(_, s)| s.agent_mcpu / (s.rps / 1000.0))
            .collect();
        let per_req = |f: fn(&Sample) -> f64| -> Vec<f64> {
            samples
                .iter()
                .filter(|(a, _)| *a == arm)
                .map(|(_, s)| f(s) / s.requests.max(1) as f64)
                .collect()
        };
        let dash = || "-".to_string();
        t += &format!(
            "| {} | {} | {:.2} | {} | {:.2} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            arm.name(),
            cell(|s| s.rps, 0),
            rps / bare_rps,
            cell(|s| s.p50_ms, 2),
            p50 / bare_p50,
            cell(|s| s.p99_ms, 2),
            p99 / bare_p99,
            if agent { cell(|s| s.agent_mcpu, 0) } else { dash() },
            if agent { spread(&per_k, 1) } else { dash() },
            if arm.exports() { cell(|s| s.receiver_mcpu, 0) } else { dash() },
            if agent { cell(|s| s.rss_mb, 1) } else { dash() },
            if agent { spread(&per_req(|s| s.events), 2) } else { dash() },
            if agent { cell(|s| s.probe_ns, 0) } else { dash() },
            if agent { cell(|s| s.drops, 0) } else { dash() },
            if arm.exports() { spread(&per_req(|s| s.spans), 2) } else { dash() },
            if agent { cell(|s| s.red_less_wrk, 0) } else { dash() },
        );
    }
    t
}

/// One figure of `arm`'s samples, round by round.
fn column<S>(samples: &[(Arm, S)], arm: Arm, f: fn(&S) -> f64) -> Vec<f64> {
    samples
        .iter()
        .filter(|(a, _)| *a == arm)
        .map(|(_, s)| f(s))
        .collect()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn spread(v: &[f64], digits: usize) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.d$} [{:.d$}-{:.d$}]", median(v), min, max, d = digits)
}

/// The server under load, stopped when dropped.
struct Server {
    child: Child,
    url: String,
    /// The route whose served requests are wrk's (`Agent::route`).
    route: Option<&'static str>,
    /// The database servers of the `db` workload (`demo/infra/db_servers.py`):
    /// they stop when its stdin closes.
    infra: Option<Child>,
    _dir: TempDir,
}

impl Server {
    fn start(workload: &str) -> Result<Server> {
        let port = free_port()?;
        let dir = TempDir::new(workload)?;
        let tls = workload == "nginx-tls";
        let mut infra = None;
        let child = match workload {
            "nginx" | "nginx-tls" | "idle" => {
                // A small static file, as in the measurement; over
                // TLS (a self-signed certificate) for the TLS probes' cost.
                std::fs::create_dir_all(dir.0.join("www"))?;
                std::fs::write(dir.0.join("www/index.html"), "x".repeat(612))?;
                let listen = if tls {
                    let ok = Command::new("openssl")
                        .args([
                            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        ])
                        .args(["-subj", "/CN=localhost", "-keyout"])
                        .arg(dir.0.join("key.pem"))
                        .arg("-out")
                        .arg(dir.0.join("cert.pem"))
                        .stderr(Stdio::null())
                        .status()
                        .context("openssl (a certificate for nginx-tls)")?;
                    if !ok.success() {
                        bail!("openssl could not make a certificate");
                    }
                    format!(
                        "listen 127.0.0.1:{port} ssl; ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;",
                        d = dir.0.display()
                    )
                } else {
                    format!("listen 127.0.0.1:{port};")
                };
                // `idle` holds its connections open, answered, for the
                // whole measurement: room for all of them, kept alive.
                let (limits, keepalive) = if workload == "idle" {
                    (
                        format!(
                            "worker_rlimit_nofile {};\nevents {{ worker_connections {}; }}\n",
                            2 * IDLE_CONNECTIONS + 1024,
                            IDLE_CONNECTIONS + 1024
                        ),
                        "keepalive_timeout 3600s; keepalive_requests 1000000;",
                    )
                } else {
                    ("events { worker_connections 4096; }\n".to_string(), "")
                };
                let conf = format!(
                    "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                     {limits}\
                     http {{ access_log off; {keepalive}\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
                     fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
                     server {{ {listen} root {d}/www; }}\n}}\n",
                    d = dir.0.display()
                );
                std::fs::write(dir.0.join("nginx.conf"), conf)?;
                Command::new("nginx")
                    .args(["-c", &dir.0.join("nginx.conf").display().to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting nginx")?
            }
            "go" => {
                // `go`: a net/http service calling itself once per request,
                // with a goroutine and a channel (`go_service.go`), on two
                // threads of Go code (GOMAXPROCS=2, the machine's cores).
                let bin = dir.0.join("go_service");
                let built = Command::new("go")
                    .args(["build", "-o"])
                    .arg(&bin)
                    .arg(repo().join("xtask/src/go_service.go"))
                    .env("GO111MODULE", "off")
                    .env("GOCACHE", dir.0.join("gocache"))
                    .status()
                    .context("go (golang-go)")?;
                if !built.success() {
                    bail!("go build xtask/src/go_service.go: {built}");
                }
                let mut c = Command::new(&bin);
                c.arg(port.to_string()).env("GOMAXPROCS", "2");
                start_ready(c, "the Go service")?
            }
            _ => {
                // `python`: a threaded service answering from memory; `db`:
                // the same kind of service making four calls to PostgreSQL,
                // MariaDB and Redis for every request (`db_flow.py`: steady,
                // one set of connections per thread), against the demo's
                // database servers.
                let (script, args) = if workload == "db" {
                    let (child, ports) = db_servers()?;
                    infra = Some(child);
                    let p = |k: &str| -> Result<String> {
                        Ok(ports
                            .get(k)
                            .and_then(|v| v.as_u64())
                            .with_context(|| format!("db_servers.py printed no {k} port"))?
                            .to_string())
                    };
                    (
                        "xtask/src/db_flow.py",
                        vec![port.to_string(), p("postgres")?, p("mysql")?, p("redis")?],
                    )
                } else {
                    (
                        "agent/tests/fixtures/http_server.py",
                        vec![port.to_string()],
                    )
                };
                let mut c = Command::new("python3");
                c.arg(repo().join(script))
                    .args(args)
                    .env("OTEL_SERVICE_NAME", format!("bench-{workload}"));
                start_ready(c, &format!("the Python server ({script})"))?
            }
        };
        let path = match workload {
            "python" => "/ok",
            "db" => "/items",
            "go" => "/front",
            _ => "/index.html",
        };
        let scheme = if tls { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{port}{path}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("{workload} did not listen on {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Server {
            child,
            url,
            route: (workload == "go").then_some("/front"),
            infra,
            _dir: dir,
        })
    }
}

/// Starts a server that prints `READY` once it listens; waits for it.
/// Its stderr is dropped: wrk resets its connections at the end, and
/// servers log each.
fn start_ready(mut c: Command, what: &str) -> Result<Child> {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let mut l = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut l)?;
    if l.trim() != "READY" {
        bail!("{what} did not start: {l:?}");
    }
    Ok(child)
}

impl Drop for Server {
    fn drop(&mut self) {
        stop(&mut self.child);
        if let Some(mut infra) = self.infra.take() {
            // Closing its stdin stops the script and its servers.
            drop(infra.stdin.take());
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = infra.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            stop(&mut infra);
        }
    }
}

/// Starts the demo's database servers; returns the script and the ports
/// it printed (one JSON line).
fn db_servers() -> Result<(Child, serde_json::Map<String, serde_json::Value>)> {
    let mut child = Command::new("python3")
        .arg(repo().join("demo/infra/db_servers.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting demo/infra/db_servers.py")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    match serde_json::from_str(&line) {
        Ok(serde_json::Value::Object(ports)) => Ok((child, ports)),
        _ => {
            stop(&mut child);
            bail!("demo/infra/db_servers.py did not start its servers: {line:?}")
        }
    }
}

/// `sonde run`, started and ready; stopped when dropped.
struct Agent {
    child: Child,
    /// Count only this route's served requests (`http.route`): the `go`
    /// workload's service serves two requests for each of wrk's.
    route: Option<&'static str>,
}

/// What the agent's process and `/metrics` say at one moment.
struct Reading {
    ticks: f64,
    hwm_kib: f64,
    events: f64,
    drops: f64,
    probe_secs: f64,
    probe_runs: f64,
    /// Connections the agent tracked, and saw close, since it started.
    opened: f64,
    closed: f64,
    /// Requests served, as the RED metrics count them.
    served: f64,
    /// The `sonde_dropped_total` series that are not 0: the table only
    /// sums them, the log names them.
    dropping: Vec<String>,
}

impl Reading {
    /// Names the stages that dropped, once per round, in the log.
    fn log_drops(&self, workload: &str) {
        if !self.dropping.is_empty() {
            eprintln!(
                "xtask: bench {workload}: the agent counts drops: {}",
                self.dropping.join(", ")
            );
        }
    }
}

impl Agent {
    /// `ratio`: head sampling (`traceidratio`); none samples every trace.
    /// `Injected`: `--context-propagation traceparent`; `NoRuntime`: the
    /// runtime probes off; `TlsEntries`: OpenSSL's at the public entries.
    fn start(
        bin: &Path,
        metrics: &str,
        otlp: Option<&str>,
        ratio: Option<&str>,
        arm: Arm,
    ) -> Result<Agent> {
        let mut c = Command::new(bin);
        c.args(["run", "--stdout", "false", "--prometheus-listen", metrics]);
        match arm {
            Arm::Injected => {
                c.args(["--context-propagation", "traceparent"]);
            }
            Arm::NoRuntime => {
                c.args(["--no-python-tasks", "--no-go-probes"]);
            }
            Arm::TlsEntries => {
                c.arg("--tls-probes-at-entries");
            }
            _ => {}
        }
        for k in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "OTEL_TRACES_SAMPLER",
        ] {
            c.env_remove(k);
        }
        if let Some(url) = otlp {
            c.args(["--otlp-endpoint", url]);
        }
        if let Some(r) = ratio {
            c.env("OTEL_TRACES_SAMPLER", "traceidratio")
                .env("OTEL_TRACES_SAMPLER_ARG", r);
        }
        let mut child = c
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut err = BufReader::new(child.stderr.take().expect("piped"));
        let mut seen = String::new();
        loop {
            let mut l = String::new();
            if err.read_line(&mut l)? == 0 {
                bail!("sonde exited before capturing:\n{seen}");
            }
            seen += &l;
            if l.contains("capturing;") {
                break;
            }
        }
        // Keep draining its log, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = vec![];
            let _ = err.read_to_end(&mut sink);
        });
        Ok(Agent { child, route: None })
    }

    fn reading(&self, metrics: &str) -> Result<Reading> {
        let text = http_get(metrics, "/metrics")?;
        let sum = |prefix: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        Ok(Reading {
            dropping: text
                .lines()
                .filter(|l| l.starts_with("sonde_dropped_total{") && !l.ends_with(" 0"))
                .map(String::from)
                .collect(),
            ticks: cpu_ticks(self.child.id())?,
            hwm_kib: hwm_kib(self.child.id())?,
            events: sum("sonde_kernel_events_total"),
            drops: sum("sonde_dropped_total{"),
            probe_secs: sum("sonde_probe_run_seconds_total{"),
            probe_runs: sum("sonde_probe_runs_total{"),
            served: match self.route {
                None => sum("http_server_request_duration_seconds_count{"),
                Some(route) => text
                    .lines()
                    .filter(|l| l.starts_with("http_server_request_duration_seconds_count{"))
                    .filter(|l| l.contains(&format!("http_route=\"{route}\"")))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum(),
            },
            opened: sum("sonde_connections_opened_total"),
            closed: sum("sonde_connections_closed_total"),
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// The discarding OTLP receiver; stopped when dropped.
struct Receiver {
    child: Child,
    grpc: String,
    counted: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Receiver {
    fn start(bin: &Path) -> Result<Receiver> {
        let grpc = format!("127.0.0.1:{}", free_port()?);
        let http = format!("127.0.0.1:{}", free_port()?);
        let mut child = Command::new(bin)
            .args(["--discard", &grpc, &http])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let err = BufReader::new(child.stderr.take().expect("piped"));
        let counted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c = counted.clone();
        std::thread::spawn(move || {
            for l in err.lines().map_while(Result::ok) {
                if let Some(n) = l.strip_prefix("spans received: ") {
                    if let Ok(n) = n.trim().parse() {
                        c.store(n, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        });
        Ok(Receiver {
            child,
            grpc: format!("http://{grpc}"),
            counted,
        })
    }

    /// Spans received (as of its last once-a-second report).
    fn spans(&self) -> f64 {
        self.counted.load(std::sync::atomic::Ordering::Relaxed) as f64
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn wrk(url: &str, conns: u32, secs: u64) -> Result<String> {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--latency",
            url,
        ])
        .output()
        .context("running wrk")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Requests/sec, the 50% and 99% latencies, and the request count.
fn parse_wrk(out: &str) -> Result<Sample> {
    let mut s = Sample::default();
    for l in out.lines() {
        let l = l.trim();
        let mut f = l.split_whitespace();
        match (f.next(), f.next()) {
            (Some("Requests/sec:"), Some(v)) => s.rps = v.parse()?,
            (Some("50.000%" | "50%"), Some(v)) => s.p50_ms = millis(v)?,
            (Some("99.000%" | "99%"), Some(v)) => s.p99_ms = millis(v)?,
            (Some(n), Some("requests")) => s.requests = n.parse()?,
            _ => {}
        }
    }
    if s.rps == 0.0 || s.p99_ms == 0.0 {
        bail!("no throughput or latency in wrk's output");
    }
    Ok(s)
}

/// wrk's `812.00us`, `1.20ms`, `2.01s` in milliseconds.
fn millis(v: &str) -> Result<f64> {
    let (n, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = n.parse()?;
    Ok(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        u => bail!("unknown unit {u:?} in {v:?}"),
    })
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces: state is 3rd.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<f64> {
        f.get(i - 3)
            .context("short /proc/pid/stat")?
            .parse::<f64>()
            .map_err(Into::into)
    };
    Ok(field(14)? + field(15)?)
}

/// Peak resident set size, in KiB.
fn hwm_kib(pid: u32) -> Result<f64> {
    status_kib(pid, "VmHWM:")
}

/// The process's resident memory now (kB).
fn rss_kib(pid: u32) -> Result<f64> {
    status_kib(pid, "VmRSS:")
}

/// A `/proc/<pid>/status` memory line's value (kB).
fn status_kib(pid: u32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

fn clock_ticks() -> Result<f64> {
    let out = Command::new("getconf").arg("CLK_TCK").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// SIGTERM, then SIGKILL after 5 s.
fn stop(child: &mut Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `kernel.bpf_stats_enabled` on for the run, restored when dropped.
struct BpfStats(String);

impl BpfStats {
    const PATH: &'static str = "/proc/sys/kernel/bpf_stats_enabled";

    fn on() -> Result<BpfStats> {
        let old =
            std::fs::read_to_string(Self::PATH).context("reading kernel.bpf_stats_enabled")?;
        std::fs::write(Self::PATH, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(BpfStats(old.trim().to_string()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<TempDir> {
        let d = std::env::temp_dir().join(format!("sonde-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d)?;
        Ok(TempDir(d))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let out = "Running 10s test @ http://127.0.0.1:8080/\n  2 threads and 32 connections\n\
            \x20 Thread Stats   Avg      Stdev     Max   +/- Stdev\n\
            \x20   Latency   420.11us  312.40us  12.01ms   91.02%\n\
            \x20 Latency Distribution\n     50%  352.00us\n     75%  480.00us\n     90%  700.00us\n     99%    1.81ms\n\
            \x20 751234 requests in 10.00s, 590.12MB read\nRequests/sec:  75120.33\nTransfer/sec:     59.01MB\n";
        let s = parse_wrk(out).unwrap();
        assert_eq!(s.requests, 751_234);
        assert!((s.rps - 75_120.33).abs() < 1e-6);
        assert!((s.p50_ms - 0.352).abs() < 1e-9);
        assert!((s.p99_ms - 1.81).abs() < 1e-9);
        assert!(parse_wrk("nothing").is_err());
        assert_eq!(millis("2.5s").unwrap(), 2500.0);
    }

    #[test]
    fn medians_and_spreads() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(spread(&[3.0, 1.0, 2.0], 1), "2.0 [1.0-3.0]");
    }
}
