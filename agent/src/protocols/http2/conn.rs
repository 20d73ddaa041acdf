//! One HTTP/2 connection: frames of both directions to streams, header
//! blocks through HPACK, and each stream to one request/response exchange.
//! Streams interleave freely; each is paired on its own id, never by order.
use std::{borrow::Cow, collections::BTreeMap};

use loona_hpack::Decoder;

use super::{
    frame::{flag, kind, unpadded, Desync, Event, FrameHeader, FrameReader},
    grpc::{self, GrpcCall, MessageCounter},
};
use crate::protocols::{
    http::{Exchange, Head, Message, RequestSeen},
    SegTime, Segment, Side,
};

/// Streams open at once beyond this: the oldest is dropped (counted).
/// Peers default to 100 concurrent streams; this leaves room.
const MAX_STREAMS: usize = 1024;
/// The dynamic table a decoder may be told to grow to. SETTINGS may ask
/// for more (peers default to 4 KiB, and rarely ask past 64); a peer whose
/// encoder then uses more is desynchronised, counted: a bound on what one
/// connection's tables hold.
const DEFAULT_TABLE: usize = 4096;
/// A header block (HEADERS and its CONTINUATIONs) larger than this is
/// given up on: peers cap header lists far lower, and an endless run of
/// CONTINUATION frames must not grow memory.
const MAX_BLOCK: usize = 256 * 1024;
const MAX_TABLE: usize = 64 * 1024;

/// HTTP/2 facts of an exchange.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct H2Info {
    pub stream: u32,
    /// The stream was reset (RST_STREAM) with this error code.
    pub reset: Option<u32>,
    pub grpc: Option<GrpcCall>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Responses on streams whose request was never seen.
    pub unmatched_responses: u64,
    /// Streams dropped unanswered (too many open, or the connection closed).
    pub unanswered_requests: u64,
}

struct Block {
    stream: u32,
    kind: u8,
    end_stream: bool,
    buf: Vec<u8>,
}

struct Half {
    reader: FrameReader,
    decoder: Decoder<'static>,
    /// A header block waiting for its CONTINUATION frames.
    block: Option<Block>,
    /// The table size this direction's encoder may use (the other side's
    /// SETTINGS_HEADER_TABLE_SIZE, bounded).
    allowed: usize,
}

impl Half {
    fn new(preface: bool) -> Half {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(DEFAULT_TABLE);
        Half {
            reader: FrameReader::new(preface),
            decoder,
            block: None,
            allowed: DEFAULT_TABLE,
        }
    }
}

#[derive(Default)]
struct Stream {
    request: Option<Message>,
    response: Option<Message>,
    request_ended: bool,
    grpc: Option<GrpcCall>,
    counters: [MessageCounter; 2],
}

/// What a decoded header block says, for the fields sonde uses.
#[derive(Default)]
struct Fields {
    head: Head,
    content_type: Option<String>,
    grpc_status: Option<u32>,
    grpc_message: Option<String>,
}

impl Fields {
    fn apply(&mut self, name: &[u8], value: &[u8]) {
        let text = || String::from_utf8_lossy(value).trim().to_string();
        match name {
            b":method" => self.head.method = text(),
            b":path" => self.head.target = text(),
            b":authority" => self.head.host = Some(text()),
            b"host" if self.head.host.is_none() => self.head.host = Some(text()),
            b":status" => self.head.status = text().parse().unwrap_or(0),
            b"user-agent" => self.head.user_agent = Some(text()),
            b"traceparent" => self.head.traceparent = Some(text()),
            b"tracestate" => self.head.tracestate = Some(text()),
            b"content-length" => self.head.content_length = text().parse().ok(),
            b"content-type" => self.content_type = Some(text()),
            b"grpc-status" => self.grpc_status = text().parse().ok(),
            b"grpc-message" => self.grpc_message = Some(text()),
            _ => {}
        }
    }
}

pub struct H2Connection {
    halves: [Half; 2],
    state: State,
}

struct State {
    streams: BTreeMap<u32, Stream>,
    fresh: Vec<RequestSeen>,
    done: Vec<Exchange>,
    failed: Option<&'static str>,
    /// SETTINGS_HEADER_TABLE_SIZE each side asked for, to apply to the
    /// other side's decoder.
    table_size: [Option<usize>; 2],
    /// Per direction, what its header blocks decoded to (names, values and
    /// the 32-byte entry overhead): a bound on what its table can hold,
    /// which is far below the allowed size on most connections.
    decoded: [usize; 2],
    pub counters: Counters,
    pub parse_errors: u64,
}

fn index(side: Side) -> usize {
    match side {
        Side::Request => 0,
        Side::Response => 1,
    }
}

impl Default for H2Connection {
    fn default() -> Self {
        H2Connection {
            halves: [Half::new(true), Half::new(false)],
            state: State {
                streams: BTreeMap::new(),
                fresh: vec![],
                done: vec![],
                failed: None,
                table_size: [None, None],
                decoded: [0, 0],
                counters: Counters::default(),
                parse_errors: 0,
            },
        }
    }
}

impl H2Connection {
    /// Feeds one segment of a side. `Err`: the connection cannot be
    /// followed any more (what was finished before stands).
    pub fn push(&mut self, side: Side, seg: Segment<'_>) -> Result<(), &'static str> {
        if let Some(why) = self.state.failed {
            return Err(why);
        }
        let i = index(side);
        let t = seg.time();
        let H2Connection { halves, state } = self;
        let res = {
            let [req, resp] = halves;
            let (half, other) = if i == 0 { (req, resp) } else { (resp, req) };
            let Half {
                reader,
                decoder,
                block,
                ..
            } = half;
            reader
                .push(seg.data, seg.gap(), &mut |ev| {
                    if state.failed.is_none() {
                        state.event(side, ev, t, decoder, block);
                    }
                })
                .map(|()| {
                    // SETTINGS from this side bound the other side's encoder.
                    if let Some(size) = state.table_size[i].take() {
                        other.allowed = size.clamp(DEFAULT_TABLE, MAX_TABLE);
                        other.decoder.set_max_allowed_table_size(other.allowed);
                    }
                })
        };
        match res {
            Err(Desync::NoPreface) => Err("not HTTP/2"),
            Err(_) => {
                self.state.parse_errors += 1;
                self.state.failed = Some("HTTP/2 framing lost");
                Err("HTTP/2 framing lost")
            }
            Ok(()) => match self.state.failed {
                Some(why) => Err(why),
                None => Ok(()),
            },
        }
    }

    /// Requests whose headers were read since the last call, in wire order.
    pub fn take_new_requests(&mut self) -> Vec<RequestSeen> {
        std::mem::take(&mut self.state.fresh)
    }

    /// Exchanges finished since the last call.
    pub fn take_done(&mut self) -> Vec<Exchange> {
        std::mem::take(&mut self.state.done)
    }

    /// The connection closed: streams still open are dropped unanswered.
    pub fn close(&mut self) {
        let open = std::mem::take(&mut self.state.streams);
        self.state.counters.unanswered_requests +=
            open.values().filter(|s| s.request.is_some()).count() as u64;
    }

    pub fn counters(&self) -> Counters {
        self.state.counters
    }

    pub fn parse_errors(&self) -> u64 {
        self.state.parse_errors
    }

    pub fn heap_bytes(&self) -> usize {
        let halves: usize = self
            .halves
            .iter()
            .zip(self.state.decoded)
            .map(|(h, decoded)| {
                h.reader.heap_bytes()
                    + h.allowed.min(decoded)
                    + h.block.as_ref().map_or(0, |b| b.buf.capacity())
            })
            .sum();
        halves + self.state.streams.len() * std::mem::size_of::<Stream>()
    }
}

impl State {
    fn event(
        &mut self,
        side: Side,
        ev: Event<'_>,
        t: SegTime,
        decoder: &mut Decoder<'static>,
        block: &mut Option<Block>,
    ) {
        // A header block is one HEADERS (or PUSH_PROMISE) frame and its
        // CONTINUATIONs, with nothing else in between (RFC 9113 §6.10).
        let pending = block.is_some();
        match ev {
            Event::Frame(h, payload) if h.kind == kind::CONTINUATION => {
                let Some(b) = block.as_mut().filter(|b| b.stream == h.stream) else {
                    return self.fail("HTTP/2 CONTINUATION out of place");
                };
                if b.buf.len() + payload.len() > MAX_BLOCK {
                    return self.fail("HTTP/2 header block too large");
                }
                b.buf.extend_from_slice(payload);
                if h.flags & flag::END_HEADERS != 0 {
                    let b = block.take().expect("checked above");
                    self.header_block(side, b, t, decoder);
                }
            }
            _ if pending => self.fail("HTTP/2 header block interrupted"),
            Event::Frame(h, payload) => self.frame(side, h, payload, t, decoder, block),
            Event::Data(h, bytes) => {
                if let Some(s) = self.streams.get_mut(&h.stream) {
                    let c = &mut s.counters[index(side)];
                    if h.flags & flag::PADDED != 0 {
                        c.give_up();
                    } else {
                        c.bytes(bytes);
                    }
                }
            }
            Event::DataLost(h, n) => {
                if let Some(s) = self.streams.get_mut(&h.stream) {
                    s.counters[index(side)].lost(n);
                }
            }
            Event::DataEnd(h) => {
                let Some(s) = self.streams.get_mut(&h.stream) else {
                    return;
                };
                let m = match side {
                    Side::Request => s.request.as_mut(),
                    Side::Response => s.response.as_mut(),
                };
                if let Some(m) = m {
                    m.body_bytes += h.len as u64;
                    m.last = t;
                }
                if h.flags & flag::END_STREAM != 0 {
                    self.end_stream(side, h.stream, t);
                }
            }
        }
    }

    fn fail(&mut self, why: &'static str) {
        self.parse_errors += 1;
        self.failed = Some(why);
    }

    fn frame(
        &mut self,
        side: Side,
        h: FrameHeader,
        payload: &[u8],
        t: SegTime,
        decoder: &mut Decoder<'static>,
        block: &mut Option<Block>,
    ) {
        match h.kind {
            kind::HEADERS | kind::PUSH_PROMISE => {
                let Some(fragment) = unpadded(&h, payload) else {
                    return self.fail("HTTP/2 padding longer than its frame");
                };
                let b = Block {
                    stream: h.stream,
                    kind: h.kind,
                    end_stream: h.kind == kind::HEADERS && h.flags & flag::END_STREAM != 0,
                    buf: fragment.to_vec(),
                };
                if h.flags & flag::END_HEADERS != 0 {
                    self.header_block(side, b, t, decoder);
                } else {
                    *block = Some(b);
                }
            }
            kind::SETTINGS if h.flags & flag::ACK == 0 && h.stream == 0 => {
                for s in payload.chunks_exact(6) {
                    if u16::from_be_bytes([s[0], s[1]]) == 1 {
                        let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
                        self.table_size[index(side)] = Some(v as usize);
                    }
                }
            }
            kind::RST_STREAM if payload.len() == 4 => {
                let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                if let Some(s) = self.streams.remove(&h.stream) {
                    self.finish(h.stream, s, Some(code), t);
                }
            }
            _ => {}
        }
    }

    fn header_block(&mut self, side: Side, b: Block, t: SegTime, decoder: &mut Decoder<'static>) {
        let mut f = Fields::default();
        f.head.len = b.buf.len();
        let mut decoded = 0usize;
        let res = decoder.decode_with_cb(&b.buf, |n: Cow<[u8]>, v: Cow<[u8]>| {
            decoded = decoded.saturating_add(n.len() + v.len() + 32);
            f.apply(&n, &v)
        });
        let d = &mut self.decoded[index(side)];
        *d = d.saturating_add(decoded);
        if res.is_err() {
            // The dynamic table is now unknown: every later block of this
            // direction could decode into wrong fields.
            return self.fail("HPACK desync");
        }
        if b.kind == kind::PUSH_PROMISE || b.stream == 0 {
            return; // decoded only to keep the table in step
        }
        match side {
            Side::Request => self.request_headers(b.stream, f, b.end_stream, t),
            Side::Response => self.response_headers(b.stream, f, b.end_stream, t),
        }
    }

    fn request_headers(&mut self, id: u32, f: Fields, end_stream: bool, t: SegTime) {
        if let Some(s) = self.streams.get_mut(&id) {
            // Trailers of a request (client streaming).
            if let Some(m) = s.request.as_mut() {
                m.last = t;
            }
            if end_stream {
                s.request_ended = true;
            }
            return;
        }
        if self.streams.len() >= MAX_STREAMS {
            self.streams.pop_first();
            self.counters.unanswered_requests += 1;
        }
        let grpc = f
            .content_type
            .as_deref()
            .filter(|ct| grpc::is_grpc(ct))
            .and_then(|_| grpc::split_path(&f.head.target))
            .map(|(service, method)| GrpcCall {
                service,
                method,
                ..Default::default()
            });
        self.fresh.push(RequestSeen {
            first: t,
            last: t,
            traceparent: f.head.traceparent.clone(),
            stream: id,
        });
        self.streams.insert(
            id,
            Stream {
                request: Some(Message {
                    head: f.head,
                    body_bytes: 0,
                    first: t,
                    last: t,
                    complete: true,
                }),
                request_ended: end_stream,
                grpc,
                ..Default::default()
            },
        );
    }

    fn response_headers(&mut self, id: u32, f: Fields, end_stream: bool, t: SegTime) {
        let Some(s) = self.streams.get_mut(&id) else {
            self.counters.unmatched_responses += 1;
            return;
        };
        if let Some(g) = s.grpc.as_mut() {
            if f.grpc_status.is_some() {
                g.status = f.grpc_status;
                g.message = f.grpc_message.clone();
            }
        }
        match s.response.as_mut() {
            // Trailers.
            Some(m) => m.last = t,
            // 1xx heads are interim; the final one follows.
            None if (100..200).contains(&f.head.status) => {}
            None => {
                s.response = Some(Message {
                    head: f.head,
                    body_bytes: 0,
                    first: t,
                    last: t,
                    complete: true,
                })
            }
        }
        if end_stream {
            self.end_stream(Side::Response, id, t);
        }
    }

    fn end_stream(&mut self, side: Side, id: u32, t: SegTime) {
        match side {
            Side::Request => {
                if let Some(s) = self.streams.get_mut(&id) {
                    s.request_ended = true;
                }
            }
            // The server's END_STREAM ends the exchange (a server may
            // answer before the request's end).
            Side::Response => {
                if let Some(s) = self.streams.remove(&id) {
                    self.finish(id, s, None, t);
                }
            }
        }
    }

    fn finish(&mut self, id: u32, s: Stream, reset: Option<u32>, t: SegTime) {
        let Some(request) = s.request else {
            self.counters.unmatched_responses += 1;
            return;
        };
        let response = s.response.unwrap_or(Message {
            head: Head::default(),
            body_bytes: 0,
            first: t,
            last: t,
            complete: false,
        });
        let grpc = s.grpc.map(|mut g| {
            g.sent = s.counters[0].count();
            g.received = s.counters[1].count();
            g
        });
        self.done.push(Exchange {
            request: Box::new(request),
            response: Box::new(response),
            h2: Some(H2Info {
                stream: id,
                reset,
                grpc,
            }),
        });
    }
}
