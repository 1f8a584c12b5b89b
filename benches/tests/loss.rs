//! The `loss` scenario, run briefly through the real binary (which starts
//! its daemon from itself): every row acked and stored everything it sent,
//! the impairment really dropped datagrams and the daemon repaired the
//! gaps, and the report's numbers are sane. With `--repeat` every row keeps
//! each repetition, checked one by one, and their spread.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sluice_testkit::testnet::require_netns;

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

/// The report's rows (one per rate in `loss`, `repeat` repetitions each),
/// every repetition checked as a run of its own.
fn check_sane(r: &Value, loss: &[f64], repeat: usize) -> Vec<Value> {
    assert_eq!(r["scenario"], "loss");
    assert_eq!(num(r, "schema"), 2.0);
    assert_eq!(r["ok"], true, "{r:#}");
    assert_eq!(num(r, "config.repeat"), repeat as f64);
    let rows = r["rows"].as_array().expect("rows").clone();
    let got: Vec<f64> = rows.iter().map(|row| num(row, "loss_percent")).collect();
    assert_eq!(got, loss, "one row per loss rate, the baseline first");
    let mut streams = Vec::new();
    for row in &rows {
        assert_eq!(row["checks"]["ok"], true, "{row:#}");
        let runs = row["runs"].as_array().expect("runs");
        assert_eq!(runs.len(), repeat, "{row:#}");
        assert_eq!(num(row, "summary.runs"), repeat as f64);
        for (k, run) in runs.iter().enumerate() {
            assert_eq!(num(run, "run"), (k + 1) as f64);
            check_run(run);
            streams.push(run["stream"].as_str().expect("a stream").to_owned());
        }
    }
    let n = streams.len();
    streams.sort();
    streams.dedup();
    assert_eq!(streams.len(), n, "a stream of its own per repetition");
    // The baseline's median is the baseline.
    let base = num(&rows[0], "summary.acked_per_sec_per_baseline.median");
    assert!((base - 1.0).abs() < 1e-9, "{base}");
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

/// One repetition: all sent acked and stored once, sane figures.
fn check_run(run: &Value) {
    let sent = num(run, "sent");
    assert!(sent > 0.0, "{run:#}");
    assert_eq!(num(run, "errors"), 0.0, "{run:#}");
    assert_eq!(num(run, "acked"), sent, "every message acked: {run:#}");
    assert_eq!(
        num(run, "stored"),
        sent,
        "the stream holds each message once: {run:#}"
    );
    assert_eq!(run["checks"]["ok"], true);
    assert!(num(run, "acked_per_sec") > 0.0);
    assert!(num(run, "window_acked") > 0.0);
    assert!(num(run, "acked_per_sec_per_baseline") > 0.0);
    support::ordered(&run["latency"], "ack latency");
    assert!(num(run, "impaired.datagrams") > 0.0);
    assert!(num(run, "daemon.durable_acks") >= sent, "{run:#}");
    // CPU was read (it can be 0 ticks over a very short window).
    for f in [
        "producers_us_per_msg",
        "daemon_us_per_msg",
        "window_seconds",
    ] {
        assert!(num(&run["cpu"], f) >= 0.0, "{run:#}");
    }
    assert!(num(run, "cpu.window_seconds") > 0.0, "{run:#}");
}

/// Every repetition of the row at `loss` % really lost datagrams and the
/// protocol repaired it.
fn check_repaired(row: &Value) {
    for run in row["runs"].as_array().expect("runs") {
        assert!(
            num(run, "impaired.dropped") > 0.0,
            "nothing dropped: {run:#}"
        );
        assert!(
            num(run, "daemon.nacks_sent") > 0.0 || num(run, "daemon.retransmits_received") > 0.0,
            "no NACK and no retransmission despite the loss: {run:#}"
        );
    }
}

/// `summary.NAME` is min <= median <= max and spans the repetitions'
/// values of `of` (so it was made from them).
fn check_spread(row: &Value, name: &str, of: impl Fn(&Value) -> f64) {
    let s = &row["summary"][name];
    let (min, median, max) = (num(s, "min"), num(s, "median"), num(s, "max"));
    assert!(min <= median && median <= max, "{name}: {s}");
    let v: Vec<f64> = row["runs"].as_array().unwrap().iter().map(of).collect();
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    assert!(
        (min - lo).abs() <= 1e-9 * lo.abs().max(1.0)
            && (max - hi).abs() <= 1e-9 * hi.abs().max(1.0),
        "{name}: {s} is not the spread of {v:?}"
    );
}

#[test]
fn relay_closed_loop_sweep_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        dir.path(),
        &[
            "--loss",
            "0,10",
            "--repeat",
            "2",
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
    let rows = check_sane(&r, &[0.0, 10.0], 2);
    for run in rows[0]["runs"].as_array().unwrap() {
        assert_eq!(num(run, "impaired.dropped"), 0.0);
    }
    check_repaired(&rows[1]);
    for row in &rows {
        check_spread(row, "acked_per_sec", |x| num(x, "acked_per_sec"));
        check_spread(row, "acked_per_sec_per_baseline", |x| {
            num(x, "acked_per_sec_per_baseline")
        });
        check_spread(row, "p50_us", |x| num(x, "latency.p50_us"));
        check_spread(row, "p99_us", |x| num(x, "latency.p99_us"));
        check_spread(row, "p999_us", |x| num(x, "latency.p999_us"));
        check_spread(row, "producers_cpu_us_per_msg", |x| {
            num(x, "cpu.producers_us_per_msg")
        });
        check_spread(row, "daemon_cpu_us_per_msg", |x| {
            num(x, "cpu.daemon_us_per_msg")
        });
        check_spread(row, "daemon_cores", |x| num(x, "cpu.daemon.cores"));
        check_spread(row, "producers_cores", |x| num(x, "cpu.producers.cores"));
        // Half a second of durable ingest costs the daemon and the
        // producers more than one clock tick each.
        for run in row["runs"].as_array().unwrap() {
            for f in ["daemon.seconds", "producers.seconds"] {
                assert!(num(&run["cpu"], f) > 0.0, "{f}: {run:#}");
            }
            assert!(num(run, "cpu.daemon_us_per_msg") > 0.0);
            assert!(num(run, "cpu.producers_us_per_msg") > 0.0);
        }
    }
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
    let rows = check_sane(&r, &[0.0, 5.0], 1);
    for row in &rows {
        let run = &row["runs"][0];
        assert!(num(run, "impaired.duplicated") > 0.0, "{run:#}");
        assert!(num(run, "impaired.reordered") > 0.0, "{run:#}");
        assert!(num(run, "pacer_lag.count") > 0.0, "{run:#}");
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
        (&["--repeat", "0"][..], "--repeat must be at least 1"),
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
    let list = sluice_testkit::testnet::run(&["ip", "netns", "list"]);
    assert!(
        !list.lines().any(|l| l.contains(&format!("-{pid}"))),
        "namespaces of the run left behind:\n{list}"
    );
    assert!(status.success(), "sluice-bench loss --netns: {status}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["config"]["mode"], "netns");
    assert_eq!(r["config"]["path"], "fast");
    let rows = check_sane(&r, &[0.0, 10.0], 1);
    let (base, lossy) = (&rows[0]["runs"][0], &rows[1]["runs"][0]);
    assert_eq!(base["impaired"]["by"], "nftables");
    assert_eq!(num(base, "impaired.dropped"), 0.0);
    check_repaired(&rows[1]);
    // The daemon in the namespace is the process whose CPU was read.
    assert!(num(lossy, "cpu.daemon.seconds") > 0.0, "{lossy:#}");
    let fraction = num(lossy, "impaired.dropped_fraction");
    assert!(
        (0.05..0.2).contains(&fraction),
        "nftables dropped {fraction} of the datagrams, not about 10 %"
    );
}
