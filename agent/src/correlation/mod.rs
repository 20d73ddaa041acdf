//! Stage 4, correlation: decides every span's ids and parent from the typed
//! records, before any span is built. Pure logic: no I/O (the one conntrack
//! read is handed in as [`stitch::NatLookup`]), no locks, no clocks (time
//! comes with each call), so it is unit-testable from event sequences.
//!
//! - [`causality`]: which request in flight in a process a call was made for;
//! - [`stitch`]: socket-pair stitching across processes on this node,
//!   through [`relay`]s and DNAT ([`nat`]);
//! - [`holds`]: traces held for a late client record;
//! - [`continuity`]: publish -> consume for messages with no traceparent;
//! - [`handoff`]: tasks handed to a pre-fork pool's workers over pipes.
//!
//! Every [`Linked`] carries the [`Evidence`] for its parent. Where the
//! evidence is not confident the span stays a root, and that is counted.
pub mod causality;
pub mod continuity;
pub mod handoff;
pub mod holds;
pub mod kernel;
pub mod nat;
pub mod relay;
pub mod stitch;

mod messaging;

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use causality::{Linker, Parent};
use continuity::Continuity;
use handoff::{Carried, Matched};
use holds::{Held, HeldFor, Holds};
use stitch::{NatLookup, Stitcher, Waiting};

use crate::{
    connections::{process::ProcessInfo, ConnInfo},
    event::{HandOffRecord, Role},
    protocols::{
        db::DbCall,
        dispatch::{Flow, PipeIo},
        http::{Exchange, RequestSeen},
        Record, SegTime,
    },
    spans::{sampler::Sampler, traceparent, traceparent::TraceParent, SpanCtx},
};

pub use messaging::Consumed;

/// How far a server's read may precede its client's write record and still
/// be stitched (the client's syscall exit was delayed, not the data).
const LATE_PARTNER_WINDOW_NS: u64 = 1_000_000_000;

/// Why a span has the parent it has (or none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// A `traceparent` in the request or message headers.
    Header,
    /// The same connection's client end on this node wrote it.
    SocketPair,
    /// Its client's record came after it, within the window.
    LatePartner,
    /// Its thread wrote it right after reading the request's input (the
    /// request, or the reply to an earlier call made for it).
    Tick,
    /// The first call on a connection that its request opened (the
    /// request did nothing else since).
    Opener,
    /// The request in flight on the thread that made the call.
    SameThread,
    /// Go: the request its goroutine serves, or that of the goroutine
    /// that started it (`go`) or sent it the call on a channel.
    Goroutine,
    /// A consumer that acknowledges first, then works: the delivery its
    /// thread acknowledged right before the call.
    Ack,
    /// The only request in flight in the process.
    OnlyInFlight,
    /// The task a pipe handed the call's thread over (a pre-fork pool's
    /// worker), written for this request.
    Pipe,
    /// Python: the request whose response the asyncio task that made the
    /// call wrote next (the call waited for it, held).
    Task,
    /// The publish seen on this node that sent the delivered message.
    PublishMatch,
    /// No parent: several requests could have made the call.
    Ambiguous,
    /// No parent: made outside any request, or nothing on this node sent it.
    Root,
}

impl Evidence {
    pub fn as_str(self) -> &'static str {
        match self {
            Evidence::Header => "header",
            Evidence::SocketPair => "socket_pair",
            Evidence::LatePartner => "late_partner",
            Evidence::Tick => "tick",
            Evidence::Opener => "connect",
            Evidence::SameThread => "same_thread",
            Evidence::Goroutine => "goroutine",
            Evidence::Ack => "ack",
            Evidence::OnlyInFlight => "only_in_flight",
            Evidence::Pipe => "pipe",
            Evidence::Task => "task",
            Evidence::PublishMatch => "publish_match",
            Evidence::Ambiguous => "ambiguous",
            Evidence::Root => "root",
        }
    }
}

/// Why a call was left a root though requests were in flight
/// (`sonde_calls_ambiguous_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ambiguity {
    /// Several requests in flight on its thread, or in its process, and
    /// no evidence names one.
    Several,
    /// Written on the connection another request's reply freed, while a
    /// request of the thread waited: a pool's hand-off, not the request's
    /// own next step.
    PoolHandOff,
    /// Several HTTP/2 streams' requests read in the call's tick.
    Streams,
    /// A consumer that may be working on a delivery it acknowledged, or on
    /// one not seen, or on several at once.
    Consumer,
    /// A hand-off to a worker process whose writer had several requests.
    HandOff,
    /// Made for a task whose request is not known.
    UnknownTask,
    /// A delivery of one of several identical messages in flight.
    IdenticalMessages,
    /// Go: written by a goroutine that serves no request, was handed none,
    /// and made no hand-off after the write. The runtime shows every way a
    /// request reaches a goroutine, so "the only request in flight" is no
    /// evidence here: a worker's next job may be another request's.
    Goroutine,
    /// The work of a request already answered: written in the tick of that
    /// request's input (a Node.js handler that answers, then calls), or in
    /// a Python task after it wrote its response (a background task). No
    /// request in flight is its parent, and the one it works for is over.
    AfterAnswer,
    /// The one request in flight on a thread seen serving requests of two
    /// connections at once (an event loop), with no read in the call's tick
    /// naming it. Such a thread also runs callbacks of requests already
    /// answered (work after the response, timers, a library's deferrals):
    /// being alone in flight there says nothing.
    EventLoop,
}

impl Ambiguity {
    pub const ALL: [Ambiguity; 10] = [
        Ambiguity::Several,
        Ambiguity::PoolHandOff,
        Ambiguity::Streams,
        Ambiguity::Consumer,
        Ambiguity::HandOff,
        Ambiguity::UnknownTask,
        Ambiguity::IdenticalMessages,
        Ambiguity::Goroutine,
        Ambiguity::AfterAnswer,
        Ambiguity::EventLoop,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Ambiguity::Several => "several_in_flight",
            Ambiguity::PoolHandOff => "pool_hand_off",
            Ambiguity::Streams => "http2_streams",
            Ambiguity::Consumer => "consumer",
            Ambiguity::HandOff => "hand_off",
            Ambiguity::UnknownTask => "unknown_task",
            Ambiguity::IdenticalMessages => "identical_messages",
            Ambiguity::Goroutine => "goroutine_without_evidence",
            Ambiguity::AfterAnswer => "after_answer",
            Ambiguity::EventLoop => "event_loop",
        }
    }
}

impl Counts {
    /// Calls left roots for any [`Ambiguity`].
    pub fn calls_ambiguous(&self) -> u64 {
        self.ambiguous.iter().sum()
    }
}

/// What telemetry turns into a span and metrics.
#[derive(Debug, Clone)]
pub enum Item {
    /// `peer`: the process serving the other end of a client call on this
    /// node, when known (for the service graph). `server_read`: a server on
    /// this node read the client's request, so its span (this one's child)
    /// will come, possibly after this one.
    Http {
        exchange: Box<Exchange>,
        peer: Option<Arc<ProcessInfo>>,
        server_read: bool,
    },
    Db {
        call: Box<DbCall>,
        peer: Option<Arc<ProcessInfo>>,
    },
    /// A `Published` messaging operation.
    Publish(Box<crate::protocols::amqp::AmqpOut>),
    /// A delivery processed, from its read to its acknowledgement.
    Process(Box<Consumed>),
    /// A `Received` messaging operation (Basic.Get).
    Receive(Box<crate::protocols::amqp::AmqpOut>),
}

/// A record with the ids correlation decided for it.
#[derive(Debug, Clone)]
pub struct Linked {
    pub conn: ConnInfo,
    pub ctx: SpanCtx,
    pub evidence: Evidence,
    pub item: Item,
}

/// Entries evicted or refused by correlation's bounded indexes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drops {
    /// Requests in flight forgotten (a process had too many).
    pub in_flight: u64,
    /// Client contexts pushed out of a full per-connection queue.
    pub stitch_queue: u64,
    /// Client contexts not queued: too many connections waiting.
    pub stitch_full: u64,
    /// Server requests whose partner came too late, or never.
    pub late_partners_missed: u64,
    pub nat_cache: u64,
    pub node_ips: u64,
    pub server_index: u64,
    /// Held traces let go before their wait ended.
    pub held_early: u64,
    /// Deliveries not tracked (too many unacknowledged).
    pub deliveries: u64,
    /// Publishes evicted from the continuity index before their window ended.
    pub continuity: u64,
    /// Threads' remembered input reads dropped (too many threads).
    pub tick_marks: u64,
    /// Pipe writes or pipes forgotten before their bytes were read.
    pub handoffs: u64,
    /// Kernel-named contexts (`traceparent` injection) whose record never
    /// came, or pushed out of a full per-connection queue.
    pub kernel_contexts: u64,
}

/// Outcomes worth counting besides drops.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub late_partners_adopted: u64,
    /// Calls left roots because several requests could have made them,
    /// by [`Ambiguity`].
    pub ambiguous: [u64; Ambiguity::ALL.len()],
    pub nat_resolved: u64,
    /// Server connections from a client on this node whose client's
    /// records do not come (not traced, or left opaque): their requests
    /// stopped waiting for them.
    pub partnerless: u64,
    /// Server requests (deliveries) whose client's (publish's) record on
    /// this node did not come within the wait: roots.
    pub partners_not_come: u64,
    /// Pipe reads matched to no write (a lost or late record): their
    /// worker's calls stay roots.
    pub handoffs_unmatched: u64,
    /// Injected client calls whose parent the kernel and causality named
    /// alike (or both none)...
    pub injected_agreed: u64,
    /// ...or not: the span keeps causality's parent and the injected span
    /// id, and the remote side's spans go to the injected trace (split,
    /// never under another request).
    pub injected_disagreed: u64,
}

pub struct Correlator {
    linker: Linker,
    stitch: Stitcher,
    holds: Holds,
    continuity: Continuity,
    /// Deliveries in processing, by (connection, channel, delivery tag).
    deliveries: HashMap<(u64, u16, u64), messaging::Delivery>,
    /// Publishes written and not yet confirmed, by (connection, channel,
    /// sequence number): their context, fixed at the write.
    sent: HashMap<(u64, u16, u64), (SpanCtx, Evidence)>,
    /// Deliveries waiting for a publish seen on this node, by message key.
    late_deliveries: messaging::LateDeliveries,
    /// Pipe writes waiting for their reads (pre-fork pools).
    handoffs: handoff::Handoffs,
    /// Contexts the kernel named (`traceparent` injection), by connection,
    /// waiting for the record of their syscall.
    kernel: kernel::KernelContexts,
    sampler: Sampler,
    drops: Drops,
    counts: Counts,
    /// The flow being handled's time, and what holds started inside
    /// `call_context` let go early (a full hold table), for `on_flow`.
    now_ns: u64,
    spill: Vec<Linked>,
}

impl Correlator {
    pub fn new(relays: relay::Relays, sampler: Sampler, nat_lookup: NatLookup) -> Correlator {
        Correlator {
            linker: Linker::default(),
            stitch: Stitcher::new(relays, nat_lookup),
            holds: Holds::default(),
            continuity: Continuity::default(),
            deliveries: HashMap::new(),
            sent: HashMap::new(),
            late_deliveries: messaging::LateDeliveries::default(),
            handoffs: handoff::Handoffs::default(),
            kernel: kernel::KernelContexts::default(),
            sampler,
            drops: Drops::default(),
            counts: Counts::default(),
            now_ns: 0,
            spill: vec![],
        }
    }

    pub fn drops(&self) -> Drops {
        Drops {
            in_flight: self.linker.evicted,
            held_early: self.holds.released_early,
            continuity: self.continuity.evicted,
            tick_marks: self.linker.marks_dropped(),
            handoffs: self.handoffs.dropped,
            kernel_contexts: self.kernel.dropped,
            ..self.drops
        }
    }

    pub fn counts(&self) -> Counts {
        Counts {
            nat_resolved: self.stitch.nat_resolved,
            handoffs_unmatched: self.handoffs.unmatched,
            partners_not_come: self.holds.partners_not_come,
            ..self.counts
        }
    }

    /// Entries held per index (bounded; cleaned on close): in flight, the
    /// five stitching maps, held traces, deliveries, threads' input reads.
    pub fn entries(&self) -> [usize; 9] {
        let [queued, clients, waits, servers, nat] = self.stitch.entries();
        [
            self.linker.entries(),
            queued,
            clients,
            waits,
            servers,
            nat,
            self.holds.len(),
            self.deliveries.len() + self.sent.len() + self.late_deliveries.len(),
            self.linker.marked_threads() + self.handoffs.entries() + self.kernel.len(),
        ]
    }

    /// Handles one flow event at `now_ns` (CLOCK_MONOTONIC); what is ready
    /// for telemetry is appended to `out`.
    pub fn on_flow(&mut self, flow: Flow, now_ns: u64, out: &mut Vec<Linked>) {
        self.now_ns = now_ns;
        self.flow(flow, now_ns, out);
        if let Some(learnt) = self.linker.take_learnt() {
            self.settle_learnt(learnt, out);
        }
        out.append(&mut self.spill);
        self.count_unlinked();
    }

    /// Counts the calls held for their task that went out roots.
    fn count_unlinked(&mut self) {
        for why in self.holds.unlinked.drain(..) {
            self.counts.ambiguous[why as usize] += 1;
        }
    }

    fn flow(&mut self, flow: Flow, now_ns: u64, out: &mut Vec<Linked>) {
        match flow {
            Flow::Opened(c) => {
                if c.role == Role::Client {
                    self.linker.connection_opened(c.pid, c.id, c.opened_by);
                }
                self.stitch.note_server(&c, &mut self.drops);
            }
            Flow::Detected(c) => {
                self.stitch.note_server(&c, &mut self.drops);
                self.stitch.note_served(&c);
            }
            Flow::RelayKnown(c) => self.stitch.relays.on_known(&c),
            Flow::Wrote { pid, tid, tick } => self.linker.wrote(pid, tid, tick),
            Flow::ClientIo {
                pid,
                tid,
                conn,
                egress,
            } => self.linker.client_io(pid, tid, conn, egress),
            Flow::Record(c, r) => self.on_record(c, r, now_ns, out),
            Flow::Pipe(p) => self.pipe_io(p),
            Flow::Context(c, r) => self.kernel.named(c.id, r),
            Flow::HandOff(c, r) => self.go_handoff(&c, r, out),
            Flow::Closed(c) => {
                self.kernel.closed(c.id);
                if let Some(inode) = c.pipe {
                    self.handoffs.closed(inode, c.id);
                }
                self.linker.connection_closed(c.pid, c.id);
                self.forget_deliveries(c.id);
                self.stitch.on_close(&c);
            }
        }
    }

    /// Ends the holds that are over (all of them with None, at shutdown).
    pub fn release_held(&mut self, now_ns: Option<u64>, out: &mut Vec<Linked>) {
        self.holds.release_due(now_ns, out);
        self.count_unlinked();
        self.late_deliveries.expire(now_ns);
    }

    fn on_record(&mut self, c: ConnInfo, r: Record, now_ns: u64, out: &mut Vec<Linked>) {
        match r {
            Record::HttpRequest(req) if c.role == Role::Server => {
                self.server_request(&c, req, now_ns, out)
            }
            Record::HttpRequest(req) => self.client_request(&c, req, now_ns, out),
            Record::Http(ex) => self.exchange(c, ex, out),
            Record::Db(call) => {
                let (ctx, evidence) = self.call_context(&c, call.first, None);
                tracing::debug!(
                    pid = c.pid,
                    conn = c.id,
                    tid = call.first.tid,
                    enter = call.first.enter_ns,
                    lineage = ?call.first.lineage,
                    parent = ?ctx.parent_span_id,
                    ?evidence,
                    collection = ?call.collection,
                    "db call placed"
                );
                self.reply_read(&c, call.last, &ctx, evidence);
                let peer = self.stitch.server_of(&c);
                self.emit(
                    Linked {
                        conn: c,
                        ctx,
                        evidence,
                        item: Item::Db { call, peer },
                    },
                    out,
                );
            }
            Record::Messaging(op) => self.messaging(c, *op, now_ns, out),
        }
    }

    /// A server read a request: it is in flight from now, in the trace of
    /// its header, else of its client end on this node (now or late).
    fn server_request(
        &mut self,
        c: &ConnInfo,
        req: RequestSeen,
        now_ns: u64,
        out: &mut Vec<Linked>,
    ) {
        let tp = req.traceparent.as_deref().and_then(traceparent::parse);
        // A connection whose client's records do not come is not stitched:
        // like an off-node client's, its requests neither wait nor hold.
        let key = c
            .tuple
            .map(|t| self.stitch.client_view(c.id, t, &mut self.drops))
            .filter(|k| !self.stitch.is_partnerless(k));
        let partner = key.and_then(|k| self.stitch.take_partner(k, req.stream));
        let request = request_key(c.id, req.stream);
        let waiting = Waiting {
            pid: c.pid,
            conn: request,
            since: req.first.exit_ns,
            own_context: tp.is_some(),
            stream: req.stream,
        };
        if let (None, Some(k)) = (partner, key) {
            // Wait (bounded) for a client record that may come late. With a
            // traceparent too: the late record must find this request, not
            // stay queued for the connection's next one.
            if let Some(stale) = self.stitch.wait(k, waiting, &mut self.drops) {
                // Its client's records do not come: the earlier requests'
                // waits are over, and their held traces go out as they are.
                self.counts.partnerless += 1;
                for w in stale {
                    self.partner_missed(&w, out);
                }
            }
        }
        let incoming = tp.or(partner.map(|p| TraceParent {
            trace_id: p.trace_id,
            parent_id: p.span_id,
            sampled: p.sampled,
        }));
        let ctx = if req.stream == 0 {
            // With injection on, the kernel named this request already: its
            // thread's injected calls carry these ids.
            let named = self.kernel.take(c.id, req.first.enter_ns, false);
            self.linker.request_started_as(
                c.pid,
                c.id,
                c.id,
                req.first.tid,
                req.first.exit_ns,
                incoming,
                named.map(|k| (k.trace_id, k.span_id)),
                &self.sampler,
            )
        } else {
            self.linker.stream_started(
                c.pid,
                request,
                c.id,
                req.first.tid,
                req.first.exit_ns,
                incoming,
                &self.sampler,
            )
        };
        tracing::debug!(
            pid = c.pid,
            conn = c.id,
            tid = req.first.tid,
            since = req.first.exit_ns,
            span = ?ctx.span_id,
            "request read"
        );
        // Its thread's next writes follow this read.
        self.linker
            .read_delivered(c.pid, req.last, request, ctx.span_id, false);
        self.linker
            .request_read_in(c.pid, request, req.last.py_task);
        // Its client is on this node but not seen yet: hold the trace's
        // items until it is (or the wait is over).
        if let (None, Some(k)) = (incoming, key) {
            if self.stitch.is_node_ip(k.0.ip()) && self.stitch.is_waiting(&k) {
                let held = Held {
                    conn: request,
                    since: waiting.since,
                    key: HeldFor::Client(k, req.stream),
                    items: vec![],
                    why: None,
                    parent: None,
                };
                self.holds.start(ctx.trace_id, held, now_ns, out);
            }
        }
    }

    /// A client wrote a request: its context is fixed now, for its own span
    /// and for the server end that will read it.
    fn client_request(
        &mut self,
        c: &ConnInfo,
        req: RequestSeen,
        now_ns: u64,
        out: &mut Vec<Linked>,
    ) {
        let own = req.traceparent.as_deref().and_then(traceparent::parse);
        let (mut ctx, evidence) = self.call_context(c, req.first, own);
        if let Some(k) = self.kernel.take(c.id, req.first.enter_ns, true) {
            ctx = self.injected(ctx, &k);
        }
        self.stitch
            .client_wrote(c, ctx, evidence, req.stream, &mut self.drops);
        // The server end already read it: its request adopts this context.
        // Or it already answered, and its trace is held for this one.
        let key = c.tuple.map(|t| (t.local, t.remote));
        if key.is_some_and(|k| self.stitch.is_partnerless(&k)) {
            // Its server stopped waiting for this connection's records (one
            // was lost): queued, this context would go to a later request.
            self.drops.late_partners_missed += 1;
            return;
        }
        let waiting = key.and_then(|k| {
            self.stitch.take_waiting(k, req.stream).or_else(|| {
                self.stitch
                    .take_waiting_behind_nat(k, req.stream, &mut self.drops)
            })
        });
        if let Some(w) = waiting {
            if w.own_context {
                // Its server span is this span's child by the header.
                self.stitch.read_on_node(c.id, ctx.span_id);
                return;
            }
            if w.since.saturating_sub(req.first.enter_ns) < LATE_PARTNER_WINDOW_NS {
                let in_flight = self.linker.adopt(w.pid, w.conn, &ctx);
                let held = self.holds.take_request(w.conn, w.since);
                let held = self.adopt_held(held, &ctx, now_ns, out);
                if in_flight || held {
                    self.stitch.read_on_node(c.id, ctx.span_id);
                    self.counts.late_partners_adopted += 1;
                    return;
                }
            }
            // Too late: both stand as they are. The server has read this
            // request already, so its context is not queued: the next
            // request on the connection would take it.
            self.partner_missed(&w, out);
            return;
        } else if key.is_some_and(|k| {
            let held = self.holds.take_for(&HeldFor::Client(k, req.stream));
            self.adopt_held(held, &ctx, now_ns, out)
        }) {
            // The server closed the connection before this record came.
            self.stitch.read_on_node(c.id, ctx.span_id);
            self.counts.late_partners_adopted += 1;
            return;
        }
        self.stitch
            .queue_for_server(c, ctx, req.stream, &mut self.drops);
    }

    /// Server request `w`'s partner came too late, or is not coming: counted,
    /// and its held trace goes out as it is.
    fn partner_missed(&mut self, w: &Waiting, out: &mut Vec<Linked>) {
        self.drops.late_partners_missed += 1;
        if let Some((_, h)) = self.holds.take_request(w.conn, w.since) {
            self.emit_all(h.items, out);
        }
    }

    /// A late client's context names the real trace of `held`, a held
    /// request taken out of its wait: its items move into it, the server
    /// span (the held trace's root) as the client span's child.
    fn adopt_held(
        &mut self,
        held: Option<([u8; 16], Held)>,
        ctx: &SpanCtx,
        now_ns: u64,
        out: &mut Vec<Linked>,
    ) -> bool {
        let Some((provisional, h)) = held else {
            return false;
        };
        self.adopt_items(
            provisional,
            h.items,
            ctx,
            Evidence::LatePartner,
            now_ns,
            out,
        );
        true
    }

    /// The items of held trace `provisional` move into `ctx`'s trace, its
    /// root as `ctx`'s child, placed by `evidence`.
    fn adopt_items(
        &mut self,
        provisional: [u8; 16],
        items: Vec<Linked>,
        ctx: &SpanCtx,
        evidence: Evidence,
        now_ns: u64,
        out: &mut Vec<Linked>,
    ) {
        // Calls of the held request may still be under way (a downstream
        // server's request read in the provisional trace): theirs follow.
        self.holds.alias(
            provisional,
            holds::Alias {
                trace_id: ctx.trace_id,
                sampled: ctx.sampled,
                root_parent: Some((ctx.span_id, evidence)),
            },
            now_ns,
        );
        for mut l in items {
            l.ctx.trace_id = ctx.trace_id;
            l.ctx.sampled = ctx.sampled;
            if l.ctx.parent_span_id.is_none() {
                l.ctx.parent_span_id = Some(ctx.span_id);
                l.evidence = evidence;
            }
            self.emit(l, out);
        }
    }

    /// Consumers whose way of acking was just learnt: the calls held until
    /// it was (`HeldFor::AckMode`) go under the delivery their thread had
    /// acknowledged if the consumer acks first, else out as roots.
    fn settle_learnt(&mut self, learnt: Vec<(u32, u64, bool)>, out: &mut Vec<Linked>) {
        for (pid, source, acks_first) in learnt {
            let key = HeldFor::AckMode { pid, source };
            while let Some((provisional, h)) = self.holds.take_for(&key) {
                let delivery = h.parent.filter(|_| acks_first);
                self.end_wait(provisional, h, delivery, Evidence::Ack, out);
            }
        }
    }

    /// Go: goroutine `r.from` wrote on `c`, then handed a value to `r.to`.
    /// The call it wrote in that write, held for this, was made for the
    /// request `r.to` serves (`causality/goroutines.rs`). If its record has
    /// not come yet, the hand-off waits for it.
    fn go_handoff(&mut self, c: &ConnInfo, r: HandOffRecord, out: &mut Vec<Linked>) {
        if c.role != Role::Client {
            return;
        }
        let key = HeldFor::Handed {
            conn: c.id,
            writer: r.from,
            since: r.wrote_ns,
        };
        let Some((provisional, h)) = self.holds.take_for(&key) else {
            self.linker.handed_early(c.id, r);
            return;
        };
        // Several calls in that one write (pipelined): the hand-off names
        // one request, not which call was its.
        let mut several = false;
        while let Some((other_provisional, other)) = self.holds.take_for(&key) {
            several = true;
            self.end_wait(other_provisional, other, None, Evidence::Goroutine, out);
        }
        let request = (!several)
            .then(|| self.linker.handed_to(c.pid, &r, h.since))
            .flatten();
        tracing::debug!(
            conn = c.id,
            from = r.from,
            to = r.to,
            wrote = r.wrote_ns,
            to_origin = r.to_origin,
            request = ?request.map(|r| r.span_id),
            several,
            "go hand-off placed a held call"
        );
        self.end_wait(provisional, h, request, Evidence::Goroutine, out);
    }

    /// A call held until something named its parent (`HeldFor::Task`,
    /// `AckMode`, `Handed`) is done waiting: under `parent`, placed by
    /// `evidence`, if one was named; else out a root, counted by why no
    /// rule placed it (with the released holds', `count_unlinked`).
    fn end_wait(
        &mut self,
        provisional: [u8; 16],
        h: Held,
        parent: Option<SpanCtx>,
        evidence: Evidence,
        out: &mut Vec<Linked>,
    ) {
        match parent {
            Some(p) => self.adopt_items(provisional, h.items, &p, evidence, self.now_ns, out),
            None => {
                self.holds.unlinked.extend(h.why);
                self.emit_all(h.items, out);
            }
        }
    }

    /// Python: task `task` of `pid` wrote the response of the request
    /// `ctx`, read by `since`. The calls it made that no rule placed, held
    /// for it, were made for that request if they came after its read
    /// (`causality/python.rs`); the others go out roots.
    fn task_answered(
        &mut self,
        pid: u32,
        (task, born): (u32, u64),
        ctx: &SpanCtx,
        since: u64,
        out: &mut Vec<Linked>,
    ) {
        if task == 0 {
            return;
        }
        self.release_task(HeldFor::Task { pid, task, born }, ctx, since, out);
        // Its child tasks' calls, for a request read before each was created.
        for (child, child_born) in self.linker.children_since(pid, task, born, since) {
            let key = HeldFor::Task {
                pid,
                task: child,
                born: child_born,
            };
            self.release_task(key, ctx, since, out);
        }
    }

    /// The calls held for task `key` go under request `ctx` (read at
    /// `since`) if they were made after it was read; else out roots.
    fn release_task(&mut self, key: HeldFor, ctx: &SpanCtx, since: u64, out: &mut Vec<Linked>) {
        while let Some((provisional, h)) = self.holds.take_for(&key) {
            tracing::debug!(
                ?key,
                call_since = h.since,
                request_since = since,
                "task answered"
            );
            let request = (h.since >= since).then_some(*ctx);
            self.end_wait(provisional, h, request, Evidence::Task, out);
        }
    }

    /// An HTTP exchange finished: its ids were fixed when its request was
    /// read (server) or written (client).
    fn exchange(&mut self, c: ConnInfo, exchange: Box<Exchange>, out: &mut Vec<Linked>) {
        let tp = exchange
            .request
            .head
            .traceparent
            .as_deref()
            .and_then(traceparent::parse);
        let (ctx, evidence, peer, server_read) = if c.role == Role::Server {
            let key = request_key(c.id, exchange.stream());
            let finished = self
                .linker
                .request_answered(c.pid, key, exchange.response.last.exit_ns);
            tracing::debug!(
                pid = c.pid,
                conn = c.id,
                span = ?finished.map(|f| f.0.span_id),
                target = %exchange.request.head.target,
                written = exchange.response.first.enter_ns,
                "request answered"
            );
            if let Some((ctx, since)) = finished {
                let first = exchange.response.first;
                self.linker.context_answered(c.pid, first);
                let task = (first.py_task, first.lineage.origin_ns);
                self.task_answered(c.pid, task, &ctx, since, out);
            }
            let ctx = match (finished.map(|f| f.0), tp) {
                (Some(ctx), _) => ctx,
                // A request read before the agent started.
                (None, Some(tp)) => SpanCtx {
                    trace_id: tp.trace_id,
                    span_id: crate::spans::new_span_id(),
                    parent_span_id: Some(tp.parent_id),
                    sampled: self.sampler.should_sample(&tp.trace_id, Some(tp.sampled)),
                },
                (None, None) => SpanCtx::root(|t| self.sampler.should_sample(t, None)),
            };
            let evidence = match (ctx.parent_span_id, tp) {
                (None, _) => Evidence::Root,
                (Some(p), Some(tp)) if tp.parent_id == p => Evidence::Header,
                (Some(_), _) => Evidence::SocketPair,
            };
            (ctx, evidence, None, false)
        } else {
            let done = self.stitch.client_exchange_done(c.id, exchange.stream());
            let (ctx, evidence, server_read) = match done {
                Some(r) => (r.ctx, r.evidence, r.read_on_node),
                // A request written before the agent started.
                None => {
                    let (ctx, evidence) = self.call_context(&c, exchange.request.first, tp);
                    (ctx, evidence, false)
                }
            };
            self.reply_read(&c, exchange.response.last, &ctx, evidence);
            (ctx, evidence, self.stitch.server_of(&c), server_read)
        };
        self.emit(
            Linked {
                conn: c,
                ctx,
                evidence,
                item: Item::Http {
                    exchange,
                    peer,
                    server_read,
                },
            },
            out,
        );
    }

    /// The context of a client call made at `first`: a child of the request
    /// in flight it was made for, or a new trace. `own`: the call carries
    /// its own traceparent (an instrumented app), which names the span and
    /// whose trace wins if it differs from the parent's.
    fn call_context(
        &mut self,
        c: &ConnInfo,
        first: SegTime,
        own: Option<TraceParent>,
    ) -> (SpanCtx, Evidence) {
        let parent = match self.linker.parent_of(c.pid, first, c.id) {
            Parent::Request(ctx, evidence) => Some((ctx, evidence)),
            Parent::Ambiguous(why) => {
                return match own {
                    Some(tp) => {
                        self.counts.ambiguous[why as usize] += 1;
                        (own_ctx(tp, None), Evidence::Header)
                    }
                    None => {
                        let goroutine = causality::is_goroutine(first.tid);
                        // Go: the goroutine that wrote it handed a value to a
                        // request's goroutine right after (`goroutines.rs`).
                        if goroutine {
                            let handed = self.linker.handed_for(c.id, first.tid, first.enter_ns);
                            if let Some(request) = handed {
                                return (request.child(), Evidence::Goroutine);
                            }
                        }
                        let ctx = SpanCtx::root(|t| self.sampler.should_sample(t, None));
                        let wait = self.linker.task_context(c.pid, first.py_task);
                        tracing::debug!(
                            pid = c.pid,
                            tid = first.tid,
                            write_ns = first.enter_ns,
                            py_task = first.py_task,
                            origin = first.lineage.origin,
                            born = first.lineage.origin_ns,
                            origin_born = first.lineage.waker_origin_ns,
                            wait,
                            ?why,
                            "call placed by no rule"
                        );
                        // A consumer's call after an ack, before it is known
                        // whether the consumer acks first: the acknowledged
                        // delivery's if it does (`settle_learnt`).
                        let acked = (why == Ambiguity::Consumer)
                            .then(|| self.linker.ack_candidate(c.pid, first))
                            .flatten();
                        let key = match acked {
                            Some((source, _)) => Some(HeldFor::AckMode { pid: c.pid, source }),
                            // Its task's next response may name its request:
                            // its trace waits for it (`causality/python.rs`).
                            None if wait => {
                                // Or its creator's (a child task).
                                if first.lineage.origin != 0 {
                                    let l = first.lineage;
                                    self.linker.child_task(
                                        c.pid,
                                        first.py_task,
                                        (l.origin, l.origin_ns, l.waker_origin_ns),
                                    );
                                }
                                Some(HeldFor::Task {
                                    pid: c.pid,
                                    task: first.py_task,
                                    born: first.lineage.origin_ns,
                                })
                            }
                            // Go: its writer's next hand-off may name it.
                            None if goroutine => Some(HeldFor::Handed {
                                conn: c.id,
                                writer: first.tid,
                                since: first.enter_ns,
                            }),
                            None => None,
                        };
                        if let Some(key) = key {
                            let held = Held {
                                conn: c.id,
                                since: first.enter_ns,
                                key,
                                items: vec![],
                                why: Some(why),
                                parent: acked.map(|(_, delivery)| delivery),
                            };
                            self.holds
                                .start(ctx.trace_id, held, self.now_ns, &mut self.spill);
                        } else {
                            self.counts.ambiguous[why as usize] += 1;
                        }
                        (ctx, Evidence::Ambiguous)
                    }
                };
            }
            // Go: no request is in flight any more, but the hand-off after
            // its write came first and named one (`handed_early`).
            Parent::None if causality::is_goroutine(first.tid) => self
                .linker
                .handed_for(c.id, first.tid, first.enter_ns)
                .map(|request| (request, Evidence::Goroutine)),
            Parent::None => None,
        };
        match (own, parent) {
            (Some(tp), p) => (own_ctx(tp, p.map(|p| p.0)), Evidence::Header),
            (None, Some((p, evidence))) => (p.child(), evidence),
            (None, None) => (
                SpanCtx::root(|t| self.sampler.should_sample(t, None)),
                Evidence::Root,
            ),
        }
    }

    /// The context of a client call whose request the kernel wrote a
    /// `traceparent` into: the span takes the injected span id, which the
    /// remote side names as its parent. Its trace and parent stay what
    /// causality decided, unless causality found none and the kernel none
    /// either: then it is the root of the injected trace.
    fn injected(&mut self, ctx: SpanCtx, k: &crate::event::ContextRecord) -> SpanCtx {
        let agreed = match (ctx.parent_span_id, k.parent_id) {
            (Some(p), Some(kp)) => p == kp && ctx.trace_id == k.trace_id,
            (None, None) => true,
            _ => false,
        };
        if !agreed {
            self.counts.injected_disagreed += 1;
            tracing::debug!(?ctx, ?k, "injected context differs from causality's");
            return SpanCtx {
                span_id: k.span_id,
                ..ctx
            };
        }
        self.counts.injected_agreed += 1;
        SpanCtx {
            trace_id: k.trace_id,
            span_id: k.span_id,
            parent_span_id: ctx.parent_span_id,
            sampled: if ctx.parent_span_id.is_some() {
                ctx.sampled
            } else {
                k.sampled
            },
        }
    }

    /// A read or write on a followed pipe. A write by a worker on a task is
    /// its result; any other write hands a task over, for the request the
    /// writer works on (only if one request is named). A read of a task
    /// starts it on the reader's thread; a read of a result is its
    /// request's input, like a call's reply.
    fn pipe_io(&mut self, p: PipeIo) {
        let (pid, tid, ends) = (p.conn.pid, p.at.tid, (p.inode, p.conn.id));
        if p.egress {
            let carried = match self.linker.task_of(pid, tid) {
                Some(ctx) => {
                    self.linker.task_finished(pid, tid);
                    Carried::Result(ctx)
                }
                None => Carried::Task(match self.linker.handoff_parent(pid, p.at, p.conn.id) {
                    Parent::Request(ctx, _) => Some(ctx),
                    Parent::Ambiguous(why) => {
                        self.counts.ambiguous[why as usize] += 1;
                        None
                    }
                    Parent::None => None,
                }),
            };
            tracing::debug!(
                pid,
                tid,
                inode = p.inode,
                bytes = p.bytes,
                ?carried,
                "pipe write"
            );
            self.handoffs.wrote(ends, pid, p.bytes, p.head, carried);
            return;
        }
        let matched = self.handoffs.read(ends, pid, p.bytes, &p.head);
        tracing::debug!(
            pid,
            tid,
            inode = p.inode,
            bytes = p.bytes,
            ?matched,
            "pipe read"
        );
        match matched {
            Matched::Carried(Carried::Task(ctx)) => {
                self.linker.task_started(pid, p.conn.id, p.at, ctx)
            }
            Matched::Carried(Carried::Result(Some(ctx))) => {
                self.linker
                    .read_delivered(pid, p.at, p.conn.id, ctx.span_id, true)
            }
            Matched::Carried(Carried::Result(None)) | Matched::Own => {}
            // A thread serving a request reads results; any other may have
            // read a task: what it worked on before is over, and what it
            // works on now is not known.
            Matched::Unknown if !self.linker.serving(pid, tid) => {
                self.linker.task_started(pid, p.conn.id, p.at, None)
            }
            Matched::Unknown => {}
        }
    }

    /// A call's reply was read at `last`: the thread's next writes may be
    /// the next step of the request the call was made for.
    fn reply_read(&mut self, c: &ConnInfo, last: SegTime, ctx: &SpanCtx, evidence: Evidence) {
        if let (
            Some(parent),
            Evidence::Tick
            | Evidence::Opener
            | Evidence::SameThread
            | Evidence::Ack
            | Evidence::OnlyInFlight,
        ) = (ctx.parent_span_id, evidence)
        {
            self.linker.read_delivered(c.pid, last, c.id, parent, true);
        }
    }

    /// Hands an item to telemetry, unless its trace is held.
    fn emit(&mut self, mut l: Linked, out: &mut Vec<Linked>) {
        if let Some(a) = self.holds.renamed(&l.ctx.trace_id) {
            l.ctx.trace_id = a.trace_id;
            l.ctx.sampled = a.sampled;
            // The adopted trace's root, finished after the adoption.
            if let (None, Some((parent, evidence))) = (l.ctx.parent_span_id, a.root_parent) {
                l.ctx.parent_span_id = Some(parent);
                l.evidence = evidence;
            }
        }
        if let Some(l) = self.holds.hold(l) {
            out.push(l);
        }
    }

    fn emit_all(&mut self, items: Vec<Linked>, out: &mut Vec<Linked>) {
        for l in items {
            self.emit(l, out);
        }
    }
}

/// What keys a server request in the linker and the holds: its connection
/// for HTTP/1.x (requests in order), its stream's own key for HTTP/2.
fn request_key(conn: u64, stream: u32) -> u64 {
    if stream == 0 {
        return conn;
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (conn, stream).hash(&mut h);
    // Bit 63 marks deliveries (`messaging::delivery_key`); bit 62 streams.
    (h.finish() & !(3 << 62)) | 1 << 62
}

/// The context an instrumented client wrote: its span id is the one in
/// its traceparent; its parent is the request it was made for, when that
/// request is in the same trace.
fn own_ctx(tp: TraceParent, parent: Option<SpanCtx>) -> SpanCtx {
    SpanCtx {
        trace_id: tp.trace_id,
        span_id: tp.parent_id,
        parent_span_id: parent
            .filter(|p| p.trace_id == tp.trace_id)
            .map(|p| p.span_id),
        sampled: tp.sampled,
    }
}
