//! The rules that place a client call, in the order `find_parent` tries
//! them (see the module's documentation and ARCHITECTURE.md, "Causality").
use foldhash::{HashMap, HashMapExt};
use std::collections::VecDeque;

use super::{InFlight, Linker, Mark, Opener, Parent};
use crate::{
    correlation::{Ambiguity, Evidence},
    protocols::SegTime,
    spans::SpanCtx,
};

impl Linker {
    /// A consumer that acknowledges first, then works: a call of thread
    /// `tid` after its ack of a delivery, until its next ack, is made for
    /// the acknowledged one. Learnt from a call right after an ack (same
    /// tick: nothing read in between) with no other delivery of the channel
    /// in flight; until then a call in the ack's tick is ambiguous (it may
    /// be the next delivery's, of a consumer that acks late).
    pub(super) fn by_ack(&mut self, pid: u32, at: SegTime) -> Option<Parent> {
        if at.tick == 0 {
            return None;
        }
        let a = *self.acked.get(&(pid, at.tid))?;
        if a.worked || self.acks_late.contains(&(pid, a.source)) {
            return None;
        }
        // A thread that multiplexes its calls works on several deliveries
        // at once: what it acknowledged last says nothing.
        if self.multiplex.is_multiplexed(pid, at.tid) {
            return Some(Parent::Ambiguous(Ambiguity::Consumer));
        }
        // It acknowledged a delivery that was never seen: whatever it works
        // on now is no known delivery (ack first) or may be one (ack late).
        let Some(ctx) = a.ctx else {
            return Some(Parent::Ambiguous(Ambiguity::Consumer));
        };
        let learnt = self.acks_early.contains(&(pid, a.source));
        if at.tick == a.tick {
            if learnt {
                return Some(Parent::Request(ctx, Evidence::Ack));
            }
            let others =
                self.by_pid.get(&pid).into_iter().flatten().any(|f| {
                    f.source == a.source && f.conn != f.source && f.since_ns <= at.enter_ns
                });
            if others || !self.may_learn(pid, a.source) {
                return Some(Parent::Ambiguous(Ambiguity::Consumer));
            }
            super::bounded_insert(
                &mut self.acks_early,
                (pid, a.source),
                &mut self.marks_dropped,
            );
            self.learnt.push((pid, a.source, true));
            return Some(Parent::Request(ctx, Evidence::Ack));
        }
        // Once learnt, the thread works on what it acknowledged last until
        // it acknowledges the next one.
        (learnt && at.enter_ns >= a.at_ns).then_some(Parent::Request(ctx, Evidence::Ack))
    }

    /// A call (first write `at`) that `by_ack` or `on_thread` left
    /// ambiguous because its consumer's way of acking is not known yet: the
    /// thread acknowledged a delivery with no call made for it, and has not
    /// acknowledged another since. If the consumer turns out to ack first,
    /// the call was that delivery's: the correlator holds it until this is
    /// learnt. Returns the channel connection and the delivery. A consumer
    /// that starts on a backlog shows how it acks only once a delivery
    /// arrives alone, at the backlog's end; until then every call after an
    /// ack has other deliveries in flight.
    pub fn ack_candidate(&self, pid: u32, at: SegTime) -> Option<(u64, SpanCtx)> {
        let a = self.acked.get(&(pid, at.tid))?;
        let ctx = a.ctx?;
        let undecided = !a.worked
            && at.tick != 0
            && at.enter_ns >= a.at_ns
            && !self.acks_late.contains(&(pid, a.source))
            && self.may_learn(pid, a.source)
            && !self.multiplex.is_multiplexed(pid, at.tid);
        undecided.then_some((a.source, ctx))
    }

    /// Whether delivery `f` in flight may not be what its thread works on:
    /// the thread has acknowledged a delivery of that channel before, and
    /// the consumer is not known to ack late. After an ack, "ack D1, read D2,
    /// call" is D1's call for a consumer that acks first and D2's for one
    /// that acks late; the wire shows the same, so only what was learnt
    /// (from a first delivery alone) can tell.
    pub(super) fn may_work_on_acked(&self, pid: u32, tid: u32, f: &InFlight) -> bool {
        f.conn != f.source
            && (self.blind.contains(&(pid, f.source))
                || !self.acks_late.contains(&(pid, f.source))
                    && self
                        .acked
                        .get(&(pid, tid))
                        .is_some_and(|a| a.source == f.source))
    }

    /// Rule 2: the request in flight on thread (or goroutine) `tid`, read
    /// before `by_ns`. None if there is none. `py_task`: the Python context
    /// the call was made in (0: none known).
    pub(super) fn on_thread(
        &self,
        list: &[InFlight],
        pid: u32,
        tid: u32,
        by_ns: u64,
        py_task: u32,
    ) -> Option<Parent> {
        let mut same_thread = list.iter().filter(|f| f.since_ns <= by_ns && f.tid == tid);
        let first = same_thread.next()?;
        if self.may_work_on_acked(pid, tid, first) {
            return Some(Parent::Ambiguous(Ambiguity::Consumer));
        }
        let mut oldest = first;
        if self.exact && same_thread.clone().next().is_some() {
            return Some(Parent::Ambiguous(Ambiguity::HandOff));
        }
        // Deliveries are keyed apart from their channel's connection.
        let k = (pid, first.source);
        // A call made in another Python context than the one that read the
        // oldest delivery: asyncio runs each message's handler as a task of
        // its own, several at once on this thread, before any of its calls
        // overlap (which would mark it as multiplexing). A blocking consumer
        // calls in the context that read.
        let tasks_apart = py_task != 0 && first.reader != 0 && py_task != first.reader;
        // One at a time, in order: not on a thread that multiplexes calls.
        let acks_late = !tasks_apart
            && !self.multiplex.is_multiplexed(pid, tid)
            && (self.acks_late.contains(&k) || self.works_before_acking(pid, tid, first));
        for f in same_thread {
            // Two connections, or two deliveries of a consumer not known
            // to work on the oldest first: not on the wire.
            if f.source != first.source || (f.conn != f.source && !acks_late) {
                return Some(Parent::Ambiguous(Ambiguity::Several));
            }
            if f.seq < oldest.seq {
                oldest = f;
            }
        }
        Some(Parent::Request(oldest.ctx, Evidence::SameThread))
    }

    /// Whether consumer thread `tid`, with delivery `f` of a channel in
    /// flight, makes a call before it has acknowledged any delivery read
    /// since its last ack on that channel: it works before acking (a
    /// consumer that acks first acks what it works on before any call), so
    /// it acks late and works on its deliveries in order.
    pub(super) fn works_before_acking(&self, pid: u32, tid: u32, f: &InFlight) -> bool {
        if f.conn == f.source || !self.may_learn(pid, f.source) {
            return false;
        }
        let oldest = self
            .by_pid
            .get(&pid)
            .into_iter()
            .flatten()
            .filter(|o| o.source == f.source && o.tid == tid && o.conn != o.source)
            .map(|o| o.since_ns)
            .min()
            .unwrap_or(f.since_ns);
        self.acked
            .get(&(pid, tid))
            .is_none_or(|a| a.source != f.source || a.at_ns < oldest)
    }

    /// Go, for a goroutine that serves no request itself: the request of
    /// the goroutine that sent it this call on a channel (net/http's
    /// transport writes from its own goroutine), else of the goroutine that
    /// started that sender, else of the one that started the caller. A
    /// starter counts only with a request it had begun when it ran `go`: a
    /// goroutine started by an earlier request is no child of the next one
    /// its starter serves.
    pub(super) fn by_lineage(&self, list: &[InFlight], pid: u32, at: SegTime) -> Option<Parent> {
        let l = at.lineage;
        let steps = [
            (l.waker, at.enter_ns),
            (l.waker_origin, l.waker_origin_ns),
            (l.origin, l.origin_ns),
        ];
        for (g, by_ns) in steps {
            if g == 0 {
                continue;
            }
            match self.on_thread(list, pid, g, by_ns, 0) {
                Some(Parent::Request(ctx, _)) => {
                    return Some(Parent::Request(ctx, Evidence::Goroutine))
                }
                Some(p) => return Some(p),
                None => {}
            }
            // A request it served then, over now (`goroutines::Served`).
            if let Some(ctx) = self.served_at(pid, g, by_ns) {
                return Some(Parent::Request(ctx, Evidence::Goroutine));
            }
        }
        None
    }

    /// Rule 1, a new connection's first call: the request that opened it,
    /// if the tick of that connect was its last input and wrote nothing.
    pub(super) fn by_opener(
        &self,
        list: &[InFlight],
        pid: u32,
        at: SegTime,
        o: Opener,
    ) -> Option<Parent> {
        // Python: the connect's tick was read in another context than the
        // one writing (see `by_tick`).
        if o.tid != at.tid || o.py_task != at.py_task {
            return None;
        }
        let f = list
            .iter()
            .find(|f| f.ctx.span_id == o.request && f.tid == at.tid && f.since_ns <= at.enter_ns)?;
        let last = self
            .marks
            .get(&pid)?
            .get(&at.tid)?
            .iter()
            .rev()
            .find(|m| m.request == o.request)?;
        (last.tick == o.tick && !last.wrote).then_some(Parent::Request(f.ctx, Evidence::Opener))
    }

    /// A write whose tick's input (`marks`) was only answered requests':
    /// the reply to a call, then the request's response written. A thread
    /// that serves one connection or channel in order goes on to the next
    /// request of that source it read before (pipelined requests, a
    /// consumer's prefetched deliveries): the other rules place the write.
    /// Else it is the answered request's work after its response (a
    /// Node.js handler that answers, then calls), never a request in flight
    /// that came another way (`after_answer`).
    fn after_answered_input(
        list: &[InFlight],
        at: SegTime,
        thread: &VecDeque<Mark>,
        marks: &[&Mark],
    ) -> Option<Parent> {
        let answered = |m: &&&Mark| !list.iter().any(|f| f.ctx.span_id == m.request);
        if !marks.iter().any(|m| answered(&m)) {
            return None;
        }
        let next_in_line = marks.iter().filter(answered).any(|a| {
            thread
                .iter()
                .find(|k| k.request == a.request && !k.reply)
                .is_some_and(|read| {
                    list.iter().any(|f| {
                        f.source == read.source && f.tid == at.tid && f.since_ns <= at.enter_ns
                    })
                })
        });
        (!next_in_line).then_some(Parent::Ambiguous(Ambiguity::AfterAnswer))
    }

    /// Rule 1: the request whose input this thread read last, with nothing
    /// between that read and the write `at`.
    pub(super) fn by_tick(
        &self,
        list: &[InFlight],
        pid: u32,
        at: SegTime,
        conn: u64,
    ) -> Option<Parent> {
        if at.tick == 0 {
            return None;
        }
        // One read opens a tick, but it may have delivered several requests
        // (pipelined, or a batch of deliveries): the first still in flight
        // is the one worked on first. Still in flight, and read on this
        // thread: a reply read for a request another thread serves says
        // nothing of this thread's work.
        let in_flight = |m: &Mark| {
            list.iter().find(|f| {
                f.ctx.span_id == m.request && f.tid == at.tid && f.since_ns <= at.enter_ns
            })
        };
        // Python: only a read in the write's own context. uvloop reads every
        // ready socket (each transport's callback in its own context), then
        // runs the task steps those reads woke, with no poll in between: a
        // task's write then follows, in one tick, reads made for other
        // requests. (asyncio's own loop polls before it runs them.)
        let thread = self.marks.get(&pid)?.get(&at.tid)?;
        let marks: Vec<&Mark> = thread
            .iter()
            .rev()
            .skip_while(|m| m.tick != at.tick)
            .take_while(|m| m.tick == at.tick)
            .filter(|m| m.py_task == at.py_task)
            .collect();
        let read: Vec<(&Mark, &InFlight)> = marks
            .iter()
            .filter_map(|&m| in_flight(m).map(|f| (m, f)))
            .collect();
        let Some(&(m, f)) = read.last() else {
            return Self::after_answered_input(list, at, thread, &marks);
        };
        // A hand-off may be any of the requests the tick's read delivered
        // (a dispatcher hands each on), not necessarily the first.
        if self.exact && read.iter().any(|(_, o)| o.ctx.span_id != f.ctx.span_id) {
            return Some(Parent::Ambiguous(Ambiguity::HandOff));
        }
        // HTTP/2 streams read together are served concurrently, not in
        // order: which one the write is for, the tick cannot tell.
        let stream = |o: &InFlight| o.socket != o.source;
        if read.iter().any(|(_, o)| stream(o))
            && read.iter().any(|(_, o)| o.ctx.span_id != f.ctx.span_id)
        {
            return Some(Parent::Ambiguous(Ambiguity::Streams));
        }
        // A consumer that acknowledged a delivery of this channel may still
        // work on that one (it acks first) while the next is read; one that
        // lost deliveries may work on one not seen.
        if self.may_work_on_acked(pid, at.tid, f) {
            return Some(Parent::Ambiguous(Ambiguity::Consumer));
        }
        if m.reply && m.conn == conn {
            // Each request's last input before this tick, in one pass over
            // the thread's marks (the newest first).
            let mut last: HashMap<[u8; 8], &Mark> = HashMap::new();
            for k in thread.iter().rev() {
                if k.tick != at.tick {
                    last.entry(k.request).or_insert(k);
                }
            }
            // That input wrote nothing and opened no connection (or is
            // forgotten): the request may be waiting for a pooled one.
            let stalled = |o: &InFlight| {
                last.get(&o.ctx.span_id)
                    .is_none_or(|k| !k.wrote && !k.connected)
            };
            let mut others = list.iter().filter(|o| {
                o.tid == at.tid && o.since_ns <= at.enter_ns && o.ctx.span_id != m.request
            });
            if let Some(o) = others.find(|o| stalled(o)) {
                tracing::debug!(
                    pid,
                    tid = at.tid,
                    tick = at.tick,
                    conn,
                    stalled_since = o.since_ns,
                    stalled_last = ?last.get(&o.ctx.span_id),
                    "pool hand-off: ambiguous"
                );
                return Some(Parent::Ambiguous(Ambiguity::PoolHandOff));
            }
        }
        Some(Parent::Request(f.ctx, Evidence::Tick))
    }
}
