//! One repetition: connect new producers, run the load (closed or open
//! loop) through the warm-up and the measured window, mark the window's
//! ends, and report progress while it runs.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use sluice_transport::client::{Producer, ProducerOptions, Transport};
use sluice_transport::proto::SenderConfig;

use super::config::{IngestConfig, Length, PathKind};
use super::window::{mark, Mark};
use crate::load::{self, Shape, Shared, Timeline};
use crate::progress::{thousands, Goal, Progress};
use crate::sizes::Payloads;

/// Which repetition, and where to connect.
pub(super) struct Target<'a> {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub transport: &'a Transport,
    pub daemon_pid: Option<u32>,
    /// Producer ids of this repetition start here (fresh ones for every
    /// repetition and every invocation).
    pub first_id: u64,
    /// 1-based.
    pub run: usize,
    pub progress: &'a Progress,
}

/// What the producer side measured.
pub(super) struct Outcome {
    pub start: Mark,
    pub end: Mark,
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latency: Histogram<u64>,
    pub pacer_lag: Option<Histogram<u64>>,
    pub timeline: Timeline,
}

/// The client transport for `path`, pinning `cert` (fast, quic).
pub(super) fn transport(
    path: PathKind,
    cert: Option<&std::path::Path>,
    token: Option<String>,
) -> Result<Transport, Box<dyn std::error::Error>> {
    if path == PathKind::Udp {
        return Ok(Transport::Udp);
    }
    let cert =
        cert.ok_or("the fast and quic paths need the daemon's certificate (--server-cert)")?;
    let quic = sluice_testkit::daemon::pinned(cert, token)?;
    Ok(match path {
        PathKind::Quic => Transport::Quic(quic),
        _ => Transport::FastPath(quic),
    })
}

pub(super) async fn drive(
    config: &IngestConfig,
    target: Target<'_>,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let options = ProducerOptions {
        transport: target.transport.clone(),
        sender: SenderConfig {
            max_datagram: config.datagram,
            ..SenderConfig::default()
        },
        ..ProducerOptions::default()
    };
    let mut producers = Vec::with_capacity(config.producers);
    for k in 0..config.producers {
        let stream = if config.streams == 1 {
            "bench".to_owned()
        } else {
            format!("bench-{}", k % config.streams)
        };
        let id = target.first_id + k as u64;
        producers.push(Producer::connect(target.addr, &stream, id, options.clone()).await?);
    }

    let start = Instant::now();
    let warmup = Duration::from_secs_f64(config.warmup);
    let window_end = match config.length {
        Length::Seconds(s) => Some(start + warmup + Duration::from_secs_f64(s)),
        Length::CountPerProducer(_) => None,
    };
    let shared = Arc::new(Shared::new(start + warmup, window_end, config.interval));
    let payloads = if config.sizes.is_empty() {
        Payloads::fixed(config.size)
    } else {
        Payloads::mix(&config.sizes)
    };
    // Every repetition draws the same sizes: seed + producer (closed loop)
    // or seed (open loop's one pacer).
    let (pid, admin) = (target.daemon_pid, target.admin);
    let ticker = tokio::spawn(show_progress(
        config.clone(),
        target.run,
        shared.clone(),
        target.progress.clone(),
    ));
    // Without a warm-up the window opens before the first message, so that
    // it holds every ack (a count run then measures all of its messages).
    let early = if warmup.is_zero() {
        Some(mark(&shared, pid, admin).await)
    } else {
        None
    };

    // The producers run; this task marks the window's ends.
    let shape = Shape {
        batch: config.batch,
        in_flight: config.in_flight,
        count: match config.length {
            Length::CountPerProducer(n) => Some(n),
            Length::Seconds(_) => None,
        },
        rate: config.rate,
        stamp: None,
    };
    let (work, pacer) = load::start(shape, &producers, payloads, config.seed, &shared, start)?;

    let first = match early {
        Some(m) => m,
        None => {
            tokio::time::sleep_until((start + warmup).into()).await;
            mark(&shared, pid, admin).await
        }
    };
    let mut work = work;
    let last = match window_end {
        Some(end) => {
            let mut finished = false;
            tokio::select! {
                _ = tokio::time::sleep_until(end.into()) => {}
                // Every producer failed before the end.
                _ = &mut work => finished = true,
            }
            let m = mark(&shared, pid, admin).await;
            shared.stop.store(true, Ordering::Relaxed);
            if !finished {
                let _ = work.await;
            }
            m
        }
        None => {
            let _ = work.await;
            mark(&shared, pid, admin).await
        }
    };
    ticker.abort();
    let pacer_lag = load::pacer_lag(pacer).await?;
    for p in producers {
        if let Err(e) = p.close().await {
            shared.fail(0, &e);
        }
    }
    let (latency, timeline, first_error) = (
        shared.take_latency(),
        shared.timeline(),
        shared.first_error(),
    );
    Ok(Outcome {
        start: first,
        end: last,
        sent: shared.sent.load(Ordering::Relaxed),
        acked: shared.acked.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        first_error,
        latency,
        pacer_lag,
        timeline,
    })
}

/// Updates the progress line every 100 ms until aborted: the phase, how far
/// it is, what has been acked and the rate over the last half second.
async fn show_progress(config: IngestConfig, run: usize, shared: Arc<Shared>, progress: Progress) {
    if progress.is_hidden() {
        return;
    }
    let of = format!("{run} of {}", config.repeat);
    let mut in_window = None;
    let mut recent: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let now = Instant::now();
        let acked = shared.acked.load(Ordering::Relaxed);
        let window = now >= shared.window_start;
        if in_window != Some(window) {
            in_window = Some(window);
            if window {
                let goal = match config.length {
                    Length::Seconds(s) => Goal::Seconds(s),
                    Length::CountPerProducer(n) => Goal::Count(n * config.producers as u64),
                };
                progress.phase(&format!("run {of}"), goal);
            } else {
                progress.phase(&format!("warm-up {of}"), Goal::Seconds(config.warmup));
            }
        }
        recent.push_back((now, acked));
        while recent.len() > 6 {
            recent.pop_front();
        }
        let (t0, a0) = recent[0];
        let rate = (acked - a0) as f64 / (now - t0).as_secs_f64().max(1e-3);
        let note = format!(
            "acked {}  {} msgs/s",
            thousands(acked),
            thousands(rate as u64)
        );
        let done = match (window, config.length) {
            (false, _) => {
                (now - (shared.window_start - Duration::from_secs_f64(config.warmup))).as_secs_f64()
            }
            (true, Length::Seconds(_)) => (now - shared.window_start).as_secs_f64(),
            (true, Length::CountPerProducer(_)) => acked as f64,
        };
        progress.set(done, &note);
    }
}
