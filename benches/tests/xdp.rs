//! The `xdp` scenario, run briefly through the real binary (root: it makes
//! network namespaces, loads an XDP program and starts daemons in them):
//! every run must be in the JSON report with sane numbers. Without root it
//! skips (and under `CI=true` a skip fails).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v:#}"))
}

#[test]
fn bench_xdp_reports_every_run() {
    if !sluice_testkit::testnet::require_root("bench_xdp") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("xdp.json");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .arg("xdp")
        .args(["--seconds", "0.5", "--sizes", "64", "--part", "all"])
        .args(["--producers", "2"])
        .args(["--dir", dir.path().to_str().unwrap()])
        .args(["--json", json.to_str().unwrap()])
        .output()
        .expect("run sluice-bench");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "sluice-bench xdp failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    for table in ["datapath:", "durable:", "targets", "machine:"] {
        assert!(stdout.contains(table), "no {table:?} in:\n{stdout}");
    }
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["scenario"], "xdp");
    assert!(num(&r["host"], "cpus") >= 1.0);

    // Datapath: every sender × receiver at max rate, and the paced
    // sendmmsg sender into each receiver.
    let runs = r["datapath"].as_array().expect("datapath runs");
    let want = [
        ("sendmmsg", "socket", false),
        ("sendmmsg", "af_xdp", false),
        ("af_xdp", "socket", false),
        ("af_xdp", "af_xdp", false),
        ("sendmmsg", "socket", true),
        ("sendmmsg", "af_xdp", true),
    ];
    assert_eq!(runs.len(), want.len(), "{runs:#?}");
    for (sender, receiver, paced) in want {
        let run = runs
            .iter()
            .find(|x| {
                x["sender"] == sender
                    && x["receiver"] == receiver
                    && x["offered_pps"].is_number() == paced
            })
            .unwrap_or_else(|| panic!("no run {sender} -> {receiver} (paced {paced})"));
        let what = format!("{sender} -> {receiver} (paced {paced})");
        assert_eq!(num(run, "size"), 64.0);
        assert!(num(run, "received") > 0.0, "{what}: {run:#}");
        assert!(num(run, "window_received") > 0.0, "{what}: {run:#}");
        assert!(num(run, "received_per_sec") > 0.0, "{what}: {run:#}");
        assert!(num(run, "sent_per_sec") > 0.0, "{what}: {run:#}");
        assert!(
            num(run, "receiver_cpu_us_per_packet") > 0.0,
            "{what}: {run:#}"
        );
        assert!(
            num(run, "sender_cpu_us_per_packet") > 0.0,
            "{what}: {run:#}"
        );
        // Nothing arrives that was not sent (the namespaces are ours).
        assert!(num(run, "received") <= num(run, "sent"), "{what}: {run:#}");
        if receiver == "af_xdp" {
            let mode = run["receiver_mode"].as_str().unwrap_or_default();
            assert!(mode.contains("copy"), "{what}: {mode}");
            assert_eq!(num(run, "invalid_frames"), 0.0, "{what}: {run:#}");
        }
    }
    // The backlog drains: every receiver, packets taken and timed.
    let drains = r["datapath_drain"].as_array().expect("drain runs");
    assert_eq!(drains.len(), 2, "{drains:#?}");
    for receiver in ["socket", "af_xdp"] {
        let d = drains
            .iter()
            .find(|d| d["receiver"] == receiver)
            .unwrap_or_else(|| panic!("no drain into {receiver}"));
        assert!(num(d, "received") > 0.0, "{receiver}: {d:#}");
        assert!(
            num(d, "receiver_cpu_us_per_packet") > 0.0,
            "{receiver}: {d:#}"
        );
    }

    let targets = r["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 5, "{targets:#?}");
    for t in targets {
        assert!(num(t, "ratio") > 0.0, "{t:#}");
        assert!(t["pass"].is_boolean());
    }

    // Durable: socket, AF_XDP, and AF_XDP with the producers' TX ring.
    let runs = r["durable"].as_array().expect("durable runs");
    assert_eq!(runs.len(), 3, "{runs:#?}");
    for path in ["socket", "af_xdp", "af_xdp_tx"] {
        let run = runs
            .iter()
            .find(|x| x["path"] == path)
            .unwrap_or_else(|| panic!("no durable run {path}"));
        assert_eq!(num(run, "errors"), 0.0, "{path}: {run:#}");
        let acked = num(run, "acked");
        assert!(acked > 0.0, "{path}: {run:#}");
        assert_eq!(acked, num(run, "sent"), "{path}: every message acked");
        // The daemon counted the same durable acks as the producers.
        assert_eq!(
            num(run, "daemon_durable_acks_total"),
            acked,
            "{path}: {run:#}"
        );
        assert!(num(run, "window_acked") > 0.0, "{path}: {run:#}");
        assert!(num(run, "acked_per_sec") > 0.0, "{path}: {run:#}");
        assert!(num(run, "datagrams_per_sec") > 0.0, "{path}: {run:#}");
        assert!(num(run, "daemon_cpu_us_per_msg") > 0.0, "{path}: {run:#}");
        assert!(num(&run["daemon"], "durable_acks") > 0.0, "{path}: {run:#}");
        if path == "socket" {
            assert_eq!(num(run, "xdp_frames_per_sec"), 0.0, "{path}: {run:#}");
        } else {
            // The data came off the AF_XDP queue, and its thread was timed.
            assert!(num(run, "xdp_frames_per_sec") > 0.0, "{path}: {run:#}");
            assert!(
                num(run, "xsk_thread_cpu_us_per_packet") > 0.0,
                "{path}: {run:#}"
            );
        }
        if path == "af_xdp_tx" {
            // The producers' data went through the ring, not the kernel:
            // the kernel sent far fewer UDP datagrams than the daemon got.
            assert!(
                num(run, "producer_kernel_udp_out_per_sec") < num(run, "datagrams_per_sec") / 2.0,
                "{path}: {run:#}"
            );
        }
    }
    assert!(
        took < Duration::from_secs(60),
        "the short run took {took:?}"
    );
    eprintln!("bench_xdp: {took:.1?}");
}
