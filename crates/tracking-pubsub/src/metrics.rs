//! The Pub/Sub sink's metrics: names, help texts and rendering, registered
//! with the service's registry by the [`PubsubSink`](crate::PubsubSink) itself.

use std::fmt::Write;

use service_kit::prom::{counter, gauge, header, render_histogram};

use crate::{DELIVERY_BUCKETS, PublisherStats};

pub const PUBSUB_DIRECT: &str = "tracking_pubsub_direct";
pub const PUBSUB_IN_FLIGHT: &str = "tracking_pubsub_in_flight_messages";
pub const PUBSUB_PUBLISHED: &str = "tracking_pubsub_published_total";
pub const PUBSUB_FAILED: &str = "tracking_pubsub_failed_total";
pub const PUBSUB_SPOOLED: &str = "tracking_pubsub_spooled_total";
pub const PUBSUB_REPLAYED: &str = "tracking_pubsub_replayed_total";
pub const PUBSUB_SPOOL_ERRORS: &str = "tracking_pubsub_spool_errors_total";
pub const PUBSUB_LOST: &str = "tracking_pubsub_lost_total";
pub const PUBSUB_SPOOL_BYTES: &str = "tracking_pubsub_spool_bytes";
pub const PUBSUB_SPOOL_LIMIT_BYTES: &str = "tracking_pubsub_spool_limit_bytes";
pub const PUBSUB_BACKLOG: &str = "tracking_pubsub_backlog_events";
pub const PUBSUB_SPOOL_DAMAGED: &str = "tracking_pubsub_spool_damaged_bytes_total";
pub const PUBSUB_MODE_CHANGES: &str = "tracking_pubsub_mode_changes_total";
pub const PUBSUB_SPOOL_FAILING: &str = "tracking_pubsub_spool_failing";
pub const DELIVERY_LATENCY: &str = "tracking_delivery_latency_seconds";

impl service_kit::prom::Collect for crate::PubsubSink {
    fn collect(&self, out: &mut String) {
        render(out, &self.stats());
    }
}

pub const DEADLETTERS_PUBLISHED: &str = "tracking_deadletters_published_total";
pub const DEADLETTERS_FALLBACK: &str = "tracking_deadletters_fallback_total";

impl service_kit::prom::Collect for crate::PubsubDeadLetters {
    fn collect(&self, out: &mut String) {
        counter(
            out,
            DEADLETTERS_PUBLISHED,
            "Dead letters acknowledged by the Pub/Sub dead-letter topic.",
            self.published(),
        );
        counter(
            out,
            DEADLETTERS_FALLBACK,
            "Dead letters sent to the local dead-letter output instead (publish failed, or too many outstanding).",
            self.fell_back(),
        );
    }
}

/// The Pub/Sub sink's own families (the generic sink families, queue and
/// written events, are rendered by `tracking-api` for whichever sink).
pub fn render(out: &mut String, p: &PublisherStats) {
    gauge(
        out,
        PUBSUB_DIRECT,
        "1 while events are published as they come; 0 while they go to the backlog first.",
        if p.direct { 1.0 } else { 0.0 },
    );
    counter(
        out,
        PUBSUB_MODE_CHANGES,
        "Changes between direct publishing and the backlog, both ways (one outage: two).",
        p.mode_changes,
    );
    gauge(
        out,
        PUBSUB_SPOOL_FAILING,
        "1 while spool appends fail (a full disk, I/O errors): events are refused with 503.",
        if p.spool_failing { 1.0 } else { 0.0 },
    );
    gauge(
        out,
        PUBSUB_IN_FLIGHT,
        "Messages handed to the Pub/Sub client and not answered yet.",
        p.in_flight as f64,
    );
    counter(
        out,
        PUBSUB_PUBLISHED,
        "Events acknowledged by Pub/Sub on their first publish.",
        p.published,
    );
    header(
        out,
        PUBSUB_FAILED,
        "counter",
        "Publishes that failed after the client's retries, by class.",
    );
    let _ = writeln!(
        out,
        "{PUBSUB_FAILED}{{class=\"retryable\"}} {}",
        p.failed_retryable
    );
    let _ = writeln!(
        out,
        "{PUBSUB_FAILED}{{class=\"permanent\"}} {}",
        p.failed_permanent
    );
    counter(
        out,
        PUBSUB_SPOOLED,
        "Events put in the backlog (the spool, or memory without one).",
        p.spooled,
    );
    counter(
        out,
        PUBSUB_REPLAYED,
        "Backlog events acknowledged by Pub/Sub.",
        p.replayed,
    );
    counter(
        out,
        PUBSUB_SPOOL_ERRORS,
        "Failed spool reads or writes.",
        p.spool_errors,
    );
    counter(
        out,
        PUBSUB_LOST,
        "Events given up (only at shutdown without a spool while Pub/Sub is down).",
        p.lost,
    );
    gauge(
        out,
        PUBSUB_SPOOL_BYTES,
        "Bytes in the spool waiting for replay.",
        p.spool_bytes as f64,
    );
    gauge(
        out,
        PUBSUB_SPOOL_LIMIT_BYTES,
        "The spool's bound, TRACKING_SPOOL_MAX_BYTES (0: no spool): the spool-nearly-full alert divides by it.",
        p.spool_limit_bytes as f64,
    );
    gauge(
        out,
        PUBSUB_BACKLOG,
        "Events in the backlog waiting for replay.",
        p.backlog_events as f64,
    );
    counter(
        out,
        PUBSUB_SPOOL_DAMAGED,
        "Damaged spool bytes found and skipped at start.",
        p.damaged_bytes,
    );
    header(
        out,
        DELIVERY_LATENCY,
        "histogram",
        "Delivery SLI: time from acceptance to Pub/Sub acknowledgement.",
    );
    render_histogram(
        out,
        DELIVERY_LATENCY,
        "",
        &DELIVERY_BUCKETS,
        p.delivery_buckets,
        p.delivery_count,
        p.delivery_sum_seconds,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_delivery_histogram_without_labels() {
        let mut buckets = [0; DELIVERY_BUCKETS.len()];
        buckets[0] = 2;
        buckets[3] = 1;
        let mut text = String::new();
        render(
            &mut text,
            &PublisherStats {
                delivery_buckets: buckets,
                delivery_count: 4,
                delivery_sum_seconds: 1.5,
                ..Default::default()
            },
        );
        for line in [
            "tracking_delivery_latency_seconds_bucket{le=\"0.005\"} 2",
            "tracking_delivery_latency_seconds_bucket{le=\"0.05\"} 3",
            "tracking_delivery_latency_seconds_bucket{le=\"1800\"} 3",
            "tracking_delivery_latency_seconds_bucket{le=\"+Inf\"} 4",
            "tracking_delivery_latency_seconds_sum 1.5",
            "tracking_delivery_latency_seconds_count 4",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
    }
}
