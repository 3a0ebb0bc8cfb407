//! `GET /v1/tracker.js`: the first-party browser tracker.
//!
//! The script (`assets/tracker.js`, tested by `assets/tracker.test.mjs`) is
//! embedded in the binary, so a deployment always serves the tracker that
//! matches its API, and its payload limits are set from this API's
//! configuration (`TRACKING_MAX_BATCH_EVENTS`, `TRACKING_MAX_BODY_BYTES`) at
//! start-up: a payload the tracker builds is never refused for its size.
//! Its gzip form and strong entity tags are computed once; a request costs a
//! header check and a reference-counted clone.

use std::io::Write;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, ETAG, IF_NONE_MATCH, VARY,
    X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// The tracker as it is in the repository.
pub const SOURCE: &str = include_str!("../assets/tracker.js");

/// The declarations of the script's payload limits, as written in
/// `SOURCE`, with the repository's values.
const BATCH_DECL: &str = "BATCH = 500,";
const PAYLOAD_DECL: &str = "PAYLOAD = 61440,";
/// The largest payload the script builds: 60 KiB, under the 64 KiB that
/// Chromium allows a page's keepalive requests in flight together.
const PAYLOAD_MAX: usize = 61_440;

/// How long browsers and CDNs may use it without asking again.
const CACHE_CONTROL_VALUE: &str = "public, max-age=3600";

/// One encoding of the script and its entity tag.
#[derive(Debug)]
struct Representation {
    body: Bytes,
    etag: HeaderValue,
}

/// The script as this API serves it.
#[derive(Debug)]
pub struct Script {
    identity: Representation,
    /// `None` only if compressing failed (then every client gets identity).
    gzip: Option<Representation>,
}

impl Script {
    /// The script with its batch limit set to `max_batch_events` and its
    /// payload size to `max_body_bytes` (at most 60 KiB).
    pub fn new(max_batch_events: usize, max_body_bytes: usize) -> Self {
        let text = SOURCE
            .replacen(BATCH_DECL, &format!("BATCH = {max_batch_events},"), 1)
            .replacen(
                PAYLOAD_DECL,
                &format!("PAYLOAD = {},", max_body_bytes.min(PAYLOAD_MAX)),
                1,
            );
        let source = Bytes::from(text);
        // A strong validator must differ between versions (and limits) and
        // between encodings of one version: a hash of the text served, and
        // the encoding.
        let tag = format!("{:x}-{:016x}", source.len(), fnv1a64(&source));
        let etag = |suffix: &str| {
            HeaderValue::from_str(&format!("\"{tag}{suffix}\""))
                .unwrap_or_else(|_| HeaderValue::from_static("\"tracker\""))
        };
        Self {
            gzip: gzip(&source).map(|body| Representation {
                body,
                etag: etag("-gzip"),
            }),
            identity: Representation {
                body: source,
                etag: etag(""),
            },
        }
    }

    /// The gzip-compressed script as served (for size checks).
    pub fn gzipped_len(&self) -> Option<usize> {
        self.gzip.as_ref().map(|r| r.body.len())
    }
}

/// `data` gzip-compressed at the best level (the tracker, the inspector's
/// page: compressed once, served many times).
pub(crate) fn gzip(data: &[u8]) -> Option<Bytes> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(data.len()), Compression::best());
    encoder.write_all(data).ok()?;
    encoder.finish().ok().map(Bytes::from)
}

/// 64-bit FNV-1a: a stable content hash for the entity tag.
fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The answer to `GET` or `HEAD /v1/tracker.js` (hyper leaves the body out
/// for `HEAD`): `304` when `If-None-Match` names this version, else `200`
/// with the script, gzip-compressed when the client accepts it.
pub fn response(asset: &Script, request: &HeaderMap) -> Response<Full<Bytes>> {
    let (chosen, gzipped) = match &asset.gzip {
        Some(gz) if accepts_gzip(request) => (gz, true),
        _ => (&asset.identity, false),
    };
    let not_modified = request
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| {
            // Weak comparison, as If-None-Match asks; either encoding's tag
            // means the client holds this version.
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            tag == "*"
                || tag == asset.identity.etag
                || asset.gzip.as_ref().is_some_and(|g| tag == g.etag)
        });
    let mut resp = if not_modified {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Full::new(chosen.body.clone()));
        let h = r.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        );
        h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        if gzipped {
            h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        r
    };
    let h = resp.headers_mut();
    h.insert(ETAG, chosen.etag.clone());
    h.insert(CACHE_CONTROL, HeaderValue::from_static(CACHE_CONTROL_VALUE));
    h.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    resp
}

/// Whether `Accept-Encoding` admits gzip: listed (or `*`) with a non-zero
/// quality (`q`, in either case).
pub(crate) fn accepts_gzip(request: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    for coding in request
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = coding.split(';');
        let name = parts.next().unwrap_or_default().trim();
        let q = parts
            .filter_map(|p| {
                let p = p.trim();
                p.strip_prefix("q=").or_else(|| p.strip_prefix("Q="))
            })
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(q > 0.0);
        } else if name == "*" {
            any = Some(q > 0.0);
        }
    }
    gzip.or(any).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(accept_encoding: &[&str], expected: bool) {
        let mut h = HeaderMap::new();
        for v in accept_encoding {
            h.append(ACCEPT_ENCODING, HeaderValue::from_str(v).expect("header"));
        }
        assert_eq!(accepts_gzip(&h), expected, "{accept_encoding:?}");
    }

    #[test]
    fn accept_encoding() {
        check(&[], false);
        check(&["gzip"], true);
        check(&["gzip, deflate, br, zstd"], true);
        check(&["br", "GZip;q=0.5"], true);
        check(&["deflate, br"], false);
        check(&["gzip;q=0"], false);
        check(&["GZIP;Q=0.000"], false);
        check(&["gzip; q=0.0, br"], false);
        check(&["*"], true);
        check(&["*;q=0"], false);
        check(&["*, gzip;q=0"], false);
        check(&["identity"], false);
        check(&["x-gzip"], true);
    }

    #[test]
    fn the_limits_are_the_apis() {
        let text = |s: &Script| String::from_utf8(s.identity.body.to_vec()).expect("utf-8");
        // The defaults serve the repository's script byte for byte.
        let default = Script::new(500, 1_048_576);
        assert_eq!(default.identity.body, SOURCE.as_bytes());
        let lower = Script::new(20, 4096);
        let served = text(&lower);
        assert!(served.contains("BATCH = 20,"), "{served}");
        assert!(served.contains("PAYLOAD = 4096,"), "{served}");
        assert_eq!(
            served.replacen("BATCH = 20,", BATCH_DECL, 1).replacen(
                "PAYLOAD = 4096,",
                PAYLOAD_DECL,
                1
            ),
            text(&default),
            "only the two limits differ"
        );
        assert_ne!(lower.identity.etag, default.identity.etag);
        // Never above what the keepalive quota allows.
        assert!(text(&Script::new(500, 10_000_000)).contains(PAYLOAD_DECL));
    }

    #[test]
    fn fnv_is_the_published_function() {
        // Test vectors of FNV-1a 64.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
