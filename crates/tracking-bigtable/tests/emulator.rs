//! The Bigtable session store against the real Cloud Bigtable emulator,
//! started by the test on a free port.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bigtable_rs::bigtable::BigTableConnection;
use bigtable_rs::google::bigtable::v2::mutation::{Mutation as Kind, SetCell};
use bigtable_rs::google::bigtable::v2::{
    CheckAndMutateRowRequest, MutateRowRequest, Mutation, ReadRowsRequest, RowSet,
};
use googleapis_tonic_google_bigtable_admin_v2::google::bigtable::admin::v2::ColumnFamily;
use test_support::{BigtableEmulator, Gate};
use tracking_bigtable::admin::create_table;
use tracking_bigtable::schema::{ID, LONG, SHORT, latest_since, read_visitor, row_key};
use tracking_bigtable::{BigtableConfig, BigtableSessionStore, BootstrapOutcome, bootstrap};
use tracking_core::{
    CallContext, ClientId, Clock, ManualClock, RandomIds, SequentialIds, SessionId, SessionPolicy,
    SessionStore, StoreError, Timestamp, Ttls, Via,
};
use uuid::Uuid;

const MIN: Duration = Duration::from_secs(60);

fn ttls() -> Ttls {
    Ttls {
        short: 30 * MIN,
        long: 90 * 24 * 60 * MIN,
        via: 60 * MIN,
    }
}

fn config(emu: &BigtableEmulator, table: &str) -> BigtableConfig {
    BigtableConfig {
        project: "test-project".into(),
        instance: "test-instance".into(),
        table: table.into(),
        emulator_host: Some(emu.host()),
        channels: 2,
        attempt_timeout: Duration::from_millis(200),
        write_timeout: Duration::from_secs(2),
        max_queued_renewals: tracking_bigtable::MAX_QUEUED_RENEWALS,
    }
}

/// A clock at the real present: emulator GC judges cell ages by real time.
fn clock() -> Arc<ManualClock> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    Arc::new(ManualClock::new(Timestamp::from_millis(now)))
}

async fn store(cfg: BigtableConfig) -> BigtableSessionStore {
    let policy = SessionPolicy::new(ttls(), Arc::new(SequentialIds::default()));
    BigtableSessionStore::connect(cfg, policy).await.unwrap()
}

fn id(s: &str) -> ClientId {
    ClientId::parse(s).unwrap()
}

#[tokio::test]
async fn bootstrap_creates_once_and_leaves_an_existing_table_alone() {
    let emu = BigtableEmulator::bigtable();
    let cfg = config(&emu, "sessions");
    assert_eq!(
        bootstrap(&cfg, ttls(), Some(Duration::from_secs(86_400)))
            .await
            .unwrap(),
        BootstrapOutcome::Created
    );
    assert_eq!(
        bootstrap(&cfg, ttls(), Some(Duration::from_secs(86_400)))
            .await
            .unwrap(),
        BootstrapOutcome::AlreadyExists
    );
}

#[tokio::test]
async fn sessions_continue_within_the_ttl_and_renew_after_it() {
    let emu = BigtableEmulator::bigtable();
    let cfg = config(&emu, "sessions");
    bootstrap(&cfg, ttls(), Some(Duration::from_secs(86_400)))
        .await
        .unwrap();
    let clock = clock();
    let s = store(cfg.clone()).await;
    let v = id("visitor-1");
    let ad = Via::new(Some("ad"), None, None).unwrap();

    let a = s
        .touch(&v, clock.now(), Some(&ad), CallContext::empty())
        .await
        .unwrap();
    assert!(a.short_new && a.long_new);
    clock.advance(29 * MIN);
    let b = s
        .touch(&v, clock.now(), None, CallContext::empty())
        .await
        .unwrap();
    assert_eq!((&b.short_id, &b.long_id), (&a.short_id, &a.long_id));
    assert!(!b.short_new && !b.long_new);
    assert_eq!(
        b.via.as_ref().map(|r| r.via.source.as_deref()),
        Some(Some("ad"))
    );
    clock.advance(30 * MIN);
    let c = s
        .touch(&v, clock.now(), None, CallContext::empty())
        .await
        .unwrap();
    assert_ne!(c.short_id, a.short_id);
    assert!(c.short_new && !c.long_new);
    assert_eq!(c.long_id, a.long_id);
    // The via was recorded 59 minutes ago with a 60-minute TTL: still attached.
    assert!(c.via.is_some());
    clock.advance(MIN);
    assert!(
        s.touch(&v, clock.now(), None, CallContext::empty())
            .await
            .unwrap()
            .via
            .is_none()
    );

    // A new store (a restarted process) sees the same sessions: they live in Bigtable.
    s.flush().await;
    let again = store(cfg).await;
    let d = again
        .touch(&v, clock.now(), None, CallContext::empty())
        .await
        .unwrap();
    assert_eq!((&d.short_id, &d.long_id), (&c.short_id, &c.long_id));
    // One read and one write per event: the two that minted (the first,
    // and the third's short session) wrote conditionally, the other two
    // renewed with a plain write.
    s.flush().await;
    let counters: HashMap<_, _> = SessionStore::counters(&s).into_iter().collect();
    assert_eq!(
        ["read", "write", "conditional_write", "conflict"].map(|op| counters[op]),
        [4, 2, 2, 0]
    );
}

/// The emulator garbage-collects old versions within a second or two under a
/// max-versions rule, which would hide a missing latest-cell filter. Here the
/// families have no GC rule at all, the row holds several versions, and the
/// newest short-session cell is expired while an older one is "alive" only
/// by its id: the store must read the newest and judge it expired.
#[tokio::test]
async fn reads_only_the_newest_version_and_judges_its_expiry() {
    let emu = BigtableEmulator::bigtable();
    let cfg = config(&emu, "no_gc");
    let families = HashMap::from([
        (SHORT.to_owned(), ColumnFamily::default()),
        (LONG.to_owned(), ColumnFamily::default()),
        ("v".to_owned(), ColumnFamily::default()),
    ]);
    assert_eq!(
        create_table(&cfg, families).await.unwrap(),
        BootstrapOutcome::Created
    );
    let clock = clock();
    let now = clock.now().as_millis() as i64;
    let v = id("versioned");
    let key = row_key(&v);
    let (mut raw, table_name) = raw(&emu, &cfg);
    let cell = |family: &str, id: u128, at_ms: i64| Mutation {
        mutation: Some(Kind::SetCell(SetCell {
            family_name: family.into(),
            column_qualifier: ID.to_vec(),
            timestamp_micros: at_ms * 1000,
            value: Uuid::from_u128(id).as_bytes().to_vec(),
        })),
    };
    let minutes = |m: i64| m * 60_000;
    // Short session: versions at -100, -80, -45 minutes (newest: expired, 30-minute TTL).
    // Long session: versions at -100 and -45 minutes (newest: alive).
    let mutations = vec![
        cell(SHORT, 1, now - minutes(100)),
        cell(SHORT, 2, now - minutes(80)),
        cell(SHORT, 3, now - minutes(45)),
        cell(LONG, 10, now - minutes(100)),
        cell(LONG, 11, now - minutes(45)),
    ];
    raw.mutate_row(MutateRowRequest {
        table_name: table_name.clone(),
        row_key: key.clone(),
        mutations,
        ..MutateRowRequest::default()
    })
    .await
    .unwrap();
    // Without a filter every version is still there: the trap is armed.
    let all = raw
        .read_rows(ReadRowsRequest {
            table_name: table_name.clone(),
            rows: Some(RowSet {
                row_keys: vec![key.clone()],
                row_ranges: vec![],
            }),
            ..ReadRowsRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(all[0].1.len(), 5, "five versions stored");
    // The store's read returns one cell per column, not every stored version.
    let filtered = raw
        .read_rows(read_visitor(&table_name, &key, None))
        .await
        .unwrap();
    let cells = &filtered[0].1;
    assert_eq!(cells.len(), 2, "one cell per column");
    assert!(
        cells
            .iter()
            .all(|c| c.timestamp_micros == (now - minutes(45)) * 1000)
    );

    let s = store(cfg).await;
    let got = s
        .touch(&v, clock.now(), None, CallContext::empty())
        .await
        .unwrap();
    assert!(
        got.short_new,
        "the newest short cell is 45 minutes old: expired"
    );
    assert!(
        ![1, 2, 3]
            .map(|n| SessionId::from(Uuid::from_u128(n)))
            .contains(&got.short_id)
    );
    assert!(!got.long_new);
    assert_eq!(
        got.long_id,
        SessionId::from(Uuid::from_u128(11)),
        "the newest long cell wins"
    );
}

#[tokio::test]
async fn a_dead_emulator_fails_fast_and_its_return_needs_no_restart() {
    let mut emu = BigtableEmulator::bigtable();
    let cfg = config(&emu, "sessions");
    bootstrap(&cfg, ttls(), Some(Duration::from_secs(86_400)))
        .await
        .unwrap();
    let clock = clock();
    let s = store(cfg.clone()).await;
    let v = id("v-dead");
    s.touch(&v, clock.now(), None, CallContext::empty())
        .await
        .unwrap();
    s.flush().await;

    emu.stop();
    let started = Instant::now();
    let err = s
        .touch(&v, clock.now(), None, CallContext::empty())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable(_) | StoreError::Timeout(_)),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Back (empty, as a restarted emulator is): the same store works again.
    emu.restart();
    bootstrap(&cfg, ttls(), Some(Duration::from_secs(86_400)))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let back = loop {
        match s.touch(&v, clock.now(), None, CallContext::empty()).await {
            Ok(x) => break x,
            Err(e) if Instant::now() > deadline => panic!("store did not recover: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert!(back.short_new, "the restarted emulator is empty");
}

/// With Bigtable unreachable, every call fails at once and would be tried
/// three times; the retry budget keeps retries to the 100 saved up plus a
/// tenth of the calls, so that retries cannot multiply the load on a store
/// that is already failing. Every event still gets its answer (an error),
/// none hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_a_failing_store_stay_within_the_budget() {
    let emu = BigtableEmulator::bigtable();
    let cfg = config(&emu, "sessions");
    bootstrap(&cfg, ttls(), Some(Duration::from_secs(86_400)))
        .await
        .unwrap();
    let (s, gate) = through_gate(&emu, &cfg).await;
    s.read_state(&id("warm-up")).await.unwrap();
    let reads_before = read_calls(&s);
    gate.close();
    const EVENTS: u64 = 1000;
    let clock = clock();
    let tasks: Vec<_> = (0..8u64)
        .map(|task| {
            let (s, now) = (Arc::clone(&s), clock.now());
            tokio::spawn(async move {
                let mut failed = 0u64;
                for i in 0..EVENTS / 8 {
                    let v = id(&format!("v-{task}-{i}"));
                    let answer = tokio::time::timeout(
                        Duration::from_secs(10),
                        s.touch(&v, now, None, CallContext::empty()),
                    )
                    .await
                    .expect("a touch of a failing store ends");
                    failed += u64::from(answer.is_err());
                }
                failed
            })
        })
        .collect();
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap();
    }
    assert_eq!(failed, EVENTS, "the gate is closed: every touch fails");
    let sent = read_calls(&s) - reads_before;
    // One first attempt per event; retries: 100 saved + a tenth of the calls
    // (the warm-up's included). Without the budget: 3 per event.
    assert!(sent >= EVENTS, "{sent} reads");
    assert!(
        sent <= EVENTS + 100 + (EVENTS + 1) / 10,
        "{sent} reads for {EVENTS} events"
    );
}

/// Read RPCs sent so far (retries included), from the store's counters.
fn read_calls(s: &BigtableSessionStore) -> u64 {
    counter(s, "read")
}

/// A store reaching the emulator through a [`Gate`].
async fn through_gate(
    emu: &BigtableEmulator,
    cfg: &BigtableConfig,
) -> (Arc<BigtableSessionStore>, Gate) {
    let gate = Gate::start(emu.host().parse().unwrap());
    let s = store(BigtableConfig {
        emulator_host: Some(gate.host()),
        ..cfg.clone()
    })
    .await;
    (Arc::new(s), gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_events_of_one_visitor_share_one_session() {
    let emu = BigtableEmulator::bigtable();
    let cfg = config(&emu, "sessions");
    bootstrap(&cfg, ttls(), Some(Duration::from_secs(86_400)))
        .await
        .unwrap();
    let clock = clock();
    let s = Arc::new(store(cfg).await);
    let v = id("busy-visitor");
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (s, v, now) = (Arc::clone(&s), v.clone(), clock.now());
            tokio::spawn(async move { s.touch(&v, now, None, CallContext::empty()).await.unwrap() })
        })
        .collect();
    let mut ids = Vec::new();
    let mut new = 0;
    for t in tasks {
        let got = t.await.unwrap();
        ids.push((got.short_id, got.long_id));
        new += usize::from(got.short_new);
    }
    assert_eq!(new, 1, "exactly one event minted the session");
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
}

/// A raw client of the emulator and the table's full name.
fn raw(emu: &BigtableEmulator, cfg: &BigtableConfig) -> (bigtable_rs::bigtable::BigTable, String) {
    let conn = BigTableConnection::new_with_emulator(
        &emu.host(),
        &cfg.project,
        &cfg.instance,
        false,
        1,
        None,
    )
    .unwrap();
    let client = conn.client();
    let table = client.get_full_table_name(&cfg.table);
    (client, table)
}

fn set_cell(family: &str, at_ms: u64, value: &[u8]) -> Mutation {
    Mutation {
        mutation: Some(Kind::SetCell(SetCell {
            family_name: family.into(),
            column_qualifier: ID.to_vec(),
            timestamp_micros: at_ms as i64 * 1000,
            value: value.to_vec(),
        })),
    }
}

/// The predicate of the store's conditional writes, as the emulator judges
/// it: a row with `cells` (family, ms after `t`), a `CheckAndMutateRow`
/// with `latest_since(guards)` (family, ms after `t`) writing a marker
/// cell when it does not match. Each case on a row of its own.
#[tokio::test]
async fn the_emulator_judges_the_conditional_write_predicate() {
    let emu = BigtableEmulator::bigtable();
    let cfg = config(&emu, "sessions");
    bootstrap(&cfg, ttls(), Some(Duration::from_secs(86_400)))
        .await
        .unwrap();
    let (mut client, table) = raw(&emu, &cfg);
    let t = clock().now().as_millis();
    let short_ttl = 30 * 60_000;
    // (cells, guards, matches): (family, ms after `t`) pairs.
    type Cells<'a> = &'a [(&'a str, i64)];
    let cases: [(Cells, Cells, bool); 8] = [
        // Nothing there: written.
        (&[], &[(SHORT, -short_ttl + 1)], false),
        // A live short session (the latest cell within the TTL): not written.
        (&[(SHORT, -5_000)], &[(SHORT, -short_ttl + 1)], true),
        // Its boundary: a cell exactly one TTL old is expired.
        (&[(SHORT, -short_ttl)], &[(SHORT, -short_ttl + 1)], false),
        (&[(SHORT, -short_ttl + 1)], &[(SHORT, -short_ttl + 1)], true),
        // Another family's cell does not count for this one...
        (&[(LONG, -5_000)], &[(SHORT, -short_ttl + 1)], false),
        // ...unless both are guarded (a mint of both sessions).
        (
            &[(LONG, -5_000)],
            &[(SHORT, -short_ttl + 1), (LONG, -1_000_000)],
            true,
        ),
        // A renewal's guard: nothing newer than the cell it renews...
        (&[(SHORT, -5_000)], &[(SHORT, -4_999)], false),
        // ...or something is.
        (&[(SHORT, -5_000), (SHORT, -10)], &[(SHORT, -4_999)], true),
    ];
    let at = |offset: i64| Timestamp::from_millis((t as i64 + offset) as u64);
    for (i, (cells, guards, matches)) in cases.into_iter().enumerate() {
        let key = format!("case-{i}").into_bytes();
        if !cells.is_empty() {
            client
                .mutate_row(MutateRowRequest {
                    table_name: table.clone(),
                    row_key: key.clone(),
                    mutations: cells
                        .iter()
                        .map(|(f, o)| set_cell(f, at(*o).as_millis(), b"old"))
                        .collect(),
                    ..MutateRowRequest::default()
                })
                .await
                .unwrap();
        }
        let guards: Vec<_> = guards.iter().map(|(f, o)| (*f, at(*o))).collect();
        let answer = client
            .check_and_mutate_row(CheckAndMutateRowRequest {
                table_name: table.clone(),
                row_key: key.clone(),
                predicate_filter: Some(latest_since(&guards)),
                false_mutations: vec![set_cell(SHORT, t + 1, b"new")],
                ..CheckAndMutateRowRequest::default()
            })
            .await
            .unwrap();
        assert_eq!(answer.predicate_matched, matches, "case {i}");
        let rows = client
            .read_rows(read_visitor(&table, &key, None))
            .await
            .unwrap();
        let written = rows
            .first()
            .is_some_and(|(_, cells)| cells.iter().any(|c| c.value == b"new"));
        assert_eq!(written, !matches, "case {i}: written");
    }
}

/// Two "processes" (two stores) on one table; B's calls go through a gate
/// that holds the emulator's answers 1 s, so B reads the row before A mints
/// the visitor's sessions and writes after: B's conditional write must find
/// A's cells, write nothing, and B's event must carry A's ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mint_that_loses_the_race_adopts_the_winners_sessions() {
    let emu = BigtableEmulator::bigtable();
    let cfg = config(&emu, "sessions");
    bootstrap(&cfg, ttls(), Some(Duration::from_secs(86_400)))
        .await
        .unwrap();
    let (a, b, gate) = racing_stores(&emu, &cfg).await;
    let now = clock().now();
    let (won, lost) = race(&a, &b, &id("contested"), now, now).await;
    drop(gate);
    assert!(won.short_new && won.long_new);
    assert_eq!(
        (&lost.short_id, &lost.long_id, lost.short_new, lost.long_new),
        (&won.short_id, &won.long_id, false, false)
    );
    let counters: HashMap<_, _> = SessionStore::counters(&b).into_iter().collect();
    assert_eq!(
        (counters["conflict"], counters["read"]),
        (1, 3),
        "{counters:?}"
    );
}

/// The window a conditional renewal closes: B's event comes just before the
/// short session's end (1 s left: under the write timeout, so its renewal is
/// conditional) and reads the row; A's event, just after the end, finds it
/// expired and mints a new session before B's renewal lands. B must not
/// renew the old session under A's new one: it adopts A's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_at_the_end_of_a_session_adopts_a_mint_it_raced() {
    let emu = BigtableEmulator::bigtable();
    let cfg = config(&emu, "sessions");
    bootstrap(&cfg, ttls(), Some(Duration::from_secs(86_400)))
        .await
        .unwrap();
    let (a, b, gate) = racing_stores(&emu, &cfg).await;
    let t0 = clock().now();
    let v = id("ending");
    let first = a.touch(&v, t0, None, CallContext::empty()).await.unwrap();
    let before_end = Timestamp::from_millis(t0.as_millis() + 30 * 60_000 - 1_000);
    let after_end = Timestamp::from_millis(t0.as_millis() + 30 * 60_000 + 10);
    let (minted, renewed) = race(&a, &b, &v, after_end, before_end).await;
    drop(gate);
    assert!(minted.short_new && minted.short_id != first.short_id);
    assert_eq!(
        (&renewed.short_id, renewed.short_new, &renewed.long_id),
        (&minted.short_id, false, &first.long_id)
    );
}

/// B's event at `b_at` (B behind the slow gate) and, while B waits for its
/// read's answer (served at once, answered a second later at the
/// earliest), A's event at `a_at`; then B writes. Returns (A's, B's).
async fn race(
    a: &BigtableSessionStore,
    b: &BigtableSessionStore,
    v: &ClientId,
    a_at: Timestamp,
    b_at: Timestamp,
) -> (tracking_core::Sessions, tracking_core::Sessions) {
    let slow = tokio::spawn({
        let (b, v) = (b.clone(), v.clone());
        async move { b.touch(&v, b_at, None, CallContext::empty()).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fast = a.touch(v, a_at, None, CallContext::empty()).await.unwrap();
    (fast, slow.await.unwrap())
}

/// A store reaching the emulator directly and one through a gate that holds
/// the emulator's answers 1 s once its connection is open (both with random
/// ids, as two processes have).
async fn racing_stores(
    emu: &BigtableEmulator,
    cfg: &BigtableConfig,
) -> (BigtableSessionStore, BigtableSessionStore, Gate) {
    let random = || SessionPolicy::new(ttls(), Arc::new(RandomIds));
    let a = BigtableSessionStore::connect(cfg.clone(), random())
        .await
        .unwrap();
    let gate = Gate::start(emu.host().parse().unwrap());
    let b = BigtableSessionStore::connect(
        BigtableConfig {
            emulator_host: Some(gate.host()),
            channels: 1,
            attempt_timeout: Duration::from_secs(10),
            ..cfg.clone()
        },
        random(),
    )
    .await
    .unwrap();
    // The connection is opened before the gate slows down.
    b.read_state(&id("warm-up")).await.unwrap();
    gate.set_reply_delay(Duration::from_secs(1));
    (a, b, gate)
}

/// In one process, an event sees the previous event's renewal even while
/// that write is still on its way: a via recorded by one event is on the
/// next one, as in a batch, for 50 visitors at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_event_in_a_process_sees_a_renewal_still_in_flight() {
    let emu = BigtableEmulator::bigtable();
    let cfg = config(&emu, "sessions");
    bootstrap(&cfg, ttls(), Some(Duration::from_secs(86_400)))
        .await
        .unwrap();
    let s = Arc::new(store(cfg).await);
    let now = clock().now();
    let visitors: Vec<_> = (0..50).map(|i| id(&format!("batch-{i}"))).collect();
    for v in &visitors {
        s.touch(v, now, None, CallContext::empty()).await.unwrap();
    }
    let tasks: Vec<_> = visitors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let (s, v) = (Arc::clone(&s), v.clone());
            tokio::spawn(async move {
                let via = Via::new(Some(&format!("ad-{i}")), None, None).unwrap();
                let later = Timestamp::from_millis(now.as_millis() + 1);
                s.touch(&v, later, Some(&via), CallContext::empty())
                    .await
                    .unwrap();
                let next = s
                    .touch(&v, later, None, CallContext::empty())
                    .await
                    .unwrap();
                next.via.and_then(|r| r.via.source.map(|x| x.to_string()))
            })
        })
        .collect();
    let mut missing = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let got = t.await.unwrap();
        if got != Some(format!("ad-{i}")) {
            missing.push((i, got));
        }
    }
    assert!(
        missing.is_empty(),
        "the next event lost the via: {missing:?}"
    );
}

/// An unreadable cell counts as absent, even when it is recent: the
/// conditional write of the new session must not take it for a live
/// session someone else wrote (it would never succeed, and the visitor
/// would have no sessions until the cell aged out).
#[tokio::test]
async fn an_unreadable_live_cell_does_not_block_the_mint() {
    let emu = BigtableEmulator::bigtable();
    let cfg = config(&emu, "sessions");
    bootstrap(&cfg, ttls(), Some(Duration::from_secs(86_400)))
        .await
        .unwrap();
    let (mut client, table) = raw(&emu, &cfg);
    let now = clock().now();
    let v = id("garbled");
    client
        .mutate_row(MutateRowRequest {
            table_name: table,
            row_key: row_key(&v),
            mutations: vec![
                set_cell(SHORT, now.as_millis() - 60_000, b"bad\x01id"),
                set_cell(LONG, now.as_millis() - 60_000, &[0xff; 16][..15]),
            ],
            ..MutateRowRequest::default()
        })
        .await
        .unwrap();
    let s = store(cfg).await;
    let first = s.touch(&v, now, None, CallContext::empty()).await.unwrap();
    assert!(first.short_new && first.long_new);
    let next = s.touch(&v, now, None, CallContext::empty()).await.unwrap();
    assert_eq!(
        (next.short_id, next.long_id),
        (first.short_id, first.long_id)
    );
    let counters: HashMap<_, _> = SessionStore::counters(&s).into_iter().collect();
    assert_eq!(
        ["corrupt_cell", "conditional_write", "conflict"].map(|op| counters[op]),
        [2, 1, 0]
    );
}

/// A busy visitor's row keeps one version per column however often it is
/// renewed: every write deletes the column's older versions. (The emulator
/// never collects garbage in a table created with its families, and
/// Bigtable does it lazily; without the deletes each event added a version
/// that every later read of the row had to copy and filter, and a few
/// hundred busy visitors stalled the emulator for everyone.)
#[tokio::test]
async fn renewals_keep_one_version_per_column() {
    let emu = BigtableEmulator::bigtable();
    let cfg = config(&emu, "sessions");
    bootstrap(&cfg, ttls(), Some(Duration::from_secs(86_400)))
        .await
        .unwrap();
    let (mut raw, table_name) = raw(&emu, &cfg);
    let clock = clock();
    let s = store(cfg).await;
    let v = id("busy");
    let via = Via::new(Some("news"), None, None).unwrap();
    let first = s
        .touch(&v, clock.now(), Some(&via), CallContext::empty())
        .await
        .unwrap();
    for _ in 0..40 {
        clock.advance(Duration::from_millis(250));
        let next = s
            .touch(&v, clock.now(), Some(&via), CallContext::empty())
            .await
            .unwrap();
        assert_eq!(next.short_id, first.short_id);
        s.flush().await;
    }
    let all = raw
        .read_rows(ReadRowsRequest {
            table_name,
            rows: Some(RowSet {
                row_keys: vec![row_key(&v)],
                row_ranges: vec![],
            }),
            ..ReadRowsRequest::default()
        })
        .await
        .unwrap();
    let cells = &all[0].1;
    assert_eq!(
        cells.len(),
        3,
        "one version each of the short, long and via cells after 41 writes: {} stored",
        cells.len()
    );
    assert!(
        cells
            .iter()
            .all(|c| c.timestamp_micros == clock.now().as_millis() as i64 * 1000),
        "the newest versions stay"
    );
}

/// A store counter by name.
fn counter(s: &BigtableSessionStore, name: &str) -> u64 {
    s.counters()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, n)| n)
        .unwrap()
}

/// Renews `visitors` at once (each a returning visitor: minted first),
/// each with a via of its own; returns when all touches answered.
async fn renew_all(s: &Arc<BigtableSessionStore>, visitors: &[ClientId], at: Timestamp) {
    let tasks: Vec<_> = visitors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let (s, v) = (Arc::clone(s), v.clone());
            tokio::spawn(async move {
                let via = Via::new(Some(&format!("ad-{i}")), None, None).unwrap();
                let got = s.touch(&v, at, Some(&via), CallContext::empty()).await;
                assert!(!got.unwrap().short_new, "a renewal");
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Whether every visitor's row, read by another store, has the renewal
/// made at `at` (session seen then, its own via).
async fn all_renewed(
    reader: &BigtableSessionStore,
    visitors: &[ClientId],
    at: Timestamp,
) -> Vec<usize> {
    let mut missing = Vec::new();
    for (i, v) in visitors.iter().enumerate() {
        let state = reader.read_state(v).await.unwrap();
        let seen = state.short.map(|s| s.last_seen);
        let via = state.via.and_then(|r| r.via.source.map(|x| x.to_string()));
        if seen != Some(at) || via != Some(format!("ad-{i}")) {
            missing.push(i);
        }
    }
    missing
}

/// Renewals of many visitors at once go out together (fewer `MutateRows`
/// calls than renewals) and every one of them lands in its own row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_at_once_share_calls_and_all_land() {
    let emu = BigtableEmulator::bigtable();
    let cfg = config(&emu, "sessions");
    bootstrap(&cfg, ttls(), Some(Duration::from_secs(86_400)))
        .await
        .unwrap();
    let s = Arc::new(store(cfg.clone()).await);
    let clock = clock();
    let visitors: Vec<_> = (0..600).map(|i| id(&format!("many-{i}"))).collect();
    for v in &visitors {
        s.touch(v, clock.now(), None, CallContext::empty())
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(1));
    let (writes, calls) = (counter(&s, "write"), counter(&s, "write_call"));
    renew_all(&s, &visitors, clock.now()).await;
    s.flush().await;
    let writes = counter(&s, "write") - writes;
    let calls = counter(&s, "write_call") - calls;
    assert_eq!(writes, 600, "one renewal written per event");
    assert!(calls * 2 <= writes, "{calls} calls for {writes} renewals");
    assert_eq!(counter(&s, "write_failure"), 0);
    let missing = all_renewed(&store(cfg).await, &visitors, clock.now()).await;
    assert!(
        missing.is_empty(),
        "renewals not in their rows: {missing:?}"
    );
}

/// Renewals whose calls fail (the connection cut) are sent again and land
/// once Bigtable is back within the write timeout; when it stays away
/// longer, each is given up and counted, and `flush` returns by then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_outlive_a_short_outage_and_give_up_after_a_long_one() {
    let emu = BigtableEmulator::bigtable();
    let cfg = config(&emu, "sessions");
    bootstrap(&cfg, ttls(), Some(Duration::from_secs(86_400)))
        .await
        .unwrap();
    let (s, gate) = through_gate(&emu, &cfg).await;
    let clock = clock();
    let visitors: Vec<_> = (0..100).map(|i| id(&format!("cut-{i}"))).collect();
    for v in &visitors {
        s.touch(v, clock.now(), None, CallContext::empty())
            .await
            .unwrap();
    }
    s.flush().await;

    // Short: the renewals' answers are held and their connections cut,
    // then the gate opens again 300 ms later.
    clock.advance(Duration::from_secs(1));
    renew_all(&s, &visitors, clock.now()).await;
    gate.set_reply_delay(Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.close();
    gate.set_reply_delay(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.open();
    s.flush().await;
    assert!(
        counter(&s, "write_retry") > 0,
        "calls were cut and sent again"
    );
    assert_eq!(
        counter(&s, "write_failure"),
        0,
        "back within the write timeout"
    );
    let reader = store(cfg.clone()).await;
    let missing = all_renewed(&reader, &visitors, clock.now()).await;
    assert!(
        missing.is_empty(),
        "renewals lost in a short outage: {missing:?}"
    );

    // Long: cut for longer than the write timeout (2 s).
    clock.advance(Duration::from_secs(1));
    renew_all(&s, &visitors, clock.now()).await;
    gate.close();
    let started = Instant::now();
    s.flush().await;
    let waited = started.elapsed();
    gate.open();
    assert!(waited < Duration::from_secs(4), "flush waited {waited:?}");
    let failed = counter(&s, "write_failure");
    let lost = all_renewed(&reader, &visitors, clock.now()).await.len();
    // A call cut after Bigtable applied it is counted as failed and has
    // landed all the same: in doubt, counted.
    assert!(
        (lost..=visitors.len()).contains(&(failed as usize)),
        "{lost} renewals did not land, {failed} counted as failed"
    );
    assert!(
        failed > 0,
        "the cut came before some of the renewals landed"
    );
}

/// A renewal's write deadline counts from its event's arrival (the
/// `CallContext`), not from when the store was called: an event that
/// arrived longer than the write timeout ago has its renewal given up and
/// counted, never sent — it could land after the session had ended.
#[tokio::test]
async fn a_renewal_past_its_events_deadline_is_given_up_unsent() {
    let emu = BigtableEmulator::bigtable();
    let cfg = config(&emu, "sessions");
    bootstrap(&cfg, ttls(), Some(Duration::from_secs(86_400)))
        .await
        .unwrap();
    let s = store(cfg).await;
    let clock = clock();
    let v = id("late");
    let first = clock.now();
    s.touch(&v, first, None, CallContext::empty())
        .await
        .unwrap();
    s.flush().await;
    let writes = counter(&s, "write");
    clock.advance(Duration::from_secs(1));
    let ctx = CallContext {
        headers: Vec::new(),
        received: Some(std::time::Instant::now() - Duration::from_secs(3)),
    };
    let next = s.touch(&v, clock.now(), None, &ctx).await.unwrap();
    assert!(!next.short_new, "a renewal");
    s.flush().await;
    assert_eq!(counter(&s, "write") - writes, 0, "not sent");
    assert_eq!(counter(&s, "write_failure"), 1, "counted");
    let stored = s.read_state(&v).await.unwrap();
    assert_eq!(stored.short.map(|r| r.last_seen), Some(first));
}

/// Deduplication on the store: an id recorded by `remember` makes a later
/// check of it a duplicate (in flight, and once landed), other ids and
/// other visitors are not, the window ends it.
#[tokio::test]
async fn remembered_ids_are_duplicates_within_the_window() {
    use tracking_core::{IdCheck, Touched};
    let emu = BigtableEmulator::bigtable();
    let cfg = config(&emu, "sessions");
    let window = Duration::from_secs(3600);
    bootstrap(&cfg, ttls(), Some(window)).await.unwrap();
    let clock = clock();
    let s = store(cfg).await.with_dedup(window);
    let v = id("dedup-1");
    let ctx = CallContext::empty();
    let check = async |s: &BigtableSessionStore, who: &ClientId, e: &str, at: Timestamp| {
        s.touch_event(who, at, None, IdCheck::Check(e), ctx)
            .await
            .unwrap()
    };
    // The first event mints (a conditional write); then a renewal and the
    // record of its id, queued at once.
    assert!(matches!(
        check(&s, &v, "e-1", clock.now()).await,
        Touched::Sessions(_)
    ));
    s.flush().await;
    let before = s.stats().writes.load(std::sync::atomic::Ordering::Relaxed);
    let t1 = clock.now();
    assert!(matches!(
        check(&s, &v, "e-2", t1).await,
        Touched::Sessions(_)
    ));
    s.remember(&v, &["e-2"], t1);
    // In flight: already a duplicate.
    assert_eq!(
        check(&s, &v, "e-2", t1).await,
        Touched::Duplicate { accepted_at: t1 }
    );
    s.flush().await;
    let after = s.stats().writes.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(after - before, 2, "the renewal and the id's own row");
    // Landed: still a duplicate; a new id, or another visitor, is not.
    clock.advance(MIN);
    assert_eq!(
        check(&s, &v, "e-2", clock.now()).await,
        Touched::Duplicate { accepted_at: t1 }
    );
    assert!(matches!(
        check(&s, &v, "e-3", clock.now()).await,
        Touched::Sessions(_)
    ));
    assert!(matches!(
        check(&s, &id("dedup-2"), "e-2", clock.now()).await,
        Touched::Sessions(_)
    ));
    // A fresh store (another process) sees it too; after the window, not.
    let other = store(config(&emu, "sessions")).await.with_dedup(window);
    assert!(matches!(
        check(&other, &v, "e-2", clock.now()).await,
        Touched::Duplicate { .. }
    ));
    clock.advance(window);
    assert!(matches!(
        check(&other, &v, "e-2", clock.now()).await,
        Touched::Sessions(_)
    ));
}

/// `bootstrap` adds the dedup family to a table created without it, and
/// leaves the sessions there as they were.
#[tokio::test]
async fn bootstrap_adds_the_dedup_family_to_an_existing_table() {
    let emu = BigtableEmulator::bigtable();
    let cfg = config(&emu, "sessions");
    assert_eq!(
        bootstrap(&cfg, ttls(), None).await.unwrap(),
        BootstrapOutcome::Created
    );
    assert!(
        !tracking_bigtable::admin::has_events_family(&cfg)
            .await
            .unwrap()
    );
    let clock = clock();
    let s = store(cfg.clone()).await;
    let v = id("kept");
    let first = s
        .touch(&v, clock.now(), None, CallContext::empty())
        .await
        .unwrap();
    s.flush().await;
    let window = Some(Duration::from_secs(86_400));
    assert!(matches!(
        bootstrap(&cfg, ttls(), window).await.unwrap(),
        BootstrapOutcome::Updated(_)
    ));
    assert!(
        tracking_bigtable::admin::has_events_family(&cfg)
            .await
            .unwrap()
    );
    assert_eq!(
        bootstrap(&cfg, ttls(), window).await.unwrap(),
        BootstrapOutcome::AlreadyExists
    );
    let again = s
        .touch(&v, clock.now(), None, CallContext::empty())
        .await
        .unwrap();
    assert_eq!(again.short_id, first.short_id);
    assert!(!again.short_new);
}
