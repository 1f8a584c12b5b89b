//! One phase of the `e2e` scenario: a fresh stream, producers driven
//! closed or open loop by [`crate::load::run_with`] (the gate holds them
//! back for the slowest group), and consumer groups on it; the groups'
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

use super::{grpc, load, push, ConsumeConfig, ConsumePath};
use crate::ingest::PathKind;
use crate::load::{Plan, Shape, Shared};
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
    /// The gRPC port (a started daemon's, or `--daemon-grpc`).
    pub grpc: Option<SocketAddr>,
    /// A started daemon's pid (for its CPU time).
    pub pid: Option<u32>,
    pub client: QuicOptions,
    /// A running daemon's token (for the admin port's push routes).
    pub token: Option<String>,
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
    /// The producers' run: its marks, counts and ack latency (its errors
    /// with the consumers' first).
    pub run: crate::load::Outcome<Mark>,
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

/// Reads the counts every [`SAMPLE_EVERY`] of the window into `samples`,
/// and shows them on the progress line (seconds since `start`).
fn sampler<'a>(
    samples: &'a mut Vec<Sample>,
    start: Instant,
    tallies: &'a [Arc<load::Tally>],
    progress: &'a crate::progress::Progress,
) -> impl FnMut(&Shared) + 'a {
    let mut last: Option<Sample> = None;
    move |publish| {
        let due = publish.window_start + SAMPLE_EVERY * (samples.len() as u32 + 1);
        if Instant::now() < due {
            return;
        }
        let s = sample(publish, tallies);
        if let Some(last) = last {
            let dt = s.at.duration_since(last.at).as_secs_f64();
            let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / dt.max(1e-9);
            let mut note = format!(
                "published {}  {:.0}/s",
                crate::progress::thousands(s.acked),
                rate(s.acked, last.acked)
            );
            if !tallies.is_empty() {
                note += &format!("  delivered {:.0}/s", rate(s.delivered, last.delivered));
            }
            progress.set(s.at.duration_since(start).as_secs_f64(), &note);
        }
        last = Some(s);
        samples.push(s);
    }
}

fn mark(target: &Target, counts: (u64, u64), tallies: &[Arc<load::Tally>]) -> Mark {
    let admin = target.admin;
    Mark {
        mark: measure::Mark::take(counts, target.pid, || {
            sluice_testkit::daemon::scrape(admin).ok()
        }),
        distinct: tallies.iter().map(|t| t.distinct.load(Relaxed)).collect(),
        deliveries: tallies.iter().map(|t| t.deliveries.load(Relaxed)).collect(),
    }
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
    let window = start + Duration::from_secs_f64(config.warmup);
    let tallies: Vec<Arc<load::Tally>> = (0..spec.groups).map(|_| Arc::default()).collect();
    let mut extra = crate::load::Extra {
        begin: Some(start),
        window_by_call: true,
        ..Default::default()
    };
    if spec.drive == Drive::Closed && spec.groups > 0 && config.max_ahead > 0 {
        // Not while more than `max_ahead` messages sent have not reached
        // the slowest group.
        let (ahead, groups) = (config.max_ahead, tallies.clone());
        extra.gate = Some(Box::new(move |sent| {
            let slowest = groups.iter().map(|t| t.distinct.load(Relaxed)).min();
            sent.saturating_sub(slowest.unwrap_or(u64::MAX)) <= ahead
        }));
    }
    let stamps = match spec.drive {
        Drive::Open { .. } => Some(load::Stamps {
            clock,
            from: clock.unix_us(window),
            to: clock.unix_us(window + Duration::from_secs_f64(config.seconds)),
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
    let plan = Plan {
        shape: Shape {
            batch,
            in_flight: config.in_flight,
            count: None,
            rate,
            stamp: (rate > 0.0).then_some(clock),
        },
        payloads: Payloads::fixed(config.size),
        seed: 0,
        warmup: config.warmup,
        seconds: Some(config.seconds),
        interval: SAMPLE_EVERY.as_secs_f64(),
        // Open loop: the last sends are still out.
        drain: Duration::from_secs(30),
    };
    target.progress.set(0.0, "warm-up");
    let mut samples = Vec::new();
    let mut sampling = sampler(&mut samples, start, &tallies, &target.progress);
    extra.poll = Some(&mut sampling);
    let hidden = crate::progress::Progress::hidden();
    let marks = |s: &Shared| mark(target, s.counts(), &tallies);
    let mut run = crate::load::run_with(producers, &plan, &hidden, marks, extra).await?;
    drop(sampling);
    let sample_of = |m: &Mark| Sample {
        at: m.at,
        acked: m.acked,
        delivered: m.distinct.iter().sum(),
    };
    samples.insert(0, sample_of(&run.start));
    samples.push(sample_of(&run.end));
    if spec.groups > 0 {
        target
            .progress
            .set(config.warmup + config.seconds, "the groups catch up");
    }

    // Every group gets every message that was acked (and may get more:
    // a failed call's messages can be stored all the same).
    let published = run.acked;
    let counts = (run.acked, run.end.acked_bytes);
    let drain_until = run.end.at + Duration::from_secs_f64(config.drain_timeout);
    let mut caught_up: Vec<Option<f64>> = vec![None; spec.groups];
    loop {
        let now = Instant::now();
        for (c, t) in caught_up.iter_mut().zip(&tallies) {
            if c.is_none() && t.distinct.load(Relaxed) >= published {
                *c = Some(now.duration_since(run.end.at).as_secs_f64());
            }
        }
        if caught_up.iter().all(Option::is_some) || now >= drain_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The drain's end: what the consumers cost without producers.
    let drained = if spec.groups > 0 {
        Some(tokio::task::block_in_place(|| {
            mark(target, counts, &tallies)
        }))
    } else {
        None
    };
    let backlog = match spec.backlog_groups {
        0 => None,
        _ => Some(drain_backlog(config, target, &stream, counts).await?),
    };
    let _ = stop_tx.send(true);
    let mut latency = Vec::with_capacity(spec.groups);
    let mut consumer_error = None;
    for c in consuming {
        let got = c.await?;
        latency.push(got.latency);
        consumer_error = consumer_error.or(got.error);
    }
    let after = scrape(target.admin).await;
    run.errors += u64::from(consumer_error.is_some());
    run.first_error = run.first_error.map(|e| format!("producer: {e}"));
    run.first_error = run.first_error.or(consumer_error);
    Ok(Outcome {
        spec: spec.clone(),
        stream,
        group_names,
        run,
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

/// A consumer of `group` on `stream`, from its start, on the configured
/// path (connected on the consumers' runtime, whose reactor its sockets
/// then belong to).
async fn join(
    config: &ConsumeConfig,
    target: &Target,
    stream: &str,
    group: &str,
) -> Result<load::Link, Box<dyn std::error::Error>> {
    let credit = (config.max_messages, config.max_bytes);
    let (stream, name) = (stream.to_owned(), group.to_owned());
    let joined = match config.consume_path {
        ConsumePath::Quic => {
            let mut opts = ConsumerOptions::new(target.client.clone(), name);
            opts.start = StartAt::Earliest;
            (opts.max_messages, opts.max_bytes) = credit;
            let addr = target.quic;
            target
                .consumers
                .spawn(async move {
                    let c = Consumer::connect(addr, &stream, opts).await;
                    c.map(load::Link::Quic).map_err(|e| e.to_string())
                })
                .await?
        }
        ConsumePath::Grpc => {
            let to = grpc::Route {
                grpc: target
                    .grpc
                    .ok_or("no gRPC address for --consume-path grpc")?,
                stream,
                group: name,
                token: target.token.clone(),
            };
            target
                .consumers
                .spawn(async move { grpc::Grpc::connect(&to, credit).await.map(load::Link::Grpc) })
                .await?
        }
        path => {
            let to = push::Route {
                admin: target.admin,
                stream,
                group: name,
                token: target.token.clone(),
            };
            target
                .consumers
                .spawn(async move {
                    if path == ConsumePath::Ws {
                        push::Ws::connect(&to, credit).await.map(load::Link::Ws)
                    } else {
                        push::Sse::connect(&to, credit).await.map(load::Link::Sse)
                    }
                })
                .await?
        }
    };
    Ok(joined.map_err(|e| format!("consumer group {group}: {e}"))?)
}

/// One new group receives the whole stream (`published` messages), with
/// no producers running; returns when it has them all or the drain
/// timeout passed.
async fn drain_backlog(
    config: &ConsumeConfig,
    target: &Target,
    stream: &str,
    counts: (u64, u64),
) -> Result<Backlog, Box<dyn std::error::Error>> {
    let published = counts.0;
    target.progress.set(
        config.warmup + config.seconds,
        "one group drains the backlog",
    );
    let tally: Arc<load::Tally> = Arc::default();
    let tallies = [tally.clone()];
    let start = tokio::task::block_in_place(|| mark(target, counts, &tallies));
    let consumer = join(config, target, stream, &format!("{stream}-backlog")).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let consuming = target
        .consumers
        .spawn(load::consume(consumer, tally.clone(), None, stop_rx));
    let until = start.at + Duration::from_secs_f64(config.drain_timeout);
    while tally.distinct.load(Relaxed) < published && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let end = tokio::task::block_in_place(|| mark(target, counts, &tallies));
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
