//! The Segment HTTP Tracking API: `POST` of one call (`/v1/track`, `/v1/t`,
//! …) or a batch (`/v1/batch`, `/v1/b`, `/b`), and the SDKs' start-up
//! settings (`GET /v1/projects/{writeKey}/settings`). A call becomes an
//! event of the same pipeline as `/v1/events` (`tracking_core::segment`
//! decides how); this module reads the request, checks its write key and
//! answers as the SDKs expect: `200` with JSON, errors as `{"code",
//! "message"}`.

use http::header::HOST;
use tracking_core::{Call, Source, parse_segment_body};

use super::ingest::Ingested;
use super::*;
use crate::cors::Decision;
use crate::inspect::Channel;
use crate::segment::header_key;

/// What a Segment path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SegmentPath {
    /// A batch route; the span name.
    Batch(&'static str),
    /// A single-call route: its call type and the span name.
    Single(Call, &'static str),
    /// The settings of a write key (see [`settings_key`]).
    Settings,
}

impl SegmentPath {
    pub(super) fn span_name(self) -> &'static str {
        match self {
            Self::Batch(name) | Self::Single(_, name) => name,
            Self::Settings => "GET /v1/projects/{writeKey}/settings",
        }
    }
}

/// The Segment route of `path`, if it is one.
pub(super) fn segment_path(path: &str) -> Option<SegmentPath> {
    use Call::*;
    let single = |call, name| Some(SegmentPath::Single(call, name));
    match path {
        "/v1/batch" => Some(SegmentPath::Batch("POST /v1/batch")),
        "/v1/b" => Some(SegmentPath::Batch("POST /v1/b")),
        "/b" => Some(SegmentPath::Batch("POST /b")),
        "/v1/track" => single(Track, "POST /v1/track"),
        "/v1/t" => single(Track, "POST /v1/t"),
        "/v1/page" => single(Page, "POST /v1/page"),
        "/v1/p" => single(Page, "POST /v1/p"),
        "/v1/screen" => single(Screen, "POST /v1/screen"),
        "/v1/s" => single(Screen, "POST /v1/s"),
        "/v1/identify" => single(Identify, "POST /v1/identify"),
        "/v1/i" => single(Identify, "POST /v1/i"),
        "/v1/group" => single(Group, "POST /v1/group"),
        "/v1/g" => single(Group, "POST /v1/g"),
        "/v1/alias" => single(Alias, "POST /v1/alias"),
        "/v1/a" => single(Alias, "POST /v1/a"),
        _ => settings_key(path).map(|_| SegmentPath::Settings),
    }
}

/// The write key of a `/v1/projects/{writeKey}/settings` path.
fn settings_key(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/projects/")?
        .strip_suffix("/settings")
        .filter(|key| !key.is_empty() && !key.contains('/'))
}

/// The body of a `200` to a Segment call.
const SUCCESS: &[u8] = br#"{"success":true}"#;

impl App {
    /// Answers a request to a Segment path.
    pub(super) async fn segment_route<B>(
        &self,
        path: SegmentPath,
        req: Request<B>,
        peer: IpAddr,
    ) -> (Route, Response<Full<Bytes>>)
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match (path, req.method()) {
            (_, &Method::OPTIONS) => (
                Route::Preflight,
                self.preflight(req.headers(), ApiError::into_segment_response),
            ),
            (SegmentPath::Settings, &Method::GET | &Method::HEAD) => {
                let key = settings_key(req.uri().path()).unwrap_or_default();
                (
                    Route::SegmentSettings,
                    self.settings(key, req.headers(), peer),
                )
            }
            (SegmentPath::Settings, _) => (
                Route::SegmentSettings,
                ApiError::MethodNotAllowed("GET, HEAD, OPTIONS").into_segment_response(),
            ),
            (SegmentPath::Batch(_), &Method::POST) => {
                (Route::Segment, self.segment(req, peer, None).await)
            }
            (SegmentPath::Single(call, _), &Method::POST) => {
                (Route::Segment, self.segment(req, peer, Some(call)).await)
            }
            _ => (
                Route::Segment,
                ApiError::MethodNotAllowed("POST, OPTIONS").into_segment_response(),
            ),
        }
    }

    /// `POST` of one call (`call` given) or a batch.
    async fn segment<B>(
        &self,
        req: Request<B>,
        peer: IpAddr,
        call: Option<Call>,
    ) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let decision = self.state.parts.cors.decide(req.headers());
        let mut resp = if matches!(decision, Decision::Refused) {
            ApiError::OriginRefused.into_segment_response()
        } else {
            match self.segment_inner(req, peer, call).await {
                Ok(i) if i.rejected.is_empty() => {
                    let mut r = Response::new(Full::new(Bytes::from_static(SUCCESS)));
                    r.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    r
                }
                Ok(i) => {
                    #[derive(Serialize)]
                    struct Partial<'a> {
                        success: bool,
                        accepted: usize,
                        rejected: &'a [Rejected],
                    }
                    json_response(
                        StatusCode::OK,
                        &Partial {
                            success: true,
                            accepted: i.accepted,
                            rejected: &i.rejected,
                        },
                    )
                }
                Err(e) => {
                    self.inspect_refused(&e, &Channel::Segment(Arc::from("")));
                    e.into_segment_response()
                }
            }
        };
        Cors::apply(&decision, resp.headers_mut());
        resp
    }

    async fn segment_inner<B>(
        &self,
        req: Request<B>,
        peer: IpAddr,
        call: Option<Call>,
    ) -> Result<Ingested, ApiError>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let settings = &self.state.parts.segment;
        // A key in the headers is checked before the body is read.
        let source = header_key(req.headers())
            .map(|key| settings.keys.resolve(Some(&key)))
            .transpose()?;
        let max = match call {
            Some(_) => settings.limits.max_call_bytes,
            None => settings.max_batch_bytes,
        };
        let (parts, body) = req.into_parts();
        let received = self.receive(parts, body, Media::Any, max, max).await?;
        Box::pin(self.ingest_segment(received.body(), &received.parts.headers, peer, call, source))
            .await
    }

    /// Validates the calls of a body and, when any is valid, processes them.
    async fn ingest_segment(
        &self,
        body: &[u8],
        headers: &HeaderMap,
        peer: IpAddr,
        call: Option<Call>,
        source: Option<Source>,
    ) -> Result<Ingested, ApiError> {
        let st = &self.state;
        let received_at = st.parts.clock.now();
        let received = Instant::now();
        let parsed = {
            let _span = tracing::debug_span!("decode", bytes = body.len()).entered();
            parse_segment_body(body, call, st.parts.segment.limits)?
        };
        let source = match source {
            Some(s) => s,
            None => st.parts.segment.keys.resolve(parsed.write_key.as_deref())?,
        };
        let (items, rules) = (parsed.items, parsed.rules);
        let channel = Channel::Segment(Arc::clone(&source.name));
        let validated = self.validate(items.len(), received_at, &channel, || {
            let mut accepted = Vec::with_capacity(items.len());
            let mut rejected = Vec::new();
            for item in items {
                match item.call.and_then(|c| rules.validate(c, &source)) {
                    Ok(e) => accepted.push(e),
                    Err(reason) => rejected.push((item.index, reason, item.raw)),
                }
            }
            (accepted, rejected)
        })?;
        self.dispatch(validated, headers, peer, received_at, received, channel)
            .await
    }

    /// `GET /v1/projects/{writeKey}/settings`: what analytics.js and the
    /// mobile SDKs load at start. Its `Segment.io` integration keeps them
    /// sending here (`apiHost`, `protocol`), their own metrics are off
    /// (`sampleRate` 0) and no other destination is loaded.
    fn settings(&self, key: &str, headers: &HeaderMap, peer: IpAddr) -> Response<Full<Bytes>> {
        let decision = self.state.parts.cors.decide(headers);
        let mut resp = match self.settings_inner(key, headers, peer, &decision) {
            Ok(r) => r,
            Err(e) => e.into_segment_response(),
        };
        Cors::apply(&decision, resp.headers_mut());
        resp
    }

    fn settings_inner(
        &self,
        key: &str,
        headers: &HeaderMap,
        peer: IpAddr,
        decision: &Decision,
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        if matches!(decision, Decision::Refused) {
            return Err(ApiError::OriginRefused);
        }
        let segment = &self.state.parts.segment;
        segment.keys.resolve(Some(key))?;
        let (protocol, host, cache) = match &segment.public_url {
            Some((protocol, host)) => (*protocol, host.clone(), "public, max-age=300"),
            None => {
                let host = headers
                    .get(HOST)
                    .and_then(|h| h.to_str().ok())
                    .filter(|h| {
                        !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
                    })
                    .ok_or(ApiError::BadRequest("a Host header is required"))?;
                let https = self.state.parts.client_ip.is_trusted(peer)
                    && headers
                        .get("x-forwarded-proto")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
                // Derived from the request: not for shared caches.
                (
                    if https { "https" } else { "http" },
                    host.to_owned(),
                    "private, max-age=300",
                )
            }
        };
        let body = serde_json::json!({
            "integrations": {
                "Segment.io": {
                    "apiKey": key,
                    "apiHost": format!("{host}/v1"),
                    "protocol": protocol,
                    "unbundledIntegrations": [],
                    "addBundledMetadata": true,
                    "maybeBundledConfigIds": {},
                }
            },
            "plan": {
                "track": {"__default": {"enabled": true, "integrations": {}}},
                "identify": {"__default": {"enabled": true}},
                "group": {"__default": {"enabled": true}},
            },
            "edgeFunction": {},
            "analyticsNextEnabled": true,
            "middlewareSettings": {},
            "enabledMiddleware": {},
            "metrics": {"sampleRate": 0},
            "legacyVideoPluginsEnabled": false,
            "remotePlugins": [],
        });
        let mut resp = json_response(StatusCode::OK, &body);
        resp.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static(cache));
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            segment_path("/v1/t"),
            Some(SegmentPath::Single(Call::Track, "POST /v1/t"))
        );
        assert_eq!(segment_path("/b"), Some(SegmentPath::Batch("POST /b")));
        assert_eq!(
            segment_path("/v1/projects/wk1/settings"),
            Some(SegmentPath::Settings)
        );
        assert_eq!(settings_key("/v1/projects/wk1/settings"), Some("wk1"));
        for other in [
            "/v1/events",
            "/v1/projects//settings",
            "/v1/projects/a/b/settings",
            "/v1/batch/",
            "/v1/x",
        ] {
            assert_eq!(segment_path(other), None, "{other}");
        }
    }
}
