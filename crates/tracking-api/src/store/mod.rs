//! Session store adapters.

pub mod bigtable;
pub mod memory;
