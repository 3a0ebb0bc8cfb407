//! The HTTP API: `GET`/`PUT /v1/sessions/{client_id}`, `/healthz`,
//! `/readyz` (and, on the admin listener, `/metrics`); a bearer token when
//! configured, bounded concurrency (counted once a `PUT`'s body has
//! arrived), service-kit's server loop (connection limit, header and body
//! timeouts, lingering close), and a graceful shutdown that finishes
//! started writes.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use service_kit::server::{BodyMemory, ReadError, ServerOptions, read_body};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use tracking_core::{ClientId, LegacyVisitor};

use crate::legacy::{Create, Legacy, LegacyError, Put};
use crate::metrics::{Gauges, Metrics, Route};
use service_kit::prom::Registry;

/// Largest `PUT` body accepted.
const MAX_BODY: usize = 16 * 1024;

/// Memory for `PUT` bodies being read, all requests together: a thousand
/// of the largest.
pub const BODY_MEMORY: usize = 1024 * MAX_BODY;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Bearer token every `/v1` request must carry (`None`: no check).
    pub auth_token: Option<String>,
    /// Session requests served at once; more get a fast 503.
    pub max_inflight: usize,
    /// Open connections at most.
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// Time allowed, after shutdown is requested, for open requests and
    /// started writes.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            auth_token: None,
            max_inflight: 1024,
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug)]
pub struct Proxy {
    legacy: Arc<Legacy>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    opts: ServeOptions,
    inflight: Arc<Semaphore>,
    body_memory: Arc<BodyMemory>,
    writes: TaskTracker,
    draining: AtomicBool,
}

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(CONTENT_TYPE, v);
    }
    resp
}

fn error(status: StatusCode, message: &str) -> Resp {
    let body = serde_json::json!({ "error": message }).to_string();
    respond(status, "application/json", body)
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Proxy {
    /// `registry` holds the metrics of the components (the Aerospike
    /// client's); the proxy renders its own HTTP-level ones before them.
    pub fn new(
        legacy: Arc<Legacy>,
        metrics: Arc<Metrics>,
        registry: Arc<Registry>,
        opts: ServeOptions,
    ) -> Arc<Self> {
        Arc::new(Self {
            inflight: Arc::new(Semaphore::new(opts.max_inflight)),
            body_memory: BodyMemory::new(BODY_MEMORY),
            legacy,
            metrics,
            registry,
            opts,
            writes: TaskTracker::new(),
            draining: AtomicBool::new(false),
        })
    }

    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && self.legacy.connected()
    }

    pub fn metrics_text(&self) -> String {
        let mut out = self.metrics.render(Gauges {
            inflight: self.opts.max_inflight - self.inflight.available_permits(),
        });
        self.registry.render_into(&mut out);
        out
    }

    pub async fn handle<B>(self: &Arc<Self>, req: Request<B>) -> Resp
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        let path = req.uri().path().to_owned();
        let (route, resp) = match path.as_str() {
            "/healthz" => (Route::Health, respond(StatusCode::OK, "text/plain", "ok\n")),
            "/readyz" => (
                Route::Health,
                if self.ready() {
                    respond(StatusCode::OK, "text/plain", "ready\n")
                } else {
                    respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
                },
            ),
            p if p.starts_with("/v1/sessions/")
                && matches!(*req.method(), Method::GET | Method::PUT) =>
            {
                let (route, name) = if req.method() == Method::PUT {
                    (Route::PutSession, "PUT /v1/sessions")
                } else {
                    (Route::GetSession, "GET /v1/sessions")
                };
                let id = p.trim_start_matches("/v1/sessions/").to_owned();
                let span = service_kit::request_span!(req.headers(), req.method(), name);
                let resp = self.sessions(req, &id).instrument(span.clone()).await;
                service_kit::telemetry::record_status(&span, resp.status().as_u16());
                (route, resp)
            }
            p if p.starts_with("/v1/sessions/") => {
                let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "use GET or PUT");
                r.headers_mut()
                    .insert(ALLOW, http::HeaderValue::from_static("GET, PUT"));
                (Route::Other, r)
            }
            _ => (Route::Other, error(StatusCode::NOT_FOUND, "no such route")),
        };
        self.metrics
            .record_request(route, resp.status().as_u16(), started.elapsed());
        resp
    }

    /// Answers one request on the admin listener (`MIGRATION_ADMIN_LISTEN`):
    /// `/metrics`, `/healthz` and `/readyz`.
    pub async fn handle_admin<B>(self: &Arc<Self>, req: Request<B>) -> Resp
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        let (route, resp) = match req.uri().path() {
            "/healthz" | "/readyz" => return self.handle(req).await,
            "/metrics" => (
                Route::Metrics,
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.metrics_text(),
                ),
            ),
            _ => (Route::Other, error(StatusCode::NOT_FOUND, "no such route")),
        };
        self.metrics
            .record_request(route, resp.status().as_u16(), started.elapsed());
        resp
    }

    /// Takes a slot for a session request (`None`: counted as shed).
    fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = Arc::clone(&self.inflight).try_acquire_owned().ok();
        if permit.is_none() {
            self.metrics.shed.fetch_add(1, Ordering::Relaxed);
        }
        permit
    }

    async fn sessions<B>(self: &Arc<Self>, req: Request<B>, id: &str) -> Resp
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        if let Some(token) = &self.opts.auth_token {
            let given = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
                self.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
                let mut r = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
                r.headers_mut()
                    .insert(WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
                return r;
            }
        }
        let Some(client_id) = ClientId::parse(id) else {
            return error(
                StatusCode::BAD_REQUEST,
                "client_id must be 1-128 characters of [A-Za-z0-9._:-]",
            );
        };
        if req.method() == Method::GET {
            let Some(permit) = self.admit() else {
                return overloaded("too many requests in flight");
            };
            let result = self.legacy.get(&client_id).await;
            drop(permit);
            return match result {
                Ok(Some(visitor)) => match serde_json::to_vec(&visitor) {
                    Ok(body) => respond(StatusCode::OK, "application/json", body),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                },
                Ok(None) => error(StatusCode::NOT_FOUND, "no legacy session for this visitor"),
                Err(e) => legacy_error(&e),
            };
        }
        // `?create=short,long`: parts to create only if absent (a mint).
        let create = match req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("create=")))
        {
            None => Create::default(),
            Some(v) => match Create::parse(&v.replace("%2C", ",").replace("%2c", ",")) {
                Some(c) => c,
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "create must name short, long or both (comma-separated)",
                    );
                }
            },
        };
        let body = match read_body(req.into_body(), MAX_BODY, &self.body_memory).await {
            Ok(b) => b,
            Err(ReadError::TooLarge(_)) => {
                return error(StatusCode::PAYLOAD_TOO_LARGE, "body larger than 16 KiB");
            }
            Err(e @ ReadError::TimedOut(_)) => {
                return error(StatusCode::REQUEST_TIMEOUT, &e.to_string());
            }
            Err(e @ ReadError::NoMemory) => {
                self.metrics.shed.fetch_add(1, Ordering::Relaxed);
                return overloaded(&e.to_string());
            }
            Err(ReadError::Io(e)) => {
                return error(StatusCode::BAD_REQUEST, &format!("cannot read body: {e}"));
            }
        };
        let visitor: LegacyVisitor = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad session JSON: {e}")),
        };
        if let Some(part) = visitor.invalid_id() {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("{part}.id must be 1-128 bytes of printable ASCII"),
            );
        }
        drop(body);
        let Some(permit) = self.admit() else {
            return overloaded("too many requests in flight");
        };
        // The write runs as its own task: a caller that hangs up (its
        // deadline passed) does not cut it off half-way.
        // It stays in the request's trace. A part to create that existed
        // already is answered with the visitor's records as they are now.
        let proxy = Arc::clone(self);
        let write = self.writes.spawn(
            async move {
                let result = match proxy.legacy.put(&client_id, &visitor, create).await {
                    Ok(Put::Exists) => proxy.legacy.get(&client_id).await.map(Some),
                    Ok(Put::Written) => Ok(None),
                    Err(e) => Err(e),
                };
                drop(permit);
                result
            }
            .instrument(tracing::Span::current()),
        );
        match write.await {
            Ok(Ok(None)) => respond(StatusCode::NO_CONTENT, "text/plain", Bytes::new()),
            Ok(Ok(Some(current))) => match serde_json::to_vec(&current.unwrap_or_default()) {
                Ok(body) => respond(StatusCode::CONFLICT, "application/json", body),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            },
            Ok(Err(e)) => legacy_error(&e),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }
}

/// `503` with `Retry-After: 1`: ours, retry later.
fn overloaded(message: &str) -> Resp {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, message);
    r.headers_mut()
        .insert(RETRY_AFTER, http::HeaderValue::from_static("1"));
    r
}

fn legacy_error(e: &LegacyError) -> Resp {
    match e {
        LegacyError::NotConnected => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        LegacyError::Timeout(_) => error(StatusCode::GATEWAY_TIMEOUT, &e.to_string()),
        LegacyError::Failed(_) | LegacyError::Unreadable(_) => {
            error(StatusCode::BAD_GATEWAY, &e.to_string())
        }
    }
}

/// Serves until `shutdown` resolves, then stops accepting, drains open
/// requests and started writes within the drain timeout. Returns whether
/// the drain finished in time.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let server = ServerOptions {
        max_connections: proxy.opts.max_connections,
        header_timeout: proxy.opts.header_timeout,
        body_timeout: proxy.opts.body_timeout,
    };
    let handler = {
        let proxy = Arc::clone(&proxy);
        move |req, _peer| {
            let proxy = Arc::clone(&proxy);
            async move { proxy.handle(req).await }
        }
    };
    let open = service_kit::server::serve(listener, server, handler, shutdown).await;
    proxy.draining.store(true, Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + proxy.opts.drain_timeout;
    let connections = open.drain(deadline).await;
    proxy.writes.close();
    let writes = tokio::time::timeout_at(deadline, proxy.writes.wait())
        .await
        .is_ok();
    if !(connections && writes) {
        tracing::warn!(
            connections,
            writes,
            "Drain deadline passed with work still open."
        );
    }
    connections && writes
}

/// Serves the operator endpoints (see [`Proxy::handle_admin`]) on
/// `listener` until `stop` resolves.
pub async fn serve_admin(listener: TcpListener, proxy: Arc<Proxy>, stop: impl Future<Output = ()>) {
    let handler = move |req, _peer| {
        let proxy = Arc::clone(&proxy);
        async move { proxy.handle_admin(req).await }
    };
    service_kit::server::serve_admin(listener, handler, stop).await;
}
