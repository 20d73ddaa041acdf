//! Whole traces as indented trees (`--stdout-format tree`).
//!
//! Spans reach the exporters as they finish, children before their parent
//! and a trace's consumers perhaps after its root. The assembler keeps each
//! trace's spans until the trace looks finished: its root (a span with no
//! parent) has ended and no span has come for [`QUIET`]; or, with no root
//! seen, nothing came for [`NO_ROOT_IDLE`]; or it is [`MAX_AGE`] old. A span
//! that comes after its trace was printed starts a new tree, marked as the
//! trace's late spans. Memory is bounded: past `MAX_TRACES` pending traces
//! the oldest is printed at once, and a trace is printed when it reaches
//! `MAX_SPANS`. Nothing is dropped; a tree is only printed early.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    fmt::Write,
    time::Instant,
};

use super::{MAX_AGE, NO_ROOT_IDLE, QUIET};
use crate::spans::{hex, Span, Status, Value};

const MAX_TRACES: usize = 4096;
const MAX_SPANS: usize = 512;
/// Trace ids already printed, remembered to mark their late spans.
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
    /// Adds a finished span; returns a tree to print now if the trace had
    /// to be printed early (a bound was reached).
    pub fn push(&mut self, s: Span, now: Instant) -> Option<String> {
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
        let tree = self.take(&early);
        // The oldest is at the front: no scan on the bound's common path.
        if self.order.front() == Some(&early) {
            self.order.pop_front();
        } else {
            self.order.retain(|o| o != &early);
        }
        tree
    }

    /// The trees due at `now`, oldest first; with `None`, every pending one.
    pub fn due(&mut self, now: Option<Instant>) -> Vec<String> {
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
        let trees = due.iter().filter_map(|id| self.take(id)).collect();
        self.order.retain(|id| self.pending.contains_key(id));
        trees
    }

    /// Removes a trace and renders it; the caller keeps `order` in step.
    fn take(&mut self, id: &[u8; 16]) -> Option<String> {
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
        Some(render(id, p.spans, late))
    }
}

/// One trace as text: a header, then each span under its parent, children
/// in start order. Spans whose parent is not among them (the root, or a
/// span whose parent is in another process's agent or not yet finished)
/// start the tree.
pub fn render(id: &[u8; 16], mut spans: Vec<Span>, late: bool) -> String {
    spans.sort_by_key(|s| (s.start_unix_ns, s.end_unix_ns));
    let start = spans.iter().map(|s| s.start_unix_ns).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end_unix_ns).max().unwrap_or(0);
    let ids: HashSet<[u8; 8]> = spans.iter().map(|s| s.span_id).collect();
    let mut children: HashMap<[u8; 8], Vec<usize>> = HashMap::new();
    let mut tops = vec![];
    for (i, s) in spans.iter().enumerate() {
        match s.parent_span_id {
            Some(p) if ids.contains(&p) && p != s.span_id => children.entry(p).or_default().push(i),
            _ => tops.push(i),
        }
    }
    let mut out = String::new();
    let errors = spans.iter().filter(|s| s.is_error()).count();
    let _ = write!(
        out,
        "trace {}{} · {} span{} · {}",
        hex(id),
        if late { " (late spans)" } else { "" },
        spans.len(),
        if spans.len() == 1 { "" } else { "s" },
        millis(end.saturating_sub(start)),
    );
    if errors > 0 {
        let _ = write!(
            out,
            " · {errors} error{}",
            if errors == 1 { "" } else { "s" }
        );
    }
    out.push('\n');
    // Iterative depth-first walk; `seen` guards against a parent cycle in
    // ids that came from the wire.
    let mut seen = vec![false; spans.len()];
    let mut stack: Vec<(usize, usize)> = tops.iter().rev().map(|&i| (i, 0)).collect();
    while let Some((i, depth)) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        span_line(&mut out, &spans[i], depth, start);
        if let Some(kids) = children.get(&spans[i].span_id) {
            stack.extend(kids.iter().rev().map(|&k| (k, depth + 1)));
        }
    }
    // Spans only reachable through a cycle: still printed, at the top.
    for (i, s) in spans.iter().enumerate() {
        if !seen[i] {
            span_line(&mut out, s, 0, start);
        }
    }
    out
}

fn span_line(out: &mut String, s: &Span, depth: usize, trace_start: u64) {
    let _ = write!(
        out,
        "{:indent$}{} {} {}  {} at +{}",
        "",
        s.resource.service_name,
        s.kind.as_str(),
        s.name,
        millis(s.end_unix_ns.saturating_sub(s.start_unix_ns)),
        millis(s.start_unix_ns.saturating_sub(trace_start)),
        indent = 2 * (depth + 1),
    );
    // The concrete target, where the name holds only a template or a method.
    match (s.attr("url.path"), s.attr("url.full")) {
        (Some(Value::Str(p)), _) | (None, Some(Value::Str(p))) if !s.name.ends_with(p.as_str()) => {
            let _ = write!(out, " {p}");
        }
        _ => {}
    }
    if let Some(code) = s.attr("http.response.status_code") {
        let _ = write!(out, " {code}");
    }
    if let Some(code) = s.attr("rpc.grpc.status_code") {
        let _ = write!(out, " grpc={code}");
    }
    if let Status::Error(m) = &s.status {
        if m.is_empty() {
            out.push_str(" ERROR");
        } else {
            let _ = write!(out, " ERROR({m})");
        }
    }
    out.push('\n');
}

/// Milliseconds with three decimals: `12.345ms`.
fn millis(ns: u64) -> String {
    format!("{}.{:03}ms", ns / 1_000_000, (ns / 1_000) % 1_000)
}
