//! Sink adapters.

pub mod metrics;
pub mod ndjson;
