//! A purge cut short by a power cut at each of its file operations in
//! turn: the log opens again without damage, either purged or not (no
//! record in between), and the idempotence table is whole either way — a
//! producer's resend of a seq stored before is a duplicate, and new
//! records go on from the old end (offsets never reused).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sluice_daemon::spool::record::now_us;
use sluice_daemon::spool::simfs::{CrashMode, SimFs};
use sluice_daemon::spool::{LogConfig, Outcome, Record, StreamLog};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 8_000,
        ..LogConfig::default()
    }
}

fn open(fs: &SimFs) -> StreamLog {
    StreamLog::open(Arc::new(fs.clone()), Path::new("/d/s"), "s", config())
        .expect("a purge cut short is no damage")
}

fn record(seq: u64) -> Record {
    Record {
        producer: 9,
        seq,
        timestamp_us: now_us(),
        payload: Bytes::from(vec![seq as u8; 300]),
        key: None,
    }
}

/// The offsets a reader finds from the log's start.
fn offsets(log: &StreamLog) -> Vec<u64> {
    let mut r = log.reader(0);
    let mut v = Vec::new();
    while let Some((o, _)) = r.next_record().unwrap() {
        v.push(o);
    }
    v
}

#[test]
fn a_purge_cut_short_at_any_step_loses_no_idempotence() {
    const RECORDS: u64 = 60; // several segments of 8,000 bytes
    let mut completed = false;
    for step in 0..500u64 {
        let fs = SimFs::new();
        let mut log = open(&fs);
        for seq in 1..=RECORDS {
            let o = log.append(&[record(seq)], true).unwrap();
            assert_eq!(o, [Outcome::Stored { offset: seq - 1 }]);
        }
        fs.fail_after(Some(step));
        let purged = log.purge().is_ok();
        fs.fail_after(None);
        drop(log);
        let mut rng = ChaCha8Rng::seed_from_u64(step);
        fs.crash(CrashMode::DropUnsynced, &mut rng);
        let mut log = open(&fs);
        let found = offsets(&log);
        let all: Vec<u64> = (0..RECORDS).collect();
        assert!(
            found.is_empty() || found == all || (!purged && all.ends_with(&found)),
            "step {step}: records {found:?}"
        );
        if purged {
            assert!(
                found.is_empty(),
                "step {step}: a purge that returned left {found:?}"
            );
        }
        assert_eq!(log.next_offset(), RECORDS, "step {step}");
        assert_eq!(log.highest_seq(9), Some(RECORDS), "step {step}");
        let o = log.append(&[record(7)], true).unwrap();
        assert_eq!(o, [Outcome::Duplicate], "step {step}");
        let o = log.append(&[record(RECORDS + 1)], true).unwrap();
        assert_eq!(o, [Outcome::Stored { offset: RECORDS }], "step {step}");
        if purged {
            // Cut short at every step before this one: the test tried
            // each of them.
            assert!(
                step > 5,
                "the purge took {step} operations: too few to be cut"
            );
            eprintln!("a purge cut short at each of {step} steps");
            completed = true;
            break;
        }
    }
    assert!(completed, "the purge never completed within 500 operations");
}
