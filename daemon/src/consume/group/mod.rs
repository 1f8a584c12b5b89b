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
//!   byte window cannot stall the group); a member that lowers its window
//!   below what it holds takes nothing until what it holds fits again;
//! - a message out past its ack deadline, nacked, or held by a member that
//!   left is delivered again, unless it has been delivered `max_deliveries`
//!   times: then it goes to the dead-letter stream and the group goes on;
//! - the floor (every offset below it done) only moves forward.
//!
//! [`Group::check`] asserts them, with the rules of its derived state,
//! each kept by a small type of its own: [`ready`] (the messages to send
//! now), [`deadlines`] (one timer table) and [`member`] (credit).

mod check;
mod deadlines;
mod member;
mod ready;
/// One request's acks, nacks (offsets, delay) and deadline changes
/// (offsets, extension) of a member, for [`Group::settle`].
#[derive(Debug, Default)]
pub struct Settle {
    pub acks: Vec<u64>,
    pub nacks: Vec<(Vec<u64>, Duration)>,
    pub extends: Vec<(Vec<u64>, Duration)>,
}

#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::dead_letter::AttemptOutcome;
use super::offset_map::OffsetMap;
use super::ranges::RangeSet;
use super::store::{Event, GroupState};
use crate::spool::Record;
use deadlines::{out_until, Deadlines, Due};
use member::Member;
use ready::ReadyQueue;
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
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
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
    /// Messages given up unacked at the group's backlog limit
    /// (`on_backlog = "drop_oldest"`).
    #[serde(default)]
    pub dropped: u64,
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
    /// Ready messages, to go out now.
    ready: ReadyQueue,
    /// Deadlines of messages out, and due times of delayed ones.
    deadlines: Deadlines,
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
    /// The floor the last [`check`](Self::check) saw (it only moves up).
    checked_floor: Cell<u64>,
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
            ready: ReadyQueue::default(),
            deadlines: Deadlines::default(),
            out_count: 0,
            members: BTreeMap::new(),
            last_served: 0,
            unjournaled_done: RangeSet::new(),
            events: Vec::new(),
            dead: Vec::new(),
            counters: GroupCounters::default(),
            checked_floor: Cell::new(state.floor),
        }
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// New settings (a reload), from now on: the ack deadline for the
    /// deliveries made from now (those out keep the deadline they were
    /// given), max deliveries at the next failure of each message, the
    /// read-ahead at the next read. Conflation keeps its rule: records
    /// read ahead were conflated under it, and a group's conflation
    /// changes at its next start.
    pub fn set_config(&mut self, config: GroupConfig) {
        let conflate = self.config.conflate.take();
        self.config = config;
        self.config.conflate = conflate;
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
        self.members.values().map(Member::free_messages).sum()
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
            || self.ready.bytes() >= self.config.read_ahead_bytes
        {
            return (0, 0);
        }
        let room = self.config.read_ahead.saturating_sub(self.ready.count());
        let records = room.min((self.end - self.next) as usize);
        (records, self.config.read_ahead_bytes - self.ready.bytes())
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
            // Offers come in offset order.
            self.ready.push_fresh(offset, len);
        }
    }

    /// A member joins.
    pub fn join(&mut self, member: MemberId, name: String, credit: Credit) {
        self.members.insert(member, Member::new(name, credit));
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
        let pending = &mut self.pending;
        self.ready.unload_all(|offset| {
            let p = pending.get_mut(offset)?;
            matches!(p.place, Place::Ready).then(|| p.record.take().is_some())
        });
    }

    /// A member's new credit.
    pub fn set_credit(&mut self, member: MemberId, credit: Credit) {
        if let Some(m) = self.members.get_mut(&member) {
            m.set_credit(credit);
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
        self.trim_deadlines();
        self.counters.acked += n;
        n
    }

    /// A member's acks, nacks and deadline changes at once, saying which
    /// offsets took effect: acks as [`ack_ranges`](Self::ack_ranges) takes
    /// them (any member may ack a message not done); nacks and deadline
    /// changes only for messages out with `member`. Returns the offsets
    /// newly acked, and those of the request that changed nothing (sorted,
    /// each once).
    pub fn settle(&mut self, member: MemberId, s: &Settle, now: Instant) -> (Vec<u64>, Vec<u64>) {
        let mut ignored: Vec<u64> = Vec::new();
        for (offsets, _) in s.nacks.iter().chain(&s.extends) {
            ignored.extend(
                offsets
                    .iter()
                    .copied()
                    .filter(|&o| !self.is_out_with(o, Some(member))),
            );
        }
        let ranges = ranges_of(&s.acks);
        let mut acked: Vec<u64> = Vec::new();
        for r in &ranges {
            let r = r.start.max(self.floor)..r.end.min(self.end);
            if !r.is_empty() {
                acked.extend(self.done.gaps(r).into_iter().flatten());
            }
        }
        self.ack_ranges(&ranges);
        ignored.extend(
            s.acks
                .iter()
                .copied()
                .filter(|o| acked.binary_search(o).is_err()),
        );
        for (offsets, delay) in &s.nacks {
            self.nack(Some(member), offsets, *delay, now);
        }
        for (offsets, by) in &s.extends {
            self.extend(Some(member), offsets, *by, now);
        }
        ignored.sort_unstable();
        ignored.dedup();
        (acked, ignored)
    }

    /// [`ack_ranges`](Self::ack_ranges) of single offsets.
    pub fn ack(&mut self, offsets: &[u64]) -> u64 {
        self.ack_ranges(&ranges_of(offsets))
    }

    /// Gives up the oldest messages not out with a member until at most
    /// `keep` are left (`on_backlog = "drop_oldest"`): they are done as if
    /// acked, counted as dropped, never delivered (again). Messages out
    /// with a member stay: they may be acked yet, and a forward may have
    /// sent them already. Returns the offsets dropped.
    pub fn drop_oldest(&mut self, keep: u64) -> Vec<Range<u64>> {
        let mut excess = self.backlog().saturating_sub(keep);
        let mut drop: Vec<Range<u64>> = Vec::new();
        let mut add = |o: Range<u64>| match drop.last_mut() {
            Some(last) if last.end == o.start => last.end = o.end,
            _ => drop.push(o),
        };
        for gap in self.done.gaps(self.floor..self.end) {
            let mut o = gap.start;
            while o < gap.end && excess > 0 {
                if o >= self.next {
                    // Not read yet: none of it is out.
                    let n = (gap.end - o).min(excess);
                    add(o..o + n);
                    excess -= n;
                    break;
                }
                if !self.is_out_with(o, None) {
                    add(o..o + 1);
                    excess -= 1;
                }
                o += 1;
            }
            if excess == 0 {
                break;
            }
        }
        let n = self.ack_ranges(&drop);
        self.counters.acked -= n;
        self.counters.dropped += n;
        // What was dropped unread is not read just to be skipped: reading
        // goes on past it (the task moves its reader to `next_read`).
        self.next = self.done.run_end(self.next.max(self.floor));
        drop
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
                self.deadlines.move_deadline(offset, *d, deadline);
                *d = deadline;
            }
        }
        self.trim_deadlines();
    }

    fn is_out_with(&self, offset: u64, member: Option<MemberId>) -> bool {
        self.pending.get(offset).is_some_and(|p| match p.place {
            Place::Out { member: m, .. } => member.is_none_or(|w| w == m),
            _ => false,
        })
    }

    /// When the machine next needs [`tick`](Self::tick).
    pub fn next_timer(&self) -> Option<Instant> {
        self.deadlines.next()
    }

    /// Drops stale deadlines (see [`Deadlines::trim`]).
    fn trim_deadlines(&mut self) {
        let pending = &self.pending;
        self.deadlines
            .trim(self.out_count, |offset, t| out_until(pending, offset, t));
    }

    /// Deadlines that passed become failed attempts; delayed messages that
    /// are due become ready.
    pub fn tick(&mut self, now: Instant) {
        loop {
            let pending = &self.pending;
            let due = self
                .deadlines
                .pop_due(now, |offset, t| out_until(pending, offset, t));
            match due {
                None => break,
                Some(Due::Deadline(offset)) => {
                    self.counters.expired += 1;
                    self.fail(offset, AttemptOutcome::DeadlineExpired, now, now);
                }
                Some(Due::Delayed(offset)) => {
                    if let Some(p) = self.pending.get_mut(offset) {
                        p.place = Place::Ready;
                        let (len, unloaded) = (p.len, p.record.is_none());
                        self.ready.push_again(offset, len, unloaded);
                    }
                }
            }
        }
        self.trim_deadlines();
    }

    /// The oldest ready offset (dropping stale fresh entries).
    fn first_ready(&mut self) -> Option<u64> {
        let pending = &self.pending;
        self.ready.first(|offset| {
            pending
                .get(offset)
                .is_some_and(|p| matches!(p.place, Place::Ready))
        })
    }

    /// Hands ready messages to members with credit, round robin, oldest
    /// message first.
    pub fn dispatch(&mut self, now: Instant) -> Vec<Delivery> {
        self.tick(now);
        let mut out = Vec::with_capacity(self.ready.count().min(4096));
        let deadline = now + self.config.ack_deadline;
        while let Some(offset) = self.first_ready() {
            if self.ready.is_unloaded(offset) {
                // Its record is not read back yet: the next turn.
                break;
            }
            let len = self.pending[offset].len;
            let Some(member) = self.pick_member(len) else {
                break;
            };
            self.ready.remove(offset, len);
            self.members.get_mut(&member).expect("picked").take(len);
            let p = self.pending.get_mut(offset).expect("ready means pending");
            p.deliveries += 1;
            p.place = Place::Out { member, deadline };
            self.out_count += 1;
            self.deadlines.add_deadline(deadline, offset);
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
        self.ready.unloaded().collect()
    }

    /// The record of an [`unloaded`](Self::unloaded) message, read back;
    /// `None`: it is gone from the spool (retention), so it is done.
    pub fn restore(&mut self, offset: u64, record: Option<Record>) {
        if !self.ready.loaded(offset) {
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
                self.deadlines.remove_deadline(deadline, offset);
                self.out_count -= 1;
                if let Some(m) = self.members.get_mut(&member) {
                    m.give_back(p.len);
                }
            }
            Place::Ready => self.ready.remove(offset, p.len),
            Place::Delayed { due } => self.deadlines.remove_delayed(due, offset),
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
            self.ready.push_again(offset, p.len, p.record.is_none());
            Place::Ready
        } else {
            self.deadlines.add_delayed(due, offset);
            Place::Delayed { due }
        };
        self.pending_bytes += p.len;
        self.pending.insert(offset, p);
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
