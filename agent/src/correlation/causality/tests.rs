use super::*;
use crate::correlation::Ambiguity;
use crate::protocols::Lineage;

/// A write on thread `tid` at `ns`, with no tick.
fn at(tid: u32, ns: u64) -> SegTime {
    SegTime {
        enter_ns: ns,
        exit_ns: ns,
        tid,
        tick: 0,
        lineage: Default::default(),
        py_task: 0,
    }
}

fn started(l: &mut Linker, pid: u32, conn: u64, tid: u32, at: u64) -> SpanCtx {
    l.request_started(pid, conn, conn, tid, at, None, &Sampler::AlwaysOn);
    l.by_pid[&pid].last().unwrap().ctx
}

#[test]
fn same_thread_wins_then_the_only_request_then_none() {
    let mut l = Linker::default();
    let a = started(&mut l, 1, 10, 100, 5);
    let b = started(&mut l, 1, 11, 101, 6);
    assert_eq!(
        l.parent_of(1, at(100, 7), 0),
        Parent::Request(a, Evidence::SameThread),
        "thread 100 handles request a"
    );
    assert_eq!(
        l.parent_of(1, at(101, 7), 0),
        Parent::Request(b, Evidence::SameThread)
    );
    assert!(
        matches!(l.parent_of(1, at(999, 7), 0), Parent::Ambiguous(_)),
        "two in flight, other thread"
    );
    assert_eq!(
        l.parent_of(1, at(100, 4), 0),
        Parent::None,
        "a call before the request arrived is not its child"
    );
    assert_eq!(l.request_finished(1, 11), Some(b));
    assert_eq!(
        l.parent_of(1, at(999, 7), 0),
        Parent::Request(a, Evidence::OnlyInFlight),
        "the only request in flight (event loop, worker thread)"
    );
    assert_eq!(l.parent_of(2, at(100, 7), 0), Parent::None, "other process");
    l.connection_closed(1, 10);
    assert_eq!(
        l.parent_of(1, at(100, 7), 0),
        Parent::None,
        "outside any request: a root"
    );
}

#[test]
fn a_consumer_that_calls_before_any_ack_works_on_its_oldest_delivery() {
    let mut l = Linker::default();
    // Two deliveries of one channel (connection 3), read in one batch. The
    // thread calls before acknowledging anything: a consumer that acks
    // first would have acked what it works on, so it acks late, and works
    // on them in order.
    l.request_started(1, 10, 3, 100, 5, None, &Sampler::AlwaysOn);
    l.request_started(1, 11, 3, 100, 5, None, &Sampler::AlwaysOn);
    let (first, second) = (l.by_pid[&1][0].ctx, l.by_pid[&1][1].ctx);
    assert_eq!(
        l.parent_of(1, at(100, 7), 0),
        Parent::Request(first, Evidence::SameThread)
    );
    // Its call came before its ack: this consumer acks late.
    l.delivery_acked(1, 10, in_tick(100, 8, 4));
    assert!(l.acks_late.contains(&(1, 3)));
    l.request_started(1, 12, 3, 100, 20, None, &Sampler::AlwaysOn);
    assert_eq!(
        l.parent_of(1, at(100, 22), 0),
        Parent::Request(second, Evidence::SameThread),
        "after an ack, the oldest still in flight"
    );
    // Another channel of the process whose thread acked before calling
    // has shown nothing.
    l.request_started(1, 14, 4, 101, 20, None, &Sampler::AlwaysOn);
    l.request_started(1, 15, 4, 101, 21, None, &Sampler::AlwaysOn);
    l.delivery_acked(1, 14, in_tick(101, 22, 4));
    l.request_started(1, 16, 4, 101, 23, None, &Sampler::AlwaysOn);
    assert!(matches!(
        l.parent_of(1, in_tick(101, 24, 5), 0),
        Parent::Ambiguous(_)
    ));
    l.connection_closed(1, 3);
    assert!(
        l.acks_late.is_empty(),
        "forgotten with its channel's connection"
    );
}

#[test]
fn a_consumer_seen_acking_out_of_order_is_never_given_the_oldest() {
    let mut l = Linker::default();
    l.request_started(1, 10, 3, 100, 5, None, &Sampler::AlwaysOn);
    l.request_started(1, 11, 3, 100, 5, None, &Sampler::AlwaysOn);
    l.request_started(1, 12, 3, 100, 5, None, &Sampler::AlwaysOn);
    // The second finishes while the first is still in flight: it works
    // on several at once (an event loop, or a pool fed by one thread).
    l.delivery_acked(1, 11, in_tick(100, 6, 4));
    assert!(l.concurrent.contains(&(1, 3)));
    assert!(matches!(
        l.parent_of(1, in_tick(100, 7, 5), 0),
        Parent::Ambiguous(_)
    ));
    // Nor does a call after all acks teach it to ack late.
    l.delivery_acked(1, 10, in_tick(100, 8, 6));
    assert!(l.acks_late.is_empty());
    l.connection_closed(1, 3);
    assert!(l.concurrent.is_empty());
}

#[test]
fn a_consumer_that_lost_deliveries_is_no_evidence_until_they_are_accounted_for() {
    let mut l = Linker::default();
    l.request_started(1, 10, 3, 100, 5, None, &Sampler::AlwaysOn);
    let first = l.by_pid[&1][0].ctx;
    // Some of its deliveries were not captured: the one seen may not be
    // what it works on.
    l.set_blind(1, 3, true);
    assert!(matches!(
        l.parent_of(1, in_tick(100, 6, 4), 0),
        Parent::Ambiguous(_)
    ));
    l.read_delivered(1, in_tick(100, 7, 5), 20, first.span_id, true);
    // Nor is the process's only request in flight.
    started(&mut l, 1, 30, 200, 8);
    assert!(matches!(
        l.parent_of(1, in_tick(999, 9, 6), 0),
        Parent::Ambiguous(_)
    ));
    l.request_finished(1, 30);
    // A delivery never seen is acknowledged: what follows is not the last
    // known one's.
    l.ghost_acked(1, 3, in_tick(100, 10, 7));
    l.set_blind(1, 3, false);
    assert!(matches!(
        l.parent_of(1, in_tick(100, 11, 7), 0),
        Parent::Ambiguous(_)
    ));
    assert!(l.acks_early.is_empty() && l.acks_late.is_empty());
    // Its next ack is of a known delivery again.
    l.delivery_acked(1, 10, in_tick(100, 12, 8));
    assert_eq!(l.acked[&(1, 100)].ctx, Some(first));
}

#[test]
fn a_consumer_that_acks_first_works_on_what_it_acked() {
    let mut l = Linker::default();
    // Channel connection 3, consumer thread 100. The first delivery
    // arrives alone; the consumer acks it (tick 4), then queries in
    // the same tick: it acks first.
    l.request_started(1, 10, 3, 100, 5, None, &Sampler::AlwaysOn);
    let first = l.by_pid[&1][0].ctx;
    l.delivery_acked(1, 10, in_tick(100, 6, 4));
    assert_eq!(
        l.parent_of(1, in_tick(100, 7, 4), 20),
        Parent::Request(first, Evidence::Ack)
    );
    // Its reply read (tick 5), then the next call of the same work.
    l.read_delivered(1, in_tick(100, 8, 5), 20, first.span_id, true);
    // Meanwhile two more deliveries were read (prefetch).
    l.request_started(1, 11, 3, 100, 8, None, &Sampler::AlwaysOn);
    l.request_started(1, 12, 3, 100, 8, None, &Sampler::AlwaysOn);
    let second = l.by_pid[&1][0].ctx;
    assert_eq!(
        l.parent_of(1, in_tick(100, 9, 5), 21),
        Parent::Request(first, Evidence::Ack),
        "not a delivery still in flight"
    );
    // The second is acked, then worked on, the third still in flight.
    l.delivery_acked(1, 11, in_tick(100, 10, 6));
    assert_eq!(
        l.parent_of(1, in_tick(100, 11, 6), 20),
        Parent::Request(second, Evidence::Ack)
    );
    // Later steps of that work (a poll or a file read came between).
    assert_eq!(
        l.parent_of(1, in_tick(100, 12, 9), 20),
        Parent::Request(second, Evidence::Ack)
    );
    // Another thread's calls are not this consumer's work.
    assert_ne!(
        l.parent_of(1, in_tick(101, 12, 9), 20),
        Parent::Request(second, Evidence::Ack)
    );
}

#[test]
fn before_it_is_learnt_a_call_after_an_ack_with_others_in_flight_is_ambiguous() {
    let mut l = Linker::default();
    // Read together: the call after the first's ack is either the
    // first's (acks early) or the second's (acks late).
    l.request_started(1, 10, 3, 100, 5, None, &Sampler::AlwaysOn);
    l.request_started(1, 11, 3, 100, 5, None, &Sampler::AlwaysOn);
    l.delivery_acked(1, 10, in_tick(100, 6, 4));
    assert!(matches!(
        l.parent_of(1, in_tick(100, 7, 4), 20),
        Parent::Ambiguous(_)
    ));
    // Nor is the second, the only one in flight, taken for it later.
    assert!(matches!(
        l.parent_of(1, in_tick(100, 8, 7), 20),
        Parent::Ambiguous(_)
    ));
    assert!(l.acks_early.is_empty());
    l.connection_closed(1, 3);
    assert!(
        l.acked.is_empty(),
        "forgotten with its channel's connection"
    );
}

#[test]
fn a_delivery_read_after_an_ack_is_not_taken_for_the_work_that_follows() {
    let mut l = Linker::default();
    // Two deliveries arrive together and are acknowledged with no call
    // between: a consumer that acks first, or one whose work made none.
    l.request_started(1, 10, 3, 100, 5, None, &Sampler::AlwaysOn);
    l.request_started(1, 11, 3, 100, 5, None, &Sampler::AlwaysOn);
    l.delivery_acked(1, 10, in_tick(100, 7, 5));
    l.delivery_acked(1, 11, in_tick(100, 8, 6));
    // A third arrives after the acks and is alone in flight: a consumer that
    // acks first is still working on the second; one that acks late has
    // started on the third. Nothing on the wire tells them apart.
    l.request_started(1, 12, 3, 100, 9, None, &Sampler::AlwaysOn);
    assert!(matches!(
        l.parent_of(1, in_tick(100, 10, 7), 20),
        Parent::Ambiguous(_)
    ));
    l.delivery_acked(1, 12, in_tick(100, 11, 8));
    assert!(
        l.acks_late.is_empty() && l.acks_early.is_empty(),
        "nothing learnt from it"
    );
}

#[test]
fn pipelined_requests_of_one_connection_are_handled_oldest_first() {
    let mut l = Linker::default();
    let first = started(&mut l, 1, 10, 100, 5);
    started(&mut l, 1, 10, 100, 6);
    assert_eq!(
        l.parent_of(1, at(100, 7), 0),
        Parent::Request(first, Evidence::SameThread)
    );
}

/// A write on `tid` at `ns`, in tick `tick`.
fn in_tick(tid: u32, ns: u64, tick: u32) -> SegTime {
    SegTime {
        enter_ns: ns,
        exit_ns: ns + 1,
        tid,
        tick,
        lineage: Default::default(),
        py_task: 0,
    }
}

/// An event loop (one thread) with three requests in flight: each
/// callback's writes follow its own read.
#[test]
fn an_event_loops_calls_follow_the_read_of_their_tick() {
    let mut l = Linker::default();
    let (a, b, c) = (
        started(&mut l, 1, 10, 100, 5),
        started(&mut l, 1, 11, 100, 6),
        started(&mut l, 1, 12, 100, 7),
    );
    l.read_delivered(1, in_tick(100, 5, 21), 10, a.span_id, false);
    l.read_delivered(1, in_tick(100, 6, 22), 11, b.span_id, false);
    l.read_delivered(1, in_tick(100, 7, 23), 12, c.span_id, false);
    assert_eq!(
        l.parent_of(1, in_tick(100, 8, 22), 50),
        Parent::Request(b, Evidence::Tick)
    );
    assert_eq!(
        l.parent_of(1, in_tick(100, 8, 21), 50),
        Parent::Request(a, Evidence::Tick)
    );
    assert!(
        matches!(
            l.parent_of(1, in_tick(100, 8, 24), 50),
            Parent::Ambiguous(_)
        ),
        "a tick no known read opened"
    );
    assert!(
        matches!(l.parent_of(1, in_tick(100, 8, 0), 50), Parent::Ambiguous(_)),
        "no tick: the old rules"
    );
    assert!(
        matches!(
            l.parent_of(1, in_tick(101, 8, 22), 50),
            Parent::Ambiguous(_)
        ),
        "another thread's tick 22"
    );
    // A's query on connection 50 is answered; A's next query follows
    // that reply, on another connection or (nothing else waiting) on
    // the same.
    l.read_delivered(1, in_tick(100, 9, 25), 50, a.span_id, true);
    assert_eq!(
        l.parent_of(1, in_tick(100, 10, 25), 51),
        Parent::Request(a, Evidence::Tick)
    );
    assert!(
        matches!(
            l.parent_of(1, in_tick(100, 10, 25), 50),
            Parent::Ambiguous(_)
        ),
        "on the connection the reply freed: maybe b's or c's queued query"
    );
    // b's and c's ticks wrote (their calls, on connections of their
    // own): neither waits for a connection.
    l.wrote(1, 100, 22);
    assert!(
        matches!(
            l.parent_of(1, in_tick(100, 10, 25), 50),
            Parent::Ambiguous(_)
        ),
        "c may still wait"
    );
    l.wrote(1, 100, 23);
    assert_eq!(
        l.parent_of(1, in_tick(100, 10, 25), 50),
        Parent::Request(a, Evidence::Tick),
        "nothing else waits"
    );
    // A answered: a later write of its tick is not its call.
    l.request_finished(1, 10);
    assert!(
        matches!(
            l.parent_of(1, in_tick(100, 11, 25), 51),
            Parent::Ambiguous(_)
        ),
        "b and c in flight, no evidence"
    );
}

/// An event loop opens a connection for request b; its first call is
/// written once the connect completes, in a tick no read opened.
#[test]
fn a_new_connections_first_call_is_its_openers() {
    let mut l = Linker::default();
    let (a, b) = (
        started(&mut l, 1, 10, 100, 5),
        started(&mut l, 1, 11, 100, 6),
    );
    l.read_delivered(1, in_tick(100, 5, 21), 10, a.span_id, false);
    l.read_delivered(1, in_tick(100, 6, 22), 11, b.span_id, false);
    l.connection_opened(1, 50, (100, 22));
    l.connection_opened(1, 51, (100, 22));
    assert_eq!(
        l.parent_of(1, in_tick(100, 9, 30), 50),
        Parent::Request(b, Evidence::Opener)
    );
    assert!(
        matches!(
            l.parent_of(1, in_tick(100, 9, 31), 50),
            Parent::Ambiguous(_)
        ),
        "only the first call"
    );
    // b went on (its first call): connection 51 may serve anyone now.
    assert!(matches!(
        l.parent_of(1, in_tick(100, 9, 32), 51),
        Parent::Ambiguous(_)
    ));
    // A connect in a tick no request's read opened names no one.
    l.connection_opened(1, 52, (100, 40));
    assert!(matches!(
        l.parent_of(1, in_tick(100, 9, 41), 52),
        Parent::Ambiguous(_)
    ));
    l.connection_opened(1, 53, (100, 21));
    l.connection_closed(1, 53);
    assert_eq!(
        l.marked_threads(),
        2,
        "forgotten at close (left: the thread's reads, and that it is an event loop)"
    );
}

/// Deliveries 10 and 11 of channel connection 3 of process 1, arrived at 5
/// and read by thread 100 in one read (at `ns`, in `tick`).
fn two_deliveries_read(l: &mut Linker, ns: u64, tick: u32) -> (SpanCtx, SpanCtx) {
    l.request_started(1, 10, 3, 100, 5, None, &Sampler::AlwaysOn);
    l.request_started(1, 11, 3, 100, 5, None, &Sampler::AlwaysOn);
    let (first, second) = (l.by_pid[&1][0].ctx, l.by_pid[&1][1].ctx);
    l.delivery_read(1, in_tick(100, ns, tick), 10, 3, first.span_id);
    l.delivery_read(1, in_tick(100, ns, tick), 11, 3, second.span_id);
    (first, second)
}

/// One read brought a batch of deliveries; an event-loop consumer runs a
/// callback for each in that tick, and the first opens a pooled
/// connection: any of them may have, so its first call names none. (Taking
/// the tick's last delivery put an amqplib consumer's first query under
/// another message.)
#[test]
fn a_connection_opened_in_a_tick_that_read_several_requests_names_none() {
    let mut l = Linker::default();
    two_deliveries_read(&mut l, 5, 4);
    l.connection_opened(1, 50, (100, 4));
    assert_eq!(l.openers.len(), 0);
    let p = l.parent_of(1, in_tick(100, 9, 7), 50);
    assert!(!matches!(p, Parent::Request(_, Evidence::Opener)), "{p:?}");
}

#[test]
fn a_reply_read_for_a_request_another_thread_serves_is_no_evidence() {
    let mut l = Linker::default();
    // Requests read by a selector thread (100), worked on by a pool.
    let a = started(&mut l, 1, 10, 100, 5);
    let _b = started(&mut l, 1, 11, 100, 6);
    l.read_delivered(1, in_tick(200, 7, 3), 50, a.span_id, true);
    assert!(matches!(
        l.parent_of(1, in_tick(200, 8, 3), 51),
        Parent::Ambiguous(_)
    ));
}

#[test]
fn marks_are_bounded_and_forgotten_with_their_connection() {
    let mut l = Linker::default();
    let a = started(&mut l, 1, 10, 100, 5);
    for tick in 1..=MARKS_PER_THREAD as u32 + 5 {
        l.read_delivered(1, in_tick(100, 5, tick), 10, a.span_id, false);
    }
    assert_eq!(l.marks[&1][&100].len(), MARKS_PER_THREAD);
    l.read_delivered(1, in_tick(100, 5, 0), 10, a.span_id, false);
    assert_eq!(
        l.marks[&1][&100].len(),
        MARKS_PER_THREAD,
        "no tick: nothing to remember"
    );
    assert_eq!(l.marked_threads(), 1);
    l.connection_closed(1, 10);
    assert_eq!((l.marked_threads(), l.marks.len()), (0, 0));
    for tid in 0..MAX_THREADS as u32 + 1 {
        l.read_delivered(2, in_tick(tid, 5, 1), 10, a.span_id, false);
    }
    assert_eq!(
        (l.marked_threads(), l.marks_dropped),
        (1, MAX_THREADS as u64),
        "counted when cleared"
    );
}

#[test]
fn an_event_loop_serving_two_connections_at_once_is_ambiguous() {
    let mut l = Linker::default();
    let a = started(&mut l, 1, 10, 100, 5);
    assert_eq!(
        l.parent_of(1, at(100, 6), 0),
        Parent::Request(a, Evidence::SameThread),
        "b not read yet: a's call"
    );
    let b = started(&mut l, 1, 11, 100, 7);
    assert!(
        matches!(l.parent_of(1, at(100, 8), 0), Parent::Ambiguous(_)),
        "a and b in flight on one thread"
    );
    l.request_finished(1, 10);
    assert_eq!(
        l.parent_of(1, at(100, 9), 0),
        Parent::Ambiguous(Ambiguity::EventLoop),
        "a answered, b alone: but the loop may run a's work after its response"
    );
    assert_eq!(l.request_finished(1, 11), Some(b));
    // A thread that serves its connections one after the other (thread per
    // connection, keep-alive) is no event loop.
    let mut l = Linker::default();
    started(&mut l, 1, 10, 100, 5);
    l.request_finished(1, 10);
    let c = started(&mut l, 1, 11, 100, 7);
    assert_eq!(
        l.parent_of(1, at(100, 8), 0),
        Parent::Request(c, Evidence::SameThread)
    );
}

#[test]
fn a_late_client_record_is_adopted_by_the_waiting_request() {
    let mut l = Linker::default();
    let own = started(&mut l, 1, 10, 100, 5);
    let client = SpanCtx {
        trace_id: [9; 16],
        span_id: [8; 8],
        parent_span_id: None,
        sampled: true,
    };
    assert!(l.adopt(1, 10, &client));
    let now = l.parent_of(1, at(100, 6), 0).ctx().unwrap();
    assert_eq!(
        (now.trace_id, now.span_id, now.parent_span_id),
        (client.trace_id, own.span_id, Some(client.span_id))
    );
    assert!(!l.adopt(1, 10, &client), "only once");
    assert!(!l.adopt(1, 99, &client), "unknown connection");
}

#[test]
fn incoming_traceparent_and_sampling_are_fixed_at_request_time() {
    let mut l = Linker::default();
    let tp =
        crate::spans::traceparent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
            .unwrap();
    l.request_started(1, 10, 10, 100, 5, Some(tp), &Sampler::default());
    let ctx = l.parent_of(1, at(100, 6), 0).ctx().unwrap();
    assert_eq!(ctx.trace_id, tp.trace_id);
    assert_eq!(ctx.parent_span_id, Some(tp.parent_id));
    assert!(!ctx.sampled, "parent-based: the caller did not sample");
}

/// Goroutines (names with the top bit set), as the Go probes report them.
const G1: u32 = 0x8000_0001;
const G2: u32 = 0x8000_0002;
const WRITER: u32 = 0x8000_0010;
const SPAWNED: u32 = 0x8000_0020;

fn go_write(ns: u64, lineage: Lineage) -> SegTime {
    SegTime {
        enter_ns: ns,
        exit_ns: ns + 1,
        tid: WRITER,
        tick: 0,
        lineage,
        py_task: 0,
    }
}

#[test]
fn a_goroutine_serves_its_own_request() {
    let mut l = Linker::default();
    let a = started(&mut l, 1, 10, G1, 5);
    let _b = started(&mut l, 1, 11, G2, 6);
    assert_eq!(
        l.parent_of(1, at(G1, 7), 0),
        Parent::Request(a, Evidence::Goroutine)
    );
}

/// A call's record comes with its reply, which a worker's reader goroutine
/// may read after the request the call was made for is answered: the
/// request still names it, by the time its goroutine served it. A `g`
/// reused by a later goroutine is told apart by the time.
#[test]
fn a_late_record_finds_the_request_its_goroutine_served_then() {
    let mut l = Linker::default();
    let a = started(&mut l, 1, 10, G1, 5);
    let b = started(&mut l, 1, 11, G2, 6);
    assert_eq!(l.request_answered(1, 10, 20).map(|r| r.0), Some(a));
    // G1 handed a job to the worker at 8, while it served `a`; the job's
    // record comes now, after `a` was answered.
    let handed = |ns| Lineage {
        waker: G1,
        waker_origin_ns: ns,
        ..Default::default()
    };
    assert_eq!(
        l.parent_of(1, go_write(8, handed(8)), 0),
        Parent::Request(a, Evidence::Goroutine)
    );
    // Written by G1 itself while it served `a`.
    assert_eq!(
        l.parent_of(1, at(G1, 9), 0),
        Parent::Request(a, Evidence::Goroutine)
    );
    // A write after `a` was answered is none of its, nor `b`'s, the only
    // request in flight: no goroutine rule names it.
    assert_eq!(
        l.parent_of(1, at(G1, 21), 0),
        Parent::Ambiguous(Ambiguity::Goroutine)
    );
    // G1's `g` serves a new request `c` from 30 (a new goroutine, or the
    // connection's next request); `b` is over too.
    let c = started(&mut l, 1, 12, G1, 30);
    l.request_answered(1, 11, 25);
    l.request_answered(1, 12, 40);
    assert_eq!(
        l.parent_of(1, go_write(35, handed(35)), 0),
        Parent::Request(c, Evidence::Goroutine)
    );
    assert_eq!(
        l.parent_of(1, at(G2, 24), 0),
        Parent::Request(b, Evidence::Goroutine),
        "with nothing in flight in the process"
    );
    assert_eq!(
        l.parent_of(1, at(G1, 26), 0),
        Parent::None,
        "between two requests"
    );
}

#[test]
fn a_channel_hand_off_names_the_sender_before_any_starter() {
    let mut l = Linker::default();
    let a = started(&mut l, 1, 10, G1, 5);
    let b = started(&mut l, 1, 11, G2, 6);
    // Net/http's writeLoop, handed the request by G2, started long ago
    // by G1's goroutine (which serves another request now).
    let handed = Lineage {
        waker: G2,
        origin: G1,
        origin_ns: 1,
        ..Default::default()
    };
    assert_eq!(
        l.parent_of(1, go_write(8, handed), 0),
        Parent::Request(b, Evidence::Goroutine)
    );
    // A goroutine G1 started while serving `a` (after it was read).
    let spawned = Lineage {
        origin: G1,
        origin_ns: 6,
        ..Default::default()
    };
    assert_eq!(
        l.parent_of(1, go_write(8, spawned), 0),
        Parent::Request(a, Evidence::Goroutine)
    );
    // The sender serves nothing itself (it was started for `a`).
    let relayed = Lineage {
        waker: SPAWNED,
        waker_origin: G1,
        waker_origin_ns: 7,
        ..Default::default()
    };
    assert_eq!(
        l.parent_of(1, go_write(9, relayed), 0),
        Parent::Request(a, Evidence::Goroutine)
    );
}

#[test]
fn a_goroutine_started_before_its_starters_request_is_not_its_child() {
    let mut l = Linker::default();
    let _a = started(&mut l, 1, 10, G1, 5);
    let _b = started(&mut l, 1, 11, G2, 6);
    // Started by G1 at 3, before G1 read `a`: a worker of an earlier
    // request, now working for whoever fed it.
    let old = Lineage {
        origin: G1,
        origin_ns: 3,
        ..Default::default()
    };
    assert!(matches!(
        l.parent_of(1, go_write(8, old), 0),
        Parent::Ambiguous(_)
    ));
    // Nothing at all: the thread rules see an unknown goroutine.
    assert!(matches!(
        l.parent_of(1, go_write(8, Lineage::default()), 0),
        Parent::Ambiguous(_)
    ));
}

#[test]
fn a_batch_of_deliveries_is_worked_on_oldest_first_from_the_reads_tick() {
    let mut l = Linker::default();
    // One read (tick 4) on channel connection 3 brought two deliveries.
    let (first, second) = two_deliveries_read(&mut l, 4, 4);
    // The handler's first write, nothing read since: the first delivery's
    // (the consumer acked nothing before it).
    assert_eq!(
        l.parent_of(1, in_tick(100, 6, 4), 20),
        Parent::Request(first, Evidence::Tick)
    );
    l.wrote(1, 100, 4);
    // Its reply, then its next call on another connection.
    l.read_delivered(1, in_tick(100, 7, 5), 20, first.span_id, true);
    assert_eq!(
        l.parent_of(1, in_tick(100, 8, 5), 21),
        Parent::Request(first, Evidence::Tick)
    );
    // It acks the first after its calls: it acks late, so the second,
    // already read, is what it works on next.
    l.delivery_acked(1, 10, in_tick(100, 9, 6));
    assert!(l.acks_late.contains(&(1, 3)));
    assert_eq!(
        l.parent_of(1, in_tick(100, 10, 6), 20),
        Parent::Request(second, Evidence::SameThread)
    );
    // Closing the channel's connection forgets the deliveries' reads (the
    // replies' go with their own connections).
    l.connection_closed(1, 3);
    let left: Vec<u64> = l.marks[&1][&100].iter().map(|m| m.conn).collect();
    assert_eq!(left, [20]);
}

#[test]
fn a_delivery_read_while_an_acked_one_is_worked_on_is_no_evidence() {
    let mut l = Linker::default();
    // The consumer acked the first delivery, made no call yet (it may ack
    // first), and then read the next: its next write may be the first's.
    l.request_started(1, 10, 3, 100, 5, None, &Sampler::AlwaysOn);
    let first = l.by_pid[&1][0].ctx;
    l.delivery_read(1, in_tick(100, 5, 4), 10, 3, first.span_id);
    l.request_started(1, 11, 3, 100, 5, None, &Sampler::AlwaysOn);
    let second = l.by_pid[&1][1].ctx;
    l.delivery_read(1, in_tick(100, 5, 4), 11, 3, second.span_id);
    l.delivery_acked(1, 10, in_tick(100, 6, 4));
    l.request_started(1, 12, 3, 100, 7, None, &Sampler::AlwaysOn);
    let third = l.by_pid[&1][1].ctx;
    l.delivery_read(1, in_tick(100, 7, 5), 12, 3, third.span_id);
    assert!(matches!(
        l.parent_of(1, in_tick(100, 8, 5), 20),
        Parent::Ambiguous(_)
    ));
}

/// HTTP/2: streams of one connection are concurrent. Two read on one thread
/// are never "the oldest on the connection", and two read in one tick do not
/// tell a write in that tick which it serves; a stream read alone in its tick
/// does.
#[test]
fn http2_streams_are_concurrent_requests() {
    let mut l = Linker::default();
    let stream = |l: &mut Linker, key: u64, ns: u64| {
        l.stream_started(1, key, 10, 100, ns, None, &Sampler::AlwaysOn)
    };
    let a = stream(&mut l, 1001, 5);
    l.read_delivered(1, in_tick(100, 5, 7), 1001, a.span_id, false);
    // A write in the tick that read only stream a: a's.
    assert_eq!(
        l.parent_of(1, in_tick(100, 6, 7), 20),
        Parent::Request(a, Evidence::Tick)
    );
    // Streams b and c read by one read (one tick).
    let b = stream(&mut l, 1003, 8);
    let c = stream(&mut l, 1005, 8);
    l.read_delivered(1, in_tick(100, 8, 8), 1003, b.span_id, false);
    l.read_delivered(1, in_tick(100, 8, 8), 1005, c.span_id, false);
    assert!(matches!(
        l.parent_of(1, in_tick(100, 9, 8), 20),
        Parent::Ambiguous(_)
    ));
    // With no tick, three streams on the thread: not the oldest.
    assert!(matches!(
        l.parent_of(1, at(100, 9), 20),
        Parent::Ambiguous(_)
    ));
    // Each finishes by its own key; closing the connection ends the rest.
    assert_eq!(l.request_finished(1, 1003), Some(b));
    assert_eq!(l.request_finished(1, 1001), Some(a));
    // c alone now, but with no tick: the thread serves streams interleaved.
    assert_eq!(
        l.parent_of(1, at(100, 9), 20),
        Parent::Ambiguous(Ambiguity::EventLoop)
    );
    assert_eq!(
        l.parent_of(1, in_tick(100, 9, 8), 20),
        Parent::Request(c, Evidence::Tick),
        "the tick still names it"
    );
    l.connection_closed(1, 10);
    assert_eq!(l.entries(), 0);
}

/// A pre-fork pool: the front process (1) hands each request's task to a
/// worker process (2) over a pipe (connection 50); the worker's calls are
/// the task's request's, and its result write ends the task.
#[test]
fn a_worker_works_for_the_request_its_task_was_handed_over_for() {
    let mut l = Linker::default();
    let a = started(&mut l, 1, 10, 100, 5);
    let b = started(&mut l, 1, 11, 101, 6);
    // Each front thread writes its own request's task.
    assert_eq!(
        l.handoff_parent(1, at(100, 7), 50),
        Parent::Request(a, Evidence::SameThread)
    );
    assert_eq!(
        l.handoff_parent(1, at(101, 8), 50),
        Parent::Request(b, Evidence::SameThread)
    );
    // Worker threads 200 and 201 read them.
    l.task_started(2, 50, at(200, 9), Some(a));
    l.task_started(2, 50, at(201, 9), Some(b));
    assert_eq!(
        l.parent_of(2, at(200, 10), 60),
        Parent::Request(a, Evidence::Pipe)
    );
    assert_eq!(
        l.parent_of(2, at(201, 10), 61),
        Parent::Request(b, Evidence::Pipe)
    );
    assert_eq!(l.task_of(2, 200), Some(Some(a)));
    // Thread 200 writes its result: its next calls are nobody's but b's
    // is still the only task in flight (a thread it handed work to).
    l.task_finished(2, 200);
    assert_eq!(l.task_of(2, 200), None);
    assert_eq!(
        l.parent_of(2, at(200, 11), 60),
        Parent::Request(b, Evidence::Pipe)
    );
    // A task of an unknown request: its calls are roots, never another's.
    l.task_started(2, 50, at(200, 12), None);
    assert_eq!(l.task_of(2, 200), Some(None));
    assert_eq!(
        l.parent_of(2, at(200, 13), 60),
        Parent::Ambiguous(Ambiguity::UnknownTask)
    );
    // The pipe closes: its tasks are over.
    l.connection_closed(2, 50);
    assert_eq!(l.parent_of(2, at(201, 14), 61), Parent::None);
}

/// A dispatcher hands several requests on from one tick, or from one
/// thread: "the first read" and "the oldest" are how a sequential handler
/// works, not a dispatcher, so a hand-off takes neither.
#[test]
fn a_hand_off_is_placed_only_when_one_request_is_named() {
    let mut l = Linker::default();
    // One read (tick 4) delivered two requests on one thread.
    let a = started(&mut l, 1, 10, 100, 5);
    let _b = started(&mut l, 1, 11, 100, 5);
    l.read_delivered(1, in_tick(100, 5, 4), 10, a.span_id, false);
    let bs = l.by_pid[&1][1].ctx.span_id;
    l.read_delivered(1, in_tick(100, 5, 4), 11, bs, false);
    for at in [in_tick(100, 6, 4), at(100, 6)] {
        assert_eq!(
            l.handoff_parent(1, at, 50),
            Parent::Ambiguous(Ambiguity::HandOff)
        );
    }
    // A client call there still goes to the first (a sequential handler).
    assert_eq!(
        l.parent_of(1, in_tick(100, 6, 4), 60),
        Parent::Request(a, Evidence::Tick)
    );
    // One request left, on a thread that served two at once: no evidence.
    l.request_finished(1, 11);
    assert_eq!(
        l.handoff_parent(1, at(100, 7), 50),
        Parent::Ambiguous(Ambiguity::EventLoop)
    );
    // With one request in flight on a thread that serves one at a time, the
    // hand-off is placed.
    let mut l = Linker::default();
    let a = started(&mut l, 1, 10, 100, 5);
    assert_eq!(
        l.handoff_parent(1, at(100, 7), 50),
        Parent::Request(a, Evidence::SameThread)
    );
}

/// A read (or write) in Python context `task` on thread `tid` at `ns`.
fn in_context(tid: u32, ns: u64, tick: u32, task: u32) -> SegTime {
    SegTime {
        py_task: task,
        ..in_tick(tid, ns, tick)
    }
}

/// Delivery `key` of channel connection 3, read on thread 100 at `ns` in
/// Python context `reader`.
fn delivered(l: &mut Linker, key: u64, ns: u64, reader: u32) -> SpanCtx {
    let ctx = l.request_started(1, key, 3, 100, ns, None, &Sampler::AlwaysOn);
    l.delivery_read(1, in_context(100, ns, ns as u32, reader), key, 3, [0; 8]);
    ctx
}

#[test]
fn an_asyncio_consumer_is_never_given_its_oldest_delivery() {
    // aio-pika: the connection's reader task (context 7) reads the
    // deliveries; each message's handler runs as a task of its own. The
    // first, alone, calls before its ack: the consumer is learnt to ack
    // late.
    let mut l = Linker::default();
    let d1 = delivered(&mut l, 10, 5, 7);
    assert_eq!(
        l.parent_of(1, in_context(100, 7, 9, 21), 0),
        Parent::Request(d1, Evidence::SameThread)
    );
    l.delivery_acked(1, 10, in_context(100, 8, 10, 21));
    assert!(l.acks_late.contains(&(1, 3)));
    // Two deliveries in flight; a handler's call, its calls never
    // overlapping another's (so the thread is not seen multiplexing): it
    // may be either message's, so neither.
    delivered(&mut l, 11, 20, 7);
    delivered(&mut l, 12, 21, 7);
    assert!(matches!(
        l.parent_of(1, in_context(100, 23, 30, 22), 0),
        Parent::Ambiguous(_)
    ));
    // A blocking consumer calls in the context that read: in order, the
    // oldest.
    let mut l = Linker::default();
    let d1 = delivered(&mut l, 10, 5, 7);
    assert_eq!(
        l.parent_of(1, in_context(100, 7, 9, 7), 0),
        Parent::Request(d1, Evidence::SameThread)
    );
    l.delivery_acked(1, 10, in_context(100, 8, 10, 7));
    let d2 = delivered(&mut l, 11, 20, 7);
    delivered(&mut l, 12, 21, 7);
    assert_eq!(
        l.parent_of(1, in_context(100, 23, 30, 7), 0),
        Parent::Request(d2, Evidence::SameThread)
    );
}

/// Python: a task the handler created (`gather`, a client's own task)
/// waits for its creator's answer, for a request read before it was
/// created; a context that had the creator's address before (another life:
/// created at another time) names nothing, nor does a shared context.
#[test]
fn a_child_tasks_calls_go_to_the_request_its_creator_answers() {
    let mut l = Linker::default();
    let (handler, child, other) = (0x8000_0100, 0x8000_0200, 0x8000_0300);
    // The handler's context was created at 10; its child at 25.
    l.child_task(1, child, (handler, 25, 10));
    // Another life of the handler's address (created at 40) made a child.
    l.child_task(1, other, (handler, 45, 40));
    // The handler (created at 10) answers a request read at 20.
    assert_eq!(l.children_since(1, handler, 10, 20), vec![(child, 25)]);
    assert!(
        l.children_since(1, handler, 10, 20).is_empty(),
        "taken once"
    );
    // A child created before the answered request was read is another
    // request's: forgotten.
    l.child_task(1, child, (handler, 15, 10));
    assert!(l.children_since(1, handler, 10, 20).is_empty());
    // A creator seen reading requests of two connections at once is shared
    // by several requests' work: no child waits for it.
    l.request_started(1, 50, 50, 7, 5, None, &Sampler::AlwaysOn);
    l.request_started(1, 51, 51, 7, 6, None, &Sampler::AlwaysOn);
    l.request_read_in(1, 50, handler);
    l.request_read_in(1, 51, handler);
    l.child_task(1, child, (handler, 30, 10));
    assert!(l.children_since(1, handler, 10, 20).is_empty());
}

/// uvloop: each transport's callback reads in a context of its own, and
/// the task steps those reads woke run in the same tick (no poll between).
/// A task's write after another request's read is no evidence of that
/// request; only a read in the write's own context is. (Taking the tick's
/// read put 13 to 28 of 120 calls of a FastAPI service under uvicorn with
/// uvloop under another request, at 8 in flight.)
#[test]
fn a_python_tasks_write_after_another_contexts_read_is_not_that_requests() {
    let mut l = Linker::default();
    let (a, b) = (
        started(&mut l, 1, 10, 100, 5),
        started(&mut l, 1, 11, 100, 6),
    );
    // a's transport (context 11) and b's (12) read their requests.
    l.read_delivered(1, in_context(100, 5, 21, 11), 10, a.span_id, false);
    l.read_delivered(1, in_context(100, 6, 22, 12), 11, b.span_id, false);
    // Task 31 (a's handler) writes in the tick of b's read.
    let p = l.parent_of(1, in_context(100, 7, 22, 31), 50);
    assert!(matches!(p, Parent::Ambiguous(_)), "{p:?}");
    // A write in the reading callback's own context is its request's.
    assert_eq!(
        l.parent_of(1, in_context(100, 7, 22, 12), 51),
        Parent::Request(b, Evidence::Tick)
    );
    // Task 31 reads its call's reply itself, then writes on.
    l.read_delivered(1, in_context(100, 8, 23, 31), 52, a.span_id, true);
    assert_eq!(
        l.parent_of(1, in_context(100, 9, 23, 31), 53),
        Parent::Request(a, Evidence::Tick)
    );
    // Connections opened in a tick that a's transport read: the first
    // call of one names a only when made in that context.
    l.read_delivered(1, in_context(100, 10, 24, 11), 10, a.span_id, false);
    l.connection_opened(1, 60, (100, 24));
    l.connection_opened(1, 61, (100, 24));
    let p = l.parent_of(1, in_context(100, 11, 30, 32), 60);
    assert!(matches!(p, Parent::Ambiguous(_)), "{p:?}");
    assert_eq!(
        l.parent_of(1, in_context(100, 11, 31, 11), 61),
        Parent::Request(a, Evidence::Opener)
    );
}

/// A call of thread `tid` at `ns` in Python context `task`, created at
/// `born`.
fn in_task(tid: u32, ns: u64, task: u32, born: u64) -> SegTime {
    SegTime {
        py_task: task,
        lineage: Lineage {
            origin_ns: born,
            ..Default::default()
        },
        ..at(tid, ns)
    }
}

/// Python: a task that answered its request and goes on working (the
/// background tasks Starlette runs after a response, in the request's own
/// task) calls while another request, which another context read, is the
/// only one in flight. That request is not the call's. (Taking it put 1 to
/// 2 of 40 such calls of a FastAPI service under another request.)
#[test]
fn a_python_tasks_calls_after_its_answer_are_no_other_requests() {
    let mut l = Linker::default();
    let a = started(&mut l, 1, 10, 100, 5);
    // a's transport (context 11) read it.
    l.request_read_in(1, 10, 11);
    // Task 31, created at 3, answered an earlier request at 4.
    l.context_answered(1, in_task(100, 4, 31, 3));
    assert_eq!(
        l.parent_of(1, in_task(100, 8, 31, 3), 50),
        Parent::Ambiguous(Ambiguity::AfterAnswer),
        "a on its thread"
    );
    assert_eq!(
        l.parent_of(1, in_task(101, 8, 31, 3), 51),
        Parent::Ambiguous(Ambiguity::AfterAnswer),
        "a alone in the process"
    );
    // Another life of context 31 (created at 6) has answered nothing.
    assert_eq!(
        l.parent_of(1, in_task(100, 8, 31, 6), 52),
        Parent::Request(a, Evidence::SameThread)
    );
    // A thread's own context, which answered a request and then read a
    // (thread per request): the request it read is its call's.
    let mut l = Linker::default();
    let b = started(&mut l, 1, 12, 100, 5);
    l.request_read_in(1, 12, 41);
    l.context_answered(1, in_task(100, 4, 41, 0));
    assert_eq!(
        l.parent_of(1, in_task(100, 8, 41, 0), 53),
        Parent::Request(b, Evidence::SameThread)
    );
}

/// An event loop: a handler reads its call's reply, answers its request,
/// then calls on (work after its response) in that same tick, while
/// another request is the only one in flight on the thread. The tick's
/// input was the answered request's: the call is none of the requests in
/// flight. (Taking the one in flight put 21 and 24 of 40 such calls of an
/// Express service under another request.)
#[test]
fn a_write_after_an_answered_requests_input_is_no_other_requests() {
    let mut l = Linker::default();
    let (a, b) = (
        started(&mut l, 1, 10, 100, 5),
        started(&mut l, 1, 11, 100, 6),
    );
    l.read_delivered(1, in_tick(100, 5, 21), 10, a.span_id, false);
    l.read_delivered(1, in_tick(100, 6, 22), 11, b.span_id, false);
    // a's call on connection 50 is answered in tick 30; a answers.
    l.read_delivered(1, in_tick(100, 9, 30), 50, a.span_id, true);
    l.request_finished(1, 10);
    assert_eq!(
        l.parent_of(1, in_tick(100, 10, 30), 51),
        Parent::Ambiguous(Ambiguity::AfterAnswer)
    );
    // b's own reply, read later, still names b.
    l.read_delivered(1, in_tick(100, 11, 31), 52, b.span_id, true);
    assert_eq!(
        l.parent_of(1, in_tick(100, 12, 31), 53),
        Parent::Request(b, Evidence::Tick)
    );
}

/// A thread that serves one connection in order goes on from an answered
/// request to the next it read before, without a read: pipelined requests
/// (or a consumer's prefetched deliveries). That write is the next one's.
#[test]
fn after_an_answered_request_a_thread_goes_on_to_the_next_of_its_source() {
    let mut l = Linker::default();
    // c and d pipelined on connection 12, read in one tick.
    l.request_started(1, 12, 12, 100, 5, None, &Sampler::AlwaysOn);
    l.request_started(1, 12, 12, 100, 5, None, &Sampler::AlwaysOn);
    let (c, d) = (l.by_pid[&1][0].ctx, l.by_pid[&1][1].ctx);
    l.read_delivered(1, in_tick(100, 5, 21), 12, c.span_id, false);
    l.read_delivered(1, in_tick(100, 5, 21), 12, d.span_id, false);
    // c's query is answered in tick 30; c answers; d's query follows.
    l.read_delivered(1, in_tick(100, 9, 30), 50, c.span_id, true);
    l.request_finished(1, 12);
    assert_eq!(
        l.parent_of(1, in_tick(100, 10, 30), 50),
        Parent::Request(d, Evidence::SameThread)
    );
}

/// On an event loop, its one request in flight is evidence only for the
/// Python context that read it: a blocking-style handler calls from its
/// read's context, while another context may be any request's work.
#[test]
fn an_event_loops_one_delivery_counts_only_for_the_context_that_read_it() {
    let mut l = Linker::default();
    // An HTTP request (connection 20) and a delivery of channel 3 in flight
    // at once on thread 100: an event loop.
    started(&mut l, 1, 20, 100, 4);
    let d = delivered(&mut l, 10, 5, 7);
    l.request_finished(1, 20);
    assert_eq!(
        l.parent_of(1, in_context(100, 9, 30, 7), 0),
        Parent::Request(d, Evidence::SameThread),
        "the context that read it"
    );
    assert_eq!(
        l.parent_of(1, in_context(100, 9, 31, 8), 0),
        Parent::Ambiguous(Ambiguity::EventLoop),
        "another context"
    );
}
