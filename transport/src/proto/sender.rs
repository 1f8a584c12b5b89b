//! The producer side of one session: numbers messages, packs them into
//! datagrams within credit, retransmits what is NACKed or probed, and frees
//! messages once the receiver says they are durable.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use thiserror::Error;

use super::config::SenderConfig;
use super::liveness::Liveness;
use super::stats::{DropReason, SenderStats};
use super::CloseReason;
use crate::wire::{
    Close, CloseCode, DataWriter, Hello, Nack, Packet, Status, Welcome, HEADER_LEN, TRAILER_LEN,
};

/// Per-message bookkeeping charged against `max_unacked_bytes` on top of the
/// payload, so that a flood of empty messages is bounded too.
const MESSAGE_OVERHEAD: usize = 64;
/// A run header plus a whole-entry header: what a whole message costs beyond
/// its payload in a datagram that has nothing else in it.
const WHOLE_ENTRY_OVERHEAD: usize = 10 + 3 + TRAILER_LEN;

/// Longest wait between two HELLOs.
const MAX_HELLO_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// How a sender opens its session.
#[derive(Debug, Clone)]
pub struct Connect {
    /// Stable across restarts of the producer: the key of idempotence.
    pub producer_id: u64,
    pub stream: String,
    /// The highest seq this producer knows to be durable (0: none yet); the
    /// messages pushed get seqs from the one after it. Use it when carrying
    /// unacked messages over to a new session: any of them the receiver
    /// already holds durably is the same message, acked again, stored once.
    /// With `None` the producer does not know (a fresh start), asks the
    /// receiver, and `push` answers [`PushError::NotReady`] until the session
    /// is established. Either way, numbering continues after the receiver's
    /// durable seq if that is further along.
    pub resume_after: Option<u64>,
    /// Random per connection attempt (the driver draws it).
    pub nonce: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PushError {
    #[error("the unacked buffer is full: wait for durable acks")]
    BufferFull,
    #[error("the session does not know its first sequence number yet")]
    NotReady,
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("the session is closed")]
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderEvent {
    /// The receiver welcomed us; everything up to `durable_seq` is durable.
    Connected {
        session_id: u64,
        durable_seq: u64,
    },
    /// Every message up to and including `up_to` is durable.
    Durable {
        up_to: u64,
    },
    Closed(CloseReason),
}

#[derive(Debug)]
struct Outgoing {
    payload: Bytes,
    /// Retransmissions of this message waiting in the queue: while there are
    /// any, a repeated NACK for it does not queue more.
    retx_queued: u32,
}

/// A byte range of a message to send again.
#[derive(Debug, Clone, Copy)]
struct Retx {
    seq: u64,
    offset: u32,
    len: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Handshake {
        next_hello: Instant,
        deadline: Instant,
        attempts: u32,
    },
    Established,
    Closed,
}

#[derive(Debug)]
pub struct Sender {
    config: SenderConfig,
    connect: Connect,
    phase: Phase,
    session_id: u64,
    /// Seq of `buf[0]`; everything below is durable and freed.
    base_seq: u64,
    /// Seq the next pushed message gets.
    next_seq: u64,
    buf: VecDeque<Outgoing>,
    buf_bytes: usize,
    /// First-transmission progress: message `send_seq`, bytes sent of it.
    send_seq: u64,
    send_offset: usize,
    durable_seq: u64,
    received_seq: u64,
    /// Highest seq we may send: the receiver's durable seq plus its credit.
    credit_limit: u64,
    retx: VecDeque<Retx>,
    /// Probe timer: armed while anything is unacked, restarted on progress.
    pto_base: Instant,
    pto_count: u32,
    liveness: Liveness,
    hello_sent_at: Option<Instant>,
    close_due: Option<Close>,
    events: VecDeque<SenderEvent>,
    stats: SenderStats,
    /// Since when messages wait unsent for credit (the receiver's window
    /// is used up): what a hole or a slow disk costs the producer.
    credit_wait_since: Option<Instant>,
}

impl Sender {
    /// Panics if `config` does not validate: configs come from code or are
    /// checked where they are read, so a bad one here is a programming error.
    pub fn new(config: SenderConfig, connect: Connect, now: Instant) -> Self {
        config.validate().expect("invalid SenderConfig");
        let start = connect.resume_after.unwrap_or(0) + 1;
        let liveness = Liveness::new(
            now,
            config.heartbeat_interval,
            config.idle_timeout,
            config.initial_rtt,
        );
        Sender {
            phase: Phase::Handshake {
                next_hello: now,
                deadline: now + config.handshake_timeout,
                attempts: 0,
            },
            session_id: 0,
            base_seq: start,
            next_seq: start,
            buf: VecDeque::new(),
            buf_bytes: 0,
            send_seq: start,
            send_offset: 0,
            durable_seq: start - 1,
            received_seq: start - 1,
            credit_limit: start - 1,
            retx: VecDeque::new(),
            pto_base: now,
            pto_count: 0,
            liveness,
            hello_sent_at: None,
            close_due: None,
            events: VecDeque::new(),
            stats: SenderStats::default(),
            credit_wait_since: None,
            config,
            connect,
        }
    }

    pub fn is_established(&self) -> bool {
        self.phase == Phase::Established
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// Highest seq known durable: everything at or below it survived.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// Seq the next pushed message will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes held for messages not yet durable (payload plus bookkeeping).
    pub fn unacked_bytes(&self) -> usize {
        self.buf_bytes
    }

    pub fn unacked_len(&self) -> usize {
        self.buf.len()
    }

    /// True when every pushed message is durable.
    pub fn is_drained(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    pub fn rtt(&self) -> std::time::Duration {
        self.liveness.rtt.srtt()
    }

    /// Queues a message; returns its sequence number. Never grows the buffer
    /// past `max_unacked_bytes`: that is [`PushError::BufferFull`], the
    /// backpressure callers wait on.
    pub fn push(&mut self, payload: Bytes) -> Result<u64, PushError> {
        if self.phase == Phase::Closed {
            return Err(PushError::Closed);
        }
        if self.connect.resume_after.is_none() && self.phase != Phase::Established {
            return Err(PushError::NotReady);
        }
        if payload.len() > self.config.max_message_len {
            return Err(PushError::TooLarge {
                len: payload.len(),
                max: self.config.max_message_len,
            });
        }
        let cost = payload.len() + MESSAGE_OVERHEAD;
        if self.buf_bytes + cost > self.config.max_unacked_bytes {
            return Err(PushError::BufferFull);
        }
        self.buf_bytes += cost;
        self.buf.push_back(Outgoing {
            payload,
            retx_queued: 0,
        });
        let seq = self.next_seq;
        self.next_seq += 1;
        self.debug_check_window();
        Ok(seq)
    }

    /// A new session for the same producer and stream, to replace this one
    /// after it ended (the daemon restarted, the session timed out). Every
    /// message not yet durable moves over with its seq, so the receiver
    /// stores each once whether or not it got it before; this sender is left
    /// empty.
    pub fn successor(&mut self, nonce: u64, now: Instant) -> Sender {
        let connect = Connect {
            resume_after: Some(self.durable_seq),
            nonce,
            ..self.connect.clone()
        };
        let mut next = Sender::new(self.config.clone(), connect, now);
        self.buf_bytes = 0;
        self.retx.clear();
        self.base_seq = self.next_seq;
        self.send_seq = self.next_seq;
        self.send_offset = 0;
        for m in self.buf.drain(..) {
            next.buf_bytes += m.payload.len() + MESSAGE_OVERHEAD;
            next.buf.push_back(Outgoing {
                payload: m.payload,
                retx_queued: 0,
            });
            next.next_seq += 1;
        }
        self.debug_check_window();
        next.debug_check_window();
        next
    }

    /// Whether a message of `len` bytes would be accepted by `push` now.
    pub fn can_push(&self, len: usize) -> bool {
        self.buf_bytes + len + MESSAGE_OVERHEAD <= self.config.max_unacked_bytes
    }

    /// Starts an orderly close: a CLOSE is sent and the session ends. Messages
    /// not yet durable stay unacked (the caller decides whether to wait first).
    pub fn close(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        if self.phase == Phase::Established {
            self.close_due = Some(Close {
                code: CloseCode::Normal,
                nonce: 0,
                reason: "producer closed".into(),
            });
        }
        self.finish(CloseReason::Local);
    }

    fn finish(&mut self, reason: CloseReason) {
        self.phase = Phase::Closed;
        self.events.push_back(SenderEvent::Closed(reason));
    }

    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        self.events.pop_front()
    }

    pub fn handle_datagram(&mut self, now: Instant, datagram: Bytes) {
        let decoded = match Packet::decode(&datagram) {
            Ok(d) => d,
            Err(e) => return self.stats.drops.add(e.into()),
        };
        let session = decoded.header.session_id;
        match (self.phase, decoded.packet) {
            (Phase::Closed, _) => {}
            (Phase::Handshake { attempts, .. }, Packet::Welcome(w))
                if w.nonce == self.connect.nonce =>
            {
                if attempts == 1 {
                    // An unambiguous round trip: one HELLO, its WELCOME.
                    if let Some(t) = self.hello_sent_at {
                        self.liveness.rtt.update(now.saturating_duration_since(t));
                    }
                }
                self.establish(now, session, w);
            }
            (Phase::Handshake { .. }, Packet::Close(c))
                if session == 0 && c.nonce == self.connect.nonce =>
            {
                self.finish(CloseReason::Rejected {
                    code: c.code,
                    reason: c.reason,
                });
            }
            (Phase::Established, packet) if session == self.session_id => {
                self.liveness.heard(now);
                match packet {
                    Packet::Status(s) => self.on_status(now, s),
                    Packet::Nack(n) => self.on_nack(&n),
                    Packet::Heartbeat(hb) => self.liveness.on_heartbeat(now, hb),
                    Packet::Close(c) => self.finish(CloseReason::Remote {
                        code: c.code,
                        reason: c.reason,
                    }),
                    // A retransmitted WELCOME: we are established already.
                    Packet::Welcome(_) => {}
                    Packet::Hello(_) | Packet::Data(_) => {
                        self.stats.drops.add(DropReason::Unexpected)
                    }
                }
            }
            (Phase::Established, _) => self.stats.drops.add(DropReason::UnknownSession),
            (Phase::Handshake { .. }, _) => self.stats.drops.add(DropReason::Unexpected),
        }
    }

    fn establish(&mut self, now: Instant, session_id: u64, w: Welcome) {
        self.phase = Phase::Established;
        self.session_id = session_id;
        self.liveness.heard(now);
        self.pto_base = now;
        // Whatever we hold at or below the receiver's durable seq is durable.
        self.apply_status(
            now,
            Status {
                durable_seq: w.durable_seq,
                received_seq: w.durable_seq,
                credit: w.credit,
            },
        );
        if w.durable_seq >= self.next_seq {
            // The receiver is further along than anything we pushed (we asked
            // where we stand, or restarted from an older point): number new
            // messages after it, so that none is mistaken for a duplicate.
            debug_assert!(self.buf.is_empty());
            let start = w.durable_seq + 1;
            self.base_seq = start;
            self.next_seq = start;
            self.send_seq = start;
            self.send_offset = 0;
            self.durable_seq = w.durable_seq;
            self.received_seq = w.durable_seq;
        }
        self.events.push_back(SenderEvent::Connected {
            session_id,
            durable_seq: w.durable_seq,
        });
        self.debug_check_window();
    }

    fn on_status(&mut self, now: Instant, s: Status) {
        if s.received_seq >= self.next_seq {
            // Acks for messages never pushed: a forged or confused peer.
            self.stats.drops.add(DropReason::Unexpected);
            return;
        }
        self.apply_status(now, s);
    }

    fn apply_status(&mut self, now: Instant, s: Status) {
        if s.durable_seq < self.durable_seq {
            return; // reordered, older than what we know
        }
        // Messages the receiver already holds durably from an earlier session
        // may lie beyond what this session has pushed: never past next_seq.
        let durable = s.durable_seq.min(self.next_seq - 1);
        let progress = durable > self.durable_seq || s.received_seq > self.received_seq;
        while self.base_seq <= durable {
            let m = self
                .buf
                .pop_front()
                .expect("buffer holds every seq from base_seq");
            self.buf_bytes -= m.payload.len() + MESSAGE_OVERHEAD;
            self.base_seq += 1;
        }
        if durable > self.durable_seq {
            self.durable_seq = durable;
            self.events
                .push_back(SenderEvent::Durable { up_to: durable });
        }
        self.received_seq = self.received_seq.max(s.received_seq.min(self.next_seq - 1));
        if self.send_seq < self.base_seq {
            self.send_seq = self.base_seq;
            self.send_offset = 0;
        }
        self.credit_limit = s.durable_seq.saturating_add(u64::from(s.credit));
        if let Some(since) = self.credit_wait_since {
            if !self.waits_for_credit() {
                self.credit_wait_since = None;
                self.stats.credit_stalled += now.saturating_duration_since(since);
            }
        }
        if progress {
            self.pto_count = 0;
            self.pto_base = now;
        }
        self.debug_check_window();
    }

    /// Bytes of message `seq` sent at least once so far.
    fn sent_extent(&self, seq: u64) -> usize {
        if seq < self.send_seq {
            self.buf[(seq - self.base_seq) as usize].payload.len()
        } else if seq == self.send_seq {
            self.send_offset
        } else {
            0
        }
    }

    /// Highest seq of which at least one byte has been sent, if any is held.
    fn last_sent_seq(&self) -> Option<u64> {
        let last = if self.send_offset > 0 {
            self.send_seq
        } else {
            self.send_seq - 1
        };
        (last >= self.base_seq).then_some(last)
    }

    fn on_nack(&mut self, nack: &Nack) {
        self.stats.nacks_received += 1;
        let Some(last) = self.last_sent_seq() else {
            return;
        };
        // NACK contents are peer input: clamp every range to what we hold and
        // have sent, so a forged range cannot make us loop or index out of bounds.
        let mut fresh = None;
        for r in &nack.ranges {
            for seq in r.first.max(self.base_seq)..=r.last.min(last) {
                let extent = self.sent_extent(seq);
                self.queue_retx(seq, 0, extent, &mut fresh);
            }
        }
        for h in &nack.holes {
            if h.seq < self.base_seq || h.seq > last {
                continue;
            }
            let end = (h.offset as usize + h.len as usize).min(self.sent_extent(h.seq));
            if (h.offset as usize) < end {
                self.queue_retx(h.seq, h.offset as usize, end, &mut fresh);
            }
        }
    }

    /// Queues bytes `offset..end` of message `seq` for retransmission, unless a
    /// retransmission of it queued by an earlier NACK is still waiting (the
    /// receiver asked again before our answer went out). `fresh` is the seq
    /// this NACK queued last, so that several holes of one message all go.
    fn queue_retx(&mut self, seq: u64, offset: usize, end: usize, fresh: &mut Option<u64>) {
        let idx = (seq - self.base_seq) as usize;
        if self.buf[idx].retx_queued > 0 && *fresh != Some(seq) {
            return;
        }
        self.buf[idx].retx_queued += 1;
        self.retx.push_back(Retx {
            seq,
            offset: offset as u32,
            len: (end - offset) as u32,
        });
        *fresh = Some(seq);
    }

    fn pto_deadline(&self) -> Option<Instant> {
        if self.phase != Phase::Established || self.buf.is_empty() {
            return None;
        }
        let pto = self.liveness.rtt.timeout(self.config.min_pto);
        let backoff = pto
            .saturating_mul(1 << self.pto_count.min(16))
            .min(self.config.max_pto);
        Some(self.pto_base + backoff)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Closed => None,
            Phase::Handshake {
                next_hello,
                deadline,
                ..
            } => Some(next_hello.min(deadline)),
            Phase::Established => {
                let t = self.liveness.deadline();
                Some(self.pto_deadline().map_or(t, |p| p.min(t)))
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Closed => {}
            Phase::Handshake { deadline, .. } => {
                if now >= deadline {
                    self.finish(CloseReason::HandshakeTimedOut);
                }
            }
            Phase::Established => {
                if self.liveness.is_dead(now) {
                    self.finish(CloseReason::TimedOut);
                    return;
                }
                if self.pto_deadline().is_some_and(|t| t <= now) {
                    self.on_probe_timeout(now);
                }
            }
        }
    }

    /// Nothing moved for a probe timeout. Either the tail of what we sent was
    /// lost (the receiver cannot NACK what it never saw), or its STATUS was.
    /// Resend the last sent piece, which reveals any gap below it, and ping,
    /// which makes the receiver answer with a STATUS.
    fn on_probe_timeout(&mut self, now: Instant) {
        self.stats.probes += 1;
        self.pto_count += 1;
        self.pto_base = now;
        self.liveness.ping_soon(now);
        if let Some(last) = self.last_sent_seq().filter(|&l| l > self.received_seq) {
            let extent = self.sent_extent(last);
            let tail = extent.min(self.config.max_datagram / 2);
            self.queue_retx(last, extent - tail, extent, &mut None);
        }
    }

    /// Writes the next datagram to send into `out`. Call until it returns
    /// false after every event (datagram, timeout, push).
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        let sent = match self.phase {
            Phase::Closed => match self.close_due.take() {
                Some(c) => {
                    Packet::Close(c).encode(self.session_id, out);
                    true
                }
                None => false,
            },
            Phase::Handshake {
                next_hello,
                deadline,
                attempts,
            } => {
                if now < next_hello {
                    return false;
                }
                let hello = Hello {
                    producer_id: self.connect.producer_id,
                    nonce: self.connect.nonce,
                    first_seq: self.connect.resume_after.map_or(0, |_| self.base_seq),
                    stream: self.connect.stream.clone(),
                };
                Packet::Hello(hello).encode(0, out);
                // Back off, but not so far that a lossy path gets only a few
                // tries before the handshake timeout.
                let backoff =
                    self.config.initial_rtt.max(self.config.min_pto) * 2u32.pow(attempts.min(8));
                self.phase = Phase::Handshake {
                    next_hello: now + backoff.min(MAX_HELLO_INTERVAL),
                    deadline,
                    attempts: attempts + 1,
                };
                self.hello_sent_at = Some(now);
                true
            }
            Phase::Established => {
                if let Some(hb) = self.liveness.poll(now) {
                    Packet::Heartbeat(hb).encode(self.session_id, out);
                    true
                } else {
                    self.write_data(now, out)
                }
            }
        };
        if sent {
            self.stats.datagrams_sent += 1;
        }
        sent
    }

    fn write_data(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        let mut w = DataWriter::new(out, self.session_id, self.config.max_datagram);
        // Retransmissions first: the receiver is waiting on them to deliver.
        while let Some(r) = self.retx.front().copied() {
            if r.seq < self.base_seq {
                self.retx.pop_front();
                continue;
            }
            let idx = (r.seq - self.base_seq) as usize;
            let payload = self.buf[idx].payload.clone();
            let whole = r.offset == 0 && r.len as usize == payload.len();
            if whole && w.push_whole(r.seq, &payload) {
                self.retx.pop_front();
                self.buf[idx].retx_queued -= 1;
                self.stats.retransmissions += 1;
                self.stats.bytes_retransmitted += payload.len() as u64;
                continue;
            }
            let chunk = w.room(r.seq, true).min(r.len as usize);
            if chunk == 0 || (whole && !w.is_empty() && payload.len() <= self.max_whole()) {
                break; // datagram full: the rest goes in the next one
            }
            let start = r.offset as usize;
            w.push_fragment(
                r.seq,
                payload.len() as u32,
                r.offset,
                &payload[start..start + chunk],
            );
            self.stats.retransmissions += 1;
            self.stats.bytes_retransmitted += chunk as u64;
            if chunk == r.len as usize {
                self.retx.pop_front();
                self.buf[idx].retx_queued -= 1;
            } else {
                let front = self.retx.front_mut().expect("front exists");
                front.offset += chunk as u32;
                front.len -= chunk as u32;
                break;
            }
        }
        // Then new messages, within credit.
        if self.waits_for_credit() && self.credit_wait_since.is_none() {
            self.credit_wait_since = Some(now);
            self.stats.credit_stalls += 1;
        }
        while self.send_seq < self.next_seq && self.send_seq <= self.credit_limit {
            let seq = self.send_seq;
            let payload = &self.buf[(seq - self.base_seq) as usize].payload;
            let len = payload.len();
            if self.send_offset == 0 && w.push_whole(seq, payload) {
                self.stats.messages_sent += 1;
                self.stats.bytes_sent += len as u64;
                self.send_seq += 1;
                continue;
            }
            // A message that fits a datagram of its own is never split: it
            // waits for the next datagram instead.
            if self.send_offset == 0 && len <= self.max_whole() {
                break;
            }
            let chunk = w.room(seq, true).min(len - self.send_offset);
            if chunk == 0 {
                break;
            }
            let off = self.send_offset;
            w.push_fragment(seq, len as u32, off as u32, &payload[off..off + chunk]);
            if off == 0 {
                self.stats.messages_sent += 1;
            }
            self.stats.bytes_sent += chunk as u64;
            self.send_offset += chunk;
            if self.send_offset == len {
                self.send_seq += 1;
                self.send_offset = 0;
            } else {
                break;
            }
        }
        self.debug_check_window();
        if w.is_empty() {
            return false;
        }
        w.finish();
        if self.pto_count == 0 {
            // Keep the probe timer quiet while data is flowing.
            self.pto_base = now;
        }
        true
    }

    /// The window's rules, in debug builds: the buffer holds exactly the
    /// seqs from `base_seq` to `next_seq` (nothing durable is kept, nothing
    /// pushed is lost), first transmissions lie within them, and nothing
    /// is durable or received that was never pushed. Cheap: no pass over
    /// the buffer, only over the (short) retransmission queue.
    /// Whether a message is pushed but beyond the credit granted.
    fn waits_for_credit(&self) -> bool {
        self.send_seq < self.next_seq && self.send_seq > self.credit_limit
    }

    fn debug_check_window(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        assert!(
            self.base_seq <= self.send_seq && self.send_seq <= self.next_seq,
            "sender: send seq {} outside the window {}..={}",
            self.send_seq,
            self.base_seq,
            self.next_seq
        );
        assert_eq!(
            self.buf.len() as u64,
            self.next_seq - self.base_seq,
            "sender: the buffer does not hold exactly the unacked seqs"
        );
        assert!(
            self.send_offset == 0
                || (self.send_seq < self.next_seq
                    && self.send_offset
                        < self.buf[(self.send_seq - self.base_seq) as usize]
                            .payload
                            .len()),
            "sender: a message sent past its end"
        );
        assert!(
            self.durable_seq < self.base_seq,
            "sender: durable seq {} still buffered from {}",
            self.durable_seq,
            self.base_seq
        );
        assert!(
            self.durable_seq < self.next_seq && self.received_seq < self.next_seq,
            "sender: acked a message never pushed"
        );
        assert!(
            self.buf_bytes <= self.config.max_unacked_bytes
                && self.buf_bytes >= self.buf.len() * MESSAGE_OVERHEAD
                && (self.buf_bytes == 0) == self.buf.is_empty(),
            "sender: unacked bytes {} disagree with {} messages held",
            self.buf_bytes,
            self.buf.len()
        );
        for r in self.retx.iter().filter(|r| r.seq >= self.base_seq) {
            let m = &self.buf[(r.seq - self.base_seq) as usize];
            assert!(
                m.retx_queued > 0 && (r.offset + r.len) as usize <= m.payload.len(),
                "sender: retransmission of {} not counted or past its end",
                r.seq
            );
        }
    }

    /// The largest message that fits whole in one datagram.
    fn max_whole(&self) -> usize {
        (self.config.max_datagram - HEADER_LEN - WHOLE_ENTRY_OVERHEAD).min(u16::MAX as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Packet;

    fn sender(resume_after: Option<u64>, max_unacked_bytes: usize) -> (Sender, Instant) {
        let now = Instant::now();
        let cfg = SenderConfig {
            max_unacked_bytes,
            max_message_len: 1000,
            ..SenderConfig::default()
        };
        let connect = Connect {
            producer_id: 1,
            stream: "s".into(),
            resume_after,
            nonce: 5,
        };
        (Sender::new(cfg, connect, now), now)
    }

    fn welcome(s: &mut Sender, now: Instant, durable_seq: u64, credit: u32) {
        let mut out = Vec::new();
        Packet::Welcome(Welcome {
            nonce: 5,
            durable_seq,
            credit,
        })
        .encode(77, &mut out);
        s.handle_datagram(now, Bytes::from(out));
    }

    fn data_seqs(s: &mut Sender, now: Instant) -> Vec<u64> {
        let mut out = Vec::new();
        let mut seqs = Vec::new();
        while s.poll_transmit(now, &mut out) {
            if let Ok(Packet::Data(f)) = Packet::decode(&Bytes::from(out.clone())).map(|d| d.packet)
            {
                seqs.extend(f.entries().map(|e| e.seq));
            }
        }
        seqs
    }

    #[test]
    fn push_reports_backpressure_instead_of_growing() {
        let (mut s, _) = sender(Some(0), 1000 + MESSAGE_OVERHEAD + 10);
        assert_eq!(s.push(Bytes::from(vec![0; 1000])), Ok(1));
        assert_eq!(s.push(Bytes::from(vec![0; 1])), Err(PushError::BufferFull));
        assert_eq!(
            s.push(Bytes::from(vec![0; 1001])),
            Err(PushError::TooLarge {
                len: 1001,
                max: 1000
            })
        );
        assert!(s.unacked_bytes() <= 1000 + MESSAGE_OVERHEAD + 10);
    }

    #[test]
    fn asking_where_we_stand_waits_for_welcome() {
        let (mut s, now) = sender(None, 1 << 20);
        assert_eq!(s.push(Bytes::from("x")), Err(PushError::NotReady));
        welcome(&mut s, now, 41, 10);
        assert!(s.is_established());
        assert_eq!(s.push(Bytes::from("x")), Ok(42));
    }

    #[test]
    fn sends_only_within_credit() {
        let (mut s, now) = sender(Some(0), 1 << 20);
        for _ in 0..10 {
            s.push(Bytes::from("m")).unwrap();
        }
        welcome(&mut s, now, 0, 3);
        assert_eq!(data_seqs(&mut s, now), vec![1, 2, 3]);
    }

    /// Time with messages pushed beyond the credit is counted, from the
    /// first try to send them to the STATUS that grants room.
    #[test]
    fn time_stalled_on_credit_is_counted() {
        use std::time::Duration;
        let (mut s, now) = sender(Some(0), 1 << 20);
        for _ in 0..5 {
            s.push(Bytes::from("m")).unwrap();
        }
        welcome(&mut s, now, 0, 3);
        assert_eq!(data_seqs(&mut s, now), vec![1, 2, 3]);
        let later = now + Duration::from_millis(7);
        data_seqs(&mut s, later);
        assert_eq!(s.stats().credit_stalls, 1);
        assert_eq!(s.stats().credit_stalled, Duration::ZERO, "still waiting");
        let mut out = Vec::new();
        Packet::Status(Status {
            durable_seq: 3,
            received_seq: 3,
            credit: 3,
        })
        .encode(77, &mut out);
        s.handle_datagram(now + Duration::from_millis(20), Bytes::from(out));
        assert_eq!(s.stats().credit_stalled, Duration::from_millis(20));
        assert_eq!(
            data_seqs(&mut s, now + Duration::from_millis(20)),
            vec![4, 5]
        );
        assert_eq!(s.stats().credit_stalls, 1, "room for all: no new stall");
    }

    #[test]
    fn a_receiver_further_along_moves_numbering_past_it() {
        let (mut s, now) = sender(Some(5), 1 << 20);
        assert_eq!(s.push(Bytes::from("retransmitted")), Ok(6));
        welcome(&mut s, now, 100, 10);
        // Seq 6 is durable at the receiver already: acked, freed.
        assert_eq!(s.poll_event(), Some(SenderEvent::Durable { up_to: 6 }));
        assert!(s.is_drained());
        assert_eq!(s.push(Bytes::from("new")), Ok(101));
        assert_eq!(data_seqs(&mut s, now), vec![101]);
    }
}
