//! HTTP/1.x parser throughput on the recorded fixtures (MB/s in the README).
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sonde::protocols::{
    http::{HttpConnection, Kind},
    Segment,
};

const REQ: &[u8] = include_bytes!("../src/protocols/http/captures/curl_get.req");
const RESP: &[u8] = include_bytes!("../src/protocols/http/captures/nginx_get.resp");
const CHUNKED: &[u8] = include_bytes!("../src/protocols/http/captures/python_chunked.resp");
const EXCHANGES: usize = 100;

/// `EXCHANGES` request/response pairs on one keep-alive connection.
fn run(resp: &[u8], split: Option<usize>, capture: Option<usize>) -> usize {
    let mut c = HttpConnection::default();
    let mut out = Vec::with_capacity(EXCHANGES);
    for i in 0..EXCHANGES as u64 {
        let _ = c.push(Kind::Request, Segment::whole(REQ, i, i + 1), &mut out);
        match (split, capture) {
            (Some(n), _) => {
                for part in resp.chunks(n) {
                    let _ = c.push(Kind::Response, Segment::whole(part, i, i + 1), &mut out);
                }
            }
            (None, Some(cap)) => {
                let seg = Segment {
                    data: &resp[..cap.min(resp.len())],
                    total: resp.len() as u64,
                    enter_ns: i,
                    exit_ns: i + 1,
                    tid: 0,
                    tick: 0,
                    lineage: Default::default(),
                    py_task: 0,
                };
                let _ = c.push(Kind::Response, seg, &mut out);
            }
            (None, None) => {
                let _ = c.push(Kind::Response, Segment::whole(resp, i, i + 1), &mut out);
            }
        }
    }
    assert_eq!(out.len(), EXCHANGES);
    out.len()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("http1");
    for (name, resp, split, capture) in [
        ("keepalive_whole_segments", RESP, None, None),
        ("keepalive_64b_segments", RESP, Some(64), None),
        ("chunked_response", CHUNKED, None, None),
        ("capture_256b_body_skipped", RESP, None, Some(256)),
    ] {
        // Bytes the parser accounts for, captured or skipped by count.
        g.throughput(Throughput::Bytes(
            ((REQ.len() + resp.len()) * EXCHANGES) as u64,
        ));
        g.bench_function(name, |b| {
            b.iter_batched(|| (), |_| run(resp, split, capture), BatchSize::SmallInput)
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
