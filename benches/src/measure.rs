//! Measurements over a window that any load scenario can take: latency
//! percentiles, CPU time (of a process, of the whole machine), the kernel's
//! UDP drop counters, and what a `sluiced` counted (from its /metrics); a
//! [`Mark`] at each end of the window, and the [`Window`] between them.

use std::collections::BTreeMap;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;
use sluice_daemon::metrics::scrape::Scrape;

use crate::cpu;

/// A snapshot at one end of a measured window: what the producers had
/// acked, the CPU time of this process and of the daemon (in all and by
/// thread name), the whole machine, and the daemon's /metrics.
#[derive(Debug, Clone)]
pub struct Mark {
    pub at: Instant,
    pub acked: u64,
    pub acked_bytes: u64,
    pub self_cpu: f64,
    pub self_threads: BTreeMap<String, f64>,
    pub daemon_cpu: Option<f64>,
    pub daemon_threads: BTreeMap<String, f64>,
    pub machine: Option<Machine>,
    pub scrape: Option<Scrape>,
}

impl Mark {
    /// Now: the `counts` (acked messages and bytes, from
    /// [`crate::load::Shared::counts`]), the daemon's process `pid` (if it is measured)
    /// and its metrics from `scrape`.
    pub fn take(
        (acked, acked_bytes): (u64, u64),
        pid: Option<u32>,
        scrape: impl FnOnce() -> Option<Scrape>,
    ) -> Mark {
        Mark {
            at: Instant::now(),
            acked,
            acked_bytes,
            self_cpu: cpu::self_seconds(),
            self_threads: cpu::threads_seconds(std::process::id()),
            daemon_cpu: pid.and_then(cpu::process_seconds),
            daemon_threads: pid.map(cpu::threads_seconds).unwrap_or_default(),
            machine: Machine::now(),
            scrape: scrape(),
        }
    }

    /// What happened from `self` to `end`.
    pub fn until(&self, end: &Mark) -> Window {
        let seconds = end.at.duration_since(self.at).as_secs_f64();
        let acked = end.acked - self.acked;
        let harness = CpuUse::of(end.self_cpu - self.self_cpu, seconds, acked);
        let daemon =
            (self.daemon_cpu.zip(end.daemon_cpu)).map(|(a, b)| CpuUse::of(b - a, seconds, acked));
        let ours = harness.seconds + daemon.map_or(0.0, |d| d.seconds);
        Window {
            seconds,
            acked,
            bytes: end.acked_bytes - self.acked_bytes,
            harness,
            harness_threads: cpu::threads_delta(&self.self_threads, &end.self_threads),
            daemon,
            daemon_threads: cpu::threads_delta(&self.daemon_threads, &end.daemon_threads),
            machine: (self.machine.zip(end.machine)).map(|(a, b)| b.since(&a, ours)),
            counters: (self.scrape.as_ref().zip(end.scrape.as_ref()))
                .map(|(a, b)| DaemonCounters::between(a, b)),
        }
    }
}

/// What happened between two [`Mark`]s.
#[derive(Debug, Clone)]
pub struct Window {
    pub seconds: f64,
    /// Messages acked, and their payload bytes.
    pub acked: u64,
    pub bytes: u64,
    /// This process: the producers, and whatever else of the harness runs
    /// in it; per million acked.
    pub harness: CpuUse,
    pub harness_threads: BTreeMap<String, f64>,
    pub daemon: Option<CpuUse>,
    pub daemon_threads: BTreeMap<String, f64>,
    pub machine: Option<Machine>,
    pub counters: Option<DaemonCounters>,
}

impl Window {
    /// CPU seconds over the window of this process's threads named `name`.
    pub fn thread(&self, name: &str) -> f64 {
        self.harness_threads.get(name).copied().unwrap_or(0.0)
    }
}

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Messages counted.
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// CPU time over the measurement window.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuUse {
    pub seconds: f64,
    /// Cores busy on average (seconds / window seconds).
    pub cores: f64,
    /// CPU seconds per million acked messages.
    pub seconds_per_million: f64,
}

impl CpuUse {
    pub fn of(seconds: f64, window: f64, acked: u64) -> CpuUse {
        CpuUse {
            seconds,
            cores: seconds / window.max(1e-9),
            seconds_per_million: seconds / (acked.max(1) as f64) * 1e6,
        }
    }
}

/// The whole machine over the window: CPU seconds summed over CPUs (from
/// /proc/stat; on a VM, `steal` is time the host gave to someone else) and
/// the kernel's UDP error counters (from /proc/net/snmp: datagrams dropped
/// for a full socket buffer, on any socket).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Machine {
    pub busy: f64,
    pub idle: f64,
    pub iowait: f64,
    pub steal: f64,
    /// Busy seconds not accounted to the daemon or the producers: other
    /// work on the machine (or kernel threads: jbd2, softirq). Large values
    /// make the figures unreliable.
    pub other_busy: f64,
    pub udp_rcvbuf_errors: u64,
    pub udp_sndbuf_errors: u64,
}

impl Machine {
    pub fn now() -> Option<Machine> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let get = |i: usize| v.get(i).copied().unwrap_or(0.0) / hz;
        let (rcvbuf, sndbuf) = udp_errors().unwrap_or_default();
        // user nice system idle iowait irq softirq steal
        Some(Machine {
            busy: get(0) + get(1) + get(2) + get(5) + get(6),
            idle: get(3),
            iowait: get(4),
            steal: get(7),
            other_busy: 0.0,
            udp_rcvbuf_errors: rcvbuf,
            udp_sndbuf_errors: sndbuf,
        })
    }

    /// What happened from `a` to `self`; `ours` is the busy CPU seconds of
    /// the processes measured (the rest is other work).
    pub fn since(&self, a: &Machine, ours: f64) -> Machine {
        Machine {
            busy: self.busy - a.busy,
            idle: self.idle - a.idle,
            iowait: self.iowait - a.iowait,
            steal: self.steal - a.steal,
            other_busy: (self.busy - a.busy - ours).max(0.0),
            udp_rcvbuf_errors: self.udp_rcvbuf_errors.saturating_sub(a.udp_rcvbuf_errors),
            udp_sndbuf_errors: self.udp_sndbuf_errors.saturating_sub(a.udp_sndbuf_errors),
        }
    }
}

/// RcvbufErrors and SndbufErrors of the Udp line of /proc/net/snmp.
fn udp_errors() -> Option<(u64, u64)> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let names: Vec<&str> = udp.next()?.split_whitespace().collect();
    let values: Vec<&str> = udp.next()?.split_whitespace().collect();
    let get = |n: &str| {
        let i = names.iter().position(|x| *x == n)?;
        values.get(i)?.parse().ok()
    };
    Some((get("RcvbufErrors")?, get("SndbufErrors")?))
}

/// What the daemon counted over the window (from its /metrics).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DaemonCounters {
    pub messages_in: u64,
    pub durable_acks: u64,
    pub duplicates: u64,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub datagrams_dropped: u64,
    pub nacks_sent: u64,
    pub retransmits_received: u64,
    pub over_credit: u64,
    /// Group commits (one write + fdatasync each with fsync = always).
    pub group_commits: u64,
    /// Records per group commit: mean, and bucket bounds of p50 and p99.
    pub batch_records_mean: f64,
    pub batch_records_p50: f64,
    pub batch_records_p99: f64,
    /// Write + fdatasync per group commit (bucket bounds), microseconds.
    pub fsync_mean_us: f64,
    pub fsync_p50_us: f64,
    pub fsync_p99_us: f64,
    /// Messages per data datagram received.
    pub messages_per_datagram: f64,
    /// Where the daemon's part of publish → ack went (its histograms).
    pub stages: Stages,
}

/// One stage of the publish → durable ack path over the window, from the
/// daemon's histogram of it: the exact mean, and the bucket bounds that
/// hold p50 and p99 (upper estimates), microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StageTime {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl StageTime {
    /// Several windows' figures as one: the mean weighted by count, the
    /// largest p50 and p99 (upper estimates stay upper estimates).
    pub fn combine<'a>(all: impl IntoIterator<Item = &'a StageTime>) -> StageTime {
        let mut out = StageTime::default();
        let mut sum = 0.0;
        for t in all {
            out.count += t.count;
            sum += t.mean_us * t.count as f64;
            out.p50_us = out.p50_us.max(t.p50_us);
            out.p99_us = out.p99_us.max(t.p99_us);
        }
        out.mean_us = sum / out.count.max(1) as f64;
        out
    }

    fn between(a: &Scrape, b: &Scrape, name: &str) -> StageTime {
        let count = (b.value(&format!("{name}_count"), &[])
            - a.value(&format!("{name}_count"), &[]))
        .max(0.0) as u64;
        let sum = b.value(&format!("{name}_sum"), &[]) - a.value(&format!("{name}_sum"), &[]);
        let q = |p: f64| {
            b.quantile_since(a, name, &[], p)
                .filter(|v| v.is_finite())
                .unwrap_or(0.0)
                * 1e6
        };
        StageTime {
            count,
            mean_us: sum / count.max(1) as f64 * 1e6,
            p50_us: q(0.5),
            p99_us: q(0.99),
        }
    }
}

/// The daemon's stages, in path order: a batch received → its append
/// waits for a group commit (`queue`) → the commit's `write` → its
/// `fdatasync` → the ack queued (`received_to_acked` spans all of that) →
/// the STATUS handed to the socket (`status`, fast path only).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stages {
    pub queue: StageTime,
    pub write: StageTime,
    pub fdatasync: StageTime,
    pub received_to_acked: StageTime,
    pub status: StageTime,
    /// Per gap NACKed and filled (fast path): first seen → the
    /// retransmission's arrival; first seen → the durable ack covering it.
    pub repair: StageTime,
    pub repair_to_durable: StageTime,
}

impl Stages {
    fn between(a: &Scrape, b: &Scrape) -> Stages {
        let t = |name| StageTime::between(a, b, name);
        Stages {
            queue: t("sluice_spool_queue_seconds"),
            write: t("sluice_spool_write_seconds"),
            fdatasync: t("sluice_spool_fdatasync_seconds"),
            received_to_acked: t("sluice_publish_ack_seconds"),
            status: t("sluice_fastpath_status_seconds"),
            repair: t("sluice_repair_seconds"),
            repair_to_durable: t("sluice_repair_to_durable_seconds"),
        }
    }
}

impl DaemonCounters {
    pub fn between(a: &Scrape, b: &Scrape) -> DaemonCounters {
        let d = |name: &str| (b.value(name, &[]) - a.value(name, &[])).max(0.0) as u64;
        let commits = d("sluice_spool_batch_records_count");
        let rec_sum = b.value("sluice_spool_batch_records_sum", &[])
            - a.value("sluice_spool_batch_records_sum", &[]);
        let fsync = StageTime::between(a, b, "sluice_spool_fsync_seconds");
        let q = |name: &str, p: f64| {
            b.quantile_since(a, name, &[], p)
                .filter(|v| v.is_finite())
                .unwrap_or(0.0)
        };
        let messages_in = d("sluice_messages_in_total");
        let datagrams_in = d("sluice_datagrams_in_total");
        DaemonCounters {
            messages_in,
            durable_acks: d("sluice_durable_acks_total"),
            duplicates: d("sluice_duplicates_total"),
            datagrams_in,
            datagrams_out: d("sluice_datagrams_out_total"),
            datagrams_dropped: d("sluice_datagrams_dropped_total"),
            nacks_sent: d("sluice_nacks_sent_total"),
            retransmits_received: d("sluice_retransmits_received_total"),
            over_credit: d("sluice_over_credit_total"),
            group_commits: commits,
            batch_records_mean: rec_sum / commits.max(1) as f64,
            batch_records_p50: q("sluice_spool_batch_records", 0.5),
            batch_records_p99: q("sluice_spool_batch_records", 0.99),
            fsync_mean_us: fsync.mean_us,
            fsync_p50_us: fsync.p50_us,
            fsync_p99_us: fsync.p99_us,
            messages_per_datagram: messages_in as f64 / datagrams_in.max(1) as f64,
            stages: Stages::between(a, b),
        }
    }
}

/// Where the run happened.
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub cpus: usize,
    pub kernel: String,
}

impl Host {
    pub fn here() -> Host {
        Host {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
        }
    }
}

/// What every report starts with (flattened into it): the scenario, the
/// version of its JSON layout, when it started (seconds since the Unix
/// epoch) and where.
#[derive(Debug, Clone, Serialize)]
pub struct Head {
    pub scenario: &'static str,
    pub schema: u32,
    pub started_unix: u64,
    pub host: Host,
}

impl Head {
    /// A run of `scenario` starting now, here.
    pub fn now(scenario: &'static str, schema: u32) -> Head {
        Head {
            scenario,
            schema,
            started_unix: unix_now(),
            host: Host::here(),
        }
    }
}

/// `N CPUs, kernel K` (`?` for a kernel not read).
impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kernel.as_str() {
            "" => write!(f, "{} CPUs, kernel ?", self.cpus),
            k => write!(f, "{} CPUs, kernel {k}", self.cpus),
        }
    }
}

/// Seconds since the Unix epoch (a report's `started_unix`).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The index of the item whose `f` is the median (the lower middle one of
/// an even count), if there are any.
pub fn median_index<T>(items: &[T], f: impl Fn(&T) -> f64) -> Option<usize> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&x, &y| f(&items[x]).total_cmp(&f(&items[y])));
    order.get(order.len().saturating_sub(1) / 2).copied()
}

/// `a / b`, or 0 when `b` is 0.
pub fn div(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// What a panic said.
pub fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic".into())
}

/// Writes a report as pretty JSON to `path` (`--json FILE`).
pub fn write_json(path: &std::path::Path, report: &impl serde::Serialize) -> Result<(), String> {
    let file =
        std::fs::File::create(path).map_err(|e| format!("writing {}: {e}", path.display()))?;
    serde_json::to_writer_pretty(std::io::BufWriter::new(file), report)
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// One figure over several repetitions of a run (`--repeat N`): the
/// noise of these machines shows as the distance from min to max.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    /// The spread of `values` (all zero when there are none). The median
    /// of an even count is the mean of the middle two.
    pub fn of(values: &[f64]) -> Spread {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Spread::default();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Spread {
            min: v[0],
            median,
            max: v[n - 1],
        }
    }

    /// The spread of `f` over `items`.
    pub fn over<T>(items: &[T], f: impl Fn(&T) -> f64) -> Spread {
        Spread::of(&items.iter().map(f).collect::<Vec<_>>())
    }

    /// The spread of `f` if every one of `items` has it (and there are
    /// some): a spread of a figure some run lacks would hide that.
    pub fn over_all<T>(items: &[T], f: impl Fn(&T) -> Option<f64>) -> Option<Spread> {
        let v: Option<Vec<f64>> = items.iter().map(f).collect();
        v.filter(|v| !v.is_empty()).map(|v| Spread::of(&v))
    }

    /// `median [min–max]` with `decimals` places, or just the median when
    /// the rounded figures agree (or there was one run).
    pub fn show(&self, decimals: usize) -> String {
        let f = |x: f64| format!("{x:.decimals$}");
        if f(self.min) == f(self.max) {
            f(self.median)
        } else {
            format!("{} [{}–{}]", f(self.median), f(self.min), f(self.max))
        }
    }
}

/// The spread of every figure of `items`, field by field, as the same
/// record with a [`Spread`] for each `f64` (`S` is `T` so written): over
/// the items that have the figure (none if none has it). Whole numbers
/// (what names a row: a size, a number of groups) are the first item's.
pub fn spreads<T: Serialize, S: serde::de::DeserializeOwned>(items: &[T]) -> S {
    use serde_json::Value;
    fn of(v: &[Value]) -> Value {
        let field = |k: &dyn Fn(&Value) -> Option<&Value>| -> Value {
            of(&v.iter().filter_map(k).cloned().collect::<Vec<_>>())
        };
        match v.iter().find(|x| !x.is_null()) {
            Some(Value::Object(m)) => m
                .keys()
                .map(|k| (k.clone(), field(&|x| x.get(k))))
                .collect(),
            Some(Value::Array(a)) => (0..a.len()).map(|i| field(&|x| x.get(i))).collect(),
            Some(Value::Number(n)) if n.is_f64() => {
                let xs: Vec<f64> = v.iter().filter_map(Value::as_f64).collect();
                serde_json::to_value(Spread::of(&xs)).unwrap_or_default()
            }
            Some(x) => x.clone(),
            None => Value::Null,
        }
    }
    let items: Vec<Value> = items
        .iter()
        .map(|i| serde_json::to_value(i).unwrap_or_default())
        .collect();
    serde_json::from_value(of(&items)).expect("a record of spreads reads back")
}

/// What a report carries for its pictures, under the key `plots` of its
/// JSON: `sluice-bench` draws them from there (the same code draws a run
/// just made and one read back from a file).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Plots {
    /// Latency by percentile, one curve per run / path / phase.
    pub latency: Vec<PercentileCurve>,
    /// Throughput over time, one series per run / path / phase.
    pub throughput: Vec<TimeSeries>,
}

/// A latency distribution as (percentile, microseconds) points, from 0 to
/// the max, dense near the tail (as HdrHistogram's percentile plots).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct PercentileCurve {
    pub label: String,
    /// (percentile 0..=100, latency in microseconds), percentile rising.
    pub points: Vec<(f64, f64)>,
}

impl PercentileCurve {
    /// Points at 0, 50, 75, 87.5, ... (halving the rest each time) up to
    /// the 99.9999th or the sample count's resolution, then the max.
    pub fn of(label: impl Into<String>, h: &Histogram<u64>) -> PercentileCurve {
        let mut points = Vec::new();
        if !h.is_empty() {
            let mut rest = 1.0f64;
            // Stop where one more step would be below one sample.
            while rest * (h.len() as f64) >= 1.0 && rest >= 1e-6 {
                let q = 1.0 - rest;
                points.push((q * 100.0, h.value_at_quantile(q) as f64));
                rest /= 2.0;
            }
            points.push((100.0, h.max() as f64));
        }
        PercentileCurve {
            label: label.into(),
            points,
        }
    }
}

/// Throughput over time: messages per second in each interval of the
/// measured window.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct TimeSeries {
    pub label: String,
    /// (seconds since the window began, at the interval's end; msgs/s).
    pub points: Vec<(f64, f64)>,
}
