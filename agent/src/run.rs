//! `sonde run`: the daemon. Capture session -> protocol stage -> spans to
//! stdout and/or OTLP, RED metrics to Prometheus and/or OTLP.
use std::{
    process::ExitCode,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use crate::{
    cli::RunArgs,
    clock::{monotonic_now, Clock},
    config::{self, FileConfig},
    export::{batch, otlp, proto},
    metrics::{Registry, SharedRegistry},
    pipeline::{self, Pipeline, PipelineConfig},
    protocols::dispatch::{Command, Exclusions, PARSER_BUDGET},
    session::Session,
    spans::ResourceBuilder,
};

/// Everything after SIGINT/SIGTERM, flushes included, stays under this.
const SHUTDOWN_BUDGET: Duration = Duration::from_millis(4500);

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("sonde: {msg}");
    ExitCode::FAILURE
}

pub async fn run(args: RunArgs) -> ExitCode {
    run_agent(args, false).await
}

/// `sonde top` without --connect: the agent, drawing its view on the
/// terminal instead of printing spans.
pub async fn top(args: RunArgs) -> ExitCode {
    if let Err(e) = crate::top::check_terminal() {
        return fail(format!("top: {e}"));
    }
    run_agent(args, true).await
}

async fn run_agent(args: RunArgs, screen: bool) -> ExitCode {
    crate::memory::fix_mmap_threshold();
    let file = match &args.config {
        Some(p) => match FileConfig::load(p) {
            Ok(f) => f,
            Err(e) => return fail(e),
        },
        None => FileConfig::default(),
    };
    let mut cfg = match config::resolve(&args.flags(), &file, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if screen {
        // The terminal is the screen's.
        cfg.stdout = None;
    }
    let view_listener = match cfg.view_listen {
        Some(a) => match crate::view::serve::bind(a).await {
            Ok(l) => Some(l),
            // Not asked for: another agent (or `sonde top`) may hold it.
            Err(e) if cfg.view_listen_default => {
                tracing::warn!("{e}; the view endpoint is off");
                None
            }
            Err(e) => return fail(e),
        },
        None => None,
    };
    let view = if screen {
        Some(crate::view::Shared::always_on())
    } else {
        view_listener
            .as_ref()
            .map(|_| crate::view::Shared::on_demand())
    };
    let listener = match cfg.prometheus_listen {
        Some(a) => match crate::metrics::prometheus::bind(a).await {
            Ok(l) => Some(l),
            Err(e) => return fail(e),
        },
        None => None,
    };
    let mut session_cfg = args.capture.session_config();
    session_cfg.probes.inject = cfg.inject.clone();
    let mut session = match Session::start(session_cfg) {
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
                let (q, task) = batch::spawn(
                    Arc::new(c),
                    cfg.batch.clone(),
                    export_stats.clone(),
                    stop_rx.clone(),
                    Duration::from_secs(3),
                );
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
                Some(tokio::spawn(metric_loop(
                    c,
                    registry.clone(),
                    clock,
                    cfg.metric_interval,
                    export_stats.clone(),
                    stop_rx.clone(),
                )))
            }
            Err(e) => return fail(e),
        },
        None => None,
    };

    // Container names and images, for resources (absent engines degrade to ids).
    let metadata = crate::metadata::SharedStore::default();
    let docker_task = tokio::spawn(crate::metadata::docker::follow(
        metadata.clone(),
        crate::metadata::docker::socket_path(),
    ));
    let kube_task = tokio::spawn(crate::metadata::kube::start(
        metadata.clone(),
        std::env::var("SONDE_NODE_NAME").ok(),
    ));
    let pipeline = Pipeline::new(PipelineConfig {
        relay_processes: cfg.relay_processes.clone(),
        excluded: Exclusions {
            processes: cfg.exclude_processes.clone(),
            namespaces: cfg.exclude_namespaces.clone(),
        },
        metadata: Some(metadata),
        resources: ResourceBuilder::new(cfg.resource_attributes.clone()),
        registry: registry.clone(),
        sampler: cfg.sampler.clone(),
        http: cfg.http,
        nat_lookup: Box::new(crate::correlation::nat::lookup),
        parser_budget: PARSER_BUDGET,
        series_ttl: crate::metrics::SERIES_TTL,
    });
    // The one backward edge: connections to release, applied to the kernel.
    let (cmd_tx, mut cmd_rx) = tokio::sync::mpsc::channel::<Command>(4096);
    let mut apply = session.commander();
    let commands_task = tokio::spawn(async move {
        while let Some(cmd) = cmd_rx.recv().await {
            apply(cmd);
        }
    });
    let (pipe_stop_tx, pipe_stop_rx) = tokio::sync::watch::channel(false);
    let idle = args.capture.session_config().poll_interval * 3;
    let sinks = pipeline::Sinks {
        stdout: cfg.stdout.map(crate::export::stdout::Printer::stdout),
        queue: span_queue,
        view: view.clone(),
    };
    let (pipe, mut pipe_done, pipe_stats) = match pipeline::spawn(
        pipeline,
        session.take_events(),
        sinks,
        cmd_tx,
        pipe_stop_rx,
        idle,
    ) {
        Ok(p) => p,
        Err(e) => return fail(format!("cannot start the pipeline thread: {e}")),
    };
    let prometheus = listener.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(l) = listener {
        let addr = l.local_addr().ok();
        let health = crate::health::health_fn(
            session.stats.clone(),
            session.kernel_stats(),
            pipe_stats,
            export_stats.clone(),
            registry.clone(),
        );
        tracing::info!(?addr, "serving Prometheus metrics at /metrics");
        let reg = registry.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::prometheus::serve(l, reg, health).await {
                tracing::error!("Prometheus endpoint stopped: {e}");
            }
        });
    }
    let view_addr = view_listener.as_ref().and_then(|l| l.local_addr().ok());
    if let (Some(l), Some(v)) = (view_listener, &view) {
        let v = v.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::view::serve::serve(l, v).await {
                tracing::error!("view endpoint stopped: {e}");
            }
        });
    }
    if !screen {
        eprint!(
            "{}",
            crate::status::Status {
                probes: &session.probe_report,
                pids: &args.capture.pids,
                cgroups: &args.capture.cgroups,
                cfg: &cfg,
                prometheus,
                view: view_addr,
                tls: !args.capture.no_tls_probes,
            }
            .render()
        );
    }
    // `sonde top`: the screen runs until `q`, or until the agent stops.
    let screen_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut screen_task = match (&view, screen) {
        (Some(v), true) => {
            let (v, stop) = (v.clone(), screen_stop.clone());
            crate::top::SCREEN.store(true, Relaxed);
            Some(tokio::task::spawn_blocking(move || {
                crate::top::run_screen(crate::top::Source::Local(v), "local".into(), stop)
            }))
        }
        _ => None,
    };
    let attached = session
        .probe_report
        .iter()
        .filter(|p| p.state == crate::probes::AttachState::Attached)
        .count();
    tracing::info!(probes = attached, "capturing; Ctrl-C or SIGTERM to stop");
    // Start-up (BTF, the object's load, the first scans) is done: what it
    // freed goes back to the kernel (`memory.rs`).
    crate::memory::release();

    let stop = shutdown_signal();
    tokio::pin!(stop);
    let quit = async {
        match screen_task.as_mut() {
            Some(t) => t.await,
            None => std::future::pending().await,
        }
    };
    let mut screen_failed = None;
    let mut screen_done = false;
    let stopped = tokio::select! {
        _ = &mut stop => true,
        _ = &mut pipe_done => false,
        r = quit => {
            screen_done = true;
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => screen_failed = Some(e),
                Err(e) => screen_failed = Some(format!("the screen thread failed: {e}")),
            }
            true
        }
    };
    // The terminal is given back before anything more is said on it.
    screen_stop.store(true, Relaxed);
    if let Some(t) = screen_task.take().filter(|_| !screen_done) {
        if let Ok(Err(e)) = t.await {
            screen_failed = Some(e);
        }
    }
    crate::top::SCREEN.store(false, Relaxed);
    if stopped {
        tracing::info!("shutting down: flushing spans and metrics");
    }
    // Events already captured still deserve spans: the pipeline drains
    // until the stream has been idle for a few reader polls (bounded).
    let _ = pipe_stop_tx.send(true);
    let ended = tokio::task::spawn_blocking(move || pipe.join()).await;
    let failure = match ended {
        Ok(Ok(pipeline::Ended::Stopped)) => None,
        Ok(Ok(pipeline::Ended::InputClosed)) => Some(
            session
                .failure()
                .unwrap_or_else(|| "the capture stream closed unexpectedly".into()),
        ),
        Ok(Err(panic)) => Some(format!(
            "the pipeline thread panicked: {}",
            panic_message(&panic)
        )),
        Err(e) => Some(format!("the pipeline thread could not be joined: {e}")),
    };
    commands_task.abort();
    drop(session); // detach the probes
    docker_task.abort();
    kube_task.abort();
    let _ = stop_tx.send(true);
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
    let failure = failure.or(screen_failed);
    match failure {
        None => ExitCode::SUCCESS,
        Some(cause) => {
            tracing::error!("{cause}");
            fail(format!("stopped because of a failure: {cause}"))
        }
    }
}

/// The text of a panic payload.
pub fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
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
            let reg = registry.lock().unwrap_or_else(|e| e.into_inner());
            proto::metrics(&reg, clock.unix_ns(monotonic_now()))
        };
        if !req.resource_metrics.is_empty() {
            let res = tokio::time::timeout(
                Duration::from_secs(if last { 1 } else { 30 }),
                client.export_metrics(req),
            )
            .await;
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

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
