//! The report as a readable table.

use super::{Impaired, LossConfig, LossReport, LossRow, LossRun};
use crate::measure::{DaemonCounters, Spread, StageTime, Stages};

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

/// The median of a ratio's spread.
fn ratio(v: Option<Spread>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}x", v.median))
}

/// What went wrong in a repetition, if anything.
fn run_fault(r: &LossRun) -> Option<String> {
    let mut v = Vec::new();
    if !r.checks.all_acked {
        v.push(format!(
            "{} of {} not acked, {} errors",
            r.sent.saturating_sub(r.acked),
            r.sent,
            r.errors
        ));
    }
    if let (Some(false), Some(n)) = (r.checks.stored_once, r.stored) {
        v.push(format!("{n} records stored, {} acked", r.acked));
    }
    if let Some(e) = &r.first_error {
        v.push(format!("first error: {e}"));
    }
    (!v.is_empty()).then(|| format!("run {}: {}", r.run, v.join(", ")))
}

fn verdict(r: &LossRow) -> String {
    let mut v = if r.checks.ok { "ok" } else { "FAIL" }.to_owned();
    let faults: Vec<String> = r.runs.iter().filter_map(run_fault).collect();
    if !faults.is_empty() {
        v.push_str(&format!(" ({})", faults.join("; ")));
    }
    if r.checks.stored_once.is_none() {
        v.push_str(" (stored count unknown)");
    }
    v
}

/// The sum of a counter over a row's repetitions.
fn total(r: &LossRow, f: impl Fn(&LossRun) -> u64) -> u64 {
    r.runs.iter().map(f).sum()
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
    let repeated = c.repeat > 1;
    if repeated {
        println!(
            "  {} repetitions per row: median [min–max] of the repetitions",
            c.repeat
        );
    }
    println!(
        "\n  {:>6} | {:>23} {:>6} | {:>7} {:>23} {:>7} {:>6} | {:>14} |",
        "loss", "durable", "÷ 0 %", "ack p50", "p99", "p99.9", "p99", "CPU us/msg",
    );
    println!(
        "  {:>6} | {:>23} {:>6} | {:>7} {:>23} {:>7} {:>6} | {:>6} {:>7} | checks",
        "%", "msgs/s", "", "us", "us", "us", "÷ 0 %", "daemon", "prod",
    );
    println!("  {}", "-".repeat(114));
    for row in &r.rows {
        let s = &row.summary;
        println!(
            "  {:>6} | {:>23} {:>6} | {:>7.0} {:>23} {:>7.0} {:>6} | {:>6} {:>7.1} | {}",
            row.loss_percent,
            s.acked_per_sec.show(0),
            ratio(s.acked_per_sec_per_baseline),
            s.p50_us.median,
            s.p99_us.show(0),
            s.p999_us.median,
            ratio(s.p99_per_baseline),
            s.daemon_cpu_us_per_msg
                .map_or("-".into(), |d| format!("{:.1}", d.median)),
            s.producers_cpu_us_per_msg.median,
            verdict(row)
        );
    }
    println!(
        "\n  {:>6} | {:>9} {:>8} {:>6} {:>6} | {:>7} {:>8} {:>7} | {:>10} {:>10} {:>10}",
        "loss",
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
        "  {:>6} | {:>9} {:>8} {:>6} {:>6} | {:>7} {:>8} {:>7} | {:>10} {:>10} {:>10}",
        "%", "dgrams", "", "", "", "NACKs", "recvd", "", "", "", "",
    );
    println!("  {}", "-".repeat(98));
    for row in &r.rows {
        let imp = |f: fn(&Impaired) -> u64| total(row, |x| x.impaired.as_ref().map_or(0, f));
        let dmn = |f: fn(&DaemonCounters) -> u64| total(row, |x| x.daemon.as_ref().map_or(0, f));
        let stored: Option<u64> = row.runs.iter().map(|x| x.stored).sum();
        println!(
            "  {:>6} | {:>9} {:>8} {:>6} {:>6} | {:>7} {:>8} {:>7} | {:>10} {:>10} {:>10}",
            row.loss_percent,
            imp(|i| i.datagrams),
            imp(|i| i.dropped),
            imp(|i| i.duplicated),
            imp(|i| i.reordered),
            dmn(|d| d.nacks_sent),
            dmn(|d| d.retransmits_received),
            dmn(|d| d.duplicates),
            total(row, |x| x.sent),
            total(row, |x| x.acked),
            stored.map_or("?".into(), |n| n.to_string()),
        );
    }
    print_repairs(r);
    println!(
        "\n  durable msgs/s over each window; ack latency from the {}; ÷ 0 %: to the 0 % row's \
         median;",
        r.latency_from
    );
    println!(
        "  CPU us/msg: CPU time over the window per acked message, of the daemon's process and \
         of the producers' threads (the JSON has cores too);"
    );
    println!(
        "  impaired dgrams: {}; daemon: NACKs sent, retransmits received, duplicates (re-acked, \
         not stored again);",
        if c.mode == "netns" {
            "the producers' datagrams to the daemon's port, and those nftables dropped"
        } else {
            "every datagram the relay took (both ways), and what it dropped, duplicated, reordered"
        }
    );
    println!(
        "  stored: records in each repetition's own stream (GET /streams), must equal acked{}.",
        if repeated {
            "; counts are sums over the repetitions"
        } else {
            ""
        }
    );
    let which = |row: &LossRow, run: &LossRun| {
        if repeated {
            format!("{} % row, run {}", row.loss_percent, run.run)
        } else {
            format!("{} % row", row.loss_percent)
        }
    };
    for row in &r.rows {
        for run in &row.runs {
            if let Some(n) = run.kernel_udp_drops.filter(|n| *n > 0) {
                println!(
                    "  note: {}: the kernel dropped {n} datagrams for full UDP receive buffers \
                     (loss on top of the impairment: {} fell behind)",
                    which(row, run),
                    if c.mode == "netns" {
                        "the daemon or the producers"
                    } else {
                        "the relay, the daemon or the producers"
                    }
                );
            }
            if let Some(p) = run.pacer_lag.filter(|p| p.p99_us > 1000) {
                println!(
                    "  note: {}: the pacing thread handed messages over late (p99 {} us; the \
                     machine was busy): latency counts from the due time, so the delay is in the \
                     figures",
                    which(row, run),
                    p.p99_us
                );
            }
        }
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
}

/// What each loss cost in time, from the daemon's histograms (fast path
/// only; summed over a row's repetitions: means weighted, p50/p99 the
/// largest bucket bound).
fn print_repairs(r: &LossReport) {
    let stages: Vec<Vec<Stages>> = r
        .rows
        .iter()
        .map(|row| {
            row.runs
                .iter()
                .filter_map(|x| x.daemon.as_ref().map(|d| d.stages))
                .collect()
        })
        .collect();
    let stalled = |row: &LossRow| {
        let n: u64 = row.runs.iter().map(|x| x.credit_stalls.stalls).sum();
        let ms: f64 = row.runs.iter().map(|x| x.credit_stalls.stalled_ms).sum();
        (n, ms / n.max(1) as f64)
    };
    let any_stall = r.rows.iter().any(|row| stalled(row).0 > 0);
    if !any_stall && stages.iter().flatten().all(|s| s.repair.count == 0) {
        return;
    }
    println!(
        "\n  {:>6} | {:>8} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>8} {:>8}",
        "loss", "repairs", "gap seen", "->", "gap seen", "->", "", "credit", "stalled"
    );
    println!(
        "  {:>6} | {:>8} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>8} {:>8}",
        "%", "", "-> retx", "p99 <=", "-> acked", "p99 <=", "ack p99", "stalls", "mean"
    );
    println!("  {}", "-".repeat(92));
    for (row, s) in r.rows.iter().zip(&stages) {
        let repair = StageTime::combine(s.iter().map(|s| &s.repair));
        let durable = StageTime::combine(s.iter().map(|s| &s.repair_to_durable));
        let acked = StageTime::combine(s.iter().map(|s| &s.received_to_acked));
        let (stalls, share) = stalled(row);
        println!(
            "  {:>6} | {:>8} {:>7.0}us {:>7.0}us | {:>7.0}us {:>7.0}us {:>7.0}us | {:>8} {:>6.1}ms",
            row.loss_percent,
            repair.count,
            repair.mean_us,
            repair.p99_us,
            durable.mean_us,
            durable.p99_us,
            acked.p99_us,
            stalls,
            share,
        );
    }
    println!(
        "  repairs: gaps the daemon NACKed and got filled; gap seen -> retx: from the first message \
         above a gap to its retransmission's arrival (mean, p99 bucket); -> acked: to the durable \
         ack that covers it; ack p99: the daemon's receipt -> ack of every batch, for scale;\n  \
         credit stalls: times a producer had messages it could not send for lack of credit (over \
         each repetition; a closed loop fills the credit at 0 % too), and how long one lasted."
    );
}
