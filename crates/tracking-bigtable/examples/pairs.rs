//! The Bigtable emulator's raw single-row read+write rate with the store's
//! own client and requests (`read_visitor`, `encode`), closed
//! loop at a fixed concurrency. Used by `scripts/bench-bigtable` as the
//! reference the service is compared with.
//!
//! `pairs HOST TABLE CONCURRENCY SECONDS` runs closed loop: CONCURRENCY tasks,
//! each starting its next pair when the last one ends.
//! `pairs HOST TABLE CONCURRENCY SECONDS RATE` runs open loop: pairs start at
//! fixed intended times, RATE a second, at most CONCURRENCY at once (a pair
//! that finds none free is dropped and counted), latency measured from the
//! intended time. Both print one JSON line.

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a benchmark tool

use std::time::{Duration, Instant};

use bigtable_rs::bigtable::{BigTable, BigTableConnection};
use bigtable_rs::google::bigtable::v2::MutateRowRequest;
use tracking_bigtable::schema::{encode, read_visitor, row_key};
use tracking_core::{ClientId, SessionRecord, Timestamp, Via, ViaRecord, VisitorState};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (host, table, concurrency, seconds, rate) = match &args[..] {
        [_, h, t, c, s] => (h, t, c, s, None),
        [_, h, t, c, s, r] => (h, t, c, s, Some(r.parse::<f64>().unwrap())),
        _ => panic!("usage: pairs HOST TABLE CONCURRENCY SECONDS [RATE]"),
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
    let (mut all, dropped) = match rate {
        None => closed_loop(&client, &table_name, concurrency, duration).await,
        Some(rate) => open_loop(&client, &table_name, concurrency, duration, rate).await,
    };
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64 / 1000.0;
    println!(
        "{{\"pairs\":{},\"pairs_per_s\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"dropped\":{dropped}}}",
        all.len(),
        all.len() as f64 / duration.as_secs_f64(),
        pct(0.50),
        pct(0.99)
    );
}

/// One read of visitor `i` and the renewal write a beacon event causes.
async fn pair(client: &mut BigTable, table_name: &str, i: u64) {
    let key = row_key(&ClientId::parse(&format!("v-{}", i % 100_000)).unwrap());
    client
        .read_rows(read_visitor(table_name, &key, None))
        .await
        .unwrap();
    let now = Timestamp::from_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    );
    let session = Some(SessionRecord {
        id: uuid::Uuid::from_u128(u128::from(i)).into(),
        last_seen: now,
    });
    // The cells a beacon of scripts/beacon.lua makes the service write: both
    // sessions and the via its utm_source records.
    let renewal = VisitorState {
        short: session.clone(),
        long: session,
        via: Via::new(Some("news"), None, None).map(|via| ViaRecord {
            via,
            expires_at: now.saturating_add(Duration::from_secs(30 * 86_400)),
        }),
    };
    client
        .mutate_row(MutateRowRequest {
            table_name: table_name.to_owned(),
            row_key: key,
            mutations: encode(&renewal, true, now),
            ..MutateRowRequest::default()
        })
        .await
        .unwrap();
}

/// Latencies in µs, and 0 dropped.
async fn closed_loop(
    client: &BigTable,
    table_name: &str,
    concurrency: usize,
    duration: Duration,
) -> (Vec<u64>, u64) {
    let end = Instant::now() + duration;
    let tasks: Vec<_> = (0..concurrency as u64)
        .map(|t| {
            let mut client = client.clone();
            let table_name = table_name.to_owned();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                // Task t takes visitors t, t + concurrency, …: together the
                // tasks write every visitor in order, each once per pass.
                let stride = concurrency as u64;
                let mut i = 0u64;
                while Instant::now() < end {
                    let started = Instant::now();
                    pair(&mut client, &table_name, i * stride + t).await;
                    i += 1;
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
    (all, 0)
}

/// Latencies in µs from the intended start, and the pairs dropped.
async fn open_loop(
    client: &BigTable,
    table_name: &str,
    concurrency: usize,
    duration: Duration,
    rate: f64,
) -> (Vec<u64>, u64) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
    let total = (rate * duration.as_secs_f64()) as u64;
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    let mut dropped = 0;
    for i in 0..total {
        let intended = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(intended).await;
        let Ok(permit) = std::sync::Arc::clone(&slots).try_acquire_owned() else {
            dropped += 1;
            continue;
        };
        let mut client = client.clone();
        let table_name = table_name.to_owned();
        tasks.push(tokio::spawn(async move {
            pair(&mut client, &table_name, i * 7919).await;
            drop(permit);
            intended.elapsed().as_micros() as u64
        }));
    }
    let mut all = Vec::with_capacity(tasks.len());
    for t in tasks {
        all.push(t.await.unwrap());
    }
    (all, dropped)
}
