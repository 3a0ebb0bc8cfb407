//! Headless Chromium for the browser tests (Debian's `chromium`), and the
//! request reader of their page servers.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Debian's Chromium; the test fails saying how to install it when missing.
pub fn chromium() -> PathBuf {
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

/// A headless Chromium with a fresh profile, killed when dropped.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Opens `url` with `extra_args` (e.g. `--screenshot`).
    pub fn open(url: &str, extra_args: &[&str]) -> Self {
        let profile = tempfile::tempdir().expect("profile dir");
        let child = Command::new(chromium())
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
            .args(extra_args)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        Self {
            child,
            _profile: profile,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one HTTP/1.1 request: its head and its `Content-Length` body.
pub async fn read_request(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    loop {
        let m = s.read(&mut buf[n..]).await.unwrap_or(0);
        n += m;
        if let Some(end) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .and_then(|v| v.trim().parse::<usize>().ok())
                })
                .unwrap_or(0);
            if n >= end + 4 + len || m == 0 || n == buf.len() {
                let body = buf[end + 4..n.min(end + 4 + len)].to_vec();
                return (head, body);
            }
        } else if m == 0 || n == buf.len() {
            return (String::from_utf8_lossy(&buf[..n]).into_owned(), Vec::new());
        }
    }
}
