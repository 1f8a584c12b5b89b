//! The sluice wire format: one packet per UDP datagram.
//!
//! Every packet starts with a fixed [`Header`] (magic, version, type, flags,
//! session id), then a body whose layout depends on the type, then a CRC32C of
//! everything before it. All integers are big-endian. The checksum is ours
//! because the UDP one cannot be relied on: AF_XDP receivers see packets whose
//! checksum was left to an offload, and a flipped bit must never reach the spool. `transport/WIRE.md` is the normative description;
//! this module is its implementation.
//!
//! Decoding is total: any byte string yields a [`Packet`] or a [`DecodeError`],
//! never a panic, and no allocation is sized by a length read from the wire
//! before that length has been checked against the bytes actually present.

mod control;
mod data;
mod error;
mod header;

pub use control::{
    Close, CloseCode, Heartbeat, Hello, Nack, NackHole, NackRange, Status, Welcome, NACK_FIXED_LEN,
    NACK_HOLE_LEN, NACK_RANGE_LEN,
};
pub use data::{DataEntry, DataFrame, DataWriter, Fragment};
pub use error::DecodeError;
pub use header::{Header, PacketType, HEADER_LEN, MAGIC, VERSION};

use bytes::Bytes;

/// Largest message a producer may send (a message above one datagram is fragmented).
pub const MAX_MESSAGE_LEN: usize = 16 * 1024 * 1024;

/// Largest UDP payload over IPv4 (65,535 − 20 − 8). No datagram we build or accept is larger.
pub const MAX_DATAGRAM: usize = 65_507;

/// The CRC32C trailer every packet ends with.
pub const TRAILER_LEN: usize = 4;

/// Longest stream name, in bytes of UTF-8.
pub const MAX_STREAM_NAME: usize = 255;

/// One decoded packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Hello(Hello),
    Welcome(Welcome),
    Close(Close),
    Data(DataFrame),
    Status(Status),
    Nack(Nack),
    Heartbeat(Heartbeat),
}

/// A packet together with the session it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub header: Header,
    pub packet: Packet,
}

impl Packet {
    /// The type byte this packet carries in its header.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Hello(_) => PacketType::Hello,
            Packet::Welcome(_) => PacketType::Welcome,
            Packet::Close(_) => PacketType::Close,
            Packet::Data(_) => PacketType::Data,
            Packet::Status(_) => PacketType::Status,
            Packet::Nack(_) => PacketType::Nack,
            Packet::Heartbeat(_) => PacketType::Heartbeat,
        }
    }

    /// Decodes one datagram. DATA bodies are validated whole here, so that a
    /// malformed datagram is rejected before any of its messages is used, and
    /// are then borrowed from `datagram` without copying.
    pub fn decode(datagram: &Bytes) -> Result<Decoded, DecodeError> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(DecodeError::Oversized {
                len: datagram.len(),
            });
        }
        let header = Header::decode(datagram)?;
        if datagram.len() < HEADER_LEN + TRAILER_LEN {
            return Err(DecodeError::Truncated {
                needed: HEADER_LEN + TRAILER_LEN - datagram.len(),
            });
        }
        let end = datagram.len() - TRAILER_LEN;
        let mut sum = [0u8; TRAILER_LEN];
        sum.copy_from_slice(&datagram[end..]);
        if crc32c::crc32c(&datagram[..end]) != u32::from_be_bytes(sum) {
            return Err(DecodeError::BadChecksum);
        }
        let body = &datagram[HEADER_LEN..end];
        let packet = match header.packet_type {
            PacketType::Hello => Packet::Hello(Hello::decode(body)?),
            PacketType::Welcome => Packet::Welcome(Welcome::decode(body)?),
            PacketType::Close => Packet::Close(Close::decode(body)?),
            PacketType::Data => Packet::Data(DataFrame::decode(datagram.slice(HEADER_LEN..end))?),
            PacketType::Status => Packet::Status(Status::decode(body)?),
            PacketType::Nack => Packet::Nack(Nack::decode(body)?),
            PacketType::Heartbeat => Packet::Heartbeat(Heartbeat::decode(body)?),
        };
        Ok(Decoded { header, packet })
    }

    /// Encodes a control packet (anything but DATA, which is built with
    /// [`DataWriter`]) into `out`, replacing its contents.
    pub fn encode(&self, session_id: u64, out: &mut Vec<u8>) {
        out.clear();
        Header::new(self.packet_type(), session_id).encode(out);
        match self {
            Packet::Hello(p) => p.encode(out),
            Packet::Welcome(p) => p.encode(out),
            Packet::Close(p) => p.encode(out),
            Packet::Data(p) => out.extend_from_slice(p.body()),
            Packet::Status(p) => p.encode(out),
            Packet::Nack(p) => p.encode(out),
            Packet::Heartbeat(p) => p.encode(out),
        }
        seal(out);
    }
}

/// Appends the CRC32C trailer over everything in `out`.
pub(crate) fn seal(out: &mut Vec<u8>) {
    let sum = crc32c::crc32c(out);
    out.extend_from_slice(&sum.to_be_bytes());
}
