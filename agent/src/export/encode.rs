//! Spans straight to OTLP protobuf bytes (an `ExportTraceServiceRequest`),
//! without building opentelemetry-proto's message structs first.
//!
//! Why: the structs copy every string of every span once more (keys,
//! values, names) only for prost to write them out and free them. At tens
//! of thousands of spans per second that copy was most of the exporter's
//! CPU (`cargo bench -p sonde --bench export`). The wire format is the
//! same: `proto::traces` stays the reference, and the tests decode what
//! this writes and compare it with that.
//!
//! Each message's length comes before its bytes, so every message is sized
//! first (`*_len`) and then written (`put_*`); a span's size is computed
//! once per batch.
use std::sync::Arc;

use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};

use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

use super::proto::{self, SCOPE_NAME, SCOPE_VERSION, SPAN_FLAGS};
use crate::spans::{IpText, Resource, Span, Status, Value};

/// The request for `spans`, as the exporter sends it.
pub fn request(spans: &[Span]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(spans.len() * 512);
    traces(spans, &mut out);
    out.into()
}

/// Writes the request for `spans`, grouped by resource (one
/// `ResourceSpans` per `Arc`, in the order the spans first name them).
pub fn traces(spans: &[Span], out: &mut Vec<u8>) {
    let sizes: Vec<usize> = spans.iter().map(span_len).collect();
    // (resource, its spans' indexes), in first-seen order. A batch holds
    // a handful of resources: a linear search beats a map.
    let mut groups: Vec<(&Arc<Resource>, Vec<usize>)> = vec![];
    for (i, s) in spans.iter().enumerate() {
        match groups.iter_mut().find(|(r, _)| Arc::ptr_eq(r, &s.resource)) {
            Some((_, v)) => v.push(i),
            None => groups.push((&s.resource, vec![i])),
        }
    }
    let scope = scope_len();
    for (resource, members) in &groups {
        let resource_len = resource_len(resource);
        let spans_len: usize = members.iter().map(|&i| field_len(2, sizes[i])).sum();
        let scope_spans = field_len(1, scope) + spans_len;
        let resource_spans = field_len(1, resource_len) + field_len(2, scope_spans);
        out.reserve(field_len(1, resource_spans));
        put_len(1, resource_spans, out);
        put_len(1, resource_len, out);
        for (k, v) in &resource.attributes {
            put_kv_field(1, k, v, out);
        }
        put_len(2, scope_spans, out);
        put_scope(scope, out);
        for &i in members {
            put_len(2, sizes[i], out);
            put_span(&spans[i], out);
        }
    }
}

/// A length-delimited field of `len` bytes: its key, length and bytes.
fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn put_len(tag: u32, len: usize, out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

/// A proto3 string or bytes field: absent when empty.
fn bytes_len(tag: u32, b: &[u8]) -> usize {
    if b.is_empty() {
        0
    } else {
        field_len(tag, b.len())
    }
}

fn put_bytes(tag: u32, b: &[u8], out: &mut Vec<u8>) {
    if !b.is_empty() {
        put_len(tag, b.len(), out);
        out.extend_from_slice(b);
    }
}

fn put_varint(tag: u32, v: u64, out: &mut Vec<u8>) {
    if v != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(v, out);
    }
}

fn varint_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(v)
    }
}

fn put_fixed64(tag: u32, v: u64, out: &mut Vec<u8>) {
    if v != 0 {
        encode_key(tag, WireType::SixtyFourBit, out);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn fixed64_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + 8
    }
}

/// `AnyValue`: a oneof, so written even when it holds a default.
fn any_len(v: &Value) -> usize {
    match v {
        Value::Str(s) => field_len(1, s.len()),
        Value::Ip(ip) => field_len(1, IpText::new(*ip).len()),
        Value::Bool(_) => key_len(2) + 1,
        Value::Int(i) => key_len(3) + encoded_len_varint(*i as u64),
        Value::Double(_) => key_len(4) + 8,
    }
}

fn put_any(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Str(s) => {
            put_len(1, s.len(), out);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Ip(ip) => {
            let s = IpText::new(*ip);
            put_len(1, s.len(), out);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Bool(b) => {
            encode_key(2, WireType::Varint, out);
            encode_varint(*b as u64, out);
        }
        Value::Int(i) => {
            encode_key(3, WireType::Varint, out);
            encode_varint(*i as u64, out);
        }
        Value::Double(d) => {
            encode_key(4, WireType::SixtyFourBit, out);
            out.extend_from_slice(&d.to_le_bytes());
        }
    }
}

/// `KeyValue`, as a field of its parent (tag and length included).
fn kv_field_len(tag: u32, k: &str, v: &Value) -> usize {
    field_len(tag, bytes_len(1, k.as_bytes()) + field_len(2, any_len(v)))
}

fn put_kv_field(tag: u32, k: &str, v: &Value, out: &mut Vec<u8>) {
    let any = any_len(v);
    put_len(tag, bytes_len(1, k.as_bytes()) + field_len(2, any), out);
    put_bytes(1, k.as_bytes(), out);
    put_len(2, any, out);
    put_any(v, out);
}

fn resource_len(r: &Resource) -> usize {
    r.attributes
        .iter()
        .map(|(k, v)| kv_field_len(1, k, v))
        .sum()
}

fn scope_len() -> usize {
    bytes_len(1, SCOPE_NAME.as_bytes()) + bytes_len(2, SCOPE_VERSION.as_bytes())
}

fn put_scope(len: usize, out: &mut Vec<u8>) {
    put_len(1, len, out);
    put_bytes(1, SCOPE_NAME.as_bytes(), out);
    put_bytes(2, SCOPE_VERSION.as_bytes(), out);
}

/// (message, code) of a span's `Status`, always present.
fn status_parts(s: &Status) -> (&str, u64) {
    match s {
        Status::Unset => ("", 0),
        Status::Error(m) => (m, StatusCode::Error as u64),
    }
}

fn status_len(s: &Status) -> usize {
    let (message, code) = status_parts(s);
    bytes_len(2, message.as_bytes()) + varint_len(3, code)
}

fn span_len(s: &Span) -> usize {
    bytes_len(1, &s.trace_id)
        + bytes_len(2, &s.span_id)
        + bytes_len(3, s.trace_state.as_bytes())
        + s.parent_span_id.map_or(0, |p| bytes_len(4, &p))
        + key_len(16)
        + 4
        + bytes_len(5, s.name.as_bytes())
        + varint_len(6, proto::kind(s.kind) as u64)
        + fixed64_len(7, s.start_unix_ns)
        + fixed64_len(8, s.end_unix_ns)
        + s.attributes
            .iter()
            .map(|(k, v)| kv_field_len(9, k, v))
            .sum::<usize>()
        + field_len(15, status_len(&s.status))
}

fn put_span(s: &Span, out: &mut Vec<u8>) {
    put_bytes(1, &s.trace_id, out);
    put_bytes(2, &s.span_id, out);
    put_bytes(3, s.trace_state.as_bytes(), out);
    if let Some(p) = &s.parent_span_id {
        put_bytes(4, p, out);
    }
    put_bytes(5, s.name.as_bytes(), out);
    put_varint(6, proto::kind(s.kind) as u64, out);
    put_fixed64(7, s.start_unix_ns, out);
    put_fixed64(8, s.end_unix_ns, out);
    for (k, v) in &s.attributes {
        put_kv_field(9, k, v, out);
    }
    put_len(15, status_len(&s.status), out);
    let (message, code) = status_parts(&s.status);
    put_bytes(2, message.as_bytes(), out);
    put_varint(3, code, out);
    // Field 16 comes last: prost writes fields in tag order.
    encode_key(16, WireType::ThirtyTwoBit, out);
    out.extend_from_slice(&SPAN_FLAGS.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    use super::*;
    use crate::spans::SpanKind;

    fn resource(name: &str, extra: Vec<(String, Value)>) -> Arc<Resource> {
        let mut attributes = vec![("service.name".to_string(), name.into())];
        attributes.extend(extra);
        Arc::new(Resource {
            service_name: name.into(),
            service_namespace: None,
            attributes,
        })
    }

    fn span(i: u64, resource: &Arc<Resource>) -> Span {
        let kinds = [
            SpanKind::Server,
            SpanKind::Client,
            SpanKind::Producer,
            SpanKind::Consumer,
            SpanKind::Internal,
        ];
        Span {
            trace_id: [i as u8 + 1; 16],
            span_id: (i + 1).to_be_bytes(),
            parent_span_id: (!i.is_multiple_of(3)).then(|| i.to_be_bytes()),
            trace_state: if i % 4 == 1 {
                "vendor=x".into()
            } else {
                String::new()
            },
            kind: kinds[i as usize % kinds.len()],
            name: if i == 7 {
                String::new()
            } else {
                format!("GET /items/{i}")
            },
            start_unix_ns: if i == 5 {
                0
            } else {
                1_700_000_000_000_000_000 + i
            },
            end_unix_ns: 1_700_000_000_000_000_000 + i * 1_000_000,
            attributes: vec![
                ("http.request.method", "GET".into()),
                ("empty", "".into()),
                ("http.response.status_code", Value::Int(200 + i as i64)),
                ("negative", Value::Int(-(i as i64))),
                ("zero", Value::Int(0)),
                ("flag", Value::Bool(i.is_multiple_of(2))),
                ("ratio", Value::Double(i as f64 / 3.0)),
                ("long", "x".repeat(200 * i as usize).into()),
                (
                    "network.peer.address",
                    Value::Ip(if i.is_multiple_of(2) {
                        std::net::Ipv4Addr::new(10, 0, i as u8, 1).into()
                    } else {
                        std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, i as u16).into()
                    }),
                ),
            ],
            status: if i.is_multiple_of(2) {
                Status::Error(format!("HTTP {}", 500 + i))
            } else {
                Status::Unset
            },
            resource: resource.clone(),
        }
    }

    /// What `traces` writes decodes to what the opentelemetry-proto path
    /// builds, and is byte for byte what prost writes for it.
    #[test]
    fn writes_what_the_proto_structs_encode_to() {
        let a = resource("shop", vec![("process.pid".into(), Value::Int(42))]);
        let b = resource("stock", vec![("ok".into(), Value::Bool(true))]);
        // Interleaved resources, a resource with no attributes, and every
        // kind of value, empty string and zero number.
        let c = Arc::new(Resource {
            service_name: String::new(),
            service_namespace: None,
            attributes: vec![],
        });
        let spans: Vec<Span> = (0..12)
            .map(|i| span(i, [&a, &b, &c][i as usize % 3]))
            .collect();
        for n in [0, 1, 2, 12] {
            let batch = &spans[..n];
            let mut out = vec![];
            traces(batch, &mut out);
            let reference = proto::traces(batch);
            let decoded = ExportTraceServiceRequest::decode(out.as_slice()).expect("decodes");
            assert_eq!(decoded, reference, "{n} spans");
            assert_eq!(out, reference.encode_to_vec(), "{n} spans: same bytes");
        }
    }

    #[test]
    fn the_same_resource_behind_two_arcs_is_two_groups_as_in_the_reference() {
        let a1 = resource("shop", vec![]);
        let a2 = resource("shop", vec![]);
        let spans = vec![span(1, &a1), span(2, &a2), span(3, &a1)];
        let mut out = vec![];
        traces(&spans, &mut out);
        let decoded = ExportTraceServiceRequest::decode(out.as_slice()).unwrap();
        assert_eq!(decoded.resource_spans.len(), 2);
        assert_eq!(decoded, proto::traces(&spans));
    }
}
