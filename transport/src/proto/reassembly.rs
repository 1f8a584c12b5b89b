//! Reassembly of one fragmented message.

use std::time::Instant;

use bytes::Bytes;

/// A peer that sends many tiny disjoint fragments could make the range list
/// grow with the message size; past this many holes further fragments are
/// refused (they are asked for again later, once earlier ones have merged).
const MAX_RANGES: usize = 1024;

#[derive(Debug)]
pub(crate) struct Reassembly {
    buf: Vec<u8>,
    /// Received byte ranges, sorted and disjoint, as `[start, end)`.
    have: Vec<(u32, u32)>,
    pub(crate) last_arrival: Instant,
    /// When this message's holes were last NACKed.
    pub(crate) holes_nacked_at: Option<Instant>,
}

impl Reassembly {
    /// `msg_len` has been checked against the 16 MiB limit and the receiver's
    /// reassembly budget before this allocation is made.
    pub(crate) fn new(msg_len: u32, now: Instant) -> Self {
        Reassembly {
            buf: vec![0; msg_len as usize],
            have: Vec::new(),
            last_arrival: now,
            holes_nacked_at: None,
        }
    }

    pub(crate) fn msg_len(&self) -> u32 {
        self.buf.len() as u32
    }

    /// Adds a fragment. Returns false if it was refused (too fragmented).
    /// `offset + chunk.len() <= msg_len` was checked by the decoder.
    pub(crate) fn insert(&mut self, offset: u32, chunk: &[u8], now: Instant) -> bool {
        let start = offset;
        let end = offset + chunk.len() as u32;
        if self.have.len() >= MAX_RANGES && !self.touches_existing(start, end) {
            return false;
        }
        self.buf[start as usize..end as usize].copy_from_slice(chunk);
        self.last_arrival = now;
        let at = self.have.partition_point(|&(s, _)| s < start);
        self.have.insert(at, (start, end));
        // Merge neighbours that overlap or touch.
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(self.have.len());
        for &(s, e) in &self.have {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.have = merged;
        true
    }

    fn touches_existing(&self, start: u32, end: u32) -> bool {
        self.have.iter().any(|&(s, e)| start <= e && s <= end)
    }

    pub(crate) fn is_complete(&self) -> bool {
        match self.have.as_slice() {
            [(0, e)] => *e as usize == self.buf.len(),
            [] => self.buf.is_empty(),
            _ => false,
        }
    }

    /// Missing byte ranges as `(offset, len)`.
    pub(crate) fn holes(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let ends = self.have.iter().map(|&(_, e)| e);
        let starts = self
            .have
            .iter()
            .map(|&(s, _)| s)
            .chain(std::iter::once(self.msg_len()));
        std::iter::once(0)
            .chain(ends)
            .zip(starts)
            .filter(|(from, to)| to > from)
            .map(|(from, to)| (from, to - from))
    }

    pub(crate) fn into_bytes(self) -> Bytes {
        Bytes::from(self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_and_completion() {
        let now = Instant::now();
        let mut r = Reassembly::new(10, now);
        assert_eq!(r.holes().collect::<Vec<_>>(), vec![(0, 10)]);
        assert!(r.insert(2, b"cd", now));
        assert!(r.insert(7, b"hij", now));
        assert_eq!(r.holes().collect::<Vec<_>>(), vec![(0, 2), (4, 3)]);
        assert!(!r.is_complete());
        assert!(r.insert(0, b"ab", now));
        assert!(r.insert(3, b"defg", now)); // overlaps what is there
        assert!(r.is_complete());
        assert_eq!(r.holes().count(), 0);
        assert_eq!(&r.into_bytes()[..], b"abcdefghij");
    }
}
