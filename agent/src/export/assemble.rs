//! Whole traces from finished spans, for the stdout trees and `sonde top`.
//!
//! Spans reach the exporters as they finish, children before their parent
//! and a trace's consumers perhaps after its root. The assembler keeps each
//! trace's spans until the trace looks finished: its root (a span with no
//! parent) has ended and no span has come for [`QUIET`]; or, with no root
//! seen, nothing came for [`NO_ROOT_IDLE`]; or it is [`MAX_AGE`] old. A span
//! that comes after its trace was handed on starts a new one, marked as the
//! trace's late spans. Memory is bounded: past `MAX_TRACES` pending traces
//! the oldest is handed on at once, and a trace is handed on when it
//! reaches `MAX_SPANS`. Nothing is dropped; a trace is only finished early.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use crate::spans::Span;

/// How long a trace whose root has ended waits for late spans (a consumer
/// of its message, a partner whose record came late).
pub const QUIET: Duration = Duration::from_millis(1000);
/// How long a trace with no root span seen (its root is elsewhere, or not
/// finished) waits after its last span.
pub const NO_ROOT_IDLE: Duration = Duration::from_secs(3);
/// The longest any trace is kept from its first span.
pub const MAX_AGE: Duration = Duration::from_secs(10);

const MAX_TRACES: usize = 4096;
const MAX_SPANS: usize = 512;
/// Trace ids already handed on, remembered to mark their late spans.
const MAX_PRINTED: usize = 4096;

struct Pending {
    spans: Vec<Span>,
    first: Instant,
    last: Instant,
    root_ended: bool,
}

#[derive(Default)]
pub struct Assembler {
    pending: HashMap<[u8; 16], Pending>,
    /// Pending trace ids by arrival, for the oldest-first eviction.
    order: VecDeque<[u8; 16]>,
    printed: HashSet<[u8; 16]>,
    printed_order: VecDeque<[u8; 16]>,
}

impl Assembler {
    /// Adds a finished span; returns a trace to hand on now if it had to
    /// finish early (a bound was reached).
    pub fn push(&mut self, s: Span, now: Instant) -> Option<Finished> {
        let id = s.trace_id;
        let root = s.parent_span_id.is_none();
        let p = self.pending.entry(id).or_insert_with(|| {
            self.order.push_back(id);
            Pending {
                spans: vec![],
                first: now,
                last: now,
                root_ended: false,
            }
        });
        p.spans.push(s);
        p.last = now;
        p.root_ended |= root;
        let early = if p.spans.len() >= MAX_SPANS {
            id
        } else if self.pending.len() > MAX_TRACES {
            *self.order.front()?
        } else {
            return None;
        };
        let done = self.take(&early);
        // The oldest is at the front: no scan on the bound's common path.
        if self.order.front() == Some(&early) {
            self.order.pop_front();
        } else {
            self.order.retain(|o| o != &early);
        }
        done
    }

    /// The traces due at `now`, oldest first; with `None`, every pending one.
    pub fn due(&mut self, now: Option<Instant>) -> Vec<Finished> {
        let due: Vec<[u8; 16]> = self
            .order
            .iter()
            .filter(|id| {
                let p = &self.pending[*id];
                now.is_none_or(|now| {
                    let idle = now.saturating_duration_since(p.last);
                    (p.root_ended && idle >= QUIET)
                        || idle >= NO_ROOT_IDLE
                        || now.saturating_duration_since(p.first) >= MAX_AGE
                })
            })
            .copied()
            .collect();
        if due.is_empty() {
            return vec![];
        }
        let traces = due.iter().filter_map(|id| self.take(id)).collect();
        self.order.retain(|id| self.pending.contains_key(id));
        traces
    }

    /// Traces pending.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Removes a trace; the caller keeps `order` in step.
    fn take(&mut self, id: &[u8; 16]) -> Option<Finished> {
        let p = self.pending.remove(id)?;
        let late = self.printed.contains(id);
        if !late {
            if self.printed.len() >= MAX_PRINTED {
                if let Some(old) = self.printed_order.pop_front() {
                    self.printed.remove(&old);
                }
            }
            self.printed.insert(*id);
            self.printed_order.push_back(*id);
        }
        Some(Finished {
            id: *id,
            spans: p.spans,
            late,
        })
    }
}

/// A trace the assembler is done with.
#[derive(Debug, Clone)]
pub struct Finished {
    pub id: [u8; 16],
    /// In arrival order.
    pub spans: Vec<Span>,
    /// More spans of a trace handed on before.
    pub late: bool,
}
