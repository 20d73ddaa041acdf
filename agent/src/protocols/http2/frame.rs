//! HTTP/2 framing (RFC 9113 §4): one direction's byte stream to frames.
//! Frames whose payload the parser needs (header blocks, settings, resets)
//! are reassembled whole; DATA payloads stream through as they come and are
//! never buffered, and uncaptured bytes inside them are skipped by count.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub mod kind {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PUSH_PROMISE: u8 = 5;
    pub const GOAWAY: u8 = 7;
    pub const CONTINUATION: u8 = 9;
}

pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// A payload bigger than this is not HTTP/2 as sonde follows it: the
/// largest frame a peer may allow is 16 MiB, but no header block is near
/// this, and DATA is never buffered.
const MAX_KEPT: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    pub fn parse(b: &[u8; 9]) -> FrameHeader {
        FrameHeader {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    /// Frames whose payload is buffered whole: everything but DATA and
    /// the flow-control and liveness frames sonde has no use for.
    fn kept(&self) -> bool {
        matches!(
            self.kind,
            kind::HEADERS
                | kind::CONTINUATION
                | kind::PUSH_PROMISE
                | kind::SETTINGS
                | kind::RST_STREAM
                | kind::GOAWAY
        )
    }
}

/// What the reader found, in stream order.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole kept frame.
    Frame(FrameHeader, &'a [u8]),
    /// Bytes of a DATA frame's payload (padding included), as they come.
    Data(FrameHeader, &'a [u8]),
    /// Uncaptured bytes of a DATA frame's payload.
    DataLost(FrameHeader, u64),
    /// The DATA frame ended.
    DataEnd(FrameHeader),
}

/// Why a direction cannot be followed any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Desync {
    #[error("bytes missing where a frame header or a kept frame was")]
    Lost,
    #[error("a frame larger than sonde follows")]
    TooLarge,
    #[error("no connection preface")]
    NoPreface,
}

#[derive(Debug)]
enum State {
    /// Bytes of the client preface matched so far.
    Preface(usize),
    Header([u8; 9], usize),
    Kept(FrameHeader, Vec<u8>),
    Data(FrameHeader, u64),
    /// A frame nobody reads (PING, WINDOW_UPDATE, PRIORITY, unknown kinds).
    Skip(u64),
}

#[derive(Debug)]
pub struct FrameReader {
    state: State,
}

impl FrameReader {
    /// A client's direction starts with the preface; a server's with frames.
    pub fn new(preface: bool) -> FrameReader {
        FrameReader {
            state: if preface {
                State::Preface(0)
            } else {
                State::Header([0; 9], 0)
            },
        }
    }

    /// Heap bytes held (a kept frame being reassembled).
    pub fn heap_bytes(&self) -> usize {
        match &self.state {
            State::Kept(_, b) => b.capacity(),
            _ => 0,
        }
    }

    /// Feeds captured bytes `data` followed by `gap` uncaptured ones.
    pub fn push(
        &mut self,
        mut data: &[u8],
        gap: u64,
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), Desync> {
        while !data.is_empty() {
            data = self.step(data, on)?;
        }
        if gap == 0 {
            return Ok(());
        }
        match &mut self.state {
            // The rest of a DATA payload may go uncaptured; past its end,
            // the next frame's header is lost.
            State::Data(h, left) if gap <= *left => {
                let h = *h;
                *left -= gap;
                on(Event::DataLost(h, gap));
                if *left == 0 {
                    self.state = State::Header([0; 9], 0);
                    on(Event::DataEnd(h));
                }
                Ok(())
            }
            State::Skip(left) if gap <= *left => {
                *left -= gap;
                if *left == 0 {
                    self.state = State::Header([0; 9], 0);
                }
                Ok(())
            }
            _ => Err(Desync::Lost),
        }
    }

    fn step<'a>(
        &mut self,
        data: &'a [u8],
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<&'a [u8], Desync> {
        match &mut self.state {
            State::Preface(n) => {
                let take = (PREFACE.len() - *n).min(data.len());
                if data[..take] != PREFACE[*n..*n + take] {
                    return Err(Desync::NoPreface);
                }
                *n += take;
                if *n == PREFACE.len() {
                    self.state = State::Header([0; 9], 0);
                }
                Ok(&data[take..])
            }
            State::Header(buf, n) => {
                let take = (9 - *n).min(data.len());
                buf[*n..*n + take].copy_from_slice(&data[..take]);
                *n += take;
                if *n == 9 {
                    let h = FrameHeader::parse(buf);
                    self.start(h, on)?;
                }
                Ok(&data[take..])
            }
            State::Kept(h, buf) => {
                let take = (h.len as usize - buf.len()).min(data.len());
                buf.extend_from_slice(&data[..take]);
                if buf.len() == h.len as usize {
                    let h = *h;
                    let payload = std::mem::take(buf);
                    self.state = State::Header([0; 9], 0);
                    on(Event::Frame(h, &payload));
                }
                Ok(&data[take..])
            }
            State::Data(h, left) => {
                let take = (*left).min(data.len() as u64) as usize;
                *left -= take as u64;
                let (h, done) = (*h, *left == 0);
                on(Event::Data(h, &data[..take]));
                if done {
                    self.state = State::Header([0; 9], 0);
                    on(Event::DataEnd(h));
                }
                Ok(&data[take..])
            }
            State::Skip(left) => {
                let take = (*left).min(data.len() as u64) as usize;
                *left -= take as u64;
                if *left == 0 {
                    self.state = State::Header([0; 9], 0);
                }
                Ok(&data[take..])
            }
        }
    }

    fn start(&mut self, h: FrameHeader, on: &mut dyn FnMut(Event<'_>)) -> Result<(), Desync> {
        self.state = if h.kind == kind::DATA {
            if h.len == 0 {
                on(Event::DataEnd(h));
                State::Header([0; 9], 0)
            } else {
                State::Data(h, h.len as u64)
            }
        } else if h.kept() {
            if h.len as usize > MAX_KEPT {
                return Err(Desync::TooLarge);
            }
            if h.len == 0 {
                on(Event::Frame(h, &[]));
                State::Header([0; 9], 0)
            } else {
                // Grown as bytes come: a header alone must not reserve its
                // claimed length.
                State::Kept(h, Vec::new())
            }
        } else if h.len == 0 {
            State::Header([0; 9], 0)
        } else {
            State::Skip(h.len as u64)
        };
        Ok(())
    }
}

/// A payload without its padding (and, for HEADERS, its priority fields):
/// None when the lengths do not add up.
pub fn unpadded<'a>(h: &FrameHeader, payload: &'a [u8]) -> Option<&'a [u8]> {
    let mut p = payload;
    let mut pad = 0usize;
    if h.flags & flag::PADDED != 0 {
        pad = *p.first()? as usize;
        p = &p[1..];
    }
    if h.kind == kind::HEADERS && h.flags & flag::PRIORITY != 0 {
        p = p.get(5..)?;
    }
    if h.kind == kind::PUSH_PROMISE {
        p = p.get(4..)?;
    }
    p.get(..p.len().checked_sub(pad)?)
}
