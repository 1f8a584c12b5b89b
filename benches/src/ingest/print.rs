//! The report as a readable table: every headline figure as the median of
//! the repetitions with [min–max], next to the machine's baseline measured
//! in the same invocation and the ratio to it; then one line per
//! repetition, and the details (CPU by thread, the daemon's counters) of
//! the median repetition.

use std::collections::BTreeMap;

use super::config::{Length, PathKind};
use super::report::{IngestReport, RunReport, TARGET_ACKED_PER_SEC, TARGET_P99_US};
use crate::measure::{median_index, CpuUse, Latency, Spread, StageTime, Stages};

/// A ratio: `median x [min–max]`.
fn ratio(s: &Spread) -> String {
    let f = |x: f64| format!("{x:.3}");
    if f(s.min) == f(s.max) {
        format!("{}x", f(s.median))
    } else {
        format!("{}x [{}–{}]", f(s.median), f(s.min), f(s.max))
    }
}

/// One row: measure, value, baseline, ratio.
fn row(measure: &str, value: &str, baseline: &str, ratio: &str) {
    println!("  {measure:<26} {value:>28} | {baseline:<36} {ratio}");
}

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
    let size = if c.sizes.is_empty() {
        format!("{} B", c.size)
    } else {
        let mix: Vec<String> = c
            .sizes
            .iter()
            .map(|w| format!("{}:{}", w.bytes, w.weight))
            .collect();
        format!(
            "sizes {} (mean {:.0} B, seed {})",
            mix.join(","),
            c.mean_size(),
            c.seed
        )
    };
    println!(
        "\ningest: {} producers x {size} over {}, fsync = {}, {load}, {how}, {} repetition(s), \
         {} stream(s), {} B datagrams{}{}",
        c.producers,
        c.path.name(),
        c.fsync,
        c.repeat,
        c.streams,
        c.datagram,
        if c.gso { "" } else { " (no GSO)" },
        match &c.external {
            Some(e) => format!(", external daemon {}", e.addr),
            None => String::new(),
        }
    );
    if c.path == PathKind::Http {
        println!(
            "  HTTP: {}, {} connection(s) per producer, exactly once by {}; {} request(s) answered 503 and sent again",
            match c.batch {
                1 => "one message per request".to_owned(),
                n => format!("{n} msgs per request as frames"),
            },
            c.in_flight,
            if crate::publisher::keyed(c.in_flight) {
                "an Idempotency-Key per request"
            } else {
                "Sluice-Producer-Id + Sluice-Seq"
            },
            r.runs.iter().filter_map(|x| x.http_retries).sum::<u64>()
        );
    }
    println!(
        "  sent {} acked {} errors {} over all repetitions{}",
        r.sent,
        r.acked,
        r.errors,
        r.first_error
            .as_ref()
            .map_or(String::new(), |e| format!(" (first: {e})"))
    );
    let s = &r.summary;
    let b = r.baselines;
    let q = s.ratios.as_ref();
    println!(
        "\n  {} over {} run(s); baselines measured once, before the runs",
        if s.runs > 1 {
            "median [min–max]"
        } else {
            "figures"
        },
        s.runs
    );
    row("measure", "value", "baseline (same invocation)", "ratio");
    println!("  {}", "-".repeat(112));
    let with =
        |f: fn(&super::report::Ratios<Spread>) -> &Spread| q.map_or(String::new(), |q| ratio(f(q)));
    row(
        "acked msgs/s",
        &s.acked_per_sec.show(0),
        &b.map_or(String::new(), |b| {
            format!(
                "plain UDP 128 B {:.0} dgrams/s",
                b.udp_128.datagrams_per_sec
            )
        }),
        &with(|q| &q.acked_per_udp_128_datagram),
    );
    row(
        "acked payload MB/s",
        &s.mb_per_sec.show(1),
        &b.map_or(String::new(), |b| {
            format!("plain UDP 1452 B {:.0} MB/s", b.udp_1452.mb_per_sec)
        }),
        &with(|q| &q.goodput_per_udp_1452_mb),
    );
    if let Some(g) = &s.group_commits_per_sec {
        row(
            "group commits/s",
            &g.show(0),
            &b.map_or(String::new(), |b| {
                format!("raw 4 KiB fdatasync {:.0}/s", b.fdatasync_per_sec)
            }),
            &with(|q| &q.commits_per_raw_fdatasync),
        );
    }
    row(
        "ack latency p50 (us)",
        &s.p50_us.show(0),
        &b.map_or(String::new(), |b| {
            format!("raw fdatasync p50 {} us", b.fdatasync_p50_us)
        }),
        &with(|q| &q.p50_per_fdatasync_p50),
    );
    row(
        "ack latency p99 (us)",
        &s.p99_us.show(0),
        &b.map_or(String::new(), |b| {
            format!("raw fdatasync p99 {} us", b.fdatasync_p99_us)
        }),
        &with(|q| &q.p99_per_fdatasync_p99),
    );
    if let (Some(b), Some(q)) = (b, q) {
        if let (Some(i), Some(x)) = (b.ideal_commit_at_rate, &q.p99_per_ideal_commit_p99) {
            row(
                "",
                "",
                &format!("ideal raw group commit p99 {} us", i.p99_us),
                &ratio(x),
            );
        }
        if let (Some(e), Some(x)) = (b.udp_echo_at_rate, &q.p99_per_udp_echo_p99) {
            row("", "", &format!("UDP echo p99 {} us", e.p99_us), &ratio(x));
        }
    }
    row("ack latency p99.9 (us)", &s.p999_us.show(0), "", "");
    row("ack latency max (us)", &s.max_us.show(0), "", "");
    if let Some(d) = &s.daemon_cpu_us_per_msg {
        row("daemon CPU us/msg", &d.show(2), "", "");
    }
    row(
        "producers CPU us/msg",
        &s.producer_cpu_us_per_msg.show(2),
        "",
        "",
    );
    if let (Some(b), Some(x)) = (b, q.and_then(|q| q.cpu_per_msg_per_plain_floor.as_ref())) {
        if let (Some(e), Some(i)) = (b.udp_echo_at_rate, b.ideal_commit_at_rate) {
            row(
                "daemon + producers CPU",
                "",
                &format!(
                    "UDP echo + ideal commit {:.1} us/op",
                    e.cpu_us_per_op + i.cpu_us_per_op
                ),
                &ratio(x),
            );
        }
    }
    if !c.sizes.is_empty() {
        row(
            "mean payload (B)",
            &s.mean_payload_bytes.show(1),
            &format!("asked {:.1}", c.mean_size()),
            "",
        );
    }
    println!(
        "  (latency from the {}; {} msgs counted over all runs)",
        r.latency_from,
        r.runs.iter().map(|x| x.latency.count).sum::<u64>()
    );
    println!(
        "\n  target: {:.0} acked msgs/s -> {}; p99 <= {:.0} us -> {}",
        TARGET_ACKED_PER_SEC,
        q.map_or("-".into(), |q| ratio(&q.acked_per_target)),
        TARGET_P99_US,
        q.map_or("-".into(), |q| ratio(&q.p99_per_target)),
    );

    print_runs(&r.runs);
    if let Some(m) = median_index(&r.runs, |x| x.acked_per_sec) {
        print_details(&r.runs[m], r.runs.len() > 1);
    }
    print_baselines(r);
}

/// One line per repetition.
fn print_runs(runs: &[RunReport]) {
    println!(
        "\n  {:>3} {:>12} {:>8} {:>8} {:>8} {:>8} {:>9} {:>14} {:>16} {:>7}",
        "run",
        "acked msgs/s",
        "MB/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "daemon us/msg",
        "producers us/msg",
        "errors"
    );
    for x in runs {
        println!(
            "  {:>3} {:>12.0} {:>8.1} {:>8} {:>8} {:>8} {:>9} {:>14} {:>16.2} {:>7}",
            x.run,
            x.acked_per_sec,
            x.mb_per_sec,
            x.latency.p50_us,
            x.latency.p99_us,
            x.latency.p999_us,
            x.latency.max_us,
            x.daemon_cpu_us_per_msg
                .map_or("-".into(), |d| format!("{d:.2}")),
            x.producer_cpu_us_per_msg,
            x.errors
        );
    }
}

/// CPU by thread, the machine and the daemon's counters of one run.
fn print_details(r: &RunReport, several: bool) {
    println!(
        "\n  run {}{}: CPU over the {:.2} s window:",
        r.run,
        if several {
            " (the median by acked msgs/s)"
        } else {
            ""
        },
        r.window_seconds
    );
    if let Some(p) = r.pacer_lag {
        println!(
            "    pacer hand-over lag p50/p99/max: {}/{}/{} us",
            p.p50_us, p.p99_us, p.max_us
        );
    }
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
        println!("    daemon counters over the window:");
        println!(
            "      messages in {} durable acks {} duplicates {}",
            d.messages_in, d.durable_acks, d.duplicates
        );
        // HTTP sends no datagrams.
        if d.datagrams_in > 0 {
            println!(
                "      datagrams in {} out {} dropped {}  ({:.1} msgs per datagram in)",
                d.datagrams_in, d.datagrams_out, d.datagrams_dropped, d.messages_per_datagram
            );
            println!(
                "      nacks sent {} retransmits received {} over credit {}",
                d.nacks_sent, d.retransmits_received, d.over_credit
            );
        }
        println!(
            "      group commits {}: records mean {:.1} (p50 <= {}, p99 <= {}); write+fdatasync mean {:.0} us (p50 <= {:.0}, p99 <= {:.0})",
            d.group_commits,
            d.batch_records_mean,
            d.batch_records_p50,
            d.batch_records_p99,
            d.fsync_mean_us,
            d.fsync_p50_us,
            d.fsync_p99_us
        );
        print_stages(&d.stages, &r.latency);
    }
}

/// Where publish → ack went: the daemon's stages (means exact, p50/p99
/// bucket bounds), and what is left of the harness's own mean for the rest
/// (the producers' pacing and sending, the network both ways, the
/// producers' handling of the ack).
fn print_stages(s: &Stages, latency: &Latency) {
    if s.received_to_acked.count == 0 {
        return;
    }
    let stage = |name: &str, t: &StageTime| {
        println!(
            "        {name:<26} mean {:>8.0} us   p50 <= {:>7.0}   p99 <= {:>7.0}   ({} observed)",
            t.mean_us, t.p50_us, t.p99_us, t.count
        );
    };
    println!("      where publish -> ack went (daemon stages):");
    stage("append waits for a commit", &s.queue);
    stage("commit: write", &s.write);
    stage("commit: fdatasync", &s.fdatasync);
    stage("received -> ack queued", &s.received_to_acked);
    if s.status.count > 0 {
        stage("ack queued -> STATUS sent", &s.status);
    }
    let daemon = s.received_to_acked.mean_us + s.status.mean_us;
    println!(
        "        outside the daemon (harness mean {:.0} us - daemon {:.0} us): {:.0} us",
        latency.mean_us,
        daemon,
        latency.mean_us - daemon
    );
}

fn print_baselines(r: &IngestReport) {
    let Some(b) = r.baselines else { return };
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
