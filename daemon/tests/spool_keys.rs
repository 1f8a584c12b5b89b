//! Request keys in the idempotence table (HTTP `Idempotency-Key`): a
//! retried request is answered with its original offsets and stores
//! nothing, across reopen, segment rolls (snapshots) and power cuts; a
//! retry with another body is refused; keys go after their window and
//! past the most kept.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_daemon::spool::keys::KeyLimits;
use sluice_daemon::spool::record::{now_us, RequestKey};
use sluice_daemon::spool::simfs::{CrashMode, SimFs};
use sluice_daemon::spool::{LogConfig, Outcome, Record, SpoolError, StreamLog};

const DIR: &str = "/data/streams/s";

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 8_000,
        max_batch_bytes: 4_000,
        max_record_bytes: 1_000,
        index_interval: 1_024,
        ..LogConfig::default()
    }
}

fn open(fs: &SimFs, config: LogConfig) -> Result<StreamLog, SpoolError> {
    StreamLog::open(Arc::new(fs.clone()), Path::new(DIR), "s", config)
}

/// A request of `n` records under `key` with body `body` (its hash is the
/// body's first byte, enough to tell bodies apart here).
fn request(key: &str, body: u8, n: u32, seq: &mut u64) -> Vec<Record> {
    (0..n)
        .map(|i| {
            *seq += 1;
            Record {
                producer: 77,
                seq: *seq,
                timestamp_us: now_us(),
                payload: Bytes::from(vec![body; 50]),
                key: (i == 0).then(|| {
                    Arc::new(RequestKey {
                        key: key.into(),
                        hash: [body; 32],
                        count: n,
                    })
                }),
            }
        })
        .collect()
}

fn stored(o: &[Outcome]) -> Vec<u64> {
    o.iter()
        .filter_map(|o| match o {
            Outcome::Stored { offset } => Some(*offset),
            _ => None,
        })
        .collect()
}

#[test]
fn a_retried_request_is_answered_with_its_offsets_across_reopen_and_rolls() {
    let fs = SimFs::new();
    let mut log = open(&fs, config()).unwrap();
    let mut seq = 0;
    let first = log.append(&request("a", 1, 3, &mut seq), true).unwrap();
    assert_eq!(stored(&first), [0, 1, 2]);
    // The same key and body, with fresh seqs (as the HTTP plane sends a
    // retry): nothing stored, the original offsets.
    let again = log.append(&request("a", 1, 3, &mut seq), true).unwrap();
    assert_eq!(
        again,
        [
            Outcome::Repeated {
                first: 0,
                count: 3,
                producer: 77,
                seq: 1
            },
            Outcome::Duplicate,
            Outcome::Duplicate
        ]
    );
    // Another body: refused, nothing stored.
    let other = log.append(&request("a", 2, 1, &mut seq), true).unwrap();
    assert_eq!(other, [Outcome::KeyConflict]);
    // Two requests with one key in one batch: the second repeats the first.
    let mut batch = request("b", 3, 2, &mut seq);
    batch.extend(request("b", 3, 2, &mut seq));
    let o = log.append(&batch, true).unwrap();
    assert_eq!(stored(&o), [3, 4]);
    assert!(
        matches!(
            o[2],
            Outcome::Repeated {
                first: 3,
                count: 2,
                ..
            }
        ),
        "{o:?}"
    );
    assert_eq!(log.next_offset(), 5);

    // Reopened (the table rebuilt from the records): the same answers.
    drop(log);
    let mut log = open(&fs, config()).unwrap();
    let again = log.append(&request("b", 3, 2, &mut seq), true).unwrap();
    assert!(matches!(
        again[0],
        Outcome::Repeated {
            first: 3,
            count: 2,
            ..
        }
    ));
    // Many more requests: segments roll, snapshots hold the keys.
    for i in 0..300 {
        log.append(&request(&format!("k{i}"), 4, 1, &mut seq), true)
            .unwrap();
    }
    assert!(log.shared().read().unwrap().len() > 3, "segments rolled");
    drop(log);
    let mut log = open(&fs, config()).unwrap();
    for (key, body, first) in [("a", 1, 0), ("b", 3, 3), ("k0", 4, 5), ("k299", 4, 304)] {
        let o = log.append(&request(key, body, 1, &mut seq), true).unwrap();
        assert!(
            matches!(o[0], Outcome::Repeated { first: f, .. } if f == first),
            "{key}: {o:?}"
        );
    }
    assert_eq!(log.next_offset(), 305);
}

#[test]
fn keys_go_after_their_window_and_past_the_most_kept() {
    let fs = SimFs::new();
    let limits = KeyLimits {
        window_us: 3_600_000_000,
        max: 10,
    };
    let mut log = open(
        &fs,
        LogConfig {
            keys: limits,
            ..config()
        },
    )
    .unwrap();
    let mut seq = 0;
    for i in 0..11 {
        log.append(&request(&format!("k{i}"), 1, 1, &mut seq), true)
            .unwrap();
    }
    // k0 went by count: stored again; k1 is kept.
    let o = log.append(&request("k0", 1, 1, &mut seq), true).unwrap();
    assert_eq!(stored(&o), [11]);
    let o = log.append(&request("k2", 1, 1, &mut seq), true).unwrap();
    assert!(matches!(o[0], Outcome::Repeated { first: 2, .. }), "{o:?}");
    // A record stored more than the window ago: its key is gone.
    let mut old = request("old", 1, 1, &mut seq);
    old[0].timestamp_us -= 2 * limits.window_us;
    log.append(&old, true).unwrap();
    let mut again = request("old", 1, 1, &mut seq);
    again[0].timestamp_us = now_us();
    assert_eq!(stored(&log.append(&again, true).unwrap()).len(), 1);
}

/// Power cuts at random points while keyed requests are sent and retried
/// until answered: every key's request is stored exactly once, where its
/// answer said.
#[test]
fn power_cuts_never_store_a_keyed_request_twice() {
    let seeds: u64 = std::env::var("SPOOL_KEYS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    for seed in 0..seeds {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let fs = SimFs::new();
        let mut log = open(&fs, config()).unwrap();
        let mut seq = 0;
        // key -> (first offset, count) once answered.
        let mut answered: Vec<Option<(u64, u32)>> = vec![None; 60];
        for round in 0..20 {
            fs.fail_after(Some(rng.random_range(1..40)));
            loop {
                let pending: Vec<usize> = (0..answered.len())
                    .filter(|&k| answered[k].is_none())
                    .collect();
                let Some(&k) = pending.get(rng.random_range(0..pending.len().max(1))) else {
                    break;
                };
                let n = 1 + (k % 3) as u32;
                match log.append(&request(&format!("key-{k}"), k as u8, n, &mut seq), true) {
                    Ok(o) => {
                        let at = match o[0] {
                            Outcome::Stored { offset } => (offset, n),
                            Outcome::Repeated { first, count, .. } => (first, count),
                            other => panic!("seed {seed} round {round}: key-{k}: {other:?}"),
                        };
                        answered[k] = Some(at);
                    }
                    Err(_) => break, // the power went
                }
            }
            let mode = [
                CrashMode::DropUnsynced,
                CrashMode::KeepPrefix,
                CrashMode::TearLastWrite,
            ][rng.random_range(0..3)];
            fs.crash(mode, &mut rng);
            log = open(&fs, config()).unwrap();
        }
        // Whatever is left is sent without faults.
        for (k, answer) in answered.iter_mut().enumerate() {
            if answer.is_none() {
                let n = 1 + (k % 3) as u32;
                let o = log
                    .append(&request(&format!("key-{k}"), k as u8, n, &mut seq), true)
                    .unwrap();
                *answer = Some(match o[0] {
                    Outcome::Stored { offset } => (offset, n),
                    Outcome::Repeated { first, count, .. } => (first, count),
                    other => panic!("seed {seed}: key-{k}: {other:?}"),
                });
            }
        }
        // The log holds each request once, where its answer said.
        let mut r = log.reader(0);
        let mut count = vec![0u32; answered.len()];
        while let Some((offset, rec)) = r.next_record().unwrap() {
            let k = rec.payload[0] as usize;
            count[k] += 1;
            let (first, n) = answered[k].unwrap();
            assert!(
                (first..first + u64::from(n)).contains(&offset),
                "seed {seed}: key-{k} record at {offset}, answered {first}+{n}"
            );
        }
        for (k, c) in count.iter().enumerate() {
            assert_eq!(
                *c,
                1 + (k % 3) as u32,
                "seed {seed}: key-{k} stored {c} records"
            );
        }
    }
}

/// A purge removes the records but not the idempotence table: a request
/// retried with its key after the purge (and after a reopen) is answered
/// as a repeat and nothing is stored; the log goes on from its old end.
#[test]
fn a_purge_keeps_the_request_keys() {
    let fs = SimFs::new();
    let mut log = open(&fs, config()).unwrap();
    let mut seq = 0;
    let first = log.append(&request("a", 1, 3, &mut seq), true).unwrap();
    assert_eq!(stored(&first), [0, 1, 2]);
    assert_eq!(log.purge().unwrap(), 3);
    assert_eq!(log.reader(0).next_record().unwrap().map(|(o, _)| o), None);
    for reopen in [false, true] {
        if reopen {
            log.close().unwrap();
            log = open(&fs, config()).unwrap();
        }
        let again = log.append(&request("a", 1, 3, &mut seq), true).unwrap();
        assert!(stored(&again).is_empty(), "reopened {reopen}: {again:?}");
        assert!(
            matches!(
                again[0],
                Outcome::Repeated {
                    first: 0,
                    count: 3,
                    ..
                }
            ),
            "reopened {reopen}: {again:?}"
        );
        assert_eq!(log.next_offset(), 3);
    }
    let fresh = log.append(&request("b", 2, 1, &mut seq), true).unwrap();
    assert_eq!(stored(&fresh), [3]);
}
