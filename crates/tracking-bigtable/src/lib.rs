//! Cloud Bigtable as the tracking API's session store. This crate is the only
//! one that knows Bigtable (`bigtable_rs` for data, the admin protos for
//! `bootstrap`); it implements `tracking_core::SessionStore` and decides
//! nothing about sessions itself — `SessionPolicy` does.
//!
//! Layout (see ARCHITECTURE.md): row key `xxxx#<client_id>` where `xxxx` is a
//! fixed 16-bit hash in hex (no hotspots); families `s` (short session), `l`
//! (long session), `v` (via), one column each; with deduplication, each
//! accepted event id in a row of its own, `xxxx#<client_id>#e#<event_id>`
//! (family `e`). Every read asks for the latest
//! cell only; expiry is judged from cell timestamps and TTLs, never left to
//! garbage collection.

pub mod admin;
pub mod locks;
pub mod retry;
pub mod schema;
pub mod store;

use std::time::Duration;

pub use admin::{BootstrapOutcome, bootstrap};
pub use locks::{InFlight, VisitorLocks};
pub use store::BigtableSessionStore;

/// Where the table is and how to reach it.
#[derive(Debug, Clone)]
pub struct BigtableConfig {
    pub project: String,
    pub instance: String,
    pub table: String,
    /// `host:port` of an emulator: plaintext, no credentials. Otherwise
    /// Application Default Credentials (Workload Identity on GKE).
    pub emulator_host: Option<String>,
    /// gRPC channels (HTTP/2 connections) to spread calls over.
    pub channels: usize,
    /// Deadline of one read attempt; reads are retried within the caller's budget.
    pub attempt_timeout: Duration,
    /// Time allowed for a renewal write, retries included.
    pub write_timeout: Duration,
    /// Renewals queued or being written at most; past it a renewal is
    /// given up and counted as a failed write. [`MAX_QUEUED_RENEWALS`]
    /// unless a test needs a small queue.
    pub max_queued_renewals: usize,
}

/// Renewals queued or being written at most: 4,096 a second of renewals
/// that Bigtable does not answer for the default 2 s write timeout. A
/// renewal of the largest client id and via (escaped) holds about 11 KiB
/// with its in-flight state (measured: 16,384 held 180 MB): ~90 MiB here.
pub const MAX_QUEUED_RENEWALS: usize = 8_192;

/// Why the store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot connect to Bigtable: {0}")]
    Connect(String),
    #[error("cannot get credentials for Bigtable: {0}")]
    Credentials(String),
    #[error("Bigtable admin call failed: {0}")]
    Admin(String),
}
