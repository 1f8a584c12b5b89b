//! Damage on disk, over seeds: a stream is written on the simulated file
//! system (acked records tracked), left by a clean stop or by a crash, then
//! damaged the way failing disks, bad copies and operators damage files:
//!
//! - a bit flipped in the first, a middle or the last record of the first,
//!   a middle or the last segment; a zeroed 4 KiB page;
//! - a segment truncated at a record boundary or between two;
//! - a segment deleted, duplicated under another name, or renamed;
//! - the checkpoint stale (an older copy put back), damaged, or deleted;
//! - a consumer group's cursor damaged; a bit flipped in its journal.
//!
//! Then the stream is opened again. Every case must end in one of:
//! - a refusal naming the damage (stream, file, byte, offsets), after
//!   which `--repair` serves the valid log, records what it gave up and
//!   sets the damaged bytes aside;
//! - every acknowledged record served, once, intact.
//!
//! The one window no proof covers (DESIGN.md): after a crash, damage in the
//! last commit written since the last checkpoint looks like a torn write.
//! Such records may be cut — only after the last checkpoint's end, only
//! from the very end of the log, and never silently: the cut is recorded
//! and its bytes (unless only zeroes) set aside. Anything else missing is a silent loss: a failure.
//!
//! `SPOOL_DAMAGE_SEEDS=n` sets the number of seeds (default 1,200);
//! `SPOOL_DAMAGE_SEED=s` replays one.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_daemon::consume::store::{Event, GroupStore, OnDamage};
use sluice_daemon::spool::fs::{read_all, SpoolFs};
use sluice_daemon::spool::index::segment_name;
use sluice_daemon::spool::recoveries::Kind;
use sluice_daemon::spool::segment::{self, SegmentHeader, SEGMENT_HEADER_LEN};
use sluice_daemon::spool::simfs::{CrashMode, SimFs};
use sluice_daemon::spool::{Cursor, LogConfig, Outcome, Record, Recovery, SpoolError, StreamLog};

const DIR: &str = "/data/streams/s";

fn dir() -> &'static Path {
    Path::new(DIR)
}

fn payload(producer: u64, seq: u64, len: usize) -> Bytes {
    let mut x =
        producer.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seq.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    First,
    Middle,
    Last,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind2 {
    FlipBit(Place, Place),
    ZeroPage(Place),
    TruncateAtRecord(Place),
    TruncateInside(Place),
    DeleteSegment(Place),
    DuplicateSegment,
    RenameSegment,
    StaleCheckpoint,
    DamagedCheckpoint,
    DeletedCheckpoint,
    DamagedCursor,
    DamagedGroupJournal,
}

const PLACES: [Place; 3] = [Place::First, Place::Middle, Place::Last];

fn kinds() -> Vec<Kind2> {
    let mut v = Vec::new();
    for s in PLACES {
        for r in PLACES {
            v.push(Kind2::FlipBit(s, r));
        }
        v.push(Kind2::ZeroPage(s));
        v.push(Kind2::TruncateAtRecord(s));
        v.push(Kind2::TruncateInside(s));
        v.push(Kind2::DeleteSegment(s));
    }
    v.extend([
        Kind2::DuplicateSegment,
        Kind2::RenameSegment,
        Kind2::StaleCheckpoint,
        Kind2::DamagedCheckpoint,
        Kind2::DeletedCheckpoint,
        Kind2::DamagedCursor,
        Kind2::DamagedGroupJournal,
    ]);
    v
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// A clean stop: the checkpoint says where the log ends.
    Clean,
    /// A power cut, then the damage, then the start.
    Crash,
    /// A power cut, a start that recovered, then the damage.
    CrashRecovered,
}

#[derive(Default, Debug)]
struct Totals {
    cases: u64,
    refused: u64,
    served_whole: u64,
    /// Acked records cut with a torn-looking tail past the last checkpoint.
    unproven_window: u64,
    repaired: u64,
}

struct Run {
    rng: ChaCha8Rng,
    fs: SimFs,
    config: LogConfig,
    /// Acked: offset → (producer, seq, len).
    acked: BTreeMap<u64, (u64, u64, usize)>,
    next_seq: HashMap<u64, u64>,
    /// The log's end when the checkpoint was last written.
    checkpoint_end: u64,
    /// A copy of the checkpoint file taken part way (for "stale").
    old_checkpoint: Option<Vec<u8>>,
    /// A consumer group acking some of the records, and the offsets whose
    /// acks are durable in its journal.
    group: Option<GroupStore>,
    group_acked: Vec<u64>,
}

impl Run {
    fn open(&self, recovery: Recovery) -> Result<StreamLog, SpoolError> {
        StreamLog::open(
            Arc::new(self.fs.clone()),
            dir(),
            "s",
            LogConfig {
                recovery,
                ..self.config.clone()
            },
        )
    }

    /// Appends batches until `n` are done or the power goes.
    fn write(&mut self, log: &mut StreamLog, n: usize) {
        for _ in 0..n {
            let mut batch = Vec::new();
            for _ in 0..self.rng.random_range(1..6) {
                let p = self.rng.random_range(1..4u64);
                let seq = self.next_seq.entry(p).or_insert(1);
                let len = [0usize, 20, 200, 900][self.rng.random_range(0..4)];
                batch.push(Record {
                    producer: p,
                    seq: *seq,
                    timestamp_us: *seq,
                    payload: payload(p, *seq, len),
                    key: None,
                });
                *seq += 1;
            }
            match log.append(&batch, true) {
                Ok(out) => {
                    for (r, o) in batch.iter().zip(out) {
                        if let Outcome::Stored { offset } = o {
                            self.acked
                                .insert(offset, (r.producer, r.seq, r.payload.len()));
                        }
                    }
                }
                Err(_) => {
                    // The power went (or the disk): these seqs were not
                    // acked; the producer sends them again.
                    for r in &batch {
                        let s = self.next_seq.get_mut(&r.producer).unwrap();
                        *s = (*s).min(r.seq);
                    }
                    return;
                }
            }
            if self.rng.random_bool(0.15) && log.checkpoint(false).is_ok() {
                self.checkpoint_end = log.next_offset();
            }
            // The group acks the first record of some batches, one journal
            // entry each.
            if let (Some(g), Some(&o)) = (self.group.as_mut(), self.acked.keys().next_back()) {
                if self.rng.random_bool(0.5) && g.append(&[Event::Acked(o..o + 1)]).is_ok() {
                    self.group_acked.push(o);
                }
            }
        }
    }
}

/// The segment files in order: base and path.
fn segments(fs: &SimFs) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = fs
        .list(dir())
        .unwrap()
        .iter()
        .filter_map(|n| {
            let b = n.strip_suffix(".seg")?.parse().ok()?;
            Some((b, dir().join(n)))
        })
        .collect();
    v.sort();
    v
}

fn pick<T: Clone>(v: &[T], place: Place) -> T {
    match place {
        Place::First => v[0].clone(),
        Place::Middle => v[v.len() / 2].clone(),
        Place::Last => v[v.len() - 1].clone(),
    }
}

/// Byte positions of the records of a segment file: (pos, total length).
fn record_positions(fs: &SimFs, path: &Path) -> Vec<(u64, u64)> {
    let data = read_all(fs, path).unwrap();
    let Ok(h) = SegmentHeader::decode(&data) else {
        return Vec::new();
    };
    let mut v = Vec::new();
    segment::scan(
        &data,
        SEGMENT_HEADER_LEN,
        h.stream_id,
        h.base,
        u64::MAX,
        &mut |r| v.push((r.pos, (40 + r.header.len) as u64)),
    );
    v
}

fn write_at(fs: &SimFs, path: &Path, at: u64, bytes: &[u8]) {
    let f = fs.open(path, false).unwrap();
    f.write_all_at(bytes, at).unwrap();
    f.sync_data().unwrap();
}

fn set_len(fs: &SimFs, path: &Path, len: u64) {
    let f = fs.open(path, false).unwrap();
    f.set_len(len).unwrap();
    f.sync_data().unwrap();
}

/// Applies the damage; returns what it did, or None if the log has no
/// place for it (too few segments or records): the case is skipped.
fn damage(run: &mut Run, kind: Kind2) -> Option<String> {
    let fs = run.fs.clone();
    let segs = segments(&fs);
    let with_records: Vec<(u64, PathBuf)> = segs
        .iter()
        .filter(|(_, p)| !record_positions(&fs, p).is_empty())
        .cloned()
        .collect();
    let rng = &mut run.rng;
    match kind {
        Kind2::FlipBit(s, r) => {
            let (_, path) = pick_segment(&with_records, s)?;
            let recs = record_positions(&fs, &path);
            let (pos, len) = pick(&recs, r);
            let at = pos + rng.random_range(0..len);
            fs.corrupt(&path, at, 1 << rng.random_range(0..8));
            Some(format!("bit flipped at byte {at} of {}", path.display()))
        }
        Kind2::ZeroPage(s) => {
            let (_, path) = pick_segment(&with_records, s)?;
            let len = fs.file_len(&path)?;
            let pages = len.div_ceil(4096);
            let page = rng.random_range(0..pages);
            let end = ((page + 1) * 4096).min(len);
            write_at(
                &fs,
                &path,
                page * 4096,
                &vec![0; (end - page * 4096) as usize],
            );
            Some(format!("page {page} of {} zeroed", path.display()))
        }
        Kind2::TruncateAtRecord(s) => {
            let (_, path) = pick_segment(&with_records, s)?;
            let recs = record_positions(&fs, &path);
            let (pos, _) = recs[rng.random_range(0..recs.len())];
            set_len(&fs, &path, pos);
            Some(format!(
                "{} cut at byte {pos} (a record boundary)",
                path.display()
            ))
        }
        Kind2::TruncateInside(s) => {
            let (_, path) = pick_segment(&with_records, s)?;
            let recs = record_positions(&fs, &path);
            let (pos, len) = recs[rng.random_range(0..recs.len())];
            let at = pos + rng.random_range(1..len);
            set_len(&fs, &path, at);
            Some(format!(
                "{} cut at byte {at} (inside a record)",
                path.display()
            ))
        }
        Kind2::DeleteSegment(s) => {
            let (_, path) = pick_segment(&segs, s)?;
            fs.remove_file(&path).unwrap();
            fs.sync_dir(dir()).unwrap();
            Some(format!("{} deleted", path.display()))
        }
        Kind2::DuplicateSegment => {
            let (base, path) = pick_segment(&with_records, Place::Middle)?;
            let data = read_all(&fs, &path).unwrap();
            // A copy under a name past the last segment, or between two.
            let last = segs.last()?.0;
            let to = if rng.random_bool(0.5) {
                last + 1_000
            } else {
                base + 1
            };
            let copy = dir().join(segment_name(to));
            if fs.exists(&copy) {
                return None;
            }
            let f = fs.open(&copy, true).unwrap();
            f.write_all_at(&data, 0).unwrap();
            f.sync_data().unwrap();
            fs.sync_dir(dir()).unwrap();
            Some(format!("{} copied to {}", path.display(), copy.display()))
        }
        Kind2::RenameSegment => {
            let (base, path) = pick_segment(&segs, Place::Middle)?;
            let to = dir().join(segment_name(base + 1 + rng.random_range(0..3)));
            if fs.exists(&to) {
                return None;
            }
            fs.rename(&path, &to).unwrap();
            fs.sync_dir(dir()).unwrap();
            Some(format!("{} renamed to {}", path.display(), to.display()))
        }
        Kind2::StaleCheckpoint => {
            let old = run.old_checkpoint.clone()?;
            let path = dir().join("checkpoint");
            set_len(&fs, &path, 0);
            write_at(&fs, &path, 0, &old);
            Some("an older copy of the checkpoint put back".into())
        }
        Kind2::DamagedCheckpoint => {
            let path = dir().join("checkpoint");
            let both = rng.random_bool(0.5);
            fs.corrupt(&path, rng.random_range(0..72), 0x08);
            if both {
                fs.corrupt(&path, 4096 + rng.random_range(0..72), 0x08);
            }
            Some(format!(
                "checkpoint damaged ({} slot(s))",
                if both { 2 } else { 1 }
            ))
        }
        Kind2::DeletedCheckpoint => {
            fs.remove_file(&dir().join("checkpoint")).unwrap();
            fs.sync_dir(dir()).unwrap();
            Some("checkpoint deleted".into())
        }
        Kind2::DamagedGroupJournal => {
            // A flip in an entry that is not the last one (entries are at
            // least 33 bytes: a 16-byte header and one 17-byte event).
            let path = group_dir().join("journal");
            let len = fs.file_len(&path)?;
            if len < 3 * 33 {
                return None;
            }
            let at = rng.random_range(0..len - 33);
            fs.corrupt(&path, at, 1 << rng.random_range(0..8));
            Some(format!("bit flipped at byte {at} of the group's journal"))
        }
        Kind2::DamagedCursor => {
            let path = dir().join("cursors").join("g");
            let len = fs.file_len(&path)?;
            fs.corrupt(&path, rng.random_range(0..len), 0x02);
            Some("cursor of group g damaged".into())
        }
    }
}

fn group_dir() -> PathBuf {
    dir().join("groups").join("g")
}

fn pick_segment(segs: &[(u64, PathBuf)], place: Place) -> Option<(u64, PathBuf)> {
    if segs.is_empty() || (place == Place::Middle && segs.len() < 3) {
        return None;
    }
    Some(pick(segs, place))
}

/// Every record the log serves: offset → (producer, seq, payload).
fn served(log: &StreamLog) -> Result<BTreeMap<u64, Record>, String> {
    let mut r = log.reader(0);
    let mut out = BTreeMap::new();
    while let Some((o, rec)) = r.next_record().map_err(|e| format!("read: {e}"))? {
        if out.insert(o, rec).is_some() {
            return Err(format!("offset {o} served twice"));
        }
    }
    Ok(out)
}

/// Checks what is served against what was acked; returns the acked
/// offsets that are missing.
fn missing(run: &Run, got: &BTreeMap<u64, Record>) -> Result<Vec<u64>, String> {
    let mut seen: HashMap<(u64, u64), u64> = HashMap::new();
    for (o, r) in got {
        if let Some(prev) = seen.insert((r.producer, r.seq), *o) {
            return Err(format!(
                "producer {} seq {} stored twice (offsets {prev} and {o})",
                r.producer, r.seq
            ));
        }
        if let Some(&(p, s, len)) = run.acked.get(o) {
            if (r.producer, r.seq) != (p, s) || r.payload != payload(p, s, len) {
                return Err(format!("offset {o} holds the wrong record"));
            }
        }
    }
    Ok(run
        .acked
        .keys()
        .filter(|o| !got.contains_key(o))
        .copied()
        .collect())
}

fn run_seed(seed: u64) -> Result<Totals, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let all = kinds();
    let kind = all[(seed as usize) % all.len()];
    let ending =
        [Ending::Clean, Ending::Crash, Ending::CrashRecovered][(seed as usize / all.len()) % 3];
    let config = LogConfig {
        segment_bytes: rng.random_range(3_000..12_000),
        max_batch_bytes: 4_000,
        max_record_bytes: 1_000,
        index_interval: 512,
        ..LogConfig::default()
    };
    let mut run = Run {
        rng,
        fs: SimFs::new(),
        config,
        acked: BTreeMap::new(),
        next_seq: HashMap::new(),
        checkpoint_end: 0,
        old_checkpoint: None,
        group: None,
        group_acked: Vec::new(),
    };
    let mut log = run.open(Recovery::Recover).map_err(|e| e.to_string())?;
    run.group = Some(
        GroupStore::create(Arc::new(run.fs.clone()), &group_dir(), 0).map_err(|e| e.to_string())?,
    );
    let n = run.rng.random_range(20..60);
    run.write(&mut log, n);
    log.set_cursor(
        "g",
        Cursor {
            ack_floor: run.rng.random_range(0..=log.next_offset()),
            retain_until_acked: true,
        },
    )
    .map_err(|e| e.to_string())?;
    if run.rng.random_bool(0.5) || kind == Kind2::StaleCheckpoint {
        // A clean stop and start part way; the checkpoint of that stop is
        // what a stale copy puts back.
        log.close().map_err(|e| e.to_string())?;
        run.old_checkpoint = Some(read_all(&run.fs, &dir().join("checkpoint")).unwrap());
        log = run
            .open(Recovery::Recover)
            .map_err(|e| format!("reopen: {e}"))?;
        run.checkpoint_end = log.next_offset();
    } else {
        run.old_checkpoint = Some(read_all(&run.fs, &dir().join("checkpoint")).unwrap());
    }
    let n = run.rng.random_range(10..40);
    run.write(&mut log, n);
    run.group = None;
    match ending {
        Ending::Clean => {
            log.close().map_err(|e| e.to_string())?;
            run.checkpoint_end = u64::MAX; // everything is covered
        }
        Ending::Crash | Ending::CrashRecovered => {
            run.fs.fail_after(Some(run.rng.random_range(0..40)));
            let n = run.rng.random_range(1..10);
            run.write(&mut log, n);
            drop(log);
            let mode = [
                CrashMode::DropUnsynced,
                CrashMode::KeepPrefix,
                CrashMode::TearLastWrite,
                CrashMode::FlipBits,
            ][run.rng.random_range(0..4)];
            let mut crash_rng = ChaCha8Rng::seed_from_u64(seed ^ 0xC0FFEE);
            run.fs.crash(mode, &mut crash_rng);
            if ending == Ending::CrashRecovered {
                let log = run
                    .open(Recovery::Recover)
                    .map_err(|e| format!("recovery after a crash refused: {e}"))?;
                let got = served(&log)?;
                let lost = missing(&run, &got)?;
                if !lost.is_empty() {
                    return Err(format!("a crash alone lost acked offsets {lost:?}"));
                }
                run.checkpoint_end = u64::MAX; // the start wrote one
            }
        }
    }
    if run.acked.is_empty() {
        return Ok(Totals::default());
    }
    let Some(what) = damage(&mut run, kind) else {
        return Ok(Totals::default());
    };
    let mut t = Totals {
        cases: 1,
        ..Totals::default()
    };
    let ctx = |e: String| format!("{kind:?} after {ending:?} ({what}): {e}");
    // Opened and read whole, or refused: at the start, or (damage inside
    // a sealed segment, which a start does not read) by the read.
    let outcome = match run.open(Recovery::Recover) {
        Ok(log) => match served(&log) {
            Ok(got) => Ok((log, got)),
            Err(e) => Err(e),
        },
        Err(e @ SpoolError::Damaged(_)) => Err(e.to_string()),
        Err(e) => return Err(ctx(format!("an error that does not name damage: {e}"))),
    };
    check_group(&run, kind).map_err(ctx)?;
    match outcome {
        Err(msg) => {
            t.refused += 1;
            for needle in ["stream s", "byte", "offsets", "--repair"] {
                if !msg.contains(needle) {
                    return Err(ctx(format!("the refusal does not say {needle:?}: {msg}")));
                }
            }
            let log = run
                .open(Recovery::Repair)
                .map_err(|e| ctx(format!("repair failed: {e}")))?;
            t.repaired += 1;
            let got = served(&log).map_err(|e| ctx(format!("after the repair: {e}")))?;
            let lost = missing(&run, &got).map_err(ctx)?;
            let given_up: Vec<(u64, u64)> = log
                .recoveries()
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.kind == Kind::Repair)
                .map(|r| (r.from, r.to))
                .collect();
            if given_up.is_empty() {
                return Err(ctx("the repair recorded nothing".into()));
            }
            // What the repair serves is the valid log up to the damage:
            // every acked record gone is past where the damage starts.
            let damage_from = given_up.iter().map(|g| g.0).min().unwrap_or(0);
            if let Some(&f) = lost.first() {
                let in_range = given_up.iter().any(|&(a, b)| f >= a && f < b.max(a + 1));
                if f < damage_from && !in_range {
                    return Err(ctx(format!(
                        "acked offset {f} is gone, outside what the repair recorded: {given_up:?}"
                    )));
                }
            }
            drop(log);
            run.open(Recovery::Recover)
                .map_err(|e| ctx(format!("a start after the repair refused: {e}")))?;
        }
        Ok((log, got)) => {
            let lost = missing(&run, &got).map_err(ctx)?;
            if lost.is_empty() {
                t.served_whole += 1;
            } else {
                // Only the unproven window: after a crash, past the last
                // checkpoint, at the very end, and recorded as a torn tail
                // whose bytes were set aside.
                let torn =
                    log.recoveries().lock().unwrap().iter().any(|r| {
                        r.kind == Kind::TornTail && (r.aside.is_some() || r.bytes_aside == 0)
                    });
                let at_end = lost.iter().all(|o| !got.keys().any(|g| g > o));
                let past_checkpoint = lost.iter().all(|&o| o >= run.checkpoint_end);
                if ending != Ending::Crash || !torn || !at_end || !past_checkpoint {
                    return Err(ctx(format!(
                        "silent loss: acked offsets {:?} (of {}) are gone (torn tail recorded: {torn}, \
                         at the end: {at_end}, past the checkpoint at {}: {past_checkpoint})",
                        &lost[..lost.len().min(10)],
                        lost.len(),
                        run.checkpoint_end
                    )));
                }
                t.unproven_window += 1;
            }
        }
    }
    Ok(t)
}

/// The group's journal: refused naming the journal, or every durable ack
/// there; with repair, it opens.
fn check_group(run: &Run, kind: Kind2) -> Result<(), String> {
    let fs: Arc<dyn SpoolFs> = Arc::new(run.fs.clone());
    match GroupStore::open(fs.clone(), &group_dir(), OnDamage::Refuse) {
        Ok(Some(g)) => {
            if let Some(o) = run.group_acked.iter().find(|&&o| !g.state().is_done(o)) {
                return Err(format!(
                    "silent loss: the group's durable ack of offset {o} is gone"
                ));
            }
        }
        Ok(None) => return Err("the group is gone".into()),
        Err(e @ SpoolError::GroupCorrupt { .. }) => {
            let msg = e.to_string();
            if kind != Kind2::DamagedGroupJournal {
                return Err(format!("the group refused for damage elsewhere: {msg}"));
            }
            if !(msg.contains("journal") && msg.contains("byte") && msg.contains("--repair")) {
                return Err(format!(
                    "the group's refusal does not name journal and byte: {msg}"
                ));
            }
            GroupStore::open(fs, &group_dir(), OnDamage::Repair { restart_at: 0 })
                .map_err(|e| format!("the group's repair failed: {e}"))?;
        }
        Err(e) => return Err(format!("the group: {e}")),
    }
    Ok(())
}

#[test]
fn damage_is_refused_and_named_or_every_acked_record_is_served() {
    let mut total = Totals::default();
    let Some(seeds) =
        support::run_seeds("SPOOL_DAMAGE_SEED", 1200, "spool_damage", run_seed, |t| {
            total.cases += t.cases;
            total.refused += t.refused;
            total.served_whole += t.served_whole;
            total.unproven_window += t.unproven_window;
            total.repaired += t.repaired;
        })
    else {
        return;
    };
    eprintln!("{seeds} seeds: {total:?}");
    assert!(
        total.cases >= seeds * 3 / 4,
        "too many cases skipped: {total:?}"
    );
    assert!(total.refused > total.cases / 3, "{total:?}");
    assert!(total.served_whole > 0, "{total:?}");
    assert_eq!(total.repaired, total.refused);
}
