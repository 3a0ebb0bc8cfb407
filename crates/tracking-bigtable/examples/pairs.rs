//! The Bigtable emulator's raw single-row read+write rate with the store's
//! own client and requests (`read_visitor`, `encode`), closed
//! loop at a fixed concurrency. Used by `scripts/bench-bigtable` as the
//! reference the service is compared with.
//!
//! `pairs HOST TABLE CONCURRENCY SECONDS` prints one JSON line.

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a benchmark tool

use std::time::{Duration, Instant};

use bigtable_rs::bigtable::BigTableConnection;
use bigtable_rs::google::bigtable::v2::MutateRowRequest;
use tracking_bigtable::schema::{encode, read_visitor, row_key};
use tracking_core::{ClientId, SessionRecord, Timestamp, Via, ViaRecord, VisitorState};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, host, table, concurrency, seconds] = &args[..] else {
        panic!("usage: pairs HOST TABLE CONCURRENCY SECONDS");
    };
    let concurrency: usize = concurrency.parse().unwrap();
    let duration = Duration::from_secs(seconds.parse().unwrap());
    let conn = BigTableConnection::new_with_emulator(
        host,
        "p",
        "i",
        false,
        4,
        Some(Duration::from_secs(5)),
    )
    .unwrap();
    let client = conn.client();
    let table_name = client.get_full_table_name(table);
    let end = Instant::now() + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let mut client = client.clone();
            let table_name = table_name.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = 0u64;
                while Instant::now() < end {
                    i += 1;
                    let key = row_key(
                        &ClientId::parse(&format!("v-{}", (i * 7919 + t as u64) % 100_000))
                            .unwrap(),
                    );
                    let started = Instant::now();
                    client
                        .read_rows(read_visitor(&table_name, &key))
                        .await
                        .unwrap();
                    let now = Timestamp::from_millis(
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_millis() as u64,
                    );
                    let session = Some(SessionRecord {
                        id: uuid::Uuid::from_u128(u128::from(i)),
                        last_seen: now,
                    });
                    // The cells a beacon of scripts/beacon.lua makes the
                    // service write: both sessions and the via its
                    // utm_source records.
                    let renewal = VisitorState {
                        short: session,
                        long: session,
                        via: Via::new(Some("news"), None, None).map(|via| ViaRecord {
                            via,
                            expires_at: now.saturating_add(Duration::from_secs(30 * 86_400)),
                        }),
                    };
                    client
                        .mutate_row(MutateRowRequest {
                            table_name: table_name.clone(),
                            row_key: key,
                            mutations: encode(&renewal, true, now),
                            ..MutateRowRequest::default()
                        })
                        .await
                        .unwrap();
                    latencies.push(started.elapsed().as_micros() as u64);
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64 / 1000.0;
    println!(
        "{{\"pairs\":{},\"pairs_per_s\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
        all.len(),
        all.len() as f64 / duration.as_secs_f64(),
        pct(0.50),
        pct(0.99)
    );
}
