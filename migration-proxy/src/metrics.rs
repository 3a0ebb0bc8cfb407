//! Every metric migration-proxy exports, named in one place, with bounded
//! label sets: the HTTP-level ones ([`Metrics`], rendered by the server) and
//! the Aerospike client's ([`AerospikeMetrics`], owned by
//! [`Legacy`](crate::legacy::Legacy) and rendered through the registry).
//! Rendered in the Prometheus text format on `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use service_kit::prom::{Histogram, RequestMetrics, counter, gauge, header};

pub const HTTP_REQUESTS: &str = "migration_http_requests_total";
pub const HTTP_DURATION: &str = "migration_http_request_duration_seconds";
pub const AEROSPIKE_OPS: &str = "migration_aerospike_ops_total";
pub const AEROSPIKE_DURATION: &str = "migration_aerospike_op_duration_seconds";
pub const SHED: &str = "migration_requests_shed_total";
pub const UNAUTHORIZED: &str = "migration_requests_unauthorized_total";
pub const INFLIGHT: &str = "migration_inflight_requests";
pub const CONNECTED: &str = "migration_aerospike_connected";
pub const INVALID_RECORDS: &str = "migration_invalid_records_total";

/// Routes, as the bounded `route` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    GetSession,
    PutSession,
    Health,
    Metrics,
    Other,
}

impl Route {
    pub const ALL: [Route; 5] = [
        Route::GetSession,
        Route::PutSession,
        Route::Health,
        Route::Metrics,
        Route::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::GetSession => "get_session",
            Self::PutSession => "put_session",
            Self::Health => "health",
            Self::Metrics => "metrics",
            Self::Other => "other",
        }
    }
}

const OPS: [&str; 2] = ["get", "put"];
const SETS: [&str; 3] = ["short_sessions", "long_sessions", "via"];
/// `exists`: a create-only put (a mint) found the record there. `error`
/// last: unknown outcomes count there.
const OUTCOMES: [&str; 5] = ["ok", "not_found", "exists", "timeout", "error"];

fn slot(list: &[&str], v: &str) -> usize {
    list.iter().position(|&s| s == v).unwrap_or(list.len() - 1)
}

#[derive(Debug, Default)]
pub struct Metrics {
    requests: RequestMetrics<{ Route::ALL.len() }>,
    pub shed: AtomicU64,
    pub unauthorized: AtomicU64,
}

/// Read at render time from the server.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub inflight: usize,
}

/// Aerospike calls by operation, set and outcome, and their latency.
#[derive(Debug, Default)]
pub struct AerospikeMetrics {
    ops: [[[AtomicU64; OUTCOMES.len()]; SETS.len()]; OPS.len()],
    op_durations: [Histogram; OPS.len()],
}

impl AerospikeMetrics {
    pub fn record(&self, op: &str, set: &str, outcome: &str, elapsed: Duration) {
        let o = slot(&OPS, op);
        self.ops[o][slot(&SETS, set)][slot(&OUTCOMES, outcome)].fetch_add(1, Ordering::Relaxed);
        self.op_durations[o].observe(elapsed);
    }

    /// The call counts and latencies, then the client's state.
    pub fn render(&self, out: &mut String, invalid_records: u64, connected: bool) {
        header(
            out,
            AEROSPIKE_OPS,
            "counter",
            "Aerospike calls by operation, set and outcome.",
        );
        for (o, op) in OPS.iter().enumerate() {
            for (s, set) in SETS.iter().enumerate() {
                for (k, outcome) in OUTCOMES.iter().enumerate() {
                    let n = self.ops[o][s][k].load(Ordering::Relaxed);
                    let _ = writeln!(
                        out,
                        "{AEROSPIKE_OPS}{{op=\"{op}\",set=\"{set}\",outcome=\"{outcome}\"}} {n}"
                    );
                }
            }
        }
        header(
            out,
            AEROSPIKE_DURATION,
            "histogram",
            "Aerospike call latency by operation.",
        );
        for (o, op) in OPS.iter().enumerate() {
            self.op_durations[o].render(out, AEROSPIKE_DURATION, &format!("op=\"{op}\""));
        }
        counter(
            out,
            INVALID_RECORDS,
            "Legacy records with unreadable bins (left out of answers).",
            invalid_records,
        );
        gauge(
            out,
            CONNECTED,
            "1 while the Aerospike client is connected.",
            f64::from(u8::from(connected)),
        );
    }
}

impl Metrics {
    pub fn record_request(&self, route: Route, status: u16, elapsed: Duration) {
        self.requests.record(route as usize, status, elapsed);
    }

    pub fn requests(&self, route: Route, status: u16) -> u64 {
        self.requests.count(route as usize, status)
    }

    pub fn render(&self, g: Gauges) -> String {
        let mut out = String::with_capacity(8 * 1024);
        self.requests.render(
            &mut out,
            HTTP_REQUESTS,
            HTTP_DURATION,
            "HTTP request latency by route.",
            &Route::ALL.map(Route::as_str),
        );
        counter(
            &mut out,
            SHED,
            "Requests refused with 503 at the concurrency limit.",
            self.shed.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            UNAUTHORIZED,
            "Requests refused for a missing or wrong bearer token.",
            self.unauthorized.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            INFLIGHT,
            "Session requests being served.",
            g.inflight as f64,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bounded_labels() {
        let m = Metrics::default();
        m.record_request(Route::GetSession, 200, Duration::from_millis(1));
        m.record_request(Route::GetSession, 299, Duration::from_millis(1));
        let a = AerospikeMetrics::default();
        a.record("get", "via", "not_found", Duration::from_micros(300));
        a.record("get", "unknown-set", "weird", Duration::from_micros(300));
        let mut text = m.render(Gauges::default());
        a.render(&mut text, 0, false);
        for line in [
            "migration_http_requests_total{route=\"get_session\",status=\"200\"} 1",
            "migration_http_requests_total{route=\"get_session\",status=\"other\"} 1",
            "migration_aerospike_ops_total{op=\"get\",set=\"via\",outcome=\"not_found\"} 1",
            "migration_aerospike_ops_total{op=\"get\",set=\"via\",outcome=\"error\"} 1",
            "migration_aerospike_op_duration_seconds_count{op=\"get\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
    }
}
