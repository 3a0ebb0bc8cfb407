//! The parallel run end to end: the real tracking-api binary, the Bigtable
//! emulator, migration-proxy (in this process) and the Aerospike stand-in
//! (in this process). A `Gate` between tracking-api and migration-proxy
//! makes the proxy slow or unreachable.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aerospike::{Bins, Client, ClientPolicy, Expiration, ReadPolicy, WritePolicy, as_bin, as_key};
use common::process::{ApiProcess, metric, read_ndjson, request, wait_for_lines};
use test_support::{BigtableEmulator, Gate};
use tokio::io::AsyncWriteExt;
use tracking_core::{ClientId, RandomIds, SessionPolicy, Ttls};

const TOKEN: &str = "parallel-run-token";

struct Legacy {
    aerospike: Client,
    proxy: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// The stand-in and a migration-proxy over it, both on free ports.
async fn legacy() -> Legacy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let aerospike_addr = listener.local_addr().unwrap();
    tokio::spawn(aerospike_standin::serve(
        listener,
        aerospike_standin::Store::new(vec!["tracking".into()]),
    ));
    let metrics = Arc::new(migration_proxy::metrics::Metrics::default());
    let store = migration_proxy::Legacy::new("tracking".into(), Duration::from_secs(1));
    let registry = Arc::new(service_kit::prom::Registry::default());
    registry.register(Arc::clone(&store) as Arc<dyn service_kit::prom::Collect>);
    store
        .connect_once(&aerospike_addr.to_string())
        .await
        .unwrap();
    let proxy = migration_proxy::Proxy::new(
        store,
        metrics,
        registry,
        migration_proxy::ServeOptions {
            auth_token: Some(TOKEN.into()),
            max_inflight: 1024,
            header_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(2),
            ..Default::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(migration_proxy::serve(listener, proxy, async {
        let _ = stopped.await;
    }));
    let aerospike = Client::new(&ClientPolicy::default(), &aerospike_addr.to_string())
        .await
        .unwrap();
    Legacy {
        aerospike,
        proxy: addr,
        _stop: stop,
    }
}

fn uuid(n: u128) -> String {
    uuid::Uuid::from_u128(n).to_string()
}

fn write_policy(ttl: u32) -> WritePolicy {
    WritePolicy {
        send_key: true,
        expiration: Expiration::Seconds(ttl),
        ..WritePolicy::default()
    }
}

/// What the old system does when it creates or renews a session: writes
/// `sid` with the TTL as the record's lifetime.
async fn put_sid(l: &Legacy, set: &str, client_id: &str, sid: &str, ttl: u32) {
    l.aerospike
        .put(
            &write_policy(ttl),
            &as_key!("tracking", set, client_id),
            &[as_bin!("sid", sid)],
        )
        .await
        .unwrap();
}

/// A legacy visitor as the old system left it.
async fn seed(
    l: &Legacy,
    client_id: &str,
    short: (&str, u32),
    long: (&str, u32),
    via: Option<(&str, u32)>,
) {
    put_sid(l, "short_sessions", client_id, short.0, short.1).await;
    put_sid(l, "long_sessions", client_id, long.0, long.1).await;
    if let Some((source, ttl)) = via {
        l.aerospike
            .put(
                &write_policy(ttl),
                &as_key!("tracking", "via", client_id),
                &[as_bin!("source", source), as_bin!("medium", "email")],
            )
            .await
            .unwrap();
    }
}

/// Seconds the legacy record has left, or None.
async fn legacy_ttl(l: &Legacy, set: &str, client_id: &str) -> Option<u64> {
    l.aerospike
        .get(
            &ReadPolicy::default(),
            &as_key!("tracking", set, client_id),
            Bins::All,
        )
        .await
        .ok()
        .and_then(|r| r.time_to_live())
        .map(|d| d.as_secs())
}

fn env(emu: &str, sink: &Path, proxy: &str, mode: &str) -> Vec<(String, String)> {
    [
        ("TRACKING_SESSION_STORE", "bigtable"),
        ("TRACKING_BIGTABLE_PROJECT", "p"),
        ("TRACKING_BIGTABLE_INSTANCE", "i"),
        ("BIGTABLE_EMULATOR_HOST", emu),
        ("TRACKING_SINK", "file"),
        ("TRACKING_SINK_PATH", sink.to_str().unwrap()),
        ("TRACKING_MIGRATION_MODE", mode),
        ("TRACKING_MIGRATION_URL", &format!("http://{proxy}")),
        ("TRACKING_MIGRATION_TOKEN", TOKEN),
        ("TRACKING_MIGRATION_BREAKER_FAILURES", "3"),
        ("TRACKING_MIGRATION_BREAKER_COOLDOWN", "1s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Deadlines for tests about what the sessions are, not how fast: a lookup
/// or a mint that misses the 30 ms default on a loaded machine would turn
/// into a new session (`parallel`) or none (`legacy`) and hide the result.
const PATIENT: [(&str, &str); 3] = [
    ("TRACKING_MIGRATION_TIMEOUT", "3s"),
    ("TRACKING_SESSION_TIMEOUT", "10s"),
    ("TRACKING_MIGRATION_BREAKER_FAILURES", "100000"),
];

/// What a parallel-run test drives: the emulator, the legacy side, the Gate
/// between tracking-api and migration-proxy, the sink file and the API.
struct Rig {
    emu: BigtableEmulator,
    l: Legacy,
    gate: Gate,
    dir: tempfile::TempDir,
    sink: std::path::PathBuf,
    api: ApiProcess,
}

/// Starts everything, tracking-api in `mode` with `extra` settings.
async fn rig(mode: &str, extra: &[(&str, &str)]) -> Rig {
    let emu = BigtableEmulator::bigtable();
    let l = legacy().await;
    let gate = Gate::start(l.proxy);
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.ndjson");
    let api = start(&env(&emu.host(), &sink, &gate.host(), mode), extra);
    Rig {
        emu,
        l,
        gate,
        dir,
        sink,
        api,
    }
}

fn start(env: &[(String, String)], extra: &[(&str, &str)]) -> ApiProcess {
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    common::process::bootstrap(&all);
    ApiProcess::start(&all)
}

async fn send(api: &ApiProcess, client_id: &str) -> (u16, Duration) {
    let started = Instant::now();
    let body = format!(r#"{{"type":"page_view","client_id":"{client_id}"}}"#);
    let r = request(
        api.addr,
        "POST",
        "/v1/events",
        &[("content-type", "text/plain"), ("x-env", "preview")],
        body.as_bytes(),
    )
    .await
    .unwrap();
    (r.status, started.elapsed())
}

fn bigtable_store(
    emu: &str,
) -> impl std::future::Future<Output = tracking_bigtable::BigtableSessionStore> {
    let cfg = tracking_bigtable::BigtableConfig {
        project: "p".into(),
        instance: "i".into(),
        table: "sessions".into(),
        emulator_host: Some(emu.to_owned()),
        channels: 1,
        attempt_timeout: Duration::from_secs(2),
        write_timeout: Duration::from_secs(2),
        max_queued_renewals: tracking_bigtable::MAX_QUEUED_RENEWALS,
    };
    let ttls = Ttls {
        short: Duration::from_secs(1800),
        long: Duration::from_secs(90 * 86_400),
        via: Duration::from_secs(30 * 86_400),
    };
    async move {
        tracking_bigtable::BigtableSessionStore::connect(
            cfg,
            SessionPolicy::new(ttls, Arc::new(RandomIds)),
        )
        .await
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_visitor_keeps_its_ids_and_is_backfilled_and_renewed_on_prem() {
    let Rig {
        emu,
        l,
        gate,
        sink,
        api,
        dir: _dir,
    } = rig("parallel", &[]).await;

    // A visitor only the old system knows; its short session ends in 60 s.
    seed(
        &l,
        "legacy-1",
        (&uuid(1), 60),
        (&uuid(2), 80 * 86_400),
        Some(("newsletter", 10 * 86_400)),
    )
    .await;
    assert_eq!(send(&api, "legacy-1").await.0, 204);
    let events = wait_for_lines(&sink, 1, Duration::from_secs(10));
    let e = &events[0]["session"];
    assert_eq!(
        (e["short_id"].as_str(), e["long_id"].as_str()),
        (Some(uuid(1).as_str()), Some(uuid(2).as_str()))
    );
    assert_eq!(
        (e["short_new"].as_bool(), e["long_new"].as_bool()),
        (Some(false), Some(false))
    );
    assert_eq!(events[0]["via"]["source"], "newsletter");
    assert_eq!(events[0]["via"]["medium"], "email");

    // The routing header and the token went along to migration-proxy.
    let sent = String::from_utf8_lossy(&gate.seen()).to_lowercase();
    assert!(
        sent.contains("get /v1/sessions/legacy-1 http/1.1"),
        "{sent}"
    );
    assert!(sent.contains("x-env: preview"), "{sent}");
    assert!(
        sent.contains(&format!("authorization: bearer {TOKEN}")),
        "{sent}"
    );

    // Backfilled: Bigtable has the legacy ids and via now.
    let bt = bigtable_store(&emu.host()).await;
    let id = ClientId::parse("legacy-1").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let stored = loop {
        let s = bt.read_state(&id).await.unwrap();
        if s.short.is_some() || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stored.short.map(|s| s.id.to_string()), Some(uuid(1)));
    assert_eq!(stored.long.map(|s| s.id.to_string()), Some(uuid(2)));
    assert_eq!(
        stored
            .via
            .map(|v| v.via.source.unwrap_or_default().to_string()),
        Some("newsletter".into())
    );

    // Dual write: the on-prem short session now runs a whole short TTL (30 min).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ttl = legacy_ttl(&l, "short_sessions", "legacy-1")
            .await
            .unwrap_or(0);
        if ttl > 1700 {
            break;
        }
        assert!(Instant::now() < deadline, "on-prem short TTL still {ttl} s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A visitor first seen in the cloud is written on-prem too (the old
    // system, still serving, must know it).
    assert_eq!(send(&api, "cloud-1").await.0, 204);
    let deadline = Instant::now() + Duration::from_secs(5);
    while legacy_ttl(&l, "long_sessions", "cloud-1").await.is_none() {
        assert!(Instant::now() < deadline, "cloud-1 never reached Aerospike");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // migration-proxy gone: the legacy visitor keeps its ids (Bigtable has
    // them), a new visitor is accepted with fresh ids.
    gate.close();
    assert_eq!(send(&api, "legacy-1").await.0, 204);
    let (status, took) = send(&api, "fresh-1").await;
    assert_eq!(status, 204);
    assert!(
        took < Duration::from_secs(1),
        "new visitor took {took:?} with the proxy down"
    );
    let events = wait_for_lines(&sink, 4, Duration::from_secs(10));
    let again = &events[2]["session"];
    assert_eq!(again["short_id"].as_str(), Some(uuid(1).as_str()));
    assert_eq!(again["long_id"].as_str(), Some(uuid(2).as_str()));
    let fresh = &events[3]["session"];
    assert_eq!(
        (fresh["status"].as_str(), fresh["short_new"].as_bool()),
        (Some("ok"), Some(true))
    );
    assert_eq!(
        metric(
            &api,
            "tracking_migration_calls_total{op=\"get\",outcome=\"found\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(&api, "tracking_session_store_ops_total{op=\"backfill\"}").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_dead_proxy_costs_at_most_the_deadline_and_the_circuit_opens_and_closes() {
    // Bound, not used: the emulator and migration-proxy live as long as they.
    // The session deadline is generous: a new visitor's event waits for the
    // lookup (30 ms at most) and then for its conditional write, and this
    // machine is shared; what is checked is that the proxy costs no more
    // than its own deadline.
    let Rig {
        emu: _emu,
        l: _l,
        gate,
        sink,
        api,
        dir: _dir,
    } = rig("parallel", &[("TRACKING_SESSION_TIMEOUT", "1s")]).await;
    assert_eq!(send(&api, "warm-up").await.0, 204);

    // Slow: every chunk through the gate waits 2 s; the lookup deadline is
    // 30 ms. Each event must come back well before the proxy would answer.
    gate.set_delay(Duration::from_secs(2));
    for i in 0..6 {
        let (status, took) = send(&api, &format!("slow-{i}")).await;
        assert_eq!(status, 204);
        assert!(
            took < Duration::from_secs(1),
            "event {i} took {took:?} behind a 2 s proxy"
        );
    }
    let events = wait_for_lines(&sink, 7, Duration::from_secs(10));
    assert!(events.iter().all(|e| e["session"]["status"] == "ok"));
    // 3 timeouts opened the circuit; the rest skipped the proxy.
    assert_eq!(metric(&api, "tracking_migration_breaker_open").await, 1.0);
    assert!(
        metric(
            &api,
            "tracking_migration_calls_total{op=\"get\",outcome=\"timeout\"}"
        )
        .await
            >= 3.0
    );
    assert!(
        metric(
            &api,
            "tracking_migration_calls_total{op=\"get\",outcome=\"breaker_open\"}"
        )
        .await
            >= 1.0
    );

    // Dead: refused at once; the circuit stays open.
    gate.set_delay(Duration::ZERO);
    gate.close();
    assert_eq!(send(&api, "dead-1").await.0, 204);

    // Back: after the cooldown one probe goes through and closes it.
    gate.open();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    while metric(&api, "tracking_migration_breaker_open").await != 0.0 {
        assert!(Instant::now() < deadline, "the circuit never closed");
        tokio::time::sleep(Duration::from_millis(300)).await;
        i += 1;
        assert_eq!(send(&api, &format!("back-{i}")).await.0, 204);
    }
    assert!(metric(&api, "tracking_migration_breaker_opened_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_during_the_migration_call_still_has_its_event() {
    let Rig {
        emu,
        l,
        gate,
        sink,
        api,
        dir: _dir,
    } = rig(
        "parallel",
        &[
            ("TRACKING_MIGRATION_TIMEOUT", "800ms"),
            ("TRACKING_SESSION_TIMEOUT", "2s"),
        ],
    )
    .await;
    seed(&l, "hangup-1", (&uuid(11), 600), (&uuid(12), 86_400), None).await;
    // The proxy answers after ~300 ms; the client leaves after 50 ms.
    gate.set_delay(Duration::from_millis(300));
    let body = r#"{"type":"page_view","client_id":"hangup-1"}"#;
    let mut stream = tokio::net::TcpStream::connect(api.addr).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: t\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(stream);

    let events = wait_for_lines(&sink, 1, Duration::from_secs(10));
    assert_eq!(
        events[0]["session"]["short_id"].as_str(),
        Some(uuid(11).as_str())
    );
    // And the backfill happened.
    let bt = bigtable_store(&emu.host()).await;
    let id = ClientId::parse("hangup-1").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while bt
        .read_state(&id)
        .await
        .unwrap()
        .short
        .map(|s| s.id.to_string())
        != Some(uuid(11))
    {
        assert!(Instant::now() < deadline, "no backfill after the hang-up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(read_ndjson(&sink).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_mode_reads_and_renews_through_the_proxy_only() {
    let Rig {
        emu,
        l,
        gate,
        sink,
        api,
        dir: _dir,
    } = rig("legacy", &[]).await;
    seed(&l, "old-1", (&uuid(21), 600), (&uuid(22), 86_400), None).await;

    assert_eq!(send(&api, "old-1").await.0, 204);
    assert_eq!(send(&api, "new-1").await.0, 204);
    assert_eq!(send(&api, "new-1").await.0, 204);
    let events = wait_for_lines(&sink, 3, Duration::from_secs(10));
    assert_eq!(
        events[0]["session"]["short_id"].as_str(),
        Some(uuid(21).as_str())
    );
    // The new visitor's session was created on-prem and found there again.
    assert_eq!(events[1]["session"]["short_new"], true);
    assert_eq!(
        events[2]["session"]["short_id"],
        events[1]["session"]["short_id"]
    );
    assert_eq!(events[2]["session"]["short_new"], false);
    // Nothing went to Bigtable.
    let bt = bigtable_store(&emu.host()).await;
    let state = bt
        .read_state(&ClientId::parse("old-1").unwrap())
        .await
        .unwrap();
    assert!(
        state.short.is_none(),
        "legacy mode wrote to Bigtable: {state:?}"
    );

    // The proxy gone: events are still accepted, marked unavailable.
    gate.close();
    let (status, took) = send(&api, "old-1").await;
    assert_eq!(status, 204);
    assert!(took < Duration::from_secs(1));
    let events = wait_for_lines(&sink, 4, Duration::from_secs(10));
    assert_eq!(events[3]["session"]["status"], "unavailable");
}

/// The sid bin of a legacy record.
async fn legacy_sid(l: &Legacy, set: &str, client_id: &str) -> Option<String> {
    let record = l
        .aerospike
        .get(
            &ReadPolicy::default(),
            &as_key!("tracking", set, client_id),
            Bins::All,
        )
        .await
        .ok()?;
    match record.bins.get("sid") {
        Some(aerospike::Value::String(s)) => Some(s.clone()),
        _ => None,
    }
}

/// Seeds a visitor per carried id (short = that id, long = the next one)
/// and per refused id (short refused, long readable), sends two events per
/// visitor through `api`, and checks what the events carry, what stays
/// on-prem, and the count of refused parts. Returns the visitors' ids as
/// `(client_id, short, long)` for the carried ones.
async fn legacy_ids_round_trip(rig: &Rig) -> Vec<(String, String, String)> {
    let ids = test_support::legacy_session_ids();
    let carried: Vec<_> = (0..ids.len())
        .map(|i| {
            (
                format!("shape-{i}"),
                ids[i].clone(),
                ids[(i + 1) % ids.len()].clone(),
            )
        })
        .collect();
    for (client_id, short, long) in &carried {
        seed(&rig.l, client_id, (short, 600), (long, 86_400), None).await;
    }
    let refused = test_support::refused_session_ids();
    for (j, bad) in refused.iter().enumerate() {
        seed(
            &rig.l,
            &format!("refused-{j}"),
            (bad, 600),
            ("long-ok", 86_400),
            None,
        )
        .await;
    }
    let visitors: Vec<String> = carried
        .iter()
        .map(|(c, ..)| c.clone())
        .chain((0..refused.len()).map(|j| format!("refused-{j}")))
        .collect();
    for round in 1..=2 {
        for v in &visitors {
            assert_eq!(send(&rig.api, v).await.0, 204);
        }
        let events = wait_for_lines(&rig.sink, round * visitors.len(), Duration::from_secs(10));
        let events = &events[(round - 1) * visitors.len()..];
        for ((client_id, short, long), e) in carried.iter().zip(events) {
            assert_eq!(e["client_id"], client_id.as_str());
            let s = &e["session"];
            assert_eq!(
                (
                    &s["short_id"],
                    &s["long_id"],
                    &s["short_new"],
                    &s["long_new"]
                ),
                (
                    &short.as_str().into(),
                    &long.as_str().into(),
                    &false.into(),
                    &false.into()
                ),
                "round {round}: {e}"
            );
        }
        for e in &events[carried.len()..] {
            let s = &e["session"];
            assert_eq!(s["status"], "ok", "{e}");
            // Refused: a new short session (then continued), the long kept.
            assert_eq!(s["short_new"], round == 1, "round {round}: {e}");
            assert_eq!(s["long_id"], "long-ok", "{e}");
            assert!(
                uuid::Uuid::parse_str(s["short_id"].as_str().unwrap()).is_ok(),
                "{e}"
            );
        }
    }
    // The renewals went on-prem: the same ids, carried back verbatim; a
    // refused id was replaced by the new session.
    for (client_id, short, long) in &carried {
        let deadline = Instant::now() + Duration::from_secs(5);
        while legacy_ttl(&rig.l, "short_sessions", client_id)
            .await
            .unwrap_or(0)
            < 1700
        {
            assert!(
                Instant::now() < deadline,
                "{client_id} was not renewed on-prem"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            legacy_sid(&rig.l, "short_sessions", client_id)
                .await
                .as_ref(),
            Some(short)
        );
        assert_eq!(
            legacy_sid(&rig.l, "long_sessions", client_id)
                .await
                .as_ref(),
            Some(long)
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for j in 0..refused.len() {
        let v = format!("refused-{j}");
        loop {
            let sid = legacy_sid(&rig.l, "short_sessions", &v)
                .await
                .unwrap_or_default();
            if uuid::Uuid::parse_str(&sid).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{v}'s refused id was never replaced: {sid:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Each refused id was counted when read, once per lookup that met it
    // (once in parallel mode: Bigtable answers the second event).
    assert!(
        metric(&rig.api, "tracking_migration_invalid_parts_total").await >= refused.len() as f64
    );
    carried
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_mode_carries_legacy_ids_of_every_shape_verbatim() {
    let rig = rig("parallel", &PATIENT).await;
    let carried = legacy_ids_round_trip(&rig).await;
    // Backfilled into Bigtable as they are (the second events were Bigtable
    // hits, which returned them through the cell encoding).
    let bt = bigtable_store(&rig.emu.host()).await;
    for (client_id, short, long) in &carried {
        let state = bt
            .read_state(&ClientId::parse(client_id).unwrap())
            .await
            .unwrap();
        assert_eq!(
            (
                state.short.map(|s| s.id.to_string()),
                state.long.map(|s| s.id.to_string())
            ),
            (Some(short.clone()), Some(long.clone()))
        );
    }
    assert_eq!(
        metric(
            &rig.api,
            "tracking_migration_calls_total{op=\"get\",outcome=\"found\"}"
        )
        .await,
        (carried.len() + test_support::refused_session_ids().len()) as f64,
        "one lookup per visitor: the second events found both sessions in Bigtable"
    );
    assert_eq!(
        metric(&rig.api, "tracking_migration_invalid_parts_total").await,
        test_support::refused_session_ids().len() as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_mode_carries_legacy_ids_of_every_shape_verbatim() {
    let rig = rig("legacy", &PATIENT).await;
    legacy_ids_round_trip(&rig).await;
}

/// The parallel run with traffic split between the two systems (short TTL
/// 4 s on both). Split: event 1 here; the on-prem system renews the short
/// session 3 s later; event 2 here at 5 s finds Bigtable's short session
/// expired but the legacy one alive and newer, and keeps the id. Mirror: the
/// short session has expired everywhere; the on-prem system mints a new one;
/// the next event here adopts it. The long session continues in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_traffic_keeps_a_short_session_renewed_or_minted_on_prem() {
    let mut settings = PATIENT.to_vec();
    settings.push(("TRACKING_SHORT_TTL", "4s"));
    let rig = rig("parallel", &settings).await;
    let started = Instant::now();
    let at = |secs: f64| tokio::time::sleep_until((started + Duration::from_secs_f64(secs)).into());
    assert_eq!(send(&rig.api, "split").await.0, 204);
    assert_eq!(send(&rig.api, "mirror").await.0, 204);
    let first = wait_for_lines(&rig.sink, 2, Duration::from_secs(10));
    let id = |e: &serde_json::Value, part: &str| e["session"][part].as_str().unwrap().to_owned();
    let (split_short, split_long) = (id(&first[0], "short_id"), id(&first[0], "long_id"));
    let mirror_long = id(&first[1], "long_id");

    // 3 s: the visitor is on the on-prem system, which renews the session.
    at(3.0).await;
    put_sid(&rig.l, "short_sessions", "split", &split_short, 4).await;
    // 5 s: back here, never idle for 4 s.
    at(5.0).await;
    assert_eq!(send(&rig.api, "split").await.0, 204);
    let e = &wait_for_lines(&rig.sink, 3, Duration::from_secs(10))[2];
    assert_eq!(e["client_id"], "split");
    assert_eq!(
        (
            id(e, "short_id"),
            id(e, "long_id"),
            &e["session"]["short_new"]
        ),
        (split_short, split_long, &false.into()),
        "{e}"
    );

    // 6.5 s: "mirror"'s short session has ended everywhere (its on-prem
    // copy, rounded up to whole seconds, at 6 s at the latest); the on-prem
    // system starts a new one with its own kind of id.
    at(6.5).await;
    put_sid(&rig.l, "short_sessions", "mirror", "onprem:77.a1", 4).await;
    at(7.0).await;
    assert_eq!(send(&rig.api, "mirror").await.0, 204);
    let e = &wait_for_lines(&rig.sink, 4, Duration::from_secs(10))[3];
    assert_eq!(e["client_id"], "mirror");
    assert_eq!(
        (
            id(e, "short_id"),
            id(e, "long_id"),
            &e["session"]["short_new"]
        ),
        ("onprem:77.a1".to_owned(), mirror_long, &false.into()),
        "{e}"
    );
}

/// `legacy` mode, two processes: 100 new visitors whose first events reach
/// both at the same moment get one session each (the create-only PUT), the
/// event that lost adopting the winner's ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_mode_two_processes_mint_one_session_per_visitor() {
    let extra = PATIENT;
    let rig = rig("legacy", &extra).await;
    let sink_b = rig.dir.path().join("events-b.ndjson");
    let api_b = start(
        &env(&rig.emu.host(), &sink_b, &rig.gate.host(), "legacy"),
        &extra,
    );
    const VISITORS: usize = 100;
    let requests: Vec<_> = (0..VISITORS)
        .flat_map(|v| {
            [rig.api.addr, api_b.addr].map(|addr| {
                (
                    addr,
                    format!(r#"{{"type":"page_view","client_id":"both-{v}"}}"#),
                )
            })
        })
        .collect();
    let statuses = common::process::post_at_once(&requests).await;
    assert!(statuses.iter().all(|s| *s == 204), "{statuses:?}");
    let mut events = wait_for_lines(&rig.sink, VISITORS, Duration::from_secs(30));
    events.extend(wait_for_lines(&sink_b, VISITORS, Duration::from_secs(30)));
    let mut by_visitor: std::collections::BTreeMap<&str, Vec<&serde_json::Value>> =
        Default::default();
    for e in &events {
        by_visitor
            .entry(e["client_id"].as_str().unwrap())
            .or_default()
            .push(&e["session"]);
    }
    assert_eq!(by_visitor.len(), VISITORS);
    let split: Vec<_> = by_visitor
        .iter()
        .filter(|(_, s)| {
            s.iter().any(|s| s["status"] != "ok")
                || s[0]["short_id"] != s[1]["short_id"]
                || s[0]["long_id"] != s[1]["long_id"]
                || s.iter().filter(|s| s["short_new"] == true).count() != 1
        })
        .collect();
    assert!(
        split.is_empty(),
        "{} of {VISITORS} visitors split, e.g. {:?}",
        split.len(),
        &split[..split.len().min(2)]
    );
    assert!(
        metric(
            &rig.api,
            "tracking_migration_calls_total{op=\"create\",outcome=\"conflict\"}"
        )
        .await
            + metric(
                &api_b,
                "tracking_migration_calls_total{op=\"create\",outcome=\"conflict\"}"
            )
            .await
            > 0.0,
        "no race was lost: the test raced nothing"
    );
}
