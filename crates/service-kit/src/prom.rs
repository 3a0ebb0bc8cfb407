//! The Prometheus text format, as both services write it: counter, gauge and
//! histogram samples, a lock-free latency histogram, and the process's own
//! figures. Each service names its metrics in its own `metrics` module.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
pub const PROCESS_THREADS: &str = "process_threads";

/// Upper bounds (seconds) of the latency histogram buckets.
pub const BUCKETS: [f64; 14] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        render_histogram(
            out,
            name,
            labels,
            &BUCKETS,
            self.buckets.iter().map(|n| n.load(Ordering::Relaxed)),
            self.count.load(Ordering::Relaxed),
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        );
    }
}

/// One histogram's samples in the Prometheus text format: cumulative buckets
/// from per-bucket `counts` (one per bound), `+Inf`, sum and count. `labels`
/// is `name="value",…`, or empty.
pub fn render_histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: &[f64],
    counts: impl IntoIterator<Item = u64>,
    count: u64,
    sum: f64,
) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (bound, n) in bounds.iter().zip(counts) {
        cumulative += n;
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
        );
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
    let labels = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{labels} {sum}");
    let _ = writeln!(out, "{name}_count{labels} {count}");
}

/// The process's own figures, from /proc (Linux); absent elsewhere.
pub fn render_process(out: &mut String) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
    };
    if let Some(rss) = kib("VmRSS:") {
        gauge(out, PROCESS_RSS, "Resident memory in bytes.", rss * 1024.0);
    }
    if let Some(threads) = kib("Threads:") {
        gauge(out, PROCESS_THREADS, "OS threads.", threads);
    }
    // Fields 14 and 15 of /proc/self/stat (after the parenthesised name) are
    // user and system time in clock ticks (`sysconf(_SC_CLK_TCK)`).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let ticks: Option<f64> = stat.rsplit_once(')').and_then(|(_, rest)| {
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
    });
    if let Some(t) = ticks {
        header(
            out,
            PROCESS_CPU,
            "counter",
            "User and system CPU time in seconds.",
        );
        let hz = rustix::param::clock_ticks_per_second().max(1) as f64;
        let _ = writeln!(out, "{PROCESS_CPU} {}", t / hz);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        gauge(
            out,
            PROCESS_OPEN_FDS,
            "Open file descriptors.",
            dir.count() as f64,
        );
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    if let Some(max) = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<f64>().ok())
    {
        gauge(out, PROCESS_MAX_FDS, "Limit of open file descriptors.", max);
    }
}

pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

pub fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {v}");
}

pub fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {v}");
}

/// Status codes the services answer with, as the bounded `status` label;
/// anything else counts as `other`.
pub const STATUSES: [u16; 17] = [
    200, 204, 304, 400, 401, 403, 404, 405, 408, 413, 415, 500, 502, 503, 504, 429, 0,
];

fn status_slot(code: u16) -> usize {
    STATUSES[..STATUSES.len() - 1]
        .iter()
        .position(|&s| s == code)
        .unwrap_or(STATUSES.len() - 1)
}

/// Requests by route (an index into the service's route list) and status,
/// and their latency by route. Recording is two atomic adds.
#[derive(Debug)]
pub struct RequestMetrics<const ROUTES: usize> {
    requests: [[AtomicU64; STATUSES.len()]; ROUTES],
    durations: [Histogram; ROUTES],
}

impl<const ROUTES: usize> Default for RequestMetrics<ROUTES> {
    fn default() -> Self {
        Self {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            durations: std::array::from_fn(|_| Histogram::default()),
        }
    }
}

impl<const ROUTES: usize> RequestMetrics<ROUTES> {
    pub fn record(&self, route: usize, status: u16, elapsed: Duration) {
        if let (Some(r), Some(h)) = (self.requests.get(route), self.durations.get(route)) {
            r[status_slot(status)].fetch_add(1, Ordering::Relaxed);
            h.observe(elapsed);
        }
    }

    /// Requests of `route` answered with `status` (or, for a status not in
    /// [`STATUSES`], with any such).
    pub fn count(&self, route: usize, status: u16) -> u64 {
        self.requests
            .get(route)
            .map_or(0, |r| r[status_slot(status)].load(Ordering::Relaxed))
    }

    /// The counter `requests` by `route` and `status` (series that are still
    /// zero left out) and the histogram `durations` by `route`;
    /// `route_names[i]` names route `i`.
    pub fn render(
        &self,
        out: &mut String,
        requests: &str,
        durations: &str,
        duration_help: &str,
        route_names: &[&str; ROUTES],
    ) {
        header(
            out,
            requests,
            "counter",
            "HTTP requests answered, by route and status.",
        );
        for (route, name) in route_names.iter().enumerate() {
            for (i, status) in STATUSES.iter().enumerate() {
                let n = self.requests[route][i].load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let _ = if *status == 0 {
                    writeln!(out, "{requests}{{route=\"{name}\",status=\"other\"}} {n}")
                } else {
                    writeln!(
                        out,
                        "{requests}{{route=\"{name}\",status=\"{status}\"}} {n}"
                    )
                };
            }
        }
        header(out, durations, "histogram", duration_help);
        for (route, name) in route_names.iter().enumerate() {
            self.durations[route].render(out, durations, &format!("route=\"{name}\""));
        }
    }
}

/// A component that measures something: it writes its own families (help,
/// type and samples) when `/metrics` is rendered. Recording stays with the
/// component (plain atomics); only rendering goes through the registry.
pub trait Collect: Send + Sync + std::fmt::Debug {
    fn collect(&self, out: &mut String);
}

/// Every component's metrics, rendered in one text: the components register
/// themselves once at start-up, and `/metrics` renders them in that order,
/// then the `process_*` figures.
#[derive(Debug, Default)]
pub struct Registry {
    collectors: std::sync::RwLock<Vec<std::sync::Arc<dyn Collect>>>,
}

impl Registry {
    pub fn register(&self, collector: std::sync::Arc<dyn Collect>) {
        self.collectors
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(collector);
    }

    /// All registered families, then the process's own figures.
    pub fn render_into(&self, out: &mut String) {
        for c in self
            .collectors
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            c.collect(out);
        }
        render_process(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu_clock() -> f64 {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
    }

    /// `process_cpu_seconds_total` agrees with the process CPU clock (which
    /// knows nothing of ticks) to within a few ticks.
    #[test]
    fn process_cpu_is_in_seconds() {
        let start = cpu_clock();
        let mut x = 0u64;
        while cpu_clock() < start + 0.3 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let mut out = String::new();
        render_process(&mut out);
        let after = cpu_clock();
        let rendered: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("process_cpu_seconds_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no process_cpu_seconds_total in:\n{out}"));
        // Ticks truncate: the figure may trail the clock by a few of them.
        assert!(
            rendered <= after + 0.01 && rendered >= start + 0.3 - 0.1,
            "rendered {rendered} s, CPU clock {start} s .. {after} s"
        );
    }
}
