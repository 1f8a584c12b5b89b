//! The `ingest` scenario, run briefly through the real binary (which starts
//! its daemon from itself): the JSON report must hold sane numbers, per run
//! and over the runs.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

fn bench(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .arg("ingest")
        .args(["--dir", dir.to_str().unwrap()])
        .args(["--baseline-seconds", "0.1"])
        .args(args)
        .output()
        .expect("run sluice-bench")
}

mod support;
use support::num;

/// Bound on one run of the scenario.
const LIMIT: Duration = Duration::from_secs(120);

fn run(dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--baseline-seconds", "0.1"];
    all.extend_from_slice(args);
    let (report, stdout) = support::report("ingest", dir, &all, LIMIT);
    assert!(stdout.contains("acked msgs/s"), "no table:\n{stdout}");
    report
}

/// What every repetition must satisfy.
fn check_run(r: &Value) {
    assert_eq!(num(r, "errors"), 0.0, "{r:#}");
    assert!(num(r, "sent") > 0.0);
    assert_eq!(num(r, "acked"), num(r, "sent"), "every message acked");
    assert!(num(r, "window_seconds") > 0.0);
    assert!(num(r, "window_acked") > 0.0);
    assert!(num(r, "acked_per_sec") > 0.0);
    // MB/s from the real bytes.
    let mb = num(r, "window_bytes") / num(r, "window_seconds") / 1e6;
    assert!((num(r, "mb_per_sec") - mb).abs() <= 1e-9 * mb.max(1.0));
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
    // HTTP publishes send no datagrams.
    if !r["http_retries"].is_number() {
        assert!(num(r, "daemon.datagrams_in") > 0.0);
    }
    assert!(num(r, "ratios.acked_per_udp_128_datagram") > 0.0);
    assert!(num(r, "ratios.p99_per_fdatasync_p99") > 0.0);
}

/// What every report must satisfy: each run sane, the totals their sums,
/// the summary's spreads ordered and the plots one line per run.
fn check_sane(r: &Value) {
    assert_eq!(r["scenario"], "ingest");
    let runs = r["runs"].as_array().expect("runs");
    assert_eq!(runs.len() as f64, num(r, "config.repeat"));
    assert_eq!(num(r, "summary.runs"), runs.len() as f64);
    for run in runs {
        check_run(run);
    }
    let sum = |k: &str| runs.iter().map(|x| num(x, k)).sum::<f64>();
    assert_eq!(num(r, "sent"), sum("sent"));
    assert_eq!(num(r, "acked"), num(r, "sent"));
    assert_eq!(num(r, "errors"), 0.0);
    assert!(num(r, "baselines.fdatasync_per_sec") > 0.0);
    assert!(num(r, "baselines.udp_128.datagrams_per_sec") > 0.0);
    for k in [
        "acked_per_sec",
        "mb_per_sec",
        "p50_us",
        "p99_us",
        "p999_us",
        "producer_cpu_us_per_msg",
        "daemon_cpu_us_per_msg",
        "ratios.acked_per_udp_128_datagram",
        "ratios.p99_per_fdatasync_p99",
    ] {
        let s = ["min", "median", "max"].map(|m| num(r, &format!("summary.{k}.{m}")));
        assert!(s[0] <= s[1] && s[1] <= s[2], "{k}: {s:?}");
        // The spread is of the runs' own figures.
        let of_runs: Vec<f64> = runs
            .iter()
            .map(|x| match k {
                "p50_us" | "p99_us" | "p999_us" => num(x, &format!("latency.{k}")),
                _ => num(x, k),
            })
            .collect();
        let lo = of_runs.iter().copied().fold(f64::INFINITY, f64::min);
        assert_eq!(s[0], lo, "{k}: min of {of_runs:?}");
    }
    let throughput = r["plots"]["throughput"].as_array().expect("plots");
    let latency = r["plots"]["latency"].as_array().expect("plots");
    assert_eq!(throughput.len(), runs.len());
    assert_eq!(latency.len(), runs.len());
    for (k, (t, run)) in throughput.iter().zip(runs).enumerate() {
        assert_eq!(t["label"], format!("run {}", k + 1));
        let points = t["points"].as_array().unwrap();
        assert!(!points.is_empty(), "no throughput points: {t}");
        // Acks per interval add up to (about) the window's acks: the
        // intervals count from the planned window start, the window
        // from its marks, and a last sliver may be left out.
        let interval = num(r, "config.interval");
        let counted: f64 = points
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let from = i as f64 * interval;
                p[1].as_f64().unwrap() * (p[0].as_f64().unwrap() - from)
            })
            .sum();
        let window = num(run, "window_acked");
        assert!(
            counted > 0.5 * window && counted < 1.5 * window,
            "throughput points count {counted} acks, the window {window}: {t}"
        );
    }
    for c in latency {
        let points = c["points"].as_array().unwrap();
        assert!(points.len() >= 2, "{c}");
        let ys: Vec<f64> = points.iter().map(|p| p[1].as_f64().unwrap()).collect();
        assert!(ys.windows(2).all(|w| w[0] <= w[1]), "{ys:?}");
    }
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
    // A count run is measured once unless asked.
    assert_eq!(num(&r, "config.repeat"), 1.0);
    let run = &r["runs"][0];
    assert_eq!(num(run, "sent"), 2000.0);
    assert_eq!(num(run, "window_acked"), 2000.0);
    assert_eq!(num(run, "latency.count"), 2000.0);
    assert_eq!(num(run, "mean_payload_bytes"), 128.0);
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
            "--repeat",
            "1",
        ],
    );
    check_sane(&r);
    assert_eq!(r["mode"], "open");
    let run = &r["runs"][0];
    // 0.7 s at 2,000/s are scheduled, and a few more until the pacer is
    // told to stop.
    let sent = num(run, "sent");
    assert!((1399.0..=2000.0).contains(&sent), "sent {sent}");
    // Messages due in the 0.5 s window are the ones whose latency counts.
    let counted = num(run, "latency.count");
    assert!((999.0..=1001.0).contains(&counted), "counted {counted}");
    assert!(num(run, "pacer_lag.count") > 0.0);
    assert!(num(&r, "summary.ratios.p99_per_udp_echo_p99.median") > 0.0);
}

/// Repetitions, a size mix, and the plots.
#[test]
fn repeated_with_a_size_mix() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        dir.path(),
        &[
            "--producers",
            "2",
            "--seconds",
            "0.3",
            "--warmup",
            "0.1",
            "--repeat",
            "2",
            "--sizes",
            "64:50,1024:40,4096:10",
            "--seed",
            "7",
            "--batch",
            "64",
            "--plot",
            dir.path().join("pictures").to_str().unwrap(),
        ],
    );
    check_sane(&r);
    assert_eq!(r["runs"].as_array().unwrap().len(), 2);
    assert_eq!(num(&r, "config.seed"), 7.0);
    for run in r["runs"].as_array().unwrap() {
        let mean = num(run, "mean_payload_bytes");
        assert!((64.0..=4096.0).contains(&mean), "mean payload {mean}");
        // Not all one size: 64 B alone would be a mean of 64.
        assert!(mean > 64.0 && mean < 4096.0, "mean payload {mean}");
    }
    for f in ["ingest-latency.svg", "ingest-throughput.svg"] {
        let svg = std::fs::read_to_string(dir.path().join("pictures").join(f)).expect(f);
        assert!(svg.contains("<svg"), "{f}");
    }
}

/// `--path http`: the same load over `POST /streams/{s}/messages`, frames
/// of 20 per request, one connection per producer with producer seqs (a
/// seq stored out of order would come back a duplicate: an error).
#[test]
fn http_publish() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        dir.path(),
        &[
            "--path",
            "http",
            "--producers",
            "2",
            "--count",
            "400",
            "--batch",
            "20",
        ],
    );
    check_sane(&r);
    assert_eq!(r["config"]["path"], "http");
    assert_eq!(num(&r, "config.in_flight"), 1.0);
    let run = &r["runs"][0];
    assert_eq!(num(run, "sent"), 800.0);
    assert_eq!(num(run, "daemon.duplicates"), 0.0);
    assert!(num(run, "http_retries") >= 0.0);
}

#[test]
fn bad_flags_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path(), &["--sizes", "64:x"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--sizes 64:x") && err.contains("weight"),
        "{err}"
    );

    let out = bench(dir.path(), &["--repeat", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--repeat must be at least 1"), "{err}");

    // --path xdp hands over to the xdp command (root), which takes none of
    // the open-loop flags: refused before anything is set up, as root or
    // not, naming the command to run.
    let out = bench(dir.path(), &["--path", "xdp", "--rate", "1000"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sluice-bench xdp --part durable"), "{err}");
}

/// `--path xdp` (root) runs the xdp command's durable part with the flags
/// that carry over: its report, the size and producers asked for.
#[test]
fn xdp_path_hands_over_to_the_xdp_command() {
    if !sluice_testkit::testnet::require_netns("ingest_path_xdp", false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("xdp.json");
    let out = bench(
        dir.path(),
        &[
            "--path",
            "xdp",
            "--seconds",
            "0.3",
            "--producers",
            "1",
            "--size",
            "200",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stderr}", out.status);
    assert!(
        stderr.contains("sluice-bench xdp --part durable"),
        "{stderr}"
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["scenario"], "xdp");
    assert_eq!(num(&r, "config.producers"), 1.0);
    let runs = r["durable"].as_array().expect("durable runs");
    assert_eq!(runs.len(), 3, "socket, af_xdp, af_xdp+tx: {runs:#?}");
    for run in runs {
        assert_eq!(num(run, "size"), 200.0);
        assert!(num(run, "acked") > 0.0);
        assert_eq!(num(run, "acked"), num(run, "sent"));
    }
    assert!(r["datapath"].as_array().is_none_or(|d| d.is_empty()));
}
