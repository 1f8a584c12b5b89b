//! Open loop (`--rate R`): messages are scheduled at `R` per second in
//! total (round-robin over the producers) by one pacing thread, each sent
//! at its due time (`batch` messages per call, 1 by default), and latency
//! runs from the message's **due** time to its durable ack, so that a stall
//! of the daemon, the harness or the pacer is counted against every message
//! that should have gone out during it (no coordinated omission).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use sluice_transport::client::Producer;

use super::config::{IngestConfig, Length};
use super::sizes::{Payloads, Rng};
use super::window::{histogram, micros, Shared};

pub(super) type Calls = tokio::sync::mpsc::UnboundedSender<tokio::task::JoinHandle<()>>;

/// The pacing thread. Message `i` is due at `start + i/rate`, goes to
/// producer `i % producers` and gets the `i`th size drawn from `rng`; each
/// producer's messages are handed over `batch` at a time, when the batch's
/// last one is due. Returns how late each hand-over in the window was.
#[allow(clippy::too_many_arguments)]
pub(super) fn pace(
    config: &IngestConfig,
    producers: Vec<Producer>,
    payloads: Payloads,
    mut rng: Rng,
    shared: Arc<Shared>,
    rt: tokio::runtime::Handle,
    calls: Calls,
    start: Instant,
) -> Histogram<u64> {
    let n = producers.len();
    let total = match config.length {
        Length::CountPerProducer(c) => c.saturating_mul(n as u64),
        Length::Seconds(_) => u64::MAX,
    };
    let interval = 1.0 / config.rate;
    let mut lag = histogram();
    let mut batches: Vec<Vec<(Instant, Bytes)>> = vec![Vec::with_capacity(config.batch); n];
    let mut i = 0u64;
    let mut hand_over = |k: usize, batch: Vec<(Instant, Bytes)>, now: Instant| {
        // Handed over when its last message is due.
        let Some((last, _)) = batch.last() else {
            return;
        };
        if shared.in_window(*last) {
            lag.saturating_record(micros(now.saturating_duration_since(*last)));
        }
        let (dues, msgs): (Vec<Instant>, Vec<Bytes>) = batch.into_iter().unzip();
        let bytes = msgs.iter().map(|m| m.len() as u64).sum();
        shared.sent.fetch_add(dues.len() as u64, Ordering::Relaxed);
        let (p, shared) = (producers[k].clone(), shared.clone());
        let call = rt.spawn(async move {
            let r = p.send_batch(msgs).await;
            let now = Instant::now();
            match r {
                Ok(_) => {
                    shared.acked(now, dues.len() as u64, bytes);
                    let mut h = shared.latency.lock().unwrap();
                    for d in dues.iter().filter(|d| shared.in_window(**d)) {
                        h.saturating_record(micros(now - *d));
                    }
                }
                Err(e) => shared.fail(dues.len() as u64, &e),
            }
        });
        let _ = calls.send(call);
    };
    while i < total && !shared.stop.load(Ordering::Relaxed) {
        // Runs on past the window until told to stop, so that the window's
        // end finds it (and its CPU time) still there.
        let due = start + Duration::from_secs_f64(i as f64 * interval);
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
            continue;
        }
        // Everything due by now (a late wake-up sends a burst).
        let k = (i % n as u64) as usize;
        batches[k].push((due, payloads.pick(&mut rng)));
        i += 1;
        if batches[k].len() >= config.batch {
            let b = std::mem::replace(&mut batches[k], Vec::with_capacity(config.batch));
            hand_over(k, b, now);
        }
    }
    // Partial batches go out as they are.
    let now = Instant::now();
    for (k, b) in batches.into_iter().enumerate() {
        hand_over(k, b, now);
    }
    lag
}

/// Waits for the open loop's calls, in the order they were made.
pub(super) async fn collect(
    mut calls: tokio::sync::mpsc::UnboundedReceiver<tokio::task::JoinHandle<()>>,
) {
    while let Some(c) = calls.recv().await {
        let _ = c.await;
    }
}
