//! tracking-api with TRACKING_SESSION_STORE=bigtable against the real
//! Bigtable emulator: sessions survive a restart of the API, a dead Bigtable
//! degrades events instead of failing them, and its return needs no restart.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{ApiProcess, post_json, read_ndjson, request, wait_for_lines};
use test_support::BigtableEmulator;

fn env<'a>(emu: &'a str, sink: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("TRACKING_SESSION_STORE", "bigtable"),
        ("TRACKING_BIGTABLE_PROJECT", "p"),
        ("TRACKING_BIGTABLE_INSTANCE", "i"),
        ("BIGTABLE_EMULATOR_HOST", emu),
        ("TRACKING_SINK", "file"),
        ("TRACKING_SINK_PATH", sink),
    ]
}

fn bootstrap(env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tracking-api"))
        .arg("bootstrap")
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "bootstrap failed: {log}");
    log
}

async fn send(api: &ApiProcess, body: &str) -> (u16, Duration) {
    let started = Instant::now();
    let r = request(
        api.addr,
        "POST",
        "/v1/events",
        &[("content-type", "text/plain")],
        body.as_bytes(),
    )
    .await
    .unwrap();
    (r.status, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_live_in_bigtable_and_survive_its_outages() {
    let mut emu = BigtableEmulator::bigtable();
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.ndjson");
    let host = emu.host();
    let env = env(&host, sink.to_str().unwrap());
    assert!(bootstrap(&env).contains("Created Bigtable table sessions"));
    assert!(bootstrap(&env).contains("already exists; left as it is"));

    // 1. A session, then a restart of tracking-api: the same session.
    let mut api = ApiProcess::start(&env);
    assert_eq!(
        send(
            &api,
            r#"{"type":"page_view","client_id":"bt-1","via":{"source":"ad"}}"#
        )
        .await
        .0,
        204
    );
    assert!(api.terminate(Duration::from_secs(10)).success());
    let mut api = ApiProcess::start(&env);
    assert_eq!(
        send(&api, r#"{"type":"purchase","client_id":"bt-1"}"#)
            .await
            .0,
        204
    );
    let events = wait_for_lines(&sink, 2, Duration::from_secs(5));
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["session"]["status"], "ok");
    assert_eq!(
        events[1]["session"]["short_id"],
        events[0]["session"]["short_id"]
    );
    assert_eq!(events[1]["session"]["short_new"], false);
    assert_eq!(events[1]["via"]["source"], "ad");

    // 2. Bigtable dies: events are still accepted, quickly, marked unavailable.
    emu.stop();
    for i in 0..5 {
        let (status, took) = send(
            &api,
            &format!(r#"{{"type":"page_view","client_id":"bt-{i}"}}"#),
        )
        .await;
        assert_eq!(status, 204);
        assert!(took < Duration::from_secs(1), "answered in {took:?}");
    }
    let events = wait_for_lines(&sink, 7, Duration::from_secs(5));
    assert_eq!(events.len(), 7);
    assert!(
        events[2..]
            .iter()
            .all(|e| e["session"]["status"] == "unavailable"),
        "{:?}",
        &events[2..]
    );
    let metrics = request(api.admin, "GET", "/metrics", &[], b"")
        .await
        .unwrap();
    let metrics = String::from_utf8(metrics.body).unwrap();
    assert!(
        metrics.contains("tracking_sessions_total{outcome=\"unavailable\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tracking_session_store_ops_total{op=\"read\"}"),
        "{metrics}"
    );

    // 3. Bigtable is back (empty, as a restarted emulator is): no restart needed.
    emu.restart();
    bootstrap(&env);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert_eq!(
            send(&api, r#"{"type":"page_view","client_id":"bt-back"}"#)
                .await
                .0,
            204
        );
        let last = read_ndjson(&sink).pop().unwrap();
        if last["client_id"] == "bt-back" && last["session"]["status"] == "ok" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sessions did not come back: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(api.terminate(Duration::from_secs(10)).success());
}

#[test]
fn bigtable_without_its_location_is_a_configuration_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_tracking-api"))
        .env_clear()
        .env("TRACKING_SESSION_STORE", "bigtable")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("needs TRACKING_BIGTABLE_PROJECT and TRACKING_BIGTABLE_INSTANCE")
    );
}

/// The Bigtable calls of an event show in its trace: a read (one attempt)
/// and the write under the `session` span, which says whether the visitor
/// had a live session: the first event's conditional write (a mint), the
/// second's plain renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bigtable_calls_are_traced_under_the_session_span() {
    let emu = BigtableEmulator::bigtable();
    let agent = test_support::TraceReceiver::datadog();
    let url = agent.url();
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.ndjson");
    let host = emu.host();
    let mut env = env(&host, sink.to_str().unwrap());
    bootstrap(&env);
    env.extend([
        ("OTEL_TRACES_EXPORTER", "datadog"),
        ("DD_TRACE_AGENT_URL", url.as_str()),
        ("DD_SERVICE", "tracking-api"),
    ]);
    let mut api = ApiProcess::start(&env);
    for _ in 0..2 {
        assert_eq!(
            send(&api, r#"{"type":"page_view","client_id":"traced-bt"}"#)
                .await
                .0,
            204
        );
    }
    assert!(api.terminate(Duration::from_secs(10)).success());
    let spans = agent.wait_for(Duration::from_secs(10), |s| {
        ["bigtable.write", "bigtable.conditional_write"]
            .iter()
            .all(|name| s.iter().any(|s| s.resource == *name))
    });
    assert!(agent.errors().is_empty(), "{:?}", agent.errors());
    let mut sessions: Vec<_> = spans.iter().filter(|s| s.resource == "session").collect();
    assert_eq!(sessions.len(), 2, "{spans:#?}");
    sessions.sort_by_key(|s| s.meta.get("lookup").cloned());
    let tag = |s: &test_support::ReceivedSpan, k: &str| s.meta.get(k).cloned().unwrap_or_default();
    // "hit" sorts before "miss": the second event found the first's session.
    assert_eq!(tag(sessions[0], "lookup"), "hit");
    assert_eq!(tag(sessions[1], "lookup"), "miss");
    let calls = [
        [("bigtable.read", "ok"), ("bigtable.write", "ok")],
        [
            ("bigtable.read", "ok"),
            ("bigtable.conditional_write", "written"),
        ],
    ];
    for (session, calls) in sessions.iter().zip(calls) {
        assert_eq!(tag(session, "store"), "bigtable");
        assert_eq!(tag(session, "mode"), "cloud");
        let children: Vec<_> = spans
            .iter()
            .filter(|s| s.resource.starts_with("bigtable.") && s.parent_id == session.span_id)
            .collect();
        assert_eq!(children.len(), 2, "under {session:?}: {spans:#?}");
        for (call, outcome) in calls {
            let child: Vec<_> = children.iter().filter(|s| s.resource == call).collect();
            assert_eq!(child.len(), 1, "{call} under {session:?}: {spans:#?}");
            assert_eq!(tag(child[0], "attempts"), "1", "{:?}", child[0]);
            assert_eq!(tag(child[0], "outcome"), outcome, "{:?}", child[0]);
        }
    }
}

/// An upgrade re-mints nobody: a row as the releases before opaque session
/// ids wrote it (16-byte binary UUIDs in `s:id` and `l:id`, written here
/// with the raw client) gives the same ids, in their canonical text, to the
/// visitor's next event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_the_binary_format_read_as_the_same_ids() {
    use bigtable_rs::bigtable::BigTableConnection;
    use bigtable_rs::google::bigtable::v2::mutation::{Mutation as Kind, SetCell};
    use bigtable_rs::google::bigtable::v2::{MutateRowRequest, Mutation};

    let emu = BigtableEmulator::bigtable();
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.ndjson");
    let host = emu.host();
    let env = env(&host, sink.to_str().unwrap());
    bootstrap(&env);
    let short: [u8; 16] = [
        0x01, 0x92, 0xf5, 0xa4, 0x7b, 0x3c, 0x7d, 0x2e, 0x9f, 0x10, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e,
        0x6f,
    ];
    let long: [u8; 16] = [
        0x01, 0x8c, 0x3d, 0x20, 0x00, 0x00, 0x70, 0x00, 0xbf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0x01,
    ];
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let cell = |family: &str, value: &[u8]| Mutation {
        mutation: Some(Kind::SetCell(SetCell {
            family_name: family.into(),
            column_qualifier: b"id".to_vec(),
            timestamp_micros: (now_ms - 60_000) * 1000,
            value: value.to_vec(),
        })),
    };
    let conn = BigTableConnection::new_with_emulator(&host, "p", "i", false, 1, None).unwrap();
    let mut client = conn.client();
    let client_id = tracking_core::ClientId::parse("upgraded-1").unwrap();
    client
        .mutate_row(MutateRowRequest {
            table_name: client.get_full_table_name("sessions"),
            row_key: tracking_bigtable::schema::row_key(&client_id),
            mutations: vec![cell("s", &short), cell("l", &long)],
            ..MutateRowRequest::default()
        })
        .await
        .unwrap();

    let api = ApiProcess::start(&env);
    assert_eq!(
        send(&api, r#"{"type":"page_view","client_id":"upgraded-1"}"#)
            .await
            .0,
        204
    );
    let e = &wait_for_lines(&sink, 1, Duration::from_secs(10))[0];
    assert_eq!(
        e["session"],
        serde_json::json!({
            "status": "ok",
            "short_id": "0192f5a4-7b3c-7d2e-9f10-1a2b3c4d5e6f",
            "long_id": "018c3d20-0000-7000-bfff-ffffffffff01",
            "short_new": false,
            "long_new": false,
        }),
        "{e}"
    );
}

/// SIGTERM while session renewals hang on a Bigtable that took them and
/// does not answer, and while the event output's reader is slow to read:
/// the events still get their flush. Every event answered 204 reaches
/// stdout; the renewals waiting do not take the events' flush time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_stuck_at_shutdown_do_not_take_the_events_flush_time() {
    use std::io::Read;
    let emu = BigtableEmulator::bigtable();
    let gate = test_support::Gate::start(emu.host().parse().unwrap());
    let (direct, through) = (emu.host(), gate.host());
    let settings = [
        ("TRACKING_SESSION_STORE", "bigtable"),
        ("TRACKING_BIGTABLE_PROJECT", "p"),
        ("TRACKING_BIGTABLE_INSTANCE", "i"),
        ("TRACKING_DEADLETTER", "discard"),
    ];
    let mut env = settings.to_vec();
    env.push(("BIGTABLE_EMULATOR_HOST", &direct));
    bootstrap(&env);
    let mut env = settings.to_vec();
    env.extend([
        ("BIGTABLE_EMULATOR_HOST", through.as_str()),
        ("TRACKING_SESSION_TIMEOUT", "10s"),
        ("TRACKING_BIGTABLE_ATTEMPT_TIMEOUT", "10s"),
        ("TRACKING_BIGTABLE_WRITE_TIMEOUT", "120s"),
        ("TRACKING_DRAIN_TIMEOUT", "2s"),
    ]);
    let mut api = ApiProcess::start_with_stdout(
        std::path::Path::new(env!("CARGO_BIN_EXE_tracking-api")),
        &env,
        std::process::Stdio::piped(),
    );
    // The output's reader starts reading only when told.
    let mut stdout = api.child.stdout.take().unwrap();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let _ = wait.recv();
        let mut text = String::new();
        stdout.read_to_string(&mut text).unwrap();
        text
    });
    let pad = "x".repeat(7_000);
    let event = |v: usize, n: usize| {
        format!(
            r#"{{"type":"page_view","client_id":"stuck-{v}","event_id":"stuck-{v}-{n}","props":{{"pad":"{pad}"}}}}"#
        )
    };
    let mut accepted = Vec::new();
    for v in 0..10 {
        assert_eq!(send(&api, &event(v, 1)).await.0, 204, "first events");
        accepted.push(format!("stuck-{v}-1"));
    }
    // The second events are renewals. Their reads are answered (late), and
    // the renewals sent after them get no answer while the gate holds it.
    gate.set_reply_delay(Duration::from_millis(300));
    let seconds: Vec<_> = (0..10)
        .map(|v| {
            let (addr, body) = (api.addr, event(v, 2));
            tokio::spawn(async move { post_json(addr, &body).await.unwrap().status })
        })
        .collect();
    for (v, s) in seconds.into_iter().enumerate() {
        assert_eq!(s.await.unwrap(), 204, "second events");
        accepted.push(format!("stuck-{v}-2"));
    }
    gate.set_reply_delay(Duration::from_secs(600));

    // 20 events of ~7 KiB: more than a pipe holds, so the output has events
    // to write when SIGTERM comes; its reader wakes up 1 s later.
    api.signal("TERM");
    std::thread::sleep(Duration::from_secs(1));
    go.send(()).unwrap();
    api.wait_exit(Duration::from_secs(30));
    let text = reader.join().unwrap();
    let log = api.stderr.lock().unwrap().join("\n");
    assert!(
        log.contains("Session store writes were still running at the flush deadline."),
        "the scenario needs renewals still waiting at shutdown: {log}"
    );
    assert!(!log.contains("Sink flush timed out"), "{log}");
    let written = common::process::event_ids(text.lines());
    common::process::assert_all_arrived(
        &accepted,
        |id| written.contains(id),
        "stuck renewals at SIGTERM",
    );
    drop(gate);
}
