//! The `forward` report as a table.

use super::report::{ForwardReport, Row};
use crate::measure::Latency;

pub fn print(r: &ForwardReport) {
    let c = &r.config;
    println!(
        "\nforward: {} messages x {} B from {} producers, fsync = {}; JetStream {} ({} replica(s), {} storage)",
        c.total(),
        c.size,
        c.producers,
        c.fsync,
        if r.started_cluster {
            format!("cluster of {} node(s) started by this run", c.nodes)
        } else {
            format!("at {}", r.servers.join(","))
        },
        c.replicas,
        c.storage.name(),
    );
    println!("machine: {}", r.head.host);
    println!(
        "  sluice producers: fast path, {} msgs per call, {} calls in flight; NATS client: one connection, \
         one task per producer, {} PubAcks outstanding per task (async), one fast-ingest batch per task",
        c.batch, c.in_flight, c.window
    );
    println!();
    println!(
        "  {:<30} {:>10} {:>10} {:>9} {:>12} {:>9} {:>7}",
        "", "messages", "stored", "seconds", "msgs/s", "MB/s", "errors"
    );
    println!("  {}", "-".repeat(93));
    for row in [&r.forwarded, &r.sluice_ingest, &r.direct, &r.fast] {
        print_row(row);
    }
    println!();
    println!(
        "  forwarded ÷ best NATS client alone ({}): {:.3}x (target >= {:.2}x: {})",
        r.best_baseline,
        r.ratio,
        r.target_ratio,
        if r.ratio >= r.target_ratio {
            "met"
        } else {
            "not met"
        }
    );
    println!(
        "  forwarded ÷ sluice ingest: {:.3}x",
        crate::measure::div(r.forwarded.msgs_per_sec, r.sluice_ingest.msgs_per_sec)
    );
    println!();
    println!(
        "  {:<33} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "PubAck latency (us)", "p50", "p90", "p99", "p99.9", "max", "count"
    );
    println!("  {}", "-".repeat(88));
    latency_row("direct, window full", &r.direct_puback_latency);
    latency_row("direct, one at a time", &r.single_puback_latency);
    println!();
    println!(
        "  {:<33} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "producer -> ack latency (us)", "p50", "p90", "p99", "p99.9", "max", "count"
    );
    println!("  {}", "-".repeat(88));
    for a in &r.ack_latency {
        let w = if a.window == 1 {
            "one at a time".to_owned()
        } else {
            format!("{} in flight", a.window)
        };
        latency_row(&format!("ack = replicated, {w}"), &a.replicated);
        latency_row(&format!("ack = local, {w}"), &a.local);
        latency_row(&format!("direct PubAck, {w}"), &a.direct);
        println!(
            "    replicated ÷ direct: p50 {:.2}x, p99 {:.2}x; replicated ÷ local p50 {:.2}x",
            a.replicated_over_direct_p50, a.replicated_over_direct_p99, a.replicated_over_local_p50
        );
        if let Some(e) = &a.first_error {
            println!("    {} error(s): {e}", a.errors);
        }
    }
    let s = &r.ack_stored;
    println!(
        "  their JetStream streams hold: replicated {}, local {} of {} each",
        s.replicated, s.local, s.expected
    );
    for row in [&r.forwarded, &r.sluice_ingest, &r.direct, &r.fast] {
        if let Some(e) = &row.first_error {
            println!("  {}: {e}", row.name);
        }
    }
    if !r.short.is_empty() {
        println!("  NOT EXACT: {}", r.short.join(", "));
    }
}

fn print_row(r: &Row) {
    println!(
        "  {:<30} {:>10} {:>10} {:>9.3} {:>12.0} {:>9.2} {:>7}",
        r.name, r.messages, r.stored, r.seconds, r.msgs_per_sec, r.mb_per_sec, r.errors
    );
}

fn latency_row(name: &str, l: &Latency) {
    println!(
        "  {:<33} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
        name, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.count
    );
}
