//! Test support: starts the real backends the tests run against on free
//! loopback ports, and stops them when dropped. No fixed ports, no mocks.
//! When a backend is not installed, the test fails with how to install it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// The Cloud Bigtable emulator (`cbtemulator`), in memory.
#[derive(Debug)]
pub struct BigtableEmulator {
    binary: PathBuf,
    child: Option<Child>,
    pub addr: SocketAddr,
}

impl BigtableEmulator {
    /// Finds and starts the emulator on a free port. Panics with an install
    /// hint when it is missing.
    pub fn start() -> Self {
        let binary = match gcloud_sdk_root() {
            Ok(root) => root.join("platform/bigtable-emulator/cbtemulator"),
            Err(e) => panic!("{e}\n{}", Self::HINT),
        };
        assert!(
            binary.exists(),
            "no Bigtable emulator at {}\n{}",
            binary.display(),
            Self::HINT
        );
        let mut last = String::new();
        for _ in 0..5 {
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let mut me = Self {
                binary: binary.clone(),
                child: None,
                addr,
            };
            match me.spawn() {
                Ok(()) => return me,
                Err(e) => last = e,
            }
        }
        panic!("the Bigtable emulator did not start: {last}");
    }

    const HINT: &'static str = "The Bigtable emulator ships with the Google Cloud CLI: install the \
        `google-cloud-cli-bigtable-emulator` package (apt) or run `gcloud components install bigtable`.";

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new(&self.binary)
            .args(["-host", "127.0.0.1", "-port", &self.addr.port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        if wait_for_port(self.addr, Duration::from_secs(15)) {
            Ok(())
        } else {
            self.stop();
            Err(format!("nothing listened on {} within 15 s", self.addr))
        }
    }

    /// `host:port`, as `BIGTABLE_EMULATOR_HOST` wants it.
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
                    panic!("the Bigtable emulator did not restart: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for BigtableEmulator {
    fn drop(&mut self) {
        self.stop();
    }
}
