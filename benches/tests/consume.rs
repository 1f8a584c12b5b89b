//! The `e2e` scenario (first named `consume`, still an alias), run briefly
//! through the real binary (which starts its daemon from itself, on
//! loopback): the JSON report must hold sane numbers and its pictures, and
//! every group must have received every message published to it.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

mod support;
use support::{num, ordered};

/// The whole run's bound: a hung daemon or consumer fails the test instead
/// of hanging it.
const LIMIT: Duration = Duration::from_secs(180);

fn run(dir: &Path, args: &[&str]) -> Value {
    run_as("e2e", dir, args)
}

fn run_as(scenario: &str, dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--baseline-seconds", "0.1", "--drain-timeout", "60"];
    all.extend_from_slice(args);
    let (report, stdout) = support::report(scenario, dir, &all, LIMIT);
    assert!(stdout.contains("published/s"), "no table:\n{stdout}");
    report
}

/// Every group got every published message (at-least-once), and its
/// figures agree with the daemon's.
fn groups_complete(run: &Value, groups: usize, what: &str) {
    let published = num(run, "published");
    assert!(published > 0.0, "{what}: nothing published");
    let g = run["group_figures"].as_array().expect("group_figures");
    assert_eq!(g.len(), groups, "{what}");
    for f in g {
        let distinct = num(f, "distinct");
        // Without errors nothing was stored but what was acked: exactly
        // every published message, each counted once.
        assert_eq!(
            distinct, published,
            "{what}: a group received {distinct} of {published} messages: {f:#}"
        );
        assert!(num(f, "deliveries") >= distinct, "{what}: {f:#}");
        assert!(num(f, "window_delivered") > 0.0, "{what}: {f:#}");
        assert!(num(f, "delivered_per_sec") > 0.0, "{what}: {f:#}");
        assert!(f["caught_up_after"].is_number(), "{what}: {f:#}");
        // The daemon saw the consumer's acks (made durable before it left).
        assert!(num(f, "daemon.acked") >= published, "{what}: {f:#}");
    }
}

#[test]
fn all_parts_on_tiny_settings() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        dir.path(),
        &[
            "--seconds",
            "1",
            "--warmup",
            "0.3",
            "--rate",
            "2000",
            "--groups",
            "1,2",
            "--producers",
            "2",
        ],
    );
    assert_eq!(r["scenario"], "e2e");
    assert_eq!(num(&r, "errors"), 0.0, "{r:#}");
    assert_eq!(num(&r, "groups_short"), 0.0, "{r:#}");
    assert!(num(&r, "host.cpus") >= 1.0);
    assert!(
        r["file_system"]["kind"].is_string(),
        "{:#}",
        r["file_system"]
    );

    // A: ingest alone.
    let a = &r["ingest_alone"];
    assert_eq!(num(a, "groups"), 0.0);
    assert!(num(a, "published_per_sec") > 0.0, "{a:#}");
    assert_eq!(num(a, "published"), num(a, "sent"), "every message acked");
    ordered(&a["ack_latency"], "ingest alone ack latency");
    assert!(num(a, "daemon.durable_acks") > 0.0, "{a:#}");
    // Then one group drained the whole stream: every message, a speed, and
    // the CPU it took on both sides.
    let d = &a["backlog_drain"];
    assert_eq!(num(d, "groups_counted"), 1.0, "{d:#}");
    assert_eq!(num(d, "min_behind"), num(a, "published"), "{d:#}");
    assert!(num(d, "deliveries") >= num(a, "published"), "{d:#}");
    assert!(num(d, "delivered_per_sec_per_group") > 0.0, "{d:#}");
    assert!(num(d, "daemon_us_per_delivery") > 0.0, "{d:#}");
    assert!(num(d, "consumer_us_per_delivery") > 0.0, "{d:#}");

    // B: one phase per number of groups, each with positive ratios.
    let b = r["delivery"].as_array().expect("delivery");
    assert_eq!(b.len(), 2);
    for (run, groups) in b.iter().zip([1usize, 2]) {
        let what = format!("delivery to {groups}");
        assert_eq!(num(run, "groups"), groups as f64);
        assert_eq!(num(run, "errors"), 0.0, "{what}: {run:#}");
        groups_complete(run, groups, &what);
        assert!(num(run, "delivered_per_sec_total") > 0.0);
        let per_group = num(run, "delivered_per_sec_per_group");
        assert!(per_group > 0.0 && per_group <= num(run, "delivered_per_sec_total"));
        for q in [
            "ratios.delivered_per_group_per_ingest",
            "ratios.delivered_total_per_ingest",
            "ratios.published_per_ingest",
        ] {
            assert!(num(run, q) > 0.0, "{what}: {q}: {:#}", run["ratios"]);
        }
        ordered(&run["ack_latency"], &format!("{what}: ack latency"));
        assert!(
            num(run, "cpu.consumer_seconds") > 0.0,
            "{what}: {:#}",
            run["cpu"]
        );
    }

    // C: latency at 2,000/s.
    let c = &r["latency"];
    assert_eq!(num(c, "rate"), 2000.0);
    assert_eq!(num(c, "errors"), 0.0, "{c:#}");
    groups_complete(c, 1, "latency");
    ordered(&c["delivery_latency"], "delivery latency");
    ordered(&c["ack_latency"], "durable-ack latency");
    // Messages due in the 1 s window: about 2,000 of them, each counted once.
    let counted = num(c, "delivery_latency.count");
    assert!((1900.0..=2001.0).contains(&counted), "counted {counted}");
    assert!(num(c, "ratios.delivery_p50_per_ack_p50") > 0.0);
    assert!(num(c, "ratios.delivery_p99_per_ack_p99") > 0.0);
    // A delivery follows the record's group commit: it cannot beat the ack
    // by much (the ack's own trip back is the only slack).
    assert!(
        num(c, "delivery_latency.p50_us") * 4.0 >= num(c, "ack_latency.p50_us"),
        "{c:#}"
    );
    // The baselines of the same run, and the ratios to them.
    assert!(num(&r, "baselines.fdatasync_per_sec") > 0.0);
    assert!(num(c, "ratios.delivery_p99_per_ideal_commit_p99") > 0.0);
    // (The echo, one round trip at a time, may fall behind on a slow VM.)
    assert!(
        c["ratios"]["udp_echo_fell_behind"].as_bool().unwrap()
            || num(c, "ratios.delivery_p99_per_udp_echo_p99") > 0.0
    );
}

/// A picture's points: x rising from 0 on, y not negative.
fn series_sane(s: &Value, what: &str) -> usize {
    let points = s["points"].as_array().expect("points");
    let mut last_x = -1.0;
    for p in points {
        let (x, y) = (p[0].as_f64().unwrap(), p[1].as_f64().unwrap());
        assert!(x >= 0.0 && x > last_x, "{what}: x not rising: {s}");
        assert!(y >= 0.0 && y.is_finite(), "{what}: {s}");
        last_x = x;
    }
    points.len()
}

fn labels(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["label"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn plots_of_every_phase() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        dir.path(),
        &[
            "--seconds",
            "1",
            "--warmup",
            "0.2",
            "--rate",
            "1000",
            "--groups",
            "2",
            "--producers",
            "1",
            "--no-baselines",
        ],
    );
    assert_eq!(num(&r, "errors"), 0.0, "{r:#}");
    assert!(r["repeats"].is_null(), "one round: no spreads");
    // Throughput over time: ingest alone and the 2-group phase, about one
    // point per 200 ms of the 1 s window.
    let tp = &r["plots"]["throughput"];
    assert_eq!(
        labels(tp),
        [
            "published/s, ingest alone",
            "delivered/s per group, 2 groups"
        ]
    );
    for s in tp.as_array().unwrap() {
        let n = series_sane(s, "throughput");
        assert!((3..=7).contains(&n), "{n} points: {s}");
        let mean: f64 = s["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[1].as_f64().unwrap())
            .sum::<f64>()
            / n as f64;
        assert!(mean > 0.0, "{s}");
    }
    // The series agrees with the window's figure (same counts, finer).
    let d = &r["delivery"][0];
    let per_group = num(d, "delivered_per_sec_per_group");
    let pts = tp[1]["points"].as_array().unwrap();
    let max = pts
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(max >= per_group * 0.9, "max {max} vs window {per_group}");
    // Latency by percentile: delivery and ack of the latency phase.
    let lat = &r["plots"]["latency"];
    assert_eq!(
        labels(lat),
        ["publish -> delivery at 1000/s", "durable ack at 1000/s"]
    );
    for c in lat.as_array().unwrap() {
        assert!(series_sane(c, "latency curve") >= 2);
        let last = c["points"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last[0].as_f64(), Some(100.0), "{c}");
    }
    let max_delivery = lat[0]["points"].as_array().unwrap().last().unwrap()[1]
        .as_f64()
        .unwrap();
    assert_eq!(max_delivery, num(&r, "latency.delivery_latency.max_us"));
}

/// The consumers over the admin port's push routes: every phase's groups
/// get every message, counted as over QUIC (the backlog drain too).
#[test]
fn consumers_over_websocket_and_event_stream() {
    for path in ["ws", "sse"] {
        other_path(path);
    }
}

/// The consumers as gRPC StreamingPull calls: the same checks.
#[test]
fn consumers_over_grpc_streaming_pull() {
    other_path("grpc");
}

/// A run with the consumers on `path`: every phase's groups get every
/// message, and the daemon saw their acks.
fn other_path(path: &str) {
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        dir.path(),
        &[
            "--consume-path",
            path,
            "--seconds",
            "0.5",
            "--warmup",
            "0.2",
            "--rate",
            "1000",
            "--groups",
            "2",
            "--producers",
            "1",
            "--no-baselines",
        ],
    );
    assert_eq!(r["config"]["consume_path"], path);
    assert_eq!(num(&r, "errors"), 0.0, "{path}: {r:#}");
    assert_eq!(num(&r, "groups_short"), 0.0, "{path}: {r:#}");
    let d = &r["ingest_alone"]["backlog_drain"];
    assert_eq!(num(d, "groups_counted"), 1.0, "{path}: {d:#}");
    assert_eq!(
        num(d, "min_behind"),
        num(&r, "ingest_alone.published"),
        "{path}: {d:#}"
    );
    groups_complete(&r["delivery"][0], 2, &format!("{path}: delivery"));
    groups_complete(&r["latency"], 1, &format!("{path}: latency"));
    assert!(num(&r, "latency.delivery_latency.count") > 0.0, "{path}");
}

#[test]
fn repeated_rounds_through_the_old_name() {
    let dir = tempfile::tempdir().unwrap();
    let r = run_as(
        "consume",
        dir.path(),
        &[
            "--parts",
            "ingest,latency",
            "--seconds",
            "0.5",
            "--warmup",
            "0.2",
            "--rate",
            "1000",
            "--producers",
            "1",
            "--repeat",
            "2",
            "--no-baselines",
        ],
    );
    assert_eq!(r["scenario"], "e2e");
    assert_eq!(num(&r, "errors"), 0.0, "{r:#}");
    assert_eq!(num(&r, "groups_short"), 0.0, "{r:#}");
    let q = &r["repeats"];
    let rounds = q["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2);
    // The first round is the one reported in detail.
    assert_eq!(
        num(&rounds[0], "ingest_published_per_sec"),
        num(&r, "ingest_alone.published_per_sec")
    );
    assert_eq!(
        num(&rounds[0], "latency.delivery_p99_us"),
        num(&r, "latency.delivery_latency.p99_us")
    );
    let spread = |s: &Value| {
        let (lo, mid, hi) = (num(s, "min"), num(s, "median"), num(s, "max"));
        assert!(lo > 0.0 && lo <= mid && mid <= hi, "{s}");
        // Two rounds: the median is their mean.
        assert!((mid - (lo + hi) / 2.0).abs() <= 1e-6 * hi, "{s}");
    };
    spread(&q["ingest_published_per_sec"]);
    for k in [
        "delivery_p50_us",
        "delivery_p99_us",
        "ack_p50_us",
        "ack_p99_us",
    ] {
        spread(&q["latency"][k]);
    }
    assert!(q["delivery"].as_array().unwrap().is_empty());
}
