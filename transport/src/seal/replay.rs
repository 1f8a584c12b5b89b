//! The anti-replay window: which packet numbers of one lease and direction
//! were already accepted.
//!
//! UDP reorders, so the receiver cannot simply demand increasing numbers. Like
//! IPsec and DTLS it keeps the highest number accepted plus one bit for each of
//! the `REPLAY_WINDOW` numbers at and below it. A number above the highest is
//! new; one inside the window is new unless its bit is set; one below the
//! window is refused because it can no longer be told apart from a replay.

use super::OpenError;

/// How many packet numbers, counting down from the highest accepted, are
/// remembered individually. 1024 packets of 1,452 bytes is ~1.5 MB of
/// reordering, far more than a LAN produces.
pub const REPLAY_WINDOW: u64 = 1024;

const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// Highest accepted packet number and a fixed bitmap below it: O(1) per packet
/// (at most one pass over 16 words) and no allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Highest packet number accepted so far; 0 before the first (0 is never sent).
    highest: u64,
    /// Bit `d` (word `d / 64`, bit `d % 64`) is set when `highest - d` was accepted.
    seen: [u64; WORDS],
}

impl ReplayWindow {
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest packet number accepted so far (0 if none).
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// Whether `pn` may still be accepted. Does not change the window: the
    /// caller marks `pn` only once the packet has been authenticated, so that
    /// a forged packet cannot move the window or burn a number.
    pub fn check(&self, pn: u64) -> Result<(), OpenError> {
        if pn == 0 {
            // Numbers start at 1; 0 is below every window.
            return Err(OpenError::TooOld);
        }
        if pn > self.highest {
            return Ok(());
        }
        let d = self.highest - pn;
        if d >= REPLAY_WINDOW {
            return Err(OpenError::TooOld);
        }
        if self.seen[(d / 64) as usize] & (1 << (d % 64)) != 0 {
            return Err(OpenError::Replayed);
        }
        Ok(())
    }

    /// Records `pn` as accepted. Call only after `check(pn)` passed and the
    /// packet authenticated; numbers outside the window are ignored.
    pub fn mark(&mut self, pn: u64) {
        if pn == 0 {
            return;
        }
        if pn > self.highest {
            self.shift(pn - self.highest);
            self.highest = pn;
            self.seen[0] |= 1;
        } else {
            let d = self.highest - pn;
            if d < REPLAY_WINDOW {
                self.seen[(d / 64) as usize] |= 1 << (d % 64);
            }
        }
    }

    /// Moves every bit `by` places towards the old end (bit d becomes bit
    /// d + by), dropping what falls off: the window slid up by `by`.
    fn shift(&mut self, by: u64) {
        if by >= REPLAY_WINDOW {
            self.seen = [0; WORDS];
            return;
        }
        let words = (by / 64) as usize;
        let bits = (by % 64) as u32;
        // From the top down, so that every word read has not been written yet.
        for i in (0..WORDS).rev() {
            let from = i.checked_sub(words).map_or(0, |j| self.seen[j]);
            let carry = i.checked_sub(words + 1).map_or(0, |j| self.seen[j]);
            self.seen[i] = if bits == 0 {
                from
            } else {
                (from << bits) | (carry >> (64 - bits))
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    /// The obvious definition, with a set of every number ever accepted.
    #[derive(Default)]
    struct Model {
        highest: u64,
        accepted: HashSet<u64>,
    }

    impl Model {
        fn check(&self, pn: u64) -> Result<(), OpenError> {
            if pn == 0 || (pn <= self.highest && self.highest - pn >= REPLAY_WINDOW) {
                Err(OpenError::TooOld)
            } else if self.accepted.contains(&pn) {
                Err(OpenError::Replayed)
            } else {
                Ok(())
            }
        }

        fn mark(&mut self, pn: u64) {
            self.highest = self.highest.max(pn);
            self.accepted.insert(pn);
        }
    }

    #[test]
    fn edges_of_the_window() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.check(0), Err(OpenError::TooOld));
        assert_eq!(w.check(1), Ok(()));
        w.mark(2000);
        assert_eq!(w.check(2000), Err(OpenError::Replayed));
        // 2000 - 1023 is the oldest number still in the window.
        assert_eq!(w.check(2000 - 1023), Ok(()));
        assert_eq!(w.check(2000 - 1024), Err(OpenError::TooOld));
        w.mark(2000 - 1023);
        assert_eq!(w.check(2000 - 1023), Err(OpenError::Replayed));
        // One step up pushes it out.
        w.mark(2001);
        assert_eq!(w.check(2000 - 1023), Err(OpenError::TooOld));
        assert_eq!(w.check(2000), Err(OpenError::Replayed));
        assert_eq!(w.check(u64::MAX), Ok(()));
        w.mark(u64::MAX);
        assert_eq!(w.check(u64::MAX), Err(OpenError::Replayed));
        assert_eq!(w.check(2001), Err(OpenError::TooOld));
    }

    #[test]
    fn shifts_across_word_boundaries() {
        for step in [1u64, 63, 64, 65, 127, 128, 1000, 1023, 1024, 1025] {
            let mut w = ReplayWindow::new();
            let mut m = Model::default();
            let mut pn = 1u64;
            for _ in 0..50 {
                for p in [pn, pn.saturating_sub(step / 2).max(1)] {
                    assert_eq!(w.check(p), m.check(p), "step {step} pn {p}");
                    if w.check(p).is_ok() {
                        w.mark(p);
                        m.mark(p);
                    }
                }
                pn += step;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Any mix of increasing, reordered, duplicate and stale numbers gets
        /// the same answers as the model.
        #[test]
        fn agrees_with_model(steps in proptest::collection::vec((0u8..4, 0u64..3000), 1..400)) {
            let mut w = ReplayWindow::new();
            let mut m = Model::default();
            let mut top = 0u64;
            for (kind, n) in steps {
                let pn = match kind {
                    0 => top + 1 + n % 70,              // ahead, small jump
                    1 => top + 1 + n,                   // ahead, big jump
                    _ => top.saturating_sub(n % 1200),  // behind: in, at or past the window edge
                };
                let got = w.check(pn);
                prop_assert_eq!(got, m.check(pn), "pn {}", pn);
                if got.is_ok() {
                    w.mark(pn);
                    m.mark(pn);
                    top = top.max(pn);
                }
                prop_assert_eq!(w.highest(), m.highest);
            }
        }
    }
}
