//! `PubsubSink`: enriched events to a Pub/Sub topic, off the request path,
//! with nothing lost behind it.
//!
//! Two modes, switched by evidence:
//!
//! - **direct**: `send` hands each event to the client's publisher (which
//!   batches by count, bytes and delay) and a checker task awaits every
//!   result. Acknowledged events release their share of the in-memory budget.
//! - **backlog**: events go to the backlog first — the disk spool
//!   (`TRACKING_SPOOL_DIR`), or memory when no spool is configured — and a
//!   replay loop publishes the backlog oldest first, one chunk at a time,
//!   committing each chunk once Pub/Sub acknowledged it.
//!
//! Direct → backlog when a publish fails after the client's own retries
//! (bounded by `publish_timeout`), or when a publish has not been
//! acknowledged `stall_timeout` after it was handed to the client. Either
//! way every event not acknowledged yet is *taken over*: the checker tasks
//! of all publishes still outstanding put a copy of their events into the
//! backlog at once (their publishes go on: an event acknowledged later is
//! published twice, at-least-once), so that a crash a moment later finds
//! them in the spool. Backlog → direct only once the backlog is empty again,
//! which only a successful replay achieves, and no hand-over is still on its
//! way to it: one outage is one change to backlog and one back.
//!
//! Bounds: the in-memory budget, in events and bytes (events accepted and
//! neither acknowledged nor spooled, each counted until both its publish has
//! ended and its copy is on disk, because the client holds the data until
//! then) and the spool's byte limit, which also counts what memory holds.
//! Past either, `try_admit` says `Full` and the API answers 503 with
//! `Retry-After`. A spool append that fails (a full disk, EIO) keeps its
//! events in memory, in order, retried every tick; while it fails,
//! `try_admit` says `Unavailable` (503), and a Pub/Sub that answers again
//! gets those events replayed from memory.
//!
//! The backlog is owned by one "pump" thread (spool I/O and fsync never block
//! the request runtime).
//!
//! **The `disk` acknowledgement mode** (`TRACKING_ACK=disk`) makes the spool
//! a write-ahead log: `send` hands *every* event to the pump, which appends
//! what came since its last append with one write and one `fdatasync`
//! (group commit) and only then answers the requests (their receipts). In
//! direct mode it then publishes them from memory; their checker tasks
//! report each fully acknowledged hand-over back, and the log is trimmed up
//! to the oldest hand-over not yet acknowledged (the cursor is persisted
//! every tick). Nothing is copied on a takeover: on a change to backlog mode
//! the replay simply starts at that oldest unacknowledged event, so events
//! acknowledged after it are published twice (at-least-once). At start the
//! log's unacknowledged tail is replayed like any backlog. A failed append
//! or `fdatasync` answers its requests 503 (the clients send again; the
//! page cache may have dropped what a failed sync covered, so nothing is
//! retried as if it were safe) and the sink refuses until a probe write to
//! the spool's disk works.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use google_cloud_pubsub::client::Publisher;
use google_cloud_pubsub::error::PublishError;
use google_cloud_pubsub::model::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use tracking_core::{
    AckMode, Admission, BoxFuture, Budget, EnrichedEvent, EventSink, FsyncStats, Receipt,
    SCHEMA_VERSION, SinkError,
};

use crate::spool::{Record, Spool};
use crate::stats::{PublisherStats, Stats, add, sub};

mod backlog;
mod direct;

use backlog::{Backlog, Pump, PumpMsg};
use direct::{check, check_logged};

/// Memory an event costs besides its data: our record and the client's
/// message (attributes, its future), about.
pub const EVENT_OVERHEAD: usize = 512;

/// How the sink is bounded and timed.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Events held in memory (accepted, not yet acknowledged or spooled).
    pub max_queue: usize,
    /// Bytes those events may take (data plus [`EVENT_OVERHEAD`] each).
    pub max_queue_bytes: usize,
    /// Spool directory; `None` keeps the backlog in memory (bounded by
    /// `max_queue`, lost if the process stops while Pub/Sub is down).
    pub spool_dir: Option<PathBuf>,
    /// In backlog mode, no events are admitted while the spool holds this
    /// many bytes.
    pub spool_max_bytes: u64,
    /// Segment size of the spool.
    pub spool_segment_bytes: u64,
    /// `Disk`: the spool is a write-ahead log (needs `spool_dir`).
    pub ack: AckMode,
    /// No acknowledgement for this long while publishes are outstanding →
    /// backlog mode.
    pub stall_timeout: Duration,
    /// At shutdown, how long outstanding publishes may take before their
    /// events are spooled instead.
    pub flush_timeout: Duration,
}

/// Why a publish failed, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Unavailable, deadline exceeded, connection refused, …: retried.
    Retryable,
    /// Topic missing, permission denied, invalid: needs an operator; the
    /// events wait in the backlog meanwhile.
    Permanent,
}

pub(crate) fn classify(e: &PublishError) -> FailureClass {
    use google_cloud_gax::error::rpc::Code;
    match e {
        PublishError::Rpc(err) => match err.status().map(|s| s.code) {
            Some(
                Code::NotFound
                | Code::PermissionDenied
                | Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::Unauthenticated
                | Code::Unimplemented,
            ) => FailureClass::Permanent,
            _ => FailureClass::Retryable,
        },
        _ => FailureClass::Retryable,
    }
}

/// An event's message: the enriched event JSON, with the attributes `type`,
/// `schema_version` and `event_id` (a consumer deduplicates on it, e.g.
/// Dataflow's `idAttribute`).
pub(crate) fn message(record: &Record) -> Message {
    Message::new()
        .set_data(record.data.clone())
        .set_attributes([
            ("type", record.kind.to_string()),
            ("schema_version", SCHEMA_VERSION.to_string()),
            ("event_id", record.event_id.to_string()),
        ])
}

/// A dead letter's message: `type` is its reason.
pub(crate) fn letter_message(reason: &str, data: bytes::Bytes) -> Message {
    Message::new().set_data(data).set_attributes([
        ("type", reason.to_owned()),
        ("schema_version", SCHEMA_VERSION.to_string()),
    ])
}

/// An event not yet acknowledged or spooled, holding its share of the
/// request's admission. A taken-over event has two: its publish and its
/// backlog copy; its share goes back when both are done.
#[derive(Debug, Clone)]
struct Pending {
    record: Record,
    _admission: Arc<Admission>,
}

#[derive(Debug)]
struct Inner {
    publisher: Publisher,
    budget: Arc<Budget>,
    stats: Arc<Stats>,
    direct: AtomicBool,
    closed: AtomicBool,
    /// Bumped on every change to backlog mode: checker tasks hand their
    /// unacknowledged events over.
    takeover: watch::Sender<u64>,
    /// Spool-record bytes of the accepted events that may still have to go
    /// to the spool: neither acknowledged on their first publish nor
    /// appended (a taken-over event counts once, until its copy is).
    unspooled_bytes: AtomicU64,
    /// Set while spool appends fail, to the error.
    spool_failing: Mutex<Option<String>>,
    spool_failing_flag: AtomicBool,
    tx: mpsc::Sender<PumpMsg>,
    tracker: TaskTracker,
    give_up: CancellationToken,
    spool_max_bytes: Option<u64>,
    /// The disk acknowledgement mode's group commits.
    fsyncs: Arc<FsyncStats>,
    /// The request runtime: checker tasks of the write-ahead log's direct
    /// publishes run there, not on the pump thread.
    runtime: tokio::runtime::Handle,
    opts: SinkOptions,
}

/// See the module documentation.
#[derive(Debug)]
pub struct PubsubSink {
    inner: Arc<Inner>,
    pump: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl PubsubSink {
    /// Opens the spool (reporting damage), starts the pump thread and
    /// returns the sink. `publisher` must already be configured (endpoint,
    /// credentials, batching, retry time limit).
    pub fn start(publisher: Publisher, opts: SinkOptions) -> anyhow::Result<Self> {
        let stats = Arc::new(Stats::default());
        if opts.ack == AckMode::Disk && opts.spool_dir.is_none() {
            anyhow::bail!("the disk acknowledgement mode needs a spool directory");
        }
        let backlog = match &opts.spool_dir {
            Some(dir) => {
                let (mut spool, report) = Spool::open(dir, opts.spool_segment_bytes)?;
                if opts.ack == AckMode::Disk {
                    spool.reuse_tail();
                }
                for d in &report.damage {
                    tracing::error!(
                        segment = %d.segment.display(), offset = d.offset, bytes = d.bytes, reason = %d.reason,
                        "Spool damage found and skipped; the intact records before it are kept."
                    );
                    add(&stats.damaged_bytes, d.bytes);
                }
                if report.records > 0 {
                    tracing::info!(
                        events = report.records,
                        bytes = report.bytes,
                        "Spool holds events from an earlier run; replaying them."
                    );
                }
                stats.spool_bytes.store(report.bytes, Ordering::Relaxed);
                stats
                    .backlog_events
                    .store(report.records, Ordering::Relaxed);
                Backlog::Disk {
                    spool,
                    unwritten: VecDeque::new(),
                }
            }
            None => Backlog::Memory(VecDeque::new()),
        };
        // At most one message per admitted request, and (disk mode) one
        // acknowledgement per hand-over in flight: twice the queue bound.
        let (tx, rx) = mpsc::channel(opts.max_queue.max(1).saturating_mul(2));
        let inner = Arc::new(Inner {
            publisher,
            budget: Budget::new(opts.max_queue, opts.max_queue_bytes),
            stats,
            // Start in backlog mode when there is a backlog, so that it is
            // replayed before new events overtake it.
            direct: AtomicBool::new(backlog.is_empty()),
            closed: AtomicBool::new(false),
            takeover: watch::Sender::new(0),
            unspooled_bytes: AtomicU64::new(0),
            spool_failing: Mutex::new(None),
            spool_failing_flag: AtomicBool::new(false),
            tx,
            tracker: TaskTracker::new(),
            give_up: CancellationToken::new(),
            spool_max_bytes: opts.spool_dir.as_ref().map(|_| opts.spool_max_bytes),
            fsyncs: Arc::new(FsyncStats::default()),
            runtime: tokio::runtime::Handle::try_current()
                .map_err(|e| anyhow::anyhow!("the Pub/Sub sink starts inside a runtime: {e}"))?,
            opts,
        });
        let pump_inner = Arc::clone(&inner);
        let pump = std::thread::Builder::new()
            .name("pubsub-pump".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(Pump::new(pump_inner, backlog).run(rx)),
                    Err(error) => tracing::error!(%error, "Cannot start the Pub/Sub pump."),
                }
            })?;
        Ok(Self {
            inner,
            pump: Mutex::new(Some(pump)),
        })
    }

    /// The in-memory budget (events accepted, not yet acknowledged or spooled).
    pub fn budget(&self) -> &Arc<Budget> {
        &self.inner.budget
    }

    /// The disk acknowledgement mode's group commits (zero in memory mode).
    pub fn fsyncs(&self) -> &Arc<FsyncStats> {
        &self.inner.fsyncs
    }

    pub fn stats(&self) -> PublisherStats {
        let mut stats = self.inner.stats.snapshot(
            self.inner.direct.load(Ordering::Relaxed),
            self.inner.budget.used(),
        );
        stats.spool_failing = self.inner.spool_failing_flag.load(Ordering::Relaxed);
        stats.spool_limit_bytes = self.inner.spool_max_bytes.unwrap_or(0);
        stats
    }
}

impl Inner {
    fn to_backlog(&self, pending: Vec<Pending>) {
        let n = pending.len() as u64;
        if let Err(e) = self.tx.try_send(PumpMsg::Backlog(pending)) {
            // Cannot happen while the sink is open: the channel holds at most
            // one message per admitted event. After close, it is a bug.
            add(&self.stats.lost, n);
            tracing::error!(events = n, error = %e, "Pub/Sub backlog is gone; events lost.");
        }
    }

    /// The disk acknowledgement mode: hands events to the pump for the
    /// write-ahead log; the receipt resolves once they are appended and
    /// fdatasynced.
    fn to_log(&self, pending: Vec<Pending>) -> Receipt {
        let (done, synced) = oneshot::channel();
        let bytes: u64 = pending.iter().map(|p| p.record.spooled_len()).sum();
        let sent = self.tx.try_send(PumpMsg::Append { pending, done });
        if sent.is_err() {
            // Closed, or (cannot happen: one message per admitted request)
            // full: the request is refused, the client sends again.
            sub(&self.unspooled_bytes, bytes);
        }
        Receipt::durable(Box::pin(async move {
            if sent.is_err() {
                return Err(SinkError::Closed);
            }
            synced.await.unwrap_or_else(|_| {
                Err(SinkError::Failed(
                    "the Pub/Sub pump stopped before the events were logged".into(),
                ))
            })
        }))
    }

    /// Hands each event to the publisher: the publishes in flight, and when
    /// they count as stalled.
    fn publish(
        &self,
        pending: Vec<Pending>,
    ) -> (
        Vec<(google_cloud_pubsub::publisher::PublishFuture, Pending)>,
        tokio::time::Instant,
    ) {
        let stall_at = tokio::time::Instant::now() + self.opts.stall_timeout;
        let sent: Vec<_> = pending
            .into_iter()
            .map(|p| (self.publisher.publish(message(&p.record)), p))
            .collect();
        add(&self.stats.in_flight, sent.len() as u64);
        (sent, stall_at)
    }

    /// Publishes events already in the write-ahead log, from memory; their
    /// checker task reports hand-over `seq` of `generation` once all are
    /// acknowledged.
    fn publish_logged(self: &Arc<Self>, pending: Vec<Pending>, generation: u64, seq: u64) {
        let (sent, stall_at) = self.publish(pending);
        self.tracker.spawn_on(
            check_logged(Arc::clone(self), sent, stall_at, generation, seq),
            &self.runtime,
        );
    }

    /// Switches to backlog mode (once) and has every checker task hand its
    /// unacknowledged events over.
    fn enter_backlog_mode(&self, why: &str) {
        if self.direct.swap(false, Ordering::AcqRel) {
            add(&self.stats.mode_changes, 1);
            self.takeover.send_modify(|g| *g += 1);
            tracing::warn!(
                why,
                "Pub/Sub is not acknowledging; every unacknowledged and new event goes to the backlog."
            );
        }
    }

    fn set_spool_failing(&self, error: Option<String>) {
        self.spool_failing_flag
            .store(error.is_some(), Ordering::Release);
        if let Ok(mut e) = self.spool_failing.lock() {
            *e = error;
        }
    }

    fn spool_failing(&self) -> Option<String> {
        if !self.spool_failing_flag.load(Ordering::Acquire) {
            return None;
        }
        self.spool_failing.lock().ok().and_then(|e| e.clone())
    }
}

impl EventSink for PubsubSink {
    fn try_admit(&self, n: usize, bytes: usize) -> Result<Admission, SinkError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(SinkError::Closed);
        }
        if let Some(error) = inner.spool_failing() {
            return Err(SinkError::Unavailable(format!(
                "the spool cannot be written: {error}"
            )));
        }
        let bytes = bytes + n * EVENT_OVERHEAD;
        let full = || SinkError::Full {
            limit: inner.budget.limit(),
            limit_bytes: inner.budget.limit_bytes(),
        };
        // Everything held in memory may still end up in the spool (a publish
        // in flight can fail): count it, so that the spool's bound holds to
        // within the requests being admitted concurrently, whatever the mode.
        if let Some(max) = inner.spool_max_bytes {
            let spooled = inner.stats.spool_bytes.load(Ordering::Relaxed);
            let coming = inner.unspooled_bytes.load(Ordering::Relaxed) + bytes as u64;
            if spooled + coming >= max {
                return Err(full());
            }
        }
        inner.budget.try_acquire(n, bytes).ok_or_else(full)
    }

    fn send(&self, events: Vec<EnrichedEvent>, mut admission: Admission) -> Receipt {
        let inner = &self.inner;
        // Subscribed before the mode is read: a switch to backlog mode after
        // this point reaches the checker task.
        let takeover = inner.takeover.subscribe();
        let records: Vec<(Record, usize)> = events
            .iter()
            .map(|e| {
                // Serializing our own types into memory cannot fail.
                let data = serde_json::to_vec(e).unwrap_or_default();
                let size = data.capacity() + e.event_type().len() + EVENT_OVERHEAD;
                let record = Record {
                    accepted_at_ms: e.received_at().as_millis(),
                    kind: e.event_type().into(),
                    event_id: e.event_id().into(),
                    data: data.into(),
                };
                (record, size)
            })
            .collect();
        admission.set_bytes(records.iter().map(|(_, size)| size).sum());
        add(
            &inner.unspooled_bytes,
            records.iter().map(|(r, _)| r.spooled_len()).sum(),
        );
        let pending: Vec<Pending> = records
            .into_iter()
            .map(|(record, size)| Pending {
                record,
                _admission: Arc::new(admission.split(1, size)),
            })
            .collect();
        if inner.opts.ack == AckMode::Disk {
            return inner.to_log(pending);
        }
        if !inner.direct.load(Ordering::Acquire) {
            inner.to_backlog(pending);
            return Receipt::held();
        }
        let (sent, stall_at) = inner.publish(pending);
        // The publish results get a span of their own, linked to the request
        // that handed the events over (it has ended by the time they come).
        // It is recorded when that request's trace is sampled.
        let span = tracing::debug_span!(
            parent: None,
            "pubsub.publish",
            otel.kind = "producer",
            messages = sent.len(),
            published = tracing::field::Empty,
            failed = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        span.follows_from(tracing::Span::current());
        inner
            .tracker
            .spawn(check(Arc::clone(inner), sent, stall_at, takeover).instrument(span));
        Receipt::held()
    }

    fn healthy(&self) -> bool {
        !self.inner.spool_failing_flag.load(Ordering::Acquire)
    }

    fn close(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let inner = &self.inner;
            if inner.closed.swap(true, Ordering::AcqRel) {
                return Ok(());
            }
            let deadline = tokio::time::Instant::now() + inner.opts.flush_timeout;
            inner.tracker.close();
            if tokio::time::timeout_at(deadline, inner.tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    in_flight = inner.stats.in_flight.load(Ordering::Relaxed),
                    "Publishes still outstanding at the flush deadline; keeping them in the backlog."
                );
                inner.give_up.cancel();
                inner.tracker.wait().await;
            }
            let (done, report) = oneshot::channel();
            inner
                .tx
                .send(PumpMsg::Close { deadline, done })
                .await
                .map_err(|_| SinkError::Failed("the Pub/Sub pump has stopped".into()))?;
            let report = report
                .await
                .map_err(|_| SinkError::Failed("the Pub/Sub pump has stopped".into()))?;
            let handle = self.pump.lock().ok().and_then(|mut p| p.take());
            if let Some(handle) = handle {
                let _ = tokio::task::spawn_blocking(move || handle.join()).await;
            }
            if report.spooled > 0 {
                tracing::info!(
                    events = report.spooled,
                    "Events left in the spool; the next start replays them."
                );
            }
            if report.lost > 0 {
                return Err(SinkError::Failed(match report.spool_error {
                    Some(error) => format!(
                        "{} events could not be published nor written to the spool ({error}): lost",
                        report.lost
                    ),
                    None => format!(
                        "{} events could not be published and no spool is configured (TRACKING_SPOOL_DIR): lost",
                        report.lost
                    ),
                }));
            }
            Ok(())
        })
    }
}
