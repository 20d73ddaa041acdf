//! End-to-end database suite on the real kernel: PostgreSQL, MariaDB and
//! Redis from Debian, a Python HTTP service without a line of tracing code
//! that queries all three per request (psycopg simple and extended, pymysql,
//! a redis-py pipeline), `sonde run` exporting to the in-repo receiver.
//!
//! Needs root; run through `cargo xtask test`.
#[path = "../http/support.rs"]
mod support;

use std::process::Command;

use libtest_mimic::{Arguments, Trial};
use sonde_otlp_receiver::{proto::trace::v1::span::SpanKind, ReceivedSpan};
use support::*;

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the DB suite needs root to load eBPF programs. Run `sudo -E cargo xtask test`.");
        std::process::exit(1);
    }
    libtest_mimic::run(
        &args,
        vec![Trial::test("db_calls_nest_under_their_request", || {
            db_calls_nest();
            Ok(())
        })],
    )
    .exit();
}

fn kind_of(s: &ReceivedSpan) -> SpanKind {
    SpanKind::try_from(s.span.kind).unwrap_or(SpanKind::Unspecified)
}

fn db_calls_nest() {
    const N: usize = 20;
    let (dbs_proc, db_ports) = server_script("db_servers.py");
    let agent = agent(&[]);
    let (store, listen) = (&agent.store, &agent.metrics);
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.arg(fixture("db_service.py"))
        .args(
            [
                port,
                db_ports["postgres"],
                db_ports["mysql"],
                db_ports["redis"],
            ]
            .map(|p| p.to_string()),
        )
        .env("OTEL_SERVICE_NAME", "db-web");
    let svc = ready(cmd);
    let spid = svc.pid();
    let (_, calls) = python_client(port, N);
    let fails = calls.iter().filter(|c| c.path.starts_with("/fail")).count();
    assert!(fails >= 1);

    // Per request: PG simple + PG extended + MariaDB + 3 Redis (+1 failing PG).
    let per_request = 6;
    let want_children = N * per_request + fails;
    let is_db = |s: &ReceivedSpan| s.attr("db.system.name").is_some();
    let spans = wait_spans(store, |s| {
        s.iter()
            .filter(|x| pid_of(x) == spid && kind_of(x) == SpanKind::Server)
            .count()
            >= N
            && s.iter()
                .filter(|x| pid_of(x) == spid && is_db(x) && !x.span.parent_span_id.is_empty())
                .filter(|x| !matches!(x.span.name.as_str(), "HELLO" | "CLIENT" | "AUTH"))
                .count()
                >= want_children
    });
    let mine: Vec<&ReceivedSpan> = spans.iter().filter(|s| pid_of(s) == spid).collect();
    let servers: Vec<&ReceivedSpan> = mine
        .iter()
        .copied()
        .filter(|s| kind_of(s) == SpanKind::Server)
        .collect();
    let dbspans: Vec<&ReceivedSpan> = mine.iter().copied().filter(|s| is_db(s)).collect();
    assert_eq!(servers.len(), N);
    let first_request = servers
        .iter()
        .map(|s| s.span.start_time_unix_nano)
        .min()
        .unwrap();

    for srv in &servers {
        // redis-py connects lazily: its handshake (HELLO, CLIENT SETINFO)
        // really is made by the first request, and nests there.
        let setup = |k: &ReceivedSpan| matches!(k.span.name.as_str(), "HELLO" | "CLIENT" | "AUTH");
        let kids: Vec<&&ReceivedSpan> = dbspans
            .iter()
            .filter(|d| d.span.parent_span_id == srv.span.span_id && !setup(d))
            .collect();
        let failing = srv.attr("http.response.status_code").as_deref() == Some("500");
        assert_eq!(
            kids.len(),
            per_request + usize::from(failing),
            "children of {}: {kids:#?}",
            srv.span.name
        );
        for k in &kids {
            assert_eq!(k.span.trace_id, srv.span.trace_id, "same trace");
            assert_eq!(kind_of(k), SpanKind::Client);
            assert!(
                k.span.start_time_unix_nano >= srv.span.start_time_unix_nano
                    && k.span.end_time_unix_nano <= srv.span.end_time_unix_nano,
                "child inside its request"
            );
        }
        let text = |sys: &str, op: &str| -> Vec<String> {
            kids.iter()
                .filter(|k| {
                    k.attr("db.system.name").as_deref() == Some(sys)
                        && k.attr("db.operation.name").as_deref() == Some(op)
                })
                .filter_map(|k| k.attr("db.query.text"))
                .collect()
        };
        assert!(
            text("postgresql", "SELECT")
                .contains(&"SELECT count(*) FROM items WHERE name = ?".to_string()),
            "simple protocol, sanitized"
        );
        assert_eq!(
            text("postgresql", "INSERT"),
            vec!["INSERT INTO items VALUES ($1, $2)"],
            "extended protocol"
        );
        assert_eq!(
            text("mariadb", "SELECT"),
            vec!["SELECT id, name FROM items WHERE id > ?"],
            "pymysql, sanitized"
        );
        assert_eq!(
            text("redis", "SET"),
            vec!["SET last"],
            "arguments after the key dropped"
        );
        assert_eq!(text("redis", "INCRBY"), vec!["INCRBY hits"]);
        let insert = kids
            .iter()
            .find(|k| k.attr("db.operation.name").as_deref() == Some("INSERT"))
            .unwrap();
        assert_eq!(
            insert.attr("db.response.returned_rows").as_deref(),
            Some("1")
        );
        assert_eq!(insert.attr("db.namespace").as_deref(), Some("sonde"));
        assert_eq!(insert.attr("db.collection.name").as_deref(), Some("items"));
        assert_eq!(insert.span.name, "INSERT items");
        assert_eq!(
            insert.attr("server.port"),
            Some(db_ports["postgres"].to_string())
        );
        if failing {
            let bad = kids
                .iter()
                .find(|k| k.attr("db.collection.name").as_deref() == Some("missing_table"))
                .expect("failing SQL span");
            assert_eq!(
                bad.span.status.as_ref().map(|s| s.code),
                Some(2),
                "status error"
            );
            assert_eq!(
                bad.attr("db.response.status_code").as_deref(),
                Some("42P01")
            );
            assert_eq!(bad.attr("error.type").as_deref(), Some("42P01"));
        }
    }
    // No orphans: a DB span without parent was made outside any request,
    // i.e. before the first one (the service's start-up queries).
    let roots: Vec<&&ReceivedSpan> = dbspans
        .iter()
        .filter(|d| d.span.parent_span_id.is_empty())
        .collect();
    assert!(
        roots
            .iter()
            .all(|r| r.span.start_time_unix_nano < first_request),
        "orphan DB spans: {roots:#?}"
    );
    assert!(
        roots.iter().any(|r| r.span.name == "CREATE items"
            && r.attr("db.system.name").as_deref() == Some("postgresql")),
        "the start-up query is a root span"
    );

    // Prometheus: the DB call counts match the calls made.
    let text = http_get(listen, "/metrics").unwrap();
    let count = |needles: &[&str]| -> u64 {
        text.lines()
            .filter(|l| {
                l.starts_with("db_client_operation_duration_seconds_count{")
                    && needles.iter().all(|n| l.contains(n))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let svc_l = "service_name=\"db-web\"";
    assert_eq!(
        count(&[
            svc_l,
            "db_system_name=\"postgresql\"",
            "db_operation_name=\"INSERT\""
        ]),
        N as u64,
        "{text}"
    );
    assert_eq!(
        count(&[
            svc_l,
            "db_system_name=\"redis\"",
            "db_operation_name=\"INCRBY\""
        ]),
        N as u64
    );
    assert_eq!(
        count(&[
            svc_l,
            "db_system_name=\"mariadb\"",
            "db_operation_name=\"SELECT\""
        ]),
        N as u64
    );
    assert_eq!(count(&[svc_l, "error_type=\"42P01\""]), fails as u64);
    // Service graph: db-web -> the PostgreSQL server (uninstrumented, named by
    // its process, seen accepting) counts exactly the calls made to it.
    let pg_calls = dbspans
        .iter()
        .filter(|d| d.attr("db.system.name").as_deref() == Some("postgresql"))
        .count() as u64;
    let edge: u64 = text
        .lines()
        .filter(|l| l.starts_with("traces_service_graph_request_total{"))
        .filter(|l| l.contains("client=\"db-web\"") && l.contains("server=\"postgres\""))
        .filter(|l| l.contains("connection_type=\"database\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(edge, pg_calls, "{text}");
    drop(agent);
    drop(svc);
    drop(dbs_proc);
}
