//! What readers know of a segment, and the index file written when a
//! segment is sealed so that the next start need not scan it again.
//!
//! The index file (`<base>.idx`) is derived data: magic "SLIX", then
//! len, count, last timestamp and the number of entries (u64 each), the
//! entries (offset, pos, timestamp_us; u64 each), and a CRC32C of all that.
//! One that is missing, damaged or does not match its segment's size is
//! ignored and the segment scanned instead.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::error::SpoolError;
use super::fs::{read_all, write_atomic, SpoolFs};

/// A sparse-index entry: where record `offset` starts in its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: u64,
    pub pos: u64,
    pub timestamp_us: u64,
}

/// What readers need to know of a segment (shared with them).
#[derive(Debug, Clone)]
pub struct SegmentMeta {
    pub base: u64,
    pub path: PathBuf,
    /// Bytes of durable data (headers included): the file position after
    /// the last durable commit.
    pub len: u64,
    /// Durable records in it.
    pub count: u64,
    pub index: Vec<IndexEntry>,
    pub last_timestamp_us: u64,
}

impl SegmentMeta {
    /// Offset after the last record.
    pub fn end(&self) -> u64 {
        self.base + self.count
    }
}

/// The segments as readers see them: only durable data.
pub type SharedSegments = Arc<RwLock<Vec<SegmentMeta>>>;

pub fn segment_name(base: u64) -> String {
    format!("{base:020}.seg")
}

pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

const INDEX_MAGIC: &[u8; 4] = b"SLIX";

pub fn index_path(segment: &Path) -> PathBuf {
    segment.with_extension("idx")
}

/// Writes a sealed segment's index durably.
pub fn write_index(fs: &dyn SpoolFs, m: &SegmentMeta) -> Result<(), SpoolError> {
    let mut b = INDEX_MAGIC.to_vec();
    for v in [m.len, m.count, m.last_timestamp_us, m.index.len() as u64] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for e in &m.index {
        for v in [e.offset, e.pos, e.timestamp_us] {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let path = index_path(&m.path);
    write_atomic(fs, &path, &b).map_err(SpoolError::io("write index", &path))
}

/// The body of a checksummed file that starts with `magic`.
pub fn checked_body<'a>(b: &'a [u8], magic: &[u8; 4]) -> Option<&'a [u8]> {
    if b.len() < 8 || &b[..4] != magic {
        return None;
    }
    let (body, crc) = b.split_at(b.len() - 4);
    (crc32c::crc32c(body) == u32::from_le_bytes(crc.try_into().ok()?)).then_some(&body[4..])
}

pub fn u64s(b: &[u8]) -> impl Iterator<Item = u64> + '_ {
    b.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
}

/// Loads a sealed segment's index, if present, intact and matching a
/// segment file of `file_len` bytes based at `base`.
pub fn load_index(fs: &dyn SpoolFs, path: &Path, base: u64, file_len: u64) -> Option<SegmentMeta> {
    let b = read_all(fs, &index_path(path)).ok()?;
    let body = checked_body(&b, INDEX_MAGIC)?;
    let mut v = u64s(body);
    let (len, count, last_ts, n) = (v.next()?, v.next()?, v.next()?, v.next()?);
    let mut index = Vec::new();
    for _ in 0..n {
        index.push(IndexEntry {
            offset: v.next()?,
            pos: v.next()?,
            timestamp_us: v.next()?,
        });
    }
    if file_len != len || index.iter().any(|e| e.offset < base || e.pos >= len) {
        return None;
    }
    Some(SegmentMeta {
        base,
        path: path.to_path_buf(),
        len,
        count,
        index,
        last_timestamp_us: last_ts,
    })
}
