//! [`Group::check`]: the group's rules, asserted from its state.
//!
//! The counters and queues the group keeps to answer fast are derived
//! from its messages (`pending`); the check recounts them from the
//! messages and compares, so a missed update anywhere shows up at the next
//! check instead of as a stall or a double delivery much later. It costs
//! a pass over the messages read and not done: cheap enough for a
//! simulation to call after every step, too dear for the daemon's turn.

use std::collections::BTreeMap;

use super::{Group, MemberId, Place};

impl Group {
    /// Panics, naming the broken rule, unless:
    /// - every message is out with at most one member (a place names one),
    ///   and each member's counts are those of the messages out with it;
    /// - no member holds more than its credit (unless it lowered its
    ///   window below what it held: then it takes nothing until it fits);
    /// - the floor only moves forward, lies at or below every message not
    ///   done and at or below the end; done offsets lie above it; the next
    ///   offset to read is at or below the end;
    /// - the totals (`pending_bytes`, `out_count`, the ready counts) are
    ///   those of the messages, and the ready queue and the timer table
    ///   agree with each message's place.
    pub fn check(&self) {
        let floor = self.floor;
        assert!(
            floor >= self.checked_floor.get(),
            "floor went back from {} to {floor}",
            self.checked_floor.get()
        );
        self.checked_floor.set(floor);
        // `next` may lie below the floor: acks may come for offsets not
        // read yet (after a restart), and reading then skips them.
        assert!(
            self.next <= self.end,
            "next read {} past the end {}",
            self.next,
            self.end
        );
        assert!(floor <= self.end, "floor {floor} past the end {}", self.end);
        if let Some(first) = self.done.iter().next() {
            // Were the floor done, the floor would have moved past it.
            assert!(
                first.start > floor,
                "done range {first:?} not above the floor {floor}"
            );
        }
        let mut pending_bytes = 0;
        let mut out_count = 0;
        let mut held: BTreeMap<MemberId, (u32, u64)> = BTreeMap::new();
        for (offset, p) in self.pending.iter() {
            assert!(offset >= floor, "pending {offset} below the floor {floor}");
            assert!(
                offset < self.next,
                "pending {offset} not read yet (next {})",
                self.next
            );
            assert!(!self.done.contains(offset), "pending {offset} is done");
            pending_bytes += p.len;
            if let Place::Out { member, .. } = p.place {
                assert!(
                    p.record.is_none(),
                    "{offset} is out and its record still kept"
                );
                out_count += 1;
                let h = held.entry(member).or_default();
                h.0 += 1;
                h.1 += p.len;
            }
            if let Place::Delayed { .. } = p.place {
                assert!(
                    p.record.is_none(),
                    "{offset} is delayed and its record still kept"
                );
            }
        }
        assert_eq!(
            self.pending_bytes, pending_bytes,
            "pending_bytes differs from the messages' bytes"
        );
        assert_eq!(
            self.out_count, out_count,
            "out_count differs from the messages out"
        );
        // A member that went (detached) may still have messages out: they
        // count for nobody's credit.
        for (&id, m) in &self.members {
            m.check(id, held.get(&id).copied().unwrap_or_default());
        }
        self.ready.check(&self.pending);
        self.deadlines.check(&self.pending);
    }
}
