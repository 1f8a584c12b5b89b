//! The one load generator of the scenarios that publish (`ingest`, `loss`,
//! `e2e`, `xdp --part durable`): counters the producers share with the scenario's
//! coordinator, and the two ways of offering load. A producer is a
//! [`Publisher`]: a sluice producer (fast path, QUIC, raw UDP) or an HTTP
//! publisher, one `send_batch` for both, so every path is measured alike.
//!
//! - closed loop (`rate == 0`): each producer keeps `in_flight` calls of
//!   `batch` messages outstanding, awaited in order (a sluice producer's
//!   acks come in order; an HTTP publisher's calls over several connections
//!   may not, and one that overtakes is then counted when those before it
//!   are done), and starts the next as each is acked: peak durable
//!   throughput. Latency is per message, from the call to its ack, for acks
//!   in the window.
//! - open loop (`rate > 0`): one pacing thread hands message `i` to
//!   producer `i % producers` at its due time `start + i / rate` (`batch` at
//!   a time, when the batch's last one is due); latency runs from the
//!   **due** time, so a stall anywhere counts against every message that
//!   should have gone out during it (no coordinated omission).
//!
//! Either stops when its count is sent or when told to ([`Shared::stop`],
//! or the user's interrupt). Every message handed over is counted as sent.
//!
//! [`run`] is one measured run of either: a warm-up, a window with a
//! [`Mark`](crate::measure::Mark) (or what the caller marks) at each end,
//! then a bounded drain of the calls still out, and the producers closed;
//! [`run_with`] adds `e2e`'s gate, its clock and its sampling.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use sluice_transport::client::{Producer, ProducerOptions};

use crate::interrupt;
use crate::measure::TimeSeries;
use crate::progress::{thousands, Progress};
use crate::publisher::Publisher;
use crate::sizes::{Payloads, Rng};

/// A latency histogram: 1 µs to an hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counters shared by the producers and the coordinator.
pub struct Shared {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    /// Payload bytes of the acked messages.
    pub acked_bytes: AtomicU64,
    pub errors: AtomicU64,
    pub first_error: Mutex<Option<String>>,
    pub stop: AtomicBool,
    pub window_start: Instant,
    /// `None` in count mode: the window ends when the producers are done.
    pub window_end: Option<Instant>,
    pub latency: Mutex<Histogram<u64>>,
    /// Acks in the window per interval.
    pub timeline: Mutex<Timeline>,
    /// Closed loop: no new call while this says no to the count sent so
    /// far (`e2e`: the slowest group is too far behind).
    pub gate: Option<Box<dyn Fn(u64) -> bool + Send + Sync>>,
    /// Closed loop: latency of calls *made* in the window (`e2e`), not of
    /// acks that came in it.
    pub window_by_call: bool,
}

impl Shared {
    /// `interval`: seconds per [`Timeline`] interval.
    pub fn new(window_start: Instant, window_end: Option<Instant>, interval: f64) -> Shared {
        Shared {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            acked_bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            stop: AtomicBool::new(false),
            window_start,
            window_end,
            latency: Mutex::new(histogram()),
            timeline: Mutex::new(Timeline::new(interval)),
            gate: None,
            window_by_call: false,
        }
    }

    fn may_send(&self) -> bool {
        self.gate
            .as_ref()
            .is_none_or(|g| g(self.sent.load(Relaxed)))
    }

    /// Messages and bytes acked so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.acked.load(Relaxed), self.acked_bytes.load(Relaxed))
    }

    pub fn in_window(&self, t: Instant) -> bool {
        t >= self.window_start && self.window_end.is_none_or(|e| t < e)
    }

    /// Told to stop, or the user interrupted.
    pub fn stopped(&self) -> bool {
        self.stop.load(Relaxed) || interrupt::requested()
    }

    /// `n` messages of `bytes` payload in all were acked at `now`.
    pub fn acked(&self, now: Instant, n: u64, bytes: u64) {
        self.acked.fetch_add(n, Relaxed);
        self.acked_bytes.fetch_add(bytes, Relaxed);
        if self.in_window(now) {
            lock(&self.timeline).add(now - self.window_start, n);
        }
    }

    /// `n` messages failed (0: an error that lost none, e.g. on close).
    pub fn fail(&self, n: u64, e: impl std::fmt::Display) {
        self.errors.fetch_add(n, Relaxed);
        lock(&self.first_error).get_or_insert_with(|| e.to_string());
    }

    pub fn first_error(&self) -> Option<String> {
        lock(&self.first_error).clone()
    }

    /// The latency recorded so far, leaving an empty histogram.
    pub fn take_latency(&self) -> Histogram<u64> {
        std::mem::replace(&mut *lock(&self.latency), histogram())
    }

    pub fn timeline(&self) -> Timeline {
        lock(&self.timeline).clone()
    }

    /// Messages sent that are neither acked nor failed.
    pub fn missing(&self) -> u64 {
        self.sent
            .load(Relaxed)
            .saturating_sub(self.acked.load(Relaxed) + self.errors.load(Relaxed))
    }
}

/// Acks counted per interval since the window opened (by ack time).
#[derive(Debug, Clone)]
pub struct Timeline {
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

/// How the producers offer load.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Messages per call.
    pub batch: usize,
    /// Closed loop: calls outstanding per producer.
    pub in_flight: usize,
    /// Messages per producer; `None`: until told to stop.
    pub count: Option<u64>,
    /// Total messages/s of the open loop.
    pub rate: f64,
    /// Open loop: each payload starts with its due time (see
    /// [`stamped`]).
    pub stamp: Option<Clock>,
}

/// How often a closed loop held back by the gate looks again.
const GATE_POLL: Duration = Duration::from_micros(200);

/// Bytes at the start of a stamped payload: the message's due time,
/// microseconds since the Unix epoch, big-endian.
pub const STAMP_BYTES: usize = 8;

/// Unix time as read once, advanced by the monotonic clock: stamps and
/// receive times are comparable and do not jump with the wall clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    at: Instant,
    unix_us: u64,
}

impl Clock {
    pub fn now() -> Clock {
        Clock {
            at: Instant::now(),
            unix_us: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, micros),
        }
    }

    /// `t` in microseconds since the Unix epoch.
    pub fn unix_us(&self, t: Instant) -> u64 {
        match t.checked_duration_since(self.at) {
            Some(d) => self.unix_us + micros(d),
            None => self.unix_us.saturating_sub(micros(self.at - t)),
        }
    }
}

/// A payload of `size` bytes (at least the stamp) starting with `unix_us`.
pub fn stamped(unix_us: u64, size: usize) -> Bytes {
    let mut b = bytes::BytesMut::with_capacity(size.max(STAMP_BYTES));
    bytes::BufMut::put_u64(&mut b, unix_us);
    b.resize(size.max(STAMP_BYTES), 0x42);
    b.freeze()
}

type Call = tokio::task::JoinHandle<Result<(), String>>;

/// One producer, closed loop (see the module's comment).
pub async fn closed_loop(
    p: Publisher,
    payloads: Payloads,
    mut rng: Rng,
    shape: Shape,
    shared: Arc<Shared>,
) {
    let mut left = shape.count.unwrap_or(u64::MAX);
    let mut hist = histogram();
    let mut pending: VecDeque<(Instant, u64, u64, Call)> = VecDeque::with_capacity(shape.in_flight);
    loop {
        while pending.len() < shape.in_flight && left > 0 && !shared.stopped() && shared.may_send()
        {
            let n = left.min(shape.batch as u64);
            left -= n;
            let msgs: Vec<_> = (0..n).map(|_| payloads.pick(&mut rng)).collect();
            let bytes = msgs.iter().map(|m| m.len() as u64).sum();
            let p = p.clone();
            shared.sent.fetch_add(n, Relaxed);
            let call = tokio::spawn(async move { p.send_batch(msgs).await });
            pending.push_back((Instant::now(), n, bytes, call));
        }
        let Some((t0, n, bytes, call)) = pending.pop_front() else {
            if left == 0 || shared.stopped() {
                break;
            }
            // The gate is shut.
            tokio::time::sleep(GATE_POLL).await;
            continue;
        };
        let failed = match call.await {
            Ok(Ok(_)) => {
                let now = Instant::now();
                shared.acked(now, n, bytes);
                if shared.in_window(if shared.window_by_call { t0 } else { now }) {
                    hist.saturating_record_n(micros(now - t0), n);
                }
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        shared.fail(n, failed);
        // The producer is broken: stop offering it more.
        left = 0;
    }
    let _ = lock(&shared.latency).add(&hist);
}

/// The open loop's calls, for [`collect`] to await.
pub type Calls = tokio::sync::mpsc::UnboundedSender<tokio::task::JoinHandle<()>>;

/// The open loop's pacing thread (see the module's comment): message `i`
/// gets the `i`th payload drawn from `rng`. Returns how late each
/// hand-over in the window was.
#[allow(clippy::too_many_arguments)]
pub fn pace(
    shape: Shape,
    producers: &[Publisher],
    payloads: &Payloads,
    mut rng: Rng,
    shared: &Arc<Shared>,
    rt: &tokio::runtime::Handle,
    calls: &Calls,
    start: Instant,
) -> Histogram<u64> {
    let n = producers.len();
    let total = shape.count.map_or(u64::MAX, |c| c.saturating_mul(n as u64));
    let interval = 1.0 / shape.rate;
    let mut lag = histogram();
    let mut batches: Vec<Vec<(Instant, Bytes)>> = vec![Vec::with_capacity(shape.batch); n];
    let mut hand_over = |k: usize, batch: Vec<(Instant, Bytes)>, now: Instant| {
        // Handed over when its last message is due.
        let Some((last, _)) = batch.last() else {
            return;
        };
        if shared.in_window(*last) {
            lag.saturating_record(micros(now.saturating_duration_since(*last)));
        }
        let (dues, msgs): (Vec<Instant>, Vec<Bytes>) = batch.into_iter().unzip();
        let bytes = msgs.iter().map(|m| m.len() as u64).sum();
        shared.sent.fetch_add(dues.len() as u64, Relaxed);
        let (p, shared) = (producers[k].clone(), shared.clone());
        let call = rt.spawn(async move {
            let r = p.send_batch(msgs).await;
            let now = Instant::now();
            match r {
                Ok(_) => {
                    shared.acked(now, dues.len() as u64, bytes);
                    let mut h = lock(&shared.latency);
                    for d in dues.iter().filter(|d| shared.in_window(**d)) {
                        h.saturating_record(micros(now - *d));
                    }
                }
                Err(e) => shared.fail(dues.len() as u64, e),
            }
        });
        let _ = calls.send(call);
    };
    let mut i = 0u64;
    while i < total && !shared.stopped() {
        // Runs on past the window until told to stop, so that the window's
        // end finds it (and its CPU time) still there.
        let due = start + Duration::from_secs_f64(i as f64 * interval);
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
            continue;
        }
        // Everything due by now (a late wake-up sends a burst).
        let k = (i % n as u64) as usize;
        let mut payload = payloads.pick(&mut rng);
        if let Some(clock) = shape.stamp {
            payload = stamped(clock.unix_us(due), payload.len());
        }
        batches[k].push((due, payload));
        i += 1;
        if batches[k].len() >= shape.batch {
            let b = std::mem::replace(&mut batches[k], Vec::with_capacity(shape.batch));
            hand_over(k, b, now);
        }
    }
    // Partial batches go out as they are.
    let now = Instant::now();
    for (k, b) in batches.into_iter().enumerate() {
        hand_over(k, b, now);
    }
    lag
}

/// Waits for the open loop's calls, in the order they were made.
pub async fn collect(mut calls: tokio::sync::mpsc::UnboundedReceiver<tokio::task::JoinHandle<()>>) {
    while let Some(c) = calls.recv().await {
        let _ = c.await;
    }
}

/// Starts the load on the current runtime: the closed loop's tasks, or the
/// open loop's pacing thread (and the task that awaits its calls). The
/// task ends when the load does; the thread returns the pacer's lag.
pub fn start(
    shape: Shape,
    producers: &[Publisher],
    payloads: Payloads,
    seed: u64,
    shared: &Arc<Shared>,
    start: Instant,
) -> std::io::Result<Started> {
    if shape.rate > 0.0 {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (shared, producers) = (shared.clone(), producers.to_vec());
        let rt = tokio::runtime::Handle::current();
        // The open loop's one pacer draws from the seed.
        let rng = Rng::new(seed);
        let pacer = std::thread::Builder::new()
            .name("pacer".into())
            .spawn(move || pace(shape, &producers, &payloads, rng, &shared, &rt, &tx, start))?;
        return Ok((tokio::spawn(collect(rx)), Some(pacer)));
    }
    // Every producer draws from seed + its index.
    let tasks: Vec<_> = producers
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let rng = Rng::new(seed.wrapping_add(k as u64));
            tokio::spawn(closed_loop(
                p.clone(),
                payloads.clone(),
                rng,
                shape,
                shared.clone(),
            ))
        })
        .collect();
    let all = tokio::spawn(async move {
        for t in tasks {
            let _ = t.await;
        }
    });
    Ok((all, None))
}

/// The load's task, and the open loop's pacing thread.
pub type Started = (
    tokio::task::JoinHandle<()>,
    Option<std::thread::JoinHandle<Histogram<u64>>>,
);

/// The pacer's lag, once its thread is done.
pub async fn pacer_lag(
    pacer: Option<std::thread::JoinHandle<Histogram<u64>>>,
) -> Result<Option<Histogram<u64>>, String> {
    let Some(p) = pacer else {
        return Ok(None);
    };
    tokio::task::spawn_blocking(move || p.join())
        .await
        .map_err(|e| format!("the pacing thread: {e}"))?
        .map(Some)
        .map_err(|_| "the pacing thread panicked".to_owned())
}

/// A tokio runtime with two worker threads, named `name` where the CPU
/// time of its threads is read by name (else tokio's own name).
pub fn runtime(name: Option<&str>) -> Result<tokio::runtime::Runtime, String> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(name) = name {
        b.thread_name(name);
    }
    b.worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("a tokio runtime: {e}"))
}

/// Connects `n` producers to `addr`, producer `k` with id `first_id + k`
/// on the stream `stream(k)`, each within 60 s.
pub async fn connect(
    n: usize,
    addr: SocketAddr,
    stream: impl Fn(usize) -> String,
    first_id: u64,
    options: &ProducerOptions,
) -> Result<Vec<Publisher>, String> {
    let mut producers = Vec::with_capacity(n);
    for k in 0..n {
        let (stream, id) = (stream(k), first_id + k as u64);
        let connect = Producer::connect(addr, &stream, id, options.clone());
        let p = tokio::time::timeout(Duration::from_secs(60), connect)
            .await
            .map_err(|_| format!("producer {}: no session with {addr} within 60 s", k + 1))?
            .map_err(|e| format!("producer {}: connect to {addr}: {e}", k + 1))?;
        producers.push(p.into());
    }
    Ok(producers)
}

/// One measured run (see [`run`]).
#[derive(Debug, Clone)]
pub struct Plan {
    pub shape: Shape,
    pub payloads: Payloads,
    /// Seeds the payload sizes: seed + producer (closed loop) or seed
    /// (the open loop's one pacer).
    pub seed: u64,
    /// Seconds at the start not measured.
    pub warmup: f64,
    /// Seconds measured after the warm-up; `None`: until every producer
    /// has sent `shape.count`.
    pub seconds: Option<f64>,
    /// Seconds per [`Timeline`] interval.
    pub interval: f64,
    /// Most time the calls outstanding at the window's end get to be acked
    /// (and the producers to close).
    pub drain: Duration,
}

/// What [`run`] measured.
pub struct Outcome<M> {
    /// The marks at the window's two ends.
    pub start: M,
    pub end: M,
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Per message, of the window (see the module's comment).
    pub latency: Histogram<u64>,
    /// Open loop: how late the pacing thread handed messages over.
    pub pacer_lag: Option<Histogram<u64>>,
    /// Acks per interval of the window.
    pub timeline: Timeline,
}

/// What `e2e` adds to a run (see [`run_with`]).
#[derive(Default)]
pub struct Extra<'a> {
    /// When the run begins (its window counts from there); now if `None`.
    pub begin: Option<Instant>,
    /// [`Shared::gate`] and [`Shared::window_by_call`].
    pub gate: Option<Box<dyn Fn(u64) -> bool + Send + Sync>>,
    pub window_by_call: bool,
    /// Called every [`POLL`] through the window.
    pub poll: Option<&'a mut dyn FnMut(&Shared)>,
}

/// How often [`run`] looks at the clock, the load and the user's interrupt.
const POLL: Duration = Duration::from_millis(20);
/// How long outstanding calls (and closes) get once the user interrupts.
const INTERRUPTED_DRAIN: Duration = Duration::from_secs(2);

/// Runs `producers` by `plan` on the current runtime: the warm-up, the
/// window with `mark` at each end (called where it may block), until the
/// window's end or, without one, until every producer is done (or the
/// user interrupts); then the drain (messages not acked by its end fail),
/// and the producers closed. Without a warm-up the window opens before
/// the first message, so that it holds every ack (a count run then
/// measures all of its messages).
pub async fn run<M>(
    producers: Vec<Publisher>,
    plan: &Plan,
    progress: &Progress,
    mark: impl Fn(&Shared) -> M,
) -> Result<Outcome<M>, String> {
    run_with(producers, plan, progress, mark, Extra::default()).await
}

/// [`run`] with what `extra` adds.
pub async fn run_with<M>(
    producers: Vec<Publisher>,
    plan: &Plan,
    progress: &Progress,
    mark: impl Fn(&Shared) -> M,
    mut extra: Extra<'_>,
) -> Result<Outcome<M>, String> {
    let begin = extra.begin.unwrap_or_else(Instant::now);
    let window_start = begin + Duration::from_secs_f64(plan.warmup);
    let window_end = plan
        .seconds
        .map(|s| window_start + Duration::from_secs_f64(s));
    let mut shared = Shared::new(window_start, window_end, plan.interval);
    shared.gate = extra.gate;
    shared.window_by_call = extra.window_by_call;
    let shared = Arc::new(shared);
    let mark = || tokio::task::block_in_place(|| mark(&shared));
    let ticker = tokio::spawn(tick(
        shared.clone(),
        plan.seconds.is_none(),
        progress.clone(),
    ));
    let early = (plan.warmup == 0.0).then(mark);
    let (mut work, pacer) = start(
        plan.shape,
        &producers,
        plan.payloads.clone(),
        plan.seed,
        &shared,
        begin,
    )
    .map_err(|e| format!("the pacing thread: {e}"))?;
    let first = match early {
        Some(m) => m,
        None => {
            tokio::time::sleep_until(window_start.into()).await;
            mark()
        }
    };
    let mut done = false;
    while !interrupt::requested() {
        if let Some(poll) = extra.poll.as_mut() {
            poll(&shared);
        }
        let left = window_end.map(|e| e.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            break;
        }
        // Every producer done: the count sent, or all of them failed.
        if tokio::time::timeout(left.map_or(POLL, |l| l.min(POLL)), &mut work)
            .await
            .is_ok()
        {
            done = true;
            break;
        }
    }
    let last = mark();
    shared.stop.store(true, Relaxed);
    let pacer_lag = pacer_lag(pacer).await?;
    if !done && !drain(&mut work, plan.drain).await {
        work.abort();
        let missing = shared.missing();
        shared.fail(
            missing,
            if interrupt::requested() {
                format!("interrupted with {missing} messages not acked")
            } else {
                format!(
                    "{missing} messages not acked within the drain timeout of {:?}",
                    plan.drain
                )
            },
        );
    }
    ticker.abort();
    // A close flushes: bounded, as the daemon may be gone (interrupted).
    let within = if interrupt::requested() {
        INTERRUPTED_DRAIN
    } else {
        plan.drain
    };
    let closes: Vec<_> = producers
        .into_iter()
        .map(|p| tokio::spawn(tokio::time::timeout(within, p.close())))
        .collect();
    for c in closes {
        match c.await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => shared.fail(0, format!("close: {e}")),
            Ok(Err(_)) => shared.fail(0, format!("close: not done within {within:?}")),
            Err(e) => shared.fail(0, format!("close: {e}")),
        }
    }
    Ok(Outcome {
        start: first,
        end: last,
        sent: shared.sent.load(Relaxed),
        acked: shared.acked.load(Relaxed),
        errors: shared.errors.load(Relaxed),
        first_error: shared.first_error(),
        latency: shared.take_latency(),
        pacer_lag,
        timeline: shared.timeline(),
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

/// Updates the progress line every 100 ms, in the phase the caller set:
/// seconds so far (or, by count, messages acked), the acks and their rate
/// over the last half second.
async fn tick(shared: Arc<Shared>, by_count: bool, progress: Progress) {
    if progress.is_hidden() {
        return;
    }
    let begin = Instant::now();
    let mut recent: VecDeque<(Instant, u64)> = VecDeque::new();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = Instant::now();
        let acked = shared.acked.load(Relaxed);
        recent.push_back((now, acked));
        if recent.len() > 6 {
            recent.pop_front();
        }
        let (t0, a0) = recent[0];
        let rate = (acked - a0) as f64 / (now - t0).as_secs_f64().max(1e-3);
        let phase = if now < shared.window_start {
            "warm-up, "
        } else if shared.stop.load(Relaxed) {
            "drain, "
        } else {
            ""
        };
        let done = if by_count {
            acked as f64
        } else {
            (now - begin).as_secs_f64()
        };
        let note = format!(
            "{phase}acked {}  {} msgs/s",
            thousands(acked),
            thousands(rate as u64)
        );
        progress.set(done, &note);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_maps_instants_to_unix_time() {
        let c = Clock::now();
        let later = c.at + Duration::from_millis(1500);
        assert_eq!(c.unix_us(later) - c.unix_us(c.at), 1_500_000);
        assert!(c.unix_us(c.at) > 1_600_000_000_000_000);
    }

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
