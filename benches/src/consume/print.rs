//! The `e2e` report as readable tables.

use std::collections::BTreeMap;

use super::report::{ConsumeReport, GroupFigures, PhaseCpu, Repeats, ThroughputRun};
use crate::measure::{Latency, Machine, Spread};

/// Prints the report.
pub fn print(r: &ConsumeReport) {
    let c = &r.config;
    println!(
        "\ne2e: {} producers x {} B over {}, fsync = {}, {} s per phase after {} s warm-up; \
         consumers over {}, push, credit {} msgs / {} B{}",
        c.producers,
        c.size,
        c.path.name(),
        c.fsync,
        c.seconds,
        c.warmup,
        c.consume_path.name(),
        c.max_messages,
        c.max_bytes,
        match &c.external {
            Some(e) => format!(", external daemon {}", e.addr),
            None => String::new(),
        }
    );
    println!("machine: {}", r.head.host);
    if let Some(fs) = &r.file_system {
        println!("data folder: {} ({})", fs.path.display(), fs.describe());
        if let Some(w) = fs.warning() {
            println!("  WARNING: {w}");
        }
    }
    throughput_table(r);
    if let Some(l) = &r.latency {
        let how = format!(
            "\n  latency at {:.0} msgs/s ({:.0} published/s), {} group(s), from the due time \
             (coordinated-omission corrected), {} msgs delivered in the window",
            l.rate, l.published_per_sec, l.groups, l.delivery_latency.count
        );
        println!("{how}");
        println!(
            "  {:<24} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
            "(us)", "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        println!("  {}", "-".repeat(79));
        latency_row("publish -> delivery", &l.delivery_latency);
        if l.delivery_latency_per_group.len() > 1 {
            for (k, g) in l.delivery_latency_per_group.iter().enumerate() {
                latency_row(&format!("  group {k}"), g);
            }
        }
        latency_row("durable ack (producer)", &l.ack_latency);
        println!(
            "  {:<24} {:>7.2}x {:>8} {:>7.2}x",
            "delivery ÷ ack",
            l.ratios.delivery_p50_per_ack_p50,
            "",
            l.ratios.delivery_p99_per_ack_p99
        );
        if let Some(b) = &r.baselines {
            if let (Some(i), Some(x)) = (
                b.ideal_commit_at_rate,
                l.ratios.delivery_p99_per_ideal_commit_p99,
            ) {
                println!(
                    "  baseline: ideal raw group commit at this rate p50/p99 {}/{} us: delivery p99 {:.2}x",
                    i.p50_us, i.p99_us, x
                );
            }
            if let Some(e) = b.udp_echo_at_rate {
                match l.ratios.delivery_p99_per_udp_echo_p99 {
                    Some(x) => println!(
                        "  baseline: UDP echo at this rate p50/p99 {}/{} us: delivery p99 {:.2}x",
                        e.p50_us, e.p99_us, x
                    ),
                    None if l.ratios.udp_echo_fell_behind => println!(
                        "  baseline: UDP echo (one round trip at a time) fell behind at this rate \
                         (p50 {} us): no ratio",
                        e.p50_us
                    ),
                    None => {}
                }
            }
        }
        println!(
            "  pacer hand-over lag p50/p99/max: {}/{}/{} us; published {} errors {}{}",
            l.pacer_lag.p50_us,
            l.pacer_lag.p99_us,
            l.pacer_lag.max_us,
            l.published,
            l.errors,
            first_error(&l.first_error)
        );
        groups_table(&l.group_figures);
    }
    cpu_table(r);
    if let Some(q) = &r.repeats {
        repeats_table(q);
    }
    if let Some(b) = &r.baselines {
        println!(
            "\n  baselines: raw 4 KiB fdatasync {:.0}/s (p50 {} us, p99 {} us); 1 MiB write+fdatasync {:.0} MB/s; \
             plain UDP 128 B {:.0} dgrams/s",
            b.fdatasync_per_sec,
            b.fdatasync_p50_us,
            b.fdatasync_p99_us,
            b.disk_mb_per_sec,
            b.udp_128.datagrams_per_sec
        );
    }
    if r.errors > 0 || r.groups_short > 0 {
        println!(
            "\n  PROBLEMS: {} errors; {} group(s) did not receive every published message",
            r.errors, r.groups_short
        );
    }
}

fn first_error(e: &Option<String>) -> String {
    e.as_ref()
        .map_or(String::new(), |e| format!(" (first: {e})"))
}

fn latency_row(what: &str, l: &Latency) {
    println!(
        "  {:<24} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9.0}",
        what, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us
    );
}

fn phase_name(t: &ThroughputRun) -> String {
    match t.groups {
        0 => "ingest alone".into(),
        1 => "delivery, 1 group".into(),
        g => format!("delivery, {g} groups"),
    }
}

fn throughput_table(r: &ConsumeReport) {
    let runs: Vec<&ThroughputRun> = r.ingest_alone.iter().chain(&r.delivery).collect();
    if runs.is_empty() {
        return;
    }
    if !r.delivery.is_empty() {
        println!(
            "\n  closed loop, {} msgs per call, {} calls in flight per producer; with groups, {}",
            r.config.batch,
            r.config.in_flight,
            match r.config.max_ahead {
                0 => "producers run free (the groups fall behind as they may)".to_string(),
                n => format!("no new call while the slowest group is more than {n} msgs behind"),
            }
        );
    }
    println!(
        "\n  {:<20} {:>12} {:>13} {:>13} {:>11} {:>11} {:>14} {:>9}",
        "closed loop",
        "published/s",
        "delivered/s",
        "delivered/s",
        "per group",
        "published",
        "drain/s",
        "ack p99"
    );
    println!(
        "  {:<20} {:>12} {:>13} {:>13} {:>11} {:>11} {:>14} {:>9}",
        "", "", "per group", "all groups", "÷ ingest", "÷ ingest", "per group", "(us)"
    );
    println!("  {}", "-".repeat(111));
    for t in &runs {
        let q = t.ratios;
        let dash = || "-".to_string();
        let drain = t
            .drain
            .filter(|d| d.groups_counted > 0)
            .map_or_else(dash, |d| format!("{:.0}", d.delivered_per_sec_per_group));
        println!(
            "  {:<20} {:>12.0} {:>13} {:>13} {:>11} {:>11} {:>14} {:>9}",
            phase_name(t),
            t.published_per_sec,
            if t.groups == 0 {
                dash()
            } else {
                format!("{:.0}", t.delivered_per_sec_per_group)
            },
            if t.groups == 0 {
                dash()
            } else {
                format!("{:.0}", t.delivered_per_sec_total)
            },
            q.map_or_else(dash, |q| format!(
                "{:.3}x",
                q.delivered_per_group_per_ingest
            )),
            q.map_or_else(
                || if t.groups == 0 {
                    "1.000x".into()
                } else {
                    dash()
                },
                |q| format!("{:.3}x", q.published_per_ingest)
            ),
            drain,
            t.ack_latency.p99_us
        );
    }
    target_lines(r);
    for t in &r.delivery {
        if let Some(d) = t.drain.filter(|d| d.groups_counted > 0) {
            let opt = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}"));
            println!(
                "  {}: after the window, groups at least {} msgs behind caught up at {:.0} msgs/s each{}; \
                 CPU per delivery: daemon {} us ({} cores), consumers {:.2} us ({:.2} cores)",
                phase_name(t),
                d.min_behind,
                d.delivered_per_sec_per_group,
                t.ratios
                    .and_then(|q| q.drain_per_ingest)
                    .map_or(String::new(), |x| format!(" ({x:.3}x ingest alone)")),
                opt(d.daemon_us_per_delivery),
                opt(d.daemon_cores),
                d.consumer_us_per_delivery.unwrap_or(0.0),
                d.consumer_cores
            );
        }
        if t.errors > 0 {
            println!(
                "  {}: {} errors{}",
                phase_name(t),
                t.errors,
                first_error(&t.first_error)
            );
        }
        groups_table(&t.group_figures);
    }
}

fn groups_table(groups: &[GroupFigures]) {
    if groups.is_empty() {
        return;
    }
    println!(
        "    {:<36} {:>11} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "group",
        "delivered/s",
        "behind@end",
        "caught up",
        "distinct",
        "deliveries",
        "daemon:ack",
        "redeliv."
    );
    for g in groups {
        let d = g.daemon.unwrap_or_default();
        println!(
            "    {:<36} {:>11.0} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10}",
            g.group,
            g.delivered_per_sec,
            g.behind_at_window_end,
            g.caught_up_after
                .map_or("no".to_string(), |s| format!("{s:.2} s")),
            g.distinct,
            g.deliveries,
            d.acked,
            d.redelivered
        );
    }
}

fn cpu_table(r: &ConsumeReport) {
    let mut rows: Vec<(String, &PhaseCpu, f64, Option<Machine>)> = Vec::new();
    for t in r.ingest_alone.iter().chain(&r.delivery) {
        rows.push((phase_name(t), &t.cpu, t.window_seconds, t.machine));
    }
    if let Some(l) = &r.latency {
        rows.push((
            format!("latency, {:.0}/s", l.rate),
            &l.cpu,
            l.window_seconds,
            l.machine,
        ));
    }
    if rows.is_empty() {
        return;
    }
    let opt = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}"));
    println!("\n  CPU over each window (us per message published, per delivery to a group):");
    println!(
        "  {:<20} {:>10} {:>10} {:>10} {:>10} | {:>8} {:>8} {:>8} {:>8}",
        "", "daemon", "daemon", "producers", "consumers", "daemon", "harness", "other", "iowait"
    );
    println!(
        "  {:<20} {:>10} {:>10} {:>10} {:>10} | {:>8} {:>8} {:>8} {:>8}",
        "", "/publish", "/delivery", "/publish", "/delivery", "cores", "cores", "cores", "cores"
    );
    println!("  {}", "-".repeat(104));
    for (name, c, w, m) in &rows {
        let w = w.max(1e-9);
        println!(
            "  {:<20} {:>10} {:>10} {:>10.2} {:>10} | {:>8} {:>8.2} {:>8} {:>8}",
            name,
            opt(c.daemon_us_per_message),
            opt(c.daemon_us_per_delivery),
            c.producer_us_per_message,
            opt(c.consumer_us_per_delivery),
            opt(c.daemon.map(|d| d.cores)),
            c.harness.cores,
            opt(m.map(|m| m.other_busy / w)),
            opt(m.map(|m| m.iowait / w)),
        );
    }
    let threads = |t: &BTreeMap<String, f64>, w: f64| {
        t.iter()
            .filter(|(_, s)| **s / w.max(1e-9) >= 0.01)
            .map(|(k, s)| format!("{k} {:.2}", s / w.max(1e-9)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("  cores by thread:");
    for (name, c, w, m) in &rows {
        println!("    {name}: daemon: {}", threads(&c.daemon_threads, *w));
        println!(
            "    {:width$}  harness: {}",
            "",
            threads(&c.harness_threads, *w),
            width = name.len()
        );
        if let Some(m) = m {
            if m.udp_rcvbuf_errors + m.udp_sndbuf_errors > 0 {
                println!(
                    "    {:width$}  kernel UDP drops: receive buffer full {}, send buffer full {}",
                    "",
                    m.udp_rcvbuf_errors,
                    m.udp_sndbuf_errors,
                    width = name.len()
                );
            }
            if m.other_busy > 0.25 * w {
                println!(
                    "    {:width$}  WARNING: other work used {:.2} cores: the figures are not reliable",
                    "",
                    m.other_busy / w.max(1e-9),
                    width = name.len()
                );
            }
        }
    }
}

fn repeats_table(r: &Repeats) {
    println!(
        "\n  over {} rounds (the tables above are of the first): median (min .. max)",
        r.rounds.len()
    );
    let q = &r.spread;
    let row = |what: &str, s: &Spread, unit: &str, decimals: usize| {
        println!(
            "  {what:<36} {:>12.decimals$} {unit:<8} ({:.decimals$} .. {:.decimals$})",
            s.median, s.min, s.max
        );
    };
    if let Some(s) = &q.ingest_published_per_sec {
        row("ingest alone, published", s, "msgs/s", 0);
    }
    if let Some(s) = &q.backlog_drain_per_sec {
        row("one group draining the backlog", s, "msgs/s", 0);
    }
    if let Some(s) = &q.backlog_drain_per_ingest {
        row("  ÷ ingest alone (the target)", s, "x", 3);
    }
    for d in &q.delivery {
        let name = format!("delivery, {} group(s), per group", d.groups);
        row(&name, &d.delivered_per_sec_per_group, "msgs/s", 0);
        if let Some(x) = &d.delivered_per_group_per_ingest {
            row("  ÷ ingest alone", x, "x", 3);
        }
    }
    if let Some(l) = &q.latency {
        row("publish -> delivery p50", &l.delivery_p50_us, "us", 0);
        row("publish -> delivery p99", &l.delivery_p99_us, "us", 0);
        row("durable ack p50", &l.ack_p50_us, "us", 0);
        row("durable ack p99", &l.ack_p99_us, "us", 0);
    }
}

/// The target, on the delivery capacity (one group draining a
/// backlog with the machine to itself, as ingest alone had it), and what
/// delivery reached while producers published on the same CPUs, next to
/// the most it could there.
fn target_lines(r: &ConsumeReport) {
    let opt = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}"));
    let Some(ingest) = &r.ingest_alone else {
        return;
    };
    if let Some(d) = ingest.backlog_drain {
        let x = d.delivered_per_sec_per_group / ingest.published_per_sec.max(1e-9);
        if d.groups_counted == 0 {
            println!(
                "\n  target: one group did not drain the ingest phase's {} msgs within the drain timeout (NOT met)",
                d.min_behind
            );
        } else {
            println!(
                "\n  target: delivery to one group >= {:.2} x durable ingest: one group drained the ingest phase's {} msgs \
                 at {:.0} msgs/s = {:.3}x ingest alone ({})",
                r.target_delivery_ratio,
                d.min_behind,
                d.delivered_per_sec_per_group,
                x,
                if x >= r.target_delivery_ratio { "met" } else { "NOT met" }
            );
        }
        println!(
            "    CPU per delivery: daemon {} us ({} cores), consumer {} us ({:.2} cores); ingest alone: daemon {} us, producers {:.2} us per message",
            opt(d.daemon_us_per_delivery),
            opt(d.daemon_cores),
            opt(d.consumer_us_per_delivery),
            d.consumer_cores,
            opt(ingest.cpu.daemon_us_per_message),
            ingest.cpu.producer_us_per_message
        );
    }
    let Some(one) = r.delivery.iter().find(|t| t.groups == 1) else {
        return;
    };
    let Some(q) = one.ratios else {
        return;
    };
    // Each message is ingested and delivered on the same CPUs: at most
    // ingest's cost ÷ (ingest's + delivery's) of ingest alone.
    let ingest_us = ingest
        .cpu
        .daemon_us_per_message
        .map(|d| d + ingest.cpu.producer_us_per_message);
    let delivery_us = ingest.backlog_drain.and_then(|d| {
        d.daemon_us_per_delivery
            .zip(d.consumer_us_per_delivery)
            .map(|(a, b)| a + b)
    });
    let bound = ingest_us
        .zip(delivery_us)
        .map_or(String::new(), |(i, d)| {
            format!(
                "; on CPUs shared by both paths at most {:.3}x (ingest {i:.2} us ÷ ingest + delivery {:.2} us per message)",
                i / (i + d),
                i + d
            )
        });
    println!(
        "  while producers publish on the same CPUs: delivered to one group {:.3}x ingest alone, published {:.3}x{bound}",
        q.delivered_per_group_per_ingest, q.published_per_ingest
    );
}
