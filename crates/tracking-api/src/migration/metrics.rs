//! The migration link's metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use super::MigrationClient;

/// Outcomes of calls to migration-proxy, for metrics.
#[derive(Debug, Default)]
pub struct MigrationStats {
    pub get_found: AtomicU64,
    pub get_missing: AtomicU64,
    pub get_error: AtomicU64,
    pub get_timeout: AtomicU64,
    pub get_breaker_open: AtomicU64,
    pub put_ok: AtomicU64,
    pub put_error: AtomicU64,
    pub put_timeout: AtomicU64,
    pub put_breaker_open: AtomicU64,
    /// Renewals dropped because the queue was full.
    pub put_dropped: AtomicU64,
    /// Mints in `legacy` mode (create-only `PUT`s): created, or found
    /// another writer's session (which the event then adopted).
    pub create_ok: AtomicU64,
    pub create_conflict: AtomicU64,
    pub create_error: AtomicU64,
    pub create_timeout: AtomicU64,
    pub create_breaker_open: AtomicU64,
    /// Legacy parts that could not be read (e.g. an id outside the accepted
    /// set).
    pub invalid_parts: AtomicU64,
    pub breaker_opened: AtomicU64,
    pub get_latency: service_kit::prom::Histogram,
}

pub const CALLS: &str = "tracking_migration_calls_total";
pub const LATENCY: &str = "tracking_migration_lookup_duration_seconds";
pub const BREAKER_OPEN: &str = "tracking_migration_breaker_open";
pub const BREAKER_OPENED: &str = "tracking_migration_breaker_opened_total";
pub const QUEUE: &str = "tracking_migration_queue_renewals";
pub const INVALID: &str = "tracking_migration_invalid_parts_total";

impl service_kit::prom::Collect for MigrationClient {
    fn collect(&self, out: &mut String) {
        let m = self;
        let s = &m.stats;
        use std::fmt::Write;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        service_kit::prom::header(
            out,
            CALLS,
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
                "{CALLS}{{op=\"{op}\",outcome=\"{outcome}\"}} {}",
                load(c)
            );
        }
        service_kit::prom::header(
            out,
            LATENCY,
            "histogram",
            "Latency of lookups in migration-proxy (what a Bigtable miss adds to an event).",
        );
        s.get_latency.render(out, LATENCY, "");
        service_kit::prom::gauge(
            out,
            BREAKER_OPEN,
            "1 while the circuit to migration-proxy is open.",
            f64::from(u8::from(m.breaker().is_open())),
        );
        service_kit::prom::counter(
            out,
            BREAKER_OPENED,
            "Times the circuit to migration-proxy opened.",
            load(&s.breaker_opened),
        );
        service_kit::prom::gauge(
            out,
            QUEUE,
            "Renewals waiting to be sent to migration-proxy.",
            m.queue_depth() as f64,
        );
        service_kit::prom::counter(
            out,
            INVALID,
            "Legacy session parts that could not be read (left out).",
            load(&s.invalid_parts),
        );
    }
}
