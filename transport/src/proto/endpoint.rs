//! The receiving endpoint: one socket's worth of sessions. It routes each
//! datagram to its session's [`Receiver`], turns HELLOs for new sessions into
//! [`Incoming`]s for the owner to accept or reject, and collects what the
//! sessions want to send.
//!
//! No source address may hold more than
//! [`ReceiverConfig::max_sessions_per_source`] sessions: anyone can send
//! HELLOs (on an unauthenticated port), and one flooding host must not take
//! every session slot of the daemon.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::ReceiverConfig;
use super::receiver::Receiver;
use super::stats::{DropCounts, DropReason, ReceiverStats};
use super::CloseReason;
use crate::wire::{Close, CloseCode, Hello, Packet};

/// A HELLO for a session that does not exist yet. The owner looks up where the
/// producer stands (its durable seq) and calls [`Endpoint::accept`], or
/// [`Endpoint::reject`]. Dropping it ignores the HELLO (the producer retries).
///
/// Answer it before feeding the next datagram: the per-source limit counts
/// the sessions in the endpoint, not `Incoming`s held by the owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub peer: SocketAddr,
    pub hello: Hello,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointEvent {
    /// A session ended and was removed. Its undelivered messages are gone;
    /// its producer will resend them in a new session.
    Closed {
        session_id: u64,
        producer_id: u64,
        stream: String,
        reason: CloseReason,
        /// The session's counters at its end, so owners that sum them up
        /// miss nothing of its last moments.
        stats: ReceiverStats,
    },
}

#[derive(Debug)]
struct Session {
    receiver: Receiver,
    peer: SocketAddr,
    /// Queued in `readable` and not yet taken by the owner.
    readable: bool,
    /// Nonces of the sessions this one replaced: a late duplicate of their
    /// HELLO must not replace this session in turn.
    retired_nonces: Vec<u64>,
}

/// How many replaced sessions' nonces a session remembers.
const RETIRED_NONCES: usize = 4;

#[derive(Debug)]
pub struct Endpoint {
    config: ReceiverConfig,
    sessions: HashMap<u64, Session>,
    /// Session order for fair transmit polling (insertion order, deterministic).
    order: Vec<u64>,
    cursor: usize,
    by_producer: HashMap<(u64, String), u64>,
    rng: ChaCha8Rng,
    readable: VecDeque<u64>,
    /// CLOSE packets not owned by a live session: handshake refusals, and the
    /// last word of sessions that were removed.
    outbox: VecDeque<(SocketAddr, u64, Close)>,
    events: VecDeque<EndpointEvent>,
    drops: DropCounts,
    /// CLOSE answers to packets for unknown sessions.
    resets: Bucket,
    /// Sessions in `sessions` by their peer's address (IP only: one host
    /// can use any number of ports), for the per-source limit.
    per_source: HashMap<IpAddr, usize>,
    /// CLOSE answers to HELLOs over the per-source limit.
    source_refusals: Bucket,
}

/// CLOSE answers to packets for unknown sessions: at most this many a second
/// (bursts up to the same number), so that forged traffic cannot turn the
/// endpoint into a reflector.
const RESETS_PER_SEC: f64 = 100.0;
/// A heartbeat: header, kind, token, trailer.
const MIN_ANSWERED: usize = 13 + 9 + 4;
/// CLOSE answers to HELLOs refused for their source's session count: at most
/// this many a second (bursts up to the same number).
const SOURCE_REFUSALS_PER_SEC: f64 = 100.0;
/// The reason a HELLO over the per-source limit is told, when the answer
/// fits in the HELLO's size ...
const SOURCE_LIMIT_REASON: &str = "too many sessions from this address";
/// ... and when it does not (a CLOSE with it, 40 bytes, is never larger than
/// the smallest HELLO, 43 bytes).
const SOURCE_LIMIT_SHORT: &str = "source limit";
/// A CLOSE without its reason: header, code, nonce, reason length, trailer.
const CLOSE_FIXED_LEN: usize = 13 + 2 + 8 + 1 + 4;
/// More CLOSE answers than this waiting to be sent are not queued.
const MAX_QUEUED_ANSWERS: usize = 64;

/// A token bucket: `rate` tokens a second, holding at most `rate`.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    refilled: Option<Instant>,
}

impl Bucket {
    fn new(rate: f64) -> Self {
        Bucket {
            rate,
            tokens: rate,
            refilled: None,
        }
    }

    /// Refills for the time since the last call, then takes a token if
    /// there is one.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = self
            .refilled
            .map_or(1.0, |t| now.saturating_duration_since(t).as_secs_f64());
        self.refilled = Some(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// The key of a source address: its IP, with IPv4-mapped IPv6 addresses as
/// the IPv4 address they are (a dual-stack socket sees both).
fn source(addr: SocketAddr) -> IpAddr {
    addr.ip().to_canonical()
}

impl Endpoint {
    /// Panics if `config` does not validate (see [`ReceiverConfig::validate`]).
    pub fn new(config: ReceiverConfig) -> Self {
        config.validate().expect("invalid ReceiverConfig");
        let rng = match config.seed {
            Some(seed) => ChaCha8Rng::seed_from_u64(seed),
            None => ChaCha8Rng::from_os_rng(),
        };
        Endpoint {
            config,
            sessions: HashMap::new(),
            order: Vec::new(),
            cursor: 0,
            by_producer: HashMap::new(),
            rng,
            readable: VecDeque::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            drops: DropCounts::default(),
            resets: Bucket::new(RESETS_PER_SEC),
            per_source: HashMap::new(),
            source_refusals: Bucket::new(SOURCE_REFUSALS_PER_SEC),
        }
    }

    /// Sessions (pending or open) whose producer is at `ip` now.
    pub fn sessions_from(&self, ip: IpAddr) -> usize {
        let ip = source(SocketAddr::new(ip, 0));
        self.per_source.get(&ip).copied().unwrap_or(0)
    }

    /// Source addresses holding at least one session.
    pub fn source_count(&self) -> usize {
        self.per_source.len()
    }

    /// A session's peer is now `to` (it was `from`): the per-source
    /// counts follow it.
    fn note_move(per_source: &mut HashMap<IpAddr, usize>, from: SocketAddr, to: SocketAddr) {
        let (from, to) = (source(from), source(to));
        if from != to {
            Self::uncount(per_source, from);
            *per_source.entry(to).or_insert(0) += 1;
        }
    }

    fn uncount(per_source: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
        if let Some(n) = per_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_source.remove(&ip);
            }
        }
    }

    /// Datagrams dropped by this endpoint, by reason.
    pub fn drops(&self) -> &DropCounts {
        &self.drops
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn session_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.order.iter().copied()
    }

    pub fn receiver(&self, session_id: u64) -> Option<&Receiver> {
        self.sessions.get(&session_id).map(|s| &s.receiver)
    }

    pub fn receiver_mut(&mut self, session_id: u64) -> Option<&mut Receiver> {
        self.sessions.get_mut(&session_id).map(|s| &mut s.receiver)
    }

    pub fn peer(&self, session_id: u64) -> Option<SocketAddr> {
        self.sessions.get(&session_id).map(|s| s.peer)
    }

    /// Feeds one datagram from `from`. Malformed and unroutable datagrams are
    /// dropped and counted; a HELLO for a new session is returned to the owner.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: Bytes,
    ) -> Option<Incoming> {
        if datagram.len() > self.config.max_datagram.max(crate::wire::MAX_DATAGRAM) {
            self.drops.add(DropReason::Oversized);
            return None;
        }
        let decoded = match Packet::decode(&datagram) {
            Ok(d) => d,
            Err(e) => {
                self.drops.add(e.into());
                return None;
            }
        };
        let id = decoded.header.session_id;
        if let Packet::Hello(hello) = decoded.packet {
            if id != 0 {
                self.drops.add(DropReason::Malformed);
                return None;
            }
            let key = (hello.producer_id, hello.stream.clone());
            // A HELLO that replaces a session from the same address adds
            // none to its count.
            let mut replaces_one_here = false;
            if let Some(&existing) = self.by_producer.get(&key) {
                let s = self
                    .sessions
                    .get_mut(&existing)
                    .expect("index matches sessions");
                if s.receiver.nonce() == hello.nonce {
                    Self::note_move(&mut self.per_source, s.peer, from);
                    s.peer = from;
                    s.receiver.on_hello_retry(now);
                    return None;
                }
                if s.retired_nonces.contains(&hello.nonce) {
                    self.drops.add(DropReason::Unexpected);
                    return None;
                }
                replaces_one_here = source(s.peer) == source(from);
            }
            if !replaces_one_here
                && self.sessions_from(from.ip()) >= self.config.max_sessions_per_source
            {
                self.drops.add(DropReason::SourceLimit);
                self.answer_source_limit(now, from, hello.nonce, datagram.len());
                return None;
            }
            return Some(Incoming { peer: from, hello });
        }
        let Some(s) = self.sessions.get_mut(&id) else {
            self.drops.add(DropReason::UnknownSession);
            if !matches!(decoded.packet, Packet::Close(_)) {
                self.answer_unknown_session(now, from, id, datagram.len());
            }
            return None;
        };
        if !s.receiver.handle_packet(now, decoded.packet) {
            self.drops.add(DropReason::Unexpected);
            return None;
        }
        // The producer may have moved (NAT rebinding, a new source port).
        Self::note_move(&mut self.per_source, s.peer, from);
        s.peer = from;
        if s.receiver.has_messages() && !s.readable {
            s.readable = true;
            self.readable.push_back(id);
        }
        if s.receiver.closed().is_some() {
            self.remove(id);
        }
        None
    }

    /// Opens the session a HELLO asked for. `durable_seq` is where the producer
    /// stands in the owner's storage; `credit` how far past it may be sent.
    /// A HELLO from the same producer and stream with a new nonce replaces the
    /// old session (the producer reconnected). Returns the session id.
    pub fn accept(
        &mut self,
        now: Instant,
        incoming: Incoming,
        durable_seq: u64,
        credit: u32,
    ) -> u64 {
        let key = (incoming.hello.producer_id, incoming.hello.stream.clone());
        let mut retired_nonces = Vec::new();
        if let Some(&old) = self.by_producer.get(&key) {
            let s = self.sessions.get_mut(&old).expect("index matches sessions");
            if s.receiver.nonce() == incoming.hello.nonce {
                return old; // accepted already (the HELLO was retried meanwhile)
            }
            retired_nonces = std::mem::take(&mut s.retired_nonces);
            retired_nonces.push(s.receiver.nonce());
            if retired_nonces.len() > RETIRED_NONCES {
                retired_nonces.remove(0);
            }
            s.receiver.close(
                CloseCode::Superseded,
                "a newer session of this producer replaced it",
            );
            self.remove(old);
        }
        let id = loop {
            let id: u64 = self.rng.random();
            if id != 0 && !self.sessions.contains_key(&id) {
                break id;
            }
        };
        let hello = incoming.hello;
        let receiver = Receiver::new(
            self.config.clone(),
            id,
            hello.producer_id,
            hello.stream,
            hello.nonce,
            hello.first_seq,
            durable_seq,
            credit,
            now,
        );
        self.sessions.insert(
            id,
            Session {
                receiver,
                peer: incoming.peer,
                readable: false,
                retired_nonces,
            },
        );
        self.order.push(id);
        self.by_producer.insert(key, id);
        *self.per_source.entry(source(incoming.peer)).or_insert(0) += 1;
        id
    }

    /// Tells a producer that its session is gone (we restarted, or timed it
    /// out), so it reconnects now rather than after its idle timeout. The
    /// answer is rate-limited, and only packets of at least a heartbeat's
    /// size (26 bytes) get one, so it is at most 28/26 of what it answers:
    /// no use as an amplifier.
    fn answer_unknown_session(&mut self, now: Instant, to: SocketAddr, id: u64, len: usize) {
        if len < MIN_ANSWERED || self.outbox.len() >= MAX_QUEUED_ANSWERS || !self.resets.take(now) {
            return;
        }
        let close = Close {
            code: CloseCode::UnknownSession,
            nonce: 0,
            reason: String::new(),
        };
        self.outbox.push_back((to, id, close));
    }

    /// Tells a producer whose address holds its most sessions already that
    /// its HELLO is refused (CLOSE `rejected`, echoing its nonce), so that it
    /// fails at once with the reason instead of timing out. Rate-limited,
    /// and never larger than the HELLO it answers: a forged source address
    /// gets no amplified reflection.
    fn answer_source_limit(&mut self, now: Instant, to: SocketAddr, nonce: u64, len: usize) {
        if self.outbox.len() >= MAX_QUEUED_ANSWERS || !self.source_refusals.take(now) {
            return;
        }
        let reason = if CLOSE_FIXED_LEN + SOURCE_LIMIT_REASON.len() <= len {
            SOURCE_LIMIT_REASON
        } else {
            SOURCE_LIMIT_SHORT
        };
        let close = Close {
            code: CloseCode::Rejected,
            nonce,
            reason: reason.to_owned(),
        };
        self.outbox.push_back((to, 0, close));
    }

    /// Refuses a HELLO, telling the producer why.
    pub fn reject(&mut self, incoming: Incoming, code: CloseCode, reason: &str) {
        let close = Close {
            code,
            nonce: incoming.hello.nonce,
            reason: reason.to_owned(),
        };
        self.outbox.push_back((incoming.peer, 0, close));
    }

    /// Closes a session from the owner's side (shutdown, stream deleted, …).
    pub fn close(&mut self, session_id: u64, code: CloseCode, reason: &str) {
        if let Some(r) = self.receiver_mut(session_id) {
            r.close(code, reason);
            self.remove(session_id);
        }
    }

    fn remove(&mut self, id: u64) {
        let Some(mut s) = self.sessions.remove(&id) else {
            return;
        };
        if let Some(close) = s.receiver.take_close() {
            self.outbox.push_back((s.peer, id, close));
        }
        self.order.retain(|&x| x != id);
        self.cursor = 0;
        Self::uncount(&mut self.per_source, source(s.peer));
        let key = (s.receiver.producer_id(), s.receiver.stream().to_owned());
        if self.by_producer.get(&key) == Some(&id) {
            self.by_producer.remove(&key);
        }
        self.events.push_back(EndpointEvent::Closed {
            session_id: id,
            producer_id: s.receiver.producer_id(),
            stream: s.receiver.stream().to_owned(),
            reason: s.receiver.closed().cloned().unwrap_or(CloseReason::Local),
            stats: s.receiver.stats().clone(),
        });
    }

    /// The next session with messages waiting in [`Receiver::poll_message`].
    /// Each session is listed once until taken; take all its messages then.
    pub fn poll_readable(&mut self) -> Option<u64> {
        while let Some(id) = self.readable.pop_front() {
            if let Some(s) = self.sessions.get_mut(&id) {
                s.readable = false;
                return Some(id);
            }
        }
        None
    }

    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        self.events.pop_front()
    }

    /// Writes the next datagram to send into `out` and returns its destination.
    /// Sessions take turns, so one busy session cannot starve the others.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<SocketAddr> {
        if let Some((peer, id, close)) = self.outbox.pop_front() {
            Packet::Close(close).encode(id, out);
            return Some(peer);
        }
        let n = self.order.len();
        for i in 0..n {
            let idx = (self.cursor + i) % n;
            let id = self.order[idx];
            let s = self.sessions.get_mut(&id).expect("order matches sessions");
            if s.receiver.poll_transmit(now, out) {
                self.cursor = (idx + 1) % n;
                return Some(s.peer);
            }
        }
        None
    }

    /// The earliest timer of any session.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sessions
            .values()
            .filter_map(|s| s.receiver.poll_timeout())
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let mut dead = Vec::new();
        for (&id, s) in self.sessions.iter_mut() {
            if s.receiver.poll_timeout().is_some_and(|t| t <= now) {
                s.receiver.handle_timeout(now);
                if s.receiver.closed().is_some() {
                    dead.push(id);
                }
            }
        }
        dead.sort_unstable(); // HashMap order is random; keep runs reproducible
        for id in dead {
            self.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn hello(nonce: u64) -> Bytes {
        let mut out = Vec::new();
        Packet::Hello(Hello {
            producer_id: 3,
            nonce,
            first_seq: 1,
            stream: "s".into(),
        })
        .encode(0, &mut out);
        Bytes::from(out)
    }

    #[test]
    fn unknown_sessions_are_told_so_within_a_rate_limit() {
        let now = Instant::now();
        let peer: SocketAddr = "127.0.0.1:5".parse().unwrap();
        let mut ep = Endpoint::new(ReceiverConfig {
            seed: Some(3),
            ..ReceiverConfig::default()
        });
        let mut ping = Vec::new();
        Packet::Heartbeat(crate::wire::Heartbeat {
            pong: false,
            token: 0,
        })
        .encode(0xFEED, &mut ping);
        let mut answers = 0;
        let mut out = Vec::new();
        for _ in 0..1000 {
            ep.handle_datagram(now, peer, Bytes::from(ping.clone()));
            while let Some(to) = ep.poll_transmit(now, &mut out) {
                assert_eq!(to, peer);
                let d = Packet::decode(&Bytes::from(out.clone())).unwrap();
                assert_eq!(d.header.session_id, 0xFEED);
                assert!(out.len() <= ping.len() + 2, "answer amplifies");
                assert!(matches!(
                    d.packet,
                    Packet::Close(Close {
                        code: CloseCode::UnknownSession,
                        ..
                    })
                ));
                answers += 1;
            }
        }
        // The bucket starts full; the outbox is drained as we go.
        assert_eq!(answers, RESETS_PER_SEC as usize);
        assert_eq!(ep.drops().get(DropReason::UnknownSession), 1000);
        // The bucket refills with time.
        ep.handle_datagram(now + Duration::from_millis(50), peer, Bytes::from(ping));
        assert!(ep.poll_transmit(now, &mut out).is_some());
    }

    #[test]
    fn a_late_duplicate_of_an_old_hello_does_not_replace_the_new_session() {
        let now = Instant::now();
        let peer = "127.0.0.1:5".parse().unwrap();
        let mut ep = Endpoint::new(ReceiverConfig {
            seed: Some(3),
            ..ReceiverConfig::default()
        });
        let inc = ep
            .handle_datagram(now, peer, hello(1))
            .expect("new session");
        let first = ep.accept(now, inc, 0, 10);
        // The producer reconnects: the new session replaces the first.
        let inc = ep.handle_datagram(now, peer, hello(2)).expect("reconnect");
        let second = ep.accept(now, inc, 0, 10);
        assert_ne!(first, second);
        assert!(ep.receiver(first).is_none());
        assert!(matches!(
            ep.poll_event(),
            Some(EndpointEvent::Closed { session_id, .. }) if session_id == first
        ));
        // The first HELLO, late and duplicated by the network, is ignored.
        assert!(ep.handle_datagram(now, peer, hello(1)).is_none());
        assert!(ep.receiver(second).is_some());
        assert_eq!(ep.drops().get(DropReason::Unexpected), 1);
        // A retry of the current HELLO re-sends its WELCOME, opens nothing.
        assert!(ep.handle_datagram(now, peer, hello(2)).is_none());
        assert_eq!(ep.session_count(), 1);
    }
}
