//! The `forward` report: one row per way the run's messages reached
//! JetStream (and sluice's own ingest), the ratio the issue asks for, and
//! the PubAck latency of direct publishes.

use serde::Serialize;

use super::acked::{AckNames, Acked, Mode};
use super::direct::Published;
use super::sluice::Forwarded;
use super::ForwardConfig;
use crate::measure::{div, Head, Latency, Plots};

/// The target: forwarded msgs/s ≥ this × the NATS client alone.
pub const TARGET_RATIO: f64 = 0.8;

/// One way of getting the messages somewhere, timed.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: &'static str,
    /// Messages sent.
    pub messages: u64,
    /// What the destination holds at the end (JetStream: the stream's
    /// count; sluice: durable acks).
    pub stored: u64,
    pub seconds: f64,
    /// Messages stored ÷ seconds.
    pub msgs_per_sec: f64,
    /// Payload MB (10^6 bytes) stored ÷ seconds.
    pub mb_per_sec: f64,
    pub errors: u64,
    /// PubAcks marked duplicate.
    pub duplicates: u64,
    pub first_error: Option<String>,
}

impl Row {
    fn new(name: &'static str, messages: u64, stored: u64, seconds: f64, size: usize) -> Row {
        Row {
            name,
            messages,
            stored,
            seconds,
            msgs_per_sec: div(stored as f64, seconds),
            mb_per_sec: div(stored as f64 * size as f64 / 1e6, seconds),
            errors: 0,
            duplicates: 0,
            first_error: None,
        }
    }

    /// A publishing run of the NATS client into a stream that now holds
    /// `stored`.
    pub fn published(
        name: &'static str,
        messages: u64,
        p: &Published,
        stored: u64,
        size: usize,
    ) -> Row {
        Row {
            errors: p.errors,
            duplicates: p.duplicates,
            first_error: p.first_error.clone(),
            ..Row::new(name, messages, stored, p.seconds, size)
        }
    }

    /// Whether the destination holds exactly the messages sent, without
    /// errors.
    pub fn exact(&self) -> bool {
        self.errors == 0 && self.stored == self.messages
    }
}

/// The names of the run's streams.
#[derive(Debug, Clone, Serialize)]
pub struct Streams {
    /// sluice's stream, forwarded.
    pub sluice: String,
    /// The JetStream streams: the forward's target, and the NATS client's.
    pub forwarded: String,
    pub direct: String,
    pub fast: String,
    pub one_at_a_time: String,
    /// One direct publisher, `latency_window` in flight.
    pub window: String,
    /// The ack-latency phase's streams (sluice's, and JetStream's).
    pub acked: AckNames,
}

/// Producer → ack latency with a forward, next to a direct publisher's
/// PubAck latency, at one window.
#[derive(Debug, Clone, Serialize)]
pub struct AckLatency {
    /// Messages in flight (1: each ack awaited before the next send).
    pub window: usize,
    /// `ack = "replicated"`: send → ack once JetStream PubAcked it.
    pub replicated: Latency,
    /// `ack = "local"`: send → ack once on the local disk.
    pub local: Latency,
    /// The NATS client alone: publish → PubAck, same window.
    pub direct: Latency,
    /// replicated ÷ direct, at p50 and at p99.
    pub replicated_over_direct_p50: f64,
    pub replicated_over_direct_p99: f64,
    /// replicated ÷ local at p50: what waiting for JetStream costs.
    pub replicated_over_local_p50: f64,
    /// Producers' errors of the two runs, and the first.
    pub errors: u64,
    pub first_error: Option<String>,
}

/// What the ack-latency phase's JetStream streams held at the end.
#[derive(Debug, Clone, Serialize)]
pub struct AckStored {
    /// Messages sent to each stream.
    pub expected: u64,
    pub replicated: u64,
    pub local: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ForwardReport {
    #[serde(flatten)]
    pub head: Head,
    pub config: ForwardConfig,
    /// The cluster's client URLs, and whether this run started it.
    pub servers: Vec<String>,
    pub started_cluster: bool,
    pub streams: Streams,
    /// sluice → JetStream: first send until JetStream held them all.
    pub forwarded: Row,
    /// The same run's durable ingest into sluiced (first send to last ack).
    pub sluice_ingest: Row,
    /// The NATS client alone: async publishes, `window` outstanding per
    /// producer.
    pub direct: Row,
    /// The NATS client alone: fast-ingest batches.
    pub fast: Row,
    /// forwarded msgs/s ÷ the better baseline's, and which one it was.
    pub ratio: f64,
    pub best_baseline: &'static str,
    pub target_ratio: f64,
    /// Publish → PubAck of the direct publishes with the window full.
    pub direct_puback_latency: Latency,
    /// Publish → PubAck one at a time (no load): the floor a producer
    /// waiting on a replicated ack would pay.
    pub single_puback_latency: Latency,
    /// Producer → ack latency with `ack = "replicated"` and `"local"`,
    /// one at a time, then `latency_window` in flight.
    pub ack_latency: Vec<AckLatency>,
    pub ack_stored: AckStored,
    /// Rows that did not end with exactly their messages stored.
    pub short: Vec<&'static str>,
    pub plots: Plots,
}

/// Puts the rows together.
#[allow(clippy::too_many_arguments)]
pub fn build(
    streams: Streams,
    config: &ForwardConfig,
    head: Head,
    servers: Vec<String>,
    started_cluster: bool,
    fwd: &Forwarded,
    direct: (&Published, u64),
    fast: (&Published, u64),
    single: &Published,
    window: &Published,
    acked: &Acked,
) -> ForwardReport {
    let total = config.total();
    let size = config.size;
    let mut forwarded = Row::new(
        "sluice -> JetStream",
        fwd.acked,
        fwd.stored,
        fwd.forward_seconds,
        size,
    );
    // Producers' errors are the forwarded row's too: what failed into
    // sluice never reached JetStream.
    forwarded.errors = fwd.errors;
    forwarded.first_error = fwd.first_error.clone();
    if !fwd.complete {
        forwarded.first_error.get_or_insert_with(|| {
            format!(
                "JetStream held {} of {} messages at the timeout ({} s)",
                fwd.stored, fwd.acked, config.timeout
            )
        });
    }
    let mut sluice_ingest = Row::new(
        "sluice ingest (durable)",
        fwd.sent,
        fwd.acked,
        fwd.ingest_seconds,
        size,
    );
    sluice_ingest.errors = fwd.errors;
    let direct_row = Row::published(
        "NATS client, async publish",
        total,
        direct.0,
        direct.1,
        size,
    );
    let fast_row = Row::published("NATS client, fast ingest", total, fast.0, fast.1, size);
    // A baseline that failed is no yardstick.
    let best = [&direct_row, &fast_row]
        .into_iter()
        .filter(|r| r.exact())
        .max_by(|a, b| a.msgs_per_sec.total_cmp(&b.msgs_per_sec));
    let (ratio, best_baseline) = match best {
        Some(b) => (div(forwarded.msgs_per_sec, b.msgs_per_sec), b.name),
        None => (0.0, "none"),
    };
    let mut short = Vec::new();
    if forwarded.errors > 0 || forwarded.stored != total || !fwd.complete {
        short.push(forwarded.name);
    }
    for r in [&direct_row, &fast_row] {
        if !r.exact() {
            short.push(r.name);
        }
    }
    let ack_latency = ack_rows(acked, single, window);
    if ack_latency.iter().any(|a| a.errors > 0) {
        short.push("ack latency");
    }
    let ack_stored = AckStored {
        expected: acked.expected,
        replicated: acked.replicated_stored,
        local: acked.local_stored,
    };
    if ack_stored.replicated != acked.expected {
        short.push("ack = replicated, JetStream stream");
    }
    if ack_stored.local != acked.expected {
        short.push("ack = local, JetStream stream");
    }
    let mut latency = vec![
        crate::measure::PercentileCurve::of("direct PubAck, window full", &direct.0.latency),
        crate::measure::PercentileCurve::of("direct PubAck, one at a time", &single.latency),
    ];
    for r in &acked.runs {
        let name = format!("ack = {}, {} in flight", r.mode.name(), r.window);
        latency.push(crate::measure::PercentileCurve::of(&name, &r.latency));
    }
    let plots = Plots {
        latency,
        throughput: Vec::new(),
    };
    ForwardReport {
        head,
        config: config.clone(),
        servers,
        started_cluster,
        streams,
        forwarded,
        sluice_ingest,
        direct: direct_row,
        fast: fast_row,
        ratio,
        best_baseline,
        target_ratio: TARGET_RATIO,
        direct_puback_latency: Latency::of(&direct.0.latency),
        single_puback_latency: Latency::of(&single.latency),
        ack_latency,
        ack_stored,
        short,
        plots,
    }
}

/// One [`AckLatency`] per window of the phase: its replicated and local
/// runs next to the direct publisher of that window (one at a time:
/// `single`; else `window`).
fn ack_rows(acked: &Acked, single: &Published, window: &Published) -> Vec<AckLatency> {
    let mut windows: Vec<usize> = acked.runs.iter().map(|r| r.window).collect();
    windows.dedup();
    windows
        .into_iter()
        .map(|w| {
            let of = |mode: Mode| acked.runs.iter().find(|r| r.window == w && r.mode == mode);
            let (rep, loc) = (of(Mode::Replicated), of(Mode::Local));
            let lat = |r: Option<&super::acked::AckRun>| {
                r.map_or(Latency::default(), |r| Latency::of(&r.latency))
            };
            let (replicated, local) = (lat(rep), lat(loc));
            let direct = Latency::of(if w == 1 {
                &single.latency
            } else {
                &window.latency
            });
            let runs = rep.into_iter().chain(loc);
            let errors = runs
                .clone()
                .map(|r| r.errors.max(r.sent.saturating_sub(r.acked)))
                .sum();
            let first_error = runs.filter_map(|r| r.first_error.clone()).next();
            AckLatency {
                window: w,
                replicated_over_direct_p50: div(replicated.p50_us as f64, direct.p50_us as f64),
                replicated_over_direct_p99: div(replicated.p99_us as f64, direct.p99_us as f64),
                replicated_over_local_p50: div(replicated.p50_us as f64, local.p50_us as f64),
                replicated,
                local,
                direct,
                errors,
                first_error,
            }
        })
        .collect()
}
