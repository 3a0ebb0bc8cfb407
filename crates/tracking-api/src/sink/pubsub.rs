//! The Pub/Sub sink's flags (`TRACKING_PUBSUB_*`, the spool) and the
//! adapter's settings built from them. The sink itself is
//! `tracking_pubsub::PubsubSink`, built in `build_state`.

use std::path::PathBuf;
use std::time::Duration;

use tracking_core::AckMode;

use crate::config::{ConfigError, SinkKind, bytes, duration, positive_u32};
use crate::sink::ndjson::Bounds;

#[derive(Debug, Clone, clap::Args)]
pub struct PubsubArgs {
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
}

impl PubsubArgs {
    /// `sink`: the event sink chosen (`TRACKING_SINK`).
    pub fn validate(&self, sink: SinkKind, ack: AckMode) -> Result<(), ConfigError> {
        if sink == SinkKind::Pubsub && ack == AckMode::Disk && self.spool_dir.is_none() {
            return Err(ConfigError::new(
                "TRACKING_ACK=disk with TRACKING_SINK=pubsub needs TRACKING_SPOOL_DIR: the spool is the write-ahead log",
            ));
        }
        if sink == SinkKind::Pubsub
            && (self.pubsub_project.is_none() || self.pubsub_topic.is_none())
        {
            return Err(ConfigError::new(
                "TRACKING_SINK=pubsub needs TRACKING_PUBSUB_PROJECT and TRACKING_PUBSUB_TOPIC",
            ));
        }
        if sink != SinkKind::Pubsub && self.pubsub_deadletter_topic.is_some() {
            return Err(ConfigError::new(
                "TRACKING_PUBSUB_DEADLETTER_TOPIC needs TRACKING_SINK=pubsub",
            ));
        }
        Ok(())
    }

    pub fn config(&self) -> tracking_pubsub::PubsubConfig {
        tracking_pubsub::PubsubConfig {
            project: self.pubsub_project.clone().unwrap_or_default(),
            topic: self.pubsub_topic.clone().unwrap_or_default(),
            deadletter_topic: self.pubsub_deadletter_topic.clone(),
            emulator_host: self.pubsub_emulator_host.clone(),
            batch_messages: self.pubsub_batch_messages,
            batch_bytes: self.pubsub_batch_bytes,
            batch_delay: self.pubsub_batch_delay,
            publish_timeout: self.pubsub_publish_timeout,
        }
    }

    /// `queue`: the in-memory bound of every event sink
    /// (`TRACKING_SINK_QUEUE`, `TRACKING_SINK_QUEUE_BYTES`).
    pub fn sink_options(&self, queue: Bounds, ack: AckMode) -> tracking_pubsub::SinkOptions {
        tracking_pubsub::SinkOptions {
            ack,
            max_queue: queue.events,
            max_queue_bytes: queue.bytes,
            spool_dir: self.spool_dir.clone(),
            spool_max_bytes: self.spool_max_bytes,
            spool_segment_bytes: (self.spool_max_bytes / 16).clamp(1 << 20, 64 << 20),
            stall_timeout: self.pubsub_stall_timeout,
            flush_timeout: self.pubsub_flush_timeout,
        }
    }
}
