//! HTTP/2 behind the [`Protocol`] interface: the same records as HTTP/1.x
//! (`HttpRequest` when a stream's request headers are read, `Http` when its
//! response ends), each carrying its stream.
use super::{frame::PREFACE, H2Connection};
use crate::{
    event::{Direction, Role},
    protocols::{
        client_first_write, Capture, Detect, GiveUp, ParserStats, Protocol, Record, SegTime,
        Segment, Side, Spec,
    },
};

pub const SPEC: Spec = Spec {
    name: "http2",
    detect,
    new: || Box::<Http2Protocol>::default(),
    captures,
    // HPACK needs every header block.
    whole_frames: true,
    answered: true,
};

/// The client's preface, read by a server or written by a client; or the
/// server's own preface, a SETTINGS frame, which a server may write before
/// it reads the client's (gRPC's C core and grpc-go do). A client can read
/// that frame before it writes its own preface: grpc-go starts its reader
/// goroutine first, and on a busy machine the writer runs late.
fn detect(role: Role, dir: Direction, data: &[u8]) -> Detect {
    let response_side = (role == Role::Server && dir == Direction::Egress)
        || (role == Role::Client && dir == Direction::Ingress);
    if response_side {
        return server_preface(data);
    }
    let request_side =
        client_first_write(role, dir) || (role == Role::Server && dir == Direction::Ingress);
    if !request_side {
        return Detect::No;
    }
    let n = data.len().min(PREFACE.len());
    match (data[..n] == PREFACE[..n], n == PREFACE.len()) {
        (false, _) => Detect::No,
        (true, true) => Detect::Yes,
        (true, false) => Detect::NeedMore,
    }
}

/// A SETTINGS frame (type 4, no flags, stream 0) whose length is a whole
/// number of settings.
fn server_preface(data: &[u8]) -> Detect {
    const SETTINGS: [u8; 6] = [4, 0, 0, 0, 0, 0];
    // A server writes its SETTINGS frame whole: anything shorter is not one.
    let Some(h) = data.get(..9) else {
        return Detect::No;
    };
    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
    if h[3..] == SETTINGS && len.is_multiple_of(6) && len <= 6 * 16 {
        Detect::Yes
    } else {
        Detect::No
    }
}

#[derive(Default)]
pub struct Http2Protocol {
    conn: H2Connection,
    reported: ParserStats,
}

impl Http2Protocol {
    fn emit(&mut self, out: &mut Vec<Record>) {
        // Requests first: their context is fixed before any exchange they
        // complete is built.
        out.extend(
            self.conn
                .take_new_requests()
                .into_iter()
                .map(Record::HttpRequest),
        );
        out.extend(
            self.conn
                .take_done()
                .into_iter()
                .map(|e| Record::Http(Box::new(e))),
        );
    }
}

impl Protocol for Http2Protocol {
    fn feed(&mut self, side: Side, seg: Segment<'_>, out: &mut Vec<Record>) -> Result<(), GiveUp> {
        let res = self.conn.push(side, seg);
        self.emit(out);
        res.map_err(GiveUp)
    }

    fn close(&mut self, _at: SegTime, out: &mut Vec<Record>) {
        self.conn.close();
        self.emit(out);
    }

    fn take_stats(&mut self) -> ParserStats {
        let c = self.conn.counters();
        let now = ParserStats {
            parse_errors: self.conn.parse_errors(),
            unpaired: c.unmatched_responses + c.unanswered_requests,
        };
        ParserStats::since(now, &mut self.reported)
    }

    fn heap_bytes(&self) -> usize {
        self.conn.heap_bytes()
    }
}

/// grpcio's client and server (8 calls in flight on one channel: unary,
/// server streaming, NOT_FOUND), nghttp's 5 concurrent streams and a curl
/// request against nginx; recorded by `captures/record.py`.
pub fn captures() -> Vec<Capture> {
    let both = |name, c2s, s2c, order| {
        [Role::Client, Role::Server].map(|role| Capture {
            name,
            role,
            turns: crate::protocols::interleave(c2s, s2c, order),
        })
    };
    [
        both(
            "grpc",
            crate::capture!("http2", "grpc.c2s"),
            crate::capture!("http2", "grpc.s2c"),
            include_str!("captures/grpc.order"),
        ),
        both(
            "h2c_nghttp",
            crate::capture!("http2", "h2c.c2s"),
            crate::capture!("http2", "h2c.s2c"),
            include_str!("captures/h2c.order"),
        ),
        both(
            "h2c_curl",
            crate::capture!("http2", "h2c_curl.c2s"),
            crate::capture!("http2", "h2c_curl.s2c"),
            include_str!("captures/h2c_curl.order"),
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}
