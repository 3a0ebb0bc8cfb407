//! The NDJSON outputs under the faults of the outputs themselves, against
//! the real binary: whatever valid JSON a client sends, a line is one JSON
//! document; a full disk, a reader that goes away and a reader that is stuck
//! never turn a 2xx into loss, and memory stays under its bound; SIGHUP
//! reopens the files (log rotation).
//!
//! The full-disk tests mount a small tmpfs (the tests run as root).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{
    ApiProcess, assert_503_with_retry_after, assert_all_arrived, event_ids, metric, post_json,
    read_ndjson, request, shed, wait_for_lines, wait_metric,
};
use test_support::{Tmpfs, peak_rss_kib};

fn api_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tracking-api"))
}

fn page_view(id: &str) -> String {
    format!(r#"{{"type":"page_view","client_id":"v-{id}","event_id":"{id}"}}"#)
}

async fn readyz(addr: SocketAddr) -> u16 {
    request(addr, "GET", "/readyz", &[], b"")
        .await
        .map_or(0, |r| r.status)
}

/// Waits (bounded) until `/readyz` answers `status`.
async fn wait_readyz(addr: SocketAddr, status: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if readyz(addr).await == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// How often each event id occurs in NDJSON lines.
fn id_counts(lines: &[serde_json::Value]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for l in lines {
        *counts
            .entry(l["event_id"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    counts
}

fn log(api: &ApiProcess) -> String {
    api.stderr.lock().unwrap().join("\n")
}

/// Waits (bounded) until the sink has written `n` events, then stops the
/// process with SIGTERM, which must drain cleanly.
async fn written_then_terminate(api: &mut ApiProcess, n: usize, within: Duration) {
    let written = wait_metric(api, "tracking_events_written_total", n as f64, within).await;
    assert_eq!(written as usize, n);
    let status = api.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit {status:?}: {}", log(api));
}

#[tokio::test]
async fn props_and_dead_letters_stay_one_json_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    let dead = dir.path().join("dead.ndjson");
    let api = ApiProcess::start(&[
        ("TRACKING_SINK", "file"),
        ("TRACKING_SINK_PATH", events.to_str().unwrap()),
        ("TRACKING_DEADLETTER", "file"),
        ("TRACKING_DEADLETTER_PATH", dead.to_str().unwrap()),
    ]);
    // Valid JSON the way clients send it: pretty-printed (raw newlines, CR,
    // tabs between tokens), line and paragraph separators raw and escaped,
    // every escape, surrogate pairs, `\/`.
    let props = [
        "{\n  \"a\" : 1,\r\n\t\"list\" : [ 1 , { \"b\" : null } ]\n}",
        "{\"sep\":\"x\u{2028}y\u{2029}z\",\"esc\":\"\\u2028\\u2029\"}",
        "{ \"q\" : \"\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u0000 \\u001f \\ud83d\\ude00\" ,\n \"s p\" : \"  kept  \" }",
        "{\"nested\":{\"deep\":[[[\"\\n\"]]],\"e\":{}},\"n\":-1.5e3}",
    ];
    for (i, p) in props.iter().enumerate() {
        let body = format!(
            "{{\n \"type\" : \"page_view\",\n \"client_id\" : \"c{i}\",\n \"event_id\" : \"p{i}\",\n \"props\" : {p}\n}}"
        );
        let r = post_json(api.addr, &body).await.unwrap();
        assert_eq!(r.status, 204, "{r:?}");
    }
    // A batch whose second event is refused: its raw text (with newlines
    // and a separator) goes to the dead-letter file as one escaped string.
    let bad = "{\n \"type\" : \"Not Valid\",\n \"props\" : {\"x\":\"\u{2028}\"}\n}";
    let body = format!("{{\"events\":[{},\n{bad}]}}", page_view("p-batch"));
    let r = post_json(api.addr, &body).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");

    let lines = wait_for_lines(&events, props.len() + 1, Duration::from_secs(20));
    assert_eq!(lines.len(), props.len() + 1, "one line per event");
    for (i, p) in props.iter().enumerate() {
        let line = lines
            .iter()
            .find(|l| l["event_id"] == format!("p{i}"))
            .unwrap();
        let sent: serde_json::Value = serde_json::from_str(p).unwrap();
        assert_eq!(line["props"], sent, "props {i} is the client's JSON value");
        // Strings byte for byte: the line holds the sent text minus the
        // whitespace between tokens.
        let text = std::fs::read_to_string(&events).unwrap();
        let compact = minify_for_test(p);
        assert!(
            text.contains(&format!("\"props\":{compact},")),
            "props {i} as sent, compacted: {compact}\n{text}"
        );
    }
    let letters = wait_for_lines(&dead, 1, Duration::from_secs(20));
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["raw"], bad, "the refused event's text, verbatim");
    assert_eq!(letters[0]["index"], 1);
    // Every line of both files parsed (read_ndjson panics otherwise), and no
    // line holds a raw line break.
    for path in [&events, &dead] {
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(text.matches('\n').count(), read_ndjson(path).len());
        assert!(!text.contains('\r'));
    }
}

/// The test's own whitespace removal outside strings (the expected output).
fn minify_for_test(json: &str) -> String {
    let mut out = String::new();
    let (mut in_str, mut esc) = (false, false);
    for c in json.chars() {
        if in_str {
            out.push(c);
            if esc {
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\n' | '\r' | '\t') {
            out.push(c);
        }
    }
    out
}

/// 1,500 single events of about 700 bytes (about 1 MB, for a 256 KiB disk):
/// the ids answered 204, and how many were answered 503 (each with
/// Retry-After; anything else fails).
async fn fill_the_disk(api: &ApiProcess) -> (Vec<String>, usize) {
    let filler = "f".repeat(300);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..1_500 {
        let id = format!("full-{i}");
        let body = format!(
            r#"{{"type":"page_view","client_id":"v{i}","event_id":"{id}","props":{{"pad":"{filler}"}}}}"#
        );
        let r = post_json(api.addr, &body).await.unwrap();
        if r.status == 204 {
            accepted.push(id);
        } else {
            assert_503_with_retry_after(&r);
            refused += 1;
        }
    }
    (accepted, refused)
}

/// After room came back: `/readyz` turns 200 by itself (bounded wait), and
/// 20 more events are each answered 204 (their ids added to `accepted`).
async fn recovered_then_takes_20_more(api: &ApiProcess, accepted: &mut Vec<String>) {
    assert!(
        wait_readyz(api.addr, 200, Duration::from_secs(30)).await,
        "/readyz did not recover"
    );
    for i in 0..20 {
        let id = format!("after-{i}");
        let r = post_json(api.addr, &page_view(&id)).await.unwrap();
        assert_eq!(r.status, 204, "{r:?}");
        accepted.push(id);
    }
}

#[tokio::test]
async fn a_full_disk_refuses_with_503_keeps_what_it_accepted_and_recovers() {
    let disk = Tmpfs::mount("256k");
    let path = disk.path().join("events.ndjson");
    let mut api = ApiProcess::start(&[
        ("TRACKING_SINK", "file"),
        ("TRACKING_SINK_PATH", path.to_str().unwrap()),
        ("TRACKING_DEADLETTER", "discard"),
    ]);
    let (mut accepted, refused) = fill_the_disk(&api).await;
    assert!(refused > 0, "the disk never filled up");
    assert!(
        accepted.len() > 200,
        "events were accepted before it did: {}",
        accepted.len()
    );
    // Still full: not ready, and refusing for the right reason.
    assert_eq!(
        readyz(api.addr).await,
        503,
        "/readyz while the disk is full"
    );
    assert!(shed(&api, "output_failing").await > 0.0);
    assert!(metric(&api, "tracking_sink_write_errors_total").await > 0.0);
    assert!(
        (metric(&api, "tracking_events_written_total").await as usize) < accepted.len(),
        "counted as written only what was written"
    );

    // Room again: it recovers by itself and writes everything it kept.
    disk.resize("16m");
    recovered_then_takes_20_more(&api, &mut accepted).await;
    written_then_terminate(&mut api, accepted.len(), Duration::from_secs(30)).await;

    let counts = id_counts(&read_ndjson(&path));
    assert_all_arrived(&accepted, |id| counts.contains_key(id), "full disk");
    assert_eq!(
        counts.len(),
        accepted.len(),
        "nothing but the accepted events"
    );
    assert!(counts.values().all(|&n| n == 1), "each once");
    eprintln!(
        "full disk: {} accepted, {refused} refused with 503",
        accepted.len()
    );
}

/// Reads stdout lines into a shared list until the pipe ends or the
/// returned flag is set (then the read end is closed).
fn read_stdout(
    stdout: std::process::ChildStdout,
) -> (Arc<Mutex<Vec<String>>>, std::thread::JoinHandle<()>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&lines);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            keep.lock().unwrap().push(line);
        }
    });
    (lines, reader)
}

#[tokio::test]
async fn a_closed_stdout_stops_the_process_with_an_error_and_no_2xx_is_lost() {
    let mut api = ApiProcess::start_with_stdout(
        api_binary(),
        &[("TRACKING_DEADLETTER", "discard")],
        Stdio::piped(),
    );
    let stdout = api.child.stdout.take().unwrap();
    // The reader reads until the test has what it wants, then closes the
    // pipe, as `tracking-api | head` does.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let keep = Arc::clone(&lines);
    let reader = std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        while let Ok(want) = rx.recv() {
            if want.is_empty() {
                break; // close
            }
            loop {
                line.clear();
                if stdout.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                keep.lock().unwrap().push(line.trim_end().to_owned());
                if line.contains(&want) {
                    break;
                }
            }
        }
        drop(stdout);
    });
    let mut accepted = Vec::new();
    for i in 0..20 {
        let id = format!("pipe-{i}");
        let r = post_json(api.addr, &page_view(&id)).await.unwrap();
        assert_eq!(r.status, 204, "{r:?}");
        tx.send(format!("\"event_id\":\"{id}\"")).unwrap();
        accepted.push(id);
    }
    // Once the reader has the 20 lines, it goes away.
    tx.send(String::new()).unwrap();
    tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    // Noticed without a write: readiness drops (or the process is already
    // gone) and no event is answered 2xx any more.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if readyz(api.addr).await != 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed stdout was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..20 {
        match post_json(api.addr, &page_view(&format!("late-{i}"))).await {
            Ok(r) => assert_503_with_retry_after(&r),
            Err(_) => break, // stopped listening
        }
    }
    let status = tokio::task::spawn_blocking(move || {
        let status = api.wait_exit(Duration::from_secs(40));
        (status, log(&api))
    })
    .await
    .unwrap();
    let (status, log) = status;
    assert!(
        !status.success(),
        "exit status {status:?} after losing stdout: {log}"
    );
    assert!(log.contains("gone for good"), "{log}");
    let lines = lines.lock().unwrap();
    let seen = event_ids(lines.iter().map(String::as_str));
    assert!(accepted.iter().all(|id| seen.contains(id)));
}

/// An event at every size limit: 8 KiB props, 2 KiB url and referrer,
/// 256-byte via fields, 128-byte ids: about 13 KB as sent, 14 KB written.
fn largest_event(id: &str) -> String {
    let props = format!(r#"{{"k":"{}"}}"#, "p".repeat(8192 - 8));
    let url = format!("https://shop.example/{}", "u".repeat(2048 - 21));
    let referrer = format!("https://ref.example/{}", "r".repeat(2048 - 20));
    let via = "v".repeat(256);
    let client = format!("{id:c<128}");
    format!(
        r#"{{"type":"page_view","client_id":"{}","event_id":"{id}","url":"{url}","referrer":"{referrer}","via":{{"source":"{via}","medium":"{via}","campaign":"{via}"}},"props":{props}}}"#,
        &client[..128]
    )
}

/// Samples the process's peak RSS until `stop` is set; returns it in KiB.
fn watch_peak_rss(
    pid: u32,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            peak = peak.max(peak_rss_kib(pid));
            std::thread::sleep(Duration::from_millis(50));
        }
        peak.max(peak_rss_kib(pid))
    })
}

/// Worst-case RSS of the process with the default bounds and one of its
/// outputs stuck (README "Memory"): the sink queue's 256 MiB of events, the
/// dead letters' 32 MiB, and what the process needs besides.
const STUCK_OUTPUT_RSS_BOUND_MIB: u64 = 480;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_stdout_reader_gets_503_within_the_memory_bound_and_loses_nothing() {
    let mut api = ApiProcess::start_with_stdout(
        api_binary(),
        &[("TRACKING_DEADLETTER", "discard")],
        Stdio::piped(),
    );
    // Held open, not read: the pipe fills and the writer blocks.
    let stdout = api.child.stdout.take().unwrap();
    let pid = api.child.id();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rss = watch_peak_rss(pid, Arc::clone(&stop));

    // Batches of 70 of the largest events from 4 clients until each has
    // seen its queue full for a while.
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (accepted, refused, addr) = (Arc::clone(&accepted), Arc::clone(&refused), api.addr);
        clients.push(tokio::spawn(async move {
            let mut mine_refused = 0;
            for b in 0..400 {
                let ids: Vec<String> = (0..70).map(|i| format!("big-{c}-{b}-{i}")).collect();
                let events: Vec<String> = ids.iter().map(|id| largest_event(id)).collect();
                let body = format!(r#"{{"events":[{}]}}"#, events.join(","));
                assert!(body.len() < 1 << 20, "{}", body.len());
                let r = post_json(addr, &body).await.unwrap();
                if r.status == 204 {
                    accepted.lock().unwrap().extend(ids);
                } else {
                    assert_503_with_retry_after(&r);
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    mine_refused += 1;
                    if mine_refused >= 10 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            panic!("client {c}: the queue never filled up");
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let queued = metric(&api, "tracking_sink_queue_bytes").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = rss.join().unwrap();
    let accepted = accepted.lock().unwrap().clone();
    eprintln!(
        "stuck stdout: {} events accepted, {} requests refused, {queued} bytes queued, peak RSS {} MiB",
        accepted.len(),
        refused.load(std::sync::atomic::Ordering::Relaxed),
        peak / 1024
    );
    assert!(
        peak < STUCK_OUTPUT_RSS_BOUND_MIB * 1024,
        "peak RSS {peak} KiB over the bound of {STUCK_OUTPUT_RSS_BOUND_MIB} MiB"
    );

    // The reader comes back: every accepted event is there, once.
    let (lines, reader) = read_stdout(stdout);
    written_then_terminate(&mut api, accepted.len(), Duration::from_secs(60)).await;
    tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    let lines = lines.lock().unwrap();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for l in lines.iter() {
        // Lines start with the event id; parsing 300 MB of JSON in a debug
        // build takes long, and the props test checks the lines' form.
        let id = l
            .strip_prefix("{\"event_id\":\"")
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("not an event line: {}", &l[..l.len().min(100)]));
        *counts.entry(id).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), accepted.len());
    assert!(
        accepted
            .iter()
            .all(|id| counts.get(id.as_str()) == Some(&1))
    );
}

#[tokio::test]
async fn a_reader_stuck_through_sigterm_costs_only_counted_events() {
    let mut api = ApiProcess::start_with_stdout(
        api_binary(),
        &[
            ("TRACKING_DEADLETTER", "discard"),
            ("TRACKING_DRAIN_TIMEOUT", "2s"),
        ],
        Stdio::piped(),
    );
    // Held open, not read until the process has exited.
    let mut stdout = api.child.stdout.take().unwrap();
    let mut accepted = Vec::new();
    for b in 0..40 {
        let ids: Vec<String> = (0..50).map(|i| format!("stuck-{b}-{i}")).collect();
        let events: Vec<String> = ids.iter().map(|id| page_view(id)).collect();
        let r = post_json(api.addr, &format!(r#"{{"events":[{}]}}"#, events.join(",")))
            .await
            .unwrap();
        assert_eq!(r.status, 204, "{r:?}");
        accepted.extend(ids);
    }
    // SIGTERM with the pipe full: the flush deadline passes.
    let status = api.terminate(Duration::from_secs(30));
    assert!(!status.success(), "exit {status:?} with events not written");
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut stdout, &mut out).unwrap();
    // Whole lines only: the writer may have been cut off mid-line.
    let text = String::from_utf8_lossy(&out);
    let whole = text.rsplit_once('\n').map_or("", |(w, _)| w);
    let written: Vec<&str> = whole.lines().collect();
    for l in &written {
        serde_json::from_str::<serde_json::Value>(l).expect("a whole line is one JSON document");
    }
    let log = log(&api);
    let lost: usize = log
        .lines()
        .filter(|l| l.contains("before these events were written: lost"))
        .map(|l| {
            let line: serde_json::Value = serde_json::from_str(l).unwrap();
            line["events"].as_u64().unwrap() as usize
        })
        .sum();
    eprintln!(
        "stuck through SIGTERM: {} accepted, {} whole lines written, {lost} counted lost",
        accepted.len(),
        written.len()
    );
    assert!(lost > 0, "nothing counted lost: {log}");
    assert_eq!(
        written.len() + lost,
        accepted.len(),
        "every accepted event is written or counted lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_dead_letter_output_drops_and_counts_within_the_memory_bound() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("dead.fifo");
    let events = dir.path().join("events.ndjson");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    // The FIFO, opened by the API and read by nobody: a stuck output.
    let mut api = ApiProcess::start(&[
        ("TRACKING_SINK", "file"),
        ("TRACKING_SINK_PATH", events.to_str().unwrap()),
        ("TRACKING_DEADLETTER", "file"),
        ("TRACKING_DEADLETTER_PATH", fifo.to_str().unwrap()),
    ]);
    let pid = api.child.id();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rss = watch_peak_rss(pid, Arc::clone(&stop));
    // Each request: one valid event and one refused event of about 1 MiB.
    let big = "x".repeat(1_000_000);
    let mut accepted = Vec::new();
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (big, addr) = (big.clone(), api.addr);
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..40 {
                    let id = format!("dl-{c}-{i}");
                    let body = format!(
                        r#"{{"events":[{},{{"type":"Refused","client_id":"c","props":"{big}"}}]}}"#,
                        page_view(&id)
                    );
                    let r = post_json(addr, &body).await.unwrap();
                    assert_eq!(r.status, 200, "{:?}", r.head);
                    ids.push(id);
                }
                ids
            })
        })
        .collect();
    for c in clients {
        accepted.extend(c.await.unwrap());
    }
    let dropped = metric(&api, "tracking_deadletters_dropped_total").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = rss.join().unwrap();
    eprintln!(
        "stuck dead letters: 160 refused events of 1 MB, {dropped} dropped, peak RSS {} MiB",
        peak / 1024
    );
    assert!(
        dropped > 100.0,
        "letters past the bound are dropped and counted: {dropped}"
    );
    assert!(
        peak < STUCK_OUTPUT_RSS_BOUND_MIB * 1024,
        "peak RSS {peak} KiB over the bound of {STUCK_OUTPUT_RSS_BOUND_MIB} MiB"
    );
    // Unstick the output so that shutdown can flush it.
    let drain = std::thread::spawn(move || {
        let mut f = std::fs::File::open(&fifo).unwrap();
        std::io::copy(&mut f, &mut std::io::sink()).unwrap();
    });
    let status = api.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit {status:?}: {}", log(&api));
    drop(drain); // ends when the API closed its end
    let counts = id_counts(&read_ndjson(&events));
    assert_eq!(counts.len(), accepted.len());
    assert!(accepted.iter().all(|id| counts.get(id) == Some(&1)));
}

#[tokio::test]
async fn sighup_reopens_the_files_and_every_event_is_in_one_of_them_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.ndjson");
    let rotated = dir.path().join("events.ndjson.1");
    let dead = dir.path().join("dead.ndjson");
    let dead_rotated = dir.path().join("dead.ndjson.1");
    let mut api = ApiProcess::start(&[
        ("TRACKING_SINK", "file"),
        ("TRACKING_SINK_PATH", path.to_str().unwrap()),
        ("TRACKING_DEADLETTER", "file"),
        ("TRACKING_DEADLETTER_PATH", dead.to_str().unwrap()),
    ]);
    let refused = r#"{"type":"Refused","client_id":"c"}"#;
    let mut sent = Vec::new();
    let mut send = async |phase: &str, n: usize| {
        for i in 0..n {
            let id = format!("{phase}-{i}");
            let body = format!(r#"{{"events":[{},{refused}]}}"#, page_view(&id));
            let r = post_json(api.addr, &body).await.unwrap();
            assert_eq!(r.status, 200, "{r:?}");
            sent.push(id);
        }
    };
    send("before", 50).await;
    wait_for_lines(&path, 50, Duration::from_secs(20));
    // logrotate: rename, then SIGHUP. Events between the two still go to
    // the renamed file; those after the reopen to the new one.
    std::fs::rename(&path, &rotated).unwrap();
    std::fs::rename(&dead, &dead_rotated).unwrap();
    send("between", 50).await;
    api.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() || !dead.exists() {
        assert!(Instant::now() < deadline, "SIGHUP did not reopen the files");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    send("after", 50).await;
    let status = api.terminate(Duration::from_secs(30));
    assert!(
        status.success(),
        "SIGHUP stopped the process or its drain: {status:?}"
    );

    let old = id_counts(&read_ndjson(&rotated));
    let new = id_counts(&read_ndjson(&path));
    for id in &sent {
        let n = old.get(id).unwrap_or(&0) + new.get(id).unwrap_or(&0);
        assert_eq!(n, 1, "{id} is in one of the two files, once");
    }
    assert_eq!(old.len() + new.len(), sent.len());
    assert!(
        sent.iter()
            .filter(|id| id.starts_with("after"))
            .all(|id| new.contains_key(id)),
        "events after the reopen are in the new file"
    );
    assert!(
        sent.iter()
            .filter(|id| id.starts_with("before"))
            .all(|id| old.contains_key(id))
    );
    let letters = read_ndjson(&dead_rotated).len() + read_ndjson(&dead).len();
    assert_eq!(
        letters,
        sent.len(),
        "every dead letter in one of its two files"
    );
    assert!(
        read_ndjson(&dead).len() >= 50,
        "dead letters after the reopen"
    );
}

/// The issue's case for the file sink: `TRACKING_ACK=disk`, the project's
/// generator, `kill -9` at six moments, each followed by a restart on the
/// same file: every event answered 2xx is in the file (a line torn by a
/// kill is cut off at the restart, and a 2xx never depended on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_ack_kill_9_at_six_moments_keeps_every_2xx_event_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.ndjson");
    let env = [
        ("TRACKING_SINK", "file"),
        ("TRACKING_SINK_PATH", path.to_str().unwrap()),
        ("TRACKING_DEADLETTER", "discard"),
        ("TRACKING_ACK", "disk"),
    ];
    let mut accepted = Vec::new();
    for (i, after) in [300u64, 700, 1100, 1500, 1900, 2300]
        .into_iter()
        .enumerate()
    {
        let mut api = ApiProcess::start(&env);
        let generator = common::process::Generator::start(
            api.addr,
            200,
            Duration::from_millis(after + 1000),
            100 * (i as u64 + 1),
        );
        tokio::time::sleep(Duration::from_millis(after)).await;
        api.child.kill().unwrap();
        let _ = api.child.wait();
        let ids = tokio::task::spawn_blocking(move || generator.accepted())
            .await
            .unwrap();
        assert!(!ids.is_empty(), "no event answered before kill {i}");
        accepted.extend(ids);
    }
    // A last start cuts a torn line off; then a clean stop.
    let mut api = ApiProcess::start(&env);
    let status = api.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit {status:?}: {}", log(&api));
    let counts = id_counts(&read_ndjson(&path));
    assert_all_arrived(&accepted, |id| counts.contains_key(id), "disk ack, kill -9");
    eprintln!(
        "disk ack file sink, kill -9 ×6: {} answered 2xx, {} lines, {} ids twice",
        accepted.len(),
        counts.values().sum::<usize>(),
        counts.values().filter(|&&n| n > 1).count()
    );
}

/// The file sink in `TRACKING_ACK=disk` on a disk that fills up: every
/// request whose lines could not be written and synced is answered 503
/// (its lines cut off again), `/readyz` says 503, and with room again a
/// probe notices by itself. The file holds exactly the events answered 2xx,
/// each once.
#[tokio::test]
async fn disk_ack_file_on_a_full_disk_answers_503_and_holds_exactly_the_2xx_events() {
    let disk = Tmpfs::mount("256k");
    let path = disk.path().join("events.ndjson");
    let mut api = ApiProcess::start(&[
        ("TRACKING_SINK", "file"),
        ("TRACKING_SINK_PATH", path.to_str().unwrap()),
        ("TRACKING_DEADLETTER", "discard"),
        ("TRACKING_ACK", "disk"),
    ]);
    let (mut accepted, refused) = fill_the_disk(&api).await;
    assert!(refused > 0, "the disk never filled up");
    assert!(accepted.len() > 200, "accepted before: {}", accepted.len());
    assert_eq!(
        readyz(api.addr).await,
        503,
        "/readyz while the disk is full"
    );
    assert!(metric(&api, "tracking_ack_fsync_failures_total").await > 0.0);
    assert_eq!(
        metric(&api, "tracking_events_written_total").await as usize,
        accepted.len(),
        "written (synced) = answered 2xx"
    );

    disk.resize("16m");
    recovered_then_takes_20_more(&api, &mut accepted).await;
    let status = api.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit {status:?}: {}", log(&api));
    let counts = id_counts(&read_ndjson(&path));
    assert_all_arrived(
        &accepted,
        |id| counts.contains_key(id),
        "disk ack, full disk",
    );
    assert_eq!(counts.len(), accepted.len(), "nothing but the 2xx events");
    assert!(counts.values().all(|&n| n == 1), "each once");
    eprintln!(
        "disk ack file sink, full disk: {} answered 2xx, {refused} refused with 503",
        accepted.len()
    );
}

/// `TRACKING_ACK=disk` with stdout is refused at start, saying why.
#[test]
fn disk_ack_with_stdout_is_refused_at_start() {
    let out = std::process::Command::new(api_binary())
        .env_clear()
        .env("TRACKING_ACK", "disk")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("a pipe cannot be fdatasynced"), "{err}");
}
