//! The HTTP application: routes, the ingest path, and the one function that
//! chooses status codes ([`ApiError::status`]).
//!
//! Accepted means kept: once a request's events pass validation and the sink
//! has admitted them, their session work and hand-off to the sink run in a
//! task of their own (tracked for the drain). The request future only awaits
//! that task, so a client that hangs up — hyper then drops the request future
//! — cancels nothing.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{
    ALLOW, CACHE_CONTROL, CONTENT_TYPE, REFERER, RETRY_AFTER, SET_COOKIE, USER_AGENT,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracking_core::{
    Admission, BodyError, CallContext, ClientId, Clock, DeadLetter, DeadLetterSink, Event,
    EventSink, IdSource, OncePerSecond, RejectReason, RequestContext, SessionOutcome, SessionStore,
    SinkError, StoreError, anonymize_ip, enrich, enriched_size_hint, parse_body,
};

use service_kit::server::{BodyMemory, ReadError};
use service_kit::telemetry::Incoming;
use tracing::Instrument;

use crate::body::{BodyReadError, Encoding, check_headers, inflate_bounded, read_body};
use crate::client_ip::ClientIp;
use crate::cookie::VisitorCookie;
use crate::cors::Cors;
use crate::geo::GeoLookup;
use crate::metrics::{Gauges, Metrics, Route, ShedReason};
use crate::ua::UaParser;
use service_kit::prom::Registry;

/// A transparent 1×1 GIF.
pub const PIXEL_GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// Longest header value passed on to migration-proxy; longer ones are not
/// passed on. Trace headers stay well within it (W3C `tracestate` and
/// Datadog's `x-datadog-tags` are capped at 512 by their own specs), and it
/// bounds the bytes of a queued renewal, which carries them.
pub const MAX_FORWARDED_HEADER_BYTES: usize = 512;

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_decompressed_bytes: usize,
    pub max_batch_events: usize,
    pub max_inflight: usize,
    /// Bytes of request bodies held at once, as sent and inflated.
    pub body_memory: usize,
    pub session_timeout: Duration,
}

/// Everything a request needs, built once at start-up: the adapters and
/// settings it was built from, and the request-time state around them.
#[derive(Debug)]
pub struct AppState {
    pub parts: Parts,
    pub ua: UaParser,
    inflight: Arc<Semaphore>,
    body_memory: Arc<BodyMemory>,
    tracker: TaskTracker,
    ready: AtomicBool,
    store_warned: OncePerSecond,
}

/// The adapters and settings an [`AppState`] is built from.
#[derive(Debug)]
pub struct Parts {
    pub limits: Limits,
    pub store: Arc<dyn SessionStore>,
    pub sink: Arc<dyn EventSink>,
    pub deadletters: Arc<dyn DeadLetterSink>,
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn IdSource>,
    pub cors: Cors,
    pub cookie: VisitorCookie,
    pub client_ip: ClientIp,
    pub geo: Option<GeoLookup>,
    /// The API's own (HTTP-level) metrics.
    pub metrics: Arc<Metrics>,
    /// The adapters' metrics, each registered by the adapter's builder;
    /// `/metrics` renders them after the API's own.
    pub registry: Arc<Registry>,
    /// Sustained-overload readiness (ticked once a second by the server).
    pub overload: Arc<crate::overload::OverloadGuard>,
    /// Request headers passed on to migration-proxy (empty in `cloud` mode).
    pub forward_headers: Vec<http::HeaderName>,
    /// Attributes of the `session` spans.
    pub span_labels: SpanLabels,
}

/// Constant attributes of the `session` spans: which store answers, in which
/// migration mode.
#[derive(Debug, Clone, Copy)]
pub struct SpanLabels {
    /// `memory`, `bigtable` or `migration-proxy` (legacy mode).
    pub store: &'static str,
    /// `cloud`, `parallel` or `legacy`.
    pub mode: &'static str,
}

impl Default for SpanLabels {
    fn default() -> Self {
        Self {
            store: "memory",
            mode: "cloud",
        }
    }
}

impl AppState {
    pub fn new(parts: Parts) -> Arc<Self> {
        Arc::new(Self {
            inflight: Arc::new(Semaphore::new(parts.limits.max_inflight)),
            body_memory: BodyMemory::new(parts.limits.body_memory),
            ua: UaParser::new(4096),
            tracker: TaskTracker::new(),
            ready: AtomicBool::new(false),
            store_warned: OncePerSecond::default(),
            parts,
        })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Ready to take traffic: started, not draining, not in sustained
    /// overload (see [`crate::overload`]), and the event output works.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
            && !self.parts.overload.unready()
            && self.parts.sink.healthy()
    }

    /// Event-processing tasks, for the drain.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    fn gauges(&self) -> Gauges {
        Gauges {
            inflight: self.parts.limits.max_inflight - self.inflight.available_permits(),
            body_memory: self.body_memory.used(),
            body_memory_limit: self.body_memory.limit(),
            store_ops: self.parts.store.counters(),
            ready: self.is_ready(),
            overloaded: self.parts.overload.unready(),
            overload_flips: self.parts.overload.flips(),
        }
    }

    /// Logs a session-store failure at most once a second.
    fn warn_store(&self, error: &StoreError) {
        if self.store_warned.allow(self.parts.clock.now()) {
            tracing::warn!(%error, "Session store failed; events are accepted without sessions.");
        }
    }
}

/// One refused event of a request.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub index: usize,
    pub error: String,
}

/// Why a request was not (fully) taken. Whose fault and whether a retry
/// helps decide the status, in [`ApiError::status`] only.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body could not be read as sent (client's fault, except `Io` and
    /// `NoMemory`, which is ours).
    #[error("{0}")]
    Read(#[from] BodyReadError),
    /// The body is not a valid envelope (client's fault).
    #[error("{0}")]
    Body(#[from] BodyError),
    /// Every event was invalid (client's fault).
    #[error("every event was rejected")]
    AllRejected(Vec<Rejected>),
    /// Too many requests in flight (ours; retry later).
    #[error("too many requests in flight; retry later")]
    Overloaded,

    /// The sink cannot take more events now (ours; retry later).
    #[error("the event queue is full; retry later")]
    QueueFull,
    /// The output is failing; what was accepted is kept (ours; retry later).
    #[error("the event output is failing; retry later")]
    OutputFailing(String),
    /// Shutting down (ours; retry, another instance will answer).
    #[error("shutting down; retry later")]
    Draining,
    #[error("no such endpoint")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    #[error("origin not allowed")]
    OriginRefused,
    /// A bug (ours).
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The one place where errors become status codes.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Read(
                BodyReadError::Read(ReadError::TooLarge(_)) | BodyReadError::InflatedTooLarge(_),
            ) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Read(
                BodyReadError::UnsupportedType(_) | BodyReadError::UnsupportedEncoding(_),
            ) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Read(BodyReadError::BadGzip(_) | BodyReadError::Read(ReadError::Io(_))) => {
                StatusCode::BAD_REQUEST
            }
            Self::Body(BodyError::TooManyEvents { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Body(_) | Self::AllRejected(_) => StatusCode::BAD_REQUEST,
            Self::Read(BodyReadError::Read(ReadError::TimedOut(_))) => StatusCode::REQUEST_TIMEOUT,
            Self::Read(BodyReadError::Read(ReadError::NoMemory)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Overloaded | Self::QueueFull | Self::OutputFailing(_) | Self::Draining => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::OriginRefused => StatusCode::FORBIDDEN,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        #[derive(Serialize)]
        struct Body<'a> {
            error: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            rejected: Option<&'a [Rejected]>,
        }
        let status = self.status();
        let body = Body {
            error: self.to_string(),
            rejected: match &self {
                Self::AllRejected(r) => Some(r),
                _ => None,
            },
        };
        let mut resp = json_response(status, &body);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Self::MethodNotAllowed(allow) = self {
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes =
        serde_json::to_vec(body).unwrap_or_else(|_| b"{\"error\":\"internal error\"}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// What an accepted request did.
#[derive(Debug)]
struct Ingested {
    accepted: usize,
    rejected: Vec<Rejected>,
    new_visitor: Option<ClientId>,
}

/// The application, cheap to clone; drive it with [`App::handle`].
#[derive(Debug, Clone)]
pub struct App {
    state: Arc<AppState>,
}

/// The application over `state`.
pub fn app(state: Arc<AppState>) -> App {
    App { state }
}

impl App {
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Answers one request from `peer`.
    pub async fn handle<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let start = Instant::now();
        // Event routes are traced (continuing the caller's trace, if any);
        // probes and metrics are not.
        let name = match req.uri().path() {
            "/v1/events" => Some("POST /v1/events"),
            "/v1/pixel.gif" => Some("GET /v1/pixel.gif"),
            _ => None,
        };
        let span = match name {
            Some(name) => {
                let incoming = Incoming::from_headers(req.headers());
                let span = service_kit::root_span!(
                    incoming.sampled(),
                    "request",
                    otel.name = name,
                    otel.kind = "server",
                    http.request.method = %req.method(),
                    http.response.status_code = tracing::field::Empty,
                    events = tracing::field::Empty,
                    rejected = tracing::field::Empty,
                    sessions.unavailable = tracing::field::Empty,
                    trace_id = tracing::field::Empty,
                    span_id = tracing::field::Empty,
                );
                service_kit::telemetry::continue_trace(&span, incoming);
                span
            }
            None => tracing::Span::none(),
        };
        let (route, resp) = self.route(req, peer).instrument(span.clone()).await;
        let status = resp.status().as_u16();
        service_kit::telemetry::record_status(&span, status);
        self.state
            .parts
            .metrics
            .record_request(route, status, start.elapsed());
        resp
    }

    async fn route<B>(&self, req: Request<B>, peer: SocketAddr) -> (Route, Response<Full<Bytes>>)
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match (req.uri().path(), req.method()) {
            ("/v1/events", &Method::POST) => (Route::Events, self.events(req, peer.ip()).await),
            ("/v1/events", &Method::OPTIONS) => (Route::Preflight, self.preflight(req.headers())),
            ("/v1/events", _) => (
                Route::Events,
                ApiError::MethodNotAllowed("POST, OPTIONS").into_response(),
            ),
            ("/v1/pixel.gif", &Method::GET | &Method::HEAD) => {
                (Route::Pixel, self.pixel(&req, peer.ip()).await)
            }
            ("/v1/pixel.gif", _) => (
                Route::Pixel,
                ApiError::MethodNotAllowed("GET, HEAD").into_response(),
            ),
            ("/v1/tracker.js", &Method::GET | &Method::HEAD) => {
                (Route::Tracker, crate::tracker::response(req.headers()))
            }
            ("/v1/tracker.js", _) => (
                Route::Tracker,
                ApiError::MethodNotAllowed("GET, HEAD").into_response(),
            ),
            // `/metrics` is served on the admin listener only.
            (path, &Method::GET) => self
                .probe(path)
                .unwrap_or_else(|| (Route::Other, ApiError::NotFound.into_response())),
            _ => (Route::Other, ApiError::NotFound.into_response()),
        }
    }

    /// Answers one request on the admin listener (`TRACKING_ADMIN_LISTEN`):
    /// `/metrics`, `/healthz` and `/readyz`.
    pub async fn handle_admin<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        let start = Instant::now();
        let (route, resp) = match (req.uri().path(), req.method()) {
            ("/metrics", &Method::GET) => (Route::Metrics, self.metrics()),
            (path, &Method::GET) => self
                .probe(path)
                .unwrap_or_else(|| (Route::Other, ApiError::NotFound.into_response())),
            _ => (Route::Other, ApiError::NotFound.into_response()),
        };
        self.state
            .parts
            .metrics
            .record_request(route, resp.status().as_u16(), start.elapsed());
        resp
    }

    /// `GET /healthz` and `GET /readyz`, served on both listeners.
    fn probe(&self, path: &str) -> Option<(Route, Response<Full<Bytes>>)> {
        match path {
            "/healthz" => Some((Route::Healthz, text(StatusCode::OK, "ok\n"))),
            "/readyz" => Some((
                Route::Readyz,
                if self.state.is_ready() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                },
            )),
            _ => None,
        }
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        let mut body = self.state.parts.metrics.render(&self.state.gauges());
        self.state.parts.registry.render_into(&mut body);
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp
    }

    fn preflight(&self, headers: &HeaderMap) -> Response<Full<Bytes>> {
        let decision = self.state.parts.cors.decide(headers);
        let mut resp = empty(StatusCode::NO_CONTENT);
        if !Cors::apply_preflight(&decision, resp.headers_mut()) {
            resp = ApiError::OriginRefused.into_response();
            Cors::apply(&decision, resp.headers_mut());
        }
        resp
    }

    async fn events<B>(&self, req: Request<B>, peer: IpAddr) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let decision = self.state.parts.cors.decide(req.headers());
        let mut resp = match self.events_inner(req, peer).await {
            Ok(i) if i.rejected.is_empty() => {
                let mut r = empty(StatusCode::NO_CONTENT);
                self.set_cookie(&mut r, i.new_visitor.as_ref());
                r
            }
            Ok(i) => {
                #[derive(Serialize)]
                struct Partial<'a> {
                    accepted: usize,
                    rejected: &'a [Rejected],
                }
                let mut r = json_response(
                    StatusCode::OK,
                    &Partial {
                        accepted: i.accepted,
                        rejected: &i.rejected,
                    },
                );
                self.set_cookie(&mut r, i.new_visitor.as_ref());
                r
            }
            Err(e) => e.into_response(),
        };
        Cors::apply(&decision, resp.headers_mut());
        resp
    }

    fn set_cookie(&self, resp: &mut Response<Full<Bytes>>, id: Option<&ClientId>) {
        if let Some(id) = id {
            resp.headers_mut()
                .insert(SET_COOKIE, self.state.parts.cookie.set(id));
        }
    }

    async fn events_inner<B>(&self, req: Request<B>, peer: IpAddr) -> Result<Ingested, ApiError>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let limits = self.state.parts.limits;
        let encoding = check_headers(req.headers(), limits.max_body_bytes)?;
        let (parts, body) = req.into_parts();
        // The body first: a slow one holds its connection and the bytes it
        // sent, never an in-flight slot.
        let memory = &self.state.body_memory;
        let raw = read_body(body, limits.max_body_bytes, memory)
            .await
            .map_err(|e| self.body_error(e))?;
        let _permit = self.admit()?;
        let inflated = match encoding {
            Encoding::Identity => None,
            Encoding::Gzip => {
                let _span = tracing::debug_span!("gunzip", bytes = raw.len()).entered();
                Some(
                    inflate_bounded(&raw, limits.max_decompressed_bytes, memory)
                        .map_err(|e| self.body_error(e))?,
                )
            }
        };
        let body = inflated.as_deref().unwrap_or(&raw);
        // Boxed: the ingest state is allocated only once a body has arrived,
        // so a connection waiting for one keeps a small future.
        Box::pin(self.ingest(body, &parts.headers, peer)).await
    }

    /// A body that could not be read or inflated; counted as shed when it
    /// is our memory that ran out.
    fn body_error(&self, e: BodyReadError) -> ApiError {
        if matches!(e, BodyReadError::Read(ReadError::NoMemory)) {
            self.state.parts.overload.record_shed();
            self.state.parts.metrics.record_shed(ShedReason::BodyMemory);
        }
        ApiError::Read(e)
    }

    /// Takes an in-flight slot, or sheds the request.
    fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let overload = &self.state.parts.overload;
        match Arc::clone(&self.state.inflight).try_acquire_owned() {
            Ok(permit) => {
                overload.record_admitted();
                Ok(permit)
            }
            Err(_) => {
                overload.record_shed();
                self.state.parts.metrics.record_shed(ShedReason::Inflight);
                Err(ApiError::Overloaded)
            }
        }
    }

    /// Validates the events of a body and, when any is valid, processes them.
    async fn ingest(
        &self,
        body: &[u8],
        headers: &HeaderMap,
        peer: IpAddr,
    ) -> Result<Ingested, ApiError> {
        let st = &self.state;
        let received_at = st.parts.clock.now();
        let items = {
            let _span = tracing::debug_span!("decode", bytes = body.len()).entered();
            parse_body(body, st.parts.limits.max_batch_events)?
        };
        let (accepted, admission, rejected, new_visitor) =
            {
                let validate = tracing::debug_span!(
                    "validate",
                    events = items.len(),
                    accepted = tracing::field::Empty,
                    rejected = tracing::field::Empty,
                )
                .entered();

                let cookie_id = st.parts.cookie.read(headers);
                let needs_fallback = items
                    .iter()
                    .any(|i| i.event.as_ref().is_ok_and(|r| r.client_id.is_none()));
                let mut new_visitor = None;
                let fallback = match cookie_id {
                    Some(id) => Some(id),
                    None if needs_fallback => {
                        let id = ClientId::parse(&st.parts.ids.new_id(received_at).to_string());
                        new_visitor.clone_from(&id);
                        id
                    }
                    None => None,
                };

                let mut accepted: Vec<Event> = Vec::with_capacity(items.len());
                let mut rejected: Vec<(usize, RejectReason, &str)> = Vec::new();
                for item in items {
                    let event = item.event.and_then(|mut raw| {
                        raw.fallback_client_id.clone_from(&fallback);
                        Event::try_from(raw)
                    });
                    match event {
                        Ok(e) => accepted.push(e),
                        Err(reason) => rejected.push((item.index, reason, item.raw)),
                    }
                }

                let admission =
                    if accepted.is_empty() {
                        None
                    } else {
                        let bytes = accepted.iter().map(enriched_size_hint).sum();
                        Some(st.parts.sink.try_admit(accepted.len(), bytes).map_err(
                            |e| match e {
                                SinkError::Full { .. } => {
                                    st.parts.metrics.record_shed(ShedReason::QueueFull);
                                    ApiError::QueueFull
                                }
                                SinkError::Unavailable(why) => {
                                    st.parts.metrics.record_shed(ShedReason::OutputFailing);
                                    ApiError::OutputFailing(why)
                                }
                                SinkError::Closed | SinkError::Failed(_) => {
                                    st.parts.metrics.record_shed(ShedReason::Draining);
                                    ApiError::Draining
                                }
                            },
                        )?)
                    };

                let rejected: Vec<Rejected> = rejected
                    .into_iter()
                    .map(|(index, reason, raw)| {
                        st.parts.metrics.record_rejected(reason);
                        self.dead_letter(
                            received_at,
                            reason.as_str(),
                            reason.to_string(),
                            Some(index),
                            raw.to_owned(),
                        );
                        Rejected {
                            index,
                            error: reason.to_string(),
                        }
                    })
                    .collect();
                validate.record("accepted", accepted.len());
                validate.record("rejected", rejected.len());
                (accepted, admission, rejected, new_visitor)
            };
        let request_span = tracing::Span::current();
        if !rejected.is_empty() {
            request_span.record("rejected", rejected.len());
        }
        let Some(admission) = admission else {
            return Err(ApiError::AllRejected(rejected));
        };

        let ip = st.parts.client_ip.resolve(peer, headers);
        let ctx = RequestContext {
            received_at,
            ip: Some(anonymize_ip(ip)),
            ua: headers
                .get(USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|ua| st.ua.parse(ua)),
            geo: st.parts.geo.as_ref().and_then(|g| g.lookup(ip)),
        };
        let call = CallContext {
            headers: st
                .parts
                .forward_headers
                .iter()
                .filter_map(|name| {
                    let value = headers.get(name)?.to_str().ok()?;
                    (value.len() <= MAX_FORWARDED_HEADER_BYTES)
                        .then(|| (name.as_str().into(), value.into()))
                })
                .collect(),
        };
        let n = accepted.len();
        Metrics::add(&st.parts.metrics.events_accepted, n as u64);
        request_span.record("events", n);
        let task = st.tracker.spawn(
            process(Arc::clone(st), accepted, ctx, call, admission).instrument(request_span),
        );
        task.await.map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(Ingested {
            accepted: n,
            rejected,
            new_visitor,
        })
    }

    fn dead_letter(
        &self,
        received_at: tracking_core::Timestamp,
        reason: &'static str,
        error: String,
        index: Option<usize>,
        raw: String,
    ) {
        let kept = self.state.parts.deadletters.reject(DeadLetter {
            received_at,
            reason,
            error,
            index,
            raw,
        });
        if !kept {
            Metrics::add(&self.state.parts.metrics.deadletters_dropped, 1);
        }
    }

    /// `GET /v1/pixel.gif`: the event's fields are query parameters; the
    /// answer is always the GIF. When `url` is absent the `Referer` (the page
    /// that holds the pixel) is used.
    async fn pixel<B>(&self, req: &Request<B>, peer: IpAddr) -> Response<Full<Bytes>> {
        let query = req.uri().query().unwrap_or_default();
        let referer = req.headers().get(REFERER).and_then(|v| v.to_str().ok());
        let json = pixel_event_json(query, referer);
        let result = match self.admit() {
            Ok(_permit) => self.ingest(json.as_bytes(), req.headers(), peer).await,
            Err(e) => Err(e),
        };
        let mut resp = Response::new(Full::new(Bytes::from_static(PIXEL_GIF)));
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("image/gif"));
        h.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("no-store, max-age=0"),
        );
        match result {
            Ok(i) => self.set_cookie(&mut resp, i.new_visitor.as_ref()),
            // Each invalid event was already dead-lettered with its reason.
            Err(ApiError::AllRejected(_)) => {}
            Err(e) => {
                let received_at = self.state.parts.clock.now();
                let reason = if e.status() == StatusCode::SERVICE_UNAVAILABLE {
                    "overloaded"
                } else {
                    "invalid_request"
                };
                self.dead_letter(received_at, reason, e.to_string(), None, query.to_owned());
            }
        }
        resp
    }
}

/// Turns pixel query parameters into the JSON event they describe; values
/// of the wrong shape are kept as strings so validation explains them.
fn pixel_event_json(query: &str, referer: Option<&str>) -> String {
    use serde_json::{Map, Value};
    let mut event = Map::new();
    let mut via = Map::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let (map, key, value) = match &*k {
            "type" | "client_id" | "event_id" | "url" | "referrer" => {
                (&mut event, &*k, Value::String(v.into_owned()))
            }
            "ts" => (
                &mut event,
                "ts",
                v.parse::<u64>()
                    .map_or_else(|_| Value::String(v.into_owned()), Value::from),
            ),
            "props" => (
                &mut event,
                "props",
                serde_json::from_str::<Map<String, Value>>(&v)
                    .map_or_else(|_| Value::String(v.into_owned()), Value::Object),
            ),
            "via_source" => (&mut via, "source", Value::String(v.into_owned())),
            "via_medium" => (&mut via, "medium", Value::String(v.into_owned())),
            "via_campaign" => (&mut via, "campaign", Value::String(v.into_owned())),
            _ => continue,
        };
        map.entry(key).or_insert(value);
    }
    if !via.is_empty() {
        event.insert("via".into(), Value::Object(via));
    }
    if let Some(r) = referer.filter(|r| r.len() <= tracking_core::event::MAX_URL_BYTES) {
        event
            .entry("url")
            .or_insert_with(|| Value::String(r.to_owned()));
    }
    Value::Object(event).to_string()
}

/// Resolves sessions for each event in order, enriches them and hands them
/// to the sink. Runs as its own task: nothing here is cancelled by the client.
async fn process(
    st: Arc<AppState>,
    events: Vec<Event>,
    ctx: RequestContext,
    call: CallContext,
    admission: Admission,
) {
    let mut out = Vec::with_capacity(events.len());
    let mut unavailable = 0usize;
    let labels = st.parts.span_labels;
    for event in events {
        // `lookup` is recorded by the Bigtable and legacy stores: `hit` (a
        // live session), `miss`, or `fallback` (found through migration-proxy).
        let span = tracing::debug_span!(
            "session",
            store = labels.store,
            mode = labels.mode,
            outcome = tracing::field::Empty,
            lookup = tracing::field::Empty,
            short_new = tracing::field::Empty,
            long_new = tracing::field::Empty,
        );
        let touch = st
            .parts
            .store
            .touch(event.client_id(), ctx.received_at, event.via(), &call)
            .instrument(span.clone());
        let outcome = match tokio::time::timeout(st.parts.limits.session_timeout, touch).await {
            Ok(Ok(s)) => {
                let m = &st.parts.metrics;
                if s.short_new {
                    Metrics::add(&m.sessions_short_new, 1);
                }
                if s.long_new {
                    Metrics::add(&m.sessions_long_new, 1);
                }
                if !s.short_new && !s.long_new {
                    Metrics::add(&m.sessions_continued, 1);
                }
                span.record("short_new", s.short_new);
                span.record("long_new", s.long_new);
                SessionOutcome::Resolved(s)
            }
            Ok(Err(e)) => {
                Metrics::add(&st.parts.metrics.session_store_failures, 1);
                Metrics::add(&st.parts.metrics.sessions_unavailable, 1);
                st.warn_store(&e);
                SessionOutcome::Unavailable
            }
            Err(_) => {
                Metrics::add(&st.parts.metrics.session_store_timeouts, 1);
                Metrics::add(&st.parts.metrics.sessions_unavailable, 1);
                st.warn_store(&StoreError::Timeout(st.parts.limits.session_timeout));
                SessionOutcome::Unavailable
            }
        };
        span.record("outcome", outcome.status());
        if matches!(outcome, SessionOutcome::Unavailable) {
            unavailable += 1;
            service_kit::telemetry::set_error(&span, "session store unavailable");
        }
        out.push(enrich(event, outcome, &ctx, &*st.parts.ids));
    }
    if unavailable > 0 {
        // Kept even when the trace is not sampled: the request span is.
        let request = tracing::Span::current();
        request.record("sessions.unavailable", unavailable);
        service_kit::telemetry::set_error(
            &request,
            format!("{unavailable} events without sessions (store unavailable)"),
        );
    }
    let _sink = tracing::debug_span!("sink.send", events = out.len()).entered();
    st.parts.sink.send(out, admission);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(query: &str, referer: Option<&str>, expected: serde_json::Value) {
        let got: serde_json::Value =
            serde_json::from_str(&pixel_event_json(query, referer)).expect("json");
        assert_eq!(got, expected, "{query}");
    }

    #[test]
    fn pixel_parameters() {
        use serde_json::json;
        check(
            "type=pv&client_id=c1&ts=5",
            None,
            json!({"type": "pv", "client_id": "c1", "ts": 5}),
        );
        check("type=pv&ts=x", None, json!({"type": "pv", "ts": "x"}));
        check("type=a&type=b", None, json!({"type": "a"}));
        check(
            "type=pv&via_source=ad&via_campaign=c%201&props=%7B%22k%22%3A1%7D&other=1",
            Some("https://site/p"),
            json!({"type": "pv", "via": {"source": "ad", "campaign": "c 1"}, "props": {"k": 1}, "url": "https://site/p"}),
        );
        check(
            "type=pv&url=u",
            Some("https://site/p"),
            json!({"type": "pv", "url": "u"}),
        );
        check("props=%5B1%5D", None, json!({"props": "[1]"}));
    }
}
