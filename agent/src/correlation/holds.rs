//! Provisional traces: a server request from a client on this node whose
//! client record has not come yet, or a delivery whose publish, seen on
//! this node, has not come yet. Everything of its trace (the server or
//! consumer span and the calls it made) is held until the late record
//! names the real trace, or the wait is over. See "Socket-pair stitching" in
//! ARCHITECTURE.md.
use foldhash::HashMap;
use std::collections::VecDeque;

use super::{relay::ClientKey, Linked};

/// How long a finished server span waits for a late client on this node.
pub const HOLD_NS: u64 = 1_000_000_000;
/// Bound on held traces; the oldest goes out as it is when full.
const MAX_HELD: usize = 4096;
/// How long an adopted trace's provisional id is still renamed: the
/// contexts it already gave (a call queued for a downstream server, a
/// request in flight there) make items for as long as those calls last.
pub const ALIAS_NS: u64 = 60_000_000_000;
/// Bound on renamed provisional ids.
const MAX_ALIASES: usize = 65536;

/// What a held trace waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldFor {
    /// A server request: its client's record, by the client's (local,
    /// remote) endpoints and the HTTP/2 stream (0 for HTTP/1.x).
    Client(ClientKey, u32),
    /// A delivery: the publish that sent it, by message key.
    Publish(u64),
    /// Python: a client call no rule placed, made by asyncio task `task`
    /// of process `pid`: the request whose response that task writes next,
    /// if it was read before the call (`causality/python.rs`).
    Task { pid: u32, task: u32 },
}

pub struct Held {
    /// The server connection and its request's first read.
    pub conn: u64,
    pub since: u64,
    /// The late record it waits for.
    pub key: HeldFor,
    pub items: Vec<Linked>,
    /// A call held for its task: why no rule placed it, counted if it
    /// goes out a root.
    pub why: Option<super::Ambiguity>,
}

#[derive(Default)]
pub struct Holds {
    by_trace: HashMap<[u8; 16], Held>,
    /// Trace ids in the order their wait ends (monotonic ns).
    order: VecDeque<([u8; 16], u64)>,
    /// Provisional trace ids of adopted traces -> the real trace (id,
    /// sampled), for the items their contexts still make.
    aliases: HashMap<[u8; 16], ([u8; 16], bool)>,
    /// The same ids in the order their renaming ends (monotonic ns).
    alias_order: VecDeque<([u8; 16], u64)>,
    /// Traces let go before their wait ended, because too many were held.
    pub released_early: u64,
    /// Why each call held for its task and let go as a root (drained into
    /// `sonde_calls_ambiguous_total`).
    pub unlinked: Vec<super::Ambiguity>,
}

impl Holds {
    /// Starts holding `trace_id`'s items until `now_ns + HOLD_NS`.
    pub fn start(&mut self, trace_id: [u8; 16], held: Held, now_ns: u64, out: &mut Vec<Linked>) {
        if self.order.len() >= MAX_HELD {
            self.released_early += 1;
            self.release_oldest(out);
        }
        self.by_trace.insert(trace_id, held);
        self.order.push_back((trace_id, now_ns + HOLD_NS));
    }

    /// A held trace was adopted into `real`: items that still carry its
    /// provisional id (`from`) move there too, until `now_ns + ALIAS_NS`.
    pub fn alias(&mut self, from: [u8; 16], real: ([u8; 16], bool), now_ns: u64) {
        if self.alias_order.len() >= MAX_ALIASES {
            if let Some((old, _)) = self.alias_order.pop_front() {
                self.aliases.remove(&old);
                self.released_early += 1;
            }
        }
        self.aliases.insert(from, real);
        self.alias_order.push_back((from, now_ns + ALIAS_NS));
    }

    /// The real trace of a provisional id that was adopted.
    pub fn renamed(&self, trace_id: &[u8; 16]) -> Option<([u8; 16], bool)> {
        self.aliases.get(trace_id).copied()
    }

    /// Holds `item` if its trace is held; else hands it back.
    pub fn hold(&mut self, item: Linked) -> Option<Linked> {
        match self.by_trace.get_mut(&item.ctx.trace_id) {
            Some(h) => {
                h.items.push(item);
                None
            }
            None => Some(item),
        }
    }

    /// Takes the first held trace `matches` accepts out of the wait, with
    /// its (provisional) trace id.
    pub fn take(&mut self, matches: impl Fn(&Held) -> bool) -> Option<([u8; 16], Held)> {
        let trace_id = self
            .by_trace
            .iter()
            .find(|(_, h)| matches(h))
            .map(|(t, _)| *t)?;
        self.order.retain(|(t, _)| *t != trace_id);
        self.by_trace.remove(&trace_id).map(|h| (trace_id, h))
    }

    fn release_oldest(&mut self, out: &mut Vec<Linked>) {
        if let Some((trace_id, _)) = self.order.pop_front() {
            if let Some(h) = self.by_trace.remove(&trace_id) {
                self.unlinked.extend(h.why);
                out.extend(h.items);
            }
        }
    }

    /// Ends the waits that are over at `now_ns` (all of them with None, at
    /// shutdown): their items go out as they are.
    pub fn release_due(&mut self, now_ns: Option<u64>, out: &mut Vec<Linked>) {
        while let Some((_, until)) = self.order.front() {
            if now_ns.is_some_and(|n| *until > n) {
                break;
            }
            self.release_oldest(out);
        }
        while let Some(&(from, until)) = self.alias_order.front() {
            if now_ns.is_some_and(|n| until > n) {
                break;
            }
            self.alias_order.pop_front();
            self.aliases.remove(&from);
        }
    }

    /// Held traces and renamed provisional ids.
    pub fn len(&self) -> usize {
        self.by_trace.len() + self.aliases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_trace.is_empty()
    }
}
