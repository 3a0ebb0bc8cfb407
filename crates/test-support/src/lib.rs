//! Test support: starts the real backends the tests run against on free
//! loopback ports, and stops them when dropped. No fixed ports, no mocks.
//! When a backend is not installed, the test fails with how to install it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `program` with only `env` in its environment; returns its exit
/// code (-1 when killed), stdout and stderr.
pub fn run_binary(program: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = std::process::Command::new(program)
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every `[env: NAME…]` of a clap `--help` text that `doc` does not name
/// as `` `NAME` `` (clap may wrap a line right after `[env:`).
pub fn undocumented_env<'a>(help: &'a str, doc: &str) -> Vec<&'a str> {
    help.split("[env:")
        .skip(1)
        // `[env: NAME=value]`, or `[env: NAME]` when the value is hidden.
        .filter_map(|rest| rest.trim_start().split(['=', ']']).next())
        .filter(|name| !doc.contains(&format!("`{name}`")))
        .collect()
}

/// The address in a server's `Listening.` log line: `addr=…` (text logs)
/// or `"addr":"…"` (JSON logs).
pub fn listen_addr(line: &str) -> Option<&str> {
    log_field(line, "addr")
}

/// The value of the field `name` in one log line, text (` name=value`) or
/// JSON (`"name":"value"`).
pub fn log_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split(&format!(" {name}="))
        .nth(1)
        .and_then(|a| a.split_whitespace().next())
        .or_else(|| {
            line.split(&format!("\"{name}\":\""))
                .nth(1)
                .and_then(|a| a.split('"').next())
        })
}

/// A small tmpfs mounted on a fresh directory: a disk that fills up. The
/// tests run as root; where mounting is impossible the test fails and says
/// so. Unmounted (lazily) and removed when dropped, also on a panic.
#[derive(Debug)]
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=…`, e.g. `256k`).
    pub fn mount(size: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("tmpfs-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output();
        match out {
            Ok(o) if o.status.success() => Self { path },
            Ok(o) => {
                let _ = std::fs::remove_dir(&path);
                panic!(
                    "cannot mount a {size} tmpfs on {} ({}): this test needs root (or CAP_SYS_ADMIN) to simulate a full disk",
                    path.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                )
            }
            Err(e) => {
                let _ = std::fs::remove_dir(&path);
                panic!(
                    "cannot run `mount` ({e}): this test needs util-linux's mount and root to simulate a full disk"
                )
            }
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Changes the size in place (room freed on a full disk).
    pub fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot resize the tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Peak resident memory of a process (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

/// Resident memory of a process (`VmRSS`), in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Session ids of the shapes a legacy system mints, none a UUID in
/// canonical form, all in the accepted set (so carried verbatim): hex of
/// other lengths, base64url, dots and colons, 16 characters (a binary UUID's
/// length), an uppercase UUID, spaces, and the longest accepted (128 bytes).
pub fn legacy_session_ids() -> Vec<String> {
    [
        "4f9c2a",
        "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4",
        "dGhpcyBpcyBiYXNlNjR1cmw_-w",
        "sess.2019-04-01.17:03:12.000042",
        "0123456789ABCDEF",
        "0192F5A4-7B3C-7D2E-9F10-1A2B3C4D5E6F",
        "legacy id 7",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([format!("{}:end", "k".repeat(124))])
    .collect()
}

/// Legacy session ids that cannot be carried safely (a control character;
/// 129 bytes): refused and counted.
pub fn refused_session_ids() -> [String; 2] {
    ["bell\u{7}ring".to_owned(), "k".repeat(129)]
}

/// A free loopback port (bound, read and released; the short window in
/// which another process could take it is covered by retrying the start).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// The installed Google Cloud CLI's root, from `gcloud info`.
fn gcloud_sdk_root() -> Result<PathBuf, String> {
    let out = Command::new("gcloud")
        .args(["info", "--format=value(installation.sdk_root)"])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `gcloud` ({e})"))?;
    let root = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || root.is_empty() {
        return Err("`gcloud info` did not name an SDK root".into());
    }
    Ok(PathBuf::from(root))
}

fn wait_for_port(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// Which emulator, and how to run it.
#[derive(Debug, Clone, Copy)]
struct Kind {
    name: &'static str,
    /// Path under the SDK root.
    binary: &'static str,
    args: fn(u16) -> Vec<String>,
    startup: Duration,
    hint: &'static str,
}

const BIGTABLE: Kind = Kind {
    name: "Bigtable emulator",
    binary: "platform/bigtable-emulator/cbtemulator",
    args: |port| {
        vec![
            "-host".into(),
            "127.0.0.1".into(),
            "-port".into(),
            port.to_string(),
        ]
    },
    startup: Duration::from_secs(15),
    hint: "The Bigtable emulator ships with the Google Cloud CLI: install the \
        `google-cloud-cli-bigtable-emulator` package (apt) or run `gcloud components install bigtable`.",
};

const PUBSUB: Kind = Kind {
    name: "Pub/Sub emulator",
    binary: "platform/pubsub-emulator/bin/cloud-pubsub-emulator",
    args: |port| vec!["--host=127.0.0.1".into(), format!("--port={port}")],
    // A JVM: several seconds to start on a busy machine.
    startup: Duration::from_secs(60),
    hint: "The Pub/Sub emulator ships with the Google Cloud CLI: install the \
        `google-cloud-cli-pubsub-emulator` package (apt) or run `gcloud components install pubsub-emulator`; \
        it needs Java (e.g. `openjdk-17-jre-headless`).",
};

/// An emulator from the Google Cloud CLI, in memory, on a free loopback port.
#[derive(Debug)]
pub struct Emulator {
    kind: Kind,
    binary: PathBuf,
    child: Option<Child>,
    pub addr: SocketAddr,
}

/// The Cloud Bigtable emulator (`cbtemulator`).
pub type BigtableEmulator = Emulator;
/// The Cloud Pub/Sub emulator.
pub type PubsubEmulator = Emulator;

impl Emulator {
    /// Finds and starts the Bigtable emulator. Panics with an install hint
    /// when it is missing.
    pub fn bigtable() -> Self {
        Self::start(BIGTABLE)
    }

    /// Finds and starts the Pub/Sub emulator. Panics with an install hint
    /// when it is missing.
    pub fn pubsub() -> Self {
        Self::start(PUBSUB)
    }

    fn start(kind: Kind) -> Self {
        let binary = match gcloud_sdk_root() {
            Ok(root) => root.join(kind.binary),
            Err(e) => panic!("{e}\n{}", kind.hint),
        };
        assert!(
            binary.exists(),
            "no {} at {}\n{}",
            kind.name,
            binary.display(),
            kind.hint
        );
        let mut last = String::new();
        for _ in 0..5 {
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let mut me = Self {
                kind,
                binary: binary.clone(),
                child: None,
                addr,
            };
            match me.spawn() {
                Ok(()) => return me,
                Err(e) => last = e,
            }
        }
        panic!("the {} did not start: {last}", kind.name);
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new(&self.binary)
            .args((self.kind.args)(self.addr.port()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        if wait_for_port(self.addr, self.kind.startup) {
            Ok(())
        } else {
            self.stop();
            Err(format!(
                "nothing listened on {} within {:?}",
                self.addr, self.kind.startup
            ))
        }
    }

    /// `host:port`, as `BIGTABLE_EMULATOR_HOST` / `PUBSUB_EMULATOR_HOST` want it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Kills the emulator (its data is lost, as on a real restart).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("the {} did not restart: {e}", self.kind.name)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Pub/Sub emulator clients for tests: topics, subscriptions, pulling.
pub mod trace_agents;
pub use trace_agents::{ReceivedSpan, TraceReceiver};

pub mod pubsub {
    use std::time::{Duration, Instant};

    use google_cloud_pubsub::client::{Subscriber, SubscriptionAdmin, TopicAdmin};
    pub use google_cloud_pubsub::model::Message;

    fn anonymous() -> google_cloud_auth::credentials::Credentials {
        google_cloud_auth::credentials::anonymous::Builder::new().build()
    }

    fn endpoint(host: &str) -> String {
        let _ = rustls::crypto::ring::default_provider().install_default();
        format!("http://{host}")
    }

    /// Creates `projects/{project}/topics/{topic}` (unless it exists) and a subscription
    /// `projects/{project}/subscriptions/{topic}-test` on it; returns the
    /// subscription's path. Panics on failure (this is test setup).
    pub async fn topic_with_subscription(host: &str, project: &str, topic: &str) -> String {
        let topic_path = format!("projects/{project}/topics/{topic}");
        let sub_path = format!("projects/{project}/subscriptions/{topic}-test");
        let admin = TopicAdmin::builder()
            .with_endpoint(endpoint(host))
            .with_credentials(anonymous())
            .build()
            .await
            .expect("topic admin client");
        if let Err(e) = admin.create_topic().set_name(&topic_path).send().await {
            let exists = e.status().map(|s| s.code)
                == Some(google_cloud_gax::error::rpc::Code::AlreadyExists);
            assert!(exists, "create topic {topic_path}: {e}");
        }
        let subs = SubscriptionAdmin::builder()
            .with_endpoint(endpoint(host))
            .with_credentials(anonymous())
            .build()
            .await
            .expect("subscription admin client");
        subs.create_subscription()
            .set_name(&sub_path)
            .set_topic(&topic_path)
            .set_ack_deadline_seconds(60)
            .send()
            .await
            .expect("create subscription");
        sub_path
    }

    /// Pulls (and acks) messages until `done(&messages)` says so, or until
    /// `within` has passed. The emulator delivers a few thousand messages a
    /// second at most: budget time accordingly.
    pub async fn pull_until(
        host: &str,
        subscription: &str,
        within: Duration,
        mut done: impl FnMut(&[Message]) -> bool,
    ) -> Vec<Message> {
        let client = Subscriber::builder()
            .with_endpoint(endpoint(host))
            .with_credentials(anonymous())
            .build()
            .await
            .expect("subscriber client");
        let mut stream = client.subscribe(subscription).build();
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while !done(&out) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, stream.next()).await {
                Ok(Some(Ok((m, h)))) => {
                    h.ack();
                    out.push(m);
                }
                Ok(Some(Err(e))) => {
                    // Streams may end with errors while the emulator is
                    // restarting; pull again.
                    note(&format!("pull error: {e}"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    stream = client.subscribe(subscription).build();
                }
                Ok(None) => {
                    stream = client.subscribe(subscription).build();
                }
                Err(_) => break,
            }
        }
        out
    }

    fn note(line: &str) {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{line}");
    }

    /// The `event_id` of an enriched event message.
    pub fn event_id(m: &Message) -> String {
        let v: serde_json::Value = serde_json::from_slice(&m.data).expect("message data is JSON");
        v["event_id"].as_str().expect("event_id").to_owned()
    }
}

/// A loopback TCP forwarder that a test can open and close, to make a
/// backend unreachable for the service under test while the test itself
/// still reaches the backend directly (e.g. to re-create topics on a
/// restarted emulator before the service sees it again).
///
/// Closed: new connections are accepted and dropped at once, and open ones
/// are cut before [`Gate::close`] returns. With a delay, every chunk is held
/// that long: a slow backend. Runs on its own thread; stopped when dropped.
#[derive(Debug)]
pub struct Gate {
    pub addr: SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Extra delay of the chunks the backend sends back only.
    reply_delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The first bytes clients sent through the gate (up to 1 MiB).
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    live: LiveConnections,
}

/// The connections a gate forwards (client side, server side), by number,
/// so that closing the gate can cut them at once.
type LiveConnections =
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u64, (TcpStream, TcpStream)>>>;

/// How much of what clients send a gate keeps for [`Gate::seen`].
const GATE_SEEN_LIMIT: usize = 1 << 20;

impl Gate {
    /// Forwards a free loopback port to `upstream`; starts open.
    pub fn start(upstream: SocketAddr) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind gate");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("gate address");
        let open = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let reply_delay_ms = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let live: LiveConnections = Arc::default();
        let (o, g, s, d, rd, seen_all, live_all) = (
            Arc::clone(&open),
            Arc::clone(&generation),
            Arc::clone(&stop),
            Arc::clone(&delay_ms),
            Arc::clone(&reply_delay_ms),
            Arc::clone(&seen),
            Arc::clone(&live),
        );
        std::thread::spawn(move || {
            let mut number = 0u64;
            while !s.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let born = g.load(Ordering::Relaxed);
                if !o.load(Ordering::Relaxed) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(1))
                else {
                    continue;
                };
                number += 1;
                {
                    // Registered under the lock `close` takes: either `close`
                    // sees this connection and cuts it, or this sees the
                    // gate closed and drops it.
                    let Ok(mut live) = live_all.lock() else {
                        continue;
                    };
                    if g.load(Ordering::Relaxed) != born {
                        continue;
                    }
                    let (Ok(c), Ok(sv)) = (client.try_clone(), server.try_clone()) else {
                        continue;
                    };
                    live.insert(number, (c, sv));
                }
                for (from, to, upstream) in [
                    (client.try_clone(), server.try_clone(), true),
                    (server.try_clone(), client.try_clone(), false),
                ] {
                    let (Ok(mut from), Ok(mut to)) = (from, to) else {
                        continue;
                    };
                    let (g, s, d) = (Arc::clone(&g), Arc::clone(&s), Arc::clone(&d));
                    let rd = (!upstream).then(|| Arc::clone(&rd));
                    let seen = upstream.then(|| Arc::clone(&seen_all));
                    let (live, id) = (Arc::clone(&live_all), number);
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            if g.load(Ordering::Relaxed) != born || s.load(Ordering::Relaxed) {
                                break;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if let Some(Ok(mut seen)) = seen.as_ref().map(|s| s.lock()) {
                                        let room = GATE_SEEN_LIMIT.saturating_sub(seen.len());
                                        seen.extend_from_slice(&buf[..n.min(room)]);
                                    }
                                    let delay = d.load(Ordering::Relaxed)
                                        + rd.as_ref().map_or(0, |rd| rd.load(Ordering::Relaxed));
                                    if delay > 0 {
                                        std::thread::sleep(Duration::from_millis(delay));
                                    }
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = from.shutdown(std::net::Shutdown::Both);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        if let Ok(mut live) = live.lock() {
                            live.remove(&id);
                        }
                    });
                }
            }
        });
        Self {
            addr,
            open,
            generation,
            stop,
            delay_ms,
            reply_delay_ms,
            seen,
            live,
        }
    }

    /// `host:port` of the gate, for the service under test.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Cuts open connections (before it returns) and refuses new ones
    /// until [`Gate::open`].
    pub fn close(&self) {
        use std::sync::atomic::Ordering;
        self.open.store(false, Ordering::Relaxed);
        let Ok(mut live) = self.live.lock() else {
            return;
        };
        self.generation.fetch_add(1, Ordering::Relaxed);
        for (_, (client, server)) in live.drain() {
            let _ = client.shutdown(std::net::Shutdown::Both);
            let _ = server.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn open(&self) {
        self.open.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// What clients have sent through the gate so far (the first 1 MiB), e.g.
    /// to check the headers a service passes on.
    pub fn seen(&self) -> Vec<u8> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Holds every chunk it forwards for `d` (zero: none): a slow backend.
    pub fn set_delay(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Holds only the chunks the backend sends back for `d` more: requests
    /// reach it at once, their answers late (a client that has been served
    /// but has not heard back yet).
    pub fn set_reply_delay(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.reply_delay_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}
