//! Closed loop (`--rate 0`): every producer keeps `in_flight` `send_batch`
//! calls of `batch` messages outstanding, awaited in order, and starts the
//! next as each is acked: peak durable throughput. Latency is per message,
//! from the call to its ack.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use sluice_transport::client::{Producer, ProducerError};

use super::config::{IngestConfig, Length};
use super::sizes::{Payloads, Rng};
use super::window::{histogram, micros, Shared};

type Sent = tokio::task::JoinHandle<Result<std::ops::Range<u64>, ProducerError>>;

/// One producer until its count is sent or it is told to stop (a
/// producer's acks come in order, so awaiting in order loses nothing).
pub(super) async fn closed_loop(
    p: Producer,
    payloads: Payloads,
    mut rng: Rng,
    config: IngestConfig,
    shared: Arc<Shared>,
) {
    let mut left = match config.length {
        Length::CountPerProducer(n) => n,
        Length::Seconds(_) => u64::MAX,
    };
    let mut hist = histogram();
    let mut pending: VecDeque<(Instant, u64, u64, Sent)> =
        VecDeque::with_capacity(config.in_flight);
    loop {
        while pending.len() < config.in_flight && left > 0 && !shared.stop.load(Ordering::Relaxed) {
            let n = left.min(config.batch as u64);
            left -= n;
            let msgs: Vec<_> = (0..n).map(|_| payloads.pick(&mut rng)).collect();
            let bytes = msgs.iter().map(|m| m.len() as u64).sum();
            let p = p.clone();
            shared.sent.fetch_add(n, Ordering::Relaxed);
            pending.push_back((
                Instant::now(),
                n,
                bytes,
                tokio::spawn(async move { p.send_batch(msgs).await }),
            ));
        }
        let Some((t0, n, bytes, sent)) = pending.pop_front() else {
            break;
        };
        match sent.await {
            Ok(Ok(_)) => {
                let now = Instant::now();
                shared.acked(now, n, bytes);
                if shared.in_window(now) {
                    hist.saturating_record_n(micros(now - t0), n);
                }
            }
            Ok(Err(e)) => {
                shared.fail(n, &e);
                // The producer is broken: stop offering it more.
                left = 0;
            }
            Err(e) => {
                shared.fail(n, &ProducerError::Io(e.to_string()));
                left = 0;
            }
        }
    }
    shared.latency.lock().unwrap().add(&hist).ok();
}
