//! The `e2e` scenario's report: what each phase measured, and its
//! ratios to the ingest-alone phase and the machine's baselines of the same
//! run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_daemon::metrics::scrape::Scrape;

use super::phase::{Drive, Mark, Outcome, Sample, SAMPLE_EVERY};
use super::ConsumeConfig;
use crate::cpu;
use crate::filesystem::FileSystem;
use crate::ingest::Baselines;
use crate::measure::{
    CpuUse, DaemonCounters, Head, Latency, Machine, PercentileCurve, Plots, Spread, TimeSeries,
};

/// The target: delivered msgs/s to one group ≥ 0.8 × durable
/// ingest alone.
pub const TARGET_DELIVERY_RATIO: f64 = 0.8;

/// One run's result.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumeReport {
    #[serde(flatten)]
    pub head: Head,
    pub config: ConsumeConfig,
    pub target_delivery_ratio: f64,
    pub baselines: Option<Baselines>,
    /// The file system of the data folder (the daemon's spool, and the
    /// disk baselines), when the harness started the daemon.
    pub file_system: Option<FileSystem>,
    /// Phase A: producers alone, closed loop.
    pub ingest_alone: Option<ThroughputRun>,
    /// Phase B: one entry per number of groups.
    pub delivery: Vec<ThroughputRun>,
    /// Phase C: at a steady rate.
    pub latency: Option<LatencyRun>,
    /// Failed calls and consumer errors over every phase.
    pub errors: u64,
    /// Groups (over every phase) that did not receive every published
    /// message: at-least-once says zero.
    pub groups_short: u64,
    /// With `repeat` > 1: the headline figures of every round, and their
    /// spreads (the figures above are the first round's).
    pub repeats: Option<Repeats>,
    /// The first round's pictures: publish → delivery and durable-ack
    /// latency by percentile (latency part), and msgs/s over each window
    /// (published with no groups; delivered per group in each delivery
    /// phase).
    pub plots: Plots,
}

/// The figures one round is summed up by (`T` = `f64`), or their spreads
/// over the rounds (`T` = [`Spread`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Headline<T = f64> {
    /// Ingest alone: durably acked msgs/s.
    pub ingest_published_per_sec: Option<T>,
    /// One group draining the ingest phase's stream: msgs/s, and ÷ ingest
    /// alone (the target).
    pub backlog_drain_per_sec: Option<T>,
    pub backlog_drain_per_ingest: Option<T>,
    pub delivery: Vec<DeliveryHeadline<T>>,
    pub latency: Option<LatencyHeadline<T>>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct DeliveryHeadline<T = f64> {
    pub groups: usize,
    pub delivered_per_sec_per_group: T,
    /// ÷ ingest alone of the same round.
    pub delivered_per_group_per_ingest: Option<T>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct LatencyHeadline<T = f64> {
    pub delivery_p50_us: T,
    pub delivery_p99_us: T,
    pub ack_p50_us: T,
    pub ack_p99_us: T,
}

/// The rounds' headline figures, and each as min / median / max (every
/// round ran the same phases, in the same order).
#[derive(Debug, Clone, Serialize)]
pub struct Repeats {
    pub rounds: Vec<Headline>,
    #[serde(flatten)]
    pub spread: Headline<Spread>,
}

/// A closed-loop phase: ingest alone (no groups) or delivery to groups.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputRun {
    pub groups: usize,
    pub stream: String,
    pub window_seconds: f64,
    /// Messages handed to producers and durably acked, whole phase.
    pub sent: u64,
    pub published: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Acked in the window, and per second.
    pub window_published: u64,
    pub published_per_sec: f64,
    /// Durable-ack latency per message, from its `send_batch` call.
    pub ack_latency: Latency,
    pub group_figures: Vec<GroupFigures>,
    /// Distinct messages delivered in the window per second, all groups,
    /// and their mean per group.
    pub delivered_per_sec_total: f64,
    pub delivered_per_sec_per_group: f64,
    pub drain: Option<Drain>,
    /// Ingest alone, with the delivery part: one group joining the stream
    /// after the producers stopped and receiving all of it (the daemon's
    /// delivery capacity for one group, with the machine to itself as
    /// ingest had).
    pub backlog_drain: Option<Drain>,
    pub cpu: PhaseCpu,
    pub machine: Option<Machine>,
    pub daemon: Option<DaemonCounters>,
    /// Against the ingest-alone phase (absent for that phase itself, or
    /// without it).
    pub ratios: Option<ThroughputRatios>,
}

/// One group in one phase.
#[derive(Debug, Clone, Serialize)]
pub struct GroupFigures {
    pub group: String,
    /// Distinct messages first received in the window, and per second.
    pub window_delivered: u64,
    pub delivered_per_sec: f64,
    /// Whole phase (drain included): distinct messages received (each
    /// counted once) and deliveries (redeliveries included).
    pub distinct: u64,
    pub deliveries: u64,
    /// Published (acked) minus received at the window's end: the backlog
    /// the group had built up.
    pub behind_at_window_end: u64,
    /// Seconds after the window until it had every published message
    /// (`None`: not within the drain timeout).
    pub caught_up_after: Option<f64>,
    /// The daemon's view once the consumer's acks were durable.
    pub daemon: Option<GroupDaemon>,
}

/// A group's figures in the daemon's /metrics (whole phase).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GroupDaemon {
    pub delivered: u64,
    pub redelivered: u64,
    pub acked: u64,
    pub expired: u64,
    pub backlog_messages: u64,
}

impl GroupDaemon {
    fn of(s: &Scrape, stream: &str, group: &str) -> GroupDaemon {
        let l = [("stream", stream), ("group", group)];
        let v = |name: &str| s.value(name, &l).max(0.0) as u64;
        GroupDaemon {
            delivered: v("sluice_group_delivered_total"),
            redelivered: v("sluice_group_redelivered_total"),
            acked: v("sluice_group_acked_total"),
            expired: v("sluice_group_expired_total"),
            backlog_messages: v("sluice_group_backlog_messages"),
        }
    }
}

/// How fast the groups caught up once the producers stopped: the
/// consumers' speed without producers, where they were far enough behind
/// for it to mean something.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Drain {
    /// Groups at least this far behind at the window's end are counted.
    pub min_behind: u64,
    pub groups_counted: usize,
    /// Mean per counted group: messages caught up per second.
    pub delivered_per_sec_per_group: f64,
    /// From the window's end until every group had caught up (or the
    /// timeout): seconds, deliveries (all groups), and CPU per delivery
    /// and in cores of the daemon and of the consumers.
    pub seconds: f64,
    pub deliveries: u64,
    pub daemon_us_per_delivery: Option<f64>,
    pub consumer_us_per_delivery: Option<f64>,
    pub daemon_cores: Option<f64>,
    pub consumer_cores: f64,
}

/// CPU over the window. This process runs the producers (threads named
/// `producer`), the consumers (`consumer`) and, in open loop, the pacing
/// thread (`pacer`, harness overhead).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseCpu {
    /// This process, per million published.
    pub harness: CpuUse,
    pub producer_seconds: f64,
    pub consumer_seconds: f64,
    pub pacer_seconds: f64,
    /// Per million published.
    pub daemon: Option<CpuUse>,
    /// Microseconds per message published (producers; daemon) and per
    /// delivery in the window, all groups (consumers; daemon).
    pub producer_us_per_message: f64,
    pub consumer_us_per_delivery: Option<f64>,
    pub daemon_us_per_message: Option<f64>,
    pub daemon_us_per_delivery: Option<f64>,
    pub harness_threads: BTreeMap<String, f64>,
    pub daemon_threads: BTreeMap<String, f64>,
}

/// A delivery phase against the ingest-alone phase of the same run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ThroughputRatios {
    /// Mean delivered msgs/s per group ÷ ingest alone (the target's ratio).
    pub delivered_per_group_per_ingest: f64,
    /// All groups' delivered msgs/s ÷ ingest alone.
    pub delivered_total_per_ingest: f64,
    /// Published msgs/s with the groups consuming ÷ ingest alone.
    pub published_per_ingest: f64,
    /// Drain speed per group ÷ ingest alone.
    pub drain_per_ingest: Option<f64>,
    /// Daemon CPU per message published ÷ that of ingest alone.
    pub daemon_cpu_per_message_per_ingest: Option<f64>,
}

/// The open-loop phase.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyRun {
    pub rate: f64,
    pub groups: usize,
    pub stream: String,
    pub window_seconds: f64,
    pub sent: u64,
    pub published: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub published_per_sec: f64,
    pub group_figures: Vec<GroupFigures>,
    /// Receive time − due time of each message due in the window, at its
    /// first delivery, over all groups; and per group.
    pub delivery_latency: Latency,
    pub delivery_latency_per_group: Vec<Latency>,
    /// Due time → durable ack, the same messages (producer side).
    pub ack_latency: Latency,
    /// How late the pacing thread handed messages over.
    pub pacer_lag: Latency,
    pub cpu: PhaseCpu,
    pub machine: Option<Machine>,
    pub daemon: Option<DaemonCounters>,
    pub ratios: LatencyRatios,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct LatencyRatios {
    /// Delivery ÷ durable ack, the same messages.
    pub delivery_p50_per_ack_p50: f64,
    pub delivery_p99_per_ack_p99: f64,
    /// Delivery p99 ÷ the ideal raw group commit's p99 and ÷ the UDP
    /// echo's p99 at the same rate (baselines of the same run; none for
    /// an echo that fell behind).
    pub delivery_p99_per_ideal_commit_p99: Option<f64>,
    pub delivery_p99_per_udp_echo_p99: Option<f64>,
    /// The UDP echo baseline (one round trip at a time) could not keep up
    /// with the rate on this machine: its latency is its own queue.
    pub udp_echo_fell_behind: bool,
}

/// An echo median this long means the echo queued up behind itself.
const ECHO_FELL_BEHIND_US: u64 = 100_000;

use crate::measure::div;

/// What the phases have in common: the window, groups and CPU.
struct Common {
    window: f64,
    window_published: u64,
    groups: Vec<GroupFigures>,
    cpu: PhaseCpu,
    machine: Option<Machine>,
    daemon: Option<DaemonCounters>,
}

fn common(o: &Outcome) -> Common {
    let (a, b) = (&o.run.start, &o.run.end);
    let w = a.until(b);
    let window = w.seconds.max(1e-9);
    let window_published = w.acked;
    let groups = o
        .group_names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let window_delivered = b.distinct[k] - a.distinct[k];
            GroupFigures {
                group: name.clone(),
                window_delivered,
                delivered_per_sec: window_delivered as f64 / window,
                distinct: o.distinct[k],
                deliveries: o.deliveries[k],
                behind_at_window_end: b.acked.saturating_sub(b.distinct[k]),
                caught_up_after: o.caught_up[k],
                daemon: o
                    .after
                    .as_ref()
                    .map(|s| GroupDaemon::of(s, &o.stream, name)),
            }
        })
        .collect();
    let window_deliveries: u64 = (0..o.group_names.len())
        .map(|k| b.deliveries[k] - a.deliveries[k])
        .sum();
    let per = |s: f64, n: u64| (n > 0).then(|| s * 1e6 / n as f64);
    let cpu = PhaseCpu {
        harness: w.harness,
        producer_seconds: w.thread("producer"),
        consumer_seconds: w.thread("consumer"),
        pacer_seconds: w.thread("pacer"),
        daemon: w.daemon,
        producer_us_per_message: per(w.thread("producer"), window_published).unwrap_or(0.0),
        consumer_us_per_delivery: per(w.thread("consumer"), window_deliveries),
        daemon_us_per_message: w.daemon.and_then(|d| per(d.seconds, window_published)),
        daemon_us_per_delivery: w.daemon.and_then(|d| per(d.seconds, window_deliveries)),
        harness_threads: w.harness_threads,
        daemon_threads: w.daemon_threads,
    };
    Common {
        window,
        window_published,
        groups,
        cpu,
        machine: w.machine,
        daemon: w.counters,
    }
}

fn throughput(o: Outcome) -> ThroughputRun {
    let c = common(&o);
    let backlog_error = o.backlog.as_ref().and_then(|b| b.first_error.clone());
    let total: f64 = c.groups.iter().map(|g| g.delivered_per_sec).sum();
    // A group that was only a little behind caught up as fast as messages
    // came: its drain says nothing about its speed.
    let min_behind = (c.window_published / 10).max(1000);
    // What each had to catch up on: everything published (the calls in
    // flight at the window's end included) less what it had by then.
    let drains: Vec<f64> = c
        .groups
        .iter()
        .zip(&o.run.end.distinct)
        .filter(|(g, _)| g.behind_at_window_end >= min_behind)
        .filter_map(|(g, had)| {
            let left = o.run.acked.saturating_sub(*had);
            g.caught_up_after.map(|s| left as f64 / s.max(1e-9))
        })
        .collect();
    let drain = o.drained.as_ref().map(|d| {
        let speed = drains.iter().sum::<f64>() / drains.len().max(1) as f64;
        drain_between(&o.run.end, d, min_behind, drains.len(), speed)
    });
    let backlog_drain = o.backlog.as_ref().map(|b| {
        let seconds = b.end.at.duration_since(b.start.at).as_secs_f64().max(1e-9);
        let speed = if b.caught_up {
            b.messages as f64 / seconds
        } else {
            0.0
        };
        drain_between(
            &b.start,
            &b.end,
            b.messages,
            usize::from(b.caught_up),
            speed,
        )
    });
    ThroughputRun {
        groups: o.spec.groups,
        stream: o.stream,
        window_seconds: c.window,
        sent: o.run.sent,
        published: o.run.acked,
        errors: o.run.errors + u64::from(backlog_error.is_some()),
        first_error: o.run.first_error.or(backlog_error),
        window_published: c.window_published,
        published_per_sec: c.window_published as f64 / c.window,
        ack_latency: Latency::of(&o.run.latency),
        delivered_per_sec_per_group: total / c.groups.len().max(1) as f64,
        delivered_per_sec_total: total,
        group_figures: c.groups,
        drain,
        backlog_drain,
        cpu: c.cpu,
        machine: c.machine,
        daemon: c.daemon,
        ratios: None,
    }
}

/// A drain's figures between two marks: `speed` msgs/s per group (of
/// `counted` groups at least `min_behind` behind), and the CPU it took.
fn drain_between(e: &Mark, d: &Mark, min_behind: u64, counted: usize, speed: f64) -> Drain {
    let seconds = d.at.duration_since(e.at).as_secs_f64().max(1e-9);
    let deliveries: u64 = d.deliveries.iter().sum::<u64>() - e.deliveries.iter().sum::<u64>();
    let per = |s: f64| (deliveries > 0).then(|| s * 1e6 / deliveries as f64);
    let daemon = d.daemon_cpu.zip(e.daemon_cpu).map(|(b, a)| b - a);
    let consumer = cpu::threads_delta(&e.self_threads, &d.self_threads)
        .get("consumer")
        .copied()
        .unwrap_or(0.0);
    Drain {
        min_behind,
        groups_counted: counted,
        delivered_per_sec_per_group: speed,
        seconds,
        deliveries,
        daemon_us_per_delivery: daemon.and_then(per),
        consumer_us_per_delivery: per(consumer),
        daemon_cores: daemon.map(|s| s / seconds),
        consumer_cores: consumer / seconds,
    }
}

fn latency(o: Outcome, baselines: Option<&Baselines>) -> LatencyRun {
    let c = common(&o);
    let rate = match o.spec.drive {
        Drive::Open { rate } => rate,
        Drive::Closed => 0.0,
    };
    let mut all = super::load::histogram();
    for h in &o.latency {
        all.add(h).ok();
    }
    let delivery = Latency::of(&all);
    let ack = Latency::of(&o.run.latency);
    let ratios = LatencyRatios {
        delivery_p50_per_ack_p50: div(delivery.p50_us as f64, ack.p50_us as f64),
        delivery_p99_per_ack_p99: div(delivery.p99_us as f64, ack.p99_us as f64),
        delivery_p99_per_ideal_commit_p99: baselines
            .and_then(|b| b.ideal_commit_at_rate)
            .map(|i| div(delivery.p99_us as f64, i.p99_us as f64)),
        delivery_p99_per_udp_echo_p99: baselines
            .and_then(|b| b.udp_echo_at_rate)
            .filter(|e| e.p50_us < ECHO_FELL_BEHIND_US)
            .map(|e| div(delivery.p99_us as f64, e.p99_us as f64)),
        udp_echo_fell_behind: baselines
            .and_then(|b| b.udp_echo_at_rate)
            .is_some_and(|e| e.p50_us >= ECHO_FELL_BEHIND_US),
    };
    LatencyRun {
        rate,
        groups: o.spec.groups,
        stream: o.stream,
        window_seconds: c.window,
        sent: o.run.sent,
        published: o.run.acked,
        errors: o.run.errors,
        first_error: o.run.first_error,
        published_per_sec: c.window_published as f64 / c.window,
        group_figures: c.groups,
        delivery_latency: delivery,
        delivery_latency_per_group: o.latency.iter().map(Latency::of).collect(),
        ack_latency: ack,
        pacer_lag: o
            .run
            .pacer_lag
            .as_ref()
            .map(Latency::of)
            .unwrap_or_default(),
        cpu: c.cpu,
        machine: c.machine,
        daemon: c.daemon,
        ratios,
    }
}

/// The report of the rounds run: the first in detail, all in `repeats`.
pub(super) fn build(
    config: &ConsumeConfig,
    head: Head,
    baselines: Option<Baselines>,
    rounds: Vec<Vec<Outcome>>,
) -> ConsumeReport {
    let several = rounds.len() > 1;
    let mut reports = rounds
        .into_iter()
        .map(|outcomes| build_round(config, head.clone(), baselines, outcomes));
    let mut r = reports
        .next()
        .unwrap_or_else(|| build_round(config, head.clone(), baselines, Vec::new()));
    if several {
        let mut heads = vec![headline(&r)];
        for other in reports {
            r.errors += other.errors;
            r.groups_short += other.groups_short;
            heads.push(headline(&other));
        }
        r.repeats = Some(Repeats {
            spread: crate::measure::spreads(&heads),
            rounds: heads,
        });
    }
    r
}

fn headline(r: &ConsumeReport) -> Headline {
    let backlog = r
        .ingest_alone
        .as_ref()
        .and_then(|a| a.backlog_drain.filter(|d| d.groups_counted > 0));
    Headline {
        ingest_published_per_sec: r.ingest_alone.as_ref().map(|a| a.published_per_sec),
        backlog_drain_per_sec: backlog.map(|d| d.delivered_per_sec_per_group),
        backlog_drain_per_ingest: backlog
            .zip(r.ingest_alone.as_ref())
            .map(|(d, a)| div(d.delivered_per_sec_per_group, a.published_per_sec)),
        delivery: r
            .delivery
            .iter()
            .map(|d| DeliveryHeadline {
                groups: d.groups,
                delivered_per_sec_per_group: d.delivered_per_sec_per_group,
                delivered_per_group_per_ingest: d.ratios.map(|q| q.delivered_per_group_per_ingest),
            })
            .collect(),
        latency: r.latency.as_ref().map(|l| LatencyHeadline {
            delivery_p50_us: l.delivery_latency.p50_us as f64,
            delivery_p99_us: l.delivery_latency.p99_us as f64,
            ack_p50_us: l.ack_latency.p50_us as f64,
            ack_p99_us: l.ack_latency.p99_us as f64,
        }),
    }
}

/// Msgs/s over each interval between samples (`count` picks published or
/// delivered, `per` divides, e.g. by the number of groups); an interval
/// much shorter than the sampling period (the window's ragged end) is
/// left out, its rate would be noise.
fn series(label: String, samples: &[Sample], count: fn(&Sample) -> u64, per: f64) -> TimeSeries {
    let Some(start) = samples.first().map(|s| s.at) else {
        return TimeSeries {
            label,
            points: Vec::new(),
        };
    };
    let points = samples
        .windows(2)
        .filter_map(|w| {
            let dt = w[1].at.duration_since(w[0].at);
            (dt >= SAMPLE_EVERY / 4).then(|| {
                let n = count(&w[1]).saturating_sub(count(&w[0])) as f64;
                (
                    w[1].at.duration_since(start).as_secs_f64(),
                    n / per.max(1.0) / dt.as_secs_f64(),
                )
            })
        })
        .collect();
    TimeSeries { label, points }
}

/// The pictures of one phase's outcome, added to `plots`.
fn plot(o: &Outcome, plots: &mut Plots) {
    match (o.spec.drive, o.spec.groups) {
        (Drive::Closed, 0) => plots.throughput.push(series(
            "published/s, ingest alone".into(),
            &o.samples,
            |s| s.acked,
            1.0,
        )),
        (Drive::Closed, g) => plots.throughput.push(series(
            format!(
                "delivered/s per group, {g} group{}",
                if g == 1 { "" } else { "s" }
            ),
            &o.samples,
            |s| s.delivered,
            g as f64,
        )),
        (Drive::Open { rate }, _) => {
            let mut all = super::load::histogram();
            for h in &o.latency {
                all.add(h).ok();
            }
            plots.latency.push(PercentileCurve::of(
                format!("publish -> delivery at {rate:.0}/s"),
                &all,
            ));
            plots.latency.push(PercentileCurve::of(
                format!("durable ack at {rate:.0}/s"),
                &o.run.latency,
            ));
        }
    }
}

/// The report of one round's phases.
fn build_round(
    config: &ConsumeConfig,
    head: Head,
    baselines: Option<Baselines>,
    outcomes: Vec<Outcome>,
) -> ConsumeReport {
    let mut r = ConsumeReport {
        head,
        config: config.clone(),
        target_delivery_ratio: TARGET_DELIVERY_RATIO,
        baselines,
        file_system: None,
        ingest_alone: None,
        delivery: Vec::new(),
        latency: None,
        errors: 0,
        groups_short: 0,
        repeats: None,
        plots: Plots::default(),
    };
    for o in outcomes {
        plot(&o, &mut r.plots);
        r.errors += o.run.errors
            + o.backlog
                .as_ref()
                .map_or(0, |b| u64::from(b.first_error.is_some()));
        r.groups_short += o.distinct.iter().filter(|&&d| d < o.run.acked).count() as u64;
        r.groups_short += o.backlog.as_ref().map_or(0, |b| u64::from(!b.caught_up));
        match (o.spec.drive, o.spec.groups) {
            (Drive::Closed, 0) => r.ingest_alone = Some(throughput(o)),
            (Drive::Closed, _) => r.delivery.push(throughput(o)),
            (Drive::Open { .. }, _) => r.latency = Some(latency(o, r.baselines.as_ref())),
        }
    }
    if let Some(a) = &r.ingest_alone {
        let base = a.published_per_sec;
        let base_cpu = a.cpu.daemon_us_per_message;
        for d in &mut r.delivery {
            d.ratios = Some(ThroughputRatios {
                delivered_per_group_per_ingest: div(d.delivered_per_sec_per_group, base),
                delivered_total_per_ingest: div(d.delivered_per_sec_total, base),
                published_per_ingest: div(d.published_per_sec, base),
                drain_per_ingest: d
                    .drain
                    .filter(|x| x.groups_counted > 0)
                    .map(|x| div(x.delivered_per_sec_per_group, base)),
                daemon_cpu_per_message_per_ingest: d
                    .cpu
                    .daemon_us_per_message
                    .zip(base_cpu)
                    .map(|(x, y)| div(x, y)),
            });
        }
    }
    r
}
