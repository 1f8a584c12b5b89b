//! The sealed packet: a 20-byte clear header, the inner datagram encrypted,
//! and a 16-byte AES-GCM tag. The header is the AAD, so every bit of the
//! packet is authenticated, while the daemon can still read the lease id (to
//! find the keys) and the packet number (to check replay and form the nonce)
//! before decrypting anything.

use std::fmt;

use ring::aead::Aad;

use super::keys::{Direction, DirectionKey};
use super::replay::ReplayWindow;
use super::{OpenError, SealError};
use crate::wire::MAX_DATAGRAM;

/// "SE" in ASCII. Plain sluice packets start with "SL" (0x534C).
pub const MAGIC: u16 = 0x5345;
/// The sealed-packet format version this code speaks.
pub const VERSION: u8 = 1;
/// magic (2) + version (1) + direction (1) + lease id (8) + packet number (8).
pub const HEADER_LEN: usize = 20;
/// The AES-GCM tag that ends every sealed packet.
pub const TAG_LEN: usize = 16;
/// What sealing adds to an inner datagram; also the shortest sealed packet.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Largest inner datagram that still seals into one UDP datagram.
pub const MAX_INNER: usize = MAX_DATAGRAM - OVERHEAD;
/// How many 16-byte AES blocks one direction of a lease may encrypt: 2^35
/// (512 GiB), the AES-GCM confidentiality limit QUIC uses (RFC 9001 §6.6 and
/// Appendix B.1: an attacker's advantage stays below 2^-57). A lease that has
/// carried that much must be replaced; at 1 GB/s that is every ~9 minutes.
pub const MAX_BLOCKS_PER_KEY: u64 = 1 << 35;

/// The clear header of a sealed packet. Nothing in it is trusted until the
/// packet has been opened: [`peek`] only says which lease to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub direction: Direction,
    pub lease_id: u64,
    pub packet_number: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..2].copy_from_slice(&MAGIC.to_be_bytes());
        h[2] = VERSION;
        h[3] = self.direction as u8;
        h[4..12].copy_from_slice(&self.lease_id.to_be_bytes());
        h[12..20].copy_from_slice(&self.packet_number.to_be_bytes());
        h
    }
}

/// Reads the clear header of a datagram without touching the rest, so the
/// daemon can look the lease up. The magic is checked first, so that a short
/// plain packet counts as `NotSealed` rather than `Truncated`; a sealed packet
/// shorter than a header and a tag is `Truncated` (even an empty inner
/// datagram carries both).
pub fn peek(datagram: &[u8]) -> Result<Header, OpenError> {
    match datagram.get(0..2) {
        None => return Err(OpenError::Truncated),
        Some(m) if m != MAGIC.to_be_bytes() => return Err(OpenError::NotSealed),
        Some(_) => {}
    }
    if datagram.len() < OVERHEAD {
        return Err(OpenError::Truncated);
    }
    if datagram[2] != VERSION {
        return Err(OpenError::BadVersion);
    }
    let direction = match datagram[3] {
        0 => Direction::ProducerToDaemon,
        1 => Direction::DaemonToProducer,
        // Not a direction at all: a damaged or foreign header.
        _ => return Err(OpenError::WrongDirection),
    };
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&datagram[at..at + 8]);
        u64::from_be_bytes(b)
    };
    Ok(Header {
        direction,
        lease_id: u64_at(4),
        packet_number: u64_at(12),
    })
}

/// Seals this side's outgoing datagrams of one lease. Holds the packet-number
/// counter: there must be exactly one per lease and side (see [`keys`](super::keys)).
pub struct Sealer {
    key: DirectionKey,
    direction: Direction,
    lease_id: u64,
    /// The last packet number used (0: none yet).
    last_pn: u64,
    /// AES blocks encrypted so far, against [`MAX_BLOCKS_PER_KEY`].
    blocks: u64,
}

impl Sealer {
    pub(super) fn new(key: DirectionKey, lease_id: u64, direction: Direction) -> Self {
        Sealer {
            key,
            direction,
            lease_id,
            last_pn: 0,
            blocks: 0,
        }
    }

    /// Bytes sealing adds to a datagram: keep inner datagrams to
    /// `max_datagram - Sealer::overhead()`.
    pub fn overhead() -> usize {
        OVERHEAD
    }

    pub fn lease_id(&self) -> u64 {
        self.lease_id
    }

    /// How many packets this sealer has sealed (also the last packet number used).
    pub fn packets_sealed(&self) -> u64 {
        self.last_pn
    }

    /// How many AES blocks this sealer has encrypted: renew the lease before
    /// this reaches [`MAX_BLOCKS_PER_KEY`], or `seal` fails with `Exhausted`.
    pub fn blocks_sealed(&self) -> u64 {
        self.blocks
    }

    /// Seals `inner` under the next packet number into `out`, replacing its
    /// contents. Fails only when this lease's key is used up (packet numbers
    /// or the AES-GCM usage limit) or the result would not fit in a UDP
    /// datagram; nothing is written then.
    pub fn seal(&mut self, inner: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        let too_large = SealError::TooLarge { len: inner.len() };
        if inner.len() > MAX_INNER {
            return Err(too_large);
        }
        let pn = self.last_pn.checked_add(1).ok_or(SealError::Exhausted)?;
        // The payload's blocks, plus the one that masks the tag.
        let blocks = self.blocks + inner.len().div_ceil(16) as u64 + 1;
        if blocks > MAX_BLOCKS_PER_KEY {
            return Err(SealError::Exhausted);
        }
        // The number is spent before it is used: whatever happens next, it
        // never seals a second packet.
        self.last_pn = pn;
        self.blocks = blocks;
        let header = Header {
            direction: self.direction,
            lease_id: self.lease_id,
            packet_number: pn,
        }
        .encode();
        out.clear();
        out.reserve(OVERHEAD + inner.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(inner);
        let sealed = self.key.key.seal_in_place_separate_tag(
            self.key.nonce(pn),
            Aad::from(header),
            &mut out[HEADER_LEN..],
        );
        match sealed {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                Ok(())
            }
            // ring refuses only inputs of many GiB, already excluded above.
            Err(_) => {
                out.clear();
                Err(too_large)
            }
        }
    }
}

/// Opens the peer's datagrams of one lease, and keeps their replay window.
pub struct Opener {
    key: DirectionKey,
    direction: Direction,
    lease_id: u64,
    window: ReplayWindow,
}

impl Opener {
    pub(super) fn new(key: DirectionKey, lease_id: u64, direction: Direction) -> Self {
        Opener {
            key,
            direction,
            lease_id,
            window: ReplayWindow::new(),
        }
    }

    pub fn lease_id(&self) -> u64 {
        self.lease_id
    }

    /// The replay window: its highest number is the last packet heard from the peer.
    pub fn window(&self) -> &ReplayWindow {
        &self.window
    }

    /// Authenticates and decrypts `datagram` in place and returns the inner
    /// datagram, a sub-slice of it. Cheap checks come first: the header must
    /// name this lease and direction and a packet number the window still
    /// accepts, so replays and stale packets cost no AES work. The number is
    /// marked as seen only after the tag verified, so a forgery can neither
    /// move the window nor burn the number of a real packet still in flight.
    ///
    /// On `AuthFailed` the body of `datagram` has been overwritten (ring zeroes
    /// it); on the other errors `datagram` is untouched.
    pub fn open<'a>(&mut self, datagram: &'a mut [u8]) -> Result<&'a [u8], OpenError> {
        let header = peek(datagram)?;
        if header.direction != self.direction {
            return Err(OpenError::WrongDirection);
        }
        if header.lease_id != self.lease_id {
            return Err(OpenError::WrongLease);
        }
        let pn = header.packet_number;
        self.window.check(pn)?;
        let (clear, sealed) = datagram.split_at_mut(HEADER_LEN);
        let inner = self
            .key
            .key
            .open_in_place(self.key.nonce(pn), Aad::from(&*clear), sealed)
            .map_err(|_| OpenError::AuthFailed)?;
        self.window.mark(pn);
        Ok(inner)
    }
}

// Hand-written so that keys never reach a log: only what identifies the lease.
impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("direction", &self.direction)
            .field("lease_id", &self.lease_id)
            .field("last_pn", &self.last_pn)
            .field("blocks", &self.blocks)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("direction", &self.direction)
            .field("lease_id", &self.lease_id)
            .field("highest_pn", &self.window.highest())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{keys, Side, EXPORTER_LEN};
    use super::*;

    #[test]
    fn sealing_stops_when_packet_numbers_run_out() {
        let (mut tx, mut rx) = (
            keys(&[1; EXPORTER_LEN], 9, Side::Producer).0,
            keys(&[1; EXPORTER_LEN], 9, Side::Daemon).1,
        );
        tx.last_pn = u64::MAX - 1;
        let mut out = Vec::new();
        tx.seal(b"last", &mut out).unwrap();
        assert_eq!(peek(&out).unwrap().packet_number, u64::MAX);
        assert_eq!(rx.open(&mut out).unwrap(), b"last");
        out.clear();
        assert_eq!(tx.seal(b"one more", &mut out), Err(SealError::Exhausted));
        assert!(out.is_empty(), "nothing written on failure");
        assert_eq!(tx.seal(b"", &mut out), Err(SealError::Exhausted));
    }

    #[test]
    fn sealing_stops_at_the_aes_gcm_usage_limit() {
        let (mut tx, _) = keys(&[1; EXPORTER_LEN], 9, Side::Producer);
        let mut out = Vec::new();
        // 32 bytes is 2 blocks, plus 1 for the tag: exactly fills the budget.
        tx.blocks = MAX_BLOCKS_PER_KEY - 3;
        tx.seal(&[0; 32], &mut out).unwrap();
        assert_eq!(tx.blocks_sealed(), MAX_BLOCKS_PER_KEY);
        out.clear();
        assert_eq!(tx.seal(b"", &mut out), Err(SealError::Exhausted));
        assert!(out.is_empty());
        assert_eq!(tx.packets_sealed(), 1);
    }

    #[test]
    fn oversized_inner_datagrams_are_refused() {
        let (mut tx, _) = keys(&[2; EXPORTER_LEN], 1, Side::Producer);
        let mut out = Vec::new();
        tx.seal(&vec![0; MAX_INNER], &mut out).unwrap();
        assert_eq!(out.len(), MAX_DATAGRAM);
        assert_eq!(
            tx.seal(&vec![0; MAX_INNER + 1], &mut out),
            Err(SealError::TooLarge { len: MAX_INNER + 1 })
        );
        assert_eq!(tx.packets_sealed(), 1, "a refused packet spends no number");
    }

    #[test]
    fn debug_shows_no_key_material() {
        let (tx, rx) = keys(&[0xAB; EXPORTER_LEN], 3, Side::Daemon);
        let s = format!("{tx:?} {rx:?}");
        assert!(s.contains("lease_id: 3"), "{s}");
        assert!(
            !s.contains("171") && !s.to_lowercase().contains("0xab"),
            "{s}"
        );
    }
}
