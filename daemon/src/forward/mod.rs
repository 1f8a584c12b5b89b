//! The forwarder: each `[[forward]]` entry sends its sluice streams into a
//! NATS JetStream cluster, exactly once (daemon/FORWARD.md).
//!
//! A forward is an internal member of consumer group `forward.<name>` of
//! each of its streams: the group's journal is its durable cursor. Each
//! delivery is published with `Nats-Msg-Id: {stream}/{producer}/{seq}`
//! (JetStream drops a copy within its duplicate window); its offset is
//! acked to the group on the PubAck and nacked with a backoff on an error,
//! so that it comes again. After a crash the group delivers again what was
//! not acked, and JetStream stores it once.

pub mod config;
pub mod confirm;
mod connect;
mod each;
mod message;
mod metrics;
mod ordered;
mod publish;
mod run;
mod standing;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::consume::service::Consumers;
pub use config::ForwardConfig;
pub use confirm::Confirmations;
pub use metrics::ForwardStats;

/// Every forward of the daemon, running.
pub struct Forwarders {
    stop: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    stats: Arc<ForwardStats>,
}

impl Forwarders {
    /// Starts every forward (after the consumer groups have started: their
    /// groups are configured ones). Nothing here waits for a cluster: a
    /// forward connects in the background and says in the log and the
    /// metrics when it cannot.
    /// `confirmations` (built from the same `forwards`) hears what the
    /// replicated forwards have in JetStream.
    pub fn start(
        forwards: Vec<ForwardConfig>,
        consumers: Arc<Consumers>,
        confirmations: Arc<Confirmations>,
    ) -> Forwarders {
        let (stop, stopped) = watch::channel(false);
        let mut stats = ForwardStats::new(consumers.clone(), &forwards);
        if forwards.iter().any(|f| f.replicated) {
            stats = stats.with_replication(confirmations.stats());
        }
        let stats = Arc::new(stats);
        let mut tasks = Vec::new();
        for f in forwards {
            let f = Arc::new(f);
            info!(forward = %f.name, streams = ?f.streams, servers = ?f.servers,
                  target = %f.target_stream, "forwarding to NATS JetStream");
            let js = connect::connect(f.clone(), stats.forward(&f.name));
            let runs = Runs {
                forward: f.clone(),
                js,
                consumers: consumers.clone(),
                confirmations: confirmations.clone(),
                stats: stats.forward(&f.name),
                stop: stopped.clone(),
            };
            tasks.push(tokio::spawn(runs.run()));
        }
        Forwarders {
            stop,
            tasks: std::sync::Mutex::new(tasks),
            stats,
        }
    }

    /// What `/metrics` shows of the forwards.
    pub fn stats(&self) -> Arc<ForwardStats> {
        self.stats.clone()
    }

    /// Stops every forward: they leave their groups (what they hold
    /// unacked is delivered again at the next start, and JetStream drops
    /// what it already has). Before the consumer groups stop.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap());
        for t in tasks {
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                warn!("a forward did not stop within 5 s");
            }
        }
    }
}

/// How often a forward with patterns looks for new matching streams.
const FIND_STREAMS_EVERY: Duration = Duration::from_secs(1);

/// One forward's runs: one per stream it takes; with patterns, a stream
/// made later gets its run within [`FIND_STREAMS_EVERY`].
struct Runs {
    forward: Arc<ForwardConfig>,
    js: watch::Receiver<Option<async_nats::jetstream::Context>>,
    consumers: Arc<Consumers>,
    confirmations: Arc<Confirmations>,
    stats: Arc<metrics::ForwardCounters>,
    stop: watch::Receiver<bool>,
}

impl Runs {
    async fn run(self) {
        let f = self.forward.clone();
        let mut started: std::collections::HashSet<String> = Default::default();
        let mut runs = Vec::new();
        let mut stop = self.stop.clone();
        loop {
            let mut names: Vec<String> = f.exact_streams().cloned().collect();
            if f.has_patterns() {
                names.extend(
                    self.consumers
                        .stream_names()
                        .into_iter()
                        .filter(|n| f.takes(n)),
                );
            }
            for stream in names {
                if !started.insert(stream.clone()) {
                    continue;
                }
                if f.has_patterns() {
                    info!(forward = %f.name, %stream, "forwarding a stream the pattern takes");
                }
                let run = run::Run {
                    confirm: self.confirmations.forward(&f.name, &stream),
                    forward: f.clone(),
                    stream,
                    js: self.js.clone(),
                    consumers: self.consumers.clone(),
                    stats: self.stats.clone(),
                    stop: self.stop.clone(),
                };
                runs.push(tokio::spawn(run.run()));
            }
            if !f.has_patterns() {
                break;
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = tokio::time::sleep(FIND_STREAMS_EVERY) => {}
            }
        }
        for r in runs {
            let _ = r.await;
        }
    }
}
