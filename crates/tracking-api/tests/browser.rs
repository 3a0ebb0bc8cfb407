//! A real browser: a page on one origin sends events with
//! `navigator.sendBeacon` and `fetch(…, {keepalive: true, credentials:
//! 'include'})` to the API on another origin. The events arrive, CORS lets the
//! page read the answers, and the visitor cookie set on the first answer comes
//! back with the later requests.
//!
//! Needs Debian's `chromium` (`apt-get install chromium`); `.ci/run` installs it.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::process::{ApiProcess, request, wait_for_lines};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn chromium() -> PathBuf {
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!(
        "headless Chromium is needed for the browser test but was not found at /usr/bin/chromium.\n\
         Install it with: sudo apt-get update && sudo apt-get install -y chromium"
    );
}

struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const PAGE: &str = r#"<!doctype html>
<html><body><script>
const api = "API/v1/events";
async function run() {
  const out = {};
  // 1. Preflighted (JSON) keepalive fetch with credentials; no client_id: the API sets the cookie.
  const r1 = await fetch(api, {method: "POST", keepalive: true, credentials: "include",
    headers: {"content-type": "application/json"},
    body: JSON.stringify({type: "page_view", url: location.href + "?utm_source=browser_test", props: {step: 1}})});
  out.fetch1 = r1.status;
  out.fetch1_readable = r1.headers.get("content-length") !== undefined;
  // 2. sendBeacon (text/plain, no preflight, credentials always included).
  out.beacon = navigator.sendBeacon(api, JSON.stringify({type: "beacon_event", props: {step: 2}}));
  await new Promise(r => setTimeout(r, 300));
  // 3. A simple text/plain fetch with credentials, answer read through CORS.
  const r3 = await fetch(api, {method: "POST", credentials: "include",
    body: JSON.stringify({events: [{type: "add_to_cart", props: {step: 3}}, {type: "BAD"}]})});
  out.fetch3 = r3.status;
  out.fetch3_body = await r3.json();
  await fetch("/report", {method: "POST", body: JSON.stringify(out)});
}
run().catch(e => fetch("/report", {method: "POST", body: JSON.stringify({error: String(e)})}));
</script></body></html>"#;

/// Serves the page and waits for its report (bounded).
async fn serve_page(listener: TcpListener, page: String) -> serde_json::Value {
    loop {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0;
        // Read the head and, for the report, the body.
        let text = loop {
            let m = s.read(&mut buf[n..]).await.unwrap();
            n += m;
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if let Some(head_end) = text.find("\r\n\r\n") {
                let len = text[..head_end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if n >= head_end + 4 + len || m == 0 {
                    break text;
                }
            } else if m == 0 {
                break text;
            }
        };
        if text.starts_with("POST /report") {
            let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
            let _ = s
                .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                .await;
            return serde_json::from_str(body).unwrap();
        }
        let (status, body) = if text.starts_with("GET /index.html") {
            ("200 OK", page.as_str())
        } else {
            ("404 Not Found", "")
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(resp.as_bytes()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beacons_and_credentialed_fetches_from_another_origin() {
    let chromium = chromium();
    let page_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://{}", page_listener.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.ndjson");
    let dead = dir.path().join("dead.ndjson");
    let api = ApiProcess::start(&[
        ("TRACKING_SINK", "file"),
        ("TRACKING_SINK_PATH", sink.to_str().unwrap()),
        ("TRACKING_DEADLETTER", "file"),
        ("TRACKING_DEADLETTER_PATH", dead.to_str().unwrap()),
        ("TRACKING_CORS_ORIGINS", &page_origin),
        // Cookie attributes stay at their defaults (Secure, SameSite=Lax):
        // Chromium treats http://127.0.0.1 as a trustworthy origin.
    ]);
    let page = PAGE.replace("API", &format!("http://{}", api.addr));
    let report = tokio::spawn(serve_page(page_listener, page));

    let profile = tempfile::tempdir().unwrap();
    let _browser = Browser(
        Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("{page_origin}/index.html"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium"),
    );
    let report = tokio::time::timeout(Duration::from_secs(60), report)
        .await
        .expect("the page reported within 60 s")
        .unwrap();
    assert!(report.get("error").is_none(), "page failed: {report}");
    assert_eq!(report["fetch1"], 204, "{report}");
    assert_eq!(report["beacon"], true, "{report}");
    assert_eq!(report["fetch3"], 200, "{report}");
    assert_eq!(report["fetch3_body"]["accepted"], 1, "{report}");
    assert_eq!(report["fetch3_body"]["rejected"][0]["index"], 1, "{report}");

    let events = wait_for_lines(&sink, 3, Duration::from_secs(10));
    assert_eq!(events.len(), 3, "{events:?}");
    let by_type = |t: &str| {
        events
            .iter()
            .find(|e| e["type"] == t)
            .unwrap_or_else(|| panic!("no {t} in {events:?}"))
    };
    let first = by_type("page_view");
    let visitor = first["client_id"].as_str().unwrap();
    assert_eq!(visitor.len(), 36, "a generated visitor id: {visitor}");
    // The cookie set on the first answer came back with the beacon and the fetch.
    assert_eq!(by_type("beacon_event")["client_id"], visitor);
    assert_eq!(by_type("add_to_cart")["client_id"], visitor);
    assert_eq!(
        by_type("add_to_cart")["session"]["short_id"],
        first["session"]["short_id"]
    );
    assert_eq!(by_type("add_to_cart")["via"]["source"], "browser_test");
    assert_eq!(first["ua"]["name"], "Chrome");

    let dead = wait_for_lines(&dead, 1, Duration::from_secs(10));
    assert_eq!(dead[0]["reason"], "invalid_type");

    // The JSON fetch was preflighted.
    let metrics = request(api.admin, "GET", "/metrics", &[], b"")
        .await
        .unwrap();
    let metrics = String::from_utf8(metrics.body).unwrap();
    assert!(
        metrics.contains("tracking_http_requests_total{route=\"preflight\",status=\"204\"}"),
        "{metrics}"
    );
}
