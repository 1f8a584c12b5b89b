//! DATA packets: runs of consecutive messages, each whole or a fragment.
//!
//! ```text
//! body  := run+
//! run   := first_seq u64, count u16, entry{count}      (seqs first_seq, first_seq+1, …)
//! entry := kind u8 (0 whole | 1 fragment), len u16,
//!          [msg_len u32, offset u32 if fragment], payload[len]
//! ```
//! Runs let one datagram carry a scattered set of retransmissions as well as
//! a batch of new messages.

use bytes::Bytes;

use super::error::{DecodeError, Reader};
use super::header::{Header, PacketType};
use super::MAX_MESSAGE_LEN;

const RUN_HEADER_LEN: usize = 10;
const WHOLE_HEADER_LEN: usize = 3;
const FRAGMENT_HEADER_LEN: usize = 11;
const KIND_WHOLE: u8 = 0;
const KIND_FRAGMENT: u8 = 1;

/// Where a fragment sits in its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// Length of the whole message.
    pub msg_len: u32,
    /// Offset of this fragment's first byte in the message.
    pub offset: u32,
}

/// One message, or one piece of one, as carried in a DATA packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataEntry {
    pub seq: u64,
    pub fragment: Option<Fragment>,
    /// Borrowed from the datagram: no copy is made.
    pub payload: Bytes,
}

/// A validated DATA body. Iterating it cannot fail: [`DataFrame::decode`]
/// has already walked and checked every run and entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFrame {
    body: Bytes,
}

impl DataFrame {
    pub fn decode(body: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(&body);
        if r.remaining() == 0 {
            return Err(DecodeError::Malformed("DATA packet without messages"));
        }
        while r.remaining() > 0 {
            let first_seq = r.u64()?;
            let count = r.u16()?;
            if first_seq == 0 || count == 0 {
                return Err(DecodeError::Malformed(
                    "DATA run is empty or starts at seq 0",
                ));
            }
            if first_seq.checked_add(u64::from(count) - 1).is_none() {
                return Err(DecodeError::Malformed(
                    "DATA run overflows the sequence space",
                ));
            }
            for _ in 0..count {
                let kind = r.u8()?;
                let len = r.u16()? as usize;
                match kind {
                    KIND_WHOLE => {}
                    KIND_FRAGMENT => {
                        let msg_len = r.u32()? as usize;
                        let offset = r.u32()? as usize;
                        if msg_len > MAX_MESSAGE_LEN {
                            return Err(DecodeError::Malformed("message longer than 16 MiB"));
                        }
                        if len == 0 || offset + len > msg_len {
                            return Err(DecodeError::Malformed("fragment outside its message"));
                        }
                    }
                    _ => return Err(DecodeError::Malformed("unknown DATA entry kind")),
                }
                r.bytes(len)?;
            }
        }
        Ok(DataFrame { body })
    }

    /// The raw body, for re-encoding.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    pub fn entries(&self) -> DataEntries<'_> {
        DataEntries {
            body: &self.body,
            pos: 0,
            next_seq: 0,
            left_in_run: 0,
        }
    }
}

/// Iterator over the entries of a validated [`DataFrame`].
pub struct DataEntries<'a> {
    body: &'a Bytes,
    pos: usize,
    next_seq: u64,
    left_in_run: u16,
}

impl DataEntries<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.body[self.pos..self.pos + N]);
        self.pos += N;
        a
    }
}

impl Iterator for DataEntries<'_> {
    type Item = DataEntry;

    fn next(&mut self) -> Option<DataEntry> {
        if self.left_in_run == 0 {
            if self.pos >= self.body.len() {
                return None;
            }
            self.next_seq = u64::from_be_bytes(self.take());
            self.left_in_run = u16::from_be_bytes(self.take());
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.left_in_run -= 1;
        let [kind] = self.take::<1>();
        let len = u16::from_be_bytes(self.take()) as usize;
        let fragment = (kind == KIND_FRAGMENT).then(|| Fragment {
            msg_len: u32::from_be_bytes(self.take()),
            offset: u32::from_be_bytes(self.take()),
        });
        let payload = self.body.slice(self.pos..self.pos + len);
        self.pos += len;
        Some(DataEntry {
            seq,
            fragment,
            payload,
        })
    }
}

/// Builds one DATA datagram, entry by entry, never past `limit` bytes
/// (trailer included). [`DataWriter::finish`] seals it.
pub struct DataWriter<'a> {
    out: &'a mut Vec<u8>,
    limit: usize,
    /// Byte offset of the open run's count field, and the seq its next entry must have.
    run: Option<(usize, u64)>,
    run_count: u16,
    entries: usize,
}

impl<'a> DataWriter<'a> {
    /// Starts a datagram in `out` (cleared) for `session_id`.
    pub fn new(out: &'a mut Vec<u8>, session_id: u64, limit: usize) -> Self {
        out.clear();
        Header::new(PacketType::Data, session_id).encode(out);
        DataWriter {
            out,
            limit: limit - super::TRAILER_LEN,
            run: None,
            run_count: 0,
            entries: 0,
        }
    }

    /// The payload bytes that still fit if the next entry is `seq`.
    pub fn room(&self, seq: u64, fragment: bool) -> usize {
        self.limit
            .saturating_sub(self.out.len() + self.overhead(seq, fragment))
            .min(u16::MAX as usize)
    }

    /// Whether an entry of `len` payload bytes for `seq` fits. Unlike
    /// `room() >= len`, this is also right for an empty payload whose entry
    /// header alone would overflow the datagram.
    fn fits(&self, seq: u64, fragment: bool, len: usize) -> bool {
        len <= u16::MAX as usize
            && self.out.len() + self.overhead(seq, fragment) + len <= self.limit
    }

    fn overhead(&self, seq: u64, fragment: bool) -> usize {
        let entry = if fragment {
            FRAGMENT_HEADER_LEN
        } else {
            WHOLE_HEADER_LEN
        };
        if self.continues_run(seq) {
            entry
        } else {
            entry + RUN_HEADER_LEN
        }
    }

    fn continues_run(&self, seq: u64) -> bool {
        matches!(self.run, Some((_, next)) if next == seq) && self.run_count < u16::MAX
    }

    fn open_entry(&mut self, seq: u64) {
        if !self.continues_run(seq) {
            let count_at = self.out.len() + 8;
            self.out.extend_from_slice(&seq.to_be_bytes());
            self.out.extend_from_slice(&0u16.to_be_bytes());
            self.run = Some((count_at, seq));
            self.run_count = 0;
        }
        let (count_at, next) = self.run.as_mut().expect("a run is open");
        *next = seq + 1;
        self.run_count += 1;
        let at = *count_at;
        self.out[at..at + 2].copy_from_slice(&self.run_count.to_be_bytes());
        self.entries += 1;
    }

    /// Adds a whole message; false (and nothing written) if it does not fit.
    pub fn push_whole(&mut self, seq: u64, payload: &[u8]) -> bool {
        if !self.fits(seq, false, payload.len()) {
            return false;
        }
        self.open_entry(seq);
        self.out.push(KIND_WHOLE);
        self.out
            .extend_from_slice(&(payload.len() as u16).to_be_bytes());
        self.out.extend_from_slice(payload);
        true
    }

    /// Adds a fragment of a message; false (and nothing written) if it does not fit.
    pub fn push_fragment(&mut self, seq: u64, msg_len: u32, offset: u32, chunk: &[u8]) -> bool {
        if chunk.is_empty() || !self.fits(seq, true, chunk.len()) {
            return false;
        }
        self.open_entry(seq);
        self.out.push(KIND_FRAGMENT);
        self.out
            .extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        self.out.extend_from_slice(&msg_len.to_be_bytes());
        self.out.extend_from_slice(&offset.to_be_bytes());
        self.out.extend_from_slice(chunk);
        true
    }

    /// Number of entries written so far.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Length of the datagram built so far (header included).
    pub fn len(&self) -> usize {
        self.out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Appends the checksum trailer; the datagram is complete.
    pub fn finish(self) {
        super::seal(self.out);
    }
}
