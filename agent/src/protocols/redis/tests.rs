use super::*;

fn call_all(c2s: &[&[u8]], s2c: &[&[u8]]) -> (RedisConnection, Vec<DbCall>) {
    let mut c = RedisConnection::default();
    let mut out = vec![];
    for p in c2s {
        c.push(true, Segment::whole(p, 0, 1), &mut out);
    }
    for p in s2c {
        c.push(false, Segment::whole(p, 2, 3), &mut out);
    }
    (c, out)
}

#[test]
fn pipelined_commands_pair_in_order() {
    let req = b"*3\r\n$3\r\nSET\r\n$6\r\nuser:1\r\n$5\r\nalice\r\n*2\r\n$3\r\nGET\r\n$6\r\nuser:1\r\n*1\r\n$4\r\nPING\r\n";
    let rep = b"+OK\r\n$5\r\nalice\r\n+PONG\r\n";
    let (_, calls) = call_all(&[req], &[rep]);
    let texts: Vec<_> = calls.iter().map(|c| c.query_text.as_str()).collect();
    assert_eq!(
        texts,
        vec!["SET user:1", "GET user:1", "PING"],
        "arguments after the key are dropped"
    );
}

const C2S: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/protocols/redis/captures/session.c2s"
));
const S2C: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/protocols/redis/captures/session.s2c"
));

fn summary(calls: &[DbCall]) -> Vec<(String, Option<String>, Option<u64>, String)> {
    calls
        .iter()
        .map(|c| {
            (
                c.query_text.clone(),
                c.error.as_ref().map(|e| e.code.clone()),
                c.rows,
                c.namespace.clone().unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn recorded_redis_py_session() {
    let (c, calls) = call_all(&[C2S], &[S2C]);
    let got = summary(&calls);
    let texts: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    let want = [
        "SET user:1",
        "GET user:1",
        "SET big",
        "GET big",
        "INCRBY counter",
        "HSET h:1",
        "HGETALL h:1",
        "LPUSH l",
        "INCRBY user:1",
        "MULTI",
        "SET a",
        "GET a",
        "EXEC",
        "SELECT",
        "GET missing",
    ];
    let tail = &texts[texts.len() - want.len()..];
    assert_eq!(tail, want, "all: {texts:?}");
    let by = |t: &str| got.iter().rev().find(|g| g.0 == t).unwrap().clone();
    assert_eq!(by("INCRBY user:1").1.as_deref(), Some("ERR"), "error code");
    assert_eq!(by("HGETALL h:1").2, Some(4), "map as a flat array of 4");
    assert_eq!(by("GET missing").3, "2", "namespace follows SELECT");
    assert_eq!(by("EXEC").2, Some(2));
    assert_eq!((c.parse_errors, c.unmatched), (0, 0));
}

#[test]
fn every_split_point_gives_the_same_calls() {
    let (_, whole) = call_all(&[C2S], &[S2C]);
    let want = summary(&whole);
    for i in (0..C2S.len()).step_by(7) {
        let (_, got) = call_all(&[&C2S[..i], &C2S[i..]], &[S2C]);
        assert_eq!(summary(&got), want, "request split at {i}");
    }
    for i in 0..=S2C.len() {
        let (_, got) = call_all(&[C2S], &[&S2C[..i], &S2C[i..]]);
        assert_eq!(summary(&got), want, "reply split at {i}");
    }
}

#[test]
fn big_values_beyond_the_capture_are_skipped_by_count() {
    let (_, whole) = call_all(&[C2S], &[S2C]);
    // Cut every request segment at 1 KiB: the 5000-byte SET loses its tail.
    let mut c = RedisConnection::default();
    let mut out = vec![];
    // Split the request stream around the big SET so it is one syscall.
    let start = C2S.windows(7).position(|w| w == b"$3\r\nbig").unwrap() - 10;
    let start = C2S[..start].iter().rposition(|&b| b == b'*').unwrap();
    let end = start
        + C2S[start..]
            .windows(5000)
            .position(|w| w.iter().all(|&b| b == b'x'))
            .unwrap()
        + 5000
        + 2;
    for (a, b) in [(0, start), (start, end), (end, C2S.len())] {
        let part = &C2S[a..b];
        let cut = part.len().min(1024);
        c.push(
            true,
            Segment {
                data: &part[..cut],
                total: part.len() as u64,
                enter_ns: 0,
                exit_ns: 1,
                tid: 0,
                tick: 0,
                lineage: Default::default(),
                py_task: 0,
            },
            &mut out,
        );
    }
    c.push(false, Segment::whole(S2C, 2, 3), &mut out);
    assert_eq!(summary(&out), summary(&whole));
}

#[test]
fn garbage_and_truncation_never_panic() {
    let mut seed = 7u64;
    for n in 0..400 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut v = if n % 2 == 0 {
            C2S.to_vec()
        } else {
            S2C.to_vec()
        };
        let i = (seed as usize) % v.len();
        v[i] = (seed >> 8) as u8;
        let cut = (seed as usize >> 3) % v.len();
        let mut c = RedisConnection::default();
        let mut out = vec![];
        c.push(
            n % 2 == 0,
            Segment {
                data: &v[..cut],
                total: v.len() as u64 + (seed % 3),
                enter_ns: 0,
                exit_ns: 1,
                tid: 0,
                tick: 0,
                lineage: Default::default(),
                py_task: 0,
            },
            &mut out,
        );
        c.push(n % 2 == 1, Segment::whole(&v[cut..], 2, 3), &mut out);
    }
}

#[test]
fn resp3_replies_and_pushes() {
    // HELLO 3 answers with a map; a RESP3 push (client-side caching
    // invalidation) arrives between replies and pairs with nothing.
    let req = b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n*2\r\n$4\r\nHGET\r\n$1\r\nh\r\n*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    let rep = b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n|1\r\n+ttl\r\n:10\r\n$1\r\nv\r\n_\r\n!21\r\nSYNTAX invalid syntax\r\n";
    let (c, calls) = call_all(&[req], &[rep]);
    let got = summary(&calls);
    assert_eq!(
        got.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(),
        vec!["HELLO", "HGET h", "PING", "GET k"]
    );
    assert_eq!(got[0].2, Some(2), "a map of two pairs");
    assert_eq!(got[3].1.as_deref(), Some("SYNTAX"), "blob error code");
    assert_eq!(
        c.unmatched, 0,
        "the push and the attribute paired with nothing"
    );
}

#[test]
fn pubsub_messages_pair_with_no_command() {
    let req = b"*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$1\r\nb\r\n*1\r\n$4\r\nPING\r\n";
    let rep = b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n";
    let (_, calls) = call_all(&[req], &[rep]);
    let texts: Vec<_> = calls.iter().map(|c| c.query_text.as_str()).collect();
    assert_eq!(
        texts,
        vec!["SUBSCRIBE a", "PING"],
        "messages and extra confirmations take no command"
    );
}

#[test]
fn inline_commands() {
    let (_, calls) = call_all(&[b"PING\r\nSET k v\r\n"], &[b"+PONG\r\n+OK\r\n"]);
    assert_eq!(
        calls
            .iter()
            .map(|c| c.query_text.as_str())
            .collect::<Vec<_>>(),
        vec!["PING", "SET k"]
    );
}
