//! Messages of a consumer's stream. A consumer opens a stream with
//! [`Control::Subscribe`](super::control::Control::Subscribe); once the
//! daemon answers `Subscribed`, both directions carry long frames
//! ([`frame::put_long`](super::frame::put_long)), each one message: a type
//! byte, then its fields (integers big-endian; strings as a u16 length and
//! UTF-8 bytes, as in [`control`](super::control)).
//!
//! The daemon pushes [`ToConsumer::Deliver`] within the consumer's credit
//! window (push mode) or in answer to [`FromConsumer::Fetch`] (pull mode);
//! the consumer settles each delivery with an ack or a nack, or extends its
//! ack deadline. Acks are journaled durably in batches:
//! [`FromConsumer::Sync`] asks to hear when every ack sent before it is.
//!
//! Acks go as ranges of offsets: a consumer acks nearly every delivery,
//! nearly in order, so a run of thousands of acks is one range of 12 bytes
//! on the wire instead of 8 bytes an offset (and one operation for the
//! daemon instead of one an offset).

use std::ops::Range;

use bytes::{Buf, Bytes};
use thiserror::Error;

use super::control::put_str;

/// The most offsets one Ack, Nack or Extend carries (512 KiB of them in a
/// Nack or Extend; in an Ack, the most offsets its ranges cover together,
/// so that one message never asks the daemon for unbounded work).
pub const MAX_OFFSETS: usize = 65_536;

/// The longest a fetch may wait for a first message.
pub const MAX_FETCH_WAIT_MS: u64 = 30_000;

/// Bytes of a Deliver body before its payload.
pub const DELIVER_HEADER_LEN: usize = 1 + 8 + 4 + 8 + 8 + 8 + 8;

/// One message delivered to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The record's offset in its stream: what acks name.
    pub offset: u64,
    /// How many times this message has been delivered, this one included
    /// (1: the first time).
    pub delivery: u32,
    /// When the daemon stored it (unix microseconds).
    pub timestamp_us: u64,
    /// Who published it, and as which sequence number.
    pub producer: u64,
    pub seq: u64,
    /// Milliseconds from receipt until the daemon delivers it again unless
    /// acked (or extended).
    pub deadline_ms: u64,
    /// The message; a slice of the frame it came in, not a copy.
    pub payload: Bytes,
}

/// Daemon → consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToConsumer {
    Deliver(Delivery),
    /// The deliveries answering `Fetch { id }` are all sent.
    FetchDone {
        id: u64,
    },
    /// Every Ack, Nack and Extend sent before `Sync { id }` is durable.
    Synced {
        id: u64,
    },
    /// The daemon ends the subscription; the stream finishes after this.
    Error {
        reason: String,
    },
}

/// Consumer → daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromConsumer {
    /// The deliveries with offsets in these ranges are done with: 1 or
    /// more ranges, none empty, covering at most [`MAX_OFFSETS`] offsets
    /// together (overlaps counted twice). On the wire a count of ranges,
    /// then each as its first offset (u64) and its length (u32).
    Ack { ranges: Vec<Range<u64>> },
    /// Acks every message with an offset up to this one that is
    /// outstanding on this member.
    AckUpTo { offset: u64 },
    /// Deliver these again: at once (0) or after `delay_ms`.
    Nack { offsets: Vec<u64>, delay_ms: u64 },
    /// Moves the ack deadline of these to `ms` from now.
    Extend { offsets: Vec<u64>, ms: u64 },
    /// A new credit window (push mode).
    Credit { max_messages: u32, max_bytes: u64 },
    /// Pull mode: deliver up to `max` messages, answered by deliveries and
    /// then `FetchDone { id }`; as soon as one is available, or after
    /// `wait_ms` (at most [`MAX_FETCH_WAIT_MS`]) with none.
    Fetch { id: u64, max: u32, wait_ms: u64 },
    /// Asks for `Synced { id }`.
    Sync { id: u64 },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConsumerMessageError {
    #[error("empty consumer message")]
    Empty,
    #[error("unknown consumer message type {0}")]
    UnknownType(u8),
    #[error("consumer message cut short")]
    Truncated,
    #[error("consumer message has {0} bytes too many")]
    TrailingBytes(usize),
    #[error("malformed consumer message: {0}")]
    Malformed(&'static str),
}

const DELIVER: u8 = 1;
const FETCH_DONE: u8 = 2;
const SYNCED: u8 = 3;
const ERROR: u8 = 4;

const ACK: u8 = 1;
const ACK_UP_TO: u8 = 2;
const NACK: u8 = 3;
const EXTEND: u8 = 4;
const CREDIT: u8 = 5;
const FETCH: u8 = 6;
const SYNC: u8 = 7;

impl Delivery {
    /// The long-frame length and the body up to the payload: a sender can
    /// write this and then the payload as it is, without copying it.
    pub fn frame_header(&self) -> [u8; 4 + DELIVER_HEADER_LEN] {
        let mut h = [0u8; 4 + DELIVER_HEADER_LEN];
        let len = (DELIVER_HEADER_LEN + self.payload.len()) as u32;
        h[..4].copy_from_slice(&len.to_be_bytes());
        h[4] = DELIVER;
        h[5..13].copy_from_slice(&self.offset.to_be_bytes());
        h[13..17].copy_from_slice(&self.delivery.to_be_bytes());
        h[17..25].copy_from_slice(&self.timestamp_us.to_be_bytes());
        h[25..33].copy_from_slice(&self.producer.to_be_bytes());
        h[33..41].copy_from_slice(&self.seq.to_be_bytes());
        h[41..49].copy_from_slice(&self.deadline_ms.to_be_bytes());
        h
    }
}

impl ToConsumer {
    /// The message's body (without the frame's length).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the message as one long frame.
    pub fn put_frame(&self, out: &mut Vec<u8>) {
        put_frame(out, |out| self.encode_into(out));
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            ToConsumer::Deliver(d) => {
                out.extend_from_slice(&d.frame_header()[4..]);
                out.extend_from_slice(&d.payload);
            }
            ToConsumer::FetchDone { id } => {
                out.push(FETCH_DONE);
                out.extend_from_slice(&id.to_be_bytes());
            }
            ToConsumer::Synced { id } => {
                out.push(SYNCED);
                out.extend_from_slice(&id.to_be_bytes());
            }
            ToConsumer::Error { reason } => {
                out.push(ERROR);
                put_str(out, reason);
            }
        }
    }

    /// Decodes one frame's body. A delivery's payload is a slice of `body`.
    pub fn decode(body: &Bytes) -> Result<ToConsumer, ConsumerMessageError> {
        Self::decode_owned(body.clone())
    }

    /// [`decode`](ToConsumer::decode), taking the frame: a delivery's
    /// payload is the frame itself, advanced past the header (no reference
    /// count taken and dropped per message).
    pub fn decode_owned(mut body: Bytes) -> Result<ToConsumer, ConsumerMessageError> {
        let (&kind, _) = body.split_first().ok_or(ConsumerMessageError::Empty)?;
        let mut r = Reader { b: &body, at: 1 };
        let m = match kind {
            DELIVER => {
                let (offset, delivery) = (r.u64()?, r.u32()?);
                let (timestamp_us, producer, seq, deadline_ms) =
                    (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
                let at = r.at;
                // The payload is the rest: nothing trails.
                body.advance(at);
                return Ok(ToConsumer::Deliver(Delivery {
                    offset,
                    delivery,
                    timestamp_us,
                    producer,
                    seq,
                    deadline_ms,
                    payload: body,
                }));
            }
            FETCH_DONE => ToConsumer::FetchDone { id: r.u64()? },
            SYNCED => ToConsumer::Synced { id: r.u64()? },
            ERROR => ToConsumer::Error {
                reason: r.string()?,
            },
            other => return Err(ConsumerMessageError::UnknownType(other)),
        };
        r.finish(m)
    }
}

impl FromConsumer {
    /// The message's body (without the frame's length). Offset lists must
    /// hold 1 to [`MAX_OFFSETS`] offsets, and an Ack's ranges cover 1 to
    /// [`MAX_OFFSETS`] offsets, none empty: split longer ones.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the message as one long frame.
    pub fn put_frame(&self, out: &mut Vec<u8>) {
        put_frame(out, |out| self.encode_into(out));
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            FromConsumer::Ack { ranges } => {
                out.push(ACK);
                put_ranges(out, ranges);
            }
            FromConsumer::AckUpTo { offset } => {
                out.push(ACK_UP_TO);
                out.extend_from_slice(&offset.to_be_bytes());
            }
            FromConsumer::Nack { offsets, delay_ms } => {
                out.push(NACK);
                put_offsets(out, offsets);
                out.extend_from_slice(&delay_ms.to_be_bytes());
            }
            FromConsumer::Extend { offsets, ms } => {
                out.push(EXTEND);
                put_offsets(out, offsets);
                out.extend_from_slice(&ms.to_be_bytes());
            }
            FromConsumer::Credit {
                max_messages,
                max_bytes,
            } => {
                out.push(CREDIT);
                out.extend_from_slice(&max_messages.to_be_bytes());
                out.extend_from_slice(&max_bytes.to_be_bytes());
            }
            FromConsumer::Fetch { id, max, wait_ms } => {
                out.push(FETCH);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&max.to_be_bytes());
                out.extend_from_slice(&wait_ms.to_be_bytes());
            }
            FromConsumer::Sync { id } => {
                out.push(SYNC);
                out.extend_from_slice(&id.to_be_bytes());
            }
        }
    }

    pub fn decode(body: &[u8]) -> Result<FromConsumer, ConsumerMessageError> {
        let (&kind, _) = body.split_first().ok_or(ConsumerMessageError::Empty)?;
        let mut r = Reader { b: body, at: 1 };
        let m = match kind {
            ACK => FromConsumer::Ack {
                ranges: r.ranges()?,
            },
            ACK_UP_TO => FromConsumer::AckUpTo { offset: r.u64()? },
            NACK => FromConsumer::Nack {
                offsets: r.offsets()?,
                delay_ms: r.u64()?,
            },
            EXTEND => FromConsumer::Extend {
                offsets: r.offsets()?,
                ms: r.u64()?,
            },
            CREDIT => FromConsumer::Credit {
                max_messages: r.u32()?,
                max_bytes: r.u64()?,
            },
            FETCH => {
                let (id, max, wait_ms) = (r.u64()?, r.u32()?, r.u64()?);
                if wait_ms > MAX_FETCH_WAIT_MS {
                    return Err(ConsumerMessageError::Malformed("fetch wait over 30 s"));
                }
                FromConsumer::Fetch { id, max, wait_ms }
            }
            SYNC => FromConsumer::Sync { id: r.u64()? },
            other => return Err(ConsumerMessageError::UnknownType(other)),
        };
        r.finish(m)
    }
}

/// Appends a long frame whose body `encode` writes, without encoding twice.
fn put_frame(out: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    encode(out);
    let len = out.len() - start - 4;
    debug_assert!(len <= super::frame::MAX_LONG_FRAME);
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
}

fn put_offsets(out: &mut Vec<u8>, offsets: &[u64]) {
    debug_assert!((1..=MAX_OFFSETS).contains(&offsets.len()));
    out.extend_from_slice(&(offsets.len() as u32).to_be_bytes());
    for o in offsets {
        out.extend_from_slice(&o.to_be_bytes());
    }
}

fn put_ranges(out: &mut Vec<u8>, ranges: &[Range<u64>]) {
    debug_assert!(!ranges.is_empty());
    debug_assert!(ranges.iter().map(|r| r.end - r.start).sum::<u64>() <= MAX_OFFSETS as u64);
    out.reserve(4 + ranges.len() * 12);
    out.extend_from_slice(&(ranges.len() as u32).to_be_bytes());
    for r in ranges {
        debug_assert!(r.start < r.end);
        out.extend_from_slice(&r.start.to_be_bytes());
        out.extend_from_slice(&((r.end - r.start) as u32).to_be_bytes());
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ConsumerMessageError> {
        let rest = &self.b[self.at..];
        if rest.len() < n {
            return Err(ConsumerMessageError::Truncated);
        }
        self.at += n;
        Ok(&rest[..n])
    }

    fn u32(&mut self) -> Result<u32, ConsumerMessageError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, ConsumerMessageError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn string(&mut self) -> Result<String, ConsumerMessageError> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize;
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| ConsumerMessageError::Malformed("not UTF-8"))
    }

    /// A count and that many offsets. The count is checked against the
    /// limit and the bytes present before anything is allocated.
    fn offsets(&mut self) -> Result<Vec<u64>, ConsumerMessageError> {
        let n = self.u32()? as usize;
        if n == 0 {
            return Err(ConsumerMessageError::Malformed("no offsets"));
        }
        if n > MAX_OFFSETS {
            return Err(ConsumerMessageError::Malformed("over 65,536 offsets"));
        }
        let raw = self.take(n * 8)?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
            .collect())
    }

    /// A count and that many ranges (first offset, length). Checked as
    /// offsets are: the count against the limit and the bytes present
    /// before anything is allocated; then each range is non-empty and ends
    /// within u64, and together they cover at most [`MAX_OFFSETS`].
    fn ranges(&mut self) -> Result<Vec<Range<u64>>, ConsumerMessageError> {
        let n = self.u32()? as usize;
        if n == 0 {
            return Err(ConsumerMessageError::Malformed("no ranges"));
        }
        if n > MAX_OFFSETS {
            return Err(ConsumerMessageError::Malformed("over 65,536 ranges"));
        }
        let raw = self.take(n * 12)?;
        let mut covered = 0u64;
        let mut ranges = Vec::with_capacity(n);
        for c in raw.chunks_exact(12) {
            let first = u64::from_be_bytes(c[..8].try_into().expect("8 bytes"));
            let len = u32::from_be_bytes(c[8..].try_into().expect("4 bytes"));
            if len == 0 {
                return Err(ConsumerMessageError::Malformed("an empty range"));
            }
            let end = first
                .checked_add(u64::from(len))
                .ok_or(ConsumerMessageError::Malformed(
                    "a range past the last offset",
                ))?;
            covered += u64::from(len);
            if covered > MAX_OFFSETS as u64 {
                return Err(ConsumerMessageError::Malformed(
                    "ranges over 65,536 offsets",
                ));
            }
            ranges.push(first..end);
        }
        Ok(ranges)
    }

    /// `m`, if the body was consumed exactly.
    fn finish<T>(self, m: T) -> Result<T, ConsumerMessageError> {
        match self.b.len() - self.at {
            0 => Ok(m),
            n => Err(ConsumerMessageError::TrailingBytes(n)),
        }
    }
}
