//! The datapath part's targets and tables.

use super::{DatapathRun, DrainRun, ReceiverKind, SenderKind};
use crate::xdp::{div, TargetCheck, XdpConfig};
use crate::xdp::{TARGET_RX_CPU_RATIO, TARGET_RX_PPS_RATIO, TARGET_TX_PPS_RATIO};

pub fn print_header(c: &XdpConfig) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "\ndatapath: raw UDP, the receiver alone (no daemon), one thread per side{}; \
         {} s per run after {} s warm-up; paced runs: sendmmsg at {:.0} packets/s",
        if cpus >= 2 {
            ", sender pinned to CPU 0 and receiver to CPU 1"
        } else {
            ""
        },
        c.seconds,
        c.datapath_warmup,
        c.rate
    );
    println!(
        "  rx CPU, tx CPU: the thread's own CPU time per packet (CLOCK_THREAD_CPUTIME_ID); softirq, busy: \
         the whole machine per packet received (/proc/stat)"
    );
}

fn find(runs: &[DatapathRun], s: SenderKind, r: ReceiverKind, paced: bool) -> Option<&DatapathRun> {
    runs.iter()
        .find(|x| x.sender == s && x.receiver == r && x.offered_pps.is_some() == paced)
}

/// The targets for one size.
pub fn targets(size: usize, runs: &[DatapathRun], rate: f64) -> Vec<TargetCheck> {
    use ReceiverKind::{AfXdp as RxXdp, Socket};
    use SenderKind::{AfXdp as TxXdp, Sendmmsg};
    let mut t = Vec::new();
    if let (Some(x), Some(s)) = (
        find(runs, Sendmmsg, RxXdp, true),
        find(runs, Sendmmsg, Socket, true),
    ) {
        t.push(TargetCheck::at_most(
            size,
            format!("receiver CPU/packet at {rate:.0} pps: af_xdp / socket"),
            div(x.receiver_cpu_us_per_packet, s.receiver_cpu_us_per_packet),
            TARGET_RX_CPU_RATIO,
        ));
    }
    for sender in [Sendmmsg, TxXdp] {
        if let (Some(x), Some(s)) = (
            find(runs, sender, RxXdp, false),
            find(runs, sender, Socket, false),
        ) {
            t.push(TargetCheck::at_least(
                size,
                format!(
                    "receiver packets/s at max rate: af_xdp / socket ({} sender)",
                    sender.name()
                ),
                div(x.received_per_sec, s.received_per_sec),
                TARGET_RX_PPS_RATIO,
            ));
        }
    }
    for receiver in [RxXdp, Socket] {
        if let (Some(x), Some(s)) = (
            find(runs, TxXdp, receiver, false),
            find(runs, Sendmmsg, receiver, false),
        ) {
            t.push(TargetCheck::at_least(
                size,
                format!(
                    "sender packets/s at max rate: af_xdp TX / sendmmsg (into {})",
                    receiver.name()
                ),
                div(x.sent_per_sec, s.sent_per_sec),
                TARGET_TX_PPS_RATIO,
            ));
        }
    }
    t
}

pub fn print_size(size: usize, runs: &[DatapathRun], drains: &[DrainRun], targets: &[TargetCheck]) {
    println!("\n  {size} B payload");
    println!(
        "  {:<8} {:<8} {:>9} | {:>10} {:>10} {:>7} {:>8} | {:>7} {:>7} {:>8} {:>7} | receiver mode",
        "sender",
        "receiver",
        "load/s",
        "sent/s",
        "recv/s",
        "loss",
        "drops",
        "rx CPU",
        "tx CPU",
        "softirq",
        "busy"
    );
    println!(
        "  {:<8} {:<8} {:>9} | {:>10} {:>10} {:>7} {:>11} | {:>7} {:>7} {:>8} {:>7} |",
        "", "", "", "", "", "", "rx/link", "us/pkt", "us/pkt", "us/pkt", "us/pkt"
    );
    println!("  {}", "-".repeat(121));
    for r in runs {
        println!(
            "  {:<8} {:<8} {:>9} | {:>10.0} {:>10.0} {:>6.2}% {:>11} | {:>7.3} {:>7.3} {:>8.3} {:>7.3} | {}",
            r.sender.name(),
            r.receiver.name(),
            r.offered_pps.map_or("max".into(), |p| format!("{p:.0}")),
            r.sent_per_sec,
            r.received_per_sec,
            r.loss * 100.0,
            format!("{}/{}", r.receiver_drops, r.link_drops),
            r.receiver_cpu_us_per_packet,
            r.sender_cpu_us_per_packet,
            r.softirq_us_per_packet,
            r.machine_busy_us_per_packet,
            r.receiver_mode.as_deref().unwrap_or("recvmmsg")
        );
    }
    let per_cpu = |r: &DatapathRun| {
        r.machine_per_cpu
            .iter()
            .enumerate()
            .map(|(i, c)| format!("cpu{i} {:.2}/{:.2}", c.busy, c.softirq))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "  per window: busy/softirq CPU seconds per CPU | receiver packets per call, sleeps/s, \
         packets per sleep | sender packets per call"
    );
    for r in runs {
        println!(
            "    {:<8} -> {:<8} {:>9}: {} | rx {:.1}/call, {:.0} sleeps/s, {:.1}/sleep | tx {:.1}/call",
            r.sender.name(),
            r.receiver.name(),
            r.offered_pps.map_or("max".into(), |p| format!("{p:.0}/s")),
            per_cpu(r),
            r.receiver_packets_per_call,
            r.receiver_sleeps_per_sec,
            r.receiver_packets_per_sleep,
            r.sender_packets_per_call
        );
    }
    for r in runs {
        // The coordinator's window is the configured one; near enough.
        let window = r.window_seconds.max(1e-9);
        if r.other_busy_seconds > crate::xdp::OTHER_WORK_WARN * window {
            println!(
                "  WARNING: {} -> {} {}: other work used {:.2} cores during the window: its figures are not reliable",
                r.sender.name(),
                r.receiver.name(),
                r.offered_pps.map_or("max".into(), |p| format!("{p:.0}/s")),
                r.other_busy_seconds / window
            );
        }
    }
    if let Some(d) = drains.first() {
        println!(
            "  draining a backlog, no waiting ({} bursts of {} packets from sendmmsg, each read only \
             once sent): the cost of a packet without the wake-ups",
            d.rounds, d.burst
        );
    }
    for d in drains {
        println!(
            "    {:<8} rx CPU {:.3} us/pkt, {:.1} pkts/call; {} of {} taken in the timed drains, {} drops",
            d.receiver.name(),
            d.receiver_cpu_us_per_packet,
            d.receiver_packets_per_call,
            d.received,
            d.sent,
            d.receiver_drops
        );
    }
    let drain = |k: ReceiverKind| drains.iter().find(|d| d.receiver == k);
    if let (Some(x), Some(s)) = (drain(ReceiverKind::AfXdp), drain(ReceiverKind::Socket)) {
        println!(
            "    af_xdp / socket: {:.3}x (for comparison, not the target's measure)",
            div(x.receiver_cpu_us_per_packet, s.receiver_cpu_us_per_packet)
        );
    }
    println!("  targets:");
    for t in targets {
        println!("    {}", t.line());
    }
}
