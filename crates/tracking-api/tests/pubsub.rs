//! tracking-api with TRACKING_SINK=pubsub against the real Pub/Sub emulator:
//! every event answered with a 2xx is delivered — in steady state, through an
//! emulator outage and restart, through SIGTERM and a restart of the API —
//! and what cannot be kept is refused with 503.
//!
//! The API reaches the emulator through a [`Gate`] (a loopback forwarder the
//! test opens and closes), so that a restarted emulator gets its topic and
//! subscription back before the API sees it: otherwise a replayed event could
//! land on the topic before the test's subscription exists.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{
    ApiProcess, RawResponse, assert_503_with_retry_after, assert_all_arrived, metric, post_json,
    request, shed, wait_metric,
};
use test_support::pubsub::{Message, event_id, pull_until, topic_with_subscription};
use test_support::{Gate, PubsubEmulator};

const PROJECT: &str = "test-project";
const TOPIC: &str = "events";

struct Rig {
    emu: PubsubEmulator,
    gate: Gate,
    dir: tempfile::TempDir,
}

impl Rig {
    fn start() -> Self {
        let emu = PubsubEmulator::pubsub();
        let gate = Gate::start(emu.addr);
        Self {
            emu,
            gate,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn spool(&self) -> String {
        self.dir.path().join("spool").to_str().unwrap().to_owned()
    }

    /// The API's environment: Pub/Sub through the gate, plus `extra`.
    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("TRACKING_SINK", "pubsub"),
            ("TRACKING_PUBSUB_PROJECT", PROJECT),
            ("TRACKING_PUBSUB_TOPIC", TOPIC),
            ("TRACKING_DEADLETTER", "discard"),
            ("TRACKING_DRAIN_TIMEOUT", "10s"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        env.push(("PUBSUB_EMULATOR_HOST".into(), self.gate.host()));
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        env
    }

    /// The topic and the test's subscription on the emulator (direct, not
    /// through the gate).
    async fn subscription(&self) -> String {
        topic_with_subscription(&self.emu.host(), PROJECT, TOPIC).await
    }

    /// Pulls until every id in `want` has been delivered (or `within`).
    async fn delivered(&self, sub: &str, want: &HashSet<String>, within: Duration) -> Delivery {
        let mut seen = HashSet::new();
        let mut scanned = 0;
        let messages = pull_until(&self.emu.host(), sub, within, |msgs| {
            for m in &msgs[scanned..] {
                seen.insert(event_id(m));
            }
            scanned = msgs.len();
            want.is_subset(&seen)
        })
        .await;
        Delivery::of(&messages)
    }
}

fn start_api(env: &[(String, String)]) -> ApiProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    ApiProcess::start(&env)
}

/// What a subscription received: each event id with its delivery count.
struct Delivery {
    counts: HashMap<String, usize>,
    messages: usize,
}

impl Delivery {
    fn of(messages: &[Message]) -> Self {
        let mut counts = HashMap::new();
        for m in messages {
            let id = event_id(m);
            // Published directly, replayed from the spool or from memory:
            // the attribute is the event's own id.
            assert_eq!(
                m.attributes.get("event_id"),
                Some(&id),
                "event_id attribute"
            );
            *counts.entry(id).or_insert(0) += 1;
        }
        Self {
            counts,
            messages: messages.len(),
        }
    }

    fn ids(&self) -> HashSet<String> {
        self.counts.keys().cloned().collect()
    }

    fn duplicates(&self) -> usize {
        self.messages - self.counts.len()
    }

    /// Fails with the ids accepted but not delivered.
    fn assert_covers(&self, accepted: &[String], what: &str) {
        let ids = self.ids();
        assert_all_arrived(accepted, |id| ids.contains(id), what);
    }
}

/// Sends `per_client` single-event requests from each of `clients` tasks,
/// `pace` apart. Returns the ids answered 204, and the number answered 503
/// (with Retry-After); any other answer fails the test. A client stops when
/// the API stops listening.
async fn load(
    addr: SocketAddr,
    prefix: &str,
    clients: usize,
    per_client: usize,
    pace: Duration,
) -> (Vec<String>, usize) {
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(Mutex::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (accepted, refused) = (Arc::clone(&accepted), Arc::clone(&refused));
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_client {
                let id = format!("{prefix}-{c}-{i}");
                let body =
                    format!(r#"{{"type":"page_view","client_id":"v{c}","event_id":"{id}"}}"#);
                match post_json(addr, &body).await {
                    Ok(r) if r.status == 204 => accepted.lock().unwrap().push(id),
                    Ok(r) => {
                        assert_eq!(r.status, 503, "unexpected answer {r:?}");
                        assert!(
                            r.head.to_ascii_lowercase().contains("retry-after:"),
                            "503 without Retry-After: {}",
                            r.head
                        );
                        *refused.lock().unwrap() += 1;
                    }
                    Err(_) => return, // the API has stopped listening
                }
                tokio::time::sleep(pace).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    let refused = *refused.lock().unwrap();
    (accepted, refused)
}

/// Posts a batch of `n` page views with ids `{prefix}-{b}-{i}`, followed by
/// the raw events in `extra`; returns the answer and the ids.
async fn post_batch(
    api: &ApiProcess,
    prefix: &str,
    b: usize,
    n: usize,
    extra: &[&str],
) -> (RawResponse, Vec<String>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{b}-{i}")).collect();
    let mut events: Vec<String> = ids
        .iter()
        .map(|id| format!(r#"{{"type":"page_view","client_id":"v{b}","event_id":"{id}"}}"#))
        .collect();
    events.extend(extra.iter().map(|e| (*e).to_owned()));
    let body = format!(r#"{{"events":[{}]}}"#, events.join(","));
    (post_json(api.addr, &body).await.unwrap(), ids)
}

fn bootstrap(env: &[(String, String)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tracking-api"))
        .arg("bootstrap")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "bootstrap failed: {log}");
    log
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_state_delivers_exactly_the_accepted_events() {
    let rig = Rig::start();
    let env = rig.env(&[("TRACKING_PUBSUB_DEADLETTER_TOPIC", "dead-letters")]);
    let log = bootstrap(&env);
    assert!(
        log.contains("Created Pub/Sub topic projects/test-project/topics/events"),
        "{log}"
    );
    assert!(
        log.contains("Created Pub/Sub topic projects/test-project/topics/dead-letters"),
        "{log}"
    );
    assert!(bootstrap(&env).contains("already exists; left as it is"));
    let sub = rig.subscription().await;
    let dead_sub = topic_with_subscription(&rig.emu.host(), PROJECT, "dead-letters").await;
    let api = start_api(&env);

    // 100 batches of 10 events, and one invalid event in the last batch.
    let mut accepted = Vec::new();
    for b in 0..100 {
        let invalid: &[&str] = if b == 99 {
            &[r#"{"type":"Not A Type","client_id":"v"}"#]
        } else {
            &[]
        };
        let (r, ids) = post_batch(&api, "steady", b, 10, invalid).await;
        assert_eq!(r.status, if b == 99 { 200 } else { 204 }, "{r:?}");
        accepted.extend(ids);
    }

    let started = Instant::now();
    let want: HashSet<String> = accepted.iter().cloned().collect();
    let delivery = rig.delivered(&sub, &want, Duration::from_secs(60)).await;
    delivery.assert_covers(&accepted, "steady state");
    assert_eq!(delivery.ids(), want, "nothing but the accepted events");
    eprintln!(
        "steady state: {} accepted, {} delivered, {} duplicates, pulled in {:?}",
        accepted.len(),
        delivery.counts.len(),
        delivery.duplicates(),
        started.elapsed()
    );

    // Attributes, and the dead letter on its own topic.
    let one = pull_until(&rig.emu.host(), &sub, Duration::from_secs(1), |_| false).await;
    assert!(one.is_empty(), "everything was acked already");
    let dead = pull_until(&rig.emu.host(), &dead_sub, Duration::from_secs(30), |m| {
        !m.is_empty()
    })
    .await;
    assert_eq!(dead.len(), 1);
    let letter: serde_json::Value = serde_json::from_slice(&dead[0].data).unwrap();
    assert_eq!(letter["reason"], "invalid_type", "{letter}");

    assert_eq!(
        metric(&api, "tracking_pubsub_published_total").await,
        1000.0
    );
    assert_eq!(
        metric(&api, "tracking_delivery_latency_seconds_count").await,
        1000.0
    );
    assert_eq!(metric(&api, "tracking_pubsub_spooled_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_attributes_carry_type_schema_version_and_event_id() {
    let rig = Rig::start();
    let env = rig.env(&[]);
    bootstrap(&env);
    let sub = rig.subscription().await;
    let api = start_api(&env);
    let r = post_json(
        api.addr,
        r#"{"type":"purchase","client_id":"attr-1","event_id":"attr-1"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204);
    let got = pull_until(&rig.emu.host(), &sub, Duration::from_secs(30), |m| {
        !m.is_empty()
    })
    .await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].attributes.get("type").map(String::as_str),
        Some("purchase")
    );
    assert_eq!(
        got[0].attributes.get("schema_version").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        got[0].attributes.get("event_id").map(String::as_str),
        Some("attr-1"),
        "the event id is an attribute: a consumer deduplicates on it"
    );
    let event: serde_json::Value = serde_json::from_slice(&got[0].data).unwrap();
    assert_eq!(event["client_id"], "attr-1");
    assert_eq!(event["session"]["status"], "ok", "{event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emulator_killed_and_restarted_under_load_loses_nothing() {
    let mut rig = Rig::start();
    let spool = rig.spool();
    let env = rig.env(&[
        ("TRACKING_SPOOL_DIR", &spool),
        ("TRACKING_PUBSUB_STALL_TIMEOUT", "500ms"),
        ("TRACKING_PUBSUB_PUBLISH_TIMEOUT", "2s"),
    ]);
    bootstrap(&env);
    let sub = rig.subscription().await;
    let api = start_api(&env);
    // About 8 s of load: 2 clients, one event every 10 ms each.
    let traffic = tokio::spawn(load(api.addr, "outage", 2, 800, Duration::from_millis(10)));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Take everything the first emulator acknowledged before killing it: an
    // emulator restart loses its messages, which is not the API's doing.
    rig.gate.close();
    // No acknowledgement can arrive once the gate is closed, but those that
    // arrived just before are counted by checker tasks a moment later: let
    // them settle, or the pull below could stop short of an acknowledged
    // event that the emulator's restart then destroys.
    let mut acked_before = metric(&api, "tracking_pubsub_published_total").await;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = metric(&api, "tracking_pubsub_published_total").await;
        if now == acked_before {
            break;
        }
        acked_before = now;
    }
    let mut before = pull_until(&rig.emu.host(), &sub, Duration::from_secs(30), |m| {
        m.len() as f64 >= acked_before
    })
    .await;
    rig.emu.stop();
    rig.gate.open(); // the API now meets a dead emulator: connection refused
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Restarted, it has no topics: the API gets NOT_FOUND until the topic is
    // back. Its replay probes back off up to 5 s, so wait for the first
    // NOT_FOUND rather than for a fixed time, which a slow machine misses.
    rig.emu.restart();
    wait_metric(
        &api,
        "tracking_pubsub_failed_total{class=\"permanent\"}",
        1.0,
        Duration::from_secs(30),
    )
    .await;
    rig.gate.close();
    let sub = rig.subscription().await;
    rig.gate.open();

    let (accepted, refused) = traffic.await.unwrap();
    let want: HashSet<String> = accepted.iter().cloned().collect();
    let mut after = pull_until(&rig.emu.host(), &sub, Duration::from_secs(90), |m| {
        let ids: HashSet<String> = m.iter().map(event_id).collect();
        let before_ids: HashSet<String> = before.iter().map(event_id).collect();
        want.iter()
            .all(|id| ids.contains(id) || before_ids.contains(id))
    })
    .await;
    before.append(&mut after);
    let delivery = Delivery::of(&before);
    delivery.assert_covers(&accepted, "emulator outage");
    let spooled = metric(&api, "tracking_pubsub_spooled_total").await;
    let replayed = metric(&api, "tracking_pubsub_replayed_total").await;
    let permanent = metric(&api, "tracking_pubsub_failed_total{class=\"permanent\"}").await;
    eprintln!(
        "outage: {} accepted, {refused} refused (503), {} delivered, {} duplicates; \
         spooled {spooled}, replayed {replayed}, permanent failures {permanent}",
        accepted.len(),
        delivery.counts.len(),
        delivery.duplicates()
    );
    assert!(accepted.len() > 500, "load too light: {}", accepted.len());
    assert!(
        spooled > 0.0 && replayed >= spooled,
        "spooled {spooled}, replayed {replayed}"
    );
    assert!(
        permanent > 0.0,
        "the restarted emulator's missing topic was seen"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_then_restart_delivers_every_accepted_event() {
    let rig = Rig::start();
    let spool = rig.spool();
    let env = rig.env(&[
        ("TRACKING_SPOOL_DIR", &spool),
        ("TRACKING_PUBSUB_STALL_TIMEOUT", "500ms"),
        ("TRACKING_PUBSUB_PUBLISH_TIMEOUT", "30s"),
        ("TRACKING_PUBSUB_FLUSH_TIMEOUT", "1s"),
        ("TRACKING_SHUTDOWN_DELAY", "200ms"),
    ]);
    bootstrap(&env);
    let sub = rig.subscription().await;
    let mut api = start_api(&env);
    let traffic = tokio::spawn(load(api.addr, "term", 4, 2_000, Duration::from_millis(2)));
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Pub/Sub unreachable, then SIGTERM: publishes outstanding at shutdown
    // must end up in the spool.
    rig.gate.close();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, api) = tokio::task::spawn_blocking(move || {
        let status = api.terminate(Duration::from_secs(30));
        (status, api)
    })
    .await
    .unwrap();
    let (accepted, refused) = traffic.await.unwrap();
    let log = api.stderr.lock().unwrap().join("\n");
    assert!(status.success(), "exit {status:?}: {log}");
    assert!(log.contains("Events left in the spool"), "{log}");

    rig.gate.open();
    let api = start_api(&env);
    let want: HashSet<String> = accepted.iter().cloned().collect();
    let delivery = rig.delivered(&sub, &want, Duration::from_secs(90)).await;
    delivery.assert_covers(&accepted, "SIGTERM and restart");
    eprintln!(
        "sigterm: {} accepted, {refused} refused, {} delivered, {} duplicates, replayed after restart {}",
        accepted.len(),
        delivery.counts.len(),
        delivery.duplicates(),
        metric(&api, "tracking_pubsub_replayed_total").await
    );
    assert!(accepted.len() > 200, "load too light: {}", accepted.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_answers_503_and_memory_stays_bounded() {
    let rig = Rig::start();
    let spool = rig.spool();
    let env = rig.env(&[
        ("TRACKING_SPOOL_DIR", &spool),
        ("TRACKING_SPOOL_MAX_BYTES", "256KiB"),
        ("TRACKING_SINK_QUEUE", "2000"),
        ("TRACKING_PUBSUB_STALL_TIMEOUT", "200ms"),
        ("TRACKING_PUBSUB_PUBLISH_TIMEOUT", "1s"),
    ]);
    bootstrap(&env);
    let sub = rig.subscription().await;
    rig.gate.close(); // Pub/Sub unreachable from the start
    let api = start_api(&env);
    let pid = api.child.id();
    let rss_start = rss_kib(pid);

    // Until the spool is full: bounded at 3,000 requests of 10 events.
    let mut accepted = Vec::new();
    let mut first_503 = None;
    for b in 0..3_000 {
        let (r, ids) = post_batch(&api, "full", b, 10, &[]).await;
        match r.status {
            204 => accepted.extend(ids),
            503 => {
                assert!(
                    r.head.to_ascii_lowercase().contains("retry-after:"),
                    "{}",
                    r.head
                );
                first_503.get_or_insert(b);
                if b > first_503.unwrap_or(b) + 1_000 {
                    break;
                }
            }
            s => panic!("unexpected {s}: {r:?}"),
        }
        if first_503.is_none() {
            // Let the stall detection and the spool keep up.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let first_503 = first_503.expect("the spool bound was never reached");
    // Once what memory held has landed in the spool, it is at its bound.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&api, "tracking_sink_queue_events").await > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the in-memory queue never drained to the spool"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spool_bytes = metric(&api, "tracking_pubsub_spool_bytes").await;
    let rss_full = rss_kib(pid);
    assert!(
        (200.0 * 1024.0..270.0 * 1024.0).contains(&spool_bytes),
        "the spool fills up to its bound of 256 KiB and stays there: {spool_bytes} B"
    );
    eprintln!(
        "spool full after {first_503} requests ({} events accepted); spool {spool_bytes} B; \
         RSS {rss_start} KiB at start, {rss_full} KiB after 1,000 more refused requests",
        accepted.len()
    );
    assert!(rss_full < 100 * 1024, "RSS {rss_full} KiB");
    assert!(
        rss_full < rss_start + 30 * 1024,
        "RSS grew from {rss_start} to {rss_full} KiB"
    );

    // Back: everything accepted is delivered and the spool drains.
    rig.gate.open();
    let want: HashSet<String> = accepted.iter().cloned().collect();
    let delivery = rig.delivered(&sub, &want, Duration::from_secs(90)).await;
    delivery.assert_covers(&accepted, "after the spool was full");
    assert_eq!(
        wait_metric(&api, "tracking_pubsub_direct", 1.0, Duration::from_secs(10)).await,
        1.0
    );
    assert_eq!(metric(&api, "tracking_pubsub_spool_bytes").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_spool_segment_is_reported_and_its_intact_records_replayed() {
    let rig = Rig::start();
    let spool = rig.spool();
    let env = rig.env(&[
        ("TRACKING_SPOOL_DIR", &spool),
        ("TRACKING_PUBSUB_STALL_TIMEOUT", "200ms"),
        ("TRACKING_PUBSUB_PUBLISH_TIMEOUT", "500ms"),
    ]);
    bootstrap(&env);
    let sub = rig.subscription().await;
    rig.gate.close();
    let mut api = start_api(&env);
    let (accepted, refused) = load(api.addr, "torn", 1, 100, Duration::from_millis(5)).await;
    assert_eq!((accepted.len(), refused), (100, 0));
    let spooled = wait_metric(
        &api,
        "tracking_pubsub_backlog_events",
        100.0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(spooled, 100.0);
    assert!(api.terminate(Duration::from_secs(20)).success());

    // Tear the newest segment's last record, as a crash mid-write would.
    let mut segments: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "spool"))
        .collect();
    segments.sort();
    let last = segments.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - 10)
        .unwrap();

    rig.gate.open();
    let api = start_api(&env);
    let want: HashSet<String> = accepted.iter().cloned().collect();
    let delivery = rig.delivered(&sub, &want, Duration::from_secs(15)).await;
    let missing: Vec<_> = accepted
        .iter()
        .filter(|id| !delivery.counts.contains_key(*id))
        .collect();
    assert_eq!(
        missing.len(),
        1,
        "exactly the torn record is lost: {missing:?}"
    );
    let damaged = metric(&api, "tracking_pubsub_spool_damaged_bytes_total").await;
    assert!(damaged > 0.0);
    let log = api.stderr.lock().unwrap().join("\n");
    assert!(log.contains("Spool damage found and skipped"), "{log}");
}

/// Single-event requests from `clients` tasks, `pace` apart, until `stop`
/// is set or the API stops answering: each id answered 204 with the moment
/// its answer arrived. Anything but 204 or 503 fails the test.
async fn timed_load(
    addr: SocketAddr,
    prefix: &str,
    clients: usize,
    pace: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<(String, Instant)> {
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (accepted, stop) = (Arc::clone(&accepted), Arc::clone(&stop));
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let id = format!("{prefix}-{c}-{i}");
                let body =
                    format!(r#"{{"type":"page_view","client_id":"v{c}","event_id":"{id}"}}"#);
                match post_json(addr, &body).await {
                    Ok(r) if r.status == 204 => accepted.lock().unwrap().push((id, Instant::now())),
                    Ok(r) => assert_eq!(r.status, 503, "unexpected answer {r:?}"),
                    Err(_) => return, // killed
                }
                tokio::time::sleep(pace).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    accepted.lock().unwrap().clone()
}

/// The issue's case: `kill -9` a few seconds into an outage, default
/// settings, the spool on a normal disk. Every event answered more than
/// `TRACKING_PUBSUB_STALL_TIMEOUT` (2 s) + 1 s before the kill is delivered
/// after a restart, and the sink changed mode once, not back and forth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_outage_loses_nothing_accepted_before_the_stall_window() {
    const STALL: Duration = Duration::from_secs(2);
    let rig = Rig::start();
    let spool = rig.spool();
    let env = rig.env(&[("TRACKING_SPOOL_DIR", &spool)]);
    bootstrap(&env);
    let sub = rig.subscription().await;
    let mut api = start_api(&env);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = tokio::spawn(timed_load(
        api.addr,
        "k9",
        4,
        Duration::from_millis(5),
        Arc::clone(&stop),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    rig.gate.close();
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let changes = metric(&api, "tracking_pubsub_mode_changes_total").await;
    let backlog = metric(&api, "tracking_pubsub_backlog_events").await;
    api.child.kill().unwrap();
    let killed = Instant::now();
    let _ = api.child.wait();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let accepted = traffic.await.unwrap();

    let must: Vec<String> = accepted
        .iter()
        .filter(|(_, at)| *at + STALL + Duration::from_secs(1) < killed)
        .map(|(id, _)| id.clone())
        .collect();
    let in_outage = accepted
        .iter()
        .filter(|(_, at)| *at > outage && *at + STALL + Duration::from_secs(1) < killed)
        .count();
    rig.gate.open();
    let api = start_api(&env);
    let want: HashSet<String> = must.iter().cloned().collect();
    let delivery = rig.delivered(&sub, &want, Duration::from_secs(120)).await;
    eprintln!(
        "kill -9 in an outage: {} accepted, {} of them more than stall+1s before the kill ({in_outage} during the outage), \
         {} delivered, {} duplicates; {backlog} in the backlog at the kill; mode changes {changes}; replayed after restart {}",
        accepted.len(),
        must.len(),
        delivery.counts.len(),
        delivery.duplicates(),
        metric(&api, "tracking_pubsub_replayed_total").await
    );
    delivery.assert_covers(&must, "kill -9 during an outage");
    assert!(
        in_outage > 100,
        "load too light during the outage: {in_outage}"
    );
    assert_eq!(changes, 1.0, "one change to backlog mode, no flapping");
}

/// The issue's case: the spool on a full disk during an outage. Appends
/// fail (ENOSPC): new events get 503, nothing accepted is dropped, the
/// metrics and the log name the cause; with room again the sink takes
/// events again, a SIGTERM leaves them in the spool (and says so truly), and
/// a restart delivers every accepted event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_disk_refuses_with_503_and_keeps_what_it_accepted() {
    let rig = Rig::start();
    let disk = test_support::Tmpfs::mount("256k");
    let spool = disk.path().join("spool").to_str().unwrap().to_owned();
    let env = rig.env(&[
        ("TRACKING_SPOOL_DIR", &spool),
        ("TRACKING_PUBSUB_STALL_TIMEOUT", "200ms"),
        ("TRACKING_PUBSUB_PUBLISH_TIMEOUT", "1s"),
    ]);
    bootstrap(&env);
    let sub = rig.subscription().await;
    rig.gate.close(); // Pub/Sub unreachable from the start
    let mut api = start_api(&env);

    let mut accepted = Vec::new();
    let mut refused = 0;
    for b in 0..2_000 {
        let (r, ids) = post_batch(&api, "enospc", b, 10, &[]).await;
        match r.status {
            204 => accepted.extend(ids),
            503 => {
                assert_503_with_retry_after(&r);
                refused += 1;
                if refused == 200 {
                    break;
                }
            }
            s => panic!("unexpected {s}: {r:?}"),
        }
        // Let the stall detection and the spool keep up.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(refused, 200, "the full disk never refused events");
    assert_eq!(
        metric(&api, "tracking_pubsub_spool_failing").await,
        1.0,
        "the metrics name the cause"
    );
    assert!(shed(&api, "output_failing").await > 0.0);
    assert!(metric(&api, "tracking_pubsub_spool_errors_total").await > 0.0);
    let log = api.stderr.lock().unwrap().join("\n");
    assert!(log.contains("No space left on device"), "{log}");

    // Room again: the events held in memory are appended, events are taken.
    disk.resize("64m");
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&api, "tracking_pubsub_spool_failing").await != 0.0 {
        assert!(Instant::now() < deadline, "the spool did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for b in 0..10 {
        let (r, ids) = post_batch(&api, "room", b, 10, &[]).await;
        assert_eq!(r.status, 204, "{r:?}");
        accepted.extend(ids);
    }
    let (status, api) = tokio::task::spawn_blocking(move || {
        let status = api.terminate(Duration::from_secs(30));
        (status, api)
    })
    .await
    .unwrap();
    let log = api.stderr.lock().unwrap().join("\n");
    assert!(status.success(), "exit {status:?}: {log}");
    assert!(log.contains("Events left in the spool"), "{log}");
    assert!(!log.contains("no spool is configured"), "{log}");

    rig.gate.open();
    let _api = start_api(&env);
    let want: HashSet<String> = accepted.iter().cloned().collect();
    let delivery = rig.delivered(&sub, &want, Duration::from_secs(120)).await;
    eprintln!(
        "full spool disk: {} accepted, {refused} refused, {} delivered, {} duplicates",
        accepted.len(),
        delivery.counts.len(),
        delivery.duplicates()
    );
    delivery.assert_covers(&accepted, "full spool disk");
}

/// The disk acknowledgement mode's environment: the spool is the
/// write-ahead log; a short stall timeout so that outages are noticed fast.
fn disk_ack_env(rig: &Rig, spool: &str) -> Vec<(String, String)> {
    rig.env(&[
        ("TRACKING_SPOOL_DIR", spool),
        ("TRACKING_ACK", "disk"),
        ("TRACKING_PUBSUB_STALL_TIMEOUT", "500ms"),
        ("TRACKING_PUBSUB_PUBLISH_TIMEOUT", "2s"),
    ])
}

/// The issue's case: `TRACKING_ACK=disk`, the project's generator (beacons,
/// pixels, gzip batches), `kill -9` at ten moments — four with Pub/Sub
/// healthy, three during an outage, three while the backlog of the outage is
/// replayed after a restart — each followed by a restart on the same spool.
/// Every event answered 2xx, whenever before the kill, is delivered in the
/// end (duplicates allowed, and counted). The same run with
/// `TRACKING_ACK=memory` loses events (129 of 22,748 when it was written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_ack_kill_9_at_ten_moments_loses_no_answered_event() {
    let rig = Rig::start();
    let spool = rig.spool();
    let env = disk_ack_env(&rig, &spool);
    bootstrap(&env);
    let sub = rig.subscription().await;
    let moments: [(&str, u64); 10] = [
        ("healthy", 400),
        ("healthy", 1100),
        ("healthy", 1800),
        ("healthy", 2500),
        ("outage", 800),
        ("outage", 1700),
        ("outage", 2600),
        ("replay", 300),
        ("replay", 700),
        ("replay", 1200),
    ];
    let mut accepted = Vec::new();
    let mut backlog_at_replay_kills = Vec::new();
    for (i, (phase, after)) in moments.into_iter().enumerate() {
        if phase == "outage" {
            rig.gate.close();
        } else {
            rig.gate.open();
        }
        let mut api = start_api(&env);
        let generator = common::process::Generator::start(
            api.addr,
            150,
            Duration::from_millis(after + 1500),
            1000 * (i as u64 + 1),
        );
        tokio::time::sleep(Duration::from_millis(after)).await;
        if phase == "replay" {
            backlog_at_replay_kills.push(metric(&api, "tracking_pubsub_backlog_events").await);
        }
        api.child.kill().unwrap();
        let _ = api.child.wait();
        let ids = tokio::task::spawn_blocking(move || generator.accepted())
            .await
            .unwrap();
        eprintln!(
            "kill {i} ({phase}, {after} ms in): {} events answered 2xx",
            ids.len()
        );
        assert!(!ids.is_empty(), "no event answered before kill {i}");
        accepted.extend(ids);
    }
    rig.gate.open();
    let api = start_api(&env);
    let want: HashSet<String> = accepted.iter().cloned().collect();
    assert_eq!(want.len(), accepted.len(), "the generator's ids are unique");
    let delivery = rig.delivered(&sub, &want, Duration::from_secs(180)).await;
    eprintln!(
        "disk ack, kill -9 ×10: {} events answered 2xx, {} delivered, {} duplicates; backlog at the replay kills {backlog_at_replay_kills:?}; replayed after the last restart {}",
        accepted.len(),
        delivery.counts.len(),
        delivery.duplicates(),
        metric(&api, "tracking_pubsub_replayed_total").await,
    );
    delivery.assert_covers(&accepted, "disk ack, kill -9 at ten moments");
    assert!(
        backlog_at_replay_kills.iter().any(|&b| b > 0.0),
        "no kill came during a replay: {backlog_at_replay_kills:?}"
    );
}

/// The issue's case: the write-ahead log on a tmpfs that fills up, Pub/Sub
/// unreachable so nothing is trimmed. Appends fail: requests get 503 with
/// Retry-After, `/readyz` says 503, the metrics and the log name the cause,
/// and no request waiting for the failed append is answered 2xx. With room
/// again a probe write notices, events are taken again, and once Pub/Sub is
/// back every event answered 2xx is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_ack_on_a_full_disk_answers_503_and_delivers_every_2xx_once_there_is_room() {
    let rig = Rig::start();
    let disk = test_support::Tmpfs::mount("256k");
    let spool = disk.path().join("spool").to_str().unwrap().to_owned();
    let env = disk_ack_env(&rig, &spool);
    bootstrap(&env);
    let sub = rig.subscription().await;
    rig.gate.close();
    let api = start_api(&env);

    let mut accepted = Vec::new();
    let mut refused = 0;
    for b in 0..2_000 {
        let (r, ids) = post_batch(&api, "walfull", b, 10, &[]).await;
        match r.status {
            204 => accepted.extend(ids),
            503 => {
                assert_503_with_retry_after(&r);
                refused += 1;
                if refused == 50 {
                    break;
                }
            }
            s => panic!("unexpected {s}: {r:?}"),
        }
    }
    assert_eq!(refused, 50, "the full disk never refused events");
    assert!(!accepted.is_empty());
    assert_eq!(metric(&api, "tracking_pubsub_spool_failing").await, 1.0);
    assert!(metric(&api, "tracking_ack_fsync_failures_total").await > 0.0);
    assert_eq!(
        request(api.admin, "GET", "/readyz", &[], b"")
            .await
            .unwrap()
            .status,
        503,
        "not ready while the log cannot be written"
    );
    let log = api.stderr.lock().unwrap().join("\n");
    assert!(log.contains("No space left on device"), "{log}");

    disk.resize("64m");
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&api, "tracking_pubsub_spool_failing").await != 0.0 {
        assert!(Instant::now() < deadline, "the log did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        request(api.admin, "GET", "/readyz", &[], b"")
            .await
            .unwrap()
            .status,
        200
    );
    for b in 0..20 {
        let (r, ids) = post_batch(&api, "walroom", b, 10, &[]).await;
        assert_eq!(r.status, 204, "{r:?}");
        accepted.extend(ids);
    }
    rig.gate.open();
    let want: HashSet<String> = accepted.iter().cloned().collect();
    let delivery = rig.delivered(&sub, &want, Duration::from_secs(120)).await;
    eprintln!(
        "disk ack, full disk: {} answered 2xx, {refused} refused, {} delivered, {} duplicates",
        accepted.len(),
        delivery.counts.len(),
        delivery.duplicates()
    );
    delivery.assert_covers(&accepted, "disk ack on a full disk");
}

/// `TRACKING_ACK=disk` needs the spool: refused at start without it.
#[test]
fn disk_ack_without_a_spool_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_tracking-api"))
        .env_clear()
        .env("TRACKING_SINK", "pubsub")
        .env("TRACKING_PUBSUB_PROJECT", PROJECT)
        .env("TRACKING_PUBSUB_TOPIC", TOPIC)
        .env("TRACKING_ACK", "disk")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("needs TRACKING_SPOOL_DIR"), "{err}");
}
