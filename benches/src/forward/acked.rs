//! Producer → ack latency with a forward (the second figure): a
//! `sluiced` of its own with two streams, one forwarded with
//! `ack = "replicated"` (a producer's ack waits until JetStream PubAcked
//! the message), one with `ack = "local"` (acked once on the local disk:
//! what replication costs is the difference); each into a JetStream
//! stream the forward creates, with the run's replicas and storage.
//!
//! For each window (1: one message at a time, each ack awaited before the
//! next; then `--latency-window` messages in flight), one producer sends
//! `--latency-messages` messages of `size` bytes, one per call, to the
//! replicated stream, then another as many to the local one; latency is
//! per message from its `send_batch` call to its durable ack (the load
//! generator's closed loop, as `ingest` measures it). Afterwards both
//! JetStream streams must hold every message sent.

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use hdrhistogram::Histogram;
use sluice_testkit::daemon::Daemon;

use super::jetstream::{stored, wait_exists};
use super::sluice::{producer_options, start_with, with_log};
use super::ForwardConfig;
use crate::load::{Plan, Shape};
use crate::progress::{Goal, Progress};
use crate::sizes::Payloads;

/// How long the started daemon may take to create the target streams.
const CREATE_WITHIN: Duration = Duration::from_secs(60);
/// How often the JetStream streams' counts are read at the end.
const POLL: Duration = Duration::from_millis(20);

/// A forward's ack mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Replicated,
    Local,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Replicated => "replicated",
            Mode::Local => "local",
        }
    }
}

/// One forwarded stream of the phase: sluice's name and JetStream's.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pair {
    pub stream: String,
    pub target: String,
}

/// The phase's streams, one per mode.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AckNames {
    pub replicated: Pair,
    pub local: Pair,
}

impl AckNames {
    pub fn of(&self, mode: Mode) -> &Pair {
        match mode {
            Mode::Replicated => &self.replicated,
            Mode::Local => &self.local,
        }
    }
}

/// One producer's run: a mode, a window.
pub struct AckRun {
    pub mode: Mode,
    pub window: usize,
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// `send_batch` call → durable ack, per message.
    pub latency: Histogram<u64>,
}

/// What the phase measured.
pub struct Acked {
    pub runs: Vec<AckRun>,
    /// Messages each JetStream stream should hold, and what they held.
    pub expected: u64,
    pub replicated_stored: u64,
    pub local_stored: u64,
}

/// The windows measured: one at a time, then `window` if more.
pub fn windows(window: usize) -> Vec<usize> {
    if window > 1 {
        vec![1, window]
    } else {
        vec![1]
    }
}

/// sluiced's configuration: both streams, a forward each.
fn config_text(config: &ForwardConfig, names: &AckNames, urls: &[String]) -> String {
    let servers: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    let mut text = format!(
        "[streams]\nnames = [{:?}, {:?}]\n",
        names.replicated.stream, names.local.stream
    );
    for mode in [Mode::Replicated, Mode::Local] {
        let p = names.of(mode);
        text += &format!(
            "\n[[forward]]\nname = \"bench-{mode}\"\nstreams = [{stream:?}]\nservers = [{servers}]\n\
             target_stream = {target:?}\ncreate = true\nreplicas = {replicas}\nstorage = {storage:?}\n\
             retain = true\nack = {mode:?}\n",
            mode = mode.name(),
            stream = p.stream,
            target = p.target,
            servers = servers.join(", "),
            replicas = config.replicas,
            storage = config.storage.name(),
        );
    }
    text
}

/// The whole phase on `rt`: starts the daemon under `work`, measures,
/// stops it (a failure comes with the end of its log).
pub fn measure(
    config: &ForwardConfig,
    work: &Path,
    names: &AckNames,
    urls: &[String],
    js: &Context,
    rt: &tokio::runtime::Runtime,
    progress: &Progress,
) -> Result<Acked, String> {
    std::fs::create_dir_all(work).map_err(|e| format!("{}: {e}", work.display()))?;
    let file = work.join("sluiced.toml");
    std::fs::write(&file, config_text(config, names, urls))
        .map_err(|e| format!("write {}: {e}", file.display()))?;
    let daemon = start_with(config, work, &file)?;
    let acked = rt.block_on(run(config, &daemon, work, names, js, progress));
    let status = daemon.try_terminate(Duration::from_secs(30));
    let acked = acked.map_err(|e| with_log(e, work))?;
    let status = status.map_err(|e| format!("stop sluiced (ack latency): {e}"))?;
    if !status.success() {
        return Err(format!(
            "sluiced (ack latency) did not stop cleanly: {status}"
        ));
    }
    Ok(acked)
}

async fn run(
    config: &ForwardConfig,
    daemon: &Daemon,
    work: &Path,
    names: &AckNames,
    js: &Context,
    progress: &Progress,
) -> Result<Acked, String> {
    for mode in [Mode::Replicated, Mode::Local] {
        wait_exists(js, &names.of(mode).target, CREATE_WITHIN)
            .await
            .map_err(|e| format!("{e}: sluiced's {} forward did not create it", mode.name()))?;
    }
    let options = producer_options(config, work)?;
    let n = config.latency_messages;
    let mut runs = Vec::new();
    // Each window's runs get producers of their own (ids 1, 2, ...), so
    // that every run starts a fresh sequence.
    for (k, window) in windows(config.latency_window).into_iter().enumerate() {
        for mode in [Mode::Replicated, Mode::Local] {
            progress.phase(
                &format!("ack = {}, {window} in flight", mode.name()),
                Goal::Count(n),
            );
            let stream = names.of(mode).stream.clone();
            let producers =
                crate::load::connect(1, daemon.quic, |_| stream.clone(), k as u64 + 1, &options)
                    .await?;
            let plan = Plan {
                shape: Shape {
                    batch: 1,
                    in_flight: window,
                    count: Some(n),
                    rate: 0.0,
                    stamp: None,
                },
                payloads: Payloads::fixed(config.size),
                seed: 1,
                warmup: 0.0,
                seconds: None,
                interval: 0.1,
                drain: Duration::from_secs_f64(config.timeout),
            };
            let o = crate::load::run(producers, &plan, progress, |_| ()).await?;
            runs.push(AckRun {
                mode,
                window,
                sent: o.sent,
                acked: o.acked,
                errors: o.errors,
                first_error: o.first_error,
                latency: o.latency,
            });
        }
    }
    // The local stream's forward may still be on its way.
    progress.phase("JetStream catching up", Goal::Open);
    let expected = n * windows(config.latency_window).len() as u64;
    let deadline = Instant::now() + Duration::from_secs_f64(config.timeout);
    let (replicated_stored, local_stored) = loop {
        let r = stored(js, &names.replicated.target).await.unwrap_or(0);
        let l = stored(js, &names.local.target).await.unwrap_or(0);
        if (r >= expected && l >= expected) || Instant::now() >= deadline {
            break (r, l);
        }
        tokio::time::sleep(POLL).await;
    };
    Ok(Acked {
        runs,
        expected,
        replicated_stored,
        local_stored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_at_a_time_first_then_the_window_once() {
        assert_eq!(windows(1), vec![1]);
        assert_eq!(windows(16), vec![1, 16]);
    }
}
