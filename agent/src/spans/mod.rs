//! The span model and its builders (semantic conventions per protocol).
//! The model is exporter-neutral; `export/` turns it into OTLP protobuf or
//! text. Builders take the ids correlation decided ([`SpanCtx`]); they
//! never make or change them.
pub mod db;
pub mod http;
pub mod messaging;
pub mod resource;
pub mod rpc;
pub mod sampler;
pub mod traceparent;

use std::{borrow::Cow, net::IpAddr, sync::Arc};

pub use resource::{Resource, ResourceBuilder};

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Static for the fixed vocabulary (methods, versions, schemes, systems):
    /// a span carries a dozen strings, and each owned one is an allocation.
    Str(Cow<'static, str>),
    /// An address, a string where it is read or sent ([`IpText`]): a span
    /// names one or two, and each as a `String` was an allocation.
    Ip(IpAddr),
    Int(i64),
    Bool(bool),
    Double(f64),
}

impl Value {
    /// A static string, not copied.
    pub const fn fixed(s: &'static str) -> Value {
        Value::Str(Cow::Borrowed(s))
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(Cow::Owned(s.to_string()))
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(Cow::Owned(s))
    }
}
impl From<Cow<'static, str>> for Value {
    fn from(s: Cow<'static, str>) -> Self {
        Value::Str(s)
    }
}
impl From<IpAddr> for Value {
    fn from(ip: IpAddr) -> Self {
        Value::Ip(ip)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Ip(ip) => write!(f, "{:?}", &*IpText::new(*ip)),
            Value::Int(i) => write!(f, "{i}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Double(d) => write!(f, "{d}"),
        }
    }
}

pub type Attributes = Vec<(&'static str, Value)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
    Producer,
    Consumer,
    Internal,
}

impl SpanKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Server => "SERVER",
            SpanKind::Client => "CLIENT",
            SpanKind::Producer => "PRODUCER",
            SpanKind::Consumer => "CONSUMER",
            SpanKind::Internal => "INTERNAL",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Unset,
    Error(String),
}

/// The ids a span gets, decided by correlation before it is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanCtx {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub sampled: bool,
}

impl SpanCtx {
    /// A new trace, sampled by `sampled`.
    pub fn root(sampled: impl FnOnce(&[u8; 16]) -> bool) -> SpanCtx {
        let trace_id = new_trace_id();
        SpanCtx {
            trace_id,
            span_id: new_span_id(),
            parent_span_id: None,
            sampled: sampled(&trace_id),
        }
    }

    /// A sampled root whose every id byte is `n`: tests tell contexts
    /// apart by it.
    #[cfg(test)]
    pub(crate) fn filled(n: u8) -> SpanCtx {
        SpanCtx {
            trace_id: [n; 16],
            span_id: [n; 8],
            parent_span_id: None,
            sampled: true,
        }
    }

    /// A new span under `self`, in its trace and sampling decision.
    pub fn child(&self) -> SpanCtx {
        SpanCtx {
            trace_id: self.trace_id,
            span_id: new_span_id(),
            parent_span_id: Some(self.span_id),
            sampled: self.sampled,
        }
    }
}

/// A span rebuilt from the wire, with its real timing and ids.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub trace_state: String,
    pub kind: SpanKind,
    pub name: String,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Attributes,
    pub status: Status,
    pub resource: Arc<Resource>,
}

impl Span {
    pub fn duration_secs(&self) -> f64 {
        self.end_unix_ns.saturating_sub(self.start_unix_ns) as f64 / 1e9
    }

    pub fn is_error(&self) -> bool {
        matches!(self.status, Status::Error(_))
    }

    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// Random span and trace ids; never all zero (invalid in W3C and OTLP).
pub fn new_trace_id() -> [u8; 16] {
    loop {
        let id: [u8; 16] = rand::random();
        if id != [0; 16] {
            return id;
        }
    }
}

pub fn new_span_id() -> [u8; 8] {
    loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return id;
        }
    }
}

/// An address as text, as `IpAddr`'s `Display` writes it.
pub fn ip_text(ip: IpAddr) -> String {
    IpText::new(ip).to_string()
}

/// An address's text on the stack, as `IpAddr`'s `Display` writes it.
/// IPv4, the common case, is written without the formatting machinery:
/// spans and metrics write two or three addresses per request.
pub struct IpText {
    /// The longest is an IPv4-mapped IPv6 address: 45 bytes.
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    pub fn new(ip: IpAddr) -> IpText {
        let mut t = IpText {
            buf: [0; 48],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                let mut digits = itoa::Buffer::new();
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(".");
                    }
                    t.push(digits.format(octet));
                }
            }
            v6 => {
                use std::fmt::Write;
                let _ = write!(t, "{v6}");
            }
        }
        t
    }

    fn push(&mut self, s: &str) {
        let end = self.len + s.len();
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
    }
}

impl std::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.len + s.len() > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.push(s);
        Ok(())
    }
}

impl std::ops::Deref for IpText {
    type Target = str;
    fn deref(&self) -> &str {
        // Only whole `&str`s are pushed.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn addresses_read_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.255.9",
            "::1",
            "::ffff:1.2.3.4",
            "fe80::1",
            "::ffff:255.255.255.255",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(super::ip_text(ip), ip.to_string());
            assert_eq!(&*super::IpText::new(ip), ip.to_string());
            // Written as the string it stands for.
            assert_eq!(
                super::Value::Ip(ip).to_string(),
                super::Value::from(ip.to_string()).to_string()
            );
        }
    }
}
