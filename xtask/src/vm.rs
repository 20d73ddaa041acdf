//! `cargo xtask vm-test`: the privileged suites inside qemu, on a matrix of
//! Debian kernels (or local vmlinuz files).
//!
//! - Kernels come from Debian with `apt-get download`, against the
//!   repository's own sources list (`xtask/vm/sources.list`) and apt state
//!   under the cache, never the system's apt configuration.
//! - The guest boots a self-contained initramfs: busybox, an init script,
//!   the test binaries and `sonde` at their host paths, the shared libraries
//!   they load, and a trimmed Python for the HTTP fixtures. No disk, no
//!   network beyond loopback, no modules (everything used is built in).
//! - KVM is used while it works; once it fails in any way (qemu aborts or
//!   exits before the guest starts, the guest prints nothing in time, qemu
//!   reports a KVM error) the run goes on with single-threaded TCG. See
//!   `accel` and `--accel`.
//! - The console is parsed for libtest's lines and the init's markers; a
//!   panic or a timeout ends that kernel's row without wedging the run.
mod accel;
mod initramfs;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

pub use self::accel::Accel;
use self::accel::End;
use crate::{run, toolchain};

/// The default matrix: (apt suite, package).
pub const DEFAULT_KERNELS: [&str; 3] = [
    "bullseye:linux-image-cloud-amd64",
    "bookworm:linux-image-amd64",
    "bookworm-backports:linux-image-amd64",
];

/// What runs in the guest: (suite, test binary arguments). From the capture
/// suite: plain, vectored, message and batched-message I/O, io_uring (the
/// kprobe path on kernels that have kprobes), the payload prefix, the drop
/// counter, and doctor (every program loads, the probe strategy); from the
/// HTTP suite, the span test; from the TLS suite, the one that needs only Python and
/// openssl. The rest of the capture suite adds little per kernel and costs minutes each
/// under TCG.
const SUITES: [(&str, &[&str]); 3] = [
    (
        "capture",
        &[
            "--skip=sendto_recvfrom",
            "--skip=sendfile_reports_bytes_and_timing",
            "--skip=quiet_connection_keeps_counts_without_payload",
            "--skip=accept_without_sockaddr_still_gets_its_tuple",
            "--skip=connection_opened_before_agent",
            "--skip=agent_traffic_is_not_reported",
            "--skip=pid_filter_limits_capture",
            "--skip=capture_cli_shows_curl_against_python_http_server",
        ],
    ),
    (
        "http",
        &["--exact", "python_keepalive_spans_metrics_and_traceparent"],
    ),
    // TLS plaintext through uprobes on the guest's libssl: Python's ssl
    // module, server and client, exact pairs.
    ("tls", &["--exact", "python_stdlib_https_eight_in_flight"]),
];

/// Per-kernel time limit, TCG being slow.
const GUEST_TIMEOUT: Duration = Duration::from_secs(60 * 60);

fn cache() -> PathBuf {
    toolchain::cache_dir().join("vm")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// apt-get/apt-cache with the repository's sources list and private state.
fn apt(tool: &str) -> Command {
    let state = cache().join("apt");
    let mut c = Command::new(tool);
    for (k, v) in [
        ("Dir::Etc::SourceList", repo().join("xtask/vm/sources.list")),
        ("Dir::Etc::SourceParts", PathBuf::from("/dev/null")),
        ("Dir::State::Lists", state.join("lists")),
        ("Dir::State::status", state.join("status")),
        ("Dir::Cache", state.join("cache")),
    ] {
        c.arg("-o").arg(format!("{k}={}", v.display()));
    }
    c
}

/// A kernel of the matrix: its name in the table and its vmlinuz.
struct Kernel {
    name: String,
    vmlinuz: PathBuf,
}

fn fetch(spec: &str, updated: &mut bool) -> Result<Kernel> {
    if Path::new(spec).is_file() {
        return Ok(Kernel {
            name: spec.to_string(),
            vmlinuz: PathBuf::from(spec),
        });
    }
    let (suite, package) = spec
        .split_once(':')
        .with_context(|| format!("kernel spec {spec:?}: want SUITE:PACKAGE or a vmlinuz path"))?;
    let state = cache().join("apt");
    if !*updated {
        for d in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(state.join(d))?;
        }
        std::fs::write(state.join("status"), "")?;
        eprintln!("xtask: apt-get update (xtask/vm/sources.list)");
        run::sh(apt("apt-get").args(["-q", "update"]).stdout(Stdio::null()))
            .context("apt-get update for the kernel matrix")?;
        *updated = true;
    }
    // A metapackage (linux-image-amd64) names the versioned image it depends on.
    let depends = String::from_utf8(
        apt("apt-cache")
            .args(["depends", &format!("{package}/{suite}")])
            .output()?
            .stdout,
    )?;
    let image = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|d| d.starts_with("linux-image-"))
        .unwrap_or(package)
        .to_string();
    let dir = cache().join("kernels").join(&image);
    let vmlinuz_of = |dir: &Path| -> Option<PathBuf> {
        std::fs::read_dir(dir.join("boot"))
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
    };
    if let Some(v) = vmlinuz_of(&dir) {
        return Ok(Kernel {
            name: format!("{suite} {image}"),
            vmlinuz: v,
        });
    }
    std::fs::create_dir_all(&dir)?;
    eprintln!("xtask: downloading {image} ({suite})");
    run::sh(
        apt("apt-get")
            .args(["-q", "download", &format!("{image}/{suite}")])
            .current_dir(&dir)
            .stdout(Stdio::null()),
    )?;
    let deb = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("no .deb downloaded")?;
    // Only the kernel image: the guest loads no modules.
    let tar = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(&deb)
        .stdout(Stdio::piped())
        .spawn()?;
    run::sh(
        Command::new("tar")
            .args(["-x", "--wildcards", "./boot/vmlinuz-*"])
            .current_dir(&dir)
            .stdin(tar.stdout.context("dpkg-deb stdout")?),
    )?;
    std::fs::remove_file(&deb)?;
    let v = vmlinuz_of(&dir).context("no vmlinuz in the package")?;
    Ok(Kernel {
        name: format!("{suite} {image}"),
        vmlinuz: v,
    })
}

/// Test binaries by suite, built (not run) by cargo, and the `sonde` they
/// run. Paths come from cargo: the target directory may be anywhere
/// (CARGO_TARGET_DIR), and the tests run sonde at its compiled-in path.
fn build_tests() -> Result<(BTreeMap<String, PathBuf>, PathBuf)> {
    run::build(false)?;
    let mut c = run::cargo();
    c.args([
        "test",
        "--no-run",
        "--package",
        "sonde",
        "--message-format=json",
    ]);
    for (suite, _) in SUITES {
        c.args(["--test", suite]);
    }
    let out = c.stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let (mut bins, mut sonde) = (BTreeMap::new(), None);
    for line in String::from_utf8(out.stdout)?.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(exe), Some(name)) = (v["executable"].as_str(), v["target"]["name"].as_str()) {
            if SUITES.iter().any(|(s, _)| *s == name) {
                bins.insert(name.to_string(), PathBuf::from(exe));
            } else if name == "sonde"
                && v["target"]["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "bin"))
            {
                sonde = Some(PathBuf::from(exe));
            }
        }
    }
    Ok((bins, sonde.context("cargo reported no sonde binary")?))
}

/// What a run asks of the guest beyond the defaults.
#[derive(Default)]
pub struct Options {
    /// Only these suites (all when empty).
    pub suites: Vec<String>,
    /// Only tests whose name contains this (all when `None`).
    pub test: Option<String>,
    /// Keep each agent's debug log and print it on the console after a
    /// failing suite (lines prefixed `SONDE-VM-LOG`).
    pub agent_log: bool,
    /// KVM, TCG, or KVM falling back to TCG.
    pub accel: Accel,
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(cmd))
            .find(|p| p.is_file())
    })
}

/// One kernel's results.
#[derive(Default)]
struct Row {
    release: String,
    accel: &'static str,
    tests: BTreeMap<String, String>,
    suites: BTreeMap<String, String>,
    probes: String,
    failure: Option<String>,
    /// Under KVM: why the boot failed because of KVM (to be retried under TCG).
    kvm_failure: Option<String>,
    secs: u64,
}

/// A line from qemu: the guest's console (stdout) or qemu's own (stderr).
enum Output {
    Console(String),
    Qemu(String),
}

/// Boots one kernel and parses its console.
fn boot(k: &Kernel, initrd: &Path, accel: &'static str) -> Result<Row> {
    // How long to wait for the init's first marker before deciding the guest hangs.
    let first_line = Duration::from_secs(if accel == "kvm" { 60 } else { 600 });
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-machine",
        "q35",
        "-m",
        "2048",
        "-smp",
        "2",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-monitor",
        "none",
    ])
    // Single-threaded TCG: with one host thread per vCPU, a 6.12 guest
    // once executed a half-patched jump label (int3 in __schedule, an
    // oops in the idle task) while probes were attached and detached.
    // Cross-vCPU code patching is where multi-threaded TCG is weakest.
    .args([
        "-accel",
        if accel == "kvm" {
            "kvm"
        } else {
            "tcg,thread=single"
        },
        "-cpu",
        if accel == "kvm" { "host" } else { "max" },
    ])
    .arg("-kernel")
    .arg(&k.vmlinuz)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=3"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .context("qemu-system-x86_64 (Debian's qemu-system-x86)")?;
    // stderr is read as it comes too: a KVM error may leave qemu running
    // with the guest paused, silent until the time limit.
    let (tx, rx) = mpsc::channel();
    let (out, err) = (
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    let tx_err = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(Output::Console(line)).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx_err.send(Output::Qemu(line)).is_err() {
                break;
            }
        }
    });
    let log_path = cache().join(format!(
        "console-{}-{accel}.log",
        k.name.replace([' ', '/'], "_")
    ));
    let mut log = std::fs::File::create(&log_path)?;
    let mut row = Row {
        accel,
        ..Default::default()
    };
    let mut suite = String::new();
    let mut seen_init = false;
    let mut stderr = String::new();
    let mut silent = false;
    // A test whose result comes on a later line (its panic message between).
    let mut pending: Option<String> = None;
    loop {
        let limit = if seen_init { GUEST_TIMEOUT } else { first_line };
        let left = limit.saturating_sub(started.elapsed());
        let line = match rx.recv_timeout(left) {
            Ok(Output::Console(l)) => l,
            Ok(Output::Qemu(l)) => {
                writeln!(log, "qemu: {l}")?;
                stderr += &l;
                stderr.push('\n');
                if accel == "kvm" && accel::kvm_error(&l) {
                    // qemu may abort on its own (its status then tells how)
                    // or stay up with the guest paused: a moment, then kill.
                    let grace = Instant::now() + Duration::from_secs(5);
                    while child.try_wait()?.is_none() && Instant::now() < grace {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    let _ = child.kill();
                    break;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                if seen_init {
                    row.failure = Some(format!("timed out after {limit:?}"));
                } else {
                    silent = true;
                }
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if !row.tests.is_empty() || seen_init {
                    row.failure
                        .get_or_insert_with(|| "the guest stopped before finishing".into());
                }
                break;
            }
        };
        writeln!(log, "{line}")?;
        let clean = strip_ansi(&line);
        // The firmware's screen codes may precede the init's first marker.
        let line = clean
            .find("SONDE-VM-")
            .map_or(clean.as_str(), |i| &clean[i..])
            .trim_end();
        if let (Some(name), "ok" | "FAILED" | "ignored") = (pending.as_ref(), line.trim()) {
            row.tests.insert(name.clone(), line.trim().to_string());
            pending = None;
            continue;
        }
        if let Some(r) = line.strip_prefix("SONDE-VM-INIT ") {
            seen_init = true;
            row.release = r.to_string();
        } else if let Some(s) = line.strip_prefix("SONDE-VM-SUITE ") {
            suite = s.to_string();
        } else if let Some(rc) = line.strip_prefix("SONDE-VM-RC ") {
            let mut parts = rc.split_whitespace();
            if let (Some(s), Some(code)) = (parts.next(), parts.next()) {
                row.suites.insert(
                    s.to_string(),
                    if code == "0" {
                        "pass".into()
                    } else {
                        format!("fail (exit {code})")
                    },
                );
            }
        } else if let Some(json) = line.strip_prefix("SONDE-VM-DOCTOR ") {
            row.probes = probes_summary(json);
        } else if line.starts_with("SONDE-VM-DONE") {
            break;
        } else if line.contains("Kernel panic") {
            row.failure = Some(format!("kernel panic: {line}"));
            let _ = child.kill();
            break;
        } else if let Some(rest) = line.strip_prefix("test ") {
            // libtest: "test NAME ... ok" (padded), or the result on a later line.
            if let Some((name, result)) = rest.split_once(" ...") {
                let name = format!("{suite}::{}", name.trim());
                match result.trim() {
                    "" => pending = Some(name),
                    r => {
                        row.tests.insert(name, r.to_string());
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    // What qemu printed after the loop ended (the pipes close once it is gone).
    while let Ok(out) = rx.recv_timeout(Duration::from_secs(5)) {
        if let Output::Qemu(l) = out {
            writeln!(log, "qemu: {l}")?;
            stderr += &l;
            stderr.push('\n');
        }
    }
    let end = if silent {
        End::Silent(first_line)
    } else {
        End::of(status)
    };
    let startup = accel::kvm_failure(end, &stderr, seen_init);
    if !seen_init {
        // Whatever the accelerator, the row says why the guest never ran.
        row.failure = row.failure.take().or(startup.clone());
    }
    if accel == "kvm" {
        row.kvm_failure = startup;
    }
    row.secs = started.elapsed().as_secs();
    Ok(row)
}

/// A console line without terminal escape sequences.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final byte, or ESC and one character.
            if chars.peek() == Some(&'[') {
                chars.next();
                while let Some(&n) = chars.peek() {
                    chars.next();
                    if n.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// "attached/total (skipped: a, b)" from `sonde doctor --json`.
fn probes_summary(json: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return "doctor output unreadable".into();
    };
    let Some(probes) = v["tracepoints"].as_array() else {
        return "no probe list".into();
    };
    let attached = probes.iter().filter(|p| p["state"] == "attached").count();
    let others: Vec<String> = probes
        .iter()
        .filter(|p| p["state"] != "attached")
        .map(|p| {
            format!(
                "{} {}",
                p["hook"].as_str().unwrap_or("?"),
                p["state"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let strategy = v["strategy"]
        .as_str()
        .map(|s| format!("; {s}"))
        .unwrap_or_default();
    if others.is_empty() {
        format!("{attached}/{} attached{strategy}", probes.len())
    } else {
        format!(
            "{attached}/{} attached ({}){strategy}",
            probes.len(),
            others.join(", ")
        )
    }
}

fn selected(opts: &Options) -> impl Iterator<Item = &(&'static str, &'static [&'static str])> {
    SUITES
        .iter()
        .filter(|(s, _)| opts.suites.is_empty() || opts.suites.iter().any(|o| o == s))
}

pub fn vm_test(specs: &[String], opts: &Options) -> Result<()> {
    if let Some(bad) = opts
        .suites
        .iter()
        .find(|s| !SUITES.iter().any(|(n, _)| n == s))
    {
        bail!(
            "no VM suite {bad:?}: the VM runs {}",
            SUITES
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if which("qemu-system-x86_64").is_none() || which("busybox").is_none() {
        crate::apt::ensure(&["qemu-system-x86", "busybox-static"])?;
    }
    let specs: Vec<String> = if specs.is_empty() {
        DEFAULT_KERNELS.iter().map(|s| s.to_string()).collect()
    } else {
        specs.to_vec()
    };
    let mut updated = false;
    let kernels: Vec<Kernel> = specs
        .iter()
        .map(|s| fetch(s, &mut updated))
        .collect::<Result<_>>()?;
    let (bins, sonde) = build_tests()?;
    let initrd = initramfs::initramfs(&bins, &sonde, opts)?;
    eprintln!(
        "xtask: initramfs {} ({} MiB)",
        initrd.display(),
        std::fs::metadata(&initrd)?.len() >> 20
    );
    let suggest = "`--accel tcg` runs the guests without KVM";
    let mut accel = match (opts.accel, accel::kvm_device()) {
        (Accel::Tcg, _) => "tcg",
        (_, Ok(())) => "kvm",
        (Accel::Kvm, Err(e)) => bail!("KVM is not usable ({e}); {suggest}"),
        (Accel::Auto, Err(e)) => {
            eprintln!("xtask: not using KVM ({e}): single-threaded TCG");
            "tcg"
        }
    };
    let mut rows = vec![];
    for k in &kernels {
        eprintln!("xtask: booting {} ({accel})", k.name);
        let mut row = boot(k, &initrd, accel)?;
        if let Some(cause) = row.kvm_failure.take() {
            if opts.accel == Accel::Kvm {
                bail!("KVM failed on {}: {cause}; {suggest}", k.name);
            }
            // Once: the next kernels would fail the same way, at a minute each for a hang.
            eprintln!("xtask: KVM failed ({cause}): using single-threaded TCG for this and the remaining kernels");
            accel = "tcg";
            row = boot(k, &initrd, accel)?;
        }
        print_row(k, &row);
        rows.push((k, row));
    }
    print_table(&rows);
    let failed = rows.iter().any(|(_, r)| {
        r.failure.is_some()
            || r.suites.values().any(|s| s != "pass")
            || r.suites.len() < selected(opts).count()
    });
    if failed {
        bail!(
            "the VM matrix has failures (consoles in {})",
            cache().display()
        );
    }
    Ok(())
}

fn print_row(k: &Kernel, r: &Row) {
    let verdict = r
        .failure
        .clone()
        .unwrap_or_else(|| format!("{} suites run", r.suites.len()));
    eprintln!(
        "xtask: {} ({}, {}s, {}): {verdict}",
        k.name, r.release, r.secs, r.accel
    );
}

fn print_table(rows: &[(&Kernel, Row)]) {
    let mut tests: Vec<&String> = rows.iter().flat_map(|(_, r)| r.tests.keys()).collect();
    tests.sort();
    tests.dedup();
    let w = tests.iter().map(|t| t.len()).max().unwrap_or(10).max(24);
    let cols: Vec<String> = rows
        .iter()
        .map(|(_, r)| {
            if r.release.is_empty() {
                "?".to_string()
            } else {
                r.release.clone()
            }
        })
        .collect();
    println!("\n{:<w$} | {}", "test", cols.join(" | "));
    println!(
        "{}",
        "-".repeat(w + cols.iter().map(|c| c.len() + 3).sum::<usize>())
    );
    for t in &tests {
        let cells: Vec<String> = rows
            .iter()
            .zip(&cols)
            .map(|((_, r), c)| {
                format!(
                    "{:<width$}",
                    r.tests.get(*t).map(String::as_str).unwrap_or("-"),
                    width = c.len()
                )
            })
            .collect();
        println!("{t:<w$} | {}", cells.join(" | "));
    }
    println!();
    for ((k, r), c) in rows.iter().zip(&cols) {
        println!(
            "{c}: {} via {} in {}s; probes: {}",
            k.name,
            r.accel,
            r.secs,
            if r.probes.is_empty() { "-" } else { &r.probes }
        );
        if let Some(f) = &r.failure {
            println!("  stopped: {f}");
        }
        for (s, v) in &r.suites {
            println!("  {s}: {v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::strip_ansi;

    #[test]
    fn console_escapes_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}c\u{1b}[?7l\u{1b}[2JSONDE-VM-INIT 6.1.0\r"),
            "SONDE-VM-INIT 6.1.0"
        );
        assert_eq!(
            strip_ansi("test a ... \u{1b}[32mok\u{1b}[0m"),
            "test a ... ok"
        );
    }
}
