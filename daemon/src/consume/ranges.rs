//! A set of offsets kept as disjoint half-open ranges: what a consumer group
//! has acked above its floor. Acks mostly arrive nearly in order, so the set
//! stays a handful of ranges however many messages it covers.

use std::collections::BTreeMap;
use std::ops::Range;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start → end (exclusive); ranges never touch or overlap.
    ranges: BTreeMap<u64, u64>,
    len: u64,
}

impl RangeSet {
    pub fn new() -> Self {
        RangeSet::default()
    }

    /// Offsets in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, offset: u64) -> bool {
        self.ranges
            .range(..=offset)
            .next_back()
            .is_some_and(|(_, &end)| offset < end)
    }

    /// Adds one offset; returns whether it was new.
    pub fn insert(&mut self, offset: u64) -> bool {
        let before = self.len;
        self.insert_range(offset..offset.saturating_add(1));
        self.len > before
    }

    /// Adds every offset of `r`; returns how many were new.
    pub fn insert_range(&mut self, r: Range<u64>) -> u64 {
        if r.start >= r.end {
            return 0;
        }
        // Acks arrive nearly in order: most ranges extend the last one or
        // start past it, which needs no search.
        if let Some(mut last) = self.ranges.last_entry() {
            let (s, e) = (*last.key(), *last.get());
            if s <= r.start && r.start <= e {
                let grown = r.end.saturating_sub(e);
                if grown > 0 {
                    *last.get_mut() = r.end;
                    self.len += grown;
                }
                return grown;
            }
            if r.start > e {
                self.ranges.insert(r.start, r.end);
                self.len += r.end - r.start;
                return r.end - r.start;
            }
        }
        let (mut start, mut end) = (r.start, r.end);
        let before = self.len;
        // Merge with a range that starts at or before `start` and reaches it.
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
                self.ranges.remove(&s);
                self.len -= e - s;
            }
        }
        // Swallow every range that starts inside (or right at the end of) ours.
        while let Some((&s, &e)) = self.ranges.range(start..=end).next() {
            end = end.max(e);
            self.ranges.remove(&s);
            self.len -= e - s;
        }
        self.ranges.insert(start, end);
        self.len += end - start;
        self.len - before
    }

    /// Removes one offset; returns whether it was there.
    pub fn remove(&mut self, offset: u64) -> bool {
        let Some((&s, &e)) = self.ranges.range(..=offset).next_back() else {
            return false;
        };
        if offset >= e {
            return false;
        }
        self.ranges.remove(&s);
        if s < offset {
            self.ranges.insert(s, offset);
        }
        if offset + 1 < e {
            self.ranges.insert(offset + 1, e);
        }
        self.len -= 1;
        true
    }

    /// Drops every offset below `floor`.
    pub fn remove_below(&mut self, floor: u64) {
        while let Some((&s, &e)) = self.ranges.first_key_value() {
            if s >= floor {
                break;
            }
            self.ranges.remove(&s);
            self.len -= e - s;
            if e > floor {
                self.ranges.insert(floor, e);
                self.len += e - floor;
                break;
            }
        }
    }

    /// If `floor` is in the set, the end of its run (the first offset at or
    /// after `floor` not in the set); else `floor`.
    pub fn run_end(&self, floor: u64) -> u64 {
        match self.ranges.range(..=floor).next_back() {
            Some((_, &e)) if floor < e => e,
            _ => floor,
        }
    }

    /// The ranges, in order.
    pub fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.ranges.iter().map(|(&s, &e)| s..e)
    }

    /// The parts of `r` not in the set, in order.
    pub fn gaps(&self, r: Range<u64>) -> Vec<Range<u64>> {
        let mut gaps = Vec::new();
        let mut at = self.run_end(r.start);
        if at >= r.end {
            return gaps;
        }
        for (&s, &e) in self.ranges.range(at..r.end) {
            if s > at {
                gaps.push(at..s);
            }
            at = at.max(e);
        }
        if at < r.end {
            gaps.push(at..r.end);
        }
        gaps
    }

    /// Number of disjoint ranges (what a snapshot stores).
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        InsertRange(u64, u64),
        Remove(u64),
        RemoveBelow(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..200).prop_map(Op::Insert),
            (0u64..200, 0u64..20).prop_map(|(s, n)| Op::InsertRange(s, s + n)),
            (0u64..200).prop_map(Op::Remove),
            (0u64..200).prop_map(Op::RemoveBelow),
        ]
    }

    proptest! {
        /// The set behaves as a plain set of offsets, and its ranges stay
        /// disjoint, non-empty and never adjacent.
        #[test]
        fn matches_a_plain_set(ops in proptest::collection::vec(op(), 0..200)) {
            let mut s = RangeSet::new();
            let mut model = BTreeSet::new();
            for o in ops {
                match o {
                    Op::Insert(x) => prop_assert_eq!(s.insert(x), model.insert(x)),
                    Op::InsertRange(a, b) => {
                        let new = (a..b).filter(|x| model.insert(*x)).count() as u64;
                        prop_assert_eq!(s.insert_range(a..b), new);
                    }
                    Op::Remove(x) => prop_assert_eq!(s.remove(x), model.remove(&x)),
                    Op::RemoveBelow(f) => {
                        s.remove_below(f);
                        model.retain(|&x| x >= f);
                    }
                }
                prop_assert_eq!(s.len(), model.len() as u64);
                let flat: Vec<u64> = s.iter().flatten().collect();
                prop_assert_eq!(&flat, &model.iter().copied().collect::<Vec<_>>());
                let ranges: Vec<_> = s.iter().collect();
                for w in ranges.windows(2) {
                    prop_assert!(w[0].end < w[1].start, "{:?}", ranges);
                }
                for x in 0..220 {
                    prop_assert_eq!(s.contains(x), model.contains(&x));
                }
                for (a, b) in [(0, 220), (50, 120), (13, 14), (30, 30)] {
                    let gaps: Vec<u64> = s.gaps(a..b).into_iter().flatten().collect();
                    let want: Vec<u64> = (a..b).filter(|x| !model.contains(x)).collect();
                    prop_assert_eq!(gaps, want);
                }
            }
        }
    }

    #[test]
    fn run_end_finds_the_first_gap() {
        let mut s = RangeSet::new();
        s.insert_range(5..9);
        s.insert(10);
        assert_eq!(s.run_end(5), 9);
        assert_eq!(s.run_end(7), 9);
        assert_eq!(s.run_end(9), 9);
        assert_eq!(s.run_end(10), 11);
        assert_eq!(s.run_end(2), 2);
    }
}
