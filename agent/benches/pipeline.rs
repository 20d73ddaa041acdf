//! The user-space hot path per request, stage by stage (issue 16's budget):
//! - `records`: decoding the kernel's ring records and the connection
//!   table's upsert (`event::decode`, `ConnTable::apply`);
//! - `stages`: dispatch (HTTP parsing), correlation (stitching, causality)
//!   and telemetry (RED metrics, span building) for the same request.
//!
//! The request: a client on this node calls a server that, while serving
//! it, calls a downstream service (keep-alive connections, as a busy
//! service's): 8 records, 4 spans (each hop's client and server).
//! Throughput is in requests.
use std::sync::{atomic::AtomicU64, Arc};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sonde::{
    connections::{
        process::ProcessInfo,
        procnet::{FoundSocket, ScanResult},
        ConnTable, StreamEvent,
    },
    event::{self, Role, SocketTuple},
    metrics::Registry,
    pipeline::{Pipeline, PipelineConfig},
    probes::SocketRegistry,
    spans::sampler::Sampler,
    stats::Stats,
};
use sonde_common::{direction, kind, syscall, DataEvent, EventHeader, SockInfo, DATA_EVENT_SIZE};

const CLIENT: u32 = 1000;
const SERVER: u32 = 2000;
const DOWN: u32 = 3000;

/// The kernel maps, as a sink: the bench measures user space.
struct NoKernel;

impl SocketRegistry for NoKernel {
    fn track(&mut self, _: u32, _: i32, _: SockInfo) {}
    fn untrack(&mut self, _: u32, _: i32) {}
    fn track_listener(&mut self, _: u32, _: i32, _: u16) {}
    fn untrack_listener(&mut self, _: u32, _: i32) {}
    fn follow_forks(&mut self, _: u32, _: bool) {}
}

/// (pid, fd, role, local, remote) of the four connection ends.
const ENDS: [(u32, i32, Role, &str, &str); 4] = [
    (CLIENT, 5, Role::Client, "127.0.0.1:40000", "127.0.0.1:8080"),
    (SERVER, 6, Role::Server, "127.0.0.1:8080", "127.0.0.1:40000"),
    (SERVER, 7, Role::Client, "127.0.0.1:40001", "127.0.0.1:9090"),
    (DOWN, 8, Role::Server, "127.0.0.1:9090", "127.0.0.1:40001"),
];

/// The table, with the connections seeded as the startup scan finds them;
/// what that reports goes to `out`.
fn table(out: &mut Vec<StreamEvent>) -> ConnTable<NoKernel> {
    let mut t = ConnTable::new(NoKernel, Arc::new(Stats::default()));
    for (pid, name) in [(CLIENT, "client"), (SERVER, "shop"), (DOWN, "stock")] {
        t.processes().insert(ProcessInfo {
            pid,
            comm: name.into(),
            otel_service_name: Some(name.into()),
            ..Default::default()
        });
    }
    let scan = ScanResult {
        sockets: ENDS
            .iter()
            .map(|&(pid, fd, role, local, remote)| FoundSocket {
                pid,
                fd,
                inode: fd as u64,
                tuple: SocketTuple {
                    local: local.parse().unwrap(),
                    remote: remote.parse().unwrap(),
                },
                role,
            })
            .collect(),
        listeners: vec![],
    };
    t.seed(&scan, out);
    t
}

/// One ring record as the kernel writes it: a data header, then payload.
fn record(pid: u32, fd: i32, egress: bool, at: u64, tick: u32, payload: &[u8]) -> Vec<u8> {
    let ev = DataEvent {
        hdr: EventHeader {
            kind: kind::DATA,
            tgid: pid,
            tid: pid,
            fd,
            ts_ns: at + 5_000,
            ..Default::default()
        },
        enter_ns: at,
        bytes: payload.len() as i64,
        syscall: if egress {
            syscall::WRITE
        } else {
            syscall::READ
        },
        direction: if egress {
            direction::EGRESS
        } else {
            direction::INGRESS
        },
        role: 0,
        flags: 0,
        captured: payload.len() as u32,
        tick,
        ..Default::default()
    };
    // SAFETY: DataEvent is repr(C) plain data.
    let head = unsafe {
        std::slice::from_raw_parts(&ev as *const DataEvent as *const u8, DATA_EVENT_SIZE)
    };
    [head, payload].concat()
}

/// The records of request `i`, in ring order.
fn request(i: u64) -> Vec<Vec<u8>> {
    let t = 1_000_000_000 + i * 1_000_000;
    let tick = 2 * i as u32 + 1;
    let req = format!(
        "GET /orders/{i} HTTP/1.1\r\nHost: shop\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
    );
    let call = format!("GET /stock/{i} HTTP/1.1\r\nHost: stock\r\n\r\n");
    let body = "{\"id\": 17, \"items\": [1, 2, 3]}";
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    vec![
        record(CLIENT, 5, true, t, tick, req.as_bytes()),
        record(SERVER, 6, false, t + 10_000, tick, req.as_bytes()),
        record(SERVER, 7, true, t + 20_000, tick, call.as_bytes()),
        record(DOWN, 8, false, t + 30_000, tick, call.as_bytes()),
        record(DOWN, 8, true, t + 40_000, tick + 1, resp.as_bytes()),
        record(SERVER, 7, false, t + 50_000, tick + 1, resp.as_bytes()),
        record(SERVER, 6, true, t + 60_000, tick + 1, resp.as_bytes()),
        record(CLIENT, 5, false, t + 70_000, tick + 1, resp.as_bytes()),
    ]
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(1));
    let requests: Vec<Vec<Vec<u8>>> = (0..1024).map(request).collect();

    let mut out = Vec::with_capacity(16);
    let mut t = table(&mut out);
    let mut i = 0;
    g.bench_function("records", |b| {
        b.iter(|| {
            for r in &requests[i % requests.len()] {
                t.apply(event::decode(r).expect("a valid record"), &mut out);
            }
            i += 1;
            out.clear();
        })
    });

    // The stream events the table made, replayed through the stages.
    let mut opens = vec![];
    let mut t = table(&mut opens);
    let mut streams: Vec<Vec<StreamEvent>> = vec![];
    for rs in &requests {
        let mut evs = vec![];
        for r in rs {
            t.apply(event::decode(r).unwrap(), &mut evs);
        }
        streams.push(evs);
    }
    let mut p = Pipeline::new(PipelineConfig::new(Registry::shared(0), Sampler::AlwaysOn));
    let (mut spans, mut commands) = (vec![], vec![]);
    for o in opens {
        p.on_event(o, 0, &mut spans, &mut commands);
    }
    // The request makes its four spans (the check the timing relies on).
    for ev in &streams[0] {
        p.on_event(ev.clone(), 1_000_000_000, &mut spans, &mut commands);
    }
    p.release_held(None, &mut spans);
    assert_eq!(spans.len(), 4, "{spans:#?}");
    spans.clear();
    let now = AtomicU64::new(2_000_000_000);
    let mut i = 0;
    g.bench_function("stages", |b| {
        b.iter(|| {
            let at = now.fetch_add(1_000_000, std::sync::atomic::Ordering::Relaxed);
            for ev in &streams[i % streams.len()] {
                p.on_event(ev.clone(), at, &mut spans, &mut commands);
            }
            i += 1;
            // Client spans on this node wait briefly for their servers'
            // (late partners): let what is due go, as the pipeline's tick does.
            if i % 64 == 0 {
                p.release_held(Some(at), &mut spans);
            }
            spans.clear();
            commands.clear();
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
