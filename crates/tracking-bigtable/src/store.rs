//! `BigtableSessionStore`: one read and one write per event.
//!
//! A touch takes the visitor's stripe lock, reads the row (latest cells only;
//! retried with backoff on transient errors until the caller's deadline),
//! resolves the sessions, and returns them. The renewal write is handed to a
//! tracked task that keeps the stripe lock until the write has landed, so the
//! event does not wait for it but the visitor's next event in this process
//! does: events of one visitor are applied in order and never mint two
//! sessions within one process. Across processes, two first events of one
//! visitor racing within one read-write round trip can mint two ids; the
//! later write wins and every later event shares it (documented in
//! ARCHITECTURE.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bigtable_rs::bigtable::{BigTable, BigTableConnection, Error as BtError};
use bigtable_rs::google::bigtable::v2::MutateRowRequest;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use tracking_core::{
    BoxFuture, CallContext, ClientId, Clock, LegacyLookup, LegacySessions, LegacyVisitor,
    OncePerSecond, SessionPolicy, SessionStore, Sessions, StoreError, SystemClock, Timestamp, Via,
};

use crate::locks::VisitorLocks;
use crate::schema::{decode, encode, key_hash, read_visitor, row_key, row_key_with};
use crate::{BigtableConfig, SetupError};

const READ_ATTEMPTS: u32 = 3;

#[derive(Debug, Default)]
pub struct Counters {
    pub reads: AtomicU64,
    pub read_retries: AtomicU64,
    pub writes: AtomicU64,
    pub write_retries: AtomicU64,
    pub write_failures: AtomicU64,
    pub corrupt_cells: AtomicU64,
    /// Events whose sessions came from the legacy store (and were written
    /// back here).
    pub backfills: AtomicU64,
}

struct Inner {
    client: BigTable,
    table_name: String,
    policy: SessionPolicy,
    cfg: BigtableConfig,
    locks: VisitorLocks,
    writes: TaskTracker,
    counters: Counters,
    warned: OncePerSecond,
    /// The parallel run: asked on a miss, told every renewal.
    legacy: Option<Arc<dyn LegacySessions>>,
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
        BtError::RpcError(s) => matches!(
            s.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Aborted
                | tonic::Code::Internal
                | tonic::Code::ResourceExhausted
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
        ),
        BtError::TransportError(_) | BtError::IoError(_) | BtError::TimeoutError(_) => true,
        _ => false,
    }
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
                Some(cfg.attempt_timeout),
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
                    Some(cfg.attempt_timeout),
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
                writes: TaskTracker::new(),
                counters: Counters::default(),
                warned: OncePerSecond::default(),
                legacy: None,
                cfg,
            }),
        })
    }

    /// Runs the parallel-run mode: a visitor with no live session here is
    /// looked up in `legacy`; what it has is used as is (same ids) and
    /// written here in the same renewal write (the backfill). Every renewal
    /// is also handed to `legacy`. Call before the store is shared.
    #[must_use]
    pub fn with_legacy(mut self, legacy: Arc<dyn LegacySessions>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.legacy = Some(legacy);
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
        self.inner.read(&row_key(client_id)).await
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
        inner.write(row_key_with(hash, client_id), mutations).await
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
    /// span when traced.
    async fn read(&self, key: &[u8]) -> Result<tracking_core::VisitorState, StoreError> {
        let span = tracing::debug_span!(
            "bigtable.read",
            otel.kind = "client",
            attempts = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let mut attempts = 0;
        let result = self
            .read_attempts(key, &mut attempts)
            .instrument(span.clone())
            .await;
        span.record("attempts", attempts);
        span.record("outcome", if result.is_ok() { "ok" } else { "error" });
        result
    }

    async fn read_attempts(
        &self,
        key: &[u8],
        attempt: &mut u32,
    ) -> Result<tracking_core::VisitorState, StoreError> {
        let mut backoff = Duration::from_millis(2);
        loop {
            *attempt += 1;
            let request = read_visitor(&self.table_name, key);
            let mut client = self.client.clone();
            self.counters.reads.fetch_add(1, Ordering::Relaxed);
            let result =
                tokio::time::timeout(self.cfg.attempt_timeout, client.read_rows(request)).await;
            let error = match result {
                Ok(Ok(rows)) => {
                    let cells = rows
                        .into_iter()
                        .next()
                        .map(|(_, cells)| cells)
                        .unwrap_or_default();
                    let (state, corrupt) = decode(&cells);
                    if corrupt > 0 {
                        self.counters
                            .corrupt_cells
                            .fetch_add(corrupt as u64, Ordering::Relaxed);
                        tracing::warn!(corrupt, "Unreadable session cells ignored.");
                    }
                    return Ok(state);
                }
                Ok(Err(e)) if transient(&e) && *attempt < READ_ATTEMPTS => e.to_string(),
                Ok(Err(e)) => return Err(StoreError::Unavailable(e.to_string())),
                Err(_) if *attempt < READ_ATTEMPTS => "attempt timed out".to_owned(),
                Err(_) => return Err(StoreError::Timeout(self.cfg.attempt_timeout)),
            };
            self.counters.read_retries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%error, attempt, "Bigtable read failed; retrying.");
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }

    /// Writes the renewal, retrying transient failures until the write
    /// deadline. Setting cells at explicit timestamps is idempotent.
    async fn write(
        &self,
        key: Vec<u8>,
        mutations: Vec<bigtable_rs::google::bigtable::v2::Mutation>,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + self.cfg.write_timeout;
        let mut backoff = Duration::from_millis(5);
        let span = tracing::Span::current();
        let mut attempts = 0u32;
        let done = |ok: bool, attempts: u32| {
            span.record("attempts", attempts);
            span.record("outcome", if ok { "ok" } else { "error" });
            ok
        };
        loop {
            attempts += 1;
            let request = MutateRowRequest {
                table_name: self.table_name.clone(),
                row_key: key.clone(),
                mutations: mutations.clone(),
                ..MutateRowRequest::default()
            };
            let mut client = self.client.clone();
            self.counters.writes.fetch_add(1, Ordering::Relaxed);
            let error = match tokio::time::timeout_at(deadline, client.mutate_row(request)).await {
                Ok(Ok(_)) => return done(true, attempts),
                Ok(Err(e)) if transient(&e) => e.to_string(),
                Ok(Err(e)) => {
                    self.write_failed(&e.to_string());
                    return done(false, attempts);
                }
                Err(_) => {
                    self.write_failed("write deadline passed");
                    return done(false, attempts);
                }
            };
            if tokio::time::Instant::now() + backoff >= deadline {
                self.write_failed(&error);
                return done(false, attempts);
            }
            self.counters.write_retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
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
    ) -> BoxFuture<'a, Result<Sessions, StoreError>> {
        self.touch_in(client_id, now, via, CallContext::empty())
    }

    fn touch_in<'a>(
        &'a self,
        client_id: &'a ClientId,
        now: Timestamp,
        via: Option<&'a Via>,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Sessions, StoreError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let hash = key_hash(client_id);
            let key = row_key_with(hash, client_id);
            let turn = inner.locks.lock_hash(hash).await;
            let mut prev = inner.read(&key).await?;
            // The via cell's timestamp: the event's time when it records a
            // route, the legacy record's recording time when backfilled.
            let mut via_at = via.map(|_| now);
            let live = inner.policy.has_live_session(&prev, now);
            let mut lookup = if live { "hit" } else { "miss" };
            if let Some(legacy) = &inner.legacy
                && !live
                && let LegacyLookup::Found(found) = legacy.fetch(client_id, now, ctx).await
            {
                lookup = "fallback";
                inner.counters.backfills.fetch_add(1, Ordering::Relaxed);
                if via.is_none()
                    && let Some(v) = &found.via
                {
                    via_at = Some(LegacyVisitor::via_recorded_at(
                        v.expires_at,
                        inner.policy.ttls(),
                    ));
                }
                prev = found;
            }
            // The caller's `session` span, when traced.
            tracing::Span::current().record("lookup", lookup);
            let (sessions, next) = inner.policy.resolve(Some(&prev), now, via);
            let mutations = encode(&next, via_at.is_some(), via_at.unwrap_or(now));
            if let Some(legacy) = &inner.legacy {
                legacy.renew(client_id, &next, ctx);
            }
            let writer = Arc::clone(inner);
            // The renewal outlives the request; its span (when traced) is a
            // child of the `session` span.
            let span = tracing::debug_span!(
                "bigtable.write",
                otel.kind = "client",
                cells = mutations.len(),
                attempts = tracing::field::Empty,
                outcome = tracing::field::Empty,
            );
            inner.writes.spawn(
                async move {
                    writer.write(key, mutations).await;
                    drop(turn);
                }
                .instrument(span),
            );
            Ok(sessions)
        })
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
            ("write_retry", load(&c.write_retries)),
            ("write_failure", load(&c.write_failures)),
            ("corrupt_cell", load(&c.corrupt_cells)),
            ("backfill", load(&c.backfills)),
        ]
    }
}
