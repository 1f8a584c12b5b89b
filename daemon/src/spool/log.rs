//! One stream's log: segment files of records, recovered on open, appended
//! in batches with one fdatasync each.
//!
//! This is the synchronous core, fed by the group-commit writer thread (and
//! driven directly by the crash-simulation tests). It never reports a record
//! as stored before the fdatasync that covers it has returned.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tracing::{info, warn};

use super::error::SpoolError;
use super::fs::{read_all, write_atomic, SpoolFile, SpoolFs};
use super::record::{self, Record, HEADER_LEN, MAX_PAYLOAD};

/// Settings of one stream's log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Bound on one batch's bytes. With one batch written at a time and
    /// synced before the next, a crash can damage at most this much (plus one
    /// record) at the end of the log: that is how a torn tail is told from
    /// corruption.
    pub max_batch_bytes: usize,
    /// Largest payload accepted (at most the transport's 16 MiB).
    pub max_record_bytes: usize,
    /// One sparse-index entry per this many bytes of records.
    pub index_interval: u64,
    /// Quarantine corrupt segments instead of refusing to open.
    pub repair: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 256 << 20,
            max_batch_bytes: 8 << 20,
            max_record_bytes: MAX_PAYLOAD,
            index_interval: 64 << 10,
            repair: false,
        }
    }
}

/// What became of one appended record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written and durable at this offset.
    Stored { offset: u64 },
    /// This producer's seq was already stored: not written again.
    Duplicate,
}

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
    /// Bytes of durable records.
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

pub(crate) fn segment_name(base: u64) -> String {
    format!("{base:020}.seg")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_suffix(".seg")?.parse().ok()
}

/// A durable consumer-group position (used by retention and consumers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Every record below this offset is acked by the group.
    pub ack_floor: u64,
    /// Retention may not delete records at or above `ack_floor`.
    pub retain_until_acked: bool,
}

pub struct StreamLog {
    fs: Arc<dyn SpoolFs>,
    dir: PathBuf,
    name: String,
    config: LogConfig,
    shared: SharedSegments,
    active: Arc<dyn SpoolFile>,
    next_offset: u64,
    /// Highest durable seq per producer: the idempotence table.
    producers: HashMap<u64, u64>,
    /// Bytes since the last index entry of the active segment.
    since_index: u64,
    /// An append failed part-way: the active segment may hold bytes past
    /// its known end, to be cut off before anything else is written.
    dirty: bool,
    scratch: Vec<u8>,
}

impl StreamLog {
    /// Opens (creating if new) the log in `dir`, recovering from whatever a
    /// crash left: a torn tail is truncated; corruption elsewhere is an error
    /// unless `config.repair`.
    pub fn open(
        fs: Arc<dyn SpoolFs>,
        dir: &Path,
        name: &str,
        config: LogConfig,
    ) -> Result<StreamLog, SpoolError> {
        fs.create_dir_all(dir)
            .map_err(SpoolError::io("create directory", dir))?;
        let mut bases: Vec<u64> = fs
            .list(dir)
            .map_err(SpoolError::io("list", dir))?
            .iter()
            .filter_map(|n| parse_segment_name(n))
            .collect();
        bases.sort_unstable();
        let mut producers = load_snapshot(&*fs, dir, bases.last().copied().unwrap_or(0));
        let snapshot_base = producers.as_ref().map(|(b, _)| *b);
        let mut table = producers.take().map(|(_, t)| t).unwrap_or_default();
        let mut metas = Vec::new();
        let last = bases.len().saturating_sub(1);
        for (i, &base) in bases.iter().enumerate() {
            let path = dir.join(segment_name(base));
            // Sealed segments before the snapshot only need their index; the
            // rest are scanned, which also rebuilds the idempotence table.
            let sealed_and_indexed = i < last && snapshot_base.is_some_and(|s| base < s);
            let meta = if sealed_and_indexed {
                match load_index(&*fs, &path) {
                    Some(m) => m,
                    None => {
                        scan_segment(&*fs, name, &path, base, false, &config, &mut HashMap::new())?
                    }
                }
            } else {
                scan_segment(&*fs, name, &path, base, i == last, &config, &mut table)?
            };
            metas.push(meta);
        }
        if metas.is_empty() {
            let path = dir.join(segment_name(0));
            create_segment(&*fs, dir, &path, config.segment_bytes)?;
            metas.push(SegmentMeta {
                base: 0,
                path,
                len: 0,
                count: 0,
                index: Vec::new(),
                last_timestamp_us: 0,
            });
        }
        let active_meta = metas.last().expect("at least one segment");
        let active = fs
            .open(&active_meta.path, false)
            .map_err(SpoolError::io("open", &active_meta.path))?;
        let next_offset = active_meta.end();
        let since_index = active_meta.len - active_meta.index.last().map_or(0, |e| e.pos);
        info!(
            stream = name,
            segments = metas.len(),
            next_offset,
            producers = table.len(),
            "log opened"
        );
        Ok(StreamLog {
            fs,
            dir: dir.to_path_buf(),
            name: name.to_owned(),
            config,
            shared: Arc::new(RwLock::new(metas)),
            active,
            next_offset,
            producers: table,
            since_index,
            dirty: false,
            scratch: Vec::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn fs(&self) -> &Arc<dyn SpoolFs> {
        &self.fs
    }

    /// The segments as readers may see them.
    pub fn shared(&self) -> SharedSegments {
        self.shared.clone()
    }

    /// A reader over what is durable now (for tools and tests; a live
    /// stream's readers come from its `Stream` handle and follow the tail).
    pub fn reader(&self, from: u64) -> super::Reader {
        let (_, end) = tokio::sync::watch::channel(self.next_offset);
        super::Reader::new(self.fs.clone(), self.name.clone(), self.shared(), end, from)
    }

    /// Offset the next stored record will get.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// The highest durable seq of `producer` in this stream.
    pub fn highest_seq(&self, producer: u64) -> Option<u64> {
        self.producers.get(&producer).copied()
    }

    pub fn producer_count(&self) -> usize {
        self.producers.len()
    }

    /// Bytes of records in the log.
    pub fn total_bytes(&self) -> u64 {
        self.shared.read().unwrap().iter().map(|s| s.len).sum()
    }

    /// Appends a batch: every record whose (producer, seq) is new is written,
    /// then one fdatasync covers them all. Returns, in order, what became of
    /// each record; nothing is reported stored unless the sync returned.
    ///
    /// With `sync == false` (the `interval` and `never` fsync policies) the
    /// data is written but not synced: the promise is off, and the caller
    /// says so in its logs.
    pub fn append(&mut self, records: &[Record], sync: bool) -> Result<Vec<Outcome>, SpoolError> {
        if self.dirty {
            self.cut_back()?;
        }
        let mut outcomes = Vec::with_capacity(records.len());
        let mut batch_max: HashMap<u64, u64> = HashMap::new();
        let mut keep = Vec::with_capacity(records.len());
        for r in records {
            if r.payload.len() > self.config.max_record_bytes.min(MAX_PAYLOAD) {
                return Err(SpoolError::TooLarge(r.payload.len()));
            }
            let durable = self.producers.get(&r.producer).copied();
            let pending = batch_max.get(&r.producer).copied();
            let highest = durable.max(pending);
            if highest.is_some_and(|h| r.seq <= h) {
                outcomes.push(Outcome::Duplicate);
            } else {
                batch_max.insert(r.producer, r.seq);
                outcomes.push(Outcome::Stored { offset: 0 });
                keep.push(r);
            }
        }
        if keep.is_empty() {
            return Ok(outcomes);
        }
        self.dirty = true;
        let mut offsets = Vec::with_capacity(keep.len());
        let mut next = self.next_offset;
        let mut i = 0;
        while i < keep.len() {
            // Fill the active segment; roll when the next record would not fit.
            let (len, _) = self.active_end();
            let room = self.config.segment_bytes.saturating_sub(len);
            if len > 0 && keep[i].encoded_len() as u64 > room {
                self.roll()?;
                continue;
            }
            self.scratch.clear();
            let mut new_index = Vec::new();
            let mut pos = len;
            let mut since = self.since_index;
            let mut last_ts = 0;
            let chunk_start = i;
            while i < keep.len() {
                let r = keep[i];
                let n = r.encoded_len() as u64;
                if pos > len && pos + n > self.config.segment_bytes {
                    break;
                }
                let offset = next;
                next += 1;
                if since >= self.config.index_interval || pos == 0 {
                    new_index.push(IndexEntry {
                        offset,
                        pos,
                        timestamp_us: r.timestamp_us,
                    });
                    since = 0;
                }
                r.encode(&mut self.scratch);
                offsets.push(offset);
                pos += n;
                since += n;
                last_ts = last_ts.max(r.timestamp_us);
                i += 1;
            }
            let path = self.active_path();
            self.active
                .write_all_at(&self.scratch, len)
                .map_err(SpoolError::io("write", &path))?;
            if sync {
                self.active
                    .sync_data()
                    .map_err(SpoolError::io("fdatasync", &path))?;
            }
            // Durable: now, and only now, it becomes visible to readers and
            // to the idempotence table (which a roll snapshots).
            let added = (i - chunk_start) as u64;
            self.since_index = since;
            let mut segs = self.shared.write().unwrap();
            let m = segs.last_mut().expect("active segment");
            m.len = pos;
            m.count += added;
            m.index.extend(new_index);
            m.last_timestamp_us = m.last_timestamp_us.max(last_ts);
            drop(segs);
            self.next_offset = next;
            for r in &keep[chunk_start..i] {
                let e = self.producers.entry(r.producer).or_insert(r.seq);
                *e = (*e).max(r.seq);
            }
        }
        self.dirty = false;
        let mut stored = offsets.into_iter();
        for o in outcomes.iter_mut() {
            if let Outcome::Stored { offset } = o {
                *offset = stored.next().expect("one offset per stored record");
            }
        }
        Ok(outcomes)
    }

    fn active_end(&self) -> (u64, u64) {
        let segs = self.shared.read().unwrap();
        let m = segs.last().expect("active segment");
        (m.len, m.base)
    }

    fn active_path(&self) -> PathBuf {
        self.shared
            .read()
            .unwrap()
            .last()
            .expect("active")
            .path
            .clone()
    }

    /// Syncs the active segment (for the `interval` fsync policy).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        let path = self.active_path();
        self.active
            .sync_data()
            .map_err(SpoolError::io("fdatasync", &path))
    }

    /// After a failed append: cut the active segment back to its last durable
    /// end, so no half-written record ever stays in the log.
    fn cut_back(&mut self) -> Result<(), SpoolError> {
        let (len, _) = self.active_end();
        let path = self.active_path();
        self.active
            .set_len(len)
            .map_err(SpoolError::io("truncate", &path))?;
        self.active
            .sync_data()
            .map_err(SpoolError::io("fdatasync", &path))?;
        self.dirty = false;
        Ok(())
    }

    /// Seals the active segment (index and idempotence snapshot written
    /// durably first) and starts a new one.
    fn roll(&mut self) -> Result<(), SpoolError> {
        let sealed = self.shared.read().unwrap().last().expect("active").clone();
        write_index(&*self.fs, &sealed)?;
        let next = sealed.end();
        write_snapshot(&*self.fs, &self.dir, next, &self.producers)?;
        let path = self.dir.join(segment_name(next));
        create_segment(&*self.fs, &self.dir, &path, self.config.segment_bytes)?;
        self.active = self
            .fs
            .open(&path, false)
            .map_err(SpoolError::io("open", &path))?;
        self.shared.write().unwrap().push(SegmentMeta {
            base: next,
            path,
            len: 0,
            count: 0,
            index: Vec::new(),
            last_timestamp_us: 0,
        });
        self.since_index = 0;
        Ok(())
    }

    /// Reads the cursor of consumer group `group`, if it has one.
    pub fn cursor(&self, group: &str) -> Option<Cursor> {
        let path = self.dir.join("cursors").join(group);
        let b = read_all(&*self.fs, &path).ok()?;
        decode_cursor(&b)
    }

    /// All cursors, by group.
    pub fn cursors(&self) -> HashMap<String, Cursor> {
        let dir = self.dir.join("cursors");
        let names = self.fs.list(&dir).unwrap_or_default();
        names
            .into_iter()
            .filter(|n| !n.ends_with(".tmp"))
            .filter_map(|n| self.cursor(&n).map(|c| (n, c)))
            .collect()
    }

    /// Stores a group's cursor durably (atomic replace).
    pub fn set_cursor(&self, group: &str, cursor: Cursor) -> Result<(), SpoolError> {
        let dir = self.dir.join("cursors");
        self.fs
            .create_dir_all(&dir)
            .map_err(SpoolError::io("create directory", &dir))?;
        let path = dir.join(group);
        write_atomic(&*self.fs, &path, &encode_cursor(cursor))
            .map_err(SpoolError::io("write cursor", &path))
    }

    /// Removes a group's cursor durably (retention no longer waits for
    /// it); nothing to do if it has none.
    pub fn remove_cursor(&self, group: &str) -> Result<(), SpoolError> {
        let dir = self.dir.join("cursors");
        let path = dir.join(group);
        if !self.fs.exists(&path) {
            return Ok(());
        }
        self.fs
            .remove_file(&path)
            .map_err(SpoolError::io("remove cursor", &path))?;
        self.fs
            .sync_dir(&dir)
            .map_err(SpoolError::io("fsync directory", &dir))
    }

    /// Deletes whole sealed segments, oldest first, while the log is over
    /// `max_bytes` or a segment's newest record is older than `min_timestamp_us`
    /// — never one holding records a `retain_until_acked` group has not acked.
    /// Returns how many segments were deleted.
    pub fn enforce_retention(
        &mut self,
        max_bytes: Option<u64>,
        min_timestamp_us: Option<u64>,
    ) -> Result<usize, SpoolError> {
        let floor = self
            .cursors()
            .values()
            .filter(|c| c.retain_until_acked)
            .map(|c| c.ack_floor)
            .min()
            .unwrap_or(u64::MAX);
        let mut deleted = 0;
        loop {
            let segs = self.shared.read().unwrap();
            if segs.len() < 2 {
                break;
            }
            let total: u64 = segs.iter().map(|s| s.len).sum();
            let oldest = &segs[0];
            let too_big = max_bytes.is_some_and(|m| total > m);
            let too_old = min_timestamp_us.is_some_and(|t| oldest.last_timestamp_us < t);
            if !(too_big || too_old) || oldest.end() > floor {
                break;
            }
            let path = oldest.path.clone();
            drop(segs);
            // Out of the readers' view first: a reader that looked before
            // and finds the file gone looks again and skips it; one that has
            // it open reads on.
            self.shared.write().unwrap().remove(0);
            self.fs
                .remove_file(&path)
                .map_err(SpoolError::io("remove", &path))?;
            let _ = self.fs.remove_file(&path.with_extension("idx"));
            self.fs
                .sync_dir(&self.dir)
                .map_err(SpoolError::io("fsync directory", &self.dir))?;
            deleted += 1;
        }
        if deleted > 0 {
            info!(stream = %self.name, deleted, "retention removed segments");
        }
        Ok(deleted)
    }
}

fn create_segment(fs: &dyn SpoolFs, dir: &Path, path: &Path, size: u64) -> Result<(), SpoolError> {
    let f = fs
        .open(path, true)
        .map_err(SpoolError::io("create", path))?;
    f.preallocate(size)
        .map_err(SpoolError::io("preallocate", path))?;
    fs.sync_dir(dir)
        .map_err(SpoolError::io("fsync directory", dir))
}

/// Scans a segment record by record. In the last segment an invalid record
/// near the end is a torn tail from a crash and is cut off; anywhere else it
/// is corruption: an error, or with `repair` the segment is quarantined and
/// rewritten with its valid prefix.
fn scan_segment(
    fs: &dyn SpoolFs,
    stream: &str,
    path: &Path,
    base: u64,
    last: bool,
    config: &LogConfig,
    table: &mut HashMap<u64, u64>,
) -> Result<SegmentMeta, SpoolError> {
    let f = fs.open(path, false).map_err(SpoolError::io("open", path))?;
    let file_len = f.size().map_err(SpoolError::io("stat", path))?;
    let mut data = vec![0; file_len as usize];
    f.read_exact_at(&mut data, 0)
        .map_err(SpoolError::io("read", path))?;
    let mut meta = SegmentMeta {
        base,
        path: path.to_path_buf(),
        len: 0,
        count: 0,
        index: Vec::new(),
        last_timestamp_us: 0,
    };
    let mut pos = 0usize;
    let mut since = u64::MAX;
    let mut failure = None;
    while pos < data.len() {
        match record::decode(&data[pos..]) {
            Ok((r, n)) => {
                if since >= config.index_interval {
                    meta.index.push(IndexEntry {
                        offset: base + meta.count,
                        pos: pos as u64,
                        timestamp_us: r.timestamp_us,
                    });
                    since = 0;
                }
                let e = table.entry(r.producer).or_insert(r.seq);
                *e = (*e).max(r.seq);
                meta.count += 1;
                meta.last_timestamp_us = meta.last_timestamp_us.max(r.timestamp_us);
                pos += n;
                since += n as u64;
            }
            Err(why) => {
                failure = Some(why);
                break;
            }
        }
    }
    meta.len = pos as u64;
    let Some(why) = failure else {
        return Ok(meta);
    };
    let tail = file_len - pos as u64;
    // One batch is written (and synced) at a time, so a crash can only have
    // damaged the last write: at most a batch plus the record that overflowed it.
    let torn_bound = (config.max_batch_bytes + HEADER_LEN + config.max_record_bytes) as u64;
    if last && tail <= torn_bound {
        warn!(stream, segment = %path.display(), at = pos, cut = tail, "truncating a torn tail left by a crash");
        f.set_len(pos as u64)
            .map_err(SpoolError::io("truncate", path))?;
        f.sync_data().map_err(SpoolError::io("fdatasync", path))?;
        return Ok(meta);
    }
    let reason = format!("{why:?}, {tail} bytes follow");
    if !config.repair {
        return Err(SpoolError::Corrupt {
            stream: stream.to_owned(),
            segment: path.to_path_buf(),
            offset: pos as u64,
            reason,
        });
    }
    // Quarantine: keep the damaged file aside, continue with its valid prefix.
    let aside = path.with_extension(format!("seg.quarantined-at-{pos}"));
    warn!(stream, segment = %path.display(), at = pos, lost_bytes = tail, aside = %aside.display(),
        "repair: quarantining a corrupt segment; records after the damage are set aside");
    fs.rename(path, &aside)
        .map_err(SpoolError::io("rename", path))?;
    let fresh = fs
        .open(path, true)
        .map_err(SpoolError::io("create", path))?;
    fresh
        .write_all_at(&data[..pos], 0)
        .map_err(SpoolError::io("write", path))?;
    fresh
        .sync_data()
        .map_err(SpoolError::io("fdatasync", path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs.sync_dir(dir)
        .map_err(SpoolError::io("fsync directory", dir))?;
    let _ = fs.remove_file(&path.with_extension("idx"));
    Ok(meta)
}

const INDEX_MAGIC: &[u8; 4] = b"SLIX";
const SNAP_MAGIC: &[u8; 4] = b"SLSN";

/// Index file: magic, len, count, last timestamp, entries, CRC32C.
fn write_index(fs: &dyn SpoolFs, m: &SegmentMeta) -> Result<(), SpoolError> {
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
    let path = m.path.with_extension("idx");
    write_atomic(fs, &path, &b).map_err(SpoolError::io("write index", &path))
}

fn checked_body<'a>(b: &'a [u8], magic: &[u8; 4]) -> Option<&'a [u8]> {
    if b.len() < 8 || &b[..4] != magic {
        return None;
    }
    let (body, crc) = b.split_at(b.len() - 4);
    (crc32c::crc32c(body) == u32::from_le_bytes(crc.try_into().ok()?)).then_some(&body[4..])
}

fn u64s(b: &[u8]) -> impl Iterator<Item = u64> + '_ {
    b.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
}

/// Loads a sealed segment's index, if present, intact and matching the file.
fn load_index(fs: &dyn SpoolFs, path: &Path) -> Option<SegmentMeta> {
    let b = read_all(fs, &path.with_extension("idx")).ok()?;
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
    let file_len = fs.open(path, false).ok()?.size().ok()?;
    if file_len != len {
        return None;
    }
    let base = parse_segment_name(path.file_name()?.to_str()?)?;
    Some(SegmentMeta {
        base,
        path: path.to_path_buf(),
        len,
        count,
        index,
        last_timestamp_us: last_ts,
    })
}

/// Snapshot of the idempotence table as of offset `base` (all records below it).
fn write_snapshot(
    fs: &dyn SpoolFs,
    dir: &Path,
    base: u64,
    table: &HashMap<u64, u64>,
) -> Result<(), SpoolError> {
    let mut b = SNAP_MAGIC.to_vec();
    b.extend_from_slice(&(table.len() as u64).to_le_bytes());
    for (p, s) in table {
        b.extend_from_slice(&p.to_le_bytes());
        b.extend_from_slice(&s.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let path = dir.join(format!("{base:020}.snap"));
    write_atomic(fs, &path, &b).map_err(SpoolError::io("write snapshot", &path))?;
    // Older snapshots are superseded.
    for n in fs.list(dir).unwrap_or_default() {
        if let Some(b) = n.strip_suffix(".snap").and_then(|s| s.parse::<u64>().ok()) {
            if b < base {
                let _ = fs.remove_file(&dir.join(n));
            }
        }
    }
    Ok(())
}

/// The newest intact snapshot at or below `upto`: its base and table.
fn load_snapshot(fs: &dyn SpoolFs, dir: &Path, upto: u64) -> Option<(u64, HashMap<u64, u64>)> {
    let mut bases: Vec<u64> = fs
        .list(dir)
        .ok()?
        .iter()
        .filter_map(|n| n.strip_suffix(".snap")?.parse().ok())
        .filter(|&b| b <= upto)
        .collect();
    bases.sort_unstable();
    for base in bases.into_iter().rev() {
        let Ok(b) = read_all(fs, &dir.join(format!("{base:020}.snap"))) else {
            continue;
        };
        let Some(body) = checked_body(&b, SNAP_MAGIC) else {
            continue;
        };
        let mut v = u64s(body);
        let n = v.next()? as usize;
        let mut t = HashMap::with_capacity(n.min(1 << 20));
        for _ in 0..n {
            t.insert(v.next()?, v.next()?);
        }
        return Some((base, t));
    }
    None
}

fn encode_cursor(c: Cursor) -> Vec<u8> {
    let mut b = b"SLCU".to_vec();
    b.extend_from_slice(&c.ack_floor.to_le_bytes());
    b.push(c.retain_until_acked as u8);
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

pub(crate) fn decode_cursor(b: &[u8]) -> Option<Cursor> {
    let body = checked_body(b, b"SLCU")?;
    if body.len() != 9 {
        return None;
    }
    Some(Cursor {
        ack_floor: u64::from_le_bytes(body[..8].try_into().ok()?),
        retain_until_acked: body[8] != 0,
    })
}
