//! Command line and environment (names fixed in API.md where listed there).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tracking_core::parse_duration;

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// HTTP front of the legacy Aerospike session store for the parallel run:
/// `GET`/`PUT /v1/sessions/{client_id}` over the legacy layout, and `copy`,
/// the bulk copy of the legacy sets into Bigtable.
///
/// Without a command it serves. Durations take a unit: 25ms, 10s, 30m, 90d.
#[derive(Debug, Parser)]
#[command(version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub aerospike: AerospikeArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub telemetry: service_kit::telemetry::TelemetryArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Copy the legacy sets into Bigtable, partition by partition, resumable.
    ///
    /// Progress goes to stderr. On a terminal: a bar of the partition scans
    /// done (3 sets × the partitions of --partitions, less those already in
    /// the checkpoint) with elapsed time and ETA, and the records so far
    /// (copied, skipped, invalid, failed) with the average records/s.
    /// Otherwise: a `Copy progress.` log line every --progress-interval. At
    /// the end a summary (`Copy complete.` or `Copy incomplete.`) is logged
    /// and replaces the bar, and the report is printed on stdout. Exit
    /// status 1 when a record or a partition scan failed.
    Copy(Box<CopyArgs>),
}

#[derive(Debug, Clone, Args)]
pub struct AerospikeArgs {
    /// Aerospike seed hosts, comma-separated host:port.
    #[arg(
        long,
        env = "MIGRATION_AEROSPIKE_HOSTS",
        default_value = "127.0.0.1:3000",
        global = true
    )]
    pub aerospike_hosts: String,
    /// Namespace of the legacy layout.
    #[arg(
        long,
        env = "MIGRATION_AEROSPIKE_NAMESPACE",
        default_value = "tracking",
        global = true
    )]
    pub aerospike_namespace: String,
    /// Deadline of one Aerospike call (a request reads or writes its three
    /// records concurrently, each within this).
    #[arg(long, env = "MIGRATION_AEROSPIKE_TIMEOUT", default_value = "25ms", value_parser = duration, global = true)]
    pub aerospike_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// HTTP listen address.
    #[arg(long, env = "MIGRATION_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// Operator listen address: /metrics, /healthz and /readyz (the API
    /// listener answers 404 for /metrics). Never expose it.
    #[arg(long, env = "MIGRATION_ADMIN_LISTEN", default_value = "127.0.0.1:9465")]
    pub admin_listen: SocketAddr,
    /// Shared bearer token required on /v1 requests (health, readiness and
    /// metrics stay open). Unset: no check — only for a closed network.
    #[arg(long, env = "MIGRATION_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Session requests served at once, counted from when a PUT's body has
    /// arrived; beyond it a fast 503 with Retry-After.
    #[arg(long, env = "MIGRATION_MAX_INFLIGHT", default_value_t = 1024, value_parser = at_least_one())]
    pub max_inflight: usize,
    /// Most open connections; further ones wait in the listen backlog.
    #[arg(long, env = "MIGRATION_MAX_CONNECTIONS", default_value_t = 4096, value_parser = at_least_one())]
    pub max_connections: usize,
    /// Time allowed to receive a request's headers; also the longest a
    /// keep-alive connection stays idle. Shorter than the drain timeout, so
    /// that a half-sent head does not hold up a SIGTERM's drain.
    #[arg(long, env = "MIGRATION_HEADER_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub header_timeout: Duration,
    /// Time allowed to receive a PUT's body (408 past it).
    #[arg(long, env = "MIGRATION_BODY_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub body_timeout: Duration,
    /// Time allowed after SIGTERM for open requests and started writes.
    #[arg(long, env = "MIGRATION_DRAIN_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct CopyArgs {
    /// Bigtable project (as tracking-api's).
    #[arg(long, env = "TRACKING_BIGTABLE_PROJECT")]
    pub bigtable_project: String,
    /// Bigtable instance.
    #[arg(long, env = "TRACKING_BIGTABLE_INSTANCE")]
    pub bigtable_instance: String,
    /// Bigtable table (created by `tracking-api bootstrap`).
    #[arg(long, env = "TRACKING_BIGTABLE_TABLE", default_value = "sessions")]
    pub bigtable_table: String,
    /// Bigtable emulator host:port (plaintext, no credentials); otherwise
    /// Application Default Credentials.
    #[arg(long, env = "BIGTABLE_EMULATOR_HOST")]
    pub bigtable_emulator_host: Option<String>,
    /// Short session TTL: must equal the legacy system's and tracking-api's.
    #[arg(long, env = "TRACKING_SHORT_TTL", default_value = "30m", value_parser = duration)]
    pub short_ttl: Duration,
    /// Long session TTL.
    #[arg(long, env = "TRACKING_LONG_TTL", default_value = "90d", value_parser = duration)]
    pub long_ttl: Duration,
    /// Via TTL.
    #[arg(long, env = "TRACKING_VIA_TTL", default_value = "30d", value_parser = duration)]
    pub via_ttl: Duration,
    /// File of finished (set, partition) pairs; a rerun skips them. Created
    /// when missing.
    #[arg(long, env = "MIGRATION_COPY_CHECKPOINT")]
    pub checkpoint: PathBuf,
    /// Bigtable reads+writes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Records per second at most (0: no limit).
    #[arg(long, default_value_t = 5000)]
    pub rate: u32,
    /// Partitions scanned at once.
    #[arg(long, default_value_t = 4)]
    pub partition_workers: usize,
    /// Partition range to copy, `FIRST-LAST` (inclusive, of 0-4095).
    #[arg(long, default_value = "0-4095")]
    pub partitions: String,
    /// Interval of the progress log lines when stderr is not a terminal (on
    /// a terminal, a progress bar instead).
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub progress_interval: Duration,
}

impl CopyArgs {
    /// The partition range, validated.
    pub fn partition_range(&self) -> Result<std::ops::RangeInclusive<u16>, String> {
        let (a, b) = self
            .partitions
            .split_once('-')
            .ok_or_else(|| format!("--partitions {:?}: expected FIRST-LAST", self.partitions))?;
        let parse = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p < 4096);
        match (parse(a), parse(b)) {
            (Some(a), Some(b)) if a <= b => Ok(a..=b),
            _ => Err(format!(
                "--partitions {:?}: expected FIRST-LAST within 0-4095",
                self.partitions
            )),
        }
    }
}
