//! The HTTP application. This module routes; `state` holds what a request
//! needs, `error` the errors and their responses ([`ApiError::status`] maps
//! every error to its status), `ingest` the events path, `pixel` the pixel's
//! translation. Success statuses are chosen where the answer is built:
//! `204`/`200` in `ingest` (`200` when some events were refused), the
//! probes' `200`/`503` in [`App::handle_admin`], the tracker's `200`/`304`
//! in `tracker`.
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
    EventSink, IdCheck, IdSource, OncePerSecond, RejectReason, RequestContext, SessionOutcome,
    SessionStore, SinkError, StoreError, Touched, anonymize_ip, enrich, enriched_size_hint,
    parse_body,
};

use service_kit::server::{BodyMemory, ReadError};
use tracing::Instrument;

use crate::body::{BodyReadError, Encoding, Media, check_headers, inflate_bounded, read_body};
use crate::client_ip::ClientIp;
use crate::cookie::VisitorCookie;
use crate::cors::Cors;
use crate::geo::GeoLookup;
use crate::metrics::{Gauges, Metrics, Route, ShedReason};
use crate::ua::UaParser;
use service_kit::prom::Registry;

mod error;
mod ingest;
mod inspect;
mod pixel;
mod segment;
mod state;

pub use error::{ApiError, Rejected};
pub use pixel::PIXEL_GIF;
pub use state::{AppState, Dedup, Limits, Parts, SpanLabels};

use error::{empty, json_response, text};

/// Longest header value passed on to migration-proxy; longer ones are not
/// passed on. Trace headers stay well within it (W3C `tracestate` and
/// Datadog's `x-datadog-tags` are capped at 512 by their own specs), and it
/// bounds the bytes of a queued renewal, which carries them.
pub const MAX_FORWARDED_HEADER_BYTES: usize = 512;

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
            path => segment::segment_path(path).map(segment::SegmentPath::span_name),
        };
        let span = match name {
            Some(name) => service_kit::request_span!(
                req.headers(),
                req.method(),
                name,
                events,
                rejected,
                sessions.unavailable,
            ),
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
            ("/v1/events", &Method::OPTIONS) => (
                Route::Preflight,
                self.preflight(req.headers(), ApiError::into_response),
            ),
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
            ("/v1/tracker.js", &Method::GET | &Method::HEAD) => (
                Route::Tracker,
                crate::tracker::response(&self.state.script, req.headers()),
            ),
            ("/v1/tracker.js", _) => (
                Route::Tracker,
                ApiError::MethodNotAllowed("GET, HEAD").into_response(),
            ),
            (path, method) => match segment::segment_path(path) {
                // Boxed: a connection waiting for its body keeps the events
                // route's future, not the size of this one.
                Some(segment) => Box::pin(self.segment_route(segment, req, peer.ip())).await,
                // `/metrics` is served on the admin listener only.
                None => match method {
                    &Method::GET => self.probe(path),
                    _ => None,
                }
                .unwrap_or_else(|| (Route::Other, ApiError::NotFound.into_response())),
            },
        }
    }

    /// Answers one request on the admin listener (`TRACKING_ADMIN_LISTEN`):
    /// `/metrics`, `/healthz`, `/readyz` and the inspector's `/inspect…`.
    pub async fn handle_admin<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        let start = Instant::now();
        let (path, method) = (req.uri().path(), req.method());
        let inspected = self
            .inspect_route(path, method, req.headers(), req.uri().query())
            .await;
        let (route, resp) = match inspected {
            Some(resp) => (Route::Inspect, resp),
            None => match (path, method) {
                ("/metrics", &Method::GET) => (Route::Metrics, self.metrics()),
                (path, &Method::GET) => self
                    .probe(path)
                    .unwrap_or_else(|| (Route::Other, ApiError::NotFound.into_response())),
                _ => (Route::Other, ApiError::NotFound.into_response()),
            },
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

    /// A CORS preflight; a refused one is answered by `refuse` (each route
    /// family's error body).
    fn preflight(
        &self,
        headers: &HeaderMap,
        refuse: fn(ApiError) -> Response<Full<Bytes>>,
    ) -> Response<Full<Bytes>> {
        let decision = self.state.parts.cors.decide(headers);
        let mut resp = empty(StatusCode::NO_CONTENT);
        if !Cors::apply_preflight(&decision, resp.headers_mut()) {
            resp = refuse(ApiError::OriginRefused);
            Cors::apply(&decision, resp.headers_mut());
        }
        resp
    }
}
