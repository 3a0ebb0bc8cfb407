//! migration-proxy's HTTP API over the Aerospike stand-in (both in this
//! process, on free ports): the legacy layout read and written, the bearer
//! token, bad input, readiness before Aerospike is reachable, metrics.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aerospike::{Bins, Client, ClientPolicy, ReadPolicy, Value, as_key};
use migration_proxy::metrics::Metrics;
use migration_proxy::{Legacy, Proxy, ServeOptions, serve, serve_admin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: p\r\nconnection: close\r\n{auth}content-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn standin() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(aerospike_standin::serve(
        listener,
        aerospike_standin::Store::new(vec!["tracking".into()]),
    ));
    addr
}

async fn proxy(aerospike: SocketAddr, token: Option<&str>, connect: bool) -> SocketAddr {
    proxy_with_admin(aerospike, token, connect).await.0
}

/// The proxy's API and admin addresses.
async fn proxy_with_admin(
    aerospike: SocketAddr,
    token: Option<&str>,
    connect: bool,
) -> (SocketAddr, SocketAddr) {
    let metrics = Arc::new(Metrics::default());
    let legacy = Legacy::new("tracking".into(), Duration::from_millis(500));
    let registry = Arc::new(service_kit::prom::Registry::default());
    registry.register(Arc::clone(&legacy) as Arc<dyn service_kit::prom::Collect>);
    if connect {
        tokio::spawn(Arc::clone(&legacy).connect_forever(aerospike.to_string()));
    }
    let p = Proxy::new(
        Arc::clone(&legacy),
        metrics,
        registry,
        ServeOptions {
            auth_token: token.map(str::to_owned),
            max_inflight: 64,
            header_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(2),
            ..Default::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    tokio::spawn(serve_admin(admin, Arc::clone(&p), std::future::pending()));
    tokio::spawn(serve(listener, p, std::future::pending()));
    (addr, admin_addr)
}

/// A proxy without a token, once it answers `/readyz` with `200` (bounded
/// wait): its API and admin addresses.
async fn ready_proxy(aerospike: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (addr, admin) = proxy_with_admin(aerospike, None, true).await;
    for _ in 0..100 {
        if http(addr, "GET", "/readyz", None, "").await.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (addr, admin)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_round_trip_over_the_legacy_layout() {
    let aerospike = standin().await;
    let (addr, admin) = proxy_with_admin(aerospike, Some("secret"), true).await;
    // Ready once the client has connected.
    let mut ready = 0;
    for _ in 0..100 {
        ready = http(addr, "GET", "/readyz", None, "").await.0;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ready, 200);

    let t = Some("secret");
    assert_eq!(http(addr, "GET", "/v1/sessions/v-1", t, "").await.0, 404);
    let end = now_ms() + 1_800_000;
    let body = format!(
        r#"{{"short":{{"id":"s-1","expires_at":{end}}},"long":{{"id":"l-1","expires_at":{}}},"via":{{"source":"ad","campaign":"c","expires_at":{end}}}}}"#,
        end + 1_000_000
    );
    assert_eq!(http(addr, "PUT", "/v1/sessions/v-1", t, &body).await.0, 204);

    // The legacy layout, as the old system reads it.
    let client = Client::new(&ClientPolicy::default(), &aerospike.to_string())
        .await
        .unwrap();
    let rec = client
        .get(
            &ReadPolicy::default(),
            &as_key!("tracking", "short_sessions", "v-1"),
            Bins::All,
        )
        .await
        .unwrap();
    assert_eq!(rec.bins.get("sid"), Some(&Value::from("s-1")));
    let ttl = rec.time_to_live().unwrap().as_secs();
    assert!((1795..=1802).contains(&ttl), "ttl {ttl}");
    let via = client
        .get(
            &ReadPolicy::default(),
            &as_key!("tracking", "via", "v-1"),
            Bins::All,
        )
        .await
        .unwrap();
    assert_eq!(via.bins.get("source"), Some(&Value::from("ad")));
    assert_eq!(via.bins.get("medium"), None);

    let (status, answer) = http(addr, "GET", "/v1/sessions/v-1", t, "").await;
    assert_eq!(status, 200, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["short"]["id"], "s-1");
    assert_eq!(v["long"]["id"], "l-1");
    assert_eq!(v["via"]["campaign"], "c");
    // Whole seconds on-prem: the end is kept to within 2 s, never earlier.
    let got = v["short"]["expires_at"].as_u64().unwrap();
    assert!(got >= end && got <= end + 2000, "{got} vs {end}");

    // The token, bad input, routes.
    assert_eq!(http(addr, "GET", "/v1/sessions/v-1", None, "").await.0, 401);
    assert_eq!(
        http(addr, "GET", "/v1/sessions/v-1", Some("wrong"), "")
            .await
            .0,
        401
    );
    assert_eq!(http(addr, "GET", "/v1/sessions/a%20b", t, "").await.0, 400);
    assert_eq!(
        http(addr, "PUT", "/v1/sessions/v-2", t, "{not json")
            .await
            .0,
        400
    );
    assert_eq!(
        http(addr, "PUT", "/v1/sessions/v-2", t, &"x".repeat(20_000))
            .await
            .0,
        413
    );
    assert_eq!(http(addr, "DELETE", "/v1/sessions/v-1", t, "").await.0, 405);
    assert_eq!(http(addr, "GET", "/nope", t, "").await.0, 404);
    assert_eq!(http(addr, "GET", "/healthz", None, "").await.0, 200);

    let (_, metrics) = http(admin, "GET", "/metrics", None, "").await;
    for line in [
        "migration_http_requests_total{route=\"get_session\",status=\"401\"} 2",
        "migration_http_requests_total{route=\"put_session\",status=\"204\"} 1",
        "migration_requests_unauthorized_total 2",
        "migration_aerospike_connected 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_aerospike_it_is_alive_but_not_ready_and_answers_503() {
    // Nothing listens on this port.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let addr = proxy(dead, None, true).await;
    assert_eq!(http(addr, "GET", "/healthz", None, "").await.0, 200);
    assert_eq!(http(addr, "GET", "/readyz", None, "").await.0, 503);
    assert_eq!(http(addr, "GET", "/v1/sessions/v-1", None, "").await.0, 503);
}

/// A mint in `legacy` mode: `PUT …?create=short,long` writes those parts
/// only where Aerospike has none (CREATE_ONLY). Of two writers, the second
/// gets `409` with the records as they are (the first writer's ids), and its
/// other parts are still written; concurrent creators: exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_only_parts_are_written_once_and_a_loser_gets_the_winners_records() {
    let aerospike = standin().await;
    let (addr, admin) = ready_proxy(aerospike).await;
    let end = now_ms() + 1_800_000;
    let body = |short: &str, long: &str, source: &str| {
        format!(
            r#"{{"short":{{"id":"{short}","expires_at":{end}}},"long":{{"id":"{long}","expires_at":{end}}},"via":{{"source":"{source}","expires_at":{end}}}}}"#
        )
    };
    let path = "/v1/sessions/v-1?create=short,long";
    assert_eq!(
        http(addr, "PUT", path, None, &body("s-A", "l-A", "a"))
            .await
            .0,
        204
    );
    let (status, answer) = http(addr, "PUT", path, None, &body("s-B", "l-B", "b")).await;
    assert_eq!(status, 409, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        (&v["short"]["id"], &v["long"]["id"], &v["via"]["source"]),
        (&"s-A".into(), &"l-A".into(), &"b".into()),
        "the first writer's sessions, the second's via: {answer}"
    );
    // Only the long part to create: the short one (a renewal) is overwritten.
    let (status, answer) = http(
        addr,
        "PUT",
        "/v1/sessions/v-1?create=long",
        None,
        &body("s-C", "l-C", "c"),
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        (&v["short"]["id"], &v["long"]["id"]),
        (&"s-C".into(), &"l-A".into())
    );

    // Eight writers at once for a new visitor: one 204, seven 409s that all
    // name its ids.
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let b = body(&format!("s-{i}"), &format!("l-{i}"), "r");
            tokio::spawn(async move {
                http(addr, "PUT", "/v1/sessions/v-2?create=short,long", None, &b).await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for r in racers {
        answers.push(r.await.unwrap());
    }
    let winners: Vec<_> = answers.iter().filter(|(s, _)| *s == 204).collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    let (_, stored) = http(addr, "GET", "/v1/sessions/v-2", None, "").await;
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    for (status, answer) in answers.iter().filter(|(s, _)| *s == 409) {
        let v: serde_json::Value = serde_json::from_str(answer).unwrap();
        assert_eq!(
            (&v["short"]["id"], &v["long"]["id"]),
            (&stored["short"]["id"], &stored["long"]["id"]),
            "{status} {answer}"
        );
    }

    // Bad input: an unknown part to create, an id that cannot be carried.
    assert_eq!(
        http(
            addr,
            "PUT",
            "/v1/sessions/v-3?create=via",
            None,
            &body("s", "l", "x")
        )
        .await
        .0,
        400
    );
    assert_eq!(
        http(
            addr,
            "PUT",
            "/v1/sessions/v-3",
            None,
            &body("tab\\there", "l", "x")
        )
        .await
        .0,
        400
    );
    let (_, metrics) = http(admin, "GET", "/metrics", None, "").await;
    let line =
        "migration_aerospike_ops_total{op=\"put\",set=\"short_sessions\",outcome=\"exists\"} 8";
    assert!(
        metrics.lines().any(|l| l == line),
        "missing {line}:\n{metrics}"
    );
}

/// A session record whose `sid` is not a string (a blob, an integer) is
/// there but unreadable: `GET` reports the part absent and counts it, the
/// other parts as they are; a create-only `PUT` of that part replaces it
/// (it would never be created otherwise), while a readable record still
/// wins over a create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_legacy_part_is_absent_and_a_mint_replaces_it() {
    let aerospike = standin().await;
    let (addr, admin) = ready_proxy(aerospike).await;
    let client = Client::new(&ClientPolicy::default(), &aerospike.to_string())
        .await
        .unwrap();
    let policy = aerospike::WritePolicy {
        send_key: true,
        expiration: aerospike::Expiration::Seconds(600),
        ..aerospike::WritePolicy::default()
    };
    let end = now_ms() + 600_000;
    for (visitor, sid) in [
        ("blob-1", Value::Blob(vec![0xff, 0x00, 0x01])),
        ("int-1", Value::Int(42)),
    ] {
        let short = as_key!("tracking", "short_sessions", visitor);
        let long = as_key!("tracking", "long_sessions", visitor);
        client
            .put(
                &policy,
                &short,
                &[aerospike::Bin::new("sid".to_owned(), sid)],
            )
            .await
            .unwrap();
        client
            .put(&policy, &long, &[aerospike::as_bin!("sid", "legacy-long")])
            .await
            .unwrap();
        let path = format!("/v1/sessions/{visitor}");
        let (status, answer) = http(addr, "GET", &path, None, "").await;
        assert_eq!(status, 200, "{answer}");
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert!(v["short"].is_null(), "{answer}");
        assert_eq!(v["long"]["id"], "legacy-long", "{answer}");

        // A mint of both parts: the unreadable short one is replaced, the
        // readable long one is not (409 with the records as they are now).
        let body = format!(
            r#"{{"short":{{"id":"new-s","expires_at":{end}}},"long":{{"id":"new-l","expires_at":{end}}},"via":null}}"#
        );
        let create = format!("{path}?create=short,long");
        let (status, answer) = http(addr, "PUT", &create, None, &body).await;
        assert_eq!(status, 409, "{answer}");
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["short"]["id"], "new-s", "{answer}");
        assert_eq!(v["long"]["id"], "legacy-long", "{answer}");
        // Now readable: a second mint finds it.
        let (status, answer) =
            http(addr, "PUT", &format!("{path}?create=short"), None, &body).await;
        assert_eq!(status, 409, "{answer}");
    }
    let (_, metrics) = http(admin, "GET", "/metrics", None, "").await;
    let invalid = metrics
        .lines()
        .find_map(|l| l.strip_prefix("migration_invalid_records_total "))
        .unwrap_or_else(|| panic!("no migration_invalid_records_total:\n{metrics}"));
    assert!(invalid.parse::<u64>().unwrap() >= 4, "{invalid}");
}
