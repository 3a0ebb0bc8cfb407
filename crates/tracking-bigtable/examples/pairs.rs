//! The Bigtable emulator's raw single-row read+write rate with the store's
//! own client and request shapes (latest-cell read, two-cell write), closed
//! loop at a fixed concurrency. Used by `scripts/bench-bigtable` as the
//! reference the service is compared with.
//!
//! `pairs HOST TABLE CONCURRENCY SECONDS` prints one JSON line.

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a benchmark tool

use std::time::{Duration, Instant};

use bigtable_rs::bigtable::BigTableConnection;
use bigtable_rs::google::bigtable::v2::mutation::{Mutation as Kind, SetCell};
use bigtable_rs::google::bigtable::v2::{MutateRowRequest, Mutation, ReadRowsRequest, RowSet};
use tracking_bigtable::schema::{ID, LONG, SHORT, latest_cells_filter, row_key};
use tracking_core::ClientId;

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
                        .read_rows(ReadRowsRequest {
                            table_name: table_name.clone(),
                            rows: Some(RowSet {
                                row_keys: vec![key.clone()],
                                row_ranges: vec![],
                            }),
                            filter: Some(latest_cells_filter()),
                            rows_limit: 1,
                            ..ReadRowsRequest::default()
                        })
                        .await
                        .unwrap();
                    let now_us = (std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_millis()
                        * 1000) as i64;
                    let cell = |family: &str| Mutation {
                        mutation: Some(Kind::SetCell(SetCell {
                            family_name: family.into(),
                            column_qualifier: ID.to_vec(),
                            timestamp_micros: now_us,
                            value: vec![7; 16],
                        })),
                    };
                    client
                        .mutate_row(MutateRowRequest {
                            table_name: table_name.clone(),
                            row_key: key,
                            mutations: vec![cell(SHORT), cell(LONG)],
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
