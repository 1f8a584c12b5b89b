//! Examining a stream's files without changing anything: which log is
//! valid, whether a crash left a torn tail, and what is damaged. Opening a
//! log ([`super::log`]) acts on a survey (cuts a torn tail, refuses damage
//! or repairs it); `sluice spool verify` and the scrub only report it.
//!
//! The rules, from DESIGN.md: a torn tail is proven, never guessed by size.
//! A crash damages only what was written after the last completed
//! fdatasync, so:
//! - a bad commit followed by a valid commit header that vouches for it
//!   (`synced_to` past it) is damage;
//! - anywhere but the last segment, a bad commit is damage (a segment is
//!   synced before the next one takes writes);
//! - segment N+1 continues exactly where segment N ends (its header says
//!   where), or the log has a hole or an overlap;
//! - the log must reach every durable mark outside it: the checkpoint's
//!   end, the consumer groups' cursors, the idempotence snapshots; after a
//!   clean stop it ends exactly at the checkpoint.
//!
//! Only what passes all of these and is at the very end of the log is a
//! torn tail.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::checkpoint::{self, Checkpoint, Loaded};
use super::config::LogConfig;
pub use super::config::INDEX_EVERY;
use super::error::{Damage, SpoolError};
use super::fs::SpoolFs;
use super::index::{load_index, parse_segment_name, IndexEntry, SegmentMeta};
use super::keys::{KeyEntry, Keys};
use super::marks;
use super::record::HEADER_LEN;
use super::segment::{self, CommitHeader, SegmentHeader, SEGMENT_HEADER_LEN};

/// How much to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Sealed segments that have a valid index file are not read (their
    /// headers are): what opening a stream needs.
    Quick,
    /// Every byte of every segment.
    Full,
}

/// A torn tail: bytes at the end of the last segment that nothing proves
/// durable. Cut (after a copy is set aside) when the stream is opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Torn {
    pub file: PathBuf,
    /// Where the valid log ends in the file.
    pub pos: u64,
    /// Records at `pos` that check out before the first bad one, which
    /// starts at `bad_at` (kept if marks prove the tail was durable).
    pub good: u32,
    pub bad_at: u64,
    pub file_len: u64,
    /// Bytes up to the last non-zero one (0: only zeroes follow).
    pub nonzero: u64,
    pub reason: String,
}

/// Where the valid log ends: a repair sets aside the bytes of `files[file]`
/// from `pos` on and every later segment file, keeping the first `keep`
/// records of the commit at `pos` (they check out; the damage is after
/// them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub file: usize,
    pub pos: u64,
    pub keep: u32,
}

#[derive(Debug, Clone)]
pub struct Survey {
    pub stream: String,
    pub dir: PathBuf,
    /// Every segment file found: base (from its name) and path, in order.
    pub files: Vec<(u64, PathBuf)>,
    pub checkpoint: Loaded,
    pub stream_id: Option<u64>,
    /// The valid log, as readers will see it.
    pub segments: Vec<SegmentMeta>,
    pub headers: Vec<SegmentHeader>,
    /// The idempotence table of the valid log: the producers' seqs and
    /// the request keys.
    pub producers: HashMap<u64, u64>,
    pub keys: Keys,
    /// The last commit of the last valid segment, if it was read: its
    /// header and the position after it.
    pub last_commit: Option<(CommitHeader, u64)>,
    pub torn: Option<Torn>,
    /// A last segment file a crash left before its header was whole (no
    /// commit in it): set aside, the segment before it goes on.
    pub unborn: Option<PathBuf>,
    pub damage: Vec<Damage>,
    pub cut: Option<Cut>,
    /// Files beside the log (checkpoint, cursors, snapshots) that do not
    /// check out or contradict the log: a repair sets them aside.
    pub bad_marks: Vec<PathBuf>,
    /// The highest offset any evidence says the log reached.
    pub reached: u64,
    /// Offsets the segment headers declare lost (by earlier repairs).
    pub gaps: Vec<Range<u64>>,
    /// The last run acked before fdatasync (fsync = interval or never):
    /// groups may have acked records a power cut then took.
    pub acks_were_early: bool,
    /// What was read, for reports.
    pub bytes_read: u64,
    pub records: u64,
    /// Things worth a log line that are not damage.
    pub notes: Vec<String>,
}

impl Survey {
    /// Offset after the last record of the valid log.
    pub fn end(&self) -> u64 {
        match self.segments.last() {
            Some(m) => m.end(),
            None => self.files.first().map_or(0, |(b, _)| *b),
        }
    }

    fn damage(&mut self, file: &Path, byte: u64, from: u64, to: Option<u64>, reason: String) {
        self.damage.push(Damage {
            stream: self.stream.clone(),
            file: file.to_path_buf(),
            byte,
            from,
            to,
            reason,
        });
    }
}

/// Surveys the stream `name` in `dir`, whose log was written with
/// `config`'s bounds.
pub fn survey(
    fs: &dyn SpoolFs,
    dir: &Path,
    name: &str,
    depth: Depth,
    config: &LogConfig,
) -> Result<Survey, SpoolError> {
    let mut files: Vec<(u64, PathBuf)> = fs
        .list(dir)
        .map_err(SpoolError::io("list", dir))?
        .iter()
        .filter_map(|n| parse_segment_name(n).map(|b| (b, dir.join(n))))
        .collect();
    files.sort_unstable();
    let loaded = checkpoint::load(fs, dir)?;
    let cp = match &loaded {
        Loaded::Found { checkpoint, .. } => Some(*checkpoint),
        _ => None,
    };
    let mut s = Survey {
        stream: name.to_owned(),
        dir: dir.to_path_buf(),
        files,
        checkpoint: loaded.clone(),
        stream_id: cp.map(|c| c.stream_id),
        segments: Vec::new(),
        headers: Vec::new(),
        producers: HashMap::new(),
        keys: Keys::new(config.keys),
        last_commit: None,
        torn: None,
        unborn: None,
        damage: Vec::new(),
        cut: None,
        bad_marks: Vec::new(),
        reached: 0,
        gaps: Vec::new(),
        acks_were_early: cp.is_some_and(|c| c.early_acks),
        bytes_read: 0,
        records: 0,
        notes: Vec::new(),
    };
    let cp_path = checkpoint::path(dir);
    if s.files.is_empty() {
        if let Some(c) = cp.filter(|c| c.end > c.start) {
            s.damage(
                dir,
                0,
                c.start,
                Some(c.end),
                "every segment file is gone, while the checkpoint says records were durable".into(),
            );
        }
        return Ok(s);
    }
    match &loaded {
        Loaded::Missing => {
            s.damage(
                &cp_path,
                0,
                0,
                None,
                format!(
                    "the checkpoint is missing beside {} segment file(s): where the log ends \
                     cannot be checked",
                    s.files.len()
                ),
            );
        }
        Loaded::Damaged(why) => {
            s.damage(&cp_path, 0, 0, None, format!("checkpoint: {why}"));
            s.bad_marks.push(cp_path.clone());
        }
        Loaded::Found {
            other_damaged: Some(why),
            ..
        } => s.notes.push(format!(
            "one checkpoint slot does not check out ({why}): a write torn by a crash; the other one is used"
        )),
        Loaded::Found { .. } => {}
    }
    let snapshot = usable_snapshot(fs, &mut s);
    survey_segments(fs, &mut s, depth, config, snapshot)?;
    check_marks(fs, &mut s, cp);
    // Damage whose extent was not known: it reaches as far as the log did.
    let reached = s.reached;
    for d in &mut s.damage {
        if d.to.is_none() && reached > d.from && d.file.extension().is_some_and(|e| e == "seg") {
            d.to = Some(reached);
        }
    }
    Ok(s)
}

/// The newest idempotence snapshot that checks out and is not past the
/// last segment: its base and table. Sealed segments below its base need
/// not be scanned. A snapshot that does not check out is damage only when
/// the segments it summed up are gone (retention): otherwise the table is
/// rebuilt from them.
fn usable_snapshot(fs: &dyn SpoolFs, s: &mut Survey) -> Option<(u64, marks::Table)> {
    let last_base = s.files.last().map_or(0, |(b, _)| *b);
    let first_base = s.files.first().map_or(0, |(b, _)| *b);
    for base in marks::snapshot_bases(fs, &s.dir).into_iter().rev() {
        if base > last_base {
            continue; // checked against the log's end later
        }
        match marks::read_snapshot(fs, &s.dir, base) {
            Ok(t) => return Some((base, t)),
            Err(why) if first_base > 0 => {
                let path = marks::snapshot_path(&s.dir, base);
                s.damage(
                    &path,
                    0,
                    0,
                    Some(first_base),
                    format!(
                        "idempotence snapshot: {why}; the segments it summed up were deleted \
                         by retention, so retransmissions of their messages could be stored again"
                    ),
                );
                s.bad_marks.push(path);
                return None;
            }
            Err(why) => {
                s.notes.push(format!(
                    "idempotence snapshot at offset {base}: {why}; the table is rebuilt from the segments"
                ));
                s.bad_marks.push(marks::snapshot_path(&s.dir, base));
            }
        }
    }
    None
}

fn survey_segments(
    fs: &dyn SpoolFs,
    s: &mut Survey,
    depth: Depth,
    config: &LogConfig,
    snapshot: Option<(u64, marks::Table)>,
) -> Result<(), SpoolError> {
    let snap_base = snapshot.as_ref().map(|(b, _)| *b);
    let cp_segment = match &s.checkpoint {
        Loaded::Found { checkpoint, .. } => Some(checkpoint.segment),
        _ => None,
    };
    if let Some((_, (t, keys))) = snapshot {
        s.producers = t;
        for (k, e) in keys {
            s.keys.insert(k, e);
        }
    }
    let last = s.files.len() - 1;
    // Where the next segment must continue from; None after damage (the
    // damaged segment's real end is not known).
    let mut expected: Option<u64> = None;
    let files = s.files.clone();
    for (i, (base, path)) in files.iter().enumerate() {
        if s.cut.is_some() && depth == Depth::Quick {
            // What follows damage is not served; its headers and indexes
            // say how far the log reached (for the error), nothing more.
            if let Some(h) = read_header(fs, path) {
                s.reached = s.reached.max(h.base);
                if let Some(m) = load_index(fs, path, h.base, size_of(fs, path)) {
                    s.reached = s.reached.max(m.end());
                }
            }
            continue;
        }
        let f = fs.open(path, false).map_err(SpoolError::io("open", path))?;
        let file_len = f.size().map_err(SpoolError::io("stat", path))?;
        let mut head = vec![0; (file_len as usize).min(SEGMENT_HEADER_LEN)];
        f.read_exact_at(&mut head, 0)
            .map_err(SpoolError::io("read", path))?;
        let header = match SegmentHeader::decode(&head) {
            Ok(h) => h,
            Err(why) => {
                let data = read_whole(&*f, path, file_len)?;
                let commits = s
                    .stream_id
                    .is_some_and(|id| segment::commit_headers_after(&data, 0, id).next().is_some());
                // The checkpoint names the segment once it was created
                // whole: then it is no unfinished roll.
                let named = cp_segment.is_some_and(|b| b >= *base);
                if i == last && s.cut.is_none() && !commits && !named {
                    // A roll a crash cut short: nothing was written in it.
                    s.unborn = Some(path.clone());
                    break;
                }
                let why = if super::record::check(&data).is_ok() {
                    "no segment header: written by a sluice before spool format 2, which this \
                     sluice does not read (read it with the sluice that wrote it)"
                        .to_owned()
                } else {
                    format!("segment header: {why}")
                };
                s.damage(path, 0, expected.unwrap_or(*base), None, why);
                s.cut.get_or_insert(Cut {
                    file: i,
                    pos: 0,
                    keep: 0,
                });
                expected = None;
                continue;
            }
        };
        let id = *s.stream_id.get_or_insert(header.stream_id);
        let problem = if header.base != *base {
            Some(format!(
                "the file is named for offset {base} but holds offsets from {} on: renamed, or \
                 copied from elsewhere",
                header.base
            ))
        } else if header.stream_id != id {
            Some("the segment belongs to another stream (its stream id differs)".to_owned())
        } else {
            match expected {
                Some(e) if header.prev_end > e => Some(format!(
                    "the segment before it ends at offset {e} but this one continues from offset \
                     {}: offsets {e}..{} are missing (a segment file deleted, or the one before \
                     cut short)",
                    header.prev_end, header.prev_end
                )),
                Some(e) if header.prev_end < e => Some(format!(
                    "it continues from offset {} but the segment before it already reaches offset \
                     {e}: offsets overlap (a segment copied?)",
                    header.prev_end
                )),
                _ => None,
            }
        };
        if let Some(why) = problem {
            let from = expected.unwrap_or(header.prev_end);
            let to = expected
                .filter(|&e| header.prev_end > e)
                .map(|_| header.prev_end);
            s.damage(path, 0, from, to, why);
            s.cut.get_or_insert(Cut {
                file: i,
                pos: 0,
                keep: 0,
            });
            s.reached = s.reached.max(header.base);
            expected = None;
            continue;
        }
        let in_prefix = s.cut.is_none();
        if header.prev_end < header.base && in_prefix {
            s.gaps.push(header.prev_end..header.base);
        }
        let sealed = i < last;
        let indexed = (depth == Depth::Quick && sealed && snap_base.is_some_and(|b| *base < b))
            .then(|| load_index(fs, path, *base, file_len))
            .flatten();
        let (meta, last_commit, whole) = match indexed {
            Some(m) => (m, None, true),
            None => {
                let data = read_whole(&*f, path, file_len)?;
                s.bytes_read += file_len;
                let (producers, keys) = (&mut s.producers, &mut s.keys);
                let (meta, scan) = scan_segment(&data, *base, path, id, config, |r| {
                    if in_prefix {
                        let e = producers.entry(r.header.producer).or_insert(r.header.seq);
                        *e = (*e).max(r.header.seq);
                        let body = &data[r.pos as usize + HEADER_LEN..];
                        if let Some((k, _)) = r.header.key(body) {
                            let h = &r.header;
                            let e = KeyEntry::new(r.offset, &k, h.producer, h.seq, h.timestamp_us);
                            keys.insert(k.key, e);
                        }
                    }
                });
                let whole = scan.stop.is_none();
                if let Some(stop) = scan.stop {
                    s.reached = s.reached.max(stop.reached.unwrap_or(0));
                    let vouched = stop.vouched_by.map(|(q, h)| {
                        format!(
                            "; a valid commit follows at byte {q} (offsets {}..{}), so this is \
                             damage, not a torn write",
                            h.first,
                            h.end()
                        )
                    });
                    if sealed || vouched.is_some() {
                        let next_start = files
                            .get(i + 1)
                            .and_then(|(_, p)| read_header(fs, p))
                            .map(|h| h.prev_end);
                        let why = match vouched {
                            Some(v) => format!("{}{v}", stop.reason),
                            None => format!("{}, in a sealed segment", stop.reason),
                        };
                        // Named at the first bad record: the records of its
                        // commit before it check out and are kept.
                        let from = scan.end_offset + stop.good as u64;
                        s.damage(path, stop.bad_at, from, next_start, why);
                        s.cut.get_or_insert(Cut {
                            file: i,
                            pos: stop.pos,
                            keep: stop.good,
                        });
                    } else {
                        s.torn = Some(Torn {
                            file: path.clone(),
                            pos: stop.pos,
                            good: stop.good,
                            bad_at: stop.bad_at,
                            file_len,
                            nonzero: stop.nonzero_tail,
                            reason: stop.reason,
                        });
                    }
                }
                if !sealed && s.torn.is_none() && s.cut.is_none() && file_len > scan.end {
                    // Zeroes after the last commit: a stop leaves none
                    // (space is reserved without growing the file), a
                    // crash can (pages of the size but not the data).
                    s.torn = Some(Torn {
                        file: path.clone(),
                        pos: scan.end,
                        good: 0,
                        bad_at: scan.end,
                        file_len,
                        nonzero: 0,
                        reason: format!(
                            "{} bytes of zeroes after the last commit",
                            file_len - scan.end
                        ),
                    });
                }
                (meta, scan.last_commit, whole)
            }
        };
        s.records += meta.count;
        s.reached = s.reached.max(meta.end());
        expected = whole.then(|| meta.end());
        if in_prefix {
            s.last_commit = last_commit;
            s.segments.push(meta);
            s.headers.push(header);
        }
    }
    Ok(())
}

fn size_of(fs: &dyn SpoolFs, p: &Path) -> u64 {
    fs.open(p, false).and_then(|f| f.size()).unwrap_or(0)
}

fn read_header(fs: &dyn SpoolFs, p: &Path) -> Option<SegmentHeader> {
    let f = fs.open(p, false).ok()?;
    let mut b = [0u8; SEGMENT_HEADER_LEN];
    f.read_exact_at(&mut b, 0).ok()?;
    SegmentHeader::decode(&b).ok()
}

fn read_whole(f: &dyn super::fs::SpoolFile, path: &Path, len: u64) -> Result<Vec<u8>, SpoolError> {
    let mut data = vec![0; len as usize];
    f.read_exact_at(&mut data, 0)
        .map_err(SpoolError::io("read", path))?;
    Ok(data)
}

/// Scans a segment's bytes: its meta as far as it is valid (with a sparse
/// index entry per `index_interval` bytes), and the scan's findings.
pub fn scan_segment(
    data: &[u8],
    base: u64,
    path: &Path,
    stream_id: u64,
    config: &LogConfig,
    mut each: impl FnMut(&segment::ScannedRecord),
) -> (SegmentMeta, segment::Scan) {
    let mut meta = SegmentMeta {
        base,
        path: path.to_path_buf(),
        len: 0,
        count: 0,
        index: Vec::new(),
        last_timestamp_us: 0,
    };
    let mut since = u64::MAX;
    let scan = segment::scan(
        data,
        SEGMENT_HEADER_LEN.min(data.len()),
        stream_id,
        base,
        config.max_commit_bytes(),
        &mut |r| {
            if since >= config.index_interval {
                meta.index.push(IndexEntry {
                    offset: r.offset,
                    pos: r.pos,
                    timestamp_us: r.header.timestamp_us,
                });
                since = 0;
            }
            since = since.saturating_add((super::record::HEADER_LEN + r.header.len) as u64);
            meta.last_timestamp_us = meta.last_timestamp_us.max(r.header.timestamp_us);
            each(&r);
        },
    );
    meta.len = scan.end.max(SEGMENT_HEADER_LEN as u64);
    meta.count = scan.records;
    (meta, scan)
}

/// Checks the log against the marks beside it: the checkpoint, the
/// cursors and the idempotence snapshots.
fn check_marks(fs: &dyn SpoolFs, s: &mut Survey, cp: Option<Checkpoint>) {
    let end = s.end();
    let last_path = s
        .segments
        .last()
        .map(|m| m.path.clone())
        .or_else(|| s.files.first().map(|(_, p)| p.clone()))
        .unwrap_or_else(|| s.dir.clone());
    let last_len = s
        .torn
        .as_ref()
        .map_or_else(|| s.segments.last().map_or(0, |m| m.len), |t| t.pos);
    let cp_path = checkpoint::path(&s.dir);
    // Marks the log must reach: (what, offset).
    let mut marks: Vec<(String, u64, PathBuf)> = Vec::new();
    if let Some(c) = cp {
        s.reached = s.reached.max(c.end);
        if s.stream_id.is_some_and(|id| id != c.stream_id) {
            s.damage(
                &cp_path,
                0,
                0,
                None,
                "the checkpoint belongs to another stream (its stream id differs from the segments')".into(),
            );
            s.bad_marks.push(cp_path.clone());
        } else {
            marks.push((
                "the checkpoint's durable end".into(),
                c.end,
                cp_path.clone(),
            ));
            if c.clean && end > c.end && s.cut.is_none() {
                s.damage(
                    &cp_path,
                    0,
                    c.end,
                    Some(end),
                    format!(
                        "written by a clean stop at offset {}, but the log goes on to offset {end}: \
                         the checkpoint is stale (restored from an older copy?)",
                        c.end
                    ),
                );
                s.bad_marks.push(cp_path.clone());
            }
            if c.end == end && c.last_commit != 0 && s.cut.is_none() {
                let last = s.segments.last().map(|m| (m.base, m.path.clone()));
                if let (Some((h, pos)), Some((last_base, last_path))) = (s.last_commit, last) {
                    if c.segment == last_base && (c.pos != pos || c.last_commit != h.head_crc) {
                        s.damage(
                            &last_path,
                            pos,
                            h.first,
                            Some(end),
                            format!(
                                "the log's last commit (byte {pos}) is not the one the checkpoint \
                                 names (byte {}): a segment from another copy of the spool?",
                                c.pos
                            ),
                        );
                        s.bad_marks.push(cp_path.clone());
                    }
                }
            }
            let last = s.segments.last().map(|m| (m.base, m.path.clone(), m.len));
            if let Some((last_base, path, len)) = last.filter(|_| s.cut.is_none()) {
                if c.segment > last_base {
                    s.damage(
                        &path,
                        len,
                        end,
                        Some(c.end.max(c.segment)),
                        format!(
                            "the checkpoint names segment {}, which is not there (the last \
                             segment found starts at offset {last_base}): the last segment file \
                             was deleted or lost",
                            super::index::segment_name(c.segment)
                        ),
                    );
                }
            }
            if let Some(first) = s.headers.first().copied() {
                // Offsets prev_end..base of the first segment are a gap a
                // repair declared; below prev_end a segment must exist.
                if c.start < first.prev_end {
                    let path = s.segments[0].path.clone();
                    s.damage(
                        &path,
                        0,
                        c.start,
                        Some(first.prev_end),
                        format!(
                            "the log starts at offset {}, but the checkpoint says it keeps offsets \
                             from {} on: the first segment file(s) were deleted",
                            first.prev_end, c.start
                        ),
                    );
                }
            }
        }
    }
    for (group, r) in marks::read_cursors(fs, &s.dir) {
        let path = marks::cursor_path(&s.dir, &group);
        match r {
            Ok(c) => {
                s.reached = s.reached.max(c.ack_floor);
                marks.push((
                    format!("consumer group {group}'s cursor"),
                    c.ack_floor,
                    path,
                ));
            }
            Err(why) => {
                s.damage(
                    &path,
                    0,
                    0,
                    None,
                    format!("consumer group {group}'s cursor: {why}"),
                );
                s.bad_marks.push(path);
            }
        }
    }
    for base in marks::snapshot_bases(fs, &s.dir) {
        marks.push((
            format!("the idempotence snapshot {base:020}.snap"),
            base,
            marks::snapshot_path(&s.dir, base),
        ));
    }
    for (what, at, path) in marks {
        if at <= end {
            continue;
        }
        if s.acks_were_early && path.starts_with(s.dir.join(marks::CURSORS)) {
            // Groups acked what fsync = interval acked before it was
            // durable: a power cut took it. Not damage; the log goes on
            // past it (those offsets are recorded lost).
            s.notes.push(format!(
                "{what} is at offset {at}, past the log's end {end}: records acked before they were \
                 durable (fsync was not `always`) were lost"
            ));
            continue;
        }
        // With a tail that looked torn, the log ends at its first bad
        // record (those before it check out).
        let (byte, ends, torn) = match &s.torn {
            Some(t) => (
                t.bad_at,
                end + t.good as u64,
                format!(
                    "; {} bytes after it do not check out ({})",
                    t.nonzero, t.reason
                ),
            ),
            None => (last_len, end, String::new()),
        };
        s.damage(
            &last_path,
            byte,
            ends,
            Some(at),
            format!("the log ends at offset {ends}, but {what} is at offset {at}{torn}"),
        );
        if path.extension().is_some_and(|e| e == "snap") {
            s.bad_marks.push(path);
        }
        // A tail that looked torn is part of the damage: set aside with it.
        if let Some(t) = s.torn.take() {
            let file = s.files.iter().position(|(_, p)| *p == t.file).unwrap_or(0);
            s.cut.get_or_insert(Cut {
                file,
                pos: t.pos,
                keep: t.good,
            });
        }
    }
}
