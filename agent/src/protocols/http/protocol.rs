//! HTTP/1.x behind the [`Protocol`] interface.
use super::{detect as detect_kind, Exchange, HttpConnection, Kind};
use crate::{
    event::{Direction, Role},
    protocols::{
        Capture, Detect, GiveUp, ParserStats, Protocol, Record, SegTime, Segment, Side, Spec,
    },
};

pub const SPEC: Spec = Spec {
    name: "http",
    detect,
    new: || Box::<HttpProtocol>::default(),
    captures,
    whole_frames: false,
    answered: true,
};

/// A framed request, as correlation needs it before its response exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSeen {
    /// The syscall that carried its first byte.
    pub first: SegTime,
    /// The syscall that carried its last byte.
    pub last: SegTime,
    /// Its `traceparent` header, if any (an instrumented client).
    pub traceparent: Option<String>,
    /// HTTP/2: its stream; 0 for HTTP/1.x.
    pub stream: u32,
}

/// Servers see requests arrive; clients write them, or (a connection seen
/// from its first response, the agent started late) read responses.
fn detect(role: Role, dir: Direction, data: &[u8]) -> Detect {
    match (role, dir) {
        (Role::Server, Direction::Ingress) => detect_kind(Kind::Request, data),
        // A server's first write: the client's request was not seen.
        (Role::Server, Direction::Egress) => Detect::No,
        (_, Direction::Egress) => detect_kind(Kind::Request, data),
        // Only a whole status line: a client's first read is rarely HTTP.
        (_, Direction::Ingress) => match detect_kind(Kind::Response, data) {
            Detect::Yes => Detect::Yes,
            _ => Detect::No,
        },
    }
}

#[derive(Default)]
pub struct HttpProtocol {
    conn: HttpConnection,
    reported: ParserStats,
}

impl HttpProtocol {
    /// Runs `step` with the pipeline thread's vector for the exchanges it
    /// completes, then reports them.
    fn each_exchange<T>(
        &mut self,
        out: &mut Vec<Record>,
        step: impl FnOnce(&mut HttpConnection, &mut Vec<Exchange>) -> T,
    ) -> T {
        let mut exchanges = EXCHANGES.take();
        let res = step(&mut self.conn, &mut exchanges);
        // Requests framed by this segment come first: their context is fixed
        // before any exchange they complete is built.
        out.extend(self.conn.drain_new_requests().map(Record::HttpRequest));
        out.extend(exchanges.drain(..).map(|e| Record::Http(Box::new(e))));
        EXCHANGES.set(exchanges);
        res
    }
}

thread_local! {
    /// Exchanges a segment completes, on their way to records: one vector
    /// for every connection of the pipeline's thread (one grown per segment
    /// was an allocation per response).
    static EXCHANGES: std::cell::Cell<Vec<Exchange>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Protocol for HttpProtocol {
    fn feed(&mut self, side: Side, seg: Segment<'_>, out: &mut Vec<Record>) -> Result<(), GiveUp> {
        let kind = if side == Side::Request {
            Kind::Request
        } else {
            Kind::Response
        };
        let res = self.each_exchange(out, |conn, exchanges| conn.push(kind, seg, exchanges));
        match res {
            Err(_) => Err(GiveUp("not HTTP/1.x")),
            Ok(()) if self.conn.is_upgraded() => Err(GiveUp("switched protocols")),
            Ok(()) => Ok(()),
        }
    }

    fn close(&mut self, _at: SegTime, out: &mut Vec<Record>) {
        self.each_exchange(out, |conn, exchanges| conn.close(exchanges));
    }

    fn take_stats(&mut self) -> ParserStats {
        let now = ParserStats {
            parse_errors: self.conn.parse_errors(),
            unpaired: self.conn.counters.unmatched_responses
                + self.conn.counters.unanswered_requests,
        };
        ParserStats::since(now, &mut self.reported)
    }

    fn heap_bytes(&self) -> usize {
        self.conn.heap_bytes()
    }
}

/// Requests from curl, answered by nginx and Python's http.server.
fn captures() -> Vec<Capture> {
    let pair = |name, req: &'static [u8], resp: &'static [u8]| {
        [Role::Client, Role::Server].map(|role| Capture {
            name,
            role,
            turns: vec![(Side::Request, req), (Side::Response, resp)],
        })
    };
    let get = crate::capture!("http", "curl_get.req");
    [
        pair("nginx_get", get, crate::capture!("http", "nginx_get.resp")),
        pair("nginx_404", get, crate::capture!("http", "nginx_404.resp")),
        pair(
            "python_chunked",
            get,
            crate::capture!("http", "python_chunked.resp"),
        ),
        pair(
            "python_close",
            get,
            crate::capture!("http", "python_close.resp"),
        ),
        pair(
            "python_500",
            get,
            crate::capture!("http", "python_500.resp"),
        ),
        pair(
            "curl_post",
            crate::capture!("http", "curl_post.req"),
            crate::capture!("http", "python_204.resp"),
        ),
        pair(
            "expect_continue",
            crate::capture!("http", "curl_expect_continue.req"),
            crate::capture!("http", "python_continue.resp"),
        ),
        pair(
            "chunked_upload",
            crate::capture!("http", "curl_chunked_upload.req"),
            crate::capture!("http", "nginx_get.resp"),
        ),
        pair(
            "pipelined",
            two_gets(get),
            crate::capture!("http", "nginx_pipelined.resp"),
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Two pipelined GETs, for the pipelined responses.
fn two_gets(get: &'static [u8]) -> &'static [u8] {
    static TWO: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    TWO.get_or_init(|| [get, get].concat())
}
