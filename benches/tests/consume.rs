//! The `consume` scenario, run briefly through the real binary (which
//! starts its daemon from itself, on loopback): the JSON report must hold
//! sane numbers, and every group must have received every message
//! published to it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The whole run's bound: a hung daemon or consumer fails the test instead
/// of hanging it.
const LIMIT: Duration = Duration::from_secs(180);

fn run(dir: &Path, args: &[&str]) -> Value {
    let json = dir.join("report.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .arg("consume")
        .args(["--dir", dir.to_str().unwrap()])
        .args(["--json", json.to_str().unwrap()])
        .args(["--baseline-seconds", "0.1"])
        .args(["--drain-timeout", "60"])
        .args(args)
        .env_remove("SLUICE_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sluice-bench");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "sluice-bench consume {args:?} took more than {LIMIT:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "sluice-bench consume {args:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(stdout.contains("published/s"), "no table:\n{stdout}");
    assert!(
        stdout.contains("publish -> delivery"),
        "no latency:\n{stdout}"
    );
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

fn ordered(l: &Value, what: &str) {
    let p = ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"].map(|k| num(l, k));
    assert!(p[0] > 0.0, "{what}: {p:?}");
    assert!(
        p.windows(2).all(|w| w[0] <= w[1]),
        "{what}: percentiles ordered: {p:?}"
    );
    assert!(num(l, "count") > 0.0, "{what}: {l:#}");
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
        assert!(
            distinct >= published,
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
    assert_eq!(r["scenario"], "consume");
    assert_eq!(num(&r, "errors"), 0.0, "{r:#}");
    assert_eq!(num(&r, "groups_short"), 0.0, "{r:#}");
    assert!(num(&r, "host.cpus") >= 1.0);

    // A: ingest alone.
    let a = &r["ingest_alone"];
    assert_eq!(num(a, "groups"), 0.0);
    assert!(num(a, "published_per_sec") > 0.0, "{a:#}");
    assert_eq!(num(a, "published"), num(a, "sent"), "every message acked");
    ordered(&a["ack_latency"], "ingest alone ack latency");
    assert!(num(a, "daemon.durable_acks") > 0.0, "{a:#}");

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
