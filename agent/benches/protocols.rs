//! Every registered protocol through the `Protocol` interface, on its
//! recorded captures (README table). A new protocol is benched here with
//! no edit: it only needs captures in its registry entry.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sonde::protocols::{registry::REGISTRY, Segment};

fn bench(c: &mut Criterion) {
    for spec in REGISTRY {
        let mut g = c.benchmark_group(spec.name);
        for cap in (spec.captures)() {
            g.throughput(Throughput::Bytes(cap.bytes() as u64));
            g.bench_function(format!("{}_{:?}", cap.name, cap.role).to_lowercase(), |b| {
                let mut out = Vec::with_capacity(64);
                b.iter(|| {
                    let mut p = (spec.new)();
                    out.clear();
                    for (i, (side, bytes)) in cap.turns.iter().enumerate() {
                        let t = i as u64 * 10;
                        let _ = p.feed(*side, Segment::whole(bytes, t, t + 1), &mut out);
                    }
                    out.len()
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
