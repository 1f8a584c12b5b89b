//! What `sluiced` counts, and its rendering for Prometheus (`/metrics`).
//!
//! Counters are atomics written where things happen (ingest, the spool's
//! writer, the planes) and read only when scraped. Each subsystem says
//! what it exports by implementing [`Collect`]; the daemon registers them
//! in a [`Registry`] at start, and `/metrics` renders the registry. So this
//! module knows none of them: it sits below all.

pub mod exposition;
pub mod number;
pub mod process;
pub mod scrape;
mod xdp;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use sluice_transport::proto::DropReason;
use sluice_transport::serve::ServeStats;

use crate::histogram::Latency;
use exposition::{Exposition, Kind};

/// Per-stream ingest counters.
#[derive(Debug, Default)]
pub struct StreamMetrics {
    pub messages_in: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Records stored and acked durable.
    pub stored: AtomicU64,
    /// Messages acked durable again without being stored again (a
    /// producer resent what the spool already had).
    pub duplicates: AtomicU64,
    pub append_errors: AtomicU64,
    pub nacks_sent: AtomicU64,
    /// Retransmitted entries that filled a NACKed gap: loss repaired.
    pub repairs_received: AtomicU64,
    /// Entries for messages already here: retransmissions that crossed an
    /// ack, or copies made by the network.
    pub copies_received: AtomicU64,
    /// Entries refused because they were beyond the credit granted.
    pub over_credit: AtomicU64,
    /// Credit granted, summed over the stream's sessions (gauge).
    pub credit: AtomicU64,
    /// Open sessions (gauge).
    pub sessions: AtomicU64,
    /// Publish requests over HTTP.
    pub http_requests: AtomicU64,
    /// Publish requests over gRPC: `Publish` calls and `PublishStream`
    /// batches.
    pub grpc_requests: AtomicU64,
    /// Requests answered from the idempotence table's keys (retries).
    pub key_repeats: AtomicU64,
    /// Requests refused: their key was used with another body.
    pub key_conflicts: AtomicU64,
    /// From a batch's receipt to its durable ack being sent, in µs: a
    /// fast-path session's messages completed to its STATUS queued, an
    /// HTTP or gRPC request read to its answer.
    pub publish_ack: Latency,
    /// Fast path: from a batch's durable mark (its group commit answered)
    /// to the STATUS that carries it handed to the socket, in µs.
    pub status_sent: Latency,
    /// Fast path, per gap NACKed and filled: from the gap first seen (a
    /// message above it arrived) to its retransmission's arrival, and to
    /// the durable ack that covers it, in µs.
    pub repair: Latency,
    pub repair_to_durable: Latency,
}

#[derive(Debug, Default)]
pub struct Metrics {
    streams: Mutex<BTreeMap<String, Arc<StreamMetrics>>>,
    pub sessions_rejected: AtomicU64,
    /// Datagrams dropped by the endpoint, by reason (in `DropReason::ALL` order).
    pub drops: [AtomicU64; DropReason::ALL.len()],
}

/// A counter of [`StreamMetrics`] and how it is exposed.
type StreamField = (
    &'static str,
    Kind,
    &'static str,
    fn(&StreamMetrics) -> &AtomicU64,
);

const STREAM_FIELDS: &[StreamField] = &[
    (
        "sluice_messages_in_total",
        Kind::Counter,
        "Messages received from producers.",
        |m| &m.messages_in,
    ),
    (
        "sluice_bytes_in_total",
        Kind::Counter,
        "Payload bytes received from producers.",
        |m| &m.bytes_in,
    ),
    (
        "sluice_durable_acks_total",
        Kind::Counter,
        "Messages stored and acked durable.",
        |m| &m.stored,
    ),
    (
        "sluice_duplicates_total",
        Kind::Counter,
        "Messages resent by producers, acked again but not stored again.",
        |m| &m.duplicates,
    ),
    (
        "sluice_append_errors_total",
        Kind::Counter,
        "Spool appends that failed (not acked; producers resend).",
        |m| &m.append_errors,
    ),
    (
        "sluice_nacks_sent_total",
        Kind::Counter,
        "NACK packets sent to producers.",
        |m| &m.nacks_sent,
    ),
    (
        "sluice_over_credit_total",
        Kind::Counter,
        "Entries refused for being beyond the credit granted.",
        |m| &m.over_credit,
    ),
    (
        "sluice_credit",
        Kind::Gauge,
        "Credit granted, in messages, summed over the stream's sessions.",
        |m| &m.credit,
    ),
    (
        "sluice_sessions",
        Kind::Gauge,
        "Open producer sessions.",
        |m| &m.sessions,
    ),
    (
        "sluice_http_publish_requests_total",
        Kind::Counter,
        "Publish requests received over HTTP.",
        |m| &m.http_requests,
    ),
    (
        "sluice_grpc_publish_requests_total",
        Kind::Counter,
        "Publish requests received over gRPC: Publish calls and PublishStream batches.",
        |m| &m.grpc_requests,
    ),
    (
        "sluice_idempotency_key_repeats_total",
        Kind::Counter,
        "Publish requests whose Idempotency-Key was known: answered with the original offsets, nothing stored.",
        |m| &m.key_repeats,
    ),
    (
        "sluice_idempotency_key_conflicts_total",
        Kind::Counter,
        "Publish requests refused (422): their Idempotency-Key was used with another body.",
        |m| &m.key_conflicts,
    ),
];

impl Metrics {
    pub fn stream(&self, name: &str) -> Arc<StreamMetrics> {
        self.streams
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_default()
            .clone()
    }
}

/// A subsystem's families in `/metrics`.
pub trait Collect: Send + Sync {
    /// Adds this subsystem's families (help, type and samples) to `e`.
    fn collect(&self, e: &mut Exposition);
}

/// What `/metrics` shows: every subsystem registered, in order.
#[derive(Default)]
pub struct Registry {
    sources: Vec<Arc<dyn Collect>>,
}

impl Registry {
    pub fn register(&mut self, source: Arc<dyn Collect>) {
        self.sources.push(source);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut e = Exposition::default();
        for s in &self.sources {
            s.collect(&mut e);
        }
        e.finish()
    }
}

impl Collect for Metrics {
    /// The ingest counters: per stream, the endpoint's drops, refusals.
    fn collect(&self, e: &mut Exposition) {
        let streams: Vec<(String, Arc<StreamMetrics>)> = self
            .streams
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, kind, help, field) in STREAM_FIELDS {
            e.family(name, *kind, help);
            for (stream, m) in &streams {
                e.sample(name, &[("stream", stream)], field(m).load(Relaxed));
            }
        }

        let name = "sluice_publish_ack_seconds";
        e.family(
            name,
            Kind::Histogram,
            "From a batch's receipt by the daemon (a fast-path session's messages complete, an HTTP or gRPC request read) to its durable ack being sent: spool queue, group commit, replication when ack = replicated.",
        );
        for (stream, m) in &streams {
            e.histogram(name, &[("stream", stream)], &m.publish_ack.snapshot());
        }
        let name = "sluice_fastpath_status_seconds";
        e.family(
            name,
            Kind::Histogram,
            "Fast path: from a batch's durable mark (its group commit answered) to the STATUS that acks it handed to the socket: the endpoint task's wake-up.",
        );
        for (stream, m) in &streams {
            e.histogram(name, &[("stream", stream)], &m.status_sent.snapshot());
        }
        for (name, help, read) in [
            (
                "sluice_repair_seconds",
                "Fast path, per gap NACKed and filled: from the gap first seen (a message above it arrived) to its retransmission's arrival.",
                (|m| &m.repair) as fn(&StreamMetrics) -> &Latency,
            ),
            (
                "sluice_repair_to_durable_seconds",
                "Fast path, per gap NACKed and filled: from the gap first seen to the durable ack that covers it (what a loss costs the producer in time).",
                |m| &m.repair_to_durable,
            ),
        ] {
            e.family(name, Kind::Histogram, help);
            for (stream, m) in &streams {
                e.histogram(name, &[("stream", stream)], &read(m).snapshot());
            }
        }

        // Retransmissions by what they did: repaired a gap, or were a copy.
        let name = "sluice_retransmits_received_total";
        e.family(name, Kind::Counter, "Retransmitted entries received: repairs of NACKed gaps, and copies of what was already here.");
        for (stream, m) in &streams {
            for (kind, c) in [
                ("repair", &m.repairs_received),
                ("copy", &m.copies_received),
            ] {
                e.sample(name, &[("stream", stream), ("kind", kind)], c.load(Relaxed));
            }
        }

        e.family(
            "sluice_datagrams_dropped_total",
            Kind::Counter,
            "Datagrams dropped before reaching a session, by reason.",
        );
        for (reason, n) in DropReason::ALL.iter().zip(&self.drops) {
            e.sample(
                "sluice_datagrams_dropped_total",
                &[("reason", reason.as_str())],
                n.load(Relaxed),
            );
        }
        e.family(
            "sluice_sessions_rejected_total",
            Kind::Counter,
            "Session requests (HELLOs) refused.",
        )
        .sample(
            "sluice_sessions_rejected_total",
            &[],
            self.sessions_rejected.load(Relaxed),
        );
    }
}

/// The data socket's datagrams, in and out.
impl Collect for ServeStats {
    fn collect(&self, e: &mut Exposition) {
        e.family(
            "sluice_datagrams_in_total",
            Kind::Counter,
            "Datagrams received on the data port.",
        )
        .sample(
            "sluice_datagrams_in_total",
            &[],
            self.datagrams_in.load(Relaxed),
        );
        e.family(
            "sluice_datagrams_out_total",
            Kind::Counter,
            "Datagrams sent from the data port.",
        )
        .sample(
            "sluice_datagrams_out_total",
            &[],
            self.datagrams_out.load(Relaxed),
        );
    }
}
