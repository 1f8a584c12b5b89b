//! The daemon side of one session: orders, de-duplicates and reassembles
//! messages, NACKs gaps, and acks only what its owner declares durable.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use super::config::ReceiverConfig;
use super::liveness::Liveness;
use super::reassembly::Reassembly;
use super::stats::ReceiverStats;
use super::CloseReason;
use crate::wire::{
    Close, CloseCode, DataEntry, DataFrame, Nack, NackHole, NackRange, Packet, Status, Welcome,
    HEADER_LEN, NACK_FIXED_LEN, NACK_HOLE_LEN, NACK_RANGE_LEN, TRAILER_LEN,
};

/// A complete message, handed to the owner in sequence order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub seq: u64,
    pub payload: Bytes,
}

#[derive(Debug)]
enum Pending {
    Whole { payload: Bytes, arrived: Instant },
    Partial(Reassembly),
}

impl Pending {
    fn first_arrival(&self) -> Instant {
        match self {
            Pending::Whole { arrived, .. } => *arrived,
            Pending::Partial(r) => r.first_arrival,
        }
    }
}

#[derive(Debug)]
pub struct Receiver {
    config: ReceiverConfig,
    session_id: u64,
    producer_id: u64,
    stream: String,
    nonce: u64,
    /// Next seq to hand to the owner; everything below it was delivered.
    next_expected: u64,
    /// Highest seq the owner declared durable (never above `next_expected - 1`).
    durable: u64,
    credit: u32,
    /// Out-of-order whole messages and messages under reassembly, by seq.
    pending: BTreeMap<u64, Pending>,
    reassembly_bytes: usize,
    delivered: VecDeque<Message>,
    welcome_due: bool,
    /// A STATUS is owed: at once (`status_now`) or by `status_at`.
    status_now: bool,
    status_at: Option<Instant>,
    nack_at: Option<Instant>,
    nack_due: Option<Nack>,
    liveness: Liveness,
    close_due: Option<Close>,
    closed: Option<CloseReason>,
    stats: ReceiverStats,
}

impl Receiver {
    /// Opens the receiving side of a session after a HELLO was accepted.
    /// `durable_seq` is the owner's highest durable seq for this producer and
    /// stream; the session continues after it (or after the producer's
    /// `first_seq - 1` if the producer says it will not resend below that).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: ReceiverConfig,
        session_id: u64,
        producer_id: u64,
        stream: String,
        nonce: u64,
        first_seq: u64,
        durable_seq: u64,
        credit: u32,
        now: Instant,
    ) -> Self {
        let base = durable_seq.max(first_seq.saturating_sub(1));
        let liveness = Liveness::new(
            now,
            config.heartbeat_interval,
            config.idle_timeout,
            config.initial_rtt,
        );
        Receiver {
            config,
            session_id,
            producer_id,
            stream,
            nonce,
            next_expected: base + 1,
            durable: base,
            credit,
            pending: BTreeMap::new(),
            reassembly_bytes: 0,
            delivered: VecDeque::new(),
            welcome_due: true,
            status_now: false,
            status_at: None,
            nack_at: None,
            nack_due: None,
            liveness,
            close_due: None,
            closed: None,
            stats: ReceiverStats::default(),
        }
    }

    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    pub fn producer_id(&self) -> u64 {
        self.producer_id
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    pub(crate) fn nonce(&self) -> u64 {
        self.nonce
    }

    /// Highest seq acked as durable to the producer.
    pub fn durable_seq(&self) -> u64 {
        self.durable
    }

    /// Highest seq delivered to the owner (received contiguously).
    pub fn received_seq(&self) -> u64 {
        self.next_expected - 1
    }

    pub fn credit(&self) -> u32 {
        self.credit
    }

    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    pub fn rtt(&self) -> std::time::Duration {
        self.liveness.rtt.srtt()
    }

    /// Messages and out-of-order entries held, and reassembly bytes: what the
    /// session costs in memory beyond the delivered queue.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    pub fn reassembly_bytes(&self) -> usize {
        self.reassembly_bytes
    }

    pub fn closed(&self) -> Option<&CloseReason> {
        self.closed.as_ref()
    }

    /// The next complete message in sequence order.
    pub fn poll_message(&mut self) -> Option<Message> {
        self.delivered.pop_front()
    }

    pub fn has_messages(&self) -> bool {
        !self.delivered.is_empty()
    }

    /// The owner declares every message up to `seq` durable (fdatasync done).
    /// Only now will the producer be told. A seq beyond what was delivered is
    /// an owner bug; it is clamped so that nothing undelivered is ever acked.
    pub fn mark_durable(&mut self, seq: u64) {
        debug_assert!(
            seq < self.next_expected,
            "marked undelivered seq {seq} durable"
        );
        let seq = seq.min(self.next_expected - 1);
        if seq > self.durable {
            self.durable = seq;
            self.status_now = true;
        }
    }

    /// The owner grants credit: the producer may send up to `durable + credit`.
    /// Lowering it is how a slow disk or consumer pushes back on producers.
    pub fn set_credit(&mut self, credit: u32) {
        if credit != self.credit {
            self.credit = credit;
            self.status_now = true;
        }
    }

    /// Ends the session, telling the producer why.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        if self.closed.is_none() {
            self.close_due = Some(Close {
                code,
                nonce: 0,
                reason: reason.to_owned(),
            });
            self.closed = Some(CloseReason::Local);
        }
    }

    pub(crate) fn take_close(&mut self) -> Option<Close> {
        self.close_due.take()
    }

    /// A retried HELLO for this session: the WELCOME was lost, send it again.
    pub(crate) fn on_hello_retry(&mut self, now: Instant) {
        self.liveness.heard(now);
        self.welcome_due = true;
    }

    pub(crate) fn handle_packet(&mut self, now: Instant, packet: Packet) -> bool {
        if self.closed.is_some() {
            return false;
        }
        self.liveness.heard(now);
        self.stats.datagrams_received += 1;
        match packet {
            Packet::Data(frame) => self.handle_data(now, &frame),
            Packet::Heartbeat(hb) => {
                if !hb.pong {
                    // A ping may be the producer's probe: answer with where we stand too.
                    self.status_now = true;
                }
                self.liveness.on_heartbeat(now, hb);
            }
            Packet::Close(c) => {
                self.closed = Some(CloseReason::Remote {
                    code: c.code,
                    reason: c.reason,
                });
            }
            Packet::Hello(_) | Packet::Welcome(_) | Packet::Status(_) | Packet::Nack(_) => {
                return false
            }
        }
        true
    }

    fn handle_data(&mut self, now: Instant, frame: &DataFrame) {
        let before = self.next_expected;
        for entry in frame.entries() {
            self.handle_entry(now, entry);
        }
        if self.next_expected != before {
            let at = now + self.config.ack_delay;
            self.status_at = Some(self.status_at.map_or(at, |t| t.min(at)));
        }
        if self.pending.is_empty() {
            self.nack_at = None;
        } else if self.nack_at.is_none() {
            self.nack_at = Some(now + self.config.reorder_delay);
        }
    }

    fn handle_entry(&mut self, now: Instant, entry: DataEntry) {
        let seq = entry.seq;
        if seq < self.next_expected {
            self.stats.duplicates += 1;
            // The producer did not see our STATUS: tell it again now.
            self.status_now = true;
            return;
        }
        if seq > self.durable.saturating_add(u64::from(self.credit)) {
            self.stats.over_credit += 1;
            return;
        }
        let whole = match entry.fragment {
            None => Some(entry.payload),
            Some(f) if f.offset == 0 && f.msg_len as usize == entry.payload.len() => {
                Some(entry.payload)
            }
            Some(f) => {
                self.add_fragment(now, seq, f.msg_len, f.offset, &entry.payload);
                None
            }
        };
        if let Some(payload) = whole {
            if seq == self.next_expected {
                // The common case: in order, nothing to buffer.
                if let Some(Pending::Partial(r)) = self.pending.remove(&seq) {
                    self.reassembly_bytes -= r.msg_len() as usize;
                }
                self.deliver(seq, payload);
            } else {
                match self.pending.get(&seq) {
                    Some(Pending::Whole { .. }) => self.stats.duplicates += 1,
                    other => {
                        if let Some(Pending::Partial(r)) = other {
                            self.reassembly_bytes -= r.msg_len() as usize;
                        }
                        self.pending.insert(
                            seq,
                            Pending::Whole {
                                payload,
                                arrived: now,
                            },
                        );
                    }
                }
            }
        }
        self.drain_in_order();
    }

    fn add_fragment(&mut self, now: Instant, seq: u64, msg_len: u32, offset: u32, chunk: &[u8]) {
        match self.pending.get_mut(&seq) {
            Some(Pending::Whole { .. }) => self.stats.duplicates += 1,
            Some(Pending::Partial(r)) => {
                if r.msg_len() != msg_len {
                    self.stats.inconsistent_fragments += 1;
                } else if !r.insert(offset, chunk, now) {
                    self.stats.reassembly_refused += 1;
                }
            }
            None => {
                // The head of the line is always admitted, so that a full
                // budget can never stop progress; others wait their turn.
                let over =
                    self.reassembly_bytes + msg_len as usize > self.config.max_reassembly_bytes;
                if over && seq != self.next_expected {
                    self.stats.reassembly_refused += 1;
                    return;
                }
                let mut r = Reassembly::new(msg_len, now);
                r.insert(offset, chunk, now);
                self.reassembly_bytes += msg_len as usize;
                self.pending.insert(seq, Pending::Partial(r));
            }
        }
        if let Some(Pending::Partial(r)) = self.pending.get(&seq) {
            if r.is_complete() {
                let Some(Pending::Partial(r)) = self.pending.remove(&seq) else {
                    unreachable!()
                };
                self.reassembly_bytes -= r.msg_len() as usize;
                self.pending.insert(
                    seq,
                    Pending::Whole {
                        payload: r.into_bytes(),
                        arrived: now,
                    },
                );
            }
        }
    }

    fn drain_in_order(&mut self) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.next_expected || !matches!(entry.get(), Pending::Whole { .. }) {
                break;
            }
            let (seq, pending) = entry.remove_entry();
            if let Pending::Whole { payload, .. } = pending {
                self.deliver(seq, payload);
            }
        }
    }

    fn deliver(&mut self, seq: u64, payload: Bytes) {
        self.stats.messages_delivered += 1;
        self.stats.bytes_delivered += payload.len() as u64;
        self.delivered.push_back(Message { seq, payload });
        self.next_expected = seq + 1;
    }

    /// Builds the NACK for gaps that have been open for at least the reorder
    /// delay, and says when to look again.
    fn build_nack(&mut self, now: Instant) {
        let reorder = self.config.reorder_delay;
        let room = self.config.max_datagram - HEADER_LEN - TRAILER_LEN - NACK_FIXED_LEN;
        let mut nack = Nack::default();
        let mut used = 0;
        let mut cursor = self.next_expected;
        let mut next_check: Option<Instant> = None;
        for (&seq, p) in &self.pending {
            // Evidence for the gap below `seq` is this entry's arrival: a gap
            // is only NACKed once the entry above it has waited out the
            // reorder delay, so that mere reordering costs no retransmission.
            let ripe_at = p.first_arrival() + reorder;
            if seq > cursor {
                if ripe_at <= now {
                    if used + NACK_RANGE_LEN > room {
                        break;
                    }
                    nack.ranges.push(NackRange {
                        first: cursor,
                        last: seq - 1,
                    });
                    used += NACK_RANGE_LEN;
                } else {
                    next_check = Some(next_check.map_or(ripe_at, |t| t.min(ripe_at)));
                }
            }
            if let Pending::Partial(r) = p {
                let quiet_at = r.last_arrival + reorder;
                if quiet_at <= now {
                    for (offset, len) in r.holes() {
                        if used + NACK_HOLE_LEN > room {
                            break;
                        }
                        nack.holes.push(NackHole { seq, offset, len });
                        used += NACK_HOLE_LEN;
                    }
                } else {
                    next_check = Some(next_check.map_or(quiet_at, |t| t.min(quiet_at)));
                }
            }
            cursor = seq + 1;
        }
        let renack = now + self.liveness.rtt.timeout(reorder);
        if nack.ranges.is_empty() && nack.holes.is_empty() {
            self.nack_at = if self.pending.is_empty() {
                None
            } else {
                next_check.or(Some(renack))
            };
        } else {
            self.stats.nacks_sent += 1;
            self.nack_due = Some(nack);
            // Ask again after a round trip if the retransmission is lost too;
            // sooner for gaps that were not ripe yet.
            self.nack_at = Some(next_check.map_or(renack, |t| t.min(renack)));
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.closed.is_some() {
            return None;
        }
        let mut t = self.liveness.deadline();
        for d in [self.status_at, self.nack_at].into_iter().flatten() {
            t = t.min(d);
        }
        // Output already owed (WELCOME, NACK, an immediate STATUS) needs no
        // timer: the driver calls poll_transmit after every event.
        Some(t)
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        if self.liveness.is_dead(now) {
            self.closed = Some(CloseReason::TimedOut);
            self.close_due = Some(Close {
                code: CloseCode::TimedOut,
                nonce: 0,
                reason: "no packet within the idle timeout".into(),
            });
            return;
        }
        if self.nack_at.is_some_and(|t| t <= now) {
            self.build_nack(now);
        }
    }

    /// Writes the next control packet to send into `out`, if any.
    pub(crate) fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        if self.closed.is_some() {
            return false;
        }
        let packet = if self.welcome_due {
            self.welcome_due = false;
            Packet::Welcome(Welcome {
                nonce: self.nonce,
                durable_seq: self.durable,
                credit: self.credit,
            })
        } else if let Some(nack) = self.nack_due.take() {
            Packet::Nack(nack)
        } else if self.status_now || self.status_at.is_some_and(|t| t <= now) {
            self.status_now = false;
            self.status_at = None;
            self.stats.statuses_sent += 1;
            Packet::Status(Status {
                durable_seq: self.durable,
                received_seq: self.next_expected - 1,
                credit: self.credit,
            })
        } else if let Some(hb) = self.liveness.poll(now) {
            Packet::Heartbeat(hb)
        } else {
            return false;
        };
        packet.encode(self.session_id, out);
        true
    }
}
