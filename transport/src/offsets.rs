//! Stream offsets as both ends of a consumer's stream keep them: sets and
//! maps keyed by offset with a cheap hash, and acks as ranges of
//! consecutive offsets.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;

/// Hashes an offset with one multiplication. Offsets are dense integers:
/// multiplying by an odd constant spreads consecutive ones over a table's
/// buckets and mixes the high bits the table also uses, at a fraction of
/// SipHash's cost. (No defence against chosen keys: the offsets hashed are
/// ones the daemon itself handed out.)
#[derive(Default, Clone, Copy)]
pub struct OffsetHasher(u64);

impl Hasher for OffsetHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; anything else still hashes correctly.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0 ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub type OffsetSet = HashSet<u64, BuildHasherDefault<OffsetHasher>>;
pub type OffsetHashMap<V> = HashMap<u64, V, BuildHasherDefault<OffsetHasher>>;

/// `offsets` (any order, duplicates allowed) as sorted ranges of
/// consecutive offsets, none touching the next.
pub fn ranges_of(offsets: &[u64]) -> Vec<Range<u64>> {
    let mut sorted = offsets.to_vec();
    let mut ranges = Vec::new();
    ranges_into(&mut sorted, &mut ranges);
    ranges
}

/// Appends `offsets` (sorted here, in place; duplicates allowed) to
/// `ranges` as sorted ranges of consecutive offsets, none touching the
/// next. The last offset there is (u64::MAX) cannot end a range: the
/// daemon never delivers it (offsets count records), so it is left out.
pub fn ranges_into(offsets: &mut [u64], ranges: &mut Vec<Range<u64>>) {
    // Acks come nearly in order: the sort mostly checks that they are.
    offsets.sort_unstable();
    let mut run: Option<Range<u64>> = None;
    for &o in offsets.iter() {
        let Some(end) = o.checked_add(1) else {
            continue;
        };
        match &mut run {
            Some(r) if o < r.end => {}
            Some(r) if o == r.end => r.end = end,
            _ => {
                if let Some(r) = run.replace(o..end) {
                    ranges.push(r);
                }
            }
        }
    }
    ranges.extend(run);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_ranges_in_any_order_with_duplicates() {
        let o = [7, 3, 4, 5, 9, 4, 8, 20, u64::MAX, 0];
        assert_eq!(ranges_of(&o), vec![0..1, 3..6, 7..10, 20..21]);
        assert_eq!(ranges_of(&[]), Vec::<Range<u64>>::new());
        assert_eq!(ranges_of(&[u64::MAX - 1]), vec![u64::MAX - 1..u64::MAX]);
    }

    #[test]
    fn consecutive_offsets_hash_to_distinct_values() {
        let hash = |o: u64| {
            let mut h = OffsetHasher::default();
            h.write_u64(o);
            h.finish()
        };
        let mut seen = HashSet::new();
        assert!((0..10_000).all(|o| seen.insert(hash(o))));
    }
}
