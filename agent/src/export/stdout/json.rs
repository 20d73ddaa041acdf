//! One span per line as JSON (`--stdout-format json`), with the field names
//! of OTLP's JSON encoding (ids in hex, times as decimal strings, enums by
//! name), so that `jq` filters written for OTLP JSON apply.
use serde_json::{json, Map, Value as Json};

use crate::spans::{hex, Span, Status, Value};

pub fn json(s: &Span) -> String {
    let attributes: Vec<Json> = s
        .attributes
        .iter()
        .map(|(k, v)| json!({ "key": k, "value": any_value(v) }))
        .collect();
    let mut resource = vec![json!({
        "key": "service.name",
        "value": { "stringValue": s.resource.service_name },
    })];
    if let Some(ns) = &s.resource.service_namespace {
        resource.push(json!({ "key": "service.namespace", "value": { "stringValue": ns } }));
    }
    resource.extend(
        s.resource
            .attributes
            .iter()
            .map(|(k, v)| json!({ "key": k, "value": any_value(v) })),
    );
    let mut o = Map::new();
    o.insert("traceId".into(), hex(&s.trace_id).into());
    o.insert("spanId".into(), hex(&s.span_id).into());
    if let Some(p) = s.parent_span_id {
        o.insert("parentSpanId".into(), hex(&p).into());
    }
    if !s.trace_state.is_empty() {
        o.insert("traceState".into(), s.trace_state.clone().into());
    }
    o.insert("name".into(), s.name.clone().into());
    o.insert(
        "kind".into(),
        format!("SPAN_KIND_{}", s.kind.as_str()).into(),
    );
    o.insert(
        "startTimeUnixNano".into(),
        s.start_unix_ns.to_string().into(),
    );
    o.insert("endTimeUnixNano".into(), s.end_unix_ns.to_string().into());
    o.insert("attributes".into(), attributes.into());
    o.insert(
        "status".into(),
        match &s.status {
            Status::Unset => json!({}),
            Status::Error(m) => json!({ "code": "STATUS_CODE_ERROR", "message": m }),
        },
    );
    o.insert("resource".into(), json!({ "attributes": resource }));
    Json::Object(o).to_string()
}

fn any_value(v: &Value) -> Json {
    match v {
        Value::Str(s) => json!({ "stringValue": s }),
        // OTLP JSON writes 64-bit integers as strings.
        Value::Int(i) => json!({ "intValue": i.to_string() }),
        Value::Bool(b) => json!({ "boolValue": b }),
        Value::Double(d) => json!({ "doubleValue": d }),
    }
}
