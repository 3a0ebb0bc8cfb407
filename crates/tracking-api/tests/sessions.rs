//! One visitor, one session, whichever process answers: several real
//! `tracking-api` binaries on one table of the Bigtable emulator, each
//! receiving one of a new visitor's first events at the same moment (a page
//! load's beacons spread by a per-request load balancer), and again once the
//! short session has expired.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::process::{ApiProcess, post_at_once, wait_for_lines};
use test_support::BigtableEmulator;

const PROCESSES: usize = 3;
const VISITORS: usize = 200;
const SHORT_TTL: Duration = Duration::from_secs(3);

/// What one visitor's events of one round said: short ids, long ids, how
/// many minted each, how many were not `ok`.
#[derive(Debug, Default)]
struct Seen {
    short: BTreeSet<String>,
    long: BTreeSet<String>,
    short_new: usize,
    long_new: usize,
    not_ok: usize,
}

/// The events of round `kind`, by visitor.
fn by_visitor(events: &[serde_json::Value], kind: &str) -> BTreeMap<String, Seen> {
    let mut out: BTreeMap<String, Seen> = BTreeMap::new();
    for e in events.iter().filter(|e| e["type"] == kind) {
        let seen = out
            .entry(e["client_id"].as_str().unwrap().to_owned())
            .or_default();
        let s = &e["session"];
        if s["status"] != "ok" {
            seen.not_ok += 1;
            continue;
        }
        seen.short
            .insert(s["short_id"].as_str().unwrap().to_owned());
        seen.long.insert(s["long_id"].as_str().unwrap().to_owned());
        seen.short_new += usize::from(s["short_new"] == true);
        seen.long_new += usize::from(s["long_new"] == true);
    }
    out
}

/// Sends, for every visitor, one event of type `kind` to each process, all
/// at the same moment, and returns every event the processes wrote so far.
async fn round(
    apis: &[ApiProcess],
    sinks: &[PathBuf],
    kind: &str,
    total: usize,
) -> Vec<serde_json::Value> {
    let requests: Vec<_> = (0..VISITORS)
        .flat_map(|v| {
            apis.iter().map(move |api| {
                (
                    api.addr,
                    format!(r#"{{"type":"{kind}","client_id":"race-{v}"}}"#),
                )
            })
        })
        .collect();
    let statuses = post_at_once(&requests).await;
    assert!(statuses.iter().all(|s| *s == 204), "{statuses:?}");
    let mut all = Vec::new();
    for sink in sinks {
        all.extend(wait_for_lines(sink, total, Duration::from_secs(30)));
    }
    assert_eq!(all.len(), total * apis.len(), "events written");
    all
}

/// Fails, counting them, when some visitors' events of one round disagree
/// (two short or long ids) or were left without sessions.
fn assert_one_session_each(seen: &BTreeMap<String, Seen>) {
    let split: Vec<_> = seen
        .iter()
        .filter(|(_, s)| s.short.len() != 1 || s.long.len() != 1 || s.not_ok > 0)
        .collect();
    assert!(
        split.is_empty(),
        "{} of {} visitors with two sessions or none, e.g. {:?}",
        split.len(),
        seen.len(),
        &split[..split.len().min(2)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_events_at_several_processes_at_once_share_one_session() {
    let emu = BigtableEmulator::bigtable();
    let host = emu.host();
    let dir = tempfile::tempdir().unwrap();
    let ttl = format!("{}s", SHORT_TTL.as_secs());
    let env = |sink: &str| -> Vec<(&str, String)> {
        vec![
            ("TRACKING_SESSION_STORE", "bigtable".into()),
            ("TRACKING_BIGTABLE_PROJECT", "p".into()),
            ("TRACKING_BIGTABLE_INSTANCE", "i".into()),
            ("BIGTABLE_EMULATOR_HOST", host.clone()),
            ("TRACKING_SHORT_TTL", ttl.clone()),
            // Generous deadlines: the machine is shared, and an event
            // without sessions would hide a split instead of showing one.
            ("TRACKING_SESSION_TIMEOUT", "10s".into()),
            ("TRACKING_BIGTABLE_ATTEMPT_TIMEOUT", "3s".into()),
            ("TRACKING_SINK", "file".into()),
            ("TRACKING_SINK_PATH", sink.into()),
        ]
    };
    let sinks: Vec<PathBuf> = (0..PROCESSES)
        .map(|p| dir.path().join(format!("events-{p}.ndjson")))
        .collect();
    let bootstrap = Command::new(env!("CARGO_BIN_EXE_tracking-api"))
        .arg("bootstrap")
        .env_clear()
        .envs(env("unused"))
        .output()
        .unwrap();
    assert!(bootstrap.status.success(), "{bootstrap:?}");
    let apis: Vec<ApiProcess> = sinks
        .iter()
        .map(|sink| {
            let env = env(sink.to_str().unwrap());
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            ApiProcess::start(&env)
        })
        .collect();

    // Round 1: every visitor is new.
    let events = round(&apis, &sinks, "first", VISITORS).await;
    let first = by_visitor(&events, "first");
    assert_eq!(first.len(), VISITORS);
    assert_one_session_each(&first);
    // Exactly one event of each visitor created each session; the others
    // adopted it in their own output.
    for (v, s) in &first {
        assert_eq!((s.short_new, s.long_new), (1, 1), "{v}: {s:?}");
    }

    // Round 2, once every short session has expired: a new short session
    // per visitor, minted once; the long one continues.
    tokio::time::sleep(SHORT_TTL + Duration::from_millis(500)).await;
    let events = round(&apis, &sinks, "again", 2 * VISITORS).await;
    let again = by_visitor(&events, "again");
    assert_eq!(again.len(), VISITORS);
    assert_one_session_each(&again);
    for (v, s) in &again {
        let before = &first[v];
        assert_ne!(s.short, before.short, "{v}: the short session expired");
        assert_eq!(s.long, before.long, "{v}: the long session continues");
        assert_eq!((s.short_new, s.long_new), (1, 0), "{v}: {s:?}");
    }
}
