//! `GET /v1/tracker.js` from the real binary: the headers browsers and CDNs
//! rely on, gzip within the 4 KiB bound, `304` for a matching
//! `If-None-Match`, `HEAD`, and the method check. (The script's behaviour:
//! `assets/tracker.test.mjs` in node and `tests/browser.rs` in Chromium.)

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::process::{ApiProcess, RawResponse, metric, request};

const PATH: &str = "/v1/tracker.js";
const SOURCE: &[u8] = include_bytes!("../assets/tracker.js");

/// The value of header `name` (lower-case) in a raw response head, if once.
fn header(r: &RawResponse, name: &str) -> Option<String> {
    let values: Vec<String> = r
        .head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
        .collect();
    assert!(values.len() <= 1, "{name} repeated: {}", r.head);
    values.into_iter().next()
}

fn assert_cacheable(r: &RawResponse, etag: &str) {
    assert_eq!(header(r, "etag").as_deref(), Some(etag), "{}", r.head);
    assert_eq!(
        header(r, "cache-control").as_deref(),
        Some("public, max-age=3600"),
        "{}",
        r.head
    );
    assert_eq!(
        header(r, "vary").as_deref(),
        Some("Accept-Encoding"),
        "{}",
        r.head
    );
}

#[tokio::test]
async fn tracker_js_is_served_cacheable_gzipped_and_revalidated() {
    let api = ApiProcess::start(&[]);
    let get = |headers: &'static [(&'static str, &'static str)]| {
        let addr = api.addr;
        async move { request(addr, "GET", PATH, headers, b"").await.unwrap() }
    };

    // Identity.
    let plain = get(&[]).await;
    assert_eq!(plain.status, 200, "{}", plain.head);
    assert!(
        plain.body == SOURCE,
        "not the repository's tracker byte for byte ({} bytes served, {} in the file)\n{}",
        plain.body.len(),
        SOURCE.len(),
        plain.head
    );
    assert_eq!(
        header(&plain, "content-type").as_deref(),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(header(&plain, "content-encoding"), None);
    assert_eq!(
        header(&plain, "x-content-type-options").as_deref(),
        Some("nosniff")
    );
    let etag = header(&plain, "etag").unwrap();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
        "a strong entity tag: {etag}"
    );
    assert_cacheable(&plain, &etag);

    // Gzip, as browsers ask for it.
    let gz = get(&[("Accept-Encoding", "gzip, deflate, br, zstd")]).await;
    assert_eq!(gz.status, 200);
    assert_eq!(header(&gz, "content-encoding").as_deref(), Some("gzip"));
    assert_eq!(
        header(&gz, "content-type").as_deref(),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(
        header(&gz, "content-length").unwrap(),
        gz.body.len().to_string()
    );
    assert!(
        gz.body.len() <= 4096,
        "tracker.js is {} bytes gzipped; the bound is 4 KiB",
        gz.body.len()
    );
    let memory = service_kit::server::BodyMemory::new(1 << 20);
    let inflated = tracking_api::body::inflate_bounded(&gz.body, 1 << 20, &memory).unwrap();
    assert_eq!(&inflated[..], SOURCE);
    let gz_etag = header(&gz, "etag").unwrap();
    assert_ne!(gz_etag, etag, "each encoding has its own strong tag");
    assert!(gz_etag.starts_with('"') && gz_etag.ends_with('"'));
    assert_cacheable(&gz, &gz_etag);

    // Refused gzip.
    let refused = get(&[("Accept-Encoding", "gzip;q=0, identity")]).await;
    assert_eq!(refused.body, SOURCE);
    assert_eq!(header(&refused, "content-encoding"), None);

    // Revalidation: the tag the client holds (either encoding, in a list,
    // or weak) answers 304 with the validators and no body.
    for (inm, gzip) in [
        (etag.clone(), false),
        (gz_etag.clone(), true),
        (format!("\"other\", {gz_etag}"), true),
        (format!("W/{etag}"), false),
        ("*".to_owned(), false),
    ] {
        let mut headers = vec![("If-None-Match", inm.as_str())];
        if gzip {
            headers.push(("Accept-Encoding", "gzip"));
        }
        let r = request(api.addr, "GET", PATH, &headers, b"").await.unwrap();
        assert_eq!(r.status, 304, "If-None-Match: {inm}\n{}", r.head);
        assert!(r.body.is_empty());
        assert_cacheable(&r, if gzip { &gz_etag } else { &etag });
    }
    let stale = request(api.addr, "GET", PATH, &[("If-None-Match", "\"0-0\"")], b"")
        .await
        .unwrap();
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, SOURCE);

    // HEAD: the headers of GET, no body.
    let head = request(api.addr, "HEAD", PATH, &[("Accept-Encoding", "gzip")], b"")
        .await
        .unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        header(&head, "content-length").unwrap(),
        gz.body.len().to_string()
    );
    assert_cacheable(&head, &gz_etag);

    // Other methods.
    let post = request(api.addr, "POST", PATH, &[], b"x").await.unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(header(&post, "allow").as_deref(), Some("GET, HEAD"));

    assert_eq!(
        metric(
            &api,
            "tracking_http_requests_total{route=\"tracker\",status=\"200\"}"
        )
        .await,
        5.0
    );
    assert_eq!(
        metric(
            &api,
            "tracking_http_requests_total{route=\"tracker\",status=\"304\"}"
        )
        .await,
        5.0
    );
}
