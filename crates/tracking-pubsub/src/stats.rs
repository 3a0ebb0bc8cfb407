//! Counters and the delivery-latency histogram of the publisher. Plain
//! atomics; `tracking-api`'s metrics module names and renders them.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::sink::FailureClass;

/// Upper bounds (seconds) of the delivery-latency buckets: accepted →
/// acknowledged by Pub/Sub, outages included.
pub const DELIVERY_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub published: AtomicU64,
    pub failed_retryable: AtomicU64,
    pub failed_permanent: AtomicU64,
    pub spooled: AtomicU64,
    pub replayed: AtomicU64,
    pub spool_errors: AtomicU64,
    pub lost: AtomicU64,
    pub damaged_bytes: AtomicU64,
    pub in_flight: AtomicU64,
    pub spool_bytes: AtomicU64,
    pub backlog_events: AtomicU64,
    /// Changes between direct and backlog mode, both ways.
    pub mode_changes: AtomicU64,
    buckets: [AtomicU64; DELIVERY_BUCKETS.len()],
    count: AtomicU64,
    sum_ms: AtomicU64,
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

pub(crate) fn sub(c: &AtomicU64, n: u64) {
    c.fetch_sub(n, Ordering::Relaxed);
}

impl Stats {
    pub fn count_failure(&self, class: FailureClass) {
        match class {
            FailureClass::Retryable => add(&self.failed_retryable, 1),
            FailureClass::Permanent => add(&self.failed_permanent, 1),
        }
    }

    pub fn observe_delivery(&self, accepted_at_ms: u64, now_ms: u64) {
        let ms = now_ms.saturating_sub(accepted_at_ms);
        let secs = ms as f64 / 1000.0;
        if let Some(i) = DELIVERY_BUCKETS.iter().position(|&b| secs <= b) {
            add(&self.buckets[i], 1);
        }
        add(&self.count, 1);
        add(&self.sum_ms, ms);
    }

    pub fn snapshot(&self, direct: bool, queue_events: usize) -> PublisherStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PublisherStats {
            direct,
            queue_events,
            in_flight: l(&self.in_flight),
            published: l(&self.published),
            failed_retryable: l(&self.failed_retryable),
            failed_permanent: l(&self.failed_permanent),
            spooled: l(&self.spooled),
            replayed: l(&self.replayed),
            spool_errors: l(&self.spool_errors),
            lost: l(&self.lost),
            spool_bytes: l(&self.spool_bytes),
            spool_limit_bytes: 0,
            backlog_events: l(&self.backlog_events),
            mode_changes: l(&self.mode_changes),
            spool_failing: false,
            damaged_bytes: l(&self.damaged_bytes),
            delivery_buckets: self.buckets.each_ref().map(l),
            delivery_count: l(&self.count),
            delivery_sum_seconds: l(&self.sum_ms) as f64 / 1000.0,
        }
    }
}

/// A point-in-time copy of the publisher's metrics.
#[derive(Debug, Clone, Default)]
pub struct PublisherStats {
    /// `true` while events are published as they come; `false` while they go
    /// to the backlog (spool) first.
    pub direct: bool,
    /// Events held in memory (accepted, not yet acknowledged or spooled).
    pub queue_events: usize,
    /// Messages handed to the client and not answered yet.
    pub in_flight: u64,
    /// Messages acknowledged on their first publish.
    pub published: u64,
    /// Publishes that failed with a retryable error after the client's retries.
    pub failed_retryable: u64,
    /// Publishes that failed with a permanent error (topic missing, denied, …).
    pub failed_permanent: u64,
    /// Events written to the backlog (the disk spool, or memory without one).
    pub spooled: u64,
    /// Events from the backlog acknowledged by Pub/Sub.
    pub replayed: u64,
    /// Failed spool writes (the events stay in memory and are retried).
    pub spool_errors: u64,
    /// Events given up: only at shutdown, without a spool, with Pub/Sub down.
    pub lost: u64,
    /// Bytes in the spool waiting for replay.
    pub spool_bytes: u64,
    /// The spool's bound (`TRACKING_SPOOL_MAX_BYTES`); 0 without a spool.
    pub spool_limit_bytes: u64,
    /// Events in the backlog waiting for replay (in the spool, or in memory
    /// until they are).
    pub backlog_events: u64,
    /// Changes between direct and backlog mode, both ways.
    pub mode_changes: u64,
    /// Spool appends are failing (a full disk, EIO): new events are refused.
    pub spool_failing: bool,
    /// Damaged spool bytes found (and skipped) when the spool was opened.
    pub damaged_bytes: u64,
    /// Per-bucket (not cumulative) delivery-latency counts, see
    /// [`DELIVERY_BUCKETS`].
    pub delivery_buckets: [u64; DELIVERY_BUCKETS.len()],
    pub delivery_count: u64,
    pub delivery_sum_seconds: f64,
}
