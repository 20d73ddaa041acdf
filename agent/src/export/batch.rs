//! The span export queue: bounded, batched, retried with backoff.
//!
//! The pipeline hands over each round's spans in one message (one channel
//! operation and at most one wakeup per round, not per span); the queue is
//! bounded in spans, and what does not fit is dropped and counted, so a
//! dead backend costs at most the queue plus the batches in flight
//! (`max_concurrent`) in memory. A batch
//! is retried while the error is retryable, up to `max_retry`; the queue
//! keeps absorbing (and, when full, dropping) meanwhile.
use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use tokio::{sync::mpsc, time::Instant};

use super::{
    encode,
    otlp::{Client, ExportError},
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
    /// `OTEL_BSP_MAX_CONCURRENT_EXPORTS`: batches in flight at once. A node
    /// agent sends every process's spans, so one round trip at a time caps
    /// it at one batch per round trip; a few in flight keep the queue
    /// moving while one waits (order across batches is not kept).
    pub max_concurrent: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_queue: 2048,
            max_batch: 512,
            delay: Duration::from_secs(1),
            max_retry: Duration::from_secs(300),
            max_concurrent: 4,
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
    tx: mpsc::UnboundedSender<Vec<Span>>,
    /// Spans sent and not yet in a batch being exported.
    queued: Arc<AtomicUsize>,
    max: usize,
    stats: Arc<ExportStats>,
}

impl SpanQueue {
    /// Queues what fits of `spans` (all of them, emptied); counts the rest
    /// as dropped.
    pub fn push_all(&self, spans: &mut Vec<Span>) {
        if spans.is_empty() {
            return;
        }
        let room = self.max.saturating_sub(self.queued.load(Relaxed));
        if spans.len() > room {
            let lost = spans.len() - room;
            spans.truncate(room);
            self.stats
                .spans_dropped_queue
                .fetch_add(lost as u64, Relaxed);
            if room == 0 {
                return;
            }
        }
        let n = spans.len();
        // Only this producer adds, so `room` cannot shrink under it; the
        // consumer only makes more room.
        self.queued.fetch_add(n, Relaxed);
        if self.tx.send(std::mem::take(spans)).is_err() {
            self.queued.fetch_sub(n, Relaxed);
            self.stats.spans_dropped_queue.fetch_add(n as u64, Relaxed);
        }
    }
}

/// The consumer side: chunks as they came, taken span by span into batches.
/// A span leaves the queue's count only when it enters a batch, so chunks
/// held here still count against the bound.
struct Pending {
    rx: mpsc::UnboundedReceiver<Vec<Span>>,
    queued: Arc<AtomicUsize>,
    chunks: VecDeque<std::vec::IntoIter<Span>>,
}

impl Pending {
    /// Waits for a chunk (`None`: every producer is gone).
    async fn recv(&mut self) -> Option<()> {
        let c = self.rx.recv().await?;
        self.chunks.push_back(c.into_iter());
        Some(())
    }

    /// Whatever is already in the channel, without waiting.
    fn drain(&mut self) {
        while let Ok(c) = self.rx.try_recv() {
            self.chunks.push_back(c.into_iter());
        }
    }

    /// Moves spans into `batch` until it holds `max`.
    fn fill(&mut self, batch: &mut Vec<Span>, max: usize) {
        let before = batch.len();
        self.fill_from_chunks(batch, max);
        self.queued.fetch_sub(batch.len() - before, Relaxed);
    }

    fn fill_from_chunks(&mut self, batch: &mut Vec<Span>, max: usize) {
        while batch.len() < max {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            batch.extend(front.by_ref().take(max - batch.len()));
            if front.len() == 0 {
                self.chunks.pop_front();
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
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
    let (tx, rx) = mpsc::unbounded_channel::<Vec<Span>>();
    let queued = Arc::new(AtomicUsize::new(0));
    let queue = SpanQueue {
        tx,
        queued: queued.clone(),
        max: cfg.max_queue.max(1),
        stats: stats.clone(),
    };
    let max_batch = cfg.max_batch.max(1);
    let mut pending = Pending {
        rx,
        queued,
        chunks: VecDeque::new(),
    };
    let task = tokio::spawn(async move {
        let mut batch: Vec<Span> = Vec::with_capacity(max_batch);
        // Batches being exported; one hands its spans back when shutdown
        // interrupted its retries (they are flushed below).
        let mut in_flight: tokio::task::JoinSet<Option<Vec<Span>>> = tokio::task::JoinSet::new();
        let max_concurrent = cfg.max_concurrent.max(1);
        let mut unsent: Vec<Span> = vec![];
        'export: loop {
            // Wait for a first span, then fill the batch until size or delay:
            // a full batch leaves at once, a partial one at the delay.
            if pending.is_empty() {
                tokio::select! {
                    got = pending.recv() => if got.is_none() { break },
                    _ = shutdown.changed() => break,
                }
            }
            let until = tokio::time::sleep_until(Instant::now() + cfg.delay);
            tokio::pin!(until);
            loop {
                pending.drain();
                pending.fill(&mut batch, max_batch);
                if batch.len() >= max_batch {
                    break;
                }
                tokio::select! {
                    got = pending.recv() => if got.is_none() { break },
                    _ = &mut until => break,
                    _ = shutdown.changed() => break,
                }
            }
            pending.fill(&mut batch, max_batch);
            if batch.is_empty() {
                continue;
            }
            // Room for one more in flight; meanwhile the queue absorbs.
            while in_flight.len() >= max_concurrent {
                if let Some(Ok(Some(back))) = in_flight.join_next().await {
                    unsent.extend(back);
                }
            }
            let b = std::mem::replace(&mut batch, Vec::with_capacity(max_batch));
            let (client, cfg, stats) = (client.clone(), cfg.clone(), stats.clone());
            let mut stop = shutdown.clone();
            in_flight.spawn(async move {
                let done = export_with_retry(&client, &b, &cfg, &stats, &mut stop).await;
                (!done).then_some(b)
            });
            if *shutdown.borrow() {
                break 'export;
            }
        }
        // In-flight exports end (a retry wait ends at shutdown).
        while let Some(r) = in_flight.join_next().await {
            if let Ok(Some(back)) = r {
                unsent.extend(back);
            }
        }
        batch.extend(unsent);
        // Flush: what is in the batch and the queue, one try each.
        pending.rx.close();
        pending.drain();
        pending.fill(&mut batch, usize::MAX);
        let end = Instant::now() + flush_deadline;
        for chunk in batch.chunks(max_batch) {
            let left = end.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, client.export_traces(encode::request(chunk))).await {
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
    let body = encode::request(batch);
    loop {
        match client.export_traces(body.clone()).await {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sonde_otlp_receiver::{Receiver, Store};

    use super::*;
    use crate::{
        export::otlp::{Protocol, Target},
        spans::{Resource, SpanKind, Status},
    };

    fn spans(from: u64, n: u64) -> Vec<Span> {
        let resource = Arc::new(Resource {
            service_name: "svc".into(),
            service_namespace: None,
            attributes: vec![],
        });
        (from..from + n)
            .map(|i| Span {
                trace_id: [1; 16],
                span_id: i.to_be_bytes(),
                parent_span_id: None,
                trace_state: String::new(),
                kind: SpanKind::Server,
                name: format!("span {i}"),
                start_unix_ns: 1,
                end_unix_ns: 2,
                attributes: vec![],
                status: Status::Unset,
                resource: resource.clone(),
            })
            .collect()
    }

    /// The real exporter with `cfg`, sending to the in-repo receiver.
    struct Exporter {
        store: Arc<Store>,
        stats: Arc<ExportStats>,
        queue: SpanQueue,
        stop: tokio::sync::watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
        _recv: Receiver,
    }

    impl Exporter {
        async fn start(cfg: BatchConfig) -> Exporter {
            let store = Arc::new(Store::default());
            let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            let recv = Receiver::start(any, any, store.clone()).await.unwrap();
            let client = Client::new(Target {
                url: format!("http://{}", recv.grpc_addr),
                protocol: Protocol::Grpc,
                headers: vec![],
                timeout: Duration::from_secs(5),
            })
            .unwrap();
            let stats = Arc::new(ExportStats::default());
            let (stop, stop_rx) = tokio::sync::watch::channel(false);
            let (queue, task) = spawn(
                Arc::new(client),
                cfg,
                stats.clone(),
                stop_rx,
                Duration::from_secs(3),
            );
            Exporter {
                store,
                stats,
                queue,
                stop,
                task,
                _recv: recv,
            }
        }

        /// Shuts the exporter down (it flushes), then returns (exported,
        /// dropped at the queue) and the ids the receiver got, in order.
        async fn finish(self) -> ((u64, u64), Vec<u64>) {
            let _ = self.stop.send(true);
            self.task.await.unwrap();
            let ids = self
                .store
                .spans()
                .iter()
                .map(|s| u64::from_be_bytes(s.span.span_id.clone().try_into().unwrap()))
                .collect();
            let counts = (
                self.stats.spans_exported.load(Relaxed),
                self.stats.spans_dropped_queue.load(Relaxed),
            );
            (counts, ids)
        }
    }

    /// Rounds of spans through the real exporter to the in-repo receiver:
    /// what does not fit the queue is dropped and counted at once, the rest
    /// arrives in order, in batches no larger than the maximum, and every
    /// span is either exported or counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rounds_are_bounded_counted_and_delivered_in_order() {
        let e = Exporter::start(BatchConfig {
            max_queue: 100,
            max_batch: 30,
            delay: Duration::from_millis(50),
            max_retry: Duration::from_secs(1),
            max_concurrent: 1,
        })
        .await;
        // One round larger than the queue: the excess goes at once.
        let mut round = spans(0, 150);
        e.queue.push_all(&mut round);
        assert!(round.is_empty());
        assert_eq!(e.stats.spans_dropped_queue.load(Relaxed), 50);
        // Later rounds fit once the exporter has taken the first.
        let end = Instant::now() + Duration::from_secs(10);
        while e.stats.spans_exported.load(Relaxed) < 100 {
            assert!(Instant::now() < end, "the first 100 never exported");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for r in 0..10 {
            e.queue.push_all(&mut spans(1000 + r * 7, 7));
        }
        let store = e.store.clone();
        let (counts, got) = e.finish().await;
        assert_eq!(counts, (170, 50));
        let want: Vec<u64> = (0..100).chain(1000..1070).collect();
        assert_eq!(got, want, "in order, none twice");
        // 170 spans in batches of at most 30: at least 6 requests.
        assert!(
            store.trace_requests() >= 6,
            "{} requests",
            store.trace_requests()
        );
    }

    /// Several batches in flight: every span arrives once, or is counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_exports_lose_nothing_uncounted() {
        let e = Exporter::start(BatchConfig {
            max_queue: 200,
            max_batch: 20,
            delay: Duration::from_millis(20),
            max_retry: Duration::from_secs(1),
            max_concurrent: 4,
        })
        .await;
        for r in 0..50 {
            e.queue.push_all(&mut spans(r * 100, 37));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let ((exported, dropped), mut got) = e.finish().await;
        assert_eq!(exported + dropped, 50 * 37);
        assert_eq!(got.len() as u64, exported);
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len() as u64, exported, "none twice");
    }
}
