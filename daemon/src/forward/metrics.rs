//! What `/metrics` shows of the forwards: messages forwarded, errors by
//! kind, publishes awaiting their PubAck, whether the connection is up,
//! the lag (the backlog of the forward's consumer group) and the PubAck
//! latency.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use super::config::{group_name, ForwardConfig};
use super::confirm::WaitStats;
use crate::consume::service::Consumers;
use crate::histogram::Histogram;
use crate::metrics::exposition::{Exposition, Kind};
use crate::metrics::Collect;

/// Why a publish (or the connection) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The cluster cannot be reached (or the connection dropped).
    Unreachable,
    /// The servers refused the credentials.
    Auth,
    /// No JetStream stream takes the subject.
    NoStream,
    /// No PubAck in time.
    Timeout,
    /// The target stream could not be created or found (create = true).
    CreateStream,
    /// A setting the client refused (creds file, CA file).
    Config,
    /// The stream refused a message (full at max_bytes with discard =
    /// new, a wrong expected stream, a message too large).
    Refused,
    /// A batch was cut short (a leader change, a message lost on the way):
    /// what it did not store is sent again.
    Interrupted,
    Other,
}

impl ErrorKind {
    const ALL: [ErrorKind; 9] = [
        ErrorKind::Unreachable,
        ErrorKind::Auth,
        ErrorKind::NoStream,
        ErrorKind::Timeout,
        ErrorKind::CreateStream,
        ErrorKind::Config,
        ErrorKind::Refused,
        ErrorKind::Interrupted,
        ErrorKind::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Auth => "auth",
            ErrorKind::NoStream => "no_stream",
            ErrorKind::Timeout => "timeout",
            ErrorKind::CreateStream => "create_stream",
            ErrorKind::Config => "config",
            ErrorKind::Refused => "refused",
            ErrorKind::Interrupted => "interrupted",
            ErrorKind::Other => "other",
        }
    }
}

/// A stream's (forwarded, in flight) counters.
type StreamCounters = (Arc<AtomicU64>, Arc<AtomicU64>);

/// One forward's counters.
#[derive(Debug)]
pub struct ForwardCounters {
    pub name: String,
    /// 1 while the client is connected to a server.
    pub connected: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    /// Per stream: (forwarded, in flight).
    streams: Mutex<BTreeMap<String, StreamCounters>>,
    /// Send to PubAck, microseconds.
    pub latency: Histogram,
    /// Messages not sent because the target already had them (its
    /// standing per producer: an earlier run or another daemon sent them).
    pub already: AtomicU64,
}

impl ForwardCounters {
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].fetch_add(1, Relaxed);
    }

    fn stream(&self, stream: &str) -> StreamCounters {
        self.streams
            .lock()
            .unwrap()
            .entry(stream.to_owned())
            .or_default()
            .clone()
    }

    pub fn forwarded(&self, stream: &str) {
        self.stream(stream).0.fetch_add(1, Relaxed);
    }

    pub fn in_flight(&self, stream: &str) -> Arc<AtomicU64> {
        self.stream(stream).1
    }
}

/// Every forward's counters, and the consumer service for their lag.
pub struct ForwardStats {
    forwards: Vec<Arc<ForwardCounters>>,
    consumers: Arc<Consumers>,
    /// `ack = "replicated"`: the producers' acks waiting for JetStream.
    replication: Option<Arc<WaitStats>>,
}

impl ForwardStats {
    pub fn new(consumers: Arc<Consumers>, forwards: &[ForwardConfig]) -> ForwardStats {
        ForwardStats {
            forwards: forwards
                .iter()
                .map(|f| {
                    let c = ForwardCounters {
                        name: f.name.clone(),
                        connected: AtomicU64::new(0),
                        errors: Default::default(),
                        streams: Mutex::new(BTreeMap::new()),
                        latency: Histogram::latency(),
                        already: AtomicU64::new(0),
                    };
                    for s in &f.streams {
                        c.stream(s);
                    }
                    Arc::new(c)
                })
                .collect(),
            consumers,
            replication: None,
        }
    }

    /// Shows the waits of replicated acks too (when a forward has
    /// `ack = "replicated"`).
    pub fn with_replication(mut self, waits: Arc<WaitStats>) -> ForwardStats {
        self.replication = Some(waits);
        self
    }

    pub fn forward(&self, name: &str) -> Arc<ForwardCounters> {
        self.forwards
            .iter()
            .find(|f| f.name == name)
            .expect("a configured forward")
            .clone()
    }
}

impl Collect for ForwardStats {
    fn collect(&self, e: &mut Exposition) {
        if self.forwards.is_empty() {
            return;
        }
        let name = "sluice_forward_connected";
        e.family(
            name,
            Kind::Gauge,
            "1 while the forward is connected to a NATS server.",
        );
        for f in &self.forwards {
            e.sample(name, &[("forward", &f.name)], f.connected.load(Relaxed));
        }
        let name = "sluice_forward_already_stored_total";
        e.family(
            name,
            Kind::Counter,
            "Messages not sent because JetStream already had them (read from the target per producer after a restart or a failure).",
        );
        for f in &self.forwards {
            e.sample(name, &[("forward", &f.name)], f.already.load(Relaxed));
        }
        let name = "sluice_forward_errors_total";
        e.family(
            name,
            Kind::Counter,
            "Forward failures by kind (each failed publish is sent again).",
        );
        for f in &self.forwards {
            for k in ErrorKind::ALL {
                let v = f.errors[k as usize].load(Relaxed);
                e.sample(name, &[("forward", &f.name), ("kind", k.label())], v);
            }
        }
        for (name, help, i) in [
            ("sluice_forward_messages_total", "Messages JetStream acknowledged (PubAck), copies dropped by its duplicate window included.", 0),
            ("sluice_forward_in_flight", "Publishes awaiting their PubAck.", 1),
        ] {
            e.family(name, if i == 0 { Kind::Counter } else { Kind::Gauge }, help);
            for f in &self.forwards {
                for (stream, c) in f.streams.lock().unwrap().iter() {
                    let v = if i == 0 { &c.0 } else { &c.1 };
                    e.sample(name, &[("forward", &f.name), ("stream", stream)], v.load(Relaxed));
                }
            }
        }
        let groups = self.consumers.stats();
        for (name, help, pick) in [
            (
                "sluice_forward_lag_messages",
                "Messages not yet forwarded (the backlog of group forward.<name>).",
                (|g: &crate::consume::service::GroupStats| g.backlog_messages as f64)
                    as fn(&_) -> f64,
            ),
            (
                "sluice_forward_lag_bytes",
                "Payload bytes not yet forwarded.",
                |g| g.backlog_bytes as f64,
            ),
            (
                "sluice_forward_lag_seconds",
                "Age of the oldest message not yet forwarded.",
                |g| g.oldest_unacked_seconds,
            ),
        ] {
            e.family(name, Kind::Gauge, help);
            for f in &self.forwards {
                let group = group_name(&f.name);
                for g in groups.iter().filter(|g| g.group == group) {
                    e.sample(
                        name,
                        &[("forward", &f.name), ("stream", &g.stream)],
                        pick(g),
                    );
                }
            }
        }
        let name = "sluice_forward_puback_seconds";
        e.family(name, Kind::Histogram, "From a publish to its PubAck.");
        for f in &self.forwards {
            e.histogram(name, &[("forward", &f.name)], &f.latency.snapshot());
        }
        if let Some(r) = &self.replication {
            let name = "sluice_forward_replicated_waiting";
            e.family(
                name,
                Kind::Gauge,
                "Messages of ack = \"replicated\" streams stored locally whose ack waits for JetStream's PubAck.",
            );
            e.sample(name, &[], r.waiting.load(Relaxed));
            let name = "sluice_forward_replicated_wait_seconds";
            e.family(
                name,
                Kind::Histogram,
                "From a replicated stream's batch stored locally to its PubAck (its ack waits that long).",
            );
            e.histogram(name, &[], &r.wait.snapshot());
        }
    }
}
