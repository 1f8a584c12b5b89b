//! The JetStream side of `forward`: the cluster (one this run starts with
//! sluice-testkit's `nats` kit, or a running one named by URL), a client
//! of it, the streams the run creates, and what they hold.

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::header::{HeaderMap, NATS_EXPECTED_STREAM, NATS_MESSAGE_ID};
use async_nats::jetstream::stream::{Config, StorageType};
use async_nats::jetstream::Context;
use async_nats::ServerAddr;
use sluice_testkit::nats::Cluster;

/// The duplicate window of every stream of the run: the one the forwarder
/// gives a stream it creates (daemon/src/forward/), so that the server's
/// dedup table is the same size for all of them.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Each request to JetStream (stream API calls, PubAcks).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the streams live.
pub enum Servers {
    /// A cluster this run started (stopped when the run ends).
    Started(Cluster),
    /// A running cluster: its client URLs.
    Running(Vec<String>),
}

impl Servers {
    /// Starts `nodes` nats-servers under `dir`, or takes `urls` if given.
    pub fn start(dir: &Path, nodes: usize, urls: &[String]) -> Result<Servers, String> {
        if !urls.is_empty() {
            return Ok(Servers::Running(urls.to_vec()));
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Cluster::try_start(dir, nodes).map(Servers::Started)
    }

    pub fn urls(&self) -> Vec<String> {
        match self {
            Servers::Started(c) => c.client_urls(),
            Servers::Running(u) => u.clone(),
        }
    }

    /// Stops a started cluster (SIGTERM; a running one is left alone).
    pub fn stop(self) -> Result<(), String> {
        match self {
            Servers::Started(c) => {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.stop()))
                    .map_err(|p| crate::measure::panic_text(&p))
            }
            Servers::Running(_) => Ok(()),
        }
    }
}

/// A JetStream context on a client of `urls` (one connection), with up
/// to `in_flight` publishes awaiting their PubAck.
pub async fn connect(urls: &[String], in_flight: usize) -> Result<Context, String> {
    let addrs = urls
        .iter()
        .map(|u| u.parse::<ServerAddr>().map_err(|e| format!("{u}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(10))
        .connect(addrs)
        .await
        .map_err(|e| format!("connect to {}: {e}", urls.join(",")))?;
    Ok(async_nats::jetstream::ContextBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .max_ack_inflight(in_flight.max(1))
        .build(client))
}

/// How a stream of the run stores its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    File,
    Memory,
}

impl Storage {
    pub fn name(self) -> &'static str {
        match self {
            Storage::File => "file",
            Storage::Memory => "memory",
        }
    }
}

/// Creates stream `name` taking `subjects`, as the forwarder creates its
/// target (replicas, storage, duplicate window), with fast-ingest batches
/// allowed if `batched`.
pub async fn create_stream(
    js: &Context,
    name: &str,
    subjects: Vec<String>,
    replicas: usize,
    storage: Storage,
    batched: bool,
) -> Result<(), String> {
    let config = Config {
        name: name.to_owned(),
        subjects,
        num_replicas: replicas,
        storage: match storage {
            Storage::File => StorageType::File,
            Storage::Memory => StorageType::Memory,
        },
        duplicate_window: DUPLICATE_WINDOW,
        allow_batch_publish: batched,
        ..Default::default()
    };
    js.create_stream(config)
        .await
        .map(drop)
        .map_err(|e| format!("create JetStream stream {name}: {e}"))
}

/// How many messages stream `name` holds; `None` if it does not exist (or
/// the cluster does not answer now).
pub async fn stored(js: &Context, name: &str) -> Option<u64> {
    // One request: the stream's info as looked up is fresh.
    let s = js.get_stream(name).await.ok()?;
    Some(s.cached_info().state.messages)
}

/// Waits (at most `within`) until stream `name` exists.
pub async fn wait_exists(js: &Context, name: &str, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    while stored(js, name).await.is_none() {
        if Instant::now() >= deadline {
            return Err(format!(
                "the JetStream stream {name} does not exist after {within:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Deletes the run's streams (a running cluster keeps nothing of the run).
pub async fn delete(js: &Context, names: &[String]) {
    for n in names {
        let _ = js.delete_stream(n).await;
    }
}

/// The headers the forwarder puts on a message of `stream` from
/// `producer` (daemon/FORWARD.md), so that the direct publishes carry the
/// same bytes: the message id, the expected stream, and the Sluice-*
/// headers (offset and time as the forwarder would have them).
pub fn headers(
    target: &str,
    stream: &str,
    producer: u64,
    seq: u64,
    offset: u64,
    time_us: u64,
) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        NATS_MESSAGE_ID,
        format!("{stream}/{producer}/{seq}").as_str(),
    );
    h.insert(NATS_EXPECTED_STREAM, target);
    h.insert("Sluice-Stream", stream);
    h.insert("Sluice-Producer", producer.to_string().as_str());
    h.insert("Sluice-Seq", seq.to_string().as_str());
    h.insert("Sluice-Offset", offset.to_string().as_str());
    h.insert("Sluice-Time", time_us.to_string().as_str());
    h
}
