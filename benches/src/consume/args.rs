//! `sluice-bench e2e`'s command line (also reachable as `consume`, its
//! first name).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use super::{ConsumeConfig, Part};
use crate::ingest::{External, PathKind};

#[derive(clap::Args, Debug, Clone)]
pub struct ConsumeArgs {
    /// Which parts to run (the delivery ratios need `ingest`).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Part::Ingest, Part::Delivery, Part::Latency])]
    pub parts: Vec<Part>,
    /// Concurrent producers (one session each), in every part.
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Message payload size, bytes (at least 8: the latency part puts the
    /// send time in the first 8).
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Seconds measured per phase, after the warm-up.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Seconds at the start of each phase not measured.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Numbers of consumer groups (one consumer each) to measure delivery
    /// to, one phase each.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4])]
    pub groups: Vec<usize>,
    /// Latency part: total messages/s, sent at their due times (open loop).
    #[arg(long, default_value_t = 20_000.0)]
    pub rate: f64,
    /// Latency part: consumer groups.
    #[arg(long, default_value_t = 1)]
    pub latency_groups: usize,
    /// Delivery phases: producers make no new call while more than this
    /// many messages sent have not reached the slowest group, so that no
    /// backlog builds up (0: producers run free and the groups fall behind
    /// as they may; the drain then shows the consumers' own speed).
    #[arg(long, default_value_t = 65_536)]
    pub max_ahead: u64,
    /// Each consumer's credit: messages delivered and not yet acked.
    #[arg(long, default_value_t = 4096)]
    pub max_messages: u32,
    /// Each consumer's credit: payload bytes delivered and not yet acked.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_bytes: u64,
    /// The daemon's fsync policy (anything but `always` breaks the promise).
    #[arg(long, default_value = "always", value_parser = ["always", "interval", "never"])]
    pub fsync: String,
    /// Closed loop: messages per send_batch call.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Closed loop: send_batch calls outstanding per producer.
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    /// The producers' path: `fast` (sealed raw UDP) or `quic`. Consumers
    /// always use QUIC.
    #[arg(long, default_value = "fast", value_parser = ["fast", "quic"])]
    pub path: String,
    /// The producers' largest datagram (UDP payload), bytes.
    #[arg(long, default_value_t = 1452)]
    pub datagram: usize,
    /// Where the temporary data folder is made (and the disk baseline
    /// measured).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Measure a running daemon instead of starting one: its QUIC address.
    /// Needs --admin and --server-cert.
    #[arg(long, visible_alias = "quic", requires_all = ["admin", "server_cert"])]
    pub daemon: Option<SocketAddr>,
    /// The running daemon's certificate, pinned.
    #[arg(long, requires = "daemon")]
    pub server_cert: Option<PathBuf>,
    /// An API token for the running daemon.
    #[arg(
        long,
        requires = "daemon",
        env = "SLUICE_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// The running daemon's admin (metrics) address.
    #[arg(long, requires = "daemon")]
    pub admin: Option<SocketAddr>,
    /// An extra flag for the started daemon, e.g.
    /// --sluiced-arg=--consumers-read-ahead=16384 (repeatable).
    #[arg(
        long = "sluiced-arg",
        allow_hyphen_values = true,
        conflicts_with = "daemon"
    )]
    pub sluiced_args: Vec<String>,
    /// Most seconds the groups get to receive everything after a phase.
    #[arg(long, default_value_t = 120.0)]
    pub drain_timeout: f64,
    /// Seconds per baseline (disk gets twice this; UDP this per size).
    #[arg(long, default_value_t = 1.0)]
    pub baseline_seconds: f64,
    /// Skip the machine's baselines.
    #[arg(long)]
    pub no_baselines: bool,
    /// Run every phase this many times (one daemon, a fresh stream each
    /// time): the headline figures are then given as min / median / max;
    /// the detailed tables and the pictures are of the first repetition.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also draw the pictures (SVG) into this folder.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
}

impl ConsumeArgs {
    pub fn config(&self) -> ConsumeConfig {
        ConsumeConfig {
            parts: self.parts.clone(),
            producers: self.producers,
            size: self.size,
            seconds: self.seconds,
            warmup: self.warmup,
            groups: self.groups.clone(),
            rate: self.rate,
            latency_groups: self.latency_groups,
            max_ahead: self.max_ahead,
            max_messages: self.max_messages,
            max_bytes: self.max_bytes,
            fsync: self.fsync.clone(),
            batch: self.batch,
            in_flight: self.in_flight,
            path: if self.path == "quic" {
                PathKind::Quic
            } else {
                PathKind::Fast
            },
            datagram: self.datagram,
            dir: self.dir.clone(),
            external: self.daemon.zip(self.admin).map(|(addr, admin)| External {
                addr,
                admin,
                server_cert: self.server_cert.clone(),
                token: self.token.clone(),
            }),
            sluiced_args: self.sluiced_args.clone(),
            baseline_seconds: if self.no_baselines {
                0.0
            } else {
                self.baseline_seconds
            },
            drain_timeout: self.drain_timeout,
            repeat: self.repeat,
        }
    }
}

/// `sluice-bench e2e` (alias `consume`).
pub fn main(a: &ConsumeArgs) -> ExitCode {
    let report = match super::run(&a.config()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice-bench e2e: {e}");
            return ExitCode::FAILURE;
        }
    };
    super::print(&report);
    if let Some(path) = &a.json {
        if let Err(e) = crate::measure::write_json(path, &report) {
            eprintln!("sluice-bench e2e: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(dir) = &a.plot {
        if let Err(e) = crate::plot::draw_report(&report.plots, "e2e", &report.host, dir) {
            eprintln!("sluice-bench e2e: {e}");
            return ExitCode::FAILURE;
        }
    }
    if report.errors > 0 || report.groups_short > 0 {
        eprintln!(
            "sluice-bench e2e: {} errors; {} group(s) did not receive every published message",
            report.errors, report.groups_short
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
