//! Part "durable": `sluiced` in namespace `b` (fsync = always, a token for
//! the bench stream: its listeners are not on loopback) and fast-path
//! producers in namespace `a`, closed loop, three runs per message size:
//!
//! - `socket`: the daemon on the kernel's UDP socket, producers sending
//!   with the kernel (sendmmsg);
//! - `af_xdp`: the daemon with `--xdp-interface veth-b` (its queue thread
//!   `sluice-xsk-0` takes the data port off the AF_XDP socket);
//! - `af_xdp+tx`: the same daemon, and the producers sending through one
//!   shared AF_XDP TX ring on `veth-a` queue 0
//!   (`sluice_xdp::producer::tx_provider`).
//!
//! The daemon is this binary's hidden `daemon` subcommand run with
//! `ip netns exec`; its admin port (127.0.0.1 inside `b`) is read from a
//! thread that entered `b`. Figures come from marks at both ends of the
//! window after a warm-up: acks counted by the producers, the daemon's CPU
//! (/proc/PID/stat) and its queue thread's (/proc/PID/task/*/schedstat by
//! name), its counters (/metrics), and this process's CPU (the producers).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use sluice_testkit::daemon::{self as launcher, Daemon, DaemonSpec, NS_QUIC_PORT};
use sluice_testkit::testnet::Link;
use sluice_transport::client::{ProducerOptions, Transport};
use sluice_xdp::producer::{tx_provider, TxSetup};

use super::{div, us_per, CpuSplit, CpuStat, XdpConfig};
use crate::load::{self, Plan, Shape, Shared};
use crate::measure::{CpuUse, DaemonCounters, Mark};
use crate::progress::Progress;
use crate::sizes::Payloads;

const STREAM: &str = "bench";
/// Closed loop, as `ingest` does by default: calls of 256 messages, 16
/// outstanding per producer (4,096 messages: the daemon's default credit).
const BATCH: usize = 256;
const IN_FLIGHT: usize = 16;
/// The daemon's queue threads are named `sluice-xsk-QUEUE`.
const XSK_THREAD: &str = "sluice-xsk-";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DurablePath {
    /// The daemon's UDP socket; producers send with the kernel.
    Socket,
    /// The daemon's AF_XDP receive path; producers send with the kernel.
    AfXdp,
    /// The daemon's AF_XDP receive path; producers send through an AF_XDP
    /// TX ring.
    AfXdpTx,
}

impl DurablePath {
    pub fn name(self) -> &'static str {
        match self {
            DurablePath::Socket => "socket",
            DurablePath::AfXdp => "af_xdp",
            DurablePath::AfXdpTx => "af_xdp+tx",
        }
    }

    fn daemon_xdp(self) -> bool {
        self != DurablePath::Socket
    }

    fn producer_tx(self) -> bool {
        self == DurablePath::AfXdpTx
    }

    fn tx_name(self) -> &'static str {
        if self.producer_tx() {
            "AF_XDP TX ring"
        } else {
            "kernel UDP"
        }
    }
}

/// One durable run.
#[derive(Debug, Clone, Serialize)]
pub struct DurableRun {
    pub size: usize,
    pub path: DurablePath,
    pub producers: usize,
    /// What the producers send through.
    pub producer_tx: &'static str,
    /// The daemon's XDP attach and bind modes (from sluice_xdp_info).
    pub xdp_mode: Option<String>,
    /// Messages handed to producers, and durably acked (all of them,
    /// warm-up and drain included): equal unless something failed.
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// The daemon's own count of durable acks for the stream when the
    /// producers were done (its whole life: it was started for this run).
    pub daemon_durable_acks_total: u64,
    pub window_seconds: f64,
    pub window_acked: u64,
    pub acked_per_sec: f64,
    /// Payload MB/s (10^6 bytes) acked.
    pub mb_per_sec: f64,
    /// Data datagrams the daemon received (sluice_datagrams_in_total), and
    /// of those the frames its AF_XDP queues took (sluice_xdp_rx_frames_total).
    pub datagrams_per_sec: f64,
    pub xdp_frames_per_sec: f64,
    /// UDP datagrams namespace a's kernel sent (Udp OutDatagrams): with the
    /// TX ring, only QUIC and what did not fit the ring.
    pub producer_kernel_udp_out_per_sec: f64,
    pub daemon_cpu: Option<CpuUse>,
    pub daemon_cpu_us_per_msg: Option<f64>,
    pub daemon_cpu_us_per_datagram: Option<f64>,
    /// The AF_XDP queue thread(s) `sluice-xsk-*`.
    pub xsk_thread_cpu_seconds: Option<f64>,
    pub xsk_thread_cpu_us_per_packet: Option<f64>,
    /// This process over the window: the producers (and the harness's marks).
    pub producer_cpu: CpuUse,
    pub producer_cpu_us_per_msg: f64,
    pub daemon_threads: BTreeMap<String, f64>,
    pub daemon: Option<DaemonCounters>,
    /// The whole machine over the window (/proc/stat), and the busy time
    /// neither the daemon nor this process used (other work: unreliable
    /// figures if large).
    pub machine: CpuSplit,
    pub other_busy_seconds: f64,
}

/// The durable runs of one size against each other.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DurableRatios {
    pub size: usize,
    /// af_xdp ÷ socket.
    pub acked_per_sec_xdp_per_socket: Option<f64>,
    pub daemon_cpu_per_msg_xdp_per_socket: Option<f64>,
    /// af_xdp+tx ÷ af_xdp (the producers' TX ring against their kernel
    /// sockets, the daemon on AF_XDP both times).
    pub acked_per_sec_tx_per_kernel_tx: Option<f64>,
    pub datagrams_per_sec_tx_per_kernel_tx: Option<f64>,
    pub producer_cpu_per_msg_tx_per_kernel_tx: Option<f64>,
}

pub fn print_header(c: &XdpConfig) {
    println!(
        "\ndurable: sluiced in namespace b (fsync = always, fast path, token auth), {} producers in \
         namespace a, closed loop ({IN_FLIGHT} calls of {BATCH} msgs in flight each); {} s per run \
         after {:.2} s warm-up",
        c.producers, c.seconds, c.durable_warmup
    );
}

/// The three runs for one message size.
pub fn run_size(
    link: &Link,
    c: &XdpConfig,
    work: &Path,
    size: usize,
) -> Result<Vec<DurableRun>, String> {
    let mut runs = Vec::new();
    for path in [
        DurablePath::Socket,
        DurablePath::AfXdp,
        DurablePath::AfXdpTx,
    ] {
        let r = run_one(link, c, work, size, path)
            .map_err(|e| format!("durable {size} B, {}: {e}", path.name()))?;
        runs.push(r);
    }
    Ok(runs)
}

fn run_one(
    link: &Link,
    c: &XdpConfig,
    work: &Path,
    size: usize,
    path: DurablePath,
) -> Result<DurableRun, String> {
    let dir = work.join(format!("{size}-{}", path.name()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let token = sluice_daemon::auth::new_token();
    let config = dir.join("sluiced.toml");
    launcher::write_token_config(&config, &token, &format!("publish = [\"{STREAM}\"]\n"))?;
    let spool = dir.join("data");
    let b_ip: IpAddr = link
        .b
        .ip
        .parse()
        .map_err(|e| format!("address {}: {e}", link.b.ip))?;
    let mut spec = DaemonSpec::this_exe(&spool)
        .map_err(|e| e.to_string())?
        .in_netns(b_ip)
        .fsync("always")
        .args(["--config".into(), config.display().to_string()]);
    if path.daemon_xdp() {
        spec = spec.args(["--xdp-interface", &link.b.iface]);
    }
    let d = spec
        .try_start_in(&link.b.ns)
        .map_err(|e| format!("the daemon in {}: {e}", link.b.ns.name()))?;
    let measured = measure(link, c, &d, &spool, token, size, path);
    let stopped = d.try_terminate(Duration::from_secs(30));
    // The spool is not looked at again: free the disk now.
    let _ = std::fs::remove_dir_all(&dir);
    let run = measured?;
    match stopped {
        Ok(s) if s.success() => Ok(run),
        Ok(s) => Err(format!("the daemon did not stop cleanly: {s}")),
        Err(e) => Err(e.to_string()),
    }
}

/// One end of the window: the common mark, the UDP datagrams namespace
/// a's kernel sent, and the machine's busy and softirq time.
struct End {
    mark: Mark,
    udp_out_a: Option<u64>,
    stat: CpuStat,
}

fn measure(
    link: &Link,
    c: &XdpConfig,
    d: &Daemon,
    spool: &Path,
    token: String,
    size: usize,
    path: DurablePath,
) -> Result<DurableRun, String> {
    let cert = spool.join("tls/server.crt");
    let transport = Transport::FastPath(launcher::pinned(&cert, Some(token))?);
    let b_ip: IpAddr = link
        .b
        .ip
        .parse()
        .map_err(|e| format!("address {}: {e}", link.b.ip))?;
    let quic = SocketAddr::new(b_ip, NS_QUIC_PORT);
    let plan = Plan {
        shape: Shape {
            batch: BATCH,
            in_flight: IN_FLIGHT,
            count: None,
            rate: 0.0,
            stamp: None,
        },
        payloads: Payloads::fixed(size),
        seed: 0,
        warmup: c.durable_warmup,
        seconds: Some(c.seconds),
        interval: 1.0,
        drain: Duration::from_secs(60),
    };
    let pid = d.pid();
    let end = |s: &Shared| End {
        mark: Mark::take(s.counts(), Some(pid), || d.scrape().ok()),
        udp_out_a: super::udp_counter("OutDatagrams"),
        stat: CpuStat::now(),
    };
    // The producers on a thread in namespace a, their runtime made there:
    // its threads and every socket stay in a.
    let o = link.a.ns.enter(|| {
        load::runtime(None)?.block_on(async {
            let a = &link.a;
            let tx = if path.producer_tx() {
                let tx = tx_provider(TxSetup::new(a.iface.clone(), 0))
                    .map_err(|e| format!("the producers' AF_XDP TX ring: {e}"))?;
                Some(tx)
            } else {
                None
            };
            let ip: IpAddr = a.ip.parse().map_err(|e| format!("address {}: {e}", a.ip))?;
            let options = ProducerOptions {
                transport,
                // A bound source address: the TX ring writes it into the
                // frames' headers (it leaves an unbound socket's datagrams
                // to the kernel).
                bind: Some(SocketAddr::new(ip, 0)),
                tx,
                ..ProducerOptions::default()
            };
            let stream = |_| STREAM.to_owned();
            let producers = load::connect(c.producers, quic, stream, 1, &options).await?;
            load::run(producers, &plan, &Progress::hidden(), end).await
        })
    })?;
    // Every producer is closed: whatever was acked is durable by now.
    let last = d.scrape().ok();

    let (m0, m1) = (&o.start, &o.end);
    let w = m0.mark.until(&m1.mark);
    let window = w.seconds;
    let acked_per_sec = div(w.acked as f64, window);
    let iface = [("interface", link.b.iface.as_str())];
    let xdp_frames = m0
        .mark
        .scrape
        .as_ref()
        .zip(m1.mark.scrape.as_ref())
        .map_or(0.0, |(a, b)| {
            (b.value("sluice_xdp_rx_frames_total", &iface)
                - a.value("sluice_xdp_rx_frames_total", &iface))
            .max(0.0)
        });
    let datagrams = w.counters.map_or(0, |c| c.datagrams_in);
    let xsk = w
        .daemon_threads
        .iter()
        .filter(|(name, _)| name.starts_with(XSK_THREAD))
        .map(|(_, s)| *s)
        .reduce(|a, b| a + b);
    let (machine, _) = m1.stat.since(&m0.stat);
    let other_busy_seconds =
        (machine.busy - w.harness.seconds - w.daemon.map_or(0.0, |u| u.seconds)).max(0.0);
    let xdp_mode = m1.mark.scrape.as_ref().and_then(|s| {
        let mode = s.label_values("sluice_xdp_info", "mode").pop()?;
        let bind = s.label_values("sluice_xdp_info", "bind").pop()?;
        Some(format!("{mode} XDP, {bind}"))
    });
    Ok(DurableRun {
        size,
        path,
        producers: c.producers,
        producer_tx: path.tx_name(),
        xdp_mode,
        sent: o.sent,
        acked: o.acked,
        errors: o.errors,
        first_error: o.first_error,
        daemon_durable_acks_total: last.map_or(0, |s| {
            s.value("sluice_durable_acks_total", &[("stream", STREAM)]) as u64
        }),
        window_seconds: window,
        window_acked: w.acked,
        acked_per_sec,
        mb_per_sec: acked_per_sec * size as f64 / 1e6,
        datagrams_per_sec: div(datagrams as f64, window),
        xdp_frames_per_sec: div(xdp_frames, window),
        producer_kernel_udp_out_per_sec: m0
            .udp_out_a
            .zip(m1.udp_out_a)
            .map_or(0.0, |(a, b)| div(b.saturating_sub(a) as f64, window)),
        daemon_cpu: w.daemon,
        daemon_cpu_us_per_msg: w.daemon.map(|u| us_per(u.seconds, w.acked)),
        daemon_cpu_us_per_datagram: w.daemon.map(|u| us_per(u.seconds, datagrams)),
        xsk_thread_cpu_seconds: xsk,
        xsk_thread_cpu_us_per_packet: xsk
            .filter(|_| xdp_frames > 0.0)
            .map(|s| us_per(s, xdp_frames as u64)),
        producer_cpu: w.harness,
        producer_cpu_us_per_msg: us_per(w.harness.seconds, w.acked),
        daemon_threads: w.daemon_threads,
        daemon: w.counters,
        machine,
        other_busy_seconds,
    })
}

fn find(runs: &[DurableRun], p: DurablePath) -> Option<&DurableRun> {
    runs.iter().find(|r| r.path == p)
}

pub fn ratios(size: usize, runs: &[DurableRun]) -> DurableRatios {
    let s = find(runs, DurablePath::Socket);
    let x = find(runs, DurablePath::AfXdp);
    let t = find(runs, DurablePath::AfXdpTx);
    let r = |a: Option<&DurableRun>, b: Option<&DurableRun>, f: fn(&DurableRun) -> Option<f64>| {
        let (a, b) = (f(a?)?, f(b?)?);
        (b > 0.0).then(|| a / b)
    };
    DurableRatios {
        size,
        acked_per_sec_xdp_per_socket: r(x, s, |r| Some(r.acked_per_sec)),
        daemon_cpu_per_msg_xdp_per_socket: r(x, s, |r| r.daemon_cpu_us_per_msg),
        acked_per_sec_tx_per_kernel_tx: r(t, x, |r| Some(r.acked_per_sec)),
        datagrams_per_sec_tx_per_kernel_tx: r(t, x, |r| Some(r.datagrams_per_sec)),
        producer_cpu_per_msg_tx_per_kernel_tx: r(t, x, |r| Some(r.producer_cpu_us_per_msg)),
    }
}

pub fn print_size(size: usize, runs: &[DurableRun], q: &DurableRatios) {
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    println!("\n  {size} B messages");
    println!(
        "  {:<10} {:<15} | {:>12} {:>7} {:>10} {:>10} {:>10} | {:>9} {:>9} {:>9} {:>9} | acked (daemon's count) / sent",
        "daemon",
        "producers send",
        "durable/s",
        "MB/s",
        "dgrams/s",
        "xdp fr/s",
        "kUDP out/s",
        "daemon",
        "daemon",
        "xsk thr",
        "producer"
    );
    println!(
        "  {:<10} {:<15} | {:>12} {:>7} {:>10} {:>10} {:>10} | {:>9} {:>9} {:>9} {:>9} |",
        "", "", "msgs", "", "", "", "(ns a)", "us/msg", "us/dgram", "us/pkt", "us/msg"
    );
    println!("  {}", "-".repeat(142));
    for r in runs {
        println!(
            "  {:<10} {:<15} | {:>12.0} {:>7.1} {:>10.0} {:>10.0} {:>10.0} | {:>9} {:>9} {:>9} {:>9.2} | {} ({}) / {}{}",
            r.path.name(),
            r.producer_tx,
            r.acked_per_sec,
            r.mb_per_sec,
            r.datagrams_per_sec,
            r.xdp_frames_per_sec,
            r.producer_kernel_udp_out_per_sec,
            opt(r.daemon_cpu_us_per_msg, 2),
            opt(r.daemon_cpu_us_per_datagram, 2),
            opt(r.xsk_thread_cpu_us_per_packet, 3),
            r.producer_cpu_us_per_msg,
            r.acked,
            r.daemon_durable_acks_total,
            r.sent,
            if r.errors > 0 {
                format!(
                    ", {} errors (first: {})",
                    r.errors,
                    r.first_error.as_deref().unwrap_or("?")
                )
            } else {
                String::new()
            }
        );
    }
    for r in runs {
        if let Some(c) = &r.daemon {
            println!(
                "    {:<10} {:.1} msgs/datagram; group commits {} (mean {:.0} records, fsync mean {:.0} us); nacks {}, dropped {}{}",
                r.path.name(),
                c.messages_per_datagram,
                c.group_commits,
                c.batch_records_mean,
                c.fsync_mean_us,
                c.nacks_sent,
                c.datagrams_dropped,
                r.xdp_mode
                    .as_ref()
                    .map_or(String::new(), |m| format!("; {m}"))
            );
        }
    }
    for r in runs {
        if r.other_busy_seconds > super::OTHER_WORK_WARN * r.window_seconds {
            println!(
                "    WARNING: {}: other work used {:.2} cores during the window: its figures are not reliable",
                r.path.name(),
                r.other_busy_seconds / r.window_seconds.max(1e-9)
            );
        }
    }
    let ratio = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}x"));
    println!("  ratios:");
    println!(
        "    durable msgs/s, af_xdp / socket                        {}",
        ratio(q.acked_per_sec_xdp_per_socket)
    );
    println!(
        "    daemon CPU per msg, af_xdp / socket                    {}",
        ratio(q.daemon_cpu_per_msg_xdp_per_socket)
    );
    println!(
        "    durable msgs/s, producers' TX ring / kernel UDP        {}",
        ratio(q.acked_per_sec_tx_per_kernel_tx)
    );
    println!(
        "    datagrams/s, producers' TX ring / kernel UDP           {}",
        ratio(q.datagrams_per_sec_tx_per_kernel_tx)
    );
    println!(
        "    producer CPU per msg, TX ring / kernel UDP             {}",
        ratio(q.producer_cpu_per_msg_tx_per_kernel_tx)
    );
}
