//! The `ingest` scenario: end-to-end durable ingest on loopback. Producers
//! (this process, `sluice_transport::client::Producer`) publish to a
//! `sluiced` (a separate process, see [`sluice_testkit::daemon`]) that acks each
//! message only once its group commit is on disk; the harness counts durable
//! acks and their latency.
//!
//! Two modes: [`closed_loop`] (`rate == 0`: peak durable throughput) and
//! [`open_loop`] (`rate > 0`: a fixed rate, latency from each message's due
//! time, so coordinated omission is corrected).
//!
//! One invocation measures the machine's limits once ([`baselines`]: raw
//! fdatasync on the same file system, a plain UDP loop on loopback, and in
//! open loop the ideal raw group commit and a UDP echo at the run's rate),
//! starts one daemon (or uses a running one), then repeats the measured run
//! `repeat` times on it ([`drive`]): each repetition connects new producers
//! (fresh producer ids) to the same streams, warms up, and measures a
//! window: acks, their payload bytes, latency, acks per interval, CPU time
//! (daemon: /proc/PID/stat; producers: getrusage of this process) and the
//! daemon's own counters (/metrics at both ends). The daemon is kept
//! between repetitions because starting it is not what is measured, and a
//! stream that already holds data is what a running daemon has anyway; the
//! same stream names also keep a running daemon's token permissions valid.
//!
//! The [`report`] holds every repetition (`runs`), their spread (`summary`:
//! min, median, max) and the pictures' data (`plots`); [`print()`] prints it
//! as a table of medians with [min–max] and ratios to the baselines.

mod args;
pub mod baselines;
pub mod config;
mod drive;
mod print;
pub mod report;
mod window;

use std::process::ExitCode;
use std::time::Duration;

pub use args::{main, IngestArgs};
pub use baselines::{measure_baselines, Baselines};
pub use config::{External, IngestConfig, Length, PathKind};
pub use print::print;
pub use report::{
    IngestReport, Ratios, RunReport, Summary, SummaryRatios, JSON_SCHEMA, TARGET_ACKED_PER_SEC,
    TARGET_P99_US,
};

use crate::measure::{Host, PercentileCurve, Plots};
use crate::progress::{Goal, Progress};
use drive::{drive, transport, Target};
use sluice_testkit::daemon::DaemonSpec;

/// Runs the scenario without a progress line.
pub fn run(config: &IngestConfig) -> Result<IngestReport, Box<dyn std::error::Error>> {
    run_with(config, &Progress::hidden())
}

/// Runs the scenario: baselines, then (a daemon and) `repeat` measured
/// runs, reporting progress on `progress`.
pub fn run_with(
    config: &IngestConfig,
    progress: &Progress,
) -> Result<IngestReport, Box<dyn std::error::Error>> {
    config.validate()?;
    let started_unix = crate::measure::unix_now();
    std::fs::create_dir_all(&config.dir)
        .map_err(|e| format!("--dir {}: {e}", config.dir.display()))?;
    let work = tempfile::Builder::new()
        .prefix("sluice-bench-ingest-")
        .tempdir_in(&config.dir)
        .map_err(|e| format!("a temporary folder in {}: {e}", config.dir.display()))?;
    let baselines = if config.baseline_seconds > 0.0 {
        let at_rate = config
            .open_loop()
            .then_some((config.rate, config.mean_size().round() as usize));
        progress.phase(
            "baseline",
            Goal::Seconds(baselines::planned_seconds(
                config.baseline_seconds,
                at_rate.is_some(),
            )),
        );
        Some(with_clock(
            progress,
            "raw fdatasync, plain UDP loop",
            || measure_baselines(work.path(), config.baseline_seconds, at_rate),
        )?)
    } else {
        None
    };

    progress.phase("starting the daemon", Goal::Open);
    let daemon = match config.external {
        Some(_) => None,
        None => {
            let mut spec = DaemonSpec::this_exe(&work.path().join("data"))?.fsync(&config.fsync);
            if config.path == PathKind::Udp {
                spec = spec.insecure_lan();
            }
            Some(spec.args(config.sluiced_args.iter().cloned()).try_start()?)
        }
    };
    let (addr, admin, transport) = match (&daemon, &config.external) {
        (Some(d), _) => {
            let cert = work.path().join("data/tls/server.crt");
            let addr = if config.path == PathKind::Udp {
                d.data
            } else {
                d.quic
            };
            (addr, d.admin, transport(config.path, Some(&cert), None)?)
        }
        (None, Some(e)) => (
            e.addr,
            e.admin,
            transport(config.path, e.server_cert.as_deref(), e.token.clone())?,
        ),
        (None, None) => unreachable!("one or the other"),
    };

    // Ids of this invocation: fresh ones for a daemon that already has data
    // (and for every repetition).
    let base = (u64::from(std::process::id()) << 32)
        | (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()) as u64
            & 0xFFFF_0000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut outcomes = Vec::with_capacity(config.repeat);
    let mut failed = None;
    for k in 0..config.repeat {
        let target = Target {
            addr,
            admin,
            transport: &transport,
            daemon_pid: daemon.as_ref().map(|d| d.pid()),
            first_id: base + (k * config.producers) as u64,
            run: k + 1,
            progress,
        };
        match rt.block_on(drive(config, target)) {
            Ok(o) => outcomes.push(o),
            Err(e) => {
                failed = Some(format!("run {} of {}: {e}", k + 1, config.repeat));
                break;
            }
        }
    }
    drop(rt);
    progress.phase("stopping the daemon", Goal::Open);
    if let Some(d) = daemon {
        let status = d.try_terminate(Duration::from_secs(30))?;
        if failed.is_none() && !status.success() {
            failed = Some(format!("the daemon did not stop cleanly: {status}"));
        }
    }
    progress.finish();
    if let Some(e) = failed {
        return Err(e.into());
    }

    let runs: Vec<RunReport> = outcomes
        .iter()
        .enumerate()
        .map(|(k, o)| report::run_report(k + 1, o, baselines.as_ref()))
        .collect();
    let plots = Plots {
        latency: outcomes
            .iter()
            .enumerate()
            .map(|(k, o)| PercentileCurve::of(format!("run {}", k + 1), &o.latency))
            .collect(),
        throughput: outcomes
            .iter()
            .zip(&runs)
            .map(|(o, r)| {
                o.timeline
                    .series(format!("run {}", r.run), r.window_seconds)
            })
            .collect(),
    };
    Ok(IngestReport {
        scenario: "ingest",
        schema: JSON_SCHEMA,
        started_unix,
        host: Host::here(),
        config: config.clone(),
        mode: if config.open_loop() { "open" } else { "closed" },
        latency_from: if config.open_loop() {
            "due time (coordinated-omission corrected)"
        } else {
            "send_batch call"
        },
        sent: runs.iter().map(|r| r.sent).sum(),
        acked: runs.iter().map(|r| r.acked).sum(),
        errors: runs.iter().map(|r| r.errors).sum(),
        first_error: runs.iter().find_map(|r| r.first_error.clone()),
        baselines,
        summary: report::summary(&runs),
        runs,
        plots,
    })
}

/// Runs `f`, moving the progress line with the seconds it has taken.
fn with_clock<T>(progress: &Progress, note: &str, f: impl FnOnce() -> T) -> T {
    if progress.is_hidden() {
        return f();
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let start = std::time::Instant::now();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                progress.set(start.elapsed().as_secs_f64(), note);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let out = f();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        out
    })
}

/// The exit status of a finished run: failure when a message was not acked.
fn check(report: &IngestReport) -> ExitCode {
    if report.errors > 0 || report.acked != report.sent {
        eprintln!(
            "sluice-bench ingest: {} of {} messages not acked ({} errors)",
            report.sent - report.acked.min(report.sent),
            report.sent,
            report.errors
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
