//! The one typed configuration of `tracking-api`: every option is a CLI flag
//! with an environment-variable twin, parsed and checked once at start-up.
//! Nothing else in the binary reads the environment.
//!
//! `Config` holds the top-level choices (listeners, which store and sink,
//! session lifetimes, the browser-facing settings) and flattens each
//! adapter's own group of flags, which lives beside the adapter with its
//! validation and the adapter's settings built from it: `migration::args`,
//! `store::memory`, `store::bigtable`, `sink::args` (the stdout/file sink and
//! the dead-letter output), `sink::pubsub`, `segment` (the Segment API's
//! write keys and limits), `server` (HTTP limits) and `overload`. The groups are flattened in the order their flags appear in
//! `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use tracking_core::{Ttls, parse_duration};

use crate::app::Limits;
use crate::server::ServeOptions;

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
pub enum AckKind {
    /// 2xx once the events are held in memory (published within
    /// milliseconds, spooled during an outage); a crash can lose them.
    Memory,
    /// 2xx once the events are fdatasynced to local disk: the spool
    /// (TRACKING_SPOOL_DIR) for pubsub, the output file for file.
    Disk,
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

pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

/// The longest dedup window: every accepted event id is kept that long (a
/// small Bigtable row each, or 16 bytes in the memory store).
pub const MAX_DEDUP_WINDOW: Duration = Duration::from_secs(7 * 86_400);

/// `0` (off) or a duration up to [`MAX_DEDUP_WINDOW`].
fn dedup_window(s: &str) -> Result<Duration, String> {
    if matches!(s.trim(), "0" | "off") {
        return Ok(Duration::ZERO);
    }
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("`{s}`: a dedup window is 0 (off) or at least 1s"));
    }
    if d > MAX_DEDUP_WINDOW {
        return Err(format!(
            "`{s}` is longer than the longest dedup window, 7d (a visitor's ids are kept in its session row)"
        ));
    }
    Ok(d)
}

pub(crate) fn bytes(s: &str) -> Result<u64, String> {
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

pub(crate) fn positive_u32(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

pub(crate) fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// The most entries and bytes the inspector may be given.
pub const MAX_INSPECT_EVENTS: usize = 100_000;
pub const MAX_INSPECT_BYTES: u64 = 1 << 30;

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

    #[command(flatten)]
    pub migration: crate::migration::MigrationArgs,

    #[command(flatten)]
    pub memory: crate::store::memory::MemoryArgs,

    #[command(flatten)]
    pub bigtable: crate::store::bigtable::BigtableArgs,

    /// Deadline of one session-store call; past it the event is accepted with
    /// `session.status = "unavailable"`.
    #[arg(long, env = "TRACKING_SESSION_TIMEOUT", default_value = "100ms", value_parser = duration, global = true)]
    pub session_timeout: Duration,

    #[command(flatten)]
    pub sink: crate::sink::args::SinkArgs,

    #[command(flatten)]
    pub pubsub: crate::sink::pubsub::PubsubArgs,

    #[command(flatten)]
    pub deadletter: crate::sink::args::DeadLetterArgs,

    /// Short session lifetime after a visitor's latest event.
    #[arg(long, env = "TRACKING_SHORT_TTL", default_value = "30m", value_parser = duration, global = true)]
    pub short_ttl: Duration,

    /// Long session lifetime after a visitor's latest event.
    #[arg(long, env = "TRACKING_LONG_TTL", default_value = "90d", value_parser = duration, global = true)]
    pub long_ttl: Duration,

    /// Via record lifetime after the event that recorded it.
    #[arg(long, env = "TRACKING_VIA_TTL", default_value = "30d", value_parser = duration, global = true)]
    pub via_ttl: Duration,

    /// How long a client-given event id (`event_id`, the tracker's ids, a
    /// Segment `messageId`) is remembered for its visitor: a retry within it
    /// is answered as accepted and not output again. `0`: off. Kept with the
    /// sessions (memory store; Bigtable family `e`); not in the `legacy`
    /// migration mode.
    #[arg(long, env = "TRACKING_DEDUP_WINDOW", default_value = "24h", value_parser = dedup_window, global = true)]
    pub dedup_window: Duration,

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

    #[command(flatten)]
    pub segment: crate::segment::SegmentArgs,

    #[command(flatten)]
    pub http: crate::server::HttpArgs,

    #[command(flatten)]
    pub overload: crate::overload::OverloadArgs,

    /// The live event inspector on the admin listener (`/inspect`: a page and
    /// a JSON API). Default: on with the embedded default (memory store,
    /// stdout/file sink), off otherwise.
    #[arg(long, env = "TRACKING_INSPECT", value_enum, global = true)]
    pub inspect: Option<Switch>,

    /// Entries the inspector holds; also the entries it takes a second (in
    /// bursts of as many): past that it drops, and counts.
    #[arg(long, env = "TRACKING_INSPECT_MAX_EVENTS", default_value = "1000", value_parser = positive, global = true)]
    pub inspect_max_events: usize,

    /// Bytes the inspector holds (its entries' text); the oldest make room.
    #[arg(long, env = "TRACKING_INSPECT_MAX_BYTES", default_value = "4MiB", value_parser = bytes, global = true)]
    pub inspect_max_bytes: u64,

    /// Tokio worker threads (default: one per CPU).
    #[arg(long, env = "TRACKING_WORKER_THREADS", value_parser = positive, global = true)]
    pub worker_threads: Option<usize>,
}

/// A configuration that cannot work, said plainly.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl Config {
    /// Checks what clap cannot: combinations and cross-field rules. Each
    /// adapter's group checks its own flags.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError(m));
        self.bigtable.validate(self.session_store)?;
        self.sink.validate()?;
        self.pubsub.validate(self.sink.sink, self.sink.ack())?;
        self.deadletter.validate()?;
        if self.sink.ack == AckKind::Disk
            && self.sink.sink == SinkKind::File
            && self.deadletter.deadletter == DeadLetterKind::File
            && self.sink.sink_path == self.deadletter.deadletter_path
        {
            return fail(
                "TRACKING_ACK=disk needs TRACKING_DEADLETTER_PATH to differ from TRACKING_SINK_PATH: the event file is cut back to its last synced length after a failed write".into(),
            );
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
        self.migration
            .validate(self.session_store, self.session_timeout)?;
        self.http.validate()?;
        self.segment.validate()?;
        if self.session_timeout.is_zero() {
            return fail("timeouts must be greater than zero".into());
        }
        if self.inspect_max_events > MAX_INSPECT_EVENTS {
            return fail(format!(
                "TRACKING_INSPECT_MAX_EVENTS must be at most {MAX_INSPECT_EVENTS}"
            ));
        }
        if self.inspect_max_bytes > MAX_INSPECT_BYTES {
            return fail("TRACKING_INSPECT_MAX_BYTES must be at most 1GiB".into());
        }
        Ok(())
    }

    pub fn ttls(&self) -> Ttls {
        Ttls {
            short: self.short_ttl,
            long: self.long_ttl,
            via: self.via_ttl,
        }
    }

    /// Deduplication as configured: off at a zero window, and in the
    /// `legacy` migration mode (its store keeps no ids).
    pub fn dedup(&self) -> crate::app::Dedup {
        let legacy = self.migration.migration_mode == MigrationMode::Legacy;
        crate::app::Dedup {
            window: Some(self.dedup_window).filter(|w| !w.is_zero() && !legacy),
            after_receipt: self.sink.ack() == tracking_core::AckMode::Disk,
        }
    }

    /// The inspector's bounds (entries, bytes) when it is on: as set, or
    /// by default with the embedded default only (memory store, stdout/file
    /// sink, no migration).
    pub fn inspect(&self) -> Option<(usize, usize)> {
        let embedded = self.session_store == StoreKind::Memory
            && self.sink.sink != SinkKind::Pubsub
            && self.migration.migration_mode == MigrationMode::Cloud;
        let on = match self.inspect {
            Some(s) => s == Switch::On,
            None => embedded,
        };
        on.then(|| {
            (
                self.inspect_max_events,
                usize::try_from(self.inspect_max_bytes).unwrap_or(usize::MAX),
            )
        })
    }

    pub fn limits(&self) -> Limits {
        self.http.limits(self.session_timeout)
    }

    pub fn serve_options(&self) -> ServeOptions {
        // The Pub/Sub sink's own flush deadline, plus time to spool what is
        // left.
        self.http
            .serve_options(self.pubsub.pubsub_flush_timeout + Duration::from_secs(5))
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
        check(&["--inspect", "on", "--inspect-max-events", "50"], Ok(()));
        check(&["--inspect", "maybe"], Err("invalid value"));
        check(&["--inspect-max-events", "0"], Err("at least 1"));
        check(&["--inspect-max-events", "100001"], Err("at most 100000"));
        check(&["--inspect-max-bytes", "2GiB"], Err("at most 1GiB"));
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
