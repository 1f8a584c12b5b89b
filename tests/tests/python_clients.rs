//! The HTTP plane driven by clients not written in Rust: the pytest files
//! in tests/python (httpx, httpx-sse, websockets; schemathesis fuzzing the
//! API from its /openapi.json), each against real
//! `sluiced` processes they start, crash and restart themselves
//! (tests/python/conftest.py). scripts/setup.sh makes their venv in
//! target/pyenv; without it these tests say why they skip (with `CI=true`
//! a skip is a failure).

use std::path::{Path, PathBuf};
use std::process::Command;

use sluice_tests::{sluice_bin, sluiced_bin};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Runs one pytest file (`-k` narrows it) and fails with its output.
fn pytest(file: &str) {
    let root = workspace();
    let python = root.join("target/pyenv/bin/python");
    if !python.exists() {
        let why = format!(
            "skipped: no Python venv at {} (scripts/setup.sh makes it)",
            python.display()
        );
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("{why}");
        return;
    }
    let out = Command::new(&python)
        .args(["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"])
        // A passing test's data folder goes at once (pytest would keep the
        // last three runs': spools of every daemon, on the CI machine's
        // disk); a failing one's stays to be read.
        .args(["-o", "tmp_path_retention_policy=failed"])
        .arg(root.join("tests/python").join(file))
        .env("SLUICED_BIN", sluiced_bin!())
        // The CLI, to put messages into streams over QUIC.
        .env("SLUICE_BIN", sluice_bin!())
        .current_dir(root.join("tests/python"))
        .output()
        .expect("run pytest");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pytest {file} failed:\n{text}");
    eprintln!("{text}");
}

#[test]
fn http_publish() {
    pytest("test_publish.py");
}

#[test]
fn http_ws() {
    pytest("test_ws.py");
}

#[test]
fn http_sse() {
    pytest("test_sse.py");
}

#[test]
fn openapi_schemathesis() {
    pytest("test_openapi.py");
}

#[test]
fn http_tls() {
    pytest("test_tls.py");
}

#[test]
fn grpc_python() {
    pytest("test_grpc.py");
}

#[test]
fn metrics_prometheus_client() {
    pytest("test_metrics.py");
}
