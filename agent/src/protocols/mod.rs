//! Stage 3, protocols: bytes of one connection to typed records.
//!
//! Every protocol implements [`Protocol`] and has one line in
//! [`registry::REGISTRY`]; [`dispatch`] detects which one a connection speaks
//! and feeds it. A protocol is a folder: its parser, `protocol.rs` (the
//! trait impl, its [`Spec`] and its recorded captures), tests and
//! `captures/`. The fuzz targets and the parser bench iterate the registry,
//! so a new protocol is fuzzed and benched without further edits.
//!
//! Parsers consume the per-connection byte stream as [`Segment`]s (one per
//! syscall); they never see kernel types and never panic on hostile input.
pub mod amqp;
pub mod db;
pub mod dispatch;
pub mod http;
pub mod http2;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod registry;
pub mod sql;

pub use sonde_common::Lineage;

use crate::event::{Direction, Role};

/// What one syscall contributed to a direction of a connection's stream.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    /// The captured prefix of the bytes moved.
    pub data: &'a [u8],
    /// All bytes the syscall moved; `total > data.len()` means the rest
    /// was not captured (a gap the parser skips by count).
    pub total: u64,
    /// CLOCK_MONOTONIC ns at syscall entry and exit.
    pub enter_ns: u64,
    pub exit_ns: u64,
    /// The thread that made the syscall (0 when unknown).
    pub tid: u32,
    /// That thread's tick (0 when unknown): see `correlation::causality`.
    pub tick: u32,
    /// Go: where the calling goroutine's work came from (then `tid` names
    /// the goroutine, and `tick` is 0).
    pub lineage: Lineage,
    /// Python: the context (an asyncio task's) the call ran in; 0 elsewhere.
    pub py_task: u32,
}

impl<'a> Segment<'a> {
    pub fn whole(data: &'a [u8], enter_ns: u64, exit_ns: u64) -> Self {
        Segment {
            data,
            total: data.len() as u64,
            enter_ns,
            exit_ns,
            tid: 0,
            tick: 0,
            lineage: Lineage::default(),
            py_task: 0,
        }
    }

    pub fn time(&self) -> SegTime {
        SegTime {
            enter_ns: self.enter_ns,
            exit_ns: self.exit_ns,
            tid: self.tid,
            tick: self.tick,
            lineage: self.lineage,
            py_task: self.py_task,
        }
    }

    /// Uncaptured bytes after `data`.
    pub fn gap(&self) -> u64 {
        self.total.saturating_sub(self.data.len() as u64)
    }
}

/// Timing of the syscall that carried a message's first or last byte.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegTime {
    pub enter_ns: u64,
    pub exit_ns: u64,
    pub tid: u32,
    /// The thread's tick: a read's after it, a write's before it.
    pub tick: u32,
    pub lineage: Lineage,
    /// Python: the context (an asyncio task's) the call ran in; 0 elsewhere.
    pub py_task: u32,
}

/// Tri-state answer of protocol detection on a stream's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detect {
    Yes,
    No,
    /// Too few bytes to tell.
    NeedMore,
}

/// Which half of the conversation a segment belongs to: requests flow out
/// of a client and into a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Request,
    Response,
}

impl Side {
    pub fn of(role: Role, dir: Direction) -> Side {
        match (role, dir) {
            (Role::Server, Direction::Ingress)
            | (Role::Client | Role::Unknown, Direction::Egress) => Side::Request,
            _ => Side::Response,
        }
    }
}

/// The typed records protocols produce; correlation and telemetry consume
/// them, and nothing downstream reads bytes or span attributes back.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// An HTTP request was framed: read by a server (it is now in flight)
    /// or written by a client (its context is fixed now). Comes before the
    /// [`Record::Http`] that completes it.
    HttpRequest(http::RequestSeen),
    /// A request with its final response.
    Http(Box<http::Exchange>),
    /// A database call with its outcome.
    Db(Box<db::DbCall>),
    /// A messaging operation (AMQP 0-9-1).
    Messaging(Box<amqp::AmqpOut>),
}

/// Why a parser stopped following a connection: the dispatcher releases it
/// (the kernel stops copying its payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GiveUp(pub &'static str);

/// Counters a parser accumulated since the last [`Protocol::take_stats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ParserStats {
    /// Bytes the parser rejected (framing lost, then resynchronised).
    pub parse_errors: u64,
    /// Requests or responses that could not be paired: a response with no
    /// request, a request dropped unanswered (overflow, framing lost, close).
    pub unpaired: u64,
}

impl ParserStats {
    /// `now - before`, for parsers that keep running totals.
    pub fn since(now: ParserStats, before: &mut ParserStats) -> ParserStats {
        let d = ParserStats {
            parse_errors: now.parse_errors.saturating_sub(before.parse_errors),
            unpaired: now.unpaired.saturating_sub(before.unpaired),
        };
        *before = now;
        d
    }

    pub fn add(&mut self, o: ParserStats) {
        self.parse_errors += o.parse_errors;
        self.unpaired += o.unpaired;
    }
}

/// One connection's parser.
pub trait Protocol: Send {
    /// Feeds one segment of `side`; finished records are appended to `out`.
    /// `Err` means the connection is not (or no longer) this protocol, or
    /// cannot be followed (encrypted, upgraded): records already appended
    /// stand, and the connection is released.
    fn feed(&mut self, side: Side, seg: Segment<'_>, out: &mut Vec<Record>) -> Result<(), GiveUp>;
    /// The connection closed at `at`: what the close completes.
    fn close(&mut self, at: SegTime, out: &mut Vec<Record>);
    /// Counters since the last call (called after every feed, so they move
    /// while the connection lives).
    fn take_stats(&mut self) -> ParserStats;
    /// Approximate heap bytes held, for the global parser memory budget.
    fn heap_bytes(&self) -> usize;
}

/// A recorded conversation: real bytes from real clients and servers,
/// replayed by tests, the fuzzers (as seeds) and the parser bench.
pub struct Capture {
    pub name: &'static str,
    /// The end the capture is seen from (detection input).
    pub role: Role,
    /// Segments in the order they were really sent.
    pub turns: Vec<(Side, &'static [u8])>,
}

impl Capture {
    pub fn bytes(&self) -> usize {
        self.turns.iter().map(|(_, b)| b.len()).sum()
    }
}

/// A protocol's registry entry.
pub struct Spec {
    /// Its `protocol` label in metrics.
    pub name: &'static str,
    /// Whether a connection whose first payload, seen from `role` going
    /// `dir`, is `bytes`, speaks it. `NeedMore` commits to it.
    pub detect: fn(Role, Direction, &[u8]) -> Detect,
    pub new: fn() -> Box<dyn Protocol>,
    pub captures: fn() -> Vec<Capture>,
    /// Its parser must see every frame header: the kernel copies up to the
    /// ceiling on its connections (`sock_flags::WHOLE`), not `--capture-size`.
    pub whole_frames: bool,
    /// A client's every request is answered by the server (HTTP, databases;
    /// not AMQP, whose publishes go unanswered): causality watches for a
    /// thread that writes a call while another of its own is unanswered.
    pub answered: bool,
}

/// Heap bytes a framer's partial message holds: a body borrowed from its
/// segment holds none. (It takes the `Cow` itself: which side it is, is
/// the answer.)
#[allow(clippy::ptr_arg)]
pub(crate) fn held_bytes(body: &std::borrow::Cow<'_, [u8]>) -> usize {
    match body {
        std::borrow::Cow::Owned(v) => v.capacity(),
        std::borrow::Cow::Borrowed(_) => 0,
    }
}

/// Whether a payload is a client's first write: the only place the
/// client-speaks-first protocols are detected.
pub fn client_first_write(role: Role, dir: Direction) -> bool {
    role != Role::Server && dir == Direction::Egress
}

/// Whether bytes start with a TLS record header: content type (change
/// cipher spec, alert, handshake, application data), version 3.0 to 3.4
/// (SSL 3.0 to TLS 1.3's legacy field), and a length within the limit.
pub fn tls_record(data: &[u8]) -> bool {
    match data {
        [kind, 3, minor, hi, lo, ..] => {
            (20..=23).contains(kind)
                && *minor <= 4
                && u16::from_be_bytes([*hi, *lo]) <= (1 << 14) + 2048
        }
        _ => false,
    }
}

/// Whether bytes open a TLS handshake record (a hello, a certificate) or
/// a change-cipher-spec: the connection's application data has not begun.
pub fn tls_handshake_record(data: &[u8]) -> bool {
    matches!(data.first(), Some(20 | 22)) && tls_record(data)
}

/// Whether bytes are shorter than a TLS record header and could start one.
pub fn tls_record_prefix(data: &[u8]) -> bool {
    match data {
        [kind] => (20..=23).contains(kind),
        [kind, 3, rest @ ..] if rest.len() < 3 => {
            (20..=23).contains(kind) && rest.first().is_none_or(|m| *m <= 4)
        }
        _ => false,
    }
}

#[cfg(test)]
#[test]
fn tls_records_are_told_from_plaintext() {
    assert!(tls_record_prefix(b"\x16"));
    assert!(tls_record_prefix(b"\x16\x03\x01"));
    assert!(!tls_record_prefix(b"\x16\x03\x01\x02\x00"));
    assert!(!tls_record_prefix(b"G"));
    assert!(!tls_record_prefix(b""));
    // A ClientHello, an application data record, an alert.
    assert!(tls_record(b"\x16\x03\x01\x02\x00\x01"));
    assert!(tls_record(b"\x17\x03\x03\x00\x35"));
    assert!(tls_record(b"\x15\x03\x03\x00\x02"));
    assert!(tls_handshake_record(b"\x16\x03\x01\x02\x00\x01"));
    assert!(tls_handshake_record(b"\x14\x03\x03\x00\x01\x01"));
    assert!(!tls_handshake_record(b"\x17\x03\x03\x00\x35"));
    assert!(!tls_handshake_record(b"\x16\x03"));
    // Plaintext of the protocols sonde parses, and short or odd records.
    for p in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"\0\0\0\x08\x04\xd2\x16\x2f",
        b"*1\r\n$4\r\nPING\r\n",
        b"AMQP\0\0\x09\x01",
        b"\x16\x03",
        b"\x16\x03\x01\xff\xff",
        b"\x18\x03\x01\x00\x10",
        b"",
    ] {
        assert!(!tls_record(p), "{p:?}");
    }
}

/// A recorded capture file of a protocol folder, compiled in.
#[macro_export]
macro_rules! capture {
    ($protocol:literal, $name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/protocols/",
            $protocol,
            "/captures/",
            $name
        ))
        .as_slice()
    };
}

/// Splits a capture file by a recorded order: (side, length) per relayed chunk.
pub fn interleave(
    c2s: &'static [u8],
    s2c: &'static [u8],
    order: &str,
) -> Vec<(Side, &'static [u8])> {
    let (mut c, mut s) = (0usize, 0usize);
    let mut turns = vec![];
    for line in order.lines() {
        let Some((dir, n)) = line.split_once(' ') else {
            continue;
        };
        let Ok(n) = n.trim().parse::<usize>() else {
            continue;
        };
        let (side, buf, at) = if dir == "c2s" {
            (Side::Request, c2s, &mut c)
        } else {
            (Side::Response, s2c, &mut s)
        };
        let end = (*at + n).min(buf.len());
        turns.push((side, &buf[*at..end]));
        *at = end;
    }
    turns
}
