//! Reading a stream: from an offset or a time, only what is durable, and
//! following the tail as new batches become durable.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use super::error::SpoolError;
use super::fs::{SpoolFile, SpoolFs};
use super::log::{SegmentMeta, SharedSegments};
use super::record::{self, Record, HEADER_LEN};

pub struct Reader {
    fs: Arc<dyn SpoolFs>,
    stream: String,
    shared: SharedSegments,
    durable_end: watch::Receiver<u64>,
    /// Offset of the next record to return.
    next: u64,
    /// The open segment and the byte position of record `next` in it.
    open: Option<(u64, Arc<dyn SpoolFile>, PathBuf, u64)>,
    buf: Vec<u8>,
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
            buf: Vec::new(),
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
            let (base, file, path, pos) = self.open.clone().expect("located");
            let end = {
                let segs = self.shared.read().unwrap();
                segs.iter().find(|s| s.base == base).map(SegmentMeta::end)
            };
            match end {
                Some(end) if self.next < end => {}
                // Past this segment (or it was deleted): find the next one.
                _ => {
                    self.open = None;
                    continue;
                }
            }
            let corrupt = |reason: String| SpoolError::Corrupt {
                stream: self.stream.clone(),
                segment: path.clone(),
                offset: pos,
                reason,
            };
            let mut header = [0u8; HEADER_LEN];
            file.read_exact_at(&mut header, pos)
                .map_err(SpoolError::io("read", &path))?;
            let h = record::parse_header(&header).map_err(|e| corrupt(format!("{e:?}")))?;
            self.buf.clear();
            self.buf.extend_from_slice(&header);
            self.buf.resize(HEADER_LEN + h.len, 0);
            file.read_exact_at(&mut self.buf[HEADER_LEN..], pos + HEADER_LEN as u64)
                .map_err(SpoolError::io("read", &path))?;
            let (r, n) = record::decode(&self.buf).map_err(|e| corrupt(format!("{e:?}")))?;
            let offset = self.next;
            self.next += 1;
            self.open = Some((base, file, path, pos + n as u64));
            return Ok(Some((offset, r)));
        }
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
            .or_else(|| segs.iter().find(|s| s.base > self.next))
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
            .map_or((seg.base, 0), |e| (e.offset, e.pos));
        let mut header = [0u8; HEADER_LEN];
        while offset < self.next {
            file.read_exact_at(&mut header, pos)
                .map_err(SpoolError::io("read", &seg.path))?;
            let h = record::parse_header(&header).map_err(|e| SpoolError::Corrupt {
                stream: self.stream.clone(),
                segment: seg.path.clone(),
                offset: pos,
                reason: format!("{e:?}"),
            })?;
            pos += (HEADER_LEN + h.len) as u64;
            offset += 1;
        }
        self.open = Some((seg.base, file, seg.path.clone(), pos));
        Ok(true)
    }
}
