//! `loadtest` binary: parses the command line, runs, prints and writes the
//! report, and turns thresholds and the generator's verdict into the exit
//! status (0 pass, 1 fail or saturated, 2 usage).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Parser, Subcommand};
use loadtest::report::{Health, Report, merge};
use loadtest::run::{Progress, RunConfig, run};
use loadtest::scenario::{ScenarioConfig, ScenarioKind};
use loadtest::schedule::{Schedule, parse_stages};

fn duration(s: &str) -> Result<Duration, String> {
    tracking_core::parse_duration(s)
}

/// Open-model HTTP load generator for the tracking API.
///
/// Requests are scheduled at fixed intended times (t0 + i/rate) whatever the
/// responses do; latency is measured from those times; the run is marked
/// `generator_saturated` (exit status 1) when the generator could not keep
/// its own schedule.
#[derive(Debug, Parser)]
#[command(version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send requests at a constant (or staged) arrival rate.
    Run(Box<RunArgs>),
    /// Merge reports of generators that ran together (exact: histograms are added).
    Merge(MergeArgs),
    /// Serve the least an HTTP endpoint can do (read body, 204), as a reference.
    Baseline(BaselineArgs),
}

#[derive(Debug, clap::Args)]
struct Thresholds {
    /// Fail (exit 1) when the latency p99 from intended send time exceeds this.
    #[arg(long, value_parser = duration)]
    max_p99: Option<Duration>,
    /// Fail (exit 1) when errors / sent exceeds this fraction (e.g. 0.001).
    #[arg(long)]
    max_error_rate: Option<f64>,
    /// Schedule-lag p99 beyond which the generator calls itself saturated.
    #[arg(long, value_parser = duration, default_value = "5ms")]
    max_lag_p99: Duration,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Base URL of the target, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    target: http::Uri,
    /// Requests per second (after the ramp).
    #[arg(long)]
    rate: f64,
    /// How long to hold the rate (after the ramp).
    #[arg(long, value_parser = duration)]
    duration: Duration,
    /// Linear ramp from 0 to --rate before --duration.
    #[arg(long, value_parser = duration, default_value = "0s")]
    ramp: Duration,
    /// Piecewise-linear stages instead of ramp/rate/duration:
    /// `DURATION:RATE,…` (e.g. `10s:1000,30s:1000,10s:5000`), starting from 0.
    #[arg(long)]
    stages: Option<String>,
    /// Exponential (Poisson) inter-arrival times instead of constant ones.
    #[arg(long)]
    poisson: bool,
    #[arg(long, value_enum, default_value = "beacon")]
    scenario: ScenarioKind,
    /// `mixed`: percentage of requests that are beacons (the rest mobile batches).
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=100))]
    beacon_percent: u8,
    /// Percentage of beacons sent as pixel GETs.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(0..=100))]
    pixel_percent: u8,
    /// Visitor population (low ids come back most often).
    #[arg(long, default_value_t = 100_000)]
    visitors: u64,
    /// Seed for every random choice: same seed, same requests.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Generator threads (one worker each).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Most requests in flight — and so most connections, each carrying one
    /// request at a time; beyond it sends are dropped and counted. Default
    /// from Little's law: rate × 100 ms × 2 headroom, within [64, 10000].
    #[arg(long)]
    max_inflight: Option<usize>,
    /// Per-request timeout.
    #[arg(long, value_parser = duration, default_value = "10s")]
    timeout: Duration,
    /// Keep-alive connections opened before the start, so the first second
    /// does not measure connection set-up. Default: rate / 500, within [8, 256].
    #[arg(long)]
    connections: Option<usize>,
    /// Path requested to open those connections (not counted in the report).
    #[arg(long, default_value = "/healthz")]
    warmup_path: String,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Give every event a unique `event_id` and write the ids of the events
    /// answered 2xx here, one per line (for checking that every accepted
    /// event arrived). Batches are then built per request.
    #[arg(long)]
    ids_out: Option<PathBuf>,
    #[command(flatten)]
    thresholds: Thresholds,
}

#[derive(Debug, clap::Args)]
struct MergeArgs {
    /// Reports written by `loadtest run --report`.
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    /// Write the merged JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    #[command(flatten)]
    thresholds: Thresholds,
}

#[derive(Debug, clap::Args)]
struct BaselineArgs {
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Server threads (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
}

#[allow(clippy::print_stdout, clippy::print_stderr)]
fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => cmd_run(*args),
        Command::Merge(args) => cmd_merge(args),
        Command::Baseline(args) => cmd_baseline(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Prints the summary, writes the report and decides the exit status.
#[allow(clippy::print_stdout, clippy::print_stderr)]
fn conclude(report: &Report, path: Option<&PathBuf>, t: &Thresholds) -> anyhow::Result<ExitCode> {
    print!("{}", report.summary());
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    let mut failed = report.generator_saturated;
    if let Some(max) = t.max_p99 {
        let max_ms = max.as_secs_f64() * 1000.0;
        if report.latency_ms.p99 > max_ms {
            println!(
                "FAIL: latency p99 {:.2} ms > --max-p99 {max_ms:.2} ms",
                report.latency_ms.p99
            );
            failed = true;
        }
    }
    if let Some(max) = t.max_error_rate
        && report.error_rate > max
    {
        println!(
            "FAIL: error rate {:.5} > --max-error-rate {max}",
            report.error_rate
        );
        failed = true;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn health(t: &Thresholds) -> Health {
    Health {
        max_lag_p99_ms: t.max_lag_p99.as_secs_f64() * 1000.0,
        ..Health::default()
    }
}

#[allow(clippy::print_stderr)]
fn cmd_run(a: RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        a.rate > 0.0 && a.rate.is_finite(),
        "--rate must be a positive number"
    );
    anyhow::ensure!(a.threads >= 1, "--threads must be at least 1");
    anyhow::ensure!(
        a.target.scheme_str() == Some("http") && a.target.host().is_some(),
        "--target must be an http:// URL with a host"
    );
    let schedule = match &a.stages {
        Some(s) => Schedule::new(0.0, &parse_stages(s).map_err(anyhow::Error::msg)?),
        None => {
            anyhow::ensure!(!a.duration.is_zero(), "--duration must be more than 0");
            Schedule::constant(a.rate, a.duration, a.ramp)
        }
    };
    let peak = a.rate.max(schedule.mean_rate());
    let max_inflight = a
        .max_inflight
        .unwrap_or(((peak * 0.2).ceil() as usize).clamp(64, 10_000));
    let cfg = RunConfig {
        target: a.target.clone(),
        schedule,
        poisson: a.poisson,
        scenario: ScenarioConfig {
            kind: a.scenario,
            beacon_percent: a.beacon_percent,
            pixel_percent: a.pixel_percent,
            visitors: a.visitors.max(1),
            batch_min: 10,
            batch_max: 100,
            ids: a.ids_out.is_some(),
        },
        seed: a.seed,
        workers: a.threads,
        max_inflight,
        timeout: a.timeout,
        health: health(&a.thresholds),
        connections: a
            .connections
            .unwrap_or(((peak / 500.0).ceil() as usize).clamp(8, 256)),
        warmup_path: a.warmup_path.clone(),
        ids_out: a.ids_out.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads)
        .enable_all()
        .build()?;
    let progress = Arc::new(Progress::default());
    let report = runtime.block_on(async {
        let p = Arc::clone(&progress);
        let ticker = tokio::spawn(async move {
            let terminal = std::io::stderr().is_terminal();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let (mut elapsed, mut last_sent) = (0u64, 0u64);
            loop {
                tick.tick().await;
                let sent = p.sent.load(Ordering::Relaxed);
                let line = format!(
                    "[{elapsed:>4}s] sent {sent} ({}/s)  completed {}  errors {}  dropped {}  p99≈{:.2} ms",
                    sent - last_sent,
                    p.completed.load(Ordering::Relaxed),
                    p.errors.load(Ordering::Relaxed),
                    p.dropped.load(Ordering::Relaxed),
                    p.p99_ms()
                );
                if terminal {
                    eprint!("\r{line}   ");
                } else if elapsed % 10 == 0 && elapsed > 0 {
                    eprintln!("{line}");
                }
                last_sent = sent;
                elapsed += 1;
            }
        });
        let report = run(cfg, progress).await;
        ticker.abort();
        report
    })?;
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    conclude(&report, a.report.as_ref(), &a.thresholds)
}

fn cmd_merge(a: MergeArgs) -> anyhow::Result<ExitCode> {
    let reports = a
        .reports
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
            serde_json::from_str::<Report>(&text)
                .map_err(|e| anyhow::anyhow!("{} is not a loadtest report: {e}", p.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let merged = merge(&reports, health(&a.thresholds))?;
    conclude(&merged, a.report.as_ref(), &a.thresholds)
}

#[allow(clippy::print_stderr)]
fn cmd_baseline(a: BaselineArgs) -> anyhow::Result<ExitCode> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = a.threads {
        rt.worker_threads(n);
    }
    rt.enable_all().build()?.block_on(async {
        let listener = loadtest::baseline::bind(a.listen).await?;
        eprintln!("baseline listening on {}", listener.local_addr()?);
        loadtest::baseline::serve(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
