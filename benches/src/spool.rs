//! The `spool` scenario: appends with fsync = always from concurrent
//! appenders, on the spool alone (no network).

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use sluice_daemon::spool::{FsyncPolicy, Outcome, Record, Spool, SpoolConfig, SpoolError};

/// What a closed-loop run of appenders did.
#[derive(Debug, Clone)]
pub struct SpoolRun {
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    /// Every append's ack latency, microseconds.
    pub ack_latency: Histogram<u64>,
}

/// Closed loop: each appender keeps `in_flight` appends outstanding, for
/// `duration`. Measures throughput and ack latency under full load.
pub async fn peak(
    dir: &Path,
    appenders: usize,
    record_bytes: usize,
    batch: usize,
    duration: Duration,
) -> SpoolRun {
    let spool = open(dir);
    let stream = spool.stream("bench").expect("stream");
    let payload = Bytes::from(vec![0x42u8; record_bytes]);
    // Keep roughly 4 MiB in flight per appender, at least 2 appends.
    let in_flight = (4 << 20) / (record_bytes * batch).max(1);
    let in_flight = in_flight.clamp(2, 256);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for a in 0..appenders {
        let stream = stream.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let mut pending = std::collections::VecDeque::new();
            let mut seq = 0u64;
            let mut records = 0u64;
            while start.elapsed() < duration || !pending.is_empty() {
                while start.elapsed() < duration && pending.len() < in_flight {
                    let recs: Vec<Record> = (0..batch)
                        .map(|_| {
                            seq += 1;
                            Record {
                                producer: a as u64,
                                seq,
                                timestamp_us: 0,
                                payload: payload.clone(),
                                key: None,
                            }
                        })
                        .collect();
                    pending.push_back((Instant::now(), stream.append_batch(recs)));
                }
                let Some((sent, ack)) = pending.pop_front() else {
                    break;
                };
                let out = ack.await.expect("writer alive").expect("append");
                h.record(sent.elapsed().as_micros() as u64).ok();
                records += out.len() as u64;
            }
            (records, h)
        }));
    }
    let mut records = 0;
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    for t in tasks {
        let (r, h) = t.await.expect("appender");
        records += r;
        hist.add(h).ok();
    }
    let secs = start.elapsed().as_secs_f64();
    SpoolRun {
        records_per_sec: records as f64 / secs,
        mb_per_sec: records as f64 * record_bytes as f64 / 1e6 / secs,
        ack_latency: hist,
    }
}

/// Open loop at `rate` records/s from `appenders` producers (interleaved),
/// one record per append. Latency runs from when each append was *due*, not
/// when it was sent, so a stall is not hidden (coordinated omission). One
/// sending thread and one collecting thread: with a thread per appender on
/// 2 cores, the scheduler's delays would be measured instead of the spool's,
/// and tokio's 1 ms timer would add its own jitter.
pub fn at_rate_histogram(
    dir: &Path,
    appenders: usize,
    record_bytes: usize,
    rate: f64,
    duration: Duration,
) -> Histogram<u64> {
    let spool = open(dir);
    let stream = spool.stream("bench").expect("stream");
    let payload = Bytes::from(vec![0x24u8; record_bytes]);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, AckRx)>();
    // A stream acks in order, so waiting in send order loses nothing.
    let collector = std::thread::spawn(move || {
        let mut h = Histogram::<u64>::new(3).expect("histogram");
        for (due, ack) in rx {
            ack.blocking_recv().expect("writer alive").expect("append");
            h.record(due.elapsed().as_micros() as u64).ok();
        }
        h
    });
    let start = Instant::now();
    let mut due = start;
    let mut seqs = vec![0u64; appenders];
    let mut i = 0;
    while due < start + duration {
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
            continue;
        }
        // Send everything that is due (a late wake-up sends a burst).
        while due <= now {
            let a = i % appenders;
            i += 1;
            seqs[a] += 1;
            let ack = stream.append(a as u64, seqs[a], payload.clone());
            tx.send((due, ack)).expect("collector alive");
            due += interval;
        }
    }
    drop(tx);
    collector.join().expect("collector")
}

type AckRx = tokio::sync::oneshot::Receiver<Result<Outcome, SpoolError>>;

fn open(dir: &Path) -> Spool {
    let _ = std::fs::remove_dir_all(dir.join("streams"));
    Spool::open(
        dir,
        SpoolConfig {
            fsync: FsyncPolicy::Always,
            min_free_bytes: 0,
            ..SpoolConfig::default()
        },
    )
    .expect("open spool")
}
