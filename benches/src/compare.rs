//! `sluice-bench compare A.json B.json` (also `sluice-bench --compare A B`):
//! the ratios of two saved runs, figure by figure.
//!
//! Reports differ by scenario, so this knows none of them: it walks both
//! JSON trees side by side and pairs every number present in both. Arrays
//! of rows are paired by what names a row (its label, its size, its
//! number of appenders ...) when every row has such a field, else by
//! position, so that a row added or removed in one run does not shift the
//! rest against each other.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;
use serde_json::Value;

/// Which way is good is not known in general; these names say it.
const LOWER_HELP: &str = "Which direction is better is not known in general. A figure whose \
name ends in _us, _ms, _per_msg or seconds_per_million, or contains latency or p99, is taken as \
lower is better (latency, CPU per message); one whose name ends in _per_sec or per_second as \
higher is better (throughput). A min, median, max or mean takes the direction of the figure it \
belongs to (acked_per_sec.median). Changes past --threshold are marked `better` or `worse` for \
those, and `changed` for the rest. A report's `summary` (over repetitions) is printed first.";

/// Leaf names that are a statistic of the figure above them: they take
/// its direction.
const STATISTICS: [&str; 6] = ["min", "median", "max", "mean", "avg", "value"];

/// Fields never compared: the pictures, how the run was set up, and when
/// and where (they are not results).
const SKIPPED: [&str; 8] = [
    "plots",
    "config",
    "host",
    "schema",
    "scenario",
    "started_unix",
    "version",
    "first_error",
];

/// Fields that name a row of an array rather than measure it, tried (all
/// of those that every row has, together) to pair rows across the runs.
const ROW_KEYS: [&str; 16] = [
    "label",
    "name",
    "part",
    "phase",
    "path",
    "mode",
    "kind",
    "size",
    "sizes",
    "record_bytes",
    "bytes",
    "appenders",
    "producers",
    "groups",
    "batch",
    "streams",
];

#[derive(clap::Args, Debug, Clone)]
#[command(after_help = LOWER_HELP)]
pub struct CompareArgs {
    /// The reference report (`--json` of any scenario).
    pub a: PathBuf,
    /// The report compared with it; ratios are B ÷ A.
    pub b: PathBuf,
    /// Also write the comparison as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Mark changes larger than this, in percent.
    #[arg(long, default_value_t = 5.0)]
    pub threshold: f64,
    /// Print only the figures that changed by more than --threshold.
    #[arg(long)]
    pub changed: bool,
    /// Also print figures equal in both runs.
    #[arg(long)]
    pub all: bool,
    /// Only figures whose path contains one of these (e.g.
    /// --only summary,latency).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

impl CompareArgs {
    /// The defaults, for `sluice-bench --compare A B`.
    pub fn files(a: PathBuf, b: PathBuf) -> CompareArgs {
        CompareArgs {
            a,
            b,
            json: None,
            threshold: 5.0,
            changed: false,
            all: false,
            only: Vec::new(),
        }
    }
}

/// Which way a figure should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Lower,
    Higher,
}

/// What a figure's name says about its direction (see LOWER_HELP).
pub fn better_of(name: &str) -> Option<Better> {
    let n = name.to_ascii_lowercase();
    if n.ends_with("_us")
        || n.ends_with("_ms")
        || n.ends_with("_per_msg")
        || n.ends_with("seconds_per_million")
        || n.contains("latency")
        || n.contains("p99")
    {
        Some(Better::Lower)
    } else if n.ends_with("_per_sec") || n.ends_with("per_second") {
        Some(Better::Higher)
    } else {
        None
    }
}

/// One number present in both runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Where: `latency.p99_us`, `runs[appenders=8,size=1024].mb_per_sec`.
    pub path: String,
    pub a: f64,
    pub b: f64,
    /// B ÷ A; none when A is zero.
    pub ratio: Option<f64>,
    pub better: Option<Better>,
}

/// Both trees walked.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Walk {
    pub rows: Vec<Row>,
    /// Numbers (or subtrees holding numbers) only in A / only in B.
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
}

/// Pairs the numbers of `a` and `b`. Equal numbers are left out unless
/// `all`.
pub fn walk(a: &Value, b: &Value, all: bool) -> Walk {
    let mut w = Walk::default();
    pair(a, b, "", None, all, &mut w);
    // The summary over repetitions is what a reader wants first.
    w.rows.sort_by_key(|r| !r.path.starts_with("summary"));
    w
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Whether a subtree holds a number (only those are worth naming when
/// missing on one side).
fn has_number(v: &Value) -> bool {
    match v {
        Value::Number(_) => true,
        Value::Array(x) => x.iter().any(has_number),
        Value::Object(m) => m
            .iter()
            .any(|(k, v)| !SKIPPED.contains(&k.as_str()) && has_number(v)),
        _ => false,
    }
}

/// `better` is the direction of the figure the values sit under, from the
/// last object key on the path (arrays pass it down; a statistic such as
/// `median` takes its parent's).
fn pair(a: &Value, b: &Value, path: &str, better: Option<Better>, all: bool, w: &mut Walk) {
    match (a, b) {
        (Value::Object(ma), Value::Object(mb)) => {
            for (k, va) in ma {
                if SKIPPED.contains(&k.as_str()) {
                    continue;
                }
                let p = join(path, k);
                let inherited = better.filter(|_| STATISTICS.contains(&k.as_str()));
                let dir = better_of(k).or(inherited);
                match mb.get(k) {
                    Some(vb) if !vb.is_null() => pair(va, vb, &p, dir, all, w),
                    _ if has_number(va) => w.only_in_a.push(p),
                    _ => {}
                }
            }
            for (k, vb) in mb {
                let missing = ma.get(k).is_none_or(Value::is_null);
                if missing && !SKIPPED.contains(&k.as_str()) && has_number(vb) {
                    w.only_in_b.push(join(path, k));
                }
            }
        }
        (Value::Array(xa), Value::Array(xb)) => pair_arrays(xa, xb, path, better, all, w),
        (Value::Number(na), Value::Number(nb)) => {
            let (Some(x), Some(y)) = (na.as_f64(), nb.as_f64()) else {
                return;
            };
            if x == y && !all {
                return;
            }
            w.rows.push(Row {
                path: path.to_owned(),
                a: x,
                b: y,
                ratio: (x != 0.0).then(|| y / x),
                better,
            });
        }
        // A number on one side only, or of another type on the other.
        (Value::Number(_), _) => w.only_in_a.push(path.to_owned()),
        (_, Value::Number(_)) => w.only_in_b.push(path.to_owned()),
        _ => {}
    }
}

fn pair_arrays(
    xa: &[Value],
    xb: &[Value],
    path: &str,
    better: Option<Better>,
    all: bool,
    w: &mut Walk,
) {
    if let Some(keys) = row_keys(xa, xb) {
        let id = |v: &Value| {
            keys.iter()
                .map(|k| format!("{k}={}", scalar(&v[k.as_str()])))
                .collect::<Vec<_>>()
                .join(",")
        };
        for ra in xa {
            let ida = id(ra);
            let p = format!("{path}[{ida}]");
            match xb.iter().find(|rb| id(rb) == ida) {
                Some(rb) => pair(ra, rb, &p, better, all, w),
                None => w.only_in_a.push(p),
            }
        }
        for rb in xb {
            let idb = id(rb);
            if !xa.iter().any(|ra| id(ra) == idb) {
                w.only_in_b.push(format!("{path}[{idb}]"));
            }
        }
        return;
    }
    for (i, (va, vb)) in xa.iter().zip(xb).enumerate() {
        pair(va, vb, &format!("{path}[{i}]"), better, all, w);
    }
    for i in xb.len()..xa.len() {
        w.only_in_a.push(format!("{path}[{i}]"));
    }
    for i in xa.len()..xb.len() {
        w.only_in_b.push(format!("{path}[{i}]"));
    }
}

/// The fields that name the rows of two arrays of objects: the ROW_KEYS
/// every row of both has as a string or number, if together they tell
/// the rows of each array apart and pair at least one row across them.
fn row_keys(xa: &[Value], xb: &[Value]) -> Option<Vec<String>> {
    let rows: Vec<&Value> = xa.iter().chain(xb).collect();
    if rows.is_empty() || !rows.iter().all(|r| r.is_object()) {
        return None;
    }
    let keys: Vec<String> = ROW_KEYS
        .iter()
        .filter(|k| {
            rows.iter()
                .all(|r| matches!(r.get(**k), Some(Value::String(_) | Value::Number(_))))
        })
        .map(|k| (*k).to_owned())
        .collect();
    if keys.is_empty() {
        return None;
    }
    let ids = |x: &[Value]| -> Vec<String> {
        x.iter()
            .map(|r| {
                keys.iter()
                    .map(|k| scalar(&r[k.as_str()]))
                    .collect::<Vec<_>>()
                    .join("\u{1f}")
            })
            .collect()
    };
    let (ia, ib) = (ids(xa), ids(xb));
    let unique = |v: &[String]| {
        let mut s = v.to_vec();
        s.sort();
        s.dedup();
        s.len() == v.len()
    };
    let overlap = ia.iter().any(|i| ib.contains(i));
    (unique(&ia) && unique(&ib) && overlap).then_some(keys)
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The change of a row past `threshold` percent, and what it means.
fn verdict(r: &Row, threshold: f64) -> Option<(f64, &'static str)> {
    let ratio = r.ratio?;
    let change = (ratio - 1.0) * 100.0;
    if change.abs() <= threshold || !change.is_finite() {
        return None;
    }
    let word = match (r.better, change > 0.0) {
        (Some(Better::Higher), true) | (Some(Better::Lower), false) => "better",
        (Some(_), _) => "worse",
        (None, _) => "changed",
    };
    Some((change, word))
}

/// A figure as printed: integers whole, others to four significant
/// digits or so.
fn num(v: f64) -> String {
    let a = v.abs();
    if v.fract() == 0.0 && a < 1e15 {
        format!("{v:.0}")
    } else if a >= 1000.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.4}")
    }
}

/// What `compare` writes with --json.
#[derive(Debug, Serialize)]
struct JsonOut<'a> {
    a: &'a Path,
    b: &'a Path,
    scenario_a: Option<&'a str>,
    scenario_b: Option<&'a str>,
    threshold_percent: f64,
    rows: Vec<JsonRow<'a>>,
    only_in_a: &'a [String],
    only_in_b: &'a [String],
}

#[derive(Debug, Serialize)]
struct JsonRow<'a> {
    path: &'a str,
    a: f64,
    b: f64,
    ratio: Option<f64>,
    change_percent: Option<f64>,
    better: Option<Better>,
    /// "better", "worse", "changed" past the threshold; none within it.
    verdict: Option<&'static str>,
}

fn load(path: &Path) -> Result<Value, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    if !v.is_object() {
        return Err(format!(
            "{} is not a report (no JSON object)",
            path.display()
        ));
    }
    Ok(v)
}

/// Runs `sluice-bench compare`.
pub fn main(args: &CompareArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-bench compare: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &CompareArgs) -> Result<(), String> {
    let (a, b) = (load(&args.a)?, load(&args.b)?);
    let field = |v: &Value, k: &str| v.get(k).map(scalar);
    for k in ["scenario", "schema"] {
        let (fa, fb) = (field(&a, k), field(&b, k));
        if fa != fb {
            eprintln!(
                "sluice-bench compare: warning: the reports differ in {k}: A has {}, B has {} \
                 (figures may not mean the same)",
                fa.as_deref().unwrap_or("none"),
                fb.as_deref().unwrap_or("none")
            );
        }
    }
    let mut w = walk(&a, &b, args.all);
    if !args.only.is_empty() {
        let keep = |p: &String| args.only.iter().any(|o| p.contains(o.as_str()));
        w.rows.retain(|r| keep(&r.path));
        w.only_in_a.retain(keep);
        w.only_in_b.retain(keep);
    }
    print(args, &a, &b, &w);
    if let Some(path) = &args.json {
        let out = JsonOut {
            a: &args.a,
            b: &args.b,
            scenario_a: a.get("scenario").and_then(Value::as_str),
            scenario_b: b.get("scenario").and_then(Value::as_str),
            threshold_percent: args.threshold,
            rows: w
                .rows
                .iter()
                .map(|r| JsonRow {
                    path: &r.path,
                    a: r.a,
                    b: r.b,
                    ratio: r.ratio.filter(|x| x.is_finite()),
                    change_percent: r.ratio.map(|x| (x - 1.0) * 100.0).filter(|x| x.is_finite()),
                    better: r.better,
                    verdict: verdict(r, args.threshold).map(|v| v.1),
                })
                .collect(),
            only_in_a: &w.only_in_a,
            only_in_b: &w.only_in_b,
        };
        crate::measure::write_json(path, &out)?;
    }
    Ok(())
}

fn print(args: &CompareArgs, a: &Value, b: &Value, w: &Walk) {
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let what = |v: &Value| {
        let s = v.get("scenario").and_then(Value::as_str).unwrap_or("?");
        match v.get("started_unix").and_then(Value::as_u64) {
            Some(t) => format!("{s}, started at unix time {t}"),
            None => s.to_owned(),
        }
    };
    println!("A: {} ({})", args.a.display(), what(a));
    println!("B: {} ({})", args.b.display(), what(b));
    let rows: Vec<&Row> = w
        .rows
        .iter()
        .filter(|r| !args.changed || verdict(r, args.threshold).is_some())
        .collect();
    if rows.is_empty() {
        println!(
            "\nno {} in both runs",
            if args.changed {
                format!("figure changed by more than {}%", args.threshold)
            } else {
                "figure that differs".to_owned()
            }
        );
    } else {
        let width = rows
            .iter()
            .map(|r| r.path.chars().count())
            .max()
            .unwrap_or(4);
        let width = width.clamp(4, 64);
        println!(
            "\n{:<width$}  {:>14}  {:>14}  {:>7}",
            "figure", "A", "B", "B÷A"
        );
        for r in rows {
            let ratio = r
                .ratio
                .map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"));
            let mut line = format!(
                "{:<width$}  {:>14}  {:>14}  {:>7}",
                r.path,
                num(r.a),
                num(r.b),
                ratio
            );
            if let Some((change, word)) = verdict(r, args.threshold) {
                let hint = match r.better {
                    Some(Better::Lower) => " (lower is better)",
                    Some(Better::Higher) => " (higher is better)",
                    None => "",
                };
                let mark = format!("{change:+.1}% {word}{hint}");
                let code = match word {
                    "better" => "32",
                    "worse" => "31",
                    _ => "33",
                };
                if colour {
                    line.push_str(&format!("  \x1b[{code}m{mark}\x1b[0m"));
                } else {
                    line.push_str(&format!("  {mark}"));
                }
            }
            println!("{line}");
        }
    }
    for (side, list) in [("A", &w.only_in_a), ("B", &w.only_in_b)] {
        if !list.is_empty() {
            println!("\nonly in {side}: {}", list.join(", "));
        }
    }
    println!(
        "\nmarked: changes beyond ±{}%; lower is better for *_us, *_ms, *_per_msg, \
         *seconds_per_million, *latency*, *p99*; higher for *_per_sec",
        args.threshold
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row<'a>(w: &'a Walk, path: &str) -> &'a Row {
        w.rows
            .iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("no row {path} in {:#?}", w.rows))
    }

    #[test]
    fn pairs_nested_numbers_and_skips_the_rest() {
        let a = json!({
            "scenario": "ingest", "schema": 1, "started_unix": 10,
            "config": { "producers": 8 },
            "plots": { "latency": [{ "label": "x", "points": [[0.0, 1.0]] }], "throughput": [] },
            "acked_per_sec": 100.0,
            "latency": { "p99_us": 900, "count": 5 },
            "mode": "closed",
            "gone": 3,
        });
        let b = json!({
            "scenario": "ingest", "schema": 1, "started_unix": 20,
            "config": { "producers": 4 },
            "plots": { "latency": [{ "label": "x", "points": [[0.0, 2.0]] }], "throughput": [] },
            "acked_per_sec": 200.0,
            "latency": { "p99_us": 450, "count": 5 },
            "mode": "open",
            "new": { "x": 1 },
        });
        let w = walk(&a, &b, false);
        assert_eq!(row(&w, "acked_per_sec").ratio, Some(2.0));
        assert_eq!(row(&w, "acked_per_sec").better, Some(Better::Higher));
        assert_eq!(row(&w, "latency.p99_us").ratio, Some(0.5));
        assert_eq!(row(&w, "latency.p99_us").better, Some(Better::Lower));
        // Equal, config, plots, times: not rows.
        let paths: Vec<&str> = w.rows.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["acked_per_sec", "latency.p99_us"]);
        assert_eq!(w.only_in_a, ["gone"]);
        assert_eq!(w.only_in_b, ["new"]);
        // With `all`, the equal count too.
        assert_eq!(walk(&a, &b, true).rows.len(), 3);
    }

    #[test]
    fn arrays_pair_by_what_names_their_rows() {
        let a = json!({ "runs": [
            { "appenders": 1, "size": 128, "mb_per_sec": 10.0 },
            { "appenders": 8, "size": 128, "mb_per_sec": 40.0 },
            { "appenders": 64, "size": 128, "mb_per_sec": 50.0 },
        ]});
        // B lost the first row and reordered: pairing by position would
        // compare 8 appenders with 64.
        let b = json!({ "runs": [
            { "appenders": 64, "size": 128, "mb_per_sec": 55.0 },
            { "appenders": 8, "size": 128, "mb_per_sec": 20.0 },
        ]});
        let w = walk(&a, &b, false);
        assert_eq!(
            row(&w, "runs[size=128,appenders=8].mb_per_sec").ratio,
            Some(0.5)
        );
        assert_eq!(
            row(&w, "runs[size=128,appenders=64].mb_per_sec").ratio,
            Some(1.1)
        );
        assert_eq!(w.only_in_a, ["runs[size=128,appenders=1]"]);
        assert!(w.only_in_b.is_empty());
    }

    #[test]
    fn statistics_take_their_figures_direction_and_summary_comes_first() {
        let a = json!({
            "runs": [{ "x": 1 }],
            "summary": {
                "acked_per_sec": { "min": 1.0, "median": 2.0 },
                "latency": { "count": 1, "p50_us": 5 },
            },
        });
        let b = json!({
            "runs": [{ "x": 2 }],
            "summary": {
                "acked_per_sec": { "min": 2.0, "median": 3.0 },
                "latency": { "count": 2, "p50_us": 6 },
            },
        });
        let w = walk(&a, &b, false);
        let m = row(&w, "summary.acked_per_sec.median");
        assert_eq!(m.better, Some(Better::Higher));
        assert_eq!(
            row(&w, "summary.latency.p50_us").better,
            Some(Better::Lower)
        );
        // A count under `latency` is not a latency.
        assert_eq!(row(&w, "summary.latency.count").better, None);
        assert!(w.rows[0].path.starts_with("summary"));
        assert_eq!(w.rows.last().unwrap().path, "runs[0].x");
    }

    #[test]
    fn arrays_without_names_pair_by_position() {
        let a = json!({ "xs": [1, 2, 3], "rows": [{ "v": 1 }, { "v": 2 }] });
        let b = json!({ "xs": [2, 2], "rows": [{ "v": 3 }, { "v": 2 }] });
        let w = walk(&a, &b, false);
        assert_eq!(row(&w, "xs[0]").ratio, Some(2.0));
        assert_eq!(row(&w, "rows[0].v").ratio, Some(3.0));
        assert_eq!(w.rows.len(), 2);
        assert_eq!(w.only_in_a, ["xs[2]"]);
    }

    #[test]
    fn labels_that_do_not_tell_rows_apart_fall_back_to_position() {
        let a = json!([{ "label": "x", "v": 1 }, { "label": "x", "v": 2 }]);
        let b = json!([{ "label": "x", "v": 2 }, { "label": "x", "v": 4 }]);
        let w = walk(&a, &b, false);
        assert_eq!(row(&w, "[1].v").ratio, Some(2.0));
    }

    #[test]
    fn zero_in_a_has_no_ratio_and_directions_read_from_names() {
        let w = walk(&json!({ "errors": 0 }), &json!({ "errors": 3 }), false);
        assert_eq!(row(&w, "errors").ratio, None);
        assert_eq!(better_of("p50_us"), Some(Better::Lower));
        assert_eq!(better_of("fsync_ms"), Some(Better::Lower));
        assert_eq!(better_of("seconds_per_million"), Some(Better::Lower));
        assert_eq!(better_of("ack_latency_p50"), Some(Better::Lower));
        assert_eq!(better_of("acked_per_sec"), Some(Better::Higher));
        assert_eq!(better_of("count"), None);
        assert_eq!(better_of("daemon_cpu_us_per_msg"), Some(Better::Lower));
        let r = Row {
            path: "p".into(),
            a: 100.0,
            b: 110.0,
            ratio: Some(1.1),
            better: Some(Better::Lower),
        };
        assert_eq!(verdict(&r, 5.0).map(|v| v.1), Some("worse"));
        assert_eq!(verdict(&r, 20.0), None);
        let r = Row { better: None, ..r };
        assert_eq!(verdict(&r, 5.0).map(|v| v.1), Some("changed"));
    }
}
