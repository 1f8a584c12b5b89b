//! The producers of one loss row, in the namespace of the thread that calls
//! [`run`] (it builds its tokio runtime there, so every socket is made
//! there too).
//!
//! The load is [`crate::load`]'s, closed or open loop as for `ingest`.
//! Every message handed over is counted as sent; the row then waits (at
//! most `drain`) until each one is acked or has failed.
//!
//! CPU is read at the window's two ends, where its acks are counted (see
//! [`CpuWindow`]): the daemon's from /proc/PID/stat, the producers' as the
//! threads of their runtime (named [`PRODUCER_THREADS`]), so that neither
//! the relay's thread (in this process in relay mode), nor the open loop's
//! pacing thread, nor the harness's waiting counts as the producers'.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use sluice_transport::client::{Producer, ProducerOptions};

use crate::cpu;
use crate::interrupt;
use crate::load::{self, Shape, Shared};
use crate::progress::{thousands, Progress};
use crate::sizes::Payloads;

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
    let shared = Arc::new(Shared::new(window_start, window_end, SAMPLE.as_secs_f64()));
    let sampler = tokio::spawn(sample(shared.clone(), spec.daemon_pid));
    let ticker = tokio::spawn(show_progress(
        spec.clone(),
        shared.clone(),
        progress.clone(),
    ));
    let shape = Shape {
        batch: spec.batch,
        in_flight: spec.in_flight,
        count: spec.seconds.is_none().then_some(spec.count),
        rate: spec.rate,
        stamp: None,
    };
    let payloads = Payloads::fixed(spec.size);
    let (work, pacer) = load::start(shape, &producers, payloads, 0, &shared, start)
        .map_err(|e| format!("the pacing thread: {e}"))?;

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
    let pacer_lag = load::pacer_lag(pacer).await?;
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
            let missing = shared.missing();
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
    let (latency, first_error) = (shared.take_latency(), shared.first_error());
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
