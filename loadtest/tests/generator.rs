//! The generator against servers with known behaviour.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::convert::Infallible;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use loadtest::report::{Health, Report};
use loadtest::run::{Progress, RunConfig, run};
use loadtest::scenario::{ScenarioConfig, ScenarioKind};
use loadtest::schedule::Schedule;
use tokio::net::TcpListener;

/// A server whose answers are held while `hold(elapsed)` says so.
async fn server(
    hold: impl Fn(Duration) -> Option<Duration> + Send + Sync + 'static,
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let start = Instant::now();
    let hold = Arc::new(hold);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let hold = Arc::clone(&hold);
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let hold = Arc::clone(&hold);
                    async move {
                        let mut body = req.into_body();
                        while body.frame().await.is_some() {}
                        if let Some(d) = hold(start.elapsed()) {
                            tokio::time::sleep(d).await;
                        }
                        let mut r = hyper::Response::new(Empty::<Bytes>::new());
                        *r.status_mut() = hyper::StatusCode::NO_CONTENT;
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn config(addr: std::net::SocketAddr, rate: f64, secs: u64, max_inflight: usize) -> RunConfig {
    RunConfig {
        target: format!("http://{addr}").parse().unwrap(),
        schedule: Schedule::constant(rate, Duration::from_secs(secs), Duration::ZERO),
        poisson: false,
        scenario: ScenarioConfig {
            kind: ScenarioKind::Beacon,
            beacon_percent: 80,
            pixel_percent: 0,
            visitors: 1000,
            batch_min: 10,
            batch_max: 100,
            ids: false,
        },
        seed: 1,
        workers: 1,
        max_inflight,
        timeout: Duration::from_secs(5),
        health: Health::default(),
        connections: 8,
        warmup_path: "/healthz".into(),
        ids_out: None,
    }
}

/// The server stalls for 500 ms every 2 s (answers arriving in the stall wait
/// until it ends). Sends keep their schedule; the latency p99 measured from
/// the intended send time shows the stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_server_does_not_bend_the_schedule() {
    let addr = server(|t| {
        let in_cycle = Duration::from_millis(t.as_millis() as u64 % 2000);
        (in_cycle >= Duration::from_millis(1500)).then(|| Duration::from_millis(2000) - in_cycle)
    })
    .await;
    let report = run(config(addr, 200.0, 6, 1000), Arc::new(Progress::default()))
        .await
        .unwrap();
    assert_eq!(report.sent, 1200, "every intended send was made");
    assert_eq!(report.dropped, 0);
    assert_eq!(report.errors, 0, "{:?}", report.errors_by_class);
    // Every second, stalled or not, sent its 200.
    for s in &report.timeseries {
        assert_eq!(s.sent, 200, "{:?}", report.timeseries);
    }
    // A quarter of the requests fall in a stall and wait up to 500 ms for its end.
    assert!(
        (350.0..=700.0).contains(&report.latency_ms.p99),
        "p99 {} ms should be about the stall",
        report.latency_ms.p99
    );
    assert!(
        report.latency_ms.p50 < 50.0,
        "p50 {} ms",
        report.latency_ms.p50
    );
    // Not bent: sends stay far closer to schedule than the 500 ms stalls
    // (a few ms on a quiet machine; the bound leaves room for a shared one).
    assert!(
        report.schedule_lag_ms.p99 < 50.0,
        "lag p99 {} ms",
        report.schedule_lag_ms.p99
    );
    assert!(
        !report.generator_saturated,
        "{:?}",
        report.saturation_reasons
    );
    // Service time starts at the actual send, latency at the intended one.
    assert!(report.service_time_ms.p50 <= report.latency_ms.p50);
}

/// A server that takes 50 ms per request, asked for 2000/s with room for only
/// 20 requests in flight: sends are dropped, and the run says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_reported_as_drops_not_hidden_as_delay() {
    let addr = server(|_| Some(Duration::from_millis(50))).await;
    let report = run(config(addr, 2000.0, 2, 20), Arc::new(Progress::default()))
        .await
        .unwrap();
    assert!(report.dropped > 3000, "dropped {}", report.dropped);
    assert!(report.generator_saturated);
    assert!(
        report
            .saturation_reasons
            .iter()
            .any(|r| r.contains("dropped")),
        "{:?}",
        report.saturation_reasons
    );
    // What was sent left on time: the drops are not disguised as lag.
    assert!(
        report.schedule_lag_ms.p99 < 5.0,
        "lag p99 {}",
        report.schedule_lag_ms.p99
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_non_zero_when_overloaded_and_merges_reports() {
    let slow = server(|_| Some(Duration::from_millis(50))).await;
    let fast = server(|_| None).await;
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_loadtest");
    let path = dir.path().to_path_buf();
    let run_bin = move |addr: std::net::SocketAddr, rate: &str, extra: &[&str], report: &str| {
        let mut cmd = Command::new(bin);
        cmd.args([
            "run",
            "--target",
            &format!("http://{addr}"),
            "--rate",
            rate,
            "--duration",
            "2s",
            "--report",
        ])
        .arg(path.join(report))
        .args(extra);
        cmd.output().unwrap()
    };
    let over = tokio::task::spawn_blocking({
        let run_bin = run_bin.clone();
        move || run_bin(slow, "2000", &["--max-inflight", "20"], "over.json")
    })
    .await
    .unwrap();
    assert_eq!(
        over.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&over.stdout)
    );
    let stdout = String::from_utf8_lossy(&over.stdout);
    assert!(
        stdout.contains("GENERATOR SATURATED") && stdout.contains("dropped"),
        "{stdout}"
    );

    let (a, b) = tokio::join!(
        tokio::task::spawn_blocking({
            let run_bin = run_bin.clone();
            move || run_bin(fast, "300", &["--seed", "1"], "a.json")
        }),
        tokio::task::spawn_blocking(move || run_bin(
            fast,
            "200",
            &["--seed", "2", "--max-p99", "1s"],
            "b.json"
        ))
    );
    assert_eq!(a.unwrap().status.code(), Some(0));
    assert_eq!(b.unwrap().status.code(), Some(0));
    let merged = Command::new(bin)
        .arg("merge")
        .arg(dir.path().join("a.json"))
        .arg(dir.path().join("b.json"))
        .arg("--report")
        .arg(dir.path().join("m.json"))
        .output()
        .unwrap();
    assert_eq!(
        merged.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&merged.stderr)
    );
    let read = |f: &str| -> Report {
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(f)).unwrap()).unwrap()
    };
    let (a, b, m) = (read("a.json"), read("b.json"), read("m.json"));
    assert_eq!(m.sent, a.sent + b.sent);
    assert_eq!(m.sent, 1000);
    assert_eq!(m.target_rate, 500.0);
    assert_eq!(m.latency_ms.count, a.latency_ms.count + b.latency_ms.count);
    assert!(m.latency_ms.max >= a.latency_ms.max.max(b.latency_ms.max));
    // The fields API.md promises.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("m.json")).unwrap()).unwrap();
    for key in [
        "target_rate",
        "achieved_rate",
        "completed",
        "errors",
        "dropped",
        "latency_ms",
        "service_time_ms",
        "schedule_lag_ms",
        "generator_saturated",
    ] {
        assert!(json.get(key).is_some(), "report lacks {key}");
    }
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(
            json["latency_ms"].get(key).is_some(),
            "latency_ms lacks {key}"
        );
    }

    // A threshold that fails.
    let over_p99 = Command::new(bin)
        .args([
            "run",
            "--target",
            &format!("http://{slow}"),
            "--rate",
            "50",
            "--duration",
            "1s",
            "--max-p99",
            "10ms",
        ])
        .output()
        .unwrap();
    assert_eq!(over_p99.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&over_p99.stdout).contains("FAIL: latency p99"));
}
