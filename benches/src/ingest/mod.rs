//! The `ingest` scenario: end-to-end durable ingest on loopback. Producers
//! (this process, `sluice_transport::client::Producer`, or HTTP publishers:
//! [`crate::publisher`]) publish to a
//! `sluiced` (a separate process, see [`sluice_testkit::daemon`]) that acks each
//! message only once its group commit is on disk; the harness counts durable
//! acks and their latency.
//!
//! Two modes, [`crate::load`]'s: closed loop (`rate == 0`: peak durable
//! throughput) and open loop (`rate > 0`: a fixed rate, latency from each
//! message's due time, so coordinated omission is corrected).
//!
//! One invocation measures the machine's limits once ([`baselines`]: raw
//! fdatasync on the same file system, a plain UDP loop on loopback, and in
//! open loop the ideal raw group commit and a UDP echo at the run's rate),
//! starts one daemon (or uses a running one), then repeats the measured run
//! `repeat` times on it ([`load::run`]): each repetition connects new producers
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
mod print;
pub mod report;

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

pub use args::{main, IngestArgs};
pub use baselines::{measure_baselines, Baselines};
pub use config::{External, IngestConfig, Length, PathKind};
pub use print::print;
pub use report::{
    IngestReport, Ratios, RunReport, Summary, JSON_SCHEMA, TARGET_ACKED_PER_SEC, TARGET_P99_US,
};
use sluice_transport::client::{ProducerOptions, Transport};
use sluice_transport::proto::SenderConfig;

use crate::load::{self, Plan, Shape};
use crate::measure::{Head, Mark, PercentileCurve, Plots};
use crate::progress::{Goal, Progress};
use crate::publisher::{GrpcPublisher, HttpPublisher, Publisher};
use crate::sizes::Payloads;
use sluice_testkit::daemon::DaemonSpec;

/// Runs the scenario: baselines, then (a daemon and) `repeat` measured
/// runs, reporting progress on `progress`.
pub fn run_with(
    config: &IngestConfig,
    progress: &Progress,
) -> Result<IngestReport, Box<dyn std::error::Error>> {
    config.validate()?;
    // Process-wide: this process's producers are the only senders here.
    sluice_transport::udp::set_gso(config.gso);
    let head = Head::now("ingest", JSON_SCHEMA);
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
        let planned = baselines::planned_seconds(config.baseline_seconds, at_rate.is_some());
        Some(progress.timed("baseline", planned, || {
            measure_baselines(work.path(), config.baseline_seconds, at_rate)
        })?)
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
    let http = config.path == PathKind::Http;
    // gRPC publishes on the gRPC address (an external daemon's: --daemon).
    let grpc = config.path == PathKind::Grpc;
    let (addr, admin, cert, token) = match (&daemon, &config.external) {
        (Some(d), _) => {
            let addr = match config.path {
                PathKind::Udp => d.data,
                PathKind::Http => d.admin,
                PathKind::Grpc => d.grpc,
                _ => d.quic,
            };
            let cert = work.path().join("data/tls/server.crt");
            (addr, d.admin, Some(cert), None)
        }
        // HTTP publishes on the admin address.
        (None, Some(e)) => (
            if http { e.admin } else { e.addr },
            e.admin,
            e.server_cert.clone(),
            e.token.clone(),
        ),
        (None, None) => unreachable!("one or the other"),
    };
    // HTTP and gRPC publishers have no sluice session to set up.
    let options = if http || grpc {
        None
    } else {
        Some(ProducerOptions {
            transport: transport(config.path, cert.as_deref(), token.clone())?,
            sender: SenderConfig {
                max_datagram: config.datagram,
                ..SenderConfig::default()
            },
            ..ProducerOptions::default()
        })
    };
    let plan = Plan {
        shape: Shape {
            batch: config.batch,
            in_flight: config.in_flight,
            count: match config.length {
                Length::CountPerProducer(n) => Some(n),
                Length::Seconds(_) => None,
            },
            rate: config.rate,
            stamp: None,
        },
        payloads: if config.sizes.is_empty() {
            Payloads::fixed(config.size)
        } else {
            Payloads::mix(&config.sizes)
        },
        seed: config.seed,
        warmup: config.warmup,
        seconds: match config.length {
            Length::Seconds(s) => Some(s),
            Length::CountPerProducer(_) => None,
        },
        interval: config.interval,
        drain: Duration::from_secs(120),
    };
    let goal = match config.length {
        Length::Seconds(s) => Goal::Seconds(config.warmup + s),
        Length::CountPerProducer(n) => Goal::Count(n * config.producers as u64),
    };
    // Ids of this invocation: fresh ones for a daemon that already has data
    // (and for every repetition).
    let base = (u64::from(std::process::id()) << 32)
        | (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()) as u64
            & 0xFFFF_0000);
    let pid = daemon.as_ref().map(|d| d.pid());
    let scrape = || sluice_testkit::daemon::scrape(admin).ok();
    let rt = load::runtime(None)?;
    let mut outcomes = Vec::with_capacity(config.repeat);
    let mut retries = Vec::with_capacity(config.repeat);
    let mut failed = None;
    for k in 0..config.repeat {
        progress.phase(&format!("run {} of {}", k + 1, config.repeat), goal);
        let first_id = base + (k * config.producers) as u64;
        let stream = |k: usize| match config.streams {
            1 => "bench".to_owned(),
            n => format!("bench-{}", k % n),
        };
        let retried = Arc::new(AtomicU64::new(0));
        let outcome = rt.block_on(async {
            let p = match &options {
                Some(o) => load::connect(config.producers, addr, stream, first_id, o).await?,
                None if grpc => {
                    let mut p = Vec::with_capacity(config.producers);
                    for k in 0..config.producers {
                        let id = first_id + k as u64;
                        let g = GrpcPublisher::connect(addr, &stream(k), id, token.clone()).await?;
                        p.push(Publisher::Grpc(g));
                    }
                    p
                }
                None => (0..config.producers)
                    .map(|k| {
                        let id = first_id + k as u64;
                        let (t, n, r) = (token.clone(), config.in_flight, retried.clone());
                        Publisher::Http(HttpPublisher::new(addr, &stream(k), id, t, n, r))
                    })
                    .collect(),
            };
            load::run(p, &plan, progress, |s| Mark::take(s.counts(), pid, scrape)).await
        });
        retries.push(retried.load(Relaxed));
        match outcome {
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
        .zip(retries)
        .enumerate()
        .map(|(k, (o, r))| RunReport {
            http_retries: http.then_some(r),
            ..report::run_report(k + 1, o, baselines.as_ref())
        })
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
        head,
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

/// The client transport for `path`, pinning `cert` (fast, quic).
fn transport(
    path: PathKind,
    cert: Option<&std::path::Path>,
    token: Option<String>,
) -> Result<Transport, Box<dyn std::error::Error>> {
    if path == PathKind::Udp {
        return Ok(Transport::Udp);
    }
    let cert =
        cert.ok_or("the fast and quic paths need the daemon's certificate (--server-cert)")?;
    let quic = sluice_testkit::daemon::pinned(cert, token)?;
    Ok(match path {
        PathKind::Quic => Transport::Quic(quic),
        _ => Transport::FastPath(quic),
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
