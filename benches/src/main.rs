//! sluice-bench: the load harness. Every figure is printed next to the
//! machine's own limits measured in the same run, as a ratio, because these
//! machines are noisy and absolute numbers travel badly.
//!
//!   sluice-bench baseline [--dir D]
//!   sluice-bench spool [--dir D] [--appenders 1,8,64] [--sizes 128,1024,65536]
//!   sluice-bench ingest [--producers 8] [--size 128] [--seconds 5 | --count N]
//!                       [--rate MSGS_PER_SEC] [--fsync always] [--batch N] [--json FILE]
//!   sluice-bench consume [--producers 4] [--size 128] [--seconds 5]
//!                        [--groups 1,4] [--max-ahead 65536] [--rate 20000]
//!                        [--latency-groups 1] [--max-messages 4096] [--fsync always]
//!                        [--parts ingest,delivery,latency] [--warmup 1]
//!                        [--daemon ADDR --admin ADDR --server-cert FILE] [--json FILE]
//!   sluice-bench xdp [--part datapath|durable|all] [--seconds 3] [--sizes 64,1400]
//!                    [--rate 100000] [--producers 4] [--dir D] [--json FILE]   (root)

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sluice_bench::consume::{self, ConsumeConfig, Part};
use sluice_bench::ingest::{self, External, IngestConfig, Length, PathKind};
use sluice_bench::{baseline, daemon, spool};

#[derive(Parser)]
#[command(
    name = "sluice-bench",
    version,
    about = "Measure sluice on this machine"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// The machine's limits: raw 1 MiB write+fdatasync MB/s, 4 KiB
    /// fdatasync/s and its latency, on the file system of --dir.
    Baseline {
        /// A directory on the file system to measure (the spool's).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Seconds to measure.
        #[arg(long, default_value_t = 4.0)]
        seconds: f64,
    },
    /// The spool alone: appends with fsync = always from concurrent
    /// appenders, as throughput and ack latency, against the raw baseline.
    Spool {
        /// Where to put the spool (a temporary folder is made inside it).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Numbers of concurrent appenders to try.
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8, 64])]
        appenders: Vec<usize>,
        /// Record sizes in bytes.
        #[arg(long, value_delimiter = ',', default_values_t = [128usize, 1024, 65536])]
        sizes: Vec<usize>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Instead of the table: ack latency at these fixed rates (records/s,
        /// 1 KiB records, 8 appenders, open loop).
        #[arg(long, value_delimiter = ',')]
        latency_at: Vec<f64>,
    },
    /// End-to-end durable ingest on loopback: producers in this process, a
    /// `sluiced` in another (started from this binary), acked msgs/s, ack
    /// latency and CPU per message, against a plain UDP loop and raw
    /// fdatasync measured in the same run.
    Ingest(Box<IngestArgs>),
    /// Publish -> consumer on loopback: durable ingest alone, then delivery
    /// throughput to 1 and 4 consumer groups while producers publish as
    /// fast as the groups keep up (÷ ingest alone), then publish -> delivery
    /// latency at a steady rate next to the durable-ack latency of the same
    /// messages.
    Consume(Box<ConsumeArgs>),
    /// The AF_XDP path against the socket path over a veth pair between two
    /// network namespaces (root): raw packets/s and receiver CPU per packet,
    /// AF_XDP TX against sendmmsg, and durable ingest through `sluiced`.
    Xdp(Box<sluice_bench::xdp::XdpArgs>),
    /// Runs a `sluiced` (the harness starts its daemon this way):
    /// `sluice-bench daemon -- <sluiced flags>`.
    #[command(hide = true)]
    Daemon {
        /// Stop when stdin reaches EOF (the harness is gone).
        #[arg(long)]
        stop_on_stdin_eof: bool,
        /// `sluiced`'s flags (see `sluiced --help`).
        #[arg(last = true)]
        sluiced: Vec<OsString>,
    },
}

#[derive(clap::Args)]
struct IngestArgs {
    /// Concurrent producers (one session each).
    #[arg(long, default_value_t = 8)]
    producers: usize,
    /// Message payload size, bytes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Seconds to measure, after the warm-up [default: 5].
    #[arg(long, conflicts_with = "count")]
    seconds: Option<f64>,
    /// Instead of --seconds: messages per producer (the whole run is
    /// measured unless --warmup is given).
    #[arg(long)]
    count: Option<u64>,
    /// Seconds at the start not measured [default: 1 with --seconds, 0
    /// with --count].
    #[arg(long)]
    warmup: Option<f64>,
    /// Total messages/s over all producers, sent at their due times (open
    /// loop; latency from the due time). 0: closed loop, as fast as acks
    /// come back.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// The daemon's fsync policy (anything but `always` breaks the promise:
    /// for separating disk from CPU).
    #[arg(long, default_value = "always", value_parser = ["always", "interval", "never"])]
    fsync: String,
    /// Messages per send_batch call [default: 256 closed loop, 1 open loop].
    #[arg(long)]
    batch: Option<usize>,
    /// Closed loop: send_batch calls outstanding per producer (the default
    /// 16 x 256 = 4,096 messages is sluiced's default credit per session).
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// Spread the producers over this many streams (one spool writer each).
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// The producers' largest datagram (UDP payload), bytes.
    #[arg(long, default_value_t = 1452)]
    datagram: usize,
    /// Where the temporary data folder is made (and the disk baseline
    /// measured).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// The path: `fast` (authenticate over QUIC, sealed raw UDP), `quic`
    /// (everything over QUIC), or `udp` (raw, unsealed: the started daemon
    /// gets insecure_lan).
    #[arg(long, default_value = "fast", value_parser = ["fast", "quic", "udp"])]
    path: String,
    /// Measure a running daemon instead of starting one: its QUIC address
    /// (fast, quic) or data address (udp). Needs --admin, and for fast and
    /// quic --server-cert.
    #[arg(long, requires = "admin")]
    daemon: Option<SocketAddr>,
    /// The running daemon's certificate, pinned.
    #[arg(long, requires = "daemon")]
    server_cert: Option<PathBuf>,
    /// An API token for the running daemon.
    #[arg(
        long,
        requires = "daemon",
        env = "SLUICE_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// The running daemon's admin (metrics) address.
    #[arg(long, requires = "daemon")]
    admin: Option<SocketAddr>,
    /// An extra flag for the started daemon, e.g. --sluiced-arg=--data-credit=8192
    /// (repeatable).
    #[arg(
        long = "sluiced-arg",
        allow_hyphen_values = true,
        conflicts_with = "daemon"
    )]
    sluiced_args: Vec<String>,
    /// Seconds per baseline (disk gets twice this; UDP this per size).
    #[arg(long, default_value_t = 1.0)]
    baseline_seconds: f64,
    /// Skip the baselines (no ratios).
    #[arg(long)]
    no_baselines: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ConsumeArgs {
    /// Which parts to run (the delivery ratios need `ingest`).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Part::Ingest, Part::Delivery, Part::Latency])]
    parts: Vec<Part>,
    /// Concurrent producers (one session each), in every part.
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Message payload size, bytes (at least 8: the latency part puts the
    /// send time in the first 8).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Seconds measured per phase, after the warm-up.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Seconds at the start of each phase not measured.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Numbers of consumer groups (one consumer each) to measure delivery
    /// to, one phase each.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4])]
    groups: Vec<usize>,
    /// Latency part: total messages/s, sent at their due times (open loop).
    #[arg(long, default_value_t = 20_000.0)]
    rate: f64,
    /// Latency part: consumer groups.
    #[arg(long, default_value_t = 1)]
    latency_groups: usize,
    /// Delivery phases: producers make no new call while more than this
    /// many messages sent have not reached the slowest group, so that no
    /// backlog builds up (0: producers run free and the groups fall behind
    /// as they may; the drain then shows the consumers' own speed).
    #[arg(long, default_value_t = 65_536)]
    max_ahead: u64,
    /// Each consumer's credit: messages delivered and not yet acked.
    #[arg(long, default_value_t = 4096)]
    max_messages: u32,
    /// Each consumer's credit: payload bytes delivered and not yet acked.
    #[arg(long, default_value_t = 16 << 20)]
    max_bytes: u64,
    /// The daemon's fsync policy (anything but `always` breaks the promise).
    #[arg(long, default_value = "always", value_parser = ["always", "interval", "never"])]
    fsync: String,
    /// Closed loop: messages per send_batch call.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Closed loop: send_batch calls outstanding per producer.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// The producers' path: `fast` (sealed raw UDP) or `quic`. Consumers
    /// always use QUIC.
    #[arg(long, default_value = "fast", value_parser = ["fast", "quic"])]
    path: String,
    /// The producers' largest datagram (UDP payload), bytes.
    #[arg(long, default_value_t = 1452)]
    datagram: usize,
    /// Where the temporary data folder is made (and the disk baseline
    /// measured).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Measure a running daemon instead of starting one: its QUIC address.
    /// Needs --admin and --server-cert.
    #[arg(long, visible_alias = "quic", requires_all = ["admin", "server_cert"])]
    daemon: Option<SocketAddr>,
    /// The running daemon's certificate, pinned.
    #[arg(long, requires = "daemon")]
    server_cert: Option<PathBuf>,
    /// An API token for the running daemon.
    #[arg(
        long,
        requires = "daemon",
        env = "SLUICE_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// The running daemon's admin (metrics) address.
    #[arg(long, requires = "daemon")]
    admin: Option<SocketAddr>,
    /// An extra flag for the started daemon, e.g.
    /// --sluiced-arg=--consumers-read-ahead=16384 (repeatable).
    #[arg(
        long = "sluiced-arg",
        allow_hyphen_values = true,
        conflicts_with = "daemon"
    )]
    sluiced_args: Vec<String>,
    /// Most seconds the groups get to receive everything after a phase.
    #[arg(long, default_value_t = 120.0)]
    drain_timeout: f64,
    /// Seconds per baseline (disk gets twice this; UDP this per size).
    #[arg(long, default_value_t = 1.0)]
    baseline_seconds: f64,
    /// Skip the machine's baselines.
    #[arg(long)]
    no_baselines: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl ConsumeArgs {
    fn config(&self) -> ConsumeConfig {
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
        }
    }
}

impl IngestArgs {
    fn config(&self) -> IngestConfig {
        let length = match self.count {
            Some(n) => Length::CountPerProducer(n),
            None => Length::Seconds(self.seconds.unwrap_or(5.0)),
        };
        let default_warmup = match length {
            Length::Seconds(_) => 1.0,
            Length::CountPerProducer(_) => 0.0,
        };
        let open = self.rate > 0.0;
        IngestConfig {
            producers: self.producers,
            size: self.size,
            length,
            warmup: self.warmup.unwrap_or(default_warmup),
            rate: self.rate,
            fsync: self.fsync.clone(),
            batch: self.batch.unwrap_or(if open { 1 } else { 256 }),
            in_flight: self.in_flight,
            streams: self.streams,
            datagram: self.datagram,
            dir: self.dir.clone(),
            path: match self.path.as_str() {
                "quic" => PathKind::Quic,
                "udp" => PathKind::Udp,
                _ => PathKind::Fast,
            },
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
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Baseline { dir, seconds } => run_baseline(&dir, seconds).map(|_| ()),
        Scenario::Spool {
            dir,
            latency_at,
            seconds,
            ..
        } if !latency_at.is_empty() => run_latency(&dir, &latency_at, seconds),
        Scenario::Spool {
            dir,
            appenders,
            sizes,
            seconds,
            ..
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            run_spool(&rt, &dir, &appenders, &sizes, seconds)
        }
        Scenario::Ingest(a) => return run_ingest(&a),
        Scenario::Consume(a) => return run_consume(&a),
        Scenario::Xdp(a) => return sluice_bench::xdp::main(&a),
        Scenario::Daemon {
            stop_on_stdin_eof,
            sluiced,
        } => return daemon::run_hidden(stop_on_stdin_eof, sluiced),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_baseline(dir: &std::path::Path, seconds: f64) -> std::io::Result<baseline::DiskBaseline> {
    let b = baseline::disk(dir, Duration::from_secs_f64(seconds))?;
    println!("baseline on {}:", dir.display());
    println!("  1 MiB write+fdatasync   {:>10.1} MB/s", b.mb_per_sec_1mib);
    println!(
        "  4 KiB append+fdatasync  {:>10.0} /s",
        b.syncs_per_sec_4kib
    );
    println!(
        "  4 KiB fdatasync latency  p50 {} us, p99 {} us",
        b.sync_p50_us, b.sync_p99_us
    );
    Ok(b)
}

fn run_latency(dir: &std::path::Path, rates: &[f64], seconds: f64) -> std::io::Result<()> {
    let work = tempfile::tempdir_in(dir)?;
    let base = run_baseline(work.path(), 2.0)?;
    for &rate in rates {
        latency_row(work.path(), &base, rate, Duration::from_secs_f64(seconds))?;
    }
    Ok(())
}

/// Spool ack latency at `rate` (1 KiB, 8 appenders, open loop) next to the
/// ideal raw group commit at the same load, measured right after it.
fn latency_row(
    dir: &std::path::Path,
    base: &baseline::DiskBaseline,
    rate: f64,
    d: Duration,
) -> std::io::Result<()> {
    let (p50, p99) = spool::at_rate(dir, 8, 1024, rate, d);
    let (i50, i99) = baseline::ideal_group_commit(dir, rate, 1024, d)?;
    println!(
        "{rate:>9.0} rec/s | spool ack p50 {p50:>6} us p99 {p99:>7} us | ideal raw group commit \
         p50 {i50:>6} us p99 {i99:>7} us | p99 ÷ ideal {:>5.2}x, ÷ closed-loop fdatasync p99 ({} us) {:>6.2}x",
        p99 as f64 / i99.max(1) as f64,
        base.sync_p99_us,
        p99 as f64 / base.sync_p99_us.max(1) as f64
    );
    Ok(())
}

fn run_spool(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    appenders: &[usize],
    sizes: &[usize],
    seconds: f64,
) -> std::io::Result<()> {
    let work = tempfile::tempdir_in(dir)?;
    let base = run_baseline(work.path(), 4.0)?;
    let d = Duration::from_secs_f64(seconds);
    println!("\nspool, fsync = always ({seconds} s per row)");
    println!(
        "{:>9} {:>8} {:>6} | {:>12} {:>9} {:>8} | {:>9} {:>9}",
        "appenders", "record", "batch", "records/s", "MB/s", "÷ raw", "ack p50", "ack p99"
    );
    let mut runs = Vec::new();
    for &size in sizes {
        for &a in appenders {
            // One call per record, and (for small records) 64 per call, as the
            // daemon hands over a datagram's worth of messages at once.
            let batches: &[usize] = if size <= 1024 { &[1, 64] } else { &[1] };
            for &batch in batches {
                let r = rt.block_on(spool::peak(work.path(), a, size, batch, d));
                println!(
                    "{:>9} {:>7}B {:>6} | {:>12.0} {:>9.1} {:>7.2}x | {:>7}us {:>7}us",
                    a,
                    size,
                    batch,
                    r.records_per_sec,
                    r.mb_per_sec,
                    r.mb_per_sec / base.mb_per_sec_1mib,
                    r.ack_p50_us,
                    r.ack_p99_us
                );
                runs.push(r);
            }
        }
    }
    // Ack latency at half of the peak of one record per call, 1 KiB, 8 appenders.
    if let Some(peak) = runs
        .iter()
        .find(|r| r.record_bytes == 1024 && r.appenders == 8 && r.batch == 1)
    {
        println!("\nack latency at half of peak (1 KiB, 8 appenders, open loop):");
        latency_row(work.path(), &base, peak.records_per_sec / 2.0, d)?;
    }
    Ok(())
}

fn run_ingest(a: &IngestArgs) -> ExitCode {
    let config = a.config();
    let report = match ingest::run(&config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice-bench ingest: {e}");
            return ExitCode::FAILURE;
        }
    };
    ingest::print(&report);
    if let Some(path) = &a.json {
        if let Err(e) = sluice_bench::measure::write_json(path, &report) {
            eprintln!("sluice-bench ingest: {e}");
            return ExitCode::FAILURE;
        }
    }
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

fn run_consume(a: &ConsumeArgs) -> ExitCode {
    let report = match consume::run(&a.config()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice-bench consume: {e}");
            return ExitCode::FAILURE;
        }
    };
    consume::print(&report);
    if let Some(path) = &a.json {
        if let Err(e) = sluice_bench::measure::write_json(path, &report) {
            eprintln!("sluice-bench consume: {e}");
            return ExitCode::FAILURE;
        }
    }
    if report.errors > 0 || report.groups_short > 0 {
        eprintln!(
            "sluice-bench consume: {} errors; {} group(s) did not receive every published message",
            report.errors, report.groups_short
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
