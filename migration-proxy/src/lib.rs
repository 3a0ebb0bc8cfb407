//! migration-proxy: the HTTP service in front of the on-prem Aerospike
//! cluster during the parallel run (see ARCHITECTURE.md), and `copy`, the
//! resumable bulk copy of the legacy sets into Bigtable.

pub mod config;
pub mod copy;
pub mod legacy;
pub mod metrics;
pub mod server;

pub use legacy::{Create, Legacy, LegacyError, Put};
pub use server::{Proxy, ServeOptions, serve, serve_admin};
