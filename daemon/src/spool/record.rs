//! The on-disk record: a fixed header, then the payload.
//!
//! ```text
//! 0   len        u32   payload length
//! 4   crc        u32   CRC32C of bytes 8 .. 40 + len
//! 8   flags      u16   1: keyed (a key block precedes the payload); no other bit
//! 10  version    u8    1
//! 11  reserved   u8    0
//! 12  producer   u64
//! 20  seq        u64   the producer's sequence number
//! 28  timestamp  u64   microseconds since the Unix epoch, when appended
//! 36  reserved   u32   0
//! 40  payload, or (keyed) the key block, then the payload
//! ```
//! `len` counts everything after the header. The key block says which
//! publish request the record begins (an HTTP `Idempotency-Key`): on the
//! first record of a request only, so that the key is durable in the same
//! commit as the request's records, and a retried request is found in the
//! idempotence table after a crash:
//! ```text
//! 0   key_len    u16   1 ..= 255
//! 2   key        key_len bytes, UTF-8
//! .   hash       32    SHA-256 of the request's body (a retry with another body is refused)
//! .   count      u32   the request's records, this one and the count - 1 after it
//! ```
//! Little-endian. A region of zeroes never decodes as a record (its CRC
//! would have to be the CRC of zeroes, which it is not), so the unwritten
//! end of a segment is told apart from data.

use std::sync::Arc;

use bytes::Bytes;

pub const HEADER_LEN: usize = 40;
const VERSION: u8 = 1;
/// The record begins a keyed request: a key block precedes its payload.
pub const FLAG_KEYED: u16 = 1;
/// Longest idempotency key (bytes).
pub const MAX_KEY_LEN: usize = 255;
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
    /// On the first record of a keyed request: its key.
    pub key: Option<Arc<RequestKey>>,
}

/// The idempotency key of a publish request, stored with its first record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    /// 1 to [`MAX_KEY_LEN`] bytes.
    pub key: String,
    /// SHA-256 of the request's body.
    pub hash: [u8; 32],
    /// The request's records (this one and those right after it).
    pub count: u32,
}

impl RequestKey {
    fn encoded_len(&self) -> usize {
        2 + self.key.len() + 32 + 4
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.key.len() as u16).to_le_bytes());
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(&self.count.to_le_bytes());
    }

    /// The key block at the start of a keyed record's body, and its length.
    pub fn decode(b: &[u8]) -> Option<(RequestKey, usize)> {
        let len = u16::from_le_bytes(b.get(..2)?.try_into().ok()?) as usize;
        if len == 0 || len > MAX_KEY_LEN {
            return None;
        }
        let key = std::str::from_utf8(b.get(2..2 + len)?).ok()?.to_owned();
        let hash = b.get(2 + len..34 + len)?.try_into().ok()?;
        let count = u32::from_le_bytes(b.get(34 + len..38 + len)?.try_into().ok()?);
        (count >= 1).then_some((RequestKey { key, hash, count }, 38 + len))
    }
}

impl Record {
    /// A record without a key.
    pub fn new(producer: u64, seq: u64, timestamp_us: u64, payload: Bytes) -> Record {
        Record {
            producer,
            seq,
            timestamp_us,
            payload,
            key: None,
        }
    }

    /// Bytes after the header: the key block (if any) and the payload.
    pub fn body_len(&self) -> usize {
        self.key.as_ref().map_or(0, |k| k.encoded_len()) + self.payload.len()
    }

    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body_len()
    }

    /// Appends the encoded record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&(self.body_len() as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        let flags = if self.key.is_some() { FLAG_KEYED } else { 0 };
        out.extend_from_slice(&flags.to_le_bytes());
        out.push(VERSION);
        out.push(0);
        out.extend_from_slice(&self.producer.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.timestamp_us.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        if let Some(k) = &self.key {
            k.encode(out);
        }
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
    /// A flag this version does not know, or a key block that does not
    /// parse.
    BadFlags,
}

/// The header fields needed to read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes after the header (key block and payload).
    pub len: usize,
    pub flags: u16,
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
        flags: u16::from_le_bytes([b[8], b[9]]),
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
    // A reader that took an unknown flag's bytes for payload would deliver
    // them: refused instead, like damage.
    match h.flags {
        0 => {}
        FLAG_KEYED if RequestKey::decode(&b[HEADER_LEN..total]).is_some() => {}
        _ => return Err(Invalid::BadFlags),
    }
    Ok((h, total))
}

impl Header {
    /// The record with this header and `body` (what follows the header;
    /// checked by [`check`]).
    pub fn record(&self, body: Bytes) -> Record {
        let (key, payload) = match self.key(&body) {
            Some((k, n)) => (Some(Arc::new(k)), body.slice(n..)),
            None => (None, body),
        };
        Record {
            producer: self.producer,
            seq: self.seq,
            timestamp_us: self.timestamp_us,
            payload,
            key,
        }
    }

    /// A keyed record's key block, from its `body`, and the block's length.
    pub fn key(&self, body: &[u8]) -> Option<(RequestKey, usize)> {
        (self.flags & FLAG_KEYED != 0)
            .then(|| RequestKey::decode(body))
            .flatten()
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
        Record::new(7, 9, 1_700_000_000_000_000, Bytes::from(vec![0xAB; n]))
    }

    #[test]
    fn a_keyed_record_round_trips_and_its_payload_is_only_the_payload() {
        let mut r = rec(10);
        r.key = Some(Arc::new(RequestKey {
            key: "order-42".into(),
            hash: [7; 32],
            count: 3,
        }));
        let mut out = Vec::new();
        r.encode(&mut out);
        assert_eq!(out.len(), r.encoded_len());
        let (back, n) = decode(&out).unwrap();
        assert_eq!((back.clone(), n), (r, out.len()));
        assert_eq!(back.payload.len(), 10);
        // An unknown flag is refused even with a good checksum.
        let mut odd = out.clone();
        odd[8] = 2;
        let crc = crc32c::crc32c(&odd[8..]);
        odd[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&odd), Err(Invalid::BadFlags));
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
