//! Protocol cost with no I/O: the receiving endpoint processing 128-byte
//! messages batched in datagrams (target ≥ 10 M msgs/s on one core, i.e.
//! ≤ 100 ns/msg), and the DATA codec on its own.
//!
//!   cargo bench -p sluice-bench --bench protocol

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice_transport::proto::{Connect, Endpoint, ReceiverConfig, Sender, SenderConfig};
use sluice_transport::wire::{DataWriter, Packet};

const MSG: usize = 128;
const MSGS: u64 = 20_000;

/// An endpoint with an open session, and the datagrams a sender would send
/// for `MSGS` messages of `MSG` bytes in datagrams of `max_datagram` bytes.
fn session(max_datagram: usize) -> (Endpoint, u64, Vec<Bytes>) {
    let now = Instant::now();
    let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let cfg = SenderConfig {
        max_datagram,
        max_unacked_bytes: 1 << 30,
        ..SenderConfig::default()
    };
    let mut sender = Sender::new(
        cfg,
        Connect {
            producer_id: 1,
            stream: "bench".into(),
            resume_after: Some(0),
            nonce: 1,
        },
        now,
    );
    let mut ep = Endpoint::new(ReceiverConfig {
        max_datagram,
        seed: Some(1),
        ..ReceiverConfig::default()
    });
    let mut buf = Vec::new();
    let mut id = None;
    while sender.poll_transmit(now, &mut buf) {
        if let Some(inc) = ep.handle_datagram(now, peer, Bytes::from(buf.clone())) {
            id = Some(ep.accept(now, inc, 0, u32::MAX));
        }
    }
    while ep.poll_transmit(now, &mut buf).is_some() {
        sender.handle_datagram(now, Bytes::from(buf.clone()));
    }
    let payload = Bytes::from(vec![0xAB; MSG]);
    for _ in 0..MSGS {
        sender.push(payload.clone()).unwrap();
    }
    let mut datagrams = Vec::new();
    while sender.poll_transmit(now, &mut buf) {
        datagrams.push(Bytes::from(buf.clone()));
    }
    // Drop the heartbeat the sender sends first.
    datagrams.retain(|d| matches!(Packet::decode(d).map(|d| d.packet), Ok(Packet::Data(_))));
    (ep, id.expect("session opened"), datagrams)
}

fn receiver(c: &mut Criterion) {
    let mut g = c.benchmark_group("receiver_128B");
    g.throughput(Throughput::Elements(MSGS));
    for max_datagram in [1452usize, 9000, 65_000] {
        g.bench_function(format!("datagram_{max_datagram}"), |b| {
            b.iter_batched(
                || session(max_datagram),
                |(mut ep, id, datagrams)| {
                    let now = Instant::now();
                    let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
                    let mut delivered = 0u64;
                    for d in datagrams {
                        ep.handle_datagram(now, peer, d);
                        let r = ep.receiver_mut(id).unwrap();
                        let mut last = 0;
                        while let Some(m) = r.poll_message() {
                            last = m.seq;
                            delivered += 1;
                        }
                        r.mark_durable(last);
                    }
                    assert_eq!(delivered, MSGS);
                    ep
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

fn codec(c: &mut Criterion) {
    let payload = vec![0xCD; MSG];
    let mut out = Vec::with_capacity(1452);
    let per_datagram = {
        let mut w = DataWriter::new(&mut out, 1, 1452);
        let mut n = 0;
        while w.push_whole(1 + n, &payload) {
            n += 1;
        }
        w.finish();
        n
    };
    let datagram = Bytes::from(out.clone());
    let mut g = c.benchmark_group("data_codec_128B");
    g.throughput(Throughput::Elements(per_datagram));
    g.bench_function("encode_1452", |b| {
        b.iter(|| {
            let mut w = DataWriter::new(&mut out, 1, 1452);
            for seq in 1..=per_datagram {
                w.push_whole(seq, &payload);
            }
            w.finish();
            out.len()
        })
    });
    g.bench_function("decode_1452", |b| {
        b.iter(|| {
            let Ok(d) = Packet::decode(&datagram) else {
                unreachable!()
            };
            let Packet::Data(f) = d.packet else {
                unreachable!()
            };
            f.entries().map(|e| e.payload.len()).sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(benches, receiver, codec);
criterion_main!(benches);
