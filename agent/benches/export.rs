//! The export path's CPU per span: OTLP protobuf encoding of a batch as
//! the exporter sends it (`export::encode`; and through
//! `export::proto::traces` and prost, the reference), and the
//! three stdout formats. The budget (issue 16): at least 50,000 spans/s on
//! one core, all costs included; this is the encoding's share.
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use prost::Message;
use sonde::{
    export::{encode, proto, stdout},
    spans::{Resource, Span, SpanKind, Status, Value},
};

/// A batch like a busy node's: HTTP server spans of 8 services, each with
/// the attributes sonde sets, and their DB client calls.
fn batch(n: usize) -> Vec<Span> {
    let resources: Vec<Arc<Resource>> = (0..8)
        .map(|i| {
            Arc::new(Resource {
                service_name: format!("service-{i}"),
                service_namespace: None,
                attributes: vec![
                    ("host.name".into(), Value::Str("node-1".into())),
                    ("process.pid".into(), Value::Int(1000 + i)),
                    (
                        "process.executable.name".into(),
                        Value::Str("python3".into()),
                    ),
                    (
                        "container.id".into(),
                        Value::Str("0123456789abcdef0123456789abcdef".into()),
                    ),
                ],
            })
        })
        .collect();
    (0..n)
        .map(|i| {
            let server = i % 2 == 0;
            let mut attributes: Vec<(&'static str, Value)> = vec![
                ("http.request.method", "GET".into()),
                ("url.path", format!("/items/{i}").into()),
                ("http.route", "/items/{id}".into()),
                ("http.response.status_code", Value::Int(200)),
                ("server.address", "127.0.0.1".into()),
                ("server.port", Value::Int(8080)),
                ("network.peer.address", "127.0.0.1".into()),
                ("network.peer.port", Value::Int(40_000 + i as i64 % 20_000)),
                ("network.protocol.version", "1.1".into()),
                ("user_agent.original", "python-requests/2.31".into()),
                ("sonde.link.evidence", "tick".into()),
            ];
            if !server {
                attributes = vec![
                    ("db.system.name", "postgresql".into()),
                    (
                        "db.query.text",
                        "SELECT id, name FROM items WHERE id = $1".into(),
                    ),
                    ("db.operation.name", "SELECT".into()),
                    ("db.collection.name", "items".into()),
                    ("server.address", "127.0.0.1".into()),
                    ("server.port", Value::Int(5432)),
                    ("sonde.link.evidence", "tick".into()),
                ];
            }
            Span {
                trace_id: [(i % 251) as u8; 16],
                span_id: (i as u64 + 1).to_be_bytes(),
                parent_span_id: (!server).then(|| (i as u64).to_be_bytes()),
                trace_state: String::new(),
                kind: if server {
                    SpanKind::Server
                } else {
                    SpanKind::Client
                },
                name: if server {
                    "GET /items/{id}".into()
                } else {
                    "SELECT items".into()
                },
                start_unix_ns: 1_700_000_000_000_000_000 + i as u64 * 1_000,
                end_unix_ns: 1_700_000_000_000_000_000 + i as u64 * 1_000 + 750_000,
                attributes,
                status: Status::Unset,
                resource: resources[i % resources.len()].clone(),
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    const N: usize = 512;
    let spans = batch(N);
    let mut g = c.benchmark_group("export");
    g.throughput(Throughput::Elements(N as u64));
    // What the exporter sends: the spans written straight to protobuf.
    g.bench_function("otlp_encode_512", |b| {
        b.iter(|| encode::request(&spans).len())
    });
    // The same bytes through opentelemetry-proto's structs and prost (the
    // reference `encode` is tested against), for comparison.
    g.bench_function("otlp_via_structs_512", |b| {
        b.iter(|| proto::traces(&spans).encode_to_vec().len())
    });
    for (name, format) in [
        ("stdout_lines_512", stdout::Format::Lines),
        ("stdout_json_512", stdout::Format::Json),
        ("stdout_tree_512", stdout::Format::Tree),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || spans.clone(),
                |spans| {
                    let mut p = stdout::Printer::new(format, Vec::with_capacity(256 << 10));
                    let now = std::time::Instant::now();
                    for s in spans {
                        p.span(s, now);
                    }
                    p.poll(None);
                    p.into_inner().len()
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
