//! Backlog mode: the pump thread that owns the backlog (the disk spool or
//! memory), appends hand-overs to it and replays it oldest first.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracking_core::{Clock, SystemClock};

use super::{FailureClass, Inner, Pending, classify, message};
use crate::spool::{Pos, Record, Spool};
use crate::stats::{add, sub};

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

pub(super) enum PumpMsg {
    Backlog(Vec<Pending>),
    Close {
        deadline: tokio::time::Instant,
        done: oneshot::Sender<CloseReport>,
    },
}

/// What was left at shutdown.
#[derive(Debug, Default)]
pub(super) struct CloseReport {
    /// Events left in the disk spool for the next start.
    pub(super) spooled: u64,
    /// Events that could not be kept (no spool, Pub/Sub down; or the spool
    /// failing).
    pub(super) lost: u64,
    /// Why the spool could not take them, when it could not.
    pub(super) spool_error: Option<String>,
}

impl std::fmt::Debug for PumpMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Backlog(p) => write!(f, "Backlog({})", p.len()),
            Self::Close { .. } => f.write_str("Close"),
        }
    }
}

/// Events waiting for replay.
#[derive(Debug)]
pub(super) enum Backlog {
    Disk {
        spool: Spool,
        /// Events not appended yet (an append failed, or they just came),
        /// kept in order; replayed from here when the spool is empty.
        unwritten: VecDeque<Pending>,
    },
    Memory(VecDeque<Pending>),
}

impl Backlog {
    pub(super) fn is_empty(&self) -> bool {
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

pub(super) struct Pump {
    inner: Arc<Inner>,
    backlog: Backlog,
    replay: Option<Replay>,
    backoff: Duration,
    next_replay: Instant,
    probing: bool,
    spool_error_logged: Instant,
}

impl Pump {
    pub(super) fn new(inner: Arc<Inner>, backlog: Backlog) -> Self {
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

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<PumpMsg>) {
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
