//! sonde's span and metric model to OTLP protobuf (opentelemetry-proto),
//! one ResourceSpans / ResourceMetrics per process resource.
use std::{collections::HashMap, sync::Arc};

use opentelemetry_proto::tonic::{
    collector::{metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest},
    common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue},
    metrics::v1::{
        metric, number_data_point, AggregationTemporality, Histogram as PHistogram,
        HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    },
    resource::v1::Resource as PResource,
    trace::v1::{span, status, ResourceSpans, ScopeSpans, Span as PSpan, Status as PStatus},
};

use crate::{
    metrics::{InstrumentKind, Registry},
    spans::{Resource, Span, SpanKind, Status, Value},
};

fn any(v: &Value) -> AnyValue {
    AnyValue {
        value: Some(match v {
            Value::Str(s) => any_value::Value::StringValue(s.to_string()),
            Value::Ip(ip) => any_value::Value::StringValue(crate::spans::ip_text(*ip)),
            Value::Int(i) => any_value::Value::IntValue(*i),
            Value::Bool(b) => any_value::Value::BoolValue(*b),
            Value::Double(d) => any_value::Value::DoubleValue(*d),
        }),
    }
}

fn kv(k: &str, v: &Value) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(any(v)),
        ..Default::default()
    }
}

pub fn resource(r: &Resource) -> PResource {
    PResource {
        attributes: r.attributes.iter().map(|(k, v)| kv(k, v)).collect(),
        ..Default::default()
    }
}

/// The instrumentation scope of every span and metric sonde exports.
pub(crate) const SCOPE_NAME: &str = "sonde";
pub(crate) const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");
/// `flags` of every span: low byte, W3C trace flags (sampled); bit 8, the
/// has-remote-parent flag is known.
pub(crate) const SPAN_FLAGS: u32 = 0x01 | 0x100;

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.into(),
        version: SCOPE_VERSION.into(),
        ..Default::default()
    }
}

pub(crate) fn kind(k: SpanKind) -> i32 {
    (match k {
        SpanKind::Internal => span::SpanKind::Internal,
        SpanKind::Server => span::SpanKind::Server,
        SpanKind::Client => span::SpanKind::Client,
        SpanKind::Producer => span::SpanKind::Producer,
        SpanKind::Consumer => span::SpanKind::Consumer,
    }) as i32
}

pub fn span(s: &Span) -> PSpan {
    PSpan {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        trace_state: s.trace_state.clone(),
        parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        flags: SPAN_FLAGS,
        name: s.name.clone(),
        kind: kind(s.kind),
        start_time_unix_nano: s.start_unix_ns,
        end_time_unix_nano: s.end_unix_ns,
        attributes: s.attributes.iter().map(|(k, v)| kv(k, v)).collect(),
        status: Some(match &s.status {
            Status::Unset => PStatus::default(),
            Status::Error(m) => PStatus {
                message: m.clone(),
                code: status::StatusCode::Error as i32,
            },
        }),
        ..Default::default()
    }
}

/// Groups spans by resource (pointer identity: one Arc per process).
pub fn traces(spans: &[Span]) -> ExportTraceServiceRequest {
    let mut order: Vec<Arc<Resource>> = vec![];
    let mut groups: HashMap<*const Resource, Vec<PSpan>> = HashMap::new();
    for s in spans {
        let key = Arc::as_ptr(&s.resource);
        groups.entry(key).or_insert_with(|| {
            order.push(s.resource.clone());
            vec![]
        });
        groups.get_mut(&key).expect("inserted").push(span(s));
    }
    ExportTraceServiceRequest {
        resource_spans: order
            .iter()
            .map(|r| ResourceSpans {
                resource: Some(resource(r)),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope()),
                    spans: groups.remove(&Arc::as_ptr(r)).unwrap_or_default(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// A cumulative snapshot of the registry at `now_unix_ns`.
pub fn metrics(reg: &Registry, now_unix_ns: u64) -> ExportMetricsServiceRequest {
    // resource -> instrument -> points. Series of one process share one Arc;
    // an equal resource behind another Arc (cache rebuilt) still merges, but
    // that comparison runs once per Arc, not once per series.
    let mut by_res: Vec<(Arc<Resource>, Vec<Metric>)> = vec![];
    let mut index: HashMap<*const Resource, usize> = HashMap::new();
    for (inst, res, labels, h) in reg.each() {
        let idx = *index.entry(Arc::as_ptr(res)).or_insert_with(|| {
            by_res
                .iter()
                .position(|(r, _)| **r == **res)
                .unwrap_or_else(|| {
                    by_res.push((res.clone(), vec![]));
                    by_res.len() - 1
                })
        });
        let ms = &mut by_res[idx].1;
        let m = match ms.iter().position(|m| m.name == inst.name) {
            Some(i) => &mut ms[i],
            None => {
                let data = match inst.kind {
                    InstrumentKind::Histogram => metric::Data::Histogram(PHistogram {
                        data_points: vec![],
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    }),
                    InstrumentKind::Counter => metric::Data::Sum(Sum {
                        data_points: vec![],
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        is_monotonic: true,
                    }),
                };
                ms.push(Metric {
                    name: inst.name.into(),
                    description: inst.description.into(),
                    unit: inst.unit.into(),
                    data: Some(data),
                    ..Default::default()
                });
                ms.last_mut().expect("pushed")
            }
        };
        let attributes: Vec<KeyValue> = labels
            .iter()
            .map(|(k, v)| kv(k, &Value::Str(v.clone().into())))
            .collect();
        if let Some(metric::Data::Sum(sum)) = &mut m.data {
            sum.data_points.push(NumberDataPoint {
                attributes,
                start_time_unix_nano: reg.start_unix_ns,
                time_unix_nano: now_unix_ns,
                value: Some(number_data_point::Value::AsInt(h.sum as i64)),
                ..Default::default()
            });
        } else if let Some(metric::Data::Histogram(ph)) = &mut m.data {
            ph.data_points.push(HistogramDataPoint {
                attributes,
                start_time_unix_nano: reg.start_unix_ns,
                time_unix_nano: now_unix_ns,
                count: h.count,
                sum: Some(h.sum),
                bucket_counts: h.counts.clone(),
                explicit_bounds: inst.buckets.to_vec(),
                ..Default::default()
            });
        }
    }
    ExportMetricsServiceRequest {
        resource_metrics: by_res
            .into_iter()
            .map(|(r, metrics)| ResourceMetrics {
                resource: Some(resource(&r)),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope()),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}
