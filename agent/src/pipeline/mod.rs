//! The user-space stages after the connection table, in order: protocol
//! dispatch -> correlation -> telemetry, and the thread they run on.
//!
//! They run on one dedicated OS thread, off the async runtime, fed in
//! batches from the connection table's channel; spans leave through the
//! export sinks, and the one backward edge (release a connection) leaves as
//! [`Command`]s on a channel of its own.
mod thread;

pub use thread::{spawn, Ended, Sinks};

use std::sync::{
    atomic::{AtomicU64, Ordering::Relaxed},
    Arc,
};

use crate::{
    clock::Clock,
    connections::StreamEvent,
    correlation::{relay::Relays, stitch::NatLookup, Ambiguity, Correlator, Counts, Drops, Linked},
    metadata::SharedStore,
    metrics::SharedRegistry,
    protocols::dispatch::{Command, DispatchStats, Dispatcher, Exclusions, Flow, PARSER_BUDGET},
    spans::{http::HttpSpanOptions, sampler::Sampler, ResourceBuilder, Span},
    telemetry::{Telemetry, TelemetryCounts},
};

/// What the pipeline needs besides its inputs.
pub struct PipelineConfig {
    /// Relay processes (by name), seen through rather than parsed.
    pub relay_processes: Vec<String>,
    pub excluded: Exclusions,
    pub metadata: Option<SharedStore>,
    pub resources: ResourceBuilder,
    pub registry: SharedRegistry,
    pub sampler: Sampler,
    pub http: HttpSpanOptions,
    pub nat_lookup: NatLookup,
    /// Global budget for parser state, in bytes.
    pub parser_budget: usize,
    /// Metric series not recorded for this long are removed.
    pub series_ttl: std::time::Duration,
}

impl PipelineConfig {
    /// Defaults for tests and tools: no relays, exclusions or metadata.
    pub fn new(registry: SharedRegistry, sampler: Sampler) -> PipelineConfig {
        PipelineConfig {
            relay_processes: vec![],
            excluded: Exclusions::default(),
            metadata: None,
            resources: ResourceBuilder::new(vec![]),
            registry,
            sampler,
            http: HttpSpanOptions::default(),
            nat_lookup: Box::new(|_, _| None),
            parser_budget: PARSER_BUDGET,
            series_ttl: crate::metrics::SERIES_TTL,
        }
    }
}

/// The indexes `sonde_pipeline_entries{index}` reports.
pub const ENTRY_INDEXES: [&str; 12] = [
    "connections",
    "in_flight",
    "stitch_queued",
    "stitch_clients",
    "stitch_waiting",
    "stitch_servers",
    "stitch_nat",
    "held",
    "deliveries",
    "graph_pending",
    "tick_threads",
    "self_time_pending",
];

/// Counters of the stages, published after every batch for `/metrics`.
#[derive(Debug, Default)]
pub struct PipelineStats {
    pub dispatch: Arc<DispatchStats>,
    correlation: [AtomicU64; 13],
    counts: [AtomicU64; 7 + Ambiguity::ALL.len()],
    telemetry: [AtomicU64; 4],
    graph_evicted: AtomicU64,
    resources_evicted: AtomicU64,
    self_time_evicted: AtomicU64,
    /// Release commands dropped because the command channel was full.
    pub commands_dropped: AtomicU64,
    /// Entries held by the stages' indexes now, per [`ENTRY_INDEXES`].
    pub entries: [AtomicU64; 12],
}

impl PipelineStats {
    pub fn drops(&self) -> Drops {
        let d = |i: usize| self.correlation[i].load(Relaxed);
        Drops {
            in_flight: d(0),
            stitch_queue: d(1),
            stitch_full: d(2),
            late_partners_missed: d(3),
            nat_cache: d(4),
            node_ips: d(5),
            server_index: d(6),
            held_early: d(7),
            deliveries: d(8),
            continuity: d(9),
            tick_marks: d(10),
            handoffs: d(11),
            kernel_contexts: d(12),
        }
    }

    pub fn counts(&self) -> Counts {
        let c = |i: usize| self.counts[i].load(Relaxed);
        Counts {
            late_partners_adopted: c(0),
            nat_resolved: c(1),
            handoffs_unmatched: c(2),
            injected_agreed: c(3),
            injected_disagreed: c(4),
            partnerless: c(5),
            partners_not_come: c(6),
            ambiguous: std::array::from_fn(|i| c(7 + i)),
        }
    }

    pub fn telemetry(&self) -> TelemetryCounts {
        let t = |i: usize| self.telemetry[i].load(Relaxed);
        TelemetryCounts {
            http_exchanges: t(0),
            db_calls: t(1),
            messaging_ops: t(2),
            spans_sampled_out: t(3),
        }
    }

    /// (graph halves, cached resources, requests' pending calls) evicted.
    pub fn telemetry_drops(&self) -> (u64, u64, u64) {
        (
            self.graph_evicted.load(Relaxed),
            self.resources_evicted.load(Relaxed),
            self.self_time_evicted.load(Relaxed),
        )
    }
}

pub struct Pipeline {
    dispatch: Dispatcher,
    correlation: Correlator,
    telemetry: Telemetry,
    flows: Vec<Flow>,
    linked: Vec<Linked>,
    series_ttl: std::time::Duration,
    pub stats: Arc<PipelineStats>,
}

impl Pipeline {
    pub fn new(cfg: PipelineConfig) -> Pipeline {
        let dispatch = Dispatcher::new(
            cfg.relay_processes,
            cfg.excluded,
            cfg.metadata.clone(),
            cfg.parser_budget,
        );
        let resources = match cfg.metadata {
            Some(m) => cfg.resources.with_metadata(m),
            None => cfg.resources,
        };
        let stats = Arc::new(PipelineStats {
            dispatch: dispatch.stats.clone(),
            ..Default::default()
        });
        Pipeline {
            dispatch,
            correlation: Correlator::new(Relays::default(), cfg.sampler, cfg.nat_lookup),
            telemetry: Telemetry::new(resources, cfg.registry, Clock::new(), cfg.http),
            flows: vec![],
            linked: vec![],
            series_ttl: cfg.series_ttl,
            stats,
        }
    }

    /// One stream event through every stage, at `now_ns` (CLOCK_MONOTONIC).
    pub fn on_event(
        &mut self,
        ev: StreamEvent,
        now_ns: u64,
        spans: &mut Vec<Span>,
        commands: &mut Vec<Command>,
    ) {
        self.dispatch.on_event(ev, &mut self.flows, commands);
        for flow in self.flows.drain(..) {
            self.correlation.on_flow(flow, now_ns, &mut self.linked);
        }
        for l in self.linked.drain(..) {
            self.telemetry.on_linked(l, spans);
        }
    }

    /// Ends the holds that are over at `now_ns` (all, with None).
    pub fn release_held(&mut self, now_ns: Option<u64>, spans: &mut Vec<Span>) {
        self.telemetry
            .expire_series(std::time::Instant::now(), self.series_ttl);
        if let Some(now) = now_ns {
            self.telemetry.expire_waits(now);
        }
        self.correlation.release_held(now_ns, &mut self.linked);
        for l in self.linked.drain(..) {
            self.telemetry.on_linked(l, spans);
        }
    }

    /// Entries held by every stage's indexes (bounded, cleaned on close).
    pub fn entries(&self) -> [usize; 12] {
        let [in_flight, queued, clients, waits, servers, nat, holds, deliveries, ticks] =
            self.correlation.entries();
        let (graph, self_time) = self.telemetry.entries();
        [
            self.dispatch.len(),
            in_flight,
            queued,
            clients,
            waits,
            servers,
            nat,
            holds,
            deliveries,
            graph,
            ticks,
            self_time,
        ]
    }

    /// Copies the stages' counters where `/metrics` reads them.
    pub fn publish_stats(&self) {
        let s = &self.stats;
        let d = self.correlation.drops();
        let drops = [
            d.in_flight,
            d.stitch_queue,
            d.stitch_full,
            d.late_partners_missed,
            d.nat_cache,
            d.node_ips,
            d.server_index,
            d.held_early,
            d.deliveries,
            d.continuity,
            d.tick_marks,
            d.handoffs,
            d.kernel_contexts,
        ];
        for (a, v) in s.correlation.iter().zip(drops) {
            a.store(v, Relaxed);
        }
        let c = self.correlation.counts();
        let counts = [
            c.late_partners_adopted,
            c.nat_resolved,
            c.handoffs_unmatched,
            c.injected_agreed,
            c.injected_disagreed,
            c.partnerless,
            c.partners_not_come,
        ];
        for (a, v) in s.counts.iter().zip(counts.into_iter().chain(c.ambiguous)) {
            a.store(v, Relaxed);
        }
        let t = self.telemetry.counts;
        for (a, v) in s.telemetry.iter().zip([
            t.http_exchanges,
            t.db_calls,
            t.messaging_ops,
            t.spans_sampled_out,
        ]) {
            a.store(v, Relaxed);
        }
        let (graph, resources, self_time) = self.telemetry.drops();
        s.graph_evicted.store(graph, Relaxed);
        s.resources_evicted.store(resources, Relaxed);
        s.self_time_evicted.store(self_time, Relaxed);
        for (a, v) in s.entries.iter().zip(self.entries()) {
            a.store(v as u64, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests;
