//! Where new identifiers come from: UUIDv7 (time-ordered, random tail), with
//! the time taken from the injected clock, not from the id generator.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::RngCore;
use uuid::Uuid;

use crate::time::Timestamp;

pub trait IdSource: Send + Sync + fmt::Debug {
    /// A new, unique id minted at `now`.
    fn new_id(&self, now: Timestamp) -> Uuid;
}

/// UUIDv7 with 74 random bits from the thread-local CSPRNG.
#[derive(Clone, Copy, Debug, Default)]
pub struct RandomIds;

impl IdSource for RandomIds {
    fn new_id(&self, now: Timestamp) -> Uuid {
        let mut tail = [0u8; 10];
        rand::rng().fill_bytes(&mut tail);
        uuid::Builder::from_unix_timestamp_millis(now.as_millis(), &tail).into_uuid()
    }
}

/// Predictable UUIDv7s (`…-000000000001`, `…-000000000002`, …); for tests.
#[derive(Debug, Default)]
pub struct SequentialIds(AtomicU64);

impl IdSource for SequentialIds {
    fn new_id(&self, now: Timestamp) -> Uuid {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        let mut tail = [0u8; 10];
        tail[2..].copy_from_slice(&n.to_be_bytes());
        uuid::Builder::from_unix_timestamp_millis(now.as_millis(), &tail).into_uuid()
    }
}
