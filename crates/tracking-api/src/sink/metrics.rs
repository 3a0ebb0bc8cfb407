//! The sinks' metrics. The event sink's families are the same whatever the
//! sink (its queue, its bounds, what it wrote); the stdout/file sink adds its
//! write errors and losses (0 with Pub/Sub, whose own families are rendered by
//! `tracking-pubsub`). The local dead-letter outputs count what they wrote,
//! failed to write, lost or discarded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use service_kit::prom::{Collect, counter, gauge, header, render_histogram};
use tracking_core::{AckMode, Budget, FSYNC_BUCKETS, FsyncStats};

use super::ndjson::{Counters, DiscardDeadLetters};

pub const EVENTS_WRITTEN: &str = "tracking_events_written_total";
pub const WRITE_ERRORS: &str = "tracking_sink_write_errors_total";
pub const LOST: &str = "tracking_sink_lost_total";
pub const QUEUE_DEPTH: &str = "tracking_sink_queue_events";
pub const QUEUE_LIMIT: &str = "tracking_sink_queue_limit_events";
pub const QUEUE_BYTES: &str = "tracking_sink_queue_bytes";
pub const QUEUE_LIMIT_BYTES: &str = "tracking_sink_queue_limit_bytes";
pub const DEADLETTERS_WRITTEN: &str = "tracking_deadletters_written_total";
pub const DEADLETTER_WRITE_ERRORS: &str = "tracking_deadletter_write_errors_total";
pub const DEADLETTERS_LOST: &str = "tracking_deadletters_lost_total";
pub const DEADLETTERS_DISCARDED: &str = "tracking_deadletters_discarded_total";
pub const ACK_DISK: &str = "tracking_ack_disk";
pub const ACK_FSYNCS: &str = "tracking_ack_fsyncs_total";
pub const ACK_FSYNC_EVENTS: &str = "tracking_ack_fsync_events_total";
pub const ACK_FSYNC_FAILURES: &str = "tracking_ack_fsync_failures_total";
pub const ACK_FSYNC_SECONDS: &str = "tracking_ack_fsync_seconds";

/// Events written so far, however the sink counts them.
pub type Written = Box<dyn Fn() -> u64 + Send + Sync>;

/// The event sink's families.
pub struct EventSinkMetrics {
    budget: Arc<Budget>,
    written: Written,
    /// The stdout/file sink's counters (never incremented for other sinks).
    counters: Counters,
}

impl std::fmt::Debug for EventSinkMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSinkMetrics")
            .field("budget", &self.budget)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl EventSinkMetrics {
    /// A sink whose queue is `budget`, counting its writes in `counters`.
    pub fn new(budget: Arc<Budget>, counters: Counters) -> Self {
        let written = Arc::clone(&counters.written);
        Self {
            budget,
            written: Box::new(move || written.load(Ordering::Relaxed)),
            counters,
        }
    }

    /// A sink that counts its written events itself (Pub/Sub: acknowledged).
    pub fn counted_by(budget: Arc<Budget>, written: Written) -> Self {
        Self {
            budget,
            written,
            counters: Counters::default(),
        }
    }
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Collect for EventSinkMetrics {
    fn collect(&self, out: &mut String) {
        counter(
            out,
            EVENTS_WRITTEN,
            "Enriched events written by the sink (Pub/Sub: acknowledged).",
            (self.written)(),
        );
        counter(
            out,
            WRITE_ERRORS,
            "Failed writes of the stdout/file sink (what they held is kept and retried).",
            load(&self.counters.write_errors),
        );
        counter(
            out,
            LOST,
            "Accepted events the stdout/file sink gave up: its output gone for good, or still failing at shutdown.",
            load(&self.counters.lost),
        );
        let b = &self.budget;
        gauge(
            out,
            QUEUE_DEPTH,
            "Events accepted and not yet written.",
            b.used() as f64,
        );
        gauge(
            out,
            QUEUE_LIMIT,
            "Capacity of the sink queue.",
            b.limit() as f64,
        );
        gauge(
            out,
            QUEUE_BYTES,
            "Bytes of the events accepted and not yet written.",
            b.used_bytes() as f64,
        );
        gauge(
            out,
            QUEUE_LIMIT_BYTES,
            "Capacity of the sink queue in bytes.",
            b.limit_bytes() as f64,
        );
    }
}

/// The acknowledgement mode and, in the disk mode, its group commits.
#[derive(Debug)]
pub struct AckMetrics {
    pub mode: AckMode,
    pub fsyncs: Arc<FsyncStats>,
}

impl Collect for AckMetrics {
    fn collect(&self, out: &mut String) {
        gauge(
            out,
            ACK_DISK,
            "1 when a 2xx waits for the events to be fdatasynced (TRACKING_ACK=disk), 0 when it means held in memory.",
            if self.mode == AckMode::Disk { 1.0 } else { 0.0 },
        );
        let f = &self.fsyncs;
        counter(
            out,
            ACK_FSYNCS,
            "Group commits of the disk acknowledgement mode: fdatasync calls that made requests' events durable.",
            load(&f.syncs),
        );
        counter(
            out,
            ACK_FSYNC_EVENTS,
            "Events made durable by those fdatasync calls (divide by tracking_ack_fsyncs_total for events per fdatasync).",
            load(&f.events),
        );
        counter(
            out,
            ACK_FSYNC_FAILURES,
            "Failed appends or fdatasync calls of the disk acknowledgement mode; their requests were answered 503.",
            load(&f.failures),
        );
        header(
            out,
            ACK_FSYNC_SECONDS,
            "histogram",
            "Time of each group commit's write and fdatasync.",
        );
        let l = f.latency();
        render_histogram(
            out,
            ACK_FSYNC_SECONDS,
            "",
            &FSYNC_BUCKETS,
            l.buckets,
            l.count,
            l.sum_seconds,
        );
    }
}

/// The stdout/file dead-letter output's families.
#[derive(Debug)]
pub struct DeadLetterMetrics(pub Counters);

impl Collect for DeadLetterMetrics {
    fn collect(&self, out: &mut String) {
        counter(
            out,
            DEADLETTERS_WRITTEN,
            "Dead letters written by the stderr/file dead-letter output.",
            load(&self.0.written),
        );
        counter(
            out,
            DEADLETTER_WRITE_ERRORS,
            "Failed writes of the stderr/file dead-letter output (retried).",
            load(&self.0.write_errors),
        );
        counter(
            out,
            DEADLETTERS_LOST,
            "Dead letters the stderr/file dead-letter output gave up (output gone, or failing at shutdown).",
            load(&self.0.lost),
        );
    }
}

impl Collect for DiscardDeadLetters {
    fn collect(&self, out: &mut String) {
        counter(
            out,
            DEADLETTERS_DISCARDED,
            "Dead letters discarded (TRACKING_DEADLETTER=discard).",
            self.dropped(),
        );
    }
}
