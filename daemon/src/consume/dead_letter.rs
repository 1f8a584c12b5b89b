//! The dead-letter envelope: what a message that could not be processed is
//! stored as, in its stream's dead-letter stream (`<stream>.dlq`), one
//! record per dead letter.
//!
//! The record's producer is the group's dead-letter producer
//! ([`dlq_producer_id`]) and its seq the group's dead-letter seq, so that
//! storing a dead letter again after a crash is de-duplicated by the spool.
//!
//! ```text
//! 0   magic         "SLDL"
//! 4   version       u8    1
//! 5   offset        u64   of the message in its stream
//! 13  producer      u64   the original record's producer
//! 21  seq           u64   and seq
//! 29  timestamp_us  u64   when the original was stored
//! 37  dead_at_us    u64   when it was dead-lettered
//! 45  deliveries    u32   how often it was delivered
//! 49  stream        str
//!     group         str
//!     reason        str
//!     history       u32 count, then per attempt:
//!                     at_us u64, outcome u8 (1 deadline expired,
//!                     2 nacked, 3 member left), member str
//!     payload       u32 length, then the original payload
//! ```
//! Little-endian; `str` is a u32 length and UTF-8 bytes. Nothing follows
//! the payload. The record's CRC covers the envelope.

use bytes::Bytes;
use ring::digest;
use thiserror::Error;

use crate::spool::writer::check_name;
use crate::spool::SpoolError;

const MAGIC: &[u8; 4] = b"SLDL";
const VERSION: u8 = 1;
/// Bytes of an attempt without its member name.
const ATTEMPT_FIXED: usize = 8 + 1 + 4;

/// A message moved to the dead-letter stream, with why and what was tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The stream and consumer group it was dead-lettered from.
    pub stream: String,
    pub group: String,
    /// Its offset in `stream`.
    pub offset: u64,
    /// The original record's producer, seq and timestamp.
    pub producer: u64,
    pub seq: u64,
    pub timestamp_us: u64,
    /// When it was dead-lettered (µs since the Unix epoch).
    pub dead_at_us: u64,
    pub reason: String,
    /// How many times it was delivered.
    pub deliveries: u32,
    /// The delivery attempts the group remembers, oldest first.
    pub history: Vec<Attempt>,
    /// The original payload.
    pub payload: Bytes,
}

/// One delivery that did not end in an ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// When the attempt ended (µs since the Unix epoch).
    pub at_us: u64,
    /// The member it was delivered to.
    pub member: String,
    pub outcome: AttemptOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    /// The ack deadline passed.
    DeadlineExpired,
    /// The member refused it.
    Nacked,
    /// The member left (or its connection died) holding it.
    MemberLeft,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::DeadlineExpired => "deadline-expired",
            AttemptOutcome::Nacked => "nacked",
            AttemptOutcome::MemberLeft => "member-left",
        }
    }

    fn code(self) -> u8 {
        match self {
            AttemptOutcome::DeadlineExpired => 1,
            AttemptOutcome::Nacked => 2,
            AttemptOutcome::MemberLeft => 3,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => AttemptOutcome::DeadlineExpired,
            2 => AttemptOutcome::Nacked,
            3 => AttemptOutcome::MemberLeft,
            _ => return None,
        })
    }
}

impl std::fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why bytes are not a dead-letter envelope.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DeadLetterError {
    #[error("not a dead-letter envelope (no SLDL magic)")]
    BadMagic,
    #[error("dead-letter envelope version {0} is not supported (this sluice reads version 1)")]
    UnsupportedVersion(u8),
    #[error("dead-letter envelope cut short in its {0}")]
    Truncated(&'static str),
    #[error("dead-letter envelope: {0} is not UTF-8")]
    BadUtf8(&'static str),
    #[error("dead-letter envelope: unknown delivery outcome {0}")]
    BadOutcome(u8),
    #[error("dead-letter envelope: {0} bytes after the payload")]
    TrailingBytes(usize),
}

impl DeadLetter {
    /// Length of the encoded envelope (to check it against the dead-letter
    /// stream's record limit before appending).
    pub fn encoded_len(&self) -> usize {
        49 + 3 * 4
            + self.stream.len()
            + self.group.len()
            + self.reason.len()
            + 4
            + self
                .history
                .iter()
                .map(|a| ATTEMPT_FIXED + a.member.len())
                .sum::<usize>()
            + 4
            + self.payload.len()
    }
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    let n = u32::try_from(n).expect("dead-letter fields are under 4 GiB");
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// Encodes the envelope (the payload of its dead-letter record).
pub fn encode(d: &DeadLetter) -> Vec<u8> {
    let mut out = Vec::with_capacity(d.encoded_len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    for v in [d.offset, d.producer, d.seq, d.timestamp_us, d.dead_at_us] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&d.deliveries.to_le_bytes());
    put_str(&mut out, &d.stream);
    put_str(&mut out, &d.group);
    put_str(&mut out, &d.reason);
    put_len(&mut out, d.history.len());
    for a in &d.history {
        out.extend_from_slice(&a.at_us.to_le_bytes());
        out.push(a.outcome.code());
        put_str(&mut out, &a.member);
    }
    put_len(&mut out, d.payload.len());
    out.extend_from_slice(&d.payload);
    debug_assert_eq!(out.len(), d.encoded_len());
    out
}

/// Reads fields off the front of the input, tracking where it is.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DeadLetterError> {
        let rest = &self.b[self.pos..];
        let s = rest.get(..n).ok_or(DeadLetterError::Truncated(what))?;
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DeadLetterError> {
        Ok(self.bytes(N, what)?.try_into().expect("N bytes"))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DeadLetterError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DeadLetterError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn str(&mut self, what: &'static str) -> Result<String, DeadLetterError> {
        let n = self.u32(what)? as usize;
        let b = self.bytes(n, what)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| DeadLetterError::BadUtf8(what))
    }
}

/// Decodes an envelope, copying the payload. Never panics; allocates no
/// more than the input's size.
pub fn decode(b: &[u8]) -> Result<DeadLetter, DeadLetterError> {
    let (d, range) = decode_parts(b)?;
    Ok(DeadLetter {
        payload: Bytes::copy_from_slice(&b[range]),
        ..d
    })
}

/// Decodes an envelope; the payload shares `b`'s memory.
pub fn decode_bytes(b: &Bytes) -> Result<DeadLetter, DeadLetterError> {
    let (d, range) = decode_parts(b)?;
    Ok(DeadLetter {
        payload: b.slice(range),
        ..d
    })
}

/// Everything but the payload, and where the payload is.
fn decode_parts(b: &[u8]) -> Result<(DeadLetter, std::ops::Range<usize>), DeadLetterError> {
    let mut r = Reader { b, pos: 0 };
    if r.bytes(4, "magic").map_err(|_| DeadLetterError::BadMagic)? != MAGIC {
        return Err(DeadLetterError::BadMagic);
    }
    let version = r.array::<1>("version")?[0];
    if version != VERSION {
        return Err(DeadLetterError::UnsupportedVersion(version));
    }
    let offset = r.u64("offset")?;
    let producer = r.u64("producer")?;
    let seq = r.u64("seq")?;
    let timestamp_us = r.u64("timestamp")?;
    let dead_at_us = r.u64("dead_at")?;
    let deliveries = r.u32("deliveries")?;
    let stream = r.str("stream")?;
    let group = r.str("group")?;
    let reason = r.str("reason")?;
    let n = r.u32("history")? as usize;
    // Each attempt takes at least ATTEMPT_FIXED bytes: never reserve more
    // than the input could hold.
    let mut history = Vec::with_capacity(n.min((b.len() - r.pos) / ATTEMPT_FIXED));
    for _ in 0..n {
        let at_us = r.u64("history")?;
        let code = r.array::<1>("history")?[0];
        let outcome = AttemptOutcome::from_code(code).ok_or(DeadLetterError::BadOutcome(code))?;
        let member = r.str("history")?;
        history.push(Attempt {
            at_us,
            member,
            outcome,
        });
    }
    let len = r.u32("payload")? as usize;
    let start = r.pos;
    r.bytes(len, "payload")?;
    if r.pos != b.len() {
        return Err(DeadLetterError::TrailingBytes(b.len() - r.pos));
    }
    let d = DeadLetter {
        stream,
        group,
        offset,
        producer,
        seq,
        timestamp_us,
        dead_at_us,
        reason,
        deliveries,
        history,
        payload: Bytes::new(),
    };
    Ok((d, start..r.pos))
}

/// The dead-letter stream of `stream`: `<stream>.dlq`, an error if that is
/// not a valid stream name (over 255 bytes, or `stream` itself invalid).
pub fn dlq_stream_name(stream: &str) -> Result<String, SpoolError> {
    check_name(stream)?;
    let name = format!("{stream}.dlq");
    check_name(&name)?;
    Ok(name)
}

fn id_of(parts: &[&[u8]]) -> u64 {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let d = ctx.finish();
    u64::from_be_bytes(d.as_ref()[..8].try_into().expect("8 bytes"))
}

/// The producer id a group's dead letters are stored under in the
/// dead-letter stream: the first 8 bytes (big-endian) of
/// SHA-256("sluice-dlq\0{stream}\0{group}"). Stable across restarts and
/// versions: the spool's idempotence relies on it.
pub fn dlq_producer_id(stream: &str, group: &str) -> u64 {
    id_of(&[b"sluice-dlq\0", stream.as_bytes(), b"\0", group.as_bytes()])
}

/// The producer id dead letters of `stream` are stored under when they are
/// replayed into it: SHA-256("sluice-dlq-replay\0{stream}"), first 8 bytes
/// big-endian.
pub fn replay_producer_id(stream: &str) -> u64 {
    id_of(&[b"sluice-dlq-replay\0", stream.as_bytes()])
}
