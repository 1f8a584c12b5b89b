//! The QUIC plane, authentication and the sealed fast path in `/metrics`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use sluice_transport::lease::{Leases, SealedDrop, SealedStats};

use crate::gate::{Denied, Gate};
use crate::metrics::exposition::{Exposition, Kind};
use crate::metrics::Collect;

use super::QuicStats;

/// What the QUIC plane and the gate count.
pub struct SecurityMetrics {
    pub gate: Arc<Gate>,
    pub quic: Arc<QuicStats>,
    /// The fast path's leases and drops (`None` with `insecure_lan`).
    pub leases: Option<Leases>,
    pub sealed: Option<Arc<SealedStats>>,
}

impl Collect for SecurityMetrics {
    fn collect(&self, e: &mut Exposition) {
        let s = self;
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
                "sluice_quic_connections_open",
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
            e.family(
                "sluice_leases",
                Kind::Gauge,
                "Raw-UDP leases held (ended ones while they drain, 2 s).",
            )
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
}
