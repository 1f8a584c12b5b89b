//! The `baseline` scenario: the machine's own limits, which every other
//! scenario's figures are divided by: raw 1 MiB write + fdatasync MB/s and
//! 4 KiB append + fdatasync per second (and its latency) on the file system
//! of `--dir`, and datagrams per second of a plain UDP socket loop on
//! loopback. Repeated `--repeat` times, each figure as min/median/max.

use std::process::ExitCode;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::baseline::{self, DiskBaseline};
use crate::filesystem::FileSystem;
use crate::measure::{Head, Latency, PercentileCurve, Plots, Spread, TimeSeries};
use crate::progress::Progress;
use crate::udp_baseline::{self, UdpBaseline};

/// Version of the JSON layout (bump on incompatible changes).
pub const JSON_SCHEMA: u32 = 1;

#[derive(clap::Args, Debug, Clone)]
pub struct BaselineArgs {
    #[command(flatten)]
    pub out: crate::args::Output,
    /// Seconds for each disk figure (1 MiB loop, then 4 KiB loop) and for
    /// each UDP datagram size, per repetition.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// UDP datagram payload sizes, bytes (a small one, and the largest the
    /// producers send by default).
    #[arg(long, value_delimiter = ',', default_values_t = [128usize, 1452])]
    pub udp_sizes: Vec<usize>,
    /// Repetitions: every figure is then given as min / median / max.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
}

/// One repetition's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineRun {
    pub disk: DiskBaseline,
    /// The 4 KiB append + fdatasync loop's latency.
    pub fdatasync_latency: Latency,
    /// One per `--udp-sizes` entry.
    pub udp: Vec<UdpBaseline>,
}

/// Every figure over the repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineSummary {
    pub disk_mb_per_sec_1mib: Spread,
    pub fdatasync_per_sec_4kib: Spread,
    pub fdatasync_p50_us: Spread,
    pub fdatasync_p99_us: Spread,
    pub udp: Vec<UdpSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UdpSummary {
    pub datagram_bytes: usize,
    pub datagrams_per_sec: Spread,
    pub mb_per_sec: Spread,
}

/// The whole report (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct BaselineReport {
    #[serde(flatten)]
    pub head: Head,
    /// Where the disk figures were measured.
    pub file_system: FileSystem,
    /// fdatasync costs nothing on this file system (tmpfs): the disk
    /// figures are not a disk's.
    pub fdatasync_is_free: bool,
    pub seconds: f64,
    pub repeat: usize,
    pub runs: Vec<BaselineRun>,
    pub summary: BaselineSummary,
    /// 4 KiB fdatasync latency by percentile (all repetitions), and
    /// fdatasync/s over time (each repetition).
    pub plots: Plots,
}

impl BaselineArgs {
    fn validate(&self) -> Result<(), String> {
        if !(self.seconds > 0.0 && self.seconds.is_finite()) {
            return Err("--seconds must be more than 0".into());
        }
        if self.repeat == 0 {
            return Err("--repeat must be at least 1".into());
        }
        if self.udp_sizes.iter().any(|&s| s == 0 || s > 65_507) {
            return Err("--udp-sizes must be from 1 to 65507 bytes".into());
        }
        Ok(())
    }
}

/// Measures everything `repeat` times on `dir`'s file system and loopback.
pub fn run(a: &BaselineArgs) -> Result<BaselineReport, String> {
    a.validate()?;
    let head = Head::now("baseline", JSON_SCHEMA);
    let (file_system, work) = crate::filesystem::workplace(&a.out.dir, "baseline")?;
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let d = Duration::from_secs_f64(a.seconds);
    let progress = Progress::new("baseline", false);
    let mut runs = Vec::with_capacity(a.repeat);
    let mut all_syncs = Histogram::<u64>::new(3).expect("histogram");
    let mut plots = Plots::default();
    for k in 0..a.repeat {
        let round = if a.repeat > 1 {
            if progress.is_hidden() {
                eprintln!(
                    "sluice-bench baseline: repetition {} of {}",
                    k + 1,
                    a.repeat
                );
            }
            format!(", run {} of {}", k + 1, a.repeat)
        } else {
            String::new()
        };
        let disk = progress
            .timed(&format!("disk{round}"), 2.0 * a.seconds, || {
                baseline::disk_detailed(work.path(), 2 * d, Duration::from_millis(200))
            })
            .map_err(|e| io("the disk loops", e))?;
        let mut udp = Vec::with_capacity(a.udp_sizes.len());
        for &size in &a.udp_sizes {
            let what = format!("UDP {size} B{round}");
            // The loop's 100 ms warm-up comes on top.
            let u = progress.timed(&what, a.seconds + 0.1, || udp_baseline::udp_loop(size, d));
            udp.push(u.map_err(|e| io("the UDP loop", e))?);
        }
        all_syncs.add(&disk.sync_latency).ok();
        plots.throughput.push(TimeSeries {
            label: if a.repeat > 1 {
                format!("4 KiB fdatasync/s, run {}", k + 1)
            } else {
                "4 KiB fdatasync/s".into()
            },
            points: disk.syncs_per_sec_series,
        });
        runs.push(BaselineRun {
            disk: disk.figures,
            fdatasync_latency: Latency::of(&disk.sync_latency),
            udp,
        });
    }
    progress.finish();
    plots.latency.push(PercentileCurve::of(
        format!("4 KiB append + fdatasync ({})", file_system.kind),
        &all_syncs,
    ));
    let summary = summarise(&runs, &a.udp_sizes);
    Ok(BaselineReport {
        head,
        fdatasync_is_free: file_system.sync_is_free(),
        file_system,
        seconds: a.seconds,
        repeat: a.repeat,
        runs,
        summary,
        plots,
    })
}

fn summarise(runs: &[BaselineRun], sizes: &[usize]) -> BaselineSummary {
    let spread = |f: &dyn Fn(&BaselineRun) -> f64| Spread::over(runs, f);
    BaselineSummary {
        disk_mb_per_sec_1mib: spread(&|r| r.disk.mb_per_sec_1mib),
        fdatasync_per_sec_4kib: spread(&|r| r.disk.syncs_per_sec_4kib),
        fdatasync_p50_us: spread(&|r| r.fdatasync_latency.p50_us as f64),
        fdatasync_p99_us: spread(&|r| r.fdatasync_latency.p99_us as f64),
        udp: sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| UdpSummary {
                datagram_bytes: size,
                datagrams_per_sec: spread(&|r| r.udp[i].datagrams_per_sec),
                mb_per_sec: spread(&|r| r.udp[i].mb_per_sec),
            })
            .collect(),
    }
}

/// Prints the report as a table.
pub fn print(r: &BaselineReport) {
    println!(
        "baseline: {}; disk: {}, {}",
        r.head.host,
        r.file_system.path.display(),
        r.file_system.describe()
    );
    let many = r.repeat > 1;
    println!(
        "{} s per figure{}\n",
        r.seconds,
        if many {
            format!(", {} repetitions (median, min .. max)", r.repeat)
        } else {
            String::new()
        }
    );
    let row = |what: &str, s: &Spread, unit: &str, decimals: usize| {
        let f = |x: f64| format!("{x:.decimals$}");
        if many {
            println!(
                "  {what:<34} {:>12} {unit:<10} ({} .. {})",
                f(s.median),
                f(s.min),
                f(s.max)
            );
        } else {
            println!("  {what:<34} {:>12} {unit}", f(s.median));
        }
    };
    let s = &r.summary;
    row(
        "1 MiB write + fdatasync",
        &s.disk_mb_per_sec_1mib,
        "MB/s",
        1,
    );
    row(
        "4 KiB append + fdatasync",
        &s.fdatasync_per_sec_4kib,
        "/s",
        0,
    );
    row("  latency p50", &s.fdatasync_p50_us, "us", 0);
    row("  latency p99", &s.fdatasync_p99_us, "us", 0);
    for u in &s.udp {
        row(
            &format!("UDP loopback, {} B datagrams", u.datagram_bytes),
            &u.datagrams_per_sec,
            "dgrams/s",
            0,
        );
        row("  payload", &u.mb_per_sec, "MB/s", 1);
    }
    if let Some(w) = r.file_system.warning() {
        println!("\n  WARNING: {w}");
    }
}

/// `sluice-bench baseline`.
pub fn main(a: &BaselineArgs) -> ExitCode {
    let report = match run(a) {
        Ok(r) => r,
        Err(e) => return crate::args::fail("baseline", e),
    };
    print(&report);
    if let Err(e) = a.out.save(&report, &report.head, &report.plots) {
        return crate::args::fail("baseline", e);
    }
    ExitCode::SUCCESS
}
