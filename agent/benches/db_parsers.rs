//! Database parser throughput on the recorded sessions (README table).
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sonde::protocols::{
    mysql::MysqlConnection, postgres::PgConnection, redis::RedisConnection, Segment,
};

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!("../src/protocols/", $name)).as_slice()
    };
}

const REDIS: (&[u8], &[u8]) = (
    fixture!("redis/captures/session.c2s"),
    fixture!("redis/captures/session.s2c"),
);
const PG: (&[u8], &[u8]) = (
    fixture!("postgres/captures/session.c2s"),
    fixture!("postgres/captures/session.s2c"),
);
const MYSQL: (&[u8], &[u8]) = (
    fixture!("mysql/captures/session.c2s"),
    fixture!("mysql/captures/session.s2c"),
);

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("db");
    g.throughput(Throughput::Bytes((REDIS.0.len() + REDIS.1.len()) as u64));
    g.bench_function("redis_session", |b| {
        b.iter(|| {
            let mut conn = RedisConnection::default();
            let mut out = vec![];
            conn.push(true, Segment::whole(REDIS.0, 0, 1), &mut out);
            conn.push(false, Segment::whole(REDIS.1, 2, 3), &mut out);
            out.len()
        })
    });
    g.throughput(Throughput::Bytes((PG.0.len() + PG.1.len()) as u64));
    g.bench_function("postgres_session", |b| {
        b.iter(|| {
            let mut conn = PgConnection::new();
            let mut out = vec![];
            let _ = conn.push(true, Segment::whole(PG.0, 0, 1), &mut out);
            let _ = conn.push(false, Segment::whole(PG.1, 2, 3), &mut out);
            out.len()
        })
    });
    g.throughput(Throughput::Bytes((MYSQL.0.len() + MYSQL.1.len()) as u64));
    g.bench_function("mysql_session", |b| {
        // Greeting, handshake response, auth OK; then all commands, then
        // all answers (they pair in order).
        let (c2s, s2c) = MYSQL;
        let hello = 4 + (c2s[0] as usize | (c2s[1] as usize) << 8);
        let greet = 4 + (s2c[0] as usize | (s2c[1] as usize) << 8);
        let auth_ok = greet + 4 + (s2c[greet] as usize | (s2c[greet + 1] as usize) << 8);
        b.iter(|| {
            let mut conn = MysqlConnection::new();
            let mut out = vec![];
            let _ = conn.push(false, Segment::whole(&s2c[..greet], 0, 1), &mut out);
            let _ = conn.push(true, Segment::whole(&c2s[..hello], 0, 1), &mut out);
            let _ = conn.push(false, Segment::whole(&s2c[greet..auth_ok], 0, 1), &mut out);
            let _ = conn.push(true, Segment::whole(&c2s[hello..], 2, 3), &mut out);
            let _ = conn.push(false, Segment::whole(&s2c[auth_ok..], 4, 5), &mut out);
            assert_eq!(out.len(), 7);
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
