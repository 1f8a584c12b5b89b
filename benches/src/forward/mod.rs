//! The `forward` scenario (issue 21's benchmark): sluice → JetStream
//! msgs/s next to the NATS client alone publishing the same messages to
//! the same cluster, in one run.
//!
//! Against one JetStream cluster (started here with sluice-testkit's
//! `nats` kit, 3 nodes by default, or a running one given by URL), each
//! phase into a fresh stream with the same replicas and storage:
//!
//! 1. **forwarded** (sluice.rs): a `sluiced` with a `[[forward]]` that
//!    creates its target stream; producers publish `messages` of `size`
//!    bytes to it over the fast path; timed from the first send until the
//!    JetStream stream holds them all. The producers' durable acks give
//!    sluice's ingest rate of the same run.
//! 2. **the NATS client alone**, the same messages (the forwarder's
//!    headers: a `Nats-Msg-Id` each; one subject per producer): async
//!    publishes with a window of PubAcks outstanding (direct.rs), and
//!    jetstream-extra's fast-ingest batches (fast.rs). The ratio is
//!    forwarded ÷ the better of the two (the target ≥ 0.8).
//! 3. PubAck latency of direct publishes, window full, one at a time,
//!    and `latency_window` in flight from one publisher.
//! 4. Producer → ack latency with a forward (acked.rs): a second `sluiced`
//!    whose streams are forwarded with `ack = "replicated"` and with
//!    `ack = "local"`; one producer one message at a time, then
//!    `latency_window` in flight; next to the direct PubAck latency of the
//!    same window (replicated ÷ direct: what sluice adds to JetStream's own
//!    latency; replicated − local: what waiting for JetStream costs).
//!
//! Every stream must end holding exactly the messages sent; the run fails
//! otherwise.

mod acked;
mod args;
mod direct;
mod fast;
mod jetstream;
mod print;
mod report;
mod sluice;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::measure::Head;
use crate::progress::{Goal, Progress};
pub use args::{main, ForwardArgs};
use direct::Load;
pub use jetstream::Storage;
pub use print::print;
pub use report::{ForwardReport, Row, TARGET_RATIO};

/// Version of the JSON layout (bump on incompatible changes).
pub const JSON_SCHEMA: u32 = 1;

/// Everything that describes one run.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardConfig {
    pub producers: usize,
    /// Messages in all (a multiple of `producers`: rounded down).
    pub messages: u64,
    pub size: usize,
    /// Nodes of the started cluster (ignored with `servers`).
    pub nodes: usize,
    /// A running cluster's client URLs (empty: start one).
    pub servers: Vec<String>,
    pub replicas: usize,
    pub storage: Storage,
    /// Direct publishes: PubAcks outstanding per producer task.
    pub window: usize,
    /// Direct publishes one at a time, for their latency; and each
    /// ack-latency run's messages.
    pub latency_messages: u64,
    /// Messages in flight of the second ack-latency runs.
    pub latency_window: usize,
    /// The started daemon's fsync policy and extra flags.
    pub fsync: String,
    pub sluiced_args: Vec<String>,
    /// sluice producers: messages per call, calls in flight, datagram.
    pub batch: usize,
    pub in_flight: usize,
    pub datagram: usize,
    pub dir: PathBuf,
    /// Most seconds a phase may take.
    pub timeout: f64,
    /// Leave the run's streams on a running cluster (`--servers`), for a
    /// look at them after the run.
    pub keep: bool,
    pub quiet: bool,
}

impl ForwardConfig {
    /// Messages per producer.
    pub fn each(&self) -> u64 {
        self.messages / self.producers.max(1) as u64
    }

    /// Messages in all, as sent.
    pub fn total(&self) -> u64 {
        self.each() * self.producers as u64
    }

    fn validate(&self) -> Result<(), String> {
        if self.producers == 0 || self.batch == 0 || self.in_flight == 0 || self.window == 0 {
            return Err("--producers, --batch, --in-flight and --window must be at least 1".into());
        }
        if self.latency_messages == 0 || self.latency_window == 0 {
            return Err("--latency-messages and --latency-window must be at least 1".into());
        }
        if self.messages < self.producers as u64 {
            return Err("--messages must be at least --producers".into());
        }
        if self.size == 0 {
            return Err("--size must be at least 1".into());
        }
        if self.servers.is_empty() && self.nodes == 0 {
            return Err("--nodes must be at least 1".into());
        }
        if self.replicas == 0 || (self.servers.is_empty() && self.replicas > self.nodes) {
            return Err(format!(
                "--replicas must be 1 to the cluster's {} node(s)",
                self.nodes
            ));
        }
        if !(self.timeout > 0.0 && self.timeout.is_finite()) {
            return Err("--timeout must be more than 0".into());
        }
        Ok(())
    }
}

/// Runs the scenario.
pub fn run(config: &ForwardConfig) -> Result<ForwardReport, Box<dyn std::error::Error>> {
    config.validate()?;
    let head = Head::now("forward", JSON_SCHEMA);
    std::fs::create_dir_all(&config.dir)?;
    let work = tempfile::Builder::new()
        .prefix("sluice-bench-forward-")
        .tempdir_in(&config.dir)?;
    let progress = Progress::new("forward", config.quiet);
    let say = |what: &str| {
        if progress.is_hidden() && !config.quiet {
            eprintln!("sluice-bench forward: {what} ...");
        }
        progress.phase(what, Goal::Open);
    };
    say("starting the JetStream cluster");
    let servers =
        jetstream::Servers::start(&work.path().join("nats"), config.nodes, &config.servers)?;
    let started = matches!(servers, jetstream::Servers::Started(_));
    let urls = servers.urls();
    // Unique names: a running cluster may hold an earlier run's streams.
    let nonce = format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() >> 8)
    );
    let names = sluice::Names {
        stream: format!("fwd{nonce}"),
        target: format!("SLUICE_BENCH_FWD_{nonce}"),
    };
    let direct_name = format!("SLUICE_BENCH_DIRECT_{nonce}");
    let fast_name = format!("SLUICE_BENCH_FAST_{nonce}");
    let single_name = format!("SLUICE_BENCH_ONE_{nonce}");
    let win_name = format!("SLUICE_BENCH_WIN_{nonce}");
    let ack_names = acked::AckNames {
        replicated: acked::Pair {
            stream: format!("ackr{nonce}"),
            target: format!("SLUICE_BENCH_ACKR_{nonce}"),
        },
        local: acked::Pair {
            stream: format!("ackl{nonce}"),
            target: format!("SLUICE_BENCH_ACKL_{nonce}"),
        },
    };
    let rt = crate::load::runtime(Some("producer"))?;
    let window_all = config.window * config.producers;
    let js = rt.block_on(jetstream::connect(&urls, window_all))?;

    // 1. sluice → JetStream.
    say("starting sluiced with its forward");
    let daemon = sluice::start_daemon(config, work.path(), &names, &urls)?;
    progress.phase("sluice -> JetStream", Goal::Count(config.total()));
    let forwarded = rt.block_on(sluice::run(
        config,
        &daemon,
        work.path(),
        &names,
        &js,
        &progress,
    ));
    let status = daemon.try_terminate(Duration::from_secs(30));
    // The log goes with the temporary folder: what it said comes along.
    let forwarded = forwarded.map_err(|e| sluice::with_log(e, work.path()))?;
    let status = status?;
    if !status.success() {
        return Err(format!("sluiced did not stop cleanly: {status}").into());
    }

    // 2. The NATS client alone.
    let load = |base: &str, target: &str| Load {
        base: base.to_owned(),
        target: target.to_owned(),
        stream: names.stream.clone(),
        producers: config.producers,
        each: config.each(),
        payload: bytes::Bytes::from(vec![0x42u8; config.size]),
    };
    let subject = |kind: &str| format!("bench.{nonce}.{kind}");
    let outcome = rt.block_on(async {
        let create = |name: String, kind: &'static str, batched: bool| {
            let js = js.clone();
            let subjects = vec![format!("{}.>", subject(kind))];
            async move {
                jetstream::create_stream(
                    &js,
                    &name,
                    subjects,
                    config.replicas,
                    config.storage,
                    batched,
                )
                .await
            }
        };
        create(direct_name.clone(), "direct", false).await?;
        create(fast_name.clone(), "fast", true).await?;
        create(single_name.clone(), "one", false).await?;
        create(win_name.clone(), "win", false).await?;
        say("NATS client alone, async publishes");
        let d = direct::windowed(&js, &load(&subject("direct"), &direct_name), config.window).await;
        let d_stored = jetstream::stored(&js, &direct_name).await.unwrap_or(0);
        say("NATS client alone, fast-ingest batches");
        let f = fast::batches(&js, &load(&subject("fast"), &fast_name)).await;
        let f_stored = jetstream::stored(&js, &fast_name).await.unwrap_or(0);
        say("NATS client alone, one publish at a time");
        let one = direct::one_at_a_time(
            &js,
            &load(&subject("one"), &single_name),
            config.latency_messages,
        )
        .await;
        say("NATS client alone, one publisher's window");
        let one_load = Load {
            producers: 1,
            each: config.latency_messages,
            ..load(&subject("win"), &win_name)
        };
        let win = direct::windowed(&js, &one_load, config.latency_window).await;
        Ok::<_, String>(((d, d_stored), (f, f_stored), one, win))
    });
    // 4. Producer → ack latency, replicated and local.
    let ack = outcome.as_ref().ok().map(|_| {
        say("starting sluiced for the ack latency");
        acked::measure(
            config,
            &work.path().join("acked"),
            &ack_names,
            &urls,
            &js,
            &rt,
            &progress,
        )
    });
    if !started && !config.keep {
        let all = [
            names.target.clone(),
            direct_name.clone(),
            fast_name.clone(),
            single_name.clone(),
            win_name.clone(),
            ack_names.replicated.target.clone(),
            ack_names.local.target.clone(),
        ];
        rt.block_on(jetstream::delete(&js, &all));
    }
    progress.finish();
    drop(js);
    drop(rt);
    servers.stop()?;
    let ((d, d_stored), (f, f_stored), one, win) = outcome?;
    // Measured whenever the direct phases were (else `outcome?` returned).
    let ack = ack.unwrap_or_else(|| Err("the ack latency: not measured".into()))?;
    let streams = report::Streams {
        sluice: names.stream.clone(),
        forwarded: names.target.clone(),
        direct: direct_name,
        fast: fast_name,
        one_at_a_time: single_name,
        window: win_name,
        acked: ack_names,
    };
    Ok(report::build(
        streams,
        config,
        head,
        urls,
        started,
        &forwarded,
        (&d, d_stored),
        (&f, f_stored),
        &one,
        &win,
        &ack,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        forward: ForwardArgs,
    }

    fn config(args: &[&str]) -> Result<ForwardConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("forward").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        let c = cli.forward.config();
        c.validate().map(|()| c)
    }

    #[test]
    fn replicas_follow_the_cluster_unless_told() {
        assert_eq!(config(&[]).unwrap().replicas, 3);
        assert_eq!(config(&["--nodes", "1"]).unwrap().replicas, 1);
        let c = config(&["--servers", "nats://127.0.0.1:4222,nats://127.0.0.1:4223"]).unwrap();
        assert_eq!((c.replicas, c.servers.len()), (3, 2));
        assert_eq!(
            config(&["--nodes", "5", "--replicas", "3"])
                .unwrap()
                .replicas,
            3
        );
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let e = config(&["--nodes", "1", "--replicas", "3"]).unwrap_err();
        assert!(e.contains("--replicas"), "{e}");
        assert!(config(&["--producers", "0"])
            .unwrap_err()
            .contains("--producers"));
        assert!(config(&["--messages", "3", "--producers", "4"]).is_err());
        assert!(config(&["--size", "0"]).is_err());
        assert!(config(&["--timeout", "0"]).is_err());
        // --keep is for a running cluster; --nodes and --servers exclude each other.
        assert!(config(&["--keep"]).is_err());
        assert!(config(&["--nodes", "1", "--servers", "nats://127.0.0.1:1"]).is_err());
    }

    #[test]
    fn messages_round_down_to_whole_producers() {
        let c = config(&["--messages", "10", "--producers", "4"]).unwrap();
        assert_eq!((c.each(), c.total()), (2, 8));
    }
}
