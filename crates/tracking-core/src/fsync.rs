//! What the `disk` acknowledgement mode's group commits cost: how many
//! `fdatasync` calls, how many events each covered, how long each took, how
//! many failed. Plain atomics, shared by the sinks that sync and the metrics
//! that render them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the `fdatasync` latency buckets.
pub const FSYNC_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// Counters of one sink's group commits.
#[derive(Debug, Default)]
pub struct FsyncStats {
    /// `fdatasync` calls that made events durable.
    pub syncs: AtomicU64,
    /// Events those calls covered (answered `2xx` because of them).
    pub events: AtomicU64,
    /// Appends or `fdatasync` calls that failed; the requests they covered
    /// were answered 503.
    pub failures: AtomicU64,
    buckets: [AtomicU64; FSYNC_BUCKETS.len()],
    sum_us: AtomicU64,
}

/// A snapshot of the latency histogram: cumulative bucket counts are
/// computed by the renderer.
#[derive(Debug, Clone, Copy)]
pub struct FsyncLatency {
    pub buckets: [u64; FSYNC_BUCKETS.len()],
    pub count: u64,
    pub sum_seconds: f64,
}

impl FsyncStats {
    /// One `fdatasync` that covered `events` events and took `took`.
    pub fn observe(&self, events: u64, took: Duration) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(events, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        if let Some(i) = FSYNC_BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn fail(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn latency(&self) -> FsyncLatency {
        FsyncLatency {
            buckets: self.buckets.each_ref().map(|b| b.load(Ordering::Relaxed)),
            count: self.syncs.load(Ordering::Relaxed),
            sum_seconds: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket_and_the_sum() {
        let s = FsyncStats::default();
        s.observe(10, Duration::from_micros(300));
        s.observe(5, Duration::from_secs(9));
        let l = s.latency();
        assert_eq!(l.count, 2);
        assert_eq!(l.buckets[2], 1, "0.3 ms is in the 0.5 ms bucket");
        assert_eq!(
            l.buckets.iter().sum::<u64>(),
            1,
            "9 s is past the last bound"
        );
        assert!((l.sum_seconds - 9.0003).abs() < 1e-9);
        assert_eq!(s.events.load(Ordering::Relaxed), 15);
    }
}
