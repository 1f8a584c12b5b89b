//! The load of the `e2e` scenario: producers publishing (closed loop
//! as fast as acks come back, or open loop at due times with the due time
//! in the payload), and consumers receiving, acking and counting each
//! message once per group.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use sluice_transport::client::{Consumer, ConsumerError, Delivery, Producer, ProducerError};
use tokio::sync::watch;

/// Bytes at the start of an open-loop payload: the message's due time,
/// microseconds since the Unix epoch, big-endian.
pub const STAMP_BYTES: usize = 8;

/// A latency histogram: 1 µs to an hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Unix time as read once, advanced by the monotonic clock: stamps and
/// receive times are comparable and do not jump with the wall clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    at: Instant,
    unix_us: u64,
}

impl Clock {
    pub fn now() -> Clock {
        Clock {
            at: Instant::now(),
            unix_us: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, micros),
        }
    }

    /// `t` in microseconds since the Unix epoch.
    pub fn unix_us(&self, t: Instant) -> u64 {
        match t.checked_duration_since(self.at) {
            Some(d) => self.unix_us + micros(d),
            None => self.unix_us.saturating_sub(micros(self.at - t)),
        }
    }
}

/// A payload of `size` bytes (at least the stamp) starting with `unix_us`.
pub fn stamped(unix_us: u64, size: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(STAMP_BYTES));
    b.put_u64(unix_us);
    b.resize(size.max(STAMP_BYTES), 0x42);
    b.freeze()
}

/// The stamp of a payload, if it has one.
pub fn stamp_of(payload: &[u8]) -> Option<u64> {
    let b: [u8; STAMP_BYTES] = payload.get(..STAMP_BYTES)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// How often a producer held back by the gate looks again.
const GATE_POLL: Duration = Duration::from_micros(200);

/// What the producers of a phase share with its coordinator.
pub struct Publish {
    pub sent: AtomicU64,
    /// Durably acked.
    pub acked: AtomicU64,
    pub errors: AtomicU64,
    pub first_error: Mutex<Option<String>>,
    pub stop: AtomicBool,
    /// Latency is recorded for messages sent (closed loop) or due (open
    /// loop) in `[window.0, window.1)`.
    pub window: (Instant, Instant),
    /// Durable-ack latency: closed loop from the call, open loop from the
    /// due time.
    pub ack_latency: Mutex<Histogram<u64>>,
    /// Closed loop: no new call while more than this many messages sent
    /// have not reached every one of these groups (`None`: free-running).
    pub gate: Option<(u64, Vec<Arc<Tally>>)>,
}

impl Publish {
    pub fn new(window: (Instant, Instant)) -> Publish {
        Publish {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            stop: AtomicBool::new(false),
            window,
            ack_latency: Mutex::new(histogram()),
            gate: None,
        }
    }

    /// Whether the slowest group is close enough behind for another call.
    fn may_send(&self) -> bool {
        let Some((ahead, groups)) = &self.gate else {
            return true;
        };
        let slowest = groups
            .iter()
            .map(|t| t.distinct.load(Relaxed))
            .min()
            .unwrap_or(u64::MAX);
        self.sent.load(Relaxed).saturating_sub(slowest) <= *ahead
    }

    pub fn in_window(&self, t: Instant) -> bool {
        t >= self.window.0 && t < self.window.1
    }

    fn fail(&self, n: u64, e: &ProducerError) {
        self.errors.fetch_add(n, Relaxed);
        self.first_error
            .lock()
            .unwrap()
            .get_or_insert_with(|| format!("producer: {e}"));
    }

    /// Every message sent has been acked or failed.
    pub fn settled(&self) -> bool {
        self.acked.load(Relaxed) + self.errors.load(Relaxed) >= self.sent.load(Relaxed)
    }
}

/// One producer, closed loop: `in_flight` calls of `batch` messages
/// outstanding, awaited in order (a producer's acks come in order), a new
/// one made as each is acked (and the gate, if any, is open), until told
/// to stop. The messages of a call are queued when it is made, so the
/// calls waiting here all progress.
pub async fn closed_loop(
    p: Producer,
    payload: Bytes,
    batch: usize,
    in_flight: usize,
    publish: Arc<Publish>,
) {
    let mut hist = histogram();
    let mut pending = VecDeque::with_capacity(in_flight);
    let mut broken = false;
    loop {
        while pending.len() < in_flight
            && !broken
            && !publish.stop.load(Relaxed)
            && publish.may_send()
        {
            publish.sent.fetch_add(batch as u64, Relaxed);
            let call = p.send_batch(vec![payload.clone(); batch]);
            pending.push_back((Instant::now(), Box::pin(call)));
        }
        let Some((t0, call)) = pending.pop_front() else {
            if broken || publish.stop.load(Relaxed) {
                break;
            }
            // The gate is shut: the groups are catching up.
            tokio::time::sleep(GATE_POLL).await;
            continue;
        };
        match call.await {
            Ok(_) => {
                let now = Instant::now();
                publish.acked.fetch_add(batch as u64, Relaxed);
                if publish.in_window(t0) {
                    hist.saturating_record_n(micros(now - t0), batch as u64);
                }
            }
            Err(e) => {
                publish.fail(batch as u64, &e);
                broken = true;
            }
        }
    }
    publish.ack_latency.lock().unwrap().add(&hist).ok();
}

/// The open loop's pacing thread: message `i` is due at
/// `start + i / rate`, goes to producer `i % producers` when due (one per
/// call) carrying its due time, and its ack latency runs from the due time
/// (a stall anywhere counts against every message that should have gone
/// out during it). Runs until told to stop; returns how late each
/// hand-over in the window was.
pub fn pace(
    producers: Vec<Producer>,
    size: usize,
    rate: f64,
    clock: Clock,
    publish: Arc<Publish>,
    rt: tokio::runtime::Handle,
    start: Instant,
) -> Histogram<u64> {
    let mut lag = histogram();
    let mut i = 0u64;
    while !publish.stop.load(Relaxed) {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
            continue;
        }
        if publish.in_window(due) {
            lag.saturating_record(micros(now - due));
        }
        let p = producers[(i % producers.len() as u64) as usize].clone();
        let payload = stamped(clock.unix_us(due), size);
        publish.sent.fetch_add(1, Relaxed);
        let publish = publish.clone();
        rt.spawn(async move {
            match p.send(payload).await {
                Ok(_) => {
                    let now = Instant::now();
                    publish.acked.fetch_add(1, Relaxed);
                    if publish.in_window(due) {
                        let mut h = publish.ack_latency.lock().unwrap();
                        h.saturating_record(micros(now - due));
                    }
                }
                Err(e) => publish.fail(1, &e),
            }
        });
        i += 1;
    }
    lag
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
const BATCH: usize = 1024;

/// One group's consumer: receives what has arrived in batches, acks each
/// delivery at once, counts it once per offset, until `stop`; then makes
/// its acks durable and leaves. The stop signal is looked at once per
/// batch, not per message (a wait on it costs as much as a delivery).
pub async fn consume(
    mut c: Consumer,
    tally: Arc<Tally>,
    stamps: Option<Stamps>,
    mut stop: watch::Receiver<bool>,
) -> Consumed {
    let mut seen = Seen::default();
    let mut latency = histogram();
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
        let now = stamps.as_ref().map(|s| s.clock.unix_us(Instant::now()));
        Delivery::ack_all(&batch);
        let mut distinct = 0;
        for d in &batch {
            if !seen.insert(d.offset) {
                continue;
            }
            distinct += 1;
            if let (Some(s), Some(now)) = (&stamps, now) {
                match stamp_of(&d.payload) {
                    Some(t) if t >= s.from && t < s.to => {
                        latency.saturating_record(now.saturating_sub(t));
                    }
                    _ => {}
                }
            }
        }
        tally.deliveries.fetch_add(batch.len() as u64, Relaxed);
        tally.distinct.fetch_add(distinct, Relaxed);
    }
    if error.is_none() {
        if let Err(e) = c.sync().await {
            error = Some(format!("consumer sync: {e}"));
        }
    }
    c.close().await;
    Consumed { latency, error }
}

/// Why a consumer could not join.
pub fn join_error(group: &str, e: &ConsumerError) -> String {
    format!("consumer group {group}: {e}")
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

    #[test]
    fn clock_maps_instants_to_unix_time() {
        let c = Clock::now();
        let later = c.at + Duration::from_millis(1500);
        assert_eq!(c.unix_us(later) - c.unix_us(c.at), 1_500_000);
        assert!(c.unix_us(c.at) > 1_600_000_000_000_000);
    }
}
