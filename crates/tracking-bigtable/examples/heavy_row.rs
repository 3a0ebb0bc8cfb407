//! What deduplication costs a heavy visitor's row: one event a second for
//! 24 hours (each with a tracker-style id, a 36-character UUID), written
//! through the store itself at synthetic times, then the row read whole
//! (cells and bytes by family) and the store's own read of that row (one
//! id asked for) timed against a light visitor's. Run by
//! `scripts/bench-dedup-row` on the Bigtable emulator.
//!
//! `heavy_row HOST [EVENTS]` prints one JSON line.

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a benchmark tool

use std::sync::Arc;
use std::time::{Duration, Instant};

use bigtable_rs::bigtable::BigTableConnection;
use bigtable_rs::google::bigtable::v2::row_range::{EndKey, StartKey};
use bigtable_rs::google::bigtable::v2::{ReadRowsRequest, RowRange, RowSet};
use tracking_bigtable::schema::row_key;
use tracking_bigtable::{BigtableConfig, BigtableSessionStore, bootstrap};
use tracking_core::{
    CallContext, ClientId, IdCheck, RandomIds, SessionPolicy, SessionStore, Timestamp, Ttls,
};

const WINDOW: Duration = Duration::from_secs(86_400);
const CONCURRENCY: usize = 16;

/// One event as the API handles it: checked, then its id recorded.
async fn event(store: &BigtableSessionStore, who: &ClientId, at: Timestamp, id: &str) {
    store
        .touch_event(who, at, None, IdCheck::Check(id), CallContext::empty())
        .await
        .unwrap();
    store.remember(who, &[id], at);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let host = args.get(1).expect("usage: heavy_row HOST [EVENTS]").clone();
    let events: u64 = args.get(2).map_or(86_400, |n| n.parse().unwrap());
    let cfg = BigtableConfig {
        project: "p".into(),
        instance: "i".into(),
        table: "heavy".into(),
        emulator_host: Some(host.clone()),
        channels: 4,
        attempt_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(10),
        max_queued_renewals: tracking_bigtable::MAX_QUEUED_RENEWALS,
    };
    let ttls = Ttls {
        short: Duration::from_secs(30 * 60),
        long: Duration::from_secs(90 * 86_400),
        via: Duration::from_secs(30 * 86_400),
    };
    bootstrap(&cfg, ttls, Some(WINDOW)).await.unwrap();
    let store = Arc::new(
        BigtableSessionStore::connect(cfg.clone(), SessionPolicy::new(ttls, Arc::new(RandomIds)))
            .await
            .unwrap()
            .with_dedup(WINDOW),
    );
    let heavy = ClientId::parse("heavy-visitor").unwrap();
    let light = ClientId::parse("light-visitor").unwrap();
    let now = Timestamp::from_millis(
        u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap(),
    );
    let t0 = Timestamp::from_millis(now.as_millis() - events * 1000);
    let id = |i: u64| format!("{:08x}-0000-4000-8000-{:012x}", i, i.wrapping_mul(0x9e37));

    // The events, in order of time, a few at once (renewals are plain
    // writes, so order only matters per cell timestamp).
    let started = Instant::now();
    // The first alone: it mints the sessions.
    event(&store, &heavy, t0, &id(0)).await;
    let next = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (store, next, heavy) = (Arc::clone(&store), Arc::clone(&next), heavy.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= events {
                        break;
                    }
                    let at = Timestamp::from_millis(t0.as_millis() + i * 1000);
                    let e = id(i);
                    event(&store, &heavy, at, &e).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    store.flush().await;
    let written_s = started.elapsed().as_secs_f64();
    event(&store, &light, now, "light-0").await;
    store.flush().await;

    // The whole row, as Bigtable holds it.
    let conn = BigTableConnection::new_with_emulator(
        &host,
        "p",
        "i",
        false,
        1,
        Some(Duration::from_secs(60)),
    )
    .unwrap();
    let mut client = conn.client();
    let key = row_key(&heavy);
    // The visitor's row and its id rows: every key from the row's own to
    // the end of its `#e#` prefix.
    let mut end = key.clone();
    end.extend_from_slice(b"#e$");
    let rows = client
        .read_rows(ReadRowsRequest {
            table_name: client.get_full_table_name("heavy"),
            rows: Some(RowSet {
                row_keys: vec![],
                row_ranges: vec![RowRange {
                    start_key: Some(StartKey::StartKeyClosed(key.clone())),
                    end_key: Some(EndKey::EndKeyOpen(end)),
                }],
            }),
            ..ReadRowsRequest::default()
        })
        .await
        .unwrap();
    let (mut id_cells, mut id_bytes, mut other_cells, mut other_bytes) = (0u64, 0u64, 0u64, 0u64);
    for (row, cells) in &rows {
        for c in cells {
            // What a cell stores: row key, family, qualifier, timestamp, value.
            let bytes =
                (row.len() + c.family_name.len() + c.qualifier.len() + 8 + c.value.len()) as u64;
            if c.family_name == "e" {
                id_cells += 1;
                id_bytes += bytes;
            } else {
                other_cells += 1;
                other_bytes += bytes;
            }
        }
    }

    // The store's read (sessions + one id), heavy row against light row.
    let time_reads = async |who: &ClientId| {
        let mut took = Vec::new();
        for i in 0..200u64 {
            let e = format!("probe-{i}");
            let started = Instant::now();
            store
                .touch_event(who, now, None, IdCheck::Check(&e), CallContext::empty())
                .await
                .unwrap();
            took.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        took.sort_by(f64::total_cmp);
        (took[100], took[197])
    };
    let (heavy_p50, heavy_p99) = time_reads(&heavy).await;
    let (light_p50, light_p99) = time_reads(&light).await;
    println!(
        "{{\"events\":{events},\"write_s\":{written_s:.1},\"id_cells\":{id_cells},\"id_bytes\":{id_bytes},\"bytes_per_id\":{:.1},\"session_cells\":{other_cells},\"session_bytes\":{other_bytes},\"heavy_touch_p50_ms\":{heavy_p50:.2},\"heavy_touch_p99_ms\":{heavy_p99:.2},\"light_touch_p50_ms\":{light_p50:.2},\"light_touch_p99_ms\":{light_p99:.2}}}",
        id_bytes as f64 / id_cells.max(1) as f64
    );
}
