//! The capabilities the domain needs from the outside world. Each trait is
//! named for the capability and implemented by a type named for the backend:
//! in adapter crates (`BigtableSessionStore`, `PubsubSink`), and, for the
//! embedded default and the migration client, in `tracking-api` itself
//! (`MemorySessionStore`, `NdjsonSink`, `LegacySessionStore`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::budget::Admission;
use crate::enrich::EnrichedEvent;
use crate::event::{ClientId, Via};
use crate::session::{Sessions, VisitorState};
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

/// What a request passes on to the calls made for it: the headers forwarded
/// to migration-proxy (the blue/green routing header, trace context), as
/// `(lowercase name, value)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallContext {
    pub headers: Vec<(Box<str>, Box<str>)>,
    /// When the event's request was received (when its session time was
    /// read): work done for the event off the request path (a renewal)
    /// counts its deadline from here, not from when it started. `None`:
    /// from when the store is called.
    pub received: Option<std::time::Instant>,
}

static EMPTY_CONTEXT: CallContext = CallContext {
    headers: Vec::new(),
    received: None,
};

impl CallContext {
    /// No headers to pass on.
    pub fn empty() -> &'static CallContext {
        &EMPTY_CONTEXT
    }
}

/// What the legacy store (through migration-proxy) knows about a visitor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LegacyLookup {
    /// Its state there, converted to the cloud's view.
    Found(VisitorState),
    /// Nothing there.
    Missing,
    /// No answer in time, an error, or the circuit is open: carry on without.
    Unavailable,
}

/// The legacy session store during the parallel run: asked on a miss of the
/// primary store, and told every renewal so the old system stays right.
pub trait LegacySessions: Send + Sync + fmt::Debug {
    /// Looks the visitor up, within the configured deadline.
    fn fetch<'a>(
        &'a self,
        client_id: &'a ClientId,
        now: Timestamp,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, LegacyLookup>;

    /// Queues the renewed state for the legacy store. Never blocks: when the
    /// queue is full the renewal is dropped and counted.
    fn renew(&self, client_id: &ClientId, state: &VisitorState, ctx: &CallContext);

    /// Sends what is queued, within the caller's deadline.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// What a touch does with the event's client-given id (`TRACKING_DEDUP_WINDOW`):
/// an event whose id the visitor's record holds from within the window is a
/// retry of one already accepted. Ids the service assigned itself are never
/// retried and are not passed. A touch only checks: the id is recorded by
/// [`SessionStore::remember`] once the event is accepted for good (handed
/// to the sink; in the `disk` mode, on disk), never before — a process
/// killed mid-request, or a failed `fdatasync` answered `503`, leaves the
/// client's retry to be output, not taken for a duplicate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdCheck<'a> {
    /// No client-given id, or deduplication is off: sessions only.
    Skip,
    /// Checked against the visitor's recent ids.
    Check(&'a str),
}

impl<'a> IdCheck<'a> {
    /// The id to check, if any.
    pub fn id(self) -> Option<&'a str> {
        match self {
            Self::Skip => None,
            Self::Check(id) => Some(id),
        }
    }
}

/// What a touch found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Touched {
    /// The event's sessions (renewed).
    Sessions(Sessions),
    /// The event's id was accepted for this visitor at `accepted_at`,
    /// within the window: a retry. Nothing was renewed or recorded.
    Duplicate { accepted_at: Timestamp },
}

/// Reads, resolves and renews a visitor's sessions.
pub trait SessionStore: Send + Sync + fmt::Debug {
    /// Resolves the visitor's sessions for an event at `now` (recording `via`
    /// when given) and stores the renewed state, on behalf of a request whose
    /// context (`ctx`, [`CallContext::empty`] for none) calls to other
    /// services carry. Stores that call none ignore it.
    fn touch<'a>(
        &'a self,
        client_id: &'a ClientId,
        now: Timestamp,
        via: Option<&'a Via>,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Sessions, StoreError>>;

    /// [`touch`](Self::touch), also checking the event's client-given id
    /// against the visitor's recent ids. Stores that keep no ids (the
    /// legacy store) resolve sessions only.
    fn touch_event<'a>(
        &'a self,
        client_id: &'a ClientId,
        now: Timestamp,
        via: Option<&'a Via>,
        check: IdCheck<'a>,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Touched, StoreError>> {
        let _ = check;
        Box::pin(async move {
            self.touch(client_id, now, via, ctx)
                .await
                .map(Touched::Sessions)
        })
    }

    /// Records client-given ids of `client_id`'s events accepted at `at`
    /// (checked with [`IdCheck::Check`], now handed over for good). Best
    /// effort, never waits: a record that cannot be written lets a later
    /// retry through (a duplicate downstream, never a loss).
    fn remember(&self, client_id: &ClientId, ids: &[&str], at: Timestamp) {
        let _ = (client_id, ids, at);
    }

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
    #[error("the event queue is full ({limit} events or {limit_bytes} bytes)")]
    Full { limit: usize, limit_bytes: usize },
    /// The output is failing (a write error, a full disk); what was accepted
    /// is kept and retried, new events wait until it works again (503).
    #[error("the event output is failing: {0}")]
    Unavailable(String),
    /// The sink has been closed for shutdown.
    #[error("the sink is closed")]
    Closed,
    /// Writing failed; the message says where.
    #[error("sink failed: {0}")]
    Failed(String),
}

/// When a request is answered `2xx` (`TRACKING_ACK`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AckMode {
    /// Once its events are held in memory (published within milliseconds,
    /// spooled during an outage): a process crash can lose them.
    #[default]
    Memory,
    /// Once its events are written to local disk and `fdatasync`ed (the
    /// spool for Pub/Sub, the output file for the file sink).
    Disk,
}

/// What a sink says of events handed to it: held (in memory, on their way:
/// the `memory` acknowledgement mode), or a promise that resolves once they
/// are on disk (`fdatasync`ed: the `disk` mode) or could not be put there.
#[must_use = "in the disk acknowledgement mode the answer waits for the receipt"]
pub struct Receipt(Option<BoxFuture<'static, Result<(), SinkError>>>);

impl Receipt {
    /// The events are held; nothing more to wait for.
    pub fn held() -> Self {
        Self(None)
    }

    /// The events are durable once `written` resolves `Ok`.
    pub fn durable(written: BoxFuture<'static, Result<(), SinkError>>) -> Self {
        Self(Some(written))
    }

    /// Nothing to wait for (the `memory` mode).
    pub fn is_held(&self) -> bool {
        self.0.is_none()
    }

    /// Waits until the events are as safe as the sink's mode promises.
    pub async fn wait(self) -> Result<(), SinkError> {
        match self.0 {
            None => Ok(()),
            Some(written) => written.await,
        }
    }
}

impl fmt::Debug for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Receipt(durable)"
        } else {
            "Receipt(held)"
        })
    }
}

/// Where enriched events go. Taking an event is two steps so that nothing is
/// accepted that cannot be kept: `try_admit` reserves room before the request
/// is accepted, `send` hands the events over and cannot fail; in the `disk`
/// acknowledgement mode its [`Receipt`] says when they are on disk.
pub trait EventSink: Send + Sync + fmt::Debug {
    /// Reserves room for `n` events of about `bytes` bytes in all (an
    /// estimate: `send` replaces it with their real size), or says why there
    /// is none.
    fn try_admit(&self, n: usize, bytes: usize) -> Result<Admission, SinkError>;
    /// Hands events over; the admission is given back once they are written.
    /// The request is answered once the receipt resolves.
    fn send(&self, events: Vec<EnrichedEvent>, admission: Admission) -> Receipt;
    /// Writes out everything handed over so far and stops taking events.
    fn close(&self) -> BoxFuture<'_, Result<(), SinkError>>;
    /// Whether the output works: `false` while writes fail (readiness).
    fn healthy(&self) -> bool {
        true
    }
    /// Resolves once the output is gone for good (a closed pipe): the
    /// process should drain and exit so that it is restarted.
    fn gone(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::pending())
    }
    /// Reopens the output's path, if it has one (log rotation, `SIGHUP`).
    fn reopen(&self) {}
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
    /// Reopens the output's path, if it has one (log rotation, `SIGHUP`).
    fn reopen(&self) {}
}
