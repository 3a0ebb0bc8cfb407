//! The official Segment SDKs, pinned in `tests/sdk/` and installed on first
//! use from the package registries (npm, PyPI), unchanged: the Segment API
//! tests run them against the binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `tests/sdk/`: `package.json` + `package-lock.json` (the Node and browser
/// SDKs) and `requirements.txt` (the Python SDK).
pub fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk")
}

fn run(cmd: &mut Command, what: &str, how: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?} ({e}). {how}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}\n{how}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tests/sdk/node_modules`, installed with `npm ci` when missing or older
/// than the lock file.
pub fn node_modules() -> PathBuf {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = sdk_dir();
        let modules = dir.join("node_modules");
        let stamp = modules.join(".package-lock.json");
        let fresh = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
        if fresh(&stamp).is_none() || fresh(&stamp) < fresh(&dir.join("package-lock.json")) {
            run(
                Command::new("npm")
                    .args(["ci", "--silent", "--no-audit", "--no-fund"])
                    .current_dir(&dir),
                "installing the Segment Node and browser SDKs",
                "They need Node.js 20 or later with npm (Debian: apt-get install nodejs npm) \
                 and the npm registry; or run `npm ci` in crates/tracking-api/tests/sdk yourself.",
            );
        }
        modules
    })
    .clone()
}

/// `node`, checked to be 18 or later (analytics-node's own minimum).
pub fn node() -> PathBuf {
    let how = "Node.js 18 or later is needed (Debian: apt-get install nodejs)";
    let out = Command::new("node")
        .args(["-p", "process.versions.node.split('.')[0]"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): {how}"));
    let major: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(major >= 18, "node is {major}: {how}");
    PathBuf::from("node")
}

/// A Python with `segment-analytics-python` (pinned in
/// `tests/sdk/requirements.txt`), in a venv under the target directory.
pub fn python() -> PathBuf {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("segment-sdk-venv");
        let python = venv.join("bin/python");
        let requirements = sdk_dir().join("requirements.txt");
        let stamp = venv.join("installed-requirements.txt");
        let installed = std::fs::read_to_string(&stamp).ok();
        let wanted = std::fs::read_to_string(&requirements).expect("requirements.txt");
        if installed.as_deref() != Some(wanted.as_str()) {
            let how = "It needs Python 3.9 or later with venv and pip (Debian: apt-get install \
                       python3-venv) and PyPI; or create the venv yourself: python3 -m venv \
                       target/tmp/segment-sdk-venv && target/tmp/segment-sdk-venv/bin/pip install \
                       -r crates/tracking-api/tests/sdk/requirements.txt";
            run(
                Command::new("python3").args(["-m", "venv"]).arg(&venv),
                "creating the venv for the Segment Python SDK",
                how,
            );
            run(
                Command::new(venv.join("bin/pip"))
                    .args(["install", "-q", "--disable-pip-version-check", "-r"])
                    .arg(&requirements),
                "installing the Segment Python SDK",
                how,
            );
            std::fs::write(&stamp, wanted).expect("stamp");
        }
        python
    })
    .clone()
}
