//! The `loss` scenario, run briefly through the real binary (which starts
//! its daemon from itself): every row acked and stored everything it sent,
//! the impairment really dropped datagrams and the daemon repaired the
//! gaps, and the report's numbers are sane.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sluice_xdp::testnet::require_netns;

mod support;
use support::num;

/// Bound on one run of the scenario (a few short rows).
const LIMIT: Duration = Duration::from_secs(120);

fn run(dir: &Path, args: &[&str]) -> Value {
    let plots = dir.join("plots");
    let mut all = vec!["--plot", plots.to_str().unwrap()];
    all.extend_from_slice(args);
    let (report, stdout) = support::report("loss", dir, &all, LIMIT);
    eprintln!("{stdout}");
    assert!(stdout.contains("durable"), "no table:\n{stdout}");
    for pic in ["loss-latency.svg", "loss-throughput.svg"] {
        let svg = std::fs::read_to_string(plots.join(pic)).expect("a picture");
        assert!(svg.contains("<svg"), "{pic} is not an SVG");
    }
    report
}

fn check_sane(r: &Value, loss: &[f64]) -> Vec<Value> {
    assert_eq!(r["scenario"], "loss");
    assert_eq!(num(r, "schema"), 1.0);
    assert_eq!(r["ok"], true, "{r:#}");
    let rows = r["rows"].as_array().expect("rows").clone();
    let got: Vec<f64> = rows.iter().map(|row| num(row, "loss_percent")).collect();
    assert_eq!(got, loss, "one row per loss rate, the baseline first");
    for row in &rows {
        let sent = num(row, "sent");
        assert!(sent > 0.0, "{row:#}");
        assert_eq!(num(row, "errors"), 0.0, "{row:#}");
        assert_eq!(num(row, "acked"), sent, "every message acked: {row:#}");
        assert_eq!(
            num(row, "stored"),
            sent,
            "the row's stream holds each message once: {row:#}"
        );
        assert_eq!(row["checks"]["ok"], true);
        assert!(num(row, "acked_per_sec") > 0.0);
        assert!(num(row, "window_acked") > 0.0);
        let l = ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"]
            .map(|p| num(row, &format!("latency.{p}")));
        assert!(l[0] > 0.0, "{l:?}");
        assert!(
            l.windows(2).all(|w| w[0] <= w[1]),
            "percentiles ordered: {l:?}"
        );
        assert!(num(row, "latency.count") > 0.0);
        assert!(num(row, "impaired.datagrams") > 0.0);
        assert!(num(row, "daemon.durable_acks") >= sent, "{row:#}");
    }
    assert_eq!(num(&rows[0], "acked_per_sec_per_baseline"), 1.0);
    // Pictures for every row.
    let plots = &r["plots"];
    for kind in ["latency", "throughput"] {
        let lines = plots[kind].as_array().expect("plot lines");
        assert_eq!(lines.len(), rows.len(), "{kind}: a line per row");
        for line in lines {
            assert!(!line["points"].as_array().unwrap().is_empty(), "{line:#}");
        }
    }
    rows
}

/// The row at `loss` % really lost datagrams and the protocol repaired it.
fn check_repaired(row: &Value) {
    assert!(
        num(row, "impaired.dropped") > 0.0,
        "nothing dropped: {row:#}"
    );
    assert!(
        num(row, "daemon.nacks_sent") > 0.0 || num(row, "daemon.retransmits_received") > 0.0,
        "no NACK and no retransmission despite the loss: {row:#}"
    );
}

#[test]
fn relay_closed_loop_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        dir.path(),
        &[
            "--loss",
            "0,10",
            "--seconds",
            "0.5",
            "--warmup",
            "0.2",
            "--producers",
            "2",
            "--in-flight",
            "4",
            "--quiet",
        ],
    );
    assert_eq!(r["config"]["mode"], "relay");
    assert_eq!(r["load"], "closed");
    let rows = check_sane(&r, &[0.0, 10.0]);
    assert_eq!(num(&rows[0], "impaired.dropped"), 0.0);
    check_repaired(&rows[1]);
}

#[test]
fn relay_open_loop_with_reordering_and_duplicates_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    // No 0 in the list: the baseline row is added in front.
    let r = run(
        dir.path(),
        &[
            "--loss",
            "5",
            "--reorder",
            "5",
            "--duplicate",
            "5",
            "--directions",
            "both",
            "--rate",
            "4000",
            "--count",
            "600",
            "--producers",
            "2",
            "--seed",
            "7",
            "--quiet",
        ],
    );
    assert_eq!(r["load"], "open");
    let rows = check_sane(&r, &[0.0, 5.0]);
    for row in &rows {
        assert!(num(row, "impaired.duplicated") > 0.0, "{row:#}");
        assert!(num(row, "impaired.reordered") > 0.0, "{row:#}");
        assert!(num(row, "pacer_lag.count") > 0.0, "{row:#}");
    }
    check_repaired(&rows[1]);
}

#[test]
fn flags_that_cannot_work_are_refused_with_a_reason() {
    for (args, says) in [
        (&["--path", "fast"][..], "cannot go through the relay"),
        (
            &["--netns", "--reorder", "5"][..],
            "nftables random drop only",
        ),
        (&["--loss", "0,150"][..], "percentage"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
            .arg("loss")
            .args(args)
            .output()
            .expect("run sluice-bench");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn netns_nftables_sweep() {
    if !require_netns("loss netns_nftables_sweep", true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .arg("loss")
        .args(["--dir", dir.path().to_str().unwrap()])
        .args(["--json", json.to_str().unwrap()])
        .args(["--netns", "--loss", "0,10", "--seconds", "0.5"])
        .args(["--warmup", "0.2", "--producers", "2", "--in-flight", "4"])
        .args(["--quiet"])
        .spawn()
        .expect("run sluice-bench");
    let pid = child.id();
    let status = child.wait().unwrap();
    // Whatever happened, the run removed its namespaces.
    let list = sluice_xdp::testnet::run(&["ip", "netns", "list"]);
    assert!(
        !list.lines().any(|l| l.contains(&format!("-{pid}"))),
        "namespaces of the run left behind:\n{list}"
    );
    assert!(status.success(), "sluice-bench loss --netns: {status}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["config"]["mode"], "netns");
    assert_eq!(r["config"]["path"], "fast");
    let rows = check_sane(&r, &[0.0, 10.0]);
    assert_eq!(rows[0]["impaired"]["by"], "nftables");
    assert_eq!(num(&rows[0], "impaired.dropped"), 0.0);
    check_repaired(&rows[1]);
    let fraction = num(&rows[1], "impaired.dropped_fraction");
    assert!(
        (0.05..0.2).contains(&fraction),
        "nftables dropped {fraction} of the datagrams, not about 10 %"
    );
}
