//! `sluice-bench spool`, run briefly through the real binary: one tiny
//! closed-loop row, once and repeated, and one open-loop rate; the JSON
//! report holds sane figures, its ratio is each run's MB/s ÷ the raw
//! baseline's, and a row's summary is the spread of its runs.

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
    let runs = sane_runs(row, 1024.0, raw);
    assert_eq!(runs.len(), 1);
    // One run: its figures are the summary's min, median and max.
    let run = &runs[0];
    let ratio = num(run, "per_raw_1mib");
    for (s, v) in [
        ("records_per_sec", num(run, "records_per_sec")),
        ("per_raw_1mib", ratio),
        ("ack_p99_us", num(run, "ack_latency.p99_us")),
    ] {
        for m in ["min", "median", "max"] {
            assert_eq!(num(row, &format!("summary.{s}.{m}")), v, "{row}");
        }
    }

    // No 8-appender row: no half-of-peak row either.
    assert!(r["at_rate"].as_array().unwrap().is_empty());
    let curves = r["plots"]["latency"].as_array().unwrap();
    assert_eq!(curves.len(), 1);
    assert!(curves[0]["points"].as_array().unwrap().len() >= 2);
    assert!(table.contains("records/s"), "{table}");
    assert!(table.contains(&format!("{:.2}x", ratio)), "{table}");
    assert!(!table.contains('['), "one run: no ranges\n{table}");
}

/// A row's runs: each sane, its MB/s from its records/s, its ratio to the
/// raw baseline; the summary counts them and holds their spread.
fn sane_runs(row: &Value, record_bytes: f64, raw: f64) -> Vec<Value> {
    let runs = row["runs"].as_array().expect("runs").clone();
    assert_eq!(num(row, "summary.runs"), runs.len() as f64, "{row}");
    for run in &runs {
        let records = num(run, "records_per_sec");
        let mb = num(run, "mb_per_sec");
        assert!(records > 0.0, "{run}");
        assert!(
            (mb - records * record_bytes / 1e6).abs() <= 1e-6 * mb,
            "{run}"
        );
        let ratio = num(run, "per_raw_1mib");
        assert!((ratio - mb / raw).abs() <= 1e-9 * ratio.max(1.0), "{run}");
        ordered(&run["ack_latency"], "ack latency");
    }
    let figures = [
        ("records_per_sec", "records_per_sec"),
        ("mb_per_sec", "mb_per_sec"),
        ("per_raw_1mib", "per_raw_1mib"),
        ("ack_p50_us", "ack_latency.p50_us"),
        ("ack_p99_us", "ack_latency.p99_us"),
    ];
    for (s, of_run) in figures {
        let v: Vec<f64> = runs.iter().map(|r| num(r, of_run)).collect();
        let [min, median, max] =
            ["min", "median", "max"].map(|m| num(row, &format!("summary.{s}.{m}")));
        assert!(min <= median && median <= max, "{s}: {min} {median} {max}");
        assert_eq!(
            min,
            v.iter().copied().fold(f64::INFINITY, f64::min),
            "{s}: {v:?}"
        );
        assert_eq!(
            max,
            v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            "{s}: {v:?}"
        );
    }
    runs
}

#[test]
fn a_repeated_row_keeps_its_runs_and_their_spread() {
    let dir = tempfile::tempdir().unwrap();
    let (r, table) = run(
        dir.path(),
        &[
            "--appenders",
            "1",
            "--sizes",
            "128",
            "--batches",
            "1",
            "--repeat",
            "2",
        ],
    );
    assert_eq!(num(&r, "repeat"), 2.0);
    let raw = num(&r, "baseline.disk.mb_per_sec_1mib");
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    let runs = sane_runs(row, 128.0, raw);
    assert_eq!(runs.len(), 2);
    // Of two runs the median is their mean.
    let rates: Vec<f64> = runs.iter().map(|r| num(r, "records_per_sec")).collect();
    let median = num(row, "summary.records_per_sec.median");
    assert!(
        (median - (rates[0] + rates[1]) / 2.0).abs() <= 1e-9 * median,
        "{row}"
    );
    // Still one curve for the row, named for the run it shows.
    let curves = r["plots"]["latency"].as_array().unwrap();
    assert_eq!(curves.len(), 1);
    assert!(
        curves[0]["label"].as_str().unwrap().contains("of 2)"),
        "{curves:?}"
    );
    assert!(table.contains("2 runs each"), "{table}");
    let line = table
        .lines()
        .find(|l| l.contains("128B"))
        .unwrap_or_else(|| panic!("no row line in\n{table}"));
    assert!(line.contains(&format!("{median:.0}")), "{line}");
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
