//! The one typed configuration of `tracking-api`: every option is a CLI flag
//! with an environment-variable twin, parsed and checked once at start-up.
//! Nothing else in the binary reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use tracking_core::parse_duration;

/// Behavioural-tracking ingestion API: takes browser beacons and mobile SDK
/// batches, attaches sessions and via attribution, enriches them and hands
/// them to a sink.
///
/// Every option can also be set through the environment variable shown with
/// it. Durations take a unit: 500ms, 30s, 30m, 12h, 90d.
#[derive(Debug, Parser)]
#[command(name = "tracking-api", version, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
    #[command(flatten)]
    pub telemetry: service_kit::telemetry::TelemetryArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Serve HTTP (the default). Never creates or alters backend resources.
    Serve,
    /// Create the backend resources the configured store and sink need, when
    /// missing; existing ones are left as they are.
    Bootstrap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// In-process, bounded, lost on restart.
    Memory,
    /// Cloud Bigtable (TRACKING_BIGTABLE_*; BIGTABLE_EMULATOR_HOST for the emulator).
    Bigtable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SinkKind {
    /// NDJSON on standard output, one enriched event per line.
    Stdout,
    /// NDJSON appended to --sink-path.
    File,
    /// Google Cloud Pub/Sub (TRACKING_PUBSUB_*; PUBSUB_EMULATOR_HOST for the emulator).
    Pubsub,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeadLetterKind {
    /// NDJSON on standard error (interleaved with logs; each line has a `reason`).
    Stderr,
    /// NDJSON appended to --deadletter-path.
    File,
    /// Count rejected events in metrics only.
    Discard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lax => "Lax",
            Self::Strict => "Strict",
            Self::None => "None",
        }
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

fn bytes(s: &str) -> Result<u64, String> {
    let (digits, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 512MiB or 1GiB"))?;
    let unit = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("{s:?}: the unit must be B, KiB, MiB or GiB")),
    };
    n.checked_mul(unit)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("{s:?} is out of range"))
}

fn positive_u32(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MigrationMode {
    Cloud,
    Parallel,
    Legacy,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// HTTP listen address.
    #[arg(
        long,
        env = "TRACKING_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,

    /// Operator listen address: /metrics, /healthz and /readyz (the public
    /// listener answers 404 for /metrics). Never expose it publicly.
    #[arg(
        long,
        env = "TRACKING_ADMIN_LISTEN",
        default_value = "127.0.0.1:9464",
        global = true
    )]
    pub admin_listen: SocketAddr,

    /// Where sessions and via records live.
    #[arg(
        long,
        env = "TRACKING_SESSION_STORE",
        value_enum,
        default_value = "memory",
        global = true
    )]
    pub session_store: StoreKind,

    /// Migration mode of the parallel run: `cloud` (the session store only),
    /// `parallel` (Bigtable first; on a miss ask migration-proxy, use and
    /// back-fill what it has; renewals also go to migration-proxy through a
    /// bounded queue) or `legacy` (sessions read and renewed through
    /// migration-proxy only; TRACKING_SESSION_STORE is not used).
    #[arg(
        long,
        env = "TRACKING_MIGRATION_MODE",
        value_enum,
        default_value = "cloud",
        global = true
    )]
    pub migration_mode: MigrationMode,

    /// Base URL of migration-proxy, http://host:port (required by `parallel`
    /// and `legacy`).
    #[arg(long, env = "TRACKING_MIGRATION_URL", global = true)]
    pub migration_url: Option<String>,

    /// Deadline of a lookup in migration-proxy; the event waits no longer
    /// and carries on without the legacy session.
    #[arg(long, env = "TRACKING_MIGRATION_TIMEOUT", default_value = "30ms", value_parser = duration, global = true)]
    pub migration_timeout: Duration,

    /// Deadline of a renewal sent to migration-proxy (off the request path).
    #[arg(long, env = "TRACKING_MIGRATION_WRITE_TIMEOUT", default_value = "1s", value_parser = duration, global = true)]
    pub migration_write_timeout: Duration,

    /// Bearer token sent to migration-proxy (its MIGRATION_AUTH_TOKEN).
    #[arg(
        long,
        env = "TRACKING_MIGRATION_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub migration_token: Option<String>,

    /// Request headers forwarded on calls to migration-proxy, comma-separated:
    /// the blue/green routing header and the trace context.
    #[arg(
        long,
        env = "TRACKING_MIGRATION_FORWARD_HEADERS",
        default_value = "x-env,traceparent,tracestate,x-datadog-trace-id,x-datadog-parent-id,x-datadog-sampling-priority,x-datadog-origin,x-datadog-tags",
        value_delimiter = ',',
        global = true
    )]
    pub migration_forward_headers: Vec<String>,

    /// Renewals waiting to be sent to migration-proxy (`parallel`); beyond it
    /// they are dropped and counted, never blocking a request.
    #[arg(long, env = "TRACKING_MIGRATION_QUEUE", default_value = "10000", value_parser = positive, global = true)]
    pub migration_queue: usize,

    /// Consecutive failed calls that open the circuit to migration-proxy.
    #[arg(long, env = "TRACKING_MIGRATION_BREAKER_FAILURES", default_value = "5", value_parser = positive_u32, global = true)]
    pub migration_breaker_failures: u32,

    /// How long the open circuit skips migration-proxy before one probe.
    #[arg(long, env = "TRACKING_MIGRATION_BREAKER_COOLDOWN", default_value = "5s", value_parser = duration, global = true)]
    pub migration_breaker_cooldown: Duration,

    /// Most visitors the memory store keeps (about 0.5 KB each); beyond it the
    /// least recently seen of a random sample is evicted (counted in metrics).
    #[arg(long, env = "TRACKING_MEMORY_MAX_VISITORS", default_value = "200000", value_parser = positive, global = true)]
    pub memory_max_visitors: usize,

    /// Bigtable project (required with `--session-store bigtable`).
    #[arg(long, env = "TRACKING_BIGTABLE_PROJECT", global = true)]
    pub bigtable_project: Option<String>,

    /// Bigtable instance (required with `--session-store bigtable`).
    #[arg(long, env = "TRACKING_BIGTABLE_INSTANCE", global = true)]
    pub bigtable_instance: Option<String>,

    /// Bigtable table holding sessions and via records.
    #[arg(
        long,
        env = "TRACKING_BIGTABLE_TABLE",
        default_value = "sessions",
        global = true
    )]
    pub bigtable_table: String,

    /// `host:port` of a Bigtable emulator: plaintext, no credentials. Unset:
    /// Bigtable itself, with Application Default Credentials.
    #[arg(long, env = "BIGTABLE_EMULATOR_HOST", global = true)]
    pub bigtable_emulator_host: Option<String>,

    /// gRPC channels (HTTP/2 connections) to Bigtable.
    #[arg(long, env = "TRACKING_BIGTABLE_CHANNELS", default_value = "4", value_parser = positive, global = true)]
    pub bigtable_channels: usize,

    /// Deadline of one Bigtable read attempt (up to 3 attempts, within
    /// TRACKING_SESSION_TIMEOUT).
    #[arg(long, env = "TRACKING_BIGTABLE_ATTEMPT_TIMEOUT", default_value = "40ms", value_parser = duration, global = true)]
    pub bigtable_attempt_timeout: Duration,

    /// Time allowed for a session renewal write, retries included (off the
    /// request path).
    #[arg(long, env = "TRACKING_BIGTABLE_WRITE_TIMEOUT", default_value = "2s", value_parser = duration, global = true)]
    pub bigtable_write_timeout: Duration,

    /// Deadline of one session-store call; past it the event is accepted with
    /// `session.status = "unavailable"`.
    #[arg(long, env = "TRACKING_SESSION_TIMEOUT", default_value = "100ms", value_parser = duration, global = true)]
    pub session_timeout: Duration,

    /// Where enriched events go.
    #[arg(
        long,
        env = "TRACKING_SINK",
        value_enum,
        default_value = "stdout",
        global = true
    )]
    pub sink: SinkKind,

    /// File for `--sink file`.
    #[arg(long, env = "TRACKING_SINK_PATH", global = true)]
    pub sink_path: Option<PathBuf>,

    /// Events accepted and held in memory (not yet written, acknowledged by
    /// Pub/Sub or spooled); beyond it requests get 503 with Retry-After.
    #[arg(long, env = "TRACKING_SINK_QUEUE", default_value = "100000", value_parser = positive, global = true)]
    pub sink_queue: usize,

    /// Bytes those events may take in memory (serialized, plus a per-event
    /// overhead); beyond it requests get 503 with Retry-After. Units B, KiB,
    /// MiB, GiB.
    #[arg(long, env = "TRACKING_SINK_QUEUE_BYTES", default_value = "256MiB", value_parser = bytes, global = true)]
    pub sink_queue_bytes: u64,

    /// Pub/Sub project (required with `--sink pubsub`).
    #[arg(long, env = "TRACKING_PUBSUB_PROJECT", global = true)]
    pub pubsub_project: Option<String>,

    /// Pub/Sub topic for enriched events (required with `--sink pubsub`).
    #[arg(long, env = "TRACKING_PUBSUB_TOPIC", global = true)]
    pub pubsub_topic: Option<String>,

    /// Pub/Sub topic for rejected events. Unset: they go to --deadletter.
    /// With it, --deadletter is the fallback when a letter cannot be
    /// published.
    #[arg(long, env = "TRACKING_PUBSUB_DEADLETTER_TOPIC", global = true)]
    pub pubsub_deadletter_topic: Option<String>,

    /// `host:port` of a Pub/Sub emulator: plaintext, no credentials. Unset:
    /// Pub/Sub itself, with Application Default Credentials.
    #[arg(long, env = "PUBSUB_EMULATOR_HOST", global = true)]
    pub pubsub_emulator_host: Option<String>,

    /// A publish batch is sent at this many messages…
    #[arg(long, env = "TRACKING_PUBSUB_BATCH_MESSAGES", default_value = "100", value_parser = positive_u32, global = true)]
    pub pubsub_batch_messages: u32,

    /// …or this many bytes…
    #[arg(long, env = "TRACKING_PUBSUB_BATCH_BYTES", default_value = "1000000", value_parser = positive_u32, global = true)]
    pub pubsub_batch_bytes: u32,

    /// …or after this delay, whichever comes first.
    #[arg(long, env = "TRACKING_PUBSUB_BATCH_DELAY", default_value = "10ms", value_parser = duration, global = true)]
    pub pubsub_batch_delay: Duration,

    /// Time the client may spend retrying one publish; then the event goes
    /// to the spool.
    #[arg(long, env = "TRACKING_PUBSUB_PUBLISH_TIMEOUT", default_value = "10s", value_parser = duration, global = true)]
    pub pubsub_publish_timeout: Duration,

    /// A publish not acknowledged this long after it was handed over: every
    /// event not acknowledged yet, and every new one, goes to the spool until
    /// it has been replayed.
    #[arg(long, env = "TRACKING_PUBSUB_STALL_TIMEOUT", default_value = "2s", value_parser = duration, global = true)]
    pub pubsub_stall_timeout: Duration,

    /// On SIGTERM, how long outstanding publishes may take before their
    /// events are spooled instead.
    #[arg(long, env = "TRACKING_PUBSUB_FLUSH_TIMEOUT", default_value = "5s", value_parser = duration, global = true)]
    pub pubsub_flush_timeout: Duration,

    /// Directory of the disk spool for events that cannot be published yet
    /// (replayed automatically). Unset: they wait in memory, bounded by
    /// TRACKING_SINK_QUEUE, and are lost if the process stops during an
    /// outage.
    #[arg(long, env = "TRACKING_SPOOL_DIR", global = true)]
    pub spool_dir: Option<PathBuf>,

    /// While events go to the spool, none are admitted (503) once it holds
    /// this much.
    #[arg(long, env = "TRACKING_SPOOL_MAX_BYTES", default_value = "1GiB", value_parser = bytes, global = true)]
    pub spool_max_bytes: u64,

    /// Where rejected events go, with their reason.
    #[arg(
        long,
        env = "TRACKING_DEADLETTER",
        value_enum,
        default_value = "stderr",
        global = true
    )]
    pub deadletter: DeadLetterKind,

    /// File for `--deadletter file`.
    #[arg(long, env = "TRACKING_DEADLETTER_PATH", global = true)]
    pub deadletter_path: Option<PathBuf>,

    /// Bytes of dead letters waiting for their output (and, with a
    /// dead-letter topic, as much again waiting for Pub/Sub); beyond it they
    /// are dropped and counted. Units B, KiB, MiB, GiB.
    #[arg(long, env = "TRACKING_DEADLETTER_QUEUE_BYTES", default_value = "32MiB", value_parser = bytes, global = true)]
    pub deadletter_queue_bytes: u64,

    /// Short session lifetime after a visitor's latest event.
    #[arg(long, env = "TRACKING_SHORT_TTL", default_value = "30m", value_parser = duration, global = true)]
    pub short_ttl: Duration,

    /// Long session lifetime after a visitor's latest event.
    #[arg(long, env = "TRACKING_LONG_TTL", default_value = "90d", value_parser = duration, global = true)]
    pub long_ttl: Duration,

    /// Via record lifetime after the event that recorded it.
    #[arg(long, env = "TRACKING_VIA_TTL", default_value = "30d", value_parser = duration, global = true)]
    pub via_ttl: Duration,

    /// Origins allowed to send with credentials (comma-separated, e.g.
    /// `https://www.example.com`). `*` lets any other origin send without
    /// credentials.
    #[arg(
        long,
        env = "TRACKING_CORS_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    pub cors_origins: Vec<String>,

    /// Name of the first-party visitor-id cookie.
    #[arg(
        long,
        env = "TRACKING_COOKIE_NAME",
        default_value = "_tid",
        global = true
    )]
    pub cookie_name: String,

    /// `Domain` attribute of the visitor cookie (default: host-only).
    #[arg(long, env = "TRACKING_COOKIE_DOMAIN", global = true)]
    pub cookie_domain: Option<String>,

    /// `Secure` attribute of the visitor cookie.
    #[arg(long, env = "TRACKING_COOKIE_SECURE", default_value_t = true, action = ArgAction::Set, global = true)]
    pub cookie_secure: bool,

    /// `SameSite` attribute of the visitor cookie (`none` requires Secure).
    #[arg(
        long,
        env = "TRACKING_COOKIE_SAMESITE",
        value_enum,
        default_value = "lax",
        global = true
    )]
    pub cookie_same_site: SameSite,

    /// `Max-Age` of the visitor cookie (browsers cap it at 400 days).
    #[arg(long, env = "TRACKING_COOKIE_MAX_AGE", default_value = "365d", value_parser = duration, global = true)]
    pub cookie_max_age: Duration,

    /// Proxies (CIDRs, comma-separated) whose X-Forwarded-For is believed.
    #[arg(
        long,
        env = "TRACKING_TRUSTED_PROXIES",
        value_delimiter = ',',
        global = true
    )]
    pub trusted_proxies: Vec<IpNet>,

    /// MaxMind-format (GeoIP2/GeoLite2 City or Country) database file; when
    /// set, events carry `geo`.
    #[arg(long, env = "TRACKING_GEOIP_DB", global = true)]
    pub geoip_db: Option<PathBuf>,

    /// Largest request body, in bytes, as sent.
    #[arg(long, env = "TRACKING_MAX_BODY_BYTES", default_value = "1048576", value_parser = positive, global = true)]
    pub max_body_bytes: usize,

    /// Largest request body after gzip decompression, in bytes.
    #[arg(long, env = "TRACKING_MAX_DECOMPRESSED_BYTES", default_value = "1048576", value_parser = positive, global = true)]
    pub max_decompressed_bytes: usize,

    /// Memory for request bodies being read or processed, all requests
    /// together (as sent and inflated); beyond it 503 with Retry-After. Bodies
    /// still arriving and bodies above 64 KiB share three quarters of it; the
    /// rest is for small bodies that have arrived whole. Units B, KiB, MiB,
    /// GiB.
    #[arg(long, env = "TRACKING_MAX_BODY_MEMORY", default_value = "128MiB", value_parser = bytes, global = true)]
    pub max_body_memory: u64,

    /// Most events in one batch.
    #[arg(long, env = "TRACKING_MAX_BATCH_EVENTS", default_value = "500", value_parser = positive, global = true)]
    pub max_batch_events: usize,

    /// Most event requests processed at once, counted from when their body
    /// has arrived; beyond it 503 with Retry-After.
    #[arg(long, env = "TRACKING_MAX_INFLIGHT", default_value = "4096", value_parser = positive, global = true)]
    pub max_inflight: usize,

    /// Most open client connections; further ones wait in the listen backlog.
    #[arg(long, env = "TRACKING_MAX_CONNECTIONS", default_value = "8192", value_parser = positive, global = true)]
    pub max_connections: usize,

    /// Time allowed to receive a request's headers; also the longest a
    /// keep-alive connection stays idle.
    #[arg(long, env = "TRACKING_HEADER_TIMEOUT", default_value = "10s", value_parser = duration, global = true)]
    pub header_timeout: Duration,

    /// Time allowed to receive a request's body (408 past it).
    #[arg(long, env = "TRACKING_BODY_TIMEOUT", default_value = "10s", value_parser = duration, global = true)]
    pub body_timeout: Duration,

    /// On SIGTERM, how long /readyz reports 503 before the listener closes
    /// (lets load balancers stop routing here first).
    #[arg(long, env = "TRACKING_SHUTDOWN_DELAY", default_value = "0s", value_parser = duration, global = true)]
    pub shutdown_delay: Duration,

    /// On SIGTERM, the most time given to in-flight requests and sinks to finish.
    #[arg(long, env = "TRACKING_DRAIN_TIMEOUT", default_value = "25s", value_parser = duration, global = true)]
    pub drain_timeout: Duration,

    /// Seconds in a row with at least 5% of event requests shed before
    /// /readyz answers 503 (stretched by a random 0-50% per process, so that
    /// pods do not all leave at once).
    #[arg(long, env = "TRACKING_OVERLOAD_UNREADY_AFTER", default_value = "10s", value_parser = duration, global = true)]
    pub overload_unready_after: Duration,

    /// Calm seconds in a row before /readyz answers 200 again.
    #[arg(long, env = "TRACKING_OVERLOAD_READY_AFTER", default_value = "5s", value_parser = duration, global = true)]
    pub overload_ready_after: Duration,

    /// Longest time overload keeps /readyz at 503; then it answers 200 until
    /// a new sustained period.
    #[arg(long, env = "TRACKING_OVERLOAD_MAX_UNREADY", default_value = "30s", value_parser = duration, global = true)]
    pub overload_max_unready: Duration,

    /// Tokio worker threads (default: one per CPU).
    #[arg(long, env = "TRACKING_WORKER_THREADS", value_parser = positive, global = true)]
    pub worker_threads: Option<usize>,
}

/// A configuration that cannot work, said plainly.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Checks what clap cannot: combinations and cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError(m));
        if self.session_store == StoreKind::Bigtable
            && (self.bigtable_project.is_none() || self.bigtable_instance.is_none())
        {
            return fail("TRACKING_SESSION_STORE=bigtable needs TRACKING_BIGTABLE_PROJECT and TRACKING_BIGTABLE_INSTANCE".into());
        }
        if self.sink == SinkKind::File && self.sink_path.is_none() {
            return fail("TRACKING_SINK=file needs TRACKING_SINK_PATH".into());
        }
        if self.sink == SinkKind::Pubsub
            && (self.pubsub_project.is_none() || self.pubsub_topic.is_none())
        {
            return fail(
                "TRACKING_SINK=pubsub needs TRACKING_PUBSUB_PROJECT and TRACKING_PUBSUB_TOPIC"
                    .into(),
            );
        }
        if self.sink != SinkKind::Pubsub && self.pubsub_deadletter_topic.is_some() {
            return fail("TRACKING_PUBSUB_DEADLETTER_TOPIC needs TRACKING_SINK=pubsub".into());
        }
        if self.deadletter == DeadLetterKind::File && self.deadletter_path.is_none() {
            return fail("TRACKING_DEADLETTER=file needs TRACKING_DEADLETTER_PATH".into());
        }
        for (name, ttl) in [
            ("TRACKING_SHORT_TTL", self.short_ttl),
            ("TRACKING_LONG_TTL", self.long_ttl),
            ("TRACKING_VIA_TTL", self.via_ttl),
        ] {
            if ttl < Duration::from_secs(1) {
                return fail(format!("{name} must be at least 1s"));
            }
        }
        if self.short_ttl > self.long_ttl {
            return fail("TRACKING_SHORT_TTL must not exceed TRACKING_LONG_TTL".into());
        }
        if self.cookie_same_site == SameSite::None && !self.cookie_secure {
            return fail("TRACKING_COOKIE_SAMESITE=none requires TRACKING_COOKIE_SECURE=true (browsers drop it otherwise)".into());
        }
        if self.cookie_name.is_empty()
            || !self
                .cookie_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return fail(format!(
                "TRACKING_COOKIE_NAME `{}` is not a valid cookie name",
                self.cookie_name
            ));
        }
        for origin in &self.cors_origins {
            if origin != "*" && !is_origin(origin) {
                return fail(format!(
                    "TRACKING_CORS_ORIGINS entry `{origin}` is not an origin like https://www.example.com (scheme://host[:port], no path)"
                ));
            }
        }
        if self.migration_mode != MigrationMode::Cloud {
            match self.migration_url.as_deref() {
                None => {
                    return fail(
                        "TRACKING_MIGRATION_MODE=parallel or legacy needs TRACKING_MIGRATION_URL"
                            .into(),
                    );
                }
                Some(u)
                    if !u.starts_with("http://")
                        || u.parse::<http::Uri>()
                            .ok()
                            .and_then(|u| u.host().map(str::len))
                            .unwrap_or(0)
                            == 0 =>
                {
                    return fail(format!(
                        "TRACKING_MIGRATION_URL `{u}` must be http://host[:port] (the mesh provides TLS)"
                    ));
                }
                Some(_) => {}
            }
        }
        if self.migration_mode == MigrationMode::Parallel
            && self.session_store != StoreKind::Bigtable
        {
            return fail(
                "TRACKING_MIGRATION_MODE=parallel needs TRACKING_SESSION_STORE=bigtable".into(),
            );
        }
        if self.migration_mode != MigrationMode::Cloud
            && self.migration_timeout >= self.session_timeout
        {
            return fail(
                "TRACKING_MIGRATION_TIMEOUT must be shorter than TRACKING_SESSION_TIMEOUT".into(),
            );
        }
        if let Some(h) = self
            .migration_forward_headers
            .iter()
            .find(|h| http::HeaderName::from_bytes(h.trim().as_bytes()).is_err())
        {
            return fail(format!(
                "TRACKING_MIGRATION_FORWARD_HEADERS entry `{h}` is not a header name"
            ));
        }
        let largest_body = self.max_body_bytes as u64 + self.max_decompressed_bytes as u64;
        if self.max_body_memory - self.max_body_memory / 4 < largest_body {
            return fail(format!(
                "TRACKING_MAX_BODY_MEMORY ({} bytes) must hold one largest body, as sent and inflated \
                 (TRACKING_MAX_BODY_BYTES + TRACKING_MAX_DECOMPRESSED_BYTES = {largest_body} bytes), in three quarters of it",
                self.max_body_memory
            ));
        }
        if self.session_timeout.is_zero()
            || self.body_timeout.is_zero()
            || self.header_timeout.is_zero()
        {
            return fail("timeouts must be greater than zero".into());
        }
        Ok(())
    }
}

fn is_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: &[&str], expected: Result<(), &str>) {
        let mut argv = vec!["tracking-api"];
        argv.extend_from_slice(args);
        let got = Cli::try_parse_from(&argv)
            .map_err(|e| e.to_string())
            .and_then(|cli| cli.config.validate().map_err(|e| e.to_string()));
        match (got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(fragment)) => {
                assert!(e.contains(fragment), "{args:?}: `{e}` lacks `{fragment}`")
            }
            (got, expected) => panic!("{args:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn config_rules() {
        check(&[], Ok(()));
        check(&["serve", "--listen", "0.0.0.0:9000"], Ok(()));
        check(&["--sink", "file"], Err("needs TRACKING_SINK_PATH"));
        check(&["--sink", "file", "--sink-path", "/tmp/x"], Ok(()));
        check(&["--sink", "pubsub"], Err("needs TRACKING_PUBSUB_PROJECT"));
        check(
            &[
                "--sink",
                "pubsub",
                "--pubsub-project",
                "p",
                "--pubsub-topic",
                "t",
            ],
            Ok(()),
        );
        check(
            &["--pubsub-deadletter-topic", "d"],
            Err("needs TRACKING_SINK=pubsub"),
        );
        check(&["--spool-max-bytes", "64MiB"], Ok(()));
        check(&["--spool-max-bytes", "64MB"], Err("the unit must be"));
        check(&["--spool-max-bytes", "0"], Err("out of range"));
        assert_eq!(bytes("2GiB"), Ok(2 << 30));
        assert_eq!(bytes("4096"), Ok(4096));
        check(
            &["--deadletter", "file"],
            Err("needs TRACKING_DEADLETTER_PATH"),
        );
        check(&["--short-ttl", "30"], Err("no unit"));
        check(&["--short-ttl", "0s"], Err("at least 1s"));
        check(&["--short-ttl", "91d"], Err("must not exceed"));
        check(
            &["--cookie-same-site", "none", "--cookie-secure", "false"],
            Err("requires"),
        );
        check(&["--cookie-name", "a b"], Err("not a valid cookie name"));
        check(
            &["--cors-origins", "https://a.example,http://localhost:3000"],
            Ok(()),
        );
        check(
            &["--cors-origins", "https://a.example/path"],
            Err("not an origin"),
        );
        check(&["--cors-origins", "*"], Ok(()));
        check(&["--trusted-proxies", "10.0.0.0/8,::1/128"], Ok(()));
        check(&["--trusted-proxies", "10.0.0.0"], Err("invalid"));
        check(&["--max-inflight", "0"], Err("at least 1"));
        check(&["--max-body-memory", "8MiB"], Ok(()));
        check(
            &["--max-body-memory", "2MiB"],
            Err("must hold one largest body"),
        );
        check(&["--admin-listen", "0.0.0.0:9464"], Ok(()));
        check(&["--session-store", "cassandra"], Err("invalid value"));
        check(
            &["--migration-mode", "legacy"],
            Err("needs TRACKING_MIGRATION_URL"),
        );
        check(
            &[
                "--migration-mode",
                "legacy",
                "--migration-url",
                "https://proxy:8081",
            ],
            Err("must be http://"),
        );
        check(
            &[
                "--migration-mode",
                "legacy",
                "--migration-url",
                "http://proxy:8081",
            ],
            Ok(()),
        );
        check(
            &[
                "--migration-mode",
                "parallel",
                "--migration-url",
                "http://proxy:8081",
            ],
            Err("needs TRACKING_SESSION_STORE=bigtable"),
        );
        check(
            &[
                "--migration-mode",
                "legacy",
                "--migration-url",
                "http://p:1",
                "--migration-timeout",
                "1s",
            ],
            Err("shorter than TRACKING_SESSION_TIMEOUT"),
        );
        check(
            &["--migration-forward-headers", "x-env,bad header"],
            Err("not a header name"),
        );
        check(
            &["--session-store", "bigtable"],
            Err("needs TRACKING_BIGTABLE_PROJECT"),
        );
        check(
            &[
                "--session-store",
                "bigtable",
                "--bigtable-project",
                "p",
                "--bigtable-instance",
                "i",
            ],
            Ok(()),
        );
    }
}
