//! `BigtableSessionStore`: one read per event, then one write.
//!
//! A touch reads the row (latest cells only; retried with backoff on
//! transient errors until the caller's deadline), adds the renewals of the
//! visitor this process has in flight (`locks::InFlight`), and resolves
//! the sessions. What it writes then depends on what it decided:
//!
//! * **A renewal** (both sessions alive, neither near its end) is one plain
//!   write, queued and sent with others (`batch`): the event does not wait for it, and
//!   neither does the visitor's next event (it sees the renewal in
//!   `InFlight` until it lands).
//! * **A mint** (no live short or long session) is a conditional write
//!   (`CheckAndMutateRow`) that the event waits for: its cells are written
//!   only if the part still has no live cell. If another process (or
//!   event) wrote one meanwhile, nothing is written: the row is read again
//!   and the event adopts the winner's id. Across all processes, a session
//!   is created once.
//! * **A renewal near the session's end** (less than the write timeout
//!   left) is conditional too: written only if no newer cell of the part
//!   appeared since the read. Otherwise an event on another pod that read
//!   the row before this renewal landed, and found the session just
//!   expired, could mint a second one that this event would never learn
//!   of; with the condition, this event adopts it.
//!
//! In `parallel` mode a visitor without a live short or long session here
//! is also looked up in the legacy store; per part the newer record wins.
//!
//! Deduplication (`with_dedup`): the read also asks for the event's
//! client-given id in family `e`; an id accepted within the window (or
//! recorded by a write of this process still in flight) makes the event a
//! retry, answered without any write. The id lives in a row of its own
//! (`schema::id_row_key`), read in the same call as the visitor's row;
//! `remember` writes it once the event is accepted for good, as a plain
//! write queued with the renewals.

mod batch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bigtable_rs::bigtable::{BigTable, BigTableConnection, Error as BtError};
use bigtable_rs::google::bigtable::v2::{CheckAndMutateRowRequest, Mutation, RowFilter};
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use tracking_core::{
    BoxFuture, CallContext, ClientId, Clock, IdCheck, LegacyLookup, LegacySessions, LegacyVisitor,
    OncePerSecond, SessionId, SessionPolicy, SessionStore, Sessions, StoreError, SystemClock,
    Timestamp, Touched, Via, VisitorState,
};

use crate::locks::{InFlight, VisitorLocks};
use crate::retry::RetryBudget;
use crate::schema::{
    LONG, SHORT, Unreadable, accepted_at, decode, encode, id_row_key, key_hash, latest_since,
    read_visitor, record_id, row_key, row_key_with,
};
use crate::{BigtableConfig, SetupError};

/// Attempts of one read or one conditional write (transient failures).
const READ_ATTEMPTS: u32 = 3;
/// Conditional writes one event may lose before it gives up (each loss
/// means another writer created what this one meant to; the next round
/// normally adopts it).
const WRITE_ROUNDS: u32 = 4;

#[derive(Debug, Default)]
pub struct Counters {
    pub reads: AtomicU64,
    pub read_retries: AtomicU64,
    /// Renewal writes sent (each entry of a batched call counts), retries
    /// included.
    pub writes: AtomicU64,
    /// `MutateRows` calls that carried them.
    pub write_calls: AtomicU64,
    pub write_retries: AtomicU64,
    pub write_failures: AtomicU64,
    pub corrupt_cells: AtomicU64,
    /// Events whose sessions came from the legacy store (and were written
    /// back here).
    pub backfills: AtomicU64,
    /// Conditional writes sent (mints and renewals near a session's end),
    /// retries included.
    pub conditional_writes: AtomicU64,
    /// Conditional writes that found another writer's cell and wrote
    /// nothing (the event then adopted that writer's session).
    pub conflicts: AtomicU64,
    /// Retries not sent because the retry budget was spent (the call
    /// failed instead).
    pub retries_denied: AtomicU64,
}

struct Inner {
    client: BigTable,
    table_name: String,
    policy: SessionPolicy,
    cfg: BigtableConfig,
    /// Serializes `write_state` (the bulk copy) per visitor.
    locks: VisitorLocks,
    /// Renewals sent and not landed yet, per visitor.
    in_flight: Arc<InFlight>,
    /// Renewals queued and not landed yet count here (`flush`, `close`).
    writes: TaskTracker,
    /// Plain renewals on their way to Bigtable; started with the first.
    queue: OnceLock<batch::Queue>,
    counters: Counters,
    warned: OncePerSecond,
    /// Retries of reads, conditional and plain writes, as a share of calls.
    retry_budget: RetryBudget,
    /// The parallel run: asked on a miss, told every renewal.
    legacy: Option<Arc<dyn LegacySessions>>,
    /// The dedup window; `None`: ids are neither read nor written.
    window: Option<Duration>,
}

#[derive(Clone)]
pub struct BigtableSessionStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BigtableSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BigtableSessionStore")
            .field("table", &self.inner.table_name)
            .finish_non_exhaustive()
    }
}

/// Whether another attempt may succeed.
fn transient(e: &BtError) -> bool {
    match e {
        BtError::RpcError(s) => transient_code(s.code()),
        BtError::TransportError(_) | BtError::IoError(_) | BtError::TimeoutError(_) => true,
        _ => false,
    }
}

/// Whether another attempt may succeed after a call (or one entry of a
/// `MutateRows` call) ended with `code`.
fn transient_code(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Aborted
            | tonic::Code::Internal
            | tonic::Code::ResourceExhausted
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
    )
}

/// The channel's deadline for any one RPC: the longest a call may take
/// (a renewal write), not the read attempt's. Each read attempt is cut at
/// its own deadline by the store; with the read's deadline on the channel,
/// a renewal slower than a read attempt would be abandoned (the server
/// still doing the work) and sent again.
fn channel_timeout(cfg: &BigtableConfig) -> Duration {
    cfg.attempt_timeout.max(cfg.write_timeout)
}

impl BigtableSessionStore {
    /// Connects (lazily: nothing is sent until the first call).
    pub async fn connect(cfg: BigtableConfig, policy: SessionPolicy) -> Result<Self, SetupError> {
        let connection = match &cfg.emulator_host {
            Some(host) => BigTableConnection::new_with_emulator(
                host,
                &cfg.project,
                &cfg.instance,
                false,
                cfg.channels,
                Some(channel_timeout(&cfg)),
            )
            .map_err(|e| SetupError::Connect(e.to_string()))?,
            None => {
                let provider = gcp_auth::provider()
                    .await
                    .map_err(|e| SetupError::Credentials(e.to_string()))?;
                BigTableConnection::new_with_token_provider(
                    &cfg.project,
                    &cfg.instance,
                    false,
                    cfg.channels,
                    Some(channel_timeout(&cfg)),
                    provider,
                )
                .map_err(|e| SetupError::Connect(e.to_string()))?
            }
        };
        let client = connection.client();
        let table_name = client.get_full_table_name(&cfg.table);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                table_name,
                policy,
                locks: VisitorLocks::default(),
                in_flight: Arc::default(),
                writes: TaskTracker::new(),
                queue: OnceLock::new(),
                counters: Counters::default(),
                warned: OncePerSecond::default(),
                retry_budget: RetryBudget::default(),
                legacy: None,
                window: None,
                cfg,
            }),
        })
    }

    /// Runs the parallel-run mode: a visitor without a live short or long
    /// session here is looked up in `legacy`; per part the newer record
    /// wins, a legacy one is used as is (same id) and written here in the
    /// same write as the renewal (the backfill). Every renewal is also
    /// handed to `legacy`. Call before the store is shared.
    #[must_use]
    pub fn with_legacy(mut self, legacy: Arc<dyn LegacySessions>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.legacy = Some(legacy);
        }
        self
    }

    /// Checks client-given event ids against the ones the visitor's row
    /// holds from within `window`, and records them there (family `e`,
    /// which `bootstrap` creates with `window` as its garbage collection
    /// age). Call before the store is shared.
    #[must_use]
    pub fn with_dedup(mut self, window: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.window = Some(window).filter(|w| !w.is_zero());
        }
        self
    }

    pub fn stats(&self) -> &Counters {
        &self.inner.counters
    }

    /// The visitor's stored state (latest cells), for tools such as the bulk
    /// copy; reads are retried as on the hot path.
    pub async fn read_state(
        &self,
        client_id: &ClientId,
    ) -> Result<tracking_core::VisitorState, StoreError> {
        Ok(self.inner.read(&row_key(client_id), None).await?.0)
    }

    /// Writes the parts of `state` that are present as cells at their own
    /// timestamps (sessions at `last_seen`, the via record at `via_recorded`),
    /// under the visitor's lock. A cell older than the row's latest never
    /// hides it: reads take the newest. `false` when the write failed.
    pub async fn write_state(
        &self,
        client_id: &ClientId,
        state: &tracking_core::VisitorState,
        via_recorded: Option<Timestamp>,
    ) -> bool {
        let inner = &self.inner;
        let hash = key_hash(client_id);
        let _turn = inner.locks.lock_hash(hash).await;
        let mutations = encode(
            state,
            via_recorded.is_some(),
            via_recorded.unwrap_or_default(),
        );
        if mutations.is_empty() {
            return true;
        }
        inner
            .write(&row_key_with(hash, client_id), &mutations)
            .await
    }

    /// Queues a plain renewal (the event does not wait; see `batch`),
    /// visible to this visitor's next events until it lands; tells the
    /// legacy store too in `parallel` mode.
    fn renew(
        &self,
        client_id: &ClientId,
        key: Vec<u8>,
        next: VisitorState,
        mutations: Vec<Mutation>,
        ctx: &CallContext,
    ) {
        let inner = &self.inner;
        if let Some(legacy) = &inner.legacy {
            legacy.renew(client_id, &next, ctx);
        }
        let landing = inner.in_flight.begin(key_hash(client_id), client_id, &next);
        // The renewal outlives the request; its span (when traced) is a
        // child of the `session` span and lasts until the write lands.
        let span = tracing::debug_span!(
            "bigtable.write",
            otel.kind = "client",
            cells = crate::schema::cells_set(&mutations),
            attempts = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        self.enqueue(batch::Renewal {
            key,
            mutations,
            // From the event, not from now: a renewal sent as a plain
            // write (more than the write timeout left of its sessions)
            // must not land after the session it renews has ended.
            deadline: ctx
                .received
                .map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std)
                + inner.cfg.write_timeout,
            landing,
            token: inner.writes.token(),
            span,
        });
    }

    /// Queues a plain write (started with the first); a full queue gives
    /// it up, counted as a failed write.
    fn enqueue(&self, renewal: batch::Renewal) {
        let inner = &self.inner;
        let queue = inner.queue.get_or_init(|| {
            batch::Queue::start(Arc::downgrade(inner), inner.cfg.max_queued_renewals)
        });
        if let Some(renewal) = queue.push(renewal) {
            batch::finish(renewal, 0, "error");
            inner.write_failed("the renewal queue is full");
        }
    }

    /// Waits for the renewal writes in flight.
    pub async fn flush(&self) {
        self.inner.writes.close();
        self.inner.writes.wait().await;
        self.inner.writes.reopen();
    }
}

impl Inner {
    /// Reads the row (retrying transient failures), in a `bigtable.read`
    /// span when traced: the state, the latest cells it could not read,
    /// and when `event_id` was accepted (if asked and found).
    async fn read(
        &self,
        key: &[u8],
        event_id: Option<&str>,
    ) -> Result<(VisitorState, Unreadable, Option<Timestamp>), StoreError> {
        let span = tracing::debug_span!(
            "bigtable.read",
            otel.kind = "client",
            attempts = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let mut attempts = 0;
        let result = self
            .read_attempts(key, event_id, &mut attempts)
            .instrument(span.clone())
            .await;
        span.record("attempts", attempts);
        span.record("outcome", if result.is_ok() { "ok" } else { "error" });
        result
    }

    async fn read_attempts(
        &self,
        key: &[u8],
        event_id: Option<&str>,
        attempt: &mut u32,
    ) -> Result<(VisitorState, Unreadable, Option<Timestamp>), StoreError> {
        let retries = Some(&self.counters.read_retries);
        let rows = self
            .attempts(attempt, retries, || {
                let request = read_visitor(&self.table_name, key, event_id);
                let mut client = self.client.clone();
                self.counters.reads.fetch_add(1, Ordering::Relaxed);
                async move { client.read_rows(request).await }
            })
            .await?;
        // The visitor's row, and the event id's row when asked for.
        let mut cells = Vec::new();
        let mut accepted = None;
        for (row, row_cells) in rows {
            if row.as_slice() == key {
                cells = row_cells;
            } else if event_id.is_some() {
                accepted = accepted_at(&row_cells);
            }
        }
        let (state, unreadable) = decode(&cells);
        let corrupt = unreadable.count();
        if corrupt > 0 {
            self.counters
                .corrupt_cells
                .fetch_add(corrupt as u64, Ordering::Relaxed);
            tracing::warn!(corrupt, "Unreadable session cells ignored.");
        }
        Ok((state, unreadable, accepted))
    }

    /// Runs `call` (one request-path RPC) up to `READ_ATTEMPTS` times, each
    /// under the attempt timeout, retrying transient failures with backoff
    /// (counted in `retries`) while the retry budget allows; `attempt`
    /// counts the tries.
    async fn attempts<T, F>(
        &self,
        attempt: &mut u32,
        retries: Option<&AtomicU64>,
        mut call: impl FnMut() -> F,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, BtError>>,
    {
        let mut backoff = Duration::from_millis(2);
        self.retry_budget.earn();
        loop {
            *attempt += 1;
            let last = *attempt >= READ_ATTEMPTS;
            let mut pending = std::pin::pin!(call());
            let answer =
                match tokio::time::timeout(self.cfg.attempt_timeout, pending.as_mut()).await {
                    Ok(answer) => Some(answer),
                    Err(_) if !last && self.may_retry() => None,
                    // No retry: this attempt is still the best chance; the
                    // caller's deadline (and the channel's) bounds the wait.
                    Err(_) => Some(pending.await),
                };
            let error = match answer {
                Some(Ok(answer)) => return Ok(answer),
                Some(Err(e)) if transient(&e) && !last && self.may_retry() => e.to_string(),
                Some(Err(e)) => return Err(StoreError::Unavailable(e.to_string())),
                None => "attempt timed out".to_owned(),
            };
            if let Some(retries) = retries {
                retries.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(%error, attempt, "Bigtable call failed; retrying.");
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }

    /// Writes one row and waits for it (the bulk copy), retrying as
    /// renewals are until the write timeout; `false` (counted) when it
    /// could not.
    async fn write(&self, key: &[u8], mutations: &[Mutation]) -> bool {
        let row = batch::Row {
            key,
            mutations,
            deadline: tokio::time::Instant::now() + self.cfg.write_timeout,
        };
        match self.write_rows(&[row]).await.pop() {
            Some(Ok(_)) => true,
            Some(Err((_, error))) => {
                self.write_failed(&error);
                false
            }
            None => false,
        }
    }

    /// Writes `mutations` unless `predicate` matches the row
    /// (`CheckAndMutateRow`, atomic per row): `Ok(true)` when written,
    /// `Ok(false)` when the predicate matched and nothing was written.
    /// Transient failures are retried like reads. A retried attempt may
    /// find the first one's own cells (it may have landed before failing):
    /// the caller recognises its own ids.
    async fn write_unless(
        &self,
        key: &[u8],
        predicate: RowFilter,
        mutations: Vec<Mutation>,
    ) -> Result<bool, StoreError> {
        let span = tracing::debug_span!(
            "bigtable.conditional_write",
            otel.kind = "client",
            cells = crate::schema::cells_set(&mutations),
            attempts = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let mut attempt = 0;
        let result = self
            .attempts(&mut attempt, None, || {
                let request = CheckAndMutateRowRequest {
                    table_name: self.table_name.clone(),
                    row_key: key.to_vec(),
                    predicate_filter: Some(predicate.clone()),
                    false_mutations: mutations.clone(),
                    ..CheckAndMutateRowRequest::default()
                };
                let mut client = self.client.clone();
                self.counters
                    .conditional_writes
                    .fetch_add(1, Ordering::Relaxed);
                async move { client.check_and_mutate_row(request).await }
            })
            .instrument(span.clone())
            .await
            .map(|answer| !answer.predicate_matched);
        span.record("attempts", attempt);
        span.record(
            "outcome",
            match result {
                Ok(true) => "written",
                Ok(false) => "conflict",
                Err(_) => "error",
            },
        );
        result
    }

    /// The parts of `sessions` (resolved from `prev` at `now`) whose cells
    /// must be written conditionally, each with the predicate's
    /// `(family, from)`: a minted part unless a live cell appeared (`from` =
    /// the oldest timestamp still alive at `now`, or just after an
    /// unreadable latest cell, which must not block the mint forever); a
    /// part renewed with less than the write timeout left unless a newer
    /// cell appeared (`from` = just after the cell it renews). Empty: a
    /// plain renewal.
    fn guards(
        &self,
        prev: &VisitorState,
        unreadable: &Unreadable,
        sessions: &Sessions,
        now: Timestamp,
    ) -> Vec<(&'static str, Timestamp)> {
        let ttls = self.policy.ttls();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let guard = ms(self.cfg.write_timeout);
        [
            (
                SHORT,
                sessions.short_new,
                &prev.short,
                unreadable.short,
                ttls.short,
            ),
            (
                LONG,
                sessions.long_new,
                &prev.long,
                unreadable.long,
                ttls.long,
            ),
        ]
        .into_iter()
        .filter_map(|(family, new, rec, bad, ttl)| {
            if new {
                let oldest_alive = now.as_millis().saturating_sub(ms(ttl)) + 1;
                let after_bad = bad.map_or(0, |t| t.as_millis() + 1);
                return Some((family, Timestamp::from_millis(oldest_alive.max(after_bad))));
            }
            let r = rec.as_ref()?;
            let left =
                (r.last_seen.as_millis().saturating_add(ms(ttl))).saturating_sub(now.as_millis());
            (left < guard).then(|| (family, Timestamp::from_millis(r.last_seen.as_millis() + 1)))
        })
        .collect()
    }

    /// Takes a retry from the budget; counts the refusal.
    fn may_retry(&self) -> bool {
        let granted = self.retry_budget.spend();
        if !granted {
            self.counters.retries_denied.fetch_add(1, Ordering::Relaxed);
        }
        granted
    }

    fn write_failed(&self, error: &str) {
        self.counters.write_failures.fetch_add(1, Ordering::Relaxed);
        if self.warned.allow(SystemClock.now()) {
            tracing::warn!(
                error,
                "Bigtable session renewal failed; the session may end early."
            );
        }
    }
}

impl SessionStore for BigtableSessionStore {
    fn touch<'a>(
        &'a self,
        client_id: &'a ClientId,
        now: Timestamp,
        via: Option<&'a Via>,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Sessions, StoreError>> {
        Box::pin(async move {
            match self
                .touch_event(client_id, now, via, IdCheck::Skip, ctx)
                .await?
            {
                Touched::Sessions(s) => Ok(s),
                Touched::Duplicate { .. } => unreachable!("no id was checked"),
            }
        })
    }

    fn touch_event<'a>(
        &'a self,
        client_id: &'a ClientId,
        now: Timestamp,
        via: Option<&'a Via>,
        check: IdCheck<'a>,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Touched, StoreError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let hash = key_hash(client_id);
            let key = row_key_with(hash, client_id);
            let dedup = inner.window.zip(check.id());
            let event_id = dedup.map(|(_, id)| id);
            // Before the read: a renewal landing in between is then in one
            // of the two.
            let (pending, in_flight_at) = inner
                .in_flight
                .snapshot_with(hash, client_id, event_id)
                .unzip();
            let (mut stored, mut unreadable, stored_at) = inner.read(&key, event_id).await?;
            if let Some((window, _)) = dedup
                && let Some(accepted_at) = stored_at.max(in_flight_at.flatten())
                && accepted_at.alive_at(window, now)
            {
                return Ok(Touched::Duplicate { accepted_at });
            }
            let mut prev = stored.clone();
            if let Some(p) = &pending {
                prev.merge_newer(p);
            }
            let mut lookup = "hit";
            let mut found = None;
            if !inner.policy.both_alive(&prev, now) {
                lookup = "miss";
                if let Some(legacy) = &inner.legacy
                    && let LegacyLookup::Found(f) = legacy.fetch(client_id, now, ctx).await
                {
                    found = Some(f);
                }
            }
            // The ids this event tried to create, to know its own cells
            // after an attempt in doubt.
            let mut minted: Vec<SessionId> = Vec::new();
            for round in 1..=WRITE_ROUNDS {
                // What Bigtable has, this process's renewals in flight, and
                // the legacy record: per part, the newest.
                let mut prev = stored;
                if let Some(p) = &pending {
                    prev.merge_newer(p);
                }
                let taken = found
                    .as_ref()
                    .map(|f| prev.merge_newer(f))
                    .unwrap_or_default();
                if round == 1 {
                    if taken.any() {
                        lookup = "fallback";
                        inner.counters.backfills.fetch_add(1, Ordering::Relaxed);
                    }
                    // The caller's `session` span, when traced.
                    tracing::Span::current().record("lookup", lookup);
                }
                // The via cell's timestamp: the event's time when it records
                // a route, the legacy record's recording time when backfilled.
                let via_at = match (via, &prev.via) {
                    (Some(_), _) => Some(now),
                    (None, Some(v)) if taken.via => Some(LegacyVisitor::via_recorded_at(
                        v.expires_at,
                        inner.policy.ttls(),
                    )),
                    _ => None,
                };
                let (mut sessions, next) = inner.policy.resolve(Some(&prev), now, via);
                let guards = inner.guards(&prev, &unreadable, &sessions, now);
                sessions.short_new |= minted.contains(&sessions.short_id);
                sessions.long_new |= minted.contains(&sessions.long_id);
                let mutations = encode(&next, via_at.is_some(), via_at.unwrap_or(now));
                if guards.is_empty() {
                    self.renew(client_id, key, next, mutations, ctx);
                    return Ok(Touched::Sessions(sessions));
                }
                minted.extend(
                    [
                        (sessions.short_new, &sessions.short_id),
                        (sessions.long_new, &sessions.long_id),
                    ]
                    .into_iter()
                    .filter(|(new, _)| *new)
                    .map(|(_, id)| id.clone()),
                );
                if inner
                    .write_unless(&key, latest_since(&guards), mutations)
                    .await?
                {
                    if let Some(legacy) = &inner.legacy {
                        legacy.renew(client_id, &next, ctx);
                    }
                    return Ok(Touched::Sessions(sessions));
                }
                inner.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                if round == WRITE_ROUNDS {
                    break;
                }
                // Another writer won: if a copy of this event was accepted
                // meanwhile, this one is the retry.
                let accepted;
                (stored, unreadable, accepted) = inner.read(&key, event_id).await?;
                if let Some((window, _)) = dedup
                    && let Some(accepted_at) = accepted
                    && accepted_at.alive_at(window, now)
                {
                    return Ok(Touched::Duplicate { accepted_at });
                }
            }
            Err(StoreError::Unavailable(format!(
                "other writers won {WRITE_ROUNDS} conditional writes in a row"
            )))
        })
    }

    fn remember(&self, client_id: &ClientId, ids: &[&str], at: Timestamp) {
        let inner = &self.inner;
        if inner.window.is_none() || ids.is_empty() {
            return;
        }
        let hash = key_hash(client_id);
        let visitor = row_key_with(hash, client_id);
        let deadline = tokio::time::Instant::now() + inner.cfg.write_timeout;
        for &id in ids {
            let landing =
                inner
                    .in_flight
                    .begin_with(hash, client_id, &VisitorState::default(), &[(id, at)]);
            let span = tracing::debug_span!(
                "bigtable.write",
                otel.kind = "client",
                cells = 1,
                attempts = tracing::field::Empty,
                outcome = tracing::field::Empty,
            );
            self.enqueue(batch::Renewal {
                key: id_row_key(&visitor, id),
                mutations: record_id(at),
                deadline,
                landing,
                token: inner.writes.token(),
                span,
            });
        }
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.inner.writes.close();
            self.inner.writes.wait().await;
            if let Some(legacy) = &self.inner.legacy {
                legacy.close().await;
            }
        })
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.inner.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("read", load(&c.reads)),
            ("read_retry", load(&c.read_retries)),
            ("write", load(&c.writes)),
            ("write_call", load(&c.write_calls)),
            ("write_retry", load(&c.write_retries)),
            ("write_failure", load(&c.write_failures)),
            ("corrupt_cell", load(&c.corrupt_cells)),
            ("backfill", load(&c.backfills)),
            ("conditional_write", load(&c.conditional_writes)),
            ("conflict", load(&c.conflicts)),
            ("retry_denied", load(&c.retries_denied)),
        ]
    }
}
