//! HTTP/1.x: message framing per direction ([`stream`]), request/response
//! pairing per connection ([`exchange`]), and low-cardinality routes ([`route`]).
pub mod exchange;
pub mod head;
pub mod protocol;
pub mod route;
pub mod stream;

pub use exchange::{Exchange, HttpConnection};
pub use head::{Head, Kind};
pub use protocol::{HttpProtocol, RequestSeen, SPEC};
pub use stream::{Message, MessageStream};

use super::Detect;

const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// Whether `data` starts an HTTP/1.x message of `kind`.
pub fn detect(kind: Kind, data: &[u8]) -> Detect {
    let prefixes: &[&[u8]] = match kind {
        Kind::Request => &METHODS,
        Kind::Response => &[b"HTTP/1."],
    };
    let mut need_more = false;
    for p in prefixes {
        let n = p.len().min(data.len());
        if data[..n] == p[..n] {
            if n == p.len() {
                return Detect::Yes;
            }
            need_more = true;
        }
    }
    if need_more {
        Detect::NeedMore
    } else {
        Detect::No
    }
}

#[cfg(test)]
mod tests;
