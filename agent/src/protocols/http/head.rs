//! The start line and the headers sonde uses, parsed with httparse.

/// Which side of an exchange a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Response,
}

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses without a length).
    UntilClose,
}

/// A parsed message head.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub target: String,
    pub status: u16,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub connection_close: bool,
    pub expect_continue: bool,
    pub upgrade: bool,
    /// Bytes of the head including the blank line.
    pub len: usize,
    /// The head was cut by the capture size: headers after the cut are unknown.
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("not an HTTP/1.x message: {0}")]
    Invalid(String),
}

const MAX_HEADERS: usize = 96;

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v.trim_ascii()).into_owned()
}

/// Whether a comma-separated header value lists `token` (any case). No
/// copy: `Connection` and `Transfer-Encoding` come with most messages.
fn lists(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn apply_header(h: &mut Head, name: &str, value: &[u8]) {
    let eq = |n: &str| name.eq_ignore_ascii_case(n);
    if eq("host") {
        h.host = Some(text(value));
    } else if eq("user-agent") {
        h.user_agent = Some(text(value));
    } else if eq("traceparent") {
        h.traceparent = Some(text(value));
    } else if eq("tracestate") {
        h.tracestate = Some(text(value));
    } else if eq("content-length") {
        h.content_length = std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.trim().parse().ok());
    } else if eq("transfer-encoding") {
        h.chunked = lists(value, "chunked");
    } else if eq("connection") {
        h.connection_close = lists(value, "close");
        h.upgrade |= lists(value, "upgrade");
    } else if eq("expect") {
        h.expect_continue = value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
    }
}

/// Parses a complete head. `Ok(None)`: more bytes needed.
pub fn parse(kind: Kind, buf: &[u8]) -> Result<Option<Head>, HeadError> {
    // Left uninitialized: httparse writes the ones it fills, and zeroing 96
    // headers (3 KiB) cost as much as parsing a short head.
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let config = httparse::ParserConfig::default();
    let mut h = Head::default();
    let status = match kind {
        Kind::Request => {
            let mut req = httparse::Request::new(&mut []);
            let st = config
                .parse_request_with_uninit_headers(&mut req, buf, &mut headers)
                .map_err(|e| HeadError::Invalid(e.to_string()))?;
            h.method = req.method.unwrap_or_default().to_string();
            h.target = req.path.unwrap_or_default().to_string();
            h.minor = req.version.unwrap_or(1);
            for hd in req.headers.iter() {
                apply_header(&mut h, hd.name, hd.value);
            }
            st
        }
        Kind::Response => {
            let mut resp = httparse::Response::new(&mut []);
            let st = config
                .parse_response_with_uninit_headers(&mut resp, buf, &mut headers)
                .map_err(|e| HeadError::Invalid(e.to_string()))?;
            h.status = resp.code.unwrap_or_default();
            h.minor = resp.version.unwrap_or(1);
            for hd in resp.headers.iter() {
                apply_header(&mut h, hd.name, hd.value);
            }
            st
        }
    };
    match status {
        httparse::Status::Complete(n) => {
            h.len = n;
            Ok(Some(h))
        }
        httparse::Status::Partial => Ok(None),
    }
}

/// Best-effort parse of a head the capture cut short: the start line and
/// every header line that is whole. `None` if even the start line is cut.
pub fn parse_truncated(kind: Kind, buf: &[u8]) -> Option<Head> {
    // Keep whole lines only, then close the head so httparse accepts it.
    let end = buf.windows(2).rposition(|w| w == b"\r\n")?;
    let mut v = buf[..end + 2].to_vec();
    v.extend_from_slice(b"\r\n");
    let mut h = parse(kind, &v).ok().flatten()?;
    h.truncated = true;
    h.len = buf.len();
    Some(h)
}

impl Head {
    /// Body framing of a request.
    pub fn request_framing(&self) -> Framing {
        if self.chunked {
            Framing::Chunked
        } else {
            match self.content_length {
                Some(0) | None => Framing::None,
                Some(n) => Framing::Length(n),
            }
        }
    }

    /// Body framing of a response; `head_request`: it answers a HEAD.
    pub fn response_framing(&self, head_request: bool) -> Framing {
        if head_request
            || (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304
        {
            return Framing::None;
        }
        if self.chunked {
            Framing::Chunked
        } else {
            match self.content_length {
                Some(0) => Framing::None,
                Some(n) => Framing::Length(n),
                None => Framing::UntilClose,
            }
        }
    }
}
