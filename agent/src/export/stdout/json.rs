//! One span per line as JSON (`--stdout-format json`), with the field names
//! of OTLP's JSON encoding (ids in hex, times as decimal strings, enums by
//! name), so that `jq` filters written for OTLP JSON apply. Serialized
//! straight from the span (borrowed, no intermediate JSON tree).
use serde::{ser::SerializeMap, Serialize, Serializer};

use crate::spans::{hex, Span, Status, Value};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Line<'a> {
    trace_id: String,
    span_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_span_id: Option<String>,
    #[serde(skip_serializing_if = "str::is_empty")]
    trace_state: &'a str,
    name: &'a str,
    kind: String,
    start_time_unix_nano: String,
    end_time_unix_nano: String,
    attributes: Attributes<'a, &'static str>,
    status: StatusJson<'a>,
    resource: ResourceJson<'a>,
}

/// `[{"key": k, "value": {"stringValue": v}}, ...]`: a span's attributes
/// (static keys), or a resource's (owned keys; `service.name` among them).
struct Attributes<'a, K> {
    list: &'a [(K, Value)],
}

struct KeyValue<'a>(&'a str, AnyValue<'a>);

/// OTLP JSON's `AnyValue`.
struct AnyValue<'a>(&'a Value);

impl Serialize for AnyValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        match self.0 {
            Value::Str(v) => m.serialize_entry("stringValue", v)?,
            Value::Ip(ip) => m.serialize_entry("stringValue", &*crate::spans::IpText::new(*ip))?,
            // OTLP JSON writes 64-bit integers as strings.
            Value::Int(i) => m.serialize_entry("intValue", &i.to_string())?,
            Value::Bool(b) => m.serialize_entry("boolValue", b)?,
            Value::Double(d) => m.serialize_entry("doubleValue", d)?,
        }
        m.end()
    }
}

impl Serialize for KeyValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("key", self.0)?;
        m.serialize_entry("value", &self.1)?;
        m.end()
    }
}

impl<K: AsRef<str>> Serialize for Attributes<'_, K> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.list.len()))?;
        for (k, v) in self.list {
            seq.serialize_element(&KeyValue(k.as_ref(), AnyValue(v)))?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct ResourceJson<'a> {
    attributes: Attributes<'a, String>,
}

#[derive(Serialize)]
struct StatusJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

pub fn json(s: &Span) -> String {
    let line = Line {
        trace_id: hex(&s.trace_id),
        span_id: hex(&s.span_id),
        parent_span_id: s.parent_span_id.map(|p| hex(&p)),
        trace_state: &s.trace_state,
        name: &s.name,
        kind: format!("SPAN_KIND_{}", s.kind.as_str()),
        start_time_unix_nano: s.start_unix_ns.to_string(),
        end_time_unix_nano: s.end_unix_ns.to_string(),
        attributes: Attributes {
            list: &s.attributes,
        },
        status: match &s.status {
            Status::Unset => StatusJson {
                code: None,
                message: None,
            },
            Status::Error(m) => StatusJson {
                code: Some("STATUS_CODE_ERROR"),
                message: Some(m),
            },
        },
        resource: ResourceJson {
            attributes: Attributes {
                list: &s.resource.attributes,
            },
        },
    };
    serde_json::to_string(&line).unwrap_or_default()
}
