//! The messages waiting to go out now, oldest first.
//!
//! Two queues: `fresh`, the offsets as read from the spool (in order,
//! nearly every message passes through it), and `again`, those that were
//! out before (nacked, expired, handed back: few, and they go first when
//! older). A ready message is in `again`, or else in `fresh`.
//!
//! Rules it keeps (checked by [`ReadyQueue::check`]):
//! - `fresh` is in increasing offset order; it may hold stale entries
//!   (a message acked or taken out before its turn), skipped when they
//!   come up: removing one from the middle would cost more;
//! - every offset in `again` is a ready message, and is `unloaded` exactly
//!   when its record must be read back from the spool first;
//! - `count` and `bytes` are the number and payload bytes of the ready
//!   messages, each counted once (a message may be in both queues: its
//!   stale `fresh` entry and its `again` one).

use std::collections::{BTreeSet, VecDeque};

use super::{Pending, Place};
use crate::consume::offset_map::OffsetMap;

#[derive(Default)]
pub(super) struct ReadyQueue {
    fresh: VecDeque<u64>,
    again: BTreeSet<u64>,
    /// Of `again`, those whose record is not loaded.
    unloaded: BTreeSet<u64>,
    count: usize,
    bytes: u64,
}

impl ReadyQueue {
    /// Ready messages.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Their payload bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// A message read from the spool, past every one before it.
    pub fn push_fresh(&mut self, offset: u64, len: u64) {
        debug_assert!(
            self.fresh.back().is_none_or(|&b| b < offset),
            "fresh offsets out of order"
        );
        self.fresh.push_back(offset);
        self.count += 1;
        self.bytes += len;
    }

    /// A message that was out is ready again (`unloaded`: without its
    /// record, which the group task reads back).
    pub fn push_again(&mut self, offset: u64, len: u64, unloaded: bool) {
        if self.again.insert(offset) {
            self.count += 1;
            self.bytes += len;
        }
        if unloaded {
            self.unloaded.insert(offset);
        }
    }

    /// A ready message stops being ready: taken out, or done. A `fresh`
    /// entry is left to be skipped.
    pub fn remove(&mut self, offset: u64, len: u64) {
        if !self.again.is_empty() {
            self.again.remove(&offset);
            self.unloaded.remove(&offset);
        }
        debug_assert!(
            self.count > 0 && self.bytes >= len,
            "ready counts underflow"
        );
        self.count -= 1;
        self.bytes -= len;
    }

    /// The oldest ready offset: one delivered before, or the next fresh
    /// one (dropping fresh entries for which `is_ready` says no longer).
    pub fn first(&mut self, is_ready: impl Fn(u64) -> bool) -> Option<u64> {
        while let Some(&offset) = self.fresh.front() {
            if is_ready(offset) {
                break;
            }
            self.fresh.pop_front();
        }
        match (self.again.first(), self.fresh.front()) {
            (Some(&a), Some(&f)) => Some(a.min(f)),
            (a, f) => a.or(f).copied(),
        }
    }

    pub fn is_unloaded(&self, offset: u64) -> bool {
        self.unloaded.contains(&offset)
    }

    /// The offsets whose records must be read back, in order.
    pub fn unloaded(&self) -> impl Iterator<Item = u64> + '_ {
        self.unloaded.iter().copied()
    }

    /// `offset`'s record was read back (or is gone); false if it was not
    /// waiting for it.
    pub fn loaded(&mut self, offset: u64) -> bool {
        self.unloaded.remove(&offset)
    }

    /// Every ready message gives its record back (nobody is there to take
    /// them). `unload(offset)` drops the record of a ready message and
    /// says whether it had one; `None`: not a ready message (a stale
    /// `fresh` entry). They all move to `again`, where they stay in
    /// offset order and still count as ready.
    pub fn unload_all(&mut self, mut unload: impl FnMut(u64) -> Option<bool>) {
        for offset in std::mem::take(&mut self.fresh) {
            if !self.again.contains(&offset) && unload(offset).is_some() {
                self.again.insert(offset);
                self.unloaded.insert(offset);
            }
        }
        for &offset in &self.again {
            if unload(offset) == Some(true) {
                self.unloaded.insert(offset);
            }
        }
    }

    /// Panics, naming the rule, if the queue disagrees with `pending`.
    pub fn check(&self, pending: &OffsetMap<Pending>) {
        assert!(
            self.fresh
                .iter()
                .zip(self.fresh.iter().skip(1))
                .all(|(a, b)| a < b),
            "ready: fresh offsets out of order"
        );
        assert!(
            self.unloaded.is_subset(&self.again),
            "ready: an unloaded offset is not in `again`"
        );
        for &offset in &self.again {
            let p = pending.get(offset);
            assert!(
                p.is_some_and(|p| matches!(p.place, Place::Ready)),
                "ready: {offset} in `again` is not a ready message"
            );
            assert_eq!(
                p.is_some_and(|p| p.record.is_none()),
                self.unloaded.contains(&offset),
                "ready: {offset} is unloaded exactly when its record is not loaded"
            );
        }
        let (mut count, mut bytes) = (0, 0);
        for (offset, p) in pending.iter() {
            if !matches!(p.place, Place::Ready) {
                continue;
            }
            count += 1;
            bytes += p.len;
            if !self.again.contains(&offset) {
                assert!(
                    self.fresh.binary_search(&offset).is_ok(),
                    "ready: {offset} is ready but queued nowhere"
                );
                assert!(
                    p.record.is_some(),
                    "ready: fresh {offset} has no record loaded"
                );
            }
        }
        assert_eq!(
            (self.count, self.bytes),
            (count, bytes),
            "ready: counts (messages, bytes) differ from the ready messages"
        );
    }
}
