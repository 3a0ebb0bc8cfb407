//! The official Segment browser SDK against the real binary: analytics-next
//! (pinned in `tests/sdk/`, its own published UMD bundle, unchanged) in
//! headless Chromium, on a page of another origin that also serves the
//! SDK's files. The page names the API only as the SDK's `cdnURL`: the SDK
//! fetches its settings there, and those settings point its events back at
//! the API. `page`, `track` and `identify` each arrive exactly once, with
//! one anonymous id and one session.
//!
//! Needs Debian's `chromium` (`apt-get install chromium`) and Node.js with
//! npm (the SDK is installed with `npm ci` on first use).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::browser::{Browser, read_request};
use common::process::{ApiProcess, metric, read_ndjson, wait_for_lines};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Where the SDK's browser bundles are served from on the page's origin:
/// the path its webpack runtime loads chunks from, `${_cdn}/analytics-next/bundles/`.
const BUNDLES: &str = "/analytics-next/bundles/";

/// The page. It watches every `fetch` (the SDK's settings and events go
/// through `window.fetch`; each promise is handed on unchanged) and
/// reports, at the end, to `/done`: those requests with their statuses,
/// the errors seen, and what the SDK says it sent. `API` is replaced by
/// the API's origin.
///
/// `window.analytics._cdn` is the Segment snippet's way to name a
/// self-hosted copy: the UMD bundle reads it when it loads, to find its
/// lazily loaded chunks (here, on the page's own origin). `cdnURL` is
/// where `load` fetches the settings; no `apiHost` is given: the settings
/// say where the events go.
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>analytics-next</title></head><body>
<script>
const realFetch = window.fetch;
const errors = [];
addEventListener('error', e => errors.push(String(e.message || (e.target && (e.target.src || e.target.href)))), true);
addEventListener('unhandledrejection', e => errors.push('unhandled rejection: ' + String(e.reason)));
const requests = [];
window.fetch = function (input, init) {
  const entry = {method: ((init && init.method) || 'GET').toUpperCase(), url: String(input), status: null};
  requests.push(entry);
  const p = realFetch.apply(this, arguments);
  p.then(r => { entry.status = r.status; }, () => { entry.status = 0; });
  return p;
};
window.analytics = {_cdn: location.origin};
</script>
<script src="/analytics-next/bundles/index.js"></script>
<script>
const done = data => realFetch('/done', {method: 'POST', body: JSON.stringify(data)});
(async () => {
  const [analytics] = await AnalyticsNext.AnalyticsBrowser.load({writeKey: 'wk1', cdnURL: 'API'});
  const deliveryErrors = [];
  analytics.on('error', e => deliveryErrors.push(String(e && (e.code + ': ' + (e.reason || '')))));
  const sent = ctx => ({messageId: ctx.event.messageId, failed: ctx.failedDelivery() ? String(ctx.failedDelivery().reason) : null});
  const page = sent(await analytics.page('Home'));
  const track = sent(await analytics.track('Add To Cart', {sku: 'x-1'}));
  const identify = sent(await analytics.identify('user-42', {plan: 'pro'}));
  await done({page, track, identify, anonymousId: analytics.user().anonymousId(),
              userId: analytics.user().id(), requests, errors, deliveryErrors});
})().catch(e => done({error: String(e && e.stack || e), requests, errors}));
</script>
</body></html>"#;

/// The page's server: `GET /index.html`, the SDK's files from `bundles`
/// under [`BUNDLES`], `POST /done` handed to the test. Every request line
/// goes into `log`.
async fn serve_page(
    listener: TcpListener,
    page: String,
    bundles: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    done: mpsc::Sender<serde_json::Value>,
) {
    let page = Arc::new(page);
    let bundles = Arc::new(bundles);
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let (page, bundles, log, done) = (
            Arc::clone(&page),
            Arc::clone(&bundles),
            Arc::clone(&log),
            done.clone(),
        );
        tokio::spawn(async move {
            let (head, body) = read_request(&mut s).await;
            let line = head.lines().next().unwrap_or_default().to_owned();
            log.lock().unwrap().push(line.clone());
            let mut parts = line.split_whitespace();
            let (method, target) = (parts.next().unwrap_or_default(), parts.next());
            let path = target
                .unwrap_or_default()
                .split('?')
                .next()
                .unwrap_or_default();
            let file = path
                .strip_prefix(BUNDLES)
                .filter(|f| !f.is_empty() && !f.contains('/') && !f.starts_with('.'));
            let (status, kind, content) = match (method, path, file) {
                ("POST", "/done", _) => {
                    let report = serde_json::from_slice(&body).unwrap_or_else(
                        |e| serde_json::json!({"error": format!("bad report ({e})")}),
                    );
                    let _ = done.send(report).await;
                    ("204 No Content", "text/plain", Vec::new())
                }
                ("GET", "/index.html", _) => (
                    "200 OK",
                    "text/html; charset=utf-8",
                    page.as_bytes().to_vec(),
                ),
                ("GET", _, Some(file)) => match tokio::fs::read(bundles.join(file)).await {
                    Ok(js) => ("200 OK", "application/javascript", js),
                    Err(_) => ("404 Not Found", "text/plain", Vec::new()),
                },
                _ => ("404 Not Found", "text/plain", Vec::new()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nCache-Control: no-store\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                content.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&content).await;
        });
    }
}

/// The sink's lines once it holds `n`, then after `grace` (no more may
/// come): fails as soon as it holds more than `n`, or if it does not
/// reach `n` within `within`.
async fn exactly(
    sink: &Path,
    n: usize,
    within: Duration,
    grace: Duration,
) -> Vec<serde_json::Value> {
    let sink = sink.to_owned();
    tokio::task::spawn_blocking(move || {
        let lines = wait_for_lines(&sink, n, within);
        assert_eq!(lines.len(), n, "lines within {within:?}: {lines:#?}");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            let lines = read_ndjson(&sink);
            assert_eq!(lines.len(), n, "no line twice: {lines:#?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        read_ndjson(&sink)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_next_page_track_identify_from_another_origin() {
    let bundles = common::sdk::node_modules().join("@segment/analytics-next/dist/umd");
    assert!(
        bundles.join("index.js").is_file(),
        "no analytics-next UMD bundle in {}",
        bundles.display()
    );
    // Fails now, saying how to install it, when Chromium is missing.
    common::browser::chromium();

    let page_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://{}", page_listener.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.ndjson");
    let api = ApiProcess::start(&[
        ("TRACKING_SINK", "file"),
        ("TRACKING_SINK_PATH", sink.to_str().unwrap()),
        ("TRACKING_CORS_ORIGINS", &page_origin),
        ("TRACKING_WRITE_KEYS", "wk1=web"),
    ]);
    let api_origin = format!("http://{}", api.addr);
    assert_ne!(api_origin, page_origin);

    let log = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, mut done) = mpsc::channel(1);
    let server = tokio::spawn(serve_page(
        page_listener,
        PAGE.replace("'API'", &format!("'{api_origin}'")),
        bundles,
        Arc::clone(&log),
        done_tx,
    ));
    let _browser = Browser::open(&format!("{page_origin}/index.html"), &[]);

    let report = tokio::time::timeout(Duration::from_secs(60), done.recv())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the page did not report within 60 s; it requested {:?}",
                log.lock().unwrap()
            )
        })
        .unwrap();
    assert!(report.get("error").is_none(), "the page failed: {report:#}");
    assert_eq!(report["errors"], serde_json::json!([]), "{report:#}");
    assert_eq!(
        report["deliveryErrors"],
        serde_json::json!([]),
        "{report:#}"
    );

    // Everything the SDK fetched: its settings from `cdnURL`, then each
    // call from where the settings pointed it, each answered with 200.
    let fetched: Vec<(String, String, i64)> = report["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap().to_owned(),
                r["url"].as_str().unwrap().to_owned(),
                r["status"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    let expected: Vec<(String, String, i64)> = [
        ("GET", "/v1/projects/wk1/settings"),
        ("POST", "/v1/p"),
        ("POST", "/v1/t"),
        ("POST", "/v1/i"),
    ]
    .iter()
    .map(|(m, p)| ((*m).to_owned(), format!("{api_origin}{p}"), 200))
    .collect();
    assert_eq!(fetched, expected, "{report:#}");
    // The page's origin served the page and the SDK. (A script that failed
    // to load, e.g. a chunk from the Segment CDN, which Chromium cannot
    // reach here, would be in `errors`.)
    let served = log.lock().unwrap().clone();
    assert!(
        served.contains(&"GET /index.html HTTP/1.1".to_owned())
            && served.contains(&format!("GET {BUNDLES}index.js HTTP/1.1")),
        "{served:?}"
    );
    for call in ["page", "track", "identify"] {
        assert_eq!(
            report[call]["failed"],
            serde_json::Value::Null,
            "{call}: {report:#}"
        );
    }

    let lines = exactly(&sink, 3, Duration::from_secs(10), Duration::from_secs(2)).await;
    let line = |call: &str| {
        let found: Vec<&serde_json::Value> = lines.iter().filter(|l| l["call"] == call).collect();
        assert_eq!(found.len(), 1, "one {call}: {lines:#?}");
        found[0]
    };
    let (page, track, identify) = (line("page"), line("track"), line("identify"));

    let anonymous_id = report["anonymousId"].as_str().unwrap();
    assert_eq!(anonymous_id.len(), 36, "the SDK's UUID: {anonymous_id}");
    assert_eq!(report["userId"], "user-42");
    let short_id = &page["session"]["short_id"];
    assert!(short_id.is_string(), "{page:#}");
    let mut event_ids = HashSet::new();
    for (call, l) in [("page", page), ("track", track), ("identify", identify)] {
        assert_eq!(l["anonymous_id"], anonymous_id, "{l:#}");
        assert_eq!(l["client_id"], anonymous_id, "{l:#}");
        assert_eq!(l["session"]["short_id"], *short_id, "one session: {l:#}");
        assert_eq!(l["session"]["long_id"], page["session"]["long_id"], "{l:#}");
        assert_eq!(l["source"], "web", "{l:#}");
        assert_eq!(l["context"]["library"]["name"], "analytics.js", "{l:#}");
        assert_eq!(l["ua"]["name"], "Chrome", "{l:#}");
        assert_eq!(l["url"], format!("{page_origin}/index.html"), "{l:#}");
        let id = l["event_id"].as_str().unwrap();
        assert!(id.starts_with("ajs-next-"), "{l:#}");
        assert_eq!(id, report[call]["messageId"], "the SDK's messageId: {l:#}");
        event_ids.insert(id.to_owned());
    }
    assert_eq!(event_ids.len(), 3, "{lines:#?}");
    assert_eq!(page["event"], "Home", "{page:#}");
    assert_eq!(page["properties"]["name"], "Home", "{page:#}");
    assert_eq!(track["event"], "Add To Cart", "{track:#}");
    assert_eq!(
        track["properties"],
        serde_json::json!({"sku": "x-1"}),
        "{track:#}"
    );
    assert_eq!(
        identify["traits"],
        serde_json::json!({"plan": "pro"}),
        "{identify:#}"
    );
    // The session began with the page view.
    let new = |l: &serde_json::Value| l["session"]["short_new"].as_bool();
    assert_eq!(
        (new(page), new(track), new(identify)),
        (Some(true), Some(false), Some(false)),
        "{lines:#?}"
    );
    // Page and track came before identify.
    assert_eq!(page["user_id"], serde_json::Value::Null, "{page:#}");
    assert_eq!(track["user_id"], serde_json::Value::Null, "{track:#}");
    assert_eq!(identify["user_id"], "user-42", "{identify:#}");

    // The API's side: the settings once, three calls accepted, each
    // preflighted (Authorization is not a CORS-safelisted header).
    let requests = |route: &str, status: &str| {
        format!("tracking_http_requests_total{{route=\"{route}\",status=\"{status}\"}}")
    };
    assert_eq!(
        metric(&api, &requests("segment_settings", "200")).await,
        1.0
    );
    assert_eq!(metric(&api, &requests("segment", "200")).await, 3.0);
    assert_eq!(metric(&api, &requests("preflight", "204")).await, 3.0);
    assert_eq!(metric(&api, "tracking_events_accepted_total").await, 3.0);
    server.abort();
}
