//! `sluice-bench baseline`, run briefly through the real binary: the JSON
//! report parses and holds sane figures (all positive, spreads ordered,
//! percentiles ordered), the file system is named, and the table is there.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

mod support;
use support::num;

const LIMIT: Duration = Duration::from_secs(60);

fn run(dir: &Path, args: &[&str]) -> (Value, String) {
    support::report("baseline", dir, args, LIMIT)
}

/// min <= median <= max, all positive.
fn spread(s: &Value, what: &str) -> f64 {
    let (lo, mid, hi) = (num(s, "min"), num(s, "median"), num(s, "max"));
    assert!(lo > 0.0 && lo <= mid && mid <= hi, "{what}: {s}");
    mid
}

#[test]
fn three_short_repetitions() {
    let dir = tempfile::tempdir().unwrap();
    let (r, table) = run(
        dir.path(),
        &[
            "--seconds",
            "0.2",
            "--repeat",
            "3",
            "--udp-sizes",
            "128,1452",
        ],
    );
    assert_eq!(r["scenario"], "baseline");
    assert_eq!(num(&r, "repeat"), 3.0);
    assert!(num(&r, "host.cpus") >= 1.0);
    let fs = &r["file_system"];
    assert!(fs["kind"].as_str().is_some_and(|k| !k.is_empty()), "{fs}");
    assert!(fs["magic"].as_str().unwrap().starts_with("0x"), "{fs}");
    assert!(!fs["mount_point"].as_str().unwrap().is_empty(), "{fs}");
    assert_eq!(
        r["fdatasync_is_free"].as_bool().unwrap(),
        fs["kind"] == "tmpfs"
    );

    let runs = r["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 3);
    for run in runs {
        assert!(num(run, "disk.mb_per_sec_1mib") > 0.0, "{run}");
        assert!(num(run, "disk.syncs_per_sec_4kib") > 0.0, "{run}");
        let l = &run["fdatasync_latency"];
        let p = ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"].map(|k| num(l, k));
        assert!(p[0] > 0.0, "{l}");
        assert!(p.windows(2).all(|w| w[0] <= w[1]), "ordered: {l}");
        let udp = run["udp"].as_array().unwrap();
        assert_eq!(udp.len(), 2);
        assert_eq!(num(&udp[1], "datagram_bytes"), 1452.0);
        for u in udp {
            assert!(num(u, "datagrams_per_sec") > 0.0, "{u}");
        }
    }

    let s = &r["summary"];
    spread(&s["disk_mb_per_sec_1mib"], "1 MiB MB/s");
    spread(&s["fdatasync_per_sec_4kib"], "4 KiB fdatasync/s");
    let p50 = spread(&s["fdatasync_p50_us"], "p50");
    let p99 = spread(&s["fdatasync_p99_us"], "p99");
    assert!(p50 <= p99, "{s}");
    for u in s["udp"].as_array().unwrap() {
        spread(&u["datagrams_per_sec"], "UDP datagrams/s");
    }
    // The summary is of the runs: the median 1 MiB figure is one of them.
    let med = num(s, "disk_mb_per_sec_1mib.median");
    assert!(runs.iter().any(|x| num(x, "disk.mb_per_sec_1mib") == med));

    // Pictures: the fdatasync latency curve (percentiles rising, up to
    // 100) and fdatasync/s over time per repetition.
    let curves = r["plots"]["latency"].as_array().unwrap();
    assert_eq!(curves.len(), 1);
    let points = curves[0]["points"].as_array().unwrap();
    assert!(points.len() >= 2, "{points:?}");
    assert_eq!(points.last().unwrap()[0].as_f64(), Some(100.0));
    assert!(points
        .windows(2)
        .all(|w| w[0][0].as_f64() < w[1][0].as_f64() && w[0][1].as_f64() <= w[1][1].as_f64()));
    assert_eq!(r["plots"]["throughput"].as_array().unwrap().len(), 3);

    for what in [
        "1 MiB write + fdatasync",
        "4 KiB append + fdatasync",
        "UDP loopback",
    ] {
        assert!(table.contains(what), "no {what} in:\n{table}");
    }
}

#[test]
fn refuses_nonsense() {
    for args in [
        &["--repeat", "0"][..],
        &["--seconds", "0"],
        &["--udp-sizes", "0"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
            .arg("baseline")
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("must"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .args(["baseline", "--dir", "/no/such/folder", "--seconds", "0.1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/folder"));
}
