//! Reading request bodies within bounds: size as sent, time to arrive (the
//! deadline of service-kit's `RequestBody`), size after decompression, and
//! the process's memory for bodies ([`BodyMemory`]).

use std::io::Read;
use std::sync::Arc;

use http::HeaderMap;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http_body::Body;
use service_kit::server::{BodyBuf, BodyMemory, ReadError};

/// What a body's headers say about how to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyReadError {
    /// As sent: too large, too late, no memory left (ours), or the
    /// connection failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("decompressed body exceeds {0} bytes")]
    InflatedTooLarge(usize),
    #[error("body is not valid gzip: {0}")]
    BadGzip(String),
    #[error("unsupported Content-Type `{0}`: send application/json or text/plain")]
    UnsupportedType(String),
    #[error("unsupported Content-Encoding `{0}`: send gzip or nothing")]
    UnsupportedEncoding(String),
}

/// Which `Content-Type`s a route reads as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// `application/json` or sendBeacon's `text/plain` (absent is JSON).
    JsonOrText,
    /// Any: the Segment API reads every body as JSON, whatever the header
    /// says, as Segment's own does.
    Any,
}

/// Checks `Content-Type` (see [`Media`]), `Content-Encoding` and a declared
/// `Content-Length`.
pub fn check_headers(
    headers: &HeaderMap,
    media: Media,
    max_body: usize,
) -> Result<Encoding, BodyReadError> {
    if let Some(ct) = headers
        .get(CONTENT_TYPE)
        .filter(|_| media == Media::JsonOrText)
    {
        let ct = ct.to_str().unwrap_or_default();
        let media = ct.split(';').next().unwrap_or_default().trim();
        if !media.eq_ignore_ascii_case("application/json")
            && !media.eq_ignore_ascii_case("text/plain")
        {
            return Err(BodyReadError::UnsupportedType(
                ct.chars().take(100).collect(),
            ));
        }
    }
    let encoding = match headers
        .get(CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim())
    {
        None | Some("") => Encoding::Identity,
        Some(e) if e.eq_ignore_ascii_case("identity") => Encoding::Identity,
        Some(e) if e.eq_ignore_ascii_case("gzip") || e.eq_ignore_ascii_case("x-gzip") => {
            Encoding::Gzip
        }
        Some(e) => {
            return Err(BodyReadError::UnsupportedEncoding(
                e.chars().take(100).collect(),
            ));
        }
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return Err(ReadError::TooLarge(max_body).into());
    }
    Ok(encoding)
}

/// Reads a whole body into `memory`, refusing it as soon as it passes
/// `limit` bytes.
pub async fn read_body<B>(
    body: B,
    limit: usize,
    memory: &Arc<BodyMemory>,
) -> Result<BodyBuf, BodyReadError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Ok(service_kit::server::read_body(body, limit, memory).await?)
}

/// Inflates gzip (one or more members) into at most `limit` bytes of
/// `memory`; a larger output is refused as soon as it passes `limit`, so a
/// gzip bomb costs no more memory than an honest body.
pub fn inflate_bounded(
    gz: &[u8],
    limit: usize,
    memory: &Arc<BodyMemory>,
) -> Result<BodyBuf, BodyReadError> {
    let mut out = BodyBuf::new(memory, limit, None);
    #[allow(clippy::disallowed_methods)] // bounded by `out`'s limit just below
    let mut decoder = flate2::read::MultiGzDecoder::new(gz);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = decoder
            .read(&mut chunk)
            .map_err(|e| BodyReadError::BadGzip(e.to_string()))?;
        if n == 0 {
            return Ok(out);
        }
        out.extend(&chunk[..n]).map_err(|e| match e {
            ReadError::TooLarge(n) => BodyReadError::InflatedTooLarge(n),
            e => BodyReadError::Read(e),
        })?;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("gzip");
        e.finish().expect("gzip")
    }

    #[test]
    fn inflates_within_the_limit_and_the_memory() {
        let memory = BodyMemory::new(8 << 20);
        let inflate = |gz: &[u8], limit| inflate_bounded(gz, limit, &memory);
        let data = b"{\"type\":\"t\"}".repeat(10);
        assert_eq!(&inflate(&gzip(&data), data.len()).expect("fits")[..], data);
        assert!(matches!(
            inflate(&gzip(&data), data.len() - 1),
            Err(BodyReadError::InflatedTooLarge(_))
        ));
        assert!(matches!(
            inflate(b"not gzip", 100),
            Err(BodyReadError::BadGzip(_))
        ));
        let mut two = gzip(b"ab");
        two.extend(gzip(b"cd"));
        assert_eq!(&inflate(&two, 10).expect("two members")[..], b"abcd");
        // A bomb: 4 MiB of zeros in about 4 KiB, refused at 1 MiB.
        let bomb = gzip(&vec![0u8; 4 << 20]);
        assert!(bomb.len() < 8 << 10);
        assert!(matches!(
            inflate(&bomb, 1 << 20),
            Err(BodyReadError::InflatedTooLarge(_))
        ));
        assert_eq!(memory.used(), 0, "every buffer gave its bytes back");
        // Inflated bytes count in the memory: a quarter is kept for small bodies.
        let small = BodyMemory::new(1 << 20);
        assert!(matches!(
            inflate_bounded(&gzip(&vec![1u8; 800 << 10]), 1 << 20, &small),
            Err(BodyReadError::Read(ReadError::NoMemory))
        ));
    }

    #[test]
    fn header_rules() {
        let check = |pairs: &[(&str, &str)], expected: Result<Encoding, &str>| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(
                    http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    v.parse().expect("value"),
                );
            }
            let got = check_headers(&h, Media::JsonOrText, 100).map_err(|e| e.to_string());
            match expected {
                Ok(enc) => assert_eq!(got.ok(), Some(enc), "{pairs:?}"),
                Err(frag) => assert!(
                    got.as_ref().is_err_and(|e| e.contains(frag)),
                    "{pairs:?}: {got:?}"
                ),
            }
        };
        check(&[], Ok(Encoding::Identity));
        check(
            &[("content-type", "application/json")],
            Ok(Encoding::Identity),
        );
        check(
            &[("content-type", "text/plain;charset=UTF-8")],
            Ok(Encoding::Identity),
        );
        check(
            &[("content-type", "Application/JSON; charset=utf-8")],
            Ok(Encoding::Identity),
        );
        check(
            &[("content-type", "application/x-www-form-urlencoded")],
            Err("unsupported Content-Type"),
        );
        check(&[("content-encoding", "gzip")], Ok(Encoding::Gzip));
        check(
            &[("content-encoding", "br")],
            Err("unsupported Content-Encoding"),
        );
        check(&[("content-length", "101")], Err("exceeds 100"));
        check(&[("content-length", "100")], Ok(Encoding::Identity));
        let mut form = HeaderMap::new();
        form.insert(
            CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().expect("value"),
        );
        assert_eq!(
            check_headers(&form, Media::Any, 100).ok(),
            Some(Encoding::Identity)
        );
    }
}
