//! The Bigtable session store's flags (`TRACKING_BIGTABLE_*`) and the
//! adapter's settings built from them. The store itself is
//! `tracking_bigtable::BigtableSessionStore`, built in `build_state`.

use std::time::Duration;

use crate::config::{ConfigError, StoreKind, duration, positive};

#[derive(Debug, Clone, clap::Args)]
pub struct BigtableArgs {
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
}

impl BigtableArgs {
    /// `store`: the session store chosen (`TRACKING_SESSION_STORE`).
    pub fn validate(&self, store: StoreKind) -> Result<(), ConfigError> {
        if store == StoreKind::Bigtable
            && (self.bigtable_project.is_none() || self.bigtable_instance.is_none())
        {
            return Err(ConfigError::new(
                "TRACKING_SESSION_STORE=bigtable needs TRACKING_BIGTABLE_PROJECT and TRACKING_BIGTABLE_INSTANCE",
            ));
        }
        Ok(())
    }

    pub fn config(&self) -> tracking_bigtable::BigtableConfig {
        tracking_bigtable::BigtableConfig {
            project: self.bigtable_project.clone().unwrap_or_default(),
            instance: self.bigtable_instance.clone().unwrap_or_default(),
            table: self.bigtable_table.clone(),
            emulator_host: self.bigtable_emulator_host.clone(),
            channels: self.bigtable_channels,
            attempt_timeout: self.bigtable_attempt_timeout,
            write_timeout: self.bigtable_write_timeout,
            max_queued_renewals: tracking_bigtable::MAX_QUEUED_RENEWALS,
        }
    }
}
