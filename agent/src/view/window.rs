//! Counts over a sliding window of whole seconds, with a log-scale latency
//! histogram: what `sonde top` shows as rates and percentiles.
use std::collections::{BTreeMap, VecDeque};

/// The window rates and percentiles cover.
pub const WINDOW_SECS: u64 = 10;

/// Histogram buckets per doubling: each bucket is 2^(1/8) (9%) wide, the
/// precision of the percentiles shown.
const PER_OCTAVE: f64 = 8.0;

/// A sparse log-scale histogram of durations from 1 µs up (shorter ones
/// share the first bucket).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogHist {
    buckets: BTreeMap<u16, u32>,
    count: u64,
}

impl LogHist {
    fn index(ns: u64) -> u16 {
        let us = ns as f64 / 1_000.0;
        if us <= 1.0 {
            return 0;
        }
        (us.log2() * PER_OCTAVE).ceil().min(u16::MAX as f64) as u16
    }

    /// The upper bound of bucket `i`, in ns.
    fn upper_ns(i: u16) -> f64 {
        2f64.powf(f64::from(i) / PER_OCTAVE) * 1_000.0
    }

    pub fn record(&mut self, ns: u64) {
        *self.buckets.entry(Self::index(ns)).or_default() += 1;
        self.count += 1;
    }

    pub fn merge(&mut self, o: &LogHist) {
        for (i, n) in &o.buckets {
            *self.buckets.entry(*i).or_default() += n;
        }
        self.count += o.count;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile (0..=1) in ns: the upper bound of the bucket that
    /// holds it, so within 9% above the true value. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, n) in &self.buckets {
            seen += u64::from(*n);
            if seen >= rank {
                return Some(Self::upper_ns(*i));
            }
        }
        self.buckets.keys().last().map(|i| Self::upper_ns(*i))
    }
}

/// What one second holds.
#[derive(Debug, Clone, Default)]
pub struct Bucket {
    pub count: u64,
    pub errors: u64,
    pub latency: LogHist,
    /// Sums over the requests counted, in ns: their own time, and the time
    /// their calls covered (the split `sonde top` shows).
    pub self_ns: u64,
    pub downstream_ns: u64,
    /// Downstream time per peer called, in ns.
    pub by_peer: BTreeMap<String, u64>,
}

impl Bucket {
    fn merge(&mut self, o: &Bucket) {
        self.count += o.count;
        self.errors += o.errors;
        self.latency.merge(&o.latency);
        self.self_ns += o.self_ns;
        self.downstream_ns += o.downstream_ns;
        for (p, ns) in &o.by_peer {
            *self.by_peer.entry(p.clone()).or_default() += ns;
        }
    }
}

/// The last `WINDOW_SECS` seconds, one bucket per second that had data.
#[derive(Debug, Clone, Default)]
pub struct Window {
    seconds: VecDeque<(u64, Bucket)>,
}

impl Window {
    /// The bucket of second `sec` (seconds only move forward; an older
    /// second is counted in the newest bucket).
    pub fn at(&mut self, sec: u64) -> &mut Bucket {
        self.trim(sec);
        if self.seconds.back().is_none_or(|(s, _)| *s < sec) {
            self.seconds.push_back((sec, Bucket::default()));
        }
        &mut self.seconds.back_mut().expect("pushed above").1
    }

    fn trim(&mut self, now_sec: u64) {
        while self
            .seconds
            .front()
            .is_some_and(|(s, _)| s + WINDOW_SECS <= now_sec)
        {
            self.seconds.pop_front();
        }
    }

    /// The window ending at `now_sec` (inclusive), merged.
    pub fn total(&mut self, now_sec: u64) -> Bucket {
        self.trim(now_sec);
        let mut t = Bucket::default();
        for (_, b) in &self.seconds {
            t.merge(b);
        }
        t
    }

    pub fn is_empty(&self) -> bool {
        self.seconds.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_bucket_above_the_true_value() {
        let mut h = LogHist::default();
        for ms in 1..=100u64 {
            h.record(ms * 1_000_000);
        }
        for (q, truth) in [(0.5, 50e6), (0.95, 95e6), (0.99, 99e6), (1.0, 100e6)] {
            let got = h.quantile(q).unwrap();
            assert!(
                got >= truth && got <= truth * 1.1,
                "q{q}: {got} for {truth}"
            );
        }
        assert_eq!(LogHist::default().quantile(0.5), None);
        // Sub-microsecond and huge values land in the end buckets.
        h.record(0);
        h.record(u64::MAX);
        assert_eq!(h.count(), 102);
    }

    #[test]
    fn the_window_forgets_seconds_older_than_its_length() {
        let mut w = Window::default();
        w.at(100).count += 1;
        w.at(105).count += 2;
        w.at(103).count += 4; // late: counted in the newest second
        assert_eq!(w.total(105).count, 7);
        assert_eq!(w.total(109).count, 7);
        assert_eq!(w.total(110).count, 6, "second 100 left the window");
        assert_eq!(w.total(115).count, 0);
        assert!(w.is_empty());
    }
}
