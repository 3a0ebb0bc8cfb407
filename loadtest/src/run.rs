//! The open-model generator. Each worker is one task on its own runtime
//! thread with its own pool of keep-alive connections, its own share of the
//! schedule (arrivals `w`, `w + W`, `w + 2W`, …) and its own histograms,
//! merged once at the end: nothing is shared on the hot path but a few
//! progress counters.
//!
//! A worker sends each request at its intended time whatever the earlier
//! ones are doing; when it falls behind it sends everything already due at
//! once (and the lag shows in `schedule_lag_ms`). Each connection carries one
//! request at a time and a worker has at most its share of the in-flight cap
//! of them; when all are busy, the send is counted as dropped, never
//! postponed. Latency is
//! measured from the intended send time, so a stalled target cannot hide
//! behind a generator that waited for it (no coordinated omission).
//! Timers have millisecond granularity: schedule lag below ~1 ms is noise.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::report::{Cpu, Health, Report, Second, add_counts, new_histogram};
use crate::scenario::{Generator, ScenarioConfig};
use crate::schedule::Schedule;

#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub target: http::Uri,
    pub schedule: Schedule,
    /// Exponential inter-arrival times instead of constant ones.
    pub poisson: bool,
    pub scenario: ScenarioConfig,
    pub seed: u64,
    /// Generator workers (one per runtime thread).
    pub workers: usize,
    /// Most requests in flight across all workers.
    pub max_inflight: usize,
    pub timeout: Duration,
    pub health: Health,
    /// Keep-alive connections opened before the start (across all workers).
    pub connections: usize,
    /// Path requested to open them (answered by the target, e.g. `/healthz`).
    pub warmup_path: String,
    /// Where to write the `event_id` of every event answered 2xx, one per
    /// line (the scenario stamps ids).
    pub ids_out: Option<std::path::PathBuf>,
}

/// Counters shared with the progress line (atomics, no locks).
#[derive(Debug)]
pub struct Progress {
    pub sent: AtomicU64,
    pub completed: AtomicU64,
    pub errors: AtomicU64,
    pub dropped: AtomicU64,
    /// Log-scale latency buckets (×1.1 per bucket from 1 µs) for "p99 so far".
    buckets: [AtomicU64; 256],
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            sent: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Progress {
    fn record_latency(&self, us: u64) {
        let i = ((us.max(1) as f64).ln() / 1.1f64.ln()) as usize;
        self.buckets[i.min(255)].fetch_add(1, Ordering::Relaxed);
    }

    /// Upper bound of the p99 of latencies so far, in ms (±10%).
    pub fn p99_ms(&self) -> f64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen * 100 >= total * 99 {
                return 1.1f64.powi(i as i32 + 1) / 1000.0;
            }
        }
        f64::INFINITY
    }
}

#[derive(Debug)]
enum Failure {
    Connect,
    Timeout,
    Io,
}

struct WorkerOut {
    latency: Histogram<u64>,
    service: Histogram<u64>,
    lag: Histogram<u64>,
    sent: u64,
    completed: u64,
    errors: u64,
    dropped: u64,
    classes: BTreeMap<String, u64>,
    statuses: BTreeMap<String, u64>,
    seconds: Vec<Second>,
    last_send: Option<Instant>,
    /// Event ids answered 2xx (when the scenario stamps them).
    accepted_ids: Vec<String>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn second(seconds: &mut Vec<Second>, i: usize) -> &mut Second {
    if seconds.len() <= i {
        seconds.resize(i + 1, Second::default());
    }
    &mut seconds[i]
}

type Conn = SendRequest<Full<Bytes>>;

/// A worker's connections: `cap` slots, each holding at most one HTTP/1.1
/// connection, which carries one request at a time. Free slots are reused
/// last-in first-out, so traffic stays on warm connections and a new one is
/// opened only when every open one is busy. A slot in use is owned by its
/// request and given back with its connection when the request ends.
///
/// A connection idle for [`MAX_IDLE`] is not reused: the server may be closing
/// it (idle timeout) just as a request goes out on it, which would show up as
/// an I/O error that is not the server's fault. A fresh connection is opened
/// instead.
struct Pool {
    free: Vec<(usize, Option<Conn>, std::time::Instant)>,
}

/// Longest idle time after which a pooled connection is reopened; well below
/// the idle timeouts servers use (seconds to minutes).
const MAX_IDLE: Duration = Duration::from_secs(2);

impl Pool {
    fn new(cap: usize) -> Self {
        let now = std::time::Instant::now();
        // Reversed so that slot 0 is handed out first.
        Self {
            free: (0..cap).rev().map(|i| (i, None, now)).collect(),
        }
    }

    fn take(&mut self) -> Option<(usize, Option<Conn>)> {
        let (slot, conn, since) = self.free.pop()?;
        Some((slot, conn.filter(|_| since.elapsed() < MAX_IDLE)))
    }

    fn give_back(&mut self, slot: usize, conn: Option<Conn>) {
        self.free.push((
            slot,
            conn.filter(|c| !c.is_closed()),
            std::time::Instant::now(),
        ));
    }
}

async fn connect(authority: &str) -> Result<Conn, Failure> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|_| Failure::Connect)?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| Failure::Connect)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends one request on the slot's connection (opening one if needed);
/// returns the status and the connection when it can carry another request.
async fn send(
    conn: Option<Conn>,
    authority: &str,
    req: http::Request<Full<Bytes>>,
    timeout: Duration,
) -> (Result<u16, Failure>, Option<Conn>) {
    let exchange = async {
        let mut conn = match conn {
            Some(c) => c,
            None => connect(authority).await?,
        };
        conn.ready().await.map_err(|_| Failure::Io)?;
        let resp = conn.send_request(req).await.map_err(|_| Failure::Io)?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            frame.map_err(|_| Failure::Io)?;
        }
        Ok((status, conn))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok((status, conn))) => (Ok(status), Some(conn)),
        Ok(Err(f)) => (Err(f), None),
        Err(_) => (Err(Failure::Timeout), None),
    }
}

fn request(cfg: &RunConfig, method: http::Method, path: &str) -> http::request::Builder {
    http::Request::builder().method(method).uri(path).header(
        http::header::HOST,
        cfg.target.authority().map_or("", |a| a.as_str()),
    )
}

/// Opens up to `n` connections of `pool` with concurrent GETs of the
/// warm-up path; returns how many failed.
async fn warm_up(pool: &mut Pool, cfg: &RunConfig, n: usize) -> usize {
    let authority = cfg.target.authority().map_or("", |a| a.as_str()).to_owned();
    let mut taken = Vec::new();
    while taken.len() < n {
        let Some(slot) = pool.take() else { break };
        taken.push(slot);
    }
    let exchanges: FuturesUnordered<_> = taken
        .into_iter()
        .map(|(slot, conn)| {
            let req =
                request(cfg, http::Method::GET, &cfg.warmup_path).body(Full::new(Bytes::new()));
            let authority = authority.clone();
            async move {
                match req {
                    Ok(req) => {
                        let (result, conn) = send(conn, &authority, req, cfg.timeout).await;
                        (slot, conn, result.is_err())
                    }
                    Err(_) => (slot, conn, true),
                }
            }
        })
        .collect();
    let done: Vec<_> = exchanges.collect().await;
    let mut failed = 0;
    for (slot, conn, f) in done {
        failed += usize::from(f);
        pool.give_back(slot, conn);
    }
    failed
}

async fn worker(
    cfg: Arc<RunConfig>,
    w: usize,
    mut pool: Pool,
    t0: Instant,
    progress: Arc<Progress>,
) -> WorkerOut {
    let workers = cfg.workers.max(1);
    let authority: Arc<str> = cfg.target.authority().map_or("", |a| a.as_str()).into();
    let mut requests = Generator::new(cfg.scenario.clone(), cfg.seed.wrapping_add(w as u64));
    let mut arrivals = SmallRng::seed_from_u64(cfg.seed ^ 0x5eed ^ (w as u64) << 32);
    let mut step = || -> f64 {
        if cfg.poisson {
            // Each worker is a Poisson process of rate/W: gaps of W·Exp(1) arrivals.
            let u: f64 = arrivals.random();
            -(1.0 - u).ln() * workers as f64
        } else {
            workers as f64
        }
    };
    let mut u = if cfg.poisson {
        step() - workers as f64 + w as f64
    } else {
        w as f64
    };
    let mut out = WorkerOut {
        latency: new_histogram(),
        service: new_histogram(),
        lag: new_histogram(),
        sent: 0,
        completed: 0,
        errors: 0,
        dropped: 0,
        classes: BTreeMap::new(),
        statuses: BTreeMap::new(),
        seconds: Vec::new(),
        last_send: None,
        accepted_ids: Vec::new(),
    };
    let mut pending = FuturesUnordered::new();
    let end = t0 + cfg.schedule.end();
    loop {
        let next = cfg.schedule.time_at(u);
        if next.is_none() && pending.is_empty() {
            break;
        }
        let wake = next.map_or(end, |t| t0 + t);
        tokio::select! {
            biased;
            () = tokio::time::sleep_until(wake), if next.is_some() => {
                let now = Instant::now();
                while let Some(t) = cfg.schedule.time_at(u) {
                    let intended = t0 + t;
                    if intended > now {
                        break;
                    }
                    let sec = t.as_secs() as usize;
                    let Some((slot, conn)) = pool.take() else {
                        out.dropped += 1;
                        second(&mut out.seconds, sec).dropped += 1;
                        progress.dropped.fetch_add(1, Ordering::Relaxed);
                        u += step();
                        continue;
                    };
                    let planned = requests.next_request();
                    let mut req = request(&cfg, planned.method, &planned.path);
                    if let Some(ct) = planned.content_type {
                        req = req.header(http::header::CONTENT_TYPE, ct);
                    }
                    if planned.gzip {
                        req = req.header(http::header::CONTENT_ENCODING, "gzip");
                    }
                    let Ok(req) = req.body(Full::new(planned.body)) else {
                        out.errors += 1;
                        *out.classes.entry("request_build".into()).or_default() += 1;
                        pool.give_back(slot, conn);
                        u += step();
                        continue;
                    };
                    let sent = Instant::now();
                    let _ = out.lag.record(micros(sent - intended));
                    out.sent += 1;
                    out.last_send = Some(sent);
                    second(&mut out.seconds, sec).sent += 1;
                    progress.sent.fetch_add(1, Ordering::Relaxed);
                    let timeout = cfg.timeout;
                    let authority = Arc::clone(&authority);
                    let ids = planned.ids;
                    pending.push(async move {
                        let (result, conn) = send(conn, &authority, req, timeout).await;
                        (intended, sent, Instant::now(), result, sec, slot, conn, ids)
                    });
                    u += step();
                }
            }
            Some((intended, sent, done, result, sec, slot, conn, ids)) = pending.next(), if !pending.is_empty() => {
                pool.give_back(slot, conn);
                let s = second(&mut out.seconds, sec);
                match result {
                    Ok(status) => {
                        let latency = micros(done - intended);
                        let _ = out.latency.record(latency);
                        let _ = out.service.record(micros(done - sent));
                        progress.record_latency(latency);
                        out.completed += 1;
                        s.completed += 1;
                        s.max_latency_ms = s.max_latency_ms.max(latency as f64 / 1000.0);
                        progress.completed.fetch_add(1, Ordering::Relaxed);
                        *out.statuses.entry(status.to_string()).or_default() += 1;
                        if (200..300).contains(&status) {
                            out.accepted_ids.extend(ids);
                        } else {
                            out.errors += 1;
                            s.errors += 1;
                            progress.errors.fetch_add(1, Ordering::Relaxed);
                            *out.classes.entry(format!("status_{status}")).or_default() += 1;
                        }
                    }
                    Err(f) => {
                        out.errors += 1;
                        s.errors += 1;
                        progress.errors.fetch_add(1, Ordering::Relaxed);
                        let class = match f {
                            Failure::Connect => "connect",
                            Failure::Timeout => "timeout",
                            Failure::Io => "io",
                        };
                        *out.classes.entry(class.into()).or_default() += 1;
                    }
                }
            }
        }
    }
    out
}

/// CPU time (user + system) of this process so far, from /proc (Linux).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall, in clock ticks (USER_HZ = 100 on Linux).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Runs the schedule against the target and reports. `progress` is updated
/// as requests complete.
pub async fn run(cfg: RunConfig, progress: Arc<Progress>) -> anyhow::Result<Report> {
    let cfg = Arc::new(cfg);
    let workers = cfg.workers.max(1);
    let cap = cfg.max_inflight.div_ceil(workers).max(1);
    let mut pools: Vec<Pool> = (0..workers).map(|_| Pool::new(cap)).collect();
    let per_worker = cfg.connections.div_ceil(workers).min(cap);
    let mut failed = 0;
    for p in &mut pools {
        failed += warm_up(p, &cfg, per_worker).await;
    }
    anyhow::ensure!(
        failed < per_worker * workers || per_worker == 0,
        "warm-up: none of {} requests to {}{} succeeded; is the target up?",
        per_worker * workers,
        cfg.target,
        cfg.warmup_path
    );
    let cpu_before = process_cpu_seconds();
    // A common start shortly ahead, so every worker is waiting when it comes.
    let t0 = Instant::now() + Duration::from_millis(50);
    let start_unix_ms = (SystemTime::now() + Duration::from_millis(50))
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let handles: Vec<_> = pools
        .into_iter()
        .enumerate()
        .map(|(w, p)| tokio::spawn(worker(Arc::clone(&cfg), w, p, t0, Arc::clone(&progress))))
        .collect();
    let mut outs = Vec::with_capacity(handles.len());
    for h in handles {
        outs.push(h.await?);
    }
    let elapsed = t0.elapsed().as_secs_f64().max(1e-9);
    if let Some(path) = &cfg.ids_out {
        let mut text = String::new();
        for id in outs.iter().flat_map(|o| &o.accepted_ids) {
            text.push_str(id);
            text.push('\n');
        }
        std::fs::write(path, text)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    let cpu_seconds = match (cpu_before, process_cpu_seconds()) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };

    let (mut latency, mut service, mut lag) = (new_histogram(), new_histogram(), new_histogram());
    let mut report = Report {
        target: cfg.target.to_string(),
        scenario: format!("{:?}", cfg.scenario.kind).to_lowercase(),
        target_rate: cfg.schedule.mean_rate(),
        start_unix_ms,
        ..Report::default()
    };
    let mut seconds: Vec<Second> = Vec::new();
    let mut last_send = t0;
    for o in &outs {
        latency.add(&o.latency)?;
        service.add(&o.service)?;
        lag.add(&o.lag)?;
        report.sent += o.sent;
        report.completed += o.completed;
        report.errors += o.errors;
        report.dropped += o.dropped;
        add_counts(&mut report.errors_by_class, &o.classes);
        add_counts(&mut report.status_counts, &o.statuses);
        for (i, s) in o.seconds.iter().enumerate() {
            second(&mut seconds, i).absorb(s);
        }
        if let Some(t) = o.last_send {
            last_send = last_send.max(t);
        }
    }
    let sending_span = cfg
        .schedule
        .end()
        .as_secs_f64()
        .max((last_send - t0).as_secs_f64());
    report.duration_s = (elapsed * 1000.0).round() / 1000.0;
    report.achieved_rate = if sending_span > 0.0 {
        report.sent as f64 / sending_span
    } else {
        0.0
    };
    report.set_distributions(&latency, &service, &lag);
    let start_second = start_unix_ms / 1000;
    report.timeseries = seconds
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            s.unix_second = start_second + i as u64;
            s
        })
        .collect();
    report.generator_cpu = vec![Cpu {
        cpu_seconds: (cpu_seconds * 100.0).round() / 100.0,
        threads: cfg.workers.max(1),
        utilisation: ((cpu_seconds / (elapsed * cfg.workers.max(1) as f64)) * 1000.0).round()
            / 1000.0,
    }];
    report.judge(cfg.health);
    Ok(report)
}
