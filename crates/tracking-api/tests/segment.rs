//! The Segment HTTP Tracking API (docs/API.md "Segment HTTP Tracking API"),
//! driven through `App::handle` without a socket: routes, write keys,
//! bodies and limits, answers, mapping, sessions shared with `/v1/events`.
//! The official SDKs run against the binary in `segment_sdks.rs` and
//! `segment_browser.rs`.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::io::Write;

use base64::Engine;
use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn basic(key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

/// An app with keys `wk1` (source `web`) and `srv` (server-side `backend`).
fn keyed() -> TestApp {
    TestApp::new(Options {
        segment_args: vec![
            "--write-keys",
            "wk1=web",
            "--server-write-keys",
            "srv=backend",
        ],
        ..Options::default()
    })
}

async fn send(
    t: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::post(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (resp, bytes) = t.send(req.body(Full::new(body.into())).unwrap()).await;
    let j = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        json(&bytes)
    };
    (resp.status(), j)
}

fn assert_error(status: StatusCode, body: &serde_json::Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn every_call_type_on_every_route() {
    let t = keyed();
    let auth = basic("wk1");
    let h = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let calls = [
        ("/v1/track", r#"{"userId":"u","event":"E1"}"#, "track"),
        ("/v1/t", r#"{"userId":"u","event":"E2"}"#, "track"),
        (
            "/v1/page",
            r#"{"userId":"u","name":"Home","category":"Docs"}"#,
            "page",
        ),
        ("/v1/p", r#"{"userId":"u"}"#, "page"),
        ("/v1/screen", r#"{"userId":"u","name":"Cart"}"#, "screen"),
        ("/v1/s", r#"{"userId":"u"}"#, "screen"),
        (
            "/v1/identify",
            r#"{"userId":"u","traits":{"plan":"pro"}}"#,
            "identify",
        ),
        ("/v1/i", r#"{"userId":"u"}"#, "identify"),
        ("/v1/group", r#"{"userId":"u","groupId":"g1"}"#, "group"),
        ("/v1/g", r#"{"userId":"u","groupId":"g2"}"#, "group"),
        ("/v1/alias", r#"{"userId":"u","previousId":"p1"}"#, "alias"),
        ("/v1/a", r#"{"userId":"u","previousId":"p2"}"#, "alias"),
    ];
    for (path, body, _) in calls {
        let (status, j) = send(&t, path, &h, body.to_owned()).await;
        assert_eq!(status, StatusCode::OK, "{path}: {j}");
        assert_eq!(j, serde_json::json!({"success": true}), "{path}");
    }
    for path in ["/v1/batch", "/v1/b", "/b"] {
        let (status, j) = send(
            &t,
            path,
            &h,
            r#"{"batch":[{"type":"track","userId":"u","event":"B"}]}"#.to_owned(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{path}: {j}");
    }
    let out = t.sink.take();
    let got: Vec<&str> = out.iter().map(|e| e["call"].as_str().unwrap()).collect();
    let mut expected: Vec<&str> = calls.iter().map(|c| c.2).collect();
    expected.extend(["track"; 3]);
    assert_eq!(got, expected);
    for e in &out {
        assert_eq!(e["type"], e["call"]);
        assert_eq!(e["source"], "web");
        assert_eq!(e["user_id"], "u");
        assert_eq!(e["client_id"], "u");
    }
    assert_eq!(out[0]["event"], "E1");
    assert_eq!(out[2]["event"], "Home");
    assert_eq!(out[2]["category"], "Docs");
    assert_eq!(out[4]["event"], "Cart");
    assert_eq!(out[6]["traits"], serde_json::json!({"plan": "pro"}));
    assert_eq!(out[8]["group_id"], "g1");
    assert_eq!(out[10]["previous_id"], "p1");
    // Other methods on these paths.
    let (resp, _) = t
        .send(
            Request::get("/v1/batch")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "POST, OPTIONS");
}

#[tokio::test]
async fn write_keys() {
    let t = keyed();
    let call = r#"{"batch":[{"type":"track","userId":"u","event":"E"}]}"#;
    // Basic auth, X-Write-Key, or writeKey in the body; each names its source.
    let auth = basic("wk1");
    let (s, _) = send(
        &t,
        "/v1/batch",
        &[("authorization", &auth)],
        call.to_owned(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = send(&t, "/v1/batch", &[("x-write-key", "srv")], call.to_owned()).await;
    assert_eq!(s, StatusCode::OK);
    let in_body = r#"{"batch":[{"type":"track","userId":"u","event":"E"}],"writeKey":"wk1"}"#;
    let (s, _) = send(&t, "/b", &[], in_body.to_owned()).await;
    assert_eq!(s, StatusCode::OK);
    let sources: Vec<_> = t.sink.take().iter().map(|e| e["source"].clone()).collect();
    assert_eq!(sources, ["web", "backend", "web"]);

    // Missing, unknown, or unknown in the body: 401, nothing written.
    let (s, j) = send(&t, "/v1/batch", &[], call.to_owned()).await;
    assert_error(s, &j, StatusCode::UNAUTHORIZED, "unauthorized");
    let bad = basic("nope");
    let (s, j) = send(&t, "/v1/batch", &[("authorization", &bad)], call.to_owned()).await;
    assert_error(s, &j, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, j) = send(
        &t,
        "/v1/t",
        &[],
        r#"{"userId":"u","event":"E","writeKey":"nope"}"#.to_owned(),
    )
    .await;
    assert_error(s, &j, StatusCode::UNAUTHORIZED, "unauthorized");
    // An unknown key in the headers is refused before the body is read:
    // even a malformed body gets 401.
    let (s, j) = send(&t, "/v1/t", &[("authorization", &bad)], "{".to_owned()).await;
    assert_error(s, &j, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(t.sink.take().is_empty());
    assert!(t.deadletters.0.lock().unwrap().is_empty());

    // No key configured: any key (or none) is taken, and names the source.
    let open = TestApp::new(Options::default());
    let (s, _) = send(
        &open,
        "/v1/batch",
        &[("x-write-key", "anything")],
        call.to_owned(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = send(&open, "/v1/batch", &[], call.to_owned()).await;
    assert_eq!(s, StatusCode::OK);
    let sources: Vec<_> = open
        .sink
        .take()
        .iter()
        .map(|e| e["source"].clone())
        .collect();
    assert_eq!(sources, ["anything", "default"]);
}

#[tokio::test]
async fn only_server_keys_set_the_address() {
    let t = keyed();
    let call = r#"{"userId":"u","event":"E","context":{"ip":"198.51.100.7","userAgent":"Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"}}"#;
    let (s, _) = send(
        &t,
        "/v1/track",
        &[
            ("x-write-key", "srv"),
            ("user-agent", "analytics-python/2.4.0"),
        ],
        call.to_owned(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = send(
        &t,
        "/v1/track",
        &[
            ("x-write-key", "wk1"),
            ("user-agent", "analytics-python/2.4.0"),
        ],
        call.to_owned(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let out = t.sink.take();
    assert_eq!(out[0]["ip"], "198.51.100.0", "the server key's context.ip");
    assert_eq!(
        out[1]["ip"], "203.0.113.0",
        "a browser key gets the connection's"
    );
    for e in &out {
        // context.userAgent, not the SDK's own header.
        assert_eq!(e["ua"]["name"], "Safari", "{e}");
        assert_eq!(
            e["context"]["ip"], "198.51.100.7",
            "context is kept as sent"
        );
    }
}

#[tokio::test]
async fn bodies_gzip_text_plain_and_any_type() {
    let t = TestApp::new(Options::default());
    let batch =
        br#"{"batch":[{"type":"track","anonymousId":"a","event":"Zipped"}],"writeKey":"k"}"#;
    let (s, _) = send(
        &t,
        "/b",
        &[("content-type", "text/plain"), ("content-encoding", "gzip")],
        gzip(batch),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = send(
        &t,
        "/v1/t",
        &[("content-type", "application/x-www-form-urlencoded")],
        r#"{"anonymousId":"a","event":"Form"}"#.to_owned(),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::OK,
        "the body is JSON whatever the header says"
    );
    let events: Vec<_> = t.sink.take().iter().map(|e| e["event"].clone()).collect();
    assert_eq!(events, ["Zipped", "Form"]);
    let (s, j) = send(&t, "/b", &[("content-encoding", "br")], batch.to_vec()).await;
    assert_error(
        s,
        &j,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let (s, j) = send(&t, "/b", &[("content-encoding", "gzip")], batch.to_vec()).await;
    assert_error(s, &j, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn limits() {
    let t = TestApp::new(Options::default());
    let call = |pad: usize| {
        format!(
            r#"{{"type":"track","anonymousId":"a","event":"E","properties":{{"p":"{}"}}}}"#,
            "x".repeat(pad)
        )
    };
    // 600 KB of batch: 413, as sent and as inflated.
    let calls: Vec<String> = (0..60).map(|_| call(10_000)).collect();
    let big = format!(r#"{{"batch":[{}]}}"#, calls.join(","));
    assert!(big.len() > 600_000);
    let (s, j) = send(&t, "/v1/batch", &[], big.clone()).await;
    assert_error(s, &j, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    let (s, j) = send(
        &t,
        "/v1/batch",
        &[("content-encoding", "gzip")],
        gzip(big.as_bytes()),
    )
    .await;
    assert_error(s, &j, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // A gzip bomb: 50 MB of zeros in about 50 KB.
    let bomb = gzip(&vec![0u8; 50 << 20]);
    let (s, j) = send(&t, "/v1/batch", &[("content-encoding", "gzip")], bomb).await;
    assert_error(s, &j, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // Just under 500 KB of batch is taken whole.
    let calls: Vec<String> = (0..49).map(|_| call(10_000)).collect();
    let fits = format!(r#"{{"batch":[{}]}}"#, calls.join(","));
    assert!(fits.len() > 490_000 && fits.len() < 512 * 1024);
    let (s, j) = send(&t, "/v1/batch", &[], fits).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    assert_eq!(t.sink.take().len(), 49);
    // A call of Segment's 32 KB passes; past 32 KiB it is refused: the
    // whole body on a single-call route, that call alone in a batch.
    let (s, _) = send(&t, "/v1/track", &[], call(32_000 - 80)).await;
    assert_eq!(s, StatusCode::OK);
    let (s, j) = send(&t, "/v1/track", &[], call(33_000)).await;
    assert_error(s, &j, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    let mixed = format!(r#"{{"batch":[{},{}]}}"#, call(33_000), call(10));
    let (s, j) = send(&t, "/v1/batch", &[], mixed).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(j["accepted"], 1);
    assert_eq!(j["rejected"][0]["index"], 0);
    assert_eq!(t.sink.take().len(), 2);
    let dead = t.deadletters.0.lock().unwrap().clone();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "call_too_large");
    // Many small calls: more than /v1/events takes (500), up to 4000.
    let small: Vec<String> = (0..4000)
        .map(|i| format!(r#"{{"type":"track","anonymousId":"v{i}","event":"E"}}"#))
        .collect();
    let (s, j) = send(
        &t,
        "/v1/batch",
        &[],
        format!(r#"{{"batch":[{}]}}"#, small.join(",")),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{j}");
    assert_eq!(t.sink.take().len(), 4000);
    let (s, j) = send(
        &t,
        "/v1/batch",
        &[],
        format!(r#"{{"batch":[{},{}]}}"#, small.join(","), small[0]),
    )
    .await;
    assert_error(s, &j, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
}

#[tokio::test]
async fn a_batch_context_cannot_multiply_the_output() {
    let t = TestApp::new(Options::default());
    // 4000 tiny calls under a 200 KB batch context: a 500 KB body that
    // would make 800 MB of output. Refused whole, nothing written.
    let calls = vec![r#"{"type":"track","event":"e","anonymousId":"amp"}"#; 4000].join(",");
    let body = format!(
        r#"{{"context":{{"big":"{}"}},"batch":[{calls}]}}"#,
        "x".repeat(200_000)
    );
    assert!(body.len() < 512 * 1024);
    let (s, j) = send(&t, "/v1/batch", &[], body).await;
    assert_error(s, &j, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert!(t.sink.take().is_empty());
    // A context that makes one call too large refuses that call alone.
    let body = format!(
        r#"{{"context":{{"big":"{}"}},"batch":[{{"type":"track","event":"e","anonymousId":"a"}}]}}"#,
        "x".repeat(33_000)
    );
    let (s, j) = send(&t, "/v1/batch", &[], body).await;
    assert_error(s, &j, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(
        t.deadletters.0.lock().unwrap()[0]["reason"],
        "call_too_large"
    );
    // An honest batch context is every call's, enrichment included.
    let body = r#"{"context":{"campaign":{"name":"w49","source":"news"},"userAgent":"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"},
        "batch":[{"type":"track","event":"e","anonymousId":"a"},{"type":"page","anonymousId":"b"}]}"#;
    let (s, _) = send(&t, "/v1/batch", &[], body.to_owned()).await;
    assert_eq!(s, StatusCode::OK);
    for e in t.sink.take() {
        assert_eq!(e["via"]["campaign"], "w49", "{e}");
        assert_eq!(e["ua"]["name"], "Chrome", "{e}");
    }
}

#[tokio::test]
async fn bad_bodies_and_bad_calls() {
    let t = TestApp::new(Options::default());
    let bodies: [&[u8]; 6] = [
        b"{",
        b"[]",
        br#"{"batch":{}}"#,
        br#"{"type":"track"}"#,
        br#"{"batch":[]}"#,
        b"\xff",
    ];
    for body in bodies {
        let (s, j) = send(&t, "/v1/batch", &[], body.to_vec()).await;
        assert_error(s, &j, StatusCode::BAD_REQUEST, "invalid_request");
    }
    // One invalid call of a batch: the rest are kept, it is dead-lettered.
    let (s, j) = send(
        &t,
        "/v1/batch",
        &[],
        r#"{"batch":[{"type":"track","anonymousId":"a","event":"ok1"},{"type":"track","event":"no user"},{"type":"track","anonymousId":"a","event":"ok2"}]}"#.to_owned(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        j,
        serde_json::json!({"success": true, "accepted": 2, "rejected": [{"index": 1, "error": "`userId` or `anonymousId` is required"}]})
    );
    let events: Vec<_> = t.sink.take().iter().map(|e| e["event"].clone()).collect();
    assert_eq!(events, ["ok1", "ok2"]);
    let dead = t.deadletters.0.lock().unwrap().clone();
    assert_eq!(dead[0]["reason"], "missing_user_id");
    assert_eq!(dead[0]["raw"], r#"{"type":"track","event":"no user"}"#);
    // Every call invalid: 400 with each reason.
    let (s, j) = send(&t, "/v1/track", &[], r#"{"anonymousId":"a"}"#.to_owned()).await;
    assert_error(s, &j, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(j["rejected"][0]["error"], "a track call needs `event`");
    let (s, j) = send(
        &t,
        "/v1/batch",
        &[],
        r#"{"batch":[{"type":"track","anonymousId":"a","event":"e","messageId":"caf\u00e9"}]}"#
            .to_owned(),
    )
    .await;
    assert_error(s, &j, StatusCode::BAD_REQUEST, "invalid_request");
    let (metrics, _) = (t.metrics().await.1, ());
    let text = String::from_utf8_lossy(&metrics);
    for reason in ["missing_user_id", "missing_event", "invalid_message_id"] {
        let line = format!("tracking_events_rejected_total{{reason=\"{reason}\"}} 1");
        assert!(text.lines().any(|l| l == line), "{line}");
    }
}

#[tokio::test]
async fn overload_answers_503_with_retry_after() {
    let t = TestApp::new(Options {
        queue: 2,
        hold_queue: true,
        ..Options::default()
    });
    let batch = |n: usize| {
        let calls: Vec<String> = (0..n)
            .map(|_| r#"{"type":"track","anonymousId":"a","event":"E"}"#.to_owned())
            .collect();
        format!(r#"{{"batch":[{}]}}"#, calls.join(","))
    };
    let (s, _) = send(&t, "/v1/batch", &[], batch(2)).await;
    assert_eq!(s, StatusCode::OK);
    let mut req = Request::post("/v1/batch");
    req = req.header("content-type", "application/json");
    let (resp, bytes) = t
        .send(req.body(Full::new(Bytes::from(batch(1)))).unwrap())
        .await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(json(&bytes)["code"], "service_unavailable");
    assert_eq!(t.sink.take().len(), 2, "nothing of the refused batch");
}

#[tokio::test]
async fn mapping_time_and_via() {
    let t = TestApp::new(Options::default());
    // The test clock reads 2025-11-13T02:13:20.000Z; the device clock is an
    // hour behind, and the call was made 5 s before the batch was sent.
    let (s, _) = send(
        &t,
        "/v1/batch",
        &[],
        r#"{"batch":[{"type":"track","anonymousId":"visitor-1","userId":"u1","event":"Order Completed","messageId":"0b9f9c1e-1c41-4c1c-9d3e-2f0f3e5b8a11",
            "timestamp":"2025-11-13T01:13:15.000Z","properties":{"total":9.99},"integrations":{"All":true},
            "context":{"library":{"name":"analytics-kotlin","version":"1.24.1"},"campaign":{"name":"w47","source":"news","medium":"email","term":"t"}}}],
          "sentAt":"2025-11-13T01:13:20.000Z","context":{"app":{"name":"Shop"}}}"#.to_owned(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let e = t.sink.take().remove(0);
    assert_eq!(e["event_id"], "0b9f9c1e-1c41-4c1c-9d3e-2f0f3e5b8a11");
    assert_eq!(e["client_id"], "visitor-1");
    assert_eq!(e["anonymous_id"], "visitor-1");
    assert_eq!(e["user_id"], "u1");
    assert_eq!(e["received_at"], "2025-11-13T02:13:20.000Z");
    assert_eq!(e["original_timestamp"], "2025-11-13T01:13:15.000Z");
    assert_eq!(e["sent_at"], "2025-11-13T01:13:20.000Z");
    assert_eq!(e["timestamp"], "2025-11-13T02:13:15.000Z");
    assert_eq!(e["properties"], serde_json::json!({"total": 9.99}));
    assert_eq!(e["integrations"], serde_json::json!({"All": true}));
    assert_eq!(e["context"]["library"]["name"], "analytics-kotlin");
    assert_eq!(
        e["context"]["app"]["name"], "Shop",
        "the batch's context under the call's"
    );
    assert_eq!(e["via"]["source"], "news");
    assert_eq!(e["via"]["medium"], "email");
    assert_eq!(e["via"]["campaign"], "w47");
    // The via is the visitor's: a later call without a campaign carries it.
    let (s, _) = send(
        &t,
        "/v1/p",
        &[],
        r#"{"anonymousId":"visitor-1","name":"Home"}"#.to_owned(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let e = t.sink.take().remove(0);
    assert_eq!(e["via"]["campaign"], "w47");
    assert_eq!(
        e["timestamp"], "2025-11-13T02:13:20.000Z",
        "no time sent: received"
    );
}

#[tokio::test]
async fn sessions_are_shared_with_v1_events() {
    let t = TestApp::new(Options::default());
    let (s, _) = send(
        &t,
        "/v1/t",
        &[],
        r#"{"anonymousId":"v-1","event":"A"}"#.to_owned(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = send(
        &t,
        "/v1/batch",
        &[],
        r#"{"batch":[{"type":"page","anonymousId":"v-1","userId":"someone"}]}"#.to_owned(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (resp, _) = t.post(r#"{"type":"page_view","client_id":"v-1"}"#).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (s, _) = send(
        &t,
        "/v1/t",
        &[],
        r#"{"anonymousId":"v-2","event":"A"}"#.to_owned(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let out = t.sink.take();
    let short = |i: usize| out[i]["session"]["short_id"].as_str().unwrap().to_owned();
    assert_eq!(out[0]["session"]["short_new"], true);
    assert_eq!(short(0), short(1));
    assert_eq!(short(0), short(2), "/v1/events with the same id");
    assert_eq!(out[2]["client_id"], "v-1");
    assert_ne!(short(0), short(3), "another visitor");
}

#[tokio::test]
async fn cors_preflight_and_settings() {
    let t = TestApp::new(Options {
        segment_args: vec!["--write-keys", "wk1=web"],
        ..Options::default()
    });
    let (resp, _) = t
        .send(
            Request::options("/v1/t")
                .header("origin", "https://shop.example")
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization,content-type,x-retry-count",
                )
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    let allowed = resp.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    for h in ["authorization", "content-type", "x-retry-count"] {
        assert!(allowed.split(", ").any(|a| a == h), "{allowed}");
    }
    // A call from an allowed origin is answered with its CORS headers; one
    // from another origin is refused and not written.
    let auth = basic("wk1");
    let call = r#"{"anonymousId":"a","event":"E"}"#;
    let (resp, _) = t
        .send(
            Request::post("/v1/t")
                .header("origin", "https://shop.example")
                .header("authorization", &auth)
                .body(Full::new(Bytes::from(call)))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    let (resp, bytes) = t
        .send(
            Request::post("/v1/t")
                .header("origin", "https://evil.example")
                .header("authorization", &auth)
                .body(Full::new(Bytes::from(call)))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(json(&bytes)["code"], "forbidden");
    assert_eq!(t.sink.take().len(), 1);
    let (resp, bytes) = t
        .send(
            Request::options("/v1/batch")
                .header("origin", "https://evil.example")
                .header("access-control-request-method", "POST")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    assert_eq!(json(&bytes)["code"], "forbidden");

    // Settings point the SDK's Segment.io destination here, from the Host.
    let get = |path: &str, host: &str| {
        Request::get(path.to_owned())
            .header("host", host.to_owned())
            .header("origin", "https://shop.example")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let (resp, bytes) = t
        .send(get("/v1/projects/wk1/settings", "t.example:8443"))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    let s = json(&bytes);
    assert_eq!(
        s["integrations"]["Segment.io"],
        serde_json::json!({"apiKey": "wk1", "apiHost": "t.example:8443/v1", "protocol": "http",
            "unbundledIntegrations": [], "addBundledMetadata": true, "maybeBundledConfigIds": {}})
    );
    assert_eq!(
        s["integrations"].as_object().unwrap().len(),
        1,
        "no other destination"
    );
    assert_eq!(s["metrics"]["sampleRate"], 0);
    let (resp, bytes) = t
        .send(get("/v1/projects/other/settings", "t.example"))
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json(&bytes)["code"], "unauthorized");

    // A configured public URL wins over the Host.
    let fixed = TestApp::new(Options {
        segment_args: vec!["--segment-public-url", "https://t.example.com"],
        ..Options::default()
    });
    let (resp, bytes) = fixed
        .send(get("/v1/projects/any/settings", "internal:8080"))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "public, max-age=300");
    let s = json(&bytes);
    assert_eq!(
        s["integrations"]["Segment.io"]["apiHost"],
        "t.example.com/v1"
    );
    assert_eq!(s["integrations"]["Segment.io"]["protocol"], "https");
}
