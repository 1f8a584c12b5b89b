//! `sluice-bench compare A B` and `sluice-bench --compare A B` on two small
//! reports written here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run sluice-bench")
}

fn write(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
    p
}

/// Two runs: throughput doubled, p99 halved, one row gone from B, one key
/// missing in B, a change within 5 %.
fn reports(dir: &Path, scenario_b: &str) -> (PathBuf, PathBuf) {
    let a = json!({
        "scenario": "ingest",
        "schema": 1,
        "config": { "producers": 8, "size": 128 },
        "acked_per_sec": 100,
        "latency": { "p50_us": 400, "p99_us": 1000, "count": 7 },
        "daemon": { "group_commits": 1000, "duplicates": 4, "messages_per_datagram": 10.0 },
        "runs": [
            { "label": "fast", "mb_per_sec": 10.0 },
            { "label": "quic", "mb_per_sec": 4.0 },
            { "label": "udp", "mb_per_sec": 12.0 },
        ],
        "plots": { "latency": [], "throughput": [] },
    });
    let b = json!({
        "scenario": scenario_b,
        "schema": 1,
        "config": { "producers": 4, "size": 128 },
        "acked_per_sec": 200,
        "latency": { "p50_us": 410, "p99_us": 500, "count": 7 },
        "daemon": { "group_commits": 1030, "messages_per_datagram": 8.5 },
        "runs": [
            { "label": "quic", "mb_per_sec": 3.0 },
            { "label": "fast", "mb_per_sec": 30.0 },
        ],
        "plots": { "latency": [], "throughput": [] },
    });
    (write(dir, "a.json", &a), write(dir, "b.json", &b))
}

/// The printed line of a figure, split into its columns.
fn line<'a>(stdout: &'a str, path: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&path))
        .unwrap_or_else(|| panic!("no line for {path} in:\n{stdout}"))
}

fn check_table(stdout: &str) {
    let l = line(stdout, "acked_per_sec");
    assert_eq!(&l[1..4], ["100", "200", "2.00"], "{stdout}");
    assert!(l[4..].join(" ").starts_with("+100.0% better"), "{l:?}");
    let l = line(stdout, "latency.p99_us");
    assert_eq!(&l[1..4], ["1000", "500", "0.50"], "{stdout}");
    assert!(
        l[4..].join(" ").contains("better (lower is better)"),
        "{l:?}"
    );
    // Within 5 %: a ratio, no mark.
    let l = line(stdout, "latency.p50_us");
    assert_eq!(l[3], "1.02");
    assert_eq!(l.len(), 4, "{l:?}");
    let l = line(stdout, "daemon.group_commits");
    assert_eq!(l.len(), 4, "3 % is within 5 %: {l:?}");
    // Rows paired by label, not by position.
    let l = line(stdout, "runs[label=fast].mb_per_sec");
    assert_eq!(&l[1..4], ["10", "30", "3.00"], "{stdout}");
    let l = line(stdout, "runs[label=quic].mb_per_sec");
    assert_eq!(&l[1..4], ["4", "3", "0.75"]);
    assert_eq!(l[4..].join(" "), "-25.0% worse (higher is better)");
    // A figure whose name says no direction.
    let l = line(stdout, "daemon.messages_per_datagram");
    assert_eq!(
        &l[1..],
        ["10", "8.500", "0.85", "-15.0%", "changed"],
        "{stdout}"
    );
    // Missing on one side: said, not compared.
    assert!(
        stdout.contains("only in A: daemon.duplicates, runs[label=udp]"),
        "{stdout}"
    );
    // Equal, config and plots: not printed.
    for absent in ["latency.count", "config", "plots", "schema"] {
        assert!(
            !stdout.lines().any(|l| l.starts_with(absent)),
            "{absent} printed:\n{stdout}"
        );
    }
}

#[test]
fn compare_prints_ratios_and_writes_json() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = reports(dir.path(), "ingest");
    let out_json = dir.path().join("cmp.json");
    let out = bench(&[
        "compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--json",
        out_json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("warning"), "same scenario: {stderr}");
    check_table(&stdout);

    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out_json).unwrap()).unwrap();
    assert_eq!(v["scenario_a"], "ingest");
    let rows = v["rows"].as_array().unwrap();
    let row = |p: &str| {
        rows.iter()
            .find(|r| r["path"] == p)
            .unwrap_or_else(|| panic!("no {p} in {v:#}"))
    };
    assert_eq!(row("acked_per_sec")["ratio"], 2.0);
    assert_eq!(row("acked_per_sec")["verdict"], "better");
    assert_eq!(row("acked_per_sec")["better"], "higher");
    assert_eq!(row("latency.p99_us")["ratio"], 0.5);
    assert_eq!(row("latency.p99_us")["better"], "lower");
    assert_eq!(row("runs[label=quic].mb_per_sec")["verdict"], "worse");
    assert_eq!(row("daemon.messages_per_datagram")["verdict"], "changed");
    assert!(row("daemon.messages_per_datagram")["better"].is_null());
    assert!(row("latency.p50_us")["verdict"].is_null());
    assert_eq!(
        v["only_in_a"],
        json!(["daemon.duplicates", "runs[label=udp]"])
    );
    assert_eq!(v["only_in_b"], json!([]));
}

#[test]
fn the_global_flag_compares_too() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = reports(dir.path(), "ingest");
    let out = bench(&["--compare", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_table(&String::from_utf8_lossy(&out.stdout));
}

#[test]
fn different_scenarios_warn_but_compare() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = reports(dir.path(), "spool");
    let out = bench(&["compare", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning") && stderr.contains("ingest") && stderr.contains("spool"),
        "{stderr}"
    );
    check_table(&String::from_utf8_lossy(&out.stdout));
}

#[test]
fn changed_only_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = reports(dir.path(), "ingest");
    let out = bench(&[
        "compare",
        "--changed",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("acked_per_sec"));
    assert!(!stdout.contains("latency.p50_us"), "{stdout}");

    let out = bench(&[
        "compare",
        "--only",
        "latency,runs",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("latency.p99_us"), "{stdout}");
    assert!(stdout.contains("runs[label=fast].mb_per_sec"), "{stdout}");
    assert!(!stdout.contains("acked_per_sec"), "{stdout}");
    assert!(!stdout.contains("daemon."), "{stdout}");

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "not json").unwrap();
    let out = bench(&["compare", a.to_str().unwrap(), bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.json is not JSON"));

    // Neither a scenario nor --compare: a clear error, not a panic.
    let out = bench(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--compare A.json B.json"), "{err}");
    // --compare wants exactly two files.
    let out = bench(&["--compare", a.to_str().unwrap()]);
    assert!(!out.status.success());
}

#[test]
fn help_says_which_way_is_better() {
    let out = bench(&["compare", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(help.contains("lower is better"), "{help}");
    assert!(help.contains("_us"), "{help}");
    let out = bench(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--compare"), "{help}");
    assert!(help.contains("plot"), "{help}");
}
