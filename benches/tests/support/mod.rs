//! What the scenario tests share: running `sluice-bench` with a bound on
//! its time, and reading figures out of its JSON report.
#![allow(dead_code)] // each test file uses its own share of it

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Runs `sluice-bench SCENARIO --dir DIR --json DIR/report.json ARGS...`,
/// killing it after `limit` (a hung daemon fails the test instead of
/// hanging it); it must succeed. Returns the report and the printed table.
pub fn report(scenario: &str, dir: &Path, args: &[&str], limit: Duration) -> (Value, String) {
    let json = dir.join("report.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .arg(scenario)
        .args(["--dir", dir.to_str().unwrap()])
        .args(["--json", json.to_str().unwrap()])
        .args(args)
        .env_remove("SLUICE_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sluice-bench");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "sluice-bench {scenario} {args:?} took more than {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sluice-bench {scenario} {args:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("the JSON report");
    (serde_json::from_str(&text).expect("valid JSON"), stdout)
}

/// The number at a dotted path of the report.
pub fn num(v: &Value, path: &str) -> f64 {
    let mut at = v;
    for key in path.split('.') {
        at = &at[key];
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

/// A latency summary's percentiles are positive and ordered, over samples.
pub fn ordered(l: &Value, what: &str) {
    let p = ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"].map(|k| num(l, k));
    assert!(p[0] > 0.0, "{what}: {p:?}");
    assert!(
        p.windows(2).all(|w| w[0] <= w[1]),
        "{what}: percentiles ordered: {p:?}"
    );
    assert!(num(l, "count") > 0.0, "{what}: {l:#}");
}
