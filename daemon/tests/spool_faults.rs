//! The spool under specific faults and its operator-facing behaviour:
//! corruption is reported with segment and offset (or quarantined with
//! repair), a full disk holds acks without damaging the log, retention keeps
//! what a retain_until_acked group still needs, and readers see only durable
//! records and follow the tail.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sluice_daemon::spool::fs::SpoolFs;
use sluice_daemon::spool::simfs::{CrashMode, SimFs};
use sluice_daemon::spool::{
    Cursor, FsyncPolicy, LogConfig, Outcome, Record, Recovery, Spool, SpoolConfig, SpoolError,
    StreamLog,
};

const DIR: &str = "/data/streams/s";

fn rec(producer: u64, seq: u64, len: usize) -> Record {
    Record {
        producer,
        seq,
        timestamp_us: 1_000 * seq,
        payload: Bytes::from(vec![(seq % 251) as u8; len]),
        key: None,
    }
}

fn small() -> LogConfig {
    LogConfig {
        segment_bytes: 100_000,
        max_batch_bytes: 2_000,
        max_record_bytes: 1_000,
        index_interval: 1_024,
        ..LogConfig::default()
    }
}

fn open(fs: &SimFs, config: LogConfig) -> Result<StreamLog, SpoolError> {
    StreamLog::open(Arc::new(fs.clone()), Path::new(DIR), "s", config)
}

fn fill(log: &mut StreamLog, producer: u64, seqs: std::ops::RangeInclusive<u64>, len: usize) {
    for s in seqs {
        log.append(&[rec(producer, s, len)], true).unwrap();
    }
}

fn all(log: &StreamLog) -> Result<Vec<(u64, Record)>, SpoolError> {
    let mut r = log.reader(0);
    let mut v = Vec::new();
    while let Some(x) = r.next_record()? {
        v.push(x);
    }
    Ok(v)
}

#[test]
fn corruption_in_the_middle_is_reported_with_segment_and_offset() {
    let fs = SimFs::new();
    let mut log = open(&fs, small()).unwrap();
    fill(&mut log, 1, 1..=200, 200); // ~48 KB in one segment
    drop(log);
    let seg = Path::new(DIR).join("00000000000000000000.seg");
    fs.corrupt(&seg, 5_000, 0x10); // far from the end: not a torn tail
    match open(&fs, small()) {
        Err(SpoolError::Damaged(d)) => {
            assert_eq!(d.file, seg);
            assert!(d.byte <= 5_000 && d.byte + 2_100 > 5_000, "byte {}", d.byte);
        }
        other => panic!("expected a corruption error, got {:?}", other.map(|_| ())),
    }
    // The error is stable: nothing was changed by refusing.
    assert!(matches!(open(&fs, small()), Err(SpoolError::Damaged(_))));

    // With repair the damaged bytes and everything after them are set
    // aside and the valid prefix kept; new records continue past every
    // offset the log had (those in between are given up, and recorded).
    let mut log = open(
        &fs,
        LogConfig {
            recovery: Recovery::Repair,
            ..small()
        },
    )
    .unwrap();
    let kept = all(&log).unwrap();
    assert!(!kept.is_empty() && kept.len() < 200);
    for (i, (off, r)) in kept.iter().enumerate() {
        assert_eq!((*off, r.seq), (i as u64, i as u64 + 1));
    }
    let names = fs_names(&fs);
    assert!(names.iter().any(|n| n == "aside"), "{names:?}");
    let lost = log.recoveries().lock().unwrap().clone();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!((lost[0].from, lost[0].to), (kept.len() as u64, 200));
    let aside = lost[0].aside.clone().unwrap();
    let copied: u64 = fs
        .list(&aside)
        .unwrap()
        .iter()
        .filter(|n| n.contains("from-byte"))
        .map(|n| fs.file_len(&aside.join(n)).unwrap())
        .sum();
    assert!(copied > 0, "the damaged bytes were not set aside");
    // The stream goes on after the given-up offsets; seqs lost to the
    // damage can be sent again.
    let next = kept.len() as u64 + 1;
    assert_eq!(
        log.append(&[rec(1, next, 10)], true).unwrap(),
        vec![Outcome::Stored { offset: 200 }]
    );
    drop(log);
    // And it opens again without an operator.
    let log = open(&fs, small()).unwrap();
    assert_eq!(all(&log).unwrap().len(), kept.len() + 1);
}

fn fs_names(fs: &SimFs) -> Vec<String> {
    fs.list(Path::new(DIR)).unwrap()
}

#[test]
fn a_corrupt_sealed_segment_is_an_error_for_readers_never_a_skip() {
    let fs = SimFs::new();
    let mut log = open(
        &fs,
        LogConfig {
            segment_bytes: 5_000,
            ..small()
        },
    )
    .unwrap();
    fill(&mut log, 1, 1..=100, 200); // several segments
    drop(log);
    let seg = Path::new(DIR).join("00000000000000000000.seg");
    fs.corrupt(&seg, 300, 0x01);
    let log = open(
        &fs,
        LogConfig {
            segment_bytes: 5_000,
            ..small()
        },
    )
    .unwrap();
    let e = all(&log).unwrap_err();
    assert!(
        matches!(e, SpoolError::Damaged(ref d) if d.file == seg),
        "{e}"
    );
}

#[test]
fn a_full_disk_stops_acks_and_leaves_no_half_record() {
    let fs = SimFs::new();
    let mut log = open(&fs, small()).unwrap();
    fill(&mut log, 1, 1..=10, 100);
    let used = fs
        .file_len(&Path::new(DIR).join("00000000000000000000.seg"))
        .unwrap();
    fs.set_capacity(Some(used + 1_000));
    let mut seq = 11;
    let err = loop {
        match log.append(&[rec(1, seq, 300), rec(1, seq + 1, 300)], true) {
            Ok(_) => seq += 2,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, SpoolError::DiskFull { .. }), "{err}");
    // Nothing of the failed batch is acked or visible.
    assert_eq!(log.highest_seq(1), Some(seq - 1));
    // Space returns: the same batch goes through, once.
    fs.set_capacity(None);
    let out = log
        .append(&[rec(1, seq, 300), rec(1, seq + 1, 300)], true)
        .unwrap();
    assert!(matches!(out[0], Outcome::Stored { .. }));
    // A crash now and recovery find a clean log with every record once.
    fs.crash(CrashMode::DropUnsynced, &mut ChaCha8Rng::seed_from_u64(1));
    let log = open(&fs, small()).unwrap();
    let seqs: Vec<u64> = all(&log).unwrap().iter().map(|(_, r)| r.seq).collect();
    assert_eq!(seqs, (1..=seq + 1).collect::<Vec<_>>());
}

/// An append fails (the disk, for a moment) with seqs 11 and 12 of a
/// producer; a batch of that producer queued behind it, 13, must not be
/// stored: the idempotence table would pass 11 and 12, and the producer,
/// reconnecting, would be told they are durable. (Found by path_sim.)
#[test]
fn after_a_failed_append_a_producer_goes_on_only_from_what_failed() {
    let fs = SimFs::new();
    let mut log = open(&fs, small()).unwrap();
    fill(&mut log, 1, 1..=10, 100);
    fill(&mut log, 2, 1..=3, 100);
    fs.fail_after(Some(0));
    assert!(log
        .append(&[rec(1, 11, 100), rec(1, 12, 100), rec(2, 4, 100)], true)
        .is_err());
    fs.fail_after(None);
    // Queued behind the failure: 13 of producer 1 (and a later one of 2).
    let out = log
        .append(&[rec(1, 13, 100), rec(2, 5, 100), rec(3, 1, 100)], true)
        .unwrap();
    assert_eq!(out[0], Outcome::Refused);
    assert_eq!(out[1], Outcome::Refused);
    assert!(matches!(out[2], Outcome::Stored { .. }), "others go on");
    assert_eq!(
        (log.highest_seq(1), log.highest_seq(2)),
        (Some(10), Some(3))
    );
    // The producer resends from its durable seq + 1: all stored, in order,
    // and from then on it goes on as before.
    let out = log
        .append(&[rec(1, 11, 100), rec(1, 12, 100), rec(1, 13, 100)], true)
        .unwrap();
    assert!(
        out.iter().all(|o| matches!(o, Outcome::Stored { .. })),
        "{out:?}"
    );
    let out = log.append(&[rec(1, 15, 100)], true).unwrap();
    assert!(
        matches!(out[0], Outcome::Stored { .. }),
        "a gap once caught up is not refused"
    );
    let out = log.append(&[rec(2, 4, 100), rec(2, 5, 100)], true).unwrap();
    assert!(
        out.iter().all(|o| matches!(o, Outcome::Stored { .. })),
        "{out:?}"
    );
    let seqs: Vec<(u64, u64)> = all(&log)
        .unwrap()
        .iter()
        .map(|(_, r)| (r.producer, r.seq))
        .filter(|(p, _)| *p == 1)
        .collect();
    assert_eq!(
        seqs,
        (1..=13).chain([15]).map(|s| (1, s)).collect::<Vec<_>>()
    );
}

#[test]
fn retention_deletes_old_segments_but_not_what_a_group_still_needs() {
    let fs = SimFs::new();
    let cfg = LogConfig {
        segment_bytes: 2_000,
        ..small()
    };
    let mut log = open(&fs, cfg.clone()).unwrap();
    fill(&mut log, 1, 1..=100, 100); // ~14 KB: several segments
    let segments = |fs: &SimFs| fs_names(fs).iter().filter(|n| n.ends_with(".seg")).count();
    let before = segments(&fs);
    assert!(before > 4);
    // A group that must keep everything from offset 30 on.
    log.set_cursor(
        "billing",
        Cursor {
            ack_floor: 30,
            retain_until_acked: true,
        },
    )
    .unwrap();
    let deleted = log.enforce_retention(Some(1), None).unwrap();
    assert!(deleted > 0);
    let first = all(&log).unwrap()[0].0;
    assert!(first <= 30, "offset 30 was deleted (first left: {first})");
    // Once acked past everything, age-based retention takes the rest but the
    // active segment.
    log.set_cursor(
        "billing",
        Cursor {
            ack_floor: 100,
            retain_until_acked: true,
        },
    )
    .unwrap();
    log.enforce_retention(None, Some(u64::MAX)).unwrap();
    assert_eq!(segments(&fs), 1);
    // Cursors are durable.
    let log = open(&fs, cfg).unwrap();
    assert_eq!(log.cursor("billing").unwrap().ack_floor, 100);
}

#[test]
fn readers_seek_by_time() {
    let fs = SimFs::new();
    let mut log = open(
        &fs,
        LogConfig {
            segment_bytes: 3_000,
            ..small()
        },
    )
    .unwrap();
    fill(&mut log, 1, 1..=60, 100);
    let mut r = log.reader(0);
    r.seek_time(25_500).unwrap(); // seq s has timestamp 1000 s
    let (off, rec) = r.next_record().unwrap().unwrap();
    assert_eq!((off, rec.seq), (25, 26));
    let mut r = log.reader(40);
    assert_eq!(r.next_record().unwrap().unwrap().1.seq, 41);
}

#[tokio::test]
async fn group_commit_acks_durably_dedupes_and_readers_follow_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(
        dir.path(),
        SpoolConfig {
            min_free_bytes: 0,
            ..SpoolConfig::default()
        },
    )
    .unwrap();
    let s = spool.stream("orders").unwrap();
    let mut follower = s.reader(0);
    let waiting = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..300 {
            got.push(follower.next_wait().await.unwrap().1.seq);
        }
        got
    });
    // Many concurrent appenders; retransmissions are acked, not stored twice.
    let mut acks = Vec::new();
    for seq in 1..=300u64 {
        acks.push(s.append(9, seq, Bytes::from(format!("m{seq}"))));
        if seq % 50 == 0 {
            acks.push(s.append(9, seq, Bytes::from(format!("m{seq}"))));
        }
    }
    let mut stored = 0;
    let mut dups = 0;
    for a in acks {
        match a.await.unwrap().unwrap() {
            Outcome::Stored { .. } => stored += 1,
            Outcome::Duplicate => dups += 1,
            o => panic!("{o:?} with nothing failed and no keys"),
        }
    }
    assert_eq!((stored, dups), (300, 6));
    assert_eq!(s.highest_seq(9), Some(300));
    let got = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, (1..=300).collect::<Vec<_>>());
    assert_eq!(s.durable_end(), 300);
    assert!(spool.stream("bad/name").is_err());
}

#[tokio::test]
async fn a_floor_of_free_space_holds_acks_until_space_returns() {
    let fs = SimFs::new();
    fs.set_capacity(Some(10_000));
    let spool = Spool::open_with(
        Arc::new(fs.clone()),
        Path::new("/data"),
        SpoolConfig {
            log: small(),
            fsync: FsyncPolicy::Always,
            min_free_bytes: 20_000,
            ..SpoolConfig::default()
        },
    )
    .unwrap();
    let s = spool.stream("s").unwrap();
    let mut ack = s.append(1, 1, Bytes::from("held"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(ack.try_recv().is_err(), "acked below the free-space floor");
    assert!(s.health().disk_full);
    fs.set_capacity(None);
    let out = tokio::time::timeout(Duration::from_secs(5), ack)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(out, Outcome::Stored { offset: 0 });
    assert!(!s.health().disk_full);
}

#[test]
fn new_streams_past_the_limit_are_refused() {
    let fs = SimFs::new();
    let spool = Spool::open_with(
        Arc::new(fs),
        Path::new("/data"),
        SpoolConfig {
            max_streams: 2,
            ..SpoolConfig::default()
        },
    )
    .unwrap();
    spool.stream("a").unwrap();
    spool.stream("b").unwrap();
    let e = spool.stream("c").err().expect("a third stream is refused");
    assert!(e.to_string().contains("streams.max_streams"), "{e}");
    // A dead-letter stream does not count; a stream on disk opens again.
    spool.stream("a.dlq").unwrap();
    spool.shutdown();
    spool.stream("b").unwrap();
}
