//! Reading a stream: from an offset or a time, only what is durable, and
//! following the tail as new batches become durable.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use tokio::sync::watch;

use super::error::{Damage, SpoolError};
use super::fs::{SpoolFile, SpoolFs};
use super::index::{SegmentMeta, SharedSegments};
use super::record::{self, Record, HEADER_LEN};
use super::segment::{self, CommitHeader, COMMIT_HEADER_LEN, SEGMENT_HEADER_LEN};

pub struct Reader {
    fs: Arc<dyn SpoolFs>,
    stream: String,
    shared: SharedSegments,
    durable_end: watch::Receiver<u64>,
    /// Offset of the next record to return.
    next: u64,
    /// The segment holding `next`, and where in it.
    open: Option<OpenSegment>,
    /// Bytes read ahead from the open segment (one pread for many records)
    /// and the file position of their first byte. Records' payloads are
    /// slices of it, not copies: one allocation per chunk, not per record
    /// (a new chunk is read into new memory; the old one goes when the last
    /// payload sliced from it does).
    chunk: Bytes,
    chunk_at: u64,
}

/// Bytes read per pread when records are read in order.
const CHUNK: usize = 256 << 10;

struct OpenSegment {
    base: u64,
    file: Arc<dyn SpoolFile>,
    path: PathBuf,
    /// Byte position of record `next`.
    pos: u64,
    /// What of the segment was durable when last looked at: the offset
    /// after its last record, and its bytes.
    end: u64,
    len: u64,
}

impl Reader {
    pub(crate) fn new(
        fs: Arc<dyn SpoolFs>,
        stream: String,
        shared: SharedSegments,
        durable_end: watch::Receiver<u64>,
        from: u64,
    ) -> Self {
        Reader {
            fs,
            stream,
            shared,
            durable_end,
            next: from,
            open: None,
            chunk: Bytes::new(),
            chunk_at: 0,
        }
    }

    /// Offset of the record `next` would return.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Moves to the first record stored at or after `timestamp_us`.
    pub fn seek_time(&mut self, timestamp_us: u64) -> Result<(), SpoolError> {
        let segs = self.shared.read().unwrap().clone();
        let Some(seg) = segs.iter().find(|s| s.last_timestamp_us >= timestamp_us) else {
            self.next = segs.last().map_or(0, SegmentMeta::end);
            self.open = None;
            return Ok(());
        };
        // Start at the last index entry before the time, then read forward.
        let start = seg
            .index
            .iter()
            .rev()
            .find(|e| e.timestamp_us < timestamp_us)
            .map_or(seg.base, |e| e.offset);
        self.next = start;
        self.open = None;
        while let Some((offset, r)) = self.next_record()? {
            if r.timestamp_us >= timestamp_us {
                self.next = offset;
                self.open = None;
                return Ok(());
            }
        }
        Ok(())
    }

    /// The next durable record, or None if there is none yet.
    pub fn next_record(&mut self) -> Result<Option<(u64, Record)>, SpoolError> {
        loop {
            if self.next >= *self.durable_end.borrow() {
                return Ok(None);
            }
            if self.open.is_none() && !self.locate()? {
                return Ok(None);
            }
            let o = self.open.as_mut().expect("located");
            if self.next >= o.end {
                // What became durable since: the segment grew, or it is
                // done (or was deleted) and the next one holds `next`.
                let segs = self.shared.read().unwrap();
                match segs.iter().find(|s| s.base == o.base) {
                    Some(s) if self.next < s.end() => {
                        o.end = s.end();
                        o.len = s.len;
                    }
                    _ => {
                        drop(segs);
                        self.open = None;
                        continue;
                    }
                }
            }
            let (pos, len) = (o.pos, o.len);
            let at = self.bytes_at(pos, HEADER_LEN, len)?;
            if segment::at_commit_header(&self.chunk[at..]) {
                // A commit's header between records: checked, stepped over.
                let at = self.bytes_at(pos, COMMIT_HEADER_LEN, len)?;
                CommitHeader::parse(&self.chunk[at..at + COMMIT_HEADER_LEN])
                    .map_err(|e| self.corrupt(pos, e.to_owned()))?;
                self.open.as_mut().expect("open").pos = pos + COMMIT_HEADER_LEN as u64;
                continue;
            }
            let h = record::parse_header(&self.chunk[at..])
                .map_err(|e| self.corrupt(pos, format!("{e:?}")))?;
            let total = HEADER_LEN + h.len;
            let at = self.bytes_at(pos, total, len)?;
            let (h, n) = record::check(&self.chunk[at..at + total])
                .map_err(|e| self.corrupt(pos, format!("{e:?}")))?;
            let r = h.record(self.chunk.slice(at + HEADER_LEN..at + n));
            let offset = self.next;
            self.next += 1;
            self.open.as_mut().expect("open").pos = pos + n as u64;
            return Ok(Some((offset, r)));
        }
    }

    /// Where in the chunk read ahead the `n` bytes of the open segment at
    /// `pos` start, reading the next chunk (up to the segment's durable
    /// `len`) when they are not all in it.
    fn bytes_at(&mut self, pos: u64, n: usize, len: u64) -> Result<usize, SpoolError> {
        let in_chunk =
            pos >= self.chunk_at && pos + n as u64 <= self.chunk_at + self.chunk.len() as u64;
        if !in_chunk {
            let o = self.open.as_ref().expect("open");
            let want = (len.saturating_sub(pos) as usize).min(CHUNK.max(n));
            if want < n {
                return Err(self.corrupt(
                    pos,
                    format!("a record runs past the durable end ({len} bytes)"),
                ));
            }
            let mut chunk = vec![0; want];
            o.file
                .read_exact_at(&mut chunk, pos)
                .map_err(SpoolError::io("read", &o.path))?;
            self.chunk = Bytes::from(chunk);
            self.chunk_at = pos;
        }
        Ok((pos - self.chunk_at) as usize)
    }

    /// Damage met at byte `pos` of the open segment, reading record `next`.
    fn corrupt(&self, pos: u64, reason: String) -> SpoolError {
        SpoolError::Damaged(Box::new(Damage {
            stream: self.stream.clone(),
            file: self
                .open
                .as_ref()
                .map(|o| o.path.clone())
                .unwrap_or_default(),
            byte: pos,
            from: self.next,
            to: None,
            reason: format!("{reason}, found reading offset {}", self.next),
        }))
    }

    /// Waits for the next durable record (follows the tail).
    pub async fn next_wait(&mut self) -> Result<(u64, Record), SpoolError> {
        loop {
            if let Some(r) = self.next_record()? {
                return Ok(r);
            }
            if self.durable_end.changed().await.is_err() {
                return Err(SpoolError::Closed);
            }
        }
    }

    /// Opens the segment holding `next` and finds its byte position, using
    /// the sparse index. Returns false if no segment holds it yet.
    fn locate(&mut self) -> Result<bool, SpoolError> {
        // Retention may delete the segment between the look at the list and
        // the open: look again (a deleted segment is a gone one, not an error).
        let mut tries = 0;
        loop {
            match self.locate_once() {
                Err(SpoolError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && tries < 3 =>
                {
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    fn locate_once(&mut self) -> Result<bool, SpoolError> {
        let segs = self.shared.read().unwrap().clone();
        let Some(first) = segs.first() else {
            return Ok(false);
        };
        // Records retention deleted (or a repair set aside) are skipped.
        if self.next < first.base {
            self.next = first.base;
        }
        let Some(seg) = segs
            .iter()
            .find(|s| s.base <= self.next && self.next < s.end())
            // Offsets retention deleted or a repair gave up are skipped.
            .or_else(|| segs.iter().find(|s| s.base > self.next && s.count > 0))
        else {
            return Ok(false);
        };
        if self.next < seg.base {
            self.next = seg.base;
        }
        let file = self
            .fs
            .open(&seg.path, false)
            .map_err(SpoolError::io("open", &seg.path))?;
        let (mut offset, mut pos) = seg
            .index
            .iter()
            .rev()
            .find(|e| e.offset <= self.next)
            .map_or((seg.base, SEGMENT_HEADER_LEN as u64), |e| (e.offset, e.pos));
        let mut header = [0u8; HEADER_LEN];
        let damaged = |pos: u64, offset: u64, reason: String| {
            SpoolError::Damaged(Box::new(Damage {
                stream: self.stream.clone(),
                file: seg.path.clone(),
                byte: pos,
                from: offset,
                to: None,
                reason: format!("{reason}, found looking for offset {offset}"),
            }))
        };
        // Walk record headers (and over commit headers) to `next`; a
        // commit header may also stand right before it.
        loop {
            if pos + HEADER_LEN as u64 > seg.len {
                return Err(damaged(
                    pos,
                    offset,
                    "the segment ends inside a header".into(),
                ));
            }
            file.read_exact_at(&mut header, pos)
                .map_err(SpoolError::io("read", &seg.path))?;
            if segment::at_commit_header(&header) {
                pos += COMMIT_HEADER_LEN as u64;
                continue;
            }
            if offset >= self.next {
                break;
            }
            let h = record::parse_header(&header)
                .map_err(|e| damaged(pos, offset, format!("{e:?}")))?;
            pos += (HEADER_LEN + h.len) as u64;
            offset += 1;
        }
        self.open = Some(OpenSegment {
            base: seg.base,
            file,
            path: seg.path.clone(),
            pos,
            end: seg.end(),
            len: seg.len,
        });
        // Whatever was read ahead belonged to another file.
        self.chunk = Bytes::new();
        self.chunk_at = 0;
        Ok(true)
    }
}
