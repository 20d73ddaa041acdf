//! Golden replays of recorded sessions (grpcio, nghttp and curl against
//! nginx), every split point, and hand-built frames for the edges: desync,
//! resets, trailers-only answers, interleaved streams.
use loona_hpack::Encoder;

use super::{frame::PREFACE, protocol::captures, H2Connection};
use crate::protocols::{http::Exchange, Capture, Segment, Side};

fn capture(name: &str) -> Capture {
    captures()
        .into_iter()
        .find(|c| c.name == name)
        .expect("capture")
}

/// Replays a capture's turns; `split` cuts every turn at that offset
/// (two segments), `bytewise` feeds one byte per segment.
fn replay(name: &str, split: Option<usize>, bytewise: bool) -> (H2Connection, Vec<Exchange>) {
    let mut c = H2Connection::default();
    let mut out = vec![];
    let mut t = 0;
    for (side, bytes) in capture(name).turns {
        let parts: Vec<&[u8]> = if bytewise {
            bytes.chunks(1).collect()
        } else {
            match split {
                Some(at) if at < bytes.len() => vec![&bytes[..at], &bytes[at..]],
                _ => vec![bytes],
            }
        };
        for p in parts {
            t += 10;
            c.push(side, Segment::whole(p, t, t + 1)).expect("follows");
            c.take_new_requests();
            out.extend(c.take_done());
        }
    }
    (c, out)
}

fn summary(out: &[Exchange]) -> Vec<String> {
    let mut v: Vec<String> = out
        .iter()
        .map(|e| {
            let h = e.h2.as_ref().expect("h2");
            let g = h.grpc.as_ref().map(|g| {
                format!(
                    " grpc {}/{} status={:?} sent={:?} received={:?}",
                    g.service, g.method, g.status, g.sent, g.received
                )
            });
            format!(
                "{} {} {} -> {} body={}{}",
                h.stream,
                e.request.head.method,
                e.request.head.target,
                e.response.head.status,
                e.response.body_bytes,
                g.unwrap_or_default()
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn grpcio_calls_interleaved_on_one_channel() {
    let (c, out) = replay("grpc", None, false);
    let s = summary(&out);
    assert_eq!(s.len(), 8, "{s:#?}");
    for i in 0..6 {
        assert!(
            s.iter().any(|l| l.contains(&format!(
                "POST /sonde.test.Shop/Get{i} -> 200 body={} grpc sonde.test.Shop/Get{i} status=Some(0) sent=Some(1) received=Some(1)",
                5 + "item ".len() + 1
            ))),
            "Get{i} in {s:#?}"
        );
    }
    // Server streaming: three messages back.
    assert!(
        s.iter().any(|l| l
            .contains("grpc sonde.test.Shop/Watch6 status=Some(0) sent=Some(1) received=Some(3)")),
        "{s:#?}"
    );
    // NOT_FOUND as a trailers-only response: no message, status 5.
    assert!(
        s.iter().any(|l| l.contains("/Getmissing7 -> 200 body=0 grpc sonde.test.Shop/Getmissing7 status=Some(5) sent=Some(1) received=Some(0)")),
        "{s:#?}"
    );
    let mut streams: Vec<u32> = out.iter().map(|e| e.stream()).collect();
    streams.sort();
    streams.dedup();
    assert_eq!(streams.len(), 8, "each call on its own stream");
    assert_eq!(c.counters(), Default::default());
    assert_eq!(c.parse_errors(), 0);
    let missing = out
        .iter()
        .find(|e| e.request.head.target.ends_with("missing7"))
        .expect("missing7");
    assert_eq!(
        missing
            .h2
            .as_ref()
            .and_then(|h| h.grpc.as_ref())
            .and_then(|g| g.message.as_deref()),
        Some("no such item")
    );
    assert_eq!(missing.version(), "2");
}

#[test]
fn nghttp_streams_against_nginx() {
    let (c, out) = replay("h2c_nghttp", None, false);
    // nghttp opens streams 3 to 11 for priorities (PRIORITY frames only).
    assert_eq!(
        summary(&out),
        [
            "13 GET /item/0 -> 200 body=7",
            "15 GET /item/1 -> 200 body=2107",
            "17 GET /item/2 -> 200 body=4207",
            "19 GET /item/3 -> 200 body=6307",
            "21 GET /missing -> 404 body=153",
        ]
    );
    assert_eq!(out.len(), 5);
    for e in &out {
        assert!(e.h2.as_ref().expect("h2").grpc.is_none());
        assert_eq!(
            e.request
                .head
                .host
                .as_deref()
                .map(|h| h.starts_with("127.0.0.1:")),
            Some(true)
        );
    }
    assert_eq!(c.parse_errors(), 0);
}

#[test]
fn curl_prior_knowledge_against_nginx() {
    let (_, out) = replay("h2c_curl", None, false);
    assert_eq!(
        summary(&out),
        vec!["1 GET /item/1 -> 200 body=2107".to_string()]
    );
    assert_eq!(
        out[0]
            .request
            .head
            .user_agent
            .as_deref()
            .map(|u| u.starts_with("curl/")),
        Some(true)
    );
}

#[test]
fn every_split_point_and_byte_by_byte() {
    for name in ["grpc", "h2c_nghttp", "h2c_curl"] {
        let whole = summary(&replay(name, None, false).1);
        let longest = capture(name)
            .turns
            .iter()
            .map(|(_, b)| b.len())
            .max()
            .unwrap_or(0);
        // Every point of the first 600 bytes (frame headers, the preface,
        // header blocks), then every 97th.
        for at in (1..600.min(longest)).chain((600..longest).step_by(97)) {
            assert_eq!(
                summary(&replay(name, Some(at), false).1),
                whole,
                "{name} split at {at}"
            );
        }
        assert_eq!(
            summary(&replay(name, None, true).1),
            whole,
            "{name} byte by byte"
        );
    }
}

// Hand-built frames.

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn headers(enc: &mut Encoder, stream: u32, flags: u8, fields: &[(&str, &str)]) -> Vec<u8> {
    let block = enc.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    frame(1, flags | 0x4, stream, &block)
}

fn request(enc: &mut Encoder, stream: u32, path: &str) -> Vec<u8> {
    headers(
        enc,
        stream,
        0x1,
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "shop"),
        ],
    )
}

fn feed(c: &mut H2Connection, side: Side, bytes: &[u8]) -> Result<Vec<Exchange>, &'static str> {
    let r = c.push(side, Segment::whole(bytes, 1, 2));
    let out = c.take_done();
    r.map(|()| out)
}

/// A client connection's start: the preface and empty SETTINGS each way.
fn opened() -> H2Connection {
    let mut c = H2Connection::default();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(4, 0, 0, &[]));
    feed(&mut c, Side::Request, &hello).expect("preface");
    feed(&mut c, Side::Response, &frame(4, 0, 0, &[])).expect("settings");
    c
}

#[test]
fn responses_in_any_order_pair_by_stream() {
    let (mut req, mut resp) = (Encoder::new(), Encoder::new());
    let mut c = opened();
    let mut reqs = vec![];
    for (id, path) in [(1, "/a"), (3, "/b"), (5, "/c")] {
        reqs.extend(request(&mut req, id, path));
    }
    feed(&mut c, Side::Request, &reqs).expect("requests");
    let seen = c.take_new_requests();
    assert_eq!(
        seen.iter().map(|r| r.stream).collect::<Vec<_>>(),
        vec![1, 3, 5]
    );
    // Answered 5, 1, 3, with statuses that tell them apart.
    let mut answers = vec![];
    for (id, status) in [(5, "503"), (1, "200"), (3, "404")] {
        answers.extend(headers(&mut resp, id, 0, &[(":status", status)]));
    }
    answers.extend(frame(0, 0x1, 1, b"body of a"));
    answers.extend(frame(0, 0x1, 5, b""));
    answers.extend(frame(0, 0x1, 3, b"nope"));
    let out = feed(&mut c, Side::Response, &answers).expect("answers");
    let got: Vec<(u32, String, u16, u64)> = out
        .iter()
        .map(|e| {
            (
                e.stream(),
                e.request.head.target.clone(),
                e.response.head.status,
                e.response.body_bytes,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "/a".into(), 200, 9),
            (5, "/c".into(), 503, 0),
            (3, "/b".into(), 404, 4)
        ]
    );
}

#[test]
fn a_missed_header_block_is_a_desync_not_a_wrong_field() {
    // The first block adds `:path: /secret-1` to the dynamic table; the
    // second refers to it by index. Sonde misses the first block (a frame
    // it never saw): the second must not decode into another field.
    let mut enc = Encoder::new();
    let first = headers(
        &mut enc,
        1,
        0x1,
        &[(":method", "GET"), (":path", "/secret-1"), ("x-id", "1")],
    );
    let second = headers(
        &mut enc,
        3,
        0x1,
        &[(":method", "GET"), (":path", "/secret-1"), ("x-id", "1")],
    );
    let mut full = opened();
    feed(
        &mut full,
        Side::Request,
        &[first.clone(), second.clone()].concat(),
    )
    .expect("whole");
    assert_eq!(full.take_new_requests().len(), 2);

    let mut missed = opened();
    let err = feed(&mut missed, Side::Request, &second).expect_err("desync");
    assert_eq!(err, "HPACK desync");
    assert!(
        missed.take_new_requests().is_empty(),
        "no request from a block it could not decode"
    );
    assert_eq!(missed.parse_errors(), 1);
    // And it stays given up: nothing later is trusted.
    assert!(feed(
        &mut missed,
        Side::Request,
        &request(&mut Encoder::new(), 5, "/x")
    )
    .is_err());
}

#[test]
fn uncaptured_header_bytes_end_the_connection_but_data_is_skipped_by_count() {
    let mut enc = Encoder::new();
    let mut c = opened();
    let mut bytes = headers(&mut enc, 1, 0, &[(":method", "POST"), (":path", "/up")]);
    bytes.extend(frame(0, 0x1, 1, &[7u8; 5000]));
    // The capture kept the headers and 100 bytes of the body: the rest of
    // DATA is counted.
    let cut = bytes.len() - 4900;
    let seg = Segment {
        total: bytes.len() as u64,
        ..Segment::whole(&bytes[..cut], 1, 2)
    };
    c.push(Side::Request, seg).expect("a body gap is fine");
    assert_eq!(c.take_new_requests().len(), 1);
    let mut resp = Encoder::new();
    let out = feed(
        &mut c,
        Side::Response,
        &headers(&mut resp, 1, 0x1, &[(":status", "201")]),
    )
    .expect("answer");
    assert_eq!(out[0].request.body_bytes, 5000);

    // A gap over a frame header: framing is lost.
    let more = [request(&mut enc, 3, "/a"), request(&mut enc, 5, "/b")].concat();
    let seg = Segment {
        total: more.len() as u64,
        ..Segment::whole(&more[..4], 1, 2)
    };
    assert!(c.push(Side::Request, seg).is_err());
    assert_eq!(c.parse_errors(), 1);
}

#[test]
fn resets_trailers_and_continuations() {
    let (mut req, mut resp) = (Encoder::new(), Encoder::new());
    let mut c = opened();
    // A request whose header block comes in three frames.
    let block = req.encode(
        [
            (":method", "GET"),
            (":path", "/split"),
            (":authority", "shop"),
            ("user-agent", "x"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_bytes())),
    );
    let (a, rest) = block.split_at(3);
    let (b, d) = rest.split_at(2);
    let mut bytes = frame(1, 0x1, 1, a);
    bytes.extend(frame(9, 0, 1, b));
    bytes.extend(frame(9, 0x4, 1, d));
    bytes.extend(request(&mut req, 3, "/cancelled"));
    feed(&mut c, Side::Request, &bytes).expect("requests");
    assert_eq!(c.take_new_requests().len(), 2);
    // Stream 3 is reset by the client (CANCEL); stream 1 answered with
    // headers, data and trailers.
    let out = feed(&mut c, Side::Request, &frame(3, 0, 3, &8u32.to_be_bytes())).expect("reset");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].h2.as_ref().and_then(|h| h.reset), Some(8));
    assert_eq!(out[0].response.head.status, 0);
    let mut answer = headers(&mut resp, 1, 0, &[(":status", "200")]);
    answer.extend(frame(0, 0, 1, b"abc"));
    answer.extend(headers(&mut resp, 1, 0x1, &[("x-checksum", "1")]));
    let out = feed(&mut c, Side::Response, &answer).expect("answer");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.head.target, "/split");
    assert_eq!(out[0].request.head.user_agent.as_deref(), Some("x"));
    assert_eq!(out[0].response.body_bytes, 3);
    // A frame between a HEADERS and its CONTINUATION breaks the block.
    let mut bad = frame(
        1,
        0,
        5,
        &req.encode([(b":path".as_slice(), b"/x".as_slice())]),
    );
    bad.extend(frame(0, 0, 5, b"zz"));
    assert!(feed(&mut c, Side::Request, &bad).is_err());
}

#[test]
fn hostile_bytes_never_panic() {
    for cap in captures() {
        for (i, (_, b)) in cap.turns.iter().enumerate() {
            for cut in [1, 7, 9, 24, 33] {
                for flip in [0usize, 3, 4, 8, 9, 12] {
                    let mut c = H2Connection::default();
                    let mut bytes = b.to_vec();
                    if flip < bytes.len() {
                        bytes[flip] ^= 0xff;
                    }
                    bytes.truncate(bytes.len().saturating_sub(cut));
                    for (j, (side, turn)) in cap.turns.iter().enumerate() {
                        let data: &[u8] = if i == j { &bytes } else { turn };
                        if c.push(*side, Segment::whole(data, 1, 2)).is_err() {
                            break;
                        }
                    }
                    c.take_done();
                    c.close();
                }
            }
        }
    }
}

#[test]
fn detected_from_either_preface() {
    use crate::{
        event::{Direction, Role},
        protocols::{registry, Detect},
    };
    let spec = registry::by_name("http2").expect("registered");
    let settings = frame(4, 0, 0, &[0, 3, 0, 0, 0, 100]);
    assert_eq!(
        (spec.detect)(Role::Server, Direction::Ingress, PREFACE),
        Detect::Yes
    );
    assert_eq!(
        (spec.detect)(Role::Server, Direction::Ingress, &PREFACE[..10]),
        Detect::NeedMore
    );
    assert_eq!(
        (spec.detect)(Role::Client, Direction::Egress, PREFACE),
        Detect::Yes
    );
    // gRPC's C core writes its SETTINGS before it reads the client's preface.
    assert_eq!(
        (spec.detect)(Role::Server, Direction::Egress, &settings),
        Detect::Yes
    );
    assert_eq!(
        (spec.detect)(Role::Server, Direction::Egress, &settings[..5]),
        Detect::No
    );
    // Not a SETTINGS frame: a HEADERS frame mid-connection, an ACK, a MySQL greeting.
    assert_eq!(
        (spec.detect)(Role::Server, Direction::Egress, &frame(1, 4, 1, b"\x88")),
        Detect::No
    );
    assert_eq!(
        (spec.detect)(Role::Server, Direction::Egress, &frame(4, 1, 0, b"")),
        Detect::No
    );
    assert_eq!(
        (spec.detect)(Role::Server, Direction::Egress, b"\x4a\0\0\0\x0a8.0.1"),
        Detect::No
    );
    // A client may read the server's SETTINGS before it writes its preface
    // (grpc-go's reader goroutine runs first); anything else it reads first
    // is not HTTP/2: a MySQL greeting, a HEADERS frame, a SETTINGS ACK.
    assert_eq!(
        (spec.detect)(Role::Client, Direction::Ingress, &settings),
        Detect::Yes
    );
    for other in [
        &b"\x4a\0\0\0\x0a8.0.1"[..],
        &frame(1, 4, 1, b"\x88"),
        &frame(4, 1, 0, b""),
        PREFACE,
    ] {
        assert_eq!(
            (spec.detect)(Role::Client, Direction::Ingress, other),
            Detect::No
        );
    }
    // A peer of unknown role is judged only by the client's preface.
    assert_eq!(
        (spec.detect)(Role::Unknown, Direction::Ingress, &settings),
        Detect::No
    );
    // Mid-connection frames (the agent started late) are not detected.
    assert_eq!(
        registry::detect(
            Role::Client,
            Direction::Egress,
            &frame(1, 5, 7, b"\x82\x86")
        ),
        None
    );
}

#[test]
fn a_server_seen_from_its_own_settings_first() {
    // The server's SETTINGS come before the client's preface is read.
    let mut c = H2Connection::default();
    feed(
        &mut c,
        Side::Response,
        &frame(4, 0, 0, &[0, 3, 0, 0, 0, 100]),
    )
    .expect("settings");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(4, 0, 0, &[]));
    hello.extend(request(&mut Encoder::new(), 1, "/first"));
    feed(&mut c, Side::Request, &hello).expect("preface and a request");
    assert_eq!(c.take_new_requests().len(), 1);
    let out = feed(
        &mut c,
        Side::Response,
        &headers(&mut Encoder::new(), 1, 1, &[(":status", "200")]),
    )
    .expect("answer");
    assert_eq!(out[0].request.head.target, "/first");
}
