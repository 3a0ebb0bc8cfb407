//! The event inspector's page in a real browser, against the binary: headless
//! Chromium driven by Playwright (`tests/sdk/inspector-page.js`, pinned in
//! `tests/sdk/package.json`) opens `/inspect` on the admin listener; the
//! API's own tracker on a page of the site and curl send events; they appear
//! without a reload; the filters, a rejected event's reason and raw input,
//! the keyboard, and a visitor followed across the short-session boundary.
//! The screenshot is written to `target/inspect-browser.png` (the path is
//! printed).
//!
//! Needs Debian's `chromium`, Node.js with npm, and curl; `.ci/run`
//! installs them.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::browser::{chromium, read_request};
use common::process::{ApiProcess, request};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const SITE: &str = r#"<!doctype html>
<html><head><title>shop</title></head><body><h1>shop</h1>
<script>
  window.tracking = window.tracking || function () { (tracking.q = tracking.q || []).push(arguments); };
  tracking('page_view');
  tracking('add_to_cart', {sku: 'A-1'});
</script>
<script async src="API/v1/tracker.js"></script>
</body></html>"#;

/// Serves `page` at `/` until the test ends.
async fn serve(listener: TcpListener, page: String) {
    loop {
        let (mut s, _) = listener.accept().await.unwrap();
        let page = page.clone();
        tokio::spawn(async move {
            let (head, _) = read_request(&mut s).await;
            let (status, body) = if head.starts_with("GET / ") {
                ("200 OK", page.as_str())
            } else {
                ("404 Not Found", "")
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_appear_on_the_page_and_can_be_filtered_and_opened() {
    let chrome = chromium();
    let modules = common::sdk::node_modules();
    let site_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = format!("http://{}", site_listener.local_addr().unwrap());
    let api = ApiProcess::start(&[
        ("TRACKING_CORS_ORIGINS", &site),
        ("TRACKING_COOKIE_SECURE", "false"),
        ("TRACKING_SHORT_TTL", "2s"),
    ]);
    let (api_url, admin_url) = (
        format!("http://{}", api.addr),
        format!("http://{}", api.admin),
    );
    tokio::spawn(serve(site_listener, SITE.replace("API", &api_url)));

    let page = request(
        api.admin,
        "GET",
        "/inspect",
        &[("accept-encoding", "gzip")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(page.status, 200);
    eprintln!("page weight: {} bytes gzipped", page.body.len());

    let shot =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/inspect-browser.png");
    let screenshot = shot.clone();
    let script = modules.parent().unwrap().join("inspector-page.js");
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(common::sdk::node())
            .arg(&script)
            .current_dir(script.parent().unwrap())
            .env("ADMIN", &admin_url)
            .env("API", &api_url)
            .env("PAGE", format!("{site}/"))
            .env("CHROME", &chrome)
            .env("SCREENSHOT", &screenshot)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Its own waits are bounded; this bounds a hung browser.
        let deadline = Instant::now() + Duration::from_secs(120);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no report ({e}): {stdout}\n{}\napi: {:?}",
            String::from_utf8_lossy(&out.stderr),
            api.stderr.lock().unwrap()
        )
    });
    assert!(report.get("error").is_none(), "{report:#}");
    eprintln!("report: {report:#}");
    eprintln!("screenshot: {}", shot.canonicalize().unwrap().display());

    assert_eq!(report["title"], "Event inspector — tracking-api");
    assert_eq!(report["page_errors"], serde_json::json!([]));
    assert_eq!(
        report["navigations_after"], 1,
        "the page was never reloaded"
    );
    assert_eq!(report["curl_status"], "204");
    assert_eq!(report["mixed_status"], "200");
    let latency: Vec<u64> = report["latency_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    eprintln!("POST → row on screen: {latency:?} ms");
    assert_eq!(report["type_filter_rows"], 1);
    assert!(report["rejected_rows"].as_u64().unwrap() >= 1);
    let reason = report["detail_reason"].as_str().unwrap();
    assert!(reason.contains("invalid_type"), "{reason}");
    assert!(
        report["detail_json"]
            .as_str()
            .unwrap()
            .contains("Not A Type"),
        "the raw input is shown: {report:#}"
    );
    assert_eq!(report["slash_focus"], "f-q");
    assert!(
        report["keyboard_detail"]
            .as_str()
            .unwrap()
            .contains("curl_probe_3")
    );
    let boundary = report["boundary"].as_str().unwrap();
    assert!(boundary.contains("idle"), "{boundary}");
    // page_view, add_to_cart, 5 probes, signup, visit_one, visit_two.
    assert_eq!(report["counts"]["accepted"], "10", "{report:#}");
    assert_eq!(report["counts"]["rejected"], "1", "{report:#}");
}
