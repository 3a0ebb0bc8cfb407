//! The event inspector's JSON API (`/inspect/…` on the admin listener),
//! in process and against the binary: what it lists and counts for each
//! route and outcome, reset, its bounds, and that it is off unless asked
//! for outside the embedded default. The page itself is driven in Chromium
//! by `tests/inspect_browser.rs`.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use common::process::{ApiProcess, post_json, request};
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

fn inspecting(max_events: usize, max_bytes: usize) -> TestApp {
    TestApp::new(Options {
        inspect: Some((max_events, max_bytes)),
        dedup: Some(Duration::from_secs(86_400)),
        segment_args: vec!["--write-keys", "wk1=web"],
        ..Options::default()
    })
}

async fn get(t: &TestApp, path: &str) -> (StatusCode, Value) {
    let (resp, body) = t
        .admin(Request::get(path).body(Full::new(Bytes::new())).unwrap())
        .await;
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (resp.status(), v)
}

async fn events(t: &TestApp, query: &str) -> Vec<Value> {
    let (status, v) = get(t, &format!("/inspect/events?{query}")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v["events"].as_array().unwrap().clone()
}

async fn counts(t: &TestApp) -> Value {
    let (status, v) = get(t, "/inspect/counts").await;
    assert_eq!(status, StatusCode::OK);
    v
}

async fn reset(t: &TestApp, headers: &[(&str, &str)]) -> StatusCode {
    let mut req = Request::post("/inspect/reset");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    t.admin(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .0
        .status()
}

#[tokio::test]
async fn a_mixed_batch_is_listed_newest_first_with_what_was_output() {
    let t = inspecting(1000, 4 << 20);
    let batch = r#"{"events":[
        {"type":"page_view","client_id":"v1","event_id":"e1","url":"https://shop.example/"},
        {"type":"add_to_cart","client_id":"v1","event_id":"e2","props":{"sku":"A-1"}},
        {"type":"BAD TYPE","client_id":"v1"},
        {"type":"checkout","client_id":"v2","via":{"source":"mail"}}]}"#;
    let (resp, body) = t.post(batch).await;
    assert_eq!(resp.status(), StatusCode::OK, "{body:?}");
    let output = t.sink.take();
    assert_eq!(output.len(), 3);

    assert_eq!(
        counts(&t).await,
        json!({"accepted": 3, "rejected": 1, "duplicate": 0, "dropped": 0, "held": 4,
               "held_bytes": counts(&t).await["held_bytes"], "max_events": 1000, "max_bytes": 4 << 20})
    );
    let listed = events(&t, "").await;
    assert_eq!(listed.len(), 4);
    let seqs: Vec<u64> = listed.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );

    // Each accepted entry carries its event exactly as output, and the
    // answer the request got (200: one event refused).
    let accepted = events(&t, "status=accepted").await;
    assert_eq!(accepted.len(), 3);
    for entry in &accepted {
        let out = output
            .iter()
            .find(|o| o["event_id"] == entry["event"]["event_id"])
            .unwrap();
        assert_eq!(&entry["event"], out);
        assert_eq!(entry["answer"], 200);
        assert_eq!(entry["source"], "events");
        assert_eq!(entry["type"], out["type"]);
        assert_eq!(entry["client_id"], out["client_id"]);
        assert_eq!(entry["time"], out["received_at"]);
    }
    // The address shown is the anonymised one the output has.
    assert_eq!(accepted[0]["event"]["ip"], "203.0.113.0");

    let rejected = events(&t, "status=rejected").await;
    assert_eq!(rejected.len(), 1);
    let r = &rejected[0];
    assert_eq!(r["reason"], "invalid_type", "{r}");
    assert!(r["error"].as_str().unwrap().contains("type"), "{r}");
    assert_eq!(r["index"], 2);
    assert_eq!(r["raw"], r#"{"type":"BAD TYPE","client_id":"v1"}"#);
    assert_eq!(r["client_id"], "v1");
    assert!(r.get("event").is_none());

    // Filters.
    assert_eq!(events(&t, "type=add_to_cart").await.len(), 1);
    assert_eq!(events(&t, "client_id=v2").await[0]["type"], "checkout");
    assert_eq!(events(&t, "q=A-1").await[0]["type"], "add_to_cart");
    assert_eq!(events(&t, "q=a-1").await.len(), 1, "case-insensitive");
    assert_eq!(events(&t, "source=pixel").await.len(), 0);
    assert_eq!(events(&t, "limit=2").await.len(), 2);
    let after = seqs[1];
    assert_eq!(events(&t, &format!("after={after}")).await.len(), 1);
    let (status, v) = get(&t, "/inspect/events?status=lost").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("accepted, rejected or duplicate")
    );

    // A retry of the batch: every valid event a duplicate, answered as
    // accepted (204: the retried request has no refusal).
    let (resp, _) = t
        .post(r#"{"events":[{"type":"page_view","client_id":"v1","event_id":"e1"},{"type":"add_to_cart","client_id":"v1","event_id":"e2"}]}"#)
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let dups = events(&t, "status=duplicate").await;
    assert_eq!(dups.len(), 2);
    assert_eq!(dups[0]["event_id"], "e2");
    assert_eq!(dups[0]["answer"], 204);
    assert_eq!(dups[0]["accepted_at"], accepted[0]["time"]);
    assert_eq!(counts(&t).await["duplicate"], 2);

    // Reset empties it and zeroes the counts; the sequence goes on.
    assert_eq!(reset(&t, &[]).await, StatusCode::NO_CONTENT);
    let c = counts(&t).await;
    assert_eq!(
        (c["accepted"].as_u64(), c["held"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(events(&t, "").await.is_empty());
    t.post(r#"{"type":"page_view","client_id":"v3"}"#).await;
    let after_reset = events(&t, "").await;
    assert_eq!(after_reset.len(), 1);
    assert!(after_reset[0]["seq"].as_u64().unwrap() > seqs[0]);
    assert_eq!(after_reset[0]["answer"], 204);
}

#[tokio::test]
async fn pixels_segment_calls_and_refused_requests_are_listed() {
    let t = inspecting(1000, 4 << 20);
    let pixel = |q: &str| {
        Request::get(format!("/v1/pixel.gif?{q}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    t.send(pixel("type=page_view&client_id=p1&via_source=mail"))
        .await;
    t.send(pixel("type=Nope%20Nope&client_id=p1")).await;
    let px = events(&t, "source=pixel").await;
    assert_eq!(px.len(), 2);
    assert_eq!(px[0]["status"], "rejected");
    assert_eq!(
        px[0]["answer"], 200,
        "a pixel is always answered with the GIF"
    );
    assert!(
        px[0]["raw"].as_str().unwrap().contains("Nope Nope"),
        "{}",
        px[0]
    );
    assert_eq!(px[1]["event"]["via"]["source"], "mail");

    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("wk1:")
    );
    let (resp, _) = t
        .send(
            Request::post("/v1/track")
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(
                    br#"{"anonymousId":"a1","event":"Order Completed","messageId":"m1"}"#,
                )))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let seg = events(&t, "source=segment/web").await;
    assert_eq!(seg.len(), 1);
    assert_eq!(seg[0]["event"]["call"], "track");
    assert_eq!(seg[0]["event"]["event"], "Order Completed");
    assert_eq!(seg[0]["event_id"], "m1");
    assert_eq!(seg[0]["answer"], 200);

    // A wrong write key: the request is refused as a whole.
    let (resp, _) = t
        .send(
            Request::post("/v1/track")
                .header("authorization", "Basic d3Jvbmc6")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(
                    br#"{"anonymousId":"a1","event":"E"}"#,
                )))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let refused = &events(&t, "source=segment").await[0];
    assert_eq!(refused["reason"], "unauthorized", "{refused}");
    assert_eq!(refused["answer"], 401);
    assert_eq!(refused["index"], Value::Null);
    assert_eq!(
        refused["raw"],
        Value::Null,
        "nothing the outputs do not write"
    );

    // A body that is not JSON, on the events route.
    let (resp, _) = t.post("{not json").await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let bad = &events(&t, "source=events&status=rejected").await[0];
    assert_eq!(bad["reason"], "invalid_request");
    assert_eq!(bad["answer"], 400);
    assert_eq!(counts(&t).await["rejected"], 3);
}

#[tokio::test]
async fn it_is_bounded_in_entries_and_bytes_and_counts_what_it_drops() {
    let t = inspecting(50, 64 << 10);
    let props = "x".repeat(1000);
    for batch in 0..6 {
        let events: Vec<String> = (0..50)
            .map(|i| {
                format!(r#"{{"type":"t","client_id":"v{batch}-{i}","props":{{"p":"{props}"}}}}"#)
            })
            .collect();
        let (resp, _) = t
            .post(&format!(r#"{{"events":[{}]}}"#, events.join(",")))
            .await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    }
    let c = counts(&t).await;
    assert_eq!(c["accepted"], 300, "every event counted: {c}");
    assert!(c["held"].as_u64().unwrap() <= 50, "{c}");
    assert!(c["held_bytes"].as_u64().unwrap() <= 64 << 10, "{c}");
    // 50 a second in bursts of 50: most of 300 sent at once are dropped.
    assert!(c["dropped"].as_u64().unwrap() >= 200, "{c}");
    let listed = events(&t, "limit=1000").await;
    assert_eq!(listed.len() as u64, c["held"].as_u64().unwrap());
    let (_, metrics) = t.metrics().await;
    let text = String::from_utf8_lossy(&metrics);
    let dropped = c["dropped"].as_u64().unwrap();
    assert!(
        text.lines()
            .any(|l| l == format!("tracking_inspect_dropped_total {dropped}")),
        "{text}"
    );
}

#[tokio::test]
async fn reset_from_another_site_and_wrong_methods_are_refused() {
    let t = inspecting(10, 1 << 20);
    assert_eq!(
        reset(
            &t,
            &[
                ("origin", "https://evil.example"),
                ("host", "127.0.0.1:9464")
            ]
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        reset(
            &t,
            &[
                ("origin", "http://127.0.0.1:9464"),
                ("host", "127.0.0.1:9464")
            ]
        )
        .await,
        StatusCode::NO_CONTENT
    );
    let (resp, _) = t
        .admin(
            Request::delete("/inspect/events")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let (resp, _) = t
        .admin(
            Request::get("/inspect/reset")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn entries_keep_the_order_of_their_batch() {
    let t = inspecting(1000, 4 << 20);
    let (resp, _) = t
        .post(r#"{"events":[{"type":"a","client_id":"o1","event_id":"x"},{"type":"b","client_id":"o1","event_id":"x"},{"type":"c","client_id":"o1"}]}"#)
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let listed = events(&t, "").await;
    let order: Vec<(&str, &str)> = listed
        .iter()
        .rev()
        .map(|e| (e["status"].as_str().unwrap(), e["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        order,
        [("accepted", "a"), ("duplicate", "b"), ("accepted", "c")],
        "oldest first"
    );
}

#[tokio::test]
async fn names_other_than_addresses_long_searches_and_head() {
    let t = inspecting(10, 1 << 20);
    let with_host = |host: &'static str| {
        Request::get("/inspect/counts")
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    // A page of another site whose name now points here (DNS rebinding).
    let (resp, _) = t.admin(with_host("rebind.evil.example:9464")).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    for host in ["127.0.0.1:9464", "localhost:9464", "[::1]:9464", "10.1.2.3"] {
        let (resp, _) = t.admin(with_host(host)).await;
        assert_eq!(resp.status(), StatusCode::OK, "{host}");
    }
    let (status, v) = get(&t, &format!("/inspect/events?q={}", "x".repeat(257))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("at most 256"));
    for path in ["/inspect/events", "/inspect/counts", "/inspect"] {
        let (resp, _) = t
            .admin(Request::head(path).body(Full::new(Bytes::new())).unwrap())
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "HEAD {path}");
    }
    // gzip refused with a zero weight, in any spelling.
    for ae in ["gzip;q=0", "gzip; q=0.0", "GZIP;q=0.000"] {
        let (resp, _) = t
            .admin(
                Request::get("/inspect")
                    .header("accept-encoding", ae)
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await;
        assert!(resp.headers().get("content-encoding").is_none(), "{ae}");
    }
    let (resp, _) = t
        .admin(
            Request::get("/inspect")
                .header("accept-encoding", "br, GZIP;q=0.5")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    // A reset shows in the list, for pages polling with `after=`.
    let (_, before) = get(&t, "/inspect/events").await;
    reset(&t, &[]).await;
    let (_, after) = get(&t, "/inspect/events").await;
    assert_eq!(after["resets"], before["resets"].as_u64().unwrap() + 1);
}

#[tokio::test]
async fn off_it_answers_404_saying_how_to_turn_it_on() {
    let t = TestApp::new(Options::default());
    for path in ["/inspect", "/inspect/events", "/inspect/counts"] {
        let (resp, body) = t
            .admin(Request::get(path).body(Full::new(Bytes::new())).unwrap())
            .await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert!(String::from_utf8_lossy(&body).contains("TRACKING_INSPECT=on"));
    }
}

/// `VmRSS` of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// The binary: on by default with the embedded default, off with a
/// backend unless asked for; the page is served gzipped; and its memory
/// stays within its bound when sent far more than it holds.
#[tokio::test]
async fn the_binary_holds_no_more_than_its_bound() {
    let on = ApiProcess::start(&[
        ("TRACKING_INSPECT_MAX_EVENTS", "100000"),
        ("TRACKING_INSPECT_MAX_BYTES", "2MiB"),
        ("TRACKING_DEADLETTER", "discard"),
    ]);
    let off = ApiProcess::start(&[("TRACKING_INSPECT", "off")]);
    let page = request(
        on.admin,
        "GET",
        "/inspect",
        &[("accept-encoding", "gzip")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-encoding"), Some("gzip"));
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let none = request(off.admin, "GET", "/inspect/counts", &[], b"")
        .await
        .unwrap();
    assert_eq!(none.status, 404);
    let public = request(on.addr, "GET", "/inspect", &[], b"").await.unwrap();
    assert_eq!(public.status, 404, "never on the public listener");

    // Dead letters discarded: a rejected event's input is not shown either.
    let r = post_json(
        on.addr,
        r#"{"type":"NOPE","client_id":"secret","props":{"email":"a@example.com"}}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    let listed: Value = serde_json::from_slice(
        &request(on.admin, "GET", "/inspect/events?status=rejected", &[], b"")
            .await
            .unwrap()
            .body,
    )
    .unwrap();
    let rejected = &listed["events"][0];
    assert_eq!(rejected["reason"], "invalid_type", "{listed}");
    assert_eq!(
        (&rejected["raw"], &rejected["client_id"]),
        (&Value::Null, &Value::Null),
        "{rejected}"
    );
    request(on.admin, "POST", "/inspect/reset", &[], b"")
        .await
        .unwrap();

    // 40 MB of events (4 KB each) to both: the inspector keeps 2 MiB.
    let props = "y".repeat(4000);
    let batch: Vec<String> = (0..100)
        .map(|i| format!(r#"{{"type":"t","client_id":"v{i}","props":{{"p":"{props}"}}}}"#))
        .collect();
    let body = format!(r#"{{"events":[{}]}}"#, batch.join(","));
    for _ in 0..100 {
        for api in [&on, &off] {
            let r = post_json(api.addr, &body).await.unwrap();
            assert_eq!(r.status, 204);
        }
    }
    let c: Value = serde_json::from_slice(
        &request(on.admin, "GET", "/inspect/counts", &[], b"")
            .await
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(c["accepted"], 10_000, "{c}");
    assert!(c["held_bytes"].as_u64().unwrap() <= 2 << 20, "{c}");
    assert!(
        c["held"].as_u64().unwrap() >= 400,
        "it did keep entries: {c}"
    );
    let (rss_on, rss_off) = (rss(on.child.id()), rss(off.child.id()));
    eprintln!("RSS with the inspector (2 MiB bound) {rss_on} B, without {rss_off} B");
    // The bound counts the entries' text; the allocator's own overhead
    // (freed entries' pages it keeps) comes on top.
    let bound = 2u64 << 20;
    assert!(
        rss_on < rss_off + 4 * bound + (4 << 20),
        "RSS {rss_on} with the inspector vs {rss_off} without"
    );
}

/// With Bigtable sessions and the Pub/Sub sink (disk acknowledgement): off
/// unless asked for; on, each accepted entry is the message the topic got,
/// with its Bigtable sessions, and a retried batch is listed as duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_bigtable_and_pubsub_it_shows_what_the_topic_got() {
    use common::process::bootstrap;
    use test_support::pubsub::{pull_until, topic_with_subscription};
    use test_support::{BigtableEmulator, PubsubEmulator};

    let bt = BigtableEmulator::bigtable();
    let ps = PubsubEmulator::pubsub();
    let (bt_host, ps_host) = (bt.host(), ps.host());
    let spool = tempfile::tempdir().unwrap();
    let mut env: Vec<(&str, &str)> = vec![
        ("TRACKING_SESSION_STORE", "bigtable"),
        ("TRACKING_BIGTABLE_PROJECT", "p"),
        ("TRACKING_BIGTABLE_INSTANCE", "i"),
        ("BIGTABLE_EMULATOR_HOST", &bt_host),
        ("TRACKING_SESSION_TIMEOUT", "10s"),
        ("TRACKING_BIGTABLE_ATTEMPT_TIMEOUT", "3s"),
        ("TRACKING_SINK", "pubsub"),
        ("TRACKING_PUBSUB_PROJECT", "test-project"),
        ("TRACKING_PUBSUB_TOPIC", "events"),
        ("PUBSUB_EMULATOR_HOST", &ps_host),
        ("TRACKING_ACK", "disk"),
        ("TRACKING_SPOOL_DIR", spool.path().to_str().unwrap()),
        ("TRACKING_DEADLETTER", "discard"),
    ];
    bootstrap(&env);
    let sub = topic_with_subscription(&ps_host, "test-project", "events").await;
    {
        let off = ApiProcess::start(&env);
        let r = request(off.admin, "GET", "/inspect/events", &[], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 404, "off by default with a backend");
    }
    env.push(("TRACKING_INSPECT", "on"));
    let api = ApiProcess::start(&env);
    let batch: Vec<String> = (0..5)
        .map(|i| format!(r#"{{"type":"buy","client_id":"bt-{i}","event_id":"bt-e{i}"}}"#))
        .chain([r#"{"type":"NOPE"}"#.to_owned()])
        .collect();
    let body = format!(r#"{{"events":[{}]}}"#, batch.join(","));
    for _ in 0..2 {
        let r = post_json(api.addr, &body).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    }
    let messages = pull_until(&ps_host, &sub, Duration::from_secs(60), |m| m.len() >= 5).await;
    assert_eq!(messages.len(), 5, "each event once");
    let listed: Value = serde_json::from_slice(
        &request(
            api.admin,
            "GET",
            "/inspect/events?status=accepted",
            &[],
            b"",
        )
        .await
        .unwrap()
        .body,
    )
    .unwrap();
    let accepted = listed["events"].as_array().unwrap();
    assert_eq!(accepted.len(), 5);
    for m in &messages {
        let data: Value = serde_json::from_slice(&m.data).unwrap();
        let entry = accepted
            .iter()
            .find(|e| e["event_id"] == data["event_id"])
            .unwrap();
        assert_eq!(entry["event"], data, "the entry is the message");
        assert_eq!(data["session"]["status"], "ok");
    }
    let c: Value = serde_json::from_slice(
        &request(api.admin, "GET", "/inspect/counts", &[], b"")
            .await
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(
        (&c["accepted"], &c["rejected"], &c["duplicate"]),
        (&json!(5), &json!(2), &json!(5)),
        "{c}"
    );
}
