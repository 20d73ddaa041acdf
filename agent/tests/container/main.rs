//! sonde as users run it on a Docker host: the `sonde:dev` image (`cargo
//! xtask image`), started with the documented minimal `docker run` (host
//! pid namespace, four capabilities, read-only mounts; not privileged),
//! watching containerized HTTP services in their own network namespaces,
//! reached through published ports. The receiver must get SERVER spans whose
//! resource names each container: its `OTEL_SERVICE_NAME`, else its Compose
//! service, else its container name; with `container.id` and the image.
//!
//! Needs root and a Docker engine; run through `cargo xtask test`.
#[path = "../http/support.rs"]
mod support;

use std::{
    process::{Command, Output},
    sync::Arc,
    time::{Duration, Instant},
};

use libtest_mimic::{Arguments, Trial};
use sonde_otlp_receiver::{proto::trace::v1::span::SpanKind, Store};
use support::*;

const IMAGE: &str = "sonde:dev";
const APP_IMAGE: &str = "sonde-test-web:dev";

/// The documented minimal flags (README, "Docker"), minus the OTLP settings
/// and the capabilities that depend on the engine (`capabilities()`).
const MINIMAL: &[&str] = &[
    "--pid=host",
    "--network=host",
    "--cap-drop=ALL",
    "--cap-add=SYS_PTRACE",
    "--cap-add=DAC_READ_SEARCH",
    "--security-opt=seccomp=unconfined",
    "--read-only",
    "-v",
    "/sys/kernel/tracing:/sys/kernel/tracing:ro",
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup:ro",
    "-v",
    "/var/run/docker.sock:/var/run/docker.sock:ro",
];

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the container suite needs root. Run `sudo -E cargo xtask test`.");
        std::process::exit(1);
    }
    let trials = vec![
        Trial::test("minimal_docker_run_names_services_after_containers", || {
            names_containers();
            Ok(())
        }),
        Trial::test("compose_file_runs_the_agent", || {
            compose();
            Ok(())
        }),
        Trial::test("without_tracefs_mount_or_capabilities", || {
            no_tracefs();
            Ok(())
        }),
    ];
    libtest_mimic::run(&args, trials).exit();
}

/// BPF and PERFMON where the engine knows them; engines that predate them
/// (Docker 20.10: "unknown capability") need SYS_ADMIN instead, as the
/// README says. Returns the flags, and the added set as `docker inspect` names it (sorted).
fn capabilities() -> (Vec<&'static str>, Vec<&'static str>) {
    let probe = docker(&[
        "run",
        "--rm",
        "--cap-drop=ALL",
        "--cap-add=BPF",
        "--cap-add=PERFMON",
        IMAGE,
        "--version",
    ]);
    let text = String::from_utf8_lossy(&probe.stderr);
    if probe.status.success() {
        (
            vec!["--cap-add=BPF", "--cap-add=PERFMON"],
            vec![
                "CAP_BPF",
                "CAP_DAC_READ_SEARCH",
                "CAP_PERFMON",
                "CAP_SYS_PTRACE",
            ],
        )
    } else if text.contains("unknown capability") {
        eprintln!(
            "this Docker engine predates CAP_BPF/CAP_PERFMON: using SYS_ADMIN, as documented"
        );
        (
            vec!["--cap-add=SYS_ADMIN"],
            vec!["CAP_DAC_READ_SEARCH", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"],
        )
    } else {
        panic!("probing the engine's capabilities: {text}");
    }
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("docker")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Containers removed on drop.
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        for c in &self.0 {
            let _ = docker(&["rm", "-f", c]);
        }
    }
}

fn require_image() {
    assert!(
        docker(&["image", "inspect", IMAGE]).status.success(),
        "no {IMAGE} image: build it with `cargo xtask image` (`cargo xtask test` does)"
    );
}

/// A FROM scratch image holding only the HTTP fixture; the host's Python
/// is mounted read-only when it runs.
fn build_app_image() {
    let dir = std::env::temp_dir().join(format!("sonde-app-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture("http_server.py"), dir.join("http_server.py")).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY http_server.py /app/http_server.py\n",
    )
    .unwrap();
    docker_ok(&["build", "-q", "-t", APP_IMAGE, dir.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
}

fn python() -> (String, String) {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os,sys;print(os.path.realpath(sys.executable));print(sys.base_prefix)",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut l = text.lines();
    (l.next().unwrap().to_string(), l.next().unwrap().to_string())
}

fn run_app(name: &str, extra: &[&str], port: u16) -> String {
    let (exe, prefix) = python();
    let publish = format!("127.0.0.1:{port}:8080");
    let mut args: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--name".into(),
        name.into(),
        "-p".into(),
        publish,
    ];
    for path in ["/usr", "/lib", "/lib64", prefix.as_str()] {
        if std::path::Path::new(path).exists() {
            args.extend(["-v".into(), format!("{path}:{path}:ro")]);
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend([
        APP_IMAGE.into(),
        exe,
        "/app/http_server.py".into(),
        "8080".into(),
        "0.0.0.0".into(),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    docker_ok(&refs)
}

fn wait_http(port: u16) {
    let end = Instant::now() + Duration::from_secs(30);
    while http_get(&format!("127.0.0.1:{port}"), "/ok").is_none() {
        assert!(Instant::now() < end, "container on {port} never answered");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn names_containers() {
    require_image();
    build_app_image();
    let rt = runtime();
    let store = Arc::new(Store::default());
    let recv = receiver(&rt, store.clone(), 0, 0);
    let metrics = format!("127.0.0.1:{}", free_port());
    let agent = format!("sonde-test-agent-{}", std::process::id());
    let mut guard = Containers(vec![agent.clone()]);
    let endpoint = format!(
        "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:{}",
        recv.grpc_addr.port()
    );
    let (caps, caps_shown) = capabilities();
    let mut args = vec!["run", "-d", "--name", &agent];
    args.extend_from_slice(MINIMAL);
    args.extend(caps);
    args.extend([
        "-e",
        &endpoint,
        "-e",
        "OTEL_BSP_SCHEDULE_DELAY=100",
        IMAGE,
        "run",
        "--prometheus-listen",
        &metrics,
    ]);
    docker_ok(&args);
    let end = Instant::now() + Duration::from_secs(60);
    while http_get(&metrics, "/metrics").is_none() {
        let running = docker_ok(&["inspect", "-f", "{{.State.Running}}", &agent]);
        assert!(
            running == "true" && Instant::now() < end,
            "the agent container stopped: {}",
            String::from_utf8_lossy(&docker(&["logs", &agent]).stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Least privilege, as started.
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.HostConfig.Privileged}}", &agent]),
        "false"
    );
    let mut added: Vec<String> = serde_json::from_str(&docker_ok(&[
        "inspect",
        "-f",
        "{{json .HostConfig.CapAdd}}",
        &agent,
    ]))
    .unwrap();
    added.sort();
    assert_eq!(added, caps_shown, "exactly the documented capabilities");

    // Three services, each in its own network namespace.
    let pid = std::process::id();
    let cases = [
        (format!("sonde-test-plain-{pid}"), vec![], None),
        (
            format!("sonde-test-compose-{pid}"),
            vec![
                "--label",
                "com.docker.compose.service=catalog",
                "--label",
                "com.docker.compose.project=shop",
            ],
            Some("catalog"),
        ),
        (
            format!("sonde-test-named-{pid}"),
            vec!["-e", "OTEL_SERVICE_NAME=named-web"],
            Some("named-web"),
        ),
    ];
    let mut apps = vec![];
    for (name, extra, service) in &cases {
        let port = free_port();
        let id = run_app(name, extra, port);
        guard.0.push(name.clone());
        wait_http(port);
        apps.push((
            name.clone(),
            id,
            service.map(str::to_string).unwrap_or_else(|| name.clone()),
            port,
        ));
    }
    const N: usize = 3;
    for (_, _, _, port) in &apps {
        for i in 0..N {
            let st = Command::new("curl")
                .args([
                    "-sf",
                    "-o",
                    "/dev/null",
                    &format!("http://127.0.0.1:{port}/items/{i}"),
                ])
                .status()
                .unwrap();
            assert!(st.success());
        }
    }
    let spans = wait_spans(&store, |s| {
        apps.iter().all(|(_, _, svc, _)| {
            s.iter()
                .filter(|x| {
                    x.service() == svc
                        && x.span.kind == SpanKind::Server as i32
                        && x.span.name == "GET /items/{id}"
                })
                .count()
                >= N
        })
    });
    for (name, id, svc, _) in &apps {
        let srv = spans
            .iter()
            .find(|x| x.service() == svc && x.span.kind == SpanKind::Server as i32)
            .unwrap();
        let r = &srv.resource;
        assert_eq!(r.get("container.id"), Some(id), "{name}");
        assert_eq!(r.get("container.name"), Some(name));
        assert_eq!(
            r.get("container.image.name").map(String::as_str),
            Some("sonde-test-web")
        );
        assert_eq!(
            r.get("container.image.tag").map(String::as_str),
            Some("dev")
        );
    }
    let compose = spans.iter().find(|x| x.service() == "catalog").unwrap();
    assert_eq!(
        compose
            .resource
            .get("docker.compose.project")
            .map(String::as_str),
        Some("shop")
    );
    // The agent never reports its own container's traffic (its OTLP export).
    assert!(!spans
        .iter()
        .any(|s| s.resource.get("container.name") == Some(&agent)));
    drop(guard);
    drop(recv);
}

fn no_tracefs() {
    require_image();
    // The minimal flags without the tracefs mount ("-v" and its argument).
    let mut base = vec!["run"];
    let mut flags = MINIMAL.iter().copied().peekable();
    while let Some(f) = flags.next() {
        if f == "-v"
            && flags
                .peek()
                .is_some_and(|m| m.starts_with("/sys/kernel/tracing"))
        {
            flags.next();
            continue;
        }
        base.push(f);
    }
    let (caps, _) = capabilities();
    let output = |args: &[&str]| {
        let out = docker(args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string()
                + &String::from_utf8_lossy(&out.stdout),
        )
    };
    if caps.contains(&"--cap-add=BPF") {
        // BPF and PERFMON cannot mount tracefs: a clear error.
        let mut args = base.clone();
        args.insert(1, "--rm");
        args.extend(caps);
        args.extend([IMAGE, "run", "--prometheus-listen", "off"]);
        let (ok, text) = output(&args);
        assert!(!ok, "the agent cannot run without tracefs: {text}");
        assert!(
            text.contains("tracefs is not mounted")
                && text.contains("bind-mount the host's /sys/kernel/tracing"),
            "the error names the cause and the fix: {text}"
        );
    } else {
        // SYS_ADMIN (old engines) lets the agent mount tracefs itself.
        let name = format!("sonde-test-notracefs-{}", std::process::id());
        let _guard = Containers(vec![name.clone()]);
        let mut args = base.clone();
        args.extend(["-d", "--name", &name]);
        args.extend(caps);
        args.extend([IMAGE, "run", "--prometheus-listen", "off"]);
        docker_ok(&args);
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, logs) = output(&["logs", &name]);
            if logs.contains("mounted tracefs") && logs.contains("capturing") {
                break;
            }
            assert!(
                Instant::now() < end,
                "the agent neither mounted tracefs nor said why: {logs}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // Without SYS_ADMIN, such an engine cannot grant what the agent
        // needs: the error says which capabilities, and the way out.
        let mut args = base.clone();
        args.insert(1, "--rm");
        args.extend([IMAGE, "run", "--prometheus-listen", "off"]);
        let (ok, text) = output(&args);
        assert!(!ok, "{text}");
        assert!(
            text.contains("missing CAP_BPF and CAP_PERFMON")
                && text.contains("--cap-add SYS_ADMIN"),
            "{text}"
        );
    }
}

/// The sonde service of deploy/docker-compose.yml (Jaeger and Prometheus
/// need images from a registry, which the test machines have not).
fn compose() {
    require_image();
    let rt = runtime();
    let store = Arc::new(Store::default());
    let recv = receiver(&rt, store.clone(), 0, 0);
    let file =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/docker-compose.yml");
    let project = format!("sondetest{}", std::process::id());
    let compose = |args: &[&str]| {
        Command::new("docker-compose")
            .args(["-f", file.to_str().unwrap(), "-p", &project])
            .args(args)
            .env("SONDE_IMAGE", IMAGE)
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{}", recv.grpc_addr.port()),
            )
            .output()
            .expect("docker-compose (Debian's docker-compose; `cargo xtask test` installs it)")
    };
    struct Down<'a>(&'a dyn Fn(&[&str]) -> Output);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = (self.0)(&["--profile", "docker-20", "down", "--timeout", "5"]);
        }
    }
    // The engine decides which of the file's two sonde services applies.
    let service = if capabilities().0.contains(&"--cap-add=BPF") {
        "sonde"
    } else {
        "sonde-docker20"
    };
    let out = compose(&["--profile", "docker-20", "up", "-d", "--no-deps", service]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _down = Down(&compose);
    let end = Instant::now() + Duration::from_secs(60);
    while http_get("127.0.0.1:9464", "/metrics").is_none() {
        assert!(
            Instant::now() < end,
            "the compose service never served /metrics: {}",
            String::from_utf8_lossy(&compose(&["logs"]).stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let port = free_port();
    let _web = python_server(port, "compose-check");
    for _ in 0..3 {
        http_get(&format!("127.0.0.1:{port}"), "/ok").unwrap();
    }
    let spans = wait_spans(&store, |s| {
        s.iter()
            .filter(|x| x.service() == "compose-check" && x.span.kind == SpanKind::Server as i32)
            .count()
            >= 3
    });
    let srv = spans
        .iter()
        .find(|x| x.service() == "compose-check")
        .unwrap();
    assert_eq!(
        srv.resource
            .get("deployment.environment.name")
            .map(String::as_str),
        Some("single-host"),
        "the compose file's resource attributes"
    );
}
