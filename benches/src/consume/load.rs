//! The load of the `e2e` scenario: producers publishing (closed loop
//! as fast as acks come back, or open loop at due times with the due time
//! in the payload), and consumers receiving, acking and counting each
//! message once per group. The producers are [`crate::load`]'s.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use sluice_transport::client::{Consumer, Delivery};
use tokio::sync::watch;

pub use crate::load::{histogram, stamped, Clock, STAMP_BYTES};

/// The stamp of a payload, if it has one.
pub fn stamp_of(payload: &[u8]) -> Option<u64> {
    let b: [u8; STAMP_BYTES] = payload.get(..STAMP_BYTES)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// Offsets seen, as bits from offset 0 (the phases use fresh streams,
/// whose offsets are record numbers from 0).
#[derive(Default)]
struct Seen {
    words: Vec<u64>,
}

impl Seen {
    /// True the first time `offset` is inserted.
    fn insert(&mut self, offset: u64) -> bool {
        let w = usize::try_from(offset / 64).expect("offset fits memory");
        if w >= self.words.len() {
            self.words.resize((w + 1).next_power_of_two(), 0);
        }
        let bit = 1u64 << (offset % 64);
        let new = self.words[w] & bit == 0;
        self.words[w] |= bit;
        new
    }
}

/// One group's counts, read by the coordinator while its consumer runs.
#[derive(Default)]
pub struct Tally {
    /// Every delivery, redeliveries included.
    pub deliveries: AtomicU64,
    /// Distinct offsets: each message counted once.
    pub distinct: AtomicU64,
}

/// Latency of deliveries: stamps in `[from, to)` (Unix µs) count.
#[derive(Debug, Clone, Copy)]
pub struct Stamps {
    pub clock: Clock,
    pub from: u64,
    pub to: u64,
}

/// What one group's consumer took home.
pub struct Consumed {
    /// Receive time − stamp, for the first delivery of each message whose
    /// stamp is in the window (open loop only).
    pub latency: Histogram<u64>,
    pub error: Option<String>,
}

/// Deliveries taken from the consumer at most at once.
pub(super) const BATCH: usize = 1024;

/// A consumer of one group, on one of the paths.
pub enum Link {
    Quic(Consumer),
    Ws(super::push::Ws),
    Sse(super::push::Sse),
    Grpc(super::grpc::Grpc),
}

/// What every path does with what it receives: counts each delivery, each
/// offset once, and its latency (open loop). The paths call [`add`] per
/// delivery and [`flush`] per batch, so that the tallies the coordinator
/// reads move once per batch.
///
/// [`add`]: Counter::add
/// [`flush`]: Counter::flush
pub(super) struct Counter {
    seen: Seen,
    latency: Histogram<u64>,
    stamps: Option<Stamps>,
    tally: Arc<Tally>,
    deliveries: u64,
    distinct: u64,
}

impl Counter {
    /// The time a batch arrived (Unix µs), if latency is measured: read
    /// once per batch, once all of it is in.
    pub fn now(&self) -> Option<u64> {
        self.stamps
            .as_ref()
            .map(|s| s.clock.unix_us(Instant::now()))
    }

    pub fn add(&mut self, offset: u64, payload: &[u8], now: Option<u64>) {
        self.deliveries += 1;
        if !self.seen.insert(offset) {
            return;
        }
        self.distinct += 1;
        if let (Some(s), Some(now)) = (&self.stamps, now) {
            match stamp_of(payload) {
                Some(t) if t >= s.from && t < s.to => {
                    self.latency.saturating_record(now.saturating_sub(t));
                }
                _ => {}
            }
        }
    }

    pub fn flush(&mut self) {
        self.tally.deliveries.fetch_add(self.deliveries, Relaxed);
        self.tally.distinct.fetch_add(self.distinct, Relaxed);
        (self.deliveries, self.distinct) = (0, 0);
    }
}

/// One group's consumer, on its path: receives what has arrived in
/// batches, acks each delivery at once, counts it once per offset, until
/// `stop`; then makes its acks durable and leaves. The stop signal is
/// looked at once per batch, not per message (a wait on it costs as much
/// as a delivery).
pub async fn consume(
    link: Link,
    tally: Arc<Tally>,
    stamps: Option<Stamps>,
    stop: watch::Receiver<bool>,
) -> Consumed {
    let mut count = Counter {
        seen: Seen::default(),
        latency: histogram(),
        stamps,
        tally,
        deliveries: 0,
        distinct: 0,
    };
    let result = match link {
        Link::Quic(c) => quic(c, &mut count, stop).await,
        Link::Ws(ws) => super::push::run_ws(ws, &mut count, stop).await,
        Link::Sse(sse) => super::push::run_sse(sse, &mut count, stop).await,
        Link::Grpc(g) => super::grpc::run_grpc(g, &mut count, stop).await,
    };
    count.flush();
    Consumed {
        latency: count.latency,
        error: result.err(),
    }
}

async fn quic(
    mut c: Consumer,
    count: &mut Counter,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut error = None;
    loop {
        let batch = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            b = c.next_batch(BATCH) => b,
        };
        let batch = match batch {
            Ok(b) if b.is_empty() => break,
            Ok(b) => b,
            Err(e) => {
                error = Some(format!("consumer: {e}"));
                break;
            }
        };
        // One clock reading per batch: they all arrived by now.
        let now = count.now();
        Delivery::ack_all(&batch);
        for d in &batch {
            count.add(d.offset, &d.payload, now);
        }
        count.flush();
    }
    if error.is_none() {
        if let Err(e) = c.sync().await {
            error = Some(format!("consumer sync: {e}"));
        }
    }
    c.close().await;
    error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_pad() {
        let p = stamped(1_700_000_000_123_456, 128);
        assert_eq!(p.len(), 128);
        assert_eq!(stamp_of(&p), Some(1_700_000_000_123_456));
        assert_eq!(stamped(5, 2).len(), STAMP_BYTES);
        assert_eq!(stamp_of(b"short"), None);
    }

    #[test]
    fn seen_counts_each_offset_once() {
        let mut s = Seen::default();
        assert!(s.insert(0));
        assert!(s.insert(1_000_003));
        assert!(!s.insert(0));
        assert!(!s.insert(1_000_003));
        assert!(s.insert(63) && s.insert(64));
    }
}
