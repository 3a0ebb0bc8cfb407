//! `migration-proxy copy` (the real binary) from the Aerospike stand-in
//! into the real Bigtable emulator: killed half-way and resumed, it ends
//! with the same contents as a clean run; it leaves newer Bigtable sessions
//! alone; a second run changes nothing. Without a terminal its progress
//! and its summary are log lines.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aerospike::{Client, ClientPolicy, Expiration, WritePolicy, as_bin, as_key};
use test_support::BigtableEmulator;
use tracking_bigtable::{BigtableConfig, BigtableSessionStore};
use tracking_core::{
    ClientId, Clock, RandomIds, SessionPolicy, SessionRecord, SystemClock, Ttls, VisitorState,
};

const VISITORS: usize = 2000;

fn ttls() -> Ttls {
    Ttls {
        short: Duration::from_secs(1800),
        long: Duration::from_secs(90 * 86_400),
        via: Duration::from_secs(30 * 86_400),
    }
}

fn config(emu: &str, table: &str) -> BigtableConfig {
    BigtableConfig {
        project: "p".into(),
        instance: "i".into(),
        table: table.into(),
        emulator_host: Some(emu.into()),
        channels: 2,
        attempt_timeout: Duration::from_secs(2),
        write_timeout: Duration::from_secs(5),
        max_queued_renewals: tracking_bigtable::MAX_QUEUED_RENEWALS,
    }
}

async fn store(emu: &str, table: &str) -> BigtableSessionStore {
    let cfg = config(emu, table);
    tracking_bigtable::bootstrap(&cfg, ttls(), None)
        .await
        .unwrap();
    BigtableSessionStore::connect(cfg, SessionPolicy::new(ttls(), Arc::new(RandomIds)))
        .await
        .unwrap()
}

fn copy(aerospike: &str, emu: &str, table: &str, checkpoint: &Path, rate: &str) -> Command {
    copy_every(aerospike, emu, table, checkpoint, rate, "1s")
}

/// [`copy`] with progress lines every `interval`.
fn copy_every(
    aerospike: &str,
    emu: &str,
    table: &str,
    checkpoint: &Path,
    rate: &str,
    interval: &str,
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_migration-proxy"));
    cmd.args(["copy", "--checkpoint"])
        .arg(checkpoint)
        .args(["--rate", rate, "--progress-interval", interval])
        .env_clear()
        .env("MIGRATION_AEROSPIKE_HOSTS", aerospike)
        .env("TRACKING_BIGTABLE_PROJECT", "p")
        .env("TRACKING_BIGTABLE_INSTANCE", "i")
        .env("TRACKING_BIGTABLE_TABLE", table)
        .env("BIGTABLE_EMULATOR_HOST", emu)
        .stdin(Stdio::null());
    cmd
}

/// Runs a copy to the end; returns its report as `(name, count)` pairs.
fn run_copy(cmd: &mut Command) -> Vec<(String, u64)> {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "copy failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.parse().ok()?))
        })
        .collect()
}

fn count(report: &[(String, u64)], name: &str) -> u64 {
    report
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, c)| *c)
        .unwrap_or_else(|| panic!("no {name} in {report:?}"))
}

fn uuid(n: usize) -> String {
    uuid::Uuid::from_u128(n as u128).to_string()
}

async fn seed(client: &Client) {
    let put = |ttl| WritePolicy {
        send_key: true,
        expiration: Expiration::Seconds(ttl),
        ..WritePolicy::default()
    };
    for i in 0..VISITORS {
        let id = format!("v-{i}");
        client
            .put(
                &put(600),
                &as_key!("tracking", "short_sessions", id.as_str()),
                &[as_bin!("sid", uuid(i))],
            )
            .await
            .unwrap();
        client
            .put(
                &put(60 * 86_400),
                &as_key!("tracking", "long_sessions", id.as_str()),
                &[as_bin!("sid", uuid(100_000 + i))],
            )
            .await
            .unwrap();
        if i % 3 == 0 {
            client
                .put(
                    &put(7 * 86_400),
                    &as_key!("tracking", "via", id.as_str()),
                    &[as_bin!("source", format!("s{i}"))],
                )
                .await
                .unwrap();
        }
    }
    // Not copyable: written without its key (the legacy writer must send it).
    client
        .put(
            &WritePolicy::default(),
            &as_key!("tracking", "short_sessions", "keyless"),
            &[as_bin!("sid", uuid(7))],
        )
        .await
        .unwrap();
}

/// The Aerospike stand-in on a free port, and a client of it.
async fn standin() -> (String, Client) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let aerospike = listener.local_addr().unwrap().to_string();
    tokio::spawn(aerospike_standin::serve(
        listener,
        aerospike_standin::Store::new(vec!["tracking".into()]),
    ));
    let client = Client::new(&ClientPolicy::default(), &aerospike)
        .await
        .unwrap();
    (aerospike, client)
}

async fn snapshot(store: &BigtableSessionStore) -> Vec<VisitorState> {
    let mut out = Vec::with_capacity(VISITORS);
    for i in 0..VISITORS {
        let id = ClientId::parse(&format!("v-{i}")).unwrap();
        out.push(store.read_state(&id).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_copy_resumes_to_the_clean_result_and_a_rerun_changes_nothing() {
    let emu = BigtableEmulator::bigtable();
    let (aerospike, client) = standin().await;
    seed(&client).await;
    let dir = tempfile::tempdir().unwrap();

    // A visitor Bigtable already saw later than the legacy system did.
    let resumed = store(&emu.host(), "sessions").await;
    let newer = VisitorState {
        short: Some(SessionRecord {
            id: uuid::Uuid::from_u128(999_999).into(),
            last_seen: SystemClock.now(),
        }),
        ..VisitorState::default()
    };
    let v5 = ClientId::parse("v-5").unwrap();
    assert!(resumed.write_state(&v5, &newer, None).await);

    // Interrupted: killed once a part of the units is checkpointed.
    let checkpoint = dir.path().join("copy.checkpoint");
    let mut child = copy(&aerospike, &emu.host(), "sessions", &checkpoint, "800")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lines = std::fs::read_to_string(&checkpoint).map_or(0, |t| t.lines().count());
        if lines >= 3000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "copy made no progress ({lines} units)"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "copy ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done_before = std::fs::read_to_string(&checkpoint)
        .unwrap()
        .lines()
        .count();
    assert!(done_before < 3 * 4096, "the copy finished before the kill");

    // Resumed: the checkpointed units are skipped.
    let report = run_copy(&mut copy(
        &aerospike,
        &emu.host(),
        "sessions",
        &checkpoint,
        "0",
    ));
    assert!(
        count(&report, "units") as usize >= 3 * 4096 - done_before - 1,
        "{report:?}"
    );
    assert_eq!(count(&report, "failed"), 0);

    // A clean run into another table.
    let clean = store(&emu.host(), "sessions_clean").await;
    assert!(clean.write_state(&v5, &newer, None).await);
    let clean_report = run_copy(&mut copy(
        &aerospike,
        &emu.host(),
        "sessions_clean",
        &dir.path().join("clean.checkpoint"),
        "0",
    ));
    let visitors = VISITORS as u64;
    let parts = 2 * visitors + visitors.div_ceil(3);
    assert_eq!(
        count(&clean_report, "copied"),
        parts - 1,
        "{clean_report:?}"
    );
    assert_eq!(count(&clean_report, "skipped-newer"), 1, "{clean_report:?}");
    assert_eq!(
        count(&clean_report, "invalid"),
        1,
        "the keyless record: {clean_report:?}"
    );

    let (a, b) = (snapshot(&resumed).await, snapshot(&clean).await);
    assert_eq!(a.len(), VISITORS);
    assert!(a == b, "resumed and clean copies differ");
    // Legacy data arrived, the newer session was left alone.
    assert_eq!(a[1].short.as_ref().map(|s| s.id.to_string()), Some(uuid(1)));
    assert_eq!(
        a[3].via.as_ref().and_then(|v| v.via.source.as_deref()),
        Some("s3")
    );
    assert_eq!(a[5].short, newer.short);
    assert_eq!(
        a[5].long.as_ref().map(|s| s.id.to_string()),
        Some(uuid(100_005))
    );

    // Idempotent: a full rerun (no checkpoint) writes nothing.
    let again = run_copy(&mut copy(
        &aerospike,
        &emu.host(),
        "sessions",
        &dir.path().join("again.checkpoint"),
        "0",
    ));
    assert_eq!(count(&again, "copied"), 0, "{again:?}");
    assert_eq!(
        count(&again, "unchanged") + count(&again, "skipped-newer"),
        parts,
        "{again:?}"
    );
    assert!(snapshot(&resumed).await == a);
}

/// Legacy ids of every accepted shape arrive in Bigtable exactly as the
/// legacy system wrote them; ids that cannot be carried are counted as
/// invalid and not copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_ids_of_every_shape_are_copied_verbatim() {
    let emu = BigtableEmulator::bigtable();
    let (aerospike, client) = standin().await;
    let put = |set: &'static str, id: String, sid: String| {
        let client = &client;
        async move {
            let policy = WritePolicy {
                send_key: true,
                expiration: Expiration::Seconds(3_600),
                ..WritePolicy::default()
            };
            client
                .put(
                    &policy,
                    &as_key!("tracking", set, id.as_str()),
                    &[as_bin!("sid", sid)],
                )
                .await
                .unwrap();
        }
    };
    let ids = test_support::legacy_session_ids();
    for (i, sid) in ids.iter().enumerate() {
        put("short_sessions", format!("shape-{i}"), sid.clone()).await;
        put(
            "long_sessions",
            format!("shape-{i}"),
            ids[(i + 1) % ids.len()].clone(),
        )
        .await;
    }
    let refused = test_support::refused_session_ids();
    for (j, sid) in refused.iter().enumerate() {
        put("short_sessions", format!("refused-{j}"), sid.clone()).await;
    }
    let store = store(&emu.host(), "sessions").await;
    let dir = tempfile::tempdir().unwrap();
    let report = run_copy(&mut copy(
        &aerospike,
        &emu.host(),
        "sessions",
        &dir.path().join("copy.checkpoint"),
        "0",
    ));
    assert_eq!(count(&report, "copied"), 2 * ids.len() as u64, "{report:?}");
    assert_eq!(
        count(&report, "invalid"),
        refused.len() as u64,
        "{report:?}"
    );
    for (i, sid) in ids.iter().enumerate() {
        let state = store
            .read_state(&ClientId::parse(&format!("shape-{i}")).unwrap())
            .await
            .unwrap();
        assert_eq!(
            (
                state.short.map(|s| s.id.to_string()),
                state.long.map(|s| s.id.to_string())
            ),
            (Some(sid.clone()), Some(ids[(i + 1) % ids.len()].clone()))
        );
    }
    for j in 0..refused.len() {
        let state = store
            .read_state(&ClientId::parse(&format!("refused-{j}")).unwrap())
            .await
            .unwrap();
        assert_eq!(state, VisitorState::default());
    }
}

/// Runs a copy to the end; returns whether it succeeded, its report and its
/// log lines (JSON: stderr is a pipe here, not a terminal).
fn run_copy_logged(cmd: &mut Command) -> (bool, Vec<(String, u64)>, Vec<serde_json::Value>) {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // No bar, and none of its cursor movements.
    assert!(
        !stderr.contains('\x1b'),
        "escape codes in the logs: {stderr}"
    );
    assert!(
        !stderr.contains('\r'),
        "carriage returns in the logs: {stderr}"
    );
    let logs = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let report = stdout
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.parse().ok()?))
        })
        .collect();
    (out.status.success(), report, logs)
}

fn with_message<'a>(logs: &'a [serde_json::Value], message: &str) -> Vec<&'a serde_json::Value> {
    logs.iter().filter(|l| l["message"] == message).collect()
}

/// A few visitors (short and long sessions) and one record without its key.
async fn seed_few(client: &Client, visitors: usize) {
    let put = WritePolicy {
        send_key: true,
        expiration: Expiration::Seconds(600),
        ..WritePolicy::default()
    };
    for i in 0..visitors {
        let id = format!("few-{i}");
        for (set, n) in [("short_sessions", i), ("long_sessions", 100_000 + i)] {
            client
                .put(
                    &put,
                    &as_key!("tracking", set, id.as_str()),
                    &[as_bin!("sid", uuid(n))],
                )
                .await
                .unwrap();
        }
    }
    client
        .put(
            &WritePolicy::default(),
            &as_key!("tracking", "via", "keyless"),
            &[as_bin!("source", "s")],
        )
        .await
        .unwrap();
}

/// Not on a terminal (stderr is a pipe, as in CI or a Kubernetes Job): no
/// bar; a `Copy progress.` line every --progress-interval with partitions
/// done/total, and at the end a `Copy complete.` line with the run's totals,
/// the same as the report's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_progress_is_logged_and_ends_with_a_summary() {
    let emu = BigtableEmulator::bigtable();
    let (aerospike, client) = standin().await;
    seed_few(&client, 40).await;
    store(&emu.host(), "sessions").await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("copy.checkpoint");
    // The first 96 partitions of each set, as if already copied.
    let done: String = ["short_sessions", "long_sessions", "via"]
        .iter()
        .flat_map(|set| (0..96).map(move |pid| format!("{set} {pid}\n")))
        .collect();
    std::fs::write(&checkpoint, done).unwrap();

    // 81 records at 150/s: half a second at least, several 50 ms intervals.
    let (ok, report, logs) = run_copy_logged(&mut copy_every(
        &aerospike,
        &emu.host(),
        "sessions",
        &checkpoint,
        "150",
        "50ms",
    ));
    assert!(ok, "{logs:?}");

    let progress = with_message(&logs, "Copy progress.");
    assert!(!progress.is_empty(), "no progress line: {logs:?}");
    let total = 3 * 4096 - 3 * 96;
    for line in &progress {
        assert_eq!(line["partitions_total"], total, "{line}");
        assert!(line["partitions_done"].as_u64().unwrap() <= total, "{line}");
        for field in ["records", "copied", "skipped", "failed", "records_per_sec"] {
            assert!(line[field].is_u64(), "no {field}: {line}");
        }
        assert!(line["eta"].is_string(), "{line}");
    }

    let summary = with_message(&logs, "Copy complete.");
    assert_eq!(summary.len(), 1, "{logs:?}");
    let s = summary[0];
    assert_eq!(s["level"], "INFO", "{s}");
    assert_eq!(s["outcome"], "complete", "{s}");
    assert_eq!(s["partitions_done"], total, "{s}");
    assert_eq!(s["partitions_total"], total, "{s}");
    assert_eq!(s["partitions_failed"], 0, "{s}");
    assert_eq!(s["partitions_from_checkpoint"], 3 * 96, "{s}");
    // Every record is in one partition: those of the first 96 are skipped.
    let records = s["records"].as_u64().unwrap();
    assert!((60..=81).contains(&records), "{s}");
    assert_eq!(
        s["copied"].as_u64().unwrap() + s["invalid"].as_u64().unwrap(),
        records
    );
    assert_eq!(s["failed"], 0, "{s}");
    assert_eq!(s["skipped_newer"], 0, "{s}");
    assert_eq!(s["unchanged"], 0, "{s}");
    assert!(s["elapsed_secs"].as_f64().unwrap() >= 0.3, "{s}");
    assert!(s["elapsed"].as_str().unwrap().starts_with("0h00m"), "{s}");
    assert!(s["records_per_sec"].as_u64().unwrap() > 0, "{s}");
    // The summary's totals are the report's.
    assert_eq!(
        s["records"].as_u64(),
        Some(
            [
                "copied",
                "skipped-newer",
                "unchanged",
                "expired",
                "invalid",
                "failed"
            ]
            .iter()
            .map(|n| count(&report, n))
            .sum()
        )
    );
    assert_eq!(s["copied"].as_u64(), Some(count(&report, "copied")));
    assert_eq!(s["invalid"].as_u64(), Some(count(&report, "invalid")));
}

/// Records that fail (here: the table is missing) make the copy incomplete:
/// the summary says so at WARN, and the exit status is still 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_copy_ends_with_a_summary_that_says_what_failed() {
    let emu = BigtableEmulator::bigtable();
    let (aerospike, client) = standin().await;
    seed_few(&client, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let (ok, report, logs) = run_copy_logged(&mut copy(
        &aerospike,
        &emu.host(),
        "no_such_table",
        &dir.path().join("copy.checkpoint"),
        "0",
    ));
    assert!(!ok, "{logs:?}");
    let summary = with_message(&logs, "Copy incomplete.");
    assert_eq!(summary.len(), 1, "{logs:?}");
    let s = summary[0];
    assert_eq!(s["level"], "WARN", "{s}");
    assert_eq!(s["failed"], 10, "{s}");
    assert_eq!(s["failed"].as_u64(), Some(count(&report, "failed")));
    assert_eq!(s["invalid"], 1, "{s}");
    let failed_units = s["partitions_failed"].as_u64().unwrap();
    assert!((1..=10).contains(&failed_units), "{s}");
    assert_eq!(s["partitions_done"], 3 * 4096, "{s}");
    assert_eq!(
        s["outcome"],
        format!(
            "incomplete: 10 records failed, {failed_units} partition scans failed; a rerun retries them"
        ),
        "{s}"
    );
    assert!(with_message(&logs, "Copy complete.").is_empty());
}
