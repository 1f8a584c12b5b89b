//! The `e2e` scenario (first named `consume`, still an alias): the
//! publish → consumer path. Producers (this
//! process, fast path by default) publish to a `sluiced` (a child process,
//! see [`sluice_testkit::daemon`], or a running one) while consumers
//! (`sluice_transport::client::Consumer`, push mode, one per group, in this
//! process on a runtime of their own; or, with `consume_path`, the admin
//! port's WebSocket or event stream: push.rs; or the gRPC port's
//! StreamingPull: grpc.rs) receive, ack and count every
//! message once per group (at-least-once: distinct offsets).
//!
//! Phases, each on a fresh stream of the same daemon (so every group starts
//! with no backlog, and offsets are record numbers from 0):
//!
//! - **ingest alone**: the baseline of the same run: `producers` closed-loop
//!   producers (as `sluice-bench ingest`'s closed loop), no consumers:
//!   durably acked msgs/s;
//! - **delivery** (once for each entry of `groups`): the same producers as
//!   fast as the groups keep up (no new call while the slowest group is more
//!   than `max_ahead` messages behind: a steady stream without a growing
//!   backlog; `max_ahead = 0` lets them run free) while G groups consume:
//!   delivered msgs/s per group and in total, each ÷ ingest alone (the
//!   issue's target: ≥ 0.8 for one group). After the window the producers
//!   stop and the groups drain: every message published must reach every
//!   group;
//! - **latency**: an open loop at `rate` msgs/s in total (due times, as the
//!   ingest scenario's open loop), each payload starting with its due time
//!   (8 bytes, µs since the Unix epoch, big-endian); delivery latency =
//!   receive time − due time, next to the same messages' durable-ack
//!   latency (producer side, from the due time).
//!
//! Figures come from a window after a warm-up, as in `ingest`: counts, CPU
//! (daemon: /proc/PID/stat; this process by thread: `producer` and
//! `consumer` runtimes, `pacer`), and the daemon's counters (/metrics at
//! both ends). With `repeat` > 1 every phase runs that many times (rounds
//! of all phases, so that a slow spell of the machine spreads over them)
//! and the headline figures get min / median / max; the detailed figures
//! and the pictures (`plots`: delivery and ack latency by percentile,
//! delivered msgs/s over each window) are of the first round. A phase is a
//! [`PhaseSpec`], run by `phase::run_phase`.

mod args;

mod grpc;
mod load;
mod phase;
mod print;
mod push;
mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use sluice_transport::client::QuicOptions;

use crate::filesystem::FileSystem;
use crate::ingest::{self, External, PathKind};
use crate::measure::Head;
use crate::progress::{Goal, Progress};
use sluice_testkit::daemon::DaemonSpec;

pub use args::{main, ConsumeArgs};
pub use load::{stamp_of, stamped, STAMP_BYTES};
use phase::{run_phase, Target};
pub use phase::{Drive, PhaseSpec};
pub use print::print;
pub use report::{
    ConsumeReport, DeliveryHeadline, Drain, GroupFigures, Headline, LatencyHeadline, LatencyRatios,
    LatencyRun, PhaseCpu, Repeats, ThroughputRatios, ThroughputRun, TARGET_DELIVERY_RATIO,
};

/// Version of the JSON layout (bump on incompatible changes). 2: the
/// scenario is named `e2e`; `plots`, `repeats` added.
pub const JSON_SCHEMA: u32 = 2;

/// The parts of the scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// Durable ingest without consumers (the baseline of the ratios).
    Ingest,
    /// Delivery throughput to each number of groups.
    Delivery,
    /// Delivery and ack latency at a steady rate.
    Latency,
}

/// How the consumers receive: a QUIC session (the client library's
/// `Consumer`), or the admin port's push routes (daemon/HTTP.md, "Push").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ConsumePath {
    /// `sluice_transport::client::Consumer`, push over QUIC.
    Quic,
    /// The WebSocket route, binary frames, acks as ranges over the socket.
    Ws,
    /// Server-sent events, acks over `POST .../ack` on a second connection.
    Sse,
    /// The gRPC port's `Subscriber/StreamingPull`, acks in later requests.
    Grpc,
}

impl ConsumePath {
    pub fn name(self) -> &'static str {
        match self {
            ConsumePath::Quic => "QUIC",
            ConsumePath::Ws => "WebSocket (binary frames)",
            ConsumePath::Sse => "server-sent events (acks over POST)",
            ConsumePath::Grpc => "gRPC StreamingPull",
        }
    }
}

/// Everything that describes one run.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumeConfig {
    pub parts: Vec<Part>,
    pub producers: usize,
    /// Message payload bytes (at least [`STAMP_BYTES`] for the latency part).
    pub size: usize,
    /// Seconds measured per phase, after the warm-up.
    pub seconds: f64,
    pub warmup: f64,
    /// Numbers of consumer groups, one delivery phase each.
    pub groups: Vec<usize>,
    /// Latency part: msgs/s in total, and how many groups consume them.
    pub rate: f64,
    pub latency_groups: usize,
    /// Delivery phases: producers make no new call while more than this
    /// many messages sent have not reached the slowest group (0: they run
    /// free and the groups fall behind as they may).
    pub max_ahead: u64,
    /// Each consumer's credit: messages outstanding (and bytes).
    pub max_messages: u32,
    pub max_bytes: u64,
    /// `always`, `interval` or `never` (for a started daemon).
    pub fsync: String,
    /// Closed loop: messages per `send_batch` call, calls outstanding per
    /// producer.
    pub batch: usize,
    pub in_flight: usize,
    /// The producers' path: fast (default) or quic.
    pub path: PathKind,
    /// The consumers' path: quic (default), ws or sse.
    pub consume_path: ConsumePath,
    /// The producers' largest datagram (UDP payload).
    pub datagram: usize,
    /// Where the temporary data folder (and the disk baseline) goes.
    pub dir: PathBuf,
    /// A running daemon: its QUIC address, admin address, certificate.
    pub external: Option<External>,
    /// The running daemon's gRPC address (`--consume-path grpc`).
    pub external_grpc: Option<SocketAddr>,
    /// More `sluiced` flags for a started daemon.
    pub sluiced_args: Vec<String>,
    /// Seconds for the machine's baselines (0: skip them).
    pub baseline_seconds: f64,
    /// Most seconds the groups get to catch up after a phase.
    pub drain_timeout: f64,
    /// Rounds of all phases (min / median / max of the headline figures).
    pub repeat: usize,
}

impl ConsumeConfig {
    pub fn has(&self, p: Part) -> bool {
        self.parts.contains(&p)
    }

    fn validate(&self) -> Result<(), String> {
        let positive = |x: f64| x > 0.0 && x.is_finite();
        if self.producers == 0 || self.batch == 0 || self.in_flight == 0 {
            return Err("--producers, --batch and --in-flight must be at least 1".into());
        }
        if !(positive(self.seconds) && self.warmup >= 0.0 && self.warmup.is_finite()) {
            return Err("--seconds must be more than 0 and --warmup at least 0".into());
        }
        if !positive(self.drain_timeout) {
            return Err("--drain-timeout must be more than 0".into());
        }
        if self.repeat == 0 {
            return Err("--repeat must be at least 1".into());
        }
        if self.parts.is_empty() {
            return Err("--parts names nothing to run".into());
        }
        if self.has(Part::Delivery) && (self.groups.is_empty() || self.groups.contains(&0)) {
            return Err("--groups must list numbers of groups of at least 1".into());
        }
        if self.has(Part::Latency) {
            if !positive(self.rate) {
                return Err("--rate must be more than 0".into());
            }
            if self.latency_groups == 0 {
                return Err("--latency-groups must be at least 1".into());
            }
            if self.size < STAMP_BYTES {
                return Err(format!(
                    "--size must be at least {STAMP_BYTES} (the send time) for the latency part"
                ));
            }
        }
        if self.max_messages == 0 {
            return Err("--max-messages must be at least 1".into());
        }
        if self.consume_path == ConsumePath::Grpc
            && self.external.is_some()
            && self.external_grpc.is_none()
        {
            return Err(
                "--consume-path grpc with --daemon needs --daemon-grpc (its gRPC address)".into(),
            );
        }
        if self.path == PathKind::Udp {
            return Err("--path udp is not offered here: consumers need QUIC anyway".into());
        }
        Ok(())
    }
}
/// Runs the scenario: baselines, (a daemon,) then each phase.
pub fn run(config: &ConsumeConfig) -> Result<ConsumeReport, Box<dyn std::error::Error>> {
    config.validate()?;
    let head = Head::now("e2e", JSON_SCHEMA);
    std::fs::create_dir_all(&config.dir)?;
    let work = tempfile::Builder::new()
        .prefix("sluice-bench-e2e-")
        .tempdir_in(&config.dir)?;
    let file_system = match config.external {
        Some(_) => None,
        None => FileSystem::of(&config.dir).ok(),
    };
    if let Some(w) = file_system.as_ref().and_then(FileSystem::warning) {
        eprintln!("sluice-bench e2e: WARNING: {w}");
    }
    let progress = Progress::new("e2e", false);
    let baselines = if config.baseline_seconds > 0.0 {
        let at_rate = config
            .has(Part::Latency)
            .then_some((config.rate, config.size));
        // Disk 2x, UDP 1x per size (two), fixed-rate ones 2x each.
        let planned = config.baseline_seconds * if at_rate.is_some() { 8.0 } else { 4.0 };
        Some(progress.timed("the machine's baselines", planned, || {
            ingest::measure_baselines(work.path(), config.baseline_seconds, at_rate)
        })?)
    } else {
        None
    };

    let daemon = match config.external {
        Some(_) => None,
        None => {
            let spec = DaemonSpec::this_exe(&work.path().join("data"))?.fsync(&config.fsync);
            Some(spec.args(config.sluiced_args.iter().cloned()).try_start()?)
        }
    };
    let (quic, admin, cert, token) = match (&daemon, &config.external) {
        (Some(d), _) => (
            d.quic,
            d.admin,
            work.path().join("data/tls/server.crt"),
            None,
        ),
        (None, Some(e)) => (
            e.addr,
            e.admin,
            e.server_cert
                .clone()
                .ok_or("a running daemon needs --server-cert (its certificate, pinned)")?,
            e.token.clone(),
        ),
        (None, None) => unreachable!("one or the other"),
    };
    let client = client_options(&cert, token.clone())?;

    let producers_rt = crate::load::runtime(Some("producer"))?;
    let consumers_rt = crate::load::runtime(Some("consumer"))?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let target = Target {
        quic,
        admin,
        grpc: daemon.as_ref().map(|d| d.grpc).or(config.external_grpc),
        pid: daemon.as_ref().map(|d| d.pid()),
        client,
        token,
        prefix: format!("e2e-{:x}-{:x}", std::process::id(), nonce >> 12),
        id_base: (u64::from(std::process::id()) << 32) | u64::from(nonce & 0xFFF0_0000),
        consumers: consumers_rt.handle().clone(),
        progress: progress.clone(),
    };

    let mut phases = Vec::new();
    if config.has(Part::Ingest) {
        phases.push(PhaseSpec {
            name: "ingest".into(),
            groups: 0,
            drive: Drive::Closed,
            // Its stream, once published, is the backlog one group drains.
            backlog_groups: usize::from(config.has(Part::Delivery)),
        });
    }
    if config.has(Part::Delivery) {
        for &g in &config.groups {
            phases.push(PhaseSpec {
                name: format!("deliver{g}"),
                groups: g,
                drive: Drive::Closed,
                backlog_groups: 0,
            });
        }
    }
    if config.has(Part::Latency) {
        phases.push(PhaseSpec {
            name: "latency".into(),
            groups: config.latency_groups,
            drive: Drive::Open { rate: config.rate },
            backlog_groups: 0,
        });
    }
    let mut rounds: Vec<Vec<phase::Outcome>> = Vec::with_capacity(config.repeat);
    let mut failure = None;
    'rounds: for round in 0..config.repeat {
        let mut outcomes = Vec::with_capacity(phases.len());
        for (i, spec) in phases.iter().enumerate() {
            let mut spec = spec.clone();
            let mut what = describe(&spec);
            if config.repeat > 1 {
                spec.name = format!("{}-r{}", spec.name, round + 1);
                what = format!("{what} (round {} of {})", round + 1, config.repeat);
            }
            if progress.is_hidden() {
                eprintln!("sluice-bench e2e: {what} ...");
            }
            progress.phase(&what, Goal::Seconds(config.warmup + config.seconds));
            let index = (round * phases.len() + i) as u64;
            match producers_rt.block_on(run_phase(config, &target, &spec, index)) {
                Ok(o) => outcomes.push(o),
                Err(e) => {
                    failure = Some(format!("{what}: {e}"));
                    break 'rounds;
                }
            }
        }
        rounds.push(outcomes);
    }
    progress.finish();
    drop(producers_rt);
    drop(consumers_rt);
    if let Some(d) = daemon {
        let status = d.try_terminate(Duration::from_secs(30))?;
        if !status.success() && failure.is_none() {
            failure = Some(format!("the daemon did not stop cleanly: {status}"));
        }
    }
    if let Some(f) = failure {
        return Err(f.into());
    }
    let mut report = report::build(config, head, baselines, rounds);
    report.file_system = file_system;
    Ok(report)
}

fn describe(spec: &PhaseSpec) -> String {
    match (spec.drive, spec.groups) {
        (Drive::Closed, 0) => "ingest alone".into(),
        (Drive::Closed, g) => format!("delivery to {g} group(s)"),
        (Drive::Open { rate }, g) => format!("latency at {rate:.0} msgs/s, {g} group(s)"),
    }
}

/// QUIC client options pinning the daemon's certificate `cert`.
fn client_options(
    cert: &std::path::Path,
    token: Option<String>,
) -> Result<QuicOptions, Box<dyn std::error::Error>> {
    Ok(sluice_testkit::daemon::pinned(cert, token)?)
}
