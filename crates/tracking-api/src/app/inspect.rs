//! The inspector's routes on the admin listener, and the taps the event
//! routes call (see [`crate::inspect`]).

use super::*;
use crate::inspect::{Channel, Filter, Inspector, RejectedView};
use http::header::{CONTENT_ENCODING, HOST, ORIGIN, VARY};

impl App {
    fn inspector(&self) -> Option<&Inspector> {
        self.state.parts.inspect.as_deref()
    }

    /// `/inspect` and `/inspect/…`; `None` for other paths.
    pub(super) async fn inspect_route(
        &self,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Option<Response<Full<Bytes>>> {
        if path != "/inspect" && !path.starts_with("/inspect/") {
            return None;
        }
        let Some(inspector) = self.state.parts.inspect.as_ref() else {
            return Some(text(
                StatusCode::NOT_FOUND,
                "the event inspector is off (TRACKING_INSPECT=on turns it on)\n",
            ));
        };
        // A page of another site whose name was pointed at this address
        // (DNS rebinding) sends its own name: only addresses and
        // `localhost` are answered.
        if !host_is_address(headers) {
            return Some(text(
                StatusCode::FORBIDDEN,
                "the event inspector answers requests to an IP address or localhost only (Host header)\n",
            ));
        }
        Some(match (path, method) {
            ("/inspect", &Method::GET | &Method::HEAD) => page(headers),
            ("/inspect/events", &Method::GET | &Method::HEAD) => {
                match Filter::parse(query.unwrap_or_default(), inspector.max_events()) {
                    Ok(filter) => json_text(inspector.list_off_thread(filter).await),
                    Err(e) => json_response(StatusCode::BAD_REQUEST, &ErrorBody { error: e }),
                }
            }
            ("/inspect/counts", &Method::GET | &Method::HEAD) => {
                json_response(StatusCode::OK, &inspector.snapshot())
            }
            ("/inspect/reset", &Method::POST) => {
                // A page of another site open in the operator's browser
                // could post here (a simple request needs no preflight).
                if cross_site(headers) {
                    return Some(ApiError::OriginRefused.into_response());
                }
                inspector.reset();
                empty(StatusCode::NO_CONTENT)
            }
            ("/inspect" | "/inspect/events" | "/inspect/counts", _) => {
                ApiError::MethodNotAllowed("GET, HEAD").into_response()
            }
            ("/inspect/reset", _) => ApiError::MethodNotAllowed("POST").into_response(),
            _ => ApiError::NotFound.into_response(),
        })
    }

    /// Taps a request that was refused as a whole (a client error; shed
    /// and failing-output answers are not refusals: the client retries).
    pub(super) fn inspect_refused(&self, e: &ApiError, channel: &Channel) {
        let Some(inspector) = self.inspector() else {
            return;
        };
        let status = e.status();
        if !status.is_client_error()
            || matches!(e, ApiError::AllRejected(_))
            || status == StatusCode::TOO_MANY_REQUESTS
        {
            return;
        }
        let error = e.to_string();
        inspector.rejected(
            RejectedView {
                time: self.state.parts.clock.now(),
                reason: e.code(),
                error: &error,
                index: None,
                raw: None,
            },
            channel,
            status.as_u16(),
        );
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

fn json_text(body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Whether the `Host` header names an IP address or `localhost` (any port).
fn host_is_address(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(HOST).and_then(|v| v.to_str().ok()) else {
        // HTTP/1.0 without Host: not from a browser.
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split_once(']')
                .is_some_and(|(a, _)| a.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// Whether a request names an `Origin` other than the host it was sent to.
fn cross_site(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, h)| h);
    origin_host.is_none() || origin_host != host
}

/// The page, gzipped when the client takes it.
fn page(headers: &HeaderMap) -> Response<Full<Bytes>> {
    let gzipped = crate::inspect::page_gzip().filter(|_| crate::tracker::accepts_gzip(headers));
    let mut resp = if let Some(gz) = gzipped {
        let mut r = Response::new(Full::new(gz));
        r.headers_mut()
            .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        Response::new(Full::new(Bytes::from_static(
            crate::inspect::PAGE.as_bytes(),
        )))
    };
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}
