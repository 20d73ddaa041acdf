//! A live view of the node for people: `sonde top`.
//!
//! A side branch off the export stage. Finished spans are assembled into
//! whole traces (as for the stdout trees), and each trace updates per
//! service rates, errors, latency percentiles and the split of its
//! requests' time between their own work and their calls (self time vs
//! downstream time), per edge (service -> service, database, broker or
//! address) rates and latencies, and a list of recent traces. `sonde top`
//! draws it (`top/`), from its own pipeline or from a running agent's
//! read-only endpoint (`serve.rs`).
//!
//! It costs nothing until someone looks: in `sonde run` the view takes in
//! spans only while its endpoint has been read in the last `IDLE`, and
//! forgets everything when nobody has for that long.
pub mod aggregate;
pub mod model;
pub mod serve;
pub mod window;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

pub use aggregate::View;

use crate::spans::Span;

/// How long the view stays on after its endpoint was last read.
pub const IDLE: Duration = Duration::from_secs(60);

/// The view shared between the pipeline thread (which feeds it) and its
/// readers (the endpoint, or `sonde top` in the same process).
pub struct Shared {
    view: Mutex<View>,
    /// Always on (`sonde top` runs the pipeline), or only while read.
    always: bool,
    active: AtomicBool,
    start: Instant,
    /// When it was last read, in ms since `start`.
    read_ms: AtomicU64,
}

impl Shared {
    /// A view fed all the time (`sonde top`).
    pub fn always_on() -> Arc<Shared> {
        Arc::new(Shared::new(true))
    }

    /// A view fed only while its endpoint is read (`sonde run`).
    pub fn on_demand() -> Arc<Shared> {
        Arc::new(Shared::new(false))
    }

    fn new(always: bool) -> Shared {
        let now = Instant::now();
        Shared {
            view: Mutex::new(View::new(now)),
            always,
            active: AtomicBool::new(always),
            start: now,
            read_ms: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether spans should be handed over now (one load on the hot path).
    pub fn active(&self) -> bool {
        self.active.load(Relaxed)
    }

    /// Finished spans, and the traces they complete (pipeline thread).
    pub fn feed(&self, spans: &[Span], now: Instant) {
        let mut v = self.lock();
        for s in spans {
            v.span(s.clone(), now);
        }
        v.poll(now);
    }

    /// Lets time pass with no spans (trees become due).
    pub fn tick(&self, now: Instant) {
        if self.always {
            self.lock().poll(now);
            return;
        }
        let read = Duration::from_millis(self.read_ms.load(Relaxed));
        let idle = now.saturating_duration_since(self.start + read) >= IDLE;
        if self.active() && idle {
            self.active.store(false, Relaxed);
            *self.lock() = View::new(now);
        } else if self.active() {
            self.lock().poll(now);
        }
    }

    /// A reader looked: the view is (or stays) on.
    fn touched(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.read_ms.store(ms, Relaxed);
        if !self.active.swap(true, Relaxed) {
            *self.lock() = View::new(Instant::now());
        }
    }

    pub fn snapshot(&self) -> model::Snapshot {
        self.touched();
        self.lock().snapshot(Instant::now())
    }

    pub fn trace(&self, id_hex: &str) -> Option<model::TraceDetail> {
        self.touched();
        self.lock().trace_detail(id_hex)
    }
}
