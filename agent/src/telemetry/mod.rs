//! Stage 5, telemetry: linked records to spans (semantic conventions, ids
//! as correlation decided) and to RED and service-graph metrics. Metrics
//! are recorded for every record; spans only for sampled ones.
pub mod graph;
pub mod red;

use crate::{
    clock::Clock,
    correlation::{Item, Linked},
    metrics::SharedRegistry,
    protocols::amqp::{AmqpOut, Message},
    spans::{self, http::HttpSpanOptions, ResourceBuilder, Span},
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
    /// When metric series were last checked for expiry.
    expired_at: std::time::Instant,
    pub counts: TelemetryCounts,
}

/// How often metric series are checked for expiry.
const EXPIRY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Telemetry {
    pub fn new(resources: ResourceBuilder, registry: SharedRegistry, clock: Clock, http_opts: HttpSpanOptions) -> Telemetry {
        Telemetry {
            resources,
            registry,
            clock,
            http_opts,
            graph: graph::Pending::default(),
            expired_at: std::time::Instant::now(),
            counts: TelemetryCounts::default(),
        }
    }

    /// Entries dropped by telemetry's bounded indexes: (server halves of
    /// graph edges, cached resources).
    pub fn drops(&self) -> (u64, u64) {
        (self.graph.evicted, self.resources.evicted)
    }

    pub fn len(&self) -> usize {
        self.graph.len()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.len() == 0
    }

    /// Removes metric series not recorded within `ttl` (checked every 10 s).
    pub fn expire_series(&mut self, now: std::time::Instant, ttl: std::time::Duration) {
        if now.saturating_duration_since(self.expired_at) < EXPIRY_EVERY {
            return;
        }
        self.expired_at = now;
        self.registry.lock().unwrap_or_else(|e| e.into_inner()).expire(now, ttl);
    }

    /// Builds the span and records the metrics of one linked record.
    pub fn on_linked(&mut self, l: Linked, spans: &mut Vec<Span>) {
        let Linked { conn, ctx, evidence, item } = l;
        let resource = self.resources.get(&conn.process);
        let registry = self.registry.clone();
        let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut span = match &item {
            Item::Http { exchange, peer } => {
                self.counts.http_exchanges += 1;
                let span = spans::http::build(&conn, exchange, &ctx, &self.clock, self.http_opts, resource.clone());
                red::http(&mut reg, &conn, exchange, span.duration_secs(), &resource);
                if conn.role == crate::event::Role::Server {
                    if let Some(parent) = ctx.parent_span_id {
                        self.graph.pend(parent, resource.service_name.clone(), span.duration_secs(), span.is_error());
                    }
                } else {
                    let peer = peer.as_ref().map(|p| self.resources.get(p));
                    self.graph.client_done(&mut reg, &conn, &span, &resource, peer.as_deref(), "virtual_node");
                }
                span
            }
            Item::Db { call, peer } => {
                self.counts.db_calls += 1;
                let span = spans::db::build(&conn, call, &ctx, &self.clock, resource.clone());
                red::db(&mut reg, &conn, call, span.duration_secs(), &resource);
                let peer = peer.as_ref().map(|p| self.resources.get(p));
                self.graph.client_done(&mut reg, &conn, &span, &resource, peer.as_deref(), "database");
                span
            }
            Item::Publish(op) => {
                self.counts.messaging_ops += 1;
                let AmqpOut::Published { msg, first, last, confirmed, returned, .. } = op.as_ref() else { return };
                let span = spans::messaging::publish(&conn, msg, *first, *last, *confirmed, returned, &ctx, &self.clock, resource.clone());
                let error = red::publish_error(*confirmed, returned);
                red::messaging(&mut reg, red::Messaging::Publish, &msg.exchange, span.duration_secs(), error.as_deref(), &resource);
                span
            }
            Item::Process(d) => {
                self.counts.messaging_ops += 1;
                let span = spans::messaging::consume(
                    &conn, &d.msg, d.queue.as_deref(), Some(d.delivery_tag), "process", Some(d.outcome), d.start_ns, d.end_ns, &ctx, &self.clock, resource.clone(),
                );
                let dest = d.queue.clone().unwrap_or_default();
                red::messaging(&mut reg, red::Messaging::Process, &dest, span.duration_secs(), None, &resource);
                if let Some(p) = &d.publish {
                    let failed = !matches!(d.outcome, crate::protocols::amqp::Outcome::Ack | crate::protocols::amqp::Outcome::AutoAck);
                    let producer = self.resources.get(&p.producer);
                    let consumer = resource.service_name.clone();
                    graph::record_edge(&mut reg, &producer, consumer, "messaging_system", failed, p.secs, Some(span.duration_secs()));
                }
                span
            }
            Item::Receive(op) => {
                self.counts.messaging_ops += 1;
                let AmqpOut::Received { queue, msg, delivery_tag, first, last, .. } = op.as_ref() else { return };
                let empty = Message::default();
                let m = msg.as_ref().unwrap_or(&empty);
                let span = spans::messaging::consume(
                    &conn, m, Some(queue), *delivery_tag, "receive", None, first.enter_ns, last.exit_ns, &ctx, &self.clock, resource.clone(),
                );
                red::messaging(&mut reg, red::Messaging::Get { got: msg.is_some() }, queue, span.duration_secs(), None, &resource);
                span
            }
        };
        drop(reg);
        if ctx.parent_span_id.is_some() || evidence == crate::correlation::Evidence::Ambiguous {
            span.attributes.push(("sonde.link.evidence", evidence.as_str().into()));
        }
        tracing::debug!(name = %span.name, kind = span.kind.as_str(), trace = %spans::hex(&span.trace_id), sampled = ctx.sampled, "span");
        if ctx.sampled {
            spans.push(span);
        } else {
            self.counts.spans_sampled_out += 1;
        }
    }
}
