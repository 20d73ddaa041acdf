//! Stage 5, telemetry: linked records to spans (semantic conventions, ids
//! as correlation decided) and to RED and service-graph metrics. Metrics
//! are recorded for every record; spans only for sampled ones.
pub mod graph;
pub mod red;
pub mod self_time;

use std::sync::Arc;

use crate::{
    clock::Clock,
    connections::ConnInfo,
    correlation::{Evidence, Item, Linked},
    event::Role,
    metrics::SharedRegistry,
    protocols::{
        amqp::{AmqpOut, Message, Outcome},
        http::route,
    },
    spans::{self, http::HttpSpanOptions, Resource, ResourceBuilder, Span, SpanCtx},
};

/// Counters of the telemetry stage.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TelemetryCounts {
    pub http_exchanges: u64,
    pub db_calls: u64,
    pub messaging_ops: u64,
    pub spans_sampled_out: u64,
}

pub struct Telemetry {
    resources: ResourceBuilder,
    registry: SharedRegistry,
    clock: Clock,
    http_opts: HttpSpanOptions,
    graph: graph::Pending,
    self_time: self_time::SelfTime,
    /// When metric series were last checked for expiry.
    expired_at: std::time::Instant,
    pub counts: TelemetryCounts,
}

/// How often metric series are checked for expiry.
const EXPIRY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Telemetry {
    pub fn new(
        resources: ResourceBuilder,
        registry: SharedRegistry,
        clock: Clock,
        http_opts: HttpSpanOptions,
    ) -> Telemetry {
        Telemetry {
            resources,
            registry,
            clock,
            http_opts,
            graph: graph::Pending::default(),
            self_time: self_time::SelfTime::default(),
            expired_at: std::time::Instant::now(),
            counts: TelemetryCounts::default(),
        }
    }

    /// Entries dropped by telemetry's bounded indexes: (server halves of
    /// graph edges, cached resources, requests' pending calls).
    pub fn drops(&self) -> (u64, u64, u64) {
        (
            self.graph.evicted,
            self.resources.evicted,
            self.self_time.evicted,
        )
    }

    /// Entries held: (halves of graph edges, requests with pending calls).
    pub fn entries(&self) -> (usize, usize) {
        (self.graph.entries(), self.self_time.entries())
    }

    /// Ends the waits of graph-edge halves whose other half never came, and
    /// of calls whose request never ended.
    pub fn expire_waits(&mut self, now_ns: u64) {
        let registry = self.registry.clone();
        let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
        self.graph.expire(&mut reg, now_ns);
        self.self_time.expire(now_ns);
    }

    /// Removes metric series not recorded within `ttl` (checked every 10 s).
    pub fn expire_series(&mut self, now: std::time::Instant, ttl: std::time::Duration) {
        if now.saturating_duration_since(self.expired_at) < EXPIRY_EVERY {
            return;
        }
        self.expired_at = now;
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expire(now, ttl);
    }

    /// Records the metrics of one linked record, and builds its span if
    /// it is sampled (an unsampled record costs no span at all).
    pub fn on_linked(&mut self, l: Linked, spans: &mut Vec<Span>) {
        let Linked {
            conn,
            ctx,
            evidence,
            item,
        } = l;
        let resource = self.resources.get(&conn.process);
        // An HTTP request's route, for its metrics and its span.
        let route = match &item {
            Item::Http { exchange, .. } => route::route(&exchange.request.head.target),
            _ => String::new(),
        };
        let route = route.as_str();
        let registry = self.registry.clone();
        let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
        match &item {
            Item::Http {
                exchange: ex,
                peer,
                server_read,
            } => {
                self.counts.http_exchanges += 1;
                let server = conn.role == Role::Server;
                let start = if server {
                    ex.request.first.exit_ns
                } else {
                    ex.request.first.enter_ns
                };
                let secs = secs(start, ex.response.last.exit_ns);
                let failed = spans::http::exchange_failed(conn.role, ex);
                match ex.h2.as_ref().and_then(|h| h.grpc.as_ref()) {
                    Some(g) => red::rpc(&mut reg, &conn, ex, g, secs, &resource),
                    None => red::http(&mut reg, &conn, ex, route, secs, &resource),
                }
                let at = ex.response.last.exit_ns;
                if server {
                    let calls = self.self_time.request_done(ctx.span_id, start, at);
                    red::http_self(&mut reg, ex, route, own(secs, calls), &resource);
                    if let Some(parent) = ctx.parent_span_id {
                        self.graph
                            .server_done(&mut reg, parent, &resource, (secs, failed), at);
                    }
                } else {
                    self.self_time.call_done(ctx.parent_span_id, start, at);
                    let peer = peer.as_ref().map(|p| self.resources.get(p));
                    let wait = (*server_read, at);
                    self.graph.client_done(
                        &mut reg,
                        &conn,
                        ctx.span_id,
                        (secs, failed),
                        &resource,
                        peer.as_ref(),
                        "virtual_node",
                        wait,
                    );
                }
            }
            Item::Db { call, peer } => {
                self.counts.db_calls += 1;
                let secs = secs(call.first.enter_ns, call.last.exit_ns);
                red::db(&mut reg, &conn, call, secs, &resource);
                self.self_time.call_done(
                    ctx.parent_span_id,
                    call.first.enter_ns,
                    call.last.exit_ns,
                );
                let peer = peer.as_ref().map(|p| self.resources.get(p));
                let done = (secs, call.error.is_some());
                let wait = (false, call.last.exit_ns);
                self.graph.client_done(
                    &mut reg,
                    &conn,
                    ctx.span_id,
                    done,
                    &resource,
                    peer.as_ref(),
                    "database",
                    wait,
                );
            }
            Item::Publish(op) => {
                self.counts.messaging_ops += 1;
                let AmqpOut::Published {
                    msg,
                    first,
                    last,
                    confirmed,
                    returned,
                    ..
                } = op.as_ref()
                else {
                    return;
                };
                self.self_time
                    .call_done(ctx.parent_span_id, first.enter_ns, last.exit_ns);
                let error = red::publish_error(*confirmed, returned);
                red::messaging(
                    &mut reg,
                    red::Messaging::Publish,
                    &msg.exchange,
                    secs(first.enter_ns, last.exit_ns),
                    error.as_deref(),
                    &resource,
                );
            }
            Item::Process(d) => {
                self.counts.messaging_ops += 1;
                let secs = secs(d.start_ns, d.end_ns);
                let dest = d.queue.clone().unwrap_or_default();
                red::messaging(
                    &mut reg,
                    red::Messaging::Process,
                    &dest,
                    secs,
                    None,
                    &resource,
                );
                let calls = self
                    .self_time
                    .request_done(ctx.span_id, d.start_ns, d.end_ns);
                red::process_self(&mut reg, &dest, own(secs, calls), &resource);
                if let Some(p) = &d.publish {
                    let failed =
                        !matches!(d.outcome, Outcome::Ack | Outcome::AutoAck | Outcome::Lost);
                    let producer = self.resources.get(&p.producer);
                    graph::record_edge(
                        &mut reg,
                        &producer,
                        &resource.service_name,
                        "messaging_system",
                        failed,
                        p.secs,
                        Some(secs),
                    );
                }
            }
            Item::Receive(op) => {
                self.counts.messaging_ops += 1;
                let AmqpOut::Received {
                    queue,
                    msg,
                    first,
                    last,
                    ..
                } = op.as_ref()
                else {
                    return;
                };
                self.self_time
                    .call_done(ctx.parent_span_id, first.enter_ns, last.exit_ns);
                let got = msg.is_some();
                red::messaging(
                    &mut reg,
                    red::Messaging::Get { got },
                    queue,
                    secs(first.enter_ns, last.exit_ns),
                    None,
                    &resource,
                );
            }
        }
        drop(reg);
        if !ctx.sampled {
            self.counts.spans_sampled_out += 1;
            return;
        }
        let Some(mut span) = self.build(&conn, &ctx, item, route, resource) else {
            return;
        };
        if ctx.parent_span_id.is_some() || evidence == Evidence::Ambiguous {
            span.attributes
                .push(("sonde.link.evidence", evidence.as_str().into()));
        }
        tracing::debug!(name = %span.name, kind = span.kind.as_str(), trace = %spans::hex(&span.trace_id), "span");
        spans.push(span);
    }

    fn build(
        &self,
        conn: &ConnInfo,
        ctx: &SpanCtx,
        item: Item,
        route: &str,
        resource: Arc<Resource>,
    ) -> Option<Span> {
        let clock = &self.clock;
        // The item is spent here: a database call's strings move into its
        // span instead of being copied.
        Some(match item {
            Item::Http { exchange, .. } => match exchange.h2.as_ref().and_then(|h| h.grpc.as_ref())
            {
                Some(g) => spans::rpc::build(conn, &exchange, g, ctx, clock, resource),
                None => {
                    spans::http::build(conn, &exchange, route, ctx, clock, self.http_opts, resource)
                }
            },
            Item::Db { call, .. } => spans::db::build(conn, *call, ctx, clock, resource),
            Item::Publish(op) => {
                let AmqpOut::Published {
                    msg,
                    first,
                    last,
                    confirmed,
                    returned,
                    ..
                } = op.as_ref()
                else {
                    return None;
                };
                spans::messaging::publish(
                    conn, msg, *first, *last, *confirmed, returned, ctx, clock, resource,
                )
            }
            Item::Process(d) => spans::messaging::consume(
                conn,
                &d.msg,
                d.queue.as_deref(),
                Some(d.delivery_tag),
                "process",
                Some(d.outcome),
                d.start_ns,
                d.end_ns,
                ctx,
                clock,
                resource,
            ),
            Item::Receive(op) => {
                let AmqpOut::Received {
                    queue,
                    msg,
                    delivery_tag,
                    first,
                    last,
                    ..
                } = op.as_ref()
                else {
                    return None;
                };
                let empty = Message::default();
                let m = msg.as_ref().unwrap_or(&empty);
                spans::messaging::consume(
                    conn,
                    m,
                    Some(queue),
                    *delivery_tag,
                    "receive",
                    None,
                    first.enter_ns,
                    last.exit_ns,
                    ctx,
                    clock,
                    resource,
                )
            }
        })
    }
}

/// A request's own seconds: its duration less the nanoseconds its calls
/// covered.
fn own(secs: f64, calls_ns: u64) -> f64 {
    (secs - calls_ns as f64 / 1e9).max(0.0)
}

/// Seconds from `start` to `end` (CLOCK_MONOTONIC ns; an end before its
/// start, from clocks of two CPUs, is zero).
fn secs(start: u64, end: u64) -> f64 {
    end.saturating_sub(start) as f64 / 1e9
}
