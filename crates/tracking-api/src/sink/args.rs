//! The flags of the local outputs: which event sink, the stdout/file sink's
//! path, the in-memory bound every event sink shares, and the dead-letter
//! output (`TRACKING_SINK*`, `TRACKING_DEADLETTER*`). The Pub/Sub sink's own
//! flags are in `sink::pubsub`.

use std::path::PathBuf;

use tracking_core::AckMode;

use crate::config::{AckKind, ConfigError, DeadLetterKind, SinkKind, bytes, positive};
use crate::sink::ndjson::{Bounds, Target};

/// Dead letters held before they are dropped (and counted).
const DEADLETTER_QUEUE: usize = 10_000;

#[derive(Debug, Clone, clap::Args)]
pub struct SinkArgs {
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

    /// When a request is answered 2xx. `disk`: only once its events are
    /// fdatasynced (group commit: one fdatasync covers every event that
    /// came while the previous one ran) — to the spool (TRACKING_SPOOL_DIR,
    /// required) with pubsub, to TRACKING_SINK_PATH with file; refused with
    /// stdout. A 2xx then survives kill -9, an OOM kill or a panic.
    #[arg(
        long,
        env = "TRACKING_ACK",
        value_enum,
        default_value = "memory",
        global = true
    )]
    pub ack: AckKind,
}

impl SinkArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.sink == SinkKind::File && self.sink_path.is_none() {
            return Err(ConfigError::new(
                "TRACKING_SINK=file needs TRACKING_SINK_PATH",
            ));
        }
        if self.ack == AckKind::Disk && self.sink == SinkKind::Stdout {
            return Err(ConfigError::new(
                "TRACKING_ACK=disk cannot be kept with TRACKING_SINK=stdout: a pipe cannot be fdatasynced. \
                 Use TRACKING_SINK=file (with TRACKING_SINK_PATH) or TRACKING_SINK=pubsub (with TRACKING_SPOOL_DIR), or TRACKING_ACK=memory",
            ));
        }
        Ok(())
    }

    /// The acknowledgement mode.
    pub fn ack(&self) -> AckMode {
        match self.ack {
            AckKind::Memory => AckMode::Memory,
            AckKind::Disk => AckMode::Disk,
        }
    }

    /// Where the NDJSON event sink writes (`None`: the sink is not NDJSON).
    pub fn target(&self) -> Option<Target> {
        match self.sink {
            SinkKind::Stdout => Some(Target::Stdout),
            SinkKind::File => Some(Target::File(self.sink_path.clone().unwrap_or_default())),
            SinkKind::Pubsub => None,
        }
    }

    /// The in-memory bound of the event sink, whichever it is.
    pub fn bounds(&self) -> Bounds {
        Bounds {
            events: self.sink_queue,
            bytes: usize::try_from(self.sink_queue_bytes).unwrap_or(usize::MAX),
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct DeadLetterArgs {
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
}

impl DeadLetterArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.deadletter == DeadLetterKind::File && self.deadletter_path.is_none() {
            return Err(ConfigError::new(
                "TRACKING_DEADLETTER=file needs TRACKING_DEADLETTER_PATH",
            ));
        }
        Ok(())
    }

    /// Where the NDJSON dead-letter output writes (`None`: discarded).
    pub fn target(&self) -> Option<Target> {
        match self.deadletter {
            DeadLetterKind::Stderr => Some(Target::Stderr),
            DeadLetterKind::File => Some(Target::File(
                self.deadletter_path.clone().unwrap_or_default(),
            )),
            DeadLetterKind::Discard => None,
        }
    }

    /// What a dead-letter output holds before it drops (and counts).
    pub fn bounds(&self) -> Bounds {
        Bounds {
            events: DEADLETTER_QUEUE,
            bytes: usize::try_from(self.deadletter_queue_bytes).unwrap_or(usize::MAX),
        }
    }
}
