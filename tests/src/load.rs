//! Producers for end-to-end tests: each publishes numbered messages in
//! batches, keeps a record of what was acked durable, and stops when told
//! to or when it has sent its count.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use bytes::Bytes;
use sluice_transport::client::{Producer, ProducerError, ProducerOptions, Transport};
use sluice_transport::proto::SenderConfig;

use crate::check::Acked;
use crate::daemon::Target;

/// Options for producers that must ride out daemon restarts and lossy
/// paths in a test: long handshake, many reconnects.
pub fn patient(transport: Transport) -> ProducerOptions {
    ProducerOptions {
        transport,
        sender: SenderConfig {
            handshake_timeout: Duration::from_secs(30),
            ..SenderConfig::default()
        },
        max_reconnects: 1000,
        ..ProducerOptions::default()
    }
}

/// The payload of message `i` of producer `p`: checkable, and of varied
/// length.
pub fn payload(p: u64, i: u64) -> Bytes {
    let mut s = format!("p{p} m{i} ");
    s.push_str(&"x".repeat((i % 13) as usize));
    Bytes::from(s)
}

/// One test producer's plan.
#[derive(Debug, Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    pub stream: String,
    pub producer: u64,
    /// Messages to send (stops earlier when `stop` is set).
    pub count: u64,
    pub batch: u64,
    pub options: ProducerOptions,
}

/// Runs `plan`, adding every acked seq to `acked`. Returns how many were
/// acked, or the first error.
pub async fn run(
    plan: Plan,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
) -> Result<u64, ProducerError> {
    let p = Producer::connect(plan.addr, &plan.stream, plan.producer, plan.options).await?;
    let mut sent = 0;
    while sent < plan.count && !stop.load(Ordering::Relaxed) {
        let n = plan.batch.min(plan.count - sent);
        let batch = (sent..sent + n)
            .map(|i| payload(plan.producer, i))
            .collect();
        let seqs = p.send_batch(batch).await?;
        assert_eq!(seqs.end - seqs.start, n, "one seq per message");
        acked
            .lock()
            .unwrap()
            .entry(plan.producer)
            .or_default()
            .extend(seqs);
        sent += n;
    }
    p.close().await?;
    Ok(sent)
}

/// Runs every plan at once until each has sent its count (within `limit`,
/// else panics); returns what was acked.
pub async fn run_all(plans: Vec<Plan>, limit: Duration) -> Acked {
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let never = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = plans
        .into_iter()
        .map(|plan| {
            let want = plan.count;
            let (acked, never) = (acked.clone(), never.clone());
            tokio::spawn(async move {
                let producer = plan.producer;
                let got = run(plan, acked, never)
                    .await
                    .unwrap_or_else(|e| panic!("producer {producer}: {e}"));
                assert_eq!(got, want, "producer {producer} sent all");
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(limit, t)
            .await
            .expect("producers finish in time")
            .expect("producer task");
    }
    let acked = acked.lock().unwrap().clone();
    acked
}

/// `count` producers (ids 1..=count) of `each` messages to `stream` at
/// `target`, in batches of `batch`, with [`patient`] options.
pub fn plans(target: &Target, stream: &str, count: u64, each: u64, batch: u64) -> Vec<Plan> {
    (1..=count)
        .map(|producer| Plan {
            addr: target.addr,
            stream: stream.into(),
            producer,
            count: each,
            batch,
            options: patient(target.transport.clone()),
        })
        .collect()
}

/// A seeded RNG for a randomized test: the seed comes from the environment
/// variable `var` when set (to replay a run), else at random; it is printed
/// either way with the command to replay it.
pub fn seeded(var: &str) -> ChaCha8Rng {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("seed {seed} (replay: {var}={seed})");
    ChaCha8Rng::seed_from_u64(seed)
}
