//! Debian packages the test suites drive as real peers.
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::run::sh;

/// What the privileged suite runs against.
pub const TEST_PACKAGES: &[&str] = &[
    "curl",
    "iproute2",
    "procps",
    "util-linux",
    // `sonde top` is driven in a terminal (top suite).
    "tmux",
    "nginx-light",
    // Self-signed certificates for the TLS suite (nginx, PostgreSQL).
    "openssl",
    "prometheus",
    "postgresql",
    "mariadb-server",
    "redis-server",
    "rabbitmq-server",
    "docker.io",
    "docker-compose",
    "nodejs",
    // An HTTP/2 client that multiplexes streams on one connection (http2 suite).
    "nghttp2-client",
    // The Go system under test (linking suite), built offline against
    // Debian's Go libraries.
    "golang-go",
    "golang-github-lib-pq-dev",
    // The Go gRPC system under test (http2 suite).
    "golang-google-grpc-dev",
    // The Java system under test (linking suite): compiler and JDBC driver.
    "openjdk-17-jdk-headless",
    "libpostgresql-jdbc-java",
];

/// Python clients the test services use (from PyPI), and the module each provides.
pub const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("psycopg[binary]", "psycopg"),
    // The HTTPS client of the TLS suite.
    ("requests", "requests"),
    ("pymysql", "pymysql"),
    ("redis", "redis"),
    ("mysql-connector-python", "mysql.connector"),
    ("pika", "pika"),
    ("aio-pika", "aio_pika"),
    // The libuv event loop of the linking suite's uvloop service.
    ("uvloop", "uvloop"),
    // The gRPC client and server of the http2 suite.
    ("grpcio", "grpc"),
    ("kubernetes-validate", "kubernetes_validate"),
    // The OpenTelemetry SDK service of the inject suite (auto-instrumented
    // Flask, exporting OTLP over HTTP).
    ("flask", "flask"),
    ("opentelemetry-distro", "opentelemetry.distro"),
    (
        "opentelemetry-exporter-otlp-proto-http",
        "opentelemetry.exporter.otlp.proto.http",
    ),
    (
        "opentelemetry-instrumentation-flask",
        "opentelemetry.instrumentation.flask",
    ),
];

/// Installs the Python clients that are not importable yet.
pub fn ensure_python() -> Result<()> {
    let missing: Vec<&str> = PYTHON_PACKAGES
        .iter()
        .filter(|(_, module)| {
            !Command::new("python3")
                .args(["-c", &format!("import {module}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: pip installing {}", missing.join(" "));
    sh(Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(&missing))
    .with_context(|| {
        format!(
            "pip install of the test clients; fix: python3 -m pip install {}",
            missing.join(" ")
        )
    })
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

pub fn ensure(pkgs: &[&str]) -> Result<()> {
    let mut missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    // The image may ship python3 outside Debian (pyenv); any python3 will do.
    if Command::new("python3")
        .arg("--version")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        missing.push("python3");
    }
    if missing.is_empty() {
        return Ok(());
    }
    if effective_uid() != 0 {
        bail!(
            "missing Debian packages {missing:?}; install them as root: apt-get install -y {}",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    sh(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .context("apt-get update")?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .context("apt-get install")
}

/// The effective user id, from `id -u`.
pub fn effective_uid() -> u32 {
    // `id -u` avoids a libc dependency for one call.
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(u32::MAX)
}
