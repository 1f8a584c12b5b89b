//! The group's timers in one table: when each message out is due back
//! (its ack deadline) and when each delayed message is ready again. It
//! answers the two questions the machine asks: when is the next one due
//! ([`Deadlines::next`]), and which are due now ([`Deadlines::pop_due`]).
//!
//! Ack deadlines are kept in two lists. `timeline` holds those with the
//! group's ack deadline in the order they went out, which is deadline
//! order: pushing at the back is cheap, and nearly every message goes
//! through it. An entry whose message was acked or extended meanwhile is
//! not looked for: it goes stale, and is dropped when it reaches the front
//! (acks come nearly in order, so that is soon) or by [`Deadlines::trim`].
//! `extended` holds the other deadlines (extended ones, or a caller's
//! clock gone back), exactly: an entry leaves when its message does.
//! `delayed` holds delayed messages by due time, exactly.
//!
//! Rules it keeps (checked by [`Deadlines::check`]):
//! - `timeline` is in deadline order;
//! - every message out has its deadline in `timeline` or `extended`;
//!   every `extended` entry is a message out until then;
//! - every delayed message has its entry in `delayed`, and only those.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::time::Instant;

use super::{Pending, Place};
use crate::consume::offset_map::OffsetMap;

/// A timer that fired.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Due {
    /// The message's ack deadline passed.
    Deadline(u64),
    /// The delayed message is ready.
    Delayed(u64),
}

#[derive(Default)]
pub(super) struct Deadlines {
    timeline: VecDeque<(Instant, u64)>,
    extended: BTreeSet<(Instant, u64)>,
    delayed: BTreeSet<(Instant, u64)>,
}

/// Whether `offset` is out until `t` (its `timeline` entry stands).
pub(super) fn out_until(pending: &OffsetMap<Pending>, offset: u64, t: Instant) -> bool {
    pending
        .get(offset)
        .is_some_and(|p| matches!(p.place, Place::Out { deadline, .. } if deadline == t))
}

impl Deadlines {
    /// When the next timer is due (a stale `timeline` entry at the front
    /// may make it early, never late: [`trim`](Self::trim) drops those).
    pub fn next(&self) -> Option<Instant> {
        let d = self.timeline.front().map(|(t, _)| *t);
        let e = self.extended.first().map(|(t, _)| *t);
        let w = self.delayed.first().map(|(t, _)| *t);
        d.into_iter().chain(e).chain(w).min()
    }

    /// A message went out until `deadline`.
    pub fn add_deadline(&mut self, deadline: Instant, offset: u64) {
        // `now` only moves forward, so the timeline stays in deadline
        // order; a caller's clock going back lands in `extended`.
        if self.timeline.back().is_none_or(|&(t, _)| t <= deadline) {
            self.timeline.push_back((deadline, offset));
        } else {
            self.extended.insert((deadline, offset));
        }
    }

    /// A message out until `from` is now out until `to`.
    pub fn move_deadline(&mut self, offset: u64, from: Instant, to: Instant) {
        // The old entry (in `timeline` or `extended`) goes stale.
        self.extended.remove(&(from, offset));
        self.extended.insert((to, offset));
    }

    /// A message out until `deadline` is back (done or failed).
    pub fn remove_deadline(&mut self, deadline: Instant, offset: u64) {
        // Its `timeline` entry, if it has one, goes stale.
        if !self.extended.is_empty() {
            self.extended.remove(&(deadline, offset));
        }
    }

    /// A message waits until `due`.
    pub fn add_delayed(&mut self, due: Instant, offset: u64) {
        let new = self.delayed.insert((due, offset));
        debug_assert!(new, "{offset} delayed twice");
    }

    /// A message delayed until `due` is done.
    pub fn remove_delayed(&mut self, due: Instant, offset: u64) {
        let had = self.delayed.remove(&(due, offset));
        debug_assert!(had, "{offset} was not delayed");
    }

    /// The next timer due at `now`, if any, taken from the table: passed
    /// deadlines first (those in `timeline`, then the others), then
    /// delayed messages. `out_until(offset, t)` tells a standing
    /// `timeline` entry from a stale one, which is dropped.
    pub fn pop_due(
        &mut self,
        now: Instant,
        out_until: impl Fn(u64, Instant) -> bool,
    ) -> Option<Due> {
        while let Some(&(t, offset)) = self.timeline.front() {
            if t > now {
                break;
            }
            self.timeline.pop_front();
            if out_until(offset, t) {
                return Some(Due::Deadline(offset));
            }
        }
        if let Some(&(t, offset)) = self.extended.first() {
            if t <= now {
                // Removed here as well as when the message comes back,
                // so the caller's loop ends whatever state it was in.
                self.extended.remove(&(t, offset));
                return Some(Due::Deadline(offset));
            }
        }
        if let Some(&(t, offset)) = self.delayed.first() {
            if t <= now {
                self.delayed.remove(&(t, offset));
                return Some(Due::Delayed(offset));
            }
        }
        None
    }

    /// Drops stale entries from the front of `timeline` (so that the next
    /// timer is a real deadline), and all of them once they outnumber the
    /// `out` messages out (a message held long at the front keeps the
    /// rest from reaching it).
    pub fn trim(&mut self, out: usize, out_until: impl Fn(u64, Instant) -> bool) {
        while let Some(&(t, offset)) = self.timeline.front() {
            if out_until(offset, t) {
                break;
            }
            self.timeline.pop_front();
        }
        if self.timeline.len() > 2 * out + 1024 {
            self.timeline.retain(|&(t, offset)| out_until(offset, t));
        }
    }

    /// Entries in `timeline`, stale ones included.
    #[cfg(test)]
    pub fn timeline_len(&self) -> usize {
        self.timeline.len()
    }

    /// Panics, naming the rule, if the table disagrees with `pending`.
    pub fn check(&self, pending: &OffsetMap<Pending>) {
        assert!(
            self.timeline
                .iter()
                .zip(self.timeline.iter().skip(1))
                .all(|(a, b)| a.0 <= b.0),
            "deadlines: timeline out of deadline order"
        );
        for &(t, offset) in &self.extended {
            assert!(
                out_until(pending, offset, t),
                "deadlines: extended entry for {offset} is not a message out until then"
            );
        }
        for &(t, offset) in &self.delayed {
            assert!(
                pending
                    .get(offset)
                    .is_some_and(|p| matches!(p.place, Place::Delayed { due } if due == t)),
                "deadlines: delayed entry for {offset} is not a message delayed until then"
            );
        }
        let timeline: HashSet<(Instant, u64)> = self.timeline.iter().copied().collect();
        let mut delayed = 0;
        for (offset, p) in pending.iter() {
            match p.place {
                Place::Out { deadline, .. } => assert!(
                    timeline.contains(&(deadline, offset))
                        || self.extended.contains(&(deadline, offset)),
                    "deadlines: {offset} is out with no timer for its deadline"
                ),
                Place::Delayed { .. } => delayed += 1,
                Place::Ready => {}
            }
        }
        // Entries are distinct and each names one delayed message.
        assert_eq!(
            self.delayed.len(),
            delayed,
            "deadlines: a delayed message has no timer"
        );
    }
}
