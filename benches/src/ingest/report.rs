//! What an ingest invocation reports: every repetition's figures
//! ([`RunReport`]), their spread ([`Summary`]: min, median, max), the
//! baselines (measured once) and the data for the pictures ([`Plots`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::baselines::Baselines;
use super::config::IngestConfig;
use crate::load::Outcome;
use crate::measure::{CpuUse, DaemonCounters, Head, Latency, Machine, Mark, Plots, Spread};

/// The targets, printed next to the figures they apply to.
pub const TARGET_ACKED_PER_SEC: f64 = 500_000.0;
pub const TARGET_P99_US: f64 = 1_000.0;

/// Version of the JSON layout (bump on incompatible changes). 2: the
/// figures moved into `runs` (one per repetition) and `summary`; `plots`.
pub const JSON_SCHEMA: u32 = 2;

/// Figures divided by baselines (and by the targets): of one
/// repetition (`T` = `f64`), or their spreads (`T` = [`Spread`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Ratios<T = f64> {
    /// Acked msgs/s ÷ plain UDP 128 B datagrams/s (one message a datagram).
    pub acked_per_udp_128_datagram: T,
    /// Acked payload MB/s ÷ plain UDP 1,452 B payload MB/s.
    pub goodput_per_udp_1452_mb: T,
    /// Group commits/s ÷ raw 4 KiB fdatasync/s.
    pub commits_per_raw_fdatasync: T,
    /// Ack p50 ÷ raw fdatasync p50; ack p99 ÷ raw fdatasync p99.
    pub p50_per_fdatasync_p50: T,
    pub p99_per_fdatasync_p99: T,
    /// Open loop: ack p99 ÷ the ideal raw group commit's p99 at the same
    /// rate, and ÷ the UDP echo's p99 at the same rate.
    pub p99_per_ideal_commit_p99: Option<T>,
    pub p99_per_udp_echo_p99: Option<T>,
    /// Open loop: CPU per acked message (producers without the harness's
    /// pacing thread, plus daemon) ÷ CPU per operation of the plain floor
    /// at the same rate (UDP echo round trip + ideal raw group commit).
    pub cpu_per_msg_per_plain_floor: Option<T>,
    /// Acked msgs/s ÷ 500,000 (the throughput target).
    pub acked_per_target: T,
    /// Ack p99 ÷ 1 ms (the latency target at 10,000 msgs/s).
    pub p99_per_target: T,
}

/// One repetition's figures, over its measurement window.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// 1-based.
    pub run: usize,
    /// Messages handed to producers, and durably acked (all of them, warm-up
    /// and drain included): equal unless something failed.
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub window_seconds: f64,
    pub window_acked: u64,
    /// Payload bytes of the messages acked in the window.
    pub window_bytes: u64,
    pub acked_per_sec: f64,
    /// Payload MB/s (10^6 bytes) acked, from the real bytes.
    pub mb_per_sec: f64,
    /// Mean payload of the messages acked in the window, bytes.
    pub mean_payload_bytes: f64,
    pub latency: Latency,
    /// Open loop: how late the pacing thread handed messages over.
    pub pacer_lag: Option<Latency>,
    pub producer_cpu: CpuUse,
    pub daemon_cpu: Option<CpuUse>,
    /// CPU microseconds per acked message: this process (the producers and
    /// the harness), and the daemon.
    pub producer_cpu_us_per_msg: f64,
    pub daemon_cpu_us_per_msg: Option<f64>,
    /// CPU seconds over the window by thread name: this process (the
    /// producers run on `tokio-rt-worker`; `pacer` is the open loop's
    /// pacing thread, harness overhead) and the daemon's.
    pub producer_threads: BTreeMap<String, f64>,
    pub daemon_threads: BTreeMap<String, f64>,
    pub machine: Option<Machine>,
    pub daemon: Option<DaemonCounters>,
    pub group_commits_per_sec: Option<f64>,
    /// `--path http`: requests answered 503 (backpressure) and sent again
    /// after their Retry-After.
    pub http_retries: Option<u64>,
    pub ratios: Option<Ratios>,
}

/// The repetitions' headline figures as min / median / max.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub runs: usize,
    pub acked_per_sec: Spread,
    pub mb_per_sec: Spread,
    pub mean_payload_bytes: Spread,
    pub p50_us: Spread,
    pub p99_us: Spread,
    pub p999_us: Spread,
    pub max_us: Spread,
    pub producer_cpu_us_per_msg: Spread,
    pub daemon_cpu_us_per_msg: Option<Spread>,
    pub group_commits_per_sec: Option<Spread>,
    pub ratios: Option<Ratios<Spread>>,
}

/// Everything one `sluice-bench ingest` invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    #[serde(flatten)]
    pub head: Head,
    pub config: IngestConfig,
    /// `closed` or `open`.
    pub mode: &'static str,
    /// Open loop: from the due time; closed loop: from the call.
    pub latency_from: &'static str,
    /// Over all repetitions: equal unless something failed.
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Measured once, before the repetitions.
    pub baselines: Option<Baselines>,
    pub summary: Summary,
    pub runs: Vec<RunReport>,
    /// Per repetition: the latency distribution (`run N`) and acked msgs/s
    /// per `config.interval` seconds of the window.
    pub plots: Plots,
}

use crate::measure::div;

/// One repetition's figures from its marks.
pub(super) fn run_report(
    run: usize,
    o: &Outcome<Mark>,
    baselines: Option<&Baselines>,
) -> RunReport {
    let w = o.start.until(&o.end);
    let window = w.seconds;
    let acked_per_sec = w.acked as f64 / window.max(1e-9);
    let mb_per_sec = w.bytes as f64 / window.max(1e-9) / 1e6;
    let latency = Latency::of(&o.latency);
    // CPU per message of producers (less the harness's pacer) and daemon.
    let per_msg = |s: f64| s * 1e6 / w.acked.max(1) as f64;
    let sluice_cpu_us_per_msg = w
        .daemon
        .map(|d| per_msg(w.harness.seconds - w.thread("pacer") + d.seconds));
    let group_commits_per_sec = w
        .counters
        .map(|c| c.group_commits as f64 / window.max(1e-9));
    let ratios = baselines.map(|b| Ratios {
        acked_per_udp_128_datagram: div(acked_per_sec, b.udp_128.datagrams_per_sec),
        goodput_per_udp_1452_mb: div(mb_per_sec, b.udp_1452.mb_per_sec),
        commits_per_raw_fdatasync: group_commits_per_sec
            .map_or(0.0, |c| div(c, b.fdatasync_per_sec)),
        p50_per_fdatasync_p50: div(latency.p50_us as f64, b.fdatasync_p50_us as f64),
        p99_per_fdatasync_p99: div(latency.p99_us as f64, b.fdatasync_p99_us as f64),
        p99_per_ideal_commit_p99: b
            .ideal_commit_at_rate
            .map(|i| div(latency.p99_us as f64, i.p99_us as f64)),
        p99_per_udp_echo_p99: b
            .udp_echo_at_rate
            .map(|e| div(latency.p99_us as f64, e.p99_us as f64)),
        cpu_per_msg_per_plain_floor: match (
            sluice_cpu_us_per_msg,
            b.udp_echo_at_rate,
            b.ideal_commit_at_rate,
        ) {
            (Some(ours), Some(e), Some(i)) => Some(div(ours, e.cpu_us_per_op + i.cpu_us_per_op)),
            _ => None,
        },
        acked_per_target: acked_per_sec / TARGET_ACKED_PER_SEC,
        p99_per_target: latency.p99_us as f64 / TARGET_P99_US,
    });
    RunReport {
        run,
        sent: o.sent,
        acked: o.acked,
        errors: o.errors,
        first_error: o.first_error.clone(),
        window_seconds: window,
        window_acked: w.acked,
        window_bytes: w.bytes,
        acked_per_sec,
        mb_per_sec,
        mean_payload_bytes: div(w.bytes as f64, w.acked as f64),
        latency,
        pacer_lag: o.pacer_lag.as_ref().map(Latency::of),
        producer_cpu: w.harness,
        daemon_cpu: w.daemon,
        producer_cpu_us_per_msg: per_msg(w.harness.seconds),
        daemon_cpu_us_per_msg: w.daemon.map(|d| per_msg(d.seconds)),
        producer_threads: w.harness_threads,
        daemon_threads: w.daemon_threads,
        machine: w.machine,
        daemon: w.counters,
        group_commits_per_sec,
        http_retries: None,
        ratios,
    }
}

pub(super) fn summary(runs: &[RunReport]) -> Summary {
    let ratios: Option<Vec<Ratios>> = runs.iter().map(|r| r.ratios).collect();
    Summary {
        runs: runs.len(),
        acked_per_sec: Spread::over(runs, |r| r.acked_per_sec),
        mb_per_sec: Spread::over(runs, |r| r.mb_per_sec),
        mean_payload_bytes: Spread::over(runs, |r| r.mean_payload_bytes),
        p50_us: Spread::over(runs, |r| r.latency.p50_us as f64),
        p99_us: Spread::over(runs, |r| r.latency.p99_us as f64),
        p999_us: Spread::over(runs, |r| r.latency.p999_us as f64),
        max_us: Spread::over(runs, |r| r.latency.max_us as f64),
        producer_cpu_us_per_msg: Spread::over(runs, |r| r.producer_cpu_us_per_msg),
        daemon_cpu_us_per_msg: Spread::over_all(runs, |r| r.daemon_cpu_us_per_msg),
        group_commits_per_sec: Spread::over_all(runs, |r| r.group_commits_per_sec),
        ratios: ratios
            .filter(|r| !r.is_empty())
            .map(|r| crate::measure::spreads(&r)),
    }
}
