//! `sonde top` on a real terminal (tmux, 80x24) against a known load: two
//! services and a database, with one deliberately slow dependency. The
//! shop service (`fixtures/top_shop.py`) asks the stock service for each
//! item (fast), then runs a query PostgreSQL answers in 50 ms. The screen,
//! read with `tmux capture-pane`, must show both services at the rate the
//! load ran, the edges to stock and to PostgreSQL, PostgreSQL taking most
//! of the shop's downstream time, and a trace's tree when one is opened;
//! the same through `--connect` against a running `sonde run`; and clear
//! errors without a terminal or an agent.
//!
//! Needs root and tmux; run through `cargo xtask test`.
#[path = "../http/support.rs"]
mod support;

use std::{
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use libtest_mimic::{Arguments, Trial};
use support::*;

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "the top suite needs root to load eBPF programs. Run `sudo -E cargo xtask test`."
        );
        std::process::exit(1);
    }
    let t = |name: &'static str, f: fn()| {
        Trial::test(name, move || {
            f();
            Ok(())
        })
    };
    let trials = vec![
        t(
            "top_shows_services_edges_and_the_slow_dependency",
            top_local,
        ),
        t("top_connect_reads_a_running_agent", top_connect),
        t(
            "top_refuses_clearly_without_a_terminal_or_an_agent",
            top_refuses,
        ),
    ];
    libtest_mimic::run(&args, trials).exit();
}

/// A tmux server of its own (no user config, UTF-8) with one 80x24 pane.
struct Tmux {
    socket: String,
    dir: std::path::PathBuf,
}

impl Tmux {
    /// Runs `args` (sonde's) in the pane; its exit status and stderr land
    /// in files, and the pane stays so that they can be read.
    fn start(name: &str, args: &[&str], env: &[(&str, String)]) -> Tmux {
        let socket = format!("sonde-{name}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&socket);
        std::fs::create_dir_all(&dir).unwrap();
        let mut line = String::from("env");
        for (k, v) in env {
            line.push_str(&format!(" {k}='{v}'"));
        }
        line.push_str(&format!(" '{}'", env!("CARGO_BIN_EXE_sonde")));
        for a in args {
            line.push_str(&format!(" '{a}'"));
        }
        line.push_str(&format!(
            " 2>'{0}/stderr'; echo $? >'{0}/status'; sleep 600",
            dir.display()
        ));
        let ok = Command::new("tmux")
            .args(["-u", "-f", "/dev/null", "-L", &socket, "new-session", "-d"])
            .args(["-x", "80", "-y", "24", "-s", "top"])
            .arg(&line)
            .env("TERM", "xterm-256color")
            .env("LANG", "C.UTF-8")
            .status()
            .expect("tmux is installed by `cargo xtask test`");
        assert!(ok.success(), "tmux new-session: {ok}");
        Tmux { socket, dir }
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "top"])
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            self.tmux(&["send-keys", "-t", "top", k]);
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The screen once `ok` holds for it; panics with the last screen.
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + DEADLINE;
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < end,
                "{what}: the screen never showed it:\n{s}\nstderr: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn status(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("status"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    fn wait_exit(&self) -> i32 {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.status() {
                return s;
            }
            assert!(
                Instant::now() < end,
                "sonde top did not exit:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.tmux(&["kill-server"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The system under test: stock, and shop calling stock and PostgreSQL.
struct Shop {
    addr: String,
    pg_port: u16,
    _procs: (Servers, Proc, Proc),
}

fn shop() -> Shop {
    let (dbs, ports) = server_script("db_servers.py");
    let pg_port = ports["postgres"];
    let stock_port = free_port();
    let stock = python_server(stock_port, "stock");
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.arg(fixture("top_shop.py"))
        .args([
            port.to_string(),
            stock_port.to_string(),
            pg_port.to_string(),
        ])
        .env("OTEL_SERVICE_NAME", "shop");
    let shop = ready(cmd);
    Shop {
        addr: format!("127.0.0.1:{port}"),
        pg_port,
        _procs: (dbs, stock, shop),
    }
}

/// Four clients buying in a loop until dropped; remembers when each
/// request finished, for the rate the screen should show.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<Mutex<Vec<Instant>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(Mutex::new(vec![]));
        let threads = (0..4)
            .map(|c| {
                let (stop, done, addr) = (stop.clone(), done.clone(), addr.to_string());
                std::thread::spawn(move || {
                    let mut i = 0;
                    while !stop.load(Relaxed) {
                        let body = http_get(&addr, &format!("/buy/{c}-{i}")).unwrap_or_default();
                        if body.contains("bought") {
                            done.lock().unwrap().push(Instant::now());
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Load {
            stop,
            done,
            threads,
        }
    }

    /// Requests per second over the last 10 s.
    fn rate(&self) -> f64 {
        let since = Instant::now() - Duration::from_secs(10);
        self.done
            .lock()
            .unwrap()
            .iter()
            .filter(|t| **t >= since)
            .count() as f64
            / 10.0
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A duration as `sonde top` prints it (`0.42ms`, `12.3ms`, `123ms`, `1.23s`).
fn ms(s: &str) -> f64 {
    if let Some(v) = s.strip_suffix("ms") {
        v.parse().unwrap_or(f64::NAN)
    } else if let Some(v) = s.strip_suffix('s') {
        v.parse::<f64>().map(|v| v * 1000.0).unwrap_or(f64::NAN)
    } else {
        f64::NAN
    }
}

/// The services table row of `name`, split on blanks (the selection
/// marker `>` removed).
fn row<'a>(screen: &'a str, name: &str) -> Option<Vec<&'a str>> {
    screen
        .lines()
        .map(|l| l.trim_start_matches('>').trim_start())
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(|l| l.split_whitespace().collect())
}

/// The services screen shows shop and stock near the load's rate, and
/// PostgreSQL as most of shop's downstream time.
fn check_services(screen: &str, load: &Load) {
    let shop = row(screen, "shop").unwrap();
    let stock = row(screen, "stock").unwrap();
    // SERVICE REQ/S ERR% P50 P95 P99 SELF DOWN SHARE% PEER...
    let actual = load.rate();
    for (what, r) in [("shop", &shop), ("stock", &stock)] {
        let shown: f64 = r[1].parse().unwrap();
        assert!(
            actual > 5.0 && (shown - actual).abs() <= actual * 0.4,
            "{what}: {shown} req/s shown, {actual} measured by the load\n{screen}"
        );
        assert_eq!(r[2], "0.0", "{what}: no errors\n{screen}");
    }
    let (p50, own, down) = (ms(shop[3]), ms(shop[6]), ms(shop[7]));
    assert!(
        p50 >= 50.0,
        "shop p50 covers the 50 ms query: {p50}\n{screen}"
    );
    assert!(
        down >= 50.0 && down > 3.0 * own,
        "shop's time is downstream: self {own} ms, downstream {down} ms\n{screen}"
    );
    let share: f64 = shop[8].trim_end_matches('%').parse().unwrap();
    assert!(
        shop[9].starts_with("postgres") && share >= 80.0,
        "PostgreSQL dominates shop's downstream time: {shop:?}\n{screen}"
    );
    assert!(ms(stock[3]) < 25.0, "stock is fast: {stock:?}\n{screen}");
}

fn both_rows(s: &str) -> bool {
    row(s, "shop").is_some_and(|r| r.len() >= 10) && row(s, "stock").is_some()
}

fn top_local() {
    let sys = shop();
    let metrics = format!("127.0.0.1:{}", free_port());
    let tmux = Tmux::start(
        "local",
        &[
            "top",
            "--prometheus-listen",
            &metrics,
            "--view-listen",
            "off",
        ],
        &[("SONDE_LOG", "info".into())],
    );
    tmux.wait_for("the screen", |s| s.contains("sonde top · local"));
    let load = Load::start(&sys.addr);
    // A full rate window of load first.
    std::thread::sleep(Duration::from_secs(12));
    let screen = tmux.wait_for("shop and stock", both_rows);
    eprintln!("{screen}");
    check_services(&screen, &load);
    assert!(
        screen.lines().next().unwrap().contains("services"),
        "{screen}"
    );
    assert!(
        screen
            .lines()
            .nth(23)
            .unwrap_or_default()
            .contains("q quit"),
        "{screen}"
    );

    tmux.keys(&["2"]);
    let pg = format!("postgresql 127.0.0.1:{}", sys.pg_port);
    let edges = tmux.wait_for("the edges", |s| {
        s.contains("SERVER / PEER") && s.contains(&pg)
    });
    eprintln!("{edges}");
    let line = |peer: &str| {
        edges
            .lines()
            .map(|l| l.trim_start_matches('>').trim_start())
            .find(|l| l.starts_with("shop") && l.contains(peer))
            .unwrap_or_else(|| panic!("no edge shop -> {peer}:\n{edges}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let to_pg = line(&pg);
    // CLIENT SERVER... REQ/S ERR% P50 P99: the peer's name has two words.
    assert!(ms(to_pg[5]) >= 50.0, "the slow edge: {to_pg:?}\n{edges}");
    let to_stock = line(" stock ");
    assert!(
        ms(to_stock[4]) < 25.0,
        "the fast edge: {to_stock:?}\n{edges}"
    );

    // Shop's traces, then the first (slowest) opened as a waterfall.
    tmux.keys(&["1", "/", "s", "h", "o", "p", "Enter", "Enter"]);
    tmux.wait_for("shop's traces", |s| {
        s.contains("LISTED") && s.contains("service: shop") && row(s, "shop").is_some()
    });
    tmux.keys(&["Enter"]);
    let tree = tmux.wait_for("a trace's tree", |s| {
        s.contains(" trace ") && s.contains("TIME LINE")
    });
    eprintln!("{tree}");
    let spans: Vec<&str> = tree
        .lines()
        .skip(4)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let at = |needle: &str| {
        let i = spans
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} in the tree:\n{tree}"));
        // Depth: the indentation before the service name.
        let l = spans[i].trim_start_matches('>');
        (i, l.len() - l.trim_start().len())
    };
    let request = at("shop GET /buy/");
    let call = at("shop GET /items/");
    let served = at("stock GET /items/");
    let query = at("shop SELECT");
    assert!(
        call.1 > request.1 && query.1 > request.1,
        "the calls under the request:\n{tree}"
    );
    assert!(
        served.1 > call.1 && served.0 == call.0 + 1,
        "stock's span under the call:\n{tree}"
    );
    assert!(
        request.0 < call.0 && call.0 < query.0,
        "in start order:\n{tree}"
    );

    tmux.keys(&["Escape", "q"]);
    assert_eq!(tmux.wait_exit(), 0, "q exits cleanly: {}", tmux.stderr());
    drop(load);
}

fn top_connect() {
    let sys = shop();
    let view = format!("127.0.0.1:{}", free_port());
    let _agent = agent(&["--view-listen", &view]);
    let load = Load::start(&sys.addr);
    let tmux = Tmux::start("connect", &["top", "--connect", &view], &[]);
    // The agent's view takes in spans from the first read on.
    tmux.wait_for("the screen", |s| s.contains(&format!("sonde top · {view}")));
    std::thread::sleep(Duration::from_secs(12));
    let screen = tmux.wait_for("shop and stock", both_rows);
    eprintln!("{screen}");
    check_services(&screen, &load);
    tmux.keys(&["q"]);
    assert_eq!(tmux.wait_exit(), 0, "{}", tmux.stderr());
}

fn top_refuses() {
    // Not a terminal.
    let out = Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args(["top", "--connect", "127.0.0.1:9"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("stdout is not one") && err.contains("--stdout-format"),
        "{err}"
    );
    // No agent at the address: said before the screen is taken.
    let nobody = format!("127.0.0.1:{}", free_port());
    let tmux = Tmux::start("refused", &["top", "--connect", &nobody], &[]);
    assert_eq!(tmux.wait_exit(), 1, "{}", tmux.screen());
    let err = tmux.stderr();
    assert!(
        err.contains(&format!("cannot reach the agent at http://{nobody}"))
            && err.contains("--view-listen"),
        "{err}"
    );
}
