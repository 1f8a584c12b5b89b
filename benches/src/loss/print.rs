//! The report as a readable table.

use super::{LossConfig, LossReport, LossRow};

fn path_name(c: &LossConfig) -> &'static str {
    match c.path.as_str() {
        "udp" => "raw UDP (insecure_lan)",
        "quic" => "QUIC",
        _ => "the fast path (sealed UDP after QUIC auth)",
    }
}

fn how(c: &LossConfig) -> String {
    let length = match (c.seconds, c.count) {
        (Some(s), _) => format!("{s} s per row after {} s warm-up", c.warmup),
        (None, Some(n)) => format!("{n} msgs per producer per row"),
        (None, None) => String::new(),
    };
    let load = if c.rate > 0.0 {
        format!("open loop at {:.0} msgs/s, {} per call", c.rate, c.batch)
    } else {
        format!(
            "closed loop, {} calls of {} msgs in flight per producer",
            c.in_flight, c.batch
        )
    };
    format!("{load}, {length}")
}

fn impairment(c: &LossConfig) -> String {
    if c.mode == "netns" {
        return "nftables random drop on the producers' veth egress (two namespaces made for \
                the run)"
            .into();
    }
    format!(
        "impairment relay on loopback, {} (loss as listed, reorder {} % by {} ms, duplicate {} %, \
         delay {} ms + jitter {} ms; seed {})",
        if c.directions == "both" {
            "both directions"
        } else {
            "producers -> daemon only"
        },
        c.reorder,
        c.reorder_delay_ms,
        c.duplicate,
        c.delay_ms,
        c.jitter_ms,
        c.seed
    )
}

fn ratio(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}x"))
}

fn verdict(r: &LossRow) -> String {
    let mut v = if r.checks.ok { "ok" } else { "FAIL" }.to_owned();
    if !r.checks.all_acked {
        v.push_str(&format!(
            ": {} of {} not acked, {} errors",
            r.sent.saturating_sub(r.acked),
            r.sent,
            r.errors
        ));
    }
    match (r.checks.stored_once, r.stored) {
        (Some(false), Some(n)) => v.push_str(&format!(": {n} records stored, {} acked", r.acked)),
        (None, _) => v.push_str(" (stored count unknown)"),
        _ => {}
    }
    if let Some(e) = &r.first_error {
        v.push_str(&format!(" (first error: {e})"));
    }
    v
}

pub(super) fn table(r: &LossReport) {
    let c = &r.config;
    println!(
        "\nloss: {} producers x {} B over {}, fsync = {}, {}",
        c.producers,
        c.size,
        path_name(c),
        c.fsync,
        how(c)
    );
    println!("  impairment: {}", impairment(c));
    println!(
        "\n  {:>6} | {:>11} {:>7} | {:>8} {:>8} {:>8} {:>7} | {:>9} {:>8} {:>6} {:>6} | {:>7} {:>8} {:>7} | {:>9} {:>9} {:>9} |",
        "loss",
        "durable",
        "÷ 0 %",
        "ack p50",
        "p99",
        "p99.9",
        "p99",
        "impaired",
        "dropped",
        "dup",
        "reord",
        "daemon",
        "retrans",
        "dups",
        "sent",
        "acked",
        "stored",
    );
    println!(
        "  {:>6} | {:>11} {:>7} | {:>8} {:>8} {:>8} {:>7} | {:>9} {:>8} {:>6} {:>6} | {:>7} {:>8} {:>7} | {:>9} {:>9} {:>9} | checks",
        "%", "msgs/s", "", "us", "us", "us", "÷ 0 %", "dgrams", "", "", "", "NACKs", "recvd", "", "", "", "",
    );
    println!("  {}", "-".repeat(166));
    for row in &r.rows {
        let l = row.latency;
        let i = row.impaired.unwrap_or_default();
        let d = row.daemon.unwrap_or_default();
        println!(
            "  {:>6} | {:>11.0} {:>7} | {:>8} {:>8} {:>8} {:>7} | {:>9} {:>8} {:>6} {:>6} | {:>7} {:>8} {:>7} | {:>9} {:>9} {:>9} | {}",
            row.loss_percent,
            row.acked_per_sec,
            ratio(row.acked_per_sec_per_baseline),
            l.p50_us,
            l.p99_us,
            l.p999_us,
            ratio(row.p99_per_baseline),
            i.datagrams,
            i.dropped,
            i.duplicated,
            i.reordered,
            d.nacks_sent,
            d.retransmits_received,
            d.duplicates,
            row.sent,
            row.acked,
            row.stored.map_or("?".into(), |n| n.to_string()),
            verdict(row)
        );
    }
    println!(
        "\n  durable msgs/s over each row's window; ack latency from the {};",
        r.latency_from
    );
    println!(
        "  impaired dgrams: {}; daemon: NACKs sent, retransmits received, duplicates (re-acked, not stored again);",
        if c.mode == "netns" {
            "the producers' datagrams to the daemon's port, and those nftables dropped"
        } else {
            "every datagram the relay took (both ways), and what it dropped, duplicated, reordered"
        }
    );
    println!("  stored: records in the row's own stream (GET /streams), must equal acked.");
    for row in &r.rows {
        if let Some(n) = row.kernel_udp_drops.filter(|n| *n > 0) {
            println!(
                "  note: {} % row: the kernel dropped {n} datagrams for full UDP receive buffers \
                 (loss on top of the impairment: {} fell behind)",
                row.loss_percent,
                if c.mode == "netns" {
                    "the daemon or the producers"
                } else {
                    "the relay, the daemon or the producers"
                }
            );
        }
    }
    for row in &r.rows {
        if let Some(p) = row.pacer_lag {
            if p.p99_us > 1000 {
                println!(
                    "  note: {} % row: the pacing thread handed messages over late (p99 {} us; the \
                     machine was busy): latency counts from the due time, so the delay is in the \
                     figures",
                    row.loss_percent, p.p99_us
                );
            }
        }
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
}
