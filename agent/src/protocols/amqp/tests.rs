//! Golden tests on a pika session recorded against RabbitMQ
//! (captures/record.py): publisher confirms, headers of every
//! type, a body over three frames, an unroutable return, fan-out to two
//! queues, consume with a multiple ack, get, reject and get-empty, on two
//! interleaved channels.
use super::{table::Field, *};

const C2S: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/protocols/amqp/captures/session.c2s"
));
const S2C: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/protocols/amqp/captures/session.s2c"
));
const ORDER: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/protocols/amqp/captures/session.order"
));

/// The recorded chunks in the order they crossed the proxy.
fn chunks() -> Vec<(bool, &'static [u8])> {
    crate::protocols::interleave(C2S, S2C, ORDER)
        .into_iter()
        .map(|(side, b)| (side == crate::protocols::Side::Request, b))
        .collect()
}

/// Replays the session, each chunk split at `split` (or whole).
fn replay(split: Option<usize>, bytewise: bool) -> (AmqpConnection, Vec<AmqpOut>) {
    let mut c = AmqpConnection::default();
    let mut out = vec![];
    for (i, (client, data)) in chunks().into_iter().enumerate() {
        let t = i as u64 * 10;
        let parts: Vec<&[u8]> = if bytewise {
            data.chunks(1).collect()
        } else {
            let k = split.unwrap_or(data.len()).min(data.len());
            vec![&data[..k], &data[k..]]
        };
        for p in parts {
            c.push(client, Segment::whole(p, t, t + 1), &mut out);
        }
    }
    (c, out)
}

/// The records, less `PublishSent` (the write of a publish whose
/// `Published` follows: see `recorded_pika_session`).
fn summary(out: &[AmqpOut]) -> Vec<String> {
    out.iter()
        .filter(|o| !matches!(o, AmqpOut::PublishSent { .. }))
        .map(|o| match o {
            AmqpOut::PublishSent { .. } => unreachable!("filtered"),
            AmqpOut::Published {
                msg,
                confirmed,
                returned,
                ..
            } => format!(
                "publish {}/{} {}B id={:?} confirmed={confirmed:?} returned={:?}",
                msg.exchange,
                msg.routing_key,
                msg.body_size,
                msg.props.message_id,
                returned.as_ref().map(|r| r.0)
            ),
            AmqpOut::DeliveryStarted {
                delivery_tag,
                queue,
                msg,
                ..
            } => {
                format!(
                    "deliver #{delivery_tag} {queue:?} {}/{} {}B",
                    msg.exchange, msg.routing_key, msg.body_size
                )
            }
            AmqpOut::DeliveryFinished {
                delivery_tag,
                outcome,
                ..
            } => format!("done #{delivery_tag} {outcome:?}"),
            AmqpOut::Received {
                queue,
                msg,
                delivery_tag,
                ..
            } => {
                format!(
                    "get {queue} #{delivery_tag:?} {:?}",
                    msg.as_ref().and_then(|m| m.props.message_id.clone())
                )
            }
            AmqpOut::Blind { blind } => format!("blind {blind}"),
            AmqpOut::GhostFinished { .. } => "ghost acked".into(),
        })
        .collect()
}

#[test]
fn recorded_pika_session() {
    let (c, all) = replay(None, false);
    // Each publish on this confirm channel is first seen written, then
    // confirmed: the write comes before any delivery of it.
    let sent: Vec<(u64, &str)> = all
        .iter()
        .filter_map(|o| match o {
            AmqpOut::PublishSent { seq, msg, .. } => Some((*seq, msg.routing_key.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(sent, vec![(1, "rk.1"), (2, "rk.2"), (3, "nowhere")]);
    let first = |f: fn(&AmqpOut) -> bool| all.iter().position(f).unwrap();
    assert!(
        first(|o| matches!(o, AmqpOut::PublishSent { .. }))
            < first(|o| matches!(o, AmqpOut::Published { .. }))
    );
    let out: Vec<AmqpOut> = all
        .into_iter()
        .filter(|o| !matches!(o, AmqpOut::PublishSent { .. }))
        .collect();
    assert_eq!(
        summary(&out),
        vec![
            "publish fan/rk.1 17B id=Some(\"m-1\") confirmed=Some(true) returned=None",
            "publish fan/rk.2 10000B id=Some(\"m-big\") confirmed=Some(true) returned=None",
            "publish amq.direct/nowhere 4B id=None confirmed=Some(true) returned=Some(312)",
            "deliver #1 Some(\"q1\") fan/rk.1 17B",
            "deliver #2 Some(\"q1\") fan/rk.2 10000B",
            "done #1 Ack",
            "done #2 Ack",
            "get q2 #Some(3) Some(\"m-1\")",
            "get q2 #Some(4) Some(\"m-big\")",
            "get q2 #None None",
        ]
    );
    assert_eq!(c.vhost.as_deref(), Some("/"));
    assert_eq!(c.parse_errors, 0);
    let AmqpOut::Published { msg, .. } = &out[0] else {
        panic!()
    };
    let p = &msg.props;
    assert_eq!(
        p.header("traceparent").as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(
        (p.content_type.as_deref(), p.correlation_id.as_deref()),
        (Some("application/json"), Some("c-1"))
    );
    assert_eq!(
        (p.delivery_mode, p.timestamp, p.app_id.as_deref()),
        (Some(2), Some(1_700_000_000), Some("rec"))
    );
    let h = |k: &str| {
        p.headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(h("x-int"), Some(Field::Int(7)));
    assert_eq!(h("x-neg"), Some(Field::Int(-3)));
    assert_eq!(h("x-dec"), Some(Field::Decimal(1, 25)));
    assert_eq!(h("x-bool"), Some(Field::Bool(true)));
    assert_eq!(
        h("x-arr"),
        Some(Field::Array(vec![Field::Int(1), Field::Str("two".into())]))
    );
    assert_eq!(
        h("x-tab"),
        Some(Field::Table(vec![("k".into(), Field::Str("v".into()))]))
    );
    assert_eq!(h("x-none"), Some(Field::Void));
    assert_eq!(msg.body_prefix, b"{\"hello\":\"world\"}");
    // The delivery carries the same properties and body prefix: the key the
    // publish->consume matching uses.
    let AmqpOut::DeliveryStarted { msg: d, .. } = &out[3] else {
        panic!()
    };
    assert_eq!(
        (d.props.message_id.as_deref(), &d.body_prefix),
        (Some("m-1"), &msg.body_prefix)
    );
    let AmqpOut::DeliveryStarted { msg: big, .. } = &out[4] else {
        panic!()
    };
    assert_eq!(big.body_prefix.len(), BODY_PREFIX, "a bounded body prefix");
}

#[test]
fn every_split_point_and_byte_by_byte() {
    let want = summary(&replay(None, false).1);
    for k in 0..64 {
        assert_eq!(
            summary(&replay(Some(k), false).1),
            want,
            "chunks split at {k}"
        );
    }
    assert_eq!(summary(&replay(None, true).1), want, "byte by byte");
}

#[test]
fn bodies_beyond_the_capture_are_skipped_by_count() {
    let want = summary(&replay(None, false).1);
    let mut c = AmqpConnection::default();
    let mut out = vec![];
    for (i, (client, data)) in chunks().into_iter().enumerate() {
        // A 1 KiB capture: body frames lose their tails, never the framing.
        let cut = data.len().min(1024);
        let seg = Segment {
            data: &data[..cut],
            total: data.len() as u64,
            enter_ns: i as u64,
            exit_ns: i as u64 + 1,
            tid: 0,
            tick: 0,
            lineage: Default::default(),
            py_task: 0,
        };
        c.push(client, seg, &mut out);
    }
    // Frames that began inside an uncaptured tail are lost with it (a lost
    // confirm becomes confirmed=None at close; a delivery open then ends
    // `Lost`): what is reported is a subset of the real operations (less
    // how they ended), never garbage.
    let op = |s: &String| s.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    let want_ops: Vec<String> = want.iter().map(op).collect();
    let got: Vec<String> = summary(&out)
        .iter()
        .filter(|s| !s.starts_with("blind") && !s.starts_with("ghost"))
        .map(op)
        .collect();
    assert!(got.iter().all(|g| want_ops.contains(g)), "{got:#?}");
    assert!(got.len() >= 5, "{got:#?}");
}

#[test]
fn truncations_and_mutations_never_panic() {
    let all = chunks();
    let mut seed = 5u64;
    for n in 0..300 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut c = AmqpConnection::default();
        let mut out = vec![];
        for (i, (client, data)) in all.iter().enumerate() {
            let mut v = data.to_vec();
            if i % 3 == (n % 3) as usize && !v.is_empty() {
                let j = (seed as usize >> 3) % v.len();
                v[j] = (seed >> 11) as u8;
            }
            let cut = if n % 2 == 0 {
                v.len()
            } else {
                (seed as usize) % (v.len() + 1)
            };
            c.push(
                *client,
                Segment {
                    data: &v[..cut],
                    total: v.len() as u64 + seed % 3,
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
        c.close(SegTime::default(), &mut out);
    }
}

/// Found by the `protocols` fuzz target: a Get-Ok with no Basic.Get before
/// it was reported as starting at time zero.
#[test]
fn get_ok_without_its_get_starts_when_it_arrives() {
    let frame = |kind: u8, payload: &[u8]| {
        let mut f = vec![kind, 0, 1];
        f.extend((payload.len() as u32).to_be_bytes());
        f.extend(payload);
        f.push(0xCE);
        f
    };
    // Basic.Get-Ok: delivery tag 9, not redelivered, exchange "", key "k", 0 left.
    let mut get_ok = vec![0, 60, 0, 71];
    get_ok.extend(9u64.to_be_bytes());
    get_ok.extend([0, 0, 1, b'k', 0, 0, 0, 0]);
    // Its content header: class 60, weight 0, empty body, no properties.
    let header = [0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let bytes = [frame(1, &get_ok), frame(2, &header)].concat();
    let mut c = AmqpConnection::default();
    let mut out = vec![];
    c.push(
        false,
        Segment {
            data: &bytes,
            total: bytes.len() as u64,
            enter_ns: 500,
            exit_ns: 600,
            tid: 3,
            tick: 0,
            lineage: Default::default(),
            py_task: 0,
        },
        &mut out,
    );
    let at = SegTime {
        enter_ns: 500,
        exit_ns: 600,
        tid: 3,
        tick: 0,
        lineage: Default::default(),
        py_task: 0,
    };
    match out.as_slice() {
        [AmqpOut::Received {
            first,
            last,
            delivery_tag: Some(9),
            ..
        }] => assert_eq!((*first, *last), (at, at)),
        other => panic!("{other:?}"),
    }
}

/// A frame on channel 1.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind, 0, 1];
    f.extend((payload.len() as u32).to_be_bytes());
    f.extend(payload);
    f.push(0xCE);
    f
}

/// Basic.Deliver of `tag` with its header and a 2-byte body.
fn deliver(tag: u64) -> Vec<u8> {
    let mut m = vec![0, 60, 0, 60, 1, b'c'];
    m.extend(tag.to_be_bytes());
    m.extend([0, 0, 1, b'k']);
    let header = [0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0];
    [frame(1, &m), frame(2, &header), frame(3, b"hi")].concat()
}

/// Basic.Ack of `tag`.
fn ack(tag: u64, multiple: bool) -> Vec<u8> {
    let mut m = vec![0, 60, 0, 80];
    m.extend(tag.to_be_bytes());
    m.push(multiple as u8);
    frame(1, &m)
}

/// A read or write of `total` bytes, `data` of them captured.
fn seg(data: &[u8], total: usize, t: u64) -> Segment<'_> {
    Segment {
        data,
        total: total as u64,
        enter_ns: t,
        exit_ns: t + 1,
        tid: 7,
        tick: 1,
        lineage: Default::default(),
        py_task: 0,
    }
}

/// A connection whose client has written the protocol header.
fn opened() -> AmqpConnection {
    let mut c = AmqpConnection::default();
    c.push(true, seg(PROTOCOL_HEADER, 8, 0), &mut vec![]);
    c
}

/// What a consumer's side says, one word per record.
fn consumer_view(out: &[AmqpOut]) -> Vec<String> {
    out.iter()
        .map(|o| match o {
            AmqpOut::DeliveryStarted { delivery_tag, .. } => format!("start {delivery_tag}"),
            AmqpOut::DeliveryFinished {
                delivery_tag,
                outcome,
                ..
            } => format!("end {delivery_tag} {outcome:?}"),
            AmqpOut::Blind { blind } => format!("blind {blind}"),
            AmqpOut::GhostFinished { .. } => "ghost acked".into(),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn lost_frames_make_a_consumer_blind_until_every_delivery_is_accounted_for() {
    let mut c = opened();
    let mut out = vec![];
    let both = [deliver(1), deliver(2)].concat();
    c.push(false, seg(&both, both.len(), 10), &mut out);
    // A read whose captured part ends inside a frame header: deliveries
    // 3 and 4 are in the uncaptured tail.
    let batch = [deliver(3), deliver(4)].concat();
    c.push(false, seg(&batch[..30], batch.len(), 20), &mut out);
    assert_eq!(
        consumer_view(&out),
        [
            "start 1",
            "start 2",
            "end 1 Lost",
            "end 2 Lost",
            "blind true"
        ]
    );
    out.clear();
    // The consumer acks what it was working on, unseen: 3 (after 1 and 2,
    // whose ends are already reported).
    c.push(true, seg(&ack(1, false), 21, 30), &mut out);
    c.push(true, seg(&ack(3, false), 21, 31), &mut out);
    assert_eq!(consumer_view(&out), ["ghost acked"]);
    out.clear();
    // The next read starts on a frame: delivery 5 shows 4 came unseen.
    let five = deliver(5);
    c.push(false, seg(&five, five.len(), 40), &mut out);
    assert_eq!(consumer_view(&out), ["start 5"]);
    out.clear();
    c.push(true, seg(&ack(4, false), 21, 50), &mut out);
    assert_eq!(consumer_view(&out), ["ghost acked", "blind false"]);
    out.clear();
    c.push(true, seg(&ack(5, false), 21, 60), &mut out);
    assert_eq!(consumer_view(&out), ["end 5 Ack"]);
}

#[test]
fn a_jump_in_delivery_tags_is_unseen_deliveries() {
    let mut c = opened();
    let mut out = vec![];
    let d = [deliver(1), deliver(4)].concat();
    c.push(false, seg(&d, d.len(), 10), &mut out);
    assert_eq!(consumer_view(&out), ["start 1", "start 4", "blind true"]);
    out.clear();
    // One multiple ack covers the seen and the unseen.
    c.push(true, seg(&ack(4, true), 21, 20), &mut out);
    assert_eq!(
        consumer_view(&out),
        ["ghost acked", "end 1 Ack", "end 4 Ack", "blind false"]
    );
    // An ack of a tag never delivered: unseen, and those before it too.
    out.clear();
    c.push(true, seg(&ack(7, false), 21, 30), &mut out);
    assert_eq!(consumer_view(&out), ["ghost acked", "blind true"]);
    // Closing the channel forgets them.
    out.clear();
    let close = frame(1, &[0, 20, 0, 40, 0, 0, 0, 0, 0, 0, 0]);
    c.push(true, seg(&close, close.len(), 40), &mut out);
    assert_eq!(consumer_view(&out), ["blind false"]);
}
