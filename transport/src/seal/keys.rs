//! Per-lease keys, derived from the QUIC connection's TLS session with the
//! keying-material exporter (RFC 5705 / RFC 8446 §7.5), as DTLS-SRTP does.
//! (What it derives is put to use by [`keys`](super::keys), which makes a
//! lease's sealer and opener.)
//!
//! Both ends call `Connection::export_keying_material(&mut material,
//! EXPORTER_LABEL, &exporter_context(lease_id))` on the QUIC connection the
//! lease was granted over, and hand the result to [`keys`]. Only the two ends
//! of that TLS session can compute it, so a packet that opens was sealed by
//! the authenticated peer, for this lease.

use ring::aead::{LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

/// The exporter label. Changing it (or the layout below) is a new version.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-sluice-fast-path-v1";

/// AES-256 key length.
const KEY_LEN: usize = 32;
/// Per-direction IV: the AES-GCM nonce length.
const IV_LEN: usize = NONCE_LEN;

/// Bytes to export: producer→daemon key ‖ IV, then daemon→producer key ‖ IV.
pub const EXPORTER_LEN: usize = 2 * (KEY_LEN + IV_LEN);

/// The exporter context for a lease: its id as 8 bytes big-endian. Binding the
/// lease id into the derivation gives every lease of a connection its own
/// keys, so packet numbers can restart at 1 without ever reusing a nonce.
pub fn exporter_context(lease_id: u64) -> [u8; 8] {
    lease_id.to_be_bytes()
}

/// Which way a sealed packet travels. It is in the header (and so in the AAD)
/// and each direction has its own key, so a packet reflected back at its
/// sender is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Direction {
    ProducerToDaemon = 0,
    DaemonToProducer = 1,
}

impl Direction {
    pub fn reverse(self) -> Self {
        match self {
            Direction::ProducerToDaemon => Direction::DaemonToProducer,
            Direction::DaemonToProducer => Direction::ProducerToDaemon,
        }
    }
}

/// Which end of the lease this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Producer,
    Daemon,
}

impl Side {
    /// The direction this side seals (sends) in.
    pub fn sends(self) -> Direction {
        match self {
            Side::Producer => Direction::ProducerToDaemon,
            Side::Daemon => Direction::DaemonToProducer,
        }
    }

    /// The direction this side opens (receives) in.
    pub fn receives(self) -> Direction {
        self.sends().reverse()
    }
}

/// The AEAD key and IV of one direction of one lease.
pub(super) struct DirectionKey {
    pub(super) key: LessSafeKey,
    iv: [u8; IV_LEN],
}

impl DirectionKey {
    pub(super) fn new(material: &[u8; EXPORTER_LEN], direction: Direction) -> Self {
        let start = match direction {
            Direction::ProducerToDaemon => 0,
            Direction::DaemonToProducer => KEY_LEN + IV_LEN,
        };
        let key = &material[start..start + KEY_LEN];
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&material[start + KEY_LEN..start + KEY_LEN + IV_LEN]);
        let key = UnboundKey::new(&AES_256_GCM, key).expect("an AES-256 key is 32 bytes");
        DirectionKey {
            key: LessSafeKey::new(key),
            iv,
        }
    }

    /// The nonce for packet number `pn`: the IV with `pn` (big-endian) XORed
    /// into its last 8 bytes, as in TLS 1.3 and QUIC. Distinct numbers give
    /// distinct nonces, and the number itself travels in the clear header.
    pub(super) fn nonce(&self, pn: u64) -> Nonce {
        let mut n = self.iv;
        for (b, p) in n[IV_LEN - 8..].iter_mut().zip(pn.to_be_bytes()) {
            *b ^= p;
        }
        Nonce::assume_unique_for_key(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_the_exported_material() {
        assert_eq!(EXPORTER_LEN, 88);
        assert_eq!(
            exporter_context(0x0102_0304_0506_0708),
            [1, 2, 3, 4, 5, 6, 7, 8]
        );
        let material: [u8; EXPORTER_LEN] = std::array::from_fn(|i| i as u8);
        let p2d = DirectionKey::new(&material, Direction::ProducerToDaemon);
        let d2p = DirectionKey::new(&material, Direction::DaemonToProducer);
        assert_eq!(p2d.iv, <[u8; 12]>::try_from(&material[32..44]).unwrap());
        assert_eq!(d2p.iv, <[u8; 12]>::try_from(&material[76..88]).unwrap());
    }

    #[test]
    fn nonce_xors_the_packet_number_into_the_low_bytes() {
        let material = [0u8; EXPORTER_LEN];
        let k = DirectionKey::new(&material, Direction::ProducerToDaemon);
        assert_eq!(
            k.nonce(0x0102_0304_0506_0708).as_ref(),
            &[0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
        );
        let mut material = [0u8; EXPORTER_LEN];
        material[32..44].fill(0xFF);
        let k = DirectionKey::new(&material, Direction::ProducerToDaemon);
        assert_eq!(
            k.nonce(1).as_ref(),
            &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE]
        );
    }

    #[test]
    fn sides_are_mirrored() {
        assert_eq!(Side::Producer.sends(), Side::Daemon.receives());
        assert_eq!(Side::Daemon.sends(), Side::Producer.receives());
        assert_ne!(Side::Producer.sends(), Side::Producer.receives());
    }
}
