use std::sync::Arc;

use super::*;
use crate::{
    connections::process::ProcessInfo,
    event::{Role, SocketTuple},
    protocols::{dispatch::Flow, Record},
    spans::sampler::Sampler,
};

fn waiter(conn: u64, since: u64) -> Waiter {
    Waiter {
        queue: "q".into(),
        pid: 1,
        conn,
        channel: 1,
        delivery_tag: since,
        key: since,
        since,
    }
}

#[test]
fn late_deliveries_are_counted_and_expire_with_their_hold() {
    let mut l = LateDeliveries::default();
    assert!(l.push(7, waiter(1, 10)));
    assert!(l.push(7, waiter(2, 20)));
    assert!(l.push(8, waiter(1, 30)));
    assert_eq!(l.len(), 3);
    l.retain(|w| w.conn != 1);
    assert_eq!(l.len(), 1, "a closed connection's waits go");
    assert!(l.push(9, waiter(3, 40)));
    l.expire(Some(20 + holds::HOLD_NS));
    assert_eq!(l.len(), 1, "the wait from 20 is over, the one from 40 not");
    assert_eq!(l.take(9).map(|w| w.len()), Some(1));
    assert_eq!(l.len(), 0);
    for i in 0..MAX_DELIVERIES as u64 {
        assert!(l.push(i, waiter(4, 50)));
    }
    assert!(!l.push(u64::MAX, waiter(4, 50)), "bounded");
    l.expire(None);
    assert_eq!(l.len(), 0);
}

fn conn(id: u64, pid: u32, local: &str) -> ConnInfo {
    ConnInfo {
        id,
        pid,
        fd: 3,
        role: Role::Client,
        tuple: Some(SocketTuple {
            local: local.parse().unwrap(),
            remote: "127.0.0.1:5672".parse().unwrap(),
        }),
        process: Arc::new(ProcessInfo {
            pid,
            ..Default::default()
        }),
        opened_ns: 1,
        preexisting: false,
        peer_is_agent: false,
        opened_by: (0, 0),
        tls: false,
        pipe: None,
    }
}

fn at(ns: u64) -> SegTime {
    SegTime {
        enter_ns: ns,
        exit_ns: ns + 1,
        tid: 1,
        tick: 0,
        lineage: Default::default(),
        py_task: 0,
    }
}

/// On a confirm channel the broker's confirm can reach the publisher
/// after the consumer got the message: the consumer still joins the
/// publish, whose context was fixed when it was written.
#[test]
fn a_delivery_before_its_publishs_confirm_joins_the_publish() {
    let mut c = Correlator::new(Default::default(), Sampler::AlwaysOn, Box::new(|_, _| None));
    let (producer, consumer) = (
        conn(1, 100, "127.0.0.1:40000"),
        conn(2, 200, "127.0.0.1:40001"),
    );
    let msg = Message {
        exchange: "shop".into(),
        routing_key: "orders".into(),
        body_size: 3,
        body_prefix: b"o-7".to_vec(),
        ..Default::default()
    };
    let mut out = vec![];
    let feed = |c: &mut Correlator, conn: &ConnInfo, op: AmqpOut, out: &mut Vec<Linked>| {
        c.on_flow(
            Flow::Record(conn.clone(), Record::Messaging(Box::new(op))),
            10_000,
            out,
        )
    };
    feed(
        &mut c,
        &producer,
        AmqpOut::PublishSent {
            channel: 1,
            seq: 1,
            msg: msg.clone(),
            first: at(100),
            last: at(110),
        },
        &mut out,
    );
    feed(
        &mut c,
        &consumer,
        AmqpOut::DeliveryStarted {
            channel: 1,
            delivery_tag: 1,
            queue: Some("orders".into()),
            redelivered: false,
            msg: msg.clone(),
            at: at(200),
        },
        &mut out,
    );
    feed(
        &mut c,
        &consumer,
        AmqpOut::DeliveryFinished {
            channel: 1,
            delivery_tag: 1,
            outcome: Outcome::Ack,
            at: at(300),
        },
        &mut out,
    );
    feed(
        &mut c,
        &producer,
        AmqpOut::Published {
            channel: 1,
            msg,
            first: at(100),
            last: at(400),
            confirmed: Some(true),
            returned: None,
            seq: Some(1),
        },
        &mut out,
    );
    let [process, publish] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert!(matches!(publish.item, Item::Publish(_)) && matches!(process.item, Item::Process(_)));
    assert_eq!(
        (process.ctx.trace_id, process.ctx.parent_span_id),
        (publish.ctx.trace_id, Some(publish.ctx.span_id))
    );
    assert_eq!(process.evidence, Evidence::PublishMatch);
    assert!(c.sent.is_empty(), "the confirm took its context");
}

/// Without confirms, the publisher's write may exit (and its record
/// enter the ring) after the consumer read the message: the delivery's
/// trace is held until the publish comes, then joins it.
#[test]
fn a_delivery_read_before_its_publishs_record_waits_for_it() {
    let mut c = Correlator::new(Default::default(), Sampler::AlwaysOn, Box::new(|_, _| None));
    let (producer, consumer) = (
        conn(1, 100, "127.0.0.1:40000"),
        conn(2, 200, "127.0.0.1:40001"),
    );
    let msg = |id: &str| Message {
        exchange: "shop".into(),
        routing_key: "orders".into(),
        body_size: 3,
        body_prefix: id.as_bytes().to_vec(),
        ..Default::default()
    };
    let published = |id: &str, t: u64| AmqpOut::Published {
        channel: 1,
        msg: msg(id),
        first: at(t),
        last: at(t + 10),
        confirmed: None,
        returned: None,
        seq: None,
    };
    let mut out = vec![];
    let feed = |c: &mut Correlator, conn: &ConnInfo, op: AmqpOut, out: &mut Vec<Linked>| {
        c.on_flow(
            Flow::Record(conn.clone(), Record::Messaging(Box::new(op))),
            10_000,
            out,
        )
    };
    // In order first: this node publishes to shop/orders.
    feed(&mut c, &producer, published("o-1", 100), &mut out);
    // o-2: its delivery and processing come before its publish.
    let delivered = AmqpOut::DeliveryStarted {
        channel: 1,
        delivery_tag: 2,
        queue: Some("orders".into()),
        redelivered: false,
        msg: msg("o-2"),
        at: at(300),
    };
    feed(&mut c, &consumer, delivered, &mut out);
    feed(
        &mut c,
        &consumer,
        AmqpOut::DeliveryFinished {
            channel: 1,
            delivery_tag: 2,
            outcome: Outcome::Ack,
            at: at(400),
        },
        &mut out,
    );
    assert_eq!(out.len(), 1, "the consumer span is held: {out:?}");
    feed(&mut c, &producer, published("o-2", 200), &mut out);
    let [_, process, publish] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert!(
        matches!(publish.item, Item::Publish(_)) && matches!(process.item, Item::Process(_)),
        "{out:?}"
    );
    assert_eq!(
        (process.ctx.trace_id, process.ctx.parent_span_id),
        (publish.ctx.trace_id, Some(publish.ctx.span_id))
    );
    assert_eq!(c.counts().late_partners_adopted, 1);
    assert_eq!(c.late_deliveries.len(), 0);
    // A destination no process here publishes to is not held.
    let elsewhere = Message {
        routing_key: "elsewhere".into(),
        ..msg("x")
    };
    let d = AmqpOut::DeliveryStarted {
        channel: 1,
        delivery_tag: 3,
        queue: None,
        redelivered: false,
        msg: elsewhere,
        at: at(500),
    };
    feed(&mut c, &consumer, d, &mut out);
    feed(
        &mut c,
        &consumer,
        AmqpOut::DeliveryFinished {
            channel: 1,
            delivery_tag: 3,
            outcome: Outcome::Ack,
            at: at(600),
        },
        &mut out,
    );
    assert_eq!(out.len(), 4, "exported at once");
}

/// Two identical messages read on one queue before either publish's
/// record: which delivery is whose, the wire does not say. Both stay
/// roots (counted), never under the wrong publish.
#[test]
fn identical_late_deliveries_on_one_queue_stay_roots() {
    let mut c = Correlator::new(Default::default(), Sampler::AlwaysOn, Box::new(|_, _| None));
    let (producer, consumer) = (
        conn(1, 100, "127.0.0.1:40000"),
        conn(2, 200, "127.0.0.1:40001"),
    );
    let msg = Message {
        exchange: "shop".into(),
        routing_key: "orders".into(),
        body_size: 2,
        body_prefix: b"hi".to_vec(),
        ..Default::default()
    };
    let published = |t: u64| AmqpOut::Published {
        channel: 1,
        msg: msg.clone(),
        first: at(t),
        last: at(t + 10),
        confirmed: None,
        returned: None,
        seq: None,
    };
    let delivered = |tag: u64, t: u64| AmqpOut::DeliveryStarted {
        channel: 1,
        delivery_tag: tag,
        queue: Some("orders".into()),
        redelivered: false,
        msg: msg.clone(),
        at: at(t),
    };
    let finished = |tag: u64, t: u64| AmqpOut::DeliveryFinished {
        channel: 1,
        delivery_tag: tag,
        outcome: Outcome::Ack,
        at: at(t),
    };
    let mut out = vec![];
    let feed = |c: &mut Correlator, conn: &ConnInfo, op: AmqpOut, out: &mut Vec<Linked>| {
        c.on_flow(
            Flow::Record(conn.clone(), Record::Messaging(Box::new(op))),
            10_000,
            out,
        )
    };
    feed(&mut c, &producer, published(50), &mut out);
    feed(&mut c, &consumer, delivered(1, 60), &mut out);
    feed(&mut c, &consumer, finished(1, 70), &mut out);
    assert_eq!(out.len(), 2, "in order: linked at once");
    for (tag, t) in [(2, 300), (3, 310)] {
        feed(&mut c, &consumer, delivered(tag, t), &mut out);
        feed(&mut c, &consumer, finished(tag, t + 5), &mut out);
    }
    feed(&mut c, &producer, published(200), &mut out);
    feed(&mut c, &producer, published(210), &mut out);
    c.release_held(None, &mut out);
    let roots = out
        .iter()
        .filter(|l| matches!(l.item, Item::Process(_)) && l.ctx.parent_span_id.is_none())
        .count();
    assert_eq!(roots, 2, "{out:?}");
    assert_eq!(c.counts().calls_ambiguous(), 2);
}

fn in_tick(ns: u64, tick: u32) -> SegTime {
    SegTime { tick, ..at(ns) }
}

fn query(id: u64, first: SegTime, last: SegTime) -> Record {
    Record::Db(Box::new(crate::protocols::db::DbCall {
        system: crate::protocols::db::DbSystem::Postgresql,
        namespace: None,
        operation: "SELECT".into(),
        collection: None,
        query_text: format!("SELECT ? AS o{id}"),
        rows: Some(1),
        error: None,
        first,
        last,
    }))
}

/// A consumer reads `n` deliveries in one read (tick 4), then per delivery
/// `i`: acks it (or, `ack_first` false, queries first), queries with the
/// delivery's id, reads the reply (a new tick). Returns each query's
/// (trace, parent, evidence) and each consumer span's (trace, span), by
/// delivery tag.
#[allow(clippy::type_complexity)]
fn consume_batch(
    c: &mut Correlator,
    n: u64,
    ack_first: bool,
    now: u64,
    out: &mut Vec<Linked>,
) -> (
    Vec<(u64, [u8; 16], Option<[u8; 8]>, Evidence)>,
    Vec<(u64, [u8; 16], [u8; 8])>,
) {
    let (channel_conn, db) = (
        conn(2, 200, "127.0.0.1:40001"),
        conn(5, 200, "127.0.0.1:40005"),
    );
    let feed = |c: &mut Correlator, conn: &ConnInfo, r: Record, out: &mut Vec<Linked>| {
        c.on_flow(Flow::Record(conn.clone(), r), now, out)
    };
    let amqp = |op| Record::Messaging(Box::new(op));
    for tag in 1..=n {
        let msg = Message {
            routing_key: "mail".into(),
            body_size: 8,
            body_prefix: format!("order/{tag}").into_bytes(),
            ..Default::default()
        };
        let op = AmqpOut::DeliveryStarted {
            channel: 1,
            delivery_tag: tag,
            queue: Some("mail".into()),
            redelivered: false,
            msg,
            at: in_tick(100, 4),
        };
        feed(c, &channel_conn, amqp(op), out);
    }
    let ack = |tag: u64, ns: u64, tick: u32| AmqpOut::DeliveryFinished {
        channel: 1,
        delivery_tag: tag,
        outcome: Outcome::Ack,
        at: in_tick(ns, tick),
    };
    for tag in 1..=n {
        let (ns, tick) = (1_000 * tag, 4 + tag as u32);
        if ack_first {
            feed(c, &channel_conn, amqp(ack(tag, ns, tick - 1)), out);
        }
        let q = query(tag, in_tick(ns + 10, tick - 1), in_tick(ns + 20, tick));
        feed(c, &db, q, out);
        if !ack_first {
            feed(c, &channel_conn, amqp(ack(tag, ns + 30, tick)), out);
        }
    }
    let mut queries = vec![];
    let mut consumers = vec![];
    for l in out.iter() {
        match &l.item {
            Item::Db { call, .. } => {
                let id = call.query_text.rsplit('o').next().unwrap().parse().unwrap();
                queries.push((id, l.ctx.trace_id, l.ctx.parent_span_id, l.evidence));
            }
            Item::Process(p) => consumers.push((p.delivery_tag, l.ctx.trace_id, l.ctx.span_id)),
            _ => {}
        }
    }
    queries.sort_by_key(|q| q.0);
    consumers.sort_by_key(|p| p.0);
    (queries, consumers)
}

/// A consumer that acks first, starting on a backlog: every call after an
/// ack has other deliveries in flight, so it may be the next delivery's
/// (a consumer that acks late) until the last delivery, alone, shows that
/// it acks first. The calls held until then go under the delivery their
/// thread had acknowledged.
#[test]
fn a_backlogs_calls_wait_until_the_consumer_is_seen_to_ack_first() {
    let mut c = Correlator::new(Default::default(), Sampler::AlwaysOn, Box::new(|_, _| None));
    let mut out = vec![];
    let (queries, consumers) = consume_batch(&mut c, 4, true, 10_000, &mut out);
    assert_eq!(queries.len(), 4, "{out:?}");
    for ((id, trace, parent, evidence), (tag, consumer_trace, span)) in
        queries.iter().zip(&consumers)
    {
        assert_eq!(id, tag);
        assert_eq!(
            (trace, *parent, *evidence),
            (consumer_trace, Some(*span), Evidence::Ack),
            "query of delivery {id}"
        );
    }
    assert!(c.holds.is_empty());
    assert_eq!(c.counts().ambiguous.iter().sum::<u64>(), 0);
}

/// A consumer that acks late and made no call for its first delivery
/// looks, after that ack, like one that acks first: its calls are held,
/// then go out roots (counted) when nothing has shown how it acks, never
/// under the delivery it had acknowledged.
#[test]
fn held_calls_of_a_consumer_never_seen_to_ack_first_go_out_roots() {
    let mut c = Correlator::new(Default::default(), Sampler::AlwaysOn, Box::new(|_, _| None));
    let mut out = vec![];
    let channel_conn = conn(2, 200, "127.0.0.1:40001");
    let db = conn(5, 200, "127.0.0.1:40005");
    for tag in 1..=2 {
        let op = AmqpOut::DeliveryStarted {
            channel: 1,
            delivery_tag: tag,
            queue: Some("mail".into()),
            redelivered: false,
            msg: Message::default(),
            at: in_tick(100, 4),
        };
        c.on_flow(
            Flow::Record(channel_conn.clone(), Record::Messaging(Box::new(op))),
            10_000,
            &mut out,
        );
    }
    // Delivery 1: acked with no call. Then delivery 2's query, and its ack.
    for (tag, ns, tick) in [(1, 1_000, 4), (2, 3_000, 5)] {
        if tag == 2 {
            let q = query(2, in_tick(2_000, 4), in_tick(2_100, 5));
            c.on_flow(Flow::Record(db.clone(), q), 10_000, &mut out);
        }
        let op = AmqpOut::DeliveryFinished {
            channel: 1,
            delivery_tag: tag,
            outcome: Outcome::Ack,
            at: in_tick(ns, tick),
        };
        c.on_flow(
            Flow::Record(channel_conn.clone(), Record::Messaging(Box::new(op))),
            10_000,
            &mut out,
        );
    }
    assert!(
        !out.iter().any(|l| matches!(l.item, Item::Db { .. })),
        "the query waits"
    );
    c.release_held(Some(10_000 + holds::HOLD_NS + 1), &mut out);
    let q = out
        .iter()
        .find(|l| matches!(l.item, Item::Db { .. }))
        .expect("released");
    assert_eq!(
        (q.ctx.parent_span_id, q.evidence),
        (None, Evidence::Ambiguous)
    );
    assert_eq!(c.counts().ambiguous[Ambiguity::Consumer as usize], 1);
}

/// A consumer that acks late on a backlog is learnt at its first call
/// (made before any ack): nothing is held, each call under its delivery.
#[test]
fn a_backlog_of_a_consumer_that_acks_late_holds_nothing() {
    let mut c = Correlator::new(Default::default(), Sampler::AlwaysOn, Box::new(|_, _| None));
    let mut out = vec![];
    let (queries, consumers) = consume_batch(&mut c, 4, false, 10_000, &mut out);
    assert_eq!(queries.len(), 4, "{out:?}");
    for ((id, trace, parent, _), (tag, consumer_trace, span)) in queries.iter().zip(&consumers) {
        assert_eq!(id, tag);
        assert_eq!(
            (trace, *parent),
            (consumer_trace, Some(*span)),
            "query of {id}"
        );
    }
    assert!(c.holds.is_empty());
}
