//! The `amqp_table` target: AMQP field tables and content-header property
//! lists, which carry trace context in from any publisher on the network.
use sonde::protocols::amqp::table::{Cursor, Field, Properties};

/// Decodes `bytes` as a field table and as a property list. Nothing may
/// panic, and what decodes may not be larger than the bytes could describe.
pub fn check(bytes: &[u8]) {
    if let Some(t) = Cursor::new(bytes).table(0) {
        let n = t.iter().map(|(k, v)| k.len() + size(v)).sum::<usize>();
        assert!(n <= bound(bytes.len()), "a {}-byte table decoded to {n} bytes", bytes.len());
    }
    if let Some(p) = Properties::parse(&mut Cursor::new(bytes)) {
        let n = p.headers.iter().map(|(k, v)| k.len() + size(v)).sum::<usize>();
        assert!(n <= bound(bytes.len()), "{}-byte properties decoded to {n} header bytes", bytes.len());
        let _ = (p.header("traceparent"), p.header("tracestate"));
    }
}

/// Lossy UTF-8 may turn each invalid byte into a 3-byte replacement
/// character; nothing else grows.
fn bound(input: usize) -> usize {
    3 * input
}

/// Text and byte payload a decoded value holds (each scalar needs at least
/// one input byte, so it counts one).
fn size(v: &Field) -> usize {
    match v {
        Field::Str(s) => s.len(),
        Field::Bytes(b) => b.len(),
        Field::Array(a) => a.iter().map(size).sum(),
        Field::Table(t) => t.iter().map(|(k, v)| k.len() + size(v)).sum(),
        _ => 1,
    }
}

/// The field tables and property lists in one direction of an AMQP stream:
/// every content header's property list and its headers table, and the
/// peer-properties tables of Connection.Start and Start-Ok.
pub fn tables_in(mut stream: &[u8]) -> Vec<Vec<u8>> {
    if stream.starts_with(b"AMQP") {
        stream = &stream[stream.len().min(8)..];
    }
    let mut found = vec![];
    // Frame: type u8, channel u16, size u32, payload, 0xCE.
    while stream.len() >= 8 {
        let size = u32::from_be_bytes([stream[3], stream[4], stream[5], stream[6]]) as usize;
        let Some(payload) = stream.get(7..7 + size) else { break };
        match stream[0] {
            // Method frame: class u16, method u16, arguments.
            1 if payload.len() > 4 && payload[..2] == [0, 10] => match payload[2..4] {
                [0, 10] if payload.len() > 6 => found.push(payload[6..].to_vec()),
                [0, 11] => found.push(payload[4..].to_vec()),
                _ => {}
            },
            // Content header: class u16, weight u16, body size u64, properties.
            2 if payload.len() > 12 => {
                let props = &payload[12..];
                found.push(props.to_vec());
                if let Some(t) = headers_table(props) {
                    found.push(t.to_vec());
                }
            }
            _ => {}
        }
        stream = &stream[(8 + size).min(stream.len())..];
    }
    found
}

/// The encoded headers table of a property list, when it has one.
fn headers_table(props: &[u8]) -> Option<&[u8]> {
    let flags = u16::from_be_bytes([*props.first()?, *props.get(1)?]);
    let mut at = 2;
    for bit in [15, 14] {
        if flags & (1 << bit) != 0 {
            at += 1 + *props.get(at)? as usize;
        }
    }
    if flags & (1 << 13) == 0 {
        return None;
    }
    let len = u32::from_be_bytes(props.get(at..at + 4)?.try_into().ok()?) as usize;
    props.get(at..at + 4 + len)
}
