//! Every metric the API exports, named in one place, with bounded label sets.
//! Counters and histograms are plain atomics: recording never locks or
//! allocates. Rendered in the Prometheus text format on `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use service_kit::prom::{RequestMetrics, counter, gauge, header, render_histogram};
use tracking_core::RejectReason;

pub const HTTP_REQUESTS: &str = "tracking_http_requests_total";
pub const HTTP_DURATION: &str = "tracking_http_request_duration_seconds";
pub const EVENTS_ACCEPTED: &str = "tracking_events_accepted_total";
pub const EVENTS_REJECTED: &str = "tracking_events_rejected_total";
pub const EVENTS_WRITTEN: &str = "tracking_events_written_total";
pub const SESSIONS: &str = "tracking_sessions_total";
pub const SESSION_STORE_ERRORS: &str = "tracking_session_store_errors_total";
pub const SESSION_STORE_OPS: &str = "tracking_session_store_ops_total";
pub const SHED: &str = "tracking_requests_shed_total";
pub const DEADLETTERS_DROPPED: &str = "tracking_deadletters_dropped_total";
pub const SINK_WRITE_ERRORS: &str = "tracking_sink_write_errors_total";
pub const SINK_QUEUE_DEPTH: &str = "tracking_sink_queue_events";
pub const SINK_QUEUE_LIMIT: &str = "tracking_sink_queue_limit_events";
pub const SINK_QUEUE_BYTES: &str = "tracking_sink_queue_bytes";
pub const SINK_QUEUE_LIMIT_BYTES: &str = "tracking_sink_queue_limit_bytes";
pub const SINK_LOST: &str = "tracking_sink_lost_total";
pub const INFLIGHT: &str = "tracking_inflight_requests";
pub const BODY_MEMORY: &str = "tracking_body_memory_bytes";
pub const BODY_MEMORY_LIMIT: &str = "tracking_body_memory_limit_bytes";
pub const MEMORY_STORE_VISITORS: &str = "tracking_memory_store_visitors";
pub const MEMORY_STORE_EVICTIONS: &str = "tracking_memory_store_evictions_total";
pub const READY: &str = "tracking_ready";
pub const OVERLOADED: &str = "tracking_overloaded";
pub const OVERLOAD_FLIPS: &str = "tracking_overload_readiness_changes_total";
pub const PUBSUB_DIRECT: &str = "tracking_pubsub_direct";
pub const PUBSUB_IN_FLIGHT: &str = "tracking_pubsub_in_flight_messages";
pub const PUBSUB_PUBLISHED: &str = "tracking_pubsub_published_total";
pub const PUBSUB_FAILED: &str = "tracking_pubsub_failed_total";
pub const PUBSUB_SPOOLED: &str = "tracking_pubsub_spooled_total";
pub const PUBSUB_REPLAYED: &str = "tracking_pubsub_replayed_total";
pub const PUBSUB_SPOOL_ERRORS: &str = "tracking_pubsub_spool_errors_total";
pub const PUBSUB_LOST: &str = "tracking_pubsub_lost_total";
pub const PUBSUB_SPOOL_BYTES: &str = "tracking_pubsub_spool_bytes";
pub const PUBSUB_BACKLOG: &str = "tracking_pubsub_backlog_events";
pub const PUBSUB_SPOOL_DAMAGED: &str = "tracking_pubsub_spool_damaged_bytes_total";
pub const PUBSUB_MODE_CHANGES: &str = "tracking_pubsub_mode_changes_total";
pub const PUBSUB_SPOOL_FAILING: &str = "tracking_pubsub_spool_failing";
pub const MIGRATION_CALLS: &str = "tracking_migration_calls_total";
pub const MIGRATION_LATENCY: &str = "tracking_migration_lookup_duration_seconds";
pub const MIGRATION_BREAKER_OPEN: &str = "tracking_migration_breaker_open";
pub const MIGRATION_BREAKER_OPENED: &str = "tracking_migration_breaker_opened_total";
pub const MIGRATION_QUEUE: &str = "tracking_migration_queue_renewals";
pub const MIGRATION_INVALID: &str = "tracking_migration_invalid_parts_total";
/// The delivery SLI: accepted → acknowledged by Pub/Sub, outages included.
pub const DELIVERY_LATENCY: &str = "tracking_delivery_latency_seconds";

/// Routes, as the bounded `route` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Events,
    Pixel,
    Preflight,
    Tracker,
    Healthz,
    Readyz,
    Metrics,
    Other,
}

impl Route {
    const ALL: [Route; 8] = [
        Self::Events,
        Self::Pixel,
        Self::Preflight,
        Self::Tracker,
        Self::Healthz,
        Self::Readyz,
        Self::Metrics,
        Self::Other,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::Pixel => "pixel",
            Self::Preflight => "preflight",
            Self::Tracker => "tracker",
            Self::Healthz => "healthz",
            Self::Readyz => "readyz",
            Self::Metrics => "metrics",
            Self::Other => "other",
        }
    }
}

/// Why a request was refused without being processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShedReason {
    /// Too many requests in flight.
    Inflight,
    /// The sink's queue is full.
    QueueFull,
    /// Shutting down.
    Draining,
    /// The event output is failing (write errors, a full disk).
    OutputFailing,
    /// Request bodies fill their memory.
    BodyMemory,
}

impl ShedReason {
    const ALL: [ShedReason; 5] = [
        Self::Inflight,
        Self::QueueFull,
        Self::Draining,
        Self::OutputFailing,
        Self::BodyMemory,
    ];
    fn as_str(self) -> &'static str {
        match self {
            Self::Inflight => "inflight",
            Self::QueueFull => "queue_full",
            Self::Draining => "draining",
            Self::OutputFailing => "output_failing",
            Self::BodyMemory => "body_memory",
        }
    }
}

/// Gauges read at render time from the components that own them.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    pub sink_queue_depth: usize,
    pub sink_queue_limit: usize,
    pub sink_queue_bytes: usize,
    pub sink_queue_limit_bytes: usize,
    pub inflight: usize,
    /// Bytes of request bodies held, and their bound.
    pub body_memory: usize,
    pub body_memory_limit: usize,
    pub memory_store_visitors: Option<usize>,
    pub memory_store_evictions_expired: u64,
    pub memory_store_evictions_capacity: u64,
    /// The store's own counters (Bigtable reads, writes, retries, …).
    pub store_ops: Vec<(&'static str, u64)>,
    /// The Pub/Sub sink's counters, when it is the sink.
    pub publisher: Option<tracking_pubsub::PublisherStats>,
    pub ready: bool,
    /// Sustained overload has made /readyz answer 503.
    pub overloaded: bool,
    pub overload_flips: u64,
    /// The migration-proxy client, in `parallel` and `legacy` modes.
    pub migration: Option<std::sync::Arc<crate::migration::MigrationClient>>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    requests: RequestMetrics<{ Route::ALL.len() }>,
    pub events_accepted: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    pub events_written: std::sync::Arc<AtomicU64>,
    pub sessions_short_new: AtomicU64,
    pub sessions_long_new: AtomicU64,
    pub sessions_continued: AtomicU64,
    pub sessions_unavailable: AtomicU64,
    pub session_store_timeouts: AtomicU64,
    pub session_store_failures: AtomicU64,
    shed: [AtomicU64; ShedReason::ALL.len()],
    pub deadletters_dropped: AtomicU64,
    pub sink_write_errors: std::sync::Arc<AtomicU64>,
    pub sink_lost: std::sync::Arc<AtomicU64>,
}

fn inc(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    pub fn record_request(&self, route: Route, status: u16, elapsed: Duration) {
        let r = route as usize;
        self.requests.record(r, status, elapsed);
    }

    pub fn record_rejected(&self, reason: RejectReason) {
        inc(&self.rejected[reason.index()], 1);
    }

    pub fn record_shed(&self, reason: ShedReason) {
        inc(&self.shed[reason as usize], 1);
    }

    pub fn add(c: &AtomicU64, n: u64) {
        inc(c, n);
    }

    /// The count of one request series; for tests and health reasoning.
    pub fn requests(&self, route: Route, status: u16) -> u64 {
        self.requests.count(route as usize, status)
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);

        self.requests.render(
            &mut out,
            HTTP_REQUESTS,
            HTTP_DURATION,
            "Time from request received to response ready (ingest latency SLI for route=events).",
            &Route::ALL.map(Route::as_str),
        );
        counter(
            &mut out,
            EVENTS_ACCEPTED,
            "Events accepted for processing.",
            load(&self.events_accepted),
        );
        header(
            &mut out,
            EVENTS_REJECTED,
            "counter",
            "Events refused, by reason (sent to the dead-letter output).",
        );
        for reason in RejectReason::ALL {
            let _ = writeln!(
                out,
                "{EVENTS_REJECTED}{{reason=\"{}\"}} {}",
                reason.as_str(),
                load(&self.rejected[reason.index()])
            );
        }
        counter(
            &mut out,
            EVENTS_WRITTEN,
            "Enriched events written by the sink (Pub/Sub: acknowledged).",
            g.publisher
                .as_ref()
                .map_or(load(&self.events_written), |p| p.published + p.replayed),
        );
        header(&mut out, SESSIONS, "counter", "Session outcomes per event.");
        for (outcome, c) in [
            ("short_new", &self.sessions_short_new),
            ("long_new", &self.sessions_long_new),
            ("continued", &self.sessions_continued),
            ("unavailable", &self.sessions_unavailable),
        ] {
            let _ = writeln!(out, "{SESSIONS}{{outcome=\"{outcome}\"}} {}", load(c));
        }
        header(
            &mut out,
            SESSION_STORE_ERRORS,
            "counter",
            "Session store calls that failed, by kind.",
        );
        let _ = writeln!(
            out,
            "{SESSION_STORE_ERRORS}{{kind=\"timeout\"}} {}",
            load(&self.session_store_timeouts)
        );
        let _ = writeln!(
            out,
            "{SESSION_STORE_ERRORS}{{kind=\"failure\"}} {}",
            load(&self.session_store_failures)
        );
        if !g.store_ops.is_empty() {
            header(
                &mut out,
                SESSION_STORE_OPS,
                "counter",
                "Session store backend operations, by kind.",
            );
            for (op, n) in &g.store_ops {
                let _ = writeln!(out, "{SESSION_STORE_OPS}{{op=\"{op}\"}} {n}");
            }
        }
        header(
            &mut out,
            SHED,
            "counter",
            "Requests refused with 503 before processing, by reason.",
        );
        for reason in ShedReason::ALL {
            let _ = writeln!(
                out,
                "{SHED}{{reason=\"{}\"}} {}",
                reason.as_str(),
                load(&self.shed[reason as usize])
            );
        }
        counter(
            &mut out,
            DEADLETTERS_DROPPED,
            "Dead letters dropped because their output was full.",
            load(&self.deadletters_dropped),
        );
        counter(
            &mut out,
            SINK_WRITE_ERRORS,
            "Failed writes of the stdout/file sink (what they held is kept and retried).",
            load(&self.sink_write_errors),
        );
        counter(
            &mut out,
            SINK_LOST,
            "Accepted events the stdout/file sink gave up: its output gone for good, or still failing at shutdown.",
            load(&self.sink_lost),
        );
        gauge(
            &mut out,
            SINK_QUEUE_DEPTH,
            "Events accepted and not yet written.",
            g.sink_queue_depth as f64,
        );
        gauge(
            &mut out,
            SINK_QUEUE_LIMIT,
            "Capacity of the sink queue.",
            g.sink_queue_limit as f64,
        );
        gauge(
            &mut out,
            SINK_QUEUE_BYTES,
            "Bytes of the events accepted and not yet written.",
            g.sink_queue_bytes as f64,
        );
        gauge(
            &mut out,
            SINK_QUEUE_LIMIT_BYTES,
            "Capacity of the sink queue in bytes.",
            g.sink_queue_limit_bytes as f64,
        );
        gauge(
            &mut out,
            INFLIGHT,
            "Event requests being processed.",
            g.inflight as f64,
        );
        gauge(
            &mut out,
            BODY_MEMORY,
            "Bytes of request bodies held in memory (as sent and inflated).",
            g.body_memory as f64,
        );
        gauge(
            &mut out,
            BODY_MEMORY_LIMIT,
            "Bound of the request bodies held in memory (TRACKING_MAX_BODY_MEMORY).",
            g.body_memory_limit as f64,
        );
        if let Some(n) = g.memory_store_visitors {
            gauge(
                &mut out,
                MEMORY_STORE_VISITORS,
                "Visitors held by the memory session store.",
                n as f64,
            );
            header(
                &mut out,
                MEMORY_STORE_EVICTIONS,
                "counter",
                "Visitors removed from the memory store, by reason.",
            );
            let _ = writeln!(
                out,
                "{MEMORY_STORE_EVICTIONS}{{reason=\"expired\"}} {}",
                g.memory_store_evictions_expired
            );
            let _ = writeln!(
                out,
                "{MEMORY_STORE_EVICTIONS}{{reason=\"capacity\"}} {}",
                g.memory_store_evictions_capacity
            );
        }
        if let Some(p) = &g.publisher {
            render_publisher(&mut out, p);
        }
        if let Some(m) = &g.migration {
            render_migration(&mut out, m);
        }
        gauge(
            &mut out,
            READY,
            "1 while /readyz answers 200.",
            if g.ready { 1.0 } else { 0.0 },
        );
        gauge(
            &mut out,
            OVERLOADED,
            "1 while sustained overload makes /readyz answer 503.",
            if g.overloaded { 1.0 } else { 0.0 },
        );
        counter(
            &mut out,
            OVERLOAD_FLIPS,
            "Readiness changes caused by sustained overload (both directions).",
            g.overload_flips,
        );
        service_kit::prom::render_process(&mut out);
        out
    }
}

fn render_migration(out: &mut String, m: &crate::migration::MigrationClient) {
    let s = &m.stats;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    header(
        out,
        MIGRATION_CALLS,
        "counter",
        "Calls to migration-proxy by operation and outcome (create: a mint in legacy mode, conflict: another writer had created it; breaker_open: skipped by the open circuit; dropped: renewal queue full).",
    );
    for (op, outcome, c) in [
        ("get", "found", &s.get_found),
        ("get", "missing", &s.get_missing),
        ("get", "error", &s.get_error),
        ("get", "timeout", &s.get_timeout),
        ("get", "breaker_open", &s.get_breaker_open),
        ("put", "ok", &s.put_ok),
        ("put", "error", &s.put_error),
        ("put", "timeout", &s.put_timeout),
        ("put", "breaker_open", &s.put_breaker_open),
        ("put", "dropped", &s.put_dropped),
        ("create", "ok", &s.create_ok),
        ("create", "conflict", &s.create_conflict),
        ("create", "error", &s.create_error),
        ("create", "timeout", &s.create_timeout),
        ("create", "breaker_open", &s.create_breaker_open),
    ] {
        let _ = writeln!(
            out,
            "{MIGRATION_CALLS}{{op=\"{op}\",outcome=\"{outcome}\"}} {}",
            load(c)
        );
    }
    header(
        out,
        MIGRATION_LATENCY,
        "histogram",
        "Latency of lookups in migration-proxy (what a Bigtable miss adds to an event).",
    );
    s.get_latency.render(out, MIGRATION_LATENCY, "");
    gauge(
        out,
        MIGRATION_BREAKER_OPEN,
        "1 while the circuit to migration-proxy is open.",
        f64::from(u8::from(m.breaker().is_open())),
    );
    counter(
        out,
        MIGRATION_BREAKER_OPENED,
        "Times the circuit to migration-proxy opened.",
        load(&s.breaker_opened),
    );
    gauge(
        out,
        MIGRATION_QUEUE,
        "Renewals waiting to be sent to migration-proxy.",
        m.queue_depth() as f64,
    );
    counter(
        out,
        MIGRATION_INVALID,
        "Legacy session parts that could not be read (left out).",
        load(&s.invalid_parts),
    );
}

fn render_publisher(out: &mut String, p: &tracking_pubsub::PublisherStats) {
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
        &tracking_pubsub::DELIVERY_BUCKETS,
        p.delivery_buckets,
        p.delivery_count,
        p.delivery_sum_seconds,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.record_request(Route::Events, 204, Duration::from_micros(300));
        m.record_request(Route::Events, 204, Duration::from_millis(3));
        m.record_request(Route::Events, 418, Duration::from_secs(10));
        m.record_rejected(RejectReason::InvalidType);
        let text = m.render(&Gauges::default());
        assert!(text.contains("tracking_http_requests_total{route=\"events\",status=\"204\"} 2"));
        assert!(text.contains("tracking_http_requests_total{route=\"events\",status=\"other\"} 1"));
        assert!(text.contains(
            "tracking_http_request_duration_seconds_bucket{route=\"events\",le=\"0.0005\"} 1"
        ));
        assert!(text.contains(
            "tracking_http_request_duration_seconds_bucket{route=\"events\",le=\"0.005\"} 2"
        ));
        assert!(text.contains(
            "tracking_http_request_duration_seconds_bucket{route=\"events\",le=\"+Inf\"} 3"
        ));
        assert!(text.contains("tracking_events_rejected_total{reason=\"invalid_type\"} 1"));
    }

    #[test]
    fn renders_the_delivery_histogram_without_labels() {
        let mut buckets = [0; tracking_pubsub::DELIVERY_BUCKETS.len()];
        buckets[0] = 2;
        buckets[3] = 1;
        let text = Metrics::default().render(&Gauges {
            publisher: Some(tracking_pubsub::PublisherStats {
                delivery_buckets: buckets,
                delivery_count: 4,
                delivery_sum_seconds: 1.5,
                ..Default::default()
            }),
            ..Gauges::default()
        });
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
        assert!(text.contains("tracking_http_request_duration_seconds_sum{route=\"events\"} 0"));
    }
}
