//! Running the real `tracking-api` binary and talking raw HTTP/1.1 to it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A running `tracking-api` (or migration-proxy), killed when dropped.
pub struct ApiProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub admin: SocketAddr,
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// Collects `stderr` until the process closes it.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl ApiProcess {
    /// Starts the binary on free loopback ports with `env` (plus
    /// `TRACKING_LISTEN` and `TRACKING_ADMIN_LISTEN` at `127.0.0.1:0`) and
    /// waits until it listens. The binary is the one cargo built for the
    /// test, or `$TRACKING_API_BIN` when set (`.ci/run` runs the crash tests
    /// again against the release build that way).
    pub fn start(env: &[(&str, &str)]) -> Self {
        Self::start_program(&api_binary(), env)
    }

    /// Starts another of the workspace's servers (migration-proxy) the same
    /// way: it logs `Listening.` with its address and its admin address.
    pub fn start_program(program: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_with_stdout(program, env, Stdio::null())
    }

    /// [`start_program`](Self::start_program) with its standard output
    /// going to `stdout` (`Stdio::piped()`: take it from `child.stdout`).
    pub fn start_with_stdout(program: &Path, env: &[(&str, &str)], stdout: Stdio) -> Self {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TRACKING_LISTEN", "127.0.0.1:0")
            .env("MIGRATION_LISTEN", "127.0.0.1:0")
            .env("TRACKING_ADMIN_LISTEN", "127.0.0.1:0")
            .env("MIGRATION_ADMIN_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start tracking-api");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = BufReader::new(child.stderr.take().expect("stderr"));
        let keep = Arc::clone(&stderr);
        let stderr_reader = std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                if let (Some(addr), Some(admin)) = (
                    test_support::log_field(&line, "addr"),
                    test_support::log_field(&line, "admin"),
                ) {
                    let _ = tx.send((addr.to_owned(), admin.to_owned()));
                }
                keep.lock().unwrap().push(line);
            }
        });
        let (addr, admin) = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok((a, b)) => (
                a.parse().expect("listen address"),
                b.parse().expect("admin address"),
            ),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "{} did not start: {:?}",
                    program.display(),
                    stderr.lock().unwrap()
                );
            }
        };
        Self {
            child,
            addr,
            admin,
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait_exit(within)
    }

    /// Sends a signal (`TERM`, `HUP`, `KILL`, …).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// Waits (bounded) for the exit status.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // Every line it wrote is in `stderr` once the reader has
                // seen the pipe close.
                if let Some(reader) = self.stderr_reader.take() {
                    let _ = reader.join();
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "tracking-api did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tracking-api binary the tests run: the one cargo built for them, or
/// `$TRACKING_API_BIN` when set.
pub fn api_binary() -> std::path::PathBuf {
    std::env::var_os("TRACKING_API_BIN").map_or_else(
        || env!("CARGO_BIN_EXE_tracking-api").into(),
        std::path::PathBuf::from,
    )
}

/// Runs `tracking-api bootstrap` ([`api_binary`]) with exactly `env`
/// (creates the backends' tables and topics) and fails the test with its
/// log if it fails.
pub fn bootstrap(env: &[(&str, &str)]) {
    let out = Command::new(api_binary())
        .arg("bootstrap")
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run tracking-api bootstrap");
    assert!(
        out.status.success(),
        "bootstrap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A raw HTTP/1.1 response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// A header's value (the first, name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends one request on a new connection (`Connection: close`) and reads the
/// whole response.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<RawResponse> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "no response head in {:?}",
                String::from_utf8_lossy(&buf)
            ))
        })?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    Ok(RawResponse {
        status,
        head,
        body: buf[split + 4..].to_vec(),
    })
}

/// `POST /v1/events` with a JSON body.
pub async fn post_json(addr: SocketAddr, body: &str) -> std::io::Result<RawResponse> {
    request(
        addr,
        "POST",
        "/v1/events",
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .await
}

/// A `503` that tells the client when to retry.
pub fn assert_503_with_retry_after(r: &RawResponse) {
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.head.to_ascii_lowercase().contains("retry-after:"),
        "503 without Retry-After: {}",
        r.head
    );
}

/// Fails with the accepted ids for which `arrived` is false.
pub fn assert_all_arrived(accepted: &[String], arrived: impl Fn(&str) -> bool, what: &str) {
    let missing: Vec<_> = accepted.iter().filter(|id| !arrived(id)).collect();
    assert!(
        missing.is_empty(),
        "{what}: {} of {} accepted events missing, e.g. {:?}",
        missing.len(),
        accepted.len(),
        &missing[..missing.len().min(5)]
    );
}

/// One value of the process's `/metrics` (on its admin listener): the
/// sample named exactly `name` (labels included).
pub async fn metric(api: &ApiProcess, name: &str) -> f64 {
    let r = request(api.admin, "GET", "/metrics", &[], b"")
        .await
        .unwrap();
    let text = String::from_utf8(r.body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// Requests refused with `503` for `reason` (`tracking_requests_shed_total`).
pub async fn shed(api: &ApiProcess, reason: &str) -> f64 {
    metric(
        api,
        &format!("tracking_requests_shed_total{{reason=\"{reason}\"}}"),
    )
    .await
}

/// [`metric`] once it reaches `at_least`, or its value when `within` has
/// passed.
pub async fn wait_metric(api: &ApiProcess, name: &str, at_least: f64, within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let v = metric(api, name).await;
        if v >= at_least || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The complete NDJSON lines of a file, parsed (a last line without its
/// newline is still being written, and left out).
pub fn read_ndjson(path: &Path) -> Vec<serde_json::Value> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let complete = bytes
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(&[][..], |end| &bytes[..end]);
    String::from_utf8_lossy(complete)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad NDJSON line ({e}): {l}")))
        .collect()
}

/// The `event_id`s of NDJSON lines (every line an event).
pub fn event_ids<'a>(
    lines: impl IntoIterator<Item = &'a str>,
) -> std::collections::HashSet<String> {
    lines
        .into_iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// Waits (bounded) until `path` holds at least `n` lines.
pub fn wait_for_lines(path: &Path, n: usize, within: Duration) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + within;
    loop {
        let lines = read_ndjson(path);
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A binary of another workspace package, built beside this test's own
/// (`cargo test --workspace` builds every binary first).
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build -p {name}` (or `cargo test --workspace`, which builds it)",
        path.display()
    );
    path
}

/// Sends each `(address, body)` as a `POST /v1/events` on a connection of
/// its own, all at the same moment: every connection is opened and sent
/// its request but the body's last byte first, then the last bytes go out
/// together (a page load whose beacons reach several pods at once).
/// Returns the status codes, in order.
pub async fn post_at_once(requests: &[(SocketAddr, String)]) -> Vec<u16> {
    let mut streams = Vec::with_capacity(requests.len());
    for (addr, body) in requests {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream
            .write_all(&body.as_bytes()[..body.len() - 1])
            .await
            .unwrap();
        streams.push(stream);
    }
    for (stream, (_, body)) in streams.iter_mut().zip(requests) {
        stream
            .write_all(&body.as_bytes()[body.len() - 1..])
            .await
            .unwrap();
    }
    let answers = streams.into_iter().map(|mut stream| async move {
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf)
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    });
    let mut statuses = Vec::with_capacity(requests.len());
    for answer in answers {
        statuses.push(answer.await);
    }
    statuses
}

/// The project's load generator (`loadtest run`, the mixed scenario:
/// beacons, pixels and gzip batches) against a running API, every event
/// with its own `event_id`. Runs in the background; [`Generator::accepted`]
/// waits for it and returns the ids answered 2xx. It outlives an API that
/// is killed under it (those requests fail and are not counted).
pub struct Generator {
    child: Child,
    ids: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Generator {
    /// `rate` requests per second for `duration`; `seed` must differ between
    /// generators whose ids must not collide.
    pub fn start(addr: SocketAddr, rate: u32, duration: Duration, seed: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ids = dir.path().join("ids");
        let child = Command::new(workspace_binary("loadtest"))
            .args(["run", "--target", &format!("http://{addr}")])
            .args(["--rate", &rate.to_string()])
            .args(["--duration", &format!("{}ms", duration.as_millis())])
            .args(["--scenario", "mixed", "--visitors", "2000"])
            .args(["--seed", &seed.to_string(), "--timeout", "3s"])
            .args(["--connections", "8", "--max-inflight", "64"])
            .arg("--ids-out")
            .arg(&ids)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start loadtest");
        Self {
            child,
            ids,
            _dir: dir,
        }
    }

    /// Waits for the run to end; the ids of the events answered 2xx.
    pub fn accepted(mut self) -> Vec<String> {
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.ids).unwrap_or_else(|e| {
            panic!(
                "loadtest wrote no ids ({e}): did its warm-up reach the API? Run it by hand: loadtest run --help"
            )
        });
        text.lines().map(str::to_owned).collect()
    }
}
