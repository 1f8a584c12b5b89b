//! One phase of the `e2e` scenario: a fresh stream, producers driven
//! closed or open loop, and consumer groups on it; the window's marks, the
//! drain, and what it all measured.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use sluice_daemon::metrics::scrape::Scrape;
use sluice_transport::client::{
    Consumer, ConsumerOptions, ProducerOptions, QuicOptions, StartAt, Transport,
};
use sluice_transport::proto::SenderConfig;

use super::{load, ConsumeConfig};
use crate::ingest::PathKind;
use crate::load::{Shape, Shared};
use crate::measure;
use crate::sizes::Payloads;

/// How a phase publishes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Drive {
    /// As fast as acks come back.
    Closed,
    /// At this many msgs/s in total, due times stamped in the payloads.
    Open { rate: f64 },
}

/// One phase: a fresh stream, the producers driven so, and `groups`
/// consumer groups on it.
#[derive(Debug, Clone)]
pub struct PhaseSpec {
    /// Short name, part of the stream's and groups' names.
    pub name: String,
    pub groups: usize,
    pub drive: Drive,
    /// After the producers stop: this many groups (0 or 1) join the stream
    /// from its start, and the time they take to receive everything
    /// published is measured (a group draining a backlog, alone on the
    /// machine: the daemon's delivery capacity for one group).
    pub backlog_groups: usize,
}

/// A group draining the phase's stream after the producers stopped.
pub(crate) struct Backlog {
    /// Messages it had to receive (everything published).
    pub messages: u64,
    /// When it joined (its tallies at zero) and when it had everything (or
    /// the drain timed out).
    pub start: Mark,
    pub end: Mark,
    pub caught_up: bool,
    pub first_error: Option<String>,
}

/// Where and how the phases reach the daemon.
pub(crate) struct Target {
    pub quic: SocketAddr,
    pub admin: SocketAddr,
    /// A started daemon's pid (for its CPU time).
    pub pid: Option<u32>,
    pub client: QuicOptions,
    /// Prefix of this run's stream and group names, and of its producer ids.
    pub prefix: String,
    pub id_base: u64,
    pub consumers: tokio::runtime::Handle,
    /// The progress line: each phase counts seconds from its start.
    pub progress: crate::progress::Progress,
}

/// A snapshot at one end of a window: the common mark, and per group the
/// distinct messages and deliveries so far.
pub(crate) struct Mark {
    pub mark: measure::Mark,
    pub distinct: Vec<u64>,
    pub deliveries: Vec<u64>,
}

impl std::ops::Deref for Mark {
    type Target = measure::Mark;

    fn deref(&self) -> &measure::Mark {
        &self.mark
    }
}

/// What a phase measured.
pub(crate) struct Outcome {
    pub spec: PhaseSpec,
    pub stream: String,
    pub group_names: Vec<String>,
    pub start: Mark,
    pub end: Mark,
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub ack_latency: Histogram<u64>,
    pub pacer_lag: Option<Histogram<u64>>,
    /// Per group: seconds from the window's end until it had every
    /// published message (`None`: not within the drain timeout).
    pub caught_up: Vec<Option<f64>>,
    /// When every group had caught up (or the drain timed out).
    pub drained: Option<Mark>,
    /// Per group at the very end: distinct messages and deliveries.
    pub distinct: Vec<u64>,
    pub deliveries: Vec<u64>,
    /// Per group: delivery latency (open loop).
    pub latency: Vec<Histogram<u64>>,
    /// The daemon's metrics once the consumers' acks were durable.
    pub after: Option<Scrape>,
    /// Counts every [`SAMPLE_EVERY`] through the window, from its start.
    pub samples: Vec<Sample>,
    pub backlog: Option<Backlog>,
}

/// How often the counts are read during a window, for the throughput
/// over time picture.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// Counts at one moment of the window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub at: Instant,
    pub acked: u64,
    /// Distinct messages received, all groups together.
    pub delivered: u64,
}

fn sample(publish: &Shared, tallies: &[Arc<load::Tally>]) -> Sample {
    Sample {
        at: Instant::now(),
        acked: publish.acked.load(Relaxed),
        delivered: tallies.iter().map(|t| t.distinct.load(Relaxed)).sum(),
    }
}

/// Reads the counts every [`SAMPLE_EVERY`] from `first` until `end`, and
/// shows them on the progress line (seconds since `start`).
async fn sample_until(
    first: Sample,
    (start, end): (Instant, Instant),
    publish: &Shared,
    tallies: &[Arc<load::Tally>],
    progress: &crate::progress::Progress,
) -> Vec<Sample> {
    let mut samples = vec![first];
    let mut next = first.at + SAMPLE_EVERY;
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        let s = sample(publish, tallies);
        let dt =
            s.at.duration_since(samples[samples.len() - 1].at)
                .as_secs_f64();
        let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / dt.max(1e-9);
        let last = samples[samples.len() - 1];
        let mut note = format!(
            "published {}  {:.0}/s",
            crate::progress::thousands(s.acked),
            rate(s.acked, last.acked)
        );
        if !tallies.is_empty() {
            note += &format!("  delivered {:.0}/s", rate(s.delivered, last.delivered));
        }
        progress.set(s.at.duration_since(start).as_secs_f64(), &note);
        samples.push(s);
        next += SAMPLE_EVERY;
    }
    tokio::time::sleep_until(end.into()).await;
    samples
}

async fn mark(target: &Target, publish: &Shared, tallies: &[Arc<load::Tally>]) -> Mark {
    let admin = target.admin;
    tokio::task::block_in_place(|| Mark {
        mark: measure::Mark::take(publish, target.pid, || {
            sluice_testkit::daemon::scrape(admin).ok()
        }),
        distinct: tallies.iter().map(|t| t.distinct.load(Relaxed)).collect(),
        deliveries: tallies.iter().map(|t| t.deliveries.load(Relaxed)).collect(),
    })
}

async fn scrape(admin: SocketAddr) -> Option<Scrape> {
    tokio::task::spawn_blocking(move || sluice_testkit::daemon::scrape(admin).ok())
        .await
        .ok()
        .flatten()
}

/// Runs one phase (on the producers' runtime): connects its producers and
/// consumers, drives the load through the window, stops the producers,
/// lets the groups drain, and closes everything.
pub(crate) async fn run_phase(
    config: &ConsumeConfig,
    target: &Target,
    spec: &PhaseSpec,
    index: u64,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let stream = format!("{}-{}", target.prefix, spec.name);
    let options = ProducerOptions {
        transport: match config.path {
            PathKind::Quic => Transport::Quic(target.client.clone()),
            _ => Transport::FastPath(target.client.clone()),
        },
        sender: SenderConfig {
            max_datagram: config.datagram,
            ..SenderConfig::default()
        },
        ..ProducerOptions::default()
    };
    // The producers first: their sessions create the stream the groups join.
    let first_id = target.id_base + (index << 10);
    let to = |_| stream.clone();
    let producers =
        crate::load::connect(config.producers, target.quic, to, first_id, &options).await?;
    let group_names: Vec<String> = (0..spec.groups).map(|k| format!("{stream}-g{k}")).collect();
    let mut consumers = Vec::with_capacity(spec.groups);
    for group in &group_names {
        consumers.push(join(config, target, &stream, group).await?);
    }

    let clock = load::Clock::now();
    let start = Instant::now();
    let warmup = Duration::from_secs_f64(config.warmup);
    let window = (
        start + warmup,
        start + warmup + Duration::from_secs_f64(config.seconds),
    );
    let tallies: Vec<Arc<load::Tally>> = (0..spec.groups).map(|_| Arc::default()).collect();
    let mut publish = Shared::new(window.0, Some(window.1), SAMPLE_EVERY.as_secs_f64());
    publish.window_by_call = true;
    if spec.drive == Drive::Closed && spec.groups > 0 && config.max_ahead > 0 {
        // Not while more than `max_ahead` messages sent have not reached
        // the slowest group.
        let (ahead, groups) = (config.max_ahead, tallies.clone());
        publish.gate = Some(Box::new(move |sent| {
            let slowest = groups.iter().map(|t| t.distinct.load(Relaxed)).min();
            sent.saturating_sub(slowest.unwrap_or(u64::MAX)) <= ahead
        }));
    }
    let publish = Arc::new(publish);
    let stamps = match spec.drive {
        Drive::Open { .. } => Some(load::Stamps {
            clock,
            from: clock.unix_us(window.0),
            to: clock.unix_us(window.1),
        }),
        Drive::Closed => None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let consuming: Vec<_> = consumers
        .into_iter()
        .zip(&tallies)
        .map(|(c, t)| {
            target
                .consumers
                .spawn(load::consume(c, t.clone(), stamps, stop_rx.clone()))
        })
        .collect();

    // The open loop sends one message per call, stamped with its due time.
    let (rate, batch) = match spec.drive {
        Drive::Open { rate } => (rate, 1),
        Drive::Closed => (0.0, config.batch),
    };
    let shape = Shape {
        batch,
        in_flight: config.in_flight,
        count: None,
        rate,
        stamp: (rate > 0.0).then_some(clock),
    };
    let payloads = Payloads::fixed(config.size);
    let (producing, pacer) = crate::load::start(shape, &producers, payloads, 0, &publish, start)?;

    target.progress.set(0.0, "warm-up");
    tokio::time::sleep_until(window.0.into()).await;
    let first = mark(target, &publish, &tallies).await;
    let at_first = Sample {
        at: first.at,
        acked: first.acked,
        delivered: first.distinct.iter().sum(),
    };
    let mut samples = sample_until(
        at_first,
        (start, window.1),
        &publish,
        &tallies,
        &target.progress,
    )
    .await;
    let last = mark(target, &publish, &tallies).await;
    if spec.groups > 0 {
        target
            .progress
            .set(config.warmup + config.seconds, "the groups catch up");
    }
    samples.push(Sample {
        at: last.at,
        acked: last.acked,
        delivered: last.distinct.iter().sum(),
    });
    publish.stop.store(true, Relaxed);
    let pacer_lag = crate::load::pacer_lag(pacer).await?;
    if pacer_lag.is_none() {
        let _ = producing.await;
    }
    // Open loop: the last sends are still out.
    let settle = Instant::now() + Duration::from_secs(30);
    while publish.missing() > 0 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Every group gets every message that was acked (and may get more:
    // a failed call's messages can be stored all the same).
    let published = publish.acked.load(Relaxed);
    let drain_until = last.at + Duration::from_secs_f64(config.drain_timeout);
    let mut caught_up: Vec<Option<f64>> = vec![None; spec.groups];
    loop {
        let now = Instant::now();
        for (c, t) in caught_up.iter_mut().zip(&tallies) {
            if c.is_none() && t.distinct.load(Relaxed) >= published {
                *c = Some(now.duration_since(last.at).as_secs_f64());
            }
        }
        if caught_up.iter().all(Option::is_some) || now >= drain_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The drain's end: what the consumers cost without producers.
    let drained = if spec.groups > 0 {
        Some(mark(target, &publish, &tallies).await)
    } else {
        None
    };
    let backlog = match spec.backlog_groups {
        0 => None,
        _ => Some(drain_backlog(config, target, &stream, &publish, published).await?),
    };
    let _ = stop_tx.send(true);
    let mut latency = Vec::with_capacity(spec.groups);
    let mut consumer_error = None;
    for c in consuming {
        let got = c.await?;
        latency.push(got.latency);
        consumer_error = consumer_error.or(got.error);
    }
    for p in producers {
        if let Err(e) = p.close().await {
            publish.fail(0, format!("close: {e}"));
        }
    }
    let after = scrape(target.admin).await;
    let first_error = publish.first_error().map(|e| format!("producer: {e}"));
    let ack_latency = publish.take_latency();
    Ok(Outcome {
        spec: spec.clone(),
        stream,
        group_names,
        start: first,
        end: last,
        sent: publish.sent.load(Relaxed),
        acked: publish.acked.load(Relaxed),
        errors: publish.errors.load(Relaxed) + u64::from(consumer_error.is_some()),
        first_error: first_error.or(consumer_error),
        ack_latency,
        pacer_lag,
        caught_up,
        drained,
        distinct: tallies.iter().map(|t| t.distinct.load(Relaxed)).collect(),
        deliveries: tallies.iter().map(|t| t.deliveries.load(Relaxed)).collect(),
        latency,
        after,
        samples,
        backlog,
    })
}

/// A consumer of `group` on `stream`, from its start.
async fn join(
    config: &ConsumeConfig,
    target: &Target,
    stream: &str,
    group: &str,
) -> Result<Consumer, Box<dyn std::error::Error>> {
    let mut opts = ConsumerOptions::new(target.client.clone(), group.to_owned());
    opts.start = StartAt::Earliest;
    opts.max_messages = config.max_messages;
    opts.max_bytes = config.max_bytes;
    let (addr, stream) = (target.quic, stream.to_owned());
    let joined = target
        .consumers
        .spawn(async move { Consumer::connect(addr, &stream, opts).await })
        .await?;
    Ok(joined.map_err(|e| format!("consumer group {group}: {e}"))?)
}

/// One new group receives the whole stream (`published` messages), with
/// no producers running; returns when it has them all or the drain
/// timeout passed.
async fn drain_backlog(
    config: &ConsumeConfig,
    target: &Target,
    stream: &str,
    publish: &Shared,
    published: u64,
) -> Result<Backlog, Box<dyn std::error::Error>> {
    target.progress.set(
        config.warmup + config.seconds,
        "one group drains the backlog",
    );
    let tally: Arc<load::Tally> = Arc::default();
    let tallies = [tally.clone()];
    let start = mark(target, publish, &tallies).await;
    let consumer = join(config, target, stream, &format!("{stream}-backlog")).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let consuming = target
        .consumers
        .spawn(load::consume(consumer, tally.clone(), None, stop_rx));
    let until = start.at + Duration::from_secs_f64(config.drain_timeout);
    while tally.distinct.load(Relaxed) < published && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let end = mark(target, publish, &tallies).await;
    let caught_up = tally.distinct.load(Relaxed) >= published;
    let _ = stop_tx.send(true);
    let first_error = consuming.await?.error;
    Ok(Backlog {
        messages: published,
        start,
        end,
        caught_up,
        first_error,
    })
}
