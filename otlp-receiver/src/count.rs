//! The discarding receiver's trace service: it counts spans without
//! decoding them. A full decode allocates every string of every span; at
//! the benchmark's 50,000 spans/s that cost a quarter of a core, on the
//! same two cores as the service and the agent being measured.
use std::{
    convert::Infallible,
    future::{ready, Ready},
    sync::Arc,
};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};

use crate::Store;

/// An `ExportTraceServiceRequest` seen only as far as its spans: the same
/// field numbers (`resource_spans` = 1, `scope_spans` = 2, `spans` = 2),
/// every other field skipped, each span kept as the bytes it arrived in.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SpanCount {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceCount>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ResourceCount {
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeCount>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ScopeCount {
    #[prost(bytes = "bytes", repeated, tag = "2")]
    spans: Vec<prost::bytes::Bytes>,
}

impl SpanCount {
    pub(crate) fn spans(&self) -> usize {
        self.resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum()
    }
}

/// OTLP/gRPC `TraceService` that counts into a store.
#[derive(Clone)]
pub(crate) struct CountingTraceService(pub(crate) Arc<Store>);

impl tonic::server::NamedService for CountingTraceService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

struct Export(Arc<Store>);

impl tonic::server::UnaryService<SpanCount> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = Ready<Result<tonic::Response<Self::Response>, tonic::Status>>;

    fn call(&mut self, req: tonic::Request<SpanCount>) -> Self::Future {
        self.0.count_spans(req.get_ref().spans());
        ready(Ok(tonic::Response::new(
            ExportTraceServiceResponse::default(),
        )))
    }
}

impl<B> Service<http::Request<B>> for CountingTraceService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let store = self.0.clone();
        Box::pin(async move {
            if req.uri().path() != EXPORT {
                return Ok(tonic::Status::unimplemented(req.uri().path().to_string()).into_http());
            }
            let codec = tonic_prost::ProstCodec::<ExportTraceServiceResponse, SpanCount>::default();
            Ok(tonic::server::Grpc::new(codec)
                .unary(Export(store), req)
                .await)
        })
    }
}
