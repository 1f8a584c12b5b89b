//! A consumer group's durable state: a journal of events, compacted now and
//! then into a snapshot.
//!
//! A group lives in `<stream dir>/groups/<group>/`:
//!
//! ```text
//! snapshot   replaced atomically (write_atomic):
//!            0   magic "SLGS"
//!            4   version u8 = 2
//!            5   journal_seq u64   seq of the first journal entry written
//!                                  after this snapshot
//!            13  floor u64, dlq_seq u64, dlq_stored u64
//!                acked ranges:      count u64, (start u64, end u64) * count
//!                delivery counts:   count u64, (offset u64, count u32) * count
//!                pending dead:      count u64, (dlq_seq u64, offset u64) * count
//!            end CRC32C u32 of every byte before it
//! journal    entries appended since the snapshot, one per batch:
//!            0   len  u32   body length (1 ..= MAX_ENTRY)
//!            4   crc  u32   CRC32C of (seq as 8 LE bytes ‖ body)
//!            8   seq  u64   entry sequence number: the snapshot's
//!                           journal_seq for the first, +1 each after
//!            16  body       the batch's events (see `encode_event`)
//! ```
//! Every integer is little-endian.
//!
//! A batch is one entry, written with one write and made durable with one
//! fdatasync: after a crash a batch is either wholly there or not at all.
//! Only the last entry can be torn, so a torn tail is told from damage by
//! proof, as for segments: at the first entry that does not check out,
//! any valid entry (checksum, decodable body, a seq that fits) starting at
//! any later byte proves that bytes which had been made durable were
//! damaged. That is refused (or, with `--repair`, the journal is set
//! aside and cut there); otherwise the tail is torn: its bytes are set
//! aside (unless all zero) and cut off. Entries must follow one another
//! in seq: a gap is damage too.
//!
//! The snapshot is the commit point of a group's creation; it is written
//! again, and the journal emptied, when the journal has grown past a bound
//! (compaction). A crash between writing the snapshot and emptying the
//! journal leaves entries the snapshot already holds: their seqs are below
//! the snapshot's journal_seq, so they are skipped, and the journal is
//! emptied at the next open. A damaged or missing snapshot loses the
//! group's floor: refused, or with `--repair` the group's files are set
//! aside and the group starts again where its cursor (or the stream) says,
//! delivering everything after it again (never skipping).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};

use super::ranges::RangeSet;
use crate::spool::aside::Aside;
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

    /// The offset after the highest one the state mentions (its floor, if
    /// higher): the stream must reach it, or it lost records the group had
    /// seen.
    pub fn reach(&self) -> u64 {
        let acked = self.acked.iter().last().map_or(0, |r| r.end);
        let delivered = self.deliveries.keys().next_back().map_or(0, |o| o + 1);
        let dead = self.dead_pending.values().max().map_or(0, |o| o + 1);
        self.floor.max(acked).max(delivered).max(dead)
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
const ENTRY_HEADER: usize = 16;
/// Smallest event encoded (`DeadStored`: a tag and a u64).
const MIN_EVENT: usize = 9;
/// Smallest entry: a header and one event (an append never writes none).
const MIN_ENTRY: usize = ENTRY_HEADER + MIN_EVENT;
const SNAP_MAGIC: &[u8; 4] = b"SLGS";
const SNAP_VERSION: u8 = 2;
const JOURNAL: &str = "journal";
const SNAPSHOT: &str = "snapshot";

/// What opening a group does about damage in its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDamage {
    /// Refuse it with an error naming the file and byte (a torn tail, which
    /// is not damage, is still cut, its bytes set aside first).
    Refuse,
    /// `--repair`: set the damaged files aside (nothing is deleted) and go
    /// on with what checks out. A damaged journal is cut at the damage (the
    /// acks after it are lost: their messages are delivered again). A group
    /// whose snapshot is lost starts again at `restart_at` (its cursor's
    /// floor, or the stream's first offset): everything after it is
    /// delivered again.
    Repair { restart_at: u64 },
}

/// One group's journal and snapshot, and the state they hold.
pub struct GroupStore {
    fs: Arc<dyn SpoolFs>,
    dir: PathBuf,
    journal: Arc<dyn SpoolFile>,
    /// End of the last good (durable) entry.
    journal_len: u64,
    /// Seq of the next entry written.
    next_seq: u64,
    /// An append or a compaction failed part-way: the journal may hold
    /// bytes past `journal_len`, cut off before anything else is written.
    dirty: bool,
    state: GroupState,
    compact_bytes: u64,
    /// Size of the last snapshot written or read.
    snapshot_bytes: u64,
    /// After a failed compaction, the next is tried from this journal size.
    retry_compact_at: u64,
    /// What a repair did when it was opened (for the stream's record).
    repaired: Option<Repaired>,
    scratch: Vec<u8>,
}

/// What `--repair` did to a group's files when it was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    pub what: String,
    /// Where the damaged bytes went.
    pub aside: PathBuf,
    pub bytes: u64,
}

impl std::fmt::Debug for GroupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupStore")
            .field("dir", &self.dir)
            .field("journal_len", &self.journal_len)
            .field("next_seq", &self.next_seq)
            .field("dirty", &self.dirty)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// What a group's files hold, read without changing anything: shared by
/// [`GroupStore::open`] (which then acts on it) and [`verify`].
enum Found {
    /// No group: neither a snapshot nor a journal.
    Nothing,
    /// The snapshot is missing or does not check out: the group's floor is
    /// unknown.
    NoSnapshot {
        file: PathBuf,
        reason: String,
    },
    Group(Box<Read>),
}

struct Read {
    /// The snapshot with the journal's good entries replayed over it.
    state: GroupState,
    snapshot_bytes: u64,
    /// The snapshot's journal_seq.
    journal_seq: u64,
    has_journal: bool,
    journal: Vec<u8>,
    scan: Scan,
}

/// The journal, read entry by entry.
#[derive(Debug)]
struct Scan {
    /// Good entries (in seq order, from byte 0), replayed or skipped.
    entries: u64,
    /// Where the last good entry ends.
    good_end: u64,
    /// Seq of the next entry to write.
    next_seq: u64,
    /// Every good entry is one the snapshot already holds (a compaction
    /// stopped before it emptied the journal): the journal is emptied.
    stale: bool,
    end: JournalEnd,
}

#[derive(Debug)]
enum JournalEnd {
    /// The last entry ends the file.
    Clean,
    /// From `at` on, the bytes of an entry a crash cut short (only zeroes,
    /// maybe): nothing valid follows them.
    Torn { at: u64, zeroes: bool },
    /// The entry at `at` is damaged: proven by what follows it, or valid
    /// and out of sequence.
    Damaged { at: u64, reason: String },
}

/// Reads the group in `dir` (I/O errors only are errors).
fn survey(fs: &dyn SpoolFs, dir: &Path) -> Result<Found, SpoolError> {
    let snap_path = dir.join(SNAPSHOT);
    let journal_path = dir.join(JOURNAL);
    let has_snap = fs.exists(&snap_path);
    let has_journal = fs.exists(&journal_path);
    if !has_snap && !has_journal {
        return Ok(Found::Nothing);
    }
    if !has_snap {
        return Ok(Found::NoSnapshot {
            file: snap_path,
            reason: "snapshot missing while the journal exists: the group's floor is unknown"
                .into(),
        });
    }
    let snap = read_all(fs, &snap_path).map_err(SpoolError::io("read", &snap_path))?;
    let (mut state, journal_seq) = match decode_snapshot(&snap) {
        Ok(s) => s,
        Err(reason) => {
            return Ok(Found::NoSnapshot {
                file: snap_path,
                reason,
            })
        }
    };
    let journal = if has_journal {
        read_all(fs, &journal_path).map_err(SpoolError::io("read", &journal_path))?
    } else {
        Vec::new()
    };
    let scan = scan_journal(&journal, journal_seq, &mut state);
    Ok(Found::Group(Box::new(Read {
        state,
        snapshot_bytes: snap.len() as u64,
        journal_seq,
        has_journal,
        journal,
        scan,
    })))
}

/// Replays the journal's entries over `state` (the snapshot), as far as
/// they check out and follow one another, and says how it ends.
fn scan_journal(data: &[u8], journal_seq: u64, state: &mut GroupState) -> Scan {
    let mut pos = 0usize;
    // The seq the next entry must have; for the first, any up to the
    // snapshot's journal_seq (a journal the snapshot holds may remain).
    let mut expected: Option<u64> = None;
    let mut entries = 0;
    let mut events = Vec::new();
    let end = loop {
        if pos == data.len() {
            break JournalEnd::Clean;
        }
        let (seq, body, n) = match parse_entry(&data[pos..]) {
            Ok(e) => e,
            Err(why) => {
                break match valid_entry_after(data, pos, expected, journal_seq) {
                    Some((q, seq)) => JournalEnd::Damaged {
                        at: pos as u64,
                        reason: format!(
                            "{why}, yet a valid entry (seq {seq}) follows at byte {q}: \
                             not a torn write, durable entries were damaged"
                        ),
                    },
                    None => JournalEnd::Torn {
                        at: pos as u64,
                        zeroes: data[pos..].iter().all(|&b| b == 0),
                    },
                };
            }
        };
        let fits = match expected {
            None => seq <= journal_seq,
            Some(e) => seq == e,
        };
        if !fits {
            let want = match expected {
                None => format!("at most {journal_seq} (the snapshot's next)"),
                Some(e) => e.to_string(),
            };
            break JournalEnd::Damaged {
                at: pos as u64,
                reason: format!(
                    "entry with seq {seq} where {want} was expected: entries are missing \
                     or come from elsewhere"
                ),
            };
        }
        events.clear();
        if let Err(why) = decode_events(body, &mut events) {
            break JournalEnd::Damaged {
                at: pos as u64,
                reason: format!(
                    "entry {seq} has a valid checksum but does not decode ({why}): \
                     written by a newer sluice?"
                ),
            };
        }
        if seq >= journal_seq {
            for e in &events {
                state.apply(e);
            }
        }
        entries += 1;
        expected = Some(seq + 1);
        pos += n;
    };
    Scan {
        entries,
        good_end: pos as u64,
        next_seq: expected.map_or(journal_seq, |e| e.max(journal_seq)),
        stale: expected.is_some_and(|e| e <= journal_seq),
        end,
    }
}

/// The first valid entry starting after byte `bad` (where an entry does
/// not check out) whose seq fits there, and its seq: the proof that the
/// bad entry is damage, not a torn write. The entry at `bad` would have
/// seq `expected` (unknown for the journal's first: at most
/// `journal_seq`), and every entry takes at least `MIN_ENTRY` bytes, so a
/// seq that fits at byte q is in expected ..= expected + (q - bad) /
/// MIN_ENTRY. Checking it first keeps the search cheap: a checksum is
/// computed only where the header's seq fits.
fn valid_entry_after(
    data: &[u8],
    bad: usize,
    expected: Option<u64>,
    journal_seq: u64,
) -> Option<(u64, u64)> {
    let lo = expected.unwrap_or(0);
    let base = expected.unwrap_or(journal_seq);
    let mut events = Vec::new();
    for q in bad + 1..data.len().saturating_sub(MIN_ENTRY - 1) {
        let b = &data[q..];
        let seq = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
        let hi = base.saturating_add(((q - bad) / MIN_ENTRY) as u64);
        if seq < lo || seq > hi {
            continue;
        }
        if let Ok((seq, body, _)) = parse_entry(b) {
            events.clear();
            if decode_events(body, &mut events).is_ok() {
                return Some((q as u64, seq));
            }
        }
    }
    None
}

/// What [`verify`] found in a group's files.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GroupReport {
    pub group: String,
    /// The folder holds a group (a snapshot or a journal). One without
    /// either is a creation or deletion cut short, removed at the next
    /// start: not damage.
    pub exists: bool,
    /// The group's floor (snapshot and journal), if the snapshot checks out.
    pub floor: Option<u64>,
    /// The offset after the highest one the group's state mentions: the
    /// stream must reach it, or it lost records the group saw.
    pub reach: Option<u64>,
    /// Good journal entries, and the bytes they take.
    pub journal_entries: u64,
    pub journal_bytes: u64,
    /// Entries a compaction had already put in the snapshot (a crash came
    /// before it emptied the journal): the next start empties it.
    pub compaction_unfinished: bool,
    /// A torn last entry (a crash during its write): the next start sets
    /// its bytes aside (unless all zero) and cuts it off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torn_tail: Option<TornTail>,
    /// Damage: which file, where, why. The next start refuses the group
    /// (with `--repair`: sets the damaged file aside).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damage: Option<String>,
    /// A file that could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TornTail {
    /// Byte of the journal where it starts.
    pub at: u64,
    pub bytes: u64,
    /// Only zero bytes (nothing to set aside).
    pub zeroes: bool,
}

impl GroupReport {
    /// Nothing wrong (a torn tail or an unfinished compaction is what a
    /// crash leaves; the next start deals with it).
    pub fn ok(&self) -> bool {
        self.damage.is_none() && self.error.is_none()
    }
}

/// Checks the group in `dir` (`<stream>/groups/<group>`) without changing
/// anything: what opening it would find.
pub fn verify(fs: &dyn SpoolFs, dir: &Path) -> GroupReport {
    let mut report = GroupReport {
        group: file_name(Some(dir)),
        ..GroupReport::default()
    };
    match survey(fs, dir) {
        Err(e) => {
            report.exists = true;
            report.error = Some(e.to_string());
        }
        Ok(Found::Nothing) => {}
        Ok(Found::NoSnapshot { file, reason }) => {
            report.exists = true;
            report.damage = Some(format!("{}: {reason}", file.display()));
        }
        Ok(Found::Group(r)) => {
            report.exists = true;
            report.floor = Some(r.state.floor);
            report.reach = Some(r.state.reach());
            report.journal_entries = r.scan.entries;
            report.journal_bytes = r.scan.good_end;
            report.compaction_unfinished = r.scan.stale;
            match r.scan.end {
                JournalEnd::Clean => {}
                JournalEnd::Torn { at, zeroes } => {
                    report.torn_tail = Some(TornTail {
                        at,
                        bytes: r.journal.len() as u64 - at,
                        zeroes,
                    })
                }
                JournalEnd::Damaged { at, reason } => {
                    report.damage = Some(format!(
                        "{} is damaged at byte {at}: {reason}",
                        dir.join(JOURNAL).display()
                    ))
                }
            }
        }
    }
    report
}

impl GroupStore {
    /// Opens the group in `dir` if there is one, recovering: the snapshot,
    /// then the journal's entries replayed (those the snapshot already
    /// holds skipped). `None` if no group is there (no snapshot and no
    /// journal; a leftover `snapshot.tmp` of a creation that did not
    /// finish does not count).
    ///
    /// A torn last entry (a crash during its write) is cut off, its bytes
    /// set aside first unless all zero. Damage (see the module's comment)
    /// is an error naming the file and byte, or with
    /// [`OnDamage::Repair`] is set aside. A damaged or missing snapshot is
    /// an error too: the group's floor cannot be known without it, and
    /// starting over from 0 would deliver the whole stream again.
    pub fn open(
        fs: Arc<dyn SpoolFs>,
        dir: &Path,
        on_damage: OnDamage,
    ) -> Result<Option<GroupStore>, SpoolError> {
        let r = match survey(&*fs, dir)? {
            Found::Nothing => return Ok(None),
            Found::NoSnapshot { file, reason } => {
                return match on_damage {
                    OnDamage::Refuse => Err(corrupt(dir, &file, 0, reason)),
                    OnDamage::Repair { restart_at } => {
                        Self::restart(fs, dir, restart_at, &file, &reason).map(Some)
                    }
                }
            }
            Found::Group(r) => r,
        };
        let Read {
            state,
            snapshot_bytes,
            journal_seq,
            has_journal,
            journal: data,
            scan,
        } = *r;
        let journal_path = dir.join(JOURNAL);
        let mut repaired = None;
        let cut_at = match scan.end {
            JournalEnd::Clean => None,
            JournalEnd::Torn { at, zeroes } => {
                let tail = &data[at as usize..];
                let aside = if zeroes {
                    None
                } else {
                    let mut a = Aside::new(
                        fs.clone(),
                        stream_dir(dir),
                        &aside_what(dir, "torn-journal"),
                    )?;
                    a.copy_bytes(
                        &format!("journal-from-{at}"),
                        tail,
                        &journal_path,
                        at,
                        "the torn last entry of a consumer group's journal (a crash during its write), cut off",
                    )?;
                    Some(a.finish()?)
                };
                warn!(
                    group = %dir.display(),
                    at,
                    cut_bytes = tail.len(),
                    only_zeroes = zeroes,
                    set_aside = %aside.as_deref().map_or_else(|| "nothing (zeroes only)".into(), |p| p.display().to_string()),
                    "consumer group journal: cutting off a torn last entry (a crash during \
                     its write); its acks and deliveries are lost, their messages will be \
                     delivered again"
                );
                Some(at)
            }
            JournalEnd::Damaged { at, reason } => match on_damage {
                OnDamage::Refuse => return Err(corrupt(dir, &journal_path, at, reason)),
                OnDamage::Repair { .. } => {
                    let mut a = Aside::new(
                        fs.clone(),
                        stream_dir(dir),
                        &aside_what(dir, "damaged-journal"),
                    )?;
                    a.note(&format!("damage at byte {at}: {reason}"));
                    a.copy_bytes(
                        JOURNAL,
                        &data,
                        &journal_path,
                        0,
                        &format!("a consumer group's damaged journal (repair cut it at byte {at})"),
                    )?;
                    let folder = a.finish()?;
                    repaired = Some(Repaired {
                        what: format!(
                            "{}: journal damaged at byte {at} ({reason}); cut there, the acks \
                             after it are lost (their messages are delivered again)",
                            dir.display()
                        ),
                        aside: folder.clone(),
                        bytes: data.len() as u64 - at,
                    });
                    warn!(
                        group = %dir.display(),
                        at,
                        reason = %reason,
                        cut_bytes = data.len() as u64 - at,
                        set_aside = %folder.display(),
                        "repair: consumer group journal damaged; the whole journal is set aside \
                         and cut at the damage; the acks after it are lost, their messages will \
                         be delivered again"
                    );
                    Some(at)
                }
            },
        };
        // A compaction that stopped before emptying the journal is
        // finished: the snapshot holds every entry left.
        let cut_at = if scan.stale {
            info!(group = %dir.display(), entries = scan.entries,
                "consumer group journal: finishing a compaction a stop cut short (its entries are in the snapshot)");
            Some(0)
        } else {
            cut_at
        };
        let journal = fs
            .open(&journal_path, true)
            .map_err(SpoolError::io("open", &journal_path))?;
        if !has_journal {
            // Creation got as far as the snapshot: finish it.
            fs.sync_dir(dir)
                .map_err(SpoolError::io("fsync directory", dir))?;
        }
        let journal_len = match cut_at {
            Some(at) => {
                journal
                    .set_len(at)
                    .map_err(SpoolError::io("truncate", &journal_path))?;
                journal
                    .sync_data()
                    .map_err(SpoolError::io("fdatasync", &journal_path))?;
                at
            }
            None => scan.good_end,
        };
        // A journal cut at 0 continues at the snapshot's seq.
        let next_seq = if journal_len == 0 {
            journal_seq
        } else {
            scan.next_seq
        };
        info!(
            group = %dir.display(),
            floor = state.floor,
            journal_entries = scan.entries,
            journal_bytes = journal_len,
            "consumer group opened"
        );
        Ok(Some(GroupStore {
            fs,
            dir: dir.to_path_buf(),
            journal,
            journal_len,
            next_seq,
            dirty: false,
            state,
            compact_bytes: DEFAULT_COMPACT_BYTES,
            snapshot_bytes,
            retry_compact_at: 0,
            repaired,
            scratch: Vec::new(),
        }))
    }

    /// Repair of a group whose snapshot is lost: its files go aside, and
    /// the group is created again at `floor`.
    fn restart(
        fs: Arc<dyn SpoolFs>,
        dir: &Path,
        floor: u64,
        file: &Path,
        reason: &str,
    ) -> Result<GroupStore, SpoolError> {
        let mut a = Aside::new(
            fs.clone(),
            stream_dir(dir),
            &aside_what(dir, "lost-snapshot"),
        )?;
        a.note(&format!(
            "{}: {reason}; the group was created again at offset {floor}",
            file.display()
        ));
        for name in fs.list(dir).map_err(SpoolError::io("list", dir))? {
            a.move_file(
                &dir.join(name),
                "a file of a consumer group whose snapshot is damaged or missing",
            )?;
        }
        let folder = a.finish()?;
        let bytes = fs
            .list(&folder)
            .unwrap_or_default()
            .iter()
            .filter_map(|n| fs.open(&folder.join(n), false).and_then(|f| f.size()).ok())
            .sum();
        warn!(
            group = %dir.display(),
            file = %file.display(),
            reason,
            floor,
            set_aside = %folder.display(),
            "repair: consumer group snapshot damaged or missing; the group's files are set \
             aside and the group starts again at its cursor's floor (or the stream's first \
             offset): what it had acked after it is delivered again"
        );
        let mut g = Self::create(fs, dir, floor)?;
        g.repaired = Some(Repaired {
            what: format!(
                "{}: {reason}; the group was set aside and started again at offset {floor} \
                 (what it had acked after it is delivered again)",
                file.display()
            ),
            aside: folder,
            bytes,
        });
        Ok(g)
    }

    /// What `--repair` did to the group's files when it was opened.
    pub fn repaired(&self) -> Option<&Repaired> {
        self.repaired.as_ref()
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
        let snap = encode_snapshot(&state, 0);
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
            next_seq: 0,
            dirty: false,
            state,
            compact_bytes: DEFAULT_COMPACT_BYTES,
            snapshot_bytes: snap.len() as u64,
            retry_compact_at: 0,
            repaired: None,
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
        let seq = self.next_seq;
        self.scratch[8..16].copy_from_slice(&seq.to_le_bytes());
        let crc = crc32c::crc32c(&self.scratch[8..]);
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
        self.next_seq = seq + 1;
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
        // Entries written from now on continue at `next_seq`; those in the
        // journal now are below it, skipped should emptying it not happen.
        let snap = encode_snapshot(&self.state, self.next_seq);
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

fn file_name(p: Option<&Path>) -> String {
    p.and_then(|p| p.file_name())
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// The stream folder of the group in `dir` (`<stream>/groups/<group>`):
/// where its files are set aside.
fn stream_dir(dir: &Path) -> &Path {
    dir.parent().and_then(Path::parent).unwrap_or(dir)
}

/// The name of a folder of things set aside from the group in `dir`.
fn aside_what(dir: &Path, what: &str) -> String {
    format!("group-{}-{what}", file_name(Some(dir)))
}

/// The error for a damaged group file (`dir` is `<stream>/groups/<group>`).
fn corrupt(dir: &Path, file: &Path, offset: u64, reason: String) -> SpoolError {
    SpoolError::GroupCorrupt {
        stream: file_name(dir.parent().and_then(|p| p.parent())),
        group: file_name(Some(dir)),
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

/// The entry at the start of `b`, if it checks out: its seq, its body
/// and its whole length. (Whether the body decodes is the caller's.)
fn parse_entry(b: &[u8]) -> Result<(u64, &[u8], usize), &'static str> {
    let mut c = Cursor(b);
    let (Some(len), Some(crc), Some(seq)) = (c.u32(), c.u32(), c.u64()) else {
        return Err("short entry header");
    };
    let len = len as usize;
    if len == 0 || len > MAX_ENTRY {
        return Err("bad entry length");
    }
    let Some(body) = c.0.get(..len) else {
        return Err("entry cut short");
    };
    if crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), body) != crc {
        return Err("bad entry checksum");
    }
    Ok((seq, body, ENTRY_HEADER + len))
}

/// Snapshot: magic, version, journal_seq, floor, dlq_seq, dlq_stored, then
/// counted lists of acked ranges (start, end), deliveries (offset, count
/// u32) and pending dead letters (dlq_seq, offset), then the CRC32C of
/// everything before it.
fn encode_snapshot(s: &GroupState, journal_seq: u64) -> Vec<u8> {
    let mut b = SNAP_MAGIC.to_vec();
    b.push(SNAP_VERSION);
    for v in [journal_seq, s.floor, s.dlq_seq, s.dlq_stored] {
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

/// The state and the journal_seq a snapshot holds, or why it does not
/// check out.
fn decode_snapshot(b: &[u8]) -> Result<(GroupState, u64), String> {
    if b.len() < 9 || &b[..4] != SNAP_MAGIC {
        return Err("not a snapshot (bad magic or too short)".into());
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err("bad snapshot checksum".into());
    }
    match body[4] {
        SNAP_VERSION => {}
        v if v < SNAP_VERSION => {
            return Err(format!(
                "snapshot of version {v}, written by an older sluice; this one reads version \
                 {SNAP_VERSION} (the spool's format changed: start from a new data folder, or \
                 run the older sluice until its consumers are done)"
            ))
        }
        v => {
            return Err(format!(
                "snapshot of version {v}, written by a newer sluice; this one reads version \
                 {SNAP_VERSION}"
            ))
        }
    }
    let short = || "snapshot cut short".to_string();
    let mut c = Cursor(&body[5..]);
    let journal_seq = c.u64().ok_or_else(short)?;
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
    Ok((s, journal_seq))
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
        let b = encode_snapshot(&s, 77);
        assert_eq!(decode_snapshot(&b), Ok((s.clone(), 77)));
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x20;
            assert!(decode_snapshot(&bad).is_err(), "flip at {i} undetected");
        }
        for n in 0..b.len() {
            assert!(decode_snapshot(&b[..n]).is_err());
        }
        // A snapshot of version 1 (no journal_seq) is refused by name.
        let mut v1 = b[..13].to_vec();
        v1[4] = 1;
        v1.extend_from_slice(&b[13..b.len() - 4]);
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        let e = decode_snapshot(&v1).unwrap_err();
        assert!(e.contains("version 1") && e.contains("older sluice"), "{e}");
    }

    /// An entry's checksum covers its seq: a changed seq is a bad entry.
    #[test]
    fn entries_check_their_seq() {
        let body = {
            let mut b = Vec::new();
            encode_event(&Event::Acked(1..4), &mut b);
            b
        };
        let mut e = vec![0; ENTRY_HEADER];
        e[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
        e[8..16].copy_from_slice(&9u64.to_le_bytes());
        e.extend_from_slice(&body);
        let crc = crc32c::crc32c(&e[8..]);
        e[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(parse_entry(&e), Ok((9, &body[..], e.len())));
        for i in 0..e.len() {
            let mut bad = e.clone();
            bad[i] ^= 0x04;
            assert!(parse_entry(&bad).is_err(), "flip at {i} undetected");
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
        assert!(parse_entry(&[0; 64]).is_err(), "zeroes are not an entry");
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
