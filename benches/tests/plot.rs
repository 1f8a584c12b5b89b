//! The pictures: `plot::draw` on plots made here, and the binary's `plot`
//! subcommand on a report written here.

use std::path::Path;
use std::process::Command;

use hdrhistogram::Histogram;
use sluice_bench::measure::{PercentileCurve, Plots, TimeSeries};
use sluice_bench::plot;

/// Two latency curves (one a hundred times slower in its tail, so the y
/// axis goes log) and one throughput series.
fn sample() -> Plots {
    let mut fast = Histogram::<u64>::new(3).unwrap();
    let mut slow = Histogram::<u64>::new(3).unwrap();
    for i in 0..20_000u64 {
        fast.record(50 + i % 200).unwrap();
        slow.record(80 + (i * i) % 40_000).unwrap();
    }
    Plots {
        latency: vec![
            PercentileCurve::of("fast path", &fast),
            PercentileCurve::of("quic path", &slow),
        ],
        throughput: vec![TimeSeries {
            label: "acked msgs/s".into(),
            points: (1..=10)
                .map(|t| (t as f64 * 0.5, 100_000.0 + 5_000.0 * (t % 3) as f64))
                .collect(),
        }],
    }
}

/// The text of an SVG file, checked to be one.
fn svg(path: &Path) -> String {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let start = text.trim_start();
    let root = start.strip_prefix("<?xml").map_or(start, |rest| {
        rest[rest.find("?>").expect("xml decl") + 2..].trim_start()
    });
    assert!(
        root.starts_with("<svg"),
        "no <svg root in {}",
        path.display()
    );
    assert!(text.trim_end().ends_with("</svg>"), "unterminated svg");
    // Every element opened is closed: a pair has two '<', an empty element
    // one (the SVG backend writes no CDATA or comments, and escapes '<' in
    // text, so counting is enough to catch a truncated file).
    let angles = text.matches('<').count() - text.matches("<?").count();
    let pairs = text.matches("</").count();
    let empty = text.matches("/>").count();
    assert_eq!(angles, 2 * pairs + empty, "unbalanced tags");
    text
}

/// The text of the `<text>` elements, so that a check cannot pass on a
/// path's attributes.
fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_owned())
        })
        .collect()
}

#[test]
fn draw_writes_both_pictures_with_legend_and_axes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pictures/new");
    let files = plot::draw(&sample(), "ingest — test machine", &out, "run").unwrap();
    assert_eq!(
        files,
        vec![out.join("run-latency.svg"), out.join("run-throughput.svg")]
    );

    let lat = svg(&files[0]);
    let t = texts(&lat);
    for want in ["fast path", "quic path", "ingest — test machine"] {
        assert!(t.iter().any(|x| x == want), "{want:?} not in {t:?}");
    }
    assert!(t.iter().any(|x| x.starts_with("latency (µs)")), "{t:?}");
    assert!(t.iter().any(|x| x.starts_with("percentile")), "{t:?}");
    // The percentile ticks, and the y axis on a log scale (the slow curve
    // spans more than two decades).
    for want in ["0", "90", "99", "99.9", "99.99", "max"] {
        assert!(t.iter().any(|x| x == want), "tick {want:?} not in {t:?}");
    }
    assert!(t.iter().any(|x| x.contains("log scale")), "{t:?}");
    assert!(t.iter().any(|x| x == "10k"), "{t:?}");

    let thr = svg(&files[1]);
    let t = texts(&thr);
    assert!(t.iter().any(|x| x == "acked msgs/s"), "{t:?}");
    assert!(t.iter().any(|x| x == "messages/s"), "{t:?}");
    assert!(t.iter().any(|x| x.contains("(s)")), "{t:?}");
    // Lines are drawn: a polyline per series.
    assert!(thr.contains("<polyline"), "no line drawn");
    assert!(lat.matches("<polyline").count() >= 2, "two curves");
}

#[test]
fn empty_lists_draw_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = sample();
    p.throughput.clear();
    let files = plot::draw(&p, "t", dir.path(), "lat-only").unwrap();
    assert_eq!(files, vec![dir.path().join("lat-only-latency.svg")]);
    assert!(!dir.path().join("lat-only-throughput.svg").exists());

    let none = plot::draw(&Plots::default(), "t", &dir.path().join("never"), "x").unwrap();
    assert!(none.is_empty());
    assert!(!dir.path().join("never").exists(), "no folder for nothing");

    // A curve without points counts as nothing.
    let p = Plots {
        latency: vec![PercentileCurve {
            label: "empty".into(),
            points: vec![],
        }],
        throughput: vec![],
    };
    assert!(plot::draw(&p, "t", dir.path(), "e").unwrap().is_empty());
}

#[test]
fn a_narrow_latency_range_stays_linear() {
    let dir = tempfile::tempdir().unwrap();
    let p = Plots {
        latency: vec![PercentileCurve {
            label: "steady".into(),
            points: vec![(0.0, 100.0), (50.0, 120.0), (99.0, 300.0), (100.0, 400.0)],
        }],
        throughput: vec![],
    };
    let files = plot::draw(&p, "t", dir.path(), "lin").unwrap();
    let t = texts(&svg(&files[0]));
    assert!(!t.iter().any(|x| x.contains("log scale")), "{t:?}");
    assert!(t.iter().any(|x| x == "max"), "{t:?}");
}

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .args(args)
        .output()
        .expect("run sluice-bench")
}

#[test]
fn plot_subcommand_redraws_a_saved_report() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("old-run.json");
    let json = serde_json::json!({
        "scenario": "ingest",
        "schema": 1,
        "host": { "cpus": 2, "kernel": "6.1.0-test" },
        "acked_per_sec": 12345.0,
        "plots": sample(),
    });
    std::fs::write(&report, serde_json::to_string(&json).unwrap()).unwrap();
    let out_dir = dir.path().join("svg");
    let out = bench(&[
        "plot",
        report.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "plot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for kind in ["latency", "throughput"] {
        let f = out_dir.join(format!("old-run-{kind}.svg"));
        assert!(stdout.contains(f.to_str().unwrap()), "{stdout}");
        let t = texts(&svg(&f));
        // The title says the scenario and the machine, from the report.
        assert!(
            t.iter()
                .any(|x| x.contains("ingest") && x.contains("2 CPUs") && x.contains("6.1.0-test")),
            "{t:?}"
        );
    }

    // Without --out: beside the report.
    let out = bench(&["plot", report.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(dir.path().join("old-run-latency.svg").exists());
}

#[test]
fn plot_subcommand_explains_a_report_without_plots() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("older.json");
    std::fs::write(&report, r#"{"scenario":"ingest","acked_per_sec":1.0}"#).unwrap();
    let out = bench(&["plot", report.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no `plots`"), "{err}");
    assert!(!dir.path().join("older-latency.svg").exists());

    let out = bench(&["plot", dir.path().join("missing.json").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.json"));
}

#[test]
fn odd_data_draws_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let p = Plots {
        latency: vec![
            // One point; all zero; a NaN among good points.
            PercentileCurve {
                label: "one".into(),
                points: vec![(100.0, 7.0)],
            },
            PercentileCurve {
                label: "zeros".into(),
                points: vec![(0.0, 0.0), (100.0, 0.0)],
            },
            PercentileCurve {
                label: "nan".into(),
                points: vec![(0.0, 1.0), (50.0, f64::NAN), (100.0, 5000.0)],
            },
        ],
        throughput: vec![TimeSeries {
            label: "single".into(),
            points: vec![(0.0, 0.0)],
        }],
    };
    let files = plot::draw(&p, "odd <&> data", dir.path(), "odd").unwrap();
    assert_eq!(files.len(), 2);
    for f in &files {
        let t = texts(&svg(f));
        // The title's markup characters are escaped, not taken as tags.
        assert!(t.iter().any(|x| x == "odd &lt;&amp;&gt; data"), "{t:?}");
    }
    let t = texts(&svg(&files[0]));
    for want in ["one", "zeros", "nan"] {
        assert!(t.iter().any(|x| x == want), "{want} not in {t:?}");
    }
}
