//! The `forward` scenario (issue 21's benchmark), run briefly through the
//! real binary (its daemon started from itself, a JetStream server on
//! loopback): every way of publishing must report a nonzero rate, and
//! every JetStream stream of the run must hold exactly the messages sent,
//! once each; the producer → ack latency (`ack = "replicated"` and
//! `"local"`) is measured for every message, next to the direct one. The
//! second test looks at the streams itself, on a server it started,
//! instead of trusting the report.
//!
//! Needs `nats-server` (scripts/setup.sh installs it in target/pyenv):
//! without it each test says why it skips; with `CI=true` a skip fails.

use std::time::Duration;

use serde_json::Value;
use sluice_testkit::nats::{require_nats_server, Cluster};

mod support;
use support::{num, ordered};

/// The whole run's bound: a hung daemon or server fails the test instead
/// of hanging it.
const LIMIT: Duration = Duration::from_secs(240);
/// Messages in all: 2 producers x 1,000.
const MESSAGES: f64 = 2000.0;

fn tiny(extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--messages",
        "2000",
        "--producers",
        "2",
        "--latency-messages",
        "50",
        "--latency-window",
        "4",
        "--timeout",
        "120",
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Every row reached its destination exactly, at a nonzero rate.
fn rows_exact(r: &Value) {
    for row in ["forwarded", "sluice_ingest", "direct", "fast"] {
        let v = &r[row];
        assert_eq!(num(v, "messages"), MESSAGES, "{row}: {v:#}");
        assert_eq!(num(v, "stored"), MESSAGES, "{row}: {v:#}");
        assert_eq!(num(v, "errors"), 0.0, "{row}: {v:#}");
        assert_eq!(num(v, "duplicates"), 0.0, "{row}: {v:#}");
        assert!(num(v, "seconds") > 0.0, "{row}: {v:#}");
        assert!(num(v, "msgs_per_sec") > 0.0, "{row}: {v:#}");
        assert!(num(v, "mb_per_sec") > 0.0, "{row}: {v:#}");
    }
    assert_eq!(r["short"], serde_json::json!([]), "{r:#}");
    assert!(num(r, "ratio") > 0.0, "{r:#}");
    assert!(r["best_baseline"]
        .as_str()
        .unwrap()
        .starts_with("NATS client"));
    ordered(&r["direct_puback_latency"], "direct PubAck, window full");
    ordered(&r["single_puback_latency"], "direct PubAck, one at a time");
    assert_eq!(num(r, "direct_puback_latency.count"), MESSAGES);
    assert_eq!(num(r, "single_puback_latency.count"), 50.0);
    ack_latency(r);
}

/// The producer → ack latency: one row per window (one at a time, then
/// 4 in flight), each mode's every message acked and measured, the
/// ratios those of the figures shown; both JetStream streams complete.
fn ack_latency(r: &Value) {
    let rows = r["ack_latency"].as_array().expect("ack_latency rows");
    let windows: Vec<f64> = rows.iter().map(|a| num(a, "window")).collect();
    assert_eq!(windows, [1.0, 4.0], "{r:#}");
    for a in rows {
        let w = num(a, "window");
        for mode in ["replicated", "local", "direct"] {
            ordered(&a[mode], &format!("{mode}, window {w}"));
            assert_eq!(num(a, &format!("{mode}.count")), 50.0, "{mode}: {a:#}");
        }
        assert_eq!(num(a, "errors"), 0.0, "{a:#}");
        let ratio = |over: &str, p: &str| {
            num(a, &format!("replicated.{p}_us")) / num(a, &format!("{over}.{p}_us"))
        };
        for (key, over, p) in [
            ("replicated_over_direct_p50", "direct", "p50"),
            ("replicated_over_direct_p99", "direct", "p99"),
            ("replicated_over_local_p50", "local", "p50"),
        ] {
            let v = num(a, key);
            assert!(v > 0.0 && (v - ratio(over, p)).abs() < 1e-9, "{key}: {a:#}");
        }
    }
    // The one-at-a-time direct figures are the single publishes'.
    assert_eq!(rows[0]["direct"], r["single_puback_latency"], "{r:#}");
    let s = &r["ack_stored"];
    assert_eq!(num(s, "expected"), 100.0, "{s:#}");
    assert_eq!(num(s, "replicated"), 100.0, "{s:#}");
    assert_eq!(num(s, "local"), 100.0, "{s:#}");
}

#[test]
fn forward_against_a_started_server_reports_rates_and_exact_streams() {
    if !require_nats_server("forward_against_a_started_server_reports_rates_and_exact_streams") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let args = tiny(&["--nodes", "1"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (r, stdout) = support::report("forward", dir.path(), &args, LIMIT);
    assert!(
        stdout.contains("sluice -> JetStream"),
        "no table:\n{stdout}"
    );
    assert_eq!(r["scenario"], "forward");
    assert_eq!(r["started_cluster"], true);
    assert_eq!(num(&r, "config.replicas"), 1.0);
    rows_exact(&r);
}

#[test]
fn forward_into_a_running_server_stores_each_message_once() {
    if !require_nats_server("forward_into_a_running_server_stores_each_message_once") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats = dir.path().join("nats");
    std::fs::create_dir(&nats).unwrap();
    let mut cluster = Cluster::start(&nats, 1);
    let url = cluster.url(0);
    let args = tiny(&["--servers", &url, "--replicas", "1", "--keep"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (r, _) = support::report("forward", dir.path(), &args, LIMIT);
    assert_eq!(r["started_cluster"], false);
    rows_exact(&r);
    // What the server itself says: each stream holds sequences 1..=2000
    // and nothing else (a duplicate stored, or a message lost, shows).
    for (which, n) in [
        ("forwarded", 2000),
        ("direct", 2000),
        ("fast", 2000),
        ("one_at_a_time", 50),
        ("window", 50),
        ("acked.replicated.target", 100),
        ("acked.local.target", 100),
    ] {
        let name = which
            .split('.')
            .fold(&r["streams"], |v, k| &v[k])
            .as_str()
            .expect("stream names in the report");
        let s = cluster
            .stream_state(0, name)
            .unwrap_or_else(|| panic!("{which}: no stream {name} on the server"));
        assert_eq!(
            (s.messages, s.first_seq, s.last_seq),
            (n, 1, n),
            "{which}: stream {name}"
        );
    }
    cluster.stop();
}
