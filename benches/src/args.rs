//! What every scenario's command line shares (`#[command(flatten)]`), and
//! the steps that end every scenario: the report's JSON and pictures.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::ingest::External;
use crate::measure::{Head, Plots};
use serde::Serialize;

/// Where a scenario works and what it writes besides its table.
#[derive(clap::Args, Debug, Clone)]
pub struct Output {
    /// Where the temporary folder is made (and removed); the disk figures
    /// are of its file system.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also draw the pictures (SVG) into this folder: SCENARIO-latency.svg
    /// and SCENARIO-throughput.svg.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
}

impl Output {
    /// Writes `--json` and draws `--plot`, where asked.
    pub fn save(&self, report: &impl Serialize, head: &Head, plots: &Plots) -> Result<(), String> {
        if let Some(path) = &self.json {
            crate::measure::write_json(path, report)?;
        }
        if let Some(dir) = &self.plot {
            crate::plot::draw_report(plots, head.scenario, &head.host, dir)?;
        }
        Ok(())
    }
}

/// How long and how hard the producers publish (`ingest`, `loss`).
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Seconds measured per run (ingest; loss: per row), after the warm-up
    /// [default: ingest 5, loss 3].
    #[arg(long, conflicts_with = "count")]
    pub seconds: Option<f64>,
    /// Instead of --seconds: messages per producer per run (all measured
    /// unless --warmup is given).
    #[arg(long)]
    pub count: Option<u64>,
    /// Seconds at the start of each run not measured [default: with
    /// --seconds, ingest 1 and loss 0.5; 0 with --count].
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Total messages/s over all producers, sent at their due times (open
    /// loop; latency from the due time). 0: closed loop, as fast as acks
    /// come back (latency from the call).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Messages per send_batch call [default: 256 closed loop, 1 open loop].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Closed loop: send_batch calls outstanding per producer (the default
    /// 16 x 256 = 4,096 messages is sluiced's default credit per session).
    /// ingest --path http: connections per producer, closed or open loop
    /// [default: 16; --path http 1].
    #[arg(long)]
    pub in_flight: Option<usize>,
}

impl LoadArgs {
    /// Messages per call: as given, else 256 (closed loop) or 1 (open).
    pub fn batch(&self) -> usize {
        self.batch.unwrap_or(if self.rate > 0.0 { 1 } else { 256 })
    }

    /// Calls outstanding per producer: as given, else 16.
    pub fn in_flight(&self) -> usize {
        self.in_flight.unwrap_or(16)
    }
}

/// The daemon measured: one this run starts (with its fsync policy and
/// extra flags), or a running one.
#[derive(clap::Args, Debug, Clone)]
pub struct DaemonArgs {
    /// The started daemon's fsync policy (anything but `always` breaks the
    /// promise: for separating disk from CPU).
    #[arg(long, default_value = "always", value_parser = ["always", "interval", "never"])]
    pub fsync: String,
    /// Measure a running daemon instead of starting one: its QUIC address
    /// (its data address for `--path udp`; `--path http` publishes on
    /// --admin). Needs --admin, and but for udp and http --server-cert.
    #[arg(long, visible_alias = "quic", requires = "admin")]
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
    /// An extra flag for the started daemon, e.g. --sluiced-arg=--data-credit=8192
    /// (repeatable).
    #[arg(
        long = "sluiced-arg",
        allow_hyphen_values = true,
        conflicts_with = "daemon"
    )]
    pub sluiced_args: Vec<String>,
    /// Seconds per baseline (disk gets twice this; UDP this per size),
    /// measured once before the runs.
    #[arg(long, default_value_t = 1.0)]
    pub baseline_seconds: f64,
    /// Skip the machine's baselines (no ratios).
    #[arg(long)]
    pub no_baselines: bool,
}

impl DaemonArgs {
    /// The running daemon, if one is named.
    pub fn external(&self) -> Option<External> {
        self.daemon.zip(self.admin).map(|(addr, admin)| External {
            addr,
            admin,
            server_cert: self.server_cert.clone(),
            token: self.token.clone(),
        })
    }

    /// Seconds per baseline; 0 with --no-baselines.
    pub fn baseline_seconds(&self) -> f64 {
        if self.no_baselines {
            0.0
        } else {
            self.baseline_seconds
        }
    }
}

/// Says `sluice-bench SCENARIO: e` and fails.
pub fn fail(scenario: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("sluice-bench {scenario}: {e}");
    ExitCode::FAILURE
}
