//! The `loss` scenario: durable ingest through a lossy path, one row per
//! loss rate, each row next to the same run's 0 % row.
//!
//! - **relay mode** (the default, no root): a `sluiced` on loopback and the
//!   impairment relay (`sluice_transport::relay`) on the producers' data
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

mod admin;
mod interrupt;
mod load;
mod netns;
mod print;
mod relay;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use sluice_daemon::metrics::scrape::Scrape;
use sluice_transport::client::{ProducerOptions, QuicOptions, Transport};
use sluice_transport::proto::SenderConfig;
use sluice_transport::quic::tls::{self, ClientTls, ServerTrust};

use crate::measure::{DaemonCounters, Host, Latency, PercentileCurve, Plots, TimeSeries};
use crate::progress::{Goal, Progress};
use load::{LoadOutcome, LoadSpec};

/// Version of the JSON layout (bump on incompatible changes).
pub const JSON_SCHEMA: u32 = 1;

/// `sluice-bench loss`: see the module's comment.
#[derive(Debug, Clone, clap::Args)]
pub struct LossArgs {
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
    /// seed + i): the same seed impairs the same way.
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
    /// Seconds measured per row, after the warm-up [default: 3].
    #[arg(long, conflicts_with = "count")]
    pub seconds: Option<f64>,
    /// Instead of --seconds: messages per producer per row (all measured
    /// unless --warmup is given).
    #[arg(long)]
    pub count: Option<u64>,
    /// Seconds at the start of each row not measured [default: 0.5 with
    /// --seconds, 0 with --count].
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
    /// Closed loop: send_batch calls outstanding per producer.
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    /// The daemon's fsync policy (anything but `always` breaks the promise).
    #[arg(long, default_value = "always", value_parser = ["always", "interval", "never"])]
    pub fsync: String,
    /// Where the temporary data folder is made.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Most seconds the calls outstanding at a row's end get to be acked.
    #[arg(long, default_value_t = 60.0)]
    pub drain_timeout: f64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also draw the pictures into this folder: loss-latency.svg (ack
    /// latency by percentile, one line per row) and loss-throughput.svg
    /// (acks per 100 ms over each row's window).
    #[arg(long)]
    pub plot: Option<PathBuf>,
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
        if self.producers == 0 || self.in_flight == 0 || self.batch == Some(0) {
            return Err("--producers, --in-flight and --batch must be at least 1".into());
        }
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            return Err("--rate must be a number >= 0".into());
        }
        let (seconds, count) = match (self.seconds, self.count) {
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
            .warmup
            .unwrap_or(if count.is_some() { 0.0 } else { 0.5 });
        if !(warmup >= 0.0 && warmup.is_finite()) {
            return Err("--warmup must be >= 0".into());
        }
        if !(self.drain_timeout > 0.0 && self.drain_timeout.is_finite()) {
            return Err("--drain-timeout must be more than 0".into());
        }
        let open = self.rate > 0.0;
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
            seconds,
            count,
            warmup,
            rate: self.rate,
            batch: self.batch.unwrap_or(if open { 1 } else { 256 }),
            in_flight: self.in_flight,
            fsync: self.fsync.clone(),
            dir: self.dir.clone(),
            drain_timeout: self.drain_timeout,
        })
    }
}

impl LossConfig {
    fn open_loop(&self) -> bool {
        self.rate > 0.0
    }

    fn load_spec(&self) -> LoadSpec {
        LoadSpec {
            producers: self.producers,
            size: self.size,
            batch: self.batch,
            in_flight: self.in_flight,
            rate: self.rate,
            seconds: self.seconds,
            count: self.count.unwrap_or(0),
            warmup: self.warmup,
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

/// The checks of one row.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Checks {
    /// No call failed and acked == sent.
    pub all_acked: bool,
    /// The row's stream holds exactly `acked` records (nothing lost,
    /// nothing stored twice); `None` if the daemon could not be asked.
    pub stored_once: Option<bool>,
    pub ok: bool,
}

/// One loss rate.
#[derive(Debug, Clone, Serialize)]
pub struct LossRow {
    pub loss_percent: f64,
    /// The row's own stream (so that its record count is the row's).
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
    /// acked_per_sec ÷ the 0 % row's.
    pub acked_per_sec_per_baseline: Option<f64>,
    /// Ack p50 and p99 ÷ the 0 % row's.
    pub p50_per_baseline: Option<f64>,
    pub p99_per_baseline: Option<f64>,
    pub latency: Latency,
    /// Open loop: how late the pacing thread handed messages over.
    pub pacer_lag: Option<Latency>,
    pub impaired: Option<Impaired>,
    /// The daemon's counters over the row (from connect to close):
    /// `nacks_sent`, `retransmits_received`, `duplicates` (messages it
    /// received again and acked without storing them again).
    pub daemon: Option<DaemonCounters>,
    /// Datagrams the kernel dropped over the row because a UDP socket's
    /// receive buffer was full (relay mode: on the whole machine; netns
    /// mode: in the two namespaces). Loss nobody asked for: the relay, the
    /// daemon or the producers fell behind.
    pub kernel_udp_drops: Option<u64>,
    /// Records in the row's stream (its durable end, from `GET /streams`).
    pub stored: Option<u64>,
    pub checks: Checks,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct LossReport {
    pub scenario: &'static str,
    pub schema: u32,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix: u64,
    pub host: Host,
    pub config: LossConfig,
    /// `closed` or `open`.
    pub load: &'static str,
    pub latency_from: &'static str,
    pub rows: Vec<LossRow>,
    /// One latency curve and one acks-per-100-ms series per row.
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
    /// Runs the producers where they belong (the producers' namespace).
    fn load(
        &self,
        spec: &LoadSpec,
        addr: SocketAddr,
        stream: &str,
        first_id: u64,
        progress: &Progress,
    ) -> Result<LoadOutcome, String>;
    fn scrape(&self) -> Option<Scrape>;
    /// The kernel's count of UDP datagrams dropped for a full receive
    /// buffer, where the run's sockets are.
    fn udp_rcvbuf_errors(&self) -> Option<u64>;
    /// Records in `stream`.
    fn stored(&self, stream: &str) -> Result<u64, String>;
    /// Stops the daemon cleanly.
    fn finish(self: Box<Self>) -> Result<(), String>;
}

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

/// QUIC options pinning the daemon's certificate at `cert`.
fn quic_options(cert: &std::path::Path, token: Option<String>) -> Result<QuicOptions, String> {
    let certs = tls::load_certs(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
    let first = certs
        .first()
        .ok_or_else(|| format!("{}: no certificate", cert.display()))?;
    Ok(QuicOptions {
        tls: ClientTls {
            trust: ServerTrust::Fingerprint(tls::fingerprint(first)),
            client_cert: None,
            server_name: None,
        },
        token,
    })
}

/// Runs the scenario.
pub fn run(c: &LossConfig, progress: &Progress) -> Result<LossReport, String> {
    interrupt::install();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    std::fs::create_dir_all(&c.dir).map_err(|e| format!("{}: {e}", c.dir.display()))?;
    let work = tempfile::Builder::new()
        .prefix("sluice-bench-loss-")
        .tempdir_in(&c.dir)
        .map_err(|e| format!("a temporary folder in {}: {e}", c.dir.display()))?;
    let mut notes = Vec::new();
    let rows = if c.mode == "netns" {
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
    if rows.iter().any(|r| r.row.stored.is_none()) {
        notes.push("the daemon's record count could not be read for some rows: their stored-once check is missing".into());
    }
    let ok = rows.iter().all(|r| r.row.checks.ok);
    let plots = Plots {
        latency: rows.iter().map(|r| r.curve.clone()).collect(),
        throughput: rows.iter().map(|r| r.series.clone()).collect(),
    };
    Ok(LossReport {
        scenario: "loss",
        schema: JSON_SCHEMA,
        started_unix,
        host: Host::here(),
        config: c.clone(),
        load: if c.open_loop() { "open" } else { "closed" },
        latency_from: if c.open_loop() {
            "due time (coordinated-omission corrected)"
        } else {
            "send_batch call"
        },
        rows: rows.into_iter().map(|r| r.row).collect(),
        plots,
        ok,
        notes,
    })
}

/// A row with its pictures.
struct Measured {
    row: LossRow,
    curve: PercentileCurve,
    series: TimeSeries,
}

fn label(loss: f64) -> String {
    format!("{loss} % loss")
}

/// The rows, one after another, against one daemon.
fn sweep(
    c: &LossConfig,
    mut bed: Box<dyn Bed>,
    progress: &Progress,
) -> Result<Vec<Measured>, String> {
    let spec = c.load_spec();
    let mut rows: Vec<Measured> = Vec::new();
    let mut failed = None;
    for (i, &loss) in c.loss.iter().enumerate() {
        if interrupt::requested() {
            failed = Some("interrupted".to_owned());
            break;
        }
        let stream = format!("loss-{i}");
        let name = format!("row {} of {}, {}", i + 1, c.loss.len(), label(loss));
        if progress.is_hidden() {
            eprintln!("loss: {name} ...");
        }
        progress.phase(
            &name,
            match c.seconds {
                Some(s) => Goal::Seconds(c.warmup + s),
                None => Goal::Count(spec.count.saturating_mul(c.producers as u64)),
            },
        );
        match row(c, bed.as_mut(), &spec, i, loss, &stream, progress) {
            Ok(m) => rows.push(m),
            Err(e) => {
                failed = Some(format!("{}: {e}", label(loss)));
                break;
            }
        }
    }
    let finished = bed.finish();
    if let Some(e) = failed {
        return Err(e);
    }
    finished?;
    // Ratios to the 0 % row (the first).
    let base = rows.first().map(|m| (m.row.acked_per_sec, m.row.latency));
    for m in &mut rows {
        if let Some((per_sec, lat)) = base {
            let div = |a: f64, b: f64| (b > 0.0).then(|| a / b);
            m.row.acked_per_sec_per_baseline = div(m.row.acked_per_sec, per_sec);
            m.row.p50_per_baseline = div(m.row.latency.p50_us as f64, lat.p50_us as f64);
            m.row.p99_per_baseline = div(m.row.latency.p99_us as f64, lat.p99_us as f64);
        }
    }
    Ok(rows)
}

fn row(
    c: &LossConfig,
    bed: &mut dyn Bed,
    spec: &LoadSpec,
    i: usize,
    loss: f64,
    stream: &str,
    progress: &Progress,
) -> Result<Measured, String> {
    let before = bed.scrape();
    let drops_before = bed.udp_rcvbuf_errors();
    let addr = bed.impair(i, loss)?;
    // Fresh producer ids for every row.
    let first_id = (i as u64 + 1) * 1000 + 1;
    let outcome = bed.load(spec, addr, stream, first_id, progress);
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
    let acked_per_sec = o.window_acked as f64 / o.window_seconds.max(1e-9);
    let name = label(loss);
    Ok(Measured {
        curve: PercentileCurve::of(name.clone(), &o.latency),
        series: TimeSeries {
            label: name,
            points: o.series.clone(),
        },
        row: LossRow {
            loss_percent: loss,
            stream: stream.to_owned(),
            sent: o.sent,
            acked: o.acked,
            errors: o.errors,
            first_error: o.first_error.clone(),
            window_seconds: o.window_seconds,
            window_acked: o.window_acked,
            acked_per_sec,
            mb_per_sec: acked_per_sec * c.size as f64 / 1e6,
            acked_per_sec_per_baseline: None,
            p50_per_baseline: None,
            p99_per_baseline: None,
            latency: Latency::of(&o.latency),
            pacer_lag: o.pacer_lag.as_ref().map(Latency::of),
            impaired,
            daemon,
            kernel_udp_drops,
            stored,
            checks: Checks {
                all_acked,
                stored_once,
                ok: all_acked && stored_once != Some(false),
            },
        },
    })
}

pub(crate) fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic".into())
}

/// `sluice-bench loss`: runs, prints the table, writes the JSON (and the
/// pictures); fails when a row's checks fail.
pub fn main(a: &LossArgs) -> ExitCode {
    let fail = |e: String| {
        eprintln!("sluice-bench loss: {e}");
        ExitCode::FAILURE
    };
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
    if let Some(path) = &a.json {
        if let Err(e) = crate::measure::write_json(path, &report) {
            return fail(e);
        }
    }
    if let Some(dir) = &a.plot {
        let title = crate::plot::title("loss", &report.host);
        match crate::plot::draw(&report.plots, &title, dir, "loss") {
            Ok(files) => {
                for f in files {
                    println!("wrote {}", f.display());
                }
            }
            Err(e) => return fail(e),
        }
    }
    if !report.ok {
        return fail("a row's checks failed (see the table)".into());
    }
    ExitCode::SUCCESS
}
