//! Rate-limited logging for events a stranger can trigger at will (refused
//! sessions): the first few each second are logged, the rest are counted
//! and the count is reported with the next line that gets through, so a
//! flood cannot fill the disk with logs nor hide that it happened.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LogLimit {
    per_second: u32,
    window: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl LogLimit {
    pub fn new(per_second: u32) -> Self {
        LogLimit {
            per_second,
            window: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)` if this event may be logged, where `n` events were
    /// suppressed since the last one logged; `None` to stay quiet.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let fresh = self
            .window
            .is_none_or(|w| now.saturating_duration_since(w) >= Duration::from_secs(1));
        if fresh {
            self.window = Some(now);
            self.in_window = 0;
        }
        if self.in_window < self.per_second {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_per_second_then_a_count_of_the_rest() {
        let t0 = Instant::now();
        let mut l = LogLimit::new(2);
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0), Some(0));
        for _ in 0..5 {
            assert_eq!(l.allow(t0 + Duration::from_millis(500)), None);
        }
        assert_eq!(l.allow(t0 + Duration::from_secs(1)), Some(5));
        assert_eq!(l.allow(t0 + Duration::from_secs(1)), Some(0));
    }
}
