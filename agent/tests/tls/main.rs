//! TLS suite on the real kernel: OpenSSL's plaintext through uprobes, with
//! real servers and clients from Debian and PyPI. nginx serves HTTPS with a
//! self-signed certificate to curl (parallel transfers in one process) and
//! to Python `requests` (8 threads); PostgreSQL has `ssl = on` and psycopg
//! connects with `sslmode=require` (its wheel bundles its own libssl); a
//! keep-alive HTTPS connection is opened before the agent starts.
//!
//! Needs root; run through `cargo xtask test`.
#[path = "../http/support.rs"]
mod support;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::Instant,
};

use libtest_mimic::{Arguments, Trial};
use sonde_otlp_receiver::{proto::trace::v1::span::SpanKind, ReceivedSpan};
use support::*;

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "the TLS suite needs root to load eBPF programs. Run `sudo -E cargo xtask test`."
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
            t("nginx_https_curl_and_requests_eight_in_flight", || {
                nginx_https(Hooks::Internal)
            }),
            t(
                "nginx_https_probes_at_public_entries_eight_in_flight",
                || nginx_https(Hooks::Public),
            ),
            t("postgres_ssl_on_psycopg_sslmode_require", postgres_ssl),
            t("connection_opened_before_the_agent", preexisting),
            t("go_crypto_tls_server_and_client_eight_in_flight", go_https),
            t("go_crypto_tls_http2_eight_in_flight", go_https_h2),
            t("node_https_server_and_client_eight_in_flight", node_https),
            t("python_stdlib_https_eight_in_flight", python_https),
            t(
                "library_only_in_the_servers_mount_namespace",
                other_mount_namespace,
            ),
        ],
    )
    .exit();
}

/// Where OpenSSL's reads and writes are hooked.
#[derive(Clone, Copy)]
enum Hooks {
    /// At the internal function both public forms call (the default
    /// where found).
    Internal,
    /// At the public functions' entries (`--tls-probes-at-entries`).
    Public,
}

fn kind_of(s: &ReceivedSpan) -> SpanKind {
    SpanKind::try_from(s.span.kind).unwrap_or(SpanKind::Unspecified)
}

/// nginx serving HTTPS on `port`: 200 with the path for everything, 404
/// under /missing.
fn start_nginx(port: u16) -> Proc {
    let dir = tempdir("nginx-tls");
    certificate(&dir);
    nginx(
        &dir,
        port,
        true,
        "location /missing { return 404; } location / { return 200 \"ok $uri\\n\"; }",
    )
}

/// Waits until the agent reports at least `n` TLS library files attached.
fn wait_attached(metrics: &str, n: f64) {
    wait_metric(
        metrics,
        "sonde_tls_libraries_total",
        &["attached"],
        n,
        DEADLINE.as_secs(),
    );
}

fn load(url_prefix: &str, n: usize, in_flight: usize) -> u32 {
    let child = Command::new("python3")
        .arg(fixture("tls/load.py"))
        .args([url_prefix, &n.to_string(), &in_flight.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "load.py failed");
    pid
}

fn service_of_pid(spans: &[ReceivedSpan], pid: u32) -> Vec<&ReceivedSpan> {
    spans.iter().filter(|s| pid_of(s) == pid).collect()
}

/// The exact tree of every request: nginx's SERVER span for each id (path,
/// status, `https`), under the CLIENT span of the one client that sent it
/// (same trace, `url.full` with that id). curl runs 40 transfers, 8 in
/// parallel, in one process; Python `requests` 40 on 8 threads. The very
/// first connection warms the library's probes (the process that maps it
/// is named on its first connection). `hooks`: where reads and writes are
/// hooked in Debian's libssl.
fn nginx_https(hooks: Hooks) {
    const N: usize = 40;
    const IN_FLIGHT: usize = 8;
    let a = agent(match hooks {
        Hooks::Internal => &[],
        Hooks::Public => &["--tls-probes-at-entries"],
    });
    let port = free_port();
    let _nginx = start_nginx(port);
    wait_attached(&a.metrics, 1.0);

    let out = tempdir("curl-out");
    let curl = Command::new("curl")
        .args([
            "-sk",
            "--no-progress-meter",
            "-Z",
            "--parallel-max",
            &IN_FLIGHT.to_string(),
        ])
        .arg(format!("https://127.0.0.1:{port}/c/[0-{}]", N - 1))
        .arg("-o")
        .arg(out.join("#1"))
        .status()
        .expect("curl");
    assert!(curl.success());
    let py = load(&format!("https://127.0.0.1:{port}/p/"), N, IN_FLIGHT);

    let is_server = |s: &ReceivedSpan| s.service() == "nginx" && kind_of(s) == SpanKind::Server;
    // A client span goes out when its response has been read, which can be
    // after the server's span (CI once: the last of the Python client's).
    let (curl_urls, py_urls) = (
        format!("https://127.0.0.1:{port}/c/"),
        format!("https://127.0.0.1:{port}/p/"),
    );
    let is_client = |s: &ReceivedSpan| {
        kind_of(s) == SpanKind::Client
            && s.attr("url.full")
                .is_some_and(|u| u.starts_with(&curl_urls) || u.starts_with(&py_urls))
    };
    let spans = wait_spans(&a.store, |s| {
        s.iter().filter(|x| is_server(x)).count() >= 2 * N
            && s.iter().filter(|x| is_client(x)).count() >= 2 * N
    });
    let servers: HashMap<String, &ReceivedSpan> = spans
        .iter()
        .filter(|s| is_server(s))
        .map(|s| (s.attr("url.path").unwrap_or_default(), s))
        .collect();
    let clients: HashMap<String, &ReceivedSpan> = spans
        .iter()
        .filter(|s| kind_of(s) == SpanKind::Client)
        .filter_map(|s| Some((s.attr("url.full")?, s)))
        .collect();
    for (who, prefix) in [("curl", "c"), ("python3", "p")] {
        for id in 0..N {
            let path = format!("/{prefix}/{id}");
            let srv = servers
                .get(&path)
                .unwrap_or_else(|| panic!("no nginx SERVER span for {path}"));
            assert!(
                srv.span.name.starts_with("GET"),
                "{path}: {}",
                srv.span.name
            );
            assert_eq!(srv.attr("http.request.method").as_deref(), Some("GET"));
            assert_eq!(
                srv.attr("http.response.status_code").as_deref(),
                Some("200")
            );
            assert_eq!(srv.attr("url.scheme").as_deref(), Some("https"), "{path}");
            let url = format!("https://127.0.0.1:{port}{path}");
            let cli = clients.get(&url).unwrap_or_else(|| {
                let mine = format!("/{prefix}/");
                let urls: Vec<_> = clients.keys().filter(|u| u.contains(&mine)).collect();
                panic!(
                    "no CLIENT span for {url}; {} client spans: {urls:?}\n{}",
                    urls.len(),
                    counters(&a.metrics)
                )
            });
            assert!(cli.service().starts_with(who), "{url}: {}", cli.service());
            assert_eq!(
                cli.attr("http.response.status_code").as_deref(),
                Some("200")
            );
            assert_eq!(
                srv.span.parent_span_id, cli.span.span_id,
                "{path} under its client span"
            );
            assert_eq!(srv.span.trace_id, cli.span.trace_id, "{path}");
        }
    }
    // Nothing else came out of the Python client: every span is one of its
    // 40 requests, each once.
    let mine = service_of_pid(&spans, py);
    assert_eq!(mine.len(), N, "python client spans");
    // The kernel reported no ciphertext (nothing opaque) and no plaintext
    // without its socket.
    let text = http_get(&a.metrics, "/metrics").unwrap();
    assert_eq!(
        prom_sum(&text, "sonde_tls_connections_total", &["opaque"]),
        0.0,
        "opaque TLS connections"
    );
    assert!(
        prom_sum(&text, "sonde_tls_connections_total", &["decrypted"]) >= (2 * IN_FLIGHT) as f64
    );
    assert_eq!(
        prom_sum(&text, "sonde_dropped_total", &["tls_no_socket"]),
        0.0
    );
    // Debian's libssl is hooked at the internal functions that both public
    // forms of a read (and of a write) call, which open with an
    // instruction the kernel emulates: those programs ran under more curl
    // transfers, and the public entries' never did; or, asked, the other
    // way round.
    let table = probe_cost_under(2, || {
        let ok = Command::new("curl")
            .args(["-sk", "--no-progress-meter", "-o", "/dev/null", "-Z"])
            .arg(format!("https://127.0.0.1:{port}/cost/[0-15]"))
            .status()
            .expect("curl");
        assert!(ok.success());
    });
    let inner = ["tls_read_inner ", "tls_write_inner "];
    // curl calls `SSL_read` and `SSL_write`.
    let public = ["tls_read ", "tls_write "];
    let (ran, not) = match hooks {
        Hooks::Internal => (inner, public),
        Hooks::Public => (public, inner),
    };
    for name in ran.iter().chain(&["(tls probes) "]) {
        let (runs, ns) = cost_row(&table, name);
        assert!(runs > 0.0 && ns > 0.0, "{name}: {table}");
    }
    let ex = ["tls_read_ex ", "tls_write_ex "];
    let not: &[&str] = match hooks {
        Hooks::Internal => &[not[0], not[1], ex[0], ex[1]],
        Hooks::Public => &not,
    };
    for name in not {
        assert!(
            !table.lines().any(|l| l.starts_with(name)),
            "{name}: {table}"
        );
    }
    eprintln!("{table}");
}

/// PostgreSQL with `ssl = on`, psycopg with `sslmode=require` (the service
/// answers 500 unless its connection is encrypted): every request's query
/// is a DB span under that request's SERVER span, its statement sanitized
/// (the `'hunter2'` literal never leaves), its database known from the
/// startup message read inside TLS.
fn postgres_ssl() {
    const N: usize = 40;
    const IN_FLIGHT: usize = 8;
    let mut cmd = Command::new("python3");
    cmd.arg(demo_file("infra").join("db_servers.py"))
        .env("DB_SERVERS_PG_SSL", "1");
    let (_dbs, line) = Servers::start(cmd);
    let ports: HashMap<String, u16> = serde_json::from_str(&line).unwrap();
    let a = agent(&[]);
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.arg(fixture("tls/pg_service.py"))
        .args([port.to_string(), ports["postgres"].to_string()])
        .env("OTEL_SERVICE_NAME", "pg-tls");
    let svc = ready(cmd);
    let spid = svc.pid();
    let is_query = |s: &ReceivedSpan| {
        pid_of(s) == spid
            && s.attr("db.system.name").as_deref() == Some("postgresql")
            && s.span.name.starts_with("SELECT")
    };
    // psycopg's wheel bundles its own libssl, loaded at import: the service
    // is inspected on its first connection, and its library hooked then.
    // Warm-up requests (each a new connection, thread and database
    // connection) until one's query is read.
    let deadline = Instant::now() + DEADLINE;
    while !a.store.spans().iter().any(is_query) {
        assert!(Instant::now() < deadline, "no query over TLS was ever read");
        let _ = http_get(&format!("127.0.0.1:{port}"), "/q/9999");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let warm = a.store.spans().iter().filter(|x| is_query(x)).count();
    load(&format!("http://127.0.0.1:{port}/q/"), N, IN_FLIGHT);
    let spans = wait_spans(&a.store, |s| {
        s.iter().filter(|x| is_query(x)).count() >= warm + N
    });
    let servers: HashMap<String, &ReceivedSpan> = spans
        .iter()
        .filter(|s| pid_of(s) == spid && kind_of(s) == SpanKind::Server)
        .map(|s| (s.attr("url.path").unwrap_or_default(), s))
        .collect();
    let queries: Vec<&ReceivedSpan> = spans.iter().filter(|s| is_query(s)).collect();
    let (mut nested, mut wrong) = (0, vec![]);
    for id in 0..N {
        let srv = servers
            .get(&format!("/q/{id}"))
            .unwrap_or_else(|| panic!("no SERVER span for /q/{id}"));
        assert_eq!(
            srv.attr("http.response.status_code").as_deref(),
            Some("200"),
            "/q/{id} answered over TLS"
        );
        let under: Vec<_> = queries
            .iter()
            .filter(|q| q.span.parent_span_id == srv.span.span_id)
            .collect();
        match under.as_slice() {
            [q] => {
                assert_eq!(q.span.trace_id, srv.span.trace_id);
                nested += 1;
            }
            [] => {}
            _ => wrong.push(id),
        }
    }
    for q in &queries {
        let text = q.attr("db.query.text").unwrap_or_default();
        assert!(!text.contains("hunter2"), "literal leaked: {text}");
        assert!(text.starts_with("SELECT $1::int AS id"), "{text}");
        assert_eq!(q.attr("db.namespace").as_deref(), Some("sonde"));
        // A parent, if any, is one of the service's requests (the warm-up's
        // too: they share one path, so `servers` keeps only one of them).
        if !q.span.parent_span_id.is_empty() {
            assert!(
                spans.iter().any(|s| pid_of(s) == spid
                    && kind_of(s) == SpanKind::Server
                    && s.span.span_id == q.span.parent_span_id),
                "query under a span that is not a request"
            );
        }
    }
    eprintln!("postgres over TLS, {N} requests, {IN_FLIGHT} in flight: {nested} queries under their request");
    assert!(
        wrong.is_empty(),
        "several queries under one request: {wrong:?}"
    );
    assert_eq!(
        nested, N,
        "every query under its request (thread per request)"
    );
    // The wheel's libssl is the service's own. If it is OpenSSL 3.3 or
    // newer (it exports `SSL_write_ex2`), its writes go at the internal
    // function with the flags argument (`tls_write_flags`); PostgreSQL's
    // (Debian's 3.0) at the one without.
    let maps = std::fs::read_to_string(format!("/proc/{spid}/maps")).unwrap();
    let wheel = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("psycopg_binary") && p.contains("libssl"))
        .expect("psycopg's bundled libssl mapped");
    let bytes = std::fs::read(wheel).unwrap();
    let v3_3 = bytes.windows(14).any(|w| w == b"SSL_write_ex2\0");
    let table = probe_cost_under(2, || {
        load(&format!("http://127.0.0.1:{port}/q/"), 8, IN_FLIGHT);
    });
    let writes: &[&str] = if v3_3 {
        &["tls_write_flags ", "tls_write_inner "]
    } else {
        &["tls_write_inner "]
    };
    for name in writes.iter().chain(&["tls_read_inner "]) {
        let (runs, ns) = cost_row(&table, name);
        assert!(runs > 0.0 && ns > 0.0, "{name} ({wheel}): {table}");
    }
    eprintln!("{wheel}: OpenSSL 3.3+: {v3_3}\n{table}");
}

/// A keep-alive HTTPS connection opened (and used) before the agent
/// starts. Decided: its later requests are traced like any other, from the
/// first whole request the library hands over; nothing else comes out of it
/// (no span from its handshake or from a partial request).
fn preexisting() {
    let port = free_port();
    let _nginx = start_nginx(port);
    let mut client = Command::new("python3")
        .arg(fixture("tls/keepalive_client.py"))
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let cpid = client.id();
    let mut out = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "READY");

    let a = agent(&[]);
    // nginx and the client map the same libssl: found by the startup scan.
    wait_attached(&a.metrics, 1.0);
    writeln!(client.stdin.as_mut().unwrap()).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "DONE same", "one connection for all requests");
    assert!(client.wait().unwrap().success());

    wait_spans(&a.store, |s| {
        s.iter().filter(|x| x.service() == "nginx").count() >= 5
            && service_of_pid(s, cpid).len() >= 5
    });
    // Let anything late arrive before counting exactly (the store only
    // grows).
    std::thread::sleep(std::time::Duration::from_secs(2));
    let spans = a.store.spans();
    let nginx: Vec<_> = spans.iter().filter(|s| s.service() == "nginx").collect();
    let paths: Vec<String> = {
        let mut p: Vec<String> = nginx
            .iter()
            .map(|s| s.attr("url.path").unwrap_or_default())
            .collect();
        p.sort();
        p
    };
    assert_eq!(
        paths,
        (1..=5).map(|k| format!("/pre/{k}")).collect::<Vec<_>>()
    );
    let client_spans = service_of_pid(&spans, cpid);
    assert_eq!(
        client_spans.len(),
        5,
        "one CLIENT span per request after the start"
    );
    for s in &nginx {
        assert_eq!(s.attr("http.response.status_code").as_deref(), Some("200"));
        assert_eq!(s.attr("url.scheme").as_deref(), Some("https"));
        let parent = client_spans
            .iter()
            .find(|c| c.span.span_id == s.span.parent_span_id)
            .expect("stitched to the client's span");
        assert_eq!(
            parent.attr("url.full"),
            Some(format!(
                "https://127.0.0.1:{port}{}",
                s.attr("url.path").unwrap()
            ))
        );
    }
}

/// Go's crypto/tls (HTTPS server and client in one binary, `net/http`,
/// HTTP/1.1), built from Debian's golang-go: see [`exact_pairs`].
fn go_https() {
    let bin = go_build("tls/go_https.go", &tempdir("go-tls"));
    exact_pairs("go-tls", "/g/", || Command::new(&bin));
}

/// Go's default: HTTP/2 negotiated by ALPN, the client's 8 requests in
/// flight multiplexed on one connection (plaintext from the Go TLS probes).
fn go_https_h2() {
    let bin = go_build("tls/go_https.go", &tempdir("go-tls-h2"));
    exact_pairs_over("go-tls-h2", "/g/", "2", || {
        let mut c = Command::new(&bin);
        c.env("GO_HTTPS_H2", "1");
        c
    });
}

/// Node.js (its statically linked OpenSSL, driven through memory BIOs:
/// the event loop, not the library, moves the records).
fn node_https() {
    script_pairs("node-tls", "/n/", "node", "tls/node_https.js");
}

/// Python's standard library (`ssl` over the system libssl, `http.server`,
/// `urllib`). Needs nothing but Python and openssl, so it also runs inside
/// the VM matrix's guests.
fn python_https() {
    script_pairs("py-tls", "/p/", "python3", "tls/py_https.py");
}

/// [`exact_pairs`] for a fixture script run by `interpreter`, its server
/// given a fresh certificate (`TLS_CERT`, `TLS_KEY`).
fn script_pairs(service: &str, prefix: &str, interpreter: &str, script: &str) {
    let dir = tempdir(service);
    certificate(&dir);
    exact_pairs(service, prefix, || {
        let mut c = Command::new(interpreter);
        c.arg(fixture(script));
        c.env("TLS_CERT", dir.join("cert.pem"));
        c.env("TLS_KEY", dir.join("key.pem"));
        c
    });
}

/// A container's view of its libraries: the Python server runs in its own
/// mount namespace, with copies of libssl and libcrypto on a tmpfs at a
/// path that holds no such file on the host (`/mnt`), loaded through
/// `LD_LIBRARY_PATH`. The agent must open that library through the
/// process's `/proc/<pid>/root` to attach to it; the client uses the
/// host's. Then [`exact_pairs`].
fn other_mount_namespace() {
    const SCRIPT: &str = r#"
        if [ "$1" = server ]; then
          exec unshare --mount --propagation private sh -c '
            mount -t tmpfs sonde-test /mnt &&
            cp "$LIBSSL" "$LIBCRYPTO" /mnt/ &&
            LD_LIBRARY_PATH=/mnt exec python3 "$FIXTURE" "$@"' sh "$@"
        fi
        exec python3 "$FIXTURE" "$@""#;
    let dir = tempdir("mntns-tls");
    certificate(&dir);
    // The libraries Python's ssl module links.
    let module = Command::new("python3")
        .args(["-c", "import _ssl; print(_ssl.__file__)"])
        .output()
        .expect("python3");
    let module = String::from_utf8(module.stdout).unwrap();
    let ldd = Command::new("ldd")
        .arg(module.trim())
        .output()
        .expect("ldd");
    let ldd = String::from_utf8(ldd.stdout).unwrap();
    let lib = |name: &str| {
        ldd.lines()
            .find(|l| l.trim_start().starts_with(name))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or_else(|| panic!("_ssl links no {name}: {ldd}"))
            .to_string()
    };
    let (ssl, crypto) = (lib("libssl.so"), lib("libcrypto.so"));
    exact_pairs("mntns-tls", "/p/", || {
        let mut c = Command::new("sh");
        c.args(["-c", SCRIPT, "sh"]);
        c.env("FIXTURE", fixture("tls/py_https.py"));
        c.env("LIBSSL", &ssl).env("LIBCRYPTO", &crypto);
        c.env("TLS_CERT", dir.join("cert.pem"));
        c.env("TLS_KEY", dir.join("key.pem"));
        c
    });
}

/// One HTTPS server and client program (`server PORT` / `client PORT N
/// IN_FLIGHT FIRST`, requests `PREFIX<id>`): 40 requests, 8 in flight,
/// each request's exact pair: the server's SERVER span (`https`, its
/// path, 200) under the client's CLIENT span for that id, in one trace.
/// Warm-up requests (other ids) run until the binary's probes are in.
fn exact_pairs(service: &str, prefix: &str, program: impl Fn() -> Command) {
    exact_pairs_over(service, prefix, "1.1", program)
}

/// The same, with the HTTP version both spans must show.
fn exact_pairs_over(service: &str, prefix: &str, version: &str, program: impl Fn() -> Command) {
    const N: usize = 40;
    const IN_FLIGHT: usize = 8;
    let a = agent(&[]);
    let port = free_port();
    let mut cmd = program();
    cmd.args(["server", &port.to_string()])
        .env("OTEL_SERVICE_NAME", service)
        .stderr(Stdio::null());
    let srv = ready(cmd);
    let client = |n: usize, first: usize| {
        let child = program()
            .args(["client", &port.to_string(), &n.to_string()])
            .args([&IN_FLIGHT.to_string(), &first.to_string()])
            .spawn()
            .expect("HTTPS client");
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{service} client failed");
        pid
    };
    let is_server = |s: &ReceivedSpan| pid_of(s) == srv.pid() && kind_of(s) == SpanKind::Server;
    let deadline = Instant::now() + DEADLINE;
    let mut warm = 1000;
    while !a.store.spans().iter().any(is_server) {
        assert!(
            Instant::now() < deadline,
            "no {service} TLS request was ever read"
        );
        client(1, warm);
        warm += 1;
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let cpid = client(N, 0);
    // No panic at the deadline: the checks below name what is missing.
    let spans = settle(&a.store, |s| {
        s.iter()
            .filter(|x| is_server(x) && x.attr("url.path").is_some_and(|p| p.len() < 6))
            .count()
            >= N
            && service_of_pid(s, cpid).len() >= N
    });
    let servers: HashMap<String, &ReceivedSpan> = spans
        .iter()
        .filter(|s| is_server(s))
        .map(|s| (s.attr("url.path").unwrap_or_default(), s))
        .collect();
    let clients: HashMap<String, &ReceivedSpan> = service_of_pid(&spans, cpid)
        .into_iter()
        .filter_map(|s| Some((s.attr("url.full")?, s)))
        .collect();
    for id in 0..N {
        let path = format!("{prefix}{id}");
        let srv = servers.get(&path).unwrap_or_else(|| {
            let mut have: Vec<_> = servers.keys().collect();
            have.sort();
            panic!(
                "no {service} SERVER span for {path}; {}; server spans for {have:?}",
                counters(&a.metrics)
            )
        });
        assert_eq!(srv.attr("url.scheme").as_deref(), Some("https"), "{path}");
        assert_eq!(
            srv.attr("http.response.status_code").as_deref(),
            Some("200")
        );
        let url = format!("https://127.0.0.1:{port}{path}");
        let cli = clients.get(&url).unwrap_or_else(|| {
            panic!(
                "no {service} CLIENT span for {url}; {} client spans; {}",
                clients.len(),
                counters(&a.metrics)
            )
        });
        assert_eq!(
            srv.span.parent_span_id,
            cli.span.span_id,
            "{path} under its client span; server {:?}; client {:?}; {}",
            srv.span.attributes,
            cli.span.attributes,
            counters(&a.metrics)
        );
        assert_eq!(srv.span.trace_id, cli.span.trace_id, "{path}");
        for s in [srv, cli] {
            assert_eq!(
                s.attr("network.protocol.version").as_deref(),
                Some(version),
                "{path}"
            );
        }
    }
    assert_eq!(clients.len(), N, "one CLIENT span per request");
    // Every socket's tuple came from the kernel, a Node.js server's too
    // (libuv accepts without a sockaddr, 8 at once here): a /proc lookup
    // can come after the socket closed, and its requests then stitch to
    // nothing.
    let text = http_get(&a.metrics, "/metrics").unwrap_or_default();
    assert_eq!(
        prom_sum(&text, "sonde_proc_socket_lookups_total", &[]),
        0.0,
        "{}",
        counters(&a.metrics)
    );
}

/// The agent's TLS, drop and pairing counters that are not 0.
fn counters(metrics: &str) -> String {
    let text = http_get(metrics, "/metrics").unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("sonde_") && !l.ends_with(" 0"))
        .filter(|l| {
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            [
                "tls",
                "dropped",
                "unpaired",
                "partner",
                "unresolved",
                "proc_socket",
                "ambiguous",
                "connections",
            ]
            .iter()
            .any(|k| name.contains(k))
        })
        .collect();
    lines.join("\n")
}
