//! Counters and gauges, rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Picks one counter out of a stream's metrics.
type Field = fn(&StreamMetrics) -> &AtomicU64;

/// Per-stream ingest counters.
#[derive(Debug, Default)]
pub struct StreamMetrics {
    pub messages_in: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Records stored and acked durable.
    pub stored: AtomicU64,
    /// Retransmitted messages acked again, not stored.
    pub duplicates: AtomicU64,
    pub append_errors: AtomicU64,
    /// Current credit granted to this stream's sessions.
    pub credit: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    streams: Mutex<BTreeMap<String, Arc<StreamMetrics>>>,
    pub sessions: AtomicU64,
    pub sessions_rejected: AtomicU64,
}

impl Metrics {
    pub fn stream(&self, name: &str) -> Arc<StreamMetrics> {
        self.streams
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// The exposition text. `extra` appends gauges owned elsewhere (socket
    /// counters, spool health).
    pub fn render(&self, extra: impl FnOnce(&mut String)) -> String {
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counters: [(&str, &str, Field); 5] = [
            (
                "sluice_messages_in_total",
                "Messages received from producers.",
                |m| &m.messages_in,
            ),
            ("sluice_bytes_in_total", "Payload bytes received.", |m| {
                &m.bytes_in
            }),
            (
                "sluice_durable_acks_total",
                "Messages stored and acked durable.",
                |m| &m.stored,
            ),
            (
                "sluice_duplicates_total",
                "Retransmissions acked, not stored again.",
                |m| &m.duplicates,
            ),
            (
                "sluice_append_errors_total",
                "Spool appends that failed.",
                |m| &m.append_errors,
            ),
        ];
        let streams = self.streams.lock().unwrap();
        for (name, help, field) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (stream, m) in streams.iter() {
                let _ = writeln!(out, "{name}{{stream=\"{stream}\"}} {}", get(field(m)));
            }
        }
        let _ = writeln!(
            out,
            "# HELP sluice_credit Credit granted to each session.\n# TYPE sluice_credit gauge"
        );
        for (stream, m) in streams.iter() {
            let _ = writeln!(
                out,
                "sluice_credit{{stream=\"{stream}\"}} {}",
                get(&m.credit)
            );
        }
        let _ = writeln!(
            out,
            "# HELP sluice_sessions Open producer sessions.\n# TYPE sluice_sessions gauge\nsluice_sessions {}",
            get(&self.sessions)
        );
        let _ = writeln!(
            out,
            "# HELP sluice_sessions_rejected_total HELLOs refused.\n# TYPE sluice_sessions_rejected_total counter\nsluice_sessions_rejected_total {}",
            get(&self.sessions_rejected)
        );
        extra(&mut out);
        out
    }
}
