//! The daemon side of one session: orders, de-duplicates and reassembles
//! messages, NACKs gaps, and acks only what its owner declares durable.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

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

/// A message above the head of the line: complete, or under reassembly.
#[derive(Debug)]
struct Pending {
    body: Body,
    /// When the first piece of it arrived: the evidence that the messages
    /// below it are missing rather than merely late.
    arrived: Instant,
    /// When the gap directly below this entry was last NACKed.
    gap_nacked_at: Option<Instant>,
}

#[derive(Debug)]
enum Body {
    Whole(Bytes),
    Partial(Reassembly),
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
    /// Highest `durable + credit` ever granted. Lowering credit cannot recall
    /// what the producer already sent under an earlier grant, so data up to
    /// here is accepted; only NACKs keep to the current grant.
    granted: u64,
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
    /// Largest reordering seen lately: how long after the message above a
    /// gap the gap's own message still arrived, unasked. NACKs wait a little
    /// longer than this, so a path that reorders does not cause spurious
    /// retransmissions. Decays, so one odd delay does not slow recovery forever.
    reorder_seen: Duration,
    /// Lowest seq whose fragments were refused for lack of reassembly budget
    /// since the last NACK: asking for it (or anything above) again at once
    /// would only have it refused again, so the next NACK stops below it.
    refused_from: Option<u64>,
    liveness: Liveness,
    close_due: Option<Close>,
    closed: Option<CloseReason>,
    stats: ReceiverStats,
    /// Gaps repaired since the owner last took them ([`take_repairs`]):
    /// bounded, the excess is not timed (the counters still count it).
    ///
    /// [`take_repairs`]: Receiver::take_repairs
    repairs: Vec<Repair>,
}

/// A gap NACKed and then filled: when it was first seen (the message above
/// it arrived) and when its retransmission arrived. What loss costs the
/// producer in time is from `seen` to the durable mark passing `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repair {
    pub seq: u64,
    pub seen: Instant,
    pub repaired: Instant,
}

/// Most repairs kept between two [`Receiver::take_repairs`].
const MAX_REPAIRS_HELD: usize = 1024;

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
            granted: base.saturating_add(u64::from(credit)),
            pending: BTreeMap::new(),
            reassembly_bytes: 0,
            delivered: VecDeque::new(),
            welcome_due: true,
            status_now: false,
            status_at: None,
            nack_at: None,
            nack_due: None,
            refused_from: None,
            reorder_seen: Duration::ZERO,
            liveness,
            close_due: None,
            closed: None,
            stats: ReceiverStats::default(),
            repairs: Vec::new(),
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

    /// The gaps repaired since the last call, in the order they were
    /// filled (at most [`MAX_REPAIRS_HELD`] of them: an owner that takes
    /// them with each delivery sees every one).
    pub fn take_repairs(&mut self) -> Vec<Repair> {
        std::mem::take(&mut self.repairs)
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
            self.update_granted();
        }
        self.debug_check_window();
    }

    /// The owner grants credit: the producer may send up to `durable + credit`.
    /// Lowering it is how a slow disk or consumer pushes back on producers.
    pub fn set_credit(&mut self, credit: u32) {
        if credit != self.credit {
            self.credit = credit;
            self.status_now = true;
            self.update_granted();
        }
        self.debug_check_window();
    }

    fn update_granted(&mut self) {
        self.granted = self
            .granted
            .max(self.durable.saturating_add(u64::from(self.credit)));
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
            self.nack_at = Some(now + self.reorder_delay());
        }
        self.debug_check_window();
    }

    /// The window's rules, in debug builds: nothing undelivered is acked,
    /// the grant never shrinks below `durable + credit`, and what waits
    /// above the head of the line lies within the grant (a complete
    /// message at the head would have been delivered). Cheap: the ends of
    /// `pending` only.
    fn debug_check_window(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        assert!(
            self.durable < self.next_expected,
            "receiver: durable {} not delivered (next {})",
            self.durable,
            self.next_expected
        );
        assert!(
            self.granted >= self.durable.saturating_add(u64::from(self.credit)),
            "receiver: grant {} below durable {} + credit {}",
            self.granted,
            self.durable,
            self.credit
        );
        if let Some((&first, p)) = self.pending.first_key_value() {
            assert!(
                first > self.next_expected
                    || (first == self.next_expected && matches!(p.body, Body::Partial(_))),
                "receiver: pending {first} at or below the head of the line {}",
                self.next_expected
            );
        }
        if let Some((&last, _)) = self.pending.last_key_value() {
            assert!(
                last <= self.granted,
                "receiver: pending {last} past the grant {}",
                self.granted
            );
        }
        assert!(
            !self.pending.is_empty() || self.reassembly_bytes == 0,
            "receiver: reassembly bytes with nothing under reassembly"
        );
    }

    fn handle_entry(&mut self, now: Instant, entry: DataEntry) {
        let seq = entry.seq;
        if seq < self.next_expected {
            self.stats.duplicates += 1;
            // The producer did not see our STATUS: tell it again now.
            self.status_now = true;
            return;
        }
        if seq > self.granted {
            self.stats.over_credit += 1;
            return;
        }
        match entry.fragment {
            Some(f) if f.offset != 0 || f.msg_len as usize != entry.payload.len() => {
                self.add_fragment(now, seq, f.msg_len, f.offset, &entry.payload)
            }
            _ if seq == self.next_expected && self.pending.is_empty() => {
                // The common case: in order, nothing buffered, nothing to look up.
                self.deliver(seq, entry.payload);
                return;
            }
            _ => self.add_whole(now, seq, entry.payload),
        }
        self.drain_in_order();
    }

    /// The reorder delay in force: the configured floor, or a quarter more
    /// than the reordering seen lately, up to the configured ceiling.
    fn reorder_delay(&self) -> Duration {
        (self.reorder_seen * 5 / 4).clamp(self.config.reorder_delay, self.config.max_reorder_delay)
    }

    /// A message arriving below others that are already here filled a gap.
    /// If we had not asked for it yet (or only just), it was reordered, not
    /// lost: remember by how long it trailed the message above the gap.
    fn note_gap_fill(&mut self, now: Instant, seq: u64) {
        let Some((_, above)) = self.pending.range(seq + 1..).next() else {
            return;
        };
        if above.gap_nacked_at.is_some() {
            self.stats.recovered += 1;
            if self.repairs.len() < MAX_REPAIRS_HELD {
                self.repairs.push(Repair {
                    seq,
                    seen: above.arrived,
                    repaired: now,
                });
            }
        }
        let asked_long_ago = above
            .gap_nacked_at
            .is_some_and(|t| now.saturating_duration_since(t) >= self.liveness.rtt.srtt() / 2);
        if !asked_long_ago {
            let trailed = now.saturating_duration_since(above.arrived);
            self.reorder_seen = self.reorder_seen.max(trailed);
        }
    }

    fn add_whole(&mut self, now: Instant, seq: u64, payload: Bytes) {
        match self.pending.get_mut(&seq) {
            Some(Pending {
                body: Body::Whole(_),
                ..
            }) => self.stats.duplicates += 1,
            Some(p) => {
                if let Body::Partial(r) = &p.body {
                    self.reassembly_bytes -= r.msg_len() as usize;
                }
                p.body = Body::Whole(payload);
            }
            None => {
                self.note_gap_fill(now, seq);
                self.pending.insert(
                    seq,
                    Pending {
                        body: Body::Whole(payload),
                        arrived: now,
                        gap_nacked_at: None,
                    },
                );
            }
        }
    }

    fn add_fragment(&mut self, now: Instant, seq: u64, msg_len: u32, offset: u32, chunk: &[u8]) {
        let Some(p) = self.pending.get_mut(&seq) else {
            // The head of the line is always admitted, so that a full budget
            // can never stop progress; others wait their turn.
            let over = self.reassembly_bytes + msg_len as usize > self.config.max_reassembly_bytes;
            if over && seq != self.next_expected {
                self.stats.reassembly_refused += 1;
                self.refused_from = Some(self.refused_from.map_or(seq, |r| r.min(seq)));
                return;
            }
            self.note_gap_fill(now, seq);
            let mut r = Reassembly::new(msg_len, now);
            r.insert(offset, chunk, now);
            self.reassembly_bytes += msg_len as usize;
            self.pending.insert(
                seq,
                Pending {
                    body: Body::Partial(r),
                    arrived: now,
                    gap_nacked_at: None,
                },
            );
            return;
        };
        let Body::Partial(r) = &mut p.body else {
            self.stats.duplicates += 1;
            return;
        };
        if r.msg_len() != msg_len {
            self.stats.inconsistent_fragments += 1;
        } else if !r.insert(offset, chunk, now) {
            self.stats.reassembly_refused += 1;
        } else if r.is_complete() {
            self.reassembly_bytes -= msg_len as usize;
            let Body::Partial(r) = std::mem::replace(&mut p.body, Body::Whole(Bytes::new())) else {
                unreachable!("matched Partial above")
            };
            p.body = Body::Whole(r.into_bytes());
        }
    }

    fn drain_in_order(&mut self) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.next_expected || !matches!(entry.get().body, Body::Whole(_)) {
                break;
            }
            let (seq, p) = entry.remove_entry();
            if let Body::Whole(payload) = p.body {
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

    /// Builds the NACK for gaps and holes that are ripe: open for at least the
    /// reorder delay (so that mere reordering costs no retransmission), and
    /// not NACKed within the last re-NACK interval (so that a retransmission
    /// in flight is not asked for twice). Then says when to look again.
    fn build_nack(&mut self, now: Instant) {
        let reorder = self.reorder_delay();
        let renack = self.liveness.rtt.timeout(reorder);
        self.reorder_seen = self.reorder_seen * 15 / 16;
        let room = self.config.max_datagram - HEADER_LEN - TRAILER_LEN - NACK_FIXED_LEN;
        // Gaps are asked for only within the current grant (and below what
        // the reassembly budget just refused); holes of messages already
        // admitted are always asked for, their memory is spent anyway.
        let limit = self.durable.saturating_add(u64::from(self.credit));
        let refused_from = self.refused_from.take().unwrap_or(u64::MAX);
        let mut nack = Nack::default();
        let mut used = 0;
        let mut cursor = self.next_expected;
        let mut next_check: Option<Instant> = None;
        let mut later = |t: Instant| next_check = Some(next_check.map_or(t, |n: Instant| n.min(t)));
        for (&seq, p) in self.pending.iter_mut() {
            if used + NACK_RANGE_LEN.max(NACK_HOLE_LEN) > room {
                break;
            }
            if seq > cursor && cursor <= limit && cursor < refused_from {
                let ripe_at = ripe_time(p.arrived, reorder, p.gap_nacked_at, renack);
                if ripe_at <= now {
                    nack.ranges.push(NackRange {
                        first: cursor,
                        last: (seq - 1).min(limit).min(refused_from - 1),
                    });
                    used += NACK_RANGE_LEN;
                    p.gap_nacked_at = Some(now);
                } else {
                    later(ripe_at);
                }
            }
            if let Body::Partial(r) = &mut p.body {
                let ripe_at = ripe_time(r.last_arrival, reorder, r.holes_nacked_at, renack);
                if ripe_at <= now {
                    for (offset, len) in r.holes() {
                        if used + NACK_HOLE_LEN > room {
                            break;
                        }
                        nack.holes.push(NackHole { seq, offset, len });
                        used += NACK_HOLE_LEN;
                    }
                    r.holes_nacked_at = Some(now);
                } else {
                    later(ripe_at);
                }
            }
            cursor = seq + 1;
        }
        if !nack.ranges.is_empty() || !nack.holes.is_empty() {
            self.stats.nacks_sent += 1;
            self.nack_due = Some(nack);
        }
        self.nack_at = if self.pending.is_empty() {
            None
        } else {
            // Also covers whatever did not fit in this NACK or was held back
            // for the reassembly budget: look again after a round trip.
            Some(next_check.map_or(now + renack, |t| t.min(now + renack)))
        };
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

/// When a gap (or a message's holes) may be NACKed: once its evidence is a
/// reorder delay old, and a re-NACK interval after it was last NACKed.
fn ripe_time(
    evidence: Instant,
    reorder: Duration,
    nacked_at: Option<Instant>,
    renack: Duration,
) -> Instant {
    let first = evidence + reorder;
    nacked_at.map_or(first, |t| first.max(t + renack))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::DataWriter;

    fn receiver(now: Instant) -> Receiver {
        Receiver::new(
            ReceiverConfig::default(),
            1,
            1,
            "s".into(),
            1,
            1,
            0,
            100,
            now,
        )
    }

    fn data(seq: u64) -> Packet {
        let mut out = Vec::new();
        let mut w = DataWriter::new(&mut out, 1, 1452);
        assert!(w.push_whole(seq, b"x"));
        w.finish();
        Packet::decode(&Bytes::from(out)).unwrap().packet
    }

    #[test]
    fn gaps_are_nacked_after_the_reorder_delay_and_reordering_raises_it() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut r = receiver(t);
        // Seq 1 trails seq 2 by 3 ms, unasked: reordering, not loss.
        r.handle_packet(t, data(2));
        r.handle_packet(t + ms(3), data(1));
        assert_eq!(r.received_seq(), 2);
        assert_eq!(r.reorder_delay(), ms(3) * 5 / 4);
        // A new gap (seq 3) is not NACKed after the 1 ms floor any more...
        r.handle_packet(t + ms(4), data(4));
        r.handle_timeout(t + ms(6));
        assert!(r.nack_due.is_none());
        // ...but is once the learned delay has passed.
        r.handle_timeout(t + ms(8));
        let nack = r.nack_due.take().expect("NACK after the learned delay");
        assert_eq!(nack.ranges, vec![NackRange { first: 3, last: 3 }]);
        // The estimate decays with each NACK round.
        assert!(r.reorder_seen < ms(3));
    }

    /// A gap filled after its NACK is a repair, timed from the arrival of
    /// the message above it; one filled unasked (reordering) is not.
    #[test]
    fn repairs_are_timed_from_the_gap_first_seen() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut r = receiver(t);
        r.handle_packet(t, data(2));
        r.handle_packet(t + ms(1), data(1));
        assert!(r.take_repairs().is_empty(), "reordered, not repaired");
        r.handle_packet(t + ms(2), data(4));
        r.handle_timeout(t + ms(10));
        assert!(r.nack_due.take().is_some(), "seq 3 NACKed");
        r.handle_packet(t + ms(12), data(3));
        assert_eq!(
            r.take_repairs(),
            vec![Repair {
                seq: 3,
                seen: t + ms(2),
                repaired: t + ms(12)
            }]
        );
        assert!(r.take_repairs().is_empty(), "taken once");
        assert_eq!(r.stats().recovered, 1);
    }

    #[test]
    fn nothing_is_acked_before_the_owner_marks_it_durable() {
        let t = Instant::now();
        let mut r = receiver(t);
        let mut out = Vec::new();
        while r.poll_transmit(t, &mut out) {}
        r.handle_packet(t, data(1));
        r.handle_packet(t, data(2));
        assert_eq!(r.poll_message().map(|m| m.seq), Some(1));
        let later = t + Duration::from_millis(5);
        while r.poll_transmit(later, &mut out) {
            if let Ok(Packet::Status(s)) =
                Packet::decode(&Bytes::from(out.clone())).map(|d| d.packet)
            {
                assert_eq!(s.durable_seq, 0, "acked before mark_durable");
                assert_eq!(s.received_seq, 2);
            }
        }
        r.mark_durable(1);
        let mut acked = None;
        while r.poll_transmit(later, &mut out) {
            if let Ok(Packet::Status(s)) =
                Packet::decode(&Bytes::from(out.clone())).map(|d| d.packet)
            {
                acked = Some(s.durable_seq);
            }
        }
        assert_eq!(acked, Some(1));
    }
}
