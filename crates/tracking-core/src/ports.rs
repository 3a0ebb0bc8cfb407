//! The capabilities the domain needs from the outside world. Each trait is
//! named for the capability and implemented by a type named for the backend
//! (`MemorySessionStore`, `NdjsonSink`, …) in an adapter crate.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::budget::Admission;
use crate::enrich::EnrichedEvent;
use crate::event::{ClientId, Via};
use crate::session::Sessions;
use crate::time::Timestamp;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a session store could not answer. Never the client's fault; the event
/// is still accepted and marked `session.status = "unavailable"`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend did not answer in time; a later call may succeed.
    #[error("session store timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The backend refused or failed; a later call may succeed.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// The stored data could not be read; retrying will not help.
    #[error("stored session data is corrupt: {0}")]
    Corrupt(String),
}

/// Reads, resolves and renews a visitor's sessions.
pub trait SessionStore: Send + Sync + fmt::Debug {
    /// Resolves the visitor's sessions for an event at `now` (recording `via`
    /// when given) and stores the renewed state.
    fn touch<'a>(
        &'a self,
        client_id: &'a ClientId,
        now: Timestamp,
        via: Option<&'a Via>,
    ) -> BoxFuture<'a, Result<Sessions, StoreError>>;

    /// Waits for work the store still owes (e.g. renewal writes in flight).
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Operation counters for metrics, as `(operation, count)`.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// Why a sink could not take events.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The sink's bounded queue is full; the client should retry later (503).
    #[error("the event queue is full ({limit} events)")]
    Full { limit: usize },
    /// The sink has been closed for shutdown.
    #[error("the sink is closed")]
    Closed,
    /// Writing failed; the message says where.
    #[error("sink failed: {0}")]
    Failed(String),
}

/// Where enriched events go. Taking an event is two steps so that nothing is
/// accepted that cannot be kept: `try_admit` reserves room before the request
/// is accepted, `send` hands the events over and cannot fail.
pub trait EventSink: Send + Sync + fmt::Debug {
    /// Reserves room for `n` events, or says why there is none.
    fn try_admit(&self, n: usize) -> Result<Admission, SinkError>;
    /// Hands events over; the admission is given back once they are written.
    fn send(&self, events: Vec<EnrichedEvent>, admission: Admission);
    /// Writes out everything handed over so far and stops taking events.
    fn close(&self) -> BoxFuture<'_, Result<(), SinkError>>;
}

/// A refused event, kept with its reason.
#[derive(Debug, serde::Serialize)]
pub struct DeadLetter {
    pub received_at: Timestamp,
    /// Stable reason name (`invalid_type`, …).
    pub reason: &'static str,
    /// Human-readable explanation.
    pub error: String,
    /// Position in the batch, when the body was a batch.
    pub index: Option<usize>,
    /// What the client sent for this event, verbatim (JSON text, or the query
    /// string of a pixel request).
    pub raw: String,
}

/// Where refused events go. Best effort and bounded: when full, a dead letter
/// is dropped and counted, never blocking the request.
pub trait DeadLetterSink: Send + Sync + fmt::Debug {
    /// Returns `false` when the letter was dropped.
    fn reject(&self, letter: DeadLetter) -> bool;
    fn close(&self) -> BoxFuture<'_, Result<(), SinkError>>;
}
