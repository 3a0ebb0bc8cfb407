//! The HTTP client of migration-proxy: lookups, renewals through the
//! bounded queue, and create-only writes.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use tracking_core::{
    BoxFuture, CallContext, ClientId, Clock, LegacyLookup, LegacySessions, LegacyVisitor,
    OncePerSecond, StateParts, SystemClock, Timestamp, VisitorState,
};

use super::{Breaker, MigrationConfig, MigrationStats};

/// Largest answer read from migration-proxy.
const MAX_ANSWER: usize = 64 * 1024;
/// Renewals sent at once by the queue's worker.
const WRITE_CONCURRENCY: usize = 32;

struct Renewal {
    client_id: ClientId,
    body: LegacyVisitor,
    headers: Vec<(Box<str>, Box<str>)>,
    /// The span that asked for it (its trace goes along).
    span: tracing::Span,
}

/// The HTTP client of migration-proxy, shared by both migration modes.
pub struct MigrationClient {
    http: Client<HttpConnector, Full<Bytes>>,
    cfg: MigrationConfig,
    breaker: Breaker,
    pub stats: MigrationStats,
    queue: mpsc::Sender<Renewal>,
    receiver: Mutex<Option<mpsc::Receiver<Renewal>>>,
    closing: Notify,
    worker: TaskTracker,
    warned: OncePerSecond,
}

impl std::fmt::Debug for MigrationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationClient")
            .field("base_url", &self.cfg.base_url)
            .field("timeout", &self.cfg.timeout)
            .finish_non_exhaustive()
    }
}

enum CallError {
    Timeout,
    Failed(String),
}

/// What a create-only `PUT` (a mint in `legacy` mode) came to.
#[derive(Debug)]
pub enum Minted {
    /// The parts to create were created; the rest of the body was written.
    Created,
    /// Another writer had created a part already: its records as they are
    /// now (the other parts of the body were written).
    Taken(LegacyVisitor),
    /// No answer in time, an error, or the circuit is open.
    Unavailable,
}

impl MigrationClient {
    /// Builds the client and starts the renewal queue's worker (on the
    /// current runtime).
    pub fn start(cfg: MigrationConfig) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.timeout.max(Duration::from_millis(100))));
        let http = Client::builder(TokioExecutor::new())
            // Below migration-proxy's keep-alive limit (10 s): a pooled
            // connection is dropped here before the server closes it.
            .pool_idle_timeout(Duration::from_secs(4))
            .build(connector);
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let client = Arc::new(Self {
            http,
            breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown),
            stats: MigrationStats::default(),
            queue: tx,
            receiver: Mutex::new(Some(rx)),
            closing: Notify::new(),
            worker: TaskTracker::new(),
            warned: OncePerSecond::default(),
            cfg,
        });
        let worker = Arc::clone(&client);
        client
            .worker
            .spawn(async move { worker.drain_queue().await });
        client.worker.close();
        client
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    pub fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    fn request(
        &self,
        method: Method,
        client_id: &ClientId,
        query: &str,
        headers: &[(Box<str>, Box<str>)],
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, String> {
        let url = format!(
            "{}/v1/sessions/{}{query}",
            self.cfg.base_url.trim_end_matches('/'),
            client_id.as_str()
        );
        let mut req = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                req = req.header(n, v);
            }
        }
        if let Some(token) = &self.cfg.token {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if !body.is_empty() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let mut req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        // This call's own span continues the trace (when traces are on).
        service_kit::telemetry::inject(&tracing::Span::current(), req.headers_mut());
        Ok(req)
    }

    /// One call: status and body, within `deadline`.
    async fn call(
        &self,
        req: Request<Full<Bytes>>,
        deadline: Duration,
    ) -> Result<(StatusCode, Bytes), CallError> {
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| CallError::Failed(format!("{e:?}")))?;
            let status = resp.status();
            let body = service_kit::read_limited(resp.into_body(), MAX_ANSWER)
                .await
                .map_err(|e| CallError::Failed(format!("{e:?}")))?;
            Ok((status, body))
        };
        tokio::time::timeout(deadline, exchange)
            .await
            .unwrap_or(Err(CallError::Timeout))
    }

    fn warn(&self, what: &str, error: &str) {
        if self.warned.allow(SystemClock.now()) {
            tracing::warn!(
                error,
                "migration-proxy {what} failed (rate-limited warning)."
            );
        }
    }

    fn failed(&self) {
        if self.breaker.failure() {
            self.stats.breaker_opened.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                cooldown = ?self.cfg.breaker_cooldown,
                "migration-proxy keeps failing; circuit open, lookups skipped."
            );
        }
    }

    /// Looks a visitor up (`GET`), within the lookup deadline; also names
    /// the parts the legacy store holds but that could not be read.
    pub async fn get(
        &self,
        client_id: &ClientId,
        now: Timestamp,
        ctx: &CallContext,
    ) -> (LegacyLookup, StateParts) {
        let span = tracing::debug_span!(
            "migration.lookup",
            otel.kind = "client",
            attempts = tracing::field::Empty,
            outcome = tracing::field::Empty
        );
        let (lookup, unreadable) = self
            .lookup(client_id, now, ctx)
            .instrument(span.clone())
            .await;
        let outcome = match &lookup {
            LegacyLookup::Found(_) => "found",
            LegacyLookup::Missing => "missing",
            LegacyLookup::Unavailable => "unavailable",
        };
        span.record("outcome", outcome);
        if matches!(lookup, LegacyLookup::Unavailable) {
            service_kit::telemetry::set_error(&span, "migration-proxy unavailable");
        }
        (lookup, unreadable)
    }

    async fn lookup(
        &self,
        client_id: &ClientId,
        now: Timestamp,
        ctx: &CallContext,
    ) -> (LegacyLookup, StateParts) {
        let s = &self.stats;
        if !self.breaker.allow() {
            s.get_breaker_open.fetch_add(1, Ordering::Relaxed);
            return (LegacyLookup::Unavailable, StateParts::default());
        }
        let started = Instant::now();
        let mut result = Err(CallError::Timeout);
        // A lookup is idempotent: one more attempt, when the first failed
        // fast (a connection the server had just closed) and time is left.
        for attempt in 0..2 {
            let left = self.cfg.timeout.saturating_sub(started.elapsed());
            if attempt > 0
                && (left < self.cfg.timeout / 2 || !matches!(result, Err(CallError::Failed(_))))
            {
                break;
            }
            let req = match self.request(Method::GET, client_id, "", &ctx.headers, Bytes::new()) {
                Ok(r) => r,
                Err(e) => {
                    self.warn("lookup", &e);
                    s.get_error.fetch_add(1, Ordering::Relaxed);
                    return (LegacyLookup::Unavailable, StateParts::default());
                }
            };
            result = self.call(req, left).await;
            tracing::Span::current().record("attempts", attempt + 1);
        }
        s.get_latency.observe(started.elapsed());
        let answer = match result {
            Ok((StatusCode::OK, body)) => serde_json::from_slice::<LegacyVisitor>(&body)
                .map_err(|e| format!("unreadable answer: {e}")),
            Ok((StatusCode::NOT_FOUND, _)) => Ok(LegacyVisitor::default()),
            Ok((status, body)) => Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
            Err(CallError::Timeout) => {
                s.get_timeout.fetch_add(1, Ordering::Relaxed);
                self.failed();
                return (LegacyLookup::Unavailable, StateParts::default());
            }
            Err(CallError::Failed(e)) => Err(e),
        };
        match answer {
            Ok(visitor) => {
                self.breaker.success();
                let (state, unreadable) = self.convert(&visitor, now);
                if state == VisitorState::default() {
                    s.get_missing.fetch_add(1, Ordering::Relaxed);
                    (LegacyLookup::Missing, unreadable)
                } else {
                    s.get_found.fetch_add(1, Ordering::Relaxed);
                    (LegacyLookup::Found(state), unreadable)
                }
            }
            Err(e) => {
                s.get_error.fetch_add(1, Ordering::Relaxed);
                self.warn("lookup", &e);
                self.failed();
                (LegacyLookup::Unavailable, StateParts::default())
            }
        }
    }

    /// The cloud view of a legacy record at `now`, and the parts that could
    /// not be read (left out and counted).
    pub(super) fn convert(
        &self,
        visitor: &LegacyVisitor,
        now: Timestamp,
    ) -> (VisitorState, StateParts) {
        let (state, unreadable) = visitor.to_state(self.cfg.ttls, now);
        self.stats
            .invalid_parts
            .fetch_add(unreadable.count() as u64, Ordering::Relaxed);
        (state, unreadable)
    }

    /// Writes a renewal (`PUT`) now, within the write deadline, in a
    /// `migration.renew` span under `parent` (or in `parent` itself when its
    /// trace is not sampled, so the call says so).
    pub async fn put(
        &self,
        parent: &tracing::Span,
        client_id: &ClientId,
        body: &LegacyVisitor,
        headers: &[(Box<str>, Box<str>)],
    ) -> bool {
        let span = service_kit::telemetry::handoff(parent, || {
            tracing::debug_span!(
                "migration.renew",
                otel.kind = "client",
                outcome = tracing::field::Empty
            )
        });
        let ok = self
            .put_now(client_id, body, headers)
            .instrument(span.clone())
            .await;
        span.record("outcome", if ok { "ok" } else { "error" });
        ok
    }

    async fn put_now(
        &self,
        client_id: &ClientId,
        body: &LegacyVisitor,
        headers: &[(Box<str>, Box<str>)],
    ) -> bool {
        let s = &self.stats;
        if !self.breaker.allow() {
            s.put_breaker_open.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let json = match serde_json::to_vec(body) {
            Ok(j) => Bytes::from(j),
            Err(e) => {
                self.warn("renewal", &e.to_string());
                return false;
            }
        };
        let result = match self.request(Method::PUT, client_id, "", headers, json) {
            Ok(req) => self.call(req, self.cfg.write_timeout).await,
            Err(e) => Err(CallError::Failed(e)),
        };
        match result {
            Ok((StatusCode::NO_CONTENT | StatusCode::OK, _)) => {
                self.breaker.success();
                s.put_ok.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok((status, _)) => {
                s.put_error.fetch_add(1, Ordering::Relaxed);
                self.warn("renewal", &format!("status {status}"));
                self.failed();
                false
            }
            Err(CallError::Timeout) => {
                s.put_timeout.fetch_add(1, Ordering::Relaxed);
                self.failed();
                false
            }
            Err(CallError::Failed(e)) => {
                s.put_error.fetch_add(1, Ordering::Relaxed);
                self.warn("renewal", &e);
                self.failed();
                false
            }
        }
    }

    /// Mints in `legacy` mode: writes `body`, creating the session parts
    /// `create` names only if migration-proxy has none (`PUT
    /// …?create=short,long`, Aerospike's `CREATE_ONLY`), within the lookup
    /// deadline, in a `migration.create` span.
    pub async fn create(
        &self,
        client_id: &ClientId,
        body: &LegacyVisitor,
        create: StateParts,
        ctx: &CallContext,
    ) -> Minted {
        let span = tracing::debug_span!(
            "migration.create",
            otel.kind = "client",
            outcome = tracing::field::Empty
        );
        let minted = async {
            let s = &self.stats;
            if !self.breaker.allow() {
                s.create_breaker_open.fetch_add(1, Ordering::Relaxed);
                return Minted::Unavailable;
            }
            let query = match (create.short, create.long) {
                (true, true) => "?create=short,long",
                (true, false) => "?create=short",
                (false, true) => "?create=long",
                (false, false) => "",
            };
            let result = match serde_json::to_vec(body) {
                Ok(json) => {
                    match self.request(Method::PUT, client_id, query, &ctx.headers, json.into()) {
                        Ok(req) => self.call(req, self.cfg.timeout).await,
                        Err(e) => Err(CallError::Failed(e)),
                    }
                }
                Err(e) => Err(CallError::Failed(e.to_string())),
            };
            let error = match result {
                Ok((StatusCode::NO_CONTENT | StatusCode::OK, _)) => {
                    self.breaker.success();
                    s.create_ok.fetch_add(1, Ordering::Relaxed);
                    return Minted::Created;
                }
                Ok((StatusCode::CONFLICT, answer)) => {
                    match serde_json::from_slice::<LegacyVisitor>(&answer) {
                        Ok(current) => {
                            self.breaker.success();
                            s.create_conflict.fetch_add(1, Ordering::Relaxed);
                            return Minted::Taken(current);
                        }
                        Err(e) => format!("unreadable conflict answer: {e}"),
                    }
                }
                Ok((status, answer)) => format!(
                    "status {status}: {}",
                    String::from_utf8_lossy(&answer[..answer.len().min(200)])
                ),
                Err(CallError::Timeout) => {
                    s.create_timeout.fetch_add(1, Ordering::Relaxed);
                    self.failed();
                    return Minted::Unavailable;
                }
                Err(CallError::Failed(e)) => e,
            };
            s.create_error.fetch_add(1, Ordering::Relaxed);
            self.warn("mint", &error);
            self.failed();
            Minted::Unavailable
        }
        .instrument(span.clone())
        .await;
        span.record(
            "outcome",
            match &minted {
                Minted::Created => "created",
                Minted::Taken(_) => "conflict",
                Minted::Unavailable => "unavailable",
            },
        );
        if matches!(minted, Minted::Unavailable) {
            service_kit::telemetry::set_error(&span, "migration-proxy unavailable");
        }
        minted
    }

    /// The queue's worker: sends renewals, a bounded number at once, until
    /// closed; then sends what is left.
    async fn drain_queue(self: Arc<Self>) {
        let Some(mut rx) = self.receiver.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        let slots = Arc::new(Semaphore::new(WRITE_CONCURRENCY));
        let sends = TaskTracker::new();
        loop {
            let renewal = tokio::select! {
                r = rx.recv() => r,
                () = self.closing.notified() => {
                    rx.close();
                    rx.recv().await
                }
            };
            let Some(renewal) = renewal else { break };
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                break;
            };
            let client = Arc::clone(&self);
            sends.spawn(async move {
                client
                    .put(
                        &renewal.span,
                        &renewal.client_id,
                        &renewal.body,
                        &renewal.headers,
                    )
                    .await;
                drop(slot);
            });
        }
        sends.close();
        sends.wait().await;
    }
}

impl LegacySessions for MigrationClient {
    fn fetch<'a>(
        &'a self,
        client_id: &'a ClientId,
        now: Timestamp,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, LegacyLookup> {
        Box::pin(async move { self.get(client_id, now, ctx).await.0 })
    }

    fn renew(&self, client_id: &ClientId, state: &VisitorState, ctx: &CallContext) {
        let renewal = Renewal {
            client_id: client_id.clone(),
            body: LegacyVisitor::from_state(state, self.cfg.ttls),
            headers: ctx.headers.clone(),
            span: tracing::Span::current(),
        };
        if self.queue.try_send(renewal).is_err() {
            self.stats.put_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.closing.notify_one();
            self.worker.wait().await;
        })
    }
}
