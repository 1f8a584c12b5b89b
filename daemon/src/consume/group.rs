//! One consumer group's state machine, sans-IO.
//!
//! The group task feeds it records read from the spool, the members' acks,
//! nacks and credit, and the time; it answers with deliveries (which member
//! gets which message), the events to journal, and the messages to move to
//! the dead-letter stream. It reads no clock and touches no file, so the
//! simulation tests can drive it through any interleaving from a seed.
//!
//! Rules it keeps:
//! - a message is out with at most one member at a time;
//! - a member never holds more than its credit (messages and bytes; one
//!   message always fits an empty window, so a message larger than the
//!   byte window cannot stall the group);
//! - a message out past its ack deadline, nacked, or held by a member that
//!   left is delivered again, unless it has been delivered `max_deliveries`
//!   times: then it goes to the dead-letter stream and the group goes on;
//! - the floor (every offset below it done) only moves forward.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::dead_letter::AttemptOutcome;
use super::offset_map::OffsetMap;
use super::ranges::RangeSet;
use super::store::{Event, GroupState};
use crate::spool::Record;
use sluice_transport::offsets::ranges_of;

pub type MemberId = u64;

/// Delivery attempts a message keeps for its dead letter (the latest ones).
pub const MAX_HISTORY: usize = 32;

/// How a conflating group tells which messages supersede each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRule {
    /// One key per producer id.
    Producer,
    /// The first N bytes of the payload.
    Prefix(usize),
    /// The payload up to (not including) the first occurrence of a byte;
    /// the whole payload if it has none.
    Delimiter(u8),
}

impl KeyRule {
    fn key(&self, r: &Record) -> Key {
        match self {
            KeyRule::Producer => Key::Producer(r.producer),
            KeyRule::Prefix(n) => Key::Bytes(r.payload.slice(..r.payload.len().min(*n))),
            KeyRule::Delimiter(d) => {
                let end = r
                    .payload
                    .iter()
                    .position(|b| b == d)
                    .unwrap_or(r.payload.len());
                Key::Bytes(r.payload.slice(..end))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Producer(u64),
    Bytes(Bytes),
}

/// A group's settings.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// How long a member may hold a message before it is delivered again.
    pub ack_deadline: Duration,
    /// Longest deadline a member may ask for with an extension.
    pub max_ack_extension: Duration,
    /// Deliveries after which a failed message is dead-lettered.
    pub max_deliveries: u32,
    /// Records read ahead of delivery, at most, and their payload bytes
    /// (bounds memory: one read may pass the byte bound by one batch).
    pub read_ahead: usize,
    pub read_ahead_bytes: u64,
    /// Deliver only the newest message per key of what has piled up.
    pub conflate: Option<KeyRule>,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            ack_deadline: Duration::from_secs(30),
            max_ack_extension: Duration::from_secs(12 * 3600),
            max_deliveries: 5,
            read_ahead: 4096,
            read_ahead_bytes: 16 << 20,
            conflate: None,
        }
    }
}

/// What a member may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credit {
    /// Push: at most this many messages and bytes out (not acked) at once.
    Window { messages: u32, bytes: u64 },
    /// Pull: this many more messages in the open fetch (0: none open).
    Fetch { left: u32 },
}

struct Member {
    name: String,
    credit: Credit,
    out_messages: u32,
    out_bytes: u64,
}

impl Member {
    fn can_take(&self, len: u64) -> bool {
        match self.credit {
            Credit::Window { messages, bytes } => {
                self.out_messages < messages
                    && (self.out_messages == 0 || self.out_bytes + len <= bytes)
            }
            Credit::Fetch { left } => left > 0,
        }
    }
}

/// One delivery attempt, for the dead-letter history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub at: Instant,
    pub member: String,
    pub outcome: AttemptOutcome,
}

/// Where a read message stands.
enum Place {
    /// Out with a member until the deadline.
    Out { member: MemberId, deadline: Instant },
    /// Waiting to be delivered (again) now.
    Ready,
    /// Waiting to be delivered again from this time on (a delayed nack).
    Delayed { due: Instant },
}

struct Pending {
    /// The record while the message waits to go out. A delivery takes it:
    /// a member may work on a message for hours, and its payload is not
    /// kept here meanwhile. A message that is ready again gets it back
    /// from the spool first (see [`Group::unloaded`]).
    record: Option<Record>,
    /// Payload bytes, and when it was stored (unix µs).
    len: u64,
    timestamp_us: u64,
    /// Deliveries so far.
    deliveries: u32,
    place: Place,
    /// Failed attempts.
    history: Vec<Attempt>,
}

/// A message handed to a member.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub member: MemberId,
    pub offset: u64,
    /// 1 on the first delivery.
    pub delivery: u32,
    pub deadline: Instant,
    pub record: Record,
}

/// A message to move to the dead-letter stream, once the event that
/// dead-lettered it is durable (its record is read from the spool then).
#[derive(Debug, Clone)]
pub struct DeadOut {
    pub offset: u64,
    pub dlq_seq: u64,
    pub deliveries: u32,
    pub reason: String,
    pub history: Vec<Attempt>,
}

/// Counters a group keeps (totals since the daemon started).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupCounters {
    pub delivered: u64,
    pub redelivered: u64,
    pub acked: u64,
    pub nacked: u64,
    pub expired: u64,
    pub dead_lettered: u64,
    pub conflated: u64,
    /// Records retention deleted before the group read them.
    pub lost_to_retention: u64,
}

/// A consumer group.
pub struct Group {
    config: GroupConfig,
    /// Every offset below is done.
    floor: u64,
    /// Done offsets at or above the floor.
    done: RangeSet,
    /// Next offset to read from the spool.
    next: u64,
    /// Offset after the last durable record of the stream.
    end: u64,
    /// Delivery counts recovered from the journal, for offsets not read yet.
    recovered: BTreeMap<u64, u32>,
    dlq_seq: u64,
    /// Messages read and not done. (A hash map, not an ordered one: every
    /// message passes through it, and the oldest is always the floor.)
    pending: OffsetMap<Pending>,
    /// Payload bytes of `pending`.
    pending_bytes: u64,
    /// Ready offsets as read from the spool, in order. An entry whose
    /// message is no longer ready (acked before it went out) is skipped
    /// when it comes up: removing it from the middle would cost more.
    fresh: VecDeque<u64>,
    /// Ready offsets that were out before (nacked, expired, handed back):
    /// few, and they go first.
    again: BTreeSet<u64>,
    /// Of those, the ones whose record must be read back from the spool
    /// before they can go out.
    unloaded: BTreeSet<u64>,
    /// Ready messages (in `fresh` or `again`) and their payload bytes.
    ready_count: usize,
    ready_bytes: u64,
    /// Waiting offsets due later, by due time.
    delayed: BTreeSet<(Instant, u64)>,
    /// Out offsets by deadline: those with the group's ack deadline in
    /// the order they went out, which is deadline order. An entry whose
    /// message was acked meanwhile is dropped when it reaches the front
    /// (acks come nearly in order, so that is soon) or by `compact`.
    timeline: VecDeque<(Instant, u64)>,
    /// Out offsets whose deadline came otherwise (extended), by deadline.
    extended: BTreeSet<(Instant, u64)>,
    /// Messages out with members.
    out_count: usize,
    members: BTreeMap<MemberId, Member>,
    /// The member served last (round robin).
    last_served: MemberId,
    /// Done offsets not journaled yet, and other events.
    unjournaled_done: RangeSet,
    events: Vec<Event>,
    dead: Vec<DeadOut>,
    counters: GroupCounters,
}

impl Group {
    /// A group as its journal left it.
    pub fn new(config: GroupConfig, state: &GroupState) -> Group {
        Group {
            config,
            floor: state.floor,
            done: state.acked.clone(),
            next: state.floor,
            end: state.floor,
            recovered: state.deliveries.clone(),
            dlq_seq: state.dlq_seq,
            pending: OffsetMap::default(),
            pending_bytes: 0,
            fresh: VecDeque::new(),
            again: BTreeSet::new(),
            unloaded: BTreeSet::new(),
            ready_count: 0,
            ready_bytes: 0,
            delayed: BTreeSet::new(),
            timeline: VecDeque::new(),
            extended: BTreeSet::new(),
            out_count: 0,
            members: BTreeMap::new(),
            last_served: 0,
            unjournaled_done: RangeSet::new(),
            events: Vec::new(),
            dead: Vec::new(),
            counters: GroupCounters::default(),
        }
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Next offset to read.
    pub fn next_read(&self) -> u64 {
        self.next
    }

    pub fn counters(&self) -> &GroupCounters {
        &self.counters
    }

    /// Messages not done: the group's backlog.
    pub fn backlog(&self) -> u64 {
        // Done offsets all lie in floor..end.
        self.end
            .saturating_sub(self.floor)
            .saturating_sub(self.done.len())
    }

    /// Messages out with members.
    pub fn out(&self) -> usize {
        self.out_count
    }

    /// Payload bytes of messages read and not done.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// Append time of the oldest message not done, if it has been read
    /// (the floor is always read when anything past it is).
    pub fn oldest_pending_us(&self) -> Option<u64> {
        self.pending.get(self.floor).map(|p| p.timestamp_us)
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Credit the members have left, in messages (a pull member: what its
    /// open fetch may still take).
    pub fn free_credit(&self) -> u64 {
        self.members
            .values()
            .map(|m| match m.credit {
                Credit::Window { messages, .. } => messages.saturating_sub(m.out_messages) as u64,
                Credit::Fetch { left } => left as u64,
            })
            .sum()
    }

    /// Tells the group where the stream's durable end is.
    pub fn set_end(&mut self, end: u64) {
        self.end = self.end.max(end);
    }

    /// How many records, and at most how many payload bytes (always at
    /// least one record's worth), the group wants read now, from
    /// [`next_read`](Self::next_read).
    pub fn wants(&self) -> (usize, u64) {
        // Nobody to deliver to: nothing is read ahead (a group nobody
        // consumes holds no payloads, however many groups there are).
        if self.members.is_empty()
            || self.next >= self.end
            || self.ready_bytes >= self.config.read_ahead_bytes
        {
            return (0, 0);
        }
        let room = self.config.read_ahead.saturating_sub(self.ready_count);
        let records = room.min((self.end - self.next) as usize);
        (records, self.config.read_ahead_bytes - self.ready_bytes)
    }

    /// Records read from the spool, in offset order from `next_read`
    /// (an offset past it means retention deleted the ones between). With
    /// conflation, of the records given in one call only the newest per
    /// key is kept: a group that keeps up reads one record at a time and
    /// gets every one; one that fell behind reads many and gets the latest.
    pub fn offer(&mut self, records: Vec<(u64, Record)>) {
        let keep: Option<HashMap<Key, u64>> = self.config.conflate.as_ref().map(|rule| {
            let mut last = HashMap::new();
            for (offset, r) in &records {
                if !self.done.contains(*offset) && *offset >= self.floor {
                    last.insert(rule.key(r), *offset);
                }
            }
            last
        });
        for (offset, record) in records {
            if offset < self.next {
                continue;
            }
            if offset > self.next {
                let lost = offset - self.next;
                self.counters.lost_to_retention += lost;
                self.mark_done(self.next..offset);
            }
            self.next = offset + 1;
            self.end = self.end.max(self.next);
            if offset < self.floor || self.done.contains(offset) {
                continue;
            }
            if let (Some(keep), Some(rule)) = (&keep, &self.config.conflate) {
                if keep.get(&rule.key(&record)) != Some(&offset) {
                    self.counters.conflated += 1;
                    self.mark_done(offset..offset + 1);
                    continue;
                }
            }
            let deliveries = if self.recovered.is_empty() {
                0
            } else {
                self.recovered.remove(&offset).unwrap_or(0)
            };
            let len = record.payload.len() as u64;
            self.pending_bytes += len;
            self.pending.insert(
                offset,
                Pending {
                    len,
                    timestamp_us: record.timestamp_us,
                    record: Some(record),
                    deliveries,
                    place: Place::Ready,
                    history: Vec::new(),
                },
            );
            // Offers come in offset order: `fresh` stays sorted.
            self.fresh.push_back(offset);
            self.ready_count += 1;
            self.ready_bytes += len;
        }
    }

    /// A member joins.
    pub fn join(&mut self, member: MemberId, name: String, credit: Credit) {
        self.members.insert(
            member,
            Member {
                name,
                credit,
                out_messages: 0,
                out_bytes: 0,
            },
        );
    }

    /// A member leaves (or its connection is gone): what it held is
    /// delivered again (a failed attempt: a consumer that dies on a poison
    /// message must not take the group down with it).
    pub fn leave(&mut self, member: MemberId, now: Instant) {
        let held: Vec<u64> = self.held_by(member);
        for offset in held {
            self.fail(offset, AttemptOutcome::MemberLeft, now, now);
        }
        self.members.remove(&member);
        self.unload_if_alone();
    }

    /// A member goes without handing back what it holds: those messages
    /// stay out until acked or their deadline (an HTTP fetch's member,
    /// whose client acks later over other requests).
    pub fn detach(&mut self, member: MemberId) {
        self.members.remove(&member);
        self.unload_if_alone();
    }

    /// With no member left, ready messages give their records back: they
    /// are read again from the spool when a member joins. The memory of
    /// what was read ahead returns when the group's last consumer goes.
    fn unload_if_alone(&mut self) {
        if !self.members.is_empty() {
            return;
        }
        for offset in std::mem::take(&mut self.fresh) {
            let Some(p) = self.pending.get_mut(offset) else {
                continue;
            };
            if matches!(p.place, Place::Ready) && !self.again.contains(&offset) {
                // Still counted ready (`ready_count`, `ready_bytes`), now
                // among those delivered again first, in offset order.
                p.record = None;
                self.again.insert(offset);
                self.unloaded.insert(offset);
            }
        }
        for &offset in &self.again {
            if let Some(p) = self.pending.get_mut(offset) {
                if p.record.take().is_some() {
                    self.unloaded.insert(offset);
                }
            }
        }
    }

    /// A member's new credit.
    pub fn set_credit(&mut self, member: MemberId, credit: Credit) {
        if let Some(m) = self.members.get_mut(&member) {
            m.credit = credit;
        }
    }

    /// What `member` holds, oldest first.
    fn held_by(&self, member: MemberId) -> Vec<u64> {
        let mut held: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| matches!(p.place, Place::Out { member: m, .. } if m == member))
            .map(|(o, _)| o)
            .collect();
        held.sort_unstable();
        held
    }

    /// Acks. Any member may ack any message not yet done (the work was
    /// done, whoever holds it now), and so may a member after a reconnect
    /// for messages the group has not read again yet; offsets past the
    /// stream's durable end are ignored. Returns how many were new. The
    /// work is in the messages read and not done in the ranges, however
    /// wide they are.
    pub fn ack_ranges(&mut self, ranges: &[Range<u64>]) -> u64 {
        let mut n = 0;
        for r in ranges {
            let r = r.start.max(self.floor)..r.end.min(self.end);
            if r.is_empty() {
                continue;
            }
            // Below `next`, an offset not done is pending; from `next` on,
            // nothing is read yet.
            for gap in self.done.gaps(r) {
                for offset in gap.start..gap.end.min(self.next) {
                    self.take_pending(offset);
                }
                if !self.recovered.is_empty() {
                    // Keeps the counts below and past the gap.
                    let mut from_gap = self.recovered.split_off(&gap.start);
                    self.recovered.append(&mut from_gap.split_off(&gap.end));
                }
                n += gap.end - gap.start;
                self.mark_done(gap);
            }
        }
        self.trim_timeline();
        self.counters.acked += n;
        n
    }

    /// [`ack_ranges`](Self::ack_ranges) of single offsets.
    pub fn ack(&mut self, offsets: &[u64]) -> u64 {
        self.ack_ranges(&ranges_of(offsets))
    }

    /// Cumulative ack: every message up to and including `offset` that
    /// `member` holds.
    pub fn ack_up_to(&mut self, member: MemberId, offset: u64) -> u64 {
        let held: Vec<u64> = self
            .held_by(member)
            .into_iter()
            .filter(|&o| o <= offset)
            .collect();
        self.ack(&held)
    }

    /// Nacks: deliver again after `delay` (a failed attempt). Only messages
    /// out with `member` are affected (with `None`: out with anyone, for
    /// clients without a session, such as HTTP's).
    pub fn nack(
        &mut self,
        member: Option<MemberId>,
        offsets: &[u64],
        delay: Duration,
        now: Instant,
    ) {
        // A delay is capped like an extension: a message is never parked
        // beyond the longest deadline a consumer may set.
        let again = now + delay.min(self.config.max_ack_extension);
        for &offset in offsets {
            if self.is_out_with(offset, member) {
                self.counters.nacked += 1;
                self.fail(offset, AttemptOutcome::Nacked, now, again);
            }
        }
    }

    /// Moves the deadline of messages out with `member` (`None`: anyone)
    /// to `now + by` (at most `max_ack_extension`).
    pub fn extend(
        &mut self,
        member: Option<MemberId>,
        offsets: &[u64],
        by: Duration,
        now: Instant,
    ) {
        let deadline = now + by.min(self.config.max_ack_extension);
        for &offset in offsets {
            if !self.is_out_with(offset, member) {
                continue;
            }
            let p = self.pending.get_mut(offset).expect("out means pending");
            if let Place::Out { deadline: d, .. } = &mut p.place {
                if *d == deadline {
                    continue;
                }
                // The old entry (in `timeline` or `extended`) goes stale.
                self.extended.remove(&(*d, offset));
                *d = deadline;
                self.extended.insert((deadline, offset));
            }
        }
        self.trim_timeline();
    }

    fn is_out_with(&self, offset: u64, member: Option<MemberId>) -> bool {
        self.pending.get(offset).is_some_and(|p| match p.place {
            Place::Out { member: m, .. } => member.is_none_or(|w| w == m),
            _ => false,
        })
    }

    /// When the machine next needs [`tick`](Self::tick).
    pub fn next_timer(&self) -> Option<Instant> {
        let d = self.timeline.front().map(|(t, _)| *t);
        let e = self.extended.first().map(|(t, _)| *t);
        let w = self.delayed.first().map(|(t, _)| *t);
        d.into_iter().chain(e).chain(w).min()
    }

    /// Whether `offset` is out with the deadline `t` (a `timeline` entry
    /// that still stands).
    fn out_until(&self, offset: u64, t: Instant) -> bool {
        self.pending
            .get(offset)
            .is_some_and(|p| matches!(p.place, Place::Out { deadline, .. } if deadline == t))
    }

    /// Drops stale entries from the front of `timeline` (so that the next
    /// timer is a real deadline), and all of them once they outnumber the
    /// live ones (a message held long at the front keeps the rest from
    /// reaching it).
    fn trim_timeline(&mut self) {
        while let Some(&(t, offset)) = self.timeline.front() {
            if self.out_until(offset, t) {
                break;
            }
            self.timeline.pop_front();
        }
        if self.timeline.len() > 2 * self.out_count + 1024 {
            let mut timeline = std::mem::take(&mut self.timeline);
            timeline.retain(|&(t, offset)| self.out_until(offset, t));
            self.timeline = timeline;
        }
    }

    /// Deadlines that passed become failed attempts; delayed messages that
    /// are due become ready.
    pub fn tick(&mut self, now: Instant) {
        while let Some(&(t, offset)) = self.timeline.front() {
            if t > now {
                break;
            }
            self.timeline.pop_front();
            if self.out_until(offset, t) {
                self.counters.expired += 1;
                self.fail(offset, AttemptOutcome::DeadlineExpired, now, now);
            }
        }
        while let Some(&(t, offset)) = self.extended.first() {
            if t > now {
                break;
            }
            // Removed here as well as in `fail`, so the loop ends whatever
            // state the entry was in.
            self.extended.remove(&(t, offset));
            self.counters.expired += 1;
            self.fail(offset, AttemptOutcome::DeadlineExpired, now, now);
        }
        while let Some(&(t, offset)) = self.delayed.first() {
            if t > now {
                break;
            }
            self.delayed.remove(&(t, offset));
            if let Some(p) = self.pending.get_mut(offset) {
                p.place = Place::Ready;
                let (len, unloaded) = (p.len, p.record.is_none());
                self.make_ready_again(offset, len, unloaded);
            }
        }
        self.trim_timeline();
    }

    /// The oldest ready offset: one delivered before, or the next fresh
    /// one (dropping fresh entries that are no longer ready).
    fn first_ready(&mut self) -> Option<u64> {
        while let Some(&offset) = self.fresh.front() {
            if matches!(self.pending.get(offset), Some(p) if matches!(p.place, Place::Ready)) {
                break;
            }
            self.fresh.pop_front();
        }
        match (self.again.first(), self.fresh.front()) {
            (Some(&a), Some(&f)) => Some(a.min(f)),
            (a, f) => a.or(f).copied(),
        }
    }

    /// Hands ready messages to members with credit, round robin, oldest
    /// message first.
    pub fn dispatch(&mut self, now: Instant) -> Vec<Delivery> {
        self.tick(now);
        let mut out = Vec::with_capacity(self.ready_count.min(4096));
        let deadline = now + self.config.ack_deadline;
        while let Some(offset) = self.first_ready() {
            if self.unloaded.contains(&offset) {
                // Its record is not read back yet: the next turn.
                break;
            }
            let len = self.pending[offset].len;
            let Some(member) = self.pick_member(len) else {
                break;
            };
            self.unready(offset, len);
            let m = self.members.get_mut(&member).expect("picked");
            m.out_messages += 1;
            m.out_bytes += len;
            if let Credit::Fetch { left } = &mut m.credit {
                *left -= 1;
            }
            let p = self.pending.get_mut(offset).expect("ready means pending");
            p.deliveries += 1;
            p.place = Place::Out { member, deadline };
            self.out_count += 1;
            // `now` only moves forward, so the timeline stays in deadline
            // order; a caller's clock going back lands in `extended`.
            if self.timeline.back().is_none_or(|&(t, _)| t <= deadline) {
                self.timeline.push_back((deadline, offset));
            } else {
                self.extended.insert((deadline, offset));
            }
            self.counters.delivered += 1;
            if p.deliveries > 1 {
                // First deliveries are not journaled (most messages have
                // only one): after a crash a message may get one delivery
                // more than max_deliveries, never an unbounded number.
                self.counters.redelivered += 1;
                self.events.push(Event::Delivered {
                    offset,
                    count: p.deliveries,
                });
            }
            self.last_served = member;
            out.push(Delivery {
                member,
                offset,
                delivery: p.deliveries,
                deadline,
                record: p.record.take().expect("a ready message is loaded"),
            });
        }
        out
    }

    fn pick_member(&self, len: u64) -> Option<MemberId> {
        let after = self.members.range(self.last_served + 1..);
        let before = self.members.range(..=self.last_served);
        after
            .chain(before)
            .find(|(_, m)| m.can_take(len))
            .map(|(&id, _)| id)
    }

    /// Ready messages whose records must be read back from the spool
    /// (with [`restore`](Self::restore)) before they can go out again,
    /// in offset order.
    pub fn unloaded(&self) -> Vec<u64> {
        if self.members.is_empty() {
            return Vec::new();
        }
        self.unloaded.iter().copied().collect()
    }

    /// The record of an [`unloaded`](Self::unloaded) message, read back;
    /// `None`: it is gone from the spool (retention), so it is done.
    pub fn restore(&mut self, offset: u64, record: Option<Record>) {
        if !self.unloaded.remove(&offset) {
            return;
        }
        match record {
            Some(r) => {
                if let Some(p) = self.pending.get_mut(offset) {
                    p.record = Some(r);
                }
            }
            None => {
                self.take_pending(offset);
                self.counters.lost_to_retention += 1;
                self.mark_done(offset..offset + 1);
            }
        }
    }

    /// Takes `offset` out of the pending set, freeing the credit of the
    /// member that held it.
    fn take_pending(&mut self, offset: u64) -> Option<Pending> {
        let p = self.pending.remove(offset)?;
        self.pending_bytes -= p.len;
        match p.place {
            Place::Out { member, deadline } => {
                // Its `timeline` entry, if it has one, goes stale.
                if !self.extended.is_empty() {
                    self.extended.remove(&(deadline, offset));
                }
                self.out_count -= 1;
                if let Some(m) = self.members.get_mut(&member) {
                    m.out_messages -= 1;
                    m.out_bytes -= p.len;
                }
            }
            Place::Ready => {
                self.unready(offset, p.len);
            }
            Place::Delayed { due } => {
                self.delayed.remove(&(due, offset));
            }
        }
        Some(p)
    }

    /// A failed attempt at an out message: wait until `due`, or dead-letter.
    fn fail(&mut self, offset: u64, outcome: AttemptOutcome, now: Instant, due: Instant) {
        let Some(mut p) = self.take_pending(offset) else {
            return;
        };
        let member = match p.place {
            Place::Out { member, .. } => self
                .members
                .get(&member)
                .map_or_else(|| format!("member {member}"), |m| m.name.clone()),
            Place::Ready | Place::Delayed { .. } => String::new(),
        };
        // The most recent attempts: the history must fit in the dead
        // letter's envelope however high max_deliveries is.
        if p.history.len() == MAX_HISTORY {
            p.history.remove(0);
        }
        p.history.push(Attempt {
            at: now,
            member,
            outcome,
        });
        if p.deliveries >= self.config.max_deliveries {
            self.dlq_seq += 1;
            self.counters.dead_lettered += 1;
            self.events.push(Event::Dead {
                offset,
                dlq_seq: self.dlq_seq,
            });
            self.done.insert(offset);
            self.advance_floor();
            self.dead.push(DeadOut {
                offset,
                dlq_seq: self.dlq_seq,
                deliveries: p.deliveries,
                reason: format!(
                    "not acked after {} deliveries (last: {})",
                    p.deliveries,
                    outcome.as_str()
                ),
                history: p.history,
            });
            return;
        }
        p.place = if due <= now {
            self.make_ready_again(offset, p.len, p.record.is_none());
            Place::Ready
        } else {
            self.delayed.insert((due, offset));
            Place::Delayed { due }
        };
        self.pending_bytes += p.len;
        self.pending.insert(offset, p);
    }

    /// A message that was out is ready again (`unloaded`: without its
    /// record, which the group task reads back).
    fn make_ready_again(&mut self, offset: u64, len: u64, unloaded: bool) {
        if self.again.insert(offset) {
            self.ready_count += 1;
            self.ready_bytes += len;
        }
        if unloaded {
            self.unloaded.insert(offset);
        }
    }

    /// A ready message (its place is `Ready`) stops being ready: taken
    /// out, or done. A `fresh` entry is left to be skipped.
    fn unready(&mut self, offset: u64, len: u64) {
        if !self.again.is_empty() {
            self.again.remove(&offset);
            self.unloaded.remove(&offset);
        }
        self.ready_count -= 1;
        self.ready_bytes -= len;
    }

    fn mark_done(&mut self, r: std::ops::Range<u64>) {
        if r.is_empty() {
            return;
        }
        self.unjournaled_done.insert_range(r.clone());
        if r.start == self.floor && self.done.is_empty() {
            // The usual case: the oldest messages acked, nothing above.
            self.floor = r.end;
            return;
        }
        self.done.insert_range(r);
        self.advance_floor();
    }

    fn advance_floor(&mut self) {
        let f = self.done.run_end(self.floor);
        if f > self.floor {
            self.floor = f;
            self.done.remove_below(f);
        }
    }

    /// What to journal now: done ranges and the other events since the
    /// last call, and the messages to dead-letter once they are durable.
    pub fn take_events(&mut self) -> (Vec<Event>, Vec<DeadOut>) {
        let mut events: Vec<Event> = self.unjournaled_done.iter().map(Event::Acked).collect();
        self.unjournaled_done = RangeSet::new();
        events.append(&mut self.events);
        (events, std::mem::take(&mut self.dead))
    }

    /// Whether anything waits to be journaled.
    pub fn has_events(&self) -> bool {
        !self.unjournaled_done.is_empty() || self.has_other_events()
    }

    /// Whether anything but done offsets waits to be journaled (delivery
    /// counts, dead letters).
    pub fn has_other_events(&self) -> bool {
        !self.events.is_empty() || !self.dead.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64, payload: &str) -> (u64, Record) {
        (
            i,
            Record {
                producer: i % 3,
                seq: i + 1,
                timestamp_us: 1_000 + i,
                payload: Bytes::copy_from_slice(payload.as_bytes()),
            },
        )
    }

    fn group(config: GroupConfig, n: u64) -> Group {
        let mut g = Group::new(config, &GroupState::new(0));
        g.set_end(n);
        g.offer((0..n).map(|i| rec(i, "x")).collect());
        g
    }

    /// What the group task does each turn: deadlines, records read back,
    /// then deliveries.
    fn send(g: &mut Group, now: Instant) -> Vec<Delivery> {
        g.tick(now);
        for o in g.unloaded() {
            g.restore(o, Some(rec(o, "x").1));
        }
        g.dispatch(now)
    }

    #[test]
    fn a_message_ready_again_goes_out_once_its_record_is_read_back() {
        let t0 = Instant::now();
        let mut g = group(GroupConfig::default(), 2);
        g.join(1, "a".into(), window(1));
        assert_eq!(g.dispatch(t0)[0].offset, 0);
        g.nack(Some(1), &[0], Duration::ZERO, t0);
        assert_eq!(g.unloaded(), [0], "the delivery took its record");
        assert!(g.dispatch(t0).is_empty(), "not before it is read back");
        g.restore(0, Some(rec(0, "again").1));
        let d = g.dispatch(t0);
        assert_eq!((d[0].offset, d[0].delivery), (0, 2));
        assert_eq!(&d[0].record.payload[..], b"again");
        // Gone from the spool meanwhile: done, and the group goes on.
        g.nack(Some(1), &[0], Duration::ZERO, t0);
        g.restore(0, None);
        assert_eq!(g.counters().lost_to_retention, 1);
        assert_eq!(g.floor(), 1);
        assert_eq!(g.dispatch(t0)[0].offset, 1);
    }

    fn window(messages: u32) -> Credit {
        Credit::Window {
            messages,
            bytes: u64::MAX,
        }
    }

    #[test]
    fn credit_bounds_what_a_member_holds() {
        let now = Instant::now();
        let mut g = group(GroupConfig::default(), 10);
        g.join(1, "a".into(), window(3));
        let d = send(&mut g, now);
        assert_eq!(d.iter().map(|d| d.offset).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(send(&mut g, now).is_empty(), "no credit left");
        g.ack(&[1]);
        assert_eq!(send(&mut g, now)[0].offset, 3);
        assert_eq!(g.floor(), 0, "0 is not acked yet");
        g.ack(&[0]);
        assert_eq!(g.floor(), 2);
    }

    #[test]
    fn a_byte_window_lets_one_large_message_through() {
        let now = Instant::now();
        let mut g = Group::new(GroupConfig::default(), &GroupState::new(0));
        g.set_end(2);
        g.offer(vec![rec(0, "0123456789"), rec(1, "0123456789")]);
        g.join(
            1,
            "a".into(),
            Credit::Window {
                messages: 10,
                bytes: 4,
            },
        );
        assert_eq!(send(&mut g, now).len(), 1);
        g.ack(&[0]);
        assert_eq!(send(&mut g, now).len(), 1);
    }

    #[test]
    fn expired_messages_go_to_another_member_then_to_dead_letters() {
        let t0 = Instant::now();
        let config = GroupConfig {
            ack_deadline: Duration::from_secs(1),
            max_deliveries: 2,
            ..GroupConfig::default()
        };
        let mut g = group(config, 1);
        g.join(1, "a".into(), window(1));
        assert_eq!(send(&mut g, t0)[0].delivery, 1);
        g.join(2, "b".into(), window(1));
        let t1 = t0 + Duration::from_secs(2);
        let d = send(&mut g, t1);
        assert_eq!((d[0].member, d[0].delivery), (2, 2), "{d:?}");
        let t2 = t1 + Duration::from_secs(2);
        assert!(send(&mut g, t2).is_empty());
        let (events, dead) = g.take_events();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].history.len(), 2);
        assert_eq!(dead[0].history[0].member, "a");
        assert!(events.contains(&Event::Dead {
            offset: 0,
            dlq_seq: 1
        }));
        assert!(events.contains(&Event::Delivered {
            offset: 0,
            count: 2
        }));
        assert_eq!(g.floor(), 1, "the group goes on");
    }

    #[test]
    fn a_dead_letter_keeps_the_latest_attempts() {
        let t0 = Instant::now();
        let config = GroupConfig {
            max_deliveries: 100,
            ..GroupConfig::default()
        };
        let mut g = group(config, 1);
        g.join(1, "a".into(), window(1));
        for _ in 0..100 {
            assert_eq!(send(&mut g, t0).len(), 1);
            g.nack(Some(1), &[0], Duration::ZERO, t0);
        }
        let (_, dead) = g.take_events();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].deliveries, 100);
        assert_eq!(dead[0].history.len(), MAX_HISTORY);
    }

    #[test]
    fn nack_with_delay_waits() {
        let t0 = Instant::now();
        let mut g = group(GroupConfig::default(), 1);
        g.join(1, "a".into(), window(5));
        send(&mut g, t0);
        g.nack(Some(1), &[0], Duration::from_secs(5), t0);
        assert!(send(&mut g, t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(g.next_timer(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(send(&mut g, t0 + Duration::from_secs(5)).len(), 1);
    }

    #[test]
    fn a_nack_delay_is_capped_like_an_extension() {
        let t0 = Instant::now();
        let config = GroupConfig {
            max_ack_extension: Duration::from_secs(60),
            ..GroupConfig::default()
        };
        let mut g = group(config, 1);
        g.join(1, "a".into(), window(5));
        send(&mut g, t0);
        // 2^64 - 1 ms: ~584 million years, without the cap.
        g.nack(Some(1), &[0], Duration::from_millis(u64::MAX), t0);
        assert!(send(&mut g, t0 + Duration::from_secs(59)).is_empty());
        let again = send(&mut g, t0 + Duration::from_secs(60));
        assert_eq!((again.len(), again[0].delivery), (1, 2));
    }

    #[test]
    fn a_leaving_member_hands_back_its_messages() {
        let t0 = Instant::now();
        let mut g = group(GroupConfig::default(), 4);
        g.join(1, "a".into(), window(2));
        g.join(2, "b".into(), window(2));
        let d = send(&mut g, t0);
        assert_eq!(d.len(), 4);
        let of_a: Vec<u64> = d
            .iter()
            .filter(|d| d.member == 1)
            .map(|d| d.offset)
            .collect();
        g.leave(1, t0);
        g.ack(
            &d.iter()
                .filter(|d| d.member == 2)
                .map(|d| d.offset)
                .collect::<Vec<_>>(),
        );
        let again = send(&mut g, t0);
        assert_eq!(again.iter().map(|d| d.offset).collect::<Vec<_>>(), of_a);
        assert!(again.iter().all(|d| d.member == 2 && d.delivery == 2));
    }

    #[test]
    fn conflation_keeps_the_newest_per_key_of_a_backlog() {
        let now = Instant::now();
        let config = GroupConfig {
            conflate: Some(KeyRule::Delimiter(b'=')),
            ..GroupConfig::default()
        };
        let mut g = Group::new(config, &GroupState::new(0));
        g.set_end(5);
        g.offer(vec![
            rec(0, "a=1"),
            rec(1, "b=1"),
            rec(2, "a=2"),
            rec(3, "a=3"),
            rec(4, "b=2"),
        ]);
        g.join(1, "a".into(), window(10));
        let got: Vec<u64> = send(&mut g, now).iter().map(|d| d.offset).collect();
        assert_eq!(got, [3, 4]);
        assert_eq!(g.counters().conflated, 3);
        g.ack(&got);
        assert_eq!(g.floor(), 5);
    }

    #[test]
    fn acks_after_a_restart_count_before_the_message_is_read() {
        let mut g = Group::new(GroupConfig::default(), &GroupState::new(0));
        g.set_end(3);
        assert_eq!(g.ack(&[1, 7]), 1, "7 is past the end");
        g.offer((0..3).map(|i| rec(i, "x")).collect());
        g.join(1, "a".into(), window(10));
        let got: Vec<u64> = g
            .dispatch(Instant::now())
            .iter()
            .map(|d| d.offset)
            .collect();
        assert_eq!(got, [0, 2]);
    }

    #[test]
    fn retention_gaps_are_done() {
        let mut g = Group::new(GroupConfig::default(), &GroupState::new(0));
        g.set_end(10);
        g.offer(vec![rec(5, "x")]);
        assert_eq!(g.floor(), 5);
        assert_eq!(g.counters().lost_to_retention, 5);
    }

    #[test]
    fn a_message_held_long_does_not_pin_the_deadlines_of_acked_ones() {
        let t0 = Instant::now();
        let n = 20_000;
        let config = GroupConfig {
            read_ahead: n as usize,
            ..GroupConfig::default()
        };
        let mut g = group(config, n);
        g.join(1, "a".into(), window(n as u32));
        assert_eq!(send(&mut g, t0).len(), n as usize);
        // Everything acked but the oldest, in batches as a client sends.
        let rest: Vec<u64> = (1..n).collect();
        for batch in rest.chunks(512) {
            g.ack(batch);
        }
        assert_eq!(g.out(), 1);
        assert!(
            g.timeline.len() <= 1024 + 2,
            "stale deadlines kept: {}",
            g.timeline.len()
        );
        assert_eq!(g.next_timer(), Some(t0 + g.config().ack_deadline));
        g.ack(&[0]);
        assert_eq!(g.floor(), n);
        assert!(g.timeline.is_empty() && g.next_timer().is_none());
        assert_eq!(g.backlog(), 0);
    }

    #[test]
    fn pull_credit_is_per_fetch() {
        let now = Instant::now();
        let mut g = group(GroupConfig::default(), 10);
        g.join(1, "p".into(), Credit::Fetch { left: 0 });
        assert!(send(&mut g, now).is_empty());
        g.set_credit(1, Credit::Fetch { left: 4 });
        assert_eq!(send(&mut g, now).len(), 4);
        assert!(send(&mut g, now).is_empty());
        g.set_credit(1, Credit::Fetch { left: 2 });
        assert_eq!(send(&mut g, now).len(), 2, "held messages do not count");
    }
}
