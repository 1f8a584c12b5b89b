//! The `forward` report: one row per way the run's messages reached
//! JetStream (and sluice's own ingest), the ratio the issue asks for, and
//! the PubAck latency of direct publishes.

use serde::Serialize;

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
    let plots = Plots {
        latency: vec![
            crate::measure::PercentileCurve::of("direct PubAck, window full", &direct.0.latency),
            crate::measure::PercentileCurve::of("direct PubAck, one at a time", &single.latency),
        ],
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
        short,
        plots,
    }
}
