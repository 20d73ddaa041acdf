//! Go: a call written by a goroutine that serves no request, placed by the
//! goroutine it hands a value to right after the write.
//!
//! net/http's transport writes each request from the connection's
//! `writeLoop` goroutine, which the request's goroutine hands the request
//! to on a buffered channel. On a warm connection the loop waits on that
//! channel, so the hand-off readies it and its write carries the sender
//! (rule `goroutine`, `by_lineage`). On a connection just dialed, the loop's
//! first run takes the request from the channel's buffer: nothing readies
//! it, and the dialing goroutine may have handed the connection to another
//! request than the one that dialed it. But after writing, the loop tells
//! the request's goroutine, which waits for it, that the request is written
//! (`wr.ch <- err`): the kernel reports the first hand-off a goroutine
//! makes after writing on a socket in its run, with that write's entry
//! (`kind::HANDOFF`). The call made in exactly that write belongs to the
//! request its receiver serves.
//!
//! The hand-off comes after the write, but the call's record may come
//! before it (HTTP: at the request's head) or after it (databases: at the
//! reply), so each side waits for the other: the call in a hold
//! (`HeldFor::Handed`), the hand-off here, a few per connection.
//!
//! A worker fed by a buffered channel (a queue of jobs) takes its next job
//! without parking when one is queued: nothing readies it, so its writes
//! for that job carry no sender. The kernel ends a run's lineage when the
//! run answers the goroutine that handed it its work, so those writes are
//! placed by the hand-off that answers their own job. Several such jobs
//! in one run leave several hand-offs on one connection before the first
//! reply is read (databases), so each connection keeps the last
//! `PER_CONN`.
//!
//! A call's record comes with its reply, which another goroutine may read
//! long after the write (a worker that writes jobs and answers their
//! goroutines at once, and reads the replies on a goroutine of its own).
//! By then the request the writing or sending goroutine served may be
//! over. So the requests goroutines served stay known for a while after
//! their response (`Served`, the last `SERVED_PER_GOROUTINE` per goroutine):
//! a call written by, or handed over from, a goroutine while it served a
//! request (between the request's read and its response) is that
//! request's, however late its record. Go reuses a goroutine's `g` (its
//! id here) for a new goroutine once one exits: the time window tells the
//! two apart.
use std::collections::VecDeque;

use foldhash::HashMap;

use super::{is_goroutine, InFlight, Linker, Parent, MAX_THREADS};
use crate::{event::HandOffRecord, spans::SpanCtx};

/// Requests goroutines served that are over, by (pid, goroutine), oldest
/// first.
#[derive(Default)]
pub(super) struct Served(HashMap<(u32, u32), VecDeque<Done>>);

/// A request a goroutine served, from `since_ns` (its read) to `end_ns`
/// (its response).
struct Done {
    since_ns: u64,
    end_ns: u64,
    ctx: SpanCtx,
}

/// Requests kept per goroutine after their response: a keep-alive
/// connection's goroutine serves its requests one after another, and a late
/// reply comes within a few of them.
const SERVED_PER_GOROUTINE: usize = 4;

impl Served {
    /// Goroutines with requests kept.
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

/// Hand-offs whose call has not been seen yet, by connection, oldest
/// first.
#[derive(Default)]
pub(super) struct HandOffs(HashMap<u64, Vec<Early>>);

/// A hand-off that came before its call's record: its writer, the write's
/// entry, and the request its receiver worked for when it came.
pub(super) struct Early {
    from: u32,
    wrote_ns: u64,
    request: SpanCtx,
}

/// Hand-offs kept per connection: a worker's jobs written in one run before
/// the first one's reply came.
const PER_CONN: usize = 8;

impl HandOffs {
    pub(super) fn len(&self) -> usize {
        self.0.values().map(Vec::len).sum()
    }
}

impl Linker {
    /// The request goroutine `g` of `pid` serves, read before `by_ns`, or
    /// served at `by_ns` if it is over.
    fn goroutine_request(&self, pid: u32, g: u32, by_ns: u64) -> Option<SpanCtx> {
        let in_flight = self
            .by_pid
            .get(&pid)
            .and_then(|list| self.on_thread(list, pid, g, by_ns, 0));
        match in_flight {
            Some(Parent::Request(ctx, _)) => Some(ctx),
            Some(_) => None,
            None => self.served_at(pid, g, by_ns),
        }
    }

    /// A request of `pid` was answered at `end_ns`: if a goroutine served
    /// it, it stays known (`Served`).
    pub(super) fn served(&mut self, pid: u32, f: &InFlight, end_ns: u64) {
        if !is_goroutine(f.tid) {
            return;
        }
        let key = (pid, f.tid);
        if self.served.0.len() >= MAX_THREADS && !self.served.0.contains_key(&key) {
            self.marks_dropped += self.served.len() as u64;
            self.served.0.clear();
        }
        let done = self.served.0.entry(key).or_default();
        if done.len() >= SERVED_PER_GOROUTINE {
            // The oldest goes: an age bound, not a loss to count.
            done.pop_front();
        }
        done.push_back(Done {
            since_ns: f.since_ns,
            end_ns,
            ctx: f.ctx,
        });
    }

    /// The request goroutine `g` of `pid` was serving at `at_ns`, among
    /// those that are over.
    pub(super) fn served_at(&self, pid: u32, g: u32, at_ns: u64) -> Option<SpanCtx> {
        if !is_goroutine(g) {
            return None;
        }
        let mut during = self
            .served
            .0
            .get(&(pid, g))?
            .iter()
            .filter(|d| d.since_ns <= at_ns && at_ns <= d.end_ns);
        let d = during.next()?;
        // One goroutine serves one request at a time: two would be a record
        // out of place, which decides nothing.
        during.next().is_none().then_some(d.ctx)
    }

    /// The request the receiver of hand-off `r` works for, for a call
    /// written at `since`: the one it serves, else (a goroutine a handler
    /// started to make the call) the one its starter had read when it ran
    /// `go`, as rule `goroutine` takes a starter.
    pub fn handed_to(&self, pid: u32, r: &HandOffRecord, since: u64) -> Option<SpanCtx> {
        if let Some(ctx) = self.goroutine_request(pid, r.to, since) {
            return Some(ctx);
        }
        if r.to_origin == 0 || self.serves(pid, r.to) {
            return None;
        }
        self.goroutine_request(pid, r.to_origin, r.to_origin_ns.min(since))
    }

    /// Whether goroutine `g` of `pid` has a request in flight.
    fn serves(&self, pid: u32, g: u32) -> bool {
        self.by_pid
            .get(&pid)
            .is_some_and(|l| l.iter().any(|f| f.tid == g))
    }

    /// A hand-off whose call's record has not come: the request it names is
    /// found now, while its receiver waits for the write (the call's record
    /// may come at its reply, after that request ended), and kept for the
    /// call (the last `PER_CONN` per connection, the oldest dropped and
    /// counted), until the connection closes. One that names none is not
    /// kept: its call stays a root.
    pub fn handed_early(&mut self, conn: u64, r: HandOffRecord) {
        let request = self.handed_to(r.pid, &r, r.wrote_ns);
        tracing::debug!(
            conn,
            from = r.from,
            to = r.to,
            wrote = r.wrote_ns,
            to_origin = r.to_origin,
            request = ?request.map(|r| r.span_id),
            "go hand-off before its call"
        );
        let Some(request) = request else {
            return;
        };
        if self.handoffs.0.len() >= MAX_THREADS && !self.handoffs.0.contains_key(&conn) {
            self.marks_dropped += self.handoffs.len() as u64;
            self.handoffs.0.clear();
        }
        let kept = self.handoffs.0.entry(conn).or_default();
        if kept.len() >= PER_CONN {
            kept.remove(0);
            self.marks_dropped += 1;
        }
        kept.push(Early {
            from: r.from,
            wrote_ns: r.wrote_ns,
            request,
        });
    }

    /// The request a call on `conn`, written by goroutine `writer` in a
    /// write that entered at `since`, was handed over for, if the hand-off
    /// that followed that write came already.
    pub fn handed_for(&mut self, conn: u64, writer: u32, since: u64) -> Option<SpanCtx> {
        let kept = self.handoffs.0.get_mut(&conn)?;
        let i = kept
            .iter()
            .position(|e| e.from == writer && e.wrote_ns == since)?;
        let e = kept.remove(i);
        if kept.is_empty() {
            self.handoffs.0.remove(&conn);
        }
        Some(e.request)
    }

    pub(super) fn forget_handoff(&mut self, conn: u64) {
        self.handoffs.0.remove(&conn);
    }
}
