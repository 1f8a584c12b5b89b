//! `--repair`: damage set aside, the valid log before it served.
//!
//! What a repair does with a survey that found damage, in this order (each
//! step durable before the next; a crash part way leaves files that a
//! second repair finishes):
//! 1. the damaged segment's bytes from the damage on are copied aside and
//!    cut; every later segment file (and its index) is moved aside;
//! 2. marks that do not check out or contradict the log (checkpoint,
//!    cursors, idempotence snapshots past the new end) are moved aside;
//! 3. if anything ever reached past the valid log's end (the checkpoint,
//!    a cursor, a later commit), a new segment starts there: those
//!    offsets are given up, never reused (a consumer group that saw them
//!    must not skip new records);
//! 4. a new checkpoint is written; damaged cursors are written again at
//!    the log's start, keeping everything until their group moves them;
//! 5. the repair is recorded (`recoveries`) and its folder under `aside/`
//!    gets a MANIFEST.
//!
//! Nothing is deleted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;

use super::aside::Aside;
use super::checkpoint::{self, Checkpoint, CheckpointFile};
use super::config::LogConfig;
use super::error::SpoolError;
use super::fs::SpoolFs;
use super::index::{index_path, segment_name};
use super::marks::{self, Cursor};
use super::record::now_us;
use super::recoveries::{self, Kind, Recovery};
use super::segment::{shortened_commit, SegmentHeader, COMMIT_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::segment_file::create_segment;
use super::survey::Survey;

/// Copies the bytes of `path` from `pos` to `len` into `aside`.
pub(crate) fn copy_tail(
    fs: &Arc<dyn SpoolFs>,
    aside: &mut Aside,
    path: &Path,
    pos: u64,
    len: u64,
    why: &str,
) -> Result<PathBuf, SpoolError> {
    let f = fs.open(path, false).map_err(SpoolError::io("open", path))?;
    let mut b = vec![0; len.saturating_sub(pos) as usize];
    f.read_exact_at(&mut b, pos)
        .map_err(SpoolError::io("read", path))?;
    let name = format!(
        "{}.from-byte-{pos}",
        path.file_name().unwrap_or_default().to_string_lossy()
    );
    aside.copy_bytes(&name, &b, path, pos, why)
}

/// Repairs the stream a survey found damaged (see the module's steps).
pub fn repair(fs: &Arc<dyn SpoolFs>, s: &Survey, config: &LogConfig) -> Result<(), SpoolError> {
    let mut aside = Aside::new(fs.clone(), &s.dir, "repair")?;
    for d in &s.damage {
        aside.note(&format!("damage: {d}"));
    }
    let mut bytes_aside = 0;
    // Records of the damaged commit kept (before its damage).
    let mut kept_records = 0;
    if let Some(cut) = s.cut {
        let (_, path) = &s.files[cut.file];
        let len = fs
            .open(path, false)
            .and_then(|f| f.size())
            .map_err(SpoolError::io("stat", path))?;
        // A segment whose header checks out keeps it (and what is valid
        // after it); one whose header does not is moved aside whole.
        let kept = s.segments.iter().any(|m| m.path == *path);
        if kept {
            copy_tail(
                fs,
                &mut aside,
                path,
                cut.pos,
                len,
                "damaged, and everything after it",
            )?;
            let f = fs.open(path, false).map_err(SpoolError::io("open", path))?;
            // The records of the damaged commit before the damage check
            // out: the commit is cut down to them (a new header), the rest
            // goes.
            let mut end = cut.pos;
            if cut.keep > 0 {
                let mut b = vec![0; (len - cut.pos) as usize];
                f.read_exact_at(&mut b, cut.pos)
                    .map_err(SpoolError::io("read", path))?;
                let id = s.stream_id.unwrap_or(0);
                if let Some((mut h, n)) = shortened_commit(&b, id, cut.keep) {
                    let mut head = [0u8; COMMIT_HEADER_LEN];
                    h.encode_into(&mut head);
                    f.write_all_at(&head, cut.pos)
                        .map_err(SpoolError::io("write", path))?;
                    end = cut.pos + n as u64;
                    kept_records = cut.keep as u64;
                }
            }
            f.set_len(end).map_err(SpoolError::io("truncate", path))?;
            f.sync_data().map_err(SpoolError::io("fdatasync", path))?;
            // The copy starts at the commit (its first header and the
            // records kept included).
            bytes_aside += len - cut.pos;
            move_if_there(
                fs,
                &mut aside,
                &index_path(path),
                "the index of a segment cut by the repair",
            )?;
        } else {
            aside.move_file(path, "damaged from its start")?;
            bytes_aside += len;
            move_if_there(fs, &mut aside, &index_path(path), "its index")?;
        }
        for (_, later) in &s.files[cut.file + 1..] {
            bytes_aside += fs.open(later, false).and_then(|f| f.size()).unwrap_or(0);
            aside.move_file(later, "after the damage")?;
            move_if_there(fs, &mut aside, &index_path(later), "its index")?;
        }
    }
    if let Some(path) = &s.unborn {
        bytes_aside += fs.open(path, false).and_then(|f| f.size()).unwrap_or(0);
        aside.move_file(path, "a last segment without a whole header or any commit")?;
    }
    let end = s.end() + kept_records;
    for base in marks::snapshot_bases(&**fs, &s.dir) {
        let path = marks::snapshot_path(&s.dir, base);
        if base > end && !s.bad_marks.contains(&path) {
            aside.move_file(&path, "an idempotence snapshot past the repaired log's end")?;
        }
    }
    let mut rewrite_cursors = Vec::new();
    for path in &s.bad_marks {
        if !fs.exists(path) {
            continue;
        }
        aside.move_file(path, "does not check out, or contradicts the log")?;
        if path.parent().is_some_and(|p| p.ends_with(marks::CURSORS)) {
            rewrite_cursors.push(
                path.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    // Past every offset anything saw: those in between are given up.
    let resume = end.max(s.reached);
    let stream_id = s.stream_id.unwrap_or_else(rand::random);
    let start = s.segments.first().map_or(resume, |m| m.base);
    let (segment, pos, last_commit) = if resume > end || s.segments.is_empty() {
        let prev_end = if s.segments.is_empty() {
            s.files.first().map_or(resume, |(b, _)| (*b).min(resume))
        } else {
            end
        };
        let header = SegmentHeader {
            base: resume,
            prev_end,
            stream_id,
            created_us: now_us(),
        };
        let path = s.dir.join(segment_name(resume));
        if fs.exists(&path) {
            aside.move_file(&path, "in the way of the segment the repair starts")?;
        }
        create_segment(&**fs, &s.dir, &path, &header, config.segment_bytes)?;
        (resume, SEGMENT_HEADER_LEN as u64, 0)
    } else {
        // The checkpoint names no last commit here (0): the next start
        // reads the segment and writes a full one.
        let last = s.segments.last().expect("not empty");
        let pos = match s.cut {
            Some(c) if s.files[c.file].1 == last.path => c.pos,
            _ => last.len,
        };
        let crc = s
            .last_commit
            .filter(|(_, at)| *at == pos && kept_records == 0)
            .map_or(0, |(h, _)| h.head_crc);
        (last.base, pos, crc)
    };
    let previous = match &s.checkpoint {
        checkpoint::Loaded::Found { checkpoint, .. } => *checkpoint,
        _ => Checkpoint::default(),
    };
    let mut cp = CheckpointFile::open(&**fs, &s.dir, previous)?;
    cp.write(Checkpoint {
        stream_id,
        start,
        end: resume,
        segment,
        pos,
        last_commit,
        written_us: now_us(),
        ..Checkpoint::default()
    })?;
    for group in rewrite_cursors {
        if !group.starts_with('.') {
            marks::write_cursor(
                &**fs,
                &s.dir,
                &group,
                Cursor {
                    ack_floor: start,
                    retain_until_acked: true,
                },
            )?;
        }
    }
    // Segments missing at the start (the checkpoint said the log kept
    // offsets from an earlier one): recorded as given up too.
    if let (checkpoint::Loaded::Found { checkpoint: c, .. }, Some(first)) =
        (&s.checkpoint, s.headers.first())
    {
        if c.start < first.prev_end {
            let reason = "the first segment file(s) were missing".into();
            record(fs, s, c.start..first.prev_end, 0, None, reason)?;
        }
    }
    let reason = s
        .damage
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    aside.note(&format!(
        "the log now ends at offset {end}; new records continue at offset {resume}{}",
        if resume > end {
            format!(" (offsets {end}..{resume} are lost)")
        } else {
            String::new()
        }
    ));
    let folder = aside.finish()?;
    warn!(stream = %s.stream, lost_from = end, lost_to = resume, bytes_aside,
        aside = %folder.display(), "repair: damage set aside; serving the log before it");
    record(fs, s, end..resume, bytes_aside, Some(folder), reason)
}

/// Records a repair in the stream's `recoveries`: the offsets given up,
/// the bytes set aside and where.
fn record(
    fs: &Arc<dyn SpoolFs>,
    s: &Survey,
    lost: std::ops::Range<u64>,
    bytes_aside: u64,
    aside: Option<PathBuf>,
    reason: String,
) -> Result<(), SpoolError> {
    let entry = Recovery {
        at_us: now_us(),
        kind: Kind::Repair,
        from: lost.start,
        to: lost.end,
        bytes_aside,
        aside,
        reason,
    };
    recoveries::append(&**fs, &s.dir, &entry)
}

fn move_if_there(
    fs: &Arc<dyn SpoolFs>,
    aside: &mut Aside,
    path: &Path,
    why: &str,
) -> Result<(), SpoolError> {
    if fs.exists(path) {
        aside.move_file(path, why)?;
    }
    Ok(())
}
