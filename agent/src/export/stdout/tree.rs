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
