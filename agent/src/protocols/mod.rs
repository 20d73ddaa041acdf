//! Stage 4: protocol detection and parsers. Parsers consume the per-connection
//! byte stream as [`Segment`]s (one per syscall) and produce messages; they
//! never see kernel types and never panic on hostile input.
pub mod amqp;
pub mod db;
pub mod http;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod sql;

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
}

impl<'a> Segment<'a> {
    pub fn whole(data: &'a [u8], enter_ns: u64, exit_ns: u64) -> Self {
        Segment { data, total: data.len() as u64, enter_ns, exit_ns, tid: 0 }
    }

    pub fn time(&self) -> SegTime {
        SegTime { enter_ns: self.enter_ns, exit_ns: self.exit_ns, tid: self.tid }
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
}

/// Tri-state answer of protocol detection on a stream's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detect {
    Yes,
    No,
    /// Too few bytes to tell.
    NeedMore,
}
