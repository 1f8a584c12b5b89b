//! Leases of the authenticated fast path, and the daemon's sealed datagram
//! path built on them.
//!
//! The QUIC plane grants a lease to an authenticated producer for one
//! (stream, producer id) and both ends derive its keys from the TLS session
//! ([`crate::seal`]). [`SealedIo`] wraps the raw-UDP [`PacketIo`] of the
//! daemon: it opens every datagram under its lease's keys before the
//! endpoint sees a byte of it, drops (and counts, by reason) what fails, and
//! seals every reply. A lease also binds what it may carry: HELLOs for its
//! own stream and producer only, then only the session the daemon assigned
//! (learnt from the WELCOME it sealed), so one authenticated producer cannot
//! write into another's session or stream.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::seal::{self, OpenError, Opener, Sealer, Side, EXPORTER_LEN};
use crate::serve::PacketIo;
use crate::udp::SendBatch;
use crate::wire::{self, Packet, PacketType};

/// Why a datagram on the sealed path was dropped: the seal's own reasons,
/// then the lease's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedDrop {
    Open(OpenError),
    /// No lease has this id (never granted, or revoked).
    UnknownLease,
    /// The lease ran out and was not renewed.
    ExpiredLease,
    /// Authentic, but for another stream, producer or session than the
    /// lease was granted for.
    LeaseMismatch,
}

impl SealedDrop {
    pub fn as_str(self) -> &'static str {
        match self {
            SealedDrop::Open(e) => e.as_str(),
            SealedDrop::UnknownLease => "unknown_lease",
            SealedDrop::ExpiredLease => "expired_lease",
            SealedDrop::LeaseMismatch => "lease_mismatch",
        }
    }

    /// Every reason, for metrics labels.
    pub fn all() -> impl Iterator<Item = SealedDrop> {
        OpenError::ALL.into_iter().map(SealedDrop::Open).chain([
            SealedDrop::UnknownLease,
            SealedDrop::ExpiredLease,
            SealedDrop::LeaseMismatch,
        ])
    }

    fn index(self) -> usize {
        match self {
            SealedDrop::Open(e) => e as usize,
            SealedDrop::UnknownLease => OpenError::ALL.len(),
            SealedDrop::ExpiredLease => OpenError::ALL.len() + 1,
            SealedDrop::LeaseMismatch => OpenError::ALL.len() + 2,
        }
    }
}

const DROP_REASONS: usize = OpenError::ALL.len() + 3;

/// Counters of the sealed path.
#[derive(Debug, Default)]
pub struct SealedStats {
    drops: [AtomicU64; DROP_REASONS],
    /// Replies that could not be sealed (no lease for their destination).
    pub unsealable: AtomicU64,
}

impl SealedStats {
    pub fn dropped(&self, reason: SealedDrop) -> u64 {
        self.drops[reason.index()].load(Relaxed)
    }

    fn count(&self, reason: SealedDrop) {
        self.drops[reason.index()].fetch_add(1, Relaxed);
    }
}

struct Lease {
    opener: Opener,
    sealer: Sealer,
    expires: Instant,
    stream: String,
    producer_id: u64,
    /// The session the daemon opened under this lease.
    session: Option<u64>,
    /// Where the producer sends from: its last authentic packet's source.
    peer: Option<SocketAddr>,
    /// The producer ended the lease; its keys drain (see [`Leases::end`]).
    ending: bool,
}

#[derive(Default)]
struct Table {
    leases: HashMap<u64, Lease>,
    by_session: HashMap<u64, u64>,
    by_peer: HashMap<SocketAddr, u64>,
}

impl Table {
    fn remove(&mut self, id: u64) {
        if let Some(l) = self.leases.remove(&id) {
            if let Some(s) = l.session {
                self.by_session.remove(&s);
            }
            if let Some(p) = l.peer {
                if self.by_peer.get(&p) == Some(&id) {
                    self.by_peer.remove(&p);
                }
            }
        }
    }
}

/// Why a lease could not be renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewError {
    Unknown,
    Expired,
}

/// The daemon's leases; cheap to clone, shared by the QUIC plane (which
/// grants, renews and revokes) and the sealed path (which uses them).
#[derive(Clone, Default)]
pub struct Leases {
    table: Arc<Mutex<Table>>,
}

impl Leases {
    /// Grants lease `id` for `producer_id` on `stream` with the keys from
    /// `material` (the TLS exporter's output for this lease), for `ttl`.
    pub fn grant(
        &self,
        id: u64,
        material: &[u8; EXPORTER_LEN],
        stream: &str,
        producer_id: u64,
        ttl: Duration,
        now: Instant,
    ) {
        let (sealer, opener) = seal::keys(material, id, Side::Daemon);
        let mut t = self.table.lock().unwrap();
        t.remove(id);
        t.leases.insert(
            id,
            Lease {
                opener,
                sealer,
                expires: now + ttl,
                stream: stream.to_owned(),
                producer_id,
                session: None,
                peer: None,
                ending: false,
            },
        );
    }

    /// Extends a lease that has not expired yet.
    pub fn renew(&self, id: u64, ttl: Duration, now: Instant) -> Result<(), RenewError> {
        let mut t = self.table.lock().unwrap();
        let lease = t.leases.get_mut(&id).ok_or(RenewError::Unknown)?;
        if lease.expires <= now {
            return Err(RenewError::Expired);
        }
        lease.expires = now + ttl;
        Ok(())
    }

    /// The producer ended lease `id` (its QUIC stream or connection
    /// closed): its keys keep opening packets of the session it carries
    /// for `drain`, then it expires; no new session opens under it. Its
    /// last datagrams, the session's CLOSE above all, were sent before its
    /// connection closed but travel apart from it (QUIC does not order
    /// them): revoked at once, they would be dropped as for an unknown
    /// lease, and the session would linger until it timed out. The caller
    /// revokes it after `drain`.
    pub fn end(&self, id: u64, drain: Duration, now: Instant) {
        let mut t = self.table.lock().unwrap();
        if let Some(lease) = t.leases.get_mut(&id) {
            lease.ending = true;
            lease.expires = lease.expires.min(now + drain);
        }
    }

    pub fn revoke(&self, id: u64) {
        self.table.lock().unwrap().remove(id);
    }

    /// Leases granted and not revoked (expired ones included until then).
    pub fn len(&self) -> usize {
        self.table.lock().unwrap().leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Opens one datagram; the inner packet, or why it was dropped.
    fn open(
        &self,
        from: SocketAddr,
        mut datagram: BytesMut,
        now: Instant,
    ) -> Result<Bytes, SealedDrop> {
        let header = seal::peek(&datagram).map_err(SealedDrop::Open)?;
        let mut t = self.table.lock().unwrap();
        let lease = t
            .leases
            .get_mut(&header.lease_id)
            .ok_or(SealedDrop::UnknownLease)?;
        if lease.expires <= now {
            return Err(SealedDrop::ExpiredLease);
        }
        let len = lease
            .opener
            .open(&mut datagram)
            .map_err(SealedDrop::Open)?
            .len();
        // Opened in place: the inner packet follows the clear header.
        let inner = datagram
            .freeze()
            .slice(seal::HEADER_LEN..seal::HEADER_LEN + len);
        // Authentic from here on: now the inner packet may be looked at.
        let h = wire::Header::decode(&inner).map_err(|_| SealedDrop::LeaseMismatch)?;
        match (h.packet_type, h.session_id) {
            // The producer is gone: only its session's last packets land.
            (PacketType::Hello, 0) if lease.ending => Err(SealedDrop::ExpiredLease),
            (PacketType::Hello, 0) => {
                match Packet::decode(&inner) {
                    Ok(wire::Decoded {
                        packet: Packet::Hello(hello),
                        ..
                    }) if hello.stream == lease.stream
                        && hello.producer_id == lease.producer_id => {}
                    _ => return Err(SealedDrop::LeaseMismatch),
                }
                let id = header.lease_id;
                lease.peer = Some(from);
                t.by_peer.insert(from, id);
                Ok(inner)
            }
            (_, s) if s != 0 && lease.session == Some(s) => {
                if lease.peer != Some(from) {
                    // The producer moved (NAT rebinding): answer where it is.
                    let id = header.lease_id;
                    lease.peer = Some(from);
                    t.by_peer.insert(from, id);
                }
                Ok(inner)
            }
            _ => Err(SealedDrop::LeaseMismatch),
        }
    }

    /// Seals one outgoing datagram for `to`; learns the session a WELCOME
    /// opens. `None` when no lease covers the destination.
    fn seal(&self, to: SocketAddr, inner: &[u8], out: &mut Vec<u8>) -> Option<SocketAddr> {
        let h = wire::Header::decode(inner).ok()?;
        let mut t = self.table.lock().unwrap();
        let id = match t.by_session.get(&h.session_id) {
            Some(&id) => id,
            None => *t.by_peer.get(&to)?,
        };
        if h.packet_type == PacketType::Welcome {
            if let Some(old) = t.leases.get(&id).and_then(|l| l.session) {
                t.by_session.remove(&old);
            }
            t.by_session.insert(h.session_id, id);
        }
        let lease = t.leases.get_mut(&id)?;
        if h.packet_type == PacketType::Welcome {
            lease.session = Some(h.session_id);
        }
        lease.sealer.seal(inner, out).ok()?;
        lease.peer.or(Some(to))
    }
}

/// The daemon's sealed datagram path over `inner` (a UDP socket; AF_XDP
/// rings later).
pub struct SealedIo<I> {
    inner: I,
    leases: Leases,
    stats: Arc<SealedStats>,
    raw: Vec<(SocketAddr, Bytes)>,
    sealed: SendBatch,
    scratch: Vec<u8>,
}

impl<I: PacketIo> SealedIo<I> {
    pub fn new(inner: I, leases: Leases) -> Self {
        SealedIo {
            inner,
            leases,
            stats: Arc::default(),
            raw: Vec::new(),
            sealed: SendBatch::new(),
            scratch: Vec::new(),
        }
    }

    pub fn stats(&self) -> Arc<SealedStats> {
        self.stats.clone()
    }
}

impl<I: PacketIo> PacketIo for SealedIo<I> {
    async fn recv(&mut self, into: &mut Vec<(SocketAddr, Bytes)>) -> io::Result<()> {
        loop {
            self.inner.recv(&mut self.raw).await?;
            let now = Instant::now();
            for (from, datagram) in self.raw.drain(..) {
                // Opened in place: the datagram's own buffer when it is the
                // only owner (the socket path), else a copy.
                let buf = datagram
                    .try_into_mut()
                    .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
                match self.leases.open(from, buf, now) {
                    Ok(inner) => into.push((from, inner)),
                    Err(reason) => self.stats.count(reason),
                }
            }
            if !into.is_empty() {
                return Ok(());
            }
        }
    }

    async fn send(&mut self, batch: &mut SendBatch) -> io::Result<()> {
        for (to, inner) in batch.iter() {
            self.scratch.clear();
            match self.leases.seal(to, inner, &mut self.scratch) {
                Some(dest) => self.sealed.push(dest, &self.scratch),
                None => {
                    self.stats.unsealable.fetch_add(1, Relaxed);
                }
            }
        }
        batch.clear();
        if self.sealed.is_empty() {
            return Ok(());
        }
        self.inner.send(&mut self.sealed).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Close, CloseCode, Hello, Welcome};

    const ID: u64 = 7;
    const SESSION: u64 = 99;

    fn hello() -> Vec<u8> {
        let mut out = Vec::new();
        Packet::Hello(Hello {
            producer_id: 3,
            nonce: 1,
            first_seq: 0,
            stream: "s".into(),
        })
        .encode(0, &mut out);
        out
    }

    fn close() -> Vec<u8> {
        let mut out = Vec::new();
        Packet::Close(Close {
            code: CloseCode::Normal,
            nonce: 0,
            reason: "producer closed".into(),
        })
        .encode(SESSION, &mut out);
        out
    }

    /// A lease with session `SESSION` open under it, and the producer's
    /// sealer.
    fn leased(now: Instant) -> (Leases, Sealer, SocketAddr) {
        let material = [0x33; EXPORTER_LEN];
        let leases = Leases::default();
        leases.grant(ID, &material, "s", 3, Duration::from_secs(60), now);
        let (mut sealer, _) = seal::keys(&material, ID, Side::Producer);
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let mut out = Vec::new();
        sealer.seal(&hello(), &mut out).unwrap();
        leases.open(from, BytesMut::from(&out[..]), now).unwrap();
        let mut welcome = Vec::new();
        Packet::Welcome(Welcome {
            nonce: 1,
            durable_seq: 0,
            credit: 8,
        })
        .encode(SESSION, &mut welcome);
        assert!(leases.seal(from, &welcome, &mut Vec::new()).is_some());
        (leases, sealer, from)
    }

    fn open(
        leases: &Leases,
        sealer: &mut Sealer,
        from: SocketAddr,
        inner: &[u8],
        now: Instant,
    ) -> Result<Bytes, SealedDrop> {
        let mut out = Vec::new();
        sealer.seal(inner, &mut out).unwrap();
        leases.open(from, BytesMut::from(&out[..]), now)
    }

    #[test]
    fn an_ended_lease_still_opens_its_sessions_last_packets_while_it_drains() {
        let now = Instant::now();
        let (leases, mut sealer, from) = leased(now);
        leases.end(ID, Duration::from_secs(2), now);
        // The CLOSE the producer sent before its connection ended lands.
        let inner = open(&leases, &mut sealer, from, &close(), now).unwrap();
        assert_eq!(&inner[..], &close()[..]);
        // No new session under it.
        let hello = open(&leases, &mut sealer, from, &hello(), now);
        assert_eq!(hello, Err(SealedDrop::ExpiredLease));
        // After the drain it opens nothing, and once revoked it is unknown.
        let later = now + Duration::from_secs(2);
        let late = open(&leases, &mut sealer, from, &close(), later);
        assert_eq!(late, Err(SealedDrop::ExpiredLease));
        leases.revoke(ID);
        let gone = open(&leases, &mut sealer, from, &close(), later);
        assert_eq!(gone, Err(SealedDrop::UnknownLease));
        assert!(leases.is_empty());
    }

    #[test]
    fn ending_never_extends_a_lease() {
        let now = Instant::now();
        let (leases, mut sealer, from) = leased(now);
        let at = now + Duration::from_secs(59);
        leases.end(ID, Duration::from_secs(10), at);
        let after_ttl = now + Duration::from_secs(61);
        let r = open(&leases, &mut sealer, from, &close(), after_ttl);
        assert_eq!(r, Err(SealedDrop::ExpiredLease));
    }
}
