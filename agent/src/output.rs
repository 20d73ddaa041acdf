//! Printing of the connection stream for `sonde capture` and `sonde run`.
use serde::Serialize;

use crate::{
    clock::Clock,
    connections::{ConnInfo, StreamEvent},
    event::DataRecord,
};

/// Escapes bytes for display: printable ASCII as is, the rest as \n, \xNN.
pub fn escape(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

#[derive(Serialize)]
struct JsonEvent<'a> {
    event: &'static str,
    ts_unix_ns: u64,
    conn_id: u64,
    pid: u32,
    comm: &'a str,
    container_id: Option<&'a str>,
    fd: i32,
    role: &'static str,
    local: Option<String>,
    remote: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData>,
}

#[derive(Serialize)]
struct JsonData {
    tid: u32,
    direction: &'static str,
    syscall: &'static str,
    bytes: u64,
    captured: usize,
    truncated: bool,
    enter_ns: u64,
    exit_ns: u64,
    payload: String,
}

fn base<'a>(event: &'static str, c: &'a ConnInfo, ts_unix_ns: u64) -> JsonEvent<'a> {
    JsonEvent {
        event,
        ts_unix_ns,
        conn_id: c.id,
        pid: c.pid,
        comm: &c.process.comm,
        container_id: c.process.container_id.as_deref(),
        fd: c.fd,
        role: c.role.as_str(),
        local: c.tuple.map(|t| t.local.to_string()),
        remote: c.tuple.map(|t| t.remote.to_string()),
        data: None,
    }
}

pub fn json_line(ev: &StreamEvent, clock: &Clock) -> String {
    let v = match ev {
        StreamEvent::Open(c) => base("open", c, clock.unix_ns(c.opened_ns)),
        StreamEvent::Tuple(c) => base("tuple", c, clock.unix_ns(c.opened_ns)),
        StreamEvent::Close(c, ts) => base("close", c, clock.unix_ns(*ts)),
        StreamEvent::Context(c, r) => base("context", c, clock.unix_ns(r.enter_ns)),
        StreamEvent::HandOff(c, r) => base("handoff", c, clock.unix_ns(r.ts_ns)),
        StreamEvent::Data(c, d) => {
            let mut v = base("data", c, clock.unix_ns(d.exit_ns));
            v.data = Some(JsonData {
                tid: d.tid,
                direction: d.direction.as_str(),
                syscall: d.syscall.as_str(),
                bytes: d.bytes,
                captured: d.payload.len(),
                truncated: d.truncated(),
                enter_ns: d.enter_ns,
                exit_ns: d.exit_ns,
                payload: escape(&d.payload),
            });
            v
        }
    };
    serde_json::to_string(&v).expect("serializable")
}

fn who(c: &ConnInfo) -> String {
    let ctr = c
        .process
        .container_id
        .as_deref()
        .map(|id| format!(" ctr={}", &id[..12.min(id.len())]))
        .unwrap_or_default();
    let tuple = match c.tuple {
        Some(t) => format!("{} -> {}", t.local, t.remote),
        None => "? -> ?".into(),
    };
    format!(
        "{}[{}]{ctr} fd={} {} {tuple}",
        c.process.comm,
        c.pid,
        c.fd,
        c.role.as_str()
    )
}

pub fn text_line(ev: &StreamEvent, show: usize) -> String {
    match ev {
        StreamEvent::Open(c) => format!("open  {}", who(c)),
        StreamEvent::Tuple(c) => format!("tuple {}", who(c)),
        StreamEvent::Close(c, _) => format!("close {}", who(c)),
        StreamEvent::Context(c, r) => format!(
            "ctx   {} {} {}-{}",
            who(c),
            if r.injected { "injected" } else { "server" },
            crate::spans::hex(&r.trace_id),
            crate::spans::hex(&r.span_id)
        ),
        StreamEvent::HandOff(c, r) => format!("hand  {} {:#x} -> {:#x}", who(c), r.from, r.to),
        StreamEvent::Data(c, d) => data_line(c, d, show),
    }
}

fn data_line(c: &ConnInfo, d: &DataRecord, show: usize) -> String {
    let arrow = match d.direction {
        crate::event::Direction::Egress => ">>",
        crate::event::Direction::Ingress => "<<",
    };
    let shown = &d.payload[..show.min(d.payload.len())];
    let more = if d.payload.len() > shown.len() || d.truncated() {
        "..."
    } else {
        ""
    };
    format!(
        "{arrow} {} {} {}B {:.3}ms \"{}{more}\"",
        who(c),
        d.syscall.as_str(),
        d.bytes,
        d.exit_ns.saturating_sub(d.enter_ns) as f64 / 1e6,
        escape(shown)
    )
}
