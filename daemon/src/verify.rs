//! `sluice spool verify`: every record of every segment, the checkpoints,
//! the cursors and the consumer groups' state, checked; what was found,
//! printed. Offline on a data folder (nothing is changed: it reads what
//! the next start would find), or through a running daemon (its durable
//! segments, read while it runs: `POST /spool/verify`).
//!
//! A torn tail or an unfinished compaction is what a crash leaves, not
//! damage: the next start deals with them, and they do not fail a verify.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::consume::store;
use crate::spool::checkpoint::{self, Loaded};
use crate::spool::fs::{RealFs, SpoolFs};
use crate::spool::marks;
use crate::spool::recoveries::{self, Recovery};
use crate::spool::scrub::{self, Pace};
use crate::spool::survey::{self, Depth};
use crate::spool::{Damage, LogConfig, Spool, SpoolError};

/// What a verify found, stream by stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[schema(as = VerifyReport)]
pub struct Report {
    /// `offline` (the files of a data folder) or `daemon` (through a
    /// running sluiced: its durable segments).
    pub how: String,
    pub streams: Vec<StreamCheck>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct StreamCheck {
    pub stream: String,
    pub segments: u64,
    pub records: u64,
    /// Bytes of segments read.
    pub bytes: u64,
    pub first_offset: u64,
    pub end_offset: u64,
    /// What the checkpoint says, or what is wrong with it.
    pub checkpoint: String,
    /// A torn tail the next start cuts (and sets aside).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torn_tail: Option<String>,
    pub damage: Vec<Damage>,
    /// Offsets the segment headers say earlier repairs gave up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gaps: Vec<(u64, u64)>,
    /// Offsets given up and bytes set aside before (the stream's
    /// `recoveries`).
    #[serde(default)]
    pub recoveries: Vec<Recovery>,
    #[serde(default)]
    pub groups: Vec<GroupCheck>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct GroupCheck {
    pub group: String,
    /// Nothing wrong.
    pub ok: bool,
    /// Floor and journal, or what is wrong.
    pub detail: String,
}

impl Report {
    /// Whether anything is damaged (the exit status of `sluice spool verify`).
    pub fn damaged(&self) -> bool {
        self.streams
            .iter()
            .any(|s| !s.damage.is_empty() || s.groups.iter().any(|g| !g.ok))
    }

    /// The report as text, a stream a paragraph.
    pub fn print(&self, out: &mut dyn Write) -> std::io::Result<()> {
        if self.streams.is_empty() {
            writeln!(out, "no streams")?;
        }
        for s in &self.streams {
            let verdict = if s.damage.is_empty() && s.groups.iter().all(|g| g.ok) {
                "ok"
            } else {
                "DAMAGED"
            };
            writeln!(
                out,
                "{}: {verdict}: {} segment(s), {} records (offsets {}..{}), {} bytes read",
                s.stream, s.segments, s.records, s.first_offset, s.end_offset, s.bytes
            )?;
            writeln!(out, "  checkpoint: {}", s.checkpoint)?;
            if let Some(t) = &s.torn_tail {
                writeln!(
                    out,
                    "  torn tail (left by a crash; the next start sets it aside and cuts it): {t}"
                )?;
            }
            for d in &s.damage {
                writeln!(
                    out,
                    "  DAMAGE: {} is damaged at byte {}: {}; {} affected",
                    d.file.display(),
                    d.byte,
                    d.reason,
                    d.offsets()
                )?;
            }
            for (a, b) in &s.gaps {
                writeln!(
                    out,
                    "  offsets {a}..{b} given up by an earlier repair (the segment headers say so)"
                )?;
            }
            for r in &s.recoveries {
                let when = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_micros(r.at_us),
                );
                let lost = if r.lost() > 0 {
                    format!("offsets {}..{} given up", r.from, r.to)
                } else {
                    "no offset given up".to_owned()
                };
                let aside = r
                    .aside
                    .as_ref()
                    .map(|p| format!(", bytes set aside in {}", p.display()))
                    .unwrap_or_default();
                writeln!(out, "  earlier {:?} at {when}: {lost}{aside}", r.kind)?;
            }
            for g in &s.groups {
                let mark = if g.ok { "ok" } else { "DAMAGED" };
                writeln!(out, "  group {}: {mark}: {}", g.group, g.detail)?;
            }
        }
        Ok(())
    }
}

/// Verifies the data folder `dir` (every stream, or only `only`) without
/// changing anything. The caller holds the folder's lock.
pub fn data_folder(dir: &Path, only: Option<&str>) -> Result<Report, SpoolError> {
    let fs: Arc<dyn SpoolFs> = Arc::new(RealFs);
    let root = dir.join("streams");
    let mut names = fs.list(&root).map_err(SpoolError::io("list", &root))?;
    names.retain(|n| crate::spool::writer::check_name(n).is_ok());
    if let Some(o) = only {
        if !names.iter().any(|n| n == o) {
            return Err(SpoolError::Io {
                op: "find stream",
                path: root.join(o),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        names.retain(|n| n == o);
    }
    let mut report = Report {
        how: "offline".into(),
        streams: Vec::new(),
    };
    for name in names {
        let sdir = root.join(&name);
        let s = survey::survey(&*fs, &sdir, &name, Depth::Full, &LogConfig::default())?;
        let end = s.end();
        let mut check = StreamCheck {
            stream: name,
            segments: s.segments.len() as u64,
            records: s.records,
            bytes: s.bytes_read,
            first_offset: s.segments.first().map_or(end, |m| m.base),
            end_offset: end,
            checkpoint: describe_checkpoint(&s.checkpoint),
            torn_tail: s.torn.as_ref().map(|t| {
                format!(
                    "{} from byte {}: {} bytes ({})",
                    t.file.display(),
                    t.pos,
                    t.file_len - t.pos,
                    t.reason
                )
            }),
            damage: s.damage.clone(),
            gaps: s.gaps.iter().map(|g| (g.start, g.end)).collect(),
            recoveries: recoveries::read(&*fs, &sdir),
            groups: Vec::new(),
        };
        check.groups = check_groups(&*fs, &sdir, end);
        report.streams.push(check);
    }
    Ok(report)
}

/// Verifies every open stream of a running daemon: its durable segments
/// (all of them, at full speed), its checkpoint, cursors and groups.
pub fn running(spool: &Spool, only: Option<&str>) -> Result<Report, SpoolError> {
    let stop = AtomicBool::new(false);
    let mut report = Report {
        how: "daemon".into(),
        streams: Vec::new(),
    };
    for name in spool.open_stream_names() {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let Some(stream) = spool.open_stream(&name) else {
            continue;
        };
        let mut pace = Pace::new(0, &stop);
        let (bytes, records, mut damage) = scrub::check_stream(&stream, false, &mut pace)?;
        damage.extend(stream.damage());
        damage.dedup_by(|a, b| a.file == b.file && a.byte == b.byte);
        let fs = stream.fs().clone();
        let dir = stream.dir().to_path_buf();
        let end = stream.durable_end();
        for (group, c) in marks::read_cursors(&*fs, &dir) {
            if let Err(why) = c {
                damage.push(Damage {
                    stream: name.clone(),
                    file: marks::cursor_path(&dir, &group),
                    byte: 0,
                    from: 0,
                    to: None,
                    reason: format!("consumer group {group}'s cursor: {why}"),
                });
            }
        }
        let loaded = checkpoint::load(&*fs, &dir)?;
        if let Loaded::Damaged(why) = &loaded {
            damage.push(Damage {
                stream: name.clone(),
                file: checkpoint::path(&dir),
                byte: 0,
                from: 0,
                to: None,
                reason: format!("checkpoint: {why}"),
            });
        }
        report.streams.push(StreamCheck {
            segments: stream.segments().len() as u64,
            records,
            bytes,
            first_offset: stream.first_offset(),
            end_offset: end,
            checkpoint: describe_checkpoint(&loaded),
            torn_tail: None,
            damage,
            gaps: Vec::new(),
            recoveries: stream.recoveries(),
            groups: check_groups(&*fs, &dir, end),
            stream: name,
        });
    }
    Ok(report)
}

fn describe_checkpoint(l: &Loaded) -> String {
    match l {
        Loaded::Missing => "missing".into(),
        Loaded::Damaged(why) => format!("DAMAGED: {why}"),
        Loaded::Found {
            checkpoint: c,
            other_damaged,
        } => {
            let mut t = format!(
                "offsets {}..{} durable, {}",
                c.start,
                c.end,
                if c.clean {
                    "written by a clean stop"
                } else {
                    "written while running (the log may go on past it)"
                }
            );
            if let Some(why) = other_damaged {
                t.push_str(&format!(
                    "; the other slot does not check out ({why}): a torn write"
                ));
            }
            t
        }
    }
}

/// The consumer groups of the stream in `dir`, whose log ends at `end`.
fn check_groups(fs: &dyn SpoolFs, dir: &Path, end: u64) -> Vec<GroupCheck> {
    let gdir = dir.join("groups");
    let mut out = Vec::new();
    for name in fs.list(&gdir).unwrap_or_default() {
        if store::check_group_name(&name).is_err() {
            continue;
        }
        let r = store::verify(fs, &gdir.join(&name));
        if !r.exists {
            continue;
        }
        let mut ok = r.ok();
        let mut detail = match (&r.damage, &r.error, r.floor) {
            (Some(d), _, _) => d.clone(),
            (None, Some(e), _) => e.clone(),
            (None, None, floor) => format!(
                "floor {}, {} journal entries ({} bytes){}{}",
                floor.unwrap_or(0),
                r.journal_entries,
                r.journal_bytes,
                if r.compaction_unfinished {
                    ", a compaction to finish at the next start"
                } else {
                    ""
                },
                r.torn_tail
                    .as_ref()
                    .map(|t| format!(
                        ", a torn last entry at byte {} ({} bytes) the next start cuts",
                        t.at, t.bytes
                    ))
                    .unwrap_or_default()
            ),
        };
        if let Some(reach) = r.reach.filter(|&x| x > end) {
            ok = false;
            detail = format!(
                "its state holds offsets up to {reach}, but the stream ends at {end}: the stream lost records the group saw; {detail}"
            );
        }
        out.push(GroupCheck {
            group: name,
            ok,
            detail,
        });
    }
    out
}
