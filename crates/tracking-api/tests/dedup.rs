//! Deduplication of client-given event ids (`TRACKING_DEDUP_WINDOW`) on the
//! memory store, in process: a retried event is answered as accepted and
//! output once; a batch mixing retries and new events outputs the new ones;
//! the window ends; ids the service assigned are never taken for retries;
//! a store that cannot answer marks the event `"dedup":"unchecked"`.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{BrokenStore, Options, TestApp, json};
use http_body_util::Full;

const DAY: Duration = Duration::from_secs(86_400);

fn app(window: Option<Duration>) -> TestApp {
    TestApp::new(Options {
        dedup: window,
        ..Options::default()
    })
}

/// A batch of `n` events of visitor `v` with ids `{prefix}-0…`.
fn batch(v: &str, prefix: &str, range: std::ops::Range<usize>) -> String {
    let events: Vec<String> = range
        .map(|i| format!(r#"{{"type":"page_view","client_id":"{v}","event_id":"{prefix}-{i}"}}"#))
        .collect();
    format!(r#"{{"events":[{}]}}"#, events.join(","))
}

fn ids(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn metric(t: &TestApp, name: &str) -> f64 {
    let (_, body) = t.metrics().await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in metrics"))
}

#[tokio::test]
async fn a_batch_sent_three_times_is_output_once() {
    let t = app(Some(DAY));
    let body = batch("v1", "e", 0..20);
    for _ in 0..3 {
        let (r, _) = t.post(&body).await;
        assert_eq!(r.status(), 204, "a retry is answered as accepted");
    }
    let out = t.sink.take();
    assert_eq!(out.len(), 20, "one copy of each event");
    assert_eq!(
        ids(&out),
        (0..20).map(|i| format!("e-{i}")).collect::<Vec<_>>()
    );
    assert_eq!(metric(&t, "tracking_events_duplicates_total").await, 40.0);
    assert_eq!(metric(&t, "tracking_events_accepted_total").await, 60.0);
    assert_eq!(metric(&t, "tracking_dedup_window_seconds").await, 86_400.0);
}

#[tokio::test]
async fn a_batch_of_retries_and_new_events_outputs_the_new_ones() {
    let t = app(Some(DAY));
    assert_eq!(t.post(&batch("v1", "e", 0..10)).await.0.status(), 204);
    // Half retries, half new; and a second visitor with the same ids is
    // another visitor's events.
    assert_eq!(t.post(&batch("v1", "e", 5..15)).await.0.status(), 204);
    assert_eq!(t.post(&batch("v2", "e", 0..3)).await.0.status(), 204);
    let out = t.sink.take();
    let mut want: Vec<String> = (0..15).map(|i| format!("e-{i}")).collect();
    want.extend((0..3).map(|i| format!("e-{i}")));
    assert_eq!(ids(&out), want);
    assert_eq!(metric(&t, "tracking_events_duplicates_total").await, 5.0);
}

#[tokio::test]
async fn a_retried_batch_of_the_largest_size_is_caught_whole() {
    let t = app(Some(DAY));
    let body = batch("v1", "big", 0..500);
    for _ in 0..2 {
        assert_eq!(t.post(&body).await.0.status(), 204);
    }
    assert_eq!(t.sink.take().len(), 500);
    assert_eq!(metric(&t, "tracking_events_duplicates_total").await, 500.0);
}

#[tokio::test]
async fn an_id_repeated_within_one_batch_is_output_once() {
    let t = app(Some(DAY));
    let body = r#"{"events":[{"type":"a","client_id":"v1","event_id":"x"},{"type":"b","client_id":"v1","event_id":"x"},{"type":"c","client_id":"v2","event_id":"x"}]}"#;
    assert_eq!(t.post(body).await.0.status(), 204);
    let out = t.sink.take();
    let types: Vec<&str> = out.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["a", "c"]);
}

#[tokio::test]
async fn every_event_is_a_duplicate_and_the_answer_is_still_accepted() {
    let t = app(Some(DAY));
    let body = batch("v1", "e", 0..3);
    assert_eq!(t.post(&body).await.0.status(), 204);
    let (r, _) = t.post(&body).await;
    assert_eq!(r.status(), 204);
    assert_eq!(t.sink.take().len(), 3);
    // Nothing kept of the admission: the queue is empty again.
    assert_eq!(t.sink.budget.used(), 0);
}

#[tokio::test]
async fn the_window_ends() {
    let t = app(Some(Duration::from_secs(3600)));
    let body = batch("v1", "e", 0..2);
    assert_eq!(t.post(&body).await.0.status(), 204);
    t.clock.advance(Duration::from_secs(3599));
    assert_eq!(t.post(&body).await.0.status(), 204);
    assert_eq!(t.sink.take().len(), 2, "within the window: retries");
    t.clock.advance(Duration::from_secs(1));
    assert_eq!(t.post(&body).await.0.status(), 204);
    assert_eq!(t.sink.take().len(), 2, "after the window: new events");
}

#[tokio::test]
async fn events_without_a_client_id_for_them_are_never_duplicates() {
    let t = app(Some(DAY));
    let body = r#"{"events":[{"type":"a","client_id":"v1"},{"type":"a","client_id":"v1"}]}"#;
    for _ in 0..2 {
        assert_eq!(t.post(body).await.0.status(), 204);
    }
    // The pixel has no id either.
    for _ in 0..2 {
        let req = http::Request::get("/v1/pixel.gif?type=open&client_id=v1")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(t.send(req).await.0.status(), 200);
    }
    assert_eq!(t.sink.take().len(), 6);
}

#[tokio::test]
async fn with_the_window_off_every_copy_is_output() {
    let t = app(None);
    let body = batch("v1", "e", 0..5);
    for _ in 0..3 {
        assert_eq!(t.post(&body).await.0.status(), 204);
    }
    assert_eq!(t.sink.take().len(), 15);
    assert_eq!(metric(&t, "tracking_dedup_window_seconds").await, 0.0);
}

#[tokio::test]
async fn an_unavailable_store_outputs_the_event_marked_unchecked() {
    let t = TestApp::new(Options {
        dedup: Some(DAY),
        store: Some(Arc::new(BrokenStore)),
        ..Options::default()
    });
    let body = r#"{"events":[{"type":"a","client_id":"v1","event_id":"x"},{"type":"a","client_id":"v1"}]}"#;
    for _ in 0..2 {
        assert_eq!(t.post(body).await.0.status(), 204);
    }
    let out = t.sink.take();
    assert_eq!(out.len(), 4, "at-least-once: every copy is output");
    let marks: Vec<&serde_json::Value> = out.iter().map(|e| &e["dedup"]).collect();
    assert_eq!(
        marks,
        [
            &serde_json::json!("unchecked"),
            &serde_json::Value::Null,
            &serde_json::json!("unchecked"),
            &serde_json::Value::Null
        ],
        "only events with a client-given id say so: {out:?}"
    );
    assert_eq!(
        metric(&t, "tracking_events_dedup_unchecked_total").await,
        2.0
    );
}

#[tokio::test]
async fn a_segment_message_id_is_deduplicated() {
    let t = TestApp::new(Options {
        dedup: Some(DAY),
        segment_args: vec!["--write-keys", "wk1=web"],
        ..Options::default()
    });
    let body = r#"{"batch":[{"type":"track","event":"Signed Up","anonymousId":"a1","messageId":"m-1"},{"type":"track","event":"Paid","anonymousId":"a1","messageId":"m-2"}],"writeKey":"wk1"}"#;
    for _ in 0..3 {
        let req = http::Request::post("/v1/batch")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let (r, b) = t.send(req).await;
        assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&b));
        assert_eq!(json(&b)["success"], true);
    }
    let out = t.sink.take();
    assert_eq!(ids(&out), ["m-1", "m-2"]);
}

// --- The binary: processes sharing a Bigtable table, the memory store,
// --- both acknowledgement modes, and Pub/Sub's `event_id` attribute.

mod processes {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use crate::common::process::{
        ApiProcess, bootstrap, metric, post_at_once, read_ndjson, request,
    };
    use test_support::BigtableEmulator;

    use super::batch;

    const SHORT_TTL: &str = "2s";

    /// A process on the Bigtable emulator at `host` (generous deadlines:
    /// the machine is shared), writing to the file `sink`, plus `extra`.
    fn bigtable_env(
        host: &str,
        sink: &Path,
        extra: &[(&'static str, &str)],
    ) -> Vec<(&'static str, String)> {
        let mut env: Vec<(&'static str, String)> = vec![
            ("TRACKING_SESSION_STORE", "bigtable".into()),
            ("TRACKING_BIGTABLE_PROJECT", "p".into()),
            ("TRACKING_BIGTABLE_INSTANCE", "i".into()),
            ("BIGTABLE_EMULATOR_HOST", host.into()),
            ("TRACKING_SESSION_TIMEOUT", "10s".into()),
            ("TRACKING_BIGTABLE_ATTEMPT_TIMEOUT", "3s".into()),
            ("TRACKING_SINK", "file".into()),
            ("TRACKING_SINK_PATH", sink.to_str().unwrap().into()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        env
    }

    fn as_strs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
        env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    async fn post(api: &ApiProcess, body: &str) -> u16 {
        request(
            api.addr,
            "POST",
            "/v1/events",
            &[("content-type", "text/plain")],
            body.as_bytes(),
        )
        .await
        .unwrap()
        .status
    }

    /// Every event id written to `sinks`, with how many times.
    fn copies(sinks: &[&Path]) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for sink in sinks {
            for e in read_ndjson(sink) {
                *out.entry(e["event_id"].as_str().unwrap().to_owned())
                    .or_insert(0) += 1;
            }
        }
        out
    }

    /// Waits (bounded) until `sinks` hold `n` events, then a little more
    /// for any that should not be there.
    async fn settle(sinks: &[&Path], n: usize) -> HashMap<String, usize> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while copies(sinks).values().sum::<usize>() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        copies(sinks)
    }

    fn assert_once(copies: &HashMap<String, usize>, ids: impl Iterator<Item = String>) {
        let ids: Vec<String> = ids.collect();
        let wrong: Vec<_> = ids
            .iter()
            .filter(|id| copies.get(*id) != Some(&1))
            .map(|id| (id, copies.get(id).copied().unwrap_or(0)))
            .collect();
        assert!(wrong.is_empty(), "not exactly one copy: {wrong:?}");
        assert_eq!(copies.len(), ids.len(), "no other event: {copies:?}");
    }

    /// The issue's scenario: the same batch (20 events with client ids) to
    /// A, again to B a second later, again to A after the short session
    /// TTL; then a batch half retries, half new, to B.
    async fn retried_across_two_processes(ack: &str) {
        let emu = BigtableEmulator::bigtable();
        let host = emu.host();
        let dir = tempfile::tempdir().unwrap();
        let sinks: Vec<PathBuf> = ["a", "b"]
            .iter()
            .map(|p| dir.path().join(format!("{p}.ndjson")))
            .collect();
        let extra = [("TRACKING_SHORT_TTL", SHORT_TTL), ("TRACKING_ACK", ack)];
        let start = |sink: &Path| ApiProcess::start(&as_strs(&bigtable_env(&host, sink, &extra)));
        bootstrap(&as_strs(&bigtable_env(&host, &sinks[0], &extra)));
        let (a, b) = (start(&sinks[0]), start(&sinks[1]));
        let sink_refs: Vec<&Path> = sinks.iter().map(PathBuf::as_path).collect();

        let body = batch("bt-visitor", "bt", 0..20);
        assert_eq!(post(&a, &body).await, 204);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(post(&b, &body).await, 204, "a retry at another pod");
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert_eq!(post(&a, &body).await, 204, "after the short TTL");
        let got = settle(&sink_refs, 20).await;
        assert_once(&got, (0..20).map(|i| format!("bt-{i}")));
        assert_eq!(metric(&a, "tracking_events_duplicates_total").await, 20.0);
        assert_eq!(metric(&b, "tracking_events_duplicates_total").await, 20.0);

        assert_eq!(post(&b, &batch("bt-visitor", "bt", 10..30)).await, 204);
        let got = settle(&sink_refs, 30).await;
        assert_once(&got, (0..30).map(|i| format!("bt-{i}")));
        assert_eq!(metric(&b, "tracking_events_duplicates_total").await, 30.0);
        // Nothing here went without a check.
        for api in [&a, &b] {
            assert_eq!(
                metric(api, "tracking_events_dedup_unchecked_total").await,
                0.0
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retries_across_two_processes_on_bigtable_are_output_once() {
        retried_across_two_processes("memory").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retries_across_two_processes_on_bigtable_are_output_once_with_disk_ack() {
        retried_across_two_processes("disk").await;
    }

    /// The embedded default (memory store, file sink), in both modes.
    async fn retried_on_the_memory_store(ack: &str) {
        let dir = tempfile::tempdir().unwrap();
        let sink = dir.path().join("events.ndjson");
        let api = ApiProcess::start(&[
            ("TRACKING_SINK", "file"),
            ("TRACKING_SINK_PATH", sink.to_str().unwrap()),
            ("TRACKING_ACK", ack),
        ]);
        let body = batch("mem-visitor", "mem", 0..20);
        for _ in 0..3 {
            assert_eq!(post(&api, &body).await, 204);
        }
        assert_eq!(post(&api, &batch("mem-visitor", "mem", 10..30)).await, 204);
        let got = settle(&[&sink], 30).await;
        assert_once(&got, (0..30).map(|i| format!("mem-{i}")));
        assert_eq!(metric(&api, "tracking_events_duplicates_total").await, 50.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retries_on_the_memory_store_are_output_once() {
        retried_on_the_memory_store("memory").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retries_on_the_memory_store_are_output_once_with_disk_ack() {
        retried_on_the_memory_store("disk").await;
    }

    /// Copies of one event reaching two processes at the same moment may
    /// both pass (each reads before the other's record lands): every copy
    /// that does carries the event's id, as its `event_id` attribute on
    /// Pub/Sub, and every message is counted. Prints how many passed twice
    /// (the README's measurement).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn copies_at_two_processes_at_once_carry_one_event_id_attribute() {
        use test_support::PubsubEmulator;
        use test_support::pubsub::{event_id, pull_until, topic_with_subscription};

        const VISITORS: usize = 200;
        let bt = BigtableEmulator::bigtable();
        let ps = PubsubEmulator::pubsub();
        let (bt_host, ps_host) = (bt.host(), ps.host());
        let env: Vec<(&str, &str)> = vec![
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
            ("TRACKING_DEADLETTER", "discard"),
        ];
        bootstrap(&env);
        let sub = topic_with_subscription(&ps_host, "test-project", "events").await;
        let (a, b) = (ApiProcess::start(&env), ApiProcess::start(&env));

        // Round 1: returning visitors (a session exists: plain renewals).
        // Round 2: new visitors (both copies race to mint). One pull for
        // both (a subscriber stream dropped early holds its messages until
        // their ack deadline).
        let rounds = [("renewal", false), ("mint", true)];
        for (round, new) in rounds {
            if !new {
                let warm: Vec<_> = (0..VISITORS)
                    .map(|v| {
                        (
                            a.addr,
                            format!(r#"{{"type":"warm","client_id":"{round}-{v}"}}"#),
                        )
                    })
                    .collect();
                assert!(post_at_once(&warm).await.iter().all(|s| *s == 204));
            }
            let copies: Vec<_> = (0..VISITORS)
                .flat_map(|v| {
                    let body = format!(
                        r#"{{"type":"buy","client_id":"{round}-{v}","event_id":"{round}-e{v}"}}"#
                    );
                    [(a.addr, body.clone()), (b.addr, body)]
                })
                .collect();
            let statuses = post_at_once(&copies).await;
            assert!(statuses.iter().all(|s| *s == 204), "{statuses:?}");
        }
        let want: std::collections::HashSet<String> = rounds
            .iter()
            .flat_map(|(round, _)| (0..VISITORS).map(move |v| format!("{round}-e{v}")))
            .collect();
        // Every copy output: accepted and not caught (all were answered).
        let mut output = 0.0;
        for api in [&a, &b] {
            output += metric(api, "tracking_events_accepted_total").await
                - metric(api, "tracking_events_duplicates_total").await;
        }
        let output = output as usize;
        let mut seen = std::collections::HashSet::new();
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut scanned = 0;
        pull_until(&ps_host, &sub, Duration::from_secs(60), |m| {
            for m in &m[scanned..] {
                let id = event_id(m);
                assert_eq!(
                    m.attributes.get("event_id"),
                    Some(&id),
                    "every copy carries the event's id as its attribute"
                );
                seen.insert(id.clone());
                *counts.entry(id).or_default() += 1;
            }
            scanned = m.len();
            m.len() >= output
        })
        .await;
        assert_eq!(scanned, output, "messages: every copy output, once");
        let missing: Vec<&String> = want.iter().filter(|id| !seen.contains(*id)).collect();
        assert!(
            missing.is_empty(),
            "{} of {} events not delivered, e.g. {:?}",
            missing.len(),
            want.len(),
            &missing[..missing.len().min(3)]
        );
        let passed_twice: Vec<(&str, usize)> = rounds
            .iter()
            .map(|(round, _)| {
                let twice = (0..VISITORS)
                    .filter(|v| counts.get(&format!("{round}-e{v}")) == Some(&2))
                    .count();
                (*round, twice)
            })
            .collect();
        let dupes = metric(&a, "tracking_events_duplicates_total").await
            + metric(&b, "tracking_events_duplicates_total").await;
        eprintln!(
            "copies at two processes at once, {VISITORS} events each round: passed twice {passed_twice:?}; caught {dupes}"
        );
    }

    /// A process killed in the middle of a request (the client had no
    /// answer) must not have recorded its ids: the client's retry at
    /// another process is output, not taken for a duplicate. The batch is
    /// 500 events of 500 visitors, new or returning; the first process is
    /// killed while it works on it, at two moments.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_process_killed_mid_request_leaves_the_retry_to_be_output() {
        let emu = BigtableEmulator::bigtable();
        let host = emu.host();
        let dir = tempfile::tempdir().unwrap();
        let start = |sink: &Path| ApiProcess::start(&as_strs(&bigtable_env(&host, sink, &[])));
        bootstrap(&as_strs(&bigtable_env(&host, Path::new("/dev/null"), &[])));
        let retry_sink = dir.path().join("b.ndjson");
        let b = start(&retry_sink);
        let mut lost = Vec::new();
        for (round, returning, after_ms) in [("new", false, 80), ("returning", true, 30)] {
            let sink = dir.path().join(format!("a-{round}.ndjson"));
            let mut a = start(&sink);
            if returning {
                let warm: Vec<String> = (0..500)
                    .map(|v| format!(r#"{{"type":"warm","client_id":"{round}-{v}"}}"#))
                    .collect();
                let body = format!(r#"{{"events":[{}]}}"#, warm.join(","));
                assert_eq!(post(&b, &body).await, 204);
            }
            let events: Vec<String> = (0..500)
                .map(|v| {
                    format!(
                        r#"{{"type":"buy","client_id":"{round}-{v}","event_id":"{round}-e{v}"}}"#
                    )
                })
                .collect();
            let body = format!(r#"{{"events":[{}]}}"#, events.join(","));
            let addr = a.addr;
            let sent = {
                let body = body.clone();
                tokio::spawn(async move {
                    request(
                        addr,
                        "POST",
                        "/v1/events",
                        &[("content-type", "text/plain")],
                        body.as_bytes(),
                    )
                    .await
                    .map(|r| r.status)
                })
            };
            tokio::time::sleep(Duration::from_millis(after_ms)).await;
            a.child.kill().unwrap();
            let first = sent.await.unwrap();
            assert!(
                first.is_err(),
                "{round}: the first attempt had no answer: {first:?}"
            );
            // Renewals of the killed process that were in flight land (or
            // not) meanwhile: the retry comes a moment later, as a client's.
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(post(&b, &body).await, 204, "{round}: the retry");
            let got = settle(&[&sink, &retry_sink], 500).await;
            let missing: Vec<String> = (0..500)
                .map(|v| format!("{round}-e{v}"))
                .filter(|id| !got.contains_key(id))
                .collect();
            lost.push((round, missing.len()));
        }
        assert!(
            lost.iter().all(|(_, n)| *n == 0),
            "events answered 2xx on their retry but never output: {lost:?}"
        );
    }
}
