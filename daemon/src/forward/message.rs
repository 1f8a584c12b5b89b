//! A delivery as a JetStream message, and the offsets a forward acks.

use async_nats::header::{HeaderMap, NATS_EXPECTED_STREAM, NATS_MESSAGE_ID};
use async_nats::jetstream::message::OutboundMessage;

use crate::consume::group::Delivery;

/// The headers that say where a JetStream message came from.
pub const STREAM: &str = "Sluice-Stream";
pub const PRODUCER: &str = "Sluice-Producer";
pub const SEQ: &str = "Sluice-Seq";
pub const OFFSET: &str = "Sluice-Offset";
pub const TIME: &str = "Sluice-Time";

/// One forwarded message: what the forward keeps of it until JetStream
/// has it (to send it again, in order, after a failure).
pub struct Outgoing {
    pub offset: u64,
    pub producer: u64,
    pub seq: u64,
    subject: String,
    payload: bytes::Bytes,
    headers: HeaderMap,
}

impl Outgoing {
    /// A delivery as a JetStream message: its id is the same whichever
    /// daemon sends it (a producer's seq is its own), so JetStream stores
    /// it once.
    pub fn new(stream: &str, target: &str, subject: String, d: Delivery) -> Outgoing {
        let r = d.record;
        let mut h = HeaderMap::new();
        h.insert(
            NATS_MESSAGE_ID,
            format!("{stream}/{}/{}", r.producer, r.seq).as_str(),
        );
        h.insert(NATS_EXPECTED_STREAM, target);
        h.insert(STREAM, stream);
        h.insert(PRODUCER, r.producer.to_string().as_str());
        h.insert(SEQ, r.seq.to_string().as_str());
        h.insert(OFFSET, d.offset.to_string().as_str());
        h.insert(TIME, r.timestamp_us.to_string().as_str());
        Outgoing {
            offset: d.offset,
            producer: r.producer,
            seq: r.seq,
            subject,
            payload: r.payload,
            headers: h,
        }
    }

    /// The message to send (again): the payload is shared, not copied.
    pub fn message(&self) -> OutboundMessage {
        OutboundMessage {
            subject: self.subject.clone().into(),
            payload: self.payload.clone(),
            headers: Some(self.headers.clone()),
        }
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }
}

/// Offsets (any order) as sorted ranges.
pub fn ranges(mut offsets: Vec<u64>) -> Vec<std::ops::Range<u64>> {
    offsets.sort_unstable();
    let mut out: Vec<std::ops::Range<u64>> = Vec::new();
    for o in offsets {
        match out.last_mut() {
            Some(r) if r.end == o => r.end = o + 1,
            _ => out.push(o..o + 1),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::ranges;

    #[test]
    fn offsets_become_sorted_ranges() {
        assert_eq!(ranges(vec![5, 3, 4, 9, 1]), vec![1..2, 3..6, 9..10]);
        assert!(ranges(vec![]).is_empty());
    }
}
