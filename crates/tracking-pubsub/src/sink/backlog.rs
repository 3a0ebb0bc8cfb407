//! Backlog mode: the pump thread that owns the backlog (the disk spool or
//! memory), appends hand-overs to it and replays it oldest first. In the
//! disk acknowledgement mode it also owns the write-ahead log's group
//! commits and its trimming (see the sink's documentation).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracking_core::{AckMode, Clock, SinkError, SystemClock};

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

/// Bytes of the probe write that tells whether a failing disk takes writes
/// again.
const PROBE_BYTES: usize = 64 * 1024;

/// Tells a request whether its events are in the write-ahead log.
pub(super) type Done = oneshot::Sender<Result<(), SinkError>>;

pub(super) enum PumpMsg {
    Backlog(Vec<Pending>),
    /// The disk acknowledgement mode: one request's events, to append.
    Append {
        pending: Vec<Pending>,
        done: Done,
    },
    /// Hand-over `seq` of direct-mode `generation` is acknowledged.
    Acked {
        generation: u64,
        seq: u64,
    },
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
            Self::Append { pending, .. } => write!(f, "Append({})", pending.len()),
            Self::Acked { generation, seq } => write!(f, "Acked({generation}, {seq})"),
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

/// The disk acknowledgement mode's state of the write-ahead log.
#[derive(Debug, Default)]
struct Wal {
    /// Direct mode: the hand-overs published at once and not all
    /// acknowledged yet, oldest first. `None` in backlog mode, where the
    /// replay owns the cursor.
    direct: Option<Watermark>,
    /// Bumped on every change of mode: acknowledgements of an older
    /// generation are ignored (the replay publishes those events again).
    generation: u64,
    /// The cursor moved since it was last persisted.
    dirty: bool,
}

#[derive(Debug, Default)]
struct Watermark {
    /// Sequence number of `entries[0]`.
    base: u64,
    entries: VecDeque<Entry>,
}

#[derive(Debug)]
struct Entry {
    /// Where the hand-over's last event ends in the log.
    end: Pos,
    events: u64,
    acked: bool,
}

pub(super) struct Pump {
    inner: Arc<Inner>,
    backlog: Backlog,
    /// `Some` in the disk acknowledgement mode.
    wal: Option<Wal>,
    replay: Option<Replay>,
    backoff: Duration,
    next_replay: Instant,
    probing: bool,
    spool_error_logged: Instant,
}

impl Pump {
    pub(super) fn new(inner: Arc<Inner>, backlog: Backlog) -> Self {
        let wal = (inner.opts.ack == AckMode::Disk).then(|| Wal {
            direct: inner
                .direct
                .load(Ordering::Acquire)
                .then(Watermark::default),
            ..Wal::default()
        });
        Self {
            inner,
            backlog,
            wal,
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
                                Ok(PumpMsg::Append { pending, done }) => {
                                    self.append(vec![(pending, done)]);
                                }
                                Ok(PumpMsg::Acked { generation, seq }) => self.acked(generation, seq),
                                Ok(c @ PumpMsg::Close { .. }) => { close = Some(c); break; }
                                Err(_) => break,
                            }
                        }
                        self.push(batch);
                        if let Some(c) = close { break Some(c); }
                    }
                    Some(PumpMsg::Append { pending, done }) => {
                        // Group commit: everything that came while the
                        // previous fdatasync ran goes into this one.
                        let mut close = None;
                        let mut bytes: u64 = pending.iter().map(|p| p.record.spooled_len()).sum();
                        let mut events = pending.len();
                        let mut group = vec![(pending, done)];
                        while events < SPOOL_GROUP && bytes < SPOOL_GROUP_BYTES {
                            match rx.try_recv() {
                                Ok(PumpMsg::Append { pending, done }) => {
                                    bytes += pending.iter().map(|p| p.record.spooled_len()).sum::<u64>();
                                    events += pending.len();
                                    group.push((pending, done));
                                }
                                Ok(PumpMsg::Acked { generation, seq }) => self.acked(generation, seq),
                                Ok(PumpMsg::Backlog(more)) => self.push(more),
                                Ok(c @ PumpMsg::Close { .. }) => { close = Some(c); break; }
                                Err(_) => break,
                            }
                        }
                        self.append(group);
                        if let Some(c) = close { break Some(c); }
                    }
                    Some(PumpMsg::Acked { generation, seq }) => self.acked(generation, seq),
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
        self.notice_backlog_mode();
        self.wal_tick();
        self.start_replay();
        // The write-ahead log decides per append whether to publish at once,
        // so what waits in the channel does not matter to it.
        if (nothing_coming || self.wal.is_some())
            && !inner.direct.load(Ordering::Acquire)
            && self.replay.is_none()
            && self.backlog.is_empty()
        {
            if let Some(wal) = self.wal.as_mut() {
                wal.generation += 1;
                wal.direct = Some(Watermark::default());
            }
            inner.direct.store(true, Ordering::Release);
            add(&inner.stats.mode_changes, 1);
            tracing::info!("Pub/Sub backlog replayed; publishing directly again.");
        }
    }

    /// The write-ahead log after a change to backlog mode (a checker task
    /// saw a failure or a stall): the replay takes over from the oldest
    /// event not acknowledged, and every event from there on is backlog.
    fn notice_backlog_mode(&mut self) {
        let Some(wal) = self.wal.as_mut() else { return };
        if wal.direct.is_none() || self.inner.direct.load(Ordering::Acquire) {
            return;
        }
        if let Some(w) = wal.direct.take() {
            add(
                &self.inner.stats.backlog_events,
                w.entries.iter().map(|e| e.events).sum(),
            );
        }
        wal.generation += 1;
    }

    /// Every tick in the disk acknowledgement mode: persists the cursor if
    /// it moved, and while appends fail, probes the disk.
    fn wal_tick(&mut self) {
        let (Some(wal), Backlog::Disk { spool, .. }) = (self.wal.as_mut(), &self.backlog) else {
            return;
        };
        if wal.dirty {
            match spool.persist_cursor() {
                Ok(()) => wal.dirty = false,
                Err(error) => {
                    add(&self.inner.stats.spool_errors, 1);
                    tracing::error!(%error, "Cannot record the write-ahead log's progress; some events may be published again after a restart.");
                }
            }
        }
        if self.inner.spool_failing().is_some() {
            match spool.probe(PROBE_BYTES) {
                Ok(()) => {
                    self.inner.set_spool_failing(None);
                    tracing::info!("The spool's disk takes writes again; taking events again.");
                }
                Err(error) => self.inner.set_spool_failing(Some(error.to_string())),
            }
        }
    }

    /// The disk acknowledgement mode's group commit: appends the requests'
    /// events with one write and one fdatasync, answers them, and in direct
    /// mode publishes them from memory.
    fn append(&mut self, group: Vec<(Vec<Pending>, Done)>) {
        self.notice_backlog_mode();
        let inner = Arc::clone(&self.inner);
        let stats = &inner.stats;
        let (Some(wal), Backlog::Disk { spool, .. }) = (self.wal.as_mut(), &mut self.backlog)
        else {
            for (_, done) in group {
                let _ = done.send(Err(SinkError::Failed("no write-ahead log".into())));
            }
            return;
        };
        let records = group.iter().flat_map(|(p, _)| p.iter().map(|p| &p.record));
        let bytes: u64 = records.clone().map(Record::spooled_len).sum();
        let events: u64 = group.iter().map(|(p, _)| p.len() as u64).sum();
        let started = Instant::now();
        let appended = spool.append(records);
        sub(&inner.unspooled_bytes, bytes);
        let start = match appended {
            Ok(start) => start,
            Err(error) => {
                inner.fsyncs.fail();
                add(&stats.spool_errors, 1);
                if self.spool_error_logged.elapsed() > Duration::from_secs(10) {
                    self.spool_error_logged = Instant::now();
                    tracing::error!(
                        %error,
                        events,
                        "Write-ahead log append failed; its requests are answered 503 and new ones refused until the disk takes writes again."
                    );
                }
                inner.set_spool_failing(Some(error.to_string()));
                for (_, done) in group {
                    let _ = done.send(Err(SinkError::Unavailable(format!(
                        "the spool cannot be written: {error}"
                    ))));
                }
                return;
            }
        };
        inner.fsyncs.observe(events, started.elapsed());
        add(&stats.spooled, events);
        stats.spool_bytes.store(spool.bytes(), Ordering::Relaxed);
        // Every request of the group is answered before any is published:
        // publishing is off their path.
        let group: Vec<Vec<Pending>> = group
            .into_iter()
            .map(|(pending, done)| {
                let _ = done.send(Ok(()));
                pending
            })
            .collect();
        let mut end = start;
        for pending in group {
            end.offset += pending.iter().map(|p| p.record.spooled_len()).sum::<u64>();
            match wal.direct.as_mut() {
                Some(w) => {
                    let seq = w.base + w.entries.len() as u64;
                    w.entries.push_back(Entry {
                        end,
                        events: pending.len() as u64,
                        acked: false,
                    });
                    inner.publish_logged(pending, wal.generation, seq);
                }
                // Backlog mode: the replay publishes them; their memory
                // share goes back now.
                None => add(&stats.backlog_events, pending.len() as u64),
            }
        }
    }

    /// A hand-over of the write-ahead log is acknowledged: trims the log up
    /// to the oldest one that is not.
    fn acked(&mut self, generation: u64, seq: u64) {
        let (Some(wal), Backlog::Disk { spool, .. }) = (self.wal.as_mut(), &mut self.backlog)
        else {
            return;
        };
        let Some(w) = wal.direct.as_mut().filter(|_| wal.generation == generation) else {
            return;
        };
        let Some(entry) = seq
            .checked_sub(w.base)
            .and_then(|i| w.entries.get_mut(usize::try_from(i).ok()?))
        else {
            return;
        };
        entry.acked = true;
        let mut trim_to = None;
        while w.entries.front().is_some_and(|e| e.acked) {
            trim_to = w.entries.pop_front().map(|e| e.end);
            w.base += 1;
        }
        if let Some(pos) = trim_to {
            if let Err(error) = spool.advance(pos) {
                add(&self.inner.stats.spool_errors, 1);
                tracing::error!(%error, "Cannot trim the write-ahead log.");
            }
            wal.dirty = true;
            self.inner
                .stats
                .spool_bytes
                .store(spool.bytes(), Ordering::Relaxed);
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
        // The write-ahead log keeps nothing unwritten: its failures clear
        // only by a probe (`wal_tick`).
        if self.wal.is_some() {
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
                Ok(_) => {
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
        // The write-ahead log in direct mode: its events are published as
        // they are appended; nothing to replay.
        if self.wal.as_ref().is_some_and(|w| w.direct.is_some()) {
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
                let f = self.inner.publisher.publish(message(r));
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
                // The write-ahead log: what was published and not
                // acknowledged stays in it too.
                let mut unacked = 0;
                if let (Some(wal), Backlog::Disk { spool, .. }) = (&self.wal, &self.backlog) {
                    unacked = wal
                        .direct
                        .as_ref()
                        .map_or(0, |w| w.entries.iter().map(|e| e.events).sum());
                    if let Err(error) = spool.persist_cursor() {
                        tracing::error!(%error, "Cannot record the write-ahead log's progress; some events will be published again.");
                    }
                }
                let lost = match &self.backlog {
                    Backlog::Disk { unwritten, .. } => unwritten.len() as u64,
                    Backlog::Memory(_) => 0,
                };
                add(&stats.lost, lost);
                CloseReport {
                    spooled: stats.backlog_events.load(Ordering::Relaxed) + unacked - lost,
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
