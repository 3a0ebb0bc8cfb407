//! The HTTP contract of docs/API.md, driven through `App::handle` without a socket.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;

fn body(s: &str) -> Full<Bytes> {
    Full::new(Bytes::from(s.to_owned()))
}

fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test]
async fn single_event_is_accepted_with_204_and_enriched() {
    let t = TestApp::new(Options::default());
    let req = post("")
        .header("user-agent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36")
        .body(body(r#"{"type":"page_view","client_id":"v1","ts":1762999999000,"url":"https://shop.example/?utm_source=news&utm_campaign=w47","props":{"sku":"A-1"}}"#))
        .unwrap();
    let (resp, bytes) = t.send(req).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(bytes.is_empty());
    let events = t.sink.take();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e["type"], "page_view");
    assert_eq!(e["client_id"], "v1");
    assert_eq!(e["client_ts"], 1762999999000u64);
    assert_eq!(e["received_at"], "2025-11-13T02:13:20.000Z");
    assert_eq!(e["props"]["sku"], "A-1");
    assert_eq!(e["session"]["status"], "ok");
    assert_eq!(e["session"]["short_new"], true);
    assert_eq!(e["via"]["source"], "news");
    assert_eq!(e["via"]["campaign"], "w47");
    assert_eq!(e["ip"], "203.0.113.0");
    assert_eq!(e["ua"]["name"], "Chrome");
    assert_eq!(e["ua"]["os"], "Windows 10");
    assert!(e["event_id"].as_str().unwrap().len() == 36);
}

#[tokio::test]
async fn partial_batch_answers_200_and_dead_letters_the_rest() {
    let t = TestApp::new(Options::default());
    let (resp, bytes) = t
        .post(r#"{"events":[{"type":"a","client_id":"v1"},{"type":"Bad","client_id":"v1"},7,{"type":"c","client_id":"v1"}]}"#)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let j = json(&bytes);
    assert_eq!(j["accepted"], 2);
    let rejected = j["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["index"], 1);
    assert!(rejected[0]["error"].as_str().unwrap().contains("type"));
    assert_eq!(rejected[1]["index"], 2);
    let types: Vec<_> = t.sink.take().iter().map(|e| e["type"].clone()).collect();
    assert_eq!(types, ["a", "c"]);
    let dead = t.deadletters.0.lock().unwrap().clone();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0]["reason"], "invalid_type");
    assert_eq!(dead[0]["index"], 1);
    assert_eq!(dead[0]["raw"], r#"{"type":"Bad","client_id":"v1"}"#);
    assert_eq!(dead[1]["reason"], "not_an_object");
    assert_eq!(dead[1]["raw"], "7");
}

#[tokio::test]
async fn bad_bodies_answer_400_with_an_error() {
    let t = TestApp::new(Options::default());
    for (input, fragment) in [
        ("{not json", "not a JSON event object"),
        ("[]", "expected a JSON object"),
        (r#"{"events":[]}"#, "no events"),
        (r#"{"events":{}}"#, "must be an array"),
    ] {
        let (resp, bytes) = t.post(input).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{input}");
        let err = json(&bytes)["error"].as_str().unwrap().to_owned();
        assert!(err.contains(fragment), "{input}: {err}");
    }
    // Every event invalid: 400, with the per-event reasons, all dead-lettered.
    let (resp, bytes) = t
        .post(r#"{"events":[{"type":"X"},{"client_id":"v"}]}"#)
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let j = json(&bytes);
    assert_eq!(j["error"], "every event was rejected");
    assert_eq!(j["rejected"].as_array().unwrap().len(), 2);
    assert_eq!(t.deadletters.0.lock().unwrap().len(), 2);
    assert!(t.sink.take().is_empty());
}

#[tokio::test]
async fn limits_answer_413() {
    let t = TestApp::new(Options {
        max_body: 1000,
        max_batch: 3,
        ..Options::default()
    });
    // Declared too large.
    let big = format!(
        r#"{{"type":"t","client_id":"v","props":{{"p":"{}"}}}}"#,
        "x".repeat(2000)
    );
    let (resp, _) = t.post(&big).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Too large without a Content-Length (streamed).
    let req = Request::post("/v1/events")
        .body(chunked(big.clone().into_bytes()))
        .unwrap();
    let resp = t.app.handle(req, "127.0.0.1:1".parse().unwrap()).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Too many events.
    let (resp, bytes) = t
        .post(r#"{"events":[{"type":"a","client_id":"v"},{"type":"a","client_id":"v"},{"type":"a","client_id":"v"},{"type":"a","client_id":"v"}]}"#)
        .await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        json(&bytes)["error"]
            .as_str()
            .unwrap()
            .contains("at most 3")
    );
    assert!(t.sink.take().is_empty());
}

/// A body in 100-byte chunks with no declared length.
struct Chunked(std::collections::VecDeque<Bytes>);

impl http_body::Body for Chunked {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

fn chunked(data: Vec<u8>) -> Chunked {
    Chunked(data.chunks(100).map(Bytes::copy_from_slice).collect())
}

#[tokio::test]
async fn gzip_is_accepted_and_a_gzip_bomb_is_refused_cheaply() {
    let t = TestApp::new(Options::default());
    let batch = format!(
        r#"{{"events":[{}]}}"#,
        (0..100)
            .map(|i| format!(r#"{{"type":"app_open","client_id":"m1","props":{{"i":{i}}}}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    let req = Request::post("/v1/events")
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(Full::new(Bytes::from(gzip(batch.as_bytes(), 6))))
        .unwrap();
    let (resp, _) = t.send(req).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(t.sink.take().len(), 100);

    // 512 gzip members of 1 MiB of zeros each: ~520 KiB on the wire (within the
    // body limit), 512 MiB inflated (far past the 1 MiB inflated limit).
    let member = gzip(&vec![0u8; 1 << 20], 9);
    let bomb = member.repeat(512);
    assert!(bomb.len() < 1 << 20, "bomb is {} bytes", bomb.len());
    let started = Instant::now();
    let req = Request::post("/v1/events")
        .header("content-encoding", "gzip")
        .body(Full::new(Bytes::from(bomb)))
        .unwrap();
    let (resp, bytes) = t.send(req).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        json(&bytes)["error"]
            .as_str()
            .unwrap()
            .contains("decompressed")
    );
    // Inflating stops at the limit: far less work than the 256 MiB.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let req = Request::post("/v1/events")
        .header("content-encoding", "gzip")
        .body(body("not gzip at all"))
        .unwrap();
    let (resp, _) = t.send(req).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn other_media_types_and_encodings_answer_415() {
    let t = TestApp::new(Options::default());
    for (name, value) in [
        ("content-type", "application/x-www-form-urlencoded"),
        ("content-type", "multipart/form-data; boundary=x"),
        ("content-encoding", "br"),
    ] {
        let req = Request::post("/v1/events")
            .header(name, value)
            .body(body(r#"{"type":"t","client_id":"v"}"#))
            .unwrap();
        let (resp, bytes) = t.send(req).await;
        assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{value}");
        assert!(
            json(&bytes)["error"]
                .as_str()
                .unwrap()
                .contains("unsupported")
        );
    }
    // application/json is as good as text/plain; no Content-Type is read as JSON.
    for ct in [Some("application/json"), None] {
        let mut req = Request::post("/v1/events");
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let (resp, _) = t
            .send(req.body(body(r#"{"type":"t","client_id":"v"}"#)).unwrap())
            .await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{ct:?}");
    }
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let t = TestApp::new(Options {
        queue: 3,
        hold_queue: true,
        ..Options::default()
    });
    let (resp, _) = t
        .post(r#"{"events":[{"type":"a","client_id":"v"},{"type":"a","client_id":"v"}]}"#)
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (resp, bytes) = t
        .post(r#"{"events":[{"type":"a","client_id":"v"},{"type":"a","client_id":"v"}]}"#)
        .await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert!(
        json(&bytes)["error"]
            .as_str()
            .unwrap()
            .contains("queue is full")
    );
    // Nothing of the refused request was taken.
    assert_eq!(t.sink.take().len(), 2);
    // One more still fits.
    let (resp, _) = t.post(r#"{"type":"a","client_id":"v"}"#).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn too_many_requests_in_flight_answer_503_quickly() {
    let t = Arc::new(TestApp::new(Options {
        max_inflight: 1,
        store: Some(slow_memory_store(Duration::from_millis(300))),
        session_timeout: Duration::from_secs(5),
        ..Options::default()
    }));
    let t2 = Arc::clone(&t);
    let first =
        tokio::spawn(async move { t2.post(r#"{"type":"a","client_id":"v"}"#).await.0.status() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let (resp, _) = t.post(r#"{"type":"a","client_id":"v"}"#).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(first.await.unwrap(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let t = TestApp::new(Options::default());
    let (resp, _) = t.send(Request::get("/nope").body(body("")).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let (resp, _) = t
        .send(Request::get("/v1/events").body(body("")).unwrap())
        .await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "POST, OPTIONS");
    let (resp, _) = t
        .send(Request::post("/v1/pixel.gif").body(body("")).unwrap())
        .await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn cors_for_listed_unlisted_and_any_origins() {
    let t = TestApp::new(Options::default());
    // Listed origin: echoed, with credentials, on the event response...
    let req = post("")
        .header("origin", "https://shop.example")
        .body(body(r#"{"type":"t","client_id":"v"}"#))
        .unwrap();
    let (resp, _) = t.send(req).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    assert_eq!(resp.headers()["access-control-allow-credentials"], "true");
    assert_eq!(resp.headers()["vary"], "Origin");
    // ...also on errors, so the page can read them...
    let req = post("")
        .header("origin", "https://shop.example")
        .body(body("{"))
        .unwrap();
    let (resp, _) = t.send(req).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    // ...and on the preflight.
    let req = Request::options("/v1/events")
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .body(body(""))
        .unwrap();
    let (resp, _) = t.send(req).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    assert_eq!(resp.headers()["access-control-allow-credentials"], "true");
    assert!(
        resp.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert!(
        resp.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("content-type")
    );

    // Unlisted origin: refused (a simple request needs no preflight), no
    // CORS headers, nothing written; preflight refused.
    let _ = t.sink.take();
    let req = post("")
        .header("origin", "https://evil.example")
        .body(body(r#"{"type":"t","client_id":"v"}"#))
        .unwrap();
    let (resp, _) = t.send(req).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    assert!(
        t.sink.take().is_empty(),
        "an unlisted origin's event was written"
    );
    let req = Request::options("/v1/events")
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .body(body(""))
        .unwrap();
    let (resp, _) = t.send(req).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.headers().get("access-control-allow-origin").is_none());

    // `*`: any origin without credentials; listed ones keep credentials.
    let any = TestApp::new(Options {
        cors: vec!["*".into(), "https://shop.example".into()],
        ..Options::default()
    });
    let req = post("")
        .header("origin", "https://blog.example")
        .body(body(r#"{"type":"t","client_id":"v"}"#))
        .unwrap();
    let (resp, _) = any.send(req).await;
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    assert!(
        resp.headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
    let req = post("")
        .header("origin", "https://shop.example")
        .body(body(r#"{"type":"t","client_id":"v"}"#))
        .unwrap();
    let (resp, _) = any.send(req).await;
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    assert_eq!(resp.headers()["access-control-allow-credentials"], "true");
}

#[tokio::test]
async fn visitor_cookie_is_set_once_and_reused() {
    let t = TestApp::new(Options::default());
    let (resp, _) = t.post(r#"{"type":"page_view"}"#).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.starts_with("_tid="), "{set}");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax") && set.contains("Secure"),
        "{set}"
    );
    let id = set["_tid=".len()..].split(';').next().unwrap().to_owned();
    let first = t.sink.take().remove(0);
    assert_eq!(first["client_id"], id.as_str());

    // The browser sends it back: no new cookie, same visitor, same session.
    let req = post("")
        .header("cookie", format!("other=1; _tid={id}"))
        .body(body(r#"{"type":"add_to_cart"}"#))
        .unwrap();
    let (resp, _) = t.send(req).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.headers().get("set-cookie").is_none());
    let second = t.sink.take().remove(0);
    assert_eq!(second["client_id"], id.as_str());
    assert_eq!(second["session"]["short_id"], first["session"]["short_id"]);
    assert_eq!(second["session"]["short_new"], false);

    // An explicit client_id needs no cookie and sets none.
    let (resp, _) = t.post(r#"{"type":"t","client_id":"app-1"}"#).await;
    assert!(resp.headers().get("set-cookie").is_none());
}

#[tokio::test]
async fn sessions_follow_the_clock_and_via_sticks() {
    let t = TestApp::new(Options::default());
    let send = |body: &'static str| {
        let t = &t;
        async move {
            let (resp, _) = t.post(body).await;
            assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{body}");
            t.sink.take().remove(0)
        }
    };
    let a = send(r#"{"type":"page_view","client_id":"v","via":{"source":"aff","medium":"cpa","campaign":"c9"}}"#).await;
    t.clock.advance(Duration::from_secs(29 * 60));
    let b = send(r#"{"type":"page_view","client_id":"v"}"#).await;
    t.clock.advance(Duration::from_secs(30 * 60));
    let c = send(r#"{"type":"purchase","client_id":"v"}"#).await;
    assert_eq!(a["session"]["short_id"], b["session"]["short_id"]);
    assert_ne!(b["session"]["short_id"], c["session"]["short_id"]);
    assert_eq!(c["session"]["short_new"], true);
    assert_eq!(c["session"]["long_new"], false);
    assert_eq!(a["session"]["long_id"], c["session"]["long_id"]);
    // The via recorded by the first event is credited to the purchase.
    assert_eq!(c["via"]["source"], "aff");
    assert_eq!(c["via"]["campaign"], "c9");
    t.clock.advance(Duration::from_secs(30 * 86_400));
    let d = send(r#"{"type":"page_view","client_id":"v"}"#).await;
    assert_eq!(d["via"], serde_json::Value::Null);
}

#[tokio::test]
async fn batch_events_of_one_visitor_resolve_in_order() {
    let t = TestApp::new(Options::default());
    let (resp, _) = t
        .post(r#"{"events":[{"type":"a","client_id":"m"},{"type":"b","client_id":"m","url":"app://x?utm_source=push"},{"type":"c","client_id":"m"},{"type":"d","client_id":"n"}]}"#)
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let e = t.sink.take();
    let types: Vec<_> = e.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["a", "b", "c", "d"]);
    assert_eq!(e[0]["session"]["short_new"], true);
    assert_eq!(e[1]["session"]["short_new"], false);
    assert_eq!(e[0]["via"], serde_json::Value::Null);
    assert_eq!(e[1]["via"]["source"], "push");
    assert_eq!(e[2]["via"]["source"], "push");
    assert_eq!(e[3]["via"], serde_json::Value::Null);
    assert_ne!(e[3]["session"]["long_id"], e[0]["session"]["long_id"]);
}

#[tokio::test]
async fn a_slow_or_broken_store_degrades_to_unavailable_sessions() {
    for store in [
        slow_memory_store(Duration::from_secs(10)) as Arc<dyn tracking_core::SessionStore>,
        Arc::new(BrokenStore),
    ] {
        let t = TestApp::new(Options {
            store: Some(store),
            session_timeout: Duration::from_millis(50),
            ..Options::default()
        });
        let started = Instant::now();
        let (resp, _) = t.post(r#"{"type":"t","client_id":"v"}"#).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert!(started.elapsed() < Duration::from_secs(2));
        let e = t.sink.take().remove(0);
        assert_eq!(e["session"]["status"], "unavailable");
        assert_eq!(e["session"]["short_id"], serde_json::Value::Null);
        let (_, metrics) = t.metrics().await;
        let metrics = String::from_utf8(metrics.to_vec()).unwrap();
        assert!(
            metrics.contains("tracking_sessions_total{outcome=\"unavailable\"} 1"),
            "{metrics}"
        );
    }
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let trusting = TestApp::new(Options {
        trusted_proxies: vec!["203.0.113.0/24"],
        ..Options::default()
    });
    let distrusting = TestApp::new(Options::default());
    for (t, expected) in [(&trusting, "198.51.100.0"), (&distrusting, "203.0.113.0")] {
        let req = post("")
            .header("x-forwarded-for", "198.51.100.23")
            .body(body(r#"{"type":"t","client_id":"v"}"#))
            .unwrap();
        t.send(req).await;
        assert_eq!(t.sink.take()[0]["ip"], expected);
    }
}

#[tokio::test]
async fn pixel_always_answers_a_gif() {
    let t = TestApp::new(Options::default());
    let req = Request::get("/v1/pixel.gif?type=page_view&client_id=old-1&via_source=mail")
        .header("referer", "https://shop.example/item/9")
        .body(body(""))
        .unwrap();
    let (resp, bytes) = t.send(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "image/gif");
    assert_eq!(resp.headers()["cache-control"], "no-store, max-age=0");
    assert_eq!(&bytes[..6], b"GIF89a");
    let e = t.sink.take().remove(0);
    assert_eq!(e["type"], "page_view");
    assert_eq!(e["url"], "https://shop.example/item/9");
    assert_eq!(e["via"]["source"], "mail");

    // Invalid: still a GIF; the reason goes to the dead letters.
    let (resp, bytes) = t
        .send(
            Request::get("/v1/pixel.gif?type=Nope&client_id=v")
                .body(body(""))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(&bytes[..6], b"GIF89a");
    let dead = t.deadletters.0.lock().unwrap().clone();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "invalid_type");

    // No client_id: the visitor cookie is set, as for beacons.
    let (resp, _) = t
        .send(
            Request::get("/v1/pixel.gif?type=pv")
                .body(body(""))
                .unwrap(),
        )
        .await;
    assert!(
        resp.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("_tid=")
    );
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let t = TestApp::new(Options::default());
    let (resp, _) = t
        .send(Request::get("/healthz").body(body("")).unwrap())
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (resp, _) = t
        .send(Request::get("/readyz").body(body("")).unwrap())
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    t.app.state().set_ready(false);
    let (resp, _) = t
        .send(Request::get("/readyz").body(body("")).unwrap())
        .await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);

    t.post(r#"{"type":"t","client_id":"v"}"#).await;
    t.post(r#"{"type":"T","client_id":"v"}"#).await;
    let (resp, bytes) = t.metrics().await;
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let m = String::from_utf8(bytes.to_vec()).unwrap();
    for line in [
        "tracking_http_requests_total{route=\"events\",status=\"204\"} 1",
        "tracking_http_requests_total{route=\"events\",status=\"400\"} 1",
        "tracking_http_requests_total{route=\"readyz\",status=\"503\"} 1",
        "tracking_events_accepted_total 1",
        "tracking_events_rejected_total{reason=\"invalid_type\"} 1",
        "tracking_http_request_duration_seconds_count{route=\"events\"} 2",
        "tracking_memory_store_visitors 1",
        "tracking_ready 0",
    ] {
        assert!(m.contains(line), "missing `{line}` in\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_shedding_turns_readiness_off_and_calm_turns_it_back_on() {
    let t = Arc::new(TestApp::new(Options {
        max_inflight: 2,
        store: Some(slow_memory_store(Duration::from_millis(150))),
        session_timeout: Duration::from_secs(5),
        ..Options::default()
    }));
    let guard = Arc::clone(&t.app.state().parts.overload);
    let ready = |t: &Arc<TestApp>| {
        let t = Arc::clone(t);
        async move {
            t.send(Request::get("/readyz").body(body("")).unwrap())
                .await
                .0
                .status()
        }
    };
    // One "second" of overload: 10 requests at once against 2 slots.
    let overloaded_second = |t: &Arc<TestApp>| {
        let t = Arc::clone(t);
        async move {
            let sends: Vec<_> = (0..10)
                .map(|i| {
                    let t = Arc::clone(&t);
                    tokio::spawn(async move {
                        let started = Instant::now();
                        let body = format!(r#"{{"type":"a","client_id":"v{i}"}}"#);
                        let status = t.post(&body).await.0.status();
                        (status, started.elapsed())
                    })
                })
                .collect();
            let mut ok = 0;
            for s in sends {
                let (status, took) = s.await.unwrap();
                match status {
                    StatusCode::NO_CONTENT => ok += 1,
                    StatusCode::SERVICE_UNAVAILABLE => {
                        assert!(took < Duration::from_millis(100), "shed slowly: {took:?}")
                    }
                    other => panic!("unexpected {other}"),
                }
            }
            assert_eq!(ok, 2, "the admitted requests succeed");
        }
    };
    for second in 1..=9 {
        overloaded_second(&t).await;
        guard.tick();
        assert_eq!(
            ready(&t).await,
            StatusCode::OK,
            "still ready after {second} s"
        );
    }
    overloaded_second(&t).await;
    guard.tick();
    assert_eq!(
        ready(&t).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unready after 10 s"
    );
    let (_, metrics) = t.metrics().await;
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    assert!(metrics.contains("tracking_overloaded 1"), "{metrics}");
    assert!(
        metrics.contains("process_resident_memory_bytes "),
        "{metrics}"
    );
    // Calm: back after 5 quiet seconds, not before.
    for _ in 0..4 {
        guard.tick();
    }
    assert_eq!(ready(&t).await, StatusCode::SERVICE_UNAVAILABLE);
    guard.tick();
    assert_eq!(ready(&t).await, StatusCode::OK);
    assert_eq!(guard.flips(), 2);
}
