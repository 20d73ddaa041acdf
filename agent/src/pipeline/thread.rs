//! The pipeline's own OS thread: parsing, correlation and span building are
//! CPU work, and the conntrack lookup is file I/O, so none of it runs on
//! the async runtime's workers.
use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use tokio::{
    runtime::Handle,
    sync::{mpsc, oneshot, watch},
};

use super::{Pipeline, PipelineStats};
use crate::{
    clock::monotonic_now,
    connections::StreamEvent,
    export::{batch::SpanQueue, stdout},
    protocols::dispatch::Command,
    spans::Span,
};

/// Where finished spans go.
pub struct Sinks {
    pub stdout: Option<stdout::Printer<std::io::Stdout>>,
    pub queue: Option<SpanQueue>,
    /// `sonde top`'s view, fed only while it is on.
    pub view: Option<std::sync::Arc<crate::view::Shared>>,
}

impl Sinks {
    /// Hands over finished spans, and prints the trees that are due (all of
    /// them when `final_`: the pipeline is ending).
    fn deliver(&mut self, spans: &mut Vec<Span>, final_: bool) {
        let now = Instant::now();
        if let Some(v) = &self.view {
            if v.active() && !spans.is_empty() {
                v.feed(spans, now);
            }
            v.tick(now);
        }
        if let Some(p) = &mut self.stdout {
            if self.queue.is_some() {
                for s in spans.iter() {
                    p.span(s.clone(), now);
                }
            } else {
                for s in spans.drain(..) {
                    p.span(s, now);
                }
            }
        }
        match &self.queue {
            // One message for the round's spans (the Vec moves).
            Some(q) => q.push_all(spans),
            None => spans.clear(),
        }
        if let Some(p) = &mut self.stdout {
            p.poll((!final_).then_some(now));
        }
    }
}

/// Events taken per batch: large enough to amortise the wakeup, small
/// enough that holds are released on time.
const BATCH: usize = 1024;
/// How often held traces are checked for an expired wait.
const TICK: Duration = Duration::from_millis(100);
/// At shutdown, events already captured are drained until the stream has
/// been idle this long, for at most `DRAIN_LIMIT`.
const DRAIN_LIMIT: Duration = Duration::from_millis(1000);

/// How far the pipeline's clock may trail the wall clock.
const CLOCK_LAG_NS: u64 = 3_000_000_000;

/// The time correlation works in (holds for late partners, waits of
/// service-graph halves): the newest record's, not the wall clock's. A
/// partner is late in the stream of records, and a stall before this
/// thread (the connection table's /proc reads when processes start, a
/// backlog) delays every record alike: on the wall clock, a hold could end
/// while its partner's record waited upstream, and a call that its task's
/// response would have placed went out a root (CI, once, the first asyncio
/// requests). It trails the wall clock by `CLOCK_LAG_NS` at most, so that
/// holds still end when no records come at all; it never runs ahead of it.
#[derive(Debug, Default)]
struct RecordClock {
    newest_ns: u64,
}

impl RecordClock {
    fn saw(&mut self, ev: &StreamEvent) {
        let t = match ev {
            StreamEvent::Data(_, d) => d.exit_ns,
            StreamEvent::Close(_, t) => *t,
            _ => return,
        };
        self.newest_ns = self.newest_ns.max(t);
    }

    fn now(&self, wall_ns: u64) -> u64 {
        self.newest_ns
            .max(wall_ns.saturating_sub(CLOCK_LAG_NS))
            .min(wall_ns)
    }
}

/// Why the pipeline thread ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Asked to stop; drained and flushed.
    Stopped,
    /// Its input closed without a stop: a capture task ended.
    InputClosed,
}

/// Starts the pipeline on its own thread. `done` fires when it ends, also
/// by a panic (its `JoinHandle` then holds the panic).
pub fn spawn(
    mut pipeline: Pipeline,
    mut events: crate::channel::Receiver<StreamEvent>,
    mut sinks: Sinks,
    commands: mpsc::Sender<Command>,
    mut stop: watch::Receiver<bool>,
    idle: Duration,
) -> std::io::Result<(
    std::thread::JoinHandle<Ended>,
    oneshot::Receiver<()>,
    Arc<PipelineStats>,
)> {
    let rt = Handle::current();
    let stats = pipeline.stats.clone();
    let stats_out = stats.clone();
    let (done_tx, done) = oneshot::channel();
    let handle = std::thread::Builder::new()
        .name("sonde-pipeline".into())
        .spawn(move || {
            // Fires on return and on unwind alike.
            let _done = Notify(Some(done_tx));
            let mut batch = Vec::with_capacity(BATCH);
            let (mut spans, mut cmds) = (vec![], vec![]);
            let mut next_tick = Instant::now() + TICK;
            let mut panic_after = test_panic_after();
            let mut drain_until: Option<Instant> = None;
            let mut clock = RecordClock::default();
            loop {
                let wait = match drain_until {
                    Some(_) => idle,
                    None => next_tick
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1)),
                };
                let got = rt.block_on(async {
                    tokio::select! {
                        n = events.recv_many(&mut batch, BATCH) => Some(n),
                        _ = tokio::time::sleep(wait) => Some(usize::MAX),
                        _ = stop.changed(), if drain_until.is_none() => None,
                    }
                });
                match got {
                    None => {
                        drain_until = Some(Instant::now() + DRAIN_LIMIT);
                        continue;
                    }
                    Some(0) => {
                        pipeline.release_held(None, &mut spans);
                        sinks.deliver(&mut spans, true);
                        pipeline.publish_stats();
                        return if drain_until.is_some() || *stop.borrow() {
                            Ended::Stopped
                        } else {
                            Ended::InputClosed
                        };
                    }
                    // Idle: while draining, the stream is done.
                    Some(usize::MAX) if drain_until.is_some() => break,
                    _ => {}
                }
                let wall_ns = monotonic_now();
                for ev in batch.drain(..) {
                    if let Some(n) = panic_after.as_mut() {
                        *n = n.saturating_sub(1);
                        assert!(*n > 0, "test hook: SONDE_TEST_PANIC_AFTER_EVENTS reached");
                    }
                    clock.saw(&ev);
                    pipeline.on_event(ev, clock.now(wall_ns), &mut spans, &mut cmds);
                }
                if Instant::now() >= next_tick {
                    pipeline.release_held(Some(clock.now(monotonic_now())), &mut spans);
                    next_tick = Instant::now() + TICK;
                }
                for c in cmds.drain(..) {
                    if commands.try_send(c).is_err() {
                        stats.commands_dropped.fetch_add(1, Relaxed);
                    }
                }
                sinks.deliver(&mut spans, false);
                pipeline.publish_stats();
                if drain_until.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
            pipeline.release_held(None, &mut spans);
            sinks.deliver(&mut spans, true);
            pipeline.publish_stats();
            Ended::Stopped
        })?;
    Ok((handle, done, stats_out))
}

/// Debug builds only: panic after this many events, so the test suite can
/// prove that a crash makes `sonde run` exit non-zero.
fn test_panic_after() -> Option<u64> {
    if !cfg!(debug_assertions) {
        return None;
    }
    std::env::var("SONDE_TEST_PANIC_AFTER_EVENTS")
        .ok()?
        .parse()
        .ok()
}

struct Notify(Option<oneshot::Sender<()>>);

impl Drop for Notify {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn the_record_clock_follows_records_within_its_lag_of_the_wall_clock() {
        let mut c = RecordClock::default();
        // No record yet: the wall clock less the lag.
        assert_eq!(c.now(10 * S), 10 * S - CLOCK_LAG_NS);
        // Records a second old (a stall upstream): their time, so a hold
        // started with them lasts a second of records.
        c.newest_ns = 9 * S;
        assert_eq!(c.now(10 * S), 9 * S);
        // Records stop coming: it moves on with the wall clock, lagging.
        assert_eq!(c.now(20 * S), 20 * S - CLOCK_LAG_NS);
        // Never ahead of the wall clock.
        c.newest_ns = 30 * S;
        assert_eq!(c.now(25 * S), 25 * S);
        // Early in boot, no underflow.
        assert_eq!(RecordClock::default().now(S), 0);
    }
}
