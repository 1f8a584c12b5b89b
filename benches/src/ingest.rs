//! The `ingest` scenario: end-to-end durable ingest on loopback. Producers
//! (this process, `sluice_transport::client::Producer`) publish to a
//! `sluiced` (a separate process, see [`crate::daemon`]) that acks each
//! message only once its group commit is on disk; the harness counts durable
//! acks and their latency.
//!
//! Two modes:
//!
//! - **closed loop** (`rate == 0`): every producer keeps `in_flight`
//!   `send_batch` calls of `batch` messages outstanding, awaited in order,
//!   and starts the next as each is acked: peak durable throughput. Latency
//!   is per message, from the call to its ack.
//! - **open loop** (`rate > 0`): messages are scheduled at `rate` per second
//!   in total (round-robin over the producers) by one pacing thread, each
//!   sent at its due time (`batch` messages per call, 1 by default), and
//!   latency runs from the message's **due** time to its durable ack, so a
//!   stall of the daemon, the harness or the pacer is counted against every
//!   message that should have gone out during it (no coordinated omission).
//!
//! Figures come from a measurement window after a warm-up: acks and CPU time
//! (daemon: /proc/PID/stat; producers: getrusage of this process) and the
//! daemon's own counters (scraped from /metrics at both ends of the window).
//! Every run also measures the machine's limits (raw fdatasync on the same
//! file system, a plain UDP loop on loopback; in open loop, at the run's
//! rate: the ideal raw group commit and a plain UDP echo, with their CPU per
//! operation) and reports ratios to them.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;
use sluice_daemon::metrics::scrape::Scrape;
use sluice_transport::client::{Producer, ProducerError, ProducerOptions, QuicOptions, Transport};
use sluice_transport::proto::SenderConfig;
use sluice_transport::quic::tls::{self, ClientTls, ServerTrust};

use crate::baseline;
use crate::cpu;
use crate::daemon::{self, DaemonProcess, DaemonSpec};
use crate::measure::{CpuUse, DaemonCounters, Host, Latency, Machine};
use crate::udp_baseline::{self, RateLatency, UdpBaseline};

/// The targets, printed next to the figures they apply to.
pub const TARGET_ACKED_PER_SEC: f64 = 500_000.0;
pub const TARGET_P99_US: f64 = 1_000.0;

/// Version of the JSON layout (bump on incompatible changes).
pub const JSON_SCHEMA: u32 = 1;

/// How long the run lasts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Length {
    /// Measure for this many seconds after the warm-up.
    Seconds(f64),
    /// Each producer sends this many messages.
    CountPerProducer(u64),
}

/// An external daemon to measure instead of starting one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct External {
    /// Where producers connect: the QUIC address (fast, quic) or the data
    /// address (udp).
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The daemon's certificate, pinned (fast, quic).
    pub server_cert: Option<PathBuf>,
    /// An API token (fast, quic). Never written to reports.
    #[serde(skip)]
    pub token: Option<String>,
}

/// The path producers take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Authenticated over QUIC, sealed raw UDP: the default.
    Fast,
    /// Everything over QUIC.
    Quic,
    /// Raw UDP, unsealed (a started daemon gets `insecure_lan`).
    Udp,
}

impl PathKind {
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Fast => "the fast path (sealed UDP)",
            PathKind::Quic => "QUIC",
            PathKind::Udp => "raw UDP (insecure_lan)",
        }
    }
}

/// Everything that describes one ingest run.
#[derive(Debug, Clone, Serialize)]
pub struct IngestConfig {
    pub producers: usize,
    /// Message payload bytes.
    pub size: usize,
    pub length: Length,
    /// Seconds excluded at the start (acks, latencies, CPU).
    pub warmup: f64,
    /// Total messages/s over all producers; 0 = closed loop.
    pub rate: f64,
    /// `always`, `interval` or `never` (for a started daemon).
    pub fsync: String,
    /// Messages per `send_batch` call.
    pub batch: usize,
    /// Closed loop: calls outstanding per producer.
    pub in_flight: usize,
    /// Producers are spread round-robin over this many streams.
    pub streams: usize,
    pub path: PathKind,
    /// The producers' largest datagram (UDP payload).
    pub datagram: usize,
    /// Where the temporary data folder (and the disk baseline) goes.
    pub dir: PathBuf,
    pub external: Option<External>,
    /// More `sluiced` flags for a started daemon.
    pub sluiced_args: Vec<String>,
    /// Seconds for the baselines (0: skip them).
    pub baseline_seconds: f64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            producers: 8,
            size: 128,
            length: Length::Seconds(5.0),
            warmup: 1.0,
            rate: 0.0,
            fsync: "always".into(),
            batch: 256,
            in_flight: 16,
            streams: 1,
            path: PathKind::Fast,
            datagram: 1452,
            dir: PathBuf::from("."),
            external: None,
            sluiced_args: Vec::new(),
            baseline_seconds: 1.0,
        }
    }
}

impl IngestConfig {
    pub fn open_loop(&self) -> bool {
        self.rate > 0.0
    }

    fn validate(&self) -> Result<(), String> {
        if self.producers == 0 {
            return Err("--producers must be at least 1".into());
        }
        if self.batch == 0 || self.in_flight == 0 || self.streams == 0 {
            return Err("--batch, --in-flight and --streams must be at least 1".into());
        }
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            return Err("--rate must be a number >= 0".into());
        }
        match self.length {
            Length::Seconds(s) if !(s > 0.0 && s.is_finite()) => {
                Err("--seconds must be more than 0".into())
            }
            Length::CountPerProducer(0) => Err("--count must be at least 1".into()),
            _ if !(self.warmup >= 0.0 && self.warmup.is_finite()) => {
                Err("--warmup must be >= 0".into())
            }
            _ => Ok(()),
        }
    }
}

/// The machine's limits, measured in the same run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Baselines {
    /// 4 KiB append + fdatasync loop on the data folder's file system.
    pub fdatasync_per_sec: f64,
    pub fdatasync_p50_us: u64,
    pub fdatasync_p99_us: u64,
    /// 1 MiB write + fdatasync loop, MB/s.
    pub disk_mb_per_sec: f64,
    /// Plain UDP loop on loopback, 128 B and 1,452 B datagrams.
    pub udp_128: UdpBaseline,
    pub udp_1452: UdpBaseline,
    /// Open loop only, at the run's rate and message size, latency from
    /// the due time: the ideal raw group commit (one thread writes whatever
    /// is due and fdatasyncs it: the disk's and the timer's floor), and a
    /// UDP echo (the network's and the scheduler's floor).
    pub ideal_commit_at_rate: Option<RateLatency>,
    pub udp_echo_at_rate: Option<RateLatency>,
}

/// Measures the baselines on `dir`'s file system, about `seconds` each
/// (disk, and each UDP size); with `at_rate` (messages/s, bytes), twice that
/// for each fixed-rate baseline too.
pub fn measure_baselines(
    dir: &Path,
    seconds: f64,
    at_rate: Option<(f64, usize)>,
) -> std::io::Result<Baselines> {
    let d = Duration::from_secs_f64(seconds);
    let disk = baseline::disk(dir, 2 * d)?;
    let udp_128 = udp_baseline::udp_loop(128, d)?;
    let udp_1452 = udp_baseline::udp_loop(1452, d)?;
    let (mut ideal_commit_at_rate, mut udp_echo_at_rate) = (None, None);
    if let Some((rate, size)) = at_rate {
        let cpu_before = cpu::self_seconds();
        let (p50, p99) = baseline::ideal_group_commit(dir, rate, size.max(1), 2 * d)?;
        let ops = rate * (2 * d).as_secs_f64();
        ideal_commit_at_rate = Some(RateLatency {
            rate,
            count: ops as u64,
            p50_us: p50,
            p99_us: p99,
            cpu_us_per_op: (cpu::self_seconds() - cpu_before) * 1e6 / ops.max(1.0),
            ..RateLatency::default()
        });
        udp_echo_at_rate = Some(udp_baseline::echo_at_rate(rate, size, 2 * d)?);
    }
    Ok(Baselines {
        fdatasync_per_sec: disk.syncs_per_sec_4kib,
        fdatasync_p50_us: disk.sync_p50_us,
        fdatasync_p99_us: disk.sync_p99_us,
        disk_mb_per_sec: disk.mb_per_sec_1mib,
        udp_128,
        udp_1452,
        ideal_commit_at_rate,
        udp_echo_at_rate,
    })
}

/// Figures divided by baselines (and by the targets).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Ratios {
    /// Acked msgs/s ÷ plain UDP 128 B datagrams/s (one message a datagram).
    pub acked_per_udp_128_datagram: f64,
    /// Acked payload MB/s ÷ plain UDP 1,452 B payload MB/s.
    pub goodput_per_udp_1452_mb: f64,
    /// Group commits/s ÷ raw 4 KiB fdatasync/s.
    pub commits_per_raw_fdatasync: f64,
    /// Ack p50 ÷ raw fdatasync p50; ack p99 ÷ raw fdatasync p99.
    pub p50_per_fdatasync_p50: f64,
    pub p99_per_fdatasync_p99: f64,
    /// Open loop: ack p99 ÷ the ideal raw group commit's p99 at the same
    /// rate, and ÷ the UDP echo's p99 at the same rate.
    pub p99_per_ideal_commit_p99: Option<f64>,
    pub p99_per_udp_echo_p99: Option<f64>,
    /// Open loop: CPU per acked message (producers without the harness's
    /// pacing thread, plus daemon) ÷ CPU per operation of the plain floor
    /// at the same rate (UDP echo round trip + ideal raw group commit).
    pub cpu_per_msg_per_plain_floor: Option<f64>,
    /// Acked msgs/s ÷ 500,000 (the throughput target).
    pub acked_per_target: f64,
    /// Ack p99 ÷ 1 ms (the latency target at 10,000 msgs/s).
    pub p99_per_target: f64,
}

/// One run's result.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    pub scenario: &'static str,
    pub schema: u32,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix: u64,
    pub host: Host,
    pub config: IngestConfig,
    /// `closed` or `open`.
    pub mode: &'static str,
    /// Messages handed to producers, and durably acked (all of them, warm-up
    /// and drain included): equal unless something failed.
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// The measurement window.
    pub window_seconds: f64,
    pub window_acked: u64,
    pub acked_per_sec: f64,
    /// Payload MB/s (10^6 bytes) acked.
    pub mb_per_sec: f64,
    /// Open loop: from the due time; closed loop: from the call.
    pub latency_from: &'static str,
    pub latency: Latency,
    /// Open loop: how late the pacing thread handed messages over.
    pub pacer_lag: Option<Latency>,
    pub producer_cpu: CpuUse,
    pub daemon_cpu: Option<CpuUse>,
    /// CPU seconds over the window by thread name: this process (the
    /// producers run on `tokio-rt-worker`; `pacer` is the open loop's
    /// pacing thread, harness overhead) and the daemon's.
    pub producer_threads: BTreeMap<String, f64>,
    pub daemon_threads: BTreeMap<String, f64>,
    pub machine: Option<Machine>,
    pub daemon: Option<DaemonCounters>,
    pub baselines: Option<Baselines>,
    pub ratios: Option<Ratios>,
}

/// Counters shared by the producers and the coordinator.
struct Shared {
    acked: AtomicU64,
    sent: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    stop: AtomicBool,
    window_start: Instant,
    /// `None` in count mode: the window ends when the producers are done.
    window_end: Option<Instant>,
    latency: Mutex<Histogram<u64>>,
}

impl Shared {
    fn in_window(&self, t: Instant) -> bool {
        t >= self.window_start && self.window_end.is_none_or(|e| t < e)
    }

    fn fail(&self, n: u64, e: &ProducerError) {
        self.errors.fetch_add(n, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

/// A snapshot at one end of the window.
struct Mark {
    at: Instant,
    acked: u64,
    self_cpu: f64,
    daemon_cpu: Option<f64>,
    self_threads: BTreeMap<String, f64>,
    daemon_threads: BTreeMap<String, f64>,
    machine: Option<Machine>,
    scrape: Option<Scrape>,
}

async fn mark(shared: &Shared, daemon_pid: Option<u32>, admin: SocketAddr) -> Mark {
    let at = Instant::now();
    let acked = shared.acked.load(Ordering::Relaxed);
    let self_cpu = cpu::self_seconds();
    let daemon_cpu = daemon_pid.and_then(cpu::process_seconds);
    let self_threads = cpu::threads_seconds(std::process::id());
    let daemon_threads = daemon_pid.map(cpu::threads_seconds).unwrap_or_default();
    let machine = Machine::now();
    let scrape = tokio::task::spawn_blocking(move || daemon::scrape(admin).ok())
        .await
        .ok()
        .flatten();
    Mark {
        at,
        acked,
        self_cpu,
        daemon_cpu,
        self_threads,
        daemon_threads,
        machine,
        scrape,
    }
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
    let certs = tls::load_certs(cert)?;
    let quic = QuicOptions {
        tls: ClientTls {
            trust: ServerTrust::Fingerprint(tls::fingerprint(&certs[0])),
            client_cert: None,
            server_name: None,
        },
        token,
    };
    Ok(match path {
        PathKind::Quic => Transport::Quic(quic),
        _ => Transport::FastPath(quic),
    })
}

/// Runs the scenario: baselines, then (a daemon and) the producers.
pub fn run(config: &IngestConfig) -> Result<IngestReport, Box<dyn std::error::Error>> {
    config.validate()?;
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    std::fs::create_dir_all(&config.dir)?;
    let work = tempfile::Builder::new()
        .prefix("sluice-bench-ingest-")
        .tempdir_in(&config.dir)?;
    let baselines = if config.baseline_seconds > 0.0 {
        let at_rate = config.open_loop().then_some((config.rate, config.size));
        Some(measure_baselines(
            work.path(),
            config.baseline_seconds,
            at_rate,
        )?)
    } else {
        None
    };

    let daemon = match config.external {
        Some(_) => None,
        None => {
            let mut spec = DaemonSpec::new(&work.path().join("data"), &config.fsync);
            if config.path == PathKind::Udp {
                spec.extra_args = vec!["--data-insecure-lan".into(), "true".into()];
            }
            spec.extra_args.extend(config.sluiced_args.iter().cloned());
            Some(spec.start()?)
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

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let outcome = rt.block_on(drive(config, addr, transport, admin, daemon.as_ref()));
    drop(rt);
    if let Some(d) = daemon {
        let status = d.terminate(Duration::from_secs(30))?;
        if !status.success() {
            return Err(format!("the daemon did not stop cleanly: {status}").into());
        }
    }
    let o = outcome?;

    let window = o.end.at.duration_since(o.start.at).as_secs_f64();
    let window_acked = o.end.acked - o.start.acked;
    let acked_per_sec = window_acked as f64 / window.max(1e-9);
    let mb_per_sec = acked_per_sec * config.size as f64 / 1e6;
    let latency = Latency::of(&o.latency);
    let producer_cpu = CpuUse::of(o.end.self_cpu - o.start.self_cpu, window, window_acked);
    let daemon_cpu = match (o.start.daemon_cpu, o.end.daemon_cpu) {
        (Some(a), Some(b)) => Some(CpuUse::of(b - a, window, window_acked)),
        _ => None,
    };
    let ours = producer_cpu.seconds + daemon_cpu.map_or(0.0, |d| d.seconds);
    let machine = match (o.start.machine, o.end.machine) {
        (Some(a), Some(b)) => Some(b.since(&a, ours)),
        _ => None,
    };
    let counters = match (&o.start.scrape, &o.end.scrape) {
        (Some(a), Some(b)) => Some(DaemonCounters::between(a, b)),
        _ => None,
    };
    // CPU per message of producers (less the harness's pacer) and daemon.
    let pacer_seconds = cpu::threads_delta(&o.start.self_threads, &o.end.self_threads)
        .get("pacer")
        .copied()
        .unwrap_or(0.0);
    let sluice_cpu_us_per_msg = daemon_cpu.map(|d| {
        (producer_cpu.seconds - pacer_seconds + d.seconds) * 1e6 / window_acked.max(1) as f64
    });
    let ratios = baselines.map(|b| {
        let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        Ratios {
            acked_per_udp_128_datagram: div(acked_per_sec, b.udp_128.datagrams_per_sec),
            goodput_per_udp_1452_mb: div(mb_per_sec, b.udp_1452.mb_per_sec),
            commits_per_raw_fdatasync: counters.map_or(0.0, |c| {
                div(
                    c.group_commits as f64 / window.max(1e-9),
                    b.fdatasync_per_sec,
                )
            }),
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
                (Some(ours), Some(e), Some(i)) => {
                    Some(div(ours, e.cpu_us_per_op + i.cpu_us_per_op))
                }
                _ => None,
            },
            acked_per_target: acked_per_sec / TARGET_ACKED_PER_SEC,
            p99_per_target: latency.p99_us as f64 / TARGET_P99_US,
        }
    });
    Ok(IngestReport {
        scenario: "ingest",
        schema: JSON_SCHEMA,
        started_unix,
        host: Host::here(),
        config: config.clone(),
        mode: if config.open_loop() { "open" } else { "closed" },
        sent: o.sent,
        acked: o.acked,
        errors: o.errors,
        first_error: o.first_error,
        window_seconds: window,
        window_acked,
        acked_per_sec,
        mb_per_sec,
        latency_from: if config.open_loop() {
            "due time (coordinated-omission corrected)"
        } else {
            "send_batch call"
        },
        latency,
        pacer_lag: o.pacer_lag.as_ref().map(Latency::of),
        producer_cpu,
        daemon_cpu,
        producer_threads: cpu::threads_delta(&o.start.self_threads, &o.end.self_threads),
        daemon_threads: cpu::threads_delta(&o.start.daemon_threads, &o.end.daemon_threads),
        machine,
        daemon: counters,
        baselines,
        ratios,
    })
}

/// What the producer side measured.
struct Outcome {
    start: Mark,
    end: Mark,
    sent: u64,
    acked: u64,
    errors: u64,
    first_error: Option<String>,
    latency: Histogram<u64>,
    pacer_lag: Option<Histogram<u64>>,
}

async fn drive(
    config: &IngestConfig,
    addr: SocketAddr,
    transport: Transport,
    admin: SocketAddr,
    daemon: Option<&DaemonProcess>,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let options = ProducerOptions {
        transport,
        sender: SenderConfig {
            max_datagram: config.datagram,
            ..SenderConfig::default()
        },
        ..ProducerOptions::default()
    };
    // Ids of this run: fresh ones for a daemon that already has data.
    let base = (u64::from(std::process::id()) << 32)
        | (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()) as u64
            & 0xFFFF_0000);
    let mut producers = Vec::with_capacity(config.producers);
    for k in 0..config.producers {
        let stream = if config.streams == 1 {
            "bench".to_owned()
        } else {
            format!("bench-{}", k % config.streams)
        };
        producers.push(Producer::connect(addr, &stream, base + k as u64, options.clone()).await?);
    }

    let start = Instant::now();
    let warmup = Duration::from_secs_f64(config.warmup);
    let window_end = match config.length {
        Length::Seconds(s) => Some(start + warmup + Duration::from_secs_f64(s)),
        Length::CountPerProducer(_) => None,
    };
    let shared = Arc::new(Shared {
        acked: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
        stop: AtomicBool::new(false),
        window_start: start + warmup,
        window_end,
        latency: Mutex::new(histogram()),
    });
    let payload = Bytes::from(vec![0x42u8; config.size]);
    let pid = daemon.map(DaemonProcess::pid);
    // Without a warm-up the window opens before the first message, so that
    // it holds every ack (a count run then measures all of its messages).
    let early = if warmup.is_zero() {
        Some(mark(&shared, pid, admin).await)
    } else {
        None
    };

    // The producers run; this task marks the window's ends.
    let (work, pacer): (
        tokio::task::JoinHandle<()>,
        Option<std::thread::JoinHandle<_>>,
    ) = if config.open_loop() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let pacer = {
            let (shared, producers) = (shared.clone(), producers.clone());
            let (handle, config, payload) =
                (tokio::runtime::Handle::current(), config.clone(), payload);
            std::thread::Builder::new()
                .name("pacer".into())
                .spawn(move || pace(&config, producers, payload, shared, handle, tx, start))?
        };
        (tokio::spawn(collect(rx)), Some(pacer))
    } else {
        let mut tasks = Vec::new();
        for p in &producers {
            tasks.push(tokio::spawn(closed_loop(
                p.clone(),
                payload.clone(),
                config.clone(),
                shared.clone(),
            )));
        }
        let all = tokio::spawn(async move {
            for t in tasks {
                let _ = t.await;
            }
        });
        (all, None)
    };

    let first = match early {
        Some(m) => m,
        None => {
            tokio::time::sleep_until((start + warmup).into()).await;
            mark(&shared, pid, admin).await
        }
    };
    let mut work = work;
    let last = match window_end {
        Some(end) => {
            let mut finished = false;
            tokio::select! {
                _ = tokio::time::sleep_until(end.into()) => {}
                // Every producer failed before the end.
                _ = &mut work => finished = true,
            }
            let m = mark(&shared, pid, admin).await;
            shared.stop.store(true, Ordering::Relaxed);
            if !finished {
                let _ = work.await;
            }
            m
        }
        None => {
            let _ = work.await;
            mark(&shared, pid, admin).await
        }
    };
    let pacer_lag = match pacer {
        Some(p) => Some(
            tokio::task::spawn_blocking(move || p.join())
                .await?
                .map_err(|_| "the pacing thread panicked")?,
        ),
        None => None,
    };
    for p in producers {
        if let Err(e) = p.close().await {
            shared.fail(0, &e);
        }
    }
    let latency = std::mem::replace(&mut *shared.latency.lock().unwrap(), histogram());
    let first_error = shared.first_error.lock().unwrap().clone();
    Ok(Outcome {
        start: first,
        end: last,
        sent: shared.sent.load(Ordering::Relaxed),
        acked: shared.acked.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        first_error,
        latency,
        pacer_lag,
    })
}

type Sent = tokio::task::JoinHandle<Result<std::ops::Range<u64>, ProducerError>>;

/// One producer, closed loop: `in_flight` calls outstanding, awaited in
/// order (a producer's acks come in order).
async fn closed_loop(p: Producer, payload: Bytes, config: IngestConfig, shared: Arc<Shared>) {
    let mut left = match config.length {
        Length::CountPerProducer(n) => n,
        Length::Seconds(_) => u64::MAX,
    };
    let mut hist = histogram();
    let mut pending: VecDeque<(Instant, u64, Sent)> = VecDeque::with_capacity(config.in_flight);
    loop {
        while pending.len() < config.in_flight && left > 0 && !shared.stop.load(Ordering::Relaxed) {
            let n = left.min(config.batch as u64);
            left -= n;
            let msgs = vec![payload.clone(); n as usize];
            let p = p.clone();
            shared.sent.fetch_add(n, Ordering::Relaxed);
            pending.push_back((
                Instant::now(),
                n,
                tokio::spawn(async move { p.send_batch(msgs).await }),
            ));
        }
        let Some((t0, n, sent)) = pending.pop_front() else {
            break;
        };
        match sent.await {
            Ok(Ok(_)) => {
                let now = Instant::now();
                shared.acked.fetch_add(n, Ordering::Relaxed);
                if shared.in_window(now) {
                    hist.saturating_record_n(micros(now - t0), n);
                }
            }
            Ok(Err(e)) => {
                shared.fail(n, &e);
                // The producer is broken: stop offering it more.
                left = 0;
            }
            Err(e) => {
                shared.fail(n, &ProducerError::Io(e.to_string()));
                left = 0;
            }
        }
    }
    shared.latency.lock().unwrap().add(&hist).ok();
}

/// Open loop: the pacing thread. Message `i` is due at `start + i/rate` and
/// goes to producer `i % producers`; each producer's messages are handed
/// over `batch` at a time, when the batch's last one is due. Returns how
/// late each hand-over in the window was.
fn pace(
    config: &IngestConfig,
    producers: Vec<Producer>,
    payload: Bytes,
    shared: Arc<Shared>,
    rt: tokio::runtime::Handle,
    calls: tokio::sync::mpsc::UnboundedSender<tokio::task::JoinHandle<()>>,
    start: Instant,
) -> Histogram<u64> {
    let n = producers.len();
    let total = match config.length {
        Length::CountPerProducer(c) => c.saturating_mul(n as u64),
        Length::Seconds(_) => u64::MAX,
    };
    let interval = 1.0 / config.rate;
    let mut lag = histogram();
    let mut batches: Vec<Vec<Instant>> = vec![Vec::with_capacity(config.batch); n];
    let mut i = 0u64;
    let mut hand_over = |k: usize, dues: Vec<Instant>, now: Instant| {
        // Handed over when its last message is due.
        let Some(last) = dues.last() else {
            return;
        };
        if shared.in_window(*last) {
            lag.saturating_record(micros(now.saturating_duration_since(*last)));
        }
        let msgs = vec![payload.clone(); dues.len()];
        shared.sent.fetch_add(dues.len() as u64, Ordering::Relaxed);
        let (p, shared) = (producers[k].clone(), shared.clone());
        let call = rt.spawn(async move {
            let r = p.send_batch(msgs).await;
            let now = Instant::now();
            match r {
                Ok(_) => {
                    shared.acked.fetch_add(dues.len() as u64, Ordering::Relaxed);
                    let mut h = shared.latency.lock().unwrap();
                    for d in dues.iter().filter(|d| shared.in_window(**d)) {
                        h.saturating_record(micros(now - *d));
                    }
                }
                Err(e) => shared.fail(dues.len() as u64, &e),
            }
        });
        let _ = calls.send(call);
    };
    while i < total && !shared.stop.load(Ordering::Relaxed) {
        // Runs on past the window until told to stop, so that the window's
        // end finds it (and its CPU time) still there.
        let due = start + Duration::from_secs_f64(i as f64 * interval);
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
            continue;
        }
        // Everything due by now (a late wake-up sends a burst).
        let k = (i % n as u64) as usize;
        batches[k].push(due);
        i += 1;
        if batches[k].len() >= config.batch {
            let dues = std::mem::replace(&mut batches[k], Vec::with_capacity(config.batch));
            hand_over(k, dues, now);
        }
    }
    // Partial batches go out as they are.
    let now = Instant::now();
    for (k, b) in batches.into_iter().enumerate() {
        hand_over(k, b, now);
    }
    lag
}

/// Waits for the open loop's calls, in the order they were made.
async fn collect(mut calls: tokio::sync::mpsc::UnboundedReceiver<tokio::task::JoinHandle<()>>) {
    while let Some(c) = calls.recv().await {
        let _ = c.await;
    }
}

/// The report as a readable table.
pub fn print(r: &IngestReport) {
    let c = &r.config;
    let how = match c.length {
        Length::Seconds(s) => format!("{s} s after {} s warm-up", c.warmup),
        Length::CountPerProducer(n) => format!("{n} msgs per producer"),
    };
    let load = if r.mode == "open" {
        format!("open loop at {:.0} msgs/s, {} per call", c.rate, c.batch)
    } else {
        format!(
            "closed loop, {} msgs per call, {} calls in flight per producer",
            c.batch, c.in_flight
        )
    };
    println!(
        "\ningest: {} producers x {} B over {}, fsync = {}, {}, {}, {} stream(s), {} B datagrams{}",
        c.producers,
        c.size,
        c.path.name(),
        c.fsync,
        load,
        how,
        c.streams,
        c.datagram,
        match &c.external {
            Some(e) => format!(", external daemon {}", e.addr),
            None => String::new(),
        }
    );
    println!(
        "  sent {} acked {} errors {}{}",
        r.sent,
        r.acked,
        r.errors,
        r.first_error
            .as_ref()
            .map_or(String::new(), |e| format!(" (first: {e})"))
    );
    let b = r.baselines;
    let q = r.ratios;
    let ratio = |f: fn(&Ratios) -> f64| q.map_or(String::new(), |q| format!("{:>8.3}x", f(&q)));
    println!(
        "\n  {:<34} {:>14} | {:<36} {:>9}",
        "measure", "value", "baseline (same run)", "ratio"
    );
    println!("  {}", "-".repeat(100));
    println!(
        "  {:<34} {:>14.0} | {:<36} {}",
        "acked msgs/s",
        r.acked_per_sec,
        b.map_or(String::new(), |b| format!(
            "plain UDP 128 B {:.0} dgrams/s",
            b.udp_128.datagrams_per_sec
        )),
        ratio(|q| q.acked_per_udp_128_datagram)
    );
    println!(
        "  {:<34} {:>14.1} | {:<36} {}",
        "acked payload MB/s",
        r.mb_per_sec,
        b.map_or(String::new(), |b| format!(
            "plain UDP 1452 B {:.0} MB/s",
            b.udp_1452.mb_per_sec
        )),
        ratio(|q| q.goodput_per_udp_1452_mb)
    );
    if let Some(d) = r.daemon {
        println!(
            "  {:<34} {:>14.0} | {:<36} {}",
            "group commits/s",
            d.group_commits as f64 / r.window_seconds.max(1e-9),
            b.map_or(String::new(), |b| format!(
                "raw 4 KiB fdatasync {:.0}/s",
                b.fdatasync_per_sec
            )),
            ratio(|q| q.commits_per_raw_fdatasync)
        );
    }
    let l = r.latency;
    println!(
        "  {:<34} {:>14} | {:<36} {}",
        "ack latency p50 (us)",
        l.p50_us,
        b.map_or(String::new(), |b| format!(
            "raw fdatasync p50 {} us",
            b.fdatasync_p50_us
        )),
        ratio(|q| q.p50_per_fdatasync_p50)
    );
    println!(
        "  {:<34} {:>14} | {:<36} {}",
        "ack latency p99 (us)",
        l.p99_us,
        b.map_or(String::new(), |b| format!(
            "raw fdatasync p99 {} us",
            b.fdatasync_p99_us
        )),
        ratio(|q| q.p99_per_fdatasync_p99)
    );
    if let (Some(b), Some(q)) = (b, q) {
        if let (Some(i), Some(x)) = (b.ideal_commit_at_rate, q.p99_per_ideal_commit_p99) {
            println!(
                "  {:<34} {:>14} | {:<36} {:>8.3}x",
                "",
                "",
                format!("ideal raw group commit p99 {} us", i.p99_us),
                x
            );
        }
        if let (Some(e), Some(x)) = (b.udp_echo_at_rate, q.p99_per_udp_echo_p99) {
            println!(
                "  {:<34} {:>14} | {:<36} {:>8.3}x",
                "",
                "",
                format!("UDP echo p99 {} us", e.p99_us),
                x
            );
        }
    }
    println!(
        "  {:<34} {:>14} |",
        "ack latency p90 / p99.9 / max (us)",
        format!("{}/{}/{}", l.p90_us, l.p999_us, l.max_us)
    );
    println!("  (latency from the {}; {} msgs)", r.latency_from, l.count);
    if let Some(p) = r.pacer_lag {
        println!(
            "  pacer hand-over lag p50/p99/max: {}/{}/{} us",
            p.p50_us, p.p99_us, p.max_us
        );
    }
    println!(
        "\n  target: {:.0} acked msgs/s -> {:.3}x; p99 <= {:.0} us -> {:.3}x",
        TARGET_ACKED_PER_SEC,
        r.acked_per_sec / TARGET_ACKED_PER_SEC,
        TARGET_P99_US,
        l.p99_us as f64 / TARGET_P99_US
    );

    println!("\n  CPU over the {:.2} s window:", r.window_seconds);
    let cpu_row = |who: &str, u: &CpuUse| {
        println!(
            "    {:<10} {:>7.2} s  {:>5.2} cores  {:>7.2} s per million msgs",
            who, u.seconds, u.cores, u.seconds_per_million
        )
    };
    let threads = |t: &BTreeMap<String, f64>| {
        t.iter()
            .filter(|(_, s)| **s >= 0.005)
            .map(|(k, s)| format!("{k} {s:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    cpu_row("producers", &r.producer_cpu);
    println!("      by thread: {}", threads(&r.producer_threads));
    if let Some(d) = &r.daemon_cpu {
        cpu_row("daemon", d);
        println!("      by thread: {}", threads(&r.daemon_threads));
    }
    if let (Some(b), Some(x)) = (
        r.baselines,
        r.ratios.and_then(|q| q.cpu_per_msg_per_plain_floor),
    ) {
        if let (Some(e), Some(i)) = (b.udp_echo_at_rate, b.ideal_commit_at_rate) {
            println!(
                "    producers (less the pacer) + daemon per message ÷ plain UDP echo ({:.1} us) + ideal raw group commit ({:.1} us) per op: {:.2}x",
                e.cpu_us_per_op, i.cpu_us_per_op, x
            );
        }
    }
    if let Some(m) = r.machine {
        println!(
            "    machine: busy {:.2} s (other work {:.2} s), idle {:.2} s, iowait {:.2} s, steal {:.2} s (summed over CPUs)",
            m.busy, m.other_busy, m.idle, m.iowait, m.steal
        );
        println!(
            "    kernel UDP drops: receive buffer full {}, send buffer full {}",
            m.udp_rcvbuf_errors, m.udp_sndbuf_errors
        );
        if m.other_busy > 0.25 * r.window_seconds {
            println!(
                "    WARNING: other work used {:.2} cores during the window: the figures are not reliable",
                m.other_busy / r.window_seconds.max(1e-9)
            );
        }
    }
    if let Some(d) = r.daemon {
        println!("\n  daemon counters over the window:");
        println!(
            "    messages in {} durable acks {} duplicates {}",
            d.messages_in, d.durable_acks, d.duplicates
        );
        println!(
            "    datagrams in {} out {} dropped {}  ({:.1} msgs per datagram in)",
            d.datagrams_in, d.datagrams_out, d.datagrams_dropped, d.messages_per_datagram
        );
        println!(
            "    nacks sent {} retransmits received {} over credit {}",
            d.nacks_sent, d.retransmits_received, d.over_credit
        );
        println!(
            "    group commits {}: records mean {:.1} (p50 <= {}, p99 <= {}); write+fdatasync mean {:.0} us (p50 <= {:.0}, p99 <= {:.0})",
            d.group_commits,
            d.batch_records_mean,
            d.batch_records_p50,
            d.batch_records_p99,
            d.fsync_mean_us,
            d.fsync_p50_us,
            d.fsync_p99_us
        );
    }
    if let Some(b) = b {
        println!(
            "\n  baselines: raw 1 MiB write+fdatasync {:.0} MB/s; plain UDP sent 128 B {:.0}/s, 1452 B {:.0}/s",
            b.disk_mb_per_sec, b.udp_128.sent_per_sec, b.udp_1452.sent_per_sec
        );
        if let Some(i) = b.ideal_commit_at_rate {
            println!(
                "  at {:.0}/s: ideal raw group commit p50/p99 {}/{} us, {:.1} CPU us per message",
                i.rate, i.p50_us, i.p99_us, i.cpu_us_per_op
            );
        }
        if let Some(e) = b.udp_echo_at_rate {
            println!(
                "  at {:.0}/s: UDP echo (timer + wake-up + loopback round trip) p50/p99/p99.9/max {}/{}/{}/{} us, {:.1} CPU us per round trip",
                e.rate, e.p50_us, e.p99_us, e.p999_us, e.max_us, e.cpu_us_per_op
            );
        }
    }
}
