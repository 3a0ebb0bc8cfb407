//! `loadtest`: an open-model HTTP load generator that reports when it cannot
//! be trusted, and a baseline server to compare against.
//!
//! Requests leave at intended times fixed in advance (`schedule`), whatever
//! the target does; latency is measured from those times; the generator
//! judges its own health (schedule lag, drops, achieved rate, CPU) and says
//! so in the report, whose histograms merge exactly across generators.
//! It knows nothing of the tracking API beyond the requests it sends.

pub mod baseline;
pub mod report;
pub mod run;
pub mod scenario;
pub mod schedule;
