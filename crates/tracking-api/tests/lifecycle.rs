//! Accepted means kept: client hang-ups, graceful shutdown in-process, and
//! SIGTERM to the real binary under load.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::{ApiProcess, assert_all_arrived, read_ndjson, request, wait_for_lines};
use common::*;
use http::StatusCode;
use http_body_util::Full;
use tokio::io::AsyncWriteExt;
use tracking_api::{ServeOptions, serve};

/// The request future is dropped (as hyper does when the client hangs up)
/// while the event waits for its session: the event is still emitted.
#[tokio::test]
async fn dropping_the_request_future_does_not_lose_the_event() {
    let t = TestApp::new(Options {
        store: Some(slow_memory_store(Duration::from_millis(300))),
        session_timeout: Duration::from_secs(5),
        ..Options::default()
    });
    let req = post("")
        .body(Full::new(Bytes::from_static(
            br#"{"type":"purchase","client_id":"v"}"#,
        )))
        .unwrap();
    let handled = t.app.handle(req, "127.0.0.1:9".parse().unwrap());
    tokio::select! {
        _ = handled => panic!("the slow store should keep the request pending"),
        () = tokio::time::sleep(Duration::from_millis(50)) => {}
    }
    // The request future is gone; its event is not.
    assert!(t.sink.take().is_empty());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let events = t.sink.take();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "purchase");
    assert_eq!(events[0]["session"]["status"], "ok");
}

/// A real socket: the client sends its event and closes at once.
#[tokio::test]
async fn a_client_hanging_up_after_sending_keeps_its_event() {
    let t = TestApp::new(Options {
        store: Some(slow_memory_store(Duration::from_millis(200))),
        session_timeout: Duration::from_secs(5),
        ..Options::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        t.app.clone(),
        async {
            let _ = stopped.await;
        },
        ServeOptions::default(),
    ));

    for i in 0..20 {
        let body = format!(r#"{{"type":"page_view","client_id":"gone-{i}"}}"#);
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        drop(s);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = HashSet::new();
    while seen.len() < 20 && Instant::now() < deadline {
        for e in t.sink.take() {
            seen.insert(e["client_id"].as_str().unwrap().to_owned());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.len(), 20, "every hung-up client's event is emitted");
    let _ = stop.send(());
    assert!(server.await.unwrap().clean());
}

#[tokio::test]
async fn shutdown_turns_readiness_off_then_drains_in_flight_requests() {
    let t = Arc::new(TestApp::new(Options {
        store: Some(slow_memory_store(Duration::from_millis(400))),
        session_timeout: Duration::from_secs(5),
        ..Options::default()
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let opts = ServeOptions {
        shutdown_delay: Duration::from_millis(300),
        drain_timeout: Duration::from_secs(5),
        ..ServeOptions::default()
    };
    let server = tokio::spawn(serve(
        listener,
        t.app.clone(),
        async {
            let _ = stopped.await;
        },
        opts,
    ));

    let ready = request(addr, "GET", "/readyz", &[], b"").await.unwrap();
    assert_eq!(ready.status, 200);
    // An event that will still be waiting for its session when shutdown starts.
    let in_flight = tokio::spawn(request(
        addr,
        "POST",
        "/v1/events",
        &[("content-type", "text/plain")],
        br#"{"type":"slow","client_id":"v1"}"#,
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = stop.send(());
    tokio::time::sleep(Duration::from_millis(50)).await;

    // During the shutdown delay: not ready, but still serving.
    let ready = request(addr, "GET", "/readyz", &[], b"").await.unwrap();
    assert_eq!(ready.status, 503);
    let during = request(
        addr,
        "POST",
        "/v1/events",
        &[("content-type", "text/plain")],
        br#"{"type":"late","client_id":"v2"}"#,
    );
    assert_eq!(during.await.unwrap().status, 204);

    // After it: the listener is closed.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener still open"
    );

    assert_eq!(in_flight.await.unwrap().unwrap().status, 204);
    let report = server.await.unwrap();
    assert!(report.clean(), "{report:?}");
    let types: HashSet<_> = t
        .sink
        .take()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, HashSet::from(["slow".to_owned(), "late".to_owned()]));
    assert_eq!(
        t.app
            .handle(
                http::Request::get("/readyz")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
                "127.0.0.1:1".parse().unwrap()
            )
            .await
            .status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// SIGTERM to the real binary while clients keep sending: it exits 0, and
/// every event answered 204 is in the sink file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_keeps_every_accepted_event() {
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.ndjson");
    let mut api = ApiProcess::start(&[
        ("TRACKING_SINK", "file"),
        ("TRACKING_SINK_PATH", sink.to_str().unwrap()),
        ("TRACKING_SHUTDOWN_DELAY", "200ms"),
        ("TRACKING_DRAIN_TIMEOUT", "10s"),
    ]);
    let addr = api.addr;
    let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for c in 0..4 {
        let accepted = Arc::clone(&accepted);
        clients.push(tokio::spawn(async move {
            // Bounded: at most 2,000 requests per client, or until refused.
            for i in 0..2_000 {
                let id = format!("c{c}-{i}");
                let body =
                    format!(r#"{{"type":"page_view","client_id":"{id}","event_id":"{id}"}}"#);
                match request(
                    addr,
                    "POST",
                    "/v1/events",
                    &[("content-type", "text/plain")],
                    body.as_bytes(),
                )
                .await
                {
                    Ok(r) if r.status == 204 => accepted.lock().unwrap().push(id),
                    Ok(r) => assert_eq!(r.status, 503, "unexpected answer {r:?}"),
                    Err(_) => return, // the listener has closed
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = api.terminate(Duration::from_secs(20));
        (status, api)
    })
    .await
    .unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let (status, api) = status;
    assert!(
        status.success(),
        "exit {status:?}; stderr: {:?}",
        api.stderr.lock().unwrap()
    );
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        accepted.len() > 50,
        "load too light to mean anything: {}",
        accepted.len()
    );
    let written: HashSet<String> = read_ndjson(&sink)
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_all_arrived(&accepted, |id| written.contains(id), "SIGTERM under load");
    let log = api.stderr.lock().unwrap().join("\n");
    assert!(log.contains("Drained."), "{log}");
    let _ = wait_for_lines; // used by other test files
}
