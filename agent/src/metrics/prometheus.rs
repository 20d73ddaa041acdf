//! Prometheus text exposition (format 0.0.4) of the registry and of the
//! agent's health counters, served on `/metrics`.
use std::{collections::BTreeMap, fmt::Write, net::SocketAddr};

use super::{Histogram, Instrument, InstrumentKind, Registry, SharedRegistry};

/// A counter or gauge of the agent itself.
#[derive(Debug, Clone)]
pub struct HealthMetric {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn label_str(labels: &[(String, String)], extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn prom_label(k: &str) -> String {
    k.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn num(v: f64) -> String {
    if v.is_infinite() {
        "+Inf".into()
    } else {
        format!("{v}")
    }
}

/// Renders everything. Series of several processes of one service are summed.
pub fn render(reg: &Registry, health: &[HealthMetric]) -> String {
    let mut out = String::new();
    // (prom name) -> (labels) -> histogram
    type Merged = BTreeMap<
        &'static str,
        (
            &'static Instrument,
            BTreeMap<Vec<(String, String)>, Histogram>,
        ),
    >;
    let mut merged: Merged = BTreeMap::new();
    for (inst, res, labels, h) in reg.each() {
        let mut l = vec![("service_name".to_string(), res.service_name.clone())];
        if let Some(ns) = &res.service_namespace {
            l.push(("service_namespace".to_string(), ns.clone()));
        }
        l.extend(labels.iter().map(|(k, v)| (prom_label(k), v.clone())));
        let entry = merged
            .entry(inst.prom_name)
            .or_insert((inst, BTreeMap::new()))
            .1
            .entry(l)
            .or_default();
        if entry.counts.is_empty() {
            entry.counts = vec![0; h.counts.len()];
        }
        for (a, b) in entry.counts.iter_mut().zip(&h.counts) {
            *a += b;
        }
        entry.sum += h.sum;
        entry.count += h.count;
    }
    for (name, (inst, series)) in &merged {
        let _ = writeln!(out, "# HELP {name} {}", inst.description);
        if inst.kind == InstrumentKind::Counter {
            let _ = writeln!(out, "# TYPE {name} counter");
            for (labels, h) in series {
                let _ = writeln!(out, "{name}{} {}", label_str(labels, None), h.sum);
            }
            continue;
        }
        let bounds = inst.buckets;
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (labels, h) in series {
            let mut cum = 0;
            for (i, b) in bounds
                .iter()
                .chain(std::iter::once(&f64::INFINITY))
                .enumerate()
            {
                cum += h.counts.get(i).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {cum}",
                    label_str(labels, Some(("le", num(*b))))
                );
            }
            let _ = writeln!(out, "{name}_sum{} {}", label_str(labels, None), h.sum);
            let _ = writeln!(out, "{name}_count{} {}", label_str(labels, None), h.count);
        }
    }
    let mut last = "";
    for m in health {
        if m.name != last {
            let _ = writeln!(out, "# HELP {} {}", m.name, m.help);
            let _ = writeln!(out, "# TYPE {} {}", m.name, m.kind);
            last = m.name;
        }
        let labels: Vec<(String, String)> = m
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let _ = writeln!(out, "{}{} {}", m.name, label_str(&labels, None), m.value);
    }
    out
}

/// Serves `/metrics` until the task is dropped. `health` is called per scrape.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: SharedRegistry,
    health: std::sync::Arc<dyn Fn() -> Vec<HealthMetric> + Send + Sync>,
) -> std::io::Result<()> {
    use axum::{http::header, routing::get, Router};
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                let health = health.clone();
                async move {
                    let h = health();
                    let body = render(&registry.lock().unwrap_or_else(|e| e.into_inner()), &h);
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        )
        .route("/", get(|| async { "sonde: metrics at /metrics\n" }));
    axum::serve(listener, app).await
}

/// Binds the metrics listener, with an error that names the flag to change.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        format!("cannot listen on {addr} for Prometheus metrics: {e}. Fix: pick another address with --prometheus-listen (SONDE_PROMETHEUS_LISTEN)")
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{metrics::HTTP_SERVER_DURATION, spans::Resource};

    fn res(instance: &str) -> Arc<Resource> {
        Arc::new(Resource {
            service_name: "web".into(),
            service_namespace: Some("shop".into()),
            attributes: vec![("service.instance.id".into(), instance.into())],
        })
    }

    #[test]
    fn renders_cumulative_buckets_and_merges_instances() {
        let mut reg = Registry::new(0);
        let labels = || {
            smallvec::smallvec![
                ("http.route", "/a".into()),
                ("http.request.method", "GET".into()),
            ]
        };
        reg.record(&HTTP_SERVER_DURATION, &res("1"), labels(), 0.003);
        reg.record(&HTTP_SERVER_DURATION, &res("2"), labels(), 0.2);
        reg.record(&HTTP_SERVER_DURATION, &res("2"), labels(), 20.0);
        let text = render(
            &reg,
            &[HealthMetric {
                name: "sonde_up",
                help: "h",
                kind: "gauge",
                labels: vec![],
                value: 1.0,
            }],
        );
        let l = r#"service_name="web",service_namespace="shop",http_request_method="GET",http_route="/a""#;
        assert!(
            text.contains("# TYPE http_server_request_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "http_server_request_duration_seconds_bucket{{{l},le=\"0.005\"}} 1"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "http_server_request_duration_seconds_bucket{{{l},le=\"0.25\"}} 2"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "http_server_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} 3"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "http_server_request_duration_seconds_count{{{l}}} 3"
            )),
            "{text}"
        );
        assert!(text.contains("sonde_up 1"));
    }

    #[test]
    fn counters_render_as_totals() {
        let mut reg = Registry::new(0);
        for _ in 0..3 {
            reg.record(
                &crate::metrics::MESSAGING_SENT,
                &res("1"),
                smallvec::smallvec![("messaging.destination.name", "events".into())],
                1.0,
            );
        }
        let text = render(&reg, &[]);
        assert!(
            text.contains("# TYPE messaging_client_sent_messages_total counter"),
            "{text}"
        );
        assert!(text.contains("messaging_client_sent_messages_total{service_name=\"web\",service_namespace=\"shop\",messaging_destination_name=\"events\"} 3"), "{text}");
    }

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
