//! Running sonde, the servers and the receiver: shared by the HTTP, DB and
//! AMQP suites, none of which uses every helper.
#![allow(dead_code)]
use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use sonde_otlp_receiver::{ReceivedSpan, Receiver, Store};

/// Turns a hang into a failure; never an assertion on speed.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    /// SIGTERM first, so servers like nginx take their workers down with
    /// them; SIGKILL if that has not worked after a while.
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn receiver(rt: &tokio::runtime::Runtime, store: Arc<Store>, grpc: u16, http: u16) -> Receiver {
    rt.block_on(Receiver::start(
        SocketAddr::from(([127, 0, 0, 1], grpc)),
        SocketAddr::from(([127, 0, 0, 1], http)),
        store,
    ))
    .expect("receiver binds")
}

/// Starts `sonde run` with `env`, returning once its probes are attached.
pub fn sonde(args: &[&str], env: &[(&str, String)]) -> Proc {
    start_sonde(args, env, Stdio::null())
}

/// Like [`sonde`], with its stdout (the span printer) readable.
pub fn sonde_printing(
    args: &[&str],
    env: &[(&str, String)],
) -> (Proc, BufReader<std::process::ChildStdout>) {
    let mut p = start_sonde(args, env, Stdio::piped());
    let out = BufReader::new(p.0.stdout.take().unwrap());
    (p, out)
}

fn start_sonde(args: &[&str], env: &[(&str, String)], stdout: Stdio) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sonde"));
    let log = std::env::var("SONDE_TEST_AGENT_LOG_FILTER").unwrap_or_else(|_| "info".into());
    cmd.arg("run")
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .env("SONDE_LOG", log);
    // The defaults under test must not be overridden by the caller's environment.
    for k in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn sonde");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut l = String::new();
        if err.read_line(&mut l).unwrap() == 0 {
            panic!("sonde exited before capturing:\n{seen}");
        }
        seen.push_str(&l);
        if l.contains("capturing;") {
            break;
        }
    }
    assert!(
        !seen.contains('\x1b'),
        "colour codes in a log that is not a terminal:\n{seen}"
    );
    for line in [
        "is capturing",
        "\n  probes   ",
        "\n  traced   ",
        "\n  spans    ",
        "\n  metrics  ",
        "\n  tls      ",
    ] {
        assert!(
            seen.contains(line),
            "no {line:?} in the status block:\n{seen}"
        );
    }
    // Keep draining stderr so sonde never blocks on a full pipe; with
    // SONDE_TEST_AGENT_LOG=<file> the agent's log is kept there.
    let keep = std::env::var_os("SONDE_TEST_AGENT_LOG")
        .map(|p| std::fs::File::create(p).expect("agent log file"));
    std::thread::spawn(move || {
        let mut keep = keep;
        for l in err.lines().map_while(Result::ok) {
            if let Some(f) = keep.as_mut() {
                use std::io::Write;
                let _ = writeln!(f, "{l}");
            }
        }
    });
    Proc(child)
}

/// Starts the Python fixture server with a service name; waits for READY.
pub fn python_server(port: u16, service: &str) -> Proc {
    let mut child = Command::new("python3")
        .arg(fixture("http_server.py"))
        .arg(port.to_string())
        .env("OTEL_SERVICE_NAME", service)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut l = String::new();
    out.read_line(&mut l).unwrap();
    assert_eq!(l.trim(), "READY");
    Proc(child)
}

/// One request as the client saw it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub start: u64,
    pub end: u64,
    pub traceparent: Option<String>,
    pub req_body: u64,
    pub resp_body: u64,
}

/// Runs the keep-alive client to completion; returns its pid and calls.
pub fn python_client(port: u16, n: usize) -> (u32, Vec<Call>) {
    let child = Command::new("python3")
        .arg(fixture("http_client.py"))
        .args([port.to_string(), n.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "client failed");
    let calls = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (pid, calls)
}

/// Waits until `pred` holds for the received spans.
pub fn wait_spans(
    store: &Store,
    mut pred: impl FnMut(&[ReceivedSpan]) -> bool,
) -> Vec<ReceivedSpan> {
    let end = Instant::now() + DEADLINE;
    loop {
        let spans = store.spans();
        if pred(&spans) {
            return spans;
        }
        if Instant::now() > end {
            let lines: Vec<String> = spans
                .iter()
                .map(|s| {
                    format!(
                        "{:<12} {:?} {:<28} trace={} span={} parent={}",
                        s.service(),
                        s.span.kind,
                        s.span.name,
                        &hex(&s.span.trace_id)[..8],
                        &hex(&s.span.span_id)[..8],
                        hex(&s.span.parent_span_id).get(..8).unwrap_or("-")
                    )
                })
                .collect();
            panic!(
                "spans never matched; have {}:\n{}",
                spans.len(),
                lines.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn pid_of(s: &ReceivedSpan) -> u32 {
    s.resource
        .get("process.pid")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// GET over a fresh connection, returning the body.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// A file of the demo system (`demo/`), which the suites share.
pub fn demo_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../demo")
        .join(name)
}

/// Runs an infrastructure script of the demo (`demo/infra/`) that prints
/// one JSON line (ports), then serves until its stdin closes (when the
/// returned guard is dropped).
pub fn server_script(path: &str) -> (Servers, std::collections::HashMap<String, u16>) {
    let mut cmd = Command::new("python3");
    cmd.arg(demo_file("infra").join(path));
    let (servers, line) = Servers::start(cmd);
    let ports = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{path}: {e}: {line:?}"));
    (servers, ports)
}

/// A script that starts servers (`demo/infra/*.py`, `demo.py`) and stops
/// them when its stdin closes, in a process group of its own. Dropped (at
/// the end of a test or while a failing one unwinds) it closes that stdin
/// and waits for the script; whatever is still in the group after that
/// gets SIGKILL (the script's servers get its parent-death signals).
pub struct Servers(Child);

impl Servers {
    /// Starts `cmd` and returns with its first line of output.
    pub fn start(mut cmd: Command) -> (Servers, String) {
        use std::os::unix::process::CommandExt;
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("python3");
        // Guarded before reading: a script failing to start is stopped too.
        let mut servers = Servers(child);
        let mut line = String::new();
        BufReader::new(servers.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        (servers, line)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let pid = self.0.id() as i32;
        // The demo's docker mode takes longest: containers, then two scripts.
        let end = Instant::now() + Duration::from_secs(90);
        while Instant::now() < end && !exited(pid) {
            std::thread::sleep(Duration::from_millis(100));
        }
        // Not reaped yet, the script's pid (the group's id) cannot have been reused.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// Whether a child has exited, without reaping it.
fn exited(pid: i32) -> bool {
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    r != 0 || unsafe { info.si_pid() } != 0
}

/// Starts a fixture command that prints READY once serving.
pub fn ready(mut cmd: Command) -> Proc {
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("python3");
    let mut l = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut l)
        .unwrap();
    assert_eq!(l.trim(), "READY", "{cmd:?}");
    Proc(child)
}

/// Sum of a Prometheus series' samples, over the lines that start with
/// `name` and contain every needle.
pub fn prom_sum(text: &str, name: &str, needles: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (up to `secs`) until the agent's `/metrics` at `metrics` sum
/// `name` (lines with every one of `needles`) to at least `n`; on time out,
/// fails showing the `name` lines.
pub fn wait_metric(metrics: &str, name: &str, needles: &[&str], n: f64, secs: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let text = http_get(metrics, "/metrics").unwrap_or_default();
        let got = prom_sum(&text, name, needles);
        if got >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}{needles:?} is {got}, not {n}:\n{}",
            text.lines()
                .filter(|l| l.starts_with(name))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A test receiver and an agent exporting to it (fast batches), with the
/// agent's Prometheus address. Everything stops on drop.
pub struct Agent {
    pub store: Arc<Store>,
    pub metrics: String,
    _sonde: Proc,
    _recv: Receiver,
    _rt: tokio::runtime::Runtime,
}

pub fn agent(extra: &[&str]) -> Agent {
    let rt = runtime();
    let store = Arc::new(Store::default());
    let recv = receiver(&rt, store.clone(), 0, 0);
    let env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", recv.grpc_addr.port()),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ];
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["--prometheus-listen", metrics.as_str()];
    args.extend_from_slice(extra);
    let sonde = sonde(&args, &env);
    Agent {
        store,
        metrics,
        _sonde: sonde,
        _recv: recv,
        _rt: rt,
    }
}

/// nginx (Debian's nginx-light) on 127.0.0.1:`port`, from directory `dir`,
/// with `server` as the body of its one server block after the listen
/// directive (`ssl` adds TLS with `dir`'s cert.pem and key.pem); returns
/// once it listens.
pub fn nginx(dir: &Path, port: u16, ssl: bool, server: &str) -> Proc {
    nginx_listening(dir, port, if ssl { "ssl" } else { "" }, server)
}

/// The same, with `params` after the listen address (`ssl`, `http2`, both).
pub fn nginx_listening(dir: &Path, port: u16, params: &str, server: &str) -> Proc {
    let d = dir.display();
    let listen = if params.contains("ssl") {
        format!("listen 127.0.0.1:{port} {params}; ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;")
    } else {
        format!("listen 127.0.0.1:{port} {params};")
    };
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "daemon off; pid {d}/nginx.pid; error_log stderr; worker_processes 2;\nevents {{}}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
             uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ {listen} {server} }} }}\n"
        ),
    )
    .unwrap();
    let nginx = Proc(
        Command::new("nginx")
            .args(["-c", &format!("{d}/nginx.conf"), "-p", &d.to_string()])
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (Debian package nginx-light)"),
    );
    let deadline = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    nginx
}

/// Builds Go fixture `source` into `dir` with Debian's golang-go, offline
/// (`GO111MODULE=off` against Debian's Go libraries); returns the binary.
pub fn go_build(source: &str, dir: &Path) -> PathBuf {
    let name = Path::new(source).file_stem().unwrap().to_owned();
    let bin = dir.join(name);
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(fixture(source))
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", dir.join("cache"))
        .status()
        .expect("go (golang-go) is installed by `cargo xtask test`");
    assert!(built.success(), "go build {source}: {built}");
    bin
}

/// A self-signed certificate and key in `dir` (cert.pem, key.pem).
pub fn certificate(dir: &Path) {
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(ok.success());
}

/// Waits until `pred` holds for the received spans, or the deadline
/// passes; returns the spans either way (the checks after it name what
/// is missing).
pub fn settle(store: &Store, mut pred: impl FnMut(&[ReceivedSpan]) -> bool) -> Vec<ReceivedSpan> {
    let end = Instant::now() + DEADLINE;
    loop {
        let spans = store.spans();
        if pred(&spans) || Instant::now() > end {
            return spans;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An empty directory `sonde-<name>-<pid>` under the temporary directory.
pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sonde-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `sonde probe-cost --seconds {seconds}` while `load` runs again and
/// again (the window needs traffic), and returns its table; it must exit 0.
pub fn probe_cost_under(seconds: u32, mut load: impl FnMut()) -> String {
    let mut cost = Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args(["probe-cost", "--seconds", &seconds.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while cost.try_wait().unwrap().is_none() {
        load();
    }
    let out = cost.wait_with_output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    table
}

/// Runs per second and ns per run of the row of a `probe-cost` table whose
/// name starts with `name` (names fill 16 columns).
pub fn cost_row(table: &str, name: &str) -> (f64, f64) {
    let l = table
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} row:\n{table}"));
    let n: Vec<f64> = l
        .get(16..)
        .unwrap_or_default()
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    (n[0], n[1])
}
