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
//! (bounded by `publish_timeout`), or when publishes are outstanding and
//! nothing has been acknowledged for `stall_timeout`. Events whose direct
//! publish fails join the backlog too. Backlog → direct once the backlog is
//! empty again, which only a successful replay achieves.
//!
//! Bounds: the in-memory budget (events accepted and neither acknowledged nor
//! spooled) and, in backlog mode, the spool's byte limit. Past either,
//! `try_admit` says `Full` and the API answers 503 with `Retry-After`.
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
use tokio::sync::{mpsc, oneshot};
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
const REPLAY_BACKOFF_MIN: Duration = Duration::from_millis(250);
const REPLAY_BACKOFF_MAX: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(100);
/// Records gathered into one spool append (one fsync).
const SPOOL_GROUP: usize = 4096;

/// How the sink is bounded and timed.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Events held in memory (accepted, not yet acknowledged or spooled).
    pub max_queue: usize,
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
/// request's admission.
#[derive(Debug)]
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
    /// Events that could not be kept (no spool, Pub/Sub down).
    lost: u64,
}

#[derive(Debug)]
struct Inner {
    publisher: Publisher,
    budget: Arc<Budget>,
    stats: Arc<Stats>,
    direct: AtomicBool,
    closed: AtomicBool,
    last_progress_ms: AtomicU64,
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
            budget: Budget::new(opts.max_queue),
            stats,
            // Start in backlog mode when there is a backlog, so that it is
            // replayed before new events overtake it.
            direct: AtomicBool::new(backlog.is_empty()),
            closed: AtomicBool::new(false),
            last_progress_ms: AtomicU64::new(SystemClock.now().as_millis()),
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
        self.inner.stats.snapshot(
            self.inner.direct.load(Ordering::Relaxed),
            self.inner.budget.used(),
        )
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

    fn enter_backlog_mode(&self, why: &str) {
        if self.direct.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                why,
                "Pub/Sub is not acknowledging; new events go to the backlog."
            );
        }
    }
}

async fn check(
    inner: Arc<Inner>,
    sent: Vec<(google_cloud_pubsub::publisher::PublishFuture, Pending)>,
) {
    let mut failed = Vec::new();
    let total = sent.len();
    for (future, pending) in sent {
        let result = tokio::select! {
            r = future => Some(r),
            () = inner.give_up.cancelled() => None,
        };
        sub(&inner.stats.in_flight, 1);
        match result {
            Some(Ok(_)) => {
                let now = SystemClock.now().as_millis();
                add(&inner.stats.published, 1);
                inner
                    .stats
                    .observe_delivery(pending.record.accepted_at_ms, now);
                inner.last_progress_ms.store(now, Ordering::Relaxed);
            }
            Some(Err(e)) => {
                inner.stats.count_failure(classify(&e));
                inner.enter_backlog_mode(&e.to_string());
                failed.push(pending);
            }
            // Shutdown gave up waiting: the message may still be delivered,
            // and it is kept in the backlog too (at-least-once).
            None => failed.push(pending),
        }
    }
    let span = tracing::Span::current();
    span.record("published", total - failed.len());
    span.record("failed", failed.len());
    if !failed.is_empty() {
        // An error span (kept whatever the sampling share once recorded);
        // the events themselves are not lost: they go to the backlog.
        if !span.is_disabled() {
            span.record(
                "otel.status_description",
                format!(
                    "{} of {total} not acknowledged; kept in the backlog",
                    failed.len()
                ),
            );
        }
        inner.to_backlog(failed);
    }
}

impl EventSink for PubsubSink {
    fn try_admit(&self, n: usize) -> Result<Admission, SinkError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(SinkError::Closed);
        }
        // Everything held in memory may still end up in the spool (a publish
        // in flight can fail): count it at the average event size, so that
        // the spool's bound holds to within the requests being admitted
        // concurrently, whatever the mode.
        if let Some(max) = inner.spool_max_bytes {
            let spooled = inner.stats.spool_bytes.load(Ordering::Relaxed);
            let coming = (inner.budget.used() + n) as u64 * inner.stats.average_event_bytes();
            if spooled + coming >= max {
                return Err(SinkError::Full {
                    limit: inner.budget.limit(),
                });
            }
        }
        inner.budget.try_acquire(n).ok_or(SinkError::Full {
            limit: inner.budget.limit(),
        })
    }

    fn send(&self, events: Vec<EnrichedEvent>, admission: Admission) {
        let inner = &self.inner;
        let admission = Arc::new(admission);
        let mut bytes = 0;
        let pending: Vec<Pending> = events
            .iter()
            .map(|e| {
                let record = Record {
                    accepted_at_ms: e.received_at().as_millis(),
                    kind: e.event_type().into(),
                    // Serializing our own types into memory cannot fail.
                    data: serde_json::to_vec(e).unwrap_or_default().into(),
                };
                bytes += record.spooled_len();
                Pending {
                    record,
                    _admission: Arc::clone(&admission),
                }
            })
            .collect();
        inner.stats.count_sent(pending.len() as u64, bytes);
        if !inner.direct.load(Ordering::Acquire) {
            inner.to_backlog(pending);
            return;
        }
        let sent: Vec<_> = pending
            .into_iter()
            .map(|p| {
                let future = inner
                    .publisher
                    .publish(message(&p.record.kind, p.record.data.clone()));
                (future, p)
            })
            .collect();
        if inner
            .stats
            .in_flight
            .fetch_add(sent.len() as u64, Ordering::Relaxed)
            == 0
        {
            inner
                .last_progress_ms
                .store(SystemClock.now().as_millis(), Ordering::Relaxed);
        }
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
            .spawn(check(Arc::clone(inner), sent).instrument(span));
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
                return Err(SinkError::Failed(format!(
                    "{} events could not be published and no spool is configured (TRACKING_SPOOL_DIR): lost",
                    report.lost
                )));
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
        /// Events whose spool append failed; retried, kept in order.
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
    /// For the disk spool: where each record ends.
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
                        while batch.len() < SPOOL_GROUP {
                            match rx.try_recv() {
                                Ok(PumpMsg::Backlog(more)) => batch.extend(more),
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
                _ = tick.tick() => self.tick(),
            }
        };
        let Some(PumpMsg::Close { deadline, done }) = close else {
            return;
        };
        let report = self.close(deadline).await;
        let _ = done.send(report);
    }

    fn tick(&mut self) {
        let inner = Arc::clone(&self.inner);
        if inner.direct.load(Ordering::Relaxed) {
            let stalled_ms = SystemClock
                .now()
                .as_millis()
                .saturating_sub(inner.last_progress_ms.load(Ordering::Relaxed));
            if inner.stats.in_flight.load(Ordering::Relaxed) > 0
                && Duration::from_millis(stalled_ms) > inner.opts.stall_timeout
            {
                inner.enter_backlog_mode("no acknowledgement within the stall timeout");
            }
        }
        self.retry_unwritten();
        self.start_replay();
        if !inner.direct.load(Ordering::Relaxed) && self.replay.is_none() && self.backlog.is_empty()
        {
            inner.direct.store(true, Ordering::Release);
            tracing::info!("Pub/Sub backlog replayed; publishing directly again.");
        }
    }

    /// Retries spool appends that failed earlier.
    fn retry_unwritten(&mut self) {
        if let Backlog::Disk { unwritten, .. } = &mut self.backlog
            && !unwritten.is_empty()
        {
            let retry: Vec<Pending> = unwritten.drain(..).collect();
            self.push(retry);
        }
    }

    /// Adds events to the backlog (for the disk spool: one append, one fsync).
    fn push(&mut self, batch: Vec<Pending>) {
        let stats = Arc::clone(&self.inner.stats);
        let n = batch.len() as u64;
        match &mut self.backlog {
            Backlog::Memory(q) => {
                q.extend(batch);
                add(&stats.spooled, n);
                add(&stats.backlog_events, n);
            }
            Backlog::Disk { spool, unwritten } => {
                if !unwritten.is_empty() {
                    unwritten.extend(batch);
                    return;
                }
                let records: Vec<Record> = batch.iter().map(|p| p.record.clone()).collect();
                match spool.append(&records) {
                    Ok(()) => {
                        add(&stats.spooled, n);
                        add(&stats.backlog_events, n);
                        stats.spool_bytes.store(spool.bytes(), Ordering::Relaxed);
                        // Dropping `batch` gives the memory budget back.
                    }
                    Err(error) => {
                        add(&stats.spool_errors, 1);
                        if self.spool_error_logged.elapsed() > Duration::from_secs(10) {
                            self.spool_error_logged = Instant::now();
                            tracing::error!(%error, events = n, "Spool write failed; events kept in memory and retried.");
                        }
                        unwritten.extend(batch);
                    }
                }
            }
        }
    }

    fn start_replay(&mut self) {
        if self.replay.is_some() || Instant::now() < self.next_replay {
            return;
        }
        let max = if self.probing { 1 } else { REPLAY_CHUNK };
        let (records, ends): (Vec<Record>, Vec<Pos>) = match &self.backlog {
            Backlog::Memory(q) => (
                q.iter().take(max).map(|p| p.record.clone()).collect(),
                Vec::new(),
            ),
            Backlog::Disk { spool, .. } => match spool.peek(max) {
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
            self.inner.last_progress_ms.store(now, Ordering::Relaxed);
            match &mut self.backlog {
                Backlog::Memory(q) => drop(q.drain(..ok)),
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
                self.retry_unwritten();
                let lost = match &self.backlog {
                    Backlog::Disk { unwritten, .. } => unwritten.len() as u64,
                    Backlog::Memory(_) => 0,
                };
                add(&stats.lost, lost);
                CloseReport {
                    spooled: stats.backlog_events.load(Ordering::Relaxed),
                    lost,
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
                CloseReport { spooled: 0, lost }
            }
        }
    }
}
