//! The `xdp` scenario: sluice's AF_XDP path against the kernel's socket
//! path, over a veth pair between two network namespaces this process makes
//! (root only), in one run:
//!
//! - **datapath** ([`datapath`]): raw UDP, no daemon. A receiver alone in
//!   namespace `b` (a UDP socket read with recvmmsg, or an XDP program and
//!   one receive-only AF_XDP socket in copy mode) and a sender in namespace
//!   `a` (sendmmsg, or an AF_XDP TX ring), one thread each: packets/s at
//!   the highest rate, and the receiver thread's CPU time per packet at one
//!   offered load (`--rate`, paced sendmmsg).
//! - **durable** ([`durable`]): `sluiced` in `b` (fsync = always, token
//!   auth), on the socket path and with `--xdp-interface`, and fast-path
//!   producers in `a`, closed loop; a third run adds the producers' AF_XDP
//!   TX ring. Durable msgs/s, datagrams/s, daemon CPU per message, and the
//!   AF_XDP queue thread's CPU per packet.
//!
//! Every figure goes into one report ([`XdpReport`], `--json`), with the
//! issue's targets checked where they apply ([`TargetCheck`]).

pub mod datapath;
pub mod durable;
pub mod procfs;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_testkit::testnet::{self, Link};

use crate::measure::Head;
pub use procfs::{threads_cpu_seconds, CpuSplit, CpuStat};
pub use sluice_testkit::testnet::udp_counter;

/// Version of the JSON layout (bump on incompatible changes).
pub const JSON_SCHEMA: u32 = 1;

/// The targets on veth in copy mode.
pub const TARGET_RX_CPU_RATIO: f64 = 0.6;
pub const TARGET_RX_PPS_RATIO: f64 = 1.0;
pub const TARGET_TX_PPS_RATIO: f64 = 1.5;

/// Busy CPU outside what a run measures, in cores, above which its figures
/// are flagged as unreliable.
pub const OTHER_WORK_WARN: f64 = 0.15;

/// Which parts to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Datapath,
    Durable,
    All,
}

/// `sluice-bench xdp`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct XdpArgs {
    /// Which part: `datapath` (raw packets, the receiver alone), `durable`
    /// (sluiced and producers), or `all`.
    #[arg(long, value_enum, default_value = "all")]
    pub part: Part,
    /// Seconds measured per run, after a warm-up (datapath: a fifth of this,
    /// 0.1 to 0.5 s; durable: 0.2 to 1 s).
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// UDP payload / message sizes, bytes (at most 1472: one frame on a
    /// 1500-byte MTU).
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 1400])]
    pub sizes: Vec<usize>,
    /// Datapath: the offered load at which receiver CPU per packet is
    /// compared, packets/s (a paced sendmmsg sender).
    #[arg(long, default_value_t = 100_000.0)]
    pub rate: f64,
    /// Durable: concurrent producers (one session each).
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Durable: where the temporary spool folders are made.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Also write every figure as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What the run was asked to do (in the report).
#[derive(Debug, Clone, Serialize)]
pub struct XdpConfig {
    pub part: Part,
    pub seconds: f64,
    pub datapath_warmup: f64,
    pub durable_warmup: f64,
    pub sizes: Vec<usize>,
    pub rate: f64,
    pub producers: usize,
    pub dir: PathBuf,
}

impl XdpConfig {
    pub fn from_args(a: &XdpArgs) -> Result<XdpConfig, String> {
        if !(a.seconds > 0.0 && a.seconds.is_finite()) {
            return Err("--seconds must be more than 0".into());
        }
        if a.sizes.is_empty() || a.sizes.iter().any(|&s| s == 0 || s > datapath::MAX_PAYLOAD) {
            return Err(format!(
                "--sizes must be 1..={} bytes each",
                datapath::MAX_PAYLOAD
            ));
        }
        if !(a.rate > 0.0 && a.rate.is_finite()) {
            return Err("--rate must be more than 0 packets/s".into());
        }
        if a.producers == 0 {
            return Err("--producers must be at least 1".into());
        }
        Ok(XdpConfig {
            part: a.part,
            seconds: a.seconds,
            datapath_warmup: (a.seconds / 5.0).clamp(0.1, 0.5),
            durable_warmup: (a.seconds / 3.0).clamp(0.2, 1.0),
            sizes: a.sizes.clone(),
            rate: a.rate,
            producers: a.producers,
            dir: a.dir.clone(),
        })
    }

    fn datapath(&self) -> bool {
        matches!(self.part, Part::Datapath | Part::All)
    }

    fn durable(&self) -> bool {
        matches!(self.part, Part::Durable | Part::All)
    }
}

/// One of the targets, checked against a measured ratio.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub size: usize,
    pub what: String,
    pub ratio: f64,
    /// `at_most` or `at_least`.
    pub kind: &'static str,
    pub target: f64,
    pub pass: bool,
}

impl TargetCheck {
    fn at_most(size: usize, what: String, ratio: f64, target: f64) -> TargetCheck {
        TargetCheck {
            size,
            what,
            ratio,
            kind: "at_most",
            target,
            pass: ratio.is_finite() && ratio <= target,
        }
    }

    fn at_least(size: usize, what: String, ratio: f64, target: f64) -> TargetCheck {
        TargetCheck {
            size,
            what,
            ratio,
            kind: "at_least",
            target,
            pass: ratio.is_finite() && ratio >= target,
        }
    }

    fn line(&self) -> String {
        let op = if self.kind == "at_most" { "<=" } else { ">=" };
        format!(
            "{:<66} {:>6.3}x  target {op} {:.2}  {}",
            self.what,
            self.ratio,
            self.target,
            if self.pass { "PASS" } else { "MISS" }
        )
    }
}

/// The network the run used.
#[derive(Debug, Clone, Serialize)]
pub struct NetInfo {
    pub ns_a: String,
    pub ns_b: String,
    pub iface_a: String,
    pub iface_b: String,
    pub ip_a: String,
    pub ip_b: String,
}

/// Everything one `sluice-bench xdp` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct XdpReport {
    #[serde(flatten)]
    pub head: Head,
    pub config: XdpConfig,
    pub net: NetInfo,
    pub datapath: Vec<datapath::DatapathRun>,
    /// Receiver CPU per packet draining a backlog (no wake-ups).
    pub datapath_drain: Vec<datapath::DrainRun>,
    pub durable: Vec<durable::DurableRun>,
    /// Ratios of the durable runs (no targets: the closed loop is bounded
    /// by the disk and the daemon, not by the path alone).
    pub durable_ratios: Vec<durable::DurableRatios>,
    /// The targets, from the datapath runs.
    pub targets: Vec<TargetCheck>,
}

/// `sluice-bench xdp`: runs the parts, prints the tables, writes the JSON.
/// Exit status 2 when not root, 1 when a run failed, else 0 (a missed
/// target is a finding, printed as MISS, not a failure).
pub fn main(args: &XdpArgs) -> ExitCode {
    if !testnet::is_root() {
        eprintln!(
            "sluice-bench xdp: needs root: it makes network namespaces and a veth pair, \
             loads an XDP program and opens AF_XDP sockets (run it with sudo)"
        );
        return ExitCode::from(2);
    }
    if !testnet::has_tool("ip") {
        eprintln!("sluice-bench xdp: needs `ip` (iproute2) to make the namespaces");
        return ExitCode::from(2);
    }
    let config = match XdpConfig::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice-bench xdp: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match run(&config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice-bench xdp: {e}");
            return ExitCode::FAILURE;
        }
    };
    print_summary(&report);
    if let Some(path) = &args.json {
        if let Err(e) = crate::measure::write_json(path, &report) {
            eprintln!("sluice-bench xdp: {e}");
            return ExitCode::FAILURE;
        }
    }
    let failed: Vec<String> = report
        .durable
        .iter()
        .filter(|r| r.errors > 0 || r.acked != r.sent)
        .map(|r| {
            format!(
                "{} B {}: {} of {} not acked ({} errors{})",
                r.size,
                r.path.name(),
                r.sent - r.acked.min(r.sent),
                r.sent,
                r.errors,
                r.first_error
                    .as_ref()
                    .map_or(String::new(), |e| format!(", first: {e}"))
            )
        })
        .collect();
    if !failed.is_empty() {
        eprintln!("sluice-bench xdp: {}", failed.join("; "));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Makes the namespaces and runs the parts asked for (each table is printed
/// as soon as its part is done).
pub fn run(config: &XdpConfig) -> Result<XdpReport, String> {
    let head = Head::now("xdp", JSON_SCHEMA);
    let host = &head.host;
    // Namespace set-up panics (with the command's stderr) if iproute2 fails.
    let link = std::panic::catch_unwind(|| Link::create("bx", 1))
        .map_err(|p| format!("making the namespaces: {}", panic_text(&p)))?;
    let net = NetInfo {
        ns_a: link.a.ns.name().to_owned(),
        ns_b: link.b.ns.name().to_owned(),
        iface_a: link.a.iface.clone(),
        iface_b: link.b.iface.clone(),
        ip_a: link.a.ip.clone(),
        ip_b: link.b.ip.clone(),
    };
    println!(
        "sluice-bench xdp: the AF_XDP path against the socket path over veth (copy mode)\n\
         machine: {} CPUs, kernel {}; {} {} ({}) -> {} {} ({})",
        host.cpus, host.kernel, net.ns_a, net.iface_a, net.ip_a, net.ns_b, net.iface_b, net.ip_b
    );
    let mut report = XdpReport {
        head,
        config: config.clone(),
        net,
        datapath: Vec::new(),
        datapath_drain: Vec::new(),
        durable: Vec::new(),
        durable_ratios: Vec::new(),
        targets: Vec::new(),
    };
    if config.datapath() {
        datapath::print_header(config);
        for &size in &config.sizes {
            let (runs, drains) = datapath::run_size(&link, config, size)?;
            let targets = datapath::targets(size, &runs, config.rate);
            datapath::print_size(size, &runs, &drains, &targets);
            report.datapath.extend(runs);
            report.datapath_drain.extend(drains);
            report.targets.extend(targets);
        }
    }
    if config.durable() {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| format!("--dir {}: {e}", config.dir.display()))?;
        let work = tempfile::Builder::new()
            .prefix("sluice-bench-xdp-")
            .tempdir_in(&config.dir)
            .map_err(|e| format!("a temporary folder in {}: {e}", config.dir.display()))?;
        durable::print_header(config);
        for &size in &config.sizes {
            let runs = durable::run_size(&link, config, work.path(), size)?;
            let ratios = durable::ratios(size, &runs);
            durable::print_size(size, &runs, &ratios);
            report.durable.extend(runs);
            report.durable_ratios.push(ratios);
        }
    }
    Ok(report)
}

/// The targets again, all together, at the end.
fn print_summary(r: &XdpReport) {
    if r.targets.is_empty() {
        return;
    }
    println!("\ntargets (veth, copy mode):");
    for t in &r.targets {
        println!("  {:>5} B  {}", t.size, t.line());
    }
}

use crate::measure::panic_text;

/// Sleeps until `t` (returns at once if it has passed).
fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// "02:5c:00:00:00:01" → bytes.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    sluice_xdp::neighbour::parse_mac(s)
        .ok_or_else(|| format!("MAC address {s:?}: expected six hex bytes"))
}

pub(crate) use crate::measure::div;

/// Microseconds per item.
pub(crate) fn us_per(seconds: f64, n: u64) -> f64 {
    div(seconds * 1e6, n as f64)
}

pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("02:5c:00:00:00:0a").unwrap(),
            [2, 0x5c, 0, 0, 0, 10]
        );
        assert!(parse_mac("02:5c:00").is_err());
        assert!(parse_mac("zz:5c:00:00:00:01").is_err());
    }

    #[test]
    fn targets_compare_the_right_way() {
        assert!(TargetCheck::at_most(64, "x".into(), 0.5, 0.6).pass);
        assert!(!TargetCheck::at_most(64, "x".into(), 0.7, 0.6).pass);
        assert!(TargetCheck::at_least(64, "x".into(), 1.5, 1.5).pass);
        assert!(!TargetCheck::at_least(64, "x".into(), f64::NAN, 1.5).pass);
    }

    #[test]
    fn cpu_stat_and_own_threads() {
        let a = CpuStat::now();
        assert!(a.busy > 0.0 && !a.per_cpu.is_empty());
        let b = CpuStat::now();
        let (all, per) = b.since(&a);
        assert!(all.busy >= 0.0 && per.len() == a.per_cpu.len());
        // The test's own main thread has a name.
        let me = std::process::id();
        assert!(threads_cpu_seconds(me, "").is_some());
        assert!(threads_cpu_seconds(me, "no-such-thread-name").is_none());
    }
}
