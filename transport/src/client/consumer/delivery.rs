//! A delivery as the caller holds it, and the inbox through which its
//! acks, nacks and extensions reach the driver.

use super::*;

/// One message delivered to this consumer. Settle it with [`ack`], or
/// [`nack`] to have it delivered again; a delivery neither acked nor
/// extended by its [`deadline`] is delivered again anyway, to this member
/// or another. Clones are the same delivery.
///
/// [`ack`]: Delivery::ack
/// [`nack`]: Delivery::nack
/// [`deadline`]: Delivery::deadline
pub struct Delivery {
    /// The record's offset in its stream.
    pub offset: u64,
    /// How many times this message has been delivered, this one included
    /// (1: the first time; more: it was nacked or its deadline passed).
    pub delivery: u32,
    /// When the daemon stored it (unix microseconds).
    pub timestamp_us: u64,
    /// The producer that published it, and the sequence number it gave it:
    /// together they identify the message across redeliveries and replays.
    pub producer: u64,
    pub seq: u64,
    pub payload: Bytes,
    /// Where acks, nacks and extends go: one per consumer, shared by every
    /// delivery (cloned, not allocated, per delivery).
    pub(super) inbox: Arc<Inbox>,
    /// Which subscription it came from: nacks and extends make sense only
    /// to that one.
    pub(super) epoch: u64,
    pub(super) received: Instant,
    /// The ack deadline, in microseconds after `received`.
    pub(super) deadline_us: Mutex<DeadlineCell>,
}

/// A delivery's ack deadline (microseconds after its receipt). Its own
/// until the delivery is first cloned; from then on shared by the clones,
/// so that an extend through one is seen by all. Deliveries are seldom
/// cloned: the common one costs no allocation.
pub(super) enum DeadlineCell {
    Own(u64),
    Shared(Arc<AtomicU64>),
}

impl Clone for Delivery {
    fn clone(&self) -> Self {
        let shared = {
            let mut cell = lock(&self.deadline_us);
            match &*cell {
                DeadlineCell::Shared(a) => a.clone(),
                DeadlineCell::Own(us) => {
                    let a = Arc::new(AtomicU64::new(*us));
                    *cell = DeadlineCell::Shared(a.clone());
                    a
                }
            }
        };
        Delivery {
            offset: self.offset,
            delivery: self.delivery,
            timestamp_us: self.timestamp_us,
            producer: self.producer,
            seq: self.seq,
            payload: self.payload.clone(),
            inbox: self.inbox.clone(),
            epoch: self.epoch,
            received: self.received,
            deadline_us: Mutex::new(DeadlineCell::Shared(shared)),
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What deliveries say, on its way to the driver.
#[derive(Debug, Clone, Copy)]
pub(super) enum Op {
    Ack {
        offset: u64,
    },
    Nack {
        offset: u64,
        epoch: u64,
        delay_ms: u64,
    },
    Extend {
        offset: u64,
        epoch: u64,
        ms: u64,
    },
}

/// The deliveries' side of the driver: what they said, in order, until the
/// driver takes it all at once.
pub(super) struct Inbox {
    state: Mutex<InboxState>,
    /// Told when the inbox stops being empty.
    pub(super) wake: Notify,
}

struct InboxState {
    ops: Vec<Op>,
    /// The driver is gone: nobody will read what is put here.
    closed: bool,
}

impl Inbox {
    pub(super) fn new() -> Self {
        Inbox {
            state: Mutex::new(InboxState {
                ops: Vec::new(),
                closed: false,
            }),
            wake: Notify::new(),
        }
    }

    pub(super) fn put(&self, op: Op) {
        self.put_all(std::iter::once(op));
    }

    /// Puts `ops` in order, under one lock.
    fn put_all(&self, ops: impl Iterator<Item = Op>) {
        let mut s = lock(&self.state);
        // A closed consumer has nobody to tell: the daemon delivers the
        // message again, as for any delivery not settled.
        if s.closed {
            return;
        }
        let first = s.ops.is_empty();
        s.ops.extend(ops);
        drop(s);
        // Whoever made it non-empty wakes the driver; the rest ride along
        // (the driver empties it only when it takes it all).
        if first {
            self.wake.notify_one();
        }
    }

    /// Swaps everything put so far with `into` (empty, kept for its
    /// capacity).
    pub(super) fn take(&self, into: &mut Vec<Op>) {
        debug_assert!(into.is_empty());
        std::mem::swap(&mut lock(&self.state).ops, into);
    }

    pub(super) fn close(&self) {
        let mut s = lock(&self.state);
        s.closed = true;
        s.ops = Vec::new();
    }
}

impl Delivery {
    /// Done with this message: the daemon will not deliver it again (once
    /// the ack is durable; see [`Consumer::sync`]). After the consumer is
    /// closed, does nothing.
    pub fn ack(&self) {
        self.inbox.put(Op::Ack {
            offset: self.offset,
        });
    }

    /// Acks each of `deliveries`, as [`ack`](Delivery::ack) on each would,
    /// but with one lock per consumer instead of one per delivery: for
    /// callers that handle messages in batches
    /// ([`Consumer::next_batch`]).
    pub fn ack_all(deliveries: &[Delivery]) {
        let mut rest = deliveries;
        while let Some(first) = rest.first() {
            // The deliveries of one consumer share its inbox.
            let n = rest
                .iter()
                .position(|d| !Arc::ptr_eq(&d.inbox, &first.inbox))
                .unwrap_or(rest.len());
            let (same, after) = rest.split_at(n);
            first
                .inbox
                .put_all(same.iter().map(|d| Op::Ack { offset: d.offset }));
            rest = after;
        }
    }

    /// Not done: deliver it again after `delay` (at once for zero).
    pub fn nack(&self, delay: Duration) {
        self.inbox.put(Op::Nack {
            offset: self.offset,
            epoch: self.epoch,
            delay_ms: millis(delay),
        });
    }

    /// Still working on it: move its ack deadline to `by` from now.
    pub fn extend(&self, by: Duration) {
        let due = Instant::now()
            .saturating_duration_since(self.received)
            .saturating_add(by);
        match &mut *lock(&self.deadline_us) {
            DeadlineCell::Own(us) => *us = micros(due),
            DeadlineCell::Shared(a) => a.store(micros(due), Relaxed),
        }
        self.inbox.put(Op::Extend {
            offset: self.offset,
            epoch: self.epoch,
            ms: millis(by),
        });
    }

    /// When the daemon delivers this message again unless it is acked or
    /// extended first (measured from its receipt here).
    pub fn deadline(&self) -> Instant {
        let us = match &*lock(&self.deadline_us) {
            DeadlineCell::Own(us) => *us,
            DeadlineCell::Shared(a) => a.load(Relaxed),
        };
        after(self.received, Duration::from_micros(us))
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("offset", &self.offset)
            .field("delivery", &self.delivery)
            .field("timestamp_us", &self.timestamp_us)
            .field("producer", &self.producer)
            .field("seq", &self.seq)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(super) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// `d` after `t`, where "never" (any `d` beyond a century, as a daemon or
/// a caller may say) is a century: `Instant` arithmetic must not overflow.
pub(super) fn after(t: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    t + d.min(CENTURY)
}
