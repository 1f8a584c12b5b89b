//! Spool hot path: the CPU cost of appending records (no fdatasync), and one
//! synced append next to a raw write + fdatasync of the same bytes in the
//! same process (the ratio is the spool's overhead over the disk).
//!
//!   cargo bench -p sluice-bench --bench spool

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_daemon::spool::fs::RealFs;
use sluice_daemon::spool::{LogConfig, Record, StreamLog};

fn open(dir: &Path) -> StreamLog {
    StreamLog::open(Arc::new(RealFs), &dir.join("s"), "s", LogConfig::default()).unwrap()
}

fn batch(seq: &mut u64, n: usize, size: usize) -> Vec<Record> {
    let payload = Bytes::from(vec![7u8; size]);
    (0..n)
        .map(|_| {
            *seq += 1;
            Record {
                producer: 1,
                seq: *seq,
                timestamp_us: 0,
                payload: payload.clone(),
                key: None,
            }
        })
        .collect()
}

fn append_cpu(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    let mut seq = 0;
    let mut g = c.benchmark_group("spool_append_no_sync");
    g.throughput(Throughput::Elements(64));
    g.bench_function("64x128B", |b| {
        b.iter(|| log.append(&batch(&mut seq, 64, 128), false).unwrap())
    });
    g.finish();
}

fn append_synced(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    let mut seq = 0;
    let mut raw = std::fs::File::create(dir.path().join("raw")).unwrap();
    let bytes = vec![7u8; 64 * (128 + 40)];
    let mut g = c.benchmark_group("synced_64x128B");
    g.sample_size(50);
    g.bench_function("spool_append", |b| {
        b.iter(|| log.append(&batch(&mut seq, 64, 128), true).unwrap())
    });
    g.bench_function("raw_write_fdatasync", |b| {
        b.iter(|| {
            raw.write_all(&bytes).unwrap();
            raw.sync_data().unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, append_cpu, append_synced);
criterion_main!(benches);
