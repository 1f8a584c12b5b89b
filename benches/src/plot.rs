//! Pictures of a report's `plots`: latency by percentile and throughput
//! over time, as SVG files.
//!
//! SVG only: a PNG needs its text rasterised, which needs a font file and a
//! font renderer; SVG text is drawn by whatever shows the picture, so this
//! builds with no system library and no embedded font.
//!
//! Both pictures use plain linear coordinates with tick positions computed
//! here: the latency picture's axes are transformed before plotting (x to
//! HdrHistogram's percentile scale, y to log10 when the values span more
//! than two decades), which keeps one code path for every axis kind.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::prelude::*;

use crate::measure::{PercentileCurve, Plots, TimeSeries};

/// Picture size in pixels.
const SIZE: (u32, u32) = (1000, 620);

/// Line colours: the Okabe-Ito palette, told apart by colour-blind readers
/// too (black last: it reads as an axis).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(240, 228, 66),
    RGBColor(0, 0, 0),
];

/// Draws `<dir>/<stem>-latency.svg` (latency by percentile) and
/// `<dir>/<stem>-throughput.svg` (msgs/s over time) from `plots`, with
/// `title` (say the scenario and the machine) on top of each. A picture
/// whose list is empty (or whose lines have no points) is skipped. Creates
/// `dir`; returns the files written.
pub fn draw(plots: &Plots, title: &str, dir: &Path, stem: &str) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
    let latency = latency_chart(&plots.latency);
    let throughput = throughput_chart(&plots.throughput);
    if latency.is_none() && throughput.is_none() {
        return Ok(written);
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    for (chart, kind) in [(latency, "latency"), (throughput, "throughput")] {
        if let Some(chart) = chart {
            let path = dir.join(format!("{stem}-{kind}.svg"));
            render(&chart, title, &path)?;
            written.push(path);
        }
    }
    Ok(written)
}

/// One axis: its range, where its ticks go and how they read.
struct Axis {
    lo: f64,
    hi: f64,
    /// Labelled ticks (and grid lines).
    ticks: Vec<f64>,
    /// Unlabelled grid lines (the 2..9 of a log decade).
    minor: Vec<f64>,
    /// Positions are log10 of the values.
    log: bool,
    /// Tick labels, by position (positions are in plotted coordinates).
    label: fn(f64) -> String,
    desc: String,
}

/// An axis as plotters sees it: linear over lo..hi, with our ticks and
/// labels (plotters' own f64 axis picks its ticks itself).
impl Ranged for &Axis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let span = (self.hi - self.lo).max(1e-12);
        let f = (v - self.lo) / span;
        limit.0 + (f * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.minor.clone()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

impl ValueFormatter<f64> for &Axis {
    fn format_ext(&self, v: &f64) -> String {
        (self.label)(*v)
    }
}

/// What one picture shows, in plotted coordinates.
struct Chart {
    caption: &'static str,
    x: Axis,
    y: Axis,
    lines: Vec<(String, Vec<(f64, f64)>)>,
    legend: SeriesLabelPosition,
}

/// Where percentile `p` (0..100) goes on the x axis: log10(1 / (1 - p)),
/// so 90 is at 1, 99 at 2, 99.9 at 3 ... and the tail gets room.
fn percentile_x(p: f64) -> f64 {
    let rest = (1.0 - p / 100.0).max(1e-12);
    -rest.log10()
}

/// The label of x tick `k` (an integer decade, or the max column).
fn percentile_label(x: f64) -> String {
    let k = x.round() as i32;
    match k {
        0 => "0".to_owned(),
        1 => "90".to_owned(),
        k => format!("99.{}", "9".repeat((k - 2) as usize))
            .trim_end_matches('.')
            .to_owned(),
    }
}

fn latency_chart(curves: &[PercentileCurve]) -> Option<Chart> {
    let curves: Vec<&PercentileCurve> = curves
        .iter()
        .filter(|c| {
            c.points
                .iter()
                .any(|&(p, v)| p.is_finite() && v.is_finite())
        })
        .collect();
    if curves.is_empty() {
        return None;
    }
    // The decades shown: up to the finest percentile of any curve (at
    // least 99), then one column more for the max (percentile 100).
    let finest = curves
        .iter()
        .flat_map(|c| c.points.iter())
        .filter(|&&(p, v)| p < 100.0 && v.is_finite())
        .map(|&(p, _)| percentile_x(p))
        .fold(0.0f64, f64::max);
    let decades = (finest - 1e-9).ceil().max(2.0);
    // The max sits half a decade past the last one (so that the tick
    // labels can tell it from a decade by its position alone).
    let max_x = decades + 0.5;
    let values: Vec<f64> = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|&(_, v)| v))
        .filter(|v| v.is_finite())
        .collect();
    let y = value_axis(&values, "latency (µs)");
    let log = y.log;
    let lines = curves
        .iter()
        .map(|c| {
            let points = c
                .points
                .iter()
                .filter(|&&(p, v)| p.is_finite() && v.is_finite())
                .map(|&(p, v)| {
                    let x = if p >= 100.0 {
                        max_x
                    } else {
                        percentile_x(p.max(0.0)).min(decades)
                    };
                    (x, if log { log_of(v, y.lo) } else { v })
                })
                .collect();
            (c.label.clone(), points)
        })
        .collect();
    let mut ticks: Vec<f64> = (0..=decades as i32).map(f64::from).collect();
    ticks.push(max_x);
    fn label(x: f64) -> String {
        if x.fract() != 0.0 {
            "max".to_owned()
        } else {
            percentile_label(x)
        }
    }
    Some(Chart {
        caption: "Latency by percentile",
        x: Axis {
            lo: 0.0,
            hi: max_x,
            ticks,
            minor: Vec::new(),
            log: false,
            label,
            desc: "percentile (%)".to_owned(),
        },
        y,
        lines,
        legend: SeriesLabelPosition::UpperLeft,
    })
}

fn throughput_chart(series: &[TimeSeries]) -> Option<Chart> {
    let finite = |&&(t, v): &&(f64, f64)| t.is_finite() && v.is_finite();
    let series: Vec<&TimeSeries> = series
        .iter()
        .filter(|s| s.points.iter().any(|p| finite(&p)))
        .collect();
    if series.is_empty() {
        return None;
    }
    let points = || series.iter().flat_map(|s| s.points.iter()).filter(finite);
    let t_hi = points().map(|p| p.0).fold(f64::MIN, f64::max);
    let t_lo = points().map(|p| p.0).fold(f64::MAX, f64::min).min(0.0);
    let v_hi = points().map(|p| p.1).fold(0.0f64, f64::max);
    let (x_lo, x_hi, x_ticks) = nice_ticks(t_lo, t_hi.max(t_lo + 1e-3));
    // Throughput from zero: a dip reads as what it is.
    let (_, y_hi, y_ticks) = nice_ticks(0.0, (v_hi * 1.05).max(1.0));
    Some(Chart {
        caption: "Throughput over time",
        x: Axis {
            lo: x_lo,
            hi: x_hi,
            ticks: x_ticks,
            minor: Vec::new(),
            log: false,
            label: plain_label,
            desc: "time since the measurement began (s)".to_owned(),
        },
        y: Axis {
            lo: 0.0,
            hi: y_hi,
            ticks: y_ticks,
            minor: Vec::new(),
            log: false,
            label: plain_label,
            desc: "messages/s".to_owned(),
        },
        lines: series
            .iter()
            .map(|s| {
                let pts = s.points.iter().filter(finite).copied().collect();
                (s.label.clone(), pts)
            })
            .collect(),
        legend: SeriesLabelPosition::LowerRight,
    })
}

/// A value axis for `values`: log10 when they span more than two decades
/// (positions are then log10 of the value), linear from zero otherwise.
fn value_axis(values: &[f64], desc: &str) -> Axis {
    let hi = values.iter().copied().fold(0.0f64, f64::max).max(1e-9);
    let lo_pos = values
        .iter()
        .copied()
        .filter(|&v| v > 0.0)
        .fold(f64::MAX, f64::min)
        .min(hi);
    if hi / lo_pos > 100.0 {
        let lo = lo_pos.log10().floor();
        let top = hi.log10().ceil().max(lo + 1.0);
        let ticks = (lo as i32..=top as i32).map(f64::from).collect();
        let minor = (lo as i32..top as i32)
            .flat_map(|d| (2..10).map(move |m| f64::from(d) + f64::from(m).log10()))
            .collect();
        Axis {
            lo,
            hi: top,
            ticks,
            minor,
            log: true,
            label: log_label,
            desc: format!("{desc}, log scale"),
        }
    } else {
        let (lo, hi, ticks) = nice_ticks(0.0, hi * 1.05);
        Axis {
            lo,
            hi,
            ticks,
            minor: Vec::new(),
            log: false,
            label: plain_label,
            desc: desc.to_owned(),
        }
    }
}

/// Where `v` goes on a log axis whose bottom is the decade `lo` (zero and
/// below sit on the bottom).
fn log_of(v: f64, lo: f64) -> f64 {
    if v > 0.0 {
        v.log10().max(lo)
    } else {
        lo
    }
}

fn log_label(pos: f64) -> String {
    plain_label(10f64.powf(pos.round()))
}

/// Compact numbers: 950, 1.2k, 12k, 1.5M.
fn plain_label(v: f64) -> String {
    let a = v.abs();
    let (scaled, suffix) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let s = if scaled.fract().abs() < 1e-9 {
        format!("{scaled:.0}")
    } else if scaled.abs() >= 10.0 {
        format!("{scaled:.1}")
    } else {
        format!("{scaled:.2}")
    };
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    };
    format!("{s}{suffix}")
}

/// Ticks at a round step (1, 2 or 5 times a power of ten) covering lo..hi,
/// about six of them; returns the widened range and the ticks.
fn nice_ticks(lo: f64, hi: f64) -> (f64, f64, Vec<f64>) {
    let span = (hi - lo).max(1e-9);
    let raw = span / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).floor() * step;
    let last = (hi / step).ceil() * step;
    let n = ((last - first) / step).round() as i64;
    let ticks = (0..=n).map(|i| first + i as f64 * step).collect();
    (first, last, ticks)
}

fn render(chart: &Chart, title: &str, path: &Path) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", path.display());
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(title, ("sans-serif", 26).into_font().color(&BLACK))
        .map_err(|e| err(&e))?;
    let mut c = ChartBuilder::on(&root)
        .caption(chart.caption, ("sans-serif", 21))
        .margin(16)
        .margin_right(36)
        .x_label_area_size(58)
        .y_label_area_size(84)
        .build_cartesian_2d(&chart.x, &chart.y)
        .map_err(|e| err(&e))?;
    c.configure_mesh()
        .x_desc(chart.x.desc.as_str())
        .y_desc(chart.y.desc.as_str())
        .label_style(("sans-serif", 17))
        .axis_desc_style(("sans-serif", 18))
        .bold_line_style(BLACK.mix(0.18))
        .light_line_style(BLACK.mix(0.06))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (label, points)) in chart.lines.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        c.draw_series(LineSeries::new(
            points.iter().copied(),
            colour.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label(label.as_str())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(3)));
    }
    c.configure_series_labels()
        .position(chart.legend.clone())
        .margin(12)
        .label_font(("sans-serif", 17))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// `sluice-bench plot REPORT.json [--out DIR]`: the pictures of a saved
/// report, drawn again from its `plots`.
#[derive(clap::Args, Debug)]
pub struct PlotArgs {
    /// A report written by a scenario's --json.
    pub report: PathBuf,
    /// Where to write the pictures (default: beside the report). Files are
    /// named after the report: REPORT-latency.svg, REPORT-throughput.svg.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs `sluice-bench plot`.
pub fn main(a: &PlotArgs) -> ExitCode {
    match redraw(&a.report, a.out.as_deref()) {
        Ok(files) => {
            for f in files {
                println!("wrote {}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice-bench plot: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads a report and draws its pictures; an error when it has no `plots`
/// or nothing in them to draw.
pub fn redraw(report: &Path, out: Option<&Path>) -> Result<Vec<PathBuf>, String> {
    let text = std::fs::read_to_string(report)
        .map_err(|e| format!("reading {}: {e}", report.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not JSON: {e}", report.display()))?;
    let plots = json.get("plots").ok_or_else(|| {
        format!(
            "{} has no `plots` field: it was written before reports carried their pictures \
             (run the scenario again with --json)",
            report.display()
        )
    })?;
    let plots: Plots = serde_json::from_value(plots.clone())
        .map_err(|e| format!("the `plots` of {} do not read: {e}", report.display()))?;
    let dir = match out {
        Some(d) => d.to_path_buf(),
        None => report
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
    };
    let stem = report
        .file_stem()
        .map_or_else(|| "report".into(), |s| s.to_string_lossy().into_owned());
    let files = draw(&plots, &title_of(&json), &dir, &stem)?;
    if files.is_empty() {
        return Err(format!(
            "the `plots` of {} are empty: nothing to draw",
            report.display()
        ));
    }
    Ok(files)
}

/// A picture title from a report's JSON: its scenario and the machine it
/// ran on, as far as the report says.
pub fn title_of(report: &serde_json::Value) -> String {
    let scenario = report
        .get("scenario")
        .and_then(|s| s.as_str())
        .unwrap_or("sluice-bench");
    let mut title = format!("sluice-bench {scenario}");
    if let Some(host) = report.get("host") {
        title.push_str(&format!(" — {}", machine_of(host)));
    }
    title
}

/// "2 CPUs, Linux 6.1.0" from a report's `host`.
fn machine_of(host: &serde_json::Value) -> String {
    let mut parts = Vec::new();
    if let Some(model) = host.get("cpu_model").and_then(|m| m.as_str()) {
        parts.push(model.to_owned());
    }
    if let Some(n) = host.get("cpus").and_then(|n| n.as_u64()) {
        parts.push(format!("{n} CPU{}", if n == 1 { "" } else { "s" }));
    }
    if let Some(k) = host.get("kernel").and_then(|k| k.as_str()) {
        if !k.is_empty() {
            parts.push(format!("Linux {k}"));
        }
    }
    if parts.is_empty() {
        "unknown machine".to_owned()
    } else {
        parts.join(", ")
    }
}

/// A title for a report about to be written: the scenario and this machine.
pub fn title(scenario: &str, host: &crate::measure::Host) -> String {
    let host = serde_json::to_value(host).unwrap_or_default();
    format!("sluice-bench {scenario} — {}", machine_of(&host))
}

/// `--plot DIR` of a scenario just run: its pictures, titled with the
/// scenario and the machine, named after the scenario; prints each file.
pub fn draw_report(
    plots: &Plots,
    scenario: &str,
    host: &crate::measure::Host,
    dir: &Path,
) -> Result<(), String> {
    for f in draw(plots, &title(scenario, host), dir, scenario)? {
        println!("wrote {}", f.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_positions_follow_the_nines() {
        assert!((percentile_x(0.0)).abs() < 1e-12);
        assert!((percentile_x(90.0) - 1.0).abs() < 1e-9);
        assert!((percentile_x(99.0) - 2.0).abs() < 1e-9);
        assert!((percentile_x(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(percentile_label(0.0), "0");
        assert_eq!(percentile_label(1.0), "90");
        assert_eq!(percentile_label(2.0), "99");
        assert_eq!(percentile_label(3.0), "99.9");
        assert_eq!(percentile_label(5.0), "99.999");
    }

    #[test]
    fn value_axis_goes_log_past_two_decades() {
        let lin = value_axis(&[10.0, 900.0], "x");
        assert!(!lin.log);
        assert_eq!(lin.lo, 0.0);
        assert!(lin.hi >= 900.0);
        let log = value_axis(&[10.0, 1500.0], "x");
        assert!(log.log);
        assert_eq!((log.lo, log.hi), (1.0, 4.0));
        assert_eq!(log.ticks, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(log_label(3.0), "1k");
        assert_eq!(log_label(2.0), "100");
        assert_eq!(log_label(5.0), "100k");
    }

    #[test]
    fn nice_ticks_are_round_and_cover() {
        let (lo, hi, t) = nice_ticks(0.0, 9.3);
        assert_eq!((lo, hi), (0.0, 10.0));
        assert_eq!(t, vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let (_, hi, t) = nice_ticks(0.0, 123_000.0);
        assert!(hi >= 123_000.0 && t.len() <= 8 && t.len() >= 4, "{t:?}");
        assert_eq!(plain_label(1_500_000.0), "1.5M");
        assert_eq!(plain_label(20_000.0), "20k");
        assert_eq!(plain_label(950.0), "950");
    }
}
