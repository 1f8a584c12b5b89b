//! sluice → JetStream: a `sluiced` (started from this binary, as the
//! other scenarios start theirs) with a `[[forward]]` of one stream into a
//! JetStream stream it creates; producers (this process, fast path)
//! publish every message to it; the clock runs from the first send until
//! the JetStream stream holds them all. The producers' last durable ack
//! on the way gives sluice's own ingest rate in the same run.

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use sluice_testkit::daemon::{Daemon, DaemonSpec};
use sluice_transport::client::{ProducerOptions, Transport};
use sluice_transport::proto::SenderConfig;

use super::jetstream::{stored, wait_exists, Storage};
use super::ForwardConfig;
use crate::load::{Plan, Shape};
use crate::progress::Progress;
use crate::sizes::Payloads;

/// How often the JetStream stream's count is read while forwarding.
const POLL: Duration = Duration::from_millis(20);
/// How long the started daemon may take to create the target stream.
const CREATE_WITHIN: Duration = Duration::from_secs(60);

/// The names of the forward: sluice's stream and JetStream's.
pub struct Names {
    pub stream: String,
    pub target: String,
}

/// What the forwarded run measured.
pub struct Forwarded {
    /// Messages the producers sent, and got durably acked by sluiced.
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// From the first send to the last durable ack.
    pub ingest_seconds: f64,
    /// From the first send until the JetStream stream held every acked
    /// message (or the timeout).
    pub forward_seconds: f64,
    /// What the JetStream stream held at the end.
    pub stored: u64,
    /// Whether it held them all before the timeout.
    pub complete: bool,
}

/// sluiced's configuration file: the stream, and its forward.
fn write_config(
    path: &Path,
    names: &Names,
    urls: &[String],
    replicas: usize,
    storage: Storage,
) -> Result<(), String> {
    let servers: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    let text = format!(
        "[streams]\nnames = [{stream:?}]\n\n\
         [[forward]]\nname = \"bench\"\nstreams = [{stream:?}]\nservers = [{servers}]\n\
         target_stream = {target:?}\ncreate = true\nreplicas = {replicas}\nstorage = {storage:?}\n",
        stream = names.stream,
        target = names.target,
        servers = servers.join(", "),
        storage = storage.name(),
    );
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))
}

/// Starts the daemon under `work` forwarding into the cluster at `urls`.
pub fn start_daemon(
    config: &ForwardConfig,
    work: &Path,
    names: &Names,
    urls: &[String],
) -> Result<Daemon, String> {
    let file = work.join("sluiced.toml");
    write_config(&file, names, urls, config.replicas, config.storage)?;
    start_with(config, work, &file)
}

/// Starts a daemon under `work` (its data, log) with configuration `file`.
pub fn start_with(config: &ForwardConfig, work: &Path, file: &Path) -> Result<Daemon, String> {
    let mut spec = DaemonSpec::this_exe(&work.join("data"))
        .map_err(|e| format!("this program: {e}"))?
        .fsync(&config.fsync)
        .args(["--config".to_owned(), file.display().to_string()])
        .args(config.sluiced_args.iter().cloned());
    spec.log_file = Some(work.join("sluiced.log"));
    spec.log_level = "info".into();
    spec.try_start()
        .map_err(|e| with_log(format!("start sluiced: {e}"), work))
}

/// The run's sluice producers' options: the fast path to the daemon under
/// `work` (its certificate pinned), the run's datagram size.
pub fn producer_options(config: &ForwardConfig, work: &Path) -> Result<ProducerOptions, String> {
    let client = sluice_testkit::daemon::pinned(&work.join("data/tls/server.crt"), None)?;
    Ok(ProducerOptions {
        transport: Transport::FastPath(client),
        sender: SenderConfig {
            max_datagram: config.datagram,
            ..SenderConfig::default()
        },
        ..ProducerOptions::default()
    })
}

/// The run (on the current runtime): waits for the daemon to create the
/// target stream, then publishes and waits for JetStream to hold it all.
pub async fn run(
    config: &ForwardConfig,
    daemon: &Daemon,
    work: &Path,
    names: &Names,
    js: &Context,
    progress: &Progress,
) -> Result<Forwarded, String> {
    wait_exists(js, &names.target, CREATE_WITHIN)
        .await
        .map_err(|e| format!("{e}: sluiced's forward did not create it"))?;
    let options = producer_options(config, work)?;
    let stream = names.stream.clone();
    let producers = crate::load::connect(
        config.producers,
        daemon.quic,
        |_| stream.clone(),
        1,
        &options,
    )
    .await?;
    let each = config.each();
    let plan = Plan {
        shape: Shape {
            batch: config.batch,
            in_flight: config.in_flight,
            count: Some(each),
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
    let total = each * config.producers as u64;
    let begin = Instant::now();
    // The watcher reads the JetStream stream from the first send on, on
    // its own task: the producers' acks and the forwarding overlap.
    let watcher = {
        let (js, target) = (js.clone(), names.target.clone());
        let deadline = begin + Duration::from_secs_f64(config.timeout);
        tokio::spawn(async move {
            loop {
                let now = Instant::now();
                let n = stored(&js, &target).await.unwrap_or(0);
                if n >= total {
                    return (now, n, true);
                }
                if now >= deadline {
                    return (now, n, false);
                }
                tokio::time::sleep(POLL).await;
            }
        })
    };
    let extra = crate::load::Extra {
        begin: Some(begin),
        ..Default::default()
    };
    let outcome =
        crate::load::run_with(producers, &plan, progress, |_| Instant::now(), extra).await?;
    progress.phase("JetStream catching up", crate::progress::Goal::Open);
    let (done, n, complete) = watcher.await.map_err(|e| format!("the watcher: {e}"))?;
    Ok(Forwarded {
        sent: outcome.sent,
        acked: outcome.acked,
        errors: outcome.errors,
        first_error: outcome.first_error,
        ingest_seconds: (outcome.end - begin).as_secs_f64(),
        forward_seconds: (done - begin).as_secs_f64(),
        // Read once more: a forward that overshoots (duplicates stored)
        // shows here.
        stored: stored(js, &names.target).await.unwrap_or(n),
        complete,
    })
}

/// Lines of sluiced's log shown with a failure.
const LOG_TAIL_LINES: usize = 20;

/// `e` and the end of sluiced's log under `work` (which the run removes).
pub fn with_log(e: String, work: &Path) -> String {
    let log = std::fs::read_to_string(work.join("sluiced.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    format!("{e}\nthe end of sluiced's log:\n{tail}")
}
