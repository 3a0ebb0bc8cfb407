//! Traces from the real binaries into stand-in receivers: one trace crosses
//! tracking-api and migration-proxy (Datadog agent, msgpack v0.5), both
//! propagation formats continue a trace in migration-proxy, OTLP/HTTP
//! export (also over TLS to a collector with a private CA), and a dead
//! agent costs requests nothing.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::process::{ApiProcess, post_json, request, wait_metric, workspace_binary};
use test_support::{ReceivedSpan, TraceReceiver};

/// The caller's trace: W3C ids, and their low 64 bits as Datadog sees them.
const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const TRACE_LOW: u64 = 0x8448_eb21_1c80_319c;
const TRACE_HIGH: u64 = 0x0af7_6519_16cd_43dd;
const PARENT: &str = "b7ad6b7169203331";
const PARENT_ID: u64 = 0xb7ad_6b71_6920_3331;

fn by<'a>(spans: &'a [ReceivedSpan], service: &str, resource: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.service == service && s.resource == resource)
        .collect()
}

fn event(client_id: &str) -> Vec<u8> {
    format!(r#"{{"type":"page_view","client_id":"{client_id}"}}"#).into_bytes()
}

/// Posts one event of `client_id` in the trace of `traceparent`; returns
/// the status.
async fn post_traced(api: &ApiProcess, traceparent: &str, client_id: &str) -> u16 {
    let headers = [("content-type", "text/plain"), ("traceparent", traceparent)];
    request(api.addr, "POST", "/v1/events", &headers, &event(client_id))
        .await
        .unwrap()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_crosses_tracking_api_and_migration_proxy() {
    let agent = TraceReceiver::datadog();
    let aerospike = common::standin().await;
    let url = agent.url();
    let mut proxy = ApiProcess::start_program(
        &workspace_binary("migration-proxy"),
        &[
            ("MIGRATION_AEROSPIKE_HOSTS", &aerospike),
            ("OTEL_TRACES_EXPORTER", "datadog"),
            ("DD_TRACE_AGENT_URL", &url),
            ("DD_SERVICE", "migration-proxy"),
        ],
    );
    let proxy_url = format!("http://{}", proxy.addr);
    // Ready once it has reached Aerospike.
    let mut ready = 0;
    for _ in 0..100 {
        ready = request(proxy.addr, "GET", "/readyz", &[], b"")
            .await
            .unwrap()
            .status;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, 200, "migration-proxy never became ready");
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.ndjson");
    let mut api = ApiProcess::start(&[
        ("TRACKING_MIGRATION_MODE", "legacy"),
        ("TRACKING_MIGRATION_URL", &proxy_url),
        ("TRACKING_MIGRATION_TIMEOUT", "500ms"),
        ("TRACKING_SESSION_TIMEOUT", "2s"),
        ("TRACKING_SINK", "file"),
        ("TRACKING_SINK_PATH", sink.to_str().unwrap()),
        ("OTEL_TRACES_EXPORTER", "datadog"),
        ("DD_TRACE_AGENT_URL", &url),
        ("DD_SERVICE", "tracking-api"),
        ("DD_ENV", "test"),
    ]);

    // An event that continues the caller's trace (W3C).
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let r = request(
        api.addr,
        "POST",
        "/v1/events",
        &[
            ("content-type", "text/plain"),
            ("traceparent", &traceparent),
        ],
        &event("traced-1"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204);

    // Both propagation formats, straight to migration-proxy.
    let r = request(
        proxy.addr,
        "GET",
        "/v1/sessions/dd-1",
        &[
            ("x-datadog-trace-id", "1234567"),
            ("x-datadog-parent-id", "7654321"),
            ("x-datadog-sampling-priority", "1"),
        ],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);
    let r = request(
        proxy.addr,
        "GET",
        "/v1/sessions/w3c-1",
        &[(
            "traceparent",
            "00-00000000000000000000000000abcdef-0000000000fedcba-01",
        )],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);

    // Shutdown flushes the spans.
    assert!(api.terminate(Duration::from_secs(15)).success());
    assert!(proxy.terminate(Duration::from_secs(15)).success());
    let spans = agent.wait_for(Duration::from_secs(10), |s| {
        by(s, "migration-proxy", "GET /v1/sessions").len() >= 3
    });
    assert!(agent.errors().is_empty(), "{:?}", agent.errors());

    let request_span = by(&spans, "tracking-api", "POST /v1/events");
    assert_eq!(request_span.len(), 1, "{spans:#?}");
    let request_span = request_span[0];
    assert_eq!(
        (request_span.trace_id, request_span.parent_id),
        (TRACE_LOW, PARENT_ID)
    );
    assert_eq!(
        request_span.meta.get("env").map(String::as_str),
        Some("test"),
        "{request_span:?}"
    );
    let lookup = by(&spans, "tracking-api", "migration.lookup");
    assert_eq!(lookup.len(), 1, "{spans:#?}");
    assert_eq!(lookup[0].trace_id, TRACE_LOW);

    // The proxy's span of that lookup is the lookup span's child.
    let proxy_get: Vec<_> = by(&spans, "migration-proxy", "GET /v1/sessions")
        .into_iter()
        .filter(|s| s.trace_id == TRACE_LOW)
        .collect();
    assert_eq!(proxy_get.len(), 1, "{spans:#?}");
    assert_eq!(proxy_get[0].parent_id, lookup[0].span_id);
    // W3C's 128-bit id crossed intact (Datadog's header carries only 64 bits).
    assert_eq!(
        proxy_get[0].meta.get("trace_id").map(String::as_str),
        Some(TRACE),
        "{:?}",
        proxy_get[0]
    );
    // Its Aerospike reads are its children.
    let reads: Vec<_> = by(&spans, "migration-proxy", "aerospike.get")
        .into_iter()
        .filter(|s| s.parent_id == proxy_get[0].span_id)
        .collect();
    assert_eq!(reads.len(), 3, "{spans:#?}");
    // The renewal went along in the same trace.
    assert!(
        by(&spans, "migration-proxy", "PUT /v1/sessions")
            .iter()
            .any(|s| s.trace_id == TRACE_LOW)
    );

    // Datadog and W3C headers both continue a trace in migration-proxy.
    let dd = by(&spans, "migration-proxy", "GET /v1/sessions");
    assert!(
        dd.iter()
            .any(|s| s.trace_id == 1_234_567 && s.parent_id == 7_654_321),
        "{dd:#?}"
    );
    assert!(
        dd.iter()
            .any(|s| s.trace_id == 0xabcdef && s.parent_id == 0xfedcba),
        "{dd:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_export_keeps_the_128_bit_trace_id() {
    let receiver = TraceReceiver::otlp();
    let url = receiver.url();
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.ndjson");
    let mut api = ApiProcess::start(&[
        ("TRACKING_SINK", "file"),
        ("TRACKING_SINK_PATH", sink.to_str().unwrap()),
        ("OTEL_TRACES_EXPORTER", "otlp"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &url),
        ("DD_SERVICE", "tracking-api-otlp"),
    ]);
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    assert_eq!(post_traced(&api, &traceparent, "otlp-1").await, 204);
    assert!(api.terminate(Duration::from_secs(15)).success());
    let spans = receiver.wait_for(Duration::from_secs(10), |s| !s.is_empty());
    assert!(receiver.errors().is_empty(), "{:?}", receiver.errors());
    let req = spans
        .iter()
        .find(|s| s.name == "POST /v1/events")
        .unwrap_or_else(|| panic!("{spans:#?}"));
    assert_eq!(req.service, "tracking-api-otlp");
    assert_eq!(
        (req.trace_id_high, req.trace_id, req.parent_id),
        (TRACE_HIGH, TRACE_LOW, PARENT_ID)
    );
    assert!(
        spans
            .iter()
            .any(|s| s.name == "session" && s.trace_id == TRACE_LOW)
    );
}

/// Waits (bounded) until `done()`; returns whether it happened.
fn wait_until(within: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    while !done() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// An in-cluster collector speaks TLS with a certificate from a private
/// CA. With that CA in `SSL_CERT_FILE` the spans arrive; without it the
/// exporter refuses the handshake (the certificate is checked, not just
/// encrypted against) and the spans are lost, requests unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_tls_trusts_the_private_ca_in_ssl_cert_file() {
    let receiver = TraceReceiver::otlp_tls();
    let url = receiver.url();
    assert!(url.starts_with("https://"), "{url}");
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("collector-ca.pem");
    std::fs::write(&ca, receiver.ca_pem()).unwrap();
    let sink = dir.path().join("events.ndjson");
    let run = |ssl_cert_file: Option<&str>, traceparent: String| {
        let mut env = vec![
            ("TRACKING_SINK", "file"),
            ("TRACKING_SINK_PATH", sink.to_str().unwrap()),
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
            ("DD_SERVICE", "tracking-api-tls"),
        ];
        env.extend(ssl_cert_file.map(|f| ("SSL_CERT_FILE", f)));
        let mut api = ApiProcess::start(&env);
        async move {
            assert_eq!(post_traced(&api, &traceparent, "tls-1").await, 204);
            assert!(api.terminate(Duration::from_secs(15)).success());
        }
    };

    // The system's roots only: the handshake fails on the unknown CA.
    run(
        None,
        "00-000000000000000000000000000bad00-00000000000000bb-01".into(),
    )
    .await;
    assert!(
        wait_until(Duration::from_secs(10), || !receiver.refused().is_empty()),
        "the exporter never tried the collector"
    );
    for refusal in receiver.refused() {
        assert_eq!(refusal, "received fatal alert: UnknownCA");
    }
    assert_eq!(receiver.spans(), vec![]);

    // The collector's CA in SSL_CERT_FILE: the spans arrive.
    let ca = ca.to_str().unwrap();
    run(Some(ca), format!("00-{TRACE}-{PARENT}-01")).await;
    let spans = receiver.wait_for(Duration::from_secs(10), |s| {
        s.iter().any(|s| s.name == "POST /v1/events")
    });
    assert!(receiver.errors().is_empty(), "{:?}", receiver.errors());
    let requests: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "POST /v1/events")
        .collect();
    assert_eq!(requests.len(), 1, "{spans:#?}");
    assert_eq!(requests[0].service, "tracking-api-tls");
    assert_eq!(
        (
            requests[0].trace_id_high,
            requests[0].trace_id,
            requests[0].parent_id
        ),
        (TRACE_HIGH, TRACE_LOW, PARENT_ID)
    );
    // Every span is of that request's trace: none from the untrusted run,
    // none of the exporter's own HTTP calls.
    for s in &spans {
        assert_eq!(
            (s.trace_id_high, s.trace_id),
            (TRACE_HIGH, TRACE_LOW),
            "{s:?}"
        );
    }
    assert!(spans.iter().any(|s| s.name == "session"), "{spans:#?}");
}

/// A collector that accepts and then stalls holds one export for at most
/// the export timeout: requests are answered meanwhile, and once it
/// answers again the spans of later requests reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_collector_costs_spans_and_export_resumes_when_it_answers() {
    let receiver = TraceReceiver::otlp();
    let gate = test_support::Gate::start(receiver.addr);
    // Everything the exporter sends is held for two minutes.
    gate.set_delay(Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.ndjson");
    let url = format!("http://{}", gate.host());
    let mut api = ApiProcess::start(&[
        ("TRACKING_SINK", "file"),
        ("TRACKING_SINK_PATH", sink.to_str().unwrap()),
        ("OTEL_TRACES_EXPORTER", "otlp"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &url),
    ]);
    let stalled = "00-0000000000000000000000000000a11a-00000000000000aa-01";
    assert_eq!(post_traced(&api, stalled, "stalled-1").await, 204);
    assert!(
        wait_until(Duration::from_secs(30), || !gate.seen().is_empty()),
        "the exporter never sent to the collector"
    );
    // The export is stuck in the gate; requests are answered all the same.
    assert_eq!(post_traced(&api, stalled, "stalled-1").await, 204);
    gate.set_delay(Duration::ZERO);
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    assert_eq!(post_traced(&api, &traceparent, "stalled-1").await, 204);
    let spans = receiver.wait_for(Duration::from_secs(30), |s| {
        s.iter()
            .any(|s| s.name == "POST /v1/events" && s.trace_id == TRACE_LOW)
    });
    assert!(
        spans
            .iter()
            .any(|s| s.name == "POST /v1/events" && s.trace_id == TRACE_LOW),
        "no span of the request after the stall: {spans:#?}"
    );
    assert!(receiver.errors().is_empty(), "{:?}", receiver.errors());
    assert!(api.terminate(Duration::from_secs(20)).success());
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_agent_costs_requests_nothing_and_memory_stays_bounded() {
    // Nothing listens here.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.ndjson");
    let mut api = ApiProcess::start(&[
        ("TRACKING_SINK", "file"),
        ("TRACKING_SINK_PATH", sink.to_str().unwrap()),
        ("OTEL_TRACES_EXPORTER", "datadog"),
        ("DD_TRACE_AGENT_URL", &dead),
    ]);
    let send = |n: usize| {
        let addr = api.addr;
        async move {
            for i in 0..n {
                let body = format!(
                    r#"{{"events":[{}]}}"#,
                    [r#"{"type":"page_view","client_id":"dead-agent"}"#; 10].join(",")
                );
                let r = post_json(addr, &body).await.unwrap();
                assert_eq!(r.status, 204, "request {i}");
            }
        }
    };
    send(1000).await;
    let after_1000 = rss_kib(api.child.id());
    send(3000).await;
    let after_4000 = rss_kib(api.child.id());
    // The batch processor's queue is bounded (2,048 spans): once full, spans
    // are dropped, so memory does not follow the request count.
    assert!(
        after_4000 < after_1000 + 8 * 1024,
        "RSS grew from {after_1000} KiB to {after_4000} KiB with a dead agent"
    );
    assert!(api.terminate(Duration::from_secs(20)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_result_span_is_linked_to_its_request_and_marks_failures() {
    let mut emu = test_support::Emulator::pubsub();
    let host = emu.host();
    test_support::pubsub::topic_with_subscription(&host, "trace-project", "events").await;
    let receiver = TraceReceiver::otlp();
    let url = receiver.url();
    let spool = tempfile::tempdir().unwrap();
    let mut api = ApiProcess::start(&[
        ("TRACKING_SINK", "pubsub"),
        ("TRACKING_PUBSUB_PROJECT", "trace-project"),
        ("TRACKING_PUBSUB_TOPIC", "events"),
        ("TRACKING_PUBSUB_PUBLISH_TIMEOUT", "1s"),
        ("TRACKING_SPOOL_DIR", spool.path().to_str().unwrap()),
        ("PUBSUB_EMULATOR_HOST", &host),
        ("OTEL_TRACES_EXPORTER", "otlp"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &url),
    ]);
    let send = |client_id: &'static str, parent: &'static str| {
        let traceparent = format!("00-{TRACE}-{parent}-01");
        let addr = api.addr;
        async move {
            let headers = [
                ("content-type", "text/plain"),
                ("traceparent", traceparent.as_str()),
            ];
            let r = request(addr, "POST", "/v1/events", &headers, &event(client_id))
                .await
                .unwrap();
            assert_eq!(r.status, 204);
        }
    };
    send("published-1", PARENT).await;
    let published = wait_metric(
        &api,
        "tracking_pubsub_published_total",
        1.0,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(published, 1.0);
    // Pub/Sub gone: the next event is accepted, its publish fails (the
    // event goes to the spool), and the publish span says so.
    emu.stop();
    send("unpublished-1", "00000000000000aa").await;
    let failed = wait_metric(
        &api,
        "tracking_pubsub_spooled_total",
        1.0,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(failed, 1.0);
    api.terminate(Duration::from_secs(20));
    let spans = receiver.wait_for(Duration::from_secs(10), |s| {
        s.iter().filter(|x| x.name == "pubsub.publish").count() == 2
    });
    let linked = |parent: u64| {
        let req = spans
            .iter()
            .find(|s| s.name == "POST /v1/events" && s.parent_id == parent)
            .unwrap_or_else(|| panic!("{spans:#?}"));
        let hand_off = spans
            .iter()
            .find(|s| s.name == "sink.send" && s.parent_id == req.span_id)
            .unwrap_or_else(|| panic!("{spans:#?}"));
        spans
            .iter()
            .find(|s| {
                s.name == "pubsub.publish" && s.links.contains(&(TRACE_LOW, hand_off.span_id))
            })
            .unwrap_or_else(|| panic!("no publish span linked to {hand_off:?}: {spans:#?}"))
    };
    // Its own trace (the request has ended when the result comes), linked
    // to the request's hand-off to the sink.
    let ok = linked(PARENT_ID);
    assert_eq!(ok.parent_id, 0, "{ok:?}");
    assert!(!ok.error, "{ok:?}");
    assert_eq!(
        ok.meta.get("published").map(String::as_str),
        Some("1"),
        "{ok:?}"
    );
    let failed = linked(0xaa);
    assert!(failed.error, "{failed:?}");
    assert_eq!(
        failed.meta.get("failed").map(String::as_str),
        Some("1"),
        "{failed:?}"
    );
}

/// At a sampling share of 0: an untraced request exports nothing in either
/// service (the proxy follows tracking-api's "not sampled"), a caller's
/// "sampled" decision is followed in both, and a failed request still
/// exports its root span, alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_share_zero_only_callers_decisions_and_errors_are_exported() {
    let agent = TraceReceiver::datadog();
    let aerospike = common::standin().await;
    let url = agent.url();
    let mut proxy = ApiProcess::start_program(
        &workspace_binary("migration-proxy"),
        &[
            ("MIGRATION_AEROSPIKE_HOSTS", &aerospike),
            ("OTEL_TRACES_EXPORTER", "datadog"),
            ("DD_TRACE_AGENT_URL", &url),
            ("DD_SERVICE", "migration-proxy"),
        ],
    );
    let mut ready = 0;
    for _ in 0..100 {
        ready = request(proxy.addr, "GET", "/readyz", &[], b"")
            .await
            .unwrap()
            .status;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, 200, "migration-proxy never became ready");
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.ndjson");
    let proxy_url = format!("http://{}", proxy.addr);
    let mut api = ApiProcess::start(&[
        ("TRACKING_MIGRATION_MODE", "legacy"),
        ("TRACKING_MIGRATION_URL", &proxy_url),
        ("TRACKING_MIGRATION_TIMEOUT", "500ms"),
        ("TRACKING_SESSION_TIMEOUT", "2s"),
        ("TRACKING_SINK", "file"),
        ("TRACKING_SINK_PATH", sink.to_str().unwrap()),
        ("OTEL_TRACES_EXPORTER", "datadog"),
        ("OTEL_TRACES_SAMPLER_ARG", "0"),
        ("DD_TRACE_AGENT_URL", &url),
        ("DD_SERVICE", "tracking-api"),
    ]);
    let post = |headers: Vec<(&'static str, String)>, client: &'static str| {
        let addr = api.addr;
        async move {
            let mut h: Vec<(&str, &str)> = vec![("content-type", "text/plain")];
            h.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
            request(addr, "POST", "/v1/events", &h, &event(client))
                .await
                .unwrap()
                .status
        }
    };
    // Untraced, twice (a lookup and a renewal each): nothing is sampled.
    assert_eq!(post(vec![], "untraced").await, 204);
    assert_eq!(post(vec![], "untraced").await, 204);
    // The caller decided "sampled".
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    assert_eq!(
        post(vec![("traceparent", traceparent)], "traced").await,
        204
    );
    // The caller decided "not sampled".
    let unsampled = "00-0000000000000000000000000000beef-00000000000000aa-00".to_owned();
    assert_eq!(
        post(vec![("traceparent", unsampled)], "declined").await,
        204
    );
    // migration-proxy gone: the lookup fails, the event has no session.
    assert!(proxy.terminate(Duration::from_secs(15)).success());
    assert_eq!(post(vec![], "failed").await, 204);
    assert!(api.terminate(Duration::from_secs(15)).success());

    let spans = agent.wait_for(Duration::from_secs(10), |s| {
        s.iter().any(|s| s.service == "tracking-api" && s.error)
            && s.iter().any(|s| s.service == "migration-proxy")
    });
    assert!(agent.errors().is_empty(), "{:?}", agent.errors());
    // The proxy exported the caller-sampled trace, and nothing else.
    let proxy_spans = spans.iter().filter(|s| s.service == "migration-proxy");
    for s in proxy_spans.clone() {
        assert_eq!(s.trace_id, TRACE_LOW, "{s:?}");
    }
    assert!(
        proxy_spans
            .clone()
            .any(|s| s.resource == "GET /v1/sessions"),
        "{spans:#?}"
    );
    assert!(
        proxy_spans.clone().any(|s| s.resource == "aerospike.get"),
        "{spans:#?}"
    );
    // tracking-api: the sampled trace in full...
    let api_spans: Vec<_> = spans
        .iter()
        .filter(|s| s.service == "tracking-api")
        .collect();
    let traced: Vec<_> = api_spans
        .iter()
        .filter(|s| s.trace_id == TRACE_LOW)
        .map(|s| s.resource.as_str())
        .collect();
    for stage in [
        "POST /v1/events",
        "decode",
        "validate",
        "session",
        "migration.lookup",
        "sink.send",
    ] {
        assert!(traced.contains(&stage), "no {stage} span in {traced:?}");
    }
    let session = api_spans
        .iter()
        .find(|s| s.trace_id == TRACE_LOW && s.resource == "session")
        .unwrap();
    assert_eq!(session.meta.get("mode").map(String::as_str), Some("legacy"));
    assert_eq!(session.meta.get("lookup").map(String::as_str), Some("miss"));
    // ...and the failed request's root span alone, marked.
    let others: Vec<_> = api_spans
        .iter()
        .filter(|s| s.trace_id != TRACE_LOW)
        .collect();
    assert_eq!(others.len(), 1, "{others:#?}");
    let failed = others[0];
    assert_eq!(failed.resource, "POST /v1/events");
    assert!(failed.error, "{failed:?}");
    assert_eq!(
        failed.meta.get("trace.root_only").map(String::as_str),
        Some("true"),
        "{failed:?}"
    );
    assert_eq!(
        failed.meta.get("sessions.unavailable").map(String::as_str),
        Some("1"),
        "{failed:?}"
    );
    // The warning logged inside that request names its trace and span.
    let trace_id = failed.meta.get("trace_id").unwrap();
    let log = api.stderr.lock().unwrap().clone();
    let warning: serde_json::Value = log
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["level"] == "WARN" && l["span"]["trace_id"] == trace_id.as_str())
        .unwrap_or_else(|| panic!("no warning in trace {trace_id}: {log:#?}"));
    assert_eq!(
        warning["span"]["span_id"],
        format!("{:016x}", failed.span_id),
        "{warning}"
    );
}
