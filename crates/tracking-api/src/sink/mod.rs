//! Sink adapters.

pub mod ndjson;
