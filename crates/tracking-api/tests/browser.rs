//! A real browser against the real binary.
//!
//! * A page on one origin sends events with `navigator.sendBeacon` and
//!   `fetch(…, {keepalive: true, credentials: 'include'})` to the API on
//!   another origin. The events arrive, CORS lets the page read the answers,
//!   and the visitor cookie set on the first answer comes back with the later
//!   requests.
//! * The API's own tracker (`/v1/tracker.js`) on pages of another origin of
//!   the same site, under a strict CSP, across page loads: a page view with
//!   its url and referrer, 300 events queued as a page navigates away, and a
//!   page view during which the API is unreachable.
//! * The tracker's own retry of a payload the API took but whose answer
//!   came too late: one copy of each event (deduplication by `event_id`).
//!
//! Needs Debian's `chromium` (`apt-get install chromium`); `.ci/run` installs it.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::browser::{Browser, read_request};
use common::process::{
    ApiProcess, metric, post_json, read_ndjson, request, wait_for_lines, wait_metric,
};
use test_support::Gate;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

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
        let (text, body) = read_request(&mut s).await;
        if text.starts_with("POST /report") {
            let _ = s
                .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                .await;
            return serde_json::from_slice(&body).unwrap();
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

    let _browser = Browser::open(&format!("{page_origin}/index.html"), &[]);
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

// --- The tracker ------------------------------------------------------------

/// The page snippet, as the README gives it.
const SNIPPET: &str = "window.tracking = window.tracking || function () { (tracking.q = tracking.q || []).push(arguments); };";

/// Nonce of the pages' own inline scripts: their CSP allows those and the
/// API origin, nothing else (no `unsafe-inline`, no `unsafe-eval`).
const NONCE: &str = "t3st";

/// What every tracker page runs first: reports to the test, CSP violations
/// and errors (script load failures included) reported, and, seen through a
/// `fetch` wrapper that hands every promise on unchanged, `firstSent` (the
/// tracker's first request has left) and `firstAnswer` (its outcome: an HTTP
/// status, 0 for a network error).
const HARNESS: &str = r#"
const realFetch = window.fetch;
const report = (what, data) => realFetch('/report/' + what, {method: 'POST', body: JSON.stringify(data || {})});
const go = what => realFetch('/go/' + what);
addEventListener('securitypolicyviolation', e => report('csp', {directive: e.violatedDirective, blocked: e.blockedURI}));
addEventListener('error', e => report('error', {message: String(e.message || (e.target && e.target.src))}), true);
const trackerAfter = (name, src) => report(name).then(() => go(name)).then(() => {
  const s = document.createElement('script');
  s.async = true;
  s.src = src;
  document.head.appendChild(s);
  return firstAnswer;
});
let sent, answered;
const firstSent = new Promise(r => (sent = r));
const firstAnswer = new Promise(r => (answered = r));
window.fetch = function (url) {
  if (String(url).endsWith('/v1/events')) sent();
  const p = realFetch.apply(this, arguments);
  if (String(url).endsWith('/v1/events')) p.then(r => answered(r.status), () => answered(0));
  return p;
};
"#;

/// A page: the harness, the snippet with `calls`, the tracker tag when
/// `tracker` is given, then the page's own `script`. `trackerAfter(name,
/// src)` reports `name`, waits for the test to release it, then adds the
/// tracker tag (as the async tag would) and resolves with `firstAnswer`.
fn tracker_page(calls: &str, tracker: Option<&str>, script: &str) -> String {
    let tag = tracker
        .map(|src| format!(r#"<script async src="{src}"></script>"#))
        .unwrap_or_default();
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"></head><body>
<script nonce="{NONCE}">{HARNESS}</script>
<script nonce="{NONCE}">
  {SNIPPET}
  {calls}
</script>
{tag}
<script nonce="{NONCE}">{script}</script>
</body></html>"#
    )
}

/// The site's web server: `GET /p/NAME` serves a page (with `csp`), `POST
/// /report/NAME` hands the page's JSON to the test, `GET /go/NAME` answers
/// once the test has released NAME.
async fn serve_site(
    listener: TcpListener,
    pages: Arc<HashMap<&'static str, String>>,
    csp: String,
    reports: mpsc::Sender<(String, serde_json::Value)>,
    released: watch::Receiver<HashSet<&'static str>>,
) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let (pages, csp, reports, mut released) = (
            Arc::clone(&pages),
            csp.clone(),
            reports.clone(),
            released.clone(),
        );
        tokio::spawn(async move {
            let (head, body) = read_request(&mut s).await;
            let target = head.split_whitespace().nth(1).unwrap_or_default();
            let path = target.split('?').next().unwrap_or_default().to_owned();
            let answer = if let Some(name) = path.strip_prefix("/report/") {
                let data = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                let _ = reports.send((name.to_owned(), data)).await;
                "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_owned()
            } else if let Some(name) = path.strip_prefix("/go/") {
                let _ = released.wait_for(|r| r.contains(name)).await;
                "HTTP/1.1 204 No Content\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
                    .to_owned()
            } else if let Some(page) = path.strip_prefix("/p/").and_then(|n| pages.get(n)) {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Security-Policy: {csp}\r\nCache-Control: no-store\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ = s.write_all(answer.as_bytes()).await;
        });
    }
}

/// Waits (bounded) for the page's next report, which must be `name`; a CSP
/// violation or an error reported instead fails the test.
async fn expect(
    reports: &mut mpsc::Receiver<(String, serde_json::Value)>,
    name: &str,
) -> serde_json::Value {
    let (got, data) = tokio::time::timeout(Duration::from_secs(60), reports.recv())
        .await
        .unwrap_or_else(|_| panic!("no report {name:?} from the browser within 60 s"))
        .unwrap();
    match got.as_str() {
        "csp" => panic!("the page broke its Content-Security-Policy: {data}"),
        "error" => panic!("error on a page (waiting for {name:?}): {data}"),
        _ if got == name => data,
        _ => panic!("report {got:?} ({data}) while waiting for {name:?}"),
    }
}

/// The sink's events once it holds `n` (bounded wait, off the runtime).
async fn events_when(sink: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let sink = sink.to_owned();
    tokio::task::spawn_blocking(move || wait_for_lines(&sink, n, Duration::from_secs(30)))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracker_across_page_loads_a_navigation_and_an_outage() {
    // Two origins of one site: the pages on www.shop.test, the API on
    // t.shop.test (through a gate, to cut it off), both mapped to loopback.
    let site = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site_origin = format!("http://www.shop.test:{}", site.local_addr().unwrap().port());
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.ndjson");
    let api = ApiProcess::start(&[
        ("TRACKING_SINK", "file"),
        ("TRACKING_SINK_PATH", sink.to_str().unwrap()),
        ("TRACKING_CORS_ORIGINS", &site_origin),
        // Plain http: a Secure cookie would not be stored. SameSite stays Lax.
        ("TRACKING_COOKIE_SECURE", "false"),
        // Every payload must stay within 60 KiB and 50 events, the limits
        // the API writes into the script it serves: a larger payload gets
        // 413 and its events would be missing.
        ("TRACKING_MAX_BODY_BYTES", "61440"),
        ("TRACKING_MAX_BATCH_EVENTS", "50"),
    ]);
    let gate = Gate::start(api.addr);
    let api_origin = format!("http://t.shop.test:{}", gate.addr.port());
    let tracker = format!("{api_origin}/v1/tracker.js");
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{NONCE}' {api_origin}; connect-src 'self' {api_origin}"
    );

    let mut pages = HashMap::new();
    pages.insert(
        "p0",
        format!(
            r#"<!doctype html><script nonce="{NONCE}">location.href = '/p/p1?utm_source=browser_test';</script>"#
        ),
    );
    // First visit, the API slow: a page view, and 20 events while it is on
    // its way (they must wait for its answer, which sets the cookie); once
    // answered, 300 events of ~500 bytes are queued as the page navigates
    // away.
    pages.insert(
        "p1",
        tracker_page(
            "tracking('page_view');",
            Some(&tracker),
            r#"firstSent.then(() => { for (let i = 0; i < 20; i++) tracking('early', {i}); });
firstAnswer.then(async status => {
  await report('p1', {status});
  for (let i = 0; i < 300; i++) tracking('bulk', {i, pad: 'x'.repeat(300)});
  location.href = '/p/p2';
});"#,
        ),
    );
    pages.insert(
        "p2",
        tracker_page(
            "tracking('page_view');",
            Some(&tracker),
            "report('p2').then(() => go('p2')).then(() => { location.href = '/p/p3'; });",
        ),
    );
    // Once page 2 is gone, the API becomes unreachable: the tracker comes
    // from the browser's cache, its first request fails, the page moves on.
    pages.insert(
        "p3",
        tracker_page(
            "tracking('page_view'); for (let i = 0; i < 5; i++) tracking('offline', {i});",
            None,
            &format!(
                r#"trackerAfter('p3', '{tracker}').then(async status => {{
  await report('p3_failed', {{status}});
  await go('p3_failed');
  location.href = '/p/p4';
}});"#
            ),
        ),
    );
    // The next page, once page 3 is gone and the API is back.
    pages.insert(
        "p4",
        tracker_page(
            "tracking('page_view');",
            None,
            &format!(
                r#"trackerAfter('p4', '{tracker}').then(status => report('p4_sent', {{status}}));"#
            ),
        ),
    );
    let (report_tx, mut reports) = mpsc::channel(64);
    let (release_tx, release_rx) = watch::channel(HashSet::new());
    let release = |name: &'static str| {
        release_tx.send_modify(|r| {
            r.insert(name);
        });
    };
    let server = tokio::spawn(serve_site(
        site,
        Arc::new(pages),
        csp,
        report_tx,
        release_rx,
    ));
    let _browser = Browser::open(
        &format!("{site_origin}/p/p0"),
        &["--host-resolver-rules=MAP *.shop.test 127.0.0.1"],
    );

    // Page 1, then page 2: the page view, the early events and all 300
    // arrive, with page 2's page view, one visitor (the cookie), one session.
    gate.set_delay(Duration::from_millis(300));
    assert_eq!(expect(&mut reports, "p1").await["status"], 204);
    gate.set_delay(Duration::ZERO);
    expect(&mut reports, "p2").await;
    let events = events_when(&sink, 322).await;
    assert_eq!(events.len(), 322, "page view, 20 + 300 events, page view");
    let view = &events[0];
    assert_eq!(view["type"], "page_view", "{view}");
    assert_eq!(
        view["url"],
        format!("{site_origin}/p/p1?utm_source=browser_test")
    );
    assert_eq!(view["referrer"], format!("{site_origin}/p/p0"));
    assert_eq!(view["via"]["source"], "browser_test");
    assert_eq!(view["session"]["short_new"], true);
    let visitor = view["client_id"].as_str().unwrap().to_owned();
    assert_eq!(visitor.len(), 36, "an id the API minted: {visitor}");
    let mut bulk: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "bulk")
        .map(|e| e["props"]["i"].as_u64().unwrap())
        .collect();
    bulk.sort_unstable();
    assert_eq!(bulk, (0..300).collect::<Vec<_>>(), "each of the 300 once");
    let early = events.iter().filter(|e| e["type"] == "early").count();
    assert_eq!(early, 20);
    let second_view = events
        .iter()
        .find(|e| e["type"] == "page_view" && e["url"] == format!("{site_origin}/p/p2"))
        .expect("page 2's page view");
    assert_eq!(
        second_view["referrer"],
        format!("{site_origin}/p/p1?utm_source=browser_test")
    );
    let payloads = wait_metric(
        &api,
        "tracking_http_requests_total{route=\"events\",status=\"204\"}",
        4.0,
        Duration::from_secs(10),
    )
    .await;
    assert!(
        payloads >= 4.0,
        "150 kB in payloads of at most 60 KiB, and the page view: {payloads} requests"
    );

    // Page 2 is left and gone; the API becomes unreachable; page 3's
    // events wait in the browser.
    release("p2");
    expect(&mut reports, "p3").await;
    gate.close();
    release("p3");
    assert_eq!(
        expect(&mut reports, "p3_failed").await["status"],
        0,
        "the request failed"
    );
    release("p3_failed");
    expect(&mut reports, "p4").await;
    // Page 3 is gone (page 4 runs); now the API is back.
    assert_eq!(
        read_ndjson(&sink).len(),
        322,
        "nothing of page 3 got through"
    );
    gate.open();
    release("p4");
    assert_eq!(expect(&mut reports, "p4_sent").await["status"], 204);

    let events = events_when(&sink, 329).await;
    let offline: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["url"] == format!("{site_origin}/p/p3"))
        .collect();
    assert_eq!(
        offline.len(),
        6,
        "page 3's page view and 5 events: {offline:?}"
    );
    assert!(offline.iter().any(|e| e["type"] == "page_view"));
    let last = events.last().unwrap();
    assert_eq!(
        last["url"],
        format!("{site_origin}/p/p4"),
        "page 4's view, after page 3's"
    );

    // Every event once; one visitor, one session.
    let ids: HashSet<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 329, "no event twice");
    assert_eq!(events.len(), 329);
    assert_eq!(
        metric(&api, "tracking_events_accepted_total").await,
        329.0,
        "no event accepted twice"
    );
    for e in &events {
        assert_eq!(e["client_id"], visitor.as_str(), "{e}");
        assert_eq!(e["session"]["short_id"], view["session"]["short_id"], "{e}");
        // The tracker's ids are UUIDv4; the API would have assigned a v7.
        let id = e["event_id"].as_str().unwrap();
        assert_eq!((id.len(), &id[14..15]), (36, "4"), "a client-made id: {e}");
    }
    let metrics = request(api.addr, "GET", "/metrics", &[], b"")
        .await
        .unwrap();
    let metrics = String::from_utf8(metrics.body).unwrap();
    assert!(
        !metrics.contains("route=\"events\",status=\"413\""),
        "no payload over 60 KiB: {metrics}"
    );
    server.abort();
}

/// The tracker gives a request `TIMEOUT` (10 s, tracker.js) for its answer;
/// then it counts as failed and the payload is sent again, same event ids,
/// after the first backoff (1 s).
const TRACKER_TIMEOUT: Duration = Duration::from_secs(10);

/// A payload the API took but whose answer the browser never heard (held by
/// the gate past the tracker's timeout) is sent again by the tracker with
/// the same event ids; the retry is answered as accepted and not output: one
/// copy of each event, the copies counted as duplicates. The visitor is a
/// returning one: a first page view, answered, set the visitor cookie (a
/// cookieless first payload whose answer is lost comes back without a
/// cookie, as another visitor: README, "Retries and duplicates").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trackers_own_retry_produces_one_copy_of_each_event() {
    let site = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site_origin = format!("http://www.shop.test:{}", site.local_addr().unwrap().port());
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.ndjson");
    // Deduplication at its default (24 h).
    let api = ApiProcess::start(&[
        ("TRACKING_SINK", "file"),
        ("TRACKING_SINK_PATH", sink.to_str().unwrap()),
        ("TRACKING_CORS_ORIGINS", &site_origin),
        ("TRACKING_COOKIE_SECURE", "false"),
    ]);
    let gate = Gate::start(api.addr);
    let api_origin = format!("http://t.shop.test:{}", gate.addr.port());
    let tracker = format!("{api_origin}/v1/tracker.js");
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{NONCE}' {api_origin}; connect-src 'self' {api_origin}"
    );
    // The page reports the outcome of every request of the tracker's, in
    // order (`k`): an HTTP status, 0 for a failure (the tracker's abort).
    // Once the page view is answered (the cookie set), and the test has
    // released it, it tracks five events: one payload, sent 500 ms later.
    const RETRIED: usize = 5;
    let script = format!(
        r#"let n = 0;
const inner = window.fetch;
window.fetch = function (url) {{
  const p = inner.apply(this, arguments);
  if (String(url).endsWith('/v1/events')) {{
    const k = ++n;
    p.then(r => report('answer', {{k, status: r.status}}), e => report('answer', {{k, status: 0, error: String(e)}}));
  }}
  return p;
}};
firstAnswer.then(() => go('primed')).then(() => {{
  for (let i = 0; i < {RETRIED}; i++) tracking('retried', {{i}});
}});"#
    );
    let mut pages = HashMap::new();
    pages.insert(
        "r1",
        tracker_page("tracking('page_view');", Some(&tracker), &script),
    );
    let (report_tx, mut reports) = mpsc::channel(64);
    let (release_tx, release_rx) = watch::channel(HashSet::new());
    let server = tokio::spawn(serve_site(
        site,
        Arc::new(pages),
        csp,
        report_tx,
        release_rx,
    ));
    let _browser = Browser::open(
        &format!("{site_origin}/p/r1"),
        &["--host-resolver-rules=MAP *.shop.test 127.0.0.1"],
    );

    // The page view, answered at once: the visitor has its cookie.
    let first = expect(&mut reports, "answer").await;
    assert_eq!((&first["k"], &first["status"]), (&1.into(), &204.into()));
    assert_eq!(events_when(&sink, 1).await.len(), 1);

    // From now on the API's answers reach the browser 12 s late: the
    // payload is taken (its events are output) but the tracker gives up on
    // it at 10 s. Held per chunk as the gate reads it: once the answer has
    // been read (a few ms after the events are written; 3 s are given),
    // the delay is lifted for the retry, due about 11 s after the payload.
    gate.set_reply_delay(TRACKER_TIMEOUT + Duration::from_secs(2));
    release_tx.send_modify(|r| {
        r.insert("primed");
    });
    let sent = std::time::Instant::now();
    let events = events_when(&sink, 1 + RETRIED).await;
    assert_eq!(
        events.len(),
        1 + RETRIED,
        "the payload was taken: {events:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    gate.set_reply_delay(Duration::ZERO);
    assert_eq!(
        metric(&api, "tracking_events_duplicates_total").await,
        0.0,
        "nothing resent yet"
    );

    // The tracker's timeout, then its retry, answered at once.
    let failed = expect(&mut reports, "answer").await;
    assert_eq!(
        (&failed["k"], &failed["status"]),
        (&2.into(), &0.into()),
        "{failed}"
    );
    let waited = sent.elapsed();
    assert!(waited >= TRACKER_TIMEOUT, "given up after {waited:?}");
    let retried = expect(&mut reports, "answer").await;
    assert_eq!(
        (&retried["k"], &retried["status"]),
        (&3.into(), &204.into()),
        "{retried}"
    );

    // The retry is answered once the API has dealt with it, but its lines
    // may still be on their way to the file (the `memory` acknowledgement
    // mode). The sink writes in order: once an event sent now is there, so
    // is any copy of the retry's.
    let marker = r#"{"type":"marker","client_id":"marker","event_id":"marker-1"}"#;
    let r = post_json(api.addr, marker).await.unwrap();
    assert_eq!(r.status, 204, "{r:?}");
    let mut events = events_when(&sink, 2 + RETRIED).await;
    assert_eq!(
        events.last().map(|e| &e["event_id"]),
        Some(&"marker-1".into()),
        "the marker last: {events:?}"
    );
    events.pop();
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(
        (events.len(), unique.len()),
        (1 + RETRIED, 1 + RETRIED),
        "every event once: {events:?}"
    );
    let mut numbers: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "retried")
        .map(|e| e["props"]["i"].as_u64().unwrap())
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..RETRIED as u64).collect::<Vec<_>>());
    for e in &events {
        assert_eq!(e["client_id"], events[0]["client_id"], "one visitor: {e}");
    }

    // The payload really went out twice with the same ids: each retried
    // event's id is in two requests the gate forwarded (the page view's in
    // one), in three requests in all.
    let seen = String::from_utf8_lossy(&gate.seen()).into_owned();
    assert_eq!(seen.matches("POST /v1/events").count(), 3, "{seen}");
    for e in &events {
        let id = e["event_id"].as_str().unwrap();
        let copies = if e["type"] == "retried" { 2 } else { 1 };
        assert_eq!(seen.matches(id).count(), copies, "{id} in {seen}");
    }
    // And the API took the retry for one: five duplicates, not output.
    assert_eq!(
        metric(&api, "tracking_events_duplicates_total").await,
        RETRIED as f64
    );
    assert_eq!(
        metric(&api, "tracking_events_accepted_total").await,
        (1 + 2 * RETRIED + 1) as f64,
        "the page view, the payload twice (the retry answered as accepted), the marker"
    );
    server.abort();
}
