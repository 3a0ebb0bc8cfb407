//! The parallel run's link to the legacy store, through migration-proxy:
//! lookups with a tight deadline behind a circuit breaker, renewals sent off
//! the request path through a bounded queue (`parallel` mode), and the store
//! of `legacy` mode, which reads and renews through migration-proxy only.

pub mod args;
pub mod breaker;
pub mod client;
pub mod metrics;
pub mod store;

use std::time::Duration;

use tracking_core::Ttls;

pub use args::MigrationArgs;
pub use breaker::Breaker;
pub use client::{MigrationClient, Minted};
pub use metrics::{BREAKER_OPEN, BREAKER_OPENED, CALLS, INVALID, LATENCY, MigrationStats, QUEUE};
pub use store::LegacySessionStore;

#[derive(Debug, Clone)]
pub struct MigrationConfig {
    /// Base URL, `http://host:port` (the mesh provides mTLS).
    pub base_url: String,
    /// Deadline of a lookup (the request waits this long at most).
    pub timeout: Duration,
    /// Deadline of a renewal (off the request path).
    pub write_timeout: Duration,
    pub token: Option<String>,
    /// Renewals waiting to be sent; beyond it they are dropped and counted.
    pub queue: usize,
    /// Consecutive failures that open the circuit.
    pub breaker_failures: u32,
    /// How long an open circuit stays open before one probe is let through.
    pub breaker_cooldown: Duration,
    pub ttls: Ttls,
}
