//! The `loss` scenario: durable ingest through a lossy path, one row per
//! loss rate, each row next to the same run's 0 % row.
//!
//! - **relay mode** (the default, no root): a `sluiced` on loopback and the
//!   impairment relay (`sluice_testkit::relay`) on the producers' data
//!   path, which drops, reorders, duplicates and delays datagrams by a
//!   seeded RNG. The producers publish over raw UDP to an `insecure_lan`
//!   data port (or over QUIC, `--path quic`): the fast path's sealed UDP
//!   cannot go through a relay, because the daemon's lease names its own
//!   data address and the producer's socket only takes answers from there.
//! - **netns mode** (`--netns`, root): `sluiced` in one network namespace,
//!   the producers in another, a veth pair between them, and nftables
//!   dropping a share of the producers' datagrams at random on their veth
//!   end's egress (this kernel has no netem). The producers use the fast
//!   path (sealed UDP after QUIC authentication), as in production.
//!
//! Every row checks the promise: each message acked, acked == sent, and
//! the row's stream holds exactly as many records as were acked (every
//! message is distinct, so a duplicate stored twice would show).
//!
//! With `--repeat N` every row is measured N times, each time on a stream
//! of its own (same daemon, same namespaces), in rounds: round k runs every
//! row once, so that a slow spell of the machine falls on all rows alike.
//! A row reports each repetition (`runs`) and their min / median / max
//! (`summary`); its ratios are to the median of the 0 % row's repetitions.
//! Each repetition's CPU is read over its window: the daemon's process
//! and the producers' runtime threads (named [`PRODUCER_THREADS`]), per
//! acked message and as cores, so that neither the relay's thread (in this
//! process in relay mode), nor the open loop's pacing thread, nor the
//! harness's waiting counts as the producers'. The load is
//! [`crate::load`]'s, closed or open loop as for `ingest`; every message
//! handed over is counted as sent, and the row then waits (at most
//! `--drain-timeout`) until each one is acked or has failed.

mod admin;
mod netns;
mod print;
mod relay;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use sluice_daemon::metrics::scrape::Scrape;
use sluice_transport::client::{ProducerOptions, Transport};
use sluice_transport::proto::SenderConfig;

use crate::interrupt;
use crate::load::{self as producers, Outcome, Plan, Shape};
use crate::measure::{
    CpuUse, DaemonCounters, Head, Latency, Mark, PercentileCurve, Plots, Spread, TimeSeries, Window,
};
use crate::progress::{Goal, Progress};
use crate::sizes::Payloads;

/// The name of the producers' runtime threads (at most 15 bytes: the
/// kernel cuts thread names there).
const PRODUCER_THREADS: &str = "loss-producer";

/// Version of the JSON layout (bump on incompatible changes).
pub const JSON_SCHEMA: u32 = 2;

/// `sluice-bench loss`: see the module's comment.
#[derive(Debug, Clone, clap::Args)]
pub struct LossArgs {
    #[command(flatten)]
    pub load: crate::args::LoadArgs,
    #[command(flatten)]
    pub out: crate::args::Output,
    /// Loss rates to sweep, percent of datagrams, one row each. A 0 % row
    /// is always run first: the baseline the others are divided by.
    #[arg(long, value_name = "PCT,...", value_delimiter = ',', default_values_t = [0.0, 1.0, 5.0, 10.0])]
    pub loss: Vec<f64>,
    /// Relay mode: percent of datagrams held back by --reorder-delay, so
    /// that later ones overtake them (every row).
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    pub reorder: f64,
    /// Relay mode: how long a reordered datagram is held back, ms.
    #[arg(long, value_name = "MS", default_value_t = 2.0)]
    pub reorder_delay: f64,
    /// Relay mode: percent of datagrams delivered twice (every row).
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    pub duplicate: f64,
    /// Relay mode: every datagram waits this long, ms (one way).
    #[arg(long, value_name = "MS", default_value_t = 0.0)]
    pub delay: f64,
    /// Relay mode: plus a uniform random share of this, ms.
    #[arg(long, value_name = "MS", default_value_t = 0.0)]
    pub jitter: f64,
    /// Relay mode: which way the impairments apply: `data` (producers to
    /// daemon only, as --netns does) or `both` (the daemon's acks and NACKs
    /// too, with a seed of their own).
    #[arg(long, default_value = "data", value_parser = ["data", "both"])]
    pub directions: String,
    /// Relay mode: the seed of the relay's random choices (row i uses
    /// seed + i, in every repetition): the same seed impairs the same way.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Kernel-path loss instead of the relay (root, `ip` and `nft`): two
    /// network namespaces and a veth pair made for the run (and removed
    /// after it), nftables random drop on the producers' egress.
    #[arg(long)]
    pub netns: bool,
    /// The producers' path. Relay mode: `udp` (raw, the daemon's data port
    /// is insecure_lan; default) or `quic`. Netns mode: `fast` (sealed UDP
    /// after QUIC authentication; default) or `quic`. With `quic` the loss
    /// hits QUIC's packets, which QUIC recovers itself (no NACKs).
    #[arg(long, value_parser = ["udp", "fast", "quic"])]
    pub path: Option<String>,
    /// Concurrent producers (one session each).
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Message payload size, bytes.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Times each row is measured, each time on a fresh stream (same
    /// daemon): the table shows the median with [min–max], the JSON every
    /// repetition and their spread. The rows run in rounds (every row once,
    /// then again), and the ratios are to the 0 % row's median.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub repeat: usize,
    /// The daemon's fsync policy (anything but `always` breaks the promise).
    #[arg(long, default_value = "always", value_parser = ["always", "interval", "never"])]
    pub fsync: String,
    /// Most seconds the calls outstanding at a row's end get to be acked.
    #[arg(long, default_value_t = 60.0)]
    pub drain_timeout: f64,
    /// No progress line on stderr (it is shown only on a terminal anyway).
    #[arg(long)]
    pub quiet: bool,
}

/// Everything that describes a run (the report's `config`).
#[derive(Debug, Clone, Serialize)]
pub struct LossConfig {
    /// `relay` or `netns`.
    pub mode: &'static str,
    /// `udp`, `fast` or `quic`.
    pub path: String,
    /// Percent, the baseline 0 first.
    pub loss: Vec<f64>,
    pub reorder: f64,
    pub reorder_delay_ms: f64,
    pub duplicate: f64,
    pub delay_ms: f64,
    pub jitter_ms: f64,
    pub directions: String,
    pub seed: u64,
    pub producers: usize,
    pub size: usize,
    /// Repetitions of every row.
    pub repeat: usize,
    /// Per row; `None` with `count`.
    pub seconds: Option<f64>,
    /// Messages per producer per row; `None` with `seconds`.
    pub count: Option<u64>,
    pub warmup: f64,
    pub rate: f64,
    pub batch: usize,
    pub in_flight: usize,
    pub fsync: String,
    pub dir: PathBuf,
    pub drain_timeout: f64,
}

impl LossArgs {
    /// The run's configuration, or what is wrong with the flags.
    pub fn config(&self) -> Result<LossConfig, String> {
        let mode = if self.netns { "netns" } else { "relay" };
        let path = match (self.netns, self.path.as_deref()) {
            (false, None | Some("udp")) => "udp",
            (true, None | Some("fast")) => "fast",
            (_, Some("quic")) => "quic",
            (false, Some(_)) => {
                return Err(
                    "--path fast cannot go through the relay: the daemon's fast-path \
                            lease names its own data address, and the producer takes answers \
                            only from there. Use --path udp or quic, or --netns (root) for the \
                            fast path under loss"
                        .into(),
                )
            }
            (true, Some(_)) => {
                return Err(
                    "--netns runs the fast path or QUIC (--path fast or quic): raw \
                            UDP would need an insecure_lan port beyond loopback"
                        .into(),
                )
            }
        };
        if self.netns
            && [self.reorder, self.duplicate, self.delay, self.jitter]
                .iter()
                .any(|v| *v != 0.0)
        {
            return Err(
                "--netns impairs with nftables random drop only (this kernel has no \
                        netem): --reorder, --duplicate, --delay and --jitter need the relay \
                        (leave out --netns)"
                    .into(),
            );
        }
        if self.netns && self.directions != "data" {
            return Err("--netns drops the producers' datagrams only (--directions data)".into());
        }
        let pct = |name: &str, v: f64| {
            if (0.0..=100.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("--{name} is a percentage within 0..=100, got {v}"))
            }
        };
        for &l in &self.loss {
            pct("loss", l)?;
        }
        pct("reorder", self.reorder)?;
        pct("duplicate", self.duplicate)?;
        for (name, v) in [
            ("reorder-delay", self.reorder_delay),
            ("delay", self.delay),
            ("jitter", self.jitter),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(format!("--{name} must be a number of ms >= 0"));
            }
        }
        if self.loss.is_empty() {
            return Err("--loss needs at least one rate".into());
        }
        // The baseline first, then the sweep as given (without a second 0).
        let mut loss = vec![0.0];
        loss.extend(self.loss.iter().copied().filter(|l| *l != 0.0));
        if self.producers == 0 || self.load.in_flight() == 0 || self.load.batch == Some(0) {
            return Err("--producers, --in-flight and --batch must be at least 1".into());
        }
        if self.repeat == 0 {
            return Err("--repeat must be at least 1".into());
        }
        if !(self.load.rate >= 0.0 && self.load.rate.is_finite()) {
            return Err("--rate must be a number >= 0".into());
        }
        let (seconds, count) = match (self.load.seconds, self.load.count) {
            (_, Some(0)) => return Err("--count must be at least 1".into()),
            (_, Some(n)) => (None, Some(n)),
            (s, None) => {
                let s = s.unwrap_or(3.0);
                if !(s > 0.0 && s.is_finite()) {
                    return Err("--seconds must be more than 0".into());
                }
                (Some(s), None)
            }
        };
        let warmup = self
            .load
            .warmup
            .unwrap_or(if count.is_some() { 0.0 } else { 0.5 });
        if !(warmup >= 0.0 && warmup.is_finite()) {
            return Err("--warmup must be >= 0".into());
        }
        if !(self.drain_timeout > 0.0 && self.drain_timeout.is_finite()) {
            return Err("--drain-timeout must be more than 0".into());
        }
        Ok(LossConfig {
            mode,
            path: path.into(),
            loss,
            reorder: self.reorder,
            reorder_delay_ms: self.reorder_delay,
            duplicate: self.duplicate,
            delay_ms: self.delay,
            jitter_ms: self.jitter,
            directions: self.directions.clone(),
            seed: self.seed,
            producers: self.producers,
            size: self.size,
            repeat: self.repeat,
            seconds,
            count,
            warmup,
            rate: self.load.rate,
            batch: self.load.batch(),
            in_flight: self.load.in_flight(),
            fsync: self.fsync.clone(),
            dir: self.out.dir.clone(),
            drain_timeout: self.drain_timeout,
        })
    }
}

impl LossConfig {
    fn open_loop(&self) -> bool {
        self.rate > 0.0
    }

    /// The load of every row: acks counted per 100 ms for the pictures.
    fn plan(&self) -> Plan {
        Plan {
            shape: Shape {
                batch: self.batch,
                in_flight: self.in_flight,
                count: self.count,
                rate: self.rate,
                stamp: None,
            },
            payloads: Payloads::fixed(self.size),
            seed: 0,
            warmup: self.warmup,
            seconds: self.seconds,
            interval: 0.1,
            drain: Duration::from_secs_f64(self.drain_timeout),
        }
    }
}

/// What the impairment did in one row.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Impaired {
    /// `relay` or `nftables`.
    pub by: &'static str,
    /// Datagrams that met the impairment (relay: every datagram it took,
    /// both ways, also those it let through untouched; nftables: the
    /// producers' datagrams to the daemon's port).
    pub datagrams: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// dropped ÷ datagrams.
    pub dropped_fraction: f64,
}

/// The checks of one repetition (or, in a row, of all of them).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Checks {
    /// No call failed and acked == sent.
    pub all_acked: bool,
    /// The stream holds exactly `acked` records (nothing lost, nothing
    /// stored twice); `None` if the daemon could not be asked.
    pub stored_once: Option<bool>,
    pub ok: bool,
}

/// CPU over a repetition's window: the daemon's process and the
/// producers' runtime threads (not the relay's thread, not the open loop's
/// pacing thread).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LossCpu {
    /// Wall seconds between the two readings (the window).
    pub window_seconds: f64,
    pub producers: CpuUse,
    /// `None` if the daemon's /proc/PID/stat could not be read.
    pub daemon: Option<CpuUse>,
    /// CPU microseconds per acked message.
    pub producers_us_per_msg: f64,
    pub daemon_us_per_msg: Option<f64>,
}

impl LossCpu {
    fn of(w: &Window) -> LossCpu {
        let per_msg = |s: f64| s * 1e6 / w.acked.max(1) as f64;
        let producers = w.thread(PRODUCER_THREADS);
        LossCpu {
            window_seconds: w.seconds,
            producers: CpuUse::of(producers, w.seconds, w.acked),
            daemon: w.daemon,
            producers_us_per_msg: per_msg(producers),
            daemon_us_per_msg: w.daemon.map(|d| per_msg(d.seconds)),
        }
    }
}

/// One repetition of one loss rate.
#[derive(Debug, Clone, Serialize)]
pub struct LossRun {
    /// 1-based.
    pub run: usize,
    /// The repetition's own stream (so that its record count is its own).
    pub stream: String,
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub window_seconds: f64,
    pub window_acked: u64,
    /// Durable acked msgs/s over the window.
    pub acked_per_sec: f64,
    /// Payload MB/s (10^6 bytes) acked.
    pub mb_per_sec: f64,
    /// acked_per_sec ÷ the median of the 0 % row's repetitions.
    pub acked_per_sec_per_baseline: Option<f64>,
    /// Ack p50 and p99 ÷ the medians of the 0 % row's.
    pub p50_per_baseline: Option<f64>,
    pub p99_per_baseline: Option<f64>,
    pub latency: Latency,
    /// Open loop: how late the pacing thread handed messages over.
    pub pacer_lag: Option<Latency>,
    pub cpu: LossCpu,
    pub impaired: Option<Impaired>,
    /// The daemon's counters over the repetition (from connect to close):
    /// `nacks_sent`, `retransmits_received`, `duplicates` (messages it
    /// received again and acked without storing them again).
    pub daemon: Option<DaemonCounters>,
    /// Datagrams the kernel dropped over the repetition because a UDP
    /// socket's receive buffer was full (relay mode: on the whole machine;
    /// netns mode: in the two namespaces). Loss nobody asked for: the
    /// relay, the daemon or the producers fell behind.
    pub kernel_udp_drops: Option<u64>,
    /// The producers', summed, over the repetition.
    pub credit_stalls: CreditStalls,
    /// Records in the stream (its durable end, from `GET /streams`).
    pub stored: Option<u64>,
    pub checks: Checks,
}

/// Times the producers waited with messages unsent because the daemon's
/// credit was used up (a hole waiting for its repair holds the durable
/// mark, and so the credit), and for how long in all (milliseconds).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CreditStalls {
    pub stalls: u64,
    pub stalled_ms: f64,
}

impl CreditStalls {
    fn of(
        watches: &[tokio::sync::watch::Receiver<sluice_transport::client::ProducerStatus>],
    ) -> Self {
        let mut out = CreditStalls::default();
        for w in watches {
            let s = w.borrow();
            out.stalls += s.credit_stalls;
            out.stalled_ms += s.credit_stalled.as_secs_f64() * 1e3;
        }
        out
    }
}

/// A row's repetitions as min / median / max.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RowSummary {
    pub runs: usize,
    pub acked_per_sec: Spread,
    /// Each repetition's acked msgs/s ÷ the 0 % row's median.
    pub acked_per_sec_per_baseline: Option<Spread>,
    pub p50_us: Spread,
    pub p99_us: Spread,
    pub p999_us: Spread,
    pub p50_per_baseline: Option<Spread>,
    pub p99_per_baseline: Option<Spread>,
    pub producers_cpu_us_per_msg: Spread,
    pub producers_cores: Spread,
    /// `None` unless the daemon's CPU was read in every repetition.
    pub daemon_cpu_us_per_msg: Option<Spread>,
    pub daemon_cores: Option<Spread>,
}

impl RowSummary {
    fn of(runs: &[LossRun]) -> RowSummary {
        let s = |f: &dyn Fn(&LossRun) -> f64| Spread::over(runs, f);
        let all = |f: &dyn Fn(&LossRun) -> Option<f64>| Spread::over_all(runs, f);
        RowSummary {
            runs: runs.len(),
            acked_per_sec: s(&|r| r.acked_per_sec),
            acked_per_sec_per_baseline: all(&|r| r.acked_per_sec_per_baseline),
            p50_us: s(&|r| r.latency.p50_us as f64),
            p99_us: s(&|r| r.latency.p99_us as f64),
            p999_us: s(&|r| r.latency.p999_us as f64),
            p50_per_baseline: all(&|r| r.p50_per_baseline),
            p99_per_baseline: all(&|r| r.p99_per_baseline),
            producers_cpu_us_per_msg: s(&|r| r.cpu.producers_us_per_msg),
            producers_cores: s(&|r| r.cpu.producers.cores),
            daemon_cpu_us_per_msg: all(&|r| r.cpu.daemon_us_per_msg),
            daemon_cores: all(&|r| r.cpu.daemon.map(|d| d.cores)),
        }
    }
}

/// One loss rate: its repetitions and their spread.
#[derive(Debug, Clone, Serialize)]
pub struct LossRow {
    pub loss_percent: f64,
    pub summary: RowSummary,
    pub runs: Vec<LossRun>,
    /// Over the repetitions: every one acked all it sent, and stored
    /// each message once.
    pub checks: Checks,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct LossReport {
    #[serde(flatten)]
    pub head: Head,
    pub config: LossConfig,
    /// `closed` or `open`.
    pub load: &'static str,
    pub latency_from: &'static str,
    pub rows: Vec<LossRow>,
    /// One latency curve and one acks-per-100-ms series per row, from its
    /// first repetition.
    pub plots: Plots,
    /// Every row's checks passed.
    pub ok: bool,
    /// Anything the reader should know about the figures.
    pub notes: Vec<String>,
}

/// What a mode provides: a daemon, a way to impair the producers' path
/// row by row, and a place to run the producers.
trait Bed {
    /// Sets up the impairment for a row; returns where producers connect.
    fn impair(&mut self, row: usize, loss_percent: f64) -> Result<SocketAddr, String>;
    /// The row's impairment counters; the impairment is removed.
    fn clear(&mut self) -> Option<Impaired>;
    /// Runs `load` with the producers' options where they belong (the
    /// producers' namespace).
    fn producers(&self, load: &Load) -> Result<Outcome<Mark>, String>;
    fn scrape(&self) -> Option<Scrape>;
    /// The daemon's process (for its CPU time).
    fn daemon_pid(&self) -> Option<u32>;
    /// The kernel's count of UDP datagrams dropped for a full receive
    /// buffer, where the run's sockets are.
    fn udp_rcvbuf_errors(&self) -> Option<u64>;
    /// Records in `stream`.
    fn stored(&self, stream: &str) -> Result<u64, String>;
    /// Stops the daemon cleanly.
    fn finish(self: Box<Self>) -> Result<(), String>;
}

/// A row's load, given the producers' options.
type Load<'a> = dyn Fn(&ProducerOptions) -> Result<Outcome<Mark>, String> + Sync + 'a;

/// Options for producers that must ride out a lossy path: a patient
/// handshake (its HELLO can be lost too).
fn producer_options(transport: Transport) -> ProducerOptions {
    ProducerOptions {
        transport,
        sender: SenderConfig {
            handshake_timeout: Duration::from_secs(30),
            ..SenderConfig::default()
        },
        max_reconnects: 100,
        ..ProducerOptions::default()
    }
}

use sluice_testkit::daemon::pinned as quic_options;

/// Runs the scenario.
pub fn run(c: &LossConfig, progress: &Progress) -> Result<LossReport, String> {
    interrupt::install();
    let head = Head::now("loss", JSON_SCHEMA);
    std::fs::create_dir_all(&c.dir).map_err(|e| format!("{}: {e}", c.dir.display()))?;
    let work = tempfile::Builder::new()
        .prefix("sluice-bench-loss-")
        .tempdir_in(&c.dir)
        .map_err(|e| format!("a temporary folder in {}: {e}", c.dir.display()))?;
    let mut notes = Vec::new();
    let rows = if c.mode == "netns" {
        // nftables' egress hook sees a GSO message before the kernel cuts
        // it into datagrams, so one random drop would take up to 64 of
        // them at once; on a wire each datagram is lost alone. The
        // producers (in this process) send datagram by datagram here.
        sluice_transport::udp::set_gso(false);
        notes.push(
            "the producers send without GSO: nftables would drop a whole GSO message (up to 64 \
             datagrams) at once, where a wire loses datagrams one by one"
                .into(),
        );
        // The namespace helpers panic on a failed `ip`/`nft`: their guards
        // clean up on the way out, and the panic becomes an error here.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let bed = netns::NetnsBed::start(c, work.path())?;
            sweep(c, Box::new(bed), progress)
        }))
        .map_err(|p| format!("a namespace or nftables command failed: {}", panic_text(&p)))??
    } else {
        let bed = relay::RelayBed::start(c, work.path())?;
        notes.push(
            "the relay is one task on one thread of this process: its own ceiling is in every \
             row, the 0 % row included, so the ratios show what loss costs, not the relay"
                .into(),
        );
        if c.path == "udp" {
            notes.push(
                "the producers publish over raw UDP (insecure_lan) through the relay: the fast \
                 path's sealed UDP cannot pass it (the daemon's lease names its own data address, \
                 and the producer takes answers only from there); --netns runs the fast path"
                    .into(),
            );
        }
        sweep(c, Box::new(bed), progress)?
    };
    notes.push(format!(
        "CPU over each window: the daemon's process (/proc/PID/stat) and the producers' runtime \
         threads, per acked message; {} in neither",
        if c.mode == "netns" {
            "the open loop's pacing thread is"
        } else {
            "the relay's thread and the open loop's pacing thread are"
        }
    ));
    if c.repeat > 1 {
        notes.push(format!(
            "{} repetitions per row, in rounds (every row once per round), each on its own \
             stream; ratios are to the median of the 0 % row's; the pictures show each row's \
             first repetition",
            c.repeat
        ));
    }
    let runs = || rows.iter().flat_map(|r| &r.item.runs);
    if runs().any(|r| r.stored.is_none()) {
        notes.push("the daemon's record count could not be read for some repetitions: their stored-once check is missing".into());
    }
    if runs().any(|r| r.cpu.daemon.is_none()) {
        notes.push("the daemon's CPU time could not be read for some repetitions".into());
    }
    let ok = rows.iter().all(|r| r.item.checks.ok);
    let plots = Plots {
        latency: rows.iter().map(|r| r.curve.clone()).collect(),
        throughput: rows.iter().map(|r| r.series.clone()).collect(),
    };
    Ok(LossReport {
        head,
        config: c.clone(),
        load: if c.open_loop() { "open" } else { "closed" },
        latency_from: if c.open_loop() {
            "due time (coordinated-omission corrected)"
        } else {
            "send_batch call"
        },
        rows: rows.into_iter().map(|r| r.item).collect(),
        plots,
        ok,
        notes,
    })
}

/// A row with the pictures of its first repetition, or one repetition
/// with its pictures.
struct Pictured<T> {
    item: T,
    curve: PercentileCurve,
    series: TimeSeries,
}

fn label(loss: f64) -> String {
    format!("{loss} % loss")
}

/// The rows against one daemon: `repeat` rounds of every row once.
fn sweep(
    c: &LossConfig,
    mut bed: Box<dyn Bed>,
    progress: &Progress,
) -> Result<Vec<Pictured<LossRow>>, String> {
    let plan = c.plan();
    let mut reps: Vec<Vec<Pictured<LossRun>>> = c.loss.iter().map(|_| Vec::new()).collect();
    let steps = c.loss.len() * c.repeat;
    // Fresh producer ids for every repetition.
    let mut next_id = 1001u64;
    let mut failed = None;
    'rounds: for k in 0..c.repeat {
        for (i, &loss) in c.loss.iter().enumerate() {
            if interrupt::requested() {
                failed = Some("interrupted".to_owned());
                break 'rounds;
            }
            let stream = format!("loss-{i}-{}", k + 1);
            let name = if c.repeat > 1 {
                format!(
                    "step {} of {steps}: {}, run {} of {}",
                    k * c.loss.len() + i + 1,
                    label(loss),
                    k + 1,
                    c.repeat
                )
            } else {
                format!("row {} of {}, {}", i + 1, c.loss.len(), label(loss))
            };
            if progress.is_hidden() {
                eprintln!("loss: {name} ...");
            }
            progress.phase(
                &name,
                match c.seconds {
                    Some(s) => Goal::Seconds(c.warmup + s),
                    None => Goal::Count(c.count.unwrap_or(0).saturating_mul(c.producers as u64)),
                },
            );
            let first_id = next_id;
            next_id += c.producers as u64;
            let run = Run {
                row: i,
                number: k + 1,
                loss,
                stream: &stream,
                first_id,
            };
            match repetition(c, bed.as_mut(), &plan, &run, progress) {
                Ok(m) => reps[i].push(m),
                Err(e) => {
                    failed = Some(format!("{}, run {}: {e}", label(loss), k + 1));
                    break 'rounds;
                }
            }
        }
    }
    let finished = bed.finish();
    if let Some(e) = failed {
        return Err(e);
    }
    finished?;
    // Ratios to the median of the 0 % row (the first).
    let median = |f: &dyn Fn(&LossRun) -> f64| {
        Spread::of(&reps[0].iter().map(|r| f(&r.item)).collect::<Vec<_>>()).median
    };
    let base = (
        median(&|r| r.acked_per_sec),
        median(&|r| r.latency.p50_us as f64),
        median(&|r| r.latency.p99_us as f64),
    );
    let div = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    let mut rows = Vec::with_capacity(reps.len());
    for (loss, reps) in c.loss.iter().zip(reps) {
        let mut runs = Vec::with_capacity(reps.len());
        let mut first = None;
        for rep in reps {
            let mut run = rep.item;
            run.acked_per_sec_per_baseline = div(run.acked_per_sec, base.0);
            run.p50_per_baseline = div(run.latency.p50_us as f64, base.1);
            run.p99_per_baseline = div(run.latency.p99_us as f64, base.2);
            runs.push(run);
            first.get_or_insert((rep.curve, rep.series));
        }
        let (curve, series) = first.ok_or("a row without repetitions")?;
        let checks = Checks {
            all_acked: runs.iter().all(|r| r.checks.all_acked),
            stored_once: runs
                .iter()
                .map(|r| r.checks.stored_once)
                .collect::<Option<Vec<bool>>>()
                .map(|v| v.iter().all(|ok| *ok)),
            ok: runs.iter().all(|r| r.checks.ok),
        };
        rows.push(Pictured {
            item: LossRow {
                loss_percent: *loss,
                summary: RowSummary::of(&runs),
                runs,
                checks,
            },
            curve,
            series,
        });
    }
    Ok(rows)
}

/// Which repetition of which row.
struct Run<'a> {
    /// Index into the loss rates.
    row: usize,
    /// 1-based repetition.
    number: usize,
    loss: f64,
    stream: &'a str,
    first_id: u64,
}

fn repetition(
    c: &LossConfig,
    bed: &mut dyn Bed,
    plan: &Plan,
    r: &Run,
    progress: &Progress,
) -> Result<Pictured<LossRun>, String> {
    let stream = r.stream;
    let before = bed.scrape();
    let drops_before = bed.udp_rcvbuf_errors();
    let addr = bed.impair(r.row, r.loss)?;
    let pid = bed.daemon_pid();
    // On a runtime built where `producers` calls it, so that every socket
    // is made there (the producers' namespace).
    // The producers' own view of loss: how long they sat with no credit.
    let stalls = std::sync::Mutex::new(CreditStalls::default());
    let outcome = bed.producers(&|options| {
        producers::runtime(Some(PRODUCER_THREADS))?.block_on(async {
            let to = |_| stream.to_owned();
            let p = producers::connect(c.producers, addr, to, r.first_id, options).await?;
            let watches: Vec<_> = p
                .iter()
                .filter_map(|p| match p {
                    Publisher::Sluice(p) => Some(p.watch_status()),
                    _ => None,
                })
                .collect();
            let o =
                producers::run(p, plan, progress, |s| Mark::take(s.counts(), pid, || None)).await;
            *stalls.lock().unwrap() = CreditStalls::of(&watches);
            o
        })
    });
    let credit_stalls = stalls.into_inner().unwrap();
    let impaired = bed.clear();
    let o = outcome?;
    let after = bed.scrape();
    let kernel_udp_drops = drops_before
        .zip(bed.udp_rcvbuf_errors())
        .map(|(a, b)| b.saturating_sub(a));
    let daemon = before
        .as_ref()
        .zip(after.as_ref())
        .map(|(a, b)| DaemonCounters::between(a, b));
    let stored = match bed.stored(stream) {
        Ok(n) => Some(n),
        // Interrupted: the daemon got the signal too.
        Err(_) if interrupt::requested() => None,
        Err(e) => {
            eprintln!("loss: the record count of {stream}: {e}");
            None
        }
    };
    let all_acked = o.errors == 0 && o.acked == o.sent && o.sent > 0;
    let stored_once = stored.map(|n| n == o.acked);
    let w = o.start.until(&o.end);
    let acked_per_sec = w.acked as f64 / w.seconds.max(1e-9);
    let name = label(r.loss);
    Ok(Pictured {
        curve: PercentileCurve::of(name.clone(), &o.latency),
        series: o.timeline.series(name, w.seconds),
        item: LossRun {
            run: r.number,
            stream: stream.to_owned(),
            sent: o.sent,
            acked: o.acked,
            errors: o.errors,
            first_error: o.first_error.clone(),
            window_seconds: w.seconds,
            window_acked: w.acked,
            acked_per_sec,
            mb_per_sec: acked_per_sec * c.size as f64 / 1e6,
            acked_per_sec_per_baseline: None,
            p50_per_baseline: None,
            p99_per_baseline: None,
            latency: Latency::of(&o.latency),
            pacer_lag: o.pacer_lag.as_ref().map(Latency::of),
            cpu: LossCpu::of(&w),
            impaired,
            daemon,
            kernel_udp_drops,
            credit_stalls,
            stored,
            checks: Checks {
                all_acked,
                stored_once,
                ok: all_acked && stored_once != Some(false),
            },
        },
    })
}

use crate::measure::panic_text;
use crate::publisher::Publisher;

/// `sluice-bench loss`: runs, prints the table, writes the JSON (and the
/// pictures); fails when a row's checks fail.
pub fn main(a: &LossArgs) -> ExitCode {
    let fail = |e: String| crate::args::fail("loss", e);
    let c = match a.config() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let progress = Progress::new("loss", a.quiet);
    let report = run(&c, &progress);
    progress.finish();
    let report = match report {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    print::table(&report);
    if let Err(e) = a.out.save(&report, &report.head, &report.plots) {
        return fail(e);
    }
    if !report.ok {
        return fail("a row's checks failed (see the table)".into());
    }
    ExitCode::SUCCESS
}
