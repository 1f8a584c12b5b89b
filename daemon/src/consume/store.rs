//! A consumer group's durable state: a journal of events, compacted now and
//! then into a snapshot.
//!
//! A group lives in `<stream dir>/groups/<group>/`:
//!
//! ```text
//! snapshot   magic "SLGS", version, the whole GroupState, CRC32C
//!            (replaced atomically: write_atomic)
//! journal    entries appended since the snapshot, one per batch:
//!            0  len  u32 LE   body length (1 ..= MAX_ENTRY)
//!            4  crc  u32 LE   CRC32C of the body
//!            8  body          the batch's events (see `encode_event`)
//! ```
//!
//! A batch is one entry, written with one write and made durable with one
//! fdatasync: after a crash a batch is either wholly there or not at all
//! (its entry is torn or missing and recovery cuts it off). The snapshot is
//! the commit point of a group's creation; it is written again, and the
//! journal emptied, when the journal has grown past a bound (compaction).
//! Replay is idempotent and order-insensitive, so a crash between writing
//! the snapshot and emptying the journal only replays events the snapshot
//! already holds.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};

use super::ranges::RangeSet;
use crate::spool::fs::{read_all, write_atomic, SpoolFile, SpoolFs};
use crate::spool::SpoolError;

/// Something that happened to a group, as journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Offsets acked: by a consumer, conflated away, or lost to retention.
    Acked(Range<u64>),
    /// The message at `offset` was handed out for the `count`-th time.
    Delivered { offset: u64, count: u32 },
    /// The message was dead-lettered as the group's `dlq_seq`-th dead
    /// letter; it counts as acked.
    Dead { offset: u64, dlq_seq: u64 },
    /// Dead letters up to `dlq_seq` are durable in the dead-letter stream.
    DeadStored { up_to: u64 },
}

/// What a group has done with its stream, as far as it is durable.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupState {
    /// Every offset below is done (acked or dead-lettered).
    pub floor: u64,
    /// Offsets at or above `floor` that are done.
    pub acked: RangeSet,
    /// Delivery counts of offsets at or above `floor` that are not done.
    pub deliveries: BTreeMap<u64, u32>,
    /// Last dead-letter seq assigned (0: none). Also the seq of the group's
    /// dead letters in the dead-letter stream (their producer is
    /// `dead_letter::dlq_producer_id`).
    pub dlq_seq: u64,
    /// Dead letters up to this seq are known durable in the dead-letter
    /// stream (the highest `DeadStored` seen). Kept so that replaying a
    /// `Dead` after its `DeadStored` does not make it pending again.
    pub dlq_stored: u64,
    /// Dead letters journaled but not yet known durable in the dead-letter
    /// stream: dlq_seq → offset. After a restart they are stored again (the
    /// dead-letter stream de-duplicates by seq).
    pub dead_pending: BTreeMap<u64, u64>,
}

impl GroupState {
    pub fn new(floor: u64) -> Self {
        GroupState {
            floor,
            ..GroupState::default()
        }
    }

    /// Applies an event. Idempotent, and the order of events does not
    /// matter: the result is the same for any order and any repetition
    /// (acked offsets are a union, counts and seqs are maxima). Afterwards:
    /// the floor has moved over every done offset starting at it, `acked`
    /// holds nothing below the floor, and `deliveries` nothing done.
    ///
    /// `DeadStored { up_to }` also raises `dlq_seq` to `up_to`: after a
    /// journal lost its tail, telling the group what the dead-letter stream
    /// holds (`highest_seq` of the group's dead-letter producer) keeps it
    /// from assigning a seq twice.
    pub fn apply(&mut self, e: &Event) {
        match *e {
            Event::Acked(ref r) => self.mark_done(r.clone()),
            Event::Delivered { offset, count } => {
                if !self.is_done(offset) {
                    let c = self.deliveries.entry(offset).or_insert(count);
                    *c = (*c).max(count);
                }
            }
            Event::Dead { offset, dlq_seq } => {
                self.dlq_seq = self.dlq_seq.max(dlq_seq);
                if dlq_seq > self.dlq_stored {
                    // One offset per seq; should a seq ever come twice, the
                    // lower offset wins, whatever the order.
                    let o = self.dead_pending.entry(dlq_seq).or_insert(offset);
                    *o = (*o).min(offset);
                }
                self.mark_done(offset..offset.saturating_add(1));
            }
            Event::DeadStored { up_to } => {
                self.dlq_stored = self.dlq_stored.max(up_to);
                self.dlq_seq = self.dlq_seq.max(up_to);
                self.dead_pending = self.dead_pending.split_off(&(self.dlq_stored + 1));
            }
        }
    }

    fn mark_done(&mut self, r: Range<u64>) {
        let start = r.start.max(self.floor);
        if start >= r.end {
            return;
        }
        self.acked.insert_range(start..r.end);
        // Deliveries of done offsets are dropped.
        let done: Vec<u64> = self
            .deliveries
            .range(start..r.end)
            .map(|(&o, _)| o)
            .collect();
        for o in done {
            self.deliveries.remove(&o);
        }
        let floor = self.acked.run_end(self.floor);
        if floor > self.floor {
            self.floor = floor;
            self.acked.remove_below(floor);
            self.deliveries = self.deliveries.split_off(&floor);
        }
    }

    pub fn is_done(&self, offset: u64) -> bool {
        offset < self.floor || self.acked.contains(offset)
    }

    /// The lowest offset the group still needs the stream to keep: its floor,
    /// or lower while a dead letter whose message is below it is not yet
    /// durable in the dead-letter stream (it is read again to be stored).
    pub fn retain_floor(&self) -> u64 {
        self.dead_pending
            .values()
            .copied()
            .min()
            .map_or(self.floor, |o| o.min(self.floor))
    }
}

/// Journal size past which the store compacts it by default.
pub const DEFAULT_COMPACT_BYTES: u64 = 4 << 20;
/// Largest journal entry (one batch): far more than a batch of events ever
/// needs; a length beyond it in the journal is damage.
pub const MAX_ENTRY: usize = 16 << 20;
const ENTRY_HEADER: usize = 8;
const SNAP_MAGIC: &[u8; 4] = b"SLGS";
const SNAP_VERSION: u8 = 1;
const JOURNAL: &str = "journal";
const SNAPSHOT: &str = "snapshot";

/// One group's journal and snapshot, and the state they hold.
pub struct GroupStore {
    fs: Arc<dyn SpoolFs>,
    dir: PathBuf,
    journal: Arc<dyn SpoolFile>,
    /// End of the last good (durable) entry.
    journal_len: u64,
    /// An append or a compaction failed part-way: the journal may hold
    /// bytes past `journal_len`, cut off before anything else is written.
    dirty: bool,
    state: GroupState,
    compact_bytes: u64,
    /// Size of the last snapshot written or read.
    snapshot_bytes: u64,
    /// After a failed compaction, the next is tried from this journal size.
    retry_compact_at: u64,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for GroupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupStore")
            .field("dir", &self.dir)
            .field("journal_len", &self.journal_len)
            .field("dirty", &self.dirty)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl GroupStore {
    /// Opens the group in `dir` if there is one, recovering: the snapshot,
    /// then the journal's entries replayed. A torn or corrupt tail of the
    /// journal is cut off (with a warning saying what was cut): everything
    /// from the first bad entry on. `None` if no group is there (no
    /// snapshot and no journal; a leftover `snapshot.tmp` of a creation that
    /// did not finish does not count).
    ///
    /// A damaged or missing snapshot is an error naming the file: the
    /// group's floor cannot be known without it, and starting over from 0
    /// would deliver the whole stream again.
    pub fn open(fs: Arc<dyn SpoolFs>, dir: &Path) -> Result<Option<GroupStore>, SpoolError> {
        let snap_path = dir.join(SNAPSHOT);
        let journal_path = dir.join(JOURNAL);
        let has_snap = fs.exists(&snap_path);
        let has_journal = fs.exists(&journal_path);
        if !has_snap && !has_journal {
            return Ok(None);
        }
        if !has_snap {
            return Err(corrupt(
                dir,
                &snap_path,
                0,
                "snapshot missing while the journal exists: the group's floor is unknown".into(),
            ));
        }
        let snap = read_all(&*fs, &snap_path).map_err(SpoolError::io("read", &snap_path))?;
        let mut state = decode_snapshot(&snap).map_err(|why| corrupt(dir, &snap_path, 0, why))?;
        let journal = fs
            .open(&journal_path, true)
            .map_err(SpoolError::io("open", &journal_path))?;
        if !has_journal {
            // Creation got as far as the snapshot: finish it.
            fs.sync_dir(dir)
                .map_err(SpoolError::io("fsync directory", dir))?;
        }
        let size = journal
            .size()
            .map_err(SpoolError::io("stat", &journal_path))?;
        let mut data = vec![0; size as usize];
        journal
            .read_exact_at(&mut data, 0)
            .map_err(SpoolError::io("read", &journal_path))?;
        let mut pos = 0usize;
        let mut entries = 0u64;
        let mut events = Vec::new();
        let mut failure = None;
        while pos < data.len() {
            match next_entry(&data[pos..]) {
                Ok((body, n)) => {
                    events.clear();
                    decode_events(body, &mut events).map_err(|why| {
                        corrupt(
                            dir,
                            &journal_path,
                            pos as u64,
                            format!(
                                "journal entry with a valid checksum does not decode ({why}): \
                                 written by a newer sluice?"
                            ),
                        )
                    })?;
                    for e in &events {
                        state.apply(e);
                    }
                    entries += 1;
                    pos += n;
                }
                Err(why) => {
                    failure = Some(why);
                    break;
                }
            }
        }
        if let Some(why) = failure {
            let cut = data.len() - pos;
            warn!(
                group = %dir.display(),
                at = pos,
                cut_bytes = cut,
                reason = why,
                "consumer group journal: cutting off a torn or corrupt tail \
                 (a crash during a write); its acks and deliveries are lost, \
                 their messages will be delivered again"
            );
            journal
                .set_len(pos as u64)
                .map_err(SpoolError::io("truncate", &journal_path))?;
            journal
                .sync_data()
                .map_err(SpoolError::io("fdatasync", &journal_path))?;
        }
        info!(
            group = %dir.display(),
            floor = state.floor,
            journal_entries = entries,
            journal_bytes = pos,
            "consumer group opened"
        );
        Ok(Some(GroupStore {
            fs,
            dir: dir.to_path_buf(),
            journal,
            journal_len: pos as u64,
            dirty: false,
            state,
            compact_bytes: DEFAULT_COMPACT_BYTES,
            snapshot_bytes: snap.len() as u64,
            retry_compact_at: 0,
            scratch: Vec::new(),
        }))
    }

    /// Creates a new group in `dir` whose floor is `floor`, durably (the
    /// snapshot and the directory entries synced) before returning. Any
    /// group already in `dir` is replaced: callers open first.
    pub fn create(fs: Arc<dyn SpoolFs>, dir: &Path, floor: u64) -> Result<GroupStore, SpoolError> {
        fs.create_dir_all(dir)
            .map_err(SpoolError::io("create directory", dir))?;
        // The folders just made (`groups/<group>`) must survive a power cut:
        // sync the directories holding their entries.
        for d in dir.ancestors().skip(1).take(2) {
            if !d.as_os_str().is_empty() {
                fs.sync_dir(d)
                    .map_err(SpoolError::io("fsync directory", d))?;
            }
        }
        let journal_path = dir.join(JOURNAL);
        // An old journal must not be replayed over the new snapshot: empty
        // it first (durably) if there is one.
        if fs.exists(&journal_path) {
            let j = fs
                .open(&journal_path, false)
                .map_err(SpoolError::io("open", &journal_path))?;
            j.set_len(0)
                .map_err(SpoolError::io("truncate", &journal_path))?;
            j.sync_data()
                .map_err(SpoolError::io("fdatasync", &journal_path))?;
        }
        let state = GroupState::new(floor);
        let snap = encode_snapshot(&state);
        // The snapshot is the commit point: write_atomic syncs the directory.
        let snap_path = dir.join(SNAPSHOT);
        write_atomic(&*fs, &snap_path, &snap).map_err(SpoolError::io("write", &snap_path))?;
        let journal = fs
            .open(&journal_path, true)
            .map_err(SpoolError::io("create", &journal_path))?;
        fs.sync_dir(dir)
            .map_err(SpoolError::io("fsync directory", dir))?;
        info!(group = %dir.display(), floor, "consumer group created");
        Ok(GroupStore {
            fs,
            dir: dir.to_path_buf(),
            journal,
            journal_len: 0,
            dirty: false,
            state,
            compact_bytes: DEFAULT_COMPACT_BYTES,
            snapshot_bytes: snap.len() as u64,
            retry_compact_at: 0,
            scratch: Vec::new(),
        })
    }

    /// Whether `dir` holds a group (a snapshot or a journal). A folder
    /// without either is a creation that did not finish (nobody was told
    /// the group exists) or a deletion that did.
    pub fn exists(fs: &dyn SpoolFs, dir: &Path) -> bool {
        fs.exists(&dir.join(SNAPSHOT)) || fs.exists(&dir.join(JOURNAL))
    }

    /// Deletes the group in `dir` and its folder, durably. The journal
    /// goes first: a crash part way leaves the snapshot alone (a group at
    /// its last compaction, which a deletion can remove again) or nothing
    /// (which [`exists`](Self::exists) does not count); never a journal
    /// without its snapshot.
    pub fn delete(fs: &dyn SpoolFs, dir: &Path) -> Result<(), SpoolError> {
        for name in [JOURNAL, SNAPSHOT] {
            let path = dir.join(name);
            if fs.exists(&path) {
                fs.remove_file(&path)
                    .map_err(SpoolError::io("remove", &path))?;
                fs.sync_dir(dir)
                    .map_err(SpoolError::io("fsync directory", dir))?;
            }
        }
        remove_folder(fs, dir)
    }

    /// Sets the journal size past which `append` compacts (default
    /// [`DEFAULT_COMPACT_BYTES`]; small in tests).
    pub fn set_compact_bytes(&mut self, bytes: u64) {
        self.compact_bytes = bytes;
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn state(&self) -> &GroupState {
        &self.state
    }

    /// Bytes of durable entries in the journal.
    pub fn journal_bytes(&self) -> u64 {
        self.journal_len
    }

    /// Writes the events as one journal entry with one write and one
    /// fdatasync, then applies them to the state. On error nothing is
    /// applied (the caller must not report any of them done), and the
    /// journal is cut back to its last good end before the next append.
    ///
    /// Then, when the journal has grown past the compaction bound (the
    /// larger of `set_compact_bytes` and twice the last snapshot, so that
    /// rewriting a large snapshot stays amortised), it compacts. The batch is
    /// durable by then, so a failed compaction does not fail the append: it
    /// is logged and tried again later.
    pub fn append(&mut self, events: &[Event]) -> Result<(), SpoolError> {
        if events.is_empty() {
            return Ok(());
        }
        if self.dirty {
            self.cut_back()?;
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&[0; ENTRY_HEADER]);
        for e in events {
            encode_event(e, &mut self.scratch);
        }
        let body_len = self.scratch.len() - ENTRY_HEADER;
        if body_len > MAX_ENTRY {
            return Err(SpoolError::TooLarge(body_len));
        }
        let crc = crc32c::crc32c(&self.scratch[ENTRY_HEADER..]);
        self.scratch[..4].copy_from_slice(&(body_len as u32).to_le_bytes());
        self.scratch[4..8].copy_from_slice(&crc.to_le_bytes());
        let path = self.dir.join(JOURNAL);
        self.dirty = true;
        self.journal
            .write_all_at(&self.scratch, self.journal_len)
            .map_err(SpoolError::io("write", &path))?;
        self.journal
            .sync_data()
            .map_err(SpoolError::io("fdatasync", &path))?;
        self.dirty = false;
        self.journal_len += self.scratch.len() as u64;
        for e in events {
            self.state.apply(e);
        }
        let bound = self
            .compact_bytes
            .max(2 * self.snapshot_bytes)
            .max(self.retry_compact_at);
        if self.journal_len >= bound {
            if let Err(e) = self.compact() {
                self.retry_compact_at = self.journal_len + self.compact_bytes.max(1) / 4;
                warn!(group = %self.dir.display(), error = %e,
                    "consumer group: compacting the journal failed; will try again");
            }
        }
        Ok(())
    }

    /// Writes the state as the snapshot (atomically) and then empties the
    /// journal. `append` calls it when the journal is past its bound; call
    /// it to compact at another time (an idle moment, shutdown).
    pub fn compact(&mut self) -> Result<(), SpoolError> {
        let snap = encode_snapshot(&self.state);
        let snap_path = self.dir.join(SNAPSHOT);
        // Until the snapshot is durable the journal (still whole) is needed.
        write_atomic(&*self.fs, &snap_path, &snap).map_err(SpoolError::io("write", &snap_path))?;
        self.snapshot_bytes = snap.len() as u64;
        // From here the journal's entries are all in the snapshot: its good
        // end is 0, whether emptying it works now or at the next append.
        let path = self.dir.join(JOURNAL);
        let before = self.journal_len;
        self.journal_len = 0;
        self.dirty = true;
        self.journal
            .set_len(0)
            .map_err(SpoolError::io("truncate", &path))?;
        self.journal
            .sync_data()
            .map_err(SpoolError::io("fdatasync", &path))?;
        self.dirty = false;
        self.retry_compact_at = 0;
        info!(group = %self.dir.display(), journal_bytes = before,
            snapshot_bytes = snap.len(), "consumer group journal compacted");
        Ok(())
    }

    fn cut_back(&mut self) -> Result<(), SpoolError> {
        let path = self.dir.join(JOURNAL);
        self.journal
            .set_len(self.journal_len)
            .map_err(SpoolError::io("truncate", &path))?;
        self.journal
            .sync_data()
            .map_err(SpoolError::io("fdatasync", &path))?;
        self.dirty = false;
        Ok(())
    }
}

/// Removes a folder that holds no group any more (leftover temporary
/// files included), and makes that durable in its parent.
pub fn remove_folder(fs: &dyn SpoolFs, dir: &Path) -> Result<(), SpoolError> {
    for name in fs.list(dir).map_err(SpoolError::io("list", dir))? {
        let path = dir.join(name);
        fs.remove_file(&path)
            .map_err(SpoolError::io("remove", &path))?;
    }
    fs.remove_dir(dir)
        .map_err(SpoolError::io("remove directory", dir))?;
    if let Some(parent) = dir.parent() {
        fs.sync_dir(parent)
            .map_err(SpoolError::io("fsync directory", parent))?;
    }
    Ok(())
}

/// Checks a consumer group name (it becomes a folder name): 1-255 bytes of
/// A-Z a-z 0-9 . _ -, not starting with a dot (the rules of stream names).
pub fn check_group_name(name: &str) -> Result<(), String> {
    const RULE: &str = "use 1-255 of A-Z a-z 0-9 . _ - (not starting with .)";
    if name.is_empty() {
        return Err(format!("empty consumer group name: {RULE}"));
    }
    if name.len() > 255 {
        return Err(format!(
            "consumer group name of {} bytes is too long: {RULE}",
            name.len()
        ));
    }
    if name.starts_with('.') {
        return Err(format!(
            "consumer group name {name:?} starts with a dot: {RULE}"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c)))
    {
        return Err(format!(
            "consumer group name {name:?} contains {c:?}: {RULE}"
        ));
    }
    Ok(())
}

/// The error for a damaged group file (`dir` is `<stream>/groups/<group>`).
fn corrupt(dir: &Path, file: &Path, offset: u64, reason: String) -> SpoolError {
    let name = |p: Option<&Path>| {
        p.and_then(|p| p.file_name())
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    };
    SpoolError::GroupCorrupt {
        stream: name(dir.parent().and_then(|p| p.parent())),
        group: name(Some(dir)),
        file: file.to_path_buf(),
        offset,
        reason,
    }
}

// Event encoding: a tag byte, then the fields, little-endian.
const TAG_ACKED: u8 = 1;
const TAG_DELIVERED: u8 = 2;
const TAG_DEAD: u8 = 3;
const TAG_DEAD_STORED: u8 = 4;

fn encode_event(e: &Event, out: &mut Vec<u8>) {
    match *e {
        Event::Acked(ref r) => {
            out.push(TAG_ACKED);
            out.extend_from_slice(&r.start.to_le_bytes());
            out.extend_from_slice(&r.end.to_le_bytes());
        }
        Event::Delivered { offset, count } => {
            out.push(TAG_DELIVERED);
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
        }
        Event::Dead { offset, dlq_seq } => {
            out.push(TAG_DEAD);
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&dlq_seq.to_le_bytes());
        }
        Event::DeadStored { up_to } => {
            out.push(TAG_DEAD_STORED);
            out.extend_from_slice(&up_to.to_le_bytes());
        }
    }
}

/// Reads little-endian fields off the front of a slice.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
}

fn decode_events(body: &[u8], out: &mut Vec<Event>) -> Result<(), String> {
    let mut c = Cursor(body);
    while !c.0.is_empty() {
        let tag = c.u8().expect("not empty");
        let e = match tag {
            TAG_ACKED => c.u64().zip(c.u64()).map(|(s, e)| Event::Acked(s..e)),
            TAG_DELIVERED => c
                .u64()
                .zip(c.u32())
                .map(|(offset, count)| Event::Delivered { offset, count }),
            TAG_DEAD => c
                .u64()
                .zip(c.u64())
                .map(|(offset, dlq_seq)| Event::Dead { offset, dlq_seq }),
            TAG_DEAD_STORED => c.u64().map(|up_to| Event::DeadStored { up_to }),
            t => return Err(format!("unknown event tag {t}")),
        };
        out.push(e.ok_or_else(|| format!("event (tag {tag}) cut short"))?);
    }
    Ok(())
}

/// The entry at the start of `b`: its body and its whole length.
fn next_entry(b: &[u8]) -> Result<(&[u8], usize), &'static str> {
    let mut c = Cursor(b);
    let (Some(len), Some(crc)) = (c.u32(), c.u32()) else {
        return Err("short entry header");
    };
    let len = len as usize;
    if len == 0 || len > MAX_ENTRY {
        return Err("bad entry length");
    }
    let Some(body) = c.0.get(..len) else {
        return Err("entry cut short");
    };
    if crc32c::crc32c(body) != crc {
        return Err("bad entry checksum");
    }
    Ok((body, ENTRY_HEADER + len))
}

/// Snapshot: magic, version, floor, dlq_seq, dlq_stored, then counted lists
/// of acked ranges (start, end), deliveries (offset, count u32) and pending
/// dead letters (dlq_seq, offset), then the CRC32C of everything before it.
fn encode_snapshot(s: &GroupState) -> Vec<u8> {
    let mut b = SNAP_MAGIC.to_vec();
    b.push(SNAP_VERSION);
    for v in [s.floor, s.dlq_seq, s.dlq_stored] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&(s.acked.range_count() as u64).to_le_bytes());
    for r in s.acked.iter() {
        b.extend_from_slice(&r.start.to_le_bytes());
        b.extend_from_slice(&r.end.to_le_bytes());
    }
    b.extend_from_slice(&(s.deliveries.len() as u64).to_le_bytes());
    for (&o, &c) in &s.deliveries {
        b.extend_from_slice(&o.to_le_bytes());
        b.extend_from_slice(&c.to_le_bytes());
    }
    b.extend_from_slice(&(s.dead_pending.len() as u64).to_le_bytes());
    for (&q, &o) in &s.dead_pending {
        b.extend_from_slice(&q.to_le_bytes());
        b.extend_from_slice(&o.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn decode_snapshot(b: &[u8]) -> Result<GroupState, String> {
    if b.len() < 9 || &b[..4] != SNAP_MAGIC {
        return Err("not a snapshot (bad magic or too short)".into());
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err("bad snapshot checksum".into());
    }
    if body[4] != SNAP_VERSION {
        return Err(format!("unknown snapshot version {}", body[4]));
    }
    let short = || "snapshot cut short".to_string();
    let mut c = Cursor(&body[5..]);
    let mut s = GroupState::new(c.u64().ok_or_else(short)?);
    s.dlq_seq = c.u64().ok_or_else(short)?;
    s.dlq_stored = c.u64().ok_or_else(short)?;
    let n = c.u64().ok_or_else(short)?;
    let mut last_end = None;
    for _ in 0..n {
        let (start, end) = c.u64().zip(c.u64()).ok_or_else(short)?;
        // Ranges are stored in order, disjoint and apart, at or above the
        // floor but not starting at it (the floor would have moved).
        if start >= end || start <= s.floor || last_end.is_some_and(|e| start <= e) {
            return Err(format!("acked range {start}..{end} out of order"));
        }
        s.acked.insert_range(start..end);
        last_end = Some(end);
    }
    let n = c.u64().ok_or_else(short)?;
    for _ in 0..n {
        let (o, count) = c.u64().zip(c.u32()).ok_or_else(short)?;
        if s.is_done(o) || s.deliveries.insert(o, count).is_some() {
            return Err(format!("delivery count of offset {o} out of place"));
        }
    }
    let n = c.u64().ok_or_else(short)?;
    for _ in 0..n {
        let (q, o) = c.u64().zip(c.u64()).ok_or_else(short)?;
        if q <= s.dlq_stored || q > s.dlq_seq || s.dead_pending.insert(q, o).is_some() {
            return Err(format!("pending dead letter {q} out of place"));
        }
    }
    if !c.0.is_empty() {
        return Err(format!("{} bytes after the snapshot's fields", c.0.len()));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_round_trip_and_damage() {
        let mut s = GroupState::new(10);
        for e in [
            Event::Acked(12..15),
            Event::Acked(20..21),
            Event::Delivered {
                offset: 11,
                count: 3,
            },
            Event::Dead {
                offset: 30,
                dlq_seq: 1,
            },
            Event::Dead {
                offset: 31,
                dlq_seq: 2,
            },
            Event::DeadStored { up_to: 1 },
        ] {
            s.apply(&e);
        }
        let b = encode_snapshot(&s);
        assert_eq!(decode_snapshot(&b), Ok(s.clone()));
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x20;
            assert!(decode_snapshot(&bad).is_err(), "flip at {i} undetected");
        }
        for n in 0..b.len() {
            assert!(decode_snapshot(&b[..n]).is_err());
        }
    }

    #[test]
    fn events_round_trip_and_entries_reject_zeroes() {
        let events = vec![
            Event::Acked(3..9),
            Event::Delivered {
                offset: u64::MAX,
                count: u32::MAX,
            },
            Event::Dead {
                offset: 5,
                dlq_seq: 7,
            },
            Event::DeadStored { up_to: 7 },
        ];
        let mut b = Vec::new();
        for e in &events {
            encode_event(e, &mut b);
        }
        let mut out = Vec::new();
        decode_events(&b, &mut out).unwrap();
        assert_eq!(out, events);
        for n in 1..b.len() {
            if [0, 17, 30, 47].contains(&n) {
                continue; // event boundaries
            }
            assert!(decode_events(&b[..n], &mut Vec::new()).is_err(), "{n}");
        }
        assert!(next_entry(&[0; 64]).is_err(), "zeroes are not an entry");
    }

    #[test]
    fn group_names() {
        for ok in ["g", "billing-v2", "a.b_c", &"x".repeat(255)] {
            assert_eq!(check_group_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".hidden", "..", "a/b", "a b", "é", &"x".repeat(256)] {
            let e = check_group_name(bad).unwrap_err();
            assert!(e.contains("1-255"), "{e}");
        }
        assert!(check_group_name("a/b").unwrap_err().contains("'/'"));
    }
}
