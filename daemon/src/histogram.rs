//! A fixed-bucket histogram that many threads record into without locks,
//! rendered as a Prometheus histogram. Values are whole numbers in a unit
//! the owner picks (microseconds, records); `per_unit` (how many of them
//! make one exposed unit: 1,000,000 µs a second) turns them into the
//! exposed unit when rendered. Dividing by it, not multiplying by its
//! inverse, makes 50 µs the double nearest 0.00005 (50 × 1e-6 is not), so
//! bounds print as the short decimals they are.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds of the buckets, ascending; a last `+Inf` bucket is implied.
    bounds: &'static [u64],
    /// Per bucket (not cumulative), the `+Inf` one last.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
    /// Divides values (and bounds) when rendered: a whole number.
    per_unit: f64,
}

/// Bounds in microseconds for fdatasync and ack latencies: 50 µs to 5 s.
pub const LATENCY_US: &[u64] = &[
    50, 100, 200, 300, 500, 750, 1_000, 2_000, 3_000, 5_000, 10_000, 25_000, 50_000, 100_000,
    250_000, 500_000, 1_000_000, 5_000_000,
];

/// Bounds for counts per batch (records per group commit).
pub const BATCH_SIZES: &[u64] = &[
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024, 4_096, 16_384, 65_536,
];

/// A snapshot: cumulative counts per bound (the last one is `+Inf`).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// (upper bound in the exposed unit, cumulative count); last is +Inf.
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [u64], per_unit: u32) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        debug_assert!(per_unit > 0);
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            per_unit: f64::from(per_unit.max(1)),
        }
    }

    /// Microsecond latencies exposed in seconds.
    pub fn latency() -> Self {
        Self::new(LATENCY_US, 1_000_000)
    }

    /// Batch sizes exposed as counts.
    pub fn batch_sizes() -> Self {
        Self::new(BATCH_SIZES, 1)
    }

    /// Observes the time since `since`, in microseconds.
    pub fn observe_since(&self, since: std::time::Instant) {
        self.observe_duration(since.elapsed());
    }

    /// Observes a duration, in microseconds.
    pub fn observe_duration(&self, d: std::time::Duration) {
        self.observe(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn observe(&self, value: u64) {
        let i = self.bounds.partition_point(|&b| b < value);
        self.counts[i].fetch_add(1, Relaxed);
        // Saturating: a huge value must not wrap the sum.
        let _ = self
            .sum
            .fetch_update(Relaxed, Relaxed, |s| Some(s.saturating_add(value)));
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Relaxed);
            let bound = self
                .bounds
                .get(i)
                .map_or(f64::INFINITY, |&b| b as f64 / self.per_unit);
            buckets.push((bound, cumulative));
        }
        Snapshot {
            buckets,
            sum: self.sum.load(Relaxed) as f64 / self.per_unit,
            count: cumulative,
        }
    }
}

/// A latency histogram ([`Histogram::latency`]) that is its own default,
/// for structs of counters that derive `Default`.
#[derive(Debug)]
pub struct Latency(Histogram);

impl Default for Latency {
    fn default() -> Self {
        Latency(Histogram::latency())
    }
}

impl std::ops::Deref for Latency {
    type Target = Histogram;

    fn deref(&self) -> &Histogram {
        &self.0
    }
}

impl Snapshot {
    /// The bucket bound at or below which a share `q` (0..=1) of the values
    /// fall: an upper estimate of that quantile. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        quantile(&self.buckets, q)
    }
}

/// The quantile `q` of cumulative `(bound, count)` buckets, as the smallest
/// bound that covers it. Shared with readers of scraped histograms.
pub fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
    buckets.iter().find(|(_, c)| *c >= rank).map(|(b, _)| *b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::new(&[10, 100], 1);
        for v in [0, 10, 11, 100, 101, 5_000] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(10.0, 2), (100.0, 4), (f64::INFINITY, 6)]);
        assert_eq!(s.count, 6);
        assert_eq!(s.sum, 5_222.0);
    }

    #[test]
    fn quantiles_are_upper_bounds() {
        let h = Histogram::latency();
        for _ in 0..98 {
            h.observe(80);
        }
        h.observe(2_500);
        h.observe(40_000);
        let s = h.snapshot();
        // Bounds are the doubles nearest the decimal seconds.
        assert_eq!(s.quantile(0.5), Some(0.0001));
        assert_eq!(s.quantile(0.99), Some(0.003));
        assert_eq!(s.quantile(1.0), Some(0.05));
        assert_eq!(Histogram::latency().snapshot().quantile(0.5), None);
    }
}
