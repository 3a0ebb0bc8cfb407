//! The Segment HTTP Tracking API against the real binary, with the real
//! clients: the official Python and Node SDKs (pinned in `tests/sdk/`,
//! unchanged) send every call type; raw HTTP clients send exactly what
//! analytics-kotlin (gzip, chunked, key in the body) and analytics.js (one
//! call per request, preflighted, Basic auth) send. Each event that comes
//! out is checked field by field against the call as the client sent it.
//! Then sessions shared with `/v1/events`, and bad input: every bad request
//! gets its answer and no valid event around it is lost or doubled. Last,
//! the Node SDK's retry of a batch whose answer was lost (a `503` after the
//! API took it) is output once (deduplication by `messageId`).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::process::{ApiProcess, RawResponse, metric, read_ndjson, request, wait_for_lines};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any client, script or output gets.
const WITHIN: Duration = Duration::from_secs(30);
/// `TRACKING_VIA_TTL`'s default: how long a via record lives.
const VIA_TTL_MS: i64 = 30 * 86_400 * 1000;
/// A desktop Chrome, as a browser sends it (and analytics.js copies into
/// `context.userAgent`).
const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
                      (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

// ---------------------------------------------------------------------------
// The service under test

/// A running binary writing events and dead letters to files of its own.
struct Api {
    process: ApiProcess,
    events: PathBuf,
    dead: PathBuf,
    _dir: tempfile::TempDir,
}

impl Api {
    /// Starts the binary with file outputs and `env`.
    fn start(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events.ndjson");
        let dead = dir.path().join("dead.ndjson");
        let (events_s, dead_s) = (
            events.to_str().unwrap().to_owned(),
            dead.to_str().unwrap().to_owned(),
        );
        let mut all: Vec<(&str, &str)> = vec![
            ("TRACKING_SINK", "file"),
            ("TRACKING_SINK_PATH", &events_s),
            ("TRACKING_DEADLETTER", "file"),
            ("TRACKING_DEADLETTER_PATH", &dead_s),
        ];
        all.extend_from_slice(env);
        let process = ApiProcess::start(&all);
        Self {
            process,
            events,
            dead,
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.process.addr
    }

    fn url(&self) -> String {
        format!("http://{}", self.process.addr)
    }

    /// Waits (bounded) for `n` events and returns exactly those: fails if
    /// fewer arrive in time, or more than `n` are there.
    fn events(&self, n: usize) -> Vec<Value> {
        let lines = wait_for_lines(&self.events, n, WITHIN);
        assert_eq!(
            lines.len(),
            n,
            "events written: {}",
            serde_json::to_string_pretty(&lines).unwrap()
        );
        lines
    }

    fn log(&self) -> String {
        self.process.stderr.lock().unwrap().join("\n")
    }
}

// ---------------------------------------------------------------------------
// Times

/// Milliseconds since the epoch, now.
fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Milliseconds since the epoch of an RFC 3339 time as the SDKs write it
/// (`2026-12-07T11:23:43.489393+00:00`, `…43.762Z`); digits past the
/// millisecond are cut.
fn ms_of(text: &str) -> i64 {
    let bad = || panic!("not an RFC 3339 time: {text:?}");
    let n = |s: &str| -> i64 { s.parse().unwrap_or_else(|_| bad()) };
    if text.len() < 20 {
        bad();
    }
    let (date, rest) = (&text[..10], &text[11..]);
    let days = days_from_civil(n(&date[..4]), n(&date[5..7]), n(&date[8..10]));
    let secs = n(&rest[..2]) * 3600 + n(&rest[3..5]) * 60 + n(&rest[6..8]);
    let mut rest = &rest[8..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        let f = format!("{:0<3}", &frac[..digits.min(3)]);
        ms = n(&f);
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" => 0,
        _ if rest.len() == 6 => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (n(&rest[1..3]) * 3600 + n(&rest[4..6]) * 60)
        }
        _ => bad(),
    };
    (days * 86_400 + secs - offset) * 1000 + ms
}

/// RFC 3339 in UTC with milliseconds, as the service writes every time.
fn rfc3339(ms: i64) -> String {
    let (secs, ms) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A time of an output line, which must be in the service's format.
fn out_ms(line: &Value, field: &str) -> i64 {
    let text = line[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a time: {line}"));
    let ms = ms_of(text);
    assert_eq!(rfc3339(ms), text, "{field} is not RFC 3339 UTC with ms");
    ms
}

#[test]
fn time_helpers() {
    assert_eq!(ms_of("1970-01-01T00:00:00Z"), 0);
    assert_eq!(ms_of("2023-11-14T22:13:20.123Z"), 1_700_000_000_123);
    assert_eq!(ms_of("2023-11-14T23:13:20.123456+01:00"), 1_700_000_000_123);
    assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    assert_eq!(
        rfc3339(ms_of("2024-02-29T23:59:59.999Z")),
        "2024-02-29T23:59:59.999Z"
    );
}

// ---------------------------------------------------------------------------
// What every event from a Segment call must say

/// A via record's `source`, `medium` and `campaign`.
type Campaign<'a> = (&'a str, &'a str, &'a str);

/// What the line of one call must be, besides the call's own fields.
struct Expect<'a> {
    /// The source its write key names.
    source: &'a str,
    /// The batch's `sentAt` (or the call's own), as sent.
    sent_at: &'a str,
    ip: &'a str,
    /// Expected `ua.name` and `ua.os`.
    ua: (&'a str, &'a str),
    /// The `client_id` of the call's visitor.
    client_id: &'a str,
    /// Expected `via` fields (`source`, `medium`, `campaign`) and when it
    /// was recorded (`None`: at this event's own `received_at`).
    via: Option<(Campaign<'a>, Option<i64>)>,
    /// No earlier than this, no later than now.
    received_after: i64,
}

/// `call[key]`, or `null` when absent.
fn field(call: &Value, key: &str) -> Value {
    call.get(key).cloned().unwrap_or(Value::Null)
}

/// Checks an output line against the call `call` as it was sent, field by
/// field; returns the line's `received_at` (ms).
fn check_line(line: &Value, call: &Value, x: &Expect<'_>) -> i64 {
    let ty = call["type"].as_str().unwrap();
    let what = format!("{ty} {}", call["messageId"]);
    let eq = |key: &str, expected: Value| {
        assert_eq!(line[key], expected, "{what}: `{key}` of {line:#}");
    };
    eq("event_id", field(call, "messageId"));
    eq("type", json!(ty));
    eq("call", json!(ty));
    eq(
        "event",
        match ty {
            "track" => field(call, "event"),
            "page" | "screen" => field(call, "name"),
            _ => Value::Null,
        },
    );
    eq("category", field(call, "category"));
    eq("client_id", json!(x.client_id));
    for (out, sent) in [
        ("user_id", "userId"),
        ("anonymous_id", "anonymousId"),
        ("group_id", "groupId"),
        ("previous_id", "previousId"),
        ("properties", "properties"),
        ("traits", "traits"),
        ("context", "context"),
        ("integrations", "integrations"),
    ] {
        eq(out, field(call, sent));
    }
    eq("source", json!(x.source));
    let page = &call["context"]["page"];
    eq("url", field(page, "url"));
    eq("referrer", field(page, "referrer"));
    eq("ip", json!(x.ip));
    assert_eq!(
        (line["ua"]["name"].as_str(), line["ua"]["os"].as_str()),
        (Some(x.ua.0), Some(x.ua.1)),
        "{what}: ua of {line:#}"
    );
    eq("schema_version", json!(1));

    // Times: as sent, cut to the millisecond; the corrected time from the
    // line's own fields.
    let received = out_ms(line, "received_at");
    assert!(
        (x.received_after..=now_ms()).contains(&received),
        "{what}: received_at {} not since the test started",
        line["received_at"]
    );
    let sent_at = ms_of(x.sent_at);
    eq("sent_at", json!(rfc3339(sent_at)));
    let original = ms_of(call["timestamp"].as_str().unwrap());
    eq("original_timestamp", json!(rfc3339(original)));
    let expected = received - (sent_at - original);
    eq("timestamp", json!(rfc3339(expected)));

    // Via: from the call's campaign (or page URL), or remembered.
    match x.via {
        None => eq("via", Value::Null),
        Some(((source, medium, campaign), at)) => eq(
            "via",
            json!({
                "source": source,
                "medium": medium,
                "campaign": campaign,
                "expires_at": rfc3339(at.unwrap_or(received) + VIA_TTL_MS),
            }),
        ),
    }
    let s = &line["session"];
    assert_eq!(s["status"], "ok", "{what}: session of {line:#}");
    for id in ["short_id", "long_id"] {
        assert!(
            s[id].as_str().is_some_and(|v| !v.is_empty()),
            "{what}: session.{id} of {line:#}"
        );
    }
    received
}

/// The lines by `event_id`, each id exactly once.
fn by_id(lines: &[Value]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for l in lines {
        let id = l["event_id"].as_str().unwrap().to_owned();
        assert!(out.insert(id.clone(), l.clone()).is_none(), "{id} twice");
    }
    out
}

/// The client id of a Segment id: itself in `[A-Za-z0-9._:-]{1,128}`,
/// else `h.` and its SHA-256 (which the scripts compute, in `hashes`).
fn client_id_of(id: &str, hashes: &Value) -> String {
    let plain = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if plain {
        id.to_owned()
    } else {
        format!("h.{}", hashes[id].as_str().unwrap())
    }
}

// ---------------------------------------------------------------------------
// Running the SDKs

/// Runs `cmd` to its end within `WITHIN` and returns its standard output
/// parsed as JSON; fails with its output if it fails or takes too long.
fn run_json(mut cmd: Command, what: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let deadline = Instant::now() + WITHIN;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let output = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    match status {
        None => panic!("{what} did not finish within {WITHIN:?}\n{output}"),
        Some(s) if !s.success() => panic!("{what} failed ({s})\n{output}"),
        Some(_) => serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{what}: output is not JSON ({e})\n{output}")),
    }
}

/// Runs a Python script with segment-analytics-python against `api`.
fn run_python(script: &str, api: &Api, write_key: &str) -> Value {
    let python = common::sdk::python();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("send.py");
    std::fs::write(&path, script).unwrap();
    let mut cmd = Command::new(python);
    cmd.arg(&path)
        .env("HOST", api.url())
        .env("WRITE_KEY", write_key)
        .env("CHROME", CHROME);
    run_json(cmd, "the Python SDK script")
}

/// Runs a Node script with @segment/analytics-node against `api`.
fn run_node(script: &str, api: &Api, write_key: &str) -> Value {
    run_node_at(script, &api.url(), write_key)
}

/// Runs a Node script with @segment/analytics-node against `host` (an
/// `http://` URL: the API, or something in front of it).
fn run_node_at(script: &str, host: &str, write_key: &str) -> Value {
    let modules = common::sdk::node_modules();
    let mut cmd = Command::new(common::sdk::node());
    cmd.arg("-e")
        .arg(script)
        .current_dir(modules.parent().unwrap())
        .env("NODE_PATH", &modules)
        .env("HOST", host)
        .env("WRITE_KEY", write_key)
        .env("CHROME", CHROME);
    run_json(cmd, "the Node SDK script")
}

/// The calls of the batches a script saw its SDK send, by `messageId`,
/// each with its batch's `sentAt`.
fn sent_calls(requests: &Value) -> BTreeMap<String, (Value, String)> {
    let mut out = BTreeMap::new();
    for body in requests.as_array().unwrap() {
        let sent_at = body["sentAt"].as_str().unwrap().to_owned();
        for call in body["batch"].as_array().unwrap() {
            let id = call["messageId"].as_str().unwrap().to_owned();
            assert!(out.insert(id, (call.clone(), sent_at.clone())).is_none());
        }
    }
    out
}

/// segment-analytics-python 2.4.0 sends one call of each type. The request
/// bodies come from the SDK's own debug log (`making request: …`); the
/// script fails on any delivery error (`on_error`).
const PYTHON_ALL_CALLS: &str = r#"
import hashlib, json, logging, os, sys
from datetime import datetime, timezone
from segment.analytics import Client

requests = []
class Bodies(logging.Handler):
    def emit(self, record):
        if record.msg == "making request: %s":
            requests.append(json.loads(record.args[0]))
log = logging.getLogger("segment")
log.setLevel(logging.DEBUG)
log.addHandler(Bodies())

errors = []
def on_error(err, batch):
    errors.append("%r (%d calls)" % (err, len(batch)))

client = Client(os.environ["WRITE_KEY"], host=os.environ["HOST"], on_error=on_error,
                max_retries=0, upload_interval=0.1)

def context(**extra):
    c = {"ip": "198.51.100.77",
         "campaign": {"name": "spring-sale", "source": "newsletter", "medium": "email"}}
    c.update(extra)
    return c

def keep(result):
    ok, msg = result
    if not ok:
        errors.append("not queued: %r" % (msg,))

# A call made long before it is sent: its corrected time stays its own.
past = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
keep(client.track(user_id="u-py", anonymous_id="anon-py", event="Order Completed",
                  properties={"revenue": 9.99, "currency": "EUR", "items": [{"sku": "A-1", "qty": 2}]},
                  context=context(), timestamp=past, message_id="py-track-1"))
keep(client.page(user_id="u-py", anonymous_id="anon-py", category="Docs", name="Pricing",
                 properties={"path": "/pricing"},
                 context=context(page={"url": "https://shop.example/pricing?utm_source=url",
                                       "referrer": "https://search.example/?q=shoes"}),
                 message_id="py-page-1"))
keep(client.screen(user_id="u-py", anonymous_id="anon-py", category="App", name="Checkout",
                   properties={"step": 2}, context=context(userAgent=os.environ["CHROME"]),
                   message_id="py-screen-1"))
keep(client.identify(user_id="u-py", anonymous_id="anon-py",
                     traits={"email": "jane@example.com", "plan": "pro"},
                     context=context(), message_id="py-identify-1"))
keep(client.group(user_id="u-py", anonymous_id="anon-py", group_id="acme",
                  traits={"name": "Acme", "employees": 42}, context=context(),
                  message_id="py-group-1"))
# No messageId: the SDK's own (a UUID), read from what it sent.
keep(client.alias(previous_id="anon-py", user_id="jane+py@example.com", context=context()))
client.shutdown()

hashes = {i: hashlib.sha256(i.encode()).hexdigest() for i in ["jane+py@example.com"]}
print(json.dumps({"errors": errors, "requests": requests, "hashes": hashes}))
sys.exit(1 if errors or not requests else 0)
"#;

#[tokio::test]
async fn python_sdk_every_call_type_field_by_field() {
    let started = now_ms();
    let api = Api::start(&[
        ("TRACKING_WRITE_KEYS", "wk1=web"),
        ("TRACKING_SERVER_WRITE_KEYS", "srv=backend"),
    ]);
    let out = run_python(PYTHON_ALL_CALLS, &api, "srv");
    let sent = sent_calls(&out["requests"]);
    assert_eq!(sent.len(), 6, "{out:#}");
    let lines = by_id(&api.events(6));
    assert_eq!(
        lines.keys().collect::<Vec<_>>(),
        sent.keys().collect::<Vec<_>>(),
        "one line per call sent, by messageId"
    );

    let campaign = ("newsletter", "email", "spring-sale");
    let mut sessions = HashMap::new();
    for (id, (call, sent_at)) in &sent {
        let line = &lines[id];
        // What the SDK itself says it is.
        assert_eq!(
            call["context"]["library"],
            json!({"name": "analytics-python", "version": "2.4.0"})
        );
        let visitor = call["anonymousId"]
            .as_str()
            .or(call["userId"].as_str())
            .unwrap();
        let client_id = client_id_of(visitor, &out["hashes"]);
        check_line(
            line,
            call,
            &Expect {
                source: "backend",
                sent_at,
                // A server key's context.ip, anonymised.
                ip: "198.51.100.0",
                ua: if call["type"] == "screen" {
                    ("Chrome", "Windows 10")
                } else {
                    ("UNKNOWN", "UNKNOWN")
                },
                client_id: &client_id,
                via: Some((campaign, None)),
                received_after: started,
            },
        );
        sessions
            .entry(client_id)
            .or_insert_with(Vec::new)
            .push(line["session"]["short_id"].clone());
    }

    // The messageIds the script chose, verbatim; the alias's is the SDK's.
    for id in [
        "py-track-1",
        "py-page-1",
        "py-screen-1",
        "py-identify-1",
        "py-group-1",
    ] {
        assert!(lines.contains_key(id), "{id}");
    }
    let alias = lines.values().find(|l| l["type"] == "alias").unwrap();
    assert!(
        uuid::Uuid::parse_str(alias["event_id"].as_str().unwrap()).is_ok(),
        "{alias}"
    );
    assert_eq!(alias["user_id"], "jane+py@example.com");
    assert_eq!(alias["anonymous_id"], Value::Null, "sent as null");
    assert!(alias["client_id"].as_str().unwrap().starts_with("h."));
    // The call made in the past keeps its time (corrected by a few ms at
    // most: the SDK's clock is ours).
    let track = &lines["py-track-1"];
    assert_eq!(track["original_timestamp"], "2026-01-02T03:04:05.678Z");
    let drift = out_ms(track, "timestamp") - ms_of("2026-01-02T03:04:05.678Z");
    assert!((0..5000).contains(&drift), "{track:#}");
    // The campaign wins over the page URL's utm_*.
    assert_eq!(lines["py-page-1"]["via"]["source"], "newsletter");
    // One session for anon-py's five calls, another for the alias's user.
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let anon = &sessions["anon-py"];
    assert_eq!(anon.len(), 5);
    assert!(anon.iter().all(|s| *s == anon[0]), "{anon:?}");
    let alias_session = &sessions[alias["client_id"].as_str().unwrap()];
    assert_ne!(alias_session, &vec![anon[0].clone()], "{sessions:?}");
    assert!(read_ndjson(&api.dead).is_empty(), "no dead letters");
}

/// @segment/analytics-node 3.1.0 sends one call of each type. The request
/// bodies come from the SDK's own `http_request` event; the script fails on
/// any delivery error (callback or `error` event) or a status but 200.
const NODE_ALL_CALLS: &str = r#"
const crypto = require('crypto')
const { Analytics } = require('@segment/analytics-node')
const analytics = new Analytics({
  writeKey: process.env.WRITE_KEY, host: process.env.HOST, flushInterval: 100, maxRetries: 0,
})
const failures = [], requests = [], statuses = []
let delivered = 0
analytics.on('error', (e) => failures.push(`${e.code}: ${e.reason}`))
analytics.on('http_request', (r) => requests.push(JSON.parse(r.body)))
analytics.on('http_response', (r) => statuses.push(r.status))
const done = (err) => { if (err) failures.push(String(err)); else delivered++ }
const context = (extra) => ({
  ip: '198.51.100.77',
  campaign: { name: 'autumn', source: 'partner', medium: 'affiliate' },
  ...extra,
})
const ids = { userId: 'u-node', anonymousId: 'anon-node' }
const past = new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 678))

analytics.track({ ...ids, event: 'Product Viewed', properties: { sku: 'B-7', price: 12.5, tags: ['x', 'y'] },
  context: context(), timestamp: past, messageId: 'node-track-1' }, done)
analytics.page({ ...ids, category: 'Docs', name: 'Home', properties: { url: 'https://shop.example/' },
  context: context({ page: { url: 'https://shop.example/?ref=1', referrer: 'https://ref.example/' } }),
  messageId: 'node-page-1' }, done)
analytics.screen({ ...ids, category: 'App', name: 'Main', properties: { k: 'v' },
  context: context({ userAgent: process.env.CHROME }) }, done)
analytics.identify({ ...ids, traits: { email: 'n@example.com', plan: 'free' }, context: context(),
  messageId: 'node-identify-1' }, done)
analytics.group({ ...ids, groupId: 'g-node', traits: { name: 'Initech' }, context: context(),
  messageId: 'node-group-1' }, done)
analytics.alias({ userId: 'u-node', previousId: 'anon-node', context: context(),
  messageId: 'node-alias-1' }, done)

analytics.closeAndFlush({ timeout: 20000 }).then(() => {
  const hashes = {}
  console.log(JSON.stringify({ failures, requests, statuses, delivered, hashes }))
  process.exitCode = failures.length || delivered !== 6 || statuses.some((s) => s !== 200) ? 1 : 0
})
"#;

#[tokio::test]
async fn node_sdk_every_call_type_field_by_field() {
    let started = now_ms();
    let api = Api::start(&[
        ("TRACKING_WRITE_KEYS", "wk1=web"),
        ("TRACKING_SERVER_WRITE_KEYS", "srv=backend"),
    ]);
    let out = run_node(NODE_ALL_CALLS, &api, "wk1");
    let sent = sent_calls(&out["requests"]);
    assert_eq!(sent.len(), 6, "{out:#}");
    let lines = by_id(&api.events(6));
    assert_eq!(
        lines.keys().collect::<Vec<_>>(),
        sent.keys().collect::<Vec<_>>(),
        "one line per call sent, by messageId"
    );
    let campaign = ("partner", "affiliate", "autumn");
    let mut short_ids = Vec::new();
    for (id, (call, sent_at)) in &sent {
        assert_eq!(
            call["context"]["library"],
            json!({"name": "@segment/analytics-node", "version": "3.1.0"})
        );
        let visitor = call["anonymousId"]
            .as_str()
            .or(call["userId"].as_str())
            .unwrap();
        check_line(
            &lines[id],
            call,
            &Expect {
                source: "web",
                sent_at,
                // A browser key's context.ip is not believed: the
                // connection's address, anonymised.
                ip: "127.0.0.0",
                ua: if call["type"] == "screen" {
                    ("Chrome", "Windows 10")
                } else {
                    ("UNKNOWN", "UNKNOWN")
                },
                client_id: &client_id_of(visitor, &out["hashes"]),
                via: Some((campaign, None)),
                received_after: started,
            },
        );
        if call["anonymousId"] == "anon-node" {
            short_ids.push(lines[id]["session"]["short_id"].clone());
        }
    }
    for id in [
        "node-track-1",
        "node-page-1",
        "node-identify-1",
        "node-group-1",
        "node-alias-1",
    ] {
        assert!(lines.contains_key(id), "{id}");
    }
    let screen = lines.values().find(|l| l["type"] == "screen").unwrap();
    assert!(
        screen["event_id"]
            .as_str()
            .unwrap()
            .starts_with("node-next-"),
        "the SDK's own messageId: {screen}"
    );
    let track = &lines["node-track-1"];
    assert_eq!(track["original_timestamp"], "2026-01-02T03:04:05.678Z");
    let drift = out_ms(track, "timestamp") - ms_of("2026-01-02T03:04:05.678Z");
    assert!((0..5000).contains(&drift), "{track:#}");
    // page() copies its category into properties, as sent.
    assert_eq!(lines["node-page-1"]["properties"]["category"], "Docs");
    assert_eq!(short_ids.len(), 5);
    assert!(
        short_ids.iter().all(|s| *s == short_ids[0]),
        "{short_ids:?}"
    );
    assert!(read_ndjson(&api.dead).is_empty(), "no dead letters");
}

// ---------------------------------------------------------------------------
// Raw clients: what analytics-kotlin and analytics.js send

/// A random UUID (version 4), as the mobile SDKs mint them.
fn uuid4() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

/// Reads a whole response (the server closes after it) within `WITHIN`.
async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    tokio::time::timeout(WITHIN, stream.read_to_end(&mut buf))
        .await
        .expect("the response in time")
        .unwrap();
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> RawResponse {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    RawResponse {
        status,
        head,
        body: buf[split + 4..].to_vec(),
    }
}

/// A response header's value (the first, by case-insensitive name).
fn header(r: &RawResponse, name: &str) -> Option<String> {
    r.head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

fn body_json(r: &RawResponse) -> Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {r:?} {}", String::from_utf8_lossy(&r.body)))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Sends `head` (without its blank line) and `body` with chunked framing,
/// in `chunks` chunks written one at a time, and reads the response.
async fn post_chunked(addr: SocketAddr, head: &str, body: &[u8], chunks: usize) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{head}Transfer-Encoding: chunked\r\n\r\n").as_bytes())
        .await
        .unwrap();
    for chunk in body.chunks(body.len().div_ceil(chunks)) {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(chunk);
        framed.extend_from_slice(b"\r\n");
        s.write_all(&framed).await.unwrap();
        s.flush().await.unwrap();
        // Each chunk its own segment, as a streaming client sends them.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    read_response(&mut s).await
}

/// The context analytics-kotlin's ContextPlugin gives every event.
fn kotlin_context(instance: &str, anonymous_id: &str) -> Value {
    json!({
        "app": {"name": "Shop", "version": "4.2.0", "namespace": "com.example.shop", "build": "420"},
        "device": {"id": "3f1c0a6e9b2d4c55", "manufacturer": "Google", "model": "Pixel 7",
                   "name": "panther", "type": "android"},
        "os": {"name": "Android", "version": "14"},
        "library": {"name": "analytics-kotlin", "version": "1.24.1"},
        "instanceId": instance,
        "locale": "en-US",
        "network": {"wifi": true, "cellular": false, "bluetooth": false},
        "screen": {"density": 2.625, "height": 2400, "width": 1080},
        "timezone": "Europe/Berlin",
        "traits": {"anonymousId": anonymous_id},
        "userAgent": "Dalvik/2.1.0 (Linux; U; Android 14; Pixel 7 Build/UQ1A.240105.004)"
    })
}

/// Exactly what analytics-kotlin (before 1.24, java.net.HttpURLConnection)
/// sends: POST /b, text/plain, gzip, chunked, the key and sentAt in the
/// body, no Authorization. The device's clock is an hour slow: the
/// corrected time of each event is its age before sending, back from when
/// it was received.
#[tokio::test]
async fn kotlin_wire_gzip_chunked_batch_arrives_once() {
    let started = now_ms();
    let api = Api::start(&[("TRACKING_WRITE_KEYS", "wk1=web,wk2=ios")]);
    let anon = uuid4();
    let instance = uuid4();
    let device_now = now_ms() - 3_600_000;
    let meta = json!({"bundled": [], "unbundled": [], "bundledIds": []});
    // (call, age in ms when sent)
    let calls: Vec<(Value, i64)> = vec![
        (
            json!({"type": "track", "event": "Application Opened",
                "properties": {"from_background": false, "version": "4.2.0", "build": "420"}}),
            9000,
        ),
        (
            json!({"type": "screen", "name": "Home", "category": "Main", "properties": {"tab": 1}}),
            8000,
        ),
        (
            json!({"type": "track", "event": "Product Added",
                "properties": {"sku": "A-1", "price": 12.5, "currency": "EUR"}}),
            6500,
        ),
        (
            json!({"type": "identify", "userId": "user-42",
                "traits": {"email": "k@example.com", "anonymousId": anon}}),
            5000,
        ),
        (
            json!({"type": "group", "userId": "user-42", "groupId": "team-7",
                "traits": {"name": "Seven"}}),
            4000,
        ),
        (
            json!({"type": "screen", "userId": "user-42", "name": "Cart",
                "properties": {"items": 1}}),
            2500,
        ),
        (
            json!({"type": "track", "userId": "user-42", "event": "Order Completed",
                "properties": {"order_id": "o-1", "total": 12.5}}),
            1000,
        ),
        (
            json!({"type": "alias", "userId": "user-42", "previousId": anon}),
            10,
        ),
    ];
    let mut batch = Vec::new();
    let mut ages = HashMap::new();
    for (mut call, age) in calls {
        let id = uuid4();
        let o = call.as_object_mut().unwrap();
        o.insert("messageId".into(), json!(id));
        o.insert("anonymousId".into(), json!(anon));
        o.insert("integrations".into(), json!({}));
        o.insert("context".into(), kotlin_context(&instance, &anon));
        o.insert("timestamp".into(), json!(rfc3339(device_now - age)));
        o.insert("_metadata".into(), meta.clone());
        ages.insert(id, age);
        batch.push(serde_json::to_string(&call).unwrap());
    }
    let sent_at = rfc3339(device_now);
    // Built as the SDK builds its batch file: the events, then the end.
    let body = format!(
        r#"{{"batch":[{}],"sentAt":"{sent_at}","writeKey":"wk2"}}"#,
        batch.join(",")
    );
    let head = format!(
        "POST /b HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Encoding: gzip\r\n\
         User-Agent: analytics-kotlin/1.24.1\r\nAccept-Encoding: gzip\r\nConnection: close\r\n",
        api.addr()
    );
    let r = post_chunked(api.addr(), &head, &gzip(body.as_bytes()), 5).await;
    assert_eq!(r.status, 200, "{r:?} {}", api.log());
    assert_eq!(body_json(&r), json!({"success": true}));

    let lines = by_id(&api.events(ages.len()));
    let sent: Vec<Value> = batch
        .iter()
        .map(|c| serde_json::from_str(c).unwrap())
        .collect();
    for call in &sent {
        let id = call["messageId"].as_str().unwrap();
        let line = lines
            .get(id)
            .unwrap_or_else(|| panic!("{id} missing: {lines:#?}"));
        let received = check_line(
            line,
            call,
            &Expect {
                source: "ios",
                sent_at: &sent_at,
                ip: "127.0.0.0",
                ua: ("UNKNOWN", "Android"),
                client_id: &anon,
                via: None,
                received_after: started,
            },
        );
        // An hour of skew removed: the event's age, back from receipt.
        assert_eq!(
            line["timestamp"],
            rfc3339(received - ages[id]),
            "{id}: {line:#}"
        );
    }
    let shorts: Vec<_> = lines.values().map(|l| &l["session"]["short_id"]).collect();
    assert!(shorts.iter().all(|s| *s == shorts[0]), "{shorts:?}");
    assert!(read_ndjson(&api.dead).is_empty(), "no dead letters");
}

/// The preflight a browser sends before analytics.js's POST to `path`, and
/// its checks: allowed origin echoed, POST and the SDK's headers allowed.
async fn preflight(addr: SocketAddr, path: &str, origin: &str) -> RawResponse {
    request(
        addr,
        "OPTIONS",
        path,
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization,content-type,x-retry-count",
            ),
        ],
        b"",
    )
    .await
    .unwrap()
}

/// analytics.js (analytics-next, standard mode) in a page of an allowed
/// origin: each call its own POST to /v1/p, /v1/t, /v1/i, preflighted
/// (its Authorization header is not CORS-safelisted), text/plain, the key
/// and sentAt in each event. The page's utm_* campaign is the visitor's
/// via, remembered for the later calls.
#[tokio::test]
async fn analytics_js_wire_single_calls_with_preflight() {
    let started = now_ms();
    let origin = "https://shop.example";
    let api = Api::start(&[
        ("TRACKING_WRITE_KEYS", "wk1=web"),
        ("TRACKING_CORS_ORIGINS", origin),
    ]);
    let anon = uuid4();
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("wk1:")
    );
    let search = "?utm_source=google&utm_medium=cpc&utm_campaign=spring";
    let landing = format!("{origin}/shoes{search}");
    let page_ctx = |path: &str, url: &str, referrer: &str, search: &str| {
        json!({
            "page": {"path": path, "referrer": referrer, "search": search, "title": "Shop", "url": url},
            "userAgent": CHROME,
            "userAgentData": {"brands": [{"brand": "Chromium", "version": "120"}], "mobile": false,
                              "platform": "Windows"},
            "locale": "en-US",
            "library": {"name": "analytics.js", "version": "npm:next-1.84.3"},
            "timezone": "Europe/Berlin",
        })
    };
    let mut landing_ctx = page_ctx("/shoes", &landing, "https://www.google.com/", search);
    landing_ctx["campaign"] = json!({"source": "google", "medium": "cpc", "name": "spring"});
    let cart = format!("{origin}/cart");
    let calls = [
        (
            "/v1/p",
            json!({"type": "page", "name": "Shoes", "category": null,
                   "properties": {"path": "/shoes", "url": landing, "search": search, "title": "Shop"},
                   "context": landing_ctx, "userId": null}),
        ),
        (
            "/v1/t",
            json!({"type": "track", "event": "Add To Cart",
                   "properties": {"sku": "S-9", "price": 89.0},
                   "context": page_ctx("/cart", &cart, &landing, ""), "userId": null}),
        ),
        (
            "/v1/i",
            json!({"type": "identify", "userId": "user-42",
                   "traits": {"email": "b@example.com", "name": "Bea"},
                   "context": page_ctx("/cart", &cart, &landing, "")}),
        ),
    ];

    // A page of another origin is refused: no CORS headers.
    let refused = preflight(api.addr(), "/v1/t", "https://evil.example").await;
    assert_eq!(header(&refused, "access-control-allow-origin"), None);

    let mut sent = Vec::new();
    for (path, mut call) in calls {
        let r = preflight(api.addr(), path, origin).await;
        assert_eq!(r.status, 204, "{path}: {r:?}");
        assert_eq!(
            header(&r, "access-control-allow-origin").as_deref(),
            Some(origin)
        );
        let methods = header(&r, "access-control-allow-methods").unwrap_or_default();
        assert!(
            methods.split(',').any(|m| m.trim() == "POST"),
            "{path}: {r:?}"
        );
        let allowed: Vec<String> = header(&r, "access-control-allow-headers")
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        for h in ["authorization", "content-type", "x-retry-count"] {
            assert!(allowed.iter().any(|a| a == h), "{path}: {h} in {r:?}");
        }

        let o = call.as_object_mut().unwrap();
        o.insert(
            "messageId".into(),
            json!(format!("ajs-next-{}-{}", now_ms(), uuid4())),
        );
        o.insert("anonymousId".into(), json!(anon));
        o.insert("timestamp".into(), json!(rfc3339(now_ms() - 40)));
        o.insert("integrations".into(), json!({}));
        o.insert(
            "_metadata".into(),
            json!({"bundled": ["Segment.io"], "unbundled": [], "bundledIds": []}),
        );
        o.insert("writeKey".into(), json!("wk1"));
        o.insert("sentAt".into(), json!(rfc3339(now_ms())));
        let body = serde_json::to_vec(&call).unwrap();
        let r = request(
            api.addr(),
            "POST",
            path,
            &[
                ("Origin", origin),
                ("Content-Type", "text/plain"),
                ("Authorization", &auth),
                ("User-Agent", CHROME),
                ("Referer", &format!("{origin}/")),
            ],
            &body,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(body_json(&r), json!({"success": true}), "{path}");
        assert_eq!(
            header(&r, "access-control-allow-origin").as_deref(),
            Some(origin),
            "{path}: the page may read the answer"
        );
        sent.push(call);
    }

    let lines = by_id(&api.events(3));
    let mut via_recorded = None;
    for call in &sent {
        let id = call["messageId"].as_str().unwrap();
        let line = &lines[id];
        let received = check_line(
            line,
            call,
            &Expect {
                source: "web",
                sent_at: call["sentAt"].as_str().unwrap(),
                ip: "127.0.0.0",
                ua: ("Chrome", "Windows 10"),
                client_id: &anon,
                via: Some((("google", "cpc", "spring"), via_recorded)),
                received_after: started,
            },
        );
        // Recorded by the landing page, remembered (not renewed) after.
        via_recorded.get_or_insert(received);
    }
    assert_eq!(
        lines.values().filter(|l| l["type"] == "page").count(),
        1,
        "{lines:#?}"
    );
    assert!(read_ndjson(&api.dead).is_empty(), "no dead letters");
}

// ---------------------------------------------------------------------------
// Sessions

/// The Node SDK sends calls of visitors a, b and c; c's first event came
/// through /v1/events, and a's next one goes there after.
const NODE_SESSIONS: &str = r#"
const { Analytics } = require('@segment/analytics-node')
const analytics = new Analytics({
  writeKey: process.env.WRITE_KEY, host: process.env.HOST, flushInterval: 100, maxRetries: 0,
})
const failures = [], requests = []
let delivered = 0
analytics.on('error', (e) => failures.push(`${e.code}: ${e.reason}`))
analytics.on('http_request', (r) => requests.push(JSON.parse(r.body)))
const done = (err) => { if (err) failures.push(String(err)); else delivered++ }
analytics.track({ anonymousId: 'visitor-a', event: 'First', messageId: 'a-1' }, done)
analytics.page({ anonymousId: 'visitor-a', name: 'Landing', messageId: 'a-2',
  context: { page: { url: 'https://shop.example/?utm_source=ads&utm_medium=cpc&utm_campaign=winter' } } }, done)
analytics.track({ anonymousId: 'visitor-b', event: 'First', messageId: 'b-1' }, done)
analytics.track({ anonymousId: 'visitor-c', event: 'Second', messageId: 'c-2' }, done)
analytics.closeAndFlush({ timeout: 20000 }).then(() => {
  console.log(JSON.stringify({ failures, requests, delivered }))
  process.exitCode = failures.length || delivered !== 4 ? 1 : 0
})
"#;

/// One visitor, one session, whichever way in: SDK calls of one
/// anonymousId share it, and so do `/v1/events` beacons whose `client_id`
/// is that anonymousId, before and after; another anonymousId has its own.
/// The via a page URL's utm_* recorded is the visitor's for the beacons too.
#[tokio::test]
async fn sessions_are_shared_with_v1_events() {
    let api = Api::start(&[("TRACKING_WRITE_KEYS", "wk1=web")]);
    let beacon = |client: &str, id: &str| {
        format!(r#"{{"type":"page_view","client_id":"{client}","event_id":"{id}"}}"#)
    };
    let r = common::process::post_json(api.addr(), &beacon("visitor-c", "c-1"))
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{r:?}");
    // Written before the SDK's calls are sent.
    api.events(1);

    let out = run_node(NODE_SESSIONS, &api, "wk1");
    assert_eq!(sent_calls(&out["requests"]).len(), 4, "{out:#}");
    let r = common::process::post_json(api.addr(), &beacon("visitor-a", "a-3"))
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{r:?}");

    let lines = by_id(&api.events(6));
    let s = |id: &str| {
        let s = &lines[id]["session"];
        assert_eq!(s["status"], "ok", "{id}: {:#}", lines[id]);
        (
            s["short_id"].as_str().unwrap().to_owned(),
            s["long_id"].as_str().unwrap().to_owned(),
            s["short_new"].as_bool().unwrap(),
            s["long_new"].as_bool().unwrap(),
        )
    };
    let (a1, a2, a3) = (s("a-1"), s("a-2"), s("a-3"));
    assert!(a1.2 && a1.3, "a's first event starts both sessions: {a1:?}");
    for (id, later) in [("a-2", &a2), ("a-3", &a3)] {
        assert_eq!(
            (&later.0, &later.1, later.2, later.3),
            (&a1.0, &a1.1, false, false),
            "{id} continues a's sessions"
        );
    }
    let (c1, c2) = (s("c-1"), s("c-2"));
    assert!(c1.2 && c1.3, "{c1:?}");
    assert_eq!(
        (&c2.0, &c2.1, c2.2, c2.3),
        (&c1.0, &c1.1, false, false),
        "the SDK call continues the beacon's sessions"
    );
    let b1 = s("b-1");
    assert!(b1.2 && b1.3, "{b1:?}");
    let shorts = [&a1.0, &b1.0, &c1.0];
    let longs = [&a1.1, &b1.1, &c1.1];
    for i in 0..3 {
        for j in i + 1..3 {
            assert_ne!(shorts[i], shorts[j], "visitors share a session");
            assert_ne!(longs[i], longs[j], "visitors share a long session");
        }
    }
    // The same visitor key in both formats.
    assert_eq!(lines["a-1"]["client_id"], "visitor-a");
    assert_eq!(lines["a-3"]["client_id"], "visitor-a");
    // The landing URL's utm_* became a's via, which the beacon carries.
    let recorded = out_ms(&lines["a-2"], "received_at");
    let via = json!({"source": "ads", "medium": "cpc", "campaign": "winter",
                     "expires_at": rfc3339(recorded + VIA_TTL_MS)});
    assert_eq!(lines["a-1"]["via"], Value::Null);
    assert_eq!(lines["a-2"]["via"], via);
    assert_eq!(lines["a-3"]["via"], via);
    assert_eq!(lines["b-1"]["via"], Value::Null);
}

// ---------------------------------------------------------------------------
// Bad input

/// A valid batch of `n` tracks (ids `{tag}-0`…), as the Python SDK sends it.
fn valid_batch(tag: &str, n: usize) -> (Vec<u8>, Vec<String>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    let calls: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({"type": "track", "event": "Ok", "userId": "u-ok", "messageId": id,
                   "timestamp": rfc3339(now_ms())})
        })
        .collect();
    let body = json!({"batch": calls, "sentAt": rfc3339(now_ms())});
    (serde_json::to_vec(&body).unwrap(), ids)
}

const AUTH_WK1: (&str, &str) = ("Authorization", "Basic d2sxOg=="); // base64("wk1:")

/// Sends a valid batch and keeps its ids as owed.
async fn send_valid(addr: SocketAddr, tag: &str, owed: &mut Vec<String>) {
    let (body, ids) = valid_batch(tag, 3);
    let r = request(
        addr,
        "POST",
        "/v1/batch",
        &[AUTH_WK1, ("Content-Type", "application/json")],
        &body,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{tag}: {r:?}");
    assert_eq!(body_json(&r), json!({"success": true}), "{tag}");
    owed.extend(ids);
}

async fn post_batch(addr: SocketAddr, headers: &[(&str, &str)], body: &[u8]) -> RawResponse {
    request(addr, "POST", "/v1/batch", headers, body)
        .await
        .unwrap()
}

/// An error answer: its status and `code`, with a message.
fn assert_error(r: &RawResponse, status: u16, code: &str) -> Value {
    assert_eq!(r.status, status, "{r:?}");
    let b = body_json(r);
    assert_eq!(b["code"], code, "{b}");
    assert!(b["message"].as_str().is_some_and(|m| !m.is_empty()), "{b}");
    b
}

/// A body that trickles in, one chunk of one byte every 200 ms: the status
/// the server answers, and when.
async fn trickle(addr: SocketAddr) -> (Option<u16>, Duration, Vec<u8>) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Basic d2sxOg==\r\n\
          Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let mut chunk = [0u8; 1024];
        tokio::select! {
            read = s.read(&mut chunk) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            },
            _ = tick.tick() => {
                if started.elapsed() > WITHIN {
                    break;
                }
                // A write may fail once the server closed: the read says so.
                let _ = s.write_all(b"1\r\n \r\n").await;
            }
        }
    }
    let elapsed = started.elapsed();
    let status = (!buf.is_empty()).then(|| parse_response(&buf).status);
    (status, elapsed, buf)
}

/// Every bad request gets its answer, and nothing of the valid batches
/// sent around and between them is lost or doubled: unknown and missing
/// keys (401, nothing written), malformed JSON (400), too large as sent,
/// chunked, inflated (a gzip bomb) or in calls (413), a batch with bad
/// calls (200; they go to the dead letters with their reason and text), a
/// batch of only bad calls (400), and a body that trickles (408 after the
/// body timeout, while a normal request is served at once). Memory stays
/// bounded through it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_answered_and_loses_nothing_valid() {
    let api = Api::start(&[
        ("TRACKING_WRITE_KEYS", "wk1=web"),
        ("TRACKING_BODY_TIMEOUT", "4s"),
    ]);
    let addr = api.addr();
    let json_ct = ("Content-Type", "application/json");
    let mut owed = Vec::new();
    // Ids that must never come out.
    let mut never: Vec<String> = Vec::new();
    send_valid(addr, "v0", &mut owed).await;

    // Unknown key: in Basic auth, in X-Write-Key, in the body.
    let (body, ids) = valid_batch("badkey", 2);
    never.extend(ids);
    let wrong = base64::engine::general_purpose::STANDARD.encode("nope:");
    let r = post_batch(
        addr,
        &[("Authorization", &format!("Basic {wrong}")), json_ct],
        &body,
    )
    .await;
    assert_error(&r, 401, "unauthorized");
    let r = post_batch(addr, &[("X-Write-Key", "nope"), json_ct], &body).await;
    assert_error(&r, 401, "unauthorized");
    let (body, ids) = valid_batch("badbodykey", 2);
    never.extend(ids);
    let mut with_key: Value = serde_json::from_slice(&body).unwrap();
    with_key["writeKey"] = json!("nope");
    let r = post_batch(addr, &[json_ct], &serde_json::to_vec(&with_key).unwrap()).await;
    assert_error(&r, 401, "unauthorized");
    // No key at all, while keys are configured.
    let (body, ids) = valid_batch("nokey", 2);
    never.extend(ids);
    let r = post_batch(addr, &[json_ct], &body).await;
    let b = assert_error(&r, 401, "unauthorized");
    assert!(b["message"].as_str().unwrap().contains("write key"), "{b}");
    send_valid(addr, "v1", &mut owed).await;

    // Malformed JSON.
    let r = post_batch(
        addr,
        &[AUTH_WK1, json_ct],
        br#"{"batch":[{"type":"track","event":"x","userId":"u","messageId":"trunc-1"}"#,
    )
    .await;
    assert_error(&r, 400, "invalid_request");
    never.push("trunc-1".into());
    let r = post_batch(addr, &[AUTH_WK1, json_ct], b"not json at all").await;
    assert_error(&r, 400, "invalid_request");
    send_valid(addr, "v2", &mut owed).await;

    // 600 KB of valid calls: refused whole, with a Content-Length or chunked.
    let big_calls: Vec<Value> = (0..300)
        .map(|i| {
            json!({"type": "track", "event": "Big", "userId": "u-big",
                        "messageId": format!("big-{i}"), "properties": {"pad": "p".repeat(2000)}})
        })
        .collect();
    let big = serde_json::to_vec(&json!({"batch": big_calls})).unwrap();
    assert!(big.len() > 600_000, "{}", big.len());
    never.extend((0..300).map(|i| format!("big-{i}")));
    let r = post_batch(addr, &[AUTH_WK1, json_ct], &big).await;
    assert_error(&r, 413, "payload_too_large");
    let head = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic d2sxOg==\r\nConnection: close\r\n"
    );
    let r = post_chunked(addr, &head, &big, 20).await;
    assert_error(&r, 413, "payload_too_large");
    // More calls than a batch may hold.
    let many: Vec<Value> = (0..4001)
        .map(|i| json!({"type": "track", "event": "e", "userId": "u", "messageId": format!("many-{i}")}))
        .collect();
    let many = serde_json::to_vec(&json!({"batch": many})).unwrap();
    assert!(many.len() < 512 << 10);
    never.extend((0..4001).map(|i| format!("many-{i}")));
    let r = post_batch(addr, &[AUTH_WK1, json_ct], &many).await;
    assert_error(&r, 413, "payload_too_large");
    // A single call over 32 KiB.
    let one = json!({"event": "Huge", "userId": "u", "messageId": "huge-1",
                     "properties": {"pad": "h".repeat(33 << 10)}});
    never.push("huge-1".into());
    let r = request(
        addr,
        "POST",
        "/v1/track",
        &[AUTH_WK1, json_ct],
        &serde_json::to_vec(&one).unwrap(),
    )
    .await
    .unwrap();
    assert_error(&r, 413, "payload_too_large");
    send_valid(addr, "v3", &mut owed).await;

    // A gzip bomb: 50 MB of zeros in about 50 KB, eight at once.
    let bomb = gzip(&vec![0u8; 50 << 20]);
    assert!(bomb.len() < 100 << 10, "{}", bomb.len());
    let bombs: Vec<_> = (0..8)
        .map(|_| {
            let bomb = bomb.clone();
            tokio::spawn(async move {
                request(
                    addr,
                    "POST",
                    "/v1/batch",
                    &[AUTH_WK1, json_ct, ("Content-Encoding", "gzip")],
                    &bomb,
                )
                .await
                .unwrap()
            })
        })
        .collect();
    for b in bombs {
        assert_error(&b.await.unwrap(), 413, "payload_too_large");
    }
    send_valid(addr, "v4", &mut owed).await;

    // One batch, some calls bad: the good ones out, each bad one a dead
    // letter with its index, reason and text as sent.
    let oversized = format!(
        r#"{{"type":"track","event":"Big","userId":"u","messageId":"over-1","properties":{{"pad":"{}"}}}}"#,
        "o".repeat(33 << 10)
    );
    let bad: [(&str, &str); 5] = [
        (
            r#"{"type":"track", "userId":"u",  "messageId":"noevent-1"}"#,
            "missing_event",
        ),
        ("7", "not_an_object"),
        (
            r#"{"type":"page","userId":"u","messageId":"tab\there"}"#,
            "invalid_message_id",
        ),
        (&oversized, "call_too_large"),
        (
            r#"{"type":"track","event":"Anonymous nobody"}"#,
            "missing_user_id",
        ),
    ];
    let mixed = format!(
        r#"{{"batch":[{{"type":"track","event":"Ok","userId":"u","messageId":"mixed-0"}},{},{{"type":"identify","userId":"u","messageId":"mixed-6"}}],"sentAt":"{}"}}"#,
        bad.iter()
            .map(|(raw, _)| *raw)
            .collect::<Vec<_>>()
            .join(","),
        rfc3339(now_ms())
    );
    never.extend(["noevent-1".into(), "over-1".into()]);
    let r = post_batch(
        addr,
        &[AUTH_WK1, ("Content-Type", "text/plain")],
        mixed.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let answer = body_json(&r);
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(answer["accepted"], 2, "{answer}");
    let rejected = answer["rejected"].as_array().unwrap();
    assert_eq!(
        rejected
            .iter()
            .map(|r| r["index"].clone())
            .collect::<Vec<_>>(),
        (1..=5).map(|i| json!(i)).collect::<Vec<_>>(),
        "{answer}"
    );
    owed.extend(["mixed-0".into(), "mixed-6".into()]);
    // Every call refused: the request is.
    let all_bad = br#"{"batch":[{"type":"track","userId":"u"},{"type":"alias","userId":"u"}]}"#;
    let r = post_batch(addr, &[AUTH_WK1, json_ct], all_bad).await;
    let b = assert_error(&r, 400, "invalid_request");
    assert_eq!(
        b["rejected"]
            .as_array()
            .map(|r| r.iter().map(|x| x["index"].clone()).collect::<Vec<_>>()),
        Some(vec![json!(0), json!(1)]),
        "{b}"
    );
    send_valid(addr, "v5", &mut owed).await;

    // A body that trickles: 408 once the body timeout (4 s) has passed; a
    // normal request meanwhile is served well before that (the bound is
    // generous for a shared machine, and still short of the timeout).
    let slow = tokio::spawn(trickle(addr));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    send_valid(addr, "v6", &mut owed).await;
    let took = t.elapsed();
    assert!(took < Duration::from_secs(3), "served in {took:?}");
    let (status, after, raw) = slow.await.unwrap();
    assert_eq!(
        status,
        Some(408),
        "after {after:?}: {}",
        String::from_utf8_lossy(&raw)
    );
    assert!(
        (Duration::from_millis(3800)..Duration::from_secs(15)).contains(&after),
        "408 after {after:?}"
    );
    assert_error(&parse_response(&raw), 408, "request_timeout");
    send_valid(addr, "v7", &mut owed).await;

    // Every valid event exactly once, nothing else. The sink writes in
    // order, so the last batch's lines come after any stray one.
    let lines = api.events(owed.len());
    let mut got: Vec<String> = lines
        .iter()
        .map(|l| l["event_id"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    owed.sort();
    assert_eq!(got, owed);
    for id in &never {
        assert!(!got.contains(id), "{id} written");
    }

    // The dead letters: the mixed batch's five, then the all-bad batch's two.
    let dead = wait_for_lines(&api.dead, 7, WITHIN);
    assert_eq!(dead.len(), 7, "{dead:#?}");
    for (i, (raw, reason)) in bad.iter().enumerate() {
        let d = &dead[i];
        assert_eq!(d["reason"], *reason, "{d}");
        assert_eq!(d["index"], i + 1, "{d}");
        assert_eq!(d["raw"], *raw, "{reason}: raw as sent");
        assert_eq!(d["error"], rejected[i]["error"], "{d}");
        assert!(d["error"].as_str().is_some_and(|e| !e.is_empty()), "{d}");
        out_ms(d, "received_at");
    }
    assert_eq!(
        dead[5..]
            .iter()
            .map(|d| (d["reason"].clone(), d["index"].clone(), d["raw"].clone()))
            .collect::<Vec<_>>(),
        vec![
            (
                json!("missing_event"),
                json!(0),
                json!(r#"{"type":"track","userId":"u"}"#)
            ),
            (
                json!("missing_previous_id"),
                json!(1),
                json!(r#"{"type":"alias","userId":"u"}"#)
            ),
        ]
    );

    // Memory: eight bombs, 600 KB bodies and 4,001 calls cost little.
    let peak = test_support::peak_rss_kib(api.process.child.id());
    assert!(peak > 0 && peak < 200 << 10, "peak RSS {peak} KiB");
}

// ---------------------------------------------------------------------------
// Retries

/// One request of a batch route as the proxy saw it: its headers (lower
/// case) and body, and the status the client was given.
#[derive(Debug, Clone)]
struct Seen {
    headers: Vec<(String, String)>,
    body: Value,
    status: u16,
}

/// A proxy in front of the API that loses the first answer to `POST
/// /v1/batch`: the request is forwarded and the API takes it (its events
/// are output), but the client is told `503` with `Retry-After: 1`, as a
/// load balancer or a dying pod might; every other request and answer
/// passes unchanged. Each request on a connection of its own to the API.
struct LoseFirstBatchAnswer {
    addr: SocketAddr,
    batches: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LoseFirstBatchAnswer {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let batches = std::sync::Arc::default();
        let all = std::sync::Arc::clone(&batches);
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let all = std::sync::Arc::clone(&all);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        Self::forward(upstream, req, std::sync::Arc::clone(&all))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            batches,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The batch requests seen so far.
    fn batches(&self) -> Vec<Seen> {
        self.batches.lock().unwrap().clone()
    }

    async fn forward(
        upstream: SocketAddr,
        req: hyper::Request<hyper::body::Incoming>,
        batches: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    ) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, hyper::Error> {
        use http_body_util::Full;
        // Bodies and answers of a few kB; a MiB is plenty.
        const LIMIT: usize = 1 << 20;
        let (mut parts, body) = req.into_parts();
        let body = service_kit::read_limited(body, LIMIT).await.unwrap();
        // The body goes on whole, with its length.
        parts.headers.remove(hyper::header::TRANSFER_ENCODING);
        let is_batch = parts.method == hyper::Method::POST && parts.uri.path() == "/v1/batch";
        let headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let stream = TcpStream::connect(upstream).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let answer = sender
            .send_request(hyper::Request::from_parts(parts, Full::new(body.clone())))
            .await?;
        let (mut answer, answer_body) = answer.into_parts();
        let answer_body = service_kit::read_limited(answer_body, LIMIT).await.unwrap();
        for hop in [
            hyper::header::TRANSFER_ENCODING,
            hyper::header::CONTENT_LENGTH,
            hyper::header::CONNECTION,
        ] {
            answer.headers.remove(hop);
        }
        let mut lost = false;
        if is_batch {
            let mut batches = batches.lock().unwrap();
            lost = batches.is_empty();
            batches.push(Seen {
                headers,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                status: if lost { 503 } else { answer.status.as_u16() },
            });
        }
        if lost {
            // The API's own answer (200, events taken) is dropped.
            return Ok(hyper::Response::builder()
                .status(503)
                .header("Retry-After", "1")
                .header("Content-Type", "application/json")
                .body(Full::new(bytes::Bytes::from_static(
                    br#"{"code":"unavailable","message":"upstream answer lost"}"#,
                )))
                .unwrap());
        }
        Ok(hyper::Response::from_parts(answer, Full::new(answer_body)))
    }
}

impl Drop for LoseFirstBatchAnswer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// @segment/analytics-node 3.1.0 sends five tracks of one visitor, with
/// the SDK's own messageIds, and retries what fails (up to 3 times; after a
/// 5xx but 501/505/511 it waits its backoff, 1–2 s for the first retry, and
/// sends the same events again with `X-Retry-Count`). The script fails on
/// any delivery error.
const NODE_RETRIED_BATCH: &str = r#"
const { Analytics } = require('@segment/analytics-node')
const analytics = new Analytics({
  writeKey: process.env.WRITE_KEY, host: process.env.HOST, flushInterval: 100, maxRetries: 3,
})
const failures = [], statuses = []
let delivered = 0
analytics.on('error', (e) => failures.push(`${e.code}: ${e.reason}`))
analytics.on('http_response', (r) => statuses.push(r.status))
const done = (err) => { if (err) failures.push(String(err)); else delivered++ }
for (let i = 0; i < 5; i++) {
  analytics.track({ anonymousId: 'visitor-retry', event: 'Retried', properties: { i } }, done)
}
analytics.closeAndFlush({ timeout: 20000 }).then(() => {
  console.log(JSON.stringify({ failures, statuses, delivered }))
  process.exitCode = failures.length || delivered !== 5 ? 1 : 0
})
"#;

/// What came of [`NODE_RETRIED_BATCH`] through [`LoseFirstBatchAnswer`]
/// with `TRACKING_DEDUP_WINDOW=window`: the batch requests the proxy saw,
/// the lines output once the SDK is done, and the duplicates counted.
async fn node_batch_retried_after_503(window: &str) -> (Vec<Seen>, Vec<Value>, f64) {
    let api = Api::start(&[
        ("TRACKING_WRITE_KEYS", "wk1=web"),
        ("TRACKING_DEDUP_WINDOW", window),
    ]);
    let proxy = LoseFirstBatchAnswer::start(api.addr()).await;
    let url = proxy.url();
    // The script blocks (bounded by WITHIN); the proxy runs on the other
    // worker meanwhile.
    let out = tokio::task::block_in_place(|| run_node_at(NODE_RETRIED_BATCH, &url, "wk1"));
    assert_eq!(out["failures"], json!([]), "{out:#}");
    assert_eq!(out["delivered"], 5, "{out:#}");
    let batches = proxy.batches();
    assert_eq!(
        out["statuses"],
        json!(batches.iter().map(|b| b.status).collect::<Vec<_>>()),
        "the SDK heard what the proxy answered"
    );
    // An answer may come before the lines are written (the `memory`
    // acknowledgement mode), but the sink writes in order: once an event
    // sent after the SDK is done is there, so is every copy the SDK's
    // requests produced.
    let r = common::process::post_json(
        api.addr(),
        r#"{"type":"marker","client_id":"marker","event_id":"marker-1"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204, "{r:?}");
    let deadline = Instant::now() + WITHIN;
    let mut lines = read_ndjson(&api.events);
    while !lines.iter().any(|l| l["event_id"] == "marker-1") {
        assert!(
            Instant::now() < deadline,
            "the marker within {WITHIN:?}: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        lines = read_ndjson(&api.events);
    }
    lines.retain(|l| l["event_id"] != "marker-1");
    let duplicates = metric(&api.process, "tracking_events_duplicates_total").await;
    (batches, lines, duplicates)
}

/// The messageIds of a batch body, in order.
fn message_ids(body: &Value) -> Vec<String> {
    body["batch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["messageId"].as_str().unwrap().to_owned())
        .collect()
}

/// The SDK's first retry among `batches`: the one request with
/// `X-Retry-Count: 1`.
fn retry_of(batches: &[Seen]) -> &Seen {
    let retries: Vec<&Seen> = batches
        .iter()
        .filter(|b| {
            b.headers
                .contains(&("x-retry-count".to_owned(), "1".to_owned()))
        })
        .collect();
    assert_eq!(retries.len(), 1, "one first retry: {batches:#?}");
    retries[0]
}

/// The Node SDK's retry of a batch whose answer was lost (`503` after the
/// API took it) is answered as accepted and not output again: one line per
/// message, the retried ones counted as duplicates. With deduplication off
/// the same run outputs every retried message twice, which this test would
/// catch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sdk_retry_after_a_503_is_output_once() {
    let (batches, lines, duplicates) = node_batch_retried_after_503("24h").await;
    assert!(batches.len() >= 2, "the SDK retried: {batches:#?}");
    assert_eq!(batches[0].status, 503);
    // The retry (the SDK marks it with `X-Retry-Count`) is the same batch
    // again, the same messageIds, and is answered as accepted.
    let retried = message_ids(&batches[0].body);
    assert!(!retried.is_empty(), "{batches:#?}");
    let retry = retry_of(&batches);
    assert_eq!(message_ids(&retry.body), retried, "the same messages");
    assert_eq!(retry.status, 200, "{batches:#?}");
    let sent: std::collections::BTreeSet<String> =
        batches.iter().flat_map(|b| message_ids(&b.body)).collect();
    assert_eq!(sent.len(), 5, "five messages: {batches:#?}");
    // Each message once (`by_id` fails on an id twice), all of them.
    let out = by_id(&lines);
    assert_eq!(
        out.keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        sent
    );
    assert_eq!(
        duplicates,
        retried.len() as f64,
        "the retried batch's messages"
    );

    // Deduplication off: the same run outputs the retried batch twice.
    let (batches, lines, duplicates) = node_batch_retried_after_503("0").await;
    let retried = message_ids(&batches[0].body);
    assert_eq!(message_ids(&retry_of(&batches).body), retried);
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    for l in &lines {
        *copies
            .entry(l["event_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    for id in &retried {
        assert_eq!(
            copies.get(id),
            Some(&2),
            "{id} twice without dedup: {copies:?}"
        );
    }
    assert_eq!(lines.len(), 5 + retried.len(), "{copies:?}");
    assert_eq!(duplicates, 0.0);
}
