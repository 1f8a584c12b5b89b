//! The measurement window of one repetition: counters the producers share,
//! snapshots (marks) at both ends of the window, and acks counted per
//! interval for the throughput-over-time picture.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use sluice_daemon::metrics::scrape::Scrape;
use sluice_transport::client::ProducerError;

use crate::cpu;
use crate::daemon;
use crate::measure::{Machine, TimeSeries};

/// Counters shared by the producers and the coordinator.
pub(super) struct Shared {
    pub acked: AtomicU64,
    /// Payload bytes of the acked messages.
    pub acked_bytes: AtomicU64,
    pub sent: AtomicU64,
    pub errors: AtomicU64,
    pub first_error: Mutex<Option<String>>,
    pub stop: AtomicBool,
    pub window_start: Instant,
    /// `None` in count mode: the window ends when the producers are done.
    pub window_end: Option<Instant>,
    pub latency: Mutex<Histogram<u64>>,
    pub timeline: Mutex<Timeline>,
}

impl Shared {
    pub fn new(window_start: Instant, window_end: Option<Instant>, interval: f64) -> Shared {
        Shared {
            acked: AtomicU64::new(0),
            acked_bytes: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            stop: AtomicBool::new(false),
            window_start,
            window_end,
            latency: Mutex::new(histogram()),
            timeline: Mutex::new(Timeline::new(interval)),
        }
    }

    pub fn in_window(&self, t: Instant) -> bool {
        t >= self.window_start && self.window_end.is_none_or(|e| t < e)
    }

    /// `n` messages of `bytes` payload in all were acked at `now`.
    pub fn acked(&self, now: Instant, n: u64, bytes: u64) {
        self.acked.fetch_add(n, Ordering::Relaxed);
        self.acked_bytes.fetch_add(bytes, Ordering::Relaxed);
        if self.in_window(now) {
            self.timeline
                .lock()
                .unwrap()
                .add(now - self.window_start, n);
        }
    }

    pub fn fail(&self, n: u64, e: &ProducerError) {
        self.errors.fetch_add(n, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }
}

pub(super) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

pub(super) fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

/// Acks counted per interval since the window opened (by ack time).
#[derive(Debug, Clone)]
pub(super) struct Timeline {
    interval: f64,
    counts: Vec<u64>,
}

impl Timeline {
    pub fn new(interval: f64) -> Timeline {
        Timeline {
            interval,
            counts: Vec::new(),
        }
    }

    pub fn add(&mut self, since_start: Duration, n: u64) {
        let i = (since_start.as_secs_f64() / self.interval) as usize;
        if self.counts.len() <= i {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += n;
    }

    /// Msgs/s per interval of a `window`-second window, each point at the
    /// interval's end. A last interval cut to under half its width by the
    /// window's end is left out (a rate over a sliver is mostly noise),
    /// unless it is the only one (a window shorter than an interval).
    pub fn series(&self, label: String, window: f64) -> TimeSeries {
        let iv = self.interval;
        let whole = (window / iv).ceil() as usize;
        let mut points = Vec::with_capacity(whole);
        for i in 0..whole {
            let from = i as f64 * iv;
            let to = ((i + 1) as f64 * iv).min(window);
            if i > 0 && to - from < iv / 2.0 {
                break;
            }
            let n = self.counts.get(i).copied().unwrap_or(0);
            points.push((to, n as f64 / (to - from)));
        }
        TimeSeries { label, points }
    }
}

/// A snapshot at one end of the window.
pub(super) struct Mark {
    pub at: Instant,
    pub acked: u64,
    pub acked_bytes: u64,
    pub self_cpu: f64,
    pub daemon_cpu: Option<f64>,
    pub self_threads: BTreeMap<String, f64>,
    pub daemon_threads: BTreeMap<String, f64>,
    pub machine: Option<Machine>,
    pub scrape: Option<Scrape>,
}

pub(super) async fn mark(shared: &Shared, daemon_pid: Option<u32>, admin: SocketAddr) -> Mark {
    let at = Instant::now();
    let acked = shared.acked.load(Ordering::Relaxed);
    let acked_bytes = shared.acked_bytes.load(Ordering::Relaxed);
    let self_cpu = cpu::self_seconds();
    let daemon_cpu = daemon_pid.and_then(cpu::process_seconds);
    let self_threads = cpu::threads_seconds(std::process::id());
    let daemon_threads = daemon_pid.map(cpu::threads_seconds).unwrap_or_default();
    let machine = Machine::now();
    let scrape = tokio::task::spawn_blocking(move || daemon::scrape(admin).ok())
        .await
        .ok()
        .flatten();
    Mark {
        at,
        acked,
        acked_bytes,
        self_cpu,
        daemon_cpu,
        self_threads,
        daemon_threads,
        machine,
        scrape,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_rates_per_interval() {
        let mut t = Timeline::new(0.1);
        t.add(Duration::from_millis(10), 5);
        t.add(Duration::from_millis(99), 5);
        t.add(Duration::from_millis(150), 20);
        t.add(Duration::from_millis(260), 1);
        // 0.27 s: the third interval is 0.07 s wide, kept.
        let s = t.series("r".into(), 0.27);
        assert_eq!(s.points.len(), 3);
        assert!((s.points[0].1 - 100.0).abs() < 1e-6, "{:?}", s.points);
        assert!((s.points[1].1 - 200.0).abs() < 1e-6);
        assert!((s.points[2].0 - 0.27).abs() < 1e-9);
        assert!((s.points[2].1 - 1.0 / 0.07).abs() < 1e-6);
        // 0.22 s: the sliver 0.2..0.22 is left out.
        assert_eq!(t.series("r".into(), 0.22).points.len(), 2);
        // A window shorter than half an interval still has its point.
        let s = t.series("r".into(), 0.02);
        assert_eq!(s.points.len(), 1);
        assert!((s.points[0].1 - 10.0 / 0.02).abs() < 1e-6);
        // Intervals without acks are zeros, not gaps.
        let s = Timeline::new(0.1).series("e".into(), 0.3);
        assert_eq!(s.points.len(), 3);
        assert!(s.points.iter().all(|p| p.1 == 0.0));
    }
}
