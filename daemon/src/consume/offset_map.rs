//! A map keyed by stream offset for a group's pending messages.
//!
//! A group reads offsets in order and most are done soon, nearly in order:
//! the live ones are a dense window just behind the read position. They are
//! kept in a ring indexed by `offset - base`, so the three operations every
//! message goes through (insert when read, look up when delivered, remove
//! when acked) touch memory in order instead of hashing into a table larger
//! than the CPU's caches. A message held long (a slow member, a long nack
//! delay) would stretch the ring without bound, so the ring is capped: when
//! it would grow past [`RING_SLOTS`], its oldest slots move to a hash map of
//! stragglers, which only ever holds messages that were live when they fell
//! out of the ring (few: a member's credit bounds what is out).

use std::collections::VecDeque;

use sluice_transport::offsets::OffsetHashMap;

/// Most slots in the ring (live or empty). Past this, the oldest live
/// entries are kept as stragglers.
pub const RING_SLOTS: usize = 1 << 17;

pub struct OffsetMap<V> {
    /// The offset of `ring[0]`.
    base: u64,
    /// Never starts with an empty slot.
    ring: VecDeque<Option<V>>,
    /// Entries below `base`.
    stragglers: OffsetHashMap<V>,
}

impl<V> Default for OffsetMap<V> {
    fn default() -> Self {
        OffsetMap {
            base: 0,
            ring: VecDeque::new(),
            stragglers: OffsetHashMap::default(),
        }
    }
}

impl<V> OffsetMap<V> {
    /// Inserts or replaces the entry of `offset`.
    pub fn insert(&mut self, offset: u64, v: V) {
        if self.ring.is_empty() {
            self.base = offset;
        }
        if offset < self.base {
            self.stragglers.insert(offset, v);
            return;
        }
        // The ring must reach `offset` within its cap: its oldest slots
        // make room, their live entries becoming stragglers.
        while offset - self.base >= RING_SLOTS as u64 && !self.ring.is_empty() {
            self.spill_front();
        }
        if self.ring.is_empty() {
            self.base = offset;
        }
        let i = (offset - self.base) as usize;
        if i >= self.ring.len() {
            self.ring.resize_with(i + 1, || None);
        }
        // An emptied ring starts again where it is next inserted into,
        // which may be below offsets kept as stragglers: an offset is in
        // one place only.
        if !self.stragglers.is_empty() {
            self.stragglers.remove(&offset);
        }
        self.ring[i] = Some(v);
    }

    pub fn get(&self, offset: u64) -> Option<&V> {
        match self.slot(offset).and_then(|i| self.ring[i].as_ref()) {
            Some(v) => Some(v),
            None => self.stragglers.get(&offset),
        }
    }

    pub fn get_mut(&mut self, offset: u64) -> Option<&mut V> {
        match self.slot(offset) {
            Some(i) if self.ring[i].is_some() => self.ring[i].as_mut(),
            _ => self.stragglers.get_mut(&offset),
        }
    }

    pub fn remove(&mut self, offset: u64) -> Option<V> {
        let taken = self.slot(offset).and_then(|i| {
            let v = self.ring[i].take();
            if i == 0 {
                self.trim_front();
            }
            v
        });
        match taken {
            Some(v) => Some(v),
            None if self.stragglers.is_empty() => None,
            None => self.stragglers.remove(&offset),
        }
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &V)> + '_ {
        let base = self.base;
        self.stragglers.iter().map(|(&o, v)| (o, v)).chain(
            self.ring
                .iter()
                .enumerate()
                .filter_map(move |(i, v)| v.as_ref().map(|v| (base + i as u64, v))),
        )
    }

    /// Where `offset` would be in the ring, if the ring covers it.
    fn slot(&self, offset: u64) -> Option<usize> {
        let i = offset.checked_sub(self.base)?;
        (i < self.ring.len() as u64).then_some(i as usize)
    }

    fn spill_front(&mut self) {
        if let Some(Some(v)) = self.ring.pop_front() {
            self.stragglers.insert(self.base, v);
        }
        self.base += 1;
        self.trim_front();
    }

    /// Drops empty slots at the front (so the front is always live).
    fn trim_front(&mut self) {
        while let Some(None) = self.ring.front() {
            self.ring.pop_front();
            self.base += 1;
        }
    }
}

impl<V> std::ops::Index<u64> for OffsetMap<V> {
    type Output = V;

    fn index(&self, offset: u64) -> &V {
        self.get(offset).expect("no entry for the offset")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        Remove(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Mostly near the front, sometimes far ahead (past the ring's cap).
        let offset = prop_oneof![
            8 => 0u64..400,
            1 => 0u64..(4 * RING_SLOTS as u64),
        ];
        prop_oneof![
            3 => offset.clone().prop_map(Op::Insert),
            2 => offset.prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// It behaves as a plain map, wherever the ring's window is.
        #[test]
        fn matches_a_plain_map(ops in proptest::collection::vec(op(), 0..300)) {
            let mut m = OffsetMap::default();
            let mut model = BTreeMap::new();
            for (n, o) in ops.into_iter().enumerate() {
                match o {
                    Op::Insert(x) => {
                        m.insert(x, n);
                        model.insert(x, n);
                    }
                    Op::Remove(x) => prop_assert_eq!(m.remove(x), model.remove(&x)),
                }
                prop_assert!(m.ring.len() <= RING_SLOTS);
                prop_assert!(m.ring.front().is_none_or(Option::is_some));
                let mut all: Vec<(u64, usize)> = m.iter().map(|(o, &v)| (o, v)).collect();
                all.sort_unstable();
                prop_assert_eq!(all, model.iter().map(|(&o, &v)| (o, v)).collect::<Vec<_>>());
                for (&o, &v) in &model {
                    prop_assert_eq!(m.get(o), Some(&v));
                }
            }
        }
    }

    #[test]
    fn a_held_entry_becomes_a_straggler_instead_of_stretching_the_ring() {
        let mut m = OffsetMap::default();
        m.insert(0, "held");
        for o in 1..3 * RING_SLOTS as u64 {
            m.insert(o, "x");
            m.remove(o);
        }
        assert!(m.ring.len() <= 1, "the ring holds only what is live");
        assert_eq!(m.stragglers.len(), 1);
        assert_eq!(m.get(0), Some(&"held"));
        assert_eq!(m.remove(0), Some("held"));
        assert_eq!(m.iter().count(), 0);
    }
}
