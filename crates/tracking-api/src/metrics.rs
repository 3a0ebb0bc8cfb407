//! The API's own (HTTP-level) metrics, with bounded label sets: requests,
//! events taken and refused, session outcomes, shedding, readiness. Counters
//! and histograms are plain atomics: recording never locks or allocates.
//! The adapters' metrics are theirs, registered in the
//! [`Registry`](service_kit::prom::Registry) that `GET /metrics` renders
//! after these (see ARCHITECTURE.md, "Metrics").

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use service_kit::prom::{RequestMetrics, counter, gauge, header};
use tracking_core::RejectReason;

pub const HTTP_REQUESTS: &str = "tracking_http_requests_total";
pub const HTTP_DURATION: &str = "tracking_http_request_duration_seconds";
pub const EVENTS_ACCEPTED: &str = "tracking_events_accepted_total";
pub const EVENTS_REJECTED: &str = "tracking_events_rejected_total";
pub const EVENTS_DUPLICATES: &str = "tracking_events_duplicates_total";
pub const DEDUP_UNCHECKED: &str = "tracking_events_dedup_unchecked_total";
pub const DEDUP_WINDOW: &str = "tracking_dedup_window_seconds";
pub const SESSIONS: &str = "tracking_sessions_total";
pub const SESSION_STORE_ERRORS: &str = "tracking_session_store_errors_total";
pub const SESSION_STORE_OPS: &str = "tracking_session_store_ops_total";
pub const SHED: &str = "tracking_requests_shed_total";
pub const DEADLETTERS_DROPPED: &str = "tracking_deadletters_dropped_total";
pub const INFLIGHT: &str = "tracking_inflight_requests";
pub const BODY_MEMORY: &str = "tracking_body_memory_bytes";
pub const BODY_MEMORY_LIMIT: &str = "tracking_body_memory_limit_bytes";
pub const READY: &str = "tracking_ready";
pub const OVERLOADED: &str = "tracking_overloaded";
pub const OVERLOAD_FLIPS: &str = "tracking_overload_readiness_changes_total";

/// Routes, as the bounded `route` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Events,
    Pixel,
    /// The Segment API's call and batch routes.
    Segment,
    /// `GET /v1/projects/{writeKey}/settings`.
    SegmentSettings,
    Preflight,
    Tracker,
    Healthz,
    Readyz,
    Metrics,
    /// The event inspector's page and JSON API (admin listener).
    Inspect,
    Other,
}

impl Route {
    const ALL: [Route; 11] = [
        Self::Events,
        Self::Pixel,
        Self::Segment,
        Self::SegmentSettings,
        Self::Preflight,
        Self::Tracker,
        Self::Healthz,
        Self::Readyz,
        Self::Metrics,
        Self::Inspect,
        Self::Other,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::Pixel => "pixel",
            Self::Segment => "segment",
            Self::SegmentSettings => "segment_settings",
            Self::Preflight => "preflight",
            Self::Tracker => "tracker",
            Self::Healthz => "healthz",
            Self::Readyz => "readyz",
            Self::Metrics => "metrics",
            Self::Inspect => "inspect",
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

/// Gauges read at render time from the application state.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    pub inflight: usize,
    /// Bytes of request bodies held, and their bound.
    pub body_memory: usize,
    pub body_memory_limit: usize,
    /// The session store's own counters (Bigtable reads, writes, retries, …),
    /// through its port.
    pub store_ops: Vec<(&'static str, u64)>,
    pub ready: bool,
    /// Sustained overload has made /readyz answer 503.
    pub overloaded: bool,
    pub overload_flips: u64,
    /// `TRACKING_DEDUP_WINDOW` in effect (zero: off).
    pub dedup_window: Duration,
}

#[derive(Debug, Default)]
pub struct Metrics {
    requests: RequestMetrics<{ Route::ALL.len() }>,
    pub events_accepted: AtomicU64,
    /// Accepted events not output: retries of ones accepted within the
    /// dedup window.
    pub events_duplicates: AtomicU64,
    /// Output events whose client-given id could not be checked (the store
    /// did not answer).
    pub dedup_unchecked: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    pub sessions_short_new: AtomicU64,
    pub sessions_long_new: AtomicU64,
    pub sessions_continued: AtomicU64,
    pub sessions_unavailable: AtomicU64,
    pub session_store_timeouts: AtomicU64,
    pub session_store_failures: AtomicU64,
    shed: [AtomicU64; ShedReason::ALL.len()],
    pub deadletters_dropped: AtomicU64,
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
        counter(
            &mut out,
            EVENTS_DUPLICATES,
            "Accepted events not output again: their client-given id was accepted for the same visitor within the dedup window.",
            load(&self.events_duplicates),
        );
        counter(
            &mut out,
            DEDUP_UNCHECKED,
            "Events output without checking their client-given id (session store unavailable): marked \"dedup\":\"unchecked\".",
            load(&self.dedup_unchecked),
        );
        gauge(
            &mut out,
            DEDUP_WINDOW,
            "The dedup window in effect (0: off).",
            g.dedup_window.as_secs_f64(),
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
        out
    }
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
}
