//! The `ingest` scenario, run briefly through the real binary (which starts
//! its daemon from itself): the JSON report must hold sane numbers.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn run(dir: &Path, args: &[&str]) -> Value {
    let json = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .arg("ingest")
        .args(["--dir", dir.to_str().unwrap()])
        .args(["--json", json.to_str().unwrap()])
        .args(["--baseline-seconds", "0.1"])
        .args(args)
        .output()
        .expect("run sluice-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "sluice-bench ingest {args:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(stdout.contains("acked msgs/s"), "no table:\n{stdout}");
    let text = std::fs::read_to_string(&json).expect("the JSON report");
    serde_json::from_str(&text).expect("valid JSON")
}

fn num(v: &Value, path: &str) -> f64 {
    let mut at = v;
    for key in path.split('.') {
        at = &at[key];
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

/// What every report must satisfy.
fn check_sane(r: &Value) {
    assert_eq!(r["scenario"], "ingest");
    assert_eq!(num(r, "errors"), 0.0, "{r:#}");
    assert!(num(r, "sent") > 0.0);
    assert_eq!(num(r, "acked"), num(r, "sent"), "every message acked");
    assert!(num(r, "window_seconds") > 0.0);
    assert!(num(r, "window_acked") > 0.0);
    assert!(num(r, "acked_per_sec") > 0.0);
    assert!(num(r, "mb_per_sec") > 0.0);
    let l = ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"]
        .map(|p| num(r, &format!("latency.{p}")));
    assert!(l[0] > 0.0, "{l:?}");
    assert!(
        l.windows(2).all(|w| w[0] <= w[1]),
        "percentiles ordered: {l:?}"
    );
    assert!(num(r, "latency.count") > 0.0);
    assert!(num(r, "producer_cpu.seconds") > 0.0);
    assert!(num(r, "daemon_cpu.seconds") >= 0.0);
    // The daemon's own counters agree that it stored what we sent.
    assert!(num(r, "daemon.durable_acks") > 0.0, "{:#}", r["daemon"]);
    assert!(num(r, "daemon.group_commits") > 0.0);
    assert!(num(r, "daemon.datagrams_in") > 0.0);
    assert!(num(r, "baselines.fdatasync_per_sec") > 0.0);
    assert!(num(r, "baselines.udp_128.datagrams_per_sec") > 0.0);
    assert!(num(r, "ratios.acked_per_udp_128_datagram") > 0.0);
    assert!(num(r, "ratios.p99_per_fdatasync_p99") > 0.0);
}

#[test]
fn closed_loop_count() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        dir.path(),
        &[
            "--producers",
            "1",
            "--count",
            "2000",
            "--batch",
            "100",
            "--warmup",
            "0",
        ],
    );
    check_sane(&r);
    assert_eq!(r["mode"], "closed");
    assert_eq!(num(&r, "sent"), 2000.0);
    assert_eq!(num(&r, "window_acked"), 2000.0);
    assert_eq!(num(&r, "latency.count"), 2000.0);
}

#[test]
fn open_loop_rate() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        dir.path(),
        &[
            "--producers",
            "2",
            "--rate",
            "2000",
            "--seconds",
            "0.5",
            "--warmup",
            "0.2",
        ],
    );
    check_sane(&r);
    assert_eq!(r["mode"], "open");
    // 0.7 s at 2,000/s are scheduled, and a few more until the pacer is
    // told to stop.
    let sent = num(&r, "sent");
    assert!((1399.0..=2000.0).contains(&sent), "sent {sent}");
    // Messages due in the 0.5 s window are the ones whose latency counts.
    let counted = num(&r, "latency.count");
    assert!((999.0..=1001.0).contains(&counted), "counted {counted}");
    assert!(num(&r, "pacer_lag.count") > 0.0);
}
