//! The segment file (format 2): a segment header, then commits. A commit is
//! what one group commit wrote with one write and one fdatasync: a commit
//! header, then its records (see [`super::record`]).
//!
//! ```text
//! segment header (64 bytes, at byte 0)
//! 0   magic      "SLSG"
//! 4   version    u16   2
//! 6   flags      u16   0
//! 8   base       u64   offset of its first record (the number in its name)
//! 16  prev_end   u64   offset where the segment before it ends: `base`,
//!                      or lower when a repair left the offsets
//!                      prev_end..base behind (they are lost)
//! 24  stream_id  u64   random, made with the stream: the same in every
//!                      segment, commit and checkpoint of one stream
//! 32  created_us u64
//! 40  reserved   20 bytes of 0
//! 60  crc        u32   CRC32C of bytes 0..60
//!
//! commit header (48 bytes), then `count` records filling `body_len` bytes
//! 0   magic      "SLCM"
//! 4   body_len   u32
//! 8   count      u32   at least 1
//! 12  body_crc   u32   CRC32C of the records' own CRCs (4 bytes LE each), in order
//! 16  first      u64   offset of its first record
//! 24  synced_to  u64   byte position in this segment up to which the log was
//!                      durable when this commit was written: its own start
//!                      with fsync = always; with `interval`, where the last
//!                      completed fdatasync reached
//! 32  stream_id  u64
//! 40  reserved   u32   0
//! 44  head_crc   u32   CRC32C of bytes 0..44
//! ```
//! Little-endian. A record's first field is its length (at most
//! [`MAX_PAYLOAD`](super::record::MAX_PAYLOAD), far below the value of the
//! commit magic read as a u32), so at a record boundary the two can always
//! be told apart. Zeroes are neither a header nor a record.
//!
//! Why commits are framed: a crash can damage only what was written after
//! the last completed fdatasync. A commit header that is valid and says
//! `synced_to` > P proves that everything before P was durable when it was
//! written; so a bad record at P followed by such a header is damage, never
//! a torn write. Without one, the damage is at the end of what was written
//! and may be a torn write: recovery then looks for proof outside the log
//! (the checkpoint, the consumer groups' cursors).

use memchr::memmem;

use super::record::{self, Header, HEADER_LEN};

pub const SEGMENT_HEADER_LEN: usize = 64;
pub const COMMIT_HEADER_LEN: usize = 48;
pub const FORMAT_VERSION: u16 = 2;
const SEGMENT_MAGIC: &[u8; 4] = b"SLSG";
pub const COMMIT_MAGIC: &[u8; 4] = b"SLCM";

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// What every segment file starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub base: u64,
    pub prev_end: u64,
    pub stream_id: u64,
    pub created_us: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[..4].copy_from_slice(SEGMENT_MAGIC);
        b[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[8..16].copy_from_slice(&self.base.to_le_bytes());
        b[16..24].copy_from_slice(&self.prev_end.to_le_bytes());
        b[24..32].copy_from_slice(&self.stream_id.to_le_bytes());
        b[32..40].copy_from_slice(&self.created_us.to_le_bytes());
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a segment header, or says why the bytes are not one.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, String> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(format!("{} bytes, shorter than a segment header", b.len()));
        }
        if &b[..4] != SEGMENT_MAGIC {
            return Err("no segment header (bad magic)".into());
        }
        if crc32c::crc32c(&b[..60]) != u32_at(b, 60) {
            return Err("segment header checksum mismatch".into());
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != FORMAT_VERSION {
            return Err(format!(
                "segment format version {version}, this sluice reads version {FORMAT_VERSION}"
            ));
        }
        let h = SegmentHeader {
            base: u64_at(b, 8),
            prev_end: u64_at(b, 16),
            stream_id: u64_at(b, 24),
            created_us: u64_at(b, 32),
        };
        if h.prev_end > h.base {
            return Err(format!(
                "segment header says it continues from offset {} past its own base {}",
                h.prev_end, h.base
            ));
        }
        Ok(h)
    }
}

/// The header of one commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitHeader {
    pub body_len: u32,
    pub count: u32,
    pub body_crc: u32,
    pub first: u64,
    pub synced_to: u64,
    pub stream_id: u64,
    /// The header's own checksum: a commit's fingerprint in checkpoints.
    pub head_crc: u32,
}

impl CommitHeader {
    /// Writes the header (its `head_crc` computed here) into `out`.
    pub fn encode_into(&mut self, out: &mut [u8]) {
        // Never write a header that `parse` would refuse.
        debug_assert!(
            self.count > 0 && self.body_len as usize >= self.count as usize * HEADER_LEN,
            "commit header: {} records cannot fill {} body bytes",
            self.count,
            self.body_len
        );
        debug_assert!(
            self.first.checked_add(self.count as u64).is_some(),
            "commit header: offsets past u64"
        );
        let b = &mut out[..COMMIT_HEADER_LEN];
        b[..4].copy_from_slice(COMMIT_MAGIC);
        b[4..8].copy_from_slice(&self.body_len.to_le_bytes());
        b[8..12].copy_from_slice(&self.count.to_le_bytes());
        b[12..16].copy_from_slice(&self.body_crc.to_le_bytes());
        b[16..24].copy_from_slice(&self.first.to_le_bytes());
        b[24..32].copy_from_slice(&self.synced_to.to_le_bytes());
        b[32..40].copy_from_slice(&self.stream_id.to_le_bytes());
        b[40..44].copy_from_slice(&[0; 4]);
        self.head_crc = crc32c::crc32c(&b[..44]);
        b[44..48].copy_from_slice(&self.head_crc.to_le_bytes());
    }

    /// Decodes a commit header of stream `stream_id` (not its body).
    pub fn decode(b: &[u8], stream_id: u64) -> Result<CommitHeader, &'static str> {
        let h = Self::parse(b)?;
        if h.stream_id != stream_id {
            return Err("commit header of another stream");
        }
        Ok(h)
    }

    /// Decodes a commit header of any stream (readers, which know the
    /// stream by its files).
    pub fn parse(b: &[u8]) -> Result<CommitHeader, &'static str> {
        if b.len() < COMMIT_HEADER_LEN {
            return Err("commit header cut short");
        }
        if &b[..4] != COMMIT_MAGIC {
            return Err("no commit header where one should start");
        }
        if crc32c::crc32c(&b[..44]) != u32_at(b, 44) {
            return Err("commit header checksum mismatch");
        }
        let h = CommitHeader {
            body_len: u32_at(b, 4),
            count: u32_at(b, 8),
            body_crc: u32_at(b, 12),
            first: u64_at(b, 16),
            synced_to: u64_at(b, 24),
            stream_id: u64_at(b, 32),
            head_crc: u32_at(b, 44),
        };
        if h.count == 0 || (h.body_len as usize) < h.count as usize * HEADER_LEN {
            return Err("commit header with an impossible record count");
        }
        Ok(h)
    }

    /// Bytes of the whole commit, header included.
    pub fn total_len(&self) -> u64 {
        (COMMIT_HEADER_LEN + self.body_len as usize) as u64
    }

    /// Offset after its last record.
    pub fn end(&self) -> u64 {
        self.first + self.count as u64
    }
}

/// Whether `b` (at a record boundary) starts a commit header rather than a
/// record.
pub fn at_commit_header(b: &[u8]) -> bool {
    b.len() >= 4 && &b[..4] == COMMIT_MAGIC
}

/// Folds a record's CRC into a commit's `body_crc`.
pub fn fold_record_crc(body_crc: u32, record_crc: u32) -> u32 {
    crc32c::crc32c_append(body_crc, &record_crc.to_le_bytes())
}

/// One record of a verified commit, as a scan reports it.
#[derive(Debug, Clone, Copy)]
pub struct ScannedRecord {
    pub offset: u64,
    /// Byte position of the record in the segment.
    pub pos: u64,
    pub header: Header,
}

/// Why a scan stopped before the end of the bytes, and what follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// Byte position of the first commit that is not whole and valid.
    pub pos: u64,
    pub reason: String,
    /// Records of that commit that check out before the first bad one,
    /// and where that one starts (see [`Bad`]).
    pub good: u32,
    pub bad_at: u64,
    /// A valid commit header after `pos` that says everything before
    /// `pos` was durable when it was written (`synced_to` > pos): proof
    /// that the bad bytes are damage, not a torn write. Its position and
    /// header.
    pub vouched_by: Option<(u64, CommitHeader)>,
    /// The highest offset after a valid commit header found after `pos`
    /// (vouching or not): how far the log reached.
    pub reached: Option<u64>,
    /// Bytes from `pos` to the last non-zero byte: 0 when only zeroes
    /// (preallocated, never written) follow.
    pub nonzero_tail: u64,
}

/// What a scan of one segment's bytes found.
#[derive(Debug, Clone)]
pub struct Scan {
    /// Byte position after the last whole, valid commit.
    pub end: u64,
    /// Records in the valid commits.
    pub records: u64,
    /// Offset after the last valid record (`base` when none).
    pub end_offset: u64,
    /// The last valid commit's header and its end position.
    pub last_commit: Option<(CommitHeader, u64)>,
    /// Set when the scan stopped before the end of the bytes (not counting
    /// zeroes after the end: preallocated space).
    pub stop: Option<Stop>,
}

/// Why a commit does not check out, and how much of it does: the records
/// before the first bad one (each checks out on its own and sits where the
/// commit's header says), when the header itself checks out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bad {
    pub reason: String,
    /// Records of the commit that check out before the first that does
    /// not (0 when its header, its count or its checksum is what is wrong).
    pub good: u32,
    /// Byte where the first bad record starts (the commit's start when
    /// `good` is 0).
    pub at: usize,
}

/// Checks one commit at `pos` whose first record must be `expected_first`,
/// calling `each` for its records once all of them have checked out.
fn check_commit(
    data: &[u8],
    pos: usize,
    stream_id: u64,
    expected_first: u64,
    max_commit_bytes: u64,
    each: &mut dyn FnMut(ScannedRecord),
    scratch: &mut Vec<ScannedRecord>,
) -> Result<CommitHeader, Bad> {
    let whole = |reason: String| Bad {
        reason,
        good: 0,
        at: pos,
    };
    let h = CommitHeader::decode(&data[pos..], stream_id).map_err(|e| whole(e.to_owned()))?;
    if h.total_len() > max_commit_bytes {
        return Err(whole(format!(
            "commit header says {} bytes, more than a commit can be",
            h.total_len()
        )));
    }
    if h.first != expected_first {
        return Err(whole(format!(
            "commit holds offsets {}..{} where offset {expected_first} should follow",
            h.first,
            h.end()
        )));
    }
    let body_start = pos + COMMIT_HEADER_LEN;
    let body_end = body_start + h.body_len as usize;
    let present = body_end.min(data.len());
    scratch.clear();
    let mut at = body_start;
    let mut body_crc = 0u32;
    while at < present && scratch.len() < h.count as usize {
        let (header, n) = match record::check(&data[at..present]) {
            Ok(r) => r,
            Err(why) => {
                let reason = if present < body_end && why == record::Invalid::Short {
                    format!(
                        "commit of {} records cut short ({} of {} body bytes present)",
                        h.count,
                        present - body_start,
                        h.body_len
                    )
                } else {
                    format!("record {} of the commit: {why:?}", scratch.len())
                };
                return Err(Bad {
                    reason,
                    good: scratch.len() as u32,
                    at,
                });
            }
        };
        body_crc = fold_record_crc(body_crc, header.crc);
        scratch.push(ScannedRecord {
            offset: h.first + scratch.len() as u64,
            pos: at as u64,
            header,
        });
        at += n;
    }
    if present < body_end {
        return Err(Bad {
            reason: format!(
                "commit of {} records cut short ({} of {} body bytes present)",
                h.count,
                present - body_start,
                h.body_len
            ),
            good: scratch.len() as u32,
            at,
        });
    }
    if scratch.len() != h.count as usize || at != body_end {
        return Err(whole(format!(
            "commit header says {} records in {} bytes, its body holds {} in {}",
            h.count,
            h.body_len,
            scratch.len(),
            at - body_start
        )));
    }
    if body_crc != h.body_crc {
        return Err(whole(
            "commit checksum mismatch: a record was replaced".into(),
        ));
    }
    for r in scratch.iter() {
        each(*r);
    }
    Ok(h)
}

/// Checks the one commit at the start of `data` (which holds at least all
/// of it), whose first record must be `expected_first`: for readers that
/// go commit by commit (the scrub).
pub fn check_one_commit(
    data: &[u8],
    stream_id: u64,
    expected_first: u64,
    max_commit_bytes: u64,
) -> Result<CommitHeader, Bad> {
    check_commit(
        data,
        0,
        stream_id,
        expected_first,
        max_commit_bytes,
        &mut |_| {},
        &mut Vec::new(),
    )
}

/// The commit at the start of `data`, cut down to its first `good`
/// records (they must check out): its new header and its length. What a
/// repair keeps of a commit damaged after them.
pub fn shortened_commit(data: &[u8], stream_id: u64, good: u32) -> Option<(CommitHeader, usize)> {
    let mut h = CommitHeader::decode(data, stream_id).ok()?;
    let mut at = COMMIT_HEADER_LEN;
    let mut body_crc = 0;
    for _ in 0..good {
        let (r, n) = record::check(data.get(at..)?).ok()?;
        body_crc = fold_record_crc(body_crc, r.crc);
        at += n;
    }
    h.count = good;
    h.body_len = (at - COMMIT_HEADER_LEN) as u32;
    h.body_crc = body_crc;
    Some((h, at))
}

/// Scans commits from `from` (just past the segment header) to the end of
/// `data`, expecting offsets from `first_offset` on. Records are reported
/// to `each` only once their whole commit has checked out, so that a torn
/// commit contributes nothing (not even to the idempotence table).
pub fn scan(
    data: &[u8],
    from: usize,
    stream_id: u64,
    first_offset: u64,
    max_commit_bytes: u64,
    each: &mut dyn FnMut(ScannedRecord),
) -> Scan {
    let mut pos = from;
    let mut next = first_offset;
    let mut records = 0;
    let mut last_commit = None;
    let mut scratch = Vec::new();
    let mut stop = None;
    while pos < data.len() {
        match check_commit(
            data,
            pos,
            stream_id,
            next,
            max_commit_bytes,
            each,
            &mut scratch,
        ) {
            Ok(h) => {
                records += h.count as u64;
                next = h.end();
                pos += h.total_len() as usize;
                last_commit = Some((h, pos as u64));
            }
            // Zeroes to the end: preallocated space, never written.
            Err(_) if data[pos..].iter().all(|&b| b == 0) => break,
            Err(bad) => {
                stop = Some(stopped_at(data, pos, stream_id, bad));
                break;
            }
        }
    }
    Scan {
        end: pos as u64,
        records,
        end_offset: next,
        last_commit,
        stop,
    }
}

/// Describes a stop at `pos`: what valid commit headers follow it.
fn stopped_at(data: &[u8], pos: usize, stream_id: u64, bad: Bad) -> Stop {
    let last_nonzero = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let mut vouched_by = None;
    let mut reached = None;
    for (q, h) in commit_headers_after(data, pos + 1, stream_id) {
        reached = Some(reached.unwrap_or(0).max(h.end()));
        if vouched_by.is_none() && h.synced_to > pos as u64 {
            vouched_by = Some((q, h));
        }
    }
    Stop {
        pos: pos as u64,
        reason: bad.reason,
        good: bad.good,
        bad_at: bad.at as u64,
        vouched_by,
        reached,
        nonzero_tail: (last_nonzero as u64).saturating_sub(pos as u64),
    }
}

/// Every valid commit header of `stream_id` at or after byte `from`.
pub fn commit_headers_after(
    data: &[u8],
    from: usize,
    stream_id: u64,
) -> impl Iterator<Item = (u64, CommitHeader)> + '_ {
    let finder = memmem::Finder::new(COMMIT_MAGIC);
    let tail = data.get(from..).unwrap_or(&[]);
    finder
        .find_iter(tail)
        .map(|i| from + i)
        .filter_map(move |q| {
            CommitHeader::decode(&data[q..], stream_id)
                .ok()
                .map(|h| (q as u64, h))
        })
        .collect::<Vec<_>>()
        .into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::record::Record;
    use bytes::Bytes;

    const ID: u64 = 0xfeed;

    fn commit(first: u64, n: usize, synced_to: u64, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; COMMIT_HEADER_LEN]);
        let mut body_crc = 0;
        for i in 0..n {
            let at = out.len();
            Record {
                producer: 1,
                seq: first + i as u64,
                timestamp_us: 5,
                payload: Bytes::from(vec![i as u8; 30]),
                key: None,
            }
            .encode(out);
            body_crc = fold_record_crc(body_crc, u32_at(out, at + 4));
        }
        let mut h = CommitHeader {
            body_len: (out.len() - start - COMMIT_HEADER_LEN) as u32,
            count: n as u32,
            body_crc,
            first,
            synced_to,
            stream_id: ID,
            head_crc: 0,
        };
        h.encode_into(&mut out[start..]);
    }

    fn segment(commits: &[usize]) -> Vec<u8> {
        let mut b = SegmentHeader {
            base: 10,
            prev_end: 10,
            stream_id: ID,
            created_us: 1,
        }
        .encode()
        .to_vec();
        let mut first = 10;
        for &n in commits {
            let at = b.len() as u64;
            commit(first, n, at, &mut b);
            first += n as u64;
        }
        b
    }

    fn scan_all(b: &[u8]) -> (Scan, Vec<u64>) {
        let mut seen = Vec::new();
        let s = scan(b, SEGMENT_HEADER_LEN, ID, 10, 1 << 20, &mut |r| {
            seen.push(r.offset)
        });
        (s, seen)
    }

    #[test]
    fn headers_round_trip_and_reject_damage() {
        let h = SegmentHeader {
            base: 7,
            prev_end: 3,
            stream_id: 9,
            created_us: 11,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        for i in 0..b.len() {
            let mut bad = b;
            bad[i] ^= 1;
            assert!(SegmentHeader::decode(&bad).is_err(), "flip at {i}");
        }
        let mut c = Vec::new();
        commit(5, 2, 64, &mut c);
        let h = CommitHeader::decode(&c, ID).unwrap();
        assert_eq!((h.first, h.count, h.end()), (5, 2, 7));
        assert!(CommitHeader::decode(&c, ID + 1).is_err(), "another stream");
        for i in 0..COMMIT_HEADER_LEN {
            let mut bad = c.clone();
            bad[i] ^= 0x10;
            assert!(CommitHeader::decode(&bad, ID).is_err(), "flip at {i}");
        }
        assert!(!at_commit_header(&0u32.to_le_bytes()));
        assert!(
            (record::MAX_PAYLOAD as u32) < u32::from_le_bytes(*COMMIT_MAGIC),
            "a record length can never read as the commit magic"
        );
    }

    #[test]
    fn a_whole_segment_scans_to_its_end_and_zeroes_end_it() {
        let mut b = segment(&[3, 1, 4]);
        let len = b.len() as u64;
        b.extend_from_slice(&[0; 500]);
        let (s, seen) = scan_all(&b);
        assert_eq!((s.end, s.records, s.end_offset), (len, 8, 18));
        assert!(s.stop.is_none());
        assert_eq!(seen, (10..18).collect::<Vec<_>>());
    }

    #[test]
    fn a_cut_last_commit_is_a_stop_nobody_vouches_for() {
        let b = segment(&[3, 4]);
        let first_end = segment(&[3]).len();
        let (s, seen) = scan_all(&b[..b.len() - 7]);
        assert_eq!(seen, vec![10, 11, 12], "nothing of the cut commit");
        let stop = s.stop.unwrap();
        assert_eq!(stop.pos, first_end as u64);
        assert!(stop.vouched_by.is_none() && stop.reached.is_none());
    }

    #[test]
    fn a_flip_followed_by_a_valid_commit_is_vouched_damage() {
        let mut b = segment(&[3, 4, 2]);
        let first_end = segment(&[3]).len();
        b[first_end + COMMIT_HEADER_LEN + 50] ^= 4; // in the second commit's records
        let (s, seen) = scan_all(&b);
        assert_eq!(seen, vec![10, 11, 12]);
        let stop = s.stop.unwrap();
        assert_eq!(stop.pos, first_end as u64);
        let (q, h) = stop.vouched_by.unwrap();
        assert_eq!((q as usize, h.first), (segment(&[3, 4]).len(), 17));
        assert_eq!(stop.reached, Some(19));
        assert!(stop.nonzero_tail > 0);
    }

    #[test]
    fn a_commit_at_the_wrong_offset_stops_the_scan() {
        let mut b = segment(&[2]);
        let at = b.len() as u64;
        commit(99, 1, at, &mut b);
        let (s, _) = scan_all(&b);
        let stop = s.stop.unwrap();
        assert!(
            stop.reason.contains("offset 12 should follow"),
            "{}",
            stop.reason
        );
    }
}
