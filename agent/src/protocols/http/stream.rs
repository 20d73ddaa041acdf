//! Framing of one direction of an HTTP/1.x connection into messages.
//!
//! Input arrives as syscall [`Segment`]s whose payload may be cut short by
//! the capture size. Bodies are skipped by count, so a truncated body costs
//! nothing; a head cut short is parsed as far as it goes. When framing is
//! lost (a gap inside chunked data, or garbage), the stream resynchronises
//! on the next segment that starts a message: with HTTP/1.x that is where
//! clients and servers start their writes.
use std::collections::VecDeque;

use super::{
    detect,
    head::{self, Framing, Head, Kind},
};
pub use crate::protocols::SegTime;
use crate::protocols::{Detect, Segment};

/// Heads larger than this are treated as garbage.
const MAX_HEAD: usize = 64 * 1024;
/// Chunk-size and trailer lines longer than this are treated as garbage.
const MAX_LINE: usize = 1024;

/// Adds `b` to a chunk-size or trailer line; true at the line's end.
/// Lines over MAX_LINE set `bad`.
fn line_done(line: &mut Vec<u8>, b: u8, bad: &mut bool) -> bool {
    if b == b'\n' {
        return true;
    }
    line.push(b);
    *bad = line.len() > MAX_LINE;
    false
}

/// One framed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub head: Head,
    /// Bytes after the head (wire bytes, chunk framing included).
    pub body_bytes: u64,
    pub first: SegTime,
    pub last: SegTime,
    /// False when the end was inferred rather than framed (lost sync).
    pub complete: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line.
    Size(Vec<u8>),
    Data(u64),
    /// The CRLF after chunk data: bytes still expected.
    DataEnd(u8),
    /// Trailer lines after the last chunk, until an empty line.
    Trailer(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Expecting the first byte of a message.
    Start,
    Head,
    Body(u64),
    Chunked(Chunk),
    UntilClose,
    /// Framing lost: drop bytes until a segment starts a message.
    Resync,
    /// After `101 Switching Protocols`: no longer HTTP.
    Upgraded,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StreamError {
    /// The stream's first bytes are not HTTP: release the connection.
    #[error("not HTTP/1.x")]
    NotHttp,
}

/// Messages as a stream frames them, each in the box it was framed in,
/// which it keeps to its exchange: moved, never copied (clippy's `vec_box`
/// assumes a box in a vector only adds an indirection).
#[allow(clippy::vec_box)]
pub type Framed = Vec<Box<Message>>;

/// The message-framing state of one direction.
#[derive(Debug)]
pub struct MessageStream {
    kind: Kind,
    state: State,
    head_buf: Vec<u8>,
    /// The message being framed. Boxed: a connection between messages
    /// (most of them, most of the time) holds only the pointer.
    cur: Option<Box<Message>>,
    /// Responses only: for each request awaiting a response, in order,
    /// whether it was a HEAD (whose response has no body whatever its
    /// headers say).
    expected: VecDeque<bool>,
    /// Whether any message was framed yet: garbage before the first one
    /// means "not HTTP", after it a parse error.
    seen_message: bool,
    /// Segments or bytes rejected after the stream was known to be HTTP.
    pub parse_errors: u64,
}

impl MessageStream {
    pub fn new(kind: Kind) -> Self {
        MessageStream {
            kind,
            state: State::Start,
            head_buf: Vec::new(),
            cur: None,
            expected: VecDeque::new(),
            seen_message: false,
            parse_errors: 0,
        }
    }

    /// Responses: a request with `method` was sent; its response comes next.
    pub fn expect(&mut self, method: &str) {
        if self.expected.len() < 1024 {
            self.expected.push_back(method == "HEAD");
        }
    }

    /// Heap bytes held by a partial head.
    pub fn buffered(&self) -> usize {
        self.head_buf.capacity()
    }

    pub fn is_upgraded(&self) -> bool {
        self.state == State::Upgraded
    }

    /// Feeds one syscall's bytes; completed messages are appended to `out`.
    pub fn push(&mut self, seg: Segment<'_>, out: &mut Framed) -> Result<(), StreamError> {
        let t = seg.time();
        if self.state == State::Resync {
            // Only a segment that starts a message ends the resync.
            if detect(self.kind, seg.data) == Detect::No {
                return Ok(());
            }
            self.state = State::Start;
        }
        self.consume(seg.data, t, out)?;
        self.skip_gap(seg.gap(), t, out);
        Ok(())
    }

    /// The connection closed: a body delimited by the close ends here.
    pub fn close(&mut self, out: &mut Framed) {
        if self.state == State::UntilClose {
            self.finish(true, out);
        }
    }

    fn fail(&mut self) -> Result<(), StreamError> {
        if !self.seen_message {
            return Err(StreamError::NotHttp);
        }
        self.parse_errors += 1;
        self.cur = None;
        self.head_buf.clear();
        self.state = State::Resync;
        Ok(())
    }

    fn finish(&mut self, complete: bool, out: &mut Framed) {
        if let Some(mut m) = self.cur.take() {
            m.complete = complete;
            out.push(m);
        }
        if self.state != State::Upgraded {
            self.state = State::Start;
        }
    }

    fn consume(
        &mut self,
        mut data: &[u8],
        t: SegTime,
        out: &mut Framed,
    ) -> Result<(), StreamError> {
        while !data.is_empty() {
            match &mut self.state {
                State::Start => match detect(self.kind, data) {
                    Detect::No => {
                        self.fail()?;
                        return Ok(());
                    }
                    Detect::Yes | Detect::NeedMore => {
                        self.cur = Some(Box::new(Message {
                            head: Head::default(),
                            body_bytes: 0,
                            first: t,
                            last: t,
                            complete: false,
                        }));
                        self.state = State::Head;
                    }
                },
                State::Head => {
                    if let Some(m) = self.cur.as_mut() {
                        m.last = t;
                    }
                    if self.head_buf.is_empty() {
                        // Fast path: the whole head is in this segment.
                        match head::parse(self.kind, data) {
                            Ok(Some(h)) => {
                                data = &data[h.len..];
                                self.on_head(h, out);
                            }
                            Ok(None) => {
                                if data.len() > MAX_HEAD {
                                    self.fail()?;
                                    return Ok(());
                                }
                                self.head_buf.extend_from_slice(data);
                                data = &[];
                            }
                            Err(_) => {
                                self.fail()?;
                                return Ok(());
                            }
                        }
                    } else {
                        self.head_buf.extend_from_slice(data);
                        data = &[];
                        match head::parse(self.kind, &self.head_buf) {
                            Ok(Some(h)) => {
                                let rest = self.head_buf.split_off(h.len);
                                self.head_buf.clear();
                                self.on_head(h, out);
                                return self.consume(&rest, t, out);
                            }
                            Ok(None) if self.head_buf.len() <= MAX_HEAD => {}
                            _ => {
                                self.fail()?;
                                return Ok(());
                            }
                        }
                    }
                }
                State::Body(rem) => {
                    let n = (*rem).min(data.len() as u64);
                    *rem -= n;
                    let done = *rem == 0;
                    data = &data[n as usize..];
                    self.add_body(n, t);
                    if done {
                        self.finish(true, out);
                    }
                }
                State::Chunked(_) => {
                    let used = self.chunked(data, t, out)?;
                    data = &data[used..];
                }
                State::UntilClose => {
                    self.add_body(data.len() as u64, t);
                    data = &[];
                }
                State::Resync | State::Upgraded => return Ok(()),
            }
        }
        Ok(())
    }

    fn add_body(&mut self, n: u64, t: SegTime) {
        if let Some(m) = self.cur.as_mut() {
            m.body_bytes += n;
            m.last = t;
        }
    }

    fn on_head(&mut self, h: Head, out: &mut Framed) {
        self.seen_message = true;
        let framing = match self.kind {
            Kind::Request => h.request_framing(),
            Kind::Response => {
                let interim = (100..200).contains(&h.status) && h.status != 101;
                let head_request = if interim {
                    self.expected.front().copied()
                } else {
                    self.expected.pop_front()
                };
                h.response_framing(head_request == Some(true))
            }
        };
        let upgrade = self.kind == Kind::Response && h.status == 101;
        if let Some(m) = self.cur.as_mut() {
            m.head = h;
        }
        if upgrade {
            self.state = State::Upgraded;
            self.finish(true, out);
            return;
        }
        match framing {
            Framing::None => self.finish(true, out),
            Framing::Length(n) => self.state = State::Body(n),
            Framing::Chunked => self.state = State::Chunked(Chunk::Size(Vec::new())),
            Framing::UntilClose => self.state = State::UntilClose,
        }
    }

    /// Consumes chunked-body bytes; returns how many were used.
    fn chunked(&mut self, data: &[u8], t: SegTime, out: &mut Framed) -> Result<usize, StreamError> {
        let State::Chunked(chunk) = &mut self.state else {
            return Ok(0);
        };
        let mut i = 0;
        let mut done = false;
        let mut bad = false;
        while i < data.len() && !done && !bad {
            match chunk {
                Chunk::Size(line) => {
                    let b = data[i];
                    i += 1;
                    if !line_done(line, b, &mut bad) {
                        continue;
                    }
                    let text = String::from_utf8_lossy(line);
                    let hex = text
                        .trim_end_matches('\r')
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    match u64::from_str_radix(&hex, 16) {
                        Ok(0) => *chunk = Chunk::Trailer(Vec::new()),
                        Ok(n) => *chunk = Chunk::Data(n),
                        Err(_) => bad = true,
                    }
                }
                Chunk::Data(rem) => {
                    let n = (*rem).min((data.len() - i) as u64);
                    *rem -= n;
                    i += n as usize;
                    if *rem == 0 {
                        *chunk = Chunk::DataEnd(2);
                    }
                }
                Chunk::DataEnd(left) => {
                    i += 1;
                    *left -= 1;
                    if *left == 0 {
                        *chunk = Chunk::Size(Vec::new());
                    }
                }
                Chunk::Trailer(line) => {
                    let b = data[i];
                    i += 1;
                    if !line_done(line, b, &mut bad) {
                        continue;
                    }
                    if line.iter().all(|&c| c == b'\r') {
                        done = true;
                    } else {
                        line.clear();
                    }
                }
            }
        }
        self.add_body(i as u64, t);
        if bad {
            self.fail()?;
            return Ok(data.len());
        }
        if done {
            self.finish(true, out);
        }
        Ok(i)
    }

    /// Skips bytes that were moved but not captured.
    fn skip_gap(&mut self, gap: u64, t: SegTime, out: &mut Framed) {
        if gap == 0 {
            return;
        }
        match &mut self.state {
            State::Head => {
                // The capture cut the head: keep what is readable, assume
                // the rest of this syscall belongs to the same message.
                let parsed = head::parse_truncated(self.kind, &self.head_buf);
                self.head_buf.clear();
                match parsed {
                    Some(h) => {
                        self.seen_message = true;
                        if self.kind == Kind::Response && !(100..200).contains(&h.status) {
                            self.expected.pop_front();
                        }
                        if let Some(m) = self.cur.as_mut() {
                            m.head = h;
                            m.body_bytes += gap;
                            m.last = t;
                        }
                        self.finish(false, out);
                        self.state = State::Resync;
                    }
                    None => {
                        self.cur = None;
                        self.state = State::Resync;
                    }
                }
            }
            State::Body(rem) => {
                let n = (*rem).min(gap);
                *rem -= n;
                let done = *rem == 0;
                let overrun = gap > n;
                self.add_body(n, t);
                if done {
                    self.finish(true, out);
                }
                if overrun {
                    // Bytes of the next message went uncaptured.
                    self.state = State::Resync;
                }
            }
            State::Chunked(_) => {
                // Chunk boundaries inside the gap are unknowable.
                self.add_body(gap, t);
                self.finish(false, out);
                self.state = State::Resync;
            }
            State::UntilClose => self.add_body(gap, t),
            State::Start | State::Resync => self.state = State::Resync,
            State::Upgraded => {}
        }
    }
}
