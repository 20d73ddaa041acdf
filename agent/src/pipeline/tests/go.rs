//! Go: a call a `writeLoop` goroutine wrote on a connection just dialed,
//! placed by the goroutine it handed a value to after the write
//! (`correlation/causality/goroutines.rs`).
use super::*;
use crate::event::HandOffRecord;

/// `data_on`, made by goroutine `g` (no thread tick, no lineage).
fn by_goroutine(c: &ConnInfo, dir: Direction, at: u64, g: u32, bytes: &[u8]) -> StreamEvent {
    let mut ev = data_on(c, dir, at, (7, 0), bytes);
    if let StreamEvent::Data(_, d) = &mut ev {
        d.task = g;
    }
    ev
}

fn handed(c: &ConnInfo, from: u32, to: u32, wrote_ns: u64) -> StreamEvent {
    started_by(c, from, (to, 0, 0), wrote_ns)
}

/// `handed`, to goroutine `to` that goroutine `origin` started at `at`.
fn started_by(
    c: &ConnInfo,
    from: u32,
    (to, origin, at): (u32, u32, u64),
    wrote_ns: u64,
) -> StreamEvent {
    StreamEvent::HandOff(
        c.clone(),
        HandOffRecord {
            pid: c.pid,
            fd: c.fd,
            ts_ns: wrote_ns + 50,
            from,
            to,
            wrote_ns,
            to_origin: origin,
            to_origin_ns: at,
        },
    )
}

const SERVING: [u32; 4] = [0x8000_0010, 0x8000_0020, 0x8000_0030, 0x8000_0040];
const WRITERS: [u32; 4] = [0x8000_0011, 0x8000_0021, 0x8000_0031, 0x8000_0041];

/// `n` server connections of one Go service, request `i` served by
/// goroutine `SERVING[i]`: their opens, and each one's request `/r/<i>`
/// read at 1,000 + i.
fn served(n: u64) -> (Vec<ConnInfo>, Vec<StreamEvent>) {
    let servers: Vec<ConnInfo> = (0..n)
        .map(|i| {
            conn(
                10 + i,
                300,
                Role::Server,
                "127.0.0.1:80",
                &format!("10.1.1.1:{}", 5000 + i),
                "go-svc",
            )
        })
        .collect();
    let mut events: Vec<StreamEvent> = servers
        .iter()
        .map(|c| StreamEvent::Open(c.clone()))
        .collect();
    for (i, s) in servers.iter().enumerate() {
        let req = format!("GET /r/{i} HTTP/1.1\r\nHost: x\r\n\r\n");
        events.push(by_goroutine(
            s,
            Direction::Ingress,
            1_000 + i as u64,
            SERVING[i],
            req.as_bytes(),
        ));
    }
    (servers, events)
}

/// Three requests in flight, each served by its own goroutine; each calls
/// downstream on a connection just dialed, written by that connection's
/// own writer goroutine, with nothing in its lineage. The first writer's
/// hand-off comes after its call's record, the second's before it (a
/// record's order the ring allows), and the third hands its value to a
/// goroutine serving no request, and then one for a write it did not make
/// the call in: its call stays a root, counted. The fourth hands its
/// value to a goroutine the fourth request's started after reading it.
#[test]
fn a_writers_hand_off_after_the_write_places_its_call() {
    let mut l7 = l7();
    let (servers, mut events) = served(4);
    let clients: Vec<ConnInfo> = (0..4)
        .map(|i| {
            conn(
                20 + i,
                300,
                Role::Client,
                &format!("127.0.0.1:{}", 6000 + i),
                "10.9.9.9:8080",
                "go-svc",
            )
        })
        .collect();
    events.extend(clients.iter().map(|c| StreamEvent::Open(c.clone())));
    let call = |i: usize| format!("GET /down/{i} HTTP/1.1\r\nHost: y\r\n\r\n").into_bytes();
    events.push(by_goroutine(
        &clients[0],
        Direction::Egress,
        2_000,
        WRITERS[0],
        &call(0),
    ));
    events.push(handed(&clients[0], WRITERS[0], SERVING[0], 2_000));
    events.push(handed(&clients[1], WRITERS[1], SERVING[1], 2_100));
    events.push(by_goroutine(
        &clients[1],
        Direction::Egress,
        2_100,
        WRITERS[1],
        &call(1),
    ));
    events.push(by_goroutine(
        &clients[2],
        Direction::Egress,
        2_200,
        WRITERS[2],
        &call(2),
    ));
    events.push(handed(&clients[2], WRITERS[2], 0x8000_0099, 2_200));
    events.push(handed(&clients[2], WRITERS[2], SERVING[2], 2_150));
    events.push(by_goroutine(
        &clients[3],
        Direction::Egress,
        2_300,
        WRITERS[3],
        &call(3),
    ));
    let caller = (0x8000_0042, SERVING[3], 1_500);
    events.push(started_by(&clients[3], WRITERS[3], caller, 2_300));
    for i in 0..4 {
        let at = 3_000 + 100 * i as u64;
        events.push(by_goroutine(
            &clients[i],
            Direction::Ingress,
            at,
            WRITERS[i] + 1,
            RESP,
        ));
        events.push(by_goroutine(
            &servers[i],
            Direction::Egress,
            at + 50,
            SERVING[i],
            RESP,
        ));
    }
    let mut spans = feed(&mut l7, vec![], events);
    l7.release_held(Some(NOW + HOLD_NS + 1), &mut spans);
    let server = |i: usize| {
        spans
            .iter()
            .find(|s| {
                s.kind.as_str() == "SERVER" && s.name.ends_with(&format!("/r/{i}")) || {
                    s.kind.as_str() == "SERVER"
                        && s.attributes.iter().any(|(k, v)| {
                            *k == "url.path" && format!("{v}").contains(&format!("/r/{i}"))
                        })
                }
            })
            .unwrap_or_else(|| panic!("server {i}: {spans:#?}"))
    };
    let client = |i: usize| {
        spans
            .iter()
            .find(|s| {
                s.kind.as_str() == "CLIENT"
                    && s.attributes.iter().any(|(k, v)| {
                        *k == "url.full" && format!("{v}").contains(&format!("/down/{i}"))
                    })
            })
            .unwrap_or_else(|| panic!("client {i}: {spans:#?}"))
    };
    let evidence = |s: &Span| {
        s.attributes
            .iter()
            .find(|(k, _)| *k == "sonde.link.evidence")
            .map(|(_, v)| format!("{v}"))
            .unwrap_or_default()
    };
    for i in [0, 1, 3] {
        let (s, c) = (server(i), client(i));
        assert_eq!(
            (c.trace_id, c.parent_span_id, evidence(c).as_str()),
            (s.trace_id, Some(s.span_id), "\"goroutine\""),
            "call {i}"
        );
    }
    assert_eq!(
        client(2).parent_span_id,
        None,
        "no request's goroutine was handed it"
    );
    assert_eq!(l7.counts().ambiguous.iter().sum::<u64>(), 1);
}

/// A hand-off after a later write of the same goroutine on the connection
/// (the call's own write was followed by none) names that later write's
/// call, not the held one: the held call goes out a root.
#[test]
fn a_hand_off_after_another_write_does_not_place_a_held_call() {
    let mut l7 = l7();
    let server = conn(
        10,
        300,
        Role::Server,
        "127.0.0.1:80",
        "10.1.1.1:5000",
        "go-svc",
    );
    let other = conn(
        11,
        300,
        Role::Server,
        "127.0.0.1:80",
        "10.1.1.1:5001",
        "go-svc",
    );
    let client = conn(
        20,
        300,
        Role::Client,
        "127.0.0.1:6000",
        "10.9.9.9:8080",
        "go-svc",
    );
    let req = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();
    let events = vec![
        StreamEvent::Open(server.clone()),
        StreamEvent::Open(other.clone()),
        StreamEvent::Open(client.clone()),
        by_goroutine(&server, Direction::Ingress, 1_000, SERVING[0], &req("/r/0")),
        by_goroutine(&other, Direction::Ingress, 1_001, SERVING[1], &req("/r/1")),
        by_goroutine(
            &client,
            Direction::Egress,
            2_000,
            WRITERS[0],
            &req("/down/0"),
        ),
        handed(&client, WRITERS[0], SERVING[0], 2_500),
        by_goroutine(&client, Direction::Ingress, 3_000, WRITERS[0] + 1, RESP),
    ];
    let mut spans = feed(&mut l7, vec![], events);
    l7.release_held(Some(NOW + HOLD_NS + 1), &mut spans);
    let call = spans
        .iter()
        .find(|s| s.kind.as_str() == "CLIENT")
        .expect("the call");
    assert_eq!(call.parent_span_id, None);
    assert_eq!(l7.counts().ambiguous.iter().sum::<u64>(), 1);
}

/// A worker goroutine fed by a buffered channel writes three jobs on one
/// Redis connection in one run, taking each next one from the buffer
/// without parking, and answers each job's goroutine after its write. The
/// kernel ends the run's lineage at its first answer (`goroutine.rs`), so
/// none of the writes names a sender; the three hand-offs come before any
/// reply (a database call's record comes at its reply), and each places
/// its own job's call, though the requests have ended by the time the
/// replies are read.
#[test]
fn a_workers_queued_jobs_are_each_placed_by_their_own_answer() {
    let mut l7 = l7();
    let (servers, mut events) = served(3);
    let redis = conn(
        30,
        300,
        Role::Client,
        "127.0.0.1:6100",
        "10.9.9.9:6379",
        "go-svc",
    );
    let worker = 0x8000_0077;
    events.push(StreamEvent::Open(redis.clone()));
    for (i, &serving) in SERVING.iter().take(3).enumerate() {
        let at = 2_000 + 100 * i as u64;
        let job = format!("*3\r\n$5\r\nRPUSH\r\n$8\r\naudit:r{i}\r\n$1\r\nx\r\n");
        events.push(by_goroutine(
            &redis,
            Direction::Egress,
            at,
            worker,
            job.as_bytes(),
        ));
        events.push(handed(&redis, worker, serving, at));
    }
    for (i, s) in servers.iter().enumerate() {
        events.push(by_goroutine(
            s,
            Direction::Egress,
            2_500 + i as u64,
            SERVING[i],
            RESP,
        ));
    }
    for i in 0..3 {
        let at = 3_000 + 10 * i as u64;
        events.push(by_goroutine(
            &redis,
            Direction::Ingress,
            at,
            worker + 1,
            b":1\r\n",
        ));
    }
    let mut spans = feed(&mut l7, vec![], events);
    l7.release_held(Some(NOW + HOLD_NS + 1), &mut spans);
    let attr = |s: &Span, key: &str| {
        s.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| format!("{v}"))
            .unwrap_or_default()
    };
    for i in 0..3 {
        let server = spans
            .iter()
            .find(|s| {
                s.kind.as_str() == "SERVER" && attr(s, "url.path").contains(&format!("/r/{i}"))
            })
            .unwrap_or_else(|| panic!("server {i}: {spans:#?}"));
        let call = spans
            .iter()
            .find(|s| attr(s, "db.query.text").ends_with(&format!("audit:r{i}\"")))
            .unwrap_or_else(|| panic!("job {i}: {spans:#?}"));
        assert_eq!(
            (
                call.trace_id,
                call.parent_span_id,
                attr(call, "sonde.link.evidence").as_str()
            ),
            (server.trace_id, Some(server.span_id), "\"goroutine\""),
            "job {i}"
        );
    }
    assert_eq!(l7.counts().ambiguous.iter().sum::<u64>(), 0);
    assert_eq!(l7.drops().tick_marks, 0, "no hand-off was dropped");
}
