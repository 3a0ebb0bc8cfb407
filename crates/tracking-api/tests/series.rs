//! The metric series each configuration exports, against the committed lists
//! in `tests/series/`: dashboards, alerts and the README's PromQL depend on
//! the names and label sets, so a renamed, dropped or relabelled series fails
//! here. A list is one series per line (name and label set, value dropped),
//! sorted, after one accepted event (request series appear once counted).
//! A new series is added to its list and to the README's metrics table.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::process::{ApiProcess, bootstrap, post_json, request, workspace_binary};
use test_support::{BigtableEmulator, PubsubEmulator};

const EVENT: &str = r#"{"type":"page_view","client_id":"0b0e4c1e-8e0b-4d3b-9d8a-3c1f2b3a4d5e","url":"https://example.com/"}"#;

/// The series of a `/metrics` text: sample lines without their value.
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.rsplit_once(' ').map_or(l, |(s, _)| s).to_owned())
        .collect()
}

/// Fails with what is missing and what is new, both against the list.
fn assert_series(process: &ApiProcess, text: &str, list: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/series")
        .join(list);
    let expected: BTreeSet<String> = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let actual = series(text);
    let missing: Vec<_> = expected.difference(&actual).collect();
    let new: Vec<_> = actual.difference(&expected).collect();
    assert!(
        missing.is_empty() && new.is_empty(),
        "series differ from {}\nmissing: {missing:#?}\nnew: {new:#?}\nstderr: {:?}",
        path.display(),
        process.stderr.lock().unwrap()
    );
}

async fn scrape(process: &ApiProcess) -> String {
    let r = request(process.admin, "GET", "/metrics", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    String::from_utf8(r.body).unwrap()
}

async fn one_event(api: &ApiProcess) {
    let r = post_json(api.addr, &format!(r#"{{"events":[{EVENT}]}}"#))
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{:?}", String::from_utf8_lossy(&r.body));
}

#[tokio::test]
async fn the_embedded_default_exports_the_documented_series() {
    let api = ApiProcess::start(&[]);
    one_event(&api).await;
    assert_series(&api, &scrape(&api).await, "memory.series");
}

#[tokio::test]
async fn bigtable_pubsub_and_the_parallel_run_export_the_documented_series() {
    let bigtable = BigtableEmulator::bigtable();
    let pubsub = PubsubEmulator::pubsub();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let (bt, ps) = (bigtable.host(), pubsub.host());
    let env = [
        ("TRACKING_SESSION_STORE", "bigtable"),
        ("TRACKING_BIGTABLE_PROJECT", "p"),
        ("TRACKING_BIGTABLE_INSTANCE", "i"),
        ("BIGTABLE_EMULATOR_HOST", bt.as_str()),
        ("TRACKING_SINK", "pubsub"),
        ("TRACKING_PUBSUB_PROJECT", "p"),
        ("TRACKING_PUBSUB_TOPIC", "events"),
        ("PUBSUB_EMULATOR_HOST", ps.as_str()),
        ("TRACKING_SPOOL_DIR", spool.to_str().unwrap()),
        // Nothing listens on port 1: lookups fail, as in a proxy outage.
        ("TRACKING_MIGRATION_MODE", "parallel"),
        ("TRACKING_MIGRATION_URL", "http://127.0.0.1:1"),
    ];
    bootstrap(&env);
    let api = ApiProcess::start(&env);
    one_event(&api).await;
    assert_series(&api, &scrape(&api).await, "full.series");
}

#[tokio::test]
async fn migration_proxy_exports_the_documented_series() {
    // No Aerospike at port 1: the proxy starts unconnected, as in an outage.
    let proxy = ApiProcess::start_program(
        &workspace_binary("migration-proxy"),
        &[("MIGRATION_AEROSPIKE_HOSTS", "127.0.0.1:1")],
    );
    assert_series(&proxy, &scrape(&proxy).await, "proxy.series");
}
