//! Sink adapters.

pub mod args;
pub mod metrics;
pub mod ndjson;
pub mod pubsub;
