//! The binary's interface: every variable it reads is documented, and a bad
//! option stops it with a message.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_migration-proxy"))
        .args(args)
        .env_clear()
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_readme_documents_every_environment_variable() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for args in [&["--help"][..], &["copy", "--help"][..]] {
        let (code, help, _) = run(args);
        assert_eq!(code, 0);
        let undocumented: Vec<&str> = help
            .split("[env:")
            .skip(1)
            .filter_map(|rest| rest.trim_start().split(['=', ']']).next())
            .filter(|name| !readme.contains(&format!("`{name}`")))
            .collect();
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
