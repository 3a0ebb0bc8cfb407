//! The parallel run's flags (`TRACKING_MIGRATION_*`) and the client's
//! settings built from them.

use std::time::Duration;

use http::HeaderName;
use tracking_core::Ttls;

use super::MigrationConfig;
use crate::config::{ConfigError, MigrationMode, StoreKind, duration, positive, positive_u32};

#[derive(Debug, Clone, clap::Args)]
pub struct MigrationArgs {
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
}

impl MigrationArgs {
    /// `store` and `session_timeout`: the session store chosen and the
    /// deadline of one call to it (`TRACKING_SESSION_STORE`,
    /// `TRACKING_SESSION_TIMEOUT`).
    pub fn validate(&self, store: StoreKind, session_timeout: Duration) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError::new(m));
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
        if self.migration_mode == MigrationMode::Parallel && store != StoreKind::Bigtable {
            return fail(
                "TRACKING_MIGRATION_MODE=parallel needs TRACKING_SESSION_STORE=bigtable".into(),
            );
        }
        if self.migration_mode != MigrationMode::Cloud && self.migration_timeout >= session_timeout
        {
            return fail(
                "TRACKING_MIGRATION_TIMEOUT must be shorter than TRACKING_SESSION_TIMEOUT".into(),
            );
        }
        if let Some(h) = self
            .migration_forward_headers
            .iter()
            .find(|h| HeaderName::from_bytes(h.trim().as_bytes()).is_err())
        {
            return fail(format!(
                "TRACKING_MIGRATION_FORWARD_HEADERS entry `{h}` is not a header name"
            ));
        }
        Ok(())
    }

    /// The client's settings; `None` in `cloud` mode (no migration-proxy).
    pub fn config(&self, ttls: Ttls) -> Option<MigrationConfig> {
        (self.migration_mode != MigrationMode::Cloud).then(|| MigrationConfig {
            base_url: self.migration_url.clone().unwrap_or_default(),
            timeout: self.migration_timeout,
            write_timeout: self.migration_write_timeout,
            token: self.migration_token.clone(),
            queue: self.migration_queue,
            breaker_failures: self.migration_breaker_failures,
            breaker_cooldown: self.migration_breaker_cooldown,
            ttls,
        })
    }

    /// The request headers forwarded to migration-proxy, lower-cased.
    pub fn forward_headers(&self) -> Vec<HeaderName> {
        self.migration_forward_headers
            .iter()
            .filter_map(|h| HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes()).ok())
            .collect()
    }
}
