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

pub mod changes;
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
    consumers: Arc<Consumers>,
    confirmations: Arc<Confirmations>,
    /// Held across a reload's changes and the shutdown: a forward is
    /// stopped (its task ended) before it is started again, so one
    /// forward never has two tasks.
    running: tokio::sync::Mutex<Vec<Forward>>,
    stats: Arc<ForwardStats>,
}

/// One forward's task and how to stop it.
struct Forward {
    config: Arc<ForwardConfig>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// How long a stopping forward may take to leave its groups, and then
/// to close its connection.
const STOP_WITHIN: Duration = Duration::from_secs(5);
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

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
        let mut stats = ForwardStats::new(consumers.clone(), &forwards);
        if forwards.iter().any(|f| f.replicated) {
            stats = stats.with_replication(confirmations.stats());
        }
        let me = Forwarders {
            consumers,
            confirmations,
            running: tokio::sync::Mutex::new(Vec::new()),
            stats: Arc::new(stats),
        };
        let started = forwards
            .into_iter()
            .map(|f| me.spawn(Arc::new(f), me.stats.forward_at_start()))
            .collect();
        // Nobody else holds it yet.
        *me.running.try_lock().expect("a new lock") = started;
        me
    }

    /// Starts forward `f`, counting into `counters`.
    fn spawn(
        &self,
        f: Arc<ForwardConfig>,
        counters: impl FnOnce(&ForwardConfig) -> Arc<metrics::ForwardCounters>,
    ) -> Forward {
        info!(forward = %f.name, streams = ?f.streams, servers = ?f.servers,
              target = %f.target_stream, "forwarding to NATS JetStream");
        let counters = counters(&f);
        let (stop, stopped) = watch::channel(false);
        let js = connect::connect(f.clone(), counters.clone());
        let runs = Runs {
            forward: f.clone(),
            js,
            consumers: self.consumers.clone(),
            confirmations: self.confirmations.clone(),
            stats: counters,
            stop: stopped,
        };
        Forward {
            config: f,
            stop,
            task: tokio::spawn(runs.run()),
        }
    }

    /// What `/metrics` shows of the forwards.
    pub fn stats(&self) -> Arc<ForwardStats> {
        self.stats.clone()
    }

    /// A reload's forwards (SIGHUP): a new one starts, a removed one
    /// stops, a changed one stops and starts with its new settings; the
    /// unchanged ones run on. What each step did is logged here, a line a
    /// forward. Called after the consumer groups took the reload's
    /// settings: a forward's groups are configured ones. Returns how many
    /// forwards were started, stopped or restarted, and the names of
    /// those whose change is not applied.
    pub async fn reconfigure(&self, forwards: Vec<ForwardConfig>) -> (usize, Vec<String>) {
        let mut running = self.running.lock().await;
        let old: Vec<ForwardConfig> = running.iter().map(|f| (*f.config).clone()).collect();
        let mut refused = Vec::new();
        let steps = changes::plan(&old, &forwards);
        let total = steps.len();
        for step in steps {
            match step {
                changes::Step::Start(f) => {
                    let started = self.spawn(Arc::new(f), |f| self.stats.restart(f));
                    info!(forward = %started.config.name, "reload: forward added and started");
                    running.push(started);
                }
                changes::Step::Stop(name) => {
                    let Some(i) = running.iter().position(|f| f.config.name == name) else {
                        continue;
                    };
                    let gone = running.remove(i);
                    let groups = gone.config.group();
                    self.stop(gone).await;
                    self.stats.remove(&name);
                    warn!(forward = %name, group = %groups, "reload: forward removed and stopped; its consumer group stays on its streams, with what it had not forwarded (and, with retain, the records retention keeps for it): `sluice group delete` removes it");
                }
                changes::Step::Restart { config, what } => {
                    let Some(i) = running.iter().position(|f| f.config.name == config.name) else {
                        continue;
                    };
                    let old = running.remove(i);
                    self.stop(old).await;
                    let started = self.spawn(Arc::new(config), |f| self.stats.restart(f));
                    info!(forward = %started.config.name, change = %what, "reload: forward changed: stopped, and started again with the new settings from its group's acked position");
                    running.push(started);
                }
                changes::Step::Refused { name, why } => {
                    warn!(forward = %name, "reload: forward {why} (the running forward stays as it was)");
                    refused.push(name);
                }
            }
        }
        (total - refused.len(), refused)
    }

    /// Stops one forward: its runs leave their groups, so what they held
    /// unacked (publishes in flight whose PubAck had not come) is
    /// delivered again to the forward's next run, and JetStream drops
    /// what it already has by its `Nats-Msg-Id`. Then its connection
    /// is closed.
    async fn stop(&self, f: Forward) {
        let _ = f.stop.send(true);
        let mut task = f.task;
        if tokio::time::timeout(STOP_WITHIN, &mut task).await.is_err() {
            warn!(forward = %f.config.name, "a forward did not stop within {STOP_WITHIN:?}: ended");
            task.abort();
            let _ = task.await;
        }
        if let Some(client) = self.stats.client_of(&f.config.name) {
            let _ = tokio::time::timeout(CLOSE_WITHIN, client.drain()).await;
        }
    }

    /// Stops every forward: they leave their groups (what they hold
    /// unacked is delivered again at the next start, and JetStream drops
    /// what it already has). Before the consumer groups stop.
    pub async fn shutdown(&self) {
        let mut running = self.running.lock().await;
        for f in running.iter() {
            let _ = f.stop.send(true);
        }
        for f in running.drain(..) {
            if tokio::time::timeout(STOP_WITHIN, f.task).await.is_err() {
                warn!(forward = %f.config.name, "a forward did not stop within {STOP_WITHIN:?}");
            }
        }
    }
}

/// A forward's run tasks, ended with it: should a stop time out and the
/// forward's task be aborted, no run of it is left to go on beside the
/// next one.
struct RunTasks(Vec<JoinHandle<()>>);

impl Drop for RunTasks {
    fn drop(&mut self) {
        for r in &self.0 {
            r.abort();
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
        // Each stream's run: its index in `runs`.
        let mut started: std::collections::HashMap<String, usize> = Default::default();
        let mut runs = RunTasks(Vec::new());
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
                // A run that ended (its stream was deleted, which stops its
                // group) starts again when a pattern finds the stream made
                // again. A stream named exactly is not made again here: a
                // deleted one comes back only at a restart, as configured
                // groups' streams do.
                let ended = started
                    .get(&stream)
                    .is_some_and(|&i| runs.0[i].is_finished());
                let exact = f.exact_streams().any(|e| *e == stream);
                if started.contains_key(&stream) && (exact || !ended) {
                    continue;
                }
                started.insert(stream.clone(), runs.0.len());
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
                runs.0.push(tokio::spawn(run.run()));
            }
            if !f.has_patterns() {
                break;
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = tokio::time::sleep(FIND_STREAMS_EVERY) => {}
            }
        }
        // Awaited in place: aborted meanwhile, the guard still ends them.
        for r in runs.0.iter_mut() {
            let _ = r.await;
        }
    }
}
