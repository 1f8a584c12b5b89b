//! Sealed packets: the authenticated fast path (the DTLS-SRTP pattern).
//!
//! A producer authenticates over QUIC and leases a raw-UDP session. Both ends
//! derive per-lease keys from the TLS session with the keying-material
//! exporter ([`keys`]), and every raw-UDP datagram of the lease, both ways, is
//! an ordinary sluice packet sealed with AES-256-GCM under a clear header that
//! names the lease, the direction and a packet number ([`Header`]).
//! `transport/WIRE.md` ("Sealed packets") is the normative description.
//!
//! The receiver drops a datagram that is not sealed, names an unknown lease,
//! repeats or predates its replay window, or fails authentication, before a
//! single byte of the inner packet is parsed: [`peek`] reads only the clear
//! header, and [`Opener::open`] hands the inner datagram out only once the
//! tag has verified.
//!
//! Like `wire` and `proto`, this module does no I/O and reads no clock, and
//! sealing or opening a packet allocates nothing beyond growing the caller's
//! output buffer. The crypto is ring's, the provider rustls already uses.

mod error;
mod keys;
mod packet;
mod replay;

pub use error::{OpenError, SealError};
pub use keys::{exporter_context, Direction, Side, EXPORTER_LABEL, EXPORTER_LEN};
pub use packet::{
    peek, Header, Opener, Sealer, HEADER_LEN, MAGIC, MAX_BLOCKS_PER_KEY, MAX_INNER, OVERHEAD,
    TAG_LEN, VERSION,
};
pub use replay::{ReplayWindow, REPLAY_WINDOW};

use keys::DirectionKey;

/// The sealer for this side's outgoing packets and the opener for the peer's.
///
/// Call this once per lease and side: a second sealer from the same material
/// would start again at packet number 1 and reuse nonces, which breaks
/// AES-GCM. For the same reason the daemon must never grant the same lease id
/// twice on one QUIC connection.
pub fn keys(material: &[u8; EXPORTER_LEN], lease_id: u64, side: Side) -> (Sealer, Opener) {
    let tx = side.sends();
    let rx = side.receives();
    (
        Sealer::new(DirectionKey::new(material, tx), lease_id, tx),
        Opener::new(DirectionKey::new(material, rx), lease_id, rx),
    )
}
