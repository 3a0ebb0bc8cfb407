//! The binary's interface: every variable it reads is documented, and a bad
//! option stops it with a message.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

fn run(args: &[&str]) -> (i32, String, String) {
    test_support::run_binary(env!("CARGO_BIN_EXE_migration-proxy"), args, &[])
}

#[test]
fn the_readme_documents_every_environment_variable() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for args in [&["--help"][..], &["copy", "--help"][..]] {
        let (code, help, _) = run(args);
        assert_eq!(code, 0);
        let undocumented = test_support::undocumented_env(&help, &readme);
        assert!(
            undocumented.is_empty(),
            "README.md lacks {undocumented:?} ({args:?})"
        );
    }
}

#[test]
fn bad_options_stop_with_a_message() {
    let (code, _, err) = run(&["--aerospike-timeout", "25"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no unit"), "{err}");
    let (code, _, err) = run(&[
        "copy",
        "--bigtable-project",
        "p",
        "--bigtable-instance",
        "i",
        "--checkpoint",
        "/nonexistent/x",
        "--partitions",
        "9-4096",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("within 0-4095"), "{err}");
}

/// SIGHUP (sent by process managers and log-rotation setups) must not stop
/// the proxy: it keeps serving, and a later SIGTERM still drains cleanly.
#[test]
fn sighup_does_not_stop_the_proxy() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let mut child = Command::new(env!("CARGO_BIN_EXE_migration-proxy"))
        .env_clear()
        .env("MIGRATION_LISTEN", "127.0.0.1:0")
        .env("MIGRATION_ADMIN_LISTEN", "127.0.0.1:0")
        .env("MIGRATION_AEROSPIKE_HOSTS", "127.0.0.1:1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr: std::net::SocketAddr = loop {
        assert!(Instant::now() < deadline, "migration-proxy did not start");
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        if line.contains("Listening.")
            && let Some(a) = test_support::listen_addr(&line)
        {
            break a.parse().unwrap();
        }
    };
    let healthz = || {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok::<_, std::io::Error>(answer.starts_with("HTTP/1.1 200"))
    };
    let pid = child.id().to_string();
    let kill = |sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    kill("-HUP");
    // Still serving after the signal was handled (the log says so).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        if line.contains("SIGHUP received") {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP was not handled");
    }
    assert!(healthz().unwrap(), "serving after SIGHUP");
    assert!(child.try_wait().unwrap().is_none(), "still running");
    kill("-TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}
