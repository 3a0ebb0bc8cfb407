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

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use google_cloud_pubsub::client::Publisher;
use google_cloud_pubsub::error::PublishError;
use google_cloud_pubsub::model::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use tracking_core::{
    Admission, BoxFuture, Budget, Clock, EnrichedEvent, EventSink, SCHEMA_VERSION, SinkError,
    SystemClock,
};

use crate::spool::{Pos, Record, Spool};
use crate::stats::{PublisherStats, Stats, add, sub};

/// Events per replay chunk while Pub/Sub answers; one while probing.
const REPLAY_CHUNK: usize = 1000;
/// Most event bytes in one replay chunk read from the spool.
const REPLAY_CHUNK_BYTES: usize = 8 << 20;
const REPLAY_BACKOFF_MIN: Duration = Duration::from_millis(250);
const REPLAY_BACKOFF_MAX: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(100);
/// Records gathered into one spool append (one fsync), and their most bytes.
const SPOOL_GROUP: usize = 4096;
const SPOOL_GROUP_BYTES: u64 = 8 << 20;
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

pub(crate) fn message(kind: &str, data: bytes::Bytes) -> Message {
    Message::new().set_data(data).set_attributes([
        ("type", kind.to_owned()),
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

enum PumpMsg {
    Backlog(Vec<Pending>),
    Close {
        deadline: tokio::time::Instant,
        done: oneshot::Sender<CloseReport>,
    },
}

/// What was left at shutdown.
#[derive(Debug, Default)]
struct CloseReport {
    /// Events left in the disk spool for the next start.
    spooled: u64,
    /// Events that could not be kept (no spool, Pub/Sub down; or the spool
    /// failing).
    lost: u64,
    /// Why the spool could not take them, when it could not.
    spool_error: Option<String>,
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
    opts: SinkOptions,
}

impl std::fmt::Debug for PumpMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Backlog(p) => write!(f, "Backlog({})", p.len()),
            Self::Close { .. } => f.write_str("Close"),
        }
    }
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
        let backlog = match &opts.spool_dir {
            Some(dir) => {
                let (spool, report) = Spool::open(dir, opts.spool_segment_bytes)?;
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
        let (tx, rx) = mpsc::channel(opts.max_queue.max(1));
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

    pub fn stats(&self) -> PublisherStats {
        let mut stats = self.inner.stats.snapshot(
            self.inner.direct.load(Ordering::Relaxed),
            self.inner.budget.used(),
        );
        stats.spool_failing = self.inner.spool_failing_flag.load(Ordering::Relaxed);
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

/// What woke a checker task.
enum Wake {
    Answer(Result<String, PublishError>),
    /// Its own publish is not acknowledged within the stall timeout.
    Stall,
    /// Another task switched to backlog mode.
    Takeover,
    /// Shutdown stopped waiting.
    GiveUp,
}

/// Awaits the publishes of one hand-over. Until they are answered it hands
/// them to the backlog when they stall, when any publish fails or stalls
/// (takeover), or at shutdown.
async fn check(
    inner: Arc<Inner>,
    mut sent: Vec<(google_cloud_pubsub::publisher::PublishFuture, Pending)>,
    stall_at: tokio::time::Instant,
    mut takeover: watch::Receiver<u64>,
) {
    let total = sent.len();
    let (mut published, mut failed) = (0, 0);
    let mut handed_over = false;
    let mut i = 0;
    while i < sent.len() {
        let wake = {
            let future = &mut sent[i].0;
            tokio::select! {
                r = future => Wake::Answer(r),
                () = tokio::time::sleep_until(stall_at), if !handed_over => Wake::Stall,
                r = takeover.changed(), if !handed_over => match r {
                    Ok(()) => Wake::Takeover,
                    Err(_) => Wake::GiveUp,
                },
                () = inner.give_up.cancelled() => Wake::GiveUp,
            }
        };
        let hand_over = match wake {
            Wake::Answer(Ok(_)) => {
                sub(&inner.stats.in_flight, 1);
                if !handed_over {
                    sub(&inner.unspooled_bytes, sent[i].1.record.spooled_len());
                }
                published += 1;
                add(&inner.stats.published, 1);
                inner.stats.observe_delivery(
                    sent[i].1.record.accepted_at_ms,
                    SystemClock.now().as_millis(),
                );
                i += 1;
                continue;
            }
            Wake::Answer(Err(e)) => {
                sub(&inner.stats.in_flight, 1);
                failed += 1;
                inner.stats.count_failure(classify(&e));
                let why = e.to_string();
                i += 1;
                (!handed_over).then(|| (i - 1, Some(why)))
            }
            Wake::Stall => Some((
                i,
                Some("no acknowledgement within the stall timeout".into()),
            )),
            Wake::Takeover => Some((i, None)),
            Wake::GiveUp => {
                // The messages may still be delivered; they are kept in the
                // backlog too (at-least-once).
                sub(&inner.stats.in_flight, (sent.len() - i) as u64);
                if !handed_over {
                    inner.to_backlog(sent[i..].iter().map(|(_, p)| p.clone()).collect());
                }
                failed += sent.len() - i;
                break;
            }
        };
        if let Some((from, why)) = hand_over {
            handed_over = true;
            // First the copies, then the mode: the pump returns to direct
            // mode only once no hand-over is on its way.
            inner.to_backlog(sent[from..].iter().map(|(_, p)| p.clone()).collect());
            if let Some(why) = why {
                inner.enter_backlog_mode(&why);
            }
        }
    }
    let span = tracing::Span::current();
    span.record("published", published);
    span.record("failed", failed);
    if handed_over && !span.is_disabled() {
        // An error span (kept whatever the sampling share once recorded);
        // the events themselves are not lost: they are in the backlog.
        span.record(
            "otel.status_description",
            format!(
                "{} of {total} not acknowledged in time; kept in the backlog",
                total - published
            ),
        );
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

    fn send(&self, events: Vec<EnrichedEvent>, mut admission: Admission) {
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
        if !inner.direct.load(Ordering::Acquire) {
            inner.to_backlog(pending);
            return;
        }
        let stall_at = tokio::time::Instant::now() + inner.opts.stall_timeout;
        let sent: Vec<_> = pending
            .into_iter()
            .map(|p| {
                let future = inner
                    .publisher
                    .publish(message(&p.record.kind, p.record.data.clone()));
                (future, p)
            })
            .collect();
        add(&inner.stats.in_flight, sent.len() as u64);
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

/// Events waiting for replay.
#[derive(Debug)]
enum Backlog {
    Disk {
        spool: Spool,
        /// Events not appended yet (an append failed, or they just came),
        /// kept in order; replayed from here when the spool is empty.
        unwritten: VecDeque<Pending>,
    },
    Memory(VecDeque<Pending>),
}

impl Backlog {
    fn is_empty(&self) -> bool {
        match self {
            Self::Disk { spool, unwritten } => spool.is_empty() && unwritten.is_empty(),
            Self::Memory(q) => q.is_empty(),
        }
    }
}

type ReplayFuture = Pin<Box<dyn Future<Output = Vec<Result<(), FailureClass>>> + Send>>;

/// One chunk being replayed.
struct Replay {
    future: ReplayFuture,
    accepted_at_ms: Vec<u64>,
    /// For records read from the spool: where each ends. Empty when the
    /// chunk comes from memory (the front of the in-memory queue).
    ends: Vec<Pos>,
}

struct Pump {
    inner: Arc<Inner>,
    backlog: Backlog,
    replay: Option<Replay>,
    backoff: Duration,
    next_replay: Instant,
    probing: bool,
    spool_error_logged: Instant,
}

impl Pump {
    fn new(inner: Arc<Inner>, backlog: Backlog) -> Self {
        Self {
            inner,
            backlog,
            replay: None,
            backoff: REPLAY_BACKOFF_MIN,
            next_replay: Instant::now(),
            probing: false,
            spool_error_logged: Instant::now() - Duration::from_secs(60),
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<PumpMsg>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let close = loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(PumpMsg::Backlog(mut batch)) => {
                        let mut close = None;
                        let mut bytes: u64 = batch.iter().map(|p| p.record.spooled_len()).sum();
                        while batch.len() < SPOOL_GROUP && bytes < SPOOL_GROUP_BYTES {
                            match rx.try_recv() {
                                Ok(PumpMsg::Backlog(more)) => {
                                    bytes += more.iter().map(|p| p.record.spooled_len()).sum::<u64>();
                                    batch.extend(more);
                                }
                                Ok(c @ PumpMsg::Close { .. }) => { close = Some(c); break; }
                                Err(_) => break,
                            }
                        }
                        self.push(batch);
                        if let Some(c) = close { break Some(c); }
                    }
                    Some(c @ PumpMsg::Close { .. }) => break Some(c),
                    None => break None,
                },
                results = async {
                    match self.replay.as_mut() {
                        Some(r) => (&mut r.future).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.replay_done(results);
                    self.start_replay();
                }
                _ = tick.tick() => self.tick(rx.is_empty()),
            }
        };
        let Some(PumpMsg::Close { deadline, done }) = close else {
            return;
        };
        let report = self.close(deadline).await;
        let _ = done.send(report);
    }

    /// `nothing_coming`: no hand-over waits in the channel.
    fn tick(&mut self, nothing_coming: bool) {
        let inner = Arc::clone(&self.inner);
        self.write_unwritten();
        self.start_replay();
        if nothing_coming
            && !inner.direct.load(Ordering::Acquire)
            && self.replay.is_none()
            && self.backlog.is_empty()
        {
            inner.direct.store(true, Ordering::Release);
            add(&inner.stats.mode_changes, 1);
            tracing::info!("Pub/Sub backlog replayed; publishing directly again.");
        }
    }

    /// Adds events to the backlog (for the disk spool: appended, one fsync
    /// per group).
    fn push(&mut self, batch: Vec<Pending>) {
        let n = batch.len() as u64;
        add(&self.inner.stats.backlog_events, n);
        match &mut self.backlog {
            Backlog::Memory(q) => {
                q.extend(batch);
                add(&self.inner.stats.spooled, n);
            }
            Backlog::Disk { unwritten, .. } => {
                unwritten.extend(batch);
                self.write_unwritten();
            }
        }
    }

    /// Appends what waits in memory to the spool, in groups, oldest first;
    /// stops at the first failure (the rest stays, retried next tick).
    fn write_unwritten(&mut self) {
        // A chunk replayed from memory is taken off the front when it is
        // acknowledged; appending under it would shift that front.
        if self.replay.as_ref().is_some_and(|r| r.ends.is_empty()) {
            return;
        }
        let Backlog::Disk { spool, unwritten } = &mut self.backlog else {
            return;
        };
        let stats = Arc::clone(&self.inner.stats);
        while !unwritten.is_empty() {
            let (mut n, mut bytes) = (0, 0);
            for p in unwritten.iter() {
                if n == SPOOL_GROUP || (n > 0 && bytes + p.record.spooled_len() > SPOOL_GROUP_BYTES)
                {
                    break;
                }
                n += 1;
                bytes += p.record.spooled_len();
            }
            let records: Vec<Record> = unwritten.iter().take(n).map(|p| p.record.clone()).collect();
            match spool.append(&records) {
                Ok(()) => {
                    add(&stats.spooled, n as u64);
                    sub(&self.inner.unspooled_bytes, bytes);
                    stats.spool_bytes.store(spool.bytes(), Ordering::Relaxed);
                    // Dropping them gives their memory share back.
                    unwritten.drain(..n);
                }
                Err(error) => {
                    add(&stats.spool_errors, 1);
                    if self.spool_error_logged.elapsed() > Duration::from_secs(10) {
                        self.spool_error_logged = Instant::now();
                        tracing::error!(
                            %error,
                            events = unwritten.len(),
                            "Spool write failed; the events are kept in memory and retried, new events are refused (503)."
                        );
                    }
                    if self.inner.spool_failing().is_none() {
                        self.inner.set_spool_failing(Some(error.to_string()));
                    }
                    return;
                }
            }
        }
        if self.inner.spool_failing().is_some() {
            self.inner.set_spool_failing(None);
            tracing::info!("Spool writes work again; taking events again.");
        }
    }

    fn start_replay(&mut self) {
        if self.replay.is_some() || Instant::now() < self.next_replay {
            return;
        }
        let max = if self.probing { 1 } else { REPLAY_CHUNK };
        let from_memory = |q: &VecDeque<Pending>| {
            (
                q.iter().take(max).map(|p| p.record.clone()).collect(),
                Vec::new(),
            )
        };
        let (records, ends): (Vec<Record>, Vec<Pos>) = match &self.backlog {
            Backlog::Memory(q) => from_memory(q),
            Backlog::Disk { spool, unwritten } if spool.is_empty() => from_memory(unwritten),
            Backlog::Disk { spool, .. } => match spool.peek(max, REPLAY_CHUNK_BYTES) {
                Ok(chunk) => chunk.into_iter().unzip(),
                Err(error) => {
                    add(&self.inner.stats.spool_errors, 1);
                    tracing::error!(%error, "Cannot read the spool; replay paused.");
                    self.next_replay = Instant::now() + REPLAY_BACKOFF_MAX;
                    return;
                }
            },
        };
        if records.is_empty() {
            return;
        }
        let futures: Vec<_> = records
            .iter()
            .map(|r| {
                let f = self
                    .inner
                    .publisher
                    .publish(message(&r.kind, r.data.clone()));
                async move { f.await.map(|_| ()).map_err(|e| classify(&e)) }
            })
            .collect();
        add(&self.inner.stats.in_flight, records.len() as u64);
        self.replay = Some(Replay {
            future: Box::pin(futures_util::future::join_all(futures)),
            accepted_at_ms: records.iter().map(|r| r.accepted_at_ms).collect(),
            ends,
        });
    }

    fn replay_done(&mut self, results: Vec<Result<(), FailureClass>>) {
        let Some(replay) = self.replay.take() else {
            return;
        };
        let stats = Arc::clone(&self.inner.stats);
        sub(&stats.in_flight, results.len() as u64);
        let ok = results.iter().take_while(|r| r.is_ok()).count();
        if ok > 0 {
            let now = SystemClock.now().as_millis();
            for &at in &replay.accepted_at_ms[..ok] {
                stats.observe_delivery(at, now);
            }
            add(&stats.replayed, ok as u64);
            sub(&stats.backlog_events, ok as u64);
            let published_from_memory = |q: &mut VecDeque<Pending>| {
                let bytes = q.drain(..ok).map(|p| p.record.spooled_len()).sum();
                sub(&self.inner.unspooled_bytes, bytes);
            };
            match &mut self.backlog {
                Backlog::Memory(q) => published_from_memory(q),
                Backlog::Disk { unwritten, .. } if replay.ends.is_empty() => {
                    published_from_memory(unwritten);
                }
                Backlog::Disk { spool, .. } => {
                    if let Err(error) = spool.commit(replay.ends[ok - 1]) {
                        add(&stats.spool_errors, 1);
                        tracing::error!(%error, "Cannot record replay progress; some events may be published again.");
                    }
                    stats.spool_bytes.store(spool.bytes(), Ordering::Relaxed);
                }
            }
        }
        if let Some(&Err(class)) = results.get(ok) {
            stats.count_failure(class);
            self.probing = true;
            self.next_replay = Instant::now() + self.backoff;
            self.backoff = (self.backoff * 2).min(REPLAY_BACKOFF_MAX);
        } else {
            self.probing = false;
            self.backoff = REPLAY_BACKOFF_MIN;
            self.next_replay = Instant::now();
        }
    }

    async fn close(mut self, deadline: tokio::time::Instant) -> CloseReport {
        // Finish the chunk in flight, if it finishes in time.
        if let Some(replay) = self.replay.as_mut()
            && let Ok(results) = tokio::time::timeout_at(deadline, &mut replay.future).await
        {
            self.replay_done(results);
        }
        self.replay = None;
        let stats = Arc::clone(&self.inner.stats);
        match self.backlog {
            Backlog::Disk { .. } => {
                self.write_unwritten();
                let lost = match &self.backlog {
                    Backlog::Disk { unwritten, .. } => unwritten.len() as u64,
                    Backlog::Memory(_) => 0,
                };
                add(&stats.lost, lost);
                CloseReport {
                    spooled: stats.backlog_events.load(Ordering::Relaxed) - lost,
                    lost,
                    spool_error: (lost > 0).then(|| self.inner.spool_failing().unwrap_or_default()),
                }
            }
            Backlog::Memory(_) => {
                // Without a spool the backlog only survives if it is published
                // now: keep replaying until the deadline.
                self.next_replay = Instant::now();
                while !self.backlog.is_empty() {
                    self.start_replay();
                    let Some(replay) = self.replay.as_mut() else {
                        if tokio::time::timeout_at(
                            deadline,
                            tokio::time::sleep_until(self.next_replay.into()),
                        )
                        .await
                        .is_err()
                        {
                            break;
                        }
                        continue;
                    };
                    match tokio::time::timeout_at(deadline, &mut replay.future).await {
                        Ok(results) => self.replay_done(results),
                        Err(_) => break,
                    }
                }
                let lost = match &self.backlog {
                    Backlog::Memory(q) => q.len() as u64,
                    Backlog::Disk { .. } => 0,
                };
                add(&stats.lost, lost);
                CloseReport {
                    spooled: 0,
                    lost,
                    spool_error: None,
                }
            }
        }
    }
}
