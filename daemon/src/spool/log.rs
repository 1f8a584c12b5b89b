//! One stream's log: segment files of commits, recovered on open, appended
//! in batches with one fdatasync each.
//!
//! This is the synchronous core, fed by the group-commit writer thread (and
//! driven directly by the crash-simulation tests). It never reports a record
//! as stored before the fdatasync that covers it has returned.
//!
//! Opening surveys the files ([`super::survey`]) and acts on what it found:
//! a torn tail is copied aside and cut; damage is refused (an error naming
//! stream, file, byte and offsets) or, with [`Recovery::Repair`], set aside
//! ([`super::repair`]); a read-only open changes nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::aside::Aside;
use super::checkpoint::{Checkpoint, CheckpointFile, Loaded};
use super::config::{LogConfig, Recovery};
use super::error::SpoolError;
use super::fs::{SpoolFile, SpoolFs};
use super::index::{segment_name, write_index, IndexEntry, SegmentMeta, SharedSegments};
use super::keys::{KeyEntry, Keys};
use super::marks::{self, Cursor};
use super::record::now_us;
use super::record::{Record, MAX_PAYLOAD};
use super::recoveries::{self, Kind, Recovery as Recovered};
use super::segment::{
    fold_record_crc, CommitHeader, SegmentHeader, COMMIT_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use super::segment_file::create_segment;
use super::survey::{self, Depth, Survey};

/// Highest durable seq per producer, shared with the stream's handles.
pub type SharedProducers = Arc<RwLock<HashMap<u64, u64>>>;

/// What became of one appended record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written and durable at this offset.
    Stored { offset: u64 },
    /// This producer's seq was already stored: not written again.
    Duplicate,
    /// Not written: an earlier append of this producer failed, and this
    /// record comes after a seq that failure left unstored. Storing it
    /// would move the idempotence table past that seq, and the producer,
    /// reconnecting, would take what failed for durable. It resends from
    /// the table's seq + 1, which is stored.
    Refused,
    /// The first record of a keyed request whose key is in the table with
    /// the same body hash: not written; the request's records are at
    /// `first`.. (`count` of them), the first with `producer` and `seq`.
    /// The request's other records are reported [`Outcome::Duplicate`].
    Repeated {
        first: u64,
        count: u32,
        producer: u64,
        seq: u64,
    },
    /// As `Repeated`, but the key was stored with another body: nothing of
    /// the request is written (its other records: `Duplicate`).
    KeyConflict,
}

/// How far the log is written, or known durable: the end offset and the
/// last commit (its segment, the position after it, its fingerprint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Mark {
    end: u64,
    segment: u64,
    pos: u64,
    last_commit: u32,
}

pub struct StreamLog {
    fs: Arc<dyn SpoolFs>,
    dir: PathBuf,
    name: String,
    config: LogConfig,
    stream_id: u64,
    shared: SharedSegments,
    active: Option<Arc<dyn SpoolFile>>,
    next_offset: u64,
    /// Highest durable seq per producer: the idempotence table. Only this
    /// log changes it; a new session reads it without queueing behind the
    /// writer (which may be waiting on an fdatasync or a full disk).
    producers: SharedProducers,
    /// The request keys of the idempotence table (only appends read them:
    /// they are checked and set in the writer's order).
    keys: Keys,
    /// Producers an append failed for, with the first seq each failure
    /// left unstored: until it is stored, their later records are
    /// [`Outcome::Refused`].
    broken: HashMap<u64, u64>,
    /// Bytes since the last index entry of the active segment.
    since_index: u64,
    /// An append failed part-way: the active segment may hold bytes past
    /// its known end, to be cut off before anything else is written.
    dirty: bool,
    /// What is written, and what the last fdatasync covered.
    written: Mark,
    synced: Mark,
    /// `None` when opened read-only.
    checkpoint: Option<CheckpointFile>,
    /// The checkpoint on disk says a clean stop left the log here: it must
    /// be written again before the log changes.
    clean_on_disk: bool,
    recoveries: Arc<Mutex<Vec<Recovered>>>,
    scratch: Vec<u8>,
    /// Time the last append spent in fdatasync (its share of the group
    /// commit, for the writer's histograms).
    sync_time: Duration,
}

impl StreamLog {
    /// Opens (creating if new) the log in `dir`, recovering from whatever a
    /// crash left, as `config.recovery` says.
    pub fn open(
        fs: Arc<dyn SpoolFs>,
        dir: &Path,
        name: &str,
        config: LogConfig,
    ) -> Result<StreamLog, SpoolError> {
        let read_only = config.recovery == Recovery::ReadOnly;
        if !read_only {
            fs.create_dir_all(dir)
                .map_err(SpoolError::io("create directory", dir))?;
        }
        let depth = match config.recovery {
            Recovery::Repair => Depth::Full,
            _ => Depth::Quick,
        };
        let mut s = survey::survey(&*fs, dir, name, depth, &config)?;
        for note in &s.notes {
            warn!(stream = name, "{note}");
        }
        if !s.damage.is_empty() {
            if config.recovery != Recovery::Repair {
                return Err(refusal(&s));
            }
            super::repair::repair(&fs, &s, &config)?;
            s = survey::survey(&*fs, dir, name, Depth::Quick, &config)?;
            if !s.damage.is_empty() {
                return Err(refusal(&s));
            }
        }
        if read_only {
            return Self::from_survey(fs, s, config, None);
        }
        let recovered = match s.torn.clone() {
            Some(t) => Some(cut_torn_tail(&fs, &s, &t)?),
            None => None,
        };
        if let Some(path) = s.unborn.clone() {
            set_aside_unborn(&fs, dir, &path)?;
        }
        if s.segments.is_empty() {
            let stream_id = s.stream_id.unwrap_or_else(rand::random);
            create_stream(&fs, dir, stream_id, &s.checkpoint, config.segment_bytes)?;
            s = survey::survey(&*fs, dir, name, Depth::Quick, &config)?;
            if !s.damage.is_empty() {
                return Err(refusal(&s));
            }
        }
        let last = match &s.checkpoint {
            Loaded::Found { checkpoint, .. } => *checkpoint,
            _ => Checkpoint::default(),
        };
        let file = CheckpointFile::open(&*fs, dir, last)?;
        let reached = s.reached;
        let loaded = s.checkpoint.clone();
        let mut log = Self::from_survey(fs, s, config, Some(file))?;
        if let Some(r) = recovered {
            log.record(r)?;
        }
        // A checkpoint behind what the start found (after a crash) learns
        // it now. One written by a clean stop stays as it is until the log
        // first changes (`unclean`): a start that is then refused (a
        // consumer group's damage) has changed nothing.
        // The fsync policy it records is the one acks go out under now.
        match &loaded {
            Loaded::Found { checkpoint, .. } if checkpoint.early_acks != log.config.early_acks => {
                log.checkpoint(false)?
            }
            Loaded::Found { checkpoint, .. } if checkpoint.clean => log.clean_on_disk = true,
            _ if log.checkpoint_behind() || !matches!(loaded, Loaded::Found { .. }) => {
                log.checkpoint(false)?
            }
            _ => {}
        }
        if reached > log.next_offset {
            // Marks ahead of the log without damage: groups acked records
            // acknowledged before they were durable (fsync = interval or
            // never) and a power cut took them. New records must not reuse
            // those offsets.
            log.skip_to(
                reached,
                Kind::EarlyAcks,
                "consumer groups were past the log's end: records acked before they were durable were lost",
            )?;
        }
        Ok(log)
    }

    /// The log as the survey found it (after any cut or repair).
    fn from_survey(
        fs: Arc<dyn SpoolFs>,
        s: Survey,
        config: LogConfig,
        checkpoint: Option<CheckpointFile>,
    ) -> Result<StreamLog, SpoolError> {
        let (active, written) = match s.segments.last() {
            Some(m) => {
                let f = fs
                    .open(&m.path, false)
                    .map_err(SpoolError::io("open", &m.path))?;
                let mark = Mark {
                    end: m.end(),
                    segment: m.base,
                    pos: m.len,
                    last_commit: s.last_commit.map_or(0, |(h, _)| h.head_crc),
                };
                (Some(f), mark)
            }
            None => (None, Mark::default()),
        };
        let since_index = s.segments.last().map_or(u64::MAX, |m| {
            m.index.last().map_or(u64::MAX, |e| m.len - e.pos)
        });
        info!(
            stream = %s.stream,
            segments = s.segments.len(),
            next_offset = written.end,
            producers = s.producers.len(),
            keys = s.keys.len(),
            read_bytes = s.bytes_read,
            "log opened"
        );
        Ok(StreamLog {
            recoveries: Arc::new(Mutex::new(recoveries::read(&*fs, &s.dir))),
            fs,
            dir: s.dir,
            name: s.stream,
            config,
            stream_id: s.stream_id.unwrap_or(0),
            shared: Arc::new(RwLock::new(s.segments)),
            active,
            next_offset: written.end,
            producers: Arc::new(RwLock::new(s.producers)),
            keys: {
                let mut keys = s.keys;
                keys.expire(now_us());
                keys
            },
            broken: HashMap::new(),
            since_index,
            dirty: false,
            sync_time: Duration::ZERO,
            written,
            synced: written,
            checkpoint,
            clean_on_disk: false,
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

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// The segments as readers may see them.
    pub fn shared(&self) -> SharedSegments {
        self.shared.clone()
    }

    /// What recovery and repair did to this stream, oldest first.
    pub fn recoveries(&self) -> Arc<Mutex<Vec<Recovered>>> {
        self.recoveries.clone()
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
        self.producers.read().unwrap().get(&producer).copied()
    }

    pub fn producer_count(&self) -> usize {
        self.producers.read().unwrap().len()
    }

    /// The idempotence table as others may read it.
    pub fn producers(&self) -> SharedProducers {
        self.producers.clone()
    }

    /// Bytes of records in the log.
    pub fn total_bytes(&self) -> u64 {
        self.shared.read().unwrap().iter().map(|s| s.len).sum()
    }

    fn writable(&self) -> Result<&Arc<dyn SpoolFile>, SpoolError> {
        match (&self.active, &self.checkpoint) {
            (Some(f), Some(_)) => Ok(f),
            _ => Err(SpoolError::Io {
                op: "append to",
                path: self.dir.clone(),
                source: std::io::Error::other("the log was opened read-only"),
            }),
        }
    }

    /// Appends a batch: every record whose (producer, seq) is new is written
    /// as one commit (one per segment it spans), then one fdatasync covers
    /// it. Returns, in order, what became of each record; nothing is
    /// reported stored unless the sync returned.
    ///
    /// With `sync == false` (the `interval` and `never` fsync policies) the
    /// data is written but not synced: the promise is off, and the caller
    /// says so in its logs.
    pub fn append(&mut self, records: &[Record], sync: bool) -> Result<Vec<Outcome>, SpoolError> {
        self.sync_time = Duration::ZERO;
        // Every way this fails leaves what it did not store noted, so
        // that nothing queued behind it is stored past the hole.
        let ready =
            self.writable().map(drop).and_then(
                |()| {
                    if self.dirty {
                        self.cut_back()
                    } else {
                        Ok(())
                    }
                },
            );
        if let Err(e) = ready {
            self.broken_from(records.iter());
            return Err(e);
        }
        let mut outcomes = Vec::with_capacity(records.len());
        // Outcomes that repeat a request of this same batch.
        let mut repeats_in_batch = Vec::new();
        let mut batch_max: HashMap<u64, u64> = HashMap::new();
        let mut keep = Vec::with_capacity(records.len());
        if let Some(r) = records.iter().find(|r| {
            r.payload.len() > self.config.max_record_bytes.min(MAX_PAYLOAD)
                || r.body_len() > MAX_PAYLOAD
        }) {
            let len = r.payload.len();
            self.broken_from(records.iter());
            return Err(SpoolError::TooLarge(len));
        }
        let producers = self.producers.read().unwrap();
        let now = now_us();
        // Keys of requests earlier in this batch: the index of their
        // first record's outcome (its offset is known after the write).
        let mut batch_keys: HashMap<&str, (usize, [u8; 32], u32)> = HashMap::new();
        // The rest of a repeated or conflicting request: not written.
        let mut skip = 0;
        for r in records {
            if skip > 0 {
                skip -= 1;
                outcomes.push(Outcome::Duplicate);
                continue;
            }
            if let Some(k) = &r.key {
                let earlier = batch_keys.get(k.key.as_str()).map(|&(i, hash, count)| {
                    let r = &records[i];
                    // `first` is patched to the stored offset below.
                    let (first, producer, seq) = (i as u64, r.producer, r.seq);
                    let repeated = Outcome::Repeated {
                        first,
                        count,
                        producer,
                        seq,
                    };
                    (hash, repeated)
                });
                let known = earlier.or_else(|| {
                    let e = self.keys.get(&k.key, now)?;
                    let repeated = Outcome::Repeated {
                        first: e.first,
                        count: e.count,
                        producer: e.producer,
                        seq: e.seq,
                    };
                    Some((e.hash, repeated))
                });
                if let Some((hash, repeated)) = known {
                    outcomes.push(if hash == k.hash {
                        repeated
                    } else {
                        Outcome::KeyConflict
                    });
                    if earlier.is_some() {
                        repeats_in_batch.push(outcomes.len() - 1);
                    }
                    skip = k.count.saturating_sub(1);
                    continue;
                }
                batch_keys.insert(&k.key, (outcomes.len(), k.hash, k.count));
            }
            let durable = producers.get(&r.producer).copied();
            let pending = batch_max.get(&r.producer).copied();
            // Past the first seq a failure left unstored, only what follows
            // on from it in this batch.
            // (An entry the table has reached since is stale: the hole
            // was filled by a commit of an append that failed later.)
            let after_a_failure = self.broken.get(&r.producer).is_some_and(|&b| {
                durable.is_none_or(|d| d < b)
                    && r.seq > b
                    && pending.is_none_or(|p| p < b || r.seq != p + 1)
            });
            if durable.max(pending).is_some_and(|h| r.seq <= h) {
                outcomes.push(Outcome::Duplicate);
            } else if after_a_failure {
                outcomes.push(Outcome::Refused);
            } else {
                batch_max.insert(r.producer, r.seq);
                outcomes.push(Outcome::Stored { offset: 0 });
                keep.push(r);
            }
        }
        drop(producers);
        let first = self.next_offset;
        let mut i = 0;
        while i < keep.len() {
            let step = match self.fitting(&keep[i..]) {
                0 => self.roll(self.next_offset, self.next_offset),
                n => self.write_commit(&keep[i..i + n], sync).map(|()| i += n),
            };
            if let Err(e) = step {
                self.broken_from(keep[i..].iter().copied());
                return Err(e);
            }
        }
        if !self.broken.is_empty() {
            let producers = self.producers.read().unwrap();
            self.broken
                .retain(|p, b| producers.get(p).is_none_or(|&h| h < *b));
        }
        let mut offset = first;
        for o in outcomes.iter_mut() {
            if let Outcome::Stored { offset: at } = o {
                *at = offset;
                offset += 1;
            }
        }
        let outcomes_before = outcomes.clone();
        for i in repeats_in_batch {
            if let Outcome::Repeated { first, .. } = &mut outcomes[i] {
                // Like the request it repeats: stored there, or refused.
                match outcomes_before[*first as usize] {
                    Outcome::Stored { offset } => *first = offset,
                    _ => outcomes[i] = Outcome::Refused,
                }
            }
        }
        Ok(outcomes)
    }

    /// Time the last [`append`](Self::append) spent in fdatasync.
    pub fn last_sync_time(&self) -> Duration {
        self.sync_time
    }

    /// An append failed with `unstored` not written: each producer's first
    /// seq among them (above what is durable) is where its records must
    /// continue from.
    fn broken_from<'a>(&mut self, unstored: impl Iterator<Item = &'a Record>) {
        let producers = self.producers.read().unwrap();
        // Holes filled since (by a commit before the failure) are closed.
        self.broken
            .retain(|p, b| producers.get(p).is_none_or(|&h| h < *b));
        for r in unstored {
            if producers.get(&r.producer).is_some_and(|&h| r.seq <= h) {
                continue;
            }
            let b = self.broken.entry(r.producer).or_insert(r.seq);
            *b = (*b).min(r.seq);
        }
    }

    /// How many of `records` fit in the active segment as one commit: none
    /// if the first does not (and the segment holds data); at least one in
    /// an empty segment (a record larger than a segment gets one of its
    /// own).
    fn fitting(&self, records: &[&Record]) -> usize {
        let (len, _) = self.active_end();
        let empty = len <= SEGMENT_HEADER_LEN as u64;
        let mut pos = len + COMMIT_HEADER_LEN as u64;
        let mut n = 0;
        for r in records {
            let size = r.encoded_len() as u64;
            if (n > 0 || !empty) && pos + size > self.config.segment_bytes {
                break;
            }
            pos += size;
            n += 1;
        }
        // A keyed request goes whole into one commit: its key is durable
        // only with all of its records, so that a retry found by the key
        // never misses some (an empty segment takes it even if it is
        // larger).
        let mut j = 0;
        while j < n {
            let Some(k) = &records[j].key else {
                j += 1;
                continue;
            };
            let end = (j + k.count as usize).min(records.len());
            if end > n {
                return if j == 0 && empty { end } else { j };
            }
            j = end;
        }
        n
    }

    /// Writes `records` as one commit at the end of the active segment
    /// (and syncs it if `sync`); then, and only then, they become visible
    /// to readers and to the idempotence table.
    fn write_commit(&mut self, records: &[&Record], sync: bool) -> Result<(), SpoolError> {
        self.unclean()?;
        let (len, base) = self.active_end();
        let path = self.active_path();
        let first = self.next_offset;
        self.scratch.clear();
        self.scratch.resize(COMMIT_HEADER_LEN, 0);
        let mut body_crc = 0;
        let mut new_index = Vec::new();
        let mut since = self.since_index;
        let mut last_ts = 0;
        for (k, r) in records.iter().enumerate() {
            let at = self.scratch.len();
            if since >= self.config.index_interval {
                new_index.push(IndexEntry {
                    offset: first + k as u64,
                    pos: len + at as u64,
                    timestamp_us: r.timestamp_us,
                });
                since = 0;
            }
            r.encode(&mut self.scratch);
            let crc = u32::from_le_bytes(self.scratch[at + 4..at + 8].try_into().expect("4"));
            body_crc = fold_record_crc(body_crc, crc);
            since += r.encoded_len() as u64;
            last_ts = last_ts.max(r.timestamp_us);
        }
        // What the last fdatasync covered in this segment: all before this
        // commit when it is synced itself; else what the last one reached.
        let synced_to = if sync {
            len
        } else if self.synced.segment == base {
            self.synced.pos
        } else {
            SEGMENT_HEADER_LEN as u64
        };
        let mut h = CommitHeader {
            body_len: (self.scratch.len() - COMMIT_HEADER_LEN) as u32,
            count: records.len() as u32,
            body_crc,
            first,
            synced_to,
            stream_id: self.stream_id,
            head_crc: 0,
        };
        h.encode_into(&mut self.scratch);
        let file = self.writable()?.clone();
        self.dirty = true;
        file.write_all_at(&self.scratch, len)
            .map_err(SpoolError::io("write", &path))?;
        if sync {
            let started = Instant::now();
            let synced = file.sync_data();
            self.sync_time += started.elapsed();
            synced.map_err(SpoolError::io("fdatasync", &path))?;
        }
        self.dirty = false;
        let pos = len + self.scratch.len() as u64;
        let added = records.len() as u64;
        self.since_index = since;
        {
            let mut segs = self.shared.write().unwrap();
            let m = segs.last_mut().expect("active segment");
            m.len = pos;
            m.count += added;
            m.index.extend(new_index);
            m.last_timestamp_us = m.last_timestamp_us.max(last_ts);
        }
        self.next_offset = first + added;
        let mut producers = self.producers.write().unwrap();
        for r in records {
            let e = producers.entry(r.producer).or_insert(r.seq);
            *e = (*e).max(r.seq);
        }
        drop(producers);
        for (k, r) in records.iter().enumerate() {
            if let Some(key) = &r.key {
                let e = KeyEntry::new(first + k as u64, key, r.producer, r.seq, r.timestamp_us);
                self.keys.insert(key.key.clone(), e);
            }
        }
        self.written = Mark {
            end: self.next_offset,
            segment: base,
            pos,
            last_commit: h.head_crc,
        };
        if sync {
            self.synced = self.written;
        }
        Ok(())
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

    /// Makes everything written durable (the `interval` fsync policy's
    /// timer, a roll, a stop).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if self.synced == self.written {
            return Ok(());
        }
        let path = self.active_path();
        self.writable()?
            .sync_data()
            .map_err(SpoolError::io("fdatasync", &path))?;
        self.synced = self.written;
        Ok(())
    }

    /// Before the log changes after a clean start: the checkpoint stops
    /// saying that the log ends where the clean stop left it.
    fn unclean(&mut self) -> Result<(), SpoolError> {
        if self.clean_on_disk {
            self.checkpoint(false)?;
        }
        Ok(())
    }

    /// Whether the checkpoint is behind what is durable.
    pub fn checkpoint_behind(&self) -> bool {
        self.checkpoint.as_ref().is_some_and(|c| {
            let l = c.last();
            l.end != self.synced.end || l.pos != self.synced.pos || l.segment != self.synced.segment
        })
    }

    /// Writes the checkpoint: the durable end as of the last fdatasync.
    /// `clean` only at a stop, with everything synced.
    pub fn checkpoint(&mut self, clean: bool) -> Result<(), SpoolError> {
        let start = self.shared.read().unwrap().first().map_or(0, |m| m.base);
        let (synced, stream_id, early_acks) = (self.synced, self.stream_id, self.config.early_acks);
        let Some(file) = &mut self.checkpoint else {
            return Ok(());
        };
        self.clean_on_disk = clean;
        file.write(Checkpoint {
            generation: 0,
            stream_id,
            start,
            end: synced.end,
            segment: synced.segment,
            pos: synced.pos,
            last_commit: synced.last_commit,
            clean,
            early_acks,
            written_us: now_us(),
        })
    }

    /// A clean stop: everything synced, and a checkpoint that says the
    /// log ends exactly here.
    pub fn close(mut self) -> Result<(), SpoolError> {
        if self.checkpoint.is_none() {
            return Ok(());
        }
        if self.dirty {
            self.cut_back()?;
        }
        self.sync()?;
        if self.clean_on_disk && !self.checkpoint_behind() {
            // Nothing changed since a clean start: the checkpoint already
            // says so (and a start refused for other reasons leaves the
            // files as it found them).
            return Ok(());
        }
        self.checkpoint(true)
    }

    /// After a failed append: cut the active segment back to its last
    /// written end, so no half-written commit ever stays in the log.
    fn cut_back(&mut self) -> Result<(), SpoolError> {
        let (len, _) = self.active_end();
        let path = self.active_path();
        let file = self.writable()?.clone();
        file.set_len(len)
            .map_err(SpoolError::io("truncate", &path))?;
        file.sync_data()
            .map_err(SpoolError::io("fdatasync", &path))?;
        self.synced = self.written;
        self.dirty = false;
        Ok(())
    }

    /// Seals the active segment (synced first, whatever the fsync policy:
    /// a power cut then loses only a tail; its index and the idempotence
    /// snapshot written durably) and starts a new one at `base`, which
    /// continues from `prev_end` (`base` unless offsets are given up).
    fn roll(&mut self, base: u64, prev_end: u64) -> Result<(), SpoolError> {
        self.unclean()?;
        self.sync()?;
        let sealed = self.shared.read().unwrap().last().expect("active").clone();
        write_index(&*self.fs, &sealed)?;
        self.keys.expire(now_us());
        let producers = self.producers.read().unwrap().clone();
        marks::write_snapshot(&*self.fs, &self.dir, base, &producers, &self.keys)?;
        let path = self.dir.join(segment_name(base));
        let header = SegmentHeader {
            base,
            prev_end,
            stream_id: self.stream_id,
            created_us: now_us(),
        };
        self.active = Some(create_segment(
            &*self.fs,
            &self.dir,
            &path,
            &header,
            self.config.segment_bytes,
        )?);
        self.shared.write().unwrap().push(SegmentMeta {
            base,
            path,
            len: SEGMENT_HEADER_LEN as u64,
            count: 0,
            index: Vec::new(),
            last_timestamp_us: 0,
        });
        self.since_index = u64::MAX;
        self.next_offset = base;
        self.written = Mark {
            end: base,
            segment: base,
            pos: SEGMENT_HEADER_LEN as u64,
            last_commit: 0,
        };
        self.synced = self.written;
        // The checkpoint names the new segment: once a record in it is
        // acked, a start that does not find the segment knows it is lost.
        self.checkpoint(false)
    }

    /// Gives up the offsets from the log's end to `to`: a new segment
    /// starts at `to`, its header saying where the log before it ends, and
    /// the loss is recorded. New records never reuse an offset that a
    /// consumer group or the checkpoint has seen.
    pub fn skip_to(&mut self, to: u64, kind: Kind, reason: &str) -> Result<(), SpoolError> {
        let from = self.next_offset;
        if to <= from {
            return Ok(());
        }
        warn!(stream = %self.name, from, to, lost = to - from, reason, "offsets given up: new records continue after them");
        self.roll(to, from)?;
        self.record(Recovered {
            at_us: now_us(),
            kind,
            from,
            to,
            bytes_aside: 0,
            aside: None,
            reason: reason.to_owned(),
        })?;
        self.checkpoint(false)
    }

    /// Adds to the stream's record of recoveries, durably.
    pub fn record(&mut self, r: Recovered) -> Result<(), SpoolError> {
        recoveries::append(&*self.fs, &self.dir, &r)?;
        self.recoveries.lock().unwrap().push(r);
        Ok(())
    }

    /// Reads the cursor of consumer group `group`, if it has one that
    /// checks out.
    pub fn cursor(&self, group: &str) -> Option<Cursor> {
        let b = super::fs::read_all(&*self.fs, &marks::cursor_path(&self.dir, group)).ok()?;
        marks::decode_cursor(&b)
    }

    /// All cursors that check out, by group.
    pub fn cursors(&self) -> HashMap<String, Cursor> {
        marks::read_cursors(&*self.fs, &self.dir)
            .into_iter()
            .filter_map(|(n, c)| c.ok().map(|c| (n, c)))
            .collect()
    }

    /// Stores a group's cursor durably (atomic replace).
    pub fn set_cursor(&self, group: &str, cursor: Cursor) -> Result<(), SpoolError> {
        marks::write_cursor(&*self.fs, &self.dir, group, cursor)
    }

    /// Removes a group's cursor durably (retention no longer waits for
    /// it); nothing to do if it has none.
    pub fn remove_cursor(&self, group: &str) -> Result<(), SpoolError> {
        let path = marks::cursor_path(&self.dir, group);
        if !self.fs.exists(&path) {
            return Ok(());
        }
        self.fs
            .remove_file(&path)
            .map_err(SpoolError::io("remove cursor", &path))?;
        let dir = self.dir.join(marks::CURSORS);
        self.fs
            .sync_dir(&dir)
            .map_err(SpoolError::io("fsync directory", &dir))
    }

    /// Removes every record (an operator's purge): the active segment is
    /// sealed and a new one starts at the log's end, its idempotence
    /// snapshot written first (so a producer's resend of a (producer, seq)
    /// stored before is still a duplicate, across restarts too), then the
    /// checkpoint learns the new start and every older segment goes, as
    /// retention deletes them. Offsets are never reused: the log goes on
    /// from where it ended. Returns the new first offset.
    pub fn purge(&mut self) -> Result<u64, SpoolError> {
        self.writable()?;
        if self.dirty {
            self.cut_back()?;
        }
        let end = self.next_offset;
        let active_holds_records = self
            .shared
            .read()
            .unwrap()
            .last()
            .is_some_and(|m| m.count > 0);
        if active_holds_records {
            self.roll(end, end)?;
        }
        // Every segment but the active one.
        let gone: Vec<PathBuf> = {
            let segs = self.shared.read().unwrap();
            segs[..segs.len().saturating_sub(1)]
                .iter()
                .map(|s| s.path.clone())
                .collect()
        };
        self.remove_oldest(&gone)?;
        info!(stream = %self.name, first_offset = end, "stream purged");
        Ok(end)
    }

    /// Deletes `gone`, the oldest segments in order: out of the readers'
    /// view first (a reader that looked before and finds the file gone
    /// looks again and skips it; one that has it open reads on), then the
    /// checkpoint learns the new start (a log that starts later than its
    /// checkpoint says lost segments), then the files and their indexes.
    fn remove_oldest(&mut self, gone: &[PathBuf]) -> Result<(), SpoolError> {
        if gone.is_empty() {
            return Ok(());
        }
        self.unclean()?;
        self.shared.write().unwrap().drain(..gone.len());
        self.checkpoint(false)?;
        for path in gone {
            self.fs
                .remove_file(path)
                .map_err(SpoolError::io("remove", path))?;
            let _ = self.fs.remove_file(&super::index::index_path(path));
        }
        self.fs
            .sync_dir(&self.dir)
            .map_err(SpoolError::io("fsync directory", &self.dir))
    }

    /// Deletes whole sealed segments, oldest first, while the log is over
    /// `max_bytes` or a segment's newest record is older than `min_timestamp_us`
    /// — never one holding records a `retain_until_acked` group has not acked.
    /// The checkpoint learns the new start before any file goes (a log
    /// that starts later than its checkpoint says lost segments). Returns
    /// how many segments were deleted.
    pub fn enforce_retention(
        &mut self,
        max_bytes: Option<u64>,
        min_timestamp_us: Option<u64>,
    ) -> Result<usize, SpoolError> {
        self.writable()?;
        let floor = self
            .cursors()
            .values()
            .filter(|c| c.retain_until_acked)
            .map(|c| c.ack_floor)
            .min()
            .unwrap_or(u64::MAX);
        let mut gone = Vec::new();
        {
            let segs = self.shared.read().unwrap();
            let mut total: u64 = segs.iter().map(|s| s.len).sum();
            for s in &segs[..segs.len().saturating_sub(1)] {
                let too_big = max_bytes.is_some_and(|m| total > m);
                let too_old = min_timestamp_us.is_some_and(|t| s.last_timestamp_us < t);
                if !(too_big || too_old) || s.end() > floor {
                    break;
                }
                total -= s.len;
                gone.push(s.path.clone());
            }
        }
        if gone.is_empty() {
            return Ok(0);
        }
        self.remove_oldest(&gone)?;
        info!(stream = %self.name, deleted = gone.len(), "retention removed segments");
        Ok(gone.len())
    }
}

/// The error for a survey's damage: the first found, and how many more.
fn refusal(s: &Survey) -> SpoolError {
    let mut d = s.damage[0].clone();
    if s.damage.len() > 1 {
        d.reason = format!(
            "{}; and {} more finding(s): see `sluice spool verify`",
            d.reason,
            s.damage.len() - 1
        );
    }
    SpoolError::Damaged(Box::new(d))
}

/// A new stream: the checkpoint first (it holds the stream's id), then its
/// first segment. A crash between the two leaves a checkpoint without
/// segments, which is a stream that was never written to.
fn create_stream(
    fs: &Arc<dyn SpoolFs>,
    dir: &Path,
    stream_id: u64,
    loaded: &Loaded,
    segment_bytes: u64,
) -> Result<(), SpoolError> {
    let (last, base) = match loaded {
        Loaded::Found { checkpoint, .. } => (*checkpoint, checkpoint.end),
        _ => (Checkpoint::default(), 0),
    };
    let mut file = CheckpointFile::open(&**fs, dir, last)?;
    file.write(Checkpoint {
        stream_id,
        start: base,
        end: base,
        segment: base,
        pos: SEGMENT_HEADER_LEN as u64,
        written_us: now_us(),
        ..Checkpoint::default()
    })?;
    let header = SegmentHeader {
        base,
        prev_end: base,
        stream_id,
        created_us: now_us(),
    };
    let path = dir.join(segment_name(base));
    create_segment(&**fs, dir, &path, &header, segment_bytes)?;
    info!(stream = %dir.display(), "stream created");
    Ok(())
}

/// Copies a torn tail's bytes aside (unless they are only zeroes) and
/// cuts the segment there. Returns what to record.
fn cut_torn_tail(
    fs: &Arc<dyn SpoolFs>,
    s: &Survey,
    t: &survey::Torn,
) -> Result<Recovered, SpoolError> {
    let aside = if t.nonzero > 0 {
        let mut a = Aside::new(fs.clone(), &s.dir, "torn-tail")?;
        a.note(&format!(
            "why: {} (nothing after it vouches for it)",
            t.reason
        ));
        super::repair::copy_tail(
            fs,
            &mut a,
            &t.file,
            t.pos,
            t.file_len,
            "a torn tail left by a crash: never acknowledged",
        )?;
        Some(a.finish()?)
    } else {
        None
    };
    let f = fs
        .open(&t.file, false)
        .map_err(SpoolError::io("open", &t.file))?;
    f.set_len(t.pos)
        .map_err(SpoolError::io("truncate", &t.file))?;
    f.sync_data()
        .map_err(SpoolError::io("fdatasync", &t.file))?;
    let put = aside.as_ref().map_or_else(
        || "only zeroes: nothing to keep".into(),
        |p| p.display().to_string(),
    );
    warn!(stream = %s.stream, segment = %t.file.display(), at = t.pos,
        bytes = t.file_len - t.pos, aside = %put, reason = %t.reason,
        "cut a torn tail left by a crash (never acknowledged); its bytes were set aside");
    Ok(Recovered {
        at_us: now_us(),
        kind: Kind::TornTail,
        from: s.end(),
        to: s.end(),
        bytes_aside: t.nonzero,
        aside,
        reason: t.reason.clone(),
    })
}

/// A segment file a crash left before its header was whole: moved aside
/// (or removed if it holds nothing), so the one before it goes on.
fn set_aside_unborn(fs: &Arc<dyn SpoolFs>, dir: &Path, path: &Path) -> Result<(), SpoolError> {
    let f = fs.open(path, false).map_err(SpoolError::io("open", path))?;
    let len = f.size().map_err(SpoolError::io("stat", path))?;
    let mut b = vec![0; len as usize];
    f.read_exact_at(&mut b, 0)
        .map_err(SpoolError::io("read", path))?;
    drop(f);
    if b.iter().all(|&x| x == 0) {
        fs.remove_file(path)
            .map_err(SpoolError::io("remove", path))?;
        fs.sync_dir(dir)
            .map_err(SpoolError::io("fsync directory", dir))?;
    } else {
        let mut a = Aside::new(fs.clone(), dir, "unfinished-segment")?;
        a.move_file(
            path,
            "a segment whose creation a crash cut short (no commit in it)",
        )?;
        a.finish()?;
    }
    warn!(segment = %path.display(), "a segment whose creation a crash cut short was set aside");
    Ok(())
}
