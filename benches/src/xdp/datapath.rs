//! Part "datapath": raw UDP over the veth pair, no daemon: what the receive
//! path costs by itself.
//!
//! One receiver in namespace `b` and one sender in namespace `a`, a thread
//! each (pinned to different CPUs when there are two), one pair at a time:
//!
//! - receivers: `socket` (a UDP socket with an 8 MiB receive buffer, read
//!   with recvmmsg, 64 a call) and `af_xdp` (the XDP redirect program on
//!   `veth-b` and one receive-only AF_XDP socket on its queue 0, copy mode;
//!   each frame's headers parsed with `frame::parse_udp`);
//! - senders: `sendmmsg` (64 a call, one connected socket) and `af_xdp` (a
//!   transmit-only AF_XDP socket on `veth-a` queue 0, frames written with
//!   `frame::write_udp`, 64 then a flush).
//!
//! Each thread counts packets and reads its own CPU time
//! (CLOCK_THREAD_CPUTIME_ID) where it first sees the window open and close;
//! the run's rates and CPU per packet come from those snapshots. The
//! machine's busy and softirq time (/proc/stat) are read over the same
//! window: on veth the sender's CPU runs the receiving side's softirq
//! (veth_xmit → NAPI/backlog on the sending CPU), so the thread figures
//! leave that part out, and the softirq column shows it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_testkit::testnet::{End, Link};
use sluice_xdp::xsk;

use super::{div, sleep_until, us_per, CpuSplit, CpuStat, XdpConfig};

mod meter;
mod receive;
mod report;
mod send;

pub use report::{print_header, print_size, targets};

use meter::Window;

/// The receivers' UDP port (the namespaces are ours: no clash).
pub const PORT: u16 = 7501;
/// The AF_XDP sender's source port.
const SRC_PORT: u16 = 7502;
/// Packets per recvmmsg/sendmmsg call, per AF_XDP receive pass, per TX
/// flush.
const BATCH: usize = 64;
/// The largest payload in one frame on a 1500-byte MTU (IPv4 + UDP).
pub const MAX_PAYLOAD: usize = 1472;
/// The socket receiver's SO_RCVBUF.
const RCVBUF: usize = 8 << 20;
/// How long a thread waits for packets before looking at the clock again.
const POLL: Duration = Duration::from_millis(10);
/// The sender goes on this long after the window, so that the receiver
/// sees it close under load.
const TAIL: Duration = Duration::from_millis(30);
/// After the sender stops, the receiver drains until this long passes with
/// nothing (or [`DRAIN_MAX`]).
const DRAIN_IDLE: Duration = Duration::from_millis(100);
const DRAIN_MAX: Duration = Duration::from_secs(2);
/// Bucket depth of the paced sender, packets.
const PACE_BURST: f64 = 4.0 * BATCH as f64;
/// The drain runs: bursts of this many packets (they fit the AF_XDP RX ring
/// and the socket's receive buffer), this many times.
const DRAIN_BURST: u64 = 4096;
const DRAIN_ROUNDS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SenderKind {
    Sendmmsg,
    AfXdp,
}

impl SenderKind {
    pub fn name(self) -> &'static str {
        match self {
            SenderKind::Sendmmsg => "sendmmsg",
            SenderKind::AfXdp => "af_xdp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiverKind {
    Socket,
    AfXdp,
}

impl ReceiverKind {
    pub fn name(self) -> &'static str {
        match self {
            ReceiverKind::Socket => "socket",
            ReceiverKind::AfXdp => "af_xdp",
        }
    }
}

/// A receiver emptying a backlog with no waiting (bursts of sendmmsg it
/// did not read until each was sent): the cost of a packet itself,
/// without a wake-up per few packets.
#[derive(Debug, Clone, Serialize)]
pub struct DrainRun {
    pub size: usize,
    pub receiver: ReceiverKind,
    pub receiver_mode: Option<String>,
    pub rounds: usize,
    pub burst: u64,
    pub sent: u64,
    /// Packets taken in the timed drains (late ones are not timed).
    pub received: u64,
    pub receiver_cpu_seconds: f64,
    pub receiver_cpu_us_per_packet: f64,
    pub receiver_packets_per_call: f64,
    pub receiver_drops: u64,
}

/// One sender × receiver run.
#[derive(Debug, Clone, Serialize)]
pub struct DatapathRun {
    pub size: usize,
    pub sender: SenderKind,
    pub receiver: ReceiverKind,
    /// The paced sender's rate, packets/s; `None`: as fast as it goes.
    pub offered_pps: Option<f64>,
    /// Where the receiver's XDP program and socket ran (af_xdp), e.g.
    /// "native XDP, copy".
    pub receiver_mode: Option<String>,
    pub sender_mode: Option<String>,
    /// The CPUs the threads were pinned to, if they were.
    pub sender_cpu: Option<usize>,
    pub receiver_cpu: Option<usize>,
    /// The whole run (warm-up, window, tail, drain).
    pub sent: u64,
    pub received: u64,
    /// 1 − received / sent over the whole run.
    pub loss: f64,
    /// The receiver's window, as it saw it.
    pub window_seconds: f64,
    pub window_received: u64,
    pub received_per_sec: f64,
    /// Payload MB/s (10^6 bytes) in the receiver's window.
    pub received_mb_per_sec: f64,
    /// Payload bytes received over the whole run.
    pub received_bytes: u64,
    pub receiver_cpu_seconds: f64,
    pub receiver_cpu_us_per_packet: f64,
    /// Packets per receive call that got any (recvmmsg, AF_XDP pass), and
    /// how often the receiver went to sleep (voluntary context switches):
    /// at a trickle every packet can cost a wake-up.
    pub receiver_packets_per_call: f64,
    pub receiver_sleeps_per_sec: f64,
    pub receiver_packets_per_sleep: f64,
    /// The sender's window, as it saw it.
    pub sender_window_seconds: f64,
    pub window_sent: u64,
    pub sent_per_sec: f64,
    pub sender_cpu_seconds: f64,
    pub sender_cpu_us_per_packet: f64,
    pub sender_packets_per_call: f64,
    pub sender_sleeps_per_sec: f64,
    /// The whole machine over the coordinator's window (/proc/stat), per
    /// packet received in the receiver's window.
    pub machine: CpuSplit,
    pub machine_per_cpu: Vec<CpuSplit>,
    pub softirq_us_per_packet: f64,
    pub machine_busy_us_per_packet: f64,
    /// Busy time neither thread used (nor the softirq work run on their
    /// time): other work on the machine, or ksoftirqd. Large values make
    /// the run's figures unreliable.
    pub other_busy_seconds: f64,
    /// Drops the receiver's kernel side counted (socket: UDP RcvbufErrors
    /// in namespace b; af_xdp: XDP_STATISTICS rx_dropped + rx_ring_full +
    /// rx_invalid_descs).
    pub receiver_drops: u64,
    /// Drops before the receiver: veth-a's tx_dropped and veth-b's
    /// rx_dropped (a full veth ring), and full input backlogs
    /// (/proc/net/softnet_stat), over the run.
    pub link_drops: u64,
    /// af_xdp: frames on the socket that were not UDP to [`PORT`].
    pub invalid_frames: u64,
}

/// The six runs for one payload size: every sender × receiver unpaced,
/// then the paced sendmmsg sender into each receiver.
pub fn run_size(
    link: &Link,
    c: &XdpConfig,
    size: usize,
) -> Result<(Vec<DatapathRun>, Vec<DrainRun>), String> {
    let mut runs = Vec::new();
    let plan = [
        (SenderKind::Sendmmsg, ReceiverKind::Socket, None),
        (SenderKind::Sendmmsg, ReceiverKind::AfXdp, None),
        (SenderKind::AfXdp, ReceiverKind::Socket, None),
        (SenderKind::AfXdp, ReceiverKind::AfXdp, None),
        (SenderKind::Sendmmsg, ReceiverKind::Socket, Some(c.rate)),
        (SenderKind::Sendmmsg, ReceiverKind::AfXdp, Some(c.rate)),
    ];
    for (sender, receiver, pace) in plan {
        let r = run_one(link, c, size, sender, receiver, pace).map_err(|e| {
            format!(
                "datapath {size} B, {} -> {}{}: {e}",
                sender.name(),
                receiver.name(),
                pace.map_or(String::new(), |p| format!(" at {p:.0}/s"))
            )
        })?;
        runs.push(r);
    }
    let mut drains = Vec::new();
    for receiver in [ReceiverKind::Socket, ReceiverKind::AfXdp] {
        let r = run_drain(link, size, receiver)
            .map_err(|e| format!("datapath {size} B, drain into {}: {e}", receiver.name()))?;
        drains.push(r);
    }
    Ok((runs, drains))
}

/// Moves the calling thread into `end`'s namespace, and onto `cpu`.
fn settle(end: &End, cpu: Option<usize>) {
    end.ns.enter_this_thread();
    if let Some(cpu) = cpu {
        let _ = xsk::pin_current_thread(cpu);
    }
}

/// The CPUs for the sender and the receiver: apart, when there are two.
fn cpus() -> (Option<usize>, Option<usize>) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus >= 2 {
        (Some(0), Some(1))
    } else {
        (None, None)
    }
}

fn run_drain(link: &Link, size: usize, receiver: ReceiverKind) -> Result<DrainRun, String> {
    let (tx_cpu, rx_cpu) = cpus();
    let to = receiver_addr(link)?;
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let (go_tx, go_rx) = mpsc::channel::<bool>();
    let (sent_tx, sent_rx) = mpsc::channel::<u64>();
    std::thread::scope(|s| {
        let rx = s.spawn(|| {
            settle(&link.b, rx_cpu);
            receive::drain(
                receiver,
                &link.b,
                to,
                DRAIN_ROUNDS,
                ready_tx,
                go_tx,
                sent_rx,
            )
        });
        if let Ok(Err(e)) | Err(e) = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "the receiver did not get ready within 10 s".to_owned())
        {
            let _ = rx.join();
            return Err(format!("receiver: {e}"));
        }
        let tx = s.spawn(|| {
            settle(&link.a, tx_cpu);
            send::bursts(&link.a, to, size, DRAIN_BURST, go_rx, sent_tx)
        });
        let sent = tx
            .join()
            .unwrap_or_else(|p| Err(format!("panicked: {}", super::panic_text(&p))));
        let drained = rx
            .join()
            .unwrap_or_else(|p| Err(format!("panicked: {}", super::panic_text(&p))));
        let sent = sent.map_err(|e| format!("sender: {e}"))?;
        let d = drained.map_err(|e| format!("receiver: {e}"))?;
        Ok(DrainRun {
            size,
            receiver,
            receiver_mode: d.mode,
            rounds: DRAIN_ROUNDS,
            burst: DRAIN_BURST,
            sent,
            received: d.received,
            receiver_cpu_seconds: d.cpu_seconds,
            receiver_cpu_us_per_packet: us_per(d.cpu_seconds, d.received),
            receiver_packets_per_call: div(d.received as f64, d.calls as f64),
            receiver_drops: d.drops,
        })
    })
}

/// Drops on the veth pair so far (see [`DatapathRun::link_drops`]).
fn link_drops(link: &Link) -> u64 {
    let tx = link
        .a
        .ns
        .enter(|| super::procfs::dev_drops(&link.a.iface))
        .map_or(0, |d| d.1);
    let rx = link
        .b
        .ns
        .enter(|| super::procfs::dev_drops(&link.b.iface))
        .map_or(0, |d| d.0);
    tx + rx + super::procfs::backlog_drops()
}

fn receiver_addr(link: &Link) -> Result<SocketAddr, String> {
    let b_ip: IpAddr = link
        .b
        .ip
        .parse()
        .map_err(|e| format!("address {}: {e}", link.b.ip))?;
    Ok(SocketAddr::new(b_ip, PORT))
}

fn run_one(
    link: &Link,
    c: &XdpConfig,
    size: usize,
    sender: SenderKind,
    receiver: ReceiverKind,
    pace: Option<f64>,
) -> Result<DatapathRun, String> {
    let (tx_cpu, rx_cpu) = cpus();
    let sender_done = AtomicBool::new(false);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let (window_tx, window_rx) = mpsc::channel::<Option<Window>>();
    let warmup = Duration::from_secs_f64(c.datapath_warmup);
    let length = Duration::from_secs_f64(c.seconds);
    let to = receiver_addr(link)?;
    let link_drops_before = link_drops(link);

    std::thread::scope(|s| {
        let rx = s.spawn(|| {
            settle(&link.b, rx_cpu);
            let done = || sender_done.load(Ordering::Relaxed);
            receive::stream(receiver, &link.b, to, ready_tx, window_rx, done)
        });
        let ready = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| Err("the receiver did not get ready within 10 s".into()));
        if let Err(e) = ready {
            let _ = window_tx.send(None);
            let _ = rx.join();
            return Err(format!("receiver: {e}"));
        }
        let begin = Instant::now();
        let window = Window {
            start: begin + warmup,
            end: begin + warmup + length,
        };
        let _ = window_tx.send(Some(window));
        let tx = s.spawn(move || {
            settle(&link.a, tx_cpu);
            let stop_at = window.end + TAIL;
            match sender {
                SenderKind::Sendmmsg => send::mmsg(&link.a, to, size, pace, window, stop_at),
                SenderKind::AfXdp => send::af_xdp(&link.a, &link.b, to, size, window, stop_at),
            }
        });
        sleep_until(window.start);
        let m0 = CpuStat::now();
        sleep_until(window.end);
        let m1 = CpuStat::now();
        let sent = tx
            .join()
            .unwrap_or_else(|p| Err(format!("panicked: {}", super::panic_text(&p))));
        sender_done.store(true, Ordering::Relaxed);
        let received = rx
            .join()
            .unwrap_or_else(|p| Err(format!("panicked: {}", super::panic_text(&p))));
        let sent = sent.map_err(|e| format!("sender: {e}"))?;
        let received = received.map_err(|e| format!("receiver: {e}"))?;
        let (machine, per_cpu) = m1.since(&m0);
        let link_drops = link_drops(link).saturating_sub(link_drops_before);

        let rw = received.in_window();
        let tw = sent.in_window();
        let (rx_secs, rx_n, rx_cpu_s) = (rw.seconds, rw.packets, rw.cpu_seconds);
        let (tx_secs, tx_n, tx_cpu_s) = (tw.seconds, tw.packets, tw.cpu_seconds);
        Ok(DatapathRun {
            size,
            sender,
            receiver,
            offered_pps: pace,
            receiver_mode: received.mode.clone(),
            sender_mode: sent.mode.clone(),
            sender_cpu: tx_cpu,
            receiver_cpu: rx_cpu,
            sent: sent.total,
            received: received.total,
            loss: 1.0 - div(received.total as f64, sent.total as f64),
            window_seconds: rx_secs,
            window_received: rx_n,
            received_per_sec: div(rx_n as f64, rx_secs),
            received_mb_per_sec: div(rx_n as f64, rx_secs) * size as f64 / 1e6,
            received_bytes: received.bytes,
            receiver_cpu_seconds: rx_cpu_s,
            receiver_cpu_us_per_packet: us_per(rx_cpu_s, rx_n),
            receiver_packets_per_call: div(rx_n as f64, rw.calls as f64),
            receiver_sleeps_per_sec: div(rw.sleeps as f64, rx_secs),
            receiver_packets_per_sleep: div(rx_n as f64, rw.sleeps as f64),
            sender_window_seconds: tx_secs,
            window_sent: tx_n,
            sent_per_sec: div(tx_n as f64, tx_secs),
            sender_cpu_seconds: tx_cpu_s,
            sender_cpu_us_per_packet: us_per(tx_cpu_s, tx_n),
            sender_packets_per_call: div(tx_n as f64, tw.calls as f64),
            sender_sleeps_per_sec: div(tw.sleeps as f64, tx_secs),
            machine,
            machine_per_cpu: per_cpu,
            softirq_us_per_packet: us_per(machine.softirq, rx_n),
            machine_busy_us_per_packet: us_per(machine.busy, rx_n),
            other_busy_seconds: (machine.busy - rx_cpu_s - tx_cpu_s).max(0.0),
            receiver_drops: received.drops,
            link_drops,
            invalid_frames: received.invalid,
        })
    })
}
