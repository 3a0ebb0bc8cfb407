//! CORS for browser senders. Listed origins may send with credentials (the
//! visitor cookie) and read responses; `*` lets any other origin send without
//! credentials. `*` is never combined with credentials.

use http::HeaderValue;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, HeaderMap, VARY,
};

/// Request headers a browser may send on a preflighted request.
/// `authorization` and `x-retry-count` are what analytics.js (the Segment
/// browser SDK) sends with every call, `x-write-key` the other way to name
/// a write key.
const ALLOWED_HEADERS: &str = "content-type, content-encoding, authorization, x-write-key, x-retry-count, traceparent, tracestate, x-env";

#[derive(Debug, Clone, Default)]
pub struct Cors {
    origins: Vec<HeaderValue>,
    any: bool,
}

/// What an `Origin` header earns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No `Origin` header: not a CORS request.
    NotCors,
    /// A listed origin: echoed back, with credentials.
    Credentialed(HeaderValue),
    /// Unlisted, but `*` is configured: no credentials.
    Anonymous,
    /// Not allowed: no CORS headers, the browser keeps the response from the page.
    Refused,
}

impl Cors {
    pub fn new(configured: &[String]) -> Self {
        Self {
            any: configured.iter().any(|o| o == "*"),
            origins: configured
                .iter()
                .filter(|o| *o != "*")
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
                .collect(),
        }
    }

    pub fn decide(&self, request: &HeaderMap) -> Decision {
        let Some(origin) = request.get(http::header::ORIGIN) else {
            return Decision::NotCors;
        };
        if self
            .origins
            .iter()
            .any(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
        {
            Decision::Credentialed(origin.clone())
        } else if self.any {
            Decision::Anonymous
        } else {
            Decision::Refused
        }
    }

    /// Adds the response headers for a simple (non-preflight) request.
    pub fn apply(decision: &Decision, response: &mut HeaderMap) {
        match decision {
            Decision::Credentialed(origin) => {
                response.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                response.insert(
                    ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
                response.append(VARY, HeaderValue::from_static("Origin"));
            }
            Decision::Anonymous => {
                response.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
            }
            Decision::NotCors | Decision::Refused => {
                if !matches!(decision, Decision::NotCors) {
                    response.append(VARY, HeaderValue::from_static("Origin"));
                }
            }
        }
    }

    /// Adds the preflight headers; `false` when the preflight is refused.
    pub fn apply_preflight(decision: &Decision, response: &mut HeaderMap) -> bool {
        Self::apply(decision, response);
        if !matches!(decision, Decision::Credentialed(_) | Decision::Anonymous) {
            return false;
        }
        response.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST, GET, OPTIONS"),
        );
        response.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        response.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("7200"));
        true
    }
}
