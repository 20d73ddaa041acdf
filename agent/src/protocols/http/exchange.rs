//! Pairing of requests and responses on one connection (stage 5 for HTTP).
//! HTTP/1.x answers in order, so pipelined requests queue up and each
//! final response takes the oldest; interim 1xx responses take none.
use std::collections::VecDeque;

use super::{
    head::Kind,
    protocol::RequestSeen,
    stream::{Framed, Message, MessageStream, StreamError},
};
use crate::protocols::Segment;

/// Requests waiting for their response beyond this are dropped (counted):
/// a peer that never answers must not grow memory.
const MAX_PENDING: usize = 256;

thread_local! {
    /// The messages one segment frames, handed from the stream to the
    /// pairing: one vector for every connection of the pipeline's thread,
    /// so that a connection keeps no room for them while idle.
    static FRAMED: std::cell::Cell<Framed> = const { std::cell::Cell::new(Vec::new()) };
}

/// One request with its final response. Both stay in the box the stream
/// framed them in: a pending request costs a pointer while it waits, and a
/// message is never copied on its way to a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub request: Box<Message>,
    pub response: Box<Message>,
    /// HTTP/2: the stream, and gRPC. None for HTTP/1.x.
    pub h2: Option<crate::protocols::http2::H2Info>,
}

impl Exchange {
    /// `network.protocol.version`: `1.0`, `1.1` or `2`.
    pub fn version(&self) -> &'static str {
        match (&self.h2, self.request.head.minor) {
            (Some(_), _) => "2",
            // httparse reads HTTP/1.0 and HTTP/1.1 only.
            (None, 0) => "1.0",
            (None, _) => "1.1",
        }
    }

    /// The HTTP/2 stream (0 for HTTP/1.x, whose exchanges are in order).
    pub fn stream(&self) -> u32 {
        self.h2.as_ref().map_or(0, |h| h.stream)
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeCounters {
    /// Responses with no request to pair (the request predates capture).
    pub unmatched_responses: u64,
    /// Requests dropped unanswered (queue overflow or connection closed).
    pub unanswered_requests: u64,
}

#[derive(Debug)]
pub struct HttpConnection {
    requests: MessageStream,
    responses: MessageStream,
    pending: VecDeque<Box<Message>>,
    /// Requests framed since the last `drain_new_requests`: only what
    /// correlation needs before the response, not a copy of each head.
    fresh: Vec<RequestSeen>,
    pub counters: ExchangeCounters,
}

impl Default for HttpConnection {
    fn default() -> Self {
        HttpConnection {
            requests: MessageStream::new(Kind::Request),
            responses: MessageStream::new(Kind::Response),
            pending: VecDeque::new(),
            fresh: Vec::new(),
            counters: ExchangeCounters::default(),
        }
    }
}

impl HttpConnection {
    /// Feeds a segment of the request side (egress of a client, ingress of
    /// a server) or the response side.
    pub fn push(
        &mut self,
        side: Kind,
        seg: Segment<'_>,
        out: &mut Vec<Exchange>,
    ) -> Result<(), StreamError> {
        let mut msgs = FRAMED.take();
        let pushed = match side {
            Kind::Request => self.requests.push(seg, &mut msgs),
            Kind::Response => self.responses.push(seg, &mut msgs),
        };
        if pushed.is_err() {
            // Not HTTP after all: what this segment framed is not reported.
            msgs.clear();
            FRAMED.set(msgs);
            return pushed;
        }
        match side {
            Kind::Request => {
                for m in msgs.drain(..) {
                    self.responses.expect(&m.head.method);
                    if self.fresh.len() < MAX_PENDING {
                        if self.fresh.capacity() == 0 {
                            self.fresh.reserve_exact(1);
                        }
                        self.fresh.push(RequestSeen {
                            first: m.first,
                            last: m.last,
                            traceparent: m.head.traceparent.clone(),
                            stream: 0,
                        });
                    }
                    if self.pending.capacity() == 0 {
                        // Room for one: most connections have one request
                        // in flight at a time, and an idle one keeps this.
                        self.pending.reserve_exact(1);
                    }
                    if self.pending.len() >= MAX_PENDING {
                        self.pending.pop_front();
                        self.counters.unanswered_requests += 1;
                    }
                    self.pending.push_back(m);
                }
            }
            Kind::Response => self.pair(&mut msgs, out),
        }
        FRAMED.set(msgs);
        pushed
    }

    fn pair(&mut self, msgs: &mut Framed, out: &mut Vec<Exchange>) {
        for m in msgs.drain(..) {
            if (100..200).contains(&m.head.status) && m.head.status != 101 {
                continue; // interim: 100 Continue, 103 Early Hints
            }
            match self.pending.pop_front() {
                Some(request) => out.push(Exchange {
                    request,
                    response: m,
                    h2: None,
                }),
                None => self.counters.unmatched_responses += 1,
            }
        }
    }

    /// The connection closed: finish a response delimited by the close.
    pub fn close(&mut self, out: &mut Vec<Exchange>) {
        let mut msgs = Vec::new();
        self.responses.close(&mut msgs);
        self.pair(&mut msgs, out);
        self.counters.unanswered_requests += self.pending.len() as u64;
        self.pending.clear();
    }

    /// Requests framed since the last call, in order: a server learns here
    /// that a request is in flight, before its response exists.
    pub fn drain_new_requests(&mut self) -> std::vec::Drain<'_, RequestSeen> {
        // Drained, not taken: the room stays for the next request (an
        // allocation per request otherwise). Like `pending`'s, it is
        // usually room for one.
        self.fresh.drain(..)
    }

    /// After a 101 the connection speaks another protocol.
    pub fn is_upgraded(&self) -> bool {
        self.responses.is_upgraded()
    }

    /// Heap bytes held: buffered heads and requests awaiting responses.
    pub fn heap_bytes(&self) -> usize {
        let msgs = self.pending.len() + self.fresh.len();
        self.requests.buffered() + self.responses.buffered() + msgs * std::mem::size_of::<Message>()
    }

    pub fn parse_errors(&self) -> u64 {
        self.requests.parse_errors + self.responses.parse_errors
    }
}
