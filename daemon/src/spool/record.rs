//! The on-disk record: a fixed header, then the payload.
//!
//! ```text
//! 0   len        u32   payload length
//! 4   crc        u32   CRC32C of bytes 8 .. 40 + len
//! 8   flags      u16   0 (reserved)
//! 10  version    u8    1
//! 11  reserved   u8    0
//! 12  producer   u64
//! 20  seq        u64   the producer's sequence number
//! 28  timestamp  u64   microseconds since the Unix epoch, when appended
//! 36  reserved   u32   0
//! 40  payload
//! ```
//! Little-endian. A region of zeroes never decodes as a record (its CRC
//! would have to be the CRC of zeroes, which it is not), so the unwritten
//! end of a segment is told apart from data.

use bytes::Bytes;

pub const HEADER_LEN: usize = 40;
const VERSION: u8 = 1;
/// Largest payload accepted: a message of the transport's maximum size
/// (16 MiB), with room for the envelope it is stored in when a consumer
/// group dead-letters it (its names, reason and delivery history). A
/// consumer's long frame (16 MiB + 64 KiB) still holds such a record.
pub const MAX_PAYLOAD: usize = (16 << 20) + (32 << 10);

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub producer: u64,
    pub seq: u64,
    pub timestamp_us: u64,
    pub payload: Bytes,
}

impl Record {
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Appends the encoded record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&0u16.to_le_bytes());
        out.push(VERSION);
        out.push(0);
        out.extend_from_slice(&self.producer.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.timestamp_us.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.payload);
        let crc = crc32c::crc32c(&out[start + 8..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        // Segments are sized, and backlogs counted, by `encoded_len`.
        debug_assert_eq!(
            out.len() - start,
            self.encoded_len(),
            "a record's bytes differ from its encoded length"
        );
    }
}

/// Why bytes are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Fewer bytes than a header, or than the header says.
    Short,
    /// Length beyond what a record can be.
    BadLength,
    BadChecksum,
    BadVersion,
}

/// The header fields needed to read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: usize,
    pub crc: u32,
    pub producer: u64,
    pub seq: u64,
    pub timestamp_us: u64,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Parses a header (without checking the CRC, which needs the payload).
pub fn parse_header(b: &[u8]) -> Result<Header, Invalid> {
    if b.len() < HEADER_LEN {
        return Err(Invalid::Short);
    }
    let len = u32_at(b, 0) as usize;
    if len > MAX_PAYLOAD {
        return Err(Invalid::BadLength);
    }
    Ok(Header {
        len,
        crc: u32_at(b, 4),
        producer: u64_at(b, 12),
        seq: u64_at(b, 20),
        timestamp_us: u64_at(b, 28),
    })
}

/// Decodes the record at the start of `b` (header and payload, CRC checked).
pub fn decode(b: &[u8]) -> Result<(Record, usize), Invalid> {
    let (h, total) = check(b)?;
    Ok((
        h.record(Bytes::copy_from_slice(&b[HEADER_LEN..total])),
        total,
    ))
}

/// Checks the record at the start of `b` (header, CRC, version) without
/// copying its payload: it is `b[HEADER_LEN..total]`. Returns its header
/// and its length in bytes (`total`).
pub fn check(b: &[u8]) -> Result<(Header, usize), Invalid> {
    let h = parse_header(b)?;
    let total = HEADER_LEN + h.len;
    if b.len() < total {
        return Err(Invalid::Short);
    }
    if crc32c::crc32c(&b[8..total]) != h.crc {
        return Err(Invalid::BadChecksum);
    }
    if b[10] != VERSION {
        return Err(Invalid::BadVersion);
    }
    Ok((h, total))
}

impl Header {
    /// The record with this header and `payload`.
    pub fn record(&self, payload: Bytes) -> Record {
        Record {
            producer: self.producer,
            seq: self.seq,
            timestamp_us: self.timestamp_us,
            payload,
        }
    }
}

/// Microseconds since the Unix epoch: a record's timestamp.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(n: usize) -> Record {
        Record {
            producer: 7,
            seq: 9,
            timestamp_us: 1_700_000_000_000_000,
            payload: Bytes::from(vec![0xAB; n]),
        }
    }

    #[test]
    fn round_trip_and_damage_detection() {
        let mut out = Vec::new();
        rec(100).encode(&mut out);
        assert_eq!(decode(&out), Ok((rec(100), HEADER_LEN + 100)));
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x04;
            assert!(decode(&bad).is_err(), "flip at {i} undetected");
        }
        assert_eq!(decode(&out[..out.len() - 1]), Err(Invalid::Short));
        assert!(decode(&[0u8; 200]).is_err(), "zeroes are not a record");
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&b);
        }
    }
}
