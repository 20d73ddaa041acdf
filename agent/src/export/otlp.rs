//! OTLP transport: gRPC (tonic) or HTTP/protobuf (reqwest), configured by
//! the standard `OTEL_EXPORTER_OTLP_*` variables.
use std::{str::FromStr, time::Duration};

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    metrics_service_client::MetricsServiceClient, ExportMetricsServiceRequest,
};
use prost::Message;

/// A gRPC codec for a request encoded beforehand (`encode::request`), whose
/// reply is read and discarded: an `ExportTraceServiceResponse` only
/// reports a partial success, which sonde does not act on.
#[derive(Debug, Clone, Copy, Default)]
struct Encoded;

impl tonic::codec::Codec for Encoded {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = Encoded;
    type Decoder = Encoded;

    fn encoder(&mut self) -> Encoded {
        Encoded
    }

    fn decoder(&mut self) -> Encoded {
        Encoded
    }
}

impl tonic::codec::Encoder for Encoded {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Encoded {
    type Item = ();
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "http/json" => {
                Err("OTLP protocol http/json is not supported; use grpc or http/protobuf".into())
            }
            other => Err(format!(
                "unknown OTLP protocol {other:?}; use grpc or http/protobuf"
            )),
        }
    }
}

/// Where and how one signal is exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Full URL: for HTTP including `/v1/traces` or `/v1/metrics`.
    pub url: String,
    pub protocol: Protocol,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    fn env_infix(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
        }
    }
    fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "v1/traces",
            Signal::Metrics => "v1/metrics",
        }
    }
}

/// Parses `OTEL_EXPORTER_OTLP_HEADERS` syntax: `k=v,k2=v2`.
pub fn parse_headers(s: &str) -> Vec<(String, String)> {
    crate::connections::process::parse_resource_attributes(s)
}

/// Resolves a signal's target from OTEL_* variables (read through `env`)
/// and an explicit endpoint/protocol (flags or config file, which win).
pub fn target(
    signal: Signal,
    env: &dyn Fn(&str) -> Option<String>,
    endpoint: Option<&str>,
    protocol: Option<Protocol>,
) -> Result<Option<Target>, String> {
    let infix = signal.env_infix();
    let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let protocol = match protocol {
        Some(p) => p,
        None => match get(&format!("OTEL_EXPORTER_OTLP_{infix}_PROTOCOL"))
            .or_else(|| get("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            Some(p) => p.parse()?,
            None => Protocol::Grpc,
        },
    };
    let specific = get(&format!("OTEL_EXPORTER_OTLP_{infix}_ENDPOINT"));
    let url = match (endpoint, specific) {
        (Some(base), _) => join(base, signal, protocol),
        (None, Some(full)) => full,
        (None, None) => match get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Some(base) => join(&base, signal, protocol),
            None => return Ok(None),
        },
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "OTLP endpoint {url:?} must start with http:// or https://"
        ));
    }
    let mut headers = get("OTEL_EXPORTER_OTLP_HEADERS")
        .map(|h| parse_headers(&h))
        .unwrap_or_default();
    if let Some(h) = get(&format!("OTEL_EXPORTER_OTLP_{infix}_HEADERS")) {
        for (k, v) in parse_headers(&h) {
            headers.retain(|(k2, _)| *k2 != k);
            headers.push((k, v));
        }
    }
    let timeout_ms = get(&format!("OTEL_EXPORTER_OTLP_{infix}_TIMEOUT"))
        .or_else(|| get("OTEL_EXPORTER_OTLP_TIMEOUT"))
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(10_000);
    Ok(Some(Target {
        url,
        protocol,
        headers,
        timeout: Duration::from_millis(timeout_ms.max(1)),
    }))
}

/// A base endpoint plus the signal path (HTTP only; gRPC uses the base).
fn join(base: &str, signal: Signal, protocol: Protocol) -> String {
    match protocol {
        Protocol::Grpc => base.to_string(),
        Protocol::HttpProtobuf => format!("{}/{}", base.trim_end_matches('/'), signal.http_path()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Worth retrying: the backend is down, overloaded or slow.
    #[error("{0} (will retry)")]
    Retryable(String),
    #[error("{0} (not retryable; data dropped)")]
    Permanent(String),
}

enum Transport {
    Grpc(tonic::transport::Channel, tonic::metadata::MetadataMap),
    Http(reqwest::Client),
}

pub struct Client {
    target: Target,
    transport: Transport,
}

fn grpc_retryable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Cancelled
            | DeadlineExceeded
            | ResourceExhausted
            | Aborted
            | OutOfRange
            | Unavailable
            | DataLoss
    )
}

impl Client {
    /// Builds a client; never connects here, so a backend that is down at
    /// start-up costs retries, not the agent.
    pub fn new(target: Target) -> Result<Client, String> {
        let transport = match target.protocol {
            Protocol::Grpc => {
                let mut ep = tonic::transport::Endpoint::from_shared(target.url.clone())
                    .map_err(|e| format!("invalid OTLP endpoint {}: {e}", target.url))?
                    .timeout(target.timeout)
                    .connect_timeout(target.timeout);
                if target.url.starts_with("https://") {
                    ep = ep
                        .tls_config(tonic::transport::ClientTlsConfig::new().with_webpki_roots())
                        .map_err(|e| format!("TLS for {}: {e}", target.url))?;
                }
                let mut md = tonic::metadata::MetadataMap::new();
                for (k, v) in &target.headers {
                    let key =
                        tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                            .map_err(|_| format!("invalid OTLP header name {k:?}"))?;
                    let val = v
                        .parse()
                        .map_err(|_| format!("invalid OTLP header value for {k}"))?;
                    md.insert(key, val);
                }
                Transport::Grpc(ep.connect_lazy(), md)
            }
            Protocol::HttpProtobuf => {
                let client = http_client(target.timeout)
                    .map_err(|e| format!("HTTP client for {}: {e}", target.url))?;
                Transport::Http(client)
            }
        };
        Ok(Client { target, transport })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Sends one `ExportTraceServiceRequest`, already encoded
    /// (`encode::request`): a retry sends the same bytes again.
    pub async fn export_traces(&self, body: Bytes) -> Result<(), ExportError> {
        match &self.transport {
            Transport::Grpc(ch, md) => {
                let mut grpc = tonic::client::Grpc::new(ch.clone());
                // As the generated client reports a channel that is not ready.
                grpc.ready().await.map_err(|e| {
                    self.grpc_error(tonic::Status::unknown(format!(
                        "Service was not ready: {e}"
                    )))
                })?;
                let mut r = tonic::Request::new(body);
                *r.metadata_mut() = md.clone();
                r.extensions_mut().insert(tonic::GrpcMethod::new(
                    "opentelemetry.proto.collector.trace.v1.TraceService",
                    "Export",
                ));
                let path = tonic::codegen::http::uri::PathAndQuery::from_static(
                    "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                );
                grpc.unary::<_, (), _>(r, path, Encoded)
                    .await
                    .map(|_| ())
                    .map_err(|s| self.grpc_error(s))
            }
            Transport::Http(c) => self.post(c, body).await,
        }
    }

    pub async fn export_metrics(
        &self,
        req: ExportMetricsServiceRequest,
    ) -> Result<(), ExportError> {
        match &self.transport {
            Transport::Grpc(ch, md) => {
                let mut r = tonic::Request::new(req);
                *r.metadata_mut() = md.clone();
                MetricsServiceClient::new(ch.clone())
                    .export(r)
                    .await
                    .map(|_| ())
                    .map_err(|s| self.grpc_error(s))
            }
            Transport::Http(c) => self.post(c, req.encode_to_vec().into()).await,
        }
    }

    fn grpc_error(&self, s: tonic::Status) -> ExportError {
        let msg = format!(
            "OTLP gRPC export to {} failed: {}: {}",
            self.target.url,
            s.code(),
            s.message()
        );
        if grpc_retryable(s.code()) {
            ExportError::Retryable(msg)
        } else {
            ExportError::Permanent(msg)
        }
    }

    async fn post(&self, c: &reqwest::Client, body: Bytes) -> Result<(), ExportError> {
        let mut rb = c
            .post(&self.target.url)
            .header("content-type", "application/x-protobuf")
            .body(body);
        for (k, v) in &self.target.headers {
            rb = rb.header(k.as_str(), v.as_str());
        }
        match rb.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => {
                let code = r.status().as_u16();
                let msg = format!(
                    "OTLP HTTP export to {} failed: status {code}",
                    self.target.url
                );
                if matches!(code, 429 | 502 | 503 | 504) {
                    Err(ExportError::Retryable(msg))
                } else {
                    Err(ExportError::Permanent(msg))
                }
            }
            Err(e) => Err(ExportError::Retryable(format!(
                "OTLP HTTP export to {} failed: {e}",
                self.target.url
            ))),
        }
    }
}

/// A reqwest client with `timeout`. reqwest sets up TLS even for plain
/// http://, and with `rustls-no-provider` the process must pick the crypto
/// provider first (ring; installing it twice is harmless).
pub fn http_client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(timeout).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn endpoints_follow_the_spec() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]);
        let t = target(Signal::Traces, &e, None, None).unwrap().unwrap();
        assert_eq!(t.url, "http://collector:4318/v1/traces");
        assert_eq!(
            target(Signal::Metrics, &e, None, None)
                .unwrap()
                .unwrap()
                .url,
            "http://collector:4318/v1/metrics"
        );
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9999/custom"),
        ]);
        assert_eq!(
            target(Signal::Traces, &e, None, None).unwrap().unwrap().url,
            "http://t:9999/custom",
            "signal endpoint as is"
        );
        assert_eq!(
            target(Signal::Metrics, &e, None, None)
                .unwrap()
                .unwrap()
                .url,
            "http://c:4317",
            "gRPC base as is"
        );
        assert_eq!(target(Signal::Traces, &env(&[]), None, None).unwrap(), None);
        // A flag wins over the environment.
        let t = target(
            Signal::Traces,
            &e,
            Some("http://flag:4317"),
            Some(Protocol::Grpc),
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.url, "http://flag:4317");
    }

    #[test]
    fn headers_timeouts_and_errors() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://x"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=abc,x-team=a%20b"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "api-key=override"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ]);
        let t = target(Signal::Traces, &e, None, None).unwrap().unwrap();
        assert_eq!(
            t.headers,
            vec![
                ("x-team".into(), "a b".into()),
                ("api-key".into(), "override".into())
            ]
        );
        assert_eq!(t.timeout, Duration::from_millis(2500));
        let bad = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]);
        assert!(target(Signal::Traces, &bad, None, None)
            .unwrap_err()
            .contains("http://"));
        let json = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ]);
        assert!(target(Signal::Traces, &json, None, None)
            .unwrap_err()
            .contains("not supported"));
    }
}
