//! Control packets: everything but DATA. Each is small and fixed in shape.

use super::error::{put_short_str, DecodeError, Reader};
use super::MAX_STREAM_NAME;

/// Producer → receiver: open a session (sent with session id 0, retried until
/// a WELCOME or CLOSE naming the same `nonce` comes back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Stable across producer restarts: the key of idempotence.
    pub producer_id: u64,
    /// Random per connection attempt; tells a retried HELLO from a new session.
    pub nonce: u64,
    /// Lowest sequence number the producer will send in this session,
    /// or 0 when it does not know and asks the receiver where it stands.
    pub first_seq: u64,
    pub stream: String,
}

impl Hello {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.nonce.to_be_bytes());
        out.extend_from_slice(&self.first_seq.to_be_bytes());
        put_short_str(out, &self.stream);
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let producer_id = r.u64()?;
        let nonce = r.u64()?;
        let first_seq = r.u64()?;
        let stream = r.short_str()?;
        if stream.is_empty() || stream.len() > MAX_STREAM_NAME {
            return Err(DecodeError::Malformed("empty stream name"));
        }
        r.finish()?;
        Ok(Hello {
            producer_id,
            nonce,
            first_seq,
            stream: stream.to_owned(),
        })
    }
}

/// Receiver → producer: the session is open (its id is in the header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    /// Echo of the HELLO's nonce.
    pub nonce: u64,
    /// Highest sequence number of this producer already durable in the stream:
    /// the producer may free everything at or below it.
    pub durable_seq: u64,
    /// The producer may send sequence numbers up to `durable_seq + credit`.
    pub credit: u32,
}

impl Welcome {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.nonce.to_be_bytes());
        out.extend_from_slice(&self.durable_seq.to_be_bytes());
        out.extend_from_slice(&self.credit.to_be_bytes());
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let w = Welcome {
            nonce: r.u64()?,
            durable_seq: r.u64()?,
            credit: r.u32()?,
        };
        r.finish()?;
        Ok(w)
    }
}

/// Why a session ended. Unknown codes decode as [`CloseCode::Other`] so that a
/// newer peer's reasons still close the session cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// Orderly end of a session.
    Normal,
    /// The receiver refused the session (unknown stream, not allowed, …).
    Rejected,
    /// A newer session of the same producer and stream replaced this one.
    Superseded,
    /// The peer saw nothing for its idle timeout.
    TimedOut,
    /// The peer broke the protocol.
    ProtocolViolation,
    /// The receiver is shutting down.
    ShuttingDown,
    /// The receiver has no such session (it restarted, or forgot it): open a
    /// new one.
    UnknownSession,
    /// The receiver could not store what it received (a spool error): open
    /// a new session and resend what is not durable.
    StorageError,
    Other(u16),
}

impl CloseCode {
    fn to_u16(self) -> u16 {
        match self {
            CloseCode::Normal => 0,
            CloseCode::Rejected => 1,
            CloseCode::Superseded => 2,
            CloseCode::TimedOut => 3,
            CloseCode::ProtocolViolation => 4,
            CloseCode::ShuttingDown => 5,
            CloseCode::UnknownSession => 6,
            CloseCode::StorageError => 7,
            CloseCode::Other(v) => v,
        }
    }

    /// The code a wire value stands for (unknown values are kept as `Other`).
    pub fn from_u16(v: u16) -> Self {
        match v {
            0 => CloseCode::Normal,
            1 => CloseCode::Rejected,
            2 => CloseCode::Superseded,
            3 => CloseCode::TimedOut,
            4 => CloseCode::ProtocolViolation,
            5 => CloseCode::ShuttingDown,
            6 => CloseCode::UnknownSession,
            7 => CloseCode::StorageError,
            other => CloseCode::Other(other),
        }
    }
}

/// Either side: the session is over. During the handshake (session id 0 in
/// the header) `nonce` names the HELLO being refused; otherwise it is 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: CloseCode,
    pub nonce: u64,
    /// Human-readable, for logs and error messages; at most 255 bytes.
    pub reason: String,
}

impl Close {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.code.to_u16().to_be_bytes());
        out.extend_from_slice(&self.nonce.to_be_bytes());
        put_short_str(out, &self.reason);
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let code = CloseCode::from_u16(r.u16()?);
        let nonce = r.u64()?;
        let reason = r.short_str()?.to_owned();
        r.finish()?;
        Ok(Close {
            code,
            nonce,
            reason,
        })
    }
}

/// Receiver → producer: what is durable, what arrived, and how far to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Every message at or below this seq is on stable storage.
    pub durable_seq: u64,
    /// Every message at or below this seq has arrived (durable or not); it
    /// tells a producer waiting on a slow disk not to retransmit.
    pub received_seq: u64,
    /// The producer may send sequence numbers up to `durable_seq + credit`.
    pub credit: u32,
}

impl Status {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.durable_seq.to_be_bytes());
        out.extend_from_slice(&self.received_seq.to_be_bytes());
        out.extend_from_slice(&self.credit.to_be_bytes());
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let s = Status {
            durable_seq: r.u64()?,
            received_seq: r.u64()?,
            credit: r.u32()?,
        };
        if s.durable_seq > s.received_seq {
            return Err(DecodeError::Malformed("durable_seq above received_seq"));
        }
        r.finish()?;
        Ok(s)
    }
}

/// Messages `first..=last` are missing entirely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NackRange {
    pub first: u64,
    pub last: u64,
}

/// Bytes `offset..offset + len` of fragmented message `seq` are missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NackHole {
    pub seq: u64,
    pub offset: u32,
    pub len: u32,
}

/// Receiver → producer: please retransmit these.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nack {
    pub ranges: Vec<NackRange>,
    pub holes: Vec<NackHole>,
}

/// Bytes a NACK body takes for its two counts, and for each range or hole.
pub const NACK_FIXED_LEN: usize = 4;
pub const NACK_RANGE_LEN: usize = 16;
pub const NACK_HOLE_LEN: usize = 16;

impl Nack {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.ranges.len() as u16).to_be_bytes());
        for r in &self.ranges {
            out.extend_from_slice(&r.first.to_be_bytes());
            out.extend_from_slice(&r.last.to_be_bytes());
        }
        out.extend_from_slice(&(self.holes.len() as u16).to_be_bytes());
        for h in &self.holes {
            out.extend_from_slice(&h.seq.to_be_bytes());
            out.extend_from_slice(&h.offset.to_be_bytes());
            out.extend_from_slice(&h.len.to_be_bytes());
        }
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let n = r.u16()? as usize;
        // The count is checked against the bytes present before anything is
        // allocated for it.
        if r.remaining() < n * NACK_RANGE_LEN {
            return Err(DecodeError::Truncated {
                needed: n * NACK_RANGE_LEN - r.remaining(),
            });
        }
        let mut ranges = Vec::with_capacity(n);
        for _ in 0..n {
            let (first, last) = (r.u64()?, r.u64()?);
            if first == 0 || first > last {
                return Err(DecodeError::Malformed("NACK range is empty or names seq 0"));
            }
            ranges.push(NackRange { first, last });
        }
        let n = r.u16()? as usize;
        if r.remaining() < n * NACK_HOLE_LEN {
            return Err(DecodeError::Truncated {
                needed: n * NACK_HOLE_LEN - r.remaining(),
            });
        }
        let mut holes = Vec::with_capacity(n);
        for _ in 0..n {
            let h = NackHole {
                seq: r.u64()?,
                offset: r.u32()?,
                len: r.u32()?,
            };
            if h.seq == 0 || h.len == 0 || h.offset.checked_add(h.len).is_none() {
                return Err(DecodeError::Malformed("NACK hole is empty or out of range"));
            }
            holes.push(h);
        }
        r.finish()?;
        Ok(Nack { ranges, holes })
    }
}

/// Either side: liveness and round-trip time. A ping is answered at once by a
/// pong carrying the same token (the pinger's clock, opaque to the other side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    pub pong: bool,
    pub token: u64,
}

impl Heartbeat {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.pong as u8);
        out.extend_from_slice(&self.token.to_be_bytes());
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let pong = match r.u8()? {
            0 => false,
            1 => true,
            _ => {
                return Err(DecodeError::Malformed(
                    "heartbeat kind is neither ping nor pong",
                ))
            }
        };
        let token = r.u64()?;
        r.finish()?;
        Ok(Heartbeat { pong, token })
    }
}
