//! One line per span (`--stdout-format lines`).
use crate::spans::{hex, Span, Status};

pub fn line(s: &Span) -> String {
    let dur = s.end_unix_ns.saturating_sub(s.start_unix_ns) as f64 / 1e6;
    let status = match &s.status {
        Status::Unset => String::new(),
        Status::Error(m) => format!(" ERROR({m})"),
    };
    let parent = s
        .parent_span_id
        .map(|p| format!(" parent={}", hex(&p)))
        .unwrap_or_default();
    let attrs: Vec<String> = s
        .attributes
        .iter()
        .filter(|(k, _)| {
            matches!(
                *k,
                "http.response.status_code"
                    | "server.address"
                    | "server.port"
                    | "network.peer.address"
                    | "url.full"
            )
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "{} {:<6} {:<32} {:>9.3}ms{status} service={} trace={} span={}{parent} {}",
        chrono_like(s.start_unix_ns),
        s.kind.as_str(),
        s.name,
        dur,
        s.resource.service_name,
        hex(&s.trace_id),
        hex(&s.span_id),
        attrs.join(" ")
    )
}

/// `HH:MM:SS.mmm` UTC of a Unix timestamp.
fn chrono_like(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let ms = (unix_ns / 1_000_000) % 1000;
    format!(
        "{:02}:{:02}:{:02}.{ms:03}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}
