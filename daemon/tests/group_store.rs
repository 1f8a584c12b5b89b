//! A consumer group's durable state (consume::store): the event algebra
//! against a plain model, the journal and snapshot round trips, and crashes
//! on the simulated file system at random points.
//!
//! Crash property, for every seed and every crash: after recovery the state
//! holds every batch whose append returned Ok, and equals the state of some
//! prefix of the batches attempted (never half a batch).
//!
//! `JOURNAL_SEEDS=n` sets the number of crash seeds (default 2,000);
//! `JOURNAL_SEED=s` replays one.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_daemon::consume::store::{verify, Event, GroupState, GroupStore, OnDamage};
use sluice_daemon::spool::fs::{read_all, SpoolFs};
use sluice_daemon::spool::simfs::{CrashMode, SimFs};
use sluice_daemon::spool::SpoolError;

const DIR: &str = "/data/streams/s/groups/g";

fn dir() -> &'static Path {
    Path::new(DIR)
}

fn fs_of(fs: &SimFs) -> Arc<dyn SpoolFs> {
    Arc::new(fs.clone())
}

fn applied(base: &GroupState, batches: &[Vec<Event>]) -> GroupState {
    let mut s = base.clone();
    for e in batches.iter().flatten() {
        s.apply(e);
    }
    s
}

// ---------------------------------------------------------------------------
// The event algebra against a model.

/// The plain model: sets and maxima over every event seen.
#[derive(Default)]
struct Model {
    floor0: u64,
    done: BTreeSet<u64>,
    deliveries: BTreeMap<u64, u32>,
    dlq_seq: u64,
    stored: u64,
    dead: BTreeMap<u64, u64>,
}

impl Model {
    fn apply(&mut self, e: &Event) {
        match e {
            Event::Acked(r) => self.done.extend(r.clone()),
            Event::Delivered { offset, count } => {
                let c = self.deliveries.entry(*offset).or_insert(*count);
                *c = (*c).max(*count);
            }
            Event::Dead { offset, dlq_seq } => {
                self.done.insert(*offset);
                self.dlq_seq = self.dlq_seq.max(*dlq_seq);
                let o = self.dead.entry(*dlq_seq).or_insert(*offset);
                *o = (*o).min(*offset);
            }
            Event::DeadStored { up_to } => {
                self.stored = self.stored.max(*up_to);
                self.dlq_seq = self.dlq_seq.max(*up_to);
            }
        }
    }

    fn check(&self, s: &GroupState) -> Result<(), TestCaseError> {
        let mut floor = self.floor0;
        while self.done.contains(&floor) {
            floor += 1;
        }
        prop_assert_eq!(s.floor, floor);
        let acked: Vec<u64> = s.acked.iter().flatten().collect();
        let want: Vec<u64> = self.done.range(floor..).copied().collect();
        prop_assert_eq!(acked, want);
        let want: BTreeMap<u64, u32> = self
            .deliveries
            .iter()
            .filter(|(o, _)| **o >= floor && !self.done.contains(o))
            .map(|(&o, &c)| (o, c))
            .collect();
        prop_assert_eq!(&s.deliveries, &want);
        prop_assert_eq!(s.dlq_seq, self.dlq_seq);
        prop_assert_eq!(s.dlq_stored, self.stored);
        let want: BTreeMap<u64, u64> = self
            .dead
            .iter()
            .filter(|(q, _)| **q > self.stored)
            .map(|(&q, &o)| (q, o))
            .collect();
        prop_assert_eq!(&s.dead_pending, &want);
        for o in 0..floor + 80 {
            prop_assert_eq!(
                s.is_done(o),
                o < self.floor0 || self.done.contains(&o),
                "offset {}",
                o
            );
        }
        let first = s.acked.iter().next();
        prop_assert!(
            first.as_ref().is_none_or(|r| r.start > s.floor),
            "{:?}",
            first
        );
        Ok(())
    }
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (0u64..60, 0u64..8).prop_map(|(s, n)| Event::Acked(s..s + n)),
        3 => (0u64..60, 1u32..6).prop_map(|(offset, count)| Event::Delivered { offset, count }),
        1 => (0u64..60, 1u64..12).prop_map(|(offset, dlq_seq)| Event::Dead { offset, dlq_seq }),
        1 => (0u64..14).prop_map(|up_to| Event::DeadStored { up_to }),
    ]
}

proptest! {
    /// apply matches the model after every event; replaying everything again
    /// changes nothing, and any order of the events gives the same state.
    #[test]
    fn apply_matches_the_model(
        floor0 in 0u64..10,
        events in proptest::collection::vec(event(), 0..120),
        shuffled_seed in any::<u64>(),
    ) {
        let mut s = GroupState::new(floor0);
        let mut m = Model { floor0, ..Model::default() };
        for e in &events {
            s.apply(e);
            m.apply(e);
            m.check(&s)?;
        }
        let mut again = s.clone();
        for e in &events {
            again.apply(e);
        }
        prop_assert_eq!(&again, &s);
        let mut order = events.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(shuffled_seed);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let mut other = GroupState::new(floor0);
        for e in &order {
            other.apply(e);
        }
        prop_assert_eq!(&other, &s);
    }
}

#[test]
fn retain_floor_waits_for_pending_dead_letters() {
    let mut s = GroupState::new(0);
    s.apply(&Event::Acked(0..5));
    s.apply(&Event::Dead {
        offset: 5,
        dlq_seq: 1,
    });
    s.apply(&Event::Acked(6..9));
    assert_eq!(s.floor, 9);
    assert_eq!(s.retain_floor(), 5);
    s.apply(&Event::DeadStored { up_to: 1 });
    assert_eq!(s.retain_floor(), 9);
    assert!(s.dead_pending.is_empty());
    // Replaying the Dead after its DeadStored leaves it stored.
    s.apply(&Event::Dead {
        offset: 5,
        dlq_seq: 1,
    });
    assert!(s.dead_pending.is_empty());
}

// ---------------------------------------------------------------------------
// Round trips.

fn some_batches() -> Vec<Vec<Event>> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut w = Workload::new(100);
    (0..300).map(|_| w.batch(&mut rng)).collect()
}

#[test]
fn create_append_reopen() {
    let fs = SimFs::new();
    assert!(GroupStore::open(fs_of(&fs), dir(), OnDamage::Refuse)
        .unwrap()
        .is_none());
    let mut g = GroupStore::create(fs_of(&fs), dir(), 100).unwrap();
    assert_eq!(g.state(), &GroupState::new(100));
    let batches = some_batches();
    for b in &batches {
        g.append(b).unwrap();
    }
    let want = applied(&GroupState::new(100), &batches);
    assert_eq!(g.state(), &want);
    assert!(
        want.floor > 300,
        "the workload moves the floor: {}",
        want.floor
    );
    assert!(g.journal_bytes() > 0);
    let bytes = g.journal_bytes();
    drop(g);
    let g = GroupStore::open(fs_of(&fs), dir(), OnDamage::Refuse)
        .unwrap()
        .unwrap();
    assert_eq!(g.state(), &want);
    assert_eq!(g.journal_bytes(), bytes);
    // Empty appends write nothing.
    let mut g = g;
    g.append(&[]).unwrap();
    assert_eq!(g.journal_bytes(), bytes);
}

#[test]
fn compaction_then_reopen() {
    let fs = SimFs::new();
    let mut g = GroupStore::create(fs_of(&fs), dir(), 0).unwrap();
    g.set_compact_bytes(2_000);
    let batches = some_batches();
    let mut compactions = 0;
    let mut last = 0;
    for b in &batches {
        g.append(b).unwrap();
        if g.journal_bytes() < last {
            compactions += 1;
        }
        last = g.journal_bytes();
        assert!(g.journal_bytes() < 4_000, "{}", g.journal_bytes());
    }
    assert!(compactions > 3, "{compactions} compactions");
    let want = applied(&GroupState::new(0), &batches);
    assert_eq!(g.state(), &want);
    drop(g);
    let mut g = GroupStore::open(fs_of(&fs), dir(), OnDamage::Refuse)
        .unwrap()
        .unwrap();
    assert_eq!(g.state(), &want);
    // An explicit compaction leaves an empty journal and the same state.
    g.compact().unwrap();
    assert_eq!(g.journal_bytes(), 0);
    assert_eq!(fs.file_len(&dir().join("journal")), Some(0));
    drop(g);
    let g = GroupStore::open(fs_of(&fs), dir(), OnDamage::Refuse)
        .unwrap()
        .unwrap();
    assert_eq!(g.state(), &want);
}

/// Compaction interrupted after the snapshot, before the journal is emptied:
/// the old entries are ones the snapshot holds (their seqs are below its
/// journal_seq): skipped, and the journal is emptied at the open. Appends
/// after it go on in sequence and survive a reopen.
#[test]
fn a_compaction_cut_short_skips_the_entries_the_snapshot_holds() {
    let fs = SimFs::new();
    let mut g = GroupStore::create(fs_of(&fs), dir(), 0).unwrap();
    let batches = some_batches();
    let (before, after) = batches.split_at(200);
    for b in before {
        g.append(b).unwrap();
    }
    let journal = read_all(&fs, &dir().join("journal")).unwrap();
    g.compact().unwrap();
    drop(g);
    // The journal as it was before it was emptied.
    put_journal(&fs, &journal);
    let r = verify(&fs, dir());
    assert!(r.ok() && r.compaction_unfinished, "{r:?}");
    assert_eq!(r.journal_entries, 200);
    let mut g = GroupStore::open(fs_of(&fs), dir(), OnDamage::Refuse)
        .unwrap()
        .unwrap();
    assert_eq!(g.state(), &applied(&GroupState::new(0), before));
    assert_eq!(g.journal_bytes(), 0, "the compaction is finished");
    assert_eq!(fs.file_len(&dir().join("journal")), Some(0));
    for b in after {
        g.append(b).unwrap();
    }
    drop(g);
    let r = verify(&fs, dir());
    assert!(r.ok() && !r.compaction_unfinished, "{r:?}");
    assert_eq!(r.journal_entries, after.len() as u64);
    let g = GroupStore::open(fs_of(&fs), dir(), OnDamage::Refuse)
        .unwrap()
        .unwrap();
    assert_eq!(g.state(), &applied(&GroupState::new(0), &batches));
}

// ---------------------------------------------------------------------------
// Damage.

fn group_with(fs: &SimFs, batches: &[Vec<Event>]) -> u64 {
    let mut g = GroupStore::create(fs_of(fs), dir(), 0).unwrap();
    for b in batches {
        g.append(b).unwrap();
    }
    g.journal_bytes()
}

/// Replaces the journal's bytes (durably).
fn put_journal(fs: &SimFs, data: &[u8]) {
    let f = fs.open(&dir().join("journal"), false).unwrap();
    f.set_len(0).unwrap();
    f.write_all_at(data, 0).unwrap();
    f.sync_data().unwrap();
}

const ASIDE: &str = "/data/streams/s/aside";

/// Every file set aside (folder name, file name) with its bytes; the
/// manifests apart.
fn aside(fs: &SimFs) -> BTreeMap<(String, String), Vec<u8>> {
    let mut all = BTreeMap::new();
    for folder in fs.list(Path::new(ASIDE)).unwrap_or_default() {
        let d = Path::new(ASIDE).join(&folder);
        let files = fs.list(&d).unwrap();
        assert!(
            files.contains(&"MANIFEST".to_string()),
            "{folder}: {files:?}"
        );
        for f in files.into_iter().filter(|f| f != "MANIFEST") {
            let bytes = read_all(fs, &d.join(&f)).unwrap();
            all.insert((folder.clone(), f), bytes);
        }
    }
    all
}

/// The files set aside since `before` was taken.
fn new_aside(
    fs: &SimFs,
    before: &BTreeMap<(String, String), Vec<u8>>,
) -> Vec<((String, String), Vec<u8>)> {
    aside(fs)
        .into_iter()
        .filter(|(k, _)| !before.contains_key(k))
        .collect()
}

/// A crash can tear only the last entry (one write and one fdatasync each):
/// torn at any length, or any of its bytes changed, it is cut off, and
/// its bytes are set aside first (zeroes only: just cut).
#[test]
fn torn_journal_tail_is_cut_and_set_aside() {
    let batches = some_batches();
    let (keep, last) = batches.split_at(batches.len() - 1);
    let fs = SimFs::new();
    let good = group_with(&fs, keep);
    let full = {
        let mut g = GroupStore::open(fs_of(&fs), dir(), OnDamage::Refuse)
            .unwrap()
            .unwrap();
        g.append(&last[0]).unwrap();
        g.journal_bytes()
    };
    let journal = dir().join("journal");
    // Tear the last entry at every length, and damage each of its bytes.
    let data = read_all(&fs, &journal).unwrap();
    let mut cases: Vec<Vec<u8>> = (good as usize..full as usize)
        .map(|n| data[..n].to_vec())
        .collect();
    for i in good as usize..full as usize {
        let mut d = data.clone();
        d[i] ^= 0x08;
        cases.push(d);
    }
    // Zeroes (a torn write the file system filled with zeroes) and
    // garbage after the last entry.
    cases.push([&data[..], &[0; 40]].concat());
    cases.push([&data[..good as usize], &[0; 40]].concat());
    cases.push([&data[..], &[0xA5; 3]].concat());
    let want = applied(&GroupState::new(0), keep);
    let mut set_aside = 0;
    for (i, case) in cases.iter().enumerate() {
        put_journal(&fs, case);
        let (expect_len, expect) =
            if case.len() >= full as usize && case[..full as usize] == data[..] {
                (full, applied(&GroupState::new(0), &batches))
            } else {
                (good, want.clone())
            };
        let cut = &case[expect_len as usize..];
        let r = verify(&fs, dir());
        assert!(r.ok(), "case {i}: {r:?}");
        assert_eq!(r.journal_bytes, expect_len, "case {i}");
        assert_eq!(
            r.torn_tail.as_ref().map(|t| (t.at, t.bytes, t.zeroes)),
            (!cut.is_empty()).then(|| (expect_len, cut.len() as u64, cut.iter().all(|&b| b == 0))),
            "case {i}"
        );
        let before = aside(&fs);
        let mut g = GroupStore::open(fs_of(&fs), dir(), OnDamage::Refuse)
            .unwrap()
            .unwrap();
        assert_eq!(g.state(), &expect, "case {i}");
        assert_eq!(g.journal_bytes(), expect_len, "case {i}");
        assert_eq!(fs.file_len(&journal), Some(expect_len), "case {i}: cut");
        let new = new_aside(&fs, &before);
        if cut.iter().all(|&b| b == 0) {
            assert!(new.is_empty(), "case {i}: zeroes set aside: {new:?}");
        } else {
            assert_eq!(new.len(), 1, "case {i}: {new:?}");
            let ((folder, file), bytes) = &new[0];
            assert!(folder.contains("group-g-torn-journal"), "{folder}");
            assert_eq!(file, &format!("journal-from-{expect_len}"));
            assert_eq!(&bytes[..], cut, "case {i}: the bytes cut are set aside");
            set_aside += 1;
        }
        // Appending after the cut works and survives a reopen.
        if expect_len == good {
            g.append(&last[0]).unwrap();
        }
        drop(g);
        let g = GroupStore::open(fs_of(&fs), dir(), OnDamage::Refuse)
            .unwrap()
            .unwrap();
        assert_eq!(g.state(), &applied(&GroupState::new(0), &batches));
        assert_eq!(g.journal_bytes(), full);
    }
    assert!(set_aside > 2 * (full - good) as usize - 2, "{set_aside}");
}

/// The entry ends, from the journal's start.
fn entry_ends(fs: &SimFs, batches: &[Vec<Event>]) -> Vec<u64> {
    let mut g = GroupStore::create(fs_of(fs), dir(), 0).unwrap();
    batches
        .iter()
        .map(|b| {
            g.append(b).unwrap();
            g.journal_bytes()
        })
        .collect()
}

/// The error must be GroupCorrupt naming the journal and `byte`, with a
/// reason holding `why`.
fn assert_journal_refused(r: Result<Option<GroupStore>, SpoolError>, byte: u64, why: &str) {
    match r {
        Err(e @ SpoolError::GroupCorrupt { .. }) => {
            let SpoolError::GroupCorrupt {
                ref file,
                offset,
                ref reason,
                ref group,
                ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!(file, &dir().join("journal"));
            assert_eq!(offset, byte, "{e}");
            assert_eq!(group, "g");
            assert!(reason.contains(why), "{reason}");
            let msg = e.to_string();
            assert!(
                msg.contains("journal") && msg.contains(&format!("byte {byte}")),
                "{msg}"
            );
        }
        other => panic!("expected GroupCorrupt at byte {byte}, got {other:?}"),
    }
}

/// Damage in the middle of the journal (an entry that does not check out,
/// with a valid one after it) is no torn write: refused, naming the
/// journal and the byte, and nothing is changed. With repair the whole
/// journal is set aside and cut at the damage (the acks after it are
/// lost: their messages are delivered again).
#[test]
fn a_damaged_entry_followed_by_a_valid_one_is_refused_or_repaired() {
    let batches = some_batches();
    // Damage in entry k's header (length, checksum, seq) or body; the
    // first entry (k = 0) and the one before the last too.
    for (k, at) in [(101, 0), (101, 5), (101, 12), (101, 20), (0, 3), (298, 17)] {
        let fs = SimFs::new();
        let ends = entry_ends(&fs, &batches);
        let start = if k == 0 { 0 } else { ends[k - 1] };
        let journal = dir().join("journal");
        let whole = read_all(&fs, &journal).unwrap();
        fs.corrupt(&journal, start + at, 0x40);
        let damaged = read_all(&fs, &journal).unwrap();
        let r = verify(&fs, dir());
        let d = r
            .damage
            .clone()
            .unwrap_or_else(|| panic!("k {k} at {at}: {r:?}"));
        assert!(
            d.contains(&format!("byte {start}")) && d.contains("follows at byte"),
            "{d}"
        );
        assert_eq!(r.journal_bytes, start);
        assert!(r.torn_tail.is_none());
        for _ in 0..2 {
            assert_journal_refused(
                GroupStore::open(fs_of(&fs), dir(), OnDamage::Refuse),
                start,
                &format!("follows at byte {}", ends[k]),
            );
            assert_eq!(
                read_all(&fs, &journal).unwrap(),
                damaged,
                "refusing changes nothing"
            );
        }
        assert!(aside(&fs).is_empty());
        let g = GroupStore::open(fs_of(&fs), dir(), OnDamage::Repair { restart_at: 7 })
            .unwrap()
            .unwrap();
        assert_eq!(g.state(), &applied(&GroupState::new(0), &batches[..k]));
        assert_eq!(g.journal_bytes(), start);
        assert_eq!(fs.file_len(&journal), Some(start));
        let set = aside(&fs);
        assert_eq!(set.len(), 1, "{set:?}");
        let ((folder, file), bytes) = set.into_iter().next().unwrap();
        assert!(folder.contains("group-g-damaged-journal"), "{folder}");
        assert_eq!(file, "journal");
        assert_eq!(bytes, damaged, "the whole journal is set aside");
        assert_ne!(bytes, whole);
        drop(g);
        // Repaired: opens without repair, and goes on.
        let mut g = GroupStore::open(fs_of(&fs), dir(), OnDamage::Refuse)
            .unwrap()
            .unwrap();
        g.append(&batches[k]).unwrap();
        drop(g);
        assert!(verify(&fs, dir()).ok());
    }
}

/// Entries follow one another in seq: a valid entry out of sequence (one
/// missing, or one from another journal) is damage.
#[test]
fn an_entry_out_of_sequence_is_damage() {
    let batches = some_batches();
    let fs = SimFs::new();
    let ends = entry_ends(&fs, &batches);
    let journal = dir().join("journal");
    let data = read_all(&fs, &journal).unwrap();
    // Entry 50 cut out: 51 follows 49.
    let (a, b) = (ends[49] as usize, ends[50] as usize);
    put_journal(&fs, &[&data[..a], &data[b..]].concat());
    assert_journal_refused(
        GroupStore::open(fs_of(&fs), dir(), OnDamage::Refuse),
        a as u64,
        "seq 51 where 50 was expected",
    );
    // Entry 50 twice.
    put_journal(&fs, &[&data[..b], &data[a..]].concat());
    assert_journal_refused(
        GroupStore::open(fs_of(&fs), dir(), OnDamage::Refuse),
        b as u64,
        "seq 50 where 51 was expected",
    );
    // A journal that starts past the snapshot's journal_seq lost its start.
    put_journal(&fs, &data[a..]);
    assert_journal_refused(
        GroupStore::open(fs_of(&fs), dir(), OnDamage::Refuse),
        0,
        "seq 50 where at most 0",
    );
    let g = GroupStore::open(fs_of(&fs), dir(), OnDamage::Repair { restart_at: 0 })
        .unwrap()
        .unwrap();
    assert_eq!(g.state(), &GroupState::new(0));
    assert_eq!(g.journal_bytes(), 0);
}

#[test]
fn corrupt_snapshot_is_an_error_naming_it() {
    let fs = SimFs::new();
    group_with(&fs, &some_batches()[..10]);
    let snap = dir().join("snapshot");
    fs.corrupt(&snap, 7, 0x01);
    for _ in 0..2 {
        match GroupStore::open(fs_of(&fs), dir(), OnDamage::Refuse) {
            Err(e @ SpoolError::GroupCorrupt { .. }) => {
                let SpoolError::GroupCorrupt {
                    ref file,
                    ref stream,
                    ref group,
                    ..
                } = e
                else {
                    unreachable!()
                };
                assert_eq!(file, &snap);
                assert_eq!((stream.as_str(), group.as_str()), ("s", "g"));
                let msg = e.to_string();
                assert!(
                    msg.contains("snapshot") && msg.contains("consumer group g"),
                    "{msg}"
                );
            }
            other => panic!("expected GroupCorrupt, got {other:?}"),
        }
    }
    let r = verify(&fs, dir());
    assert!(
        r.exists
            && r.floor.is_none()
            && r.damage.as_deref().is_some_and(|d| d.contains("snapshot")),
        "{r:?}"
    );
    // A missing snapshot beside a journal is an error too, not a group at 0.
    fs.remove_file(&snap).unwrap();
    assert!(matches!(
        GroupStore::open(fs_of(&fs), dir(), OnDamage::Refuse),
        Err(SpoolError::GroupCorrupt { .. })
    ));
    assert!(!verify(&fs, dir()).ok());
}

/// With repair, a group whose snapshot is damaged or missing has its
/// files set aside (moved, not deleted) and starts again where it is told
/// (its cursor's floor: what it acked after is delivered again).
#[test]
fn a_lost_snapshot_is_set_aside_and_the_group_restarts_with_repair() {
    let batches = some_batches();
    for missing in [false, true] {
        let fs = SimFs::new();
        group_with(&fs, &batches[..40]);
        let snap = dir().join("snapshot");
        let journal = read_all(&fs, &dir().join("journal")).unwrap();
        if missing {
            fs.remove_file(&snap).unwrap();
        } else {
            fs.corrupt(&snap, 9, 0x10);
        }
        let old_snap = read_all(&fs, &snap).ok();
        let mut g = GroupStore::open(fs_of(&fs), dir(), OnDamage::Repair { restart_at: 42 })
            .unwrap()
            .unwrap();
        assert_eq!(g.state(), &GroupState::new(42), "missing {missing}");
        assert_eq!(g.journal_bytes(), 0);
        let set = aside(&fs);
        let names: Vec<&str> = set.keys().map(|(_, f)| f.as_str()).collect();
        assert!(
            set.keys().all(|(d, _)| d.contains("group-g-lost-snapshot")),
            "{set:?}"
        );
        let want: &[&str] = if missing {
            &["journal"]
        } else {
            &["journal", "snapshot"]
        };
        assert_eq!(names, want);
        assert!(set.values().any(|b| *b == journal));
        if let Some(old) = old_snap {
            assert!(set.values().any(|b| *b == old));
        }
        g.append(&[Event::Acked(42..45)]).unwrap();
        drop(g);
        let g = GroupStore::open(fs_of(&fs), dir(), OnDamage::Refuse)
            .unwrap()
            .unwrap();
        assert_eq!(g.state().floor, 45);
    }
}

#[test]
fn verify_reports_without_changing_anything() {
    let fs = SimFs::new();
    let r = verify(&fs, dir());
    assert_eq!((r.exists, r.floor, r.damage.clone()), (false, None, None));
    let batches = some_batches();
    let len = group_with(&fs, &batches);
    let want = applied(&GroupState::new(0), &batches);
    let r = verify(&fs, dir());
    assert!(r.exists && r.ok(), "{r:?}");
    assert_eq!(r.group, "g");
    assert_eq!(r.floor, Some(want.floor));
    assert_eq!(r.reach, Some(want.reach()));
    assert_eq!((r.journal_entries, r.journal_bytes), (300, len));
    assert!(r.torn_tail.is_none() && r.damage.is_none());
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["floor"], want.floor);
    assert!(json.get("damage").is_none(), "{json}");
    // A torn tail is reported, not cut.
    let journal = dir().join("journal");
    let data = read_all(&fs, &journal).unwrap();
    put_journal(&fs, &data[..data.len() - 3]);
    let r = verify(&fs, dir());
    assert!(r.ok(), "{r:?}");
    assert!(r.torn_tail.is_some_and(|t| !t.zeroes && t.bytes > 0));
    assert_eq!(fs.file_len(&journal), Some(len - 3));
    assert!(aside(&fs).is_empty());
}

/// A deletion cut short by a failure and a crash at any of its steps
/// leaves a group that opens (as it was, or at its snapshot) or no group:
/// never one that cannot be opened (a journal without its snapshot would
/// stop the daemon's start). One that returned Ok leaves no group.
#[test]
fn a_deletion_cut_short_leaves_a_group_or_none() {
    let batches = some_batches();
    let whole = applied(&GroupState::new(0), &batches);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut outcomes = BTreeSet::new();
    for step in 0..10 {
        for mode in [
            CrashMode::DropUnsynced,
            CrashMode::KeepPrefix,
            CrashMode::TearLastWrite,
        ] {
            let fs = SimFs::new();
            group_with(&fs, &batches);
            fs.fail_after(Some(step));
            let deleted = GroupStore::delete(&fs, dir()).is_ok();
            fs.crash(mode, &mut rng);
            let opened = GroupStore::open(fs_of(&fs), dir(), OnDamage::Refuse)
                .unwrap_or_else(|e| panic!("step {step}, {mode:?}: {e}"));
            if deleted {
                assert!(
                    opened.is_none(),
                    "step {step}, {mode:?}: deleted, yet a group"
                );
            }
            match &opened {
                Some(g) => assert!(
                    g.state() == &whole || g.state() == &GroupState::new(0),
                    "step {step}, {mode:?}: {:?}",
                    g.state()
                ),
                None => assert!(!GroupStore::exists(&fs, dir())),
            }
            outcomes.insert((deleted, opened.is_some()));
        }
    }
    // Every kind of ending was seen: failed with the group whole or gone,
    // and done.
    assert!(outcomes.contains(&(true, false)), "{outcomes:?}");
    assert!(outcomes.contains(&(false, true)), "{outcomes:?}");
}

/// An append that fails part-way leaves nothing applied, and its bytes are
/// cut off before the next one is written.
#[test]
fn failed_append_is_cut_back() {
    let batches = some_batches();
    for fail_after in 0..2 {
        let fs = SimFs::new();
        let mut g = GroupStore::create(fs_of(&fs), dir(), 0).unwrap();
        g.append(&batches[0]).unwrap();
        let before = g.state().clone();
        // 0: the write fails; 1: the write is done, the fdatasync fails.
        fs.fail_after(Some(fail_after));
        assert!(g.append(&batches[1]).is_err());
        assert_eq!(g.state(), &before);
        fs.fail_after(None);
        g.append(&batches[2]).unwrap();
        let want = applied(
            &GroupState::new(0),
            &[batches[0].clone(), batches[2].clone()],
        );
        assert_eq!(g.state(), &want);
        drop(g);
        let g = GroupStore::open(fs_of(&fs), dir(), OnDamage::Refuse)
            .unwrap()
            .unwrap();
        assert_eq!(g.state(), &want, "fail_after {fail_after}");
    }
}

#[test]
fn full_disk_applies_nothing() {
    let batches = some_batches();
    let fs = SimFs::new();
    let mut g = GroupStore::create(fs_of(&fs), dir(), 0).unwrap();
    g.append(&batches[0]).unwrap();
    let before = g.state().clone();
    fs.set_capacity(Some(
        fs.file_len(&dir().join("snapshot")).unwrap() + g.journal_bytes(),
    ));
    assert!(matches!(
        g.append(&batches[1]),
        Err(SpoolError::DiskFull { .. })
    ));
    assert_eq!(g.state(), &before);
    fs.set_capacity(None);
    g.append(&batches[1]).unwrap();
    drop(g);
    let g = GroupStore::open(fs_of(&fs), dir(), OnDamage::Refuse)
        .unwrap()
        .unwrap();
    assert_eq!(g.state(), &applied(&GroupState::new(0), &batches[..2]));
}

// ---------------------------------------------------------------------------
// Crashes.

/// Events as a group produces them: deliveries near the floor, acks mostly
/// in order with gaps, now and then a dead letter and its storing.
struct Workload {
    next: u64,
    dlq: u64,
    stored: u64,
}

impl Workload {
    fn new(floor: u64) -> Self {
        Workload {
            next: floor,
            dlq: 0,
            stored: 0,
        }
    }

    fn resume(s: &GroupState) -> Self {
        Workload {
            next: s.floor + s.acked.iter().last().map_or(0, |r| r.end - s.floor),
            dlq: s.dlq_seq,
            stored: s.dlq_stored,
        }
    }

    fn batch(&mut self, rng: &mut impl Rng) -> Vec<Event> {
        let mut b = Vec::new();
        for _ in 0..rng.random_range(1..8) {
            let e = match rng.random_range(0..10) {
                0..=3 => {
                    let n = rng.random_range(1..6);
                    self.next += n;
                    let back = rng.random_range(0..12).min(self.next);
                    let start = self.next - back;
                    Event::Acked(start..start + rng.random_range(1..4))
                }
                4..=6 => Event::Delivered {
                    offset: self.next + rng.random_range(0..10),
                    count: rng.random_range(1..5),
                },
                7 => {
                    self.dlq += 1;
                    Event::Dead {
                        offset: self.next + rng.random_range(0..10),
                        dlq_seq: self.dlq,
                    }
                }
                8 if self.dlq > self.stored => {
                    self.stored = rng.random_range(self.stored + 1..=self.dlq);
                    Event::DeadStored { up_to: self.stored }
                }
                _ => Event::Acked(0..self.next.saturating_sub(15)),
            };
            b.push(e);
        }
        b
    }
}

#[derive(Default, Debug)]
struct Totals {
    ok_batches: u64,
    crashes: u64,
    failed_batch_kept: u64,
    failed_batch_lost: u64,
    created_lost: u64,
    compactions: u64,
    torn_tails: u64,
}

fn run_seed(seed: u64) -> Result<Totals, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let fs = SimFs::new();
    let mut totals = Totals::default();
    let compact = rng.random_range(200..3_000);
    let floor = rng.random_range(0..1_000);
    let modes = [
        CrashMode::DropUnsynced,
        CrashMode::KeepPrefix,
        CrashMode::TearLastWrite,
        CrashMode::FlipBits,
    ];
    let crash = |fs: &SimFs, rng: &mut ChaCha8Rng, totals: &mut Totals| {
        fs.crash(modes[rng.random_range(0..modes.len())], rng);
        totals.crashes += 1;
    };
    // Creation, possibly cut short: afterwards there is no group or a new one.
    let mut store = loop {
        fs.fail_after(Some(rng.random_range(0..30)));
        let created = GroupStore::create(fs_of(&fs), dir(), floor);
        let ok = created.is_ok();
        drop(created);
        crash(&fs, &mut rng, &mut totals);
        match GroupStore::open(fs_of(&fs), dir(), OnDamage::Refuse) {
            Ok(Some(g)) => {
                if g.state() != &GroupState::new(floor) {
                    return Err(format!("created group recovered as {:?}", g.state()));
                }
                break g;
            }
            Ok(None) if ok => return Err("a created group vanished".into()),
            Ok(None) => totals.created_lost += 1,
            Err(e) => return Err(format!("recovery after create failed: {e}")),
        }
    };
    for _round in 0..rng.random_range(1..6) {
        store.set_compact_bytes(compact);
        let base = store.state().clone();
        let mut work = Workload::resume(&base);
        let mut ok: Vec<Vec<Event>> = Vec::new();
        let mut failed = None;
        let mut last_len = store.journal_bytes();
        fs.fail_after(Some(rng.random_range(0..80)));
        for _ in 0..rng.random_range(1..40) {
            let b = work.batch(&mut rng);
            match store.append(&b) {
                Ok(()) => {
                    if store.journal_bytes() < last_len {
                        totals.compactions += 1;
                    }
                    last_len = store.journal_bytes();
                    ok.push(b);
                    totals.ok_batches += 1;
                    if store.state() != &applied(&base, &ok) {
                        return Err("state after append is not base + batches".into());
                    }
                }
                Err(_) => {
                    if store.state() != &applied(&base, &ok) {
                        return Err("a failed append changed the state".into());
                    }
                    failed = Some(b);
                    break; // the power went
                }
            }
        }
        drop(store);
        crash(&fs, &mut rng, &mut totals);
        // What a crash leaves is never taken for damage.
        let report = verify(&fs, dir());
        if !report.ok() {
            return Err(format!("a crash left what verify calls damage: {report:?}"));
        }
        if report.torn_tail.is_some() {
            totals.torn_tails += 1;
        }
        store = match GroupStore::open(fs_of(&fs), dir(), OnDamage::Refuse) {
            Ok(Some(g)) => g,
            Ok(None) => return Err("the group vanished".into()),
            Err(e) => return Err(format!("recovery failed: {e}")),
        };
        // Every acked batch, and the failed one wholly or not at all.
        let with_ok = applied(&base, &ok);
        let with_failed = failed
            .as_ref()
            .map(|f| applied(&with_ok, std::slice::from_ref(f)));
        if store.state() == &with_ok {
            if failed.is_some() {
                totals.failed_batch_lost += 1;
            }
        } else if with_failed.as_ref() == Some(store.state()) {
            totals.failed_batch_kept += 1;
        } else {
            return Err(format!(
                "recovered state is no prefix of the batches ({} acked):\n got {:?}\nwant {:?}",
                ok.len(),
                store.state(),
                with_ok
            ));
        }
    }
    Ok(totals)
}

#[test]
fn acked_batches_survive_every_simulated_crash_whole() {
    let mut total = Totals::default();
    let Some(seeds) = support::run_seeds("JOURNAL_SEED", 2000, "group_store", run_seed, |t| {
        total.ok_batches += t.ok_batches;
        total.crashes += t.crashes;
        total.failed_batch_kept += t.failed_batch_kept;
        total.failed_batch_lost += t.failed_batch_lost;
        total.created_lost += t.created_lost;
        total.compactions += t.compactions;
        total.torn_tails += t.torn_tails;
    }) else {
        return;
    };
    eprintln!("{seeds} seeds: {total:?}");
    // The simulation must reach every case it claims to test.
    assert!(total.ok_batches > 0 && total.crashes > seeds);
    assert!(total.failed_batch_kept > 0, "{total:?}");
    assert!(total.failed_batch_lost > 0, "{total:?}");
    assert!(total.created_lost > 0, "{total:?}");
    assert!(total.compactions > seeds, "{total:?}");
    assert!(total.torn_tails > seeds / 10, "{total:?}");
}
