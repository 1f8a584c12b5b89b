//! Acks as the driver sends them: ranges, in frames of at most
//! [`MAX_OFFSETS`] offsets.

use super::*;

pub(super) trait TakeUpTo {
    /// Removes and returns every offset up to `offset` (rare: a cumulative
    /// ack), in no particular order.
    fn take_up_to(&mut self, offset: u64) -> Vec<u64>;
}

impl TakeUpTo for OffsetSet {
    fn take_up_to(&mut self, offset: u64) -> Vec<u64> {
        let mut covered = Vec::new();
        self.retain(|&o| {
            let take = o <= offset;
            if take {
                covered.push(o);
            }
            !take
        });
        covered
    }
}

/// Sorts `ranges` and merges those that overlap or touch.
pub(super) fn merge_ranges(ranges: &mut Vec<Range<u64>>) {
    ranges.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges.drain(..) {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    *ranges = merged;
}

/// Appends Ack frames for `ranges`, each covering at most [`MAX_OFFSETS`]
/// offsets (a range longer than what is left of a frame is split).
pub(super) fn put_acks(out: &mut Vec<u8>, ranges: &[Range<u64>]) {
    let mut frame: Vec<Range<u64>> = Vec::new();
    let mut room = MAX_OFFSETS as u64;
    for r in ranges {
        let mut r = r.clone();
        while !r.is_empty() {
            let n = (r.end - r.start).min(room);
            frame.push(r.start..r.start + n);
            r.start += n;
            room -= n;
            if room == 0 {
                put_ack(out, &mut frame);
                room = MAX_OFFSETS as u64;
            }
        }
    }
    if !frame.is_empty() {
        put_ack(out, &mut frame);
    }
}

/// One Ack frame of `frame`'s ranges, which it empties (keeping its
/// capacity).
fn put_ack(out: &mut Vec<u8>, frame: &mut Vec<Range<u64>>) {
    let ack = FromConsumer::Ack {
        ranges: std::mem::take(frame),
    };
    ack.put_frame(out);
    if let FromConsumer::Ack { ranges } = ack {
        *frame = ranges;
        frame.clear();
    }
}

#[cfg(test)]
// Lists of one range are lists of ack ranges here, not ranges mistyped.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    fn decode_acks(out: &[u8]) -> Vec<Vec<Range<u64>>> {
        let mut d = frame::Deframer::new();
        d.set_long();
        d.extend(out);
        let mut got = Vec::new();
        while let Some(f) = d.next_frame().unwrap() {
            match FromConsumer::decode(&f).unwrap() {
                FromConsumer::Ack { ranges } => got.push(ranges),
                other => panic!("not an ack: {other:?}"),
            }
        }
        got
    }

    #[test]
    fn ranges_merge_when_they_overlap_or_touch() {
        let mut r = vec![10..12, 0..3, 3..5, 11..15, 20..21, 1..2];
        merge_ranges(&mut r);
        assert_eq!(r, vec![0..5, 10..15, 20..21]);
    }

    #[test]
    fn ack_frames_cover_at_most_the_limit_each() {
        let max = MAX_OFFSETS as u64;
        let mut out = Vec::new();
        put_acks(&mut out, &[0..10, 20..20 + 2 * max, 5 * max..5 * max + 1]);
        let frames = decode_acks(&out);
        assert_eq!(
            frames,
            vec![
                vec![0..10, 20..20 + max - 10],
                vec![20 + max - 10..20 + 2 * max - 10],
                vec![20 + 2 * max - 10..20 + 2 * max, 5 * max..5 * max + 1],
            ]
        );
        let mut out = Vec::new();
        put_acks(&mut out, &[0..max]);
        assert_eq!(decode_acks(&out), vec![vec![0..max]]);
    }

    #[test]
    fn taking_up_to_an_offset_leaves_the_rest() {
        let mut s = OffsetSet::default();
        s.extend([1, 5, 9, 10, 200, u64::MAX]);
        let mut taken = s.take_up_to(9);
        taken.sort_unstable();
        assert_eq!(taken, vec![1, 5, 9]);
        let mut left: Vec<u64> = s.iter().copied().collect();
        left.sort_unstable();
        assert_eq!(left, vec![10, 200, u64::MAX]);
        assert_eq!(s.take_up_to(u64::MAX).len(), 3);
        assert!(s.is_empty());
    }
}
