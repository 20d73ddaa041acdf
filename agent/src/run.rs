//! `sonde run`: the daemon. Capture session -> protocol stage -> spans to
//! stdout and/or OTLP, RED metrics to Prometheus and/or OTLP.
use std::{
    process::ExitCode,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use crate::{
    cli::RunArgs,
    config::{self, FileConfig, RunConfig},
    export::{batch, otlp, proto, stdout},
    l7::{Exclusions, L7Stats, L7},
    relay::Relays,
    metrics::{prometheus::HealthMetric, Registry, SharedRegistry},
    output::Clock,
    probes::KernelStats,
    session::Session,
    spans::ResourceBuilder,
    stats::Stats,
};

/// Everything after SIGINT/SIGTERM, flushes included, stays under this.
const SHUTDOWN_BUDGET: Duration = Duration::from_millis(4500);

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("sonde: {msg}");
    ExitCode::FAILURE
}

pub async fn run(args: RunArgs) -> ExitCode {
    let file = match &args.config {
        Some(p) => match FileConfig::load(p) {
            Ok(f) => f,
            Err(e) => return fail(e),
        },
        None => FileConfig::default(),
    };
    let cfg = match config::resolve(&args.flags(), &file, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let listener = match cfg.prometheus_listen {
        Some(a) => match crate::metrics::prometheus::bind(a).await {
            Ok(l) => Some(l),
            Err(e) => return fail(e),
        },
        None => None,
    };
    let mut session = match Session::start(args.capture.session_config()) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let clock = Clock::new();
    let registry = Registry::shared(clock.unix_ns(monotonic_now()));
    let export_stats = Arc::new(batch::ExportStats::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let mut tasks = vec![];
    let span_queue = match &cfg.traces {
        Some(t) => match otlp::Client::new(t.clone()) {
            Ok(c) => {
                tracing::info!(url = %t.url, protocol = ?t.protocol, "exporting traces over OTLP");
                let (q, task) =
                    batch::spawn(Arc::new(c), cfg.batch.clone(), export_stats.clone(), stop_rx.clone(), Duration::from_secs(3));
                tasks.push(task);
                Some(q)
            }
            Err(e) => return fail(e),
        },
        None => None,
    };
    let metrics_task = match &cfg.metrics {
        Some(t) => match otlp::Client::new(t.clone()) {
            Ok(c) => {
                tracing::info!(url = %t.url, interval = ?cfg.metric_interval, "exporting metrics over OTLP");
                Some(tokio::spawn(metric_loop(c, registry.clone(), clock, cfg.metric_interval, export_stats.clone(), stop_rx.clone())))
            }
            Err(e) => return fail(e),
        },
        None => None,
    };

    // Container names and images, for resources (absent engines degrade to ids).
    let metadata = crate::metadata::SharedStore::default();
    let docker_task = tokio::spawn(crate::metadata::docker::follow(metadata.clone(), crate::metadata::docker::socket_path()));
    let kube_task = tokio::spawn(crate::metadata::kube::start(metadata.clone(), std::env::var("SONDE_NODE_NAME").ok()));
    let mut l7 = L7::new(
        Relays::new(cfg.relay_processes.clone()),
        Exclusions { processes: cfg.exclude_processes.clone(), namespaces: cfg.exclude_namespaces.clone() },
        ResourceBuilder::new(cfg.resource_attributes.clone()).with_metadata(metadata),
        registry.clone(),
        cfg.sampler.clone(),
        cfg.http,
        Box::new(session.releaser()),
    );
    if let Some(l) = listener {
        let addr = l.local_addr().ok();
        let health = health_fn(session.stats.clone(), session.kernel_stats(), l7.stats.clone(), export_stats.clone(), registry.clone());
        tracing::info!(?addr, "serving Prometheus metrics at /metrics");
        let reg = registry.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::prometheus::serve(l, reg, health).await {
                tracing::error!("Prometheus endpoint stopped: {e}");
            }
        });
    }
    describe(&cfg);
    let attached = session.probe_report.iter().filter(|p| p.state == crate::probes::AttachState::Attached).count();
    tracing::info!(probes = attached, "capturing; Ctrl-C or SIGTERM to stop");

    let stop = shutdown_signal();
    tokio::pin!(stop);
    let mut spans = vec![];
    // Server spans held for a late client go out when their wait is over.
    let mut held_tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            ev = session.events.recv() => match ev {
                Some(ev) => l7.on_event(ev, &mut spans),
                None => break,
            },
            _ = held_tick.tick() => l7.release_held(Some(std::time::Instant::now()), &mut spans),
            _ = &mut stop => break,
        }
        deliver(&mut spans, cfg.stdout, span_queue.as_ref());
    }
    tracing::info!("shutting down: flushing spans and metrics");
    // Events already captured still deserve spans: drain until the stream
    // has been idle for a few reader polls (bounded).
    let idle = args.capture.session_config().poll_interval * 3;
    let drain_until = tokio::time::Instant::now() + Duration::from_millis(1000);
    while let Ok(Some(ev)) = tokio::time::timeout_at(drain_until.min(tokio::time::Instant::now() + idle), session.events.recv()).await {
        l7.on_event(ev, &mut spans);
    }
    l7.release_held(None, &mut spans);
    deliver(&mut spans, cfg.stdout, span_queue.as_ref());
    drop(session); // detach the probes
    docker_task.abort();
    kube_task.abort();
    let _ = stop_tx.send(true);
    drop(span_queue);
    let flush = async {
        for t in tasks {
            let _ = t.await;
        }
        if let Some(m) = metrics_task {
            let _ = m.await;
        }
    };
    if tokio::time::timeout(SHUTDOWN_BUDGET, flush).await.is_err() {
        tracing::warn!("flush did not finish within {SHUTDOWN_BUDGET:?}; exiting anyway");
    }
    ExitCode::SUCCESS
}

/// Hands finished spans to the stdout printer and/or the OTLP queue.
fn deliver(spans: &mut Vec<crate::spans::Span>, to_stdout: bool, queue: Option<&batch::SpanQueue>) {
    for s in spans.drain(..) {
        if to_stdout {
            println!("{}", stdout::line(&s));
        }
        if let Some(q) = queue {
            q.push(s);
        }
    }
}

fn describe(cfg: &RunConfig) {
    if cfg.traces.is_none() {
        tracing::info!("no OTLP endpoint configured (OTEL_EXPORTER_OTLP_ENDPOINT or --otlp-endpoint): printing spans to stdout");
    }
}

fn monotonic_now() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

async fn metric_loop(
    client: otlp::Client,
    registry: SharedRegistry,
    clock: Clock,
    every: Duration,
    stats: Arc<batch::ExportStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let mut logged = false;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        let req = {
            let reg = registry.lock().expect("registry lock");
            proto::metrics(&reg, clock.unix_ns(monotonic_now()))
        };
        if !req.resource_metrics.is_empty() {
            let res = tokio::time::timeout(Duration::from_secs(if last { 1 } else { 30 }), client.export_metrics(req)).await;
            match res {
                Ok(Ok(())) => {
                    stats.metric_exports.fetch_add(1, Relaxed);
                    logged = false;
                }
                Ok(Err(e)) => {
                    stats.metric_export_failures.fetch_add(1, Relaxed);
                    if !logged {
                        tracing::warn!("{e}");
                        logged = true;
                    }
                }
                Err(_) => {
                    stats.metric_export_failures.fetch_add(1, Relaxed);
                }
            }
        }
        if last {
            return;
        }
    }
}

/// The agent's own counters, read at each scrape.
fn health_fn(
    stats: Arc<Stats>,
    kernel: Arc<KernelStats>,
    l7: Arc<L7Stats>,
    export: Arc<batch::ExportStats>,
    registry: SharedRegistry,
) -> Arc<dyn Fn() -> Vec<HealthMetric> + Send + Sync> {
    Arc::new(move || {
        let k = kernel.read();
        let u = stats.snapshot();
        let c = |name, help, labels: Vec<(&'static str, &str)>, v: u64| HealthMetric {
            name,
            help,
            kind: "counter",
            labels: labels.into_iter().map(|(a, b)| (a, b.to_string())).collect(),
            value: v as f64,
        };
        let drops = "Events dropped, by the stage that dropped them.";
        vec![
            c("sonde_kernel_events_total", "Records the kernel wrote to the ring buffer.", vec![], k.events),
            c("sonde_events_read_total", "Records user space read from the ring buffer.", vec![], u.ringbuf_records),
            c("sonde_dropped_total", drops, vec![("stage", "ringbuf")], k.ringbuf_drops),
            c("sonde_dropped_total", drops, vec![("stage", "reader_channel")], u.reader_channel_drops),
            c("sonde_dropped_total", drops, vec![("stage", "stream_channel")], u.stream_channel_drops),
            c("sonde_dropped_total", drops, vec![("stage", "export_queue")], export.spans_dropped_queue.load(Relaxed)),
            c("sonde_dropped_total", drops, vec![("stage", "export_failed")], export.spans_dropped_failed.load(Relaxed)),
            c("sonde_dropped_total", drops, vec![("stage", "metric_series_limit")], registry.lock().map(|r| r.refused_series).unwrap_or(0)),
            c("sonde_kernel_read_faults_total", "Faults copying user memory in the kernel.", vec![], k.read_faults),
            c("sonde_kernel_map_full_total", "Kernel map inserts refused.", vec![], k.map_full),
            c("sonde_decode_errors_total", "Ring buffer records that failed to decode.", vec![], u.decode_errors),
            c("sonde_parse_errors_total", "Protocol bytes rejected by a parser.", vec![("protocol", "http")], l7.http_parse_errors.load(Relaxed)),
            c("sonde_parse_errors_total", "Protocol bytes rejected by a parser.", vec![("protocol", "db")], l7.db_parse_errors.load(Relaxed)),
            c("sonde_parse_errors_total", "Protocol bytes rejected by a parser.", vec![("protocol", "amqp")], l7.amqp_parse_errors.load(Relaxed)),
            c("sonde_db_calls_total", "Database calls seen.", vec![], l7.db_calls.load(Relaxed)),
            c("sonde_db_unmatched_total", "Database requests or responses that could not be paired.", vec![], l7.db_unmatched.load(Relaxed)),
            c("sonde_http_unmatched_responses_total", "HTTP responses without a captured request.", vec![], l7.http_unmatched_responses.load(Relaxed)),
            c("sonde_http_unanswered_requests_total", "HTTP requests dropped without a response.", vec![], l7.http_unanswered_requests.load(Relaxed)),
            c("sonde_http_exchanges_total", "HTTP request/response pairs seen.", vec![], l7.http_exchanges.load(Relaxed)),
            c("sonde_released_connections_total", "Connections no parser recognised (payload copy stopped).", vec![], l7.released_connections.load(Relaxed)),
            c("sonde_late_partners_total", "Server requests stitched to a client record that arrived after them.", vec![("outcome", "adopted")], l7.late_partners_adopted.load(Relaxed)),
            c("sonde_late_partners_total", "Server requests stitched to a client record that arrived after them.", vec![("outcome", "missed")], l7.late_partners_missed.load(Relaxed)),
            c("sonde_nat_resolved_total", "Server connections matched to their client through conntrack (DNAT).", vec![], l7.nat_resolved.load(Relaxed)),
            c("sonde_calls_ambiguous_total", "Client calls left as roots because several requests in flight could have made them.", vec![], l7.calls_ambiguous.load(Relaxed)),
            c("sonde_spans_sampled_out_total", "Spans not exported by sampling decision.", vec![], l7.spans_sampled_out.load(Relaxed)),
            c("sonde_spans_exported_total", "Spans accepted by the OTLP backend.", vec![], export.spans_exported.load(Relaxed)),
            c("sonde_export_failures_total", "Failed OTLP export attempts.", vec![("signal", "traces")], export.trace_export_failures.load(Relaxed)),
            c("sonde_export_failures_total", "Failed OTLP export attempts.", vec![("signal", "metrics")], export.metric_export_failures.load(Relaxed)),
            c("sonde_connections_opened_total", "TCP connections tracked.", vec![], u.connections_opened),
            c("sonde_connections_closed_total", "TCP connections closed.", vec![], u.connections_closed),
            c("sonde_unresolved_sockets_total", "Sockets whose tuple could not be found.", vec![], u.unresolved_sockets),
        ]
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
