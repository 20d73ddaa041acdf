//! The span export queue: bounded, batched, retried with backoff.
//!
//! Producers `try_send`; a full queue drops the span and counts it, so a
//! dead backend costs at most the queue plus one batch in memory. A batch
//! is retried while the error is retryable, up to `max_retry`; the queue
//! keeps absorbing (and, when full, dropping) meanwhile.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use tokio::{sync::mpsc, time::Instant};

use super::{
    otlp::{Client, ExportError},
    proto,
};
use crate::spans::Span;

#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// `OTEL_BSP_MAX_QUEUE_SIZE`
    pub max_queue: usize,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`
    pub max_batch: usize,
    /// `OTEL_BSP_SCHEDULE_DELAY`
    pub delay: Duration,
    /// How long one batch is retried before it is dropped.
    pub max_retry: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_queue: 2048,
            max_batch: 512,
            delay: Duration::from_secs(1),
            max_retry: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Default)]
pub struct ExportStats {
    pub spans_exported: AtomicU64,
    /// Dropped because the queue was full.
    pub spans_dropped_queue: AtomicU64,
    /// Dropped after a permanent error or too long retrying.
    pub spans_dropped_failed: AtomicU64,
    /// Failed export attempts (traces).
    pub trace_export_failures: AtomicU64,
    pub metric_exports: AtomicU64,
    pub metric_export_failures: AtomicU64,
}

/// The producer side.
#[derive(Clone)]
pub struct SpanQueue {
    tx: mpsc::Sender<Span>,
    stats: Arc<ExportStats>,
}

impl SpanQueue {
    pub fn push(&self, s: Span) {
        if self.tx.try_send(s).is_err() {
            self.stats.spans_dropped_queue.fetch_add(1, Relaxed);
        }
    }
}

/// Starts the export task. It ends after `shutdown` fires, once it has
/// flushed what is queued (one attempt each, bounded by `flush_deadline`).
pub fn spawn(
    client: Arc<Client>,
    cfg: BatchConfig,
    stats: Arc<ExportStats>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    flush_deadline: Duration,
) -> (SpanQueue, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Span>(cfg.max_queue.max(1));
    let queue = SpanQueue {
        tx,
        stats: stats.clone(),
    };
    let task = tokio::spawn(async move {
        let mut batch: Vec<Span> = Vec::with_capacity(cfg.max_batch);
        loop {
            // Wait for a first span, then fill the batch until size or delay.
            tokio::select! {
                s = rx.recv() => match s { Some(s) => batch.push(s), None => break },
                _ = shutdown.changed() => break,
            }
            let until = Instant::now() + cfg.delay;
            while batch.len() < cfg.max_batch {
                tokio::select! {
                    s = rx.recv() => match s { Some(s) => batch.push(s), None => break },
                    _ = tokio::time::sleep_until(until) => break,
                    _ = shutdown.changed() => break,
                }
            }
            if !export_with_retry(&client, &batch, &cfg, &stats, &mut shutdown).await {
                break;
            }
            batch.clear();
            if *shutdown.borrow() {
                break;
            }
        }
        // Flush: what is in the batch and the queue, one try each.
        rx.close();
        while let Ok(s) = rx.try_recv() {
            batch.push(s);
        }
        let end = Instant::now() + flush_deadline;
        for chunk in batch.chunks(cfg.max_batch.max(1)) {
            let left = end.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, client.export_traces(proto::traces(chunk))).await {
                Ok(Ok(())) => {
                    stats.spans_exported.fetch_add(chunk.len() as u64, Relaxed);
                }
                _ => {
                    stats.trace_export_failures.fetch_add(1, Relaxed);
                    stats
                        .spans_dropped_failed
                        .fetch_add(chunk.len() as u64, Relaxed);
                }
            }
        }
    });
    (queue, task)
}

/// Exports one batch, retrying retryable errors with exponential backoff.
/// Returns false if shutdown interrupted it (the batch is then flushed).
async fn export_with_retry(
    client: &Client,
    batch: &[Span],
    cfg: &BatchConfig,
    stats: &ExportStats,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(500);
    let mut logged = false;
    loop {
        match client.export_traces(proto::traces(batch)).await {
            Ok(()) => {
                stats.spans_exported.fetch_add(batch.len() as u64, Relaxed);
                if logged {
                    tracing::info!(url = %client.target().url, "OTLP trace export recovered");
                }
                return true;
            }
            Err(e) => {
                stats.trace_export_failures.fetch_add(1, Relaxed);
                if !logged {
                    tracing::warn!("{e}");
                    logged = true;
                }
                let give_up =
                    matches!(e, ExportError::Permanent(_)) || started.elapsed() >= cfg.max_retry;
                if give_up {
                    stats
                        .spans_dropped_failed
                        .fetch_add(batch.len() as u64, Relaxed);
                    return true;
                }
            }
        }
        // Jitter keeps a fleet of agents from retrying in lockstep.
        let jitter =
            Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 4 + 1));
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = shutdown.changed() => return false,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
