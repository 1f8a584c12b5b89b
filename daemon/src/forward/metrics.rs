//! What `/metrics` shows of the forwards: messages forwarded, errors by
//! kind, publishes awaiting their PubAck, whether the connection is up,
//! the lag (the backlog of the forward's consumer group) and the PubAck
//! latency.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use super::config::{group_name, ForwardConfig};
use super::confirm::WaitStats;
use crate::consume::service::{Consumers, GroupStats};
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
    /// Since when the forward has no connection (None: connected). A
    /// forward starts without one.
    pub(super) down_since: Mutex<Option<Instant>>,
    /// The client, once it exists: which server it is connected to.
    client: OnceLock<async_nats::Client>,
    /// Messages not sent because the target already had them (its
    /// standing per producer: an earlier run or another daemon sent them).
    pub already: AtomicU64,
}

impl ForwardCounters {
    fn new(name: &str) -> ForwardCounters {
        ForwardCounters {
            name: name.to_owned(),
            connected: AtomicU64::new(0),
            errors: Default::default(),
            streams: Mutex::new(BTreeMap::new()),
            latency: Histogram::latency(),
            down_since: Mutex::new(Some(Instant::now())),
            client: OnceLock::new(),
            already: AtomicU64::new(0),
        }
    }

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

    /// The client, once it exists (to close it when the forward stops).
    pub(super) fn client(&self) -> Option<async_nats::Client> {
        self.client.get().cloned()
    }

    /// Keeps the client, for the server it is connected to.
    pub(super) fn set_client(&self, client: async_nats::Client) {
        let _ = self.client.set(client);
    }

    /// Seconds since the connection was lost (0 while connected).
    fn down_seconds(&self, now: Instant) -> f64 {
        self.down_since
            .lock()
            .unwrap()
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64())
    }

    /// The server the client is connected to now: (host:port, name,
    /// version) as its INFO says.
    fn server(&self) -> Option<(String, String, String)> {
        if self.connected.load(Relaxed) == 0 {
            return None;
        }
        let i = self.client.get()?.server_info();
        (!i.server_id.is_empty())
            .then(|| (format!("{}:{}", i.host, i.port), i.server_name, i.version))
    }
}

/// Every forward's counters, and the consumer service for their lag.
pub struct ForwardStats {
    /// A reload adds, replaces and removes forwards.
    forwards: Mutex<Vec<Arc<ForwardCounters>>>,
    consumers: Arc<Consumers>,
    /// `ack = "replicated"`: the producers' acks waiting for JetStream.
    replication: Option<Arc<WaitStats>>,
}

impl ForwardStats {
    pub fn new(consumers: Arc<Consumers>, forwards: &[ForwardConfig]) -> ForwardStats {
        ForwardStats {
            forwards: Mutex::new(forwards.iter().map(counters).collect()),
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
            .lock()
            .unwrap()
            .iter()
            .find(|f| f.name == name)
            .expect("a configured forward")
            .clone()
    }

    /// Fresh counters for forward `f`, in place of any it had: a forward
    /// a reload starts anew has a new client (whose connection events
    /// set them), so its counters start again, as at a daemon's start.
    pub fn restart(&self, f: &ForwardConfig) -> Arc<ForwardCounters> {
        let c = counters(f);
        let mut list = self.forwards.lock().unwrap();
        match list.iter_mut().find(|o| o.name == f.name) {
            Some(o) => *o = c.clone(),
            None => list.push(c.clone()),
        }
        c
    }

    /// The counters of each forward given at start, by name.
    pub fn forward_at_start(&self) -> impl Fn(&ForwardConfig) -> Arc<ForwardCounters> + '_ {
        |f| self.forward(&f.name)
    }

    /// Forward `name`'s client, if it has one.
    pub fn client_of(&self, name: &str) -> Option<async_nats::Client> {
        let list = self.forwards.lock().unwrap();
        list.iter().find(|f| f.name == name)?.client()
    }

    /// A forward a reload removed: no longer shown.
    pub fn remove(&self, name: &str) {
        self.forwards.lock().unwrap().retain(|f| f.name != name);
    }
}

/// A forward's counters, its exact streams shown from the start.
fn counters(f: &ForwardConfig) -> Arc<ForwardCounters> {
    let c = ForwardCounters::new(&f.name);
    for s in f.exact_streams() {
        c.stream(s);
    }
    Arc::new(c)
}

impl Collect for ForwardStats {
    fn collect(&self, e: &mut Exposition) {
        let forwards = self.forwards.lock().unwrap().clone();
        if forwards.is_empty() {
            return;
        }
        render(e, &forwards, &self.consumers.stats(), Instant::now());
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

/// The forwards' families; their lag is their groups' backlog.
fn render(
    e: &mut Exposition,
    forwards: &[Arc<ForwardCounters>],
    groups: &[GroupStats],
    now: Instant,
) {
    let name = "sluice_forward_connected";
    e.family(
        name,
        Kind::Gauge,
        "1 while the forward is connected to a NATS server, else 0 (the cluster is unreachable, or refuses the credentials: see sluice_forward_errors_total).",
    );
    for f in forwards {
        e.sample(name, &[("forward", &f.name)], f.connected.load(Relaxed));
    }
    let name = "sluice_forward_disconnected_seconds";
    e.family(
        name,
        Kind::Gauge,
        "Seconds since the forward lost its connection (or started without one); 0 while connected.",
    );
    for f in forwards {
        e.sample(name, &[("forward", &f.name)], f.down_seconds(now));
    }
    let name = "sluice_forward_server_info";
    e.family(
        name,
        Kind::Gauge,
        "1 for the NATS server the forward is connected to (host:port, name and version from its INFO); absent while disconnected.",
    );
    for f in forwards {
        if let Some((server, server_name, version)) = f.server() {
            e.sample(
                name,
                &[
                    ("forward", &f.name),
                    ("server", &server),
                    ("server_name", &server_name),
                    ("version", &version),
                ],
                1,
            );
        }
    }
    let name = "sluice_forward_already_stored_total";
    e.family(
        name,
        Kind::Counter,
        "Messages not sent because JetStream already had them (read from the target per producer after a restart or a failure).",
    );
    for f in forwards {
        e.sample(name, &[("forward", &f.name)], f.already.load(Relaxed));
    }
    let name = "sluice_forward_errors_total";
    e.family(
        name,
        Kind::Counter,
        "Forward failures by kind (each failed publish is sent again).",
    );
    for f in forwards {
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
        for f in forwards {
            for (stream, c) in f.streams.lock().unwrap().iter() {
                let v = if i == 0 { &c.0 } else { &c.1 };
                e.sample(name, &[("forward", &f.name), ("stream", stream)], v.load(Relaxed));
            }
        }
    }
    for (name, help, pick) in LAG {
        e.family(name, Kind::Gauge, help);
        for f in forwards {
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
    for f in forwards {
        e.histogram(name, &[("forward", &f.name)], &f.latency.snapshot());
    }
}

/// Reads one figure of a group.
type Field = fn(&GroupStats) -> f64;

/// The lag of a forward's stream: (metric, help, field of its group).
const LAG: [(&str, &str, Field); 3] = [
    (
        "sluice_forward_lag_messages",
        "Messages not yet forwarded (the backlog of group forward.<name>).",
        |g| g.backlog_messages as f64,
    ),
    (
        "sluice_forward_lag_bytes",
        "Payload bytes not yet forwarded (unread records estimated from the stream's mean record size).",
        |g| g.backlog_bytes as f64,
    ),
    (
        "sluice_forward_lag_seconds",
        "Age of the oldest message not yet forwarded (0: none).",
        |g| g.oldest_unacked_seconds,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::scrape::Scrape;
    use std::time::Duration;

    fn scrape(forwards: &[Arc<ForwardCounters>], groups: &[GroupStats], now: Instant) -> Scrape {
        let mut e = Exposition::default();
        render(&mut e, forwards, groups, now);
        Scrape::parse(&e.finish())
    }

    #[test]
    fn lag_is_the_forward_groups_backlog_per_stream() {
        let f = Arc::new(ForwardCounters::new("js"));
        f.stream("orders");
        let group = |stream: &str, group: &str, n: u64| GroupStats {
            stream: stream.into(),
            group: group.into(),
            backlog_messages: n,
            backlog_bytes: n * 100,
            oldest_unacked_seconds: n as f64 / 10.0,
            ..GroupStats::default()
        };
        let groups = [
            group("orders", "forward.js", 7),
            group("audit", "forward.js", 3),
            // Another group of the same stream is no lag of the forward.
            group("orders", "billing", 1000),
            group("orders", "forward.other", 500),
        ];
        let s = scrape(&[f], &groups, Instant::now());
        for (stream, n) in [("orders", 7.0), ("audit", 3.0)] {
            let l = [("forward", "js"), ("stream", stream)];
            assert_eq!(s.value("sluice_forward_lag_messages", &l), n, "{stream}");
            assert_eq!(
                s.value("sluice_forward_lag_bytes", &l),
                n * 100.0,
                "{stream}"
            );
            assert_eq!(
                s.value("sluice_forward_lag_seconds", &l),
                n / 10.0,
                "{stream}"
            );
        }
        let all = [("forward", "js")];
        assert_eq!(s.value("sluice_forward_lag_messages", &all), 10.0);
    }

    #[test]
    fn connection_state_errors_and_latency_render() {
        let f = Arc::new(ForwardCounters::new("js"));
        f.stream("orders");
        let t0 = Instant::now();
        // A forward starts without a connection.
        let s = scrape(std::slice::from_ref(&f), &[], t0 + Duration::from_secs(3));
        let l = [("forward", "js")];
        assert_eq!(s.value("sluice_forward_connected", &l), 0.0);
        assert!(s.value("sluice_forward_disconnected_seconds", &l) >= 3.0);
        assert!(s
            .label_values("sluice_forward_server_info", "server")
            .is_empty());
        f.error(ErrorKind::Unreachable);
        f.error(ErrorKind::Unreachable);
        f.error(ErrorKind::Timeout);
        f.connected.store(1, Relaxed);
        *f.down_since.lock().unwrap() = None;
        f.forwarded("orders");
        f.in_flight("orders").store(4, Relaxed);
        f.latency.observe(1_500);
        f.latency.observe(2_000_000);
        let s = scrape(&[f], &[], Instant::now());
        assert_eq!(s.value("sluice_forward_connected", &l), 1.0);
        assert_eq!(s.value("sluice_forward_disconnected_seconds", &l), 0.0);
        let kind = |k| {
            s.value(
                "sluice_forward_errors_total",
                &[("forward", "js"), ("kind", k)],
            )
        };
        assert_eq!(
            (kind("unreachable"), kind("timeout"), kind("auth")),
            (2.0, 1.0, 0.0)
        );
        let o = [("forward", "js"), ("stream", "orders")];
        assert_eq!(s.value("sluice_forward_messages_total", &o), 1.0);
        assert_eq!(s.value("sluice_forward_in_flight", &o), 4.0);
        // A Prometheus histogram: cumulative `le` buckets up to +Inf.
        let b = s.buckets("sluice_forward_puback_seconds", &l);
        assert!(b.len() > 2, "{b:?}");
        assert_eq!(b.last().unwrap(), &(f64::INFINITY, 2));
        assert!(
            b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{b:?}"
        );
        let at_2ms = b.iter().find(|(le, _)| *le >= 0.002).unwrap().1;
        assert_eq!(at_2ms, 1, "{b:?}");
        assert_eq!(s.value("sluice_forward_puback_seconds_count", &l), 2.0);
        assert!((s.value("sluice_forward_puback_seconds_sum", &l) - 2.0015).abs() < 1e-9);
    }
}
