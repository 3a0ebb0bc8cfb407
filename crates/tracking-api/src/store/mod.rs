//! Session store adapters.

pub mod memory;
