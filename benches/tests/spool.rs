//! `sluice-bench spool`, run briefly through the real binary: one tiny
//! closed-loop row and one open-loop rate; the JSON report holds sane
//! figures and its ratio is the row's MB/s ÷ the raw baseline's.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

mod support;
use support::{num, ordered};

const LIMIT: Duration = Duration::from_secs(60);

fn run(dir: &Path, args: &[&str]) -> (Value, String) {
    let mut all = vec!["--baseline-seconds", "0.4", "--seconds", "0.3"];
    all.extend_from_slice(args);
    support::report("spool", dir, &all, LIMIT)
}

#[test]
fn one_tiny_row() {
    let dir = tempfile::tempdir().unwrap();
    let (r, table) = run(
        dir.path(),
        &["--appenders", "2", "--sizes", "1024", "--batches", "1"],
    );
    assert_eq!(r["scenario"], "spool");
    assert!(!r["file_system"]["kind"].as_str().unwrap().is_empty());
    let raw = num(&r, "baseline.disk.mb_per_sec_1mib");
    assert!(raw > 0.0);
    assert!(num(&r, "baseline.disk.syncs_per_sec_4kib") > 0.0);

    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(num(row, "appenders"), 2.0);
    assert_eq!(num(row, "record_bytes"), 1024.0);
    assert_eq!(num(row, "batch"), 1.0);
    let records = num(row, "records_per_sec");
    let mb = num(row, "mb_per_sec");
    assert!(records > 0.0, "{row}");
    assert!((mb - records * 1024.0 / 1e6).abs() <= 1e-6 * mb, "{row}");
    let ratio = num(row, "per_raw_1mib");
    assert!((ratio - mb / raw).abs() <= 1e-9 * ratio.max(1.0), "{row}");
    ordered(&row["ack_latency"], "ack latency");

    // No 8-appender row: no half-of-peak row either.
    assert!(r["at_rate"].as_array().unwrap().is_empty());
    let curves = r["plots"]["latency"].as_array().unwrap();
    assert_eq!(curves.len(), 1);
    assert!(curves[0]["points"].as_array().unwrap().len() >= 2);
    assert!(table.contains("records/s"), "{table}");
    assert!(table.contains(&format!("{:.2}x", ratio)), "{table}");
}

#[test]
fn latency_at_a_fixed_rate() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = run(dir.path(), &["--latency-at", "400"]);
    assert!(r["rows"].as_array().unwrap().is_empty());
    let at = r["at_rate"].as_array().unwrap();
    assert_eq!(at.len(), 1);
    assert_eq!(num(&at[0], "rate"), 400.0);
    ordered(&at[0]["ack_latency"], "spool at rate");
    ordered(&at[0]["ideal_group_commit"], "ideal group commit");
    // 400/s for 0.3 s: every due record measured.
    assert_eq!(num(&at[0], "ack_latency.count"), 120.0);
    assert!(num(&at[0], "p99_per_ideal_p99") > 0.0);
    // Spool and ideal curves.
    assert_eq!(r["plots"]["latency"].as_array().unwrap().len(), 2);
}
