//! Whole traces as indented trees (`--stdout-format tree`). The traces
//! come whole from the assembler (`export/assemble.rs`).
use std::{
    collections::{HashMap, HashSet},
    fmt::Write,
};

use crate::spans::{hex, Span, Status, Value};

/// One trace as text: a header, then each span under its parent, children
/// in start order. Spans whose parent is not among them (the root, or a
/// span whose parent is in another process's agent or not yet finished)
/// start the tree.
pub fn render(id: &[u8; 16], mut spans: Vec<Span>, late: bool) -> String {
    spans.sort_by_key(|s| (s.start_unix_ns, s.end_unix_ns));
    let start = spans.iter().map(|s| s.start_unix_ns).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end_unix_ns).max().unwrap_or(0);
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
    for (i, depth) in tree_order(&spans) {
        span_line(&mut out, &spans[i], depth, start);
    }
    out
}

/// Every span once, as (index, depth): each under its parent, children in
/// the order given (callers sort by start). Spans whose parent is not among
/// them (the root, or a span whose parent is in another process's agent or
/// not yet finished) are at depth 0; so are spans only reachable through a
/// parent cycle in ids that came from the wire.
pub fn tree_order(spans: &[Span]) -> Vec<(usize, usize)> {
    let ids: HashSet<[u8; 8]> = spans.iter().map(|s| s.span_id).collect();
    let mut children: HashMap<[u8; 8], Vec<usize>> = HashMap::new();
    let mut tops = vec![];
    for (i, s) in spans.iter().enumerate() {
        match s.parent_span_id {
            Some(p) if ids.contains(&p) && p != s.span_id => children.entry(p).or_default().push(i),
            _ => tops.push(i),
        }
    }
    let mut order = Vec::with_capacity(spans.len());
    // Iterative depth-first walk; `seen` guards against cycles.
    let mut seen = vec![false; spans.len()];
    let mut stack: Vec<(usize, usize)> = tops.iter().rev().map(|&i| (i, 0)).collect();
    while let Some((i, depth)) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        order.push((i, depth));
        if let Some(kids) = children.get(&spans[i].span_id) {
            stack.extend(kids.iter().rev().map(|&k| (k, depth + 1)));
        }
    }
    for (i, _) in spans.iter().enumerate() {
        if !seen[i] {
            order.push((i, 0));
        }
    }
    order
}

/// What a span line adds after the name: the concrete target where the
/// name holds only a template or a method, and the status code.
pub fn detail(s: &Span) -> String {
    let mut out = String::new();
    match (s.attr("url.path"), s.attr("url.full")) {
        (Some(Value::Str(p)), _) | (None, Some(Value::Str(p))) if !s.name.ends_with(p.as_ref()) => {
            let _ = write!(out, "{p}");
        }
        _ => {}
    }
    for (key, prefix) in [
        ("http.response.status_code", ""),
        ("rpc.grpc.status_code", "grpc="),
    ] {
        if let Some(code) = s.attr(key) {
            if !out.is_empty() {
                out.push(' ');
            }
            let _ = write!(out, "{prefix}{code}");
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
    let detail = detail(s);
    if !detail.is_empty() {
        let _ = write!(out, " {detail}");
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
pub fn millis(ns: u64) -> String {
    format!("{}.{:03}ms", ns / 1_000_000, (ns / 1_000) % 1_000)
}
