//! The producers of one loss row, in the namespace of the thread that calls
//! [`run`] (it builds its tokio runtime there, so every socket is made
//! there too).
//!
//! - closed loop (`rate == 0`): each producer keeps `in_flight` calls of
//!   `batch` messages outstanding, awaited in order; latency from the call
//!   to its durable ack.
//! - open loop (`rate > 0`): one pacing thread hands message `i` to producer
//!   `i % producers` at its due time `start + i / rate` (`batch` at a time,
//!   when the batch's last one is due); latency runs from the **due** time,
//!   so a stall anywhere counts against every message that should have gone
//!   out during it (no coordinated omission), as `ingest` does.
//!
//! Every message handed over is counted as sent; the row then waits (at
//! most `drain`) until each one is acked or has failed.
//!
//! CPU is read at the window's two ends, where its acks are counted (see
//! [`CpuWindow`]): the daemon's from /proc/PID/stat, the producers' as the
//! threads of their runtime (named [`PRODUCER_THREADS`]), so that neither
//! the relay's thread (in this process in relay mode), nor the open loop's
//! pacing thread, nor the harness's waiting counts as the producers'.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use sluice_transport::client::{Producer, ProducerError, ProducerOptions};

use super::interrupt;
use crate::cpu;
use crate::progress::{thousands, Progress};

/// The name of the producers' runtime threads (at most 15 bytes: the
/// kernel cuts thread names there).
pub(super) const PRODUCER_THREADS: &str = "loss-producer";

/// How long acks are grouped for the throughput-over-time series.
pub(super) const SAMPLE: Duration = Duration::from_millis(100);
/// How long outstanding calls get once the user interrupts.
const INTERRUPTED_DRAIN: Duration = Duration::from_secs(2);

/// What the producers of a row do.
#[derive(Debug, Clone)]
pub(super) struct LoadSpec {
    pub producers: usize,
    pub size: usize,
    pub batch: usize,
    pub in_flight: usize,
    /// Total messages/s (open loop); 0: closed loop.
    pub rate: f64,
    /// Seconds measured after the warm-up; `None`: `count` per producer.
    pub seconds: Option<f64>,
    pub count: u64,
    pub warmup: f64,
    /// Most time the calls outstanding at the end get to be acked.
    pub drain: Duration,
    /// The daemon's process, for its CPU time (`None`: not measured).
    pub daemon_pid: Option<u32>,
}

/// CPU time over the measured window, read where its acks are counted.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct CpuWindow {
    /// Wall seconds between the two readings.
    pub seconds: f64,
    /// Acks between them (the window's).
    pub acked: u64,
    /// CPU seconds of the producers' runtime threads.
    pub producers: f64,
    /// CPU seconds of the daemon's process, if it could be read.
    pub daemon: Option<f64>,
}

/// One reading of the clocks [`CpuWindow`] is made of.
struct CpuMark {
    at: Instant,
    acked: u64,
    producers: f64,
    daemon: Option<f64>,
}

impl CpuMark {
    fn now(shared: &Shared, daemon_pid: Option<u32>) -> CpuMark {
        let producers = cpu::threads_seconds(std::process::id())
            .get(PRODUCER_THREADS)
            .copied()
            .unwrap_or(0.0);
        let daemon = daemon_pid.and_then(cpu::process_seconds);
        CpuMark {
            at: Instant::now(),
            acked: shared.acked.load(Relaxed),
            producers,
            daemon,
        }
    }

    fn until(&self, end: &CpuMark) -> CpuWindow {
        CpuWindow {
            seconds: end.at.saturating_duration_since(self.at).as_secs_f64(),
            acked: end.acked - self.acked,
            producers: (end.producers - self.producers).max(0.0),
            daemon: self.daemon.zip(end.daemon).map(|(a, b)| (b - a).max(0.0)),
        }
    }
}

/// What the producers saw.
pub(super) struct LoadOutcome {
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub window_seconds: f64,
    pub window_acked: u64,
    pub latency: Histogram<u64>,
    /// (seconds since the window began, at the sample's end; acked msgs/s).
    pub series: Vec<(f64, f64)>,
    /// Open loop: how late the pacing thread handed messages over.
    pub pacer_lag: Option<Histogram<u64>>,
    /// CPU over the window.
    pub cpu: CpuWindow,
}

pub(super) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

struct Shared {
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    stop: AtomicBool,
    window_start: Instant,
    window_end: Option<Instant>,
    latency: Mutex<Histogram<u64>>,
}

impl Shared {
    fn in_window(&self, t: Instant) -> bool {
        t >= self.window_start && self.window_end.is_none_or(|e| t < e)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Relaxed) || interrupt::requested()
    }

    fn fail(&self, n: u64, e: String) {
        self.errors.fetch_add(n, Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(e);
        }
    }

    fn record(&self, h: &Histogram<u64>) {
        let _ = self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(h);
    }
}

/// Connects `spec.producers` producers (ids from `first_id`) to `addr` for
/// `stream` and runs the load on a runtime built on this thread.
pub(super) fn run(
    spec: &LoadSpec,
    addr: SocketAddr,
    options: &ProducerOptions,
    stream: &str,
    first_id: u64,
    progress: &Progress,
) -> Result<LoadOutcome, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(PRODUCER_THREADS)
        .enable_all()
        .build()
        .map_err(|e| format!("a tokio runtime: {e}"))?;
    rt.block_on(drive(spec, addr, options, stream, first_id, progress))
}

async fn drive(
    spec: &LoadSpec,
    addr: SocketAddr,
    options: &ProducerOptions,
    stream: &str,
    first_id: u64,
    progress: &Progress,
) -> Result<LoadOutcome, String> {
    let mut producers = Vec::with_capacity(spec.producers);
    for k in 0..spec.producers as u64 {
        let p = tokio::time::timeout(
            Duration::from_secs(60),
            Producer::connect(addr, stream, first_id + k, options.clone()),
        )
        .await
        .map_err(|_| format!("producer {}: no session with {addr} within 60 s", k + 1))?
        .map_err(|e| format!("producer {}: connect to {addr}: {e}", k + 1))?;
        producers.push(p);
    }
    let start = Instant::now();
    let window_start = start + Duration::from_secs_f64(spec.warmup);
    let window_end = spec
        .seconds
        .map(|s| window_start + Duration::from_secs_f64(s));
    let shared = Arc::new(Shared {
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
        stop: AtomicBool::new(false),
        window_start,
        window_end,
        latency: Mutex::new(histogram()),
    });
    let payload = Bytes::from(vec![0x42u8; spec.size]);
    let sampler = tokio::spawn(sample(shared.clone(), spec.daemon_pid));
    let ticker = tokio::spawn(show_progress(
        spec.clone(),
        shared.clone(),
        progress.clone(),
    ));
    let (work, pacer) = if spec.rate > 0.0 {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let pacer = {
            let (shared, producers, spec) = (shared.clone(), producers.clone(), spec.clone());
            let handle = tokio::runtime::Handle::current();
            std::thread::Builder::new()
                .name("pacer".into())
                .spawn(move || pace(&spec, &producers, payload, &shared, &handle, &tx, start))
                .map_err(|e| format!("the pacing thread: {e}"))?
        };
        (tokio::spawn(collect(rx)), Some(pacer))
    } else {
        let tasks: Vec<_> = producers
            .iter()
            .map(|p| {
                tokio::spawn(closed_loop(
                    p.clone(),
                    payload.clone(),
                    spec.clone(),
                    shared.clone(),
                ))
            })
            .collect();
        let all = tokio::spawn(async move {
            for t in tasks {
                let _ = t.await;
            }
        });
        (all, None)
    };

    // Until the window ends (or every producer is done, in count mode, or
    // the user interrupts), then the drain.
    let mut work = work;
    let mut finished = false;
    let mut finished_at = None;
    if let Some(end) = window_end {
        let wait_end = async {
            while Instant::now() < end && !interrupt::requested() {
                tokio::time::sleep(Duration::from_millis(20).min(end - Instant::now())).await;
            }
        };
        tokio::select! {
            _ = wait_end => {}
            _ = &mut work => {
                finished = true;
                finished_at = Some(Instant::now());
            }
        }
        shared.stop.store(true, Relaxed);
    }
    let pacer_lag = match pacer {
        Some(p) => Some(
            tokio::task::spawn_blocking(move || p.join())
                .await
                .map_err(|e| format!("the pacing thread: {e}"))?
                .map_err(|_| "the pacing thread panicked".to_owned())?,
        ),
        None => None,
    };
    if !finished {
        if window_end.is_none() {
            // Count mode: the work is the window; it ends when it is done,
            // or (bounded) when the user interrupts.
            let interrupted = async {
                while !interrupt::requested() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            tokio::select! {
                _ = &mut work => finished = true,
                _ = interrupted => shared.stop.store(true, Relaxed),
            }
            finished_at = Some(Instant::now());
        }
        if !finished && !drain(&mut work, spec.drain).await {
            work.abort();
            let missing = shared
                .sent
                .load(Relaxed)
                .saturating_sub(shared.acked.load(Relaxed) + shared.errors.load(Relaxed));
            shared.fail(
                missing,
                if interrupt::requested() {
                    format!("interrupted with {missing} messages not acked")
                } else {
                    format!(
                        "{missing} messages not acked within the drain timeout of {:?}",
                        spec.drain
                    )
                },
            );
        }
    }
    shared.stop.store(true, Relaxed);
    ticker.abort();
    let (series, window_acked, cpu) = sampler.await.unwrap_or_default();
    // A close flushes: bounded, as the daemon may be gone (interrupted).
    let close_within = if interrupt::requested() {
        INTERRUPTED_DRAIN
    } else {
        spec.drain
    };
    let closes: Vec<_> = producers
        .into_iter()
        .map(|p| tokio::spawn(tokio::time::timeout(close_within, p.close())))
        .collect();
    for c in closes {
        match c.await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => shared.fail(0, format!("close: {e}")),
            Ok(Err(_)) => shared.fail(0, format!("close: not done within {close_within:?}")),
            Err(e) => shared.fail(0, format!("close: {e}")),
        }
    }
    let end = window_end.unwrap_or_else(|| finished_at.unwrap_or_else(Instant::now));
    let window_seconds = end.saturating_duration_since(window_start).as_secs_f64();
    let latency = std::mem::replace(
        &mut *shared.latency.lock().unwrap_or_else(|p| p.into_inner()),
        histogram(),
    );
    let first_error = shared
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(LoadOutcome {
        sent: shared.sent.load(Relaxed),
        acked: shared.acked.load(Relaxed),
        errors: shared.errors.load(Relaxed),
        first_error,
        window_seconds,
        window_acked,
        latency,
        series,
        pacer_lag,
        cpu,
    })
}

/// Waits for the work to end, at most `within`, and at most
/// [`INTERRUPTED_DRAIN`] once the user interrupts (the daemon got the
/// signal too: what is outstanding will not be acked). Whether it ended.
async fn drain(work: &mut tokio::task::JoinHandle<()>, within: Duration) -> bool {
    let mut deadline = Instant::now() + within;
    let mut cut = false;
    loop {
        if interrupt::requested() && !cut {
            deadline = deadline.min(Instant::now() + INTERRUPTED_DRAIN);
            cut = true;
        }
        let slice =
            Duration::from_millis(50).min(deadline.saturating_duration_since(Instant::now()));
        if slice.is_zero() {
            return false;
        }
        if tokio::time::timeout(slice, &mut *work).await.is_ok() {
            return true;
        }
    }
}

/// Acks per [`SAMPLE`] over the window, read at each sample's end (the
/// last one cut at the window's end), the acks in the whole window, and
/// the CPU used over it.
async fn sample(shared: Arc<Shared>, daemon_pid: Option<u32>) -> (Vec<(f64, f64)>, u64, CpuWindow) {
    let begin = shared.window_start;
    tokio::time::sleep_until(begin.into()).await;
    let mut points = Vec::new();
    let cpu_start = CpuMark::now(&shared, daemon_pid);
    let first = cpu_start.acked;
    let mut last = (begin, first);
    loop {
        let mut next = last.0 + SAMPLE;
        let mut closing = false;
        if let Some(end) = shared.window_end {
            if next >= end {
                next = end;
                closing = true;
            }
        }
        // In count mode the window ends when the producers stop.
        while Instant::now() < next && !(shared.window_end.is_none() && shared.stopped()) {
            tokio::time::sleep(Duration::from_millis(5).min(next - Instant::now())).await;
        }
        let now = Instant::now().min(next);
        let end = (closing || shared.stopped()).then(|| CpuMark::now(&shared, daemon_pid));
        let acked = end
            .as_ref()
            .map_or_else(|| shared.acked.load(Relaxed), |m| m.acked);
        let dt = (now - last.0).as_secs_f64();
        if dt > 0.0 {
            points.push(((now - begin).as_secs_f64(), (acked - last.1) as f64 / dt));
        }
        last = (now, acked);
        if let Some(end) = end {
            return (points, acked - first, cpu_start.until(&end));
        }
    }
}

/// Updates the progress line every 100 ms: seconds of the row so far (or
/// messages acked, in count mode) and the acks.
async fn show_progress(spec: LoadSpec, shared: Arc<Shared>, progress: Progress) {
    if progress.is_hidden() {
        return;
    }
    // The phase (and its goal) is the sweep's: seconds or messages.
    let start = Instant::now();
    loop {
        tokio::time::sleep(SAMPLE).await;
        let acked = shared.acked.load(Relaxed);
        let done = match spec.seconds {
            Some(s) => start.elapsed().as_secs_f64().min(spec.warmup + s),
            None => acked as f64,
        };
        let phase = if Instant::now() < shared.window_start {
            "warm-up, "
        } else if shared.stop.load(Relaxed) {
            "drain, "
        } else {
            ""
        };
        progress.set(done, &format!("{phase}acked {}", thousands(acked)));
    }
}

type Call = tokio::task::JoinHandle<Result<std::ops::Range<u64>, ProducerError>>;

/// One producer, closed loop: `in_flight` calls outstanding, awaited in
/// order (a producer's acks come in order).
async fn closed_loop(p: Producer, payload: Bytes, spec: LoadSpec, shared: Arc<Shared>) {
    let mut left = match spec.seconds {
        Some(_) => u64::MAX,
        None => spec.count,
    };
    let mut hist = histogram();
    let mut pending: VecDeque<(Instant, u64, Call)> = VecDeque::with_capacity(spec.in_flight);
    loop {
        while pending.len() < spec.in_flight && left > 0 && !shared.stopped() {
            let n = left.min(spec.batch as u64);
            left -= n;
            let msgs = vec![payload.clone(); n as usize];
            let p = p.clone();
            shared.sent.fetch_add(n, Relaxed);
            pending.push_back((
                Instant::now(),
                n,
                tokio::spawn(async move { p.send_batch(msgs).await }),
            ));
        }
        let Some((t0, n, call)) = pending.pop_front() else {
            break;
        };
        match call.await {
            Ok(Ok(_)) => {
                let now = Instant::now();
                shared.acked.fetch_add(n, Relaxed);
                if shared.in_window(now) {
                    hist.saturating_record_n(micros(now - t0), n);
                }
            }
            Ok(Err(e)) => {
                shared.fail(n, e.to_string());
                left = 0;
            }
            Err(e) => {
                shared.fail(n, e.to_string());
                left = 0;
            }
        }
    }
    shared.record(&hist);
}

/// Open loop: the pacing thread (see the module's comment). Returns how
/// late each hand-over in the window was.
fn pace(
    spec: &LoadSpec,
    producers: &[Producer],
    payload: Bytes,
    shared: &Arc<Shared>,
    rt: &tokio::runtime::Handle,
    calls: &tokio::sync::mpsc::UnboundedSender<tokio::task::JoinHandle<()>>,
    start: Instant,
) -> Histogram<u64> {
    let n = producers.len();
    let total = match spec.seconds {
        Some(_) => u64::MAX,
        None => spec.count.saturating_mul(n as u64),
    };
    let interval = 1.0 / spec.rate;
    let mut lag = histogram();
    let mut batches: Vec<Vec<Instant>> = vec![Vec::with_capacity(spec.batch); n];
    let mut hand_over = |k: usize, dues: Vec<Instant>, now: Instant| {
        let Some(last) = dues.last() else {
            return;
        };
        if shared.in_window(*last) {
            lag.saturating_record(micros(now.saturating_duration_since(*last)));
        }
        let msgs = vec![payload.clone(); dues.len()];
        shared.sent.fetch_add(dues.len() as u64, Relaxed);
        let (p, shared) = (producers[k].clone(), shared.clone());
        let call = rt.spawn(async move {
            let r = p.send_batch(msgs).await;
            let now = Instant::now();
            match r {
                Ok(_) => {
                    shared.acked.fetch_add(dues.len() as u64, Relaxed);
                    let mut h = shared.latency.lock().unwrap_or_else(|p| p.into_inner());
                    for d in dues.iter().filter(|d| shared.in_window(**d)) {
                        h.saturating_record(micros(now - *d));
                    }
                }
                Err(e) => shared.fail(dues.len() as u64, e.to_string()),
            }
        });
        let _ = calls.send(call);
    };
    let mut i = 0u64;
    while i < total && !shared.stopped() {
        let due = start + Duration::from_secs_f64(i as f64 * interval);
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
            continue;
        }
        let k = (i % n as u64) as usize;
        batches[k].push(due);
        i += 1;
        if batches[k].len() >= spec.batch {
            let dues = std::mem::replace(&mut batches[k], Vec::with_capacity(spec.batch));
            hand_over(k, dues, now);
        }
    }
    let now = Instant::now();
    for (k, b) in batches.into_iter().enumerate() {
        hand_over(k, b, now);
    }
    lag
}

/// Waits for the open loop's calls, in the order they were made.
async fn collect(mut calls: tokio::sync::mpsc::UnboundedReceiver<tokio::task::JoinHandle<()>>) {
    while let Some(c) = calls.recv().await {
        let _ = c.await;
    }
}
