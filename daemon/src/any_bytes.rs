//! A property the proptest `daemon/tests/spool_bytes.rs` and the fuzz
//! target `spool_files` (daemon/fuzz) share: any bytes in any file of a
//! stream — a segment, the checkpoint, a cursor, a consumer group's journal
//! or snapshot — put in whole or xored over the file, go through the
//! survey, verify, the read-only, recovering and repairing opens and the
//! reads after them without a panic; a repair always opens, and after it a
//! start without one does. On the simulated file system, in memory.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::consume::store::{self, Event, GroupStore, OnDamage};
use crate::spool::fs::SpoolFs;
use crate::spool::simfs::SimFs;
use crate::spool::survey::{self, Depth};
use crate::spool::{Cursor, LogConfig, Record, Recovery, StreamLog};

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

/// A small stream with two segments, a cursor and a consumer group.
fn stream() -> SimFs {
    let fs = SimFs::new();
    let dir = Path::new(DIR);
    let mut log = StreamLog::open(Arc::new(fs.clone()), dir, "s", config(Recovery::Recover))
        .expect("a new stream");
    for seq in 1..=30 {
        let r = Record {
            producer: 1,
            seq,
            timestamp_us: seq,
            payload: Bytes::from(vec![seq as u8; 90]),
            key: None,
        };
        log.append(&[r], true).expect("append");
    }
    let cursor = Cursor {
        ack_floor: 3,
        retain_until_acked: true,
    };
    log.set_cursor("g", cursor).expect("cursor");
    log.close().expect("close");
    let mut g = GroupStore::create(Arc::new(fs.clone()), &dir.join("groups/g"), 0).expect("group");
    g.append(&[Event::Acked(0..5)]).expect("append");
    g.append(&[Event::Delivered {
        offset: 7,
        count: 2,
    }])
    .expect("append");
    fs
}

/// Puts `bytes` into file `which` (of five) of a small stream — in place
/// of it, or xored over it from byte `at` — then reads the stream every
/// way. Panics on what must not happen.
pub fn check(which: u8, xor: bool, at: u16, bytes: &[u8]) {
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
    let f = fs.open(path, false).expect("the file");
    if xor {
        let len = f.size().expect("size") as usize;
        let mut b = vec![0; len];
        f.read_exact_at(&mut b, 0).expect("read");
        let start = at as usize % len.max(1);
        for (y, x) in b.iter_mut().skip(start).zip(bytes) {
            *y ^= x;
        }
        f.write_all_at(&b, 0).expect("write");
    } else {
        f.set_len(0).expect("truncate");
        f.write_all_at(bytes, 0).expect("write");
    }
    f.sync_data().expect("sync");
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
    let _ = GroupStore::open(fs, &dir.join("groups/g"), OnDamage::Refuse);
}
