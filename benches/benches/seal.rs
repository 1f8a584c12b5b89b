//! Sealed packets (the authenticated fast path): the CPU cost per packet of
//! sealing and of opening, for inner datagrams from a small message to the
//! largest UDP payload, next to CRC32C of the same bytes, which is what the
//! plain fast path already pays per packet. Also what rejecting costs: a
//! replay is refused before any AES work, a forgery only after a full pass.
//!
//!   cargo bench -p sluice-bench --bench seal

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice_transport::seal::{keys, OpenError, Opener, Sealer, Side, EXPORTER_LEN, HEADER_LEN};

/// A small message, a full 1,500-byte-MTU datagram over IPv6, a jumbo-ish
/// datagram, and about the largest a loopback or GSO send carries.
const SIZES: [usize; 4] = [128, 1452, 8 * 1024, 65_000];

/// A producer's sealer and the daemon's opener for one lease.
fn lease() -> (Sealer, Opener) {
    let material: [u8; EXPORTER_LEN] = std::array::from_fn(|i| i as u8);
    let (tx, _) = keys(&material, 1, Side::Producer);
    let (_, rx) = keys(&material, 1, Side::Daemon);
    (tx, rx)
}

fn per_size(c: &mut Criterion) {
    for size in SIZES {
        let inner = vec![0xA5u8; size];
        let mut g = c.benchmark_group(format!("seal_{size}B"));
        g.throughput(Throughput::Bytes(size as u64));

        g.bench_function("crc32c_baseline", |b| {
            b.iter(|| crc32c::crc32c(black_box(&inner)))
        });

        let (mut tx, _) = lease();
        let mut out = Vec::with_capacity(size + Sealer::overhead());
        g.bench_function("seal", |b| {
            b.iter(|| {
                tx.seal(black_box(&inner), &mut out).unwrap();
                out.len()
            })
        });

        // Every open needs a packet the window has not seen: seal a fresh one
        // per iteration in the (untimed) setup.
        let (mut tx, mut rx) = lease();
        g.bench_function("open", |b| {
            b.iter_batched(
                || {
                    let mut p = Vec::with_capacity(size + Sealer::overhead());
                    tx.seal(&inner, &mut p).unwrap();
                    p
                },
                |mut p| {
                    let n = rx.open(&mut p).unwrap().len();
                    (n, p)
                },
                BatchSize::SmallInput,
            )
        });
        g.finish();
    }
}

/// What a flood of bad packets costs the daemon per packet, at 1,452 bytes.
fn rejects(c: &mut Criterion) {
    let inner = vec![0x5Au8; 1452];
    let mut g = c.benchmark_group("seal_reject_1452B");
    g.throughput(Throughput::Elements(1));

    let (mut tx, mut rx) = lease();
    let mut replayed = Vec::new();
    tx.seal(&inner, &mut replayed).unwrap();
    rx.open(&mut replayed.clone()).unwrap();
    g.bench_function("replayed", |b| {
        b.iter(|| {
            let e = rx.open(black_box(&mut replayed)).unwrap_err();
            assert_eq!(e, OpenError::Replayed);
        })
    });

    // A correct header and a wrong body: only the tag tells, after a full
    // decryption. (ring zeroes the body on failure; it stays a forgery.)
    let mut forged = Vec::new();
    tx.seal(&inner, &mut forged).unwrap();
    forged[HEADER_LEN] ^= 1;
    g.bench_function("auth_failed", |b| {
        b.iter(|| {
            let e = rx.open(black_box(&mut forged)).unwrap_err();
            assert_eq!(e, OpenError::AuthFailed);
        })
    });
    g.finish();
}

criterion_group!(benches, per_size, rejects);
criterion_main!(benches);
