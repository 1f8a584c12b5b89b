//! Deterministic simulation of a consumer group: members join, leave (or
//! go without handing back), change their windows, take messages within
//! their credit, ack, nack, extend, or sit on them
//! past the deadline, in an order drawn from a seed; the daemon "crashes"
//! now and then and the group restarts from what its journal held.
//!
//! Checked for every seed:
//! - a message is out with at most one member at a time, and a member never
//!   holds more than its credit;
//! - each delivery carries the count of deliveries before it plus one
//!   (after a crash, of those the journal held: first deliveries are not
//!   journaled);
//! - a message is dead-lettered only after `max_deliveries` failed
//!   deliveries, and is never delivered after that; one out for its last
//!   delivery when the daemon crashed gets one more (the crash is not held
//!   against it);
//! - an ack that was journaled is never undone by a crash: that message is
//!   not delivered again;
//! - with a backlog limit (`on_backlog = "drop_oldest"`), after a drop the
//!   backlog is within the limit or all out with members; a dropped
//!   message was not out, not done, and is never delivered after;
//! - in the end, with a member that acks everything, every message is acked
//!   or dead-lettered and the floor reaches the end;
//! - after every step of a turn, the machine's own rules ([`Group::check`]:
//!   its counts, queues and timers agree with its messages, the floor only
//!   moves forward).
//!
//! `GROUP_SEEDS=n` sets the number of seeds (default 500); `GROUP_SEED=s`
//! replays one.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_daemon::consume::group::{Credit, Delivery, Group, GroupConfig, KeyRule};
use sluice_daemon::consume::store::GroupState;
use sluice_daemon::spool::Record;

const MAX_DELIVERIES: u32 = 3;

fn record(offset: u64) -> (u64, Record) {
    (
        offset,
        Record {
            producer: offset % 4,
            seq: offset + 1,
            timestamp_us: offset,
            payload: Bytes::from(format!("k{}=v{offset}", offset % 5)),
            key: None,
        },
    )
}

/// A push member's window: 1 to 7 messages, and now and then a byte
/// bound that a single message may pass.
fn window(rng: &mut ChaCha8Rng) -> Credit {
    Credit::Window {
        messages: rng.random_range(1..8),
        bytes: if rng.random_bool(0.3) {
            rng.random_range(1..30)
        } else {
            u64::MAX
        },
    }
}

fn window_messages(c: Credit) -> u32 {
    match c {
        Credit::Window { messages, .. } => messages,
        Credit::Fetch { .. } => unreachable!("push members only"),
    }
}

struct Model {
    /// offset → the member holding it, until when.
    out: HashMap<u64, (u64, Instant)>,
    /// Deliveries seen per offset.
    deliveries: HashMap<u64, u32>,
    /// Acked offsets that were journaled (must never come back).
    durable_acks: BTreeSet<u64>,
    /// Acks not yet journaled.
    acks: BTreeSet<u64>,
    dead: BTreeSet<u64>,
    /// Given up at the backlog limit.
    dropped: BTreeSet<u64>,
    /// Offsets that were out for their last delivery when the daemon
    /// crashed: the crash is not held against them, they get one more.
    last_chance: BTreeSet<u64>,
    windows: HashMap<u64, u32>,
    held: HashMap<u64, u32>,
}

fn run(seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let conflate = rng.random_bool(0.2);
    let config = GroupConfig {
        ack_deadline: Duration::from_millis(rng.random_range(50..500)),
        max_deliveries: MAX_DELIVERIES,
        read_ahead: rng.random_range(1..64),
        read_ahead_bytes: rng.random_range(1..300),
        conflate: conflate.then_some(KeyRule::Delimiter(b'=')),
        ..GroupConfig::default()
    };
    let total: u64 = rng.random_range(1..400);
    let keep: Option<u64> = rng.random_bool(0.2).then(|| rng.random_range(0..40));
    let mut journal = GroupState::new(0);
    let mut group = Group::new(config.clone(), &journal);
    let mut now = Instant::now();
    let mut end = 0u64;
    let mut next_member = 1u64;
    let mut members: Vec<u64> = Vec::new();
    let mut m = Model {
        out: HashMap::new(),
        deliveries: HashMap::new(),
        durable_acks: BTreeSet::new(),
        acks: BTreeSet::new(),
        dead: BTreeSet::new(),
        dropped: BTreeSet::new(),
        last_chance: BTreeSet::new(),
        windows: HashMap::new(),
        held: HashMap::new(),
    };
    let mut floor = 0;
    let steps = rng.random_range(50..600);
    for step in 0..steps + 2000 {
        let draining = step >= steps;
        // The stream grows.
        if end < total && rng.random_bool(0.5) {
            end = (end + rng.random_range(1..20)).min(total);
        }
        group.set_end(end);
        group.check();
        let (want, _) = group.wants();
        if want > 0 {
            let from = group.next_read();
            let n = rng.random_range(1..=want as u64);
            group.offer((from..from + n).map(record).collect());
            group.check();
        }
        // Members come and go (in the drain, one steady member acks all).
        if draining {
            if members.is_empty() {
                let id = next_member;
                next_member += 1;
                members.push(id);
                m.windows.insert(id, 16);
                group.join(
                    id,
                    format!("m{id}"),
                    Credit::Window {
                        messages: 16,
                        bytes: u64::MAX,
                    },
                );
            }
        } else if members.len() < 4 && rng.random_bool(0.05) {
            let id = next_member;
            next_member += 1;
            let credit = window(&mut rng);
            members.push(id);
            m.windows.insert(id, window_messages(credit));
            group.join(id, format!("m{id}"), credit);
            group.check();
        } else if !members.is_empty() && rng.random_bool(0.03) {
            // A member changes its window, maybe below what it holds.
            let id = members[rng.random_range(0..members.len())];
            let credit = window(&mut rng);
            m.windows.insert(id, window_messages(credit));
            group.set_credit(id, credit);
            group.check();
        } else if !members.is_empty() && rng.random_bool(0.02) {
            let id = members.swap_remove(rng.random_range(0..members.len()));
            if rng.random_bool(0.7) {
                group.leave(id, now);
                m.out.retain(|_, (holder, _)| *holder != id);
            } else {
                // Gone without handing back: what it holds stays out
                // until acked or its deadline.
                group.detach(id);
            }
            group.check();
            m.held.remove(&id);
        }
        now += Duration::from_millis(rng.random_range(0..40));
        // The task reads back the records of messages ready again (a
        // delivery took them), sometimes a turn late: none may go out
        // before.
        group.check();
        group.tick(now);
        group.check();
        if rng.random_bool(0.8) {
            for o in group.unloaded() {
                group.restore(o, Some(record(o).1));
                group.check();
            }
        }
        let unloaded = group.unloaded();
        let delivered: Vec<Delivery> = group.dispatch(now);
        group.check();
        for d in &delivered {
            assert!(
                !unloaded.contains(&d.offset),
                "seed {seed}: {} went out before its record was read back",
                d.offset
            );
            assert_eq!(d.record, record(d.offset).1, "seed {seed}: wrong record");
        }
        expire(&mut m, now);
        for d in &delivered {
            check_delivery(&mut m, d, seed);
        }
        // Members act on what they hold.
        let mut holding: Vec<(u64, u64)> = m.out.iter().map(|(&o, &(h, _))| (o, h)).collect();
        holding.sort_unstable();
        for (offset, holder) in holding {
            let p: f64 = rng.random();
            if draining || p < 0.3 {
                group.ack(&[offset]);
                release(&mut m, offset);
                m.acks.insert(offset);
            } else if p < 0.35 {
                let delay = Duration::from_millis(rng.random_range(0..100));
                group.nack(Some(holder), &[offset], delay, now);
                release(&mut m, offset);
            } else if p < 0.38 {
                group.extend(Some(holder), &[offset], Duration::from_millis(300), now);
                m.out
                    .insert(offset, (holder, now + Duration::from_millis(300)));
            }
            // else: sits on it, maybe past its deadline.
            group.check();
        }
        // Deadlines that passed hand messages back.
        group.tick(now);
        group.check();
        expire(&mut m, now);
        // The group's task drops the oldest at its backlog limit.
        if let Some(keep) = keep.filter(|_| !draining) {
            for o in group.drop_oldest(keep).into_iter().flatten() {
                assert!(
                    !m.out.contains_key(&o),
                    "seed {seed}: {o} dropped while out"
                );
                assert!(
                    !m.durable_acks.contains(&o) && !m.acks.contains(&o) && !m.dead.contains(&o),
                    "seed {seed}: {o} dropped when done"
                );
                assert!(m.dropped.insert(o), "seed {seed}: {o} dropped twice");
            }
            group.check();
            assert!(
                group.backlog() <= keep.max(group.out() as u64),
                "seed {seed}: backlog {} after a drop to {keep} with {} out",
                group.backlog(),
                group.out()
            );
        }
        // Journal what happened (the service does it after every round).
        let (events, dead) = group.take_events();
        group.check();
        for e in &events {
            journal.apply(e);
        }
        for d in &dead {
            assert!(
                m.deliveries[&d.offset] >= MAX_DELIVERIES,
                "seed {seed}: {} dead after {} deliveries",
                d.offset,
                m.deliveries[&d.offset]
            );
            assert!(m.dead.insert(d.offset), "seed {seed}: dead twice");
            assert!(
                !m.out.contains_key(&d.offset),
                "seed {seed}: dead while out"
            );
        }
        m.durable_acks.extend(std::mem::take(&mut m.acks));
        assert!(group.floor() >= floor, "seed {seed}: floor went back");
        floor = group.floor();
        assert_eq!(
            journal.floor,
            group.floor(),
            "seed {seed}: journal and machine disagree"
        );
        // A crash: the machine restarts from its journal alone.
        if !draining && rng.random_bool(0.01) {
            group = Group::new(config.clone(), &journal);
            group.check();
            members.clear();
            m.out.clear();
            m.held.clear();
            // What the journal did not hold is forgotten: first
            // deliveries are not journaled.
            for o in group.floor()..end {
                if !journal.is_done(o) {
                    let known = journal.deliveries.get(&o).copied().unwrap_or(0);
                    m.deliveries.insert(o, known);
                    if known >= MAX_DELIVERIES {
                        m.last_chance.insert(o);
                    }
                }
            }
        }
        if draining && end == total && group.floor() == total {
            for o in 0..total {
                assert!(journal.is_done(o), "seed {seed}: {o} not done");
            }
            return;
        }
    }
    panic!(
        "seed {seed}: the drain did not finish: floor {} of {total}, conflate {conflate}",
        group.floor()
    );
}

fn release(m: &mut Model, offset: u64) {
    if let Some((h, _)) = m.out.remove(&offset) {
        if let Some(n) = m.held.get_mut(&h) {
            *n -= 1;
        }
    }
}

/// Messages whose deadline passed are back with the group.
fn expire(m: &mut Model, now: Instant) {
    let late: Vec<u64> = m
        .out
        .iter()
        .filter(|(_, (_, d))| *d <= now)
        .map(|(&o, _)| o)
        .collect();
    for o in late {
        release(m, o);
    }
}

fn check_delivery(m: &mut Model, d: &Delivery, seed: u64) {
    assert!(
        !m.durable_acks.contains(&d.offset) && !m.acks.contains(&d.offset),
        "seed {seed}: acked offset {} delivered again",
        d.offset
    );
    assert!(
        !m.dead.contains(&d.offset),
        "seed {seed}: dead {} delivered",
        d.offset
    );
    assert!(
        !m.dropped.contains(&d.offset),
        "seed {seed}: dropped {} delivered",
        d.offset
    );
    assert!(
        !m.out.contains_key(&d.offset),
        "seed {seed}: {} delivered while out with member {}",
        d.offset,
        m.out[&d.offset].0
    );
    let seen = m.deliveries.entry(d.offset).or_insert(0);
    assert!(
        d.delivery == *seen + 1,
        "seed {seed}: offset {} delivery {} after {} seen",
        d.offset,
        d.delivery,
        seen
    );
    *seen += 1;
    assert!(
        d.delivery <= MAX_DELIVERIES || m.last_chance.contains(&d.offset),
        "seed {seed}: delivered {} times",
        d.delivery
    );
    m.out.insert(d.offset, (d.member, d.deadline));
    let held = m.held.entry(d.member).or_insert(0);
    *held += 1;
    assert!(
        *held <= m.windows[&d.member],
        "seed {seed}: member {} holds {} over its window {}",
        d.member,
        held,
        m.windows[&d.member]
    );
}

#[test]
fn groups_keep_their_rules_under_any_interleaving() {
    if let Ok(s) = std::env::var("GROUP_SEED") {
        run(s.parse().expect("GROUP_SEED is a number"));
        return;
    }
    let seeds: u64 = std::env::var("GROUP_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    for seed in 0..seeds {
        run(seed);
    }
}
