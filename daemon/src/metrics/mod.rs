//! What `sluiced` counts, and its rendering for Prometheus (`/metrics`).
//!
//! Counters are atomics written where things happen (ingest, the spool's
//! writer) and read only when scraped.

pub mod exposition;
mod groups;
pub mod histogram;
pub mod scrape;
mod xdp;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use sluice_transport::lease::SealedDrop;
use sluice_transport::proto::DropReason;

use crate::admin::AdminState;
use crate::gate::Denied;
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

    /// The exposition text: these counters, the data socket's and the
    /// spool's.
    pub fn render(&self, state: &AdminState) -> String {
        let (socket, spool) = (&state.socket, &state.spool);
        let mut e = Exposition::default();
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

        let mut spooled = spool.open_streams();
        spooled.sort_by(|a, b| a.name().cmp(b.name()));
        e.family(
            "sluice_spool_fsync_seconds",
            Kind::Histogram,
            "Duration of each group commit: write and fdatasync.",
        );
        for s in &spooled {
            e.histogram(
                "sluice_spool_fsync_seconds",
                &[("stream", s.name())],
                &s.sync_latency(),
            );
        }
        e.family(
            "sluice_spool_batch_records",
            Kind::Histogram,
            "Records per group commit.",
        );
        for s in &spooled {
            e.histogram(
                "sluice_spool_batch_records",
                &[("stream", s.name())],
                &s.batch_sizes(),
            );
        }
        e.family(
            "sluice_spool_backlog_bytes",
            Kind::Gauge,
            "Bytes waiting for the spool writer.",
        );
        for s in &spooled {
            e.sample(
                "sluice_spool_backlog_bytes",
                &[("stream", s.name())],
                s.health().backlog_bytes,
            );
        }
        e.family(
            "sluice_spool_disk_full",
            Kind::Gauge,
            "1 while appends are held for lack of disk space.",
        );
        for s in &spooled {
            e.sample(
                "sluice_spool_disk_full",
                &[("stream", s.name())],
                u8::from(s.health().disk_full),
            );
        }
        e.family(
            "sluice_spool_durable_offset",
            Kind::Gauge,
            "Offset after the last durable record.",
        );
        for s in &spooled {
            e.sample(
                "sluice_spool_durable_offset",
                &[("stream", s.name())],
                s.durable_end(),
            );
        }

        render_integrity(&mut e, &spooled);

        e.family(
            "sluice_datagrams_in_total",
            Kind::Counter,
            "Datagrams received on the data port.",
        )
        .sample(
            "sluice_datagrams_in_total",
            &[],
            socket.datagrams_in.load(Relaxed),
        );
        e.family(
            "sluice_datagrams_out_total",
            Kind::Counter,
            "Datagrams sent from the data port.",
        )
        .sample(
            "sluice_datagrams_out_total",
            &[],
            socket.datagrams_out.load(Relaxed),
        );
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
        render_security(&mut e, state);
        crate::http_serve::render(&mut e, &state.http);
        groups::render(&mut e, &state.consumers.stats());
        if let Some(x) = &state.xdp {
            xdp::render(&mut e, x);
        }
        e.finish()
    }
}

/// What the spool found wrong and did about it, and the scrub's progress.
fn render_integrity(e: &mut Exposition, spooled: &[crate::spool::Stream]) {
    use crate::spool::recoveries::Kind as R;
    let name = "sluice_spool_damage";
    e.family(
        name,
        Kind::Gauge,
        "Damage found in the stream's files while running (readers, consumer groups, the scrub); 0 when none. Restart with --repair to set it aside.",
    );
    for s in spooled {
        e.sample(name, &[("stream", s.name())], s.damage().len());
    }
    let name = "sluice_spool_lost_offsets";
    e.family(
        name,
        Kind::Gauge,
        "Offsets the stream gave up: repairs of damage, and records acked before fdatasync that a power cut took.",
    );
    for s in spooled {
        e.sample(name, &[("stream", s.name())], s.lost_offsets());
    }
    let name = "sluice_spool_recoveries_total";
    e.family(
        name,
        Kind::Counter,
        "What recovery did, by kind: torn tails cut at starts (bytes set aside), repairs, losses to early acks, repairs of consumer groups.",
    );
    for s in spooled {
        let all = s.recoveries();
        for (kind, k) in [
            ("torn-tail", R::TornTail),
            ("repair", R::Repair),
            ("early-acks", R::EarlyAcks),
            ("group-repair", R::GroupRepair),
        ] {
            let n = all.iter().filter(|r| r.kind == k).count();
            e.sample(name, &[("stream", s.name()), ("kind", kind)], n);
        }
    }
    for (name, help, get) in [
        (
            "sluice_spool_scrub_bytes_total",
            "Bytes of sealed segments the background scrub checked.",
            (|x| x.bytes) as fn(&crate::spool::writer::ScrubStats) -> u64,
        ),
        (
            "sluice_spool_scrub_segments_total",
            "Sealed segments the background scrub checked.",
            |x| x.segments,
        ),
        (
            "sluice_spool_scrub_passes_total",
            "Scrub passes over the stream's sealed segments.",
            |x| x.passes,
        ),
    ] {
        e.family(name, Kind::Counter, help);
        for s in spooled {
            e.sample(name, &[("stream", s.name())], get(&s.scrub_stats()));
        }
    }
    let name = "sluice_spool_scrub_last_pass_timestamp_seconds";
    e.family(
        name,
        Kind::Gauge,
        "When the last scrub pass over the stream ended (Unix time; 0: none yet).",
    );
    for s in spooled {
        e.sample(
            name,
            &[("stream", s.name())],
            s.scrub_stats().last_pass_us / 1_000_000,
        );
    }
}

/// The QUIC plane, authentication and the sealed fast path.
fn render_security(e: &mut Exposition, s: &AdminState) {
    let name = "sluice_auth_denied_total";
    e.family(
        name,
        Kind::Counter,
        "Connections or requests turned away, by reason.",
    );
    for (d, n) in Denied::ALL.iter().zip(&s.gate.denied) {
        e.sample(name, &[("reason", d.as_str())], n.load(Relaxed));
    }
    let q = &s.quic;
    for (name, kind, help, v) in [
        (
            "sluice_quic_connections",
            Kind::Gauge,
            "Open QUIC connections.",
            &q.connections,
        ),
        (
            "sluice_quic_connections_total",
            Kind::Counter,
            "QUIC connections established.",
            &q.connections_total,
        ),
        (
            "sluice_quic_handshake_failures_total",
            Kind::Counter,
            "QUIC handshakes that failed (certificates, ALPN).",
            &q.handshake_failures,
        ),
        (
            "sluice_leases_granted_total",
            Kind::Counter,
            "Raw-UDP leases granted.",
            &q.leases_granted,
        ),
    ] {
        e.family(name, kind, help)
            .sample(name, &[], v.load(Relaxed));
    }
    if let (Some(leases), Some(sealed)) = (&s.leases, &s.sealed) {
        e.family("sluice_leases", Kind::Gauge, "Raw-UDP leases held.")
            .sample("sluice_leases", &[], leases.len());
        let name = "sluice_fastpath_dropped_total";
        e.family(name, Kind::Counter, "Raw-UDP datagrams dropped before parsing: unsealed, forged, replayed, for unknown or expired leases.");
        for reason in SealedDrop::all() {
            e.sample(name, &[("reason", reason.as_str())], sealed.dropped(reason));
        }
        let name = "sluice_fastpath_unsealable_total";
        e.family(
            name,
            Kind::Counter,
            "Replies with no lease to seal them under (dropped).",
        )
        .sample(name, &[], sealed.unsealable.load(Relaxed));
    }
}
