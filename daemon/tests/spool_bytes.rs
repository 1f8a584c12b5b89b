//! Any bytes in any file of a stream — a segment, the checkpoint, a
//! cursor, a consumer group's journal or snapshot — are read without a
//! panic: opening refuses damage or recovers, a repair then opens clean,
//! and verify reports without changing anything. The fuzz target
//! `spool_files` (daemon/fuzz) runs the same property under libFuzzer.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use sluice_daemon::consume::store::Event;
use sluice_daemon::consume::store::{self, GroupStore, OnDamage};
use sluice_daemon::spool::fs::SpoolFs;
use sluice_daemon::spool::simfs::SimFs;
use sluice_daemon::spool::survey::{self, Depth};
use sluice_daemon::spool::{Cursor, LogConfig, Record, Recovery, StreamLog};

const DIR: &str = "/d/streams/s";

fn config(recovery: Recovery) -> LogConfig {
    LogConfig {
        segment_bytes: 2_000,
        max_batch_bytes: 1_000,
        max_record_bytes: 500,
        index_interval: 256,
        recovery,
        ..LogConfig::default()
    }
}

/// A small stream with two segments, a cursor and a group.
fn stream() -> SimFs {
    let fs = SimFs::new();
    let dir = Path::new(DIR);
    let mut log =
        StreamLog::open(Arc::new(fs.clone()), dir, "s", config(Recovery::Recover)).unwrap();
    for seq in 1..=30 {
        let r = Record {
            producer: 1,
            seq,
            timestamp_us: seq,
            payload: Bytes::from(vec![seq as u8; 90]),
        };
        log.append(&[r], true).unwrap();
    }
    log.set_cursor(
        "g",
        Cursor {
            ack_floor: 3,
            retain_until_acked: true,
        },
    )
    .unwrap();
    log.close().unwrap();
    let mut g = GroupStore::create(Arc::new(fs.clone()), &dir.join("groups/g"), 0).unwrap();
    g.append(&[Event::Acked(0..5)]).unwrap();
    g.append(&[Event::Delivered {
        offset: 7,
        count: 2,
    }])
    .unwrap();
    fs
}

/// Replaces (or xors into) one of the stream's files, then reads it every way.
fn check(which: u8, xor: bool, at: u16, bytes: &[u8]) {
    let fs = stream();
    let dir = Path::new(DIR);
    let files = [
        dir.join("00000000000000000000.seg"),
        dir.join("checkpoint"),
        dir.join("cursors/g"),
        dir.join("groups/g/journal"),
        dir.join("groups/g/snapshot"),
    ];
    let path = &files[which as usize % files.len()];
    let f = fs.open(path, false).unwrap();
    if xor {
        let len = f.size().unwrap() as usize;
        let mut b = vec![0; len];
        f.read_exact_at(&mut b, 0).unwrap();
        let start = at as usize % len.max(1);
        for (i, x) in bytes.iter().enumerate() {
            if let Some(y) = b.get_mut(start + i) {
                *y ^= x;
            }
        }
        f.write_all_at(&b, 0).unwrap();
    } else {
        f.set_len(0).unwrap();
        f.write_all_at(bytes, 0).unwrap();
    }
    f.sync_data().unwrap();
    let fs: Arc<dyn SpoolFs> = Arc::new(fs);
    let _ = survey::survey(&*fs, dir, "s", Depth::Full, &config(Recovery::ReadOnly));
    let _ = store::verify(&*fs, &dir.join("groups/g"));
    let read_all = |log: &StreamLog| {
        let mut r = log.reader(0);
        while let Ok(Some(_)) = r.next_record() {}
    };
    if let Ok(log) = StreamLog::open(fs.clone(), dir, "s", config(Recovery::ReadOnly)) {
        read_all(&log);
    }
    if let Ok(log) = StreamLog::open(fs.clone(), dir, "s", config(Recovery::Recover)) {
        read_all(&log);
    }
    let log = StreamLog::open(fs.clone(), dir, "s", config(Recovery::Repair))
        .expect("a repair opens whatever the bytes");
    read_all(&log);
    drop(log);
    StreamLog::open(fs.clone(), dir, "s", config(Recovery::Recover))
        .expect("after a repair the stream opens without one");
    let _ = GroupStore::open(fs.clone(), &dir.join("groups/g"), OnDamage::Refuse);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn any_bytes_in_any_file_are_read_without_a_panic(
        which in 0u8..5,
        xor in any::<bool>(),
        at in any::<u16>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        check(which, xor, at, &bytes);
    }
}
