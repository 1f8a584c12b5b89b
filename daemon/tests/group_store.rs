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
use sluice_daemon::consume::store::{Event, GroupState, GroupStore};
use sluice_daemon::spool::fs::SpoolFs;
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
    assert!(GroupStore::open(fs_of(&fs), dir()).unwrap().is_none());
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
    let g = GroupStore::open(fs_of(&fs), dir()).unwrap().unwrap();
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
    let mut g = GroupStore::open(fs_of(&fs), dir()).unwrap().unwrap();
    assert_eq!(g.state(), &want);
    // An explicit compaction leaves an empty journal and the same state.
    g.compact().unwrap();
    assert_eq!(g.journal_bytes(), 0);
    assert_eq!(fs.file_len(&dir().join("journal")), Some(0));
    drop(g);
    let g = GroupStore::open(fs_of(&fs), dir()).unwrap().unwrap();
    assert_eq!(g.state(), &want);
}

/// Compaction interrupted after the snapshot, before the journal is emptied:
/// the old entries are replayed over the snapshot, to the same state.
#[test]
fn journal_replayed_over_a_newer_snapshot() {
    let fs = SimFs::new();
    let mut g = GroupStore::create(fs_of(&fs), dir(), 0).unwrap();
    let batches = some_batches();
    for b in &batches {
        g.append(b).unwrap();
    }
    let journal = sluice_daemon::spool::fs::read_all(&fs, &dir().join("journal")).unwrap();
    g.compact().unwrap();
    drop(g);
    let f = fs.open(&dir().join("journal"), false).unwrap();
    f.write_all_at(&journal, 0).unwrap();
    f.sync_data().unwrap();
    drop(f);
    let g = GroupStore::open(fs_of(&fs), dir()).unwrap().unwrap();
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

#[test]
fn torn_journal_tail_is_cut() {
    let batches = some_batches();
    let (keep, last) = batches.split_at(batches.len() - 1);
    let fs = SimFs::new();
    let good = group_with(&fs, keep);
    let full = {
        let mut g = GroupStore::open(fs_of(&fs), dir()).unwrap().unwrap();
        g.append(&last[0]).unwrap();
        g.journal_bytes()
    };
    let journal = dir().join("journal");
    // Tear the last entry at every length, and damage each of its bytes.
    let data = sluice_daemon::spool::fs::read_all(&fs, &journal).unwrap();
    let mut cases: Vec<Vec<u8>> = (good as usize..full as usize)
        .map(|n| data[..n].to_vec())
        .collect();
    for i in good as usize..full as usize {
        let mut d = data.clone();
        d[i] ^= 0x08;
        cases.push(d);
    }
    // Garbage and zeroes after the last entry.
    cases.push([&data[..], &[0; 40]].concat());
    cases.push([&data[..], &[0xA5; 3]].concat());
    let want = applied(&GroupState::new(0), keep);
    for (i, case) in cases.iter().enumerate() {
        let f = fs.open(&journal, false).unwrap();
        f.set_len(0).unwrap();
        f.write_all_at(case, 0).unwrap();
        f.sync_data().unwrap();
        drop(f);
        let mut g = GroupStore::open(fs_of(&fs), dir()).unwrap().unwrap();
        let expect_len = if case.len() > full as usize {
            full
        } else {
            good
        };
        let expect = if case.len() > full as usize {
            applied(&GroupState::new(0), &batches)
        } else {
            want.clone()
        };
        assert_eq!(g.state(), &expect, "case {i}");
        assert_eq!(g.journal_bytes(), expect_len, "case {i}");
        assert_eq!(fs.file_len(&journal), Some(expect_len), "case {i}: cut");
        // Appending after the cut works and survives a reopen.
        g.append(&last[0]).unwrap();
        drop(g);
        let g = GroupStore::open(fs_of(&fs), dir()).unwrap().unwrap();
        assert_eq!(g.state(), &applied(&GroupState::new(0), &batches));
        // Put the full journal back for the next case.
        let f = fs.open(&journal, false).unwrap();
        f.set_len(0).unwrap();
        f.write_all_at(&data, 0).unwrap();
        f.sync_data().unwrap();
    }
}

/// Damage in the middle of the journal cuts everything from there on
/// (those acks are lost: their messages are delivered again).
#[test]
fn corrupt_journal_entry_cuts_the_rest() {
    let batches = some_batches();
    let fs = SimFs::new();
    let mut g = GroupStore::create(fs_of(&fs), dir(), 0).unwrap();
    let mut ends = Vec::new();
    for b in &batches {
        g.append(b).unwrap();
        ends.push(g.journal_bytes());
    }
    drop(g);
    let k = 100;
    fs.corrupt(&dir().join("journal"), ends[k] + 9, 0x40); // in entry k+1's body
    let g = GroupStore::open(fs_of(&fs), dir()).unwrap().unwrap();
    assert_eq!(g.state(), &applied(&GroupState::new(0), &batches[..=k]));
    assert_eq!(g.journal_bytes(), ends[k]);
}

#[test]
fn corrupt_snapshot_is_an_error_naming_it() {
    let fs = SimFs::new();
    group_with(&fs, &some_batches()[..10]);
    let snap = dir().join("snapshot");
    fs.corrupt(&snap, 7, 0x01);
    for _ in 0..2 {
        match GroupStore::open(fs_of(&fs), dir()) {
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
    // A missing snapshot beside a journal is an error too, not a group at 0.
    fs.remove_file(&snap).unwrap();
    assert!(matches!(
        GroupStore::open(fs_of(&fs), dir()),
        Err(SpoolError::GroupCorrupt { .. })
    ));
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
            let opened = GroupStore::open(fs_of(&fs), dir())
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
        let g = GroupStore::open(fs_of(&fs), dir()).unwrap().unwrap();
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
    let g = GroupStore::open(fs_of(&fs), dir()).unwrap().unwrap();
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
        match GroupStore::open(fs_of(&fs), dir()) {
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
        store = match GroupStore::open(fs_of(&fs), dir()) {
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
}
