//! The binary's command line: help, configuration errors, bootstrap.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    test_support::run_binary(env!("CARGO_BIN_EXE_tracking-api"), args, env)
}

#[test]
fn help_names_every_environment_variable_of_the_contract() {
    let (code, out, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    for name in [
        "TRACKING_LISTEN",
        "TRACKING_SESSION_STORE",
        "TRACKING_SINK",
        "TRACKING_SINK_PATH",
        "TRACKING_SHORT_TTL",
        "TRACKING_LONG_TTL",
        "TRACKING_VIA_TTL",
        "TRACKING_CORS_ORIGINS",
        "TRACKING_COOKIE_NAME",
        "bootstrap",
        "serve",
    ] {
        assert!(out.contains(name), "--help lacks {name}:\n{out}");
    }
}

#[test]
fn bad_configuration_exits_2_with_a_clear_message() {
    for (env, fragment) in [
        (
            vec![("TRACKING_SINK", "file")],
            "TRACKING_SINK=file needs TRACKING_SINK_PATH",
        ),
        (vec![("TRACKING_SHORT_TTL", "30")], "no unit"),
        (vec![("TRACKING_LISTEN", "nowhere")], "invalid"),
        (
            vec![("TRACKING_SESSION_STORE", "redis")],
            "invalid value 'redis'",
        ),
    ] {
        let (code, _, err) = run(&[], &env);
        assert_eq!(code, 2, "{env:?}: {err}");
        assert!(
            err.contains(fragment),
            "{env:?}: `{err}` lacks `{fragment}`"
        );
    }
}

#[test]
fn an_unreadable_geo_database_stops_start_up() {
    let (code, _, err) = run(
        &["--listen", "127.0.0.1:0"],
        &[("TRACKING_GEOIP_DB", "/nonexistent/city.mmdb")],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot open geo-IP database /nonexistent/city.mmdb"),
        "{err}"
    );
}

#[test]
fn bootstrap_has_nothing_to_create_for_the_embedded_default() {
    let (code, _, err) = run(&["bootstrap"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("Nothing to create"), "{err}");
}

#[test]
fn the_readme_documents_every_environment_variable() {
    let (_, help, _) = run(&["--help"], &[]);
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let undocumented = test_support::undocumented_env(&help, &readme);
    assert!(
        undocumented.is_empty(),
        "README.md's configuration table lacks {undocumented:?}"
    );
}
