use super::error::{DecodeError, Reader};

/// "SL" in ASCII: the first two bytes of every sluice packet.
pub const MAGIC: u16 = 0x534C;
/// The wire version this code speaks. See WIRE.md for the versioning rule.
pub const VERSION: u8 = 1;
/// magic (2) + version (1) + type (1) + flags (1) + session id (8).
pub const HEADER_LEN: usize = 13;
/// Flags a version-1 decoder understands: none yet. Every bit is reserved (the
/// authenticated fast path will define one); a packet with an unknown bit set
/// is dropped, because a flag may change what the body means.
const KNOWN_FLAGS: u8 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    Hello = 1,
    Welcome = 2,
    Close = 3,
    Data = 4,
    Status = 5,
    Nack = 6,
    Heartbeat = 7,
}

impl PacketType {
    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            1 => PacketType::Hello,
            2 => PacketType::Welcome,
            3 => PacketType::Close,
            4 => PacketType::Data,
            5 => PacketType::Status,
            6 => PacketType::Nack,
            7 => PacketType::Heartbeat,
            other => return Err(DecodeError::UnknownType(other)),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub packet_type: PacketType,
    pub flags: u8,
    /// 0 in a HELLO (no session yet); the receiver-assigned id otherwise.
    pub session_id: u64,
}

impl Header {
    pub fn new(packet_type: PacketType, session_id: u64) -> Self {
        Header {
            version: VERSION,
            packet_type,
            flags: 0,
            session_id,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC.to_be_bytes());
        out.push(self.version);
        out.push(self.packet_type as u8);
        out.push(self.flags);
        out.extend_from_slice(&self.session_id.to_be_bytes());
    }

    /// Checks magic and version before anything else, so that foreign traffic
    /// and other versions are told apart from damaged sluice packets.
    pub fn decode(datagram: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(datagram);
        if r.u16()? != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError::WrongVersion(version));
        }
        let packet_type = PacketType::from_u8(r.u8()?)?;
        let flags = r.u8()?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(DecodeError::UnknownFlags(flags & !KNOWN_FLAGS));
        }
        let session_id = r.u64()?;
        Ok(Header {
            version,
            packet_type,
            flags,
            session_id,
        })
    }
}
