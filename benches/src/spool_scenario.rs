//! The `spool` scenario: the spool alone (no network), fsync = always.
//! Closed-loop appends from concurrent appenders give throughput and ack
//! latency per (appenders, record size, records per call), each ÷ the raw
//! 1 MiB write + fdatasync MB/s of the same file system measured once,
//! first; every row is measured `--repeat` times and summarised as
//! min / median / max. Open-loop appends at fixed rates give ack latency
//! next to the ideal raw group commit at the same load.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::baseline::{self, DiskBaseline};
use crate::filesystem::FileSystem;
use crate::measure::{div, median_index, Head, Latency, PercentileCurve, Plots, Spread};
use crate::progress::Progress;
use crate::spool;

/// Version of the JSON layout (bump on incompatible changes). 2: a row's
/// figures moved into `runs` (one per repetition) and `summary`.
pub const JSON_SCHEMA: u32 = 2;

/// Records per call and appenders of the open-loop rows.
const AT_RATE_RECORD: usize = 1024;
const AT_RATE_APPENDERS: usize = 8;

#[derive(clap::Args, Debug, Clone)]
pub struct SpoolArgs {
    #[command(flatten)]
    pub out: crate::args::Output,
    /// Numbers of concurrent appenders to try.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8, 64])]
    pub appenders: Vec<usize>,
    /// Record sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = [128usize, 1024, 65536])]
    pub sizes: Vec<usize>,
    /// Records per append call to try (1: one call per record, as a naive
    /// client; 64: a datagram's worth, as the daemon hands them over).
    /// Calls of more than one record are tried for records of at most
    /// 1 KiB only.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 64])]
    pub batches: Vec<usize>,
    /// Seconds per measurement (row).
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Measure every row (appenders x size x batch) this many times, one
    /// after the other: the table shows the median with [min–max], the
    /// JSON keeps every repetition and their min / median / max. The raw
    /// disk baseline is measured once; the open-loop rows once, the half
    /// of peak taken from the median peak.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Seconds for the raw disk baseline (half 1 MiB writes, half 4 KiB).
    #[arg(long, default_value_t = 4.0)]
    pub baseline_seconds: f64,
    /// Instead of the table: ack latency at these fixed rates (records/s,
    /// 1 KiB records, 8 appenders, open loop).
    #[arg(long, value_delimiter = ',')]
    pub latency_at: Vec<f64>,
    /// Skip the open-loop row at half of the peak that follows the table.
    #[arg(long)]
    pub no_half_peak: bool,
}

/// The raw disk of the same run.
#[derive(Debug, Clone, Serialize)]
pub struct RawBaseline {
    pub disk: DiskBaseline,
    pub fdatasync_latency: Latency,
}

/// One closed-loop row: its repetitions and their spread.
#[derive(Debug, Clone, Serialize)]
pub struct SpoolRow {
    pub appenders: usize,
    pub record_bytes: usize,
    /// Records per append call.
    pub batch: usize,
    pub summary: RowSummary,
    pub runs: Vec<RowRun>,
}

/// One closed-loop measurement (a repetition of a row).
#[derive(Debug, Clone, Serialize)]
pub struct RowRun {
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    /// MB/s ÷ raw 1 MiB write + fdatasync MB/s.
    pub per_raw_1mib: f64,
    /// From each call to its ack.
    pub ack_latency: Latency,
}

/// A row's repetitions as min / median / max.
#[derive(Debug, Clone, Serialize)]
pub struct RowSummary {
    pub runs: usize,
    pub records_per_sec: Spread,
    pub mb_per_sec: Spread,
    pub per_raw_1mib: Spread,
    pub ack_p50_us: Spread,
    pub ack_p99_us: Spread,
}

impl RowSummary {
    fn of(runs: &[RowRun]) -> RowSummary {
        let spread = |f: fn(&RowRun) -> f64| Spread::of(&runs.iter().map(f).collect::<Vec<_>>());
        RowSummary {
            runs: runs.len(),
            records_per_sec: spread(|r| r.records_per_sec),
            mb_per_sec: spread(|r| r.mb_per_sec),
            per_raw_1mib: spread(|r| r.per_raw_1mib),
            ack_p50_us: spread(|r| r.ack_latency.p50_us as f64),
            ack_p99_us: spread(|r| r.ack_latency.p99_us as f64),
        }
    }
}

/// One open-loop measurement: the spool's ack latency at `rate`, from
/// each record's due time, and the ideal raw group commit at the same load.
#[derive(Debug, Clone, Serialize)]
pub struct AtRateRow {
    pub rate: f64,
    pub appenders: usize,
    pub record_bytes: usize,
    pub ack_latency: Latency,
    pub ideal_group_commit: Latency,
    /// Spool p99 ÷ ideal p99, and ÷ the closed-loop 4 KiB fdatasync p99.
    pub p99_per_ideal_p99: f64,
    pub p99_per_fdatasync_p99: f64,
}

/// The whole report (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct SpoolReport {
    #[serde(flatten)]
    pub head: Head,
    pub file_system: FileSystem,
    pub fdatasync_is_free: bool,
    pub seconds: f64,
    /// Repetitions of every closed-loop row.
    pub repeat: usize,
    /// Measured once, before the rows.
    pub baseline: RawBaseline,
    pub rows: Vec<SpoolRow>,
    pub at_rate: Vec<AtRateRow>,
    /// Ack latency by percentile, one curve per row (closed and open loop;
    /// of a repeated row, its repetition of median records/s).
    pub plots: Plots,
}

impl SpoolArgs {
    fn validate(&self) -> Result<(), String> {
        let positive = |x: f64| x > 0.0 && x.is_finite();
        if !positive(self.seconds) || !positive(self.baseline_seconds) {
            return Err("--seconds and --baseline-seconds must be more than 0".into());
        }
        if self.repeat == 0 {
            return Err("--repeat must be at least 1".into());
        }
        if self.latency_at.iter().any(|&r| !positive(r)) {
            return Err("--latency-at rates must be more than 0".into());
        }
        let none_zero = |v: &[usize]| !v.is_empty() && !v.contains(&0);
        if self.latency_at.is_empty()
            && !(none_zero(&self.appenders) && none_zero(&self.sizes) && none_zero(&self.batches))
        {
            return Err(
                "--appenders, --sizes and --batches must list numbers of at least 1".into(),
            );
        }
        Ok(())
    }
}

/// `sluice-bench spool`.
pub fn main(a: &SpoolArgs) -> ExitCode {
    let report = match run(a) {
        Ok(r) => r,
        Err(e) => return crate::args::fail("spool", e),
    };
    if let Err(e) = a.out.save(&report, &report.head, &report.plots) {
        return crate::args::fail("spool", e);
    }
    ExitCode::SUCCESS
}

/// Runs the scenario, printing each row as it is measured.
pub fn run(a: &SpoolArgs) -> Result<SpoolReport, String> {
    a.validate()?;
    let head = Head::now("spool", JSON_SCHEMA);
    let (file_system, work) = crate::filesystem::workplace(&a.out.dir, "spool")?;
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    // With the progress line shown, the tables are printed at the end (a
    // line printed under it would be torn); without, row by row.
    let progress = Progress::new("spool", false);
    let mut out = Output {
        live: progress.is_hidden(),
        held: Vec::new(),
    };
    let raw = progress
        .timed("raw disk baseline", a.baseline_seconds, || {
            baseline::disk_detailed(
                work.path(),
                Duration::from_secs_f64(a.baseline_seconds),
                Duration::from_millis(200),
            )
        })
        .map_err(|e| io("the disk baseline", e))?;
    let base = RawBaseline {
        disk: raw.figures,
        fdatasync_latency: Latency::of(&raw.sync_latency),
    };
    print_baseline(&mut out, &file_system, &base);

    let d = Duration::from_secs_f64(a.seconds);
    let mut plots = Plots::default();
    let mut rows = Vec::new();
    let mut at_rate = Vec::new();
    if a.latency_at.is_empty() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| io("a tokio runtime", e))?;
        let runs = if a.repeat == 1 {
            String::new()
        } else {
            format!(
                ", {} runs each: medians, [min–max] of records/s and ack p99",
                a.repeat
            )
        };
        out.line(format!(
            "\nspool, fsync = always ({} s per row{runs}; ÷ raw = MB/s ÷ the 1 MiB baseline above, measured once)",
            a.seconds
        ));
        out.line(header(a.repeat > 1));
        let plan: Vec<(usize, usize, usize)> = a
            .sizes
            .iter()
            .flat_map(|&size| {
                a.appenders.iter().flat_map(move |&n| {
                    a.batches
                        .iter()
                        .filter(move |&&b| b == 1 || size <= 1024)
                        .map(move |&b| (size, n, b))
                })
            })
            .collect();
        for (k, &(size, appenders, batch)) in plan.iter().enumerate() {
            let mut runs = Vec::with_capacity(a.repeat);
            let mut hists = Vec::with_capacity(a.repeat);
            for rep in 0..a.repeat {
                let again = if a.repeat == 1 {
                    String::new()
                } else {
                    format!(", run {} of {}", rep + 1, a.repeat)
                };
                let what = format!(
                    "row {} of {}: {appenders} x {size} B, {batch}/call{again}",
                    k + 1,
                    plan.len()
                );
                let r = progress.timed(&what, a.seconds, || {
                    rt.block_on(spool::peak(work.path(), appenders, size, batch, d))
                });
                runs.push(RowRun {
                    records_per_sec: r.records_per_sec,
                    mb_per_sec: r.mb_per_sec,
                    per_raw_1mib: div(r.mb_per_sec, base.disk.mb_per_sec_1mib),
                    ack_latency: Latency::of(&r.ack_latency),
                });
                hists.push(r.ack_latency);
            }
            let row = SpoolRow {
                appenders,
                record_bytes: size,
                batch,
                summary: RowSummary::of(&runs),
                runs,
            };
            out.line(row_line(&row));
            // One curve per row, so that the picture stays readable: the
            // repetition of median records/s stands for the row.
            let m = median_index(&row.runs, |x| x.records_per_sec).unwrap_or(0);
            let of = if a.repeat == 1 {
                String::new()
            } else {
                format!(" (run {} of {})", m + 1, a.repeat)
            };
            plots.latency.push(PercentileCurve::of(
                format!("{appenders} x {size} B, {batch}/call{of}"),
                &hists[m],
            ));
            rows.push(row);
        }
        // Ack latency at half of the peak of one record per call, 1 KiB,
        // 8 appenders: a load the spool carries, where latency means
        // something.
        let half = rows.iter().find(|r| {
            r.record_bytes == AT_RATE_RECORD && r.appenders == AT_RATE_APPENDERS && r.batch == 1
        });
        if let (Some(peak), false) = (half, a.no_half_peak) {
            let median = if a.repeat == 1 { "" } else { "median " };
            out.line(format!(
                "\nack latency at half of {median}peak ({AT_RATE_RECORD} B, {AT_RATE_APPENDERS} appenders, open loop, once):"
            ));
            let rate = peak.summary.records_per_sec.median / 2.0;
            let row = progress.timed("at half of peak", 2.0 * a.seconds, || {
                latency_row(work.path(), &base, rate, d, &mut plots)
            })?;
            out.line(at_rate_line(&row, &base));
            at_rate.push(row);
        }
    } else {
        out.line(format!(
            "\nspool ack latency at fixed rates ({AT_RATE_RECORD} B, {AT_RATE_APPENDERS} appenders, open loop, {} s each):",
            a.seconds
        ));
        for &rate in &a.latency_at {
            let what = format!("at {rate:.0} records/s");
            let row = progress.timed(&what, 2.0 * a.seconds, || {
                latency_row(work.path(), &base, rate, d, &mut plots)
            })?;
            out.line(at_rate_line(&row, &base));
            at_rate.push(row);
        }
    }
    progress.finish();
    for l in out.held {
        println!("{l}");
    }
    Ok(SpoolReport {
        head,
        fdatasync_is_free: file_system.sync_is_free(),
        file_system,
        seconds: a.seconds,
        repeat: a.repeat,
        baseline: base,
        rows,
        at_rate,
        plots,
    })
}

/// Where the table's lines go: printed at once, or held until the
/// progress line is gone.
struct Output {
    live: bool,
    held: Vec<String>,
}

impl Output {
    fn line(&mut self, l: String) {
        if self.live {
            println!("{l}");
        } else {
            self.held.push(l);
        }
    }
}

fn print_baseline(out: &mut Output, fs: &FileSystem, b: &RawBaseline) {
    out.line(format!(
        "baseline (measured once) on {}: {}",
        fs.path.display(),
        fs.describe()
    ));
    out.line(format!(
        "  1 MiB write+fdatasync   {:>10.1} MB/s",
        b.disk.mb_per_sec_1mib
    ));
    out.line(format!(
        "  4 KiB append+fdatasync  {:>10.0} /s",
        b.disk.syncs_per_sec_4kib
    ));
    out.line(format!(
        "  4 KiB fdatasync latency  p50 {} us, p99 {} us",
        b.fdatasync_latency.p50_us, b.fdatasync_latency.p99_us
    ));
    if let Some(w) = fs.warning() {
        out.line(format!("  WARNING: {w}"));
    }
}

/// Widths of the records/s and ack p99 columns: wider when repeated, to
/// fit `median [min–max]`.
fn widths(repeated: bool) -> (usize, usize) {
    if repeated {
        (26, 24)
    } else {
        (12, 9)
    }
}

fn header(repeated: bool) -> String {
    let (rate_w, p99_w) = widths(repeated);
    format!(
        "{:>9} {:>8} {:>6} | {:>rate_w$} {:>9} {:>8} | {:>9} {:>p99_w$}",
        "appenders", "record", "batch", "records/s", "MB/s", "÷ raw", "ack p50", "ack p99"
    )
}

fn row_line(r: &SpoolRow) -> String {
    let s = &r.summary;
    let (rate_w, p99_w) = widths(s.runs > 1);
    format!(
        "{:>9} {:>7}B {:>6} | {:>rate_w$} {:>9.1} {:>7.2}x | {:>7.0}us {:>w$}us",
        r.appenders,
        r.record_bytes,
        r.batch,
        s.records_per_sec.show(0),
        s.mb_per_sec.median,
        s.per_raw_1mib.median,
        s.ack_p50_us.median,
        s.ack_p99_us.show(0),
        w = p99_w - 2
    )
}

fn at_rate_line(row: &AtRateRow, base: &RawBaseline) -> String {
    format!(
        "{:>9.0} rec/s | spool ack p50 {:>6} us p99 {:>7} us | ideal raw group commit \
         p50 {:>6} us p99 {:>7} us | p99 ÷ ideal {:>5.2}x, ÷ closed-loop fdatasync p99 ({} us) {:>6.2}x",
        row.rate,
        row.ack_latency.p50_us,
        row.ack_latency.p99_us,
        row.ideal_group_commit.p50_us,
        row.ideal_group_commit.p99_us,
        row.p99_per_ideal_p99,
        base.fdatasync_latency.p99_us,
        row.p99_per_fdatasync_p99
    )
}

/// Spool ack latency at `rate` (1 KiB, 8 appenders, open loop) next to the
/// ideal raw group commit at the same load, measured right after it.
fn latency_row(
    dir: &Path,
    base: &RawBaseline,
    rate: f64,
    d: Duration,
    plots: &mut Plots,
) -> Result<AtRateRow, String> {
    let h = spool::at_rate_histogram(dir, AT_RATE_APPENDERS, AT_RATE_RECORD, rate, d);
    let ideal = baseline::ideal_group_commit_histogram(dir, rate, AT_RATE_RECORD, d)
        .map_err(|e| format!("the ideal group commit: {e}"))?;
    let row = AtRateRow {
        rate,
        appenders: AT_RATE_APPENDERS,
        record_bytes: AT_RATE_RECORD,
        ack_latency: Latency::of(&h),
        ideal_group_commit: Latency::of(&ideal),
        p99_per_ideal_p99: div(
            h.value_at_quantile(0.99) as f64,
            ideal.value_at_quantile(0.99).max(1) as f64,
        ),
        p99_per_fdatasync_p99: div(
            h.value_at_quantile(0.99) as f64,
            base.fdatasync_latency.p99_us.max(1) as f64,
        ),
    };
    plots.latency.push(PercentileCurve::of(
        format!("spool at {rate:.0}/s (open loop)"),
        &h,
    ));
    plots.latency.push(PercentileCurve::of(
        format!("ideal group commit at {rate:.0}/s"),
        &ideal,
    ));
    Ok(row)
}
