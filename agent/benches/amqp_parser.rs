//! AMQP 0-9-1 parser throughput on the recorded pika session (README table).
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sonde::protocols::{amqp::AmqpConnection, Segment};

const C2S: &[u8] = include_bytes!("../src/protocols/amqp/captures/session.c2s");
const S2C: &[u8] = include_bytes!("../src/protocols/amqp/captures/session.s2c");
const ORDER: &str = include_str!("../src/protocols/amqp/captures/session.order");

fn bench(c: &mut Criterion) {
    // The recorded chunks, in the order they crossed the wire.
    let (mut ci, mut si) = (0, 0);
    let chunks: Vec<(bool, &[u8])> = ORDER
        .lines()
        .map(|l| {
            let (dir, n) = l.split_once(' ').unwrap();
            let n: usize = n.parse().unwrap();
            if dir == "c2s" {
                ci += n;
                (true, &C2S[ci - n..ci])
            } else {
                si += n;
                (false, &S2C[si - n..si])
            }
        })
        .collect();
    let mut g = c.benchmark_group("amqp");
    g.throughput(Throughput::Bytes((C2S.len() + S2C.len()) as u64));
    g.bench_function("pika_session", |b| {
        b.iter(|| {
            let mut conn = AmqpConnection::default();
            let mut out = vec![];
            for (client, data) in &chunks {
                conn.push(*client, Segment::whole(data, 0, 1), &mut out);
            }
            // Ten operations, and each of the three publishes also as
            // written before its confirm (`recorded_pika_session`).
            assert_eq!(out.len(), 13);
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
