//! An OTLP receiver for tests, standing in for Jaeger or a Collector.
//!
//! It serves OTLP/gRPC (TraceService, MetricsService) and OTLP/HTTP
//! (`POST /v1/traces`, `/v1/metrics`, protobuf), decodes every request with
//! the official opentelemetry-proto definitions and keeps it for assertions.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{body::Bytes, extract::State, http::StatusCode, routing::post, Router};
use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            metrics_service_server::{MetricsService, MetricsServiceServer},
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        },
        trace::v1::{
            trace_service_server::{TraceService, TraceServiceServer},
            ExportTraceServiceRequest, ExportTraceServiceResponse,
        },
    },
    common::v1::{any_value, AnyValue, KeyValue},
    metrics::v1::{metric, Metric},
    trace::v1::Span,
};
use prost::Message;

mod count;

pub use opentelemetry_proto::tonic as proto;

#[derive(Default)]
pub struct Store {
    traces: Mutex<Vec<ExportTraceServiceRequest>>,
    metrics: Mutex<Vec<ExportMetricsServiceRequest>>,
    /// Count spans and keep nothing (a benchmark's sink: its memory and CPU
    /// stay flat whatever the rate).
    discard: bool,
    spans_received: std::sync::atomic::AtomicU64,
}

/// A span with the attributes of its resource, flattened for assertions.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub resource: HashMap<String, String>,
    pub span: Span,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }
    pub fn service(&self) -> &str {
        self.resource
            .get("service.name")
            .map(String::as_str)
            .unwrap_or("")
    }
    pub fn duration_ns(&self) -> u64 {
        self.span
            .end_time_unix_nano
            .saturating_sub(self.span.start_time_unix_nano)
    }
}

/// The value of `key` among `attrs`, rendered as a string.
pub fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .map(value_string)
}

/// Attributes as a map of strings.
pub fn kv_map<'a>(attrs: impl IntoIterator<Item = &'a KeyValue>) -> HashMap<String, String> {
    attrs
        .into_iter()
        .filter_map(|kv| Some((kv.key.clone(), value_string(kv.value.as_ref()?))))
        .collect()
}

pub fn value_string(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// A histogram data point with its resource, flattened.
#[derive(Debug, Clone)]
pub struct ReceivedPoint {
    pub resource: HashMap<String, String>,
    pub metric: String,
    pub attributes: HashMap<String, String>,
    pub count: u64,
    pub sum: f64,
    pub time_unix_nano: u64,
}

impl Store {
    /// A store that counts spans and keeps nothing.
    pub fn discarding() -> Store {
        Store {
            discard: true,
            ..Store::default()
        }
    }

    /// Spans received so far (kept or not).
    pub fn spans_received(&self) -> u64 {
        self.spans_received
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_spans(&self, n: usize) {
        self.spans_received
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn add_traces(&self, r: ExportTraceServiceRequest) {
        let n: usize = r
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        self.count_spans(n);
        if !self.discard {
            self.traces.lock().unwrap().push(r);
        }
    }

    fn add_metrics(&self, r: ExportMetricsServiceRequest) {
        if !self.discard {
            self.metrics.lock().unwrap().push(r);
        }
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let mut out = vec![];
        for req in self.traces.lock().unwrap().iter() {
            for rs in &req.resource_spans {
                let res = kv_map(rs.resource.iter().flat_map(|r| &r.attributes));
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        out.push(ReceivedSpan {
                            resource: res.clone(),
                            span: s.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Every histogram point received (cumulative: later ones supersede).
    pub fn histogram_points(&self) -> Vec<ReceivedPoint> {
        let mut out = vec![];
        for req in self.metrics.lock().unwrap().iter() {
            for rm in &req.resource_metrics {
                let res = kv_map(rm.resource.iter().flat_map(|r| &r.attributes));
                for sm in &rm.scope_metrics {
                    for Metric { name, data, .. } in &sm.metrics {
                        if let Some(metric::Data::Histogram(h)) = data {
                            for p in &h.data_points {
                                out.push(ReceivedPoint {
                                    resource: res.clone(),
                                    metric: name.clone(),
                                    attributes: kv_map(&p.attributes),
                                    count: p.count,
                                    sum: p.sum.unwrap_or(0.0),
                                    time_unix_nano: p.time_unix_nano,
                                });
                            }
                        }
                    }
                }
            }
        }
        out
    }

    pub fn trace_requests(&self) -> usize {
        self.traces.lock().unwrap().len()
    }

    pub fn clear(&self) {
        self.traces.lock().unwrap().clear();
        self.metrics.lock().unwrap().clear();
    }
}

#[derive(Clone)]
struct Svc(Arc<Store>);

#[tonic::async_trait]
impl TraceService for Svc {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add_traces(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Svc {
    async fn export(
        &self,
        req: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.add_metrics(req.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

async fn http_traces(State(store): State<Arc<Store>>, body: Bytes) -> (StatusCode, Vec<u8>) {
    let decoded = if store.discard {
        count::SpanCount::decode(body).map(|c| store.count_spans(c.spans()))
    } else {
        ExportTraceServiceRequest::decode(body).map(|r| store.add_traces(r))
    };
    match decoded {
        Ok(()) => (
            StatusCode::OK,
            ExportTraceServiceResponse::default().encode_to_vec(),
        ),
        Err(_) => (StatusCode::BAD_REQUEST, vec![]),
    }
}

async fn http_metrics(State(store): State<Arc<Store>>, body: Bytes) -> (StatusCode, Vec<u8>) {
    match ExportMetricsServiceRequest::decode(body) {
        Ok(r) => {
            store.add_metrics(r);
            (
                StatusCode::OK,
                ExportMetricsServiceResponse::default().encode_to_vec(),
            )
        }
        Err(_) => (StatusCode::BAD_REQUEST, vec![]),
    }
}

/// A running receiver. Dropping it (or `stop`) closes both listeners.
pub struct Receiver {
    pub store: Arc<Store>,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    /// Binds gRPC and HTTP listeners (port 0 picks free ports) and serves
    /// into `store`, which may be shared with an earlier receiver.
    pub async fn start(
        grpc: SocketAddr,
        http: SocketAddr,
        store: Arc<Store>,
    ) -> std::io::Result<Receiver> {
        let grpc_l = tokio::net::TcpListener::bind(grpc).await?;
        let http_l = tokio::net::TcpListener::bind(http).await?;
        let (grpc_addr, http_addr) = (grpc_l.local_addr()?, http_l.local_addr()?);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (tx_http, rx_http) = tokio::sync::oneshot::channel::<()>();
        let svc = Svc(store.clone());
        let g = tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(grpc_l);
            let mut server = tonic::transport::Server::builder();
            let router = if svc.0.discard {
                server.add_service(count::CountingTraceService(svc.0.clone()))
            } else {
                server.add_service(TraceServiceServer::new(svc.clone()))
            };
            let _ = router
                .add_service(MetricsServiceServer::new(svc))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                    let _ = tx_http.send(());
                })
                .await;
        });
        let app = Router::new()
            .route("/v1/traces", post(http_traces))
            .route("/v1/metrics", post(http_metrics))
            .with_state(store.clone());
        let h = tokio::spawn(async move {
            let _ = axum::serve(http_l, app)
                .with_graceful_shutdown(async {
                    let _ = rx_http.await;
                })
                .await;
        });
        Ok(Receiver {
            store,
            grpc_addr,
            http_addr,
            stop: Some(tx),
            tasks: vec![g, h],
        })
    }

    /// Stops both servers and waits until their listeners are closed.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

    use super::*;

    fn request(n: usize) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span::default(); n],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// Spans with content (names, attributes, a resource and a scope), in
    /// several resources and scopes: what counting must skip over.
    fn varied_request() -> ExportTraceServiceRequest {
        use opentelemetry_proto::tonic::{
            common::v1::InstrumentationScope, resource::v1::Resource,
        };
        let span = |i: usize| Span {
            name: format!("GET /items/{i}"),
            trace_id: vec![i as u8; 16],
            span_id: vec![i as u8; 8],
            attributes: vec![KeyValue {
                key: "http.route".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("/items/{id}".into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let scope = |n: usize| ScopeSpans {
            scope: Some(InstrumentationScope {
                name: "sonde".into(),
                ..Default::default()
            }),
            spans: (0..n).map(span).collect(),
            schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
        };
        ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(Resource::default()),
                    scope_spans: vec![scope(3), scope(0), scope(4)],
                    schema_url: "x".into(),
                },
                ResourceSpans {
                    scope_spans: vec![scope(5)],
                    ..Default::default()
                },
            ],
        }
    }

    /// The discarding receiver counts what it would have decoded, over
    /// gRPC and HTTP, and answers as a receiver does.
    #[tokio::test]
    async fn a_discarding_receiver_counts_every_span_it_is_sent() {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let r = Receiver::start(any, any, Arc::new(Store::discarding()))
            .await
            .unwrap();
        let req = varied_request();
        let mut client = TraceServiceClient::connect(format!("http://{}", r.grpc_addr))
            .await
            .unwrap();
        client.export(req.clone()).await.unwrap();
        client.export(request(2)).await.unwrap();
        assert_eq!(r.store.spans_received(), 14);
        // OTLP/HTTP, protobuf.
        let resp = post_traces(r.http_addr, &req.encode_to_vec()).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert_eq!(r.store.spans_received(), 26);
        assert!(r.store.spans().is_empty());
        // What is not OTLP is refused, and not counted.
        let resp = post_traces(r.http_addr, b"\x0a\xff\xff").await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
        assert_eq!(r.store.spans_received(), 26);
        r.stop().await;
    }

    /// POSTs `body` to `/v1/traces` over one connection; the response.
    async fn post_traces(addr: SocketAddr, body: &[u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut resp = vec![];
        s.read_to_end(&mut resp).await.unwrap();
        String::from_utf8_lossy(&resp).into_owned()
    }

    #[test]
    fn a_discarding_store_counts_and_keeps_nothing() {
        let s = Store::discarding();
        s.add_traces(request(3));
        s.add_traces(request(2));
        assert_eq!(s.spans_received(), 5);
        assert!(s.spans().is_empty());
        let kept = Store::default();
        kept.add_traces(request(3));
        assert_eq!((kept.spans_received(), kept.spans().len()), (3, 3));
    }
}
