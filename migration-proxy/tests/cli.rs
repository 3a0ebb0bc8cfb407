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
