//! Transport-only throughput over real UDP on loopback: one producer, one
//! served endpoint whose owner marks every message durable at once (no
//! spool). Printed next to a baseline measured in the same run: a plain UDP
//! socket loop (sender thread, receiver thread) with the same datagram size.
//!
//!   cargo bench -p sluice-bench --bench loopback
//!
//! Targets (issue 2): 128 B messages ≥ 2 M msgs/s; 1,400 B payloads ≥ 5 Gbit/s.

use std::net::UdpSocket as StdUdpSocket;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_transport::client::{Producer, ProducerOptions};
use sluice_transport::proto::{Incoming, Receiver, ReceiverConfig, SenderConfig};
use sluice_transport::serve::{self, Owner, SessionControl};
use sluice_transport::udp::{self, SocketOptions, UdpIo};
use sluice_transport::wire::CloseCode;

/// Datagram sizes measured: loopback's (its MTU is 64 KiB) and Ethernet's
/// (1,500-byte MTU less IPv6 and UDP headers).
const DATAGRAMS: [usize; 2] = [65_000, 1452];

struct Counting(Arc<AtomicU64>);

impl Owner for Counting {
    fn accept(&mut self, _: &Incoming) -> Result<(u64, u32), (CloseCode, String)> {
        Ok((0, 1 << 20))
    }

    fn deliver(&mut self, r: &mut Receiver, _: &SessionControl) {
        let mut last = None;
        let mut n = 0;
        while let Some(m) = r.poll_message() {
            last = Some(m.seq);
            n += 1;
        }
        self.0.fetch_add(n, Ordering::Relaxed);
        if let Some(l) = last {
            r.mark_durable(l);
        }
    }
}

/// Plain sockets: datagrams/s and Gbit/s of payload that arrived.
fn baseline(size: usize, duration: Duration) -> (f64, f64) {
    let rx = StdUdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let to = rx.local_addr().unwrap();
    let stop = Arc::new(AtomicU64::new(0));
    let s = stop.clone();
    let sender = std::thread::spawn(move || {
        let tx = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let buf = vec![0u8; size];
        while s.load(Ordering::Relaxed) == 0 {
            let _ = tx.send_to(&buf, to);
        }
    });
    let mut buf = vec![0u8; 65_536];
    let start = Instant::now();
    let mut got = 0u64;
    while start.elapsed() < duration {
        if rx.recv(&mut buf).is_ok() {
            got += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    stop.store(1, Ordering::Relaxed);
    sender.join().unwrap();
    let dps = got as f64 / secs;
    (dps, dps * size as f64 * 8.0 / 1e9)
}

/// sluice: messages/s durably acked end to end, and Gbit/s of payload.
async fn sluice(datagram: usize, size: usize, messages: u64) -> (f64, f64) {
    let socket = udp::bind(
        "127.0.0.1:0".parse().unwrap(),
        &SocketOptions {
            recv_buffer: Some(16 << 20),
            send_buffer: Some(4 << 20),
            allow_smaller_buffers: true,
        },
    )
    .unwrap();
    let addr = socket.local_addr().unwrap();
    let delivered = Arc::new(AtomicU64::new(0));
    let _server = serve::serve(
        UdpIo::new(socket),
        ReceiverConfig {
            max_datagram: datagram,
            ..ReceiverConfig::default()
        },
        Counting(delivered.clone()),
    );
    let options = ProducerOptions {
        sender: SenderConfig {
            max_datagram: datagram,
            max_unacked_bytes: 256 << 20,
            ..SenderConfig::default()
        },
        ..ProducerOptions::default()
    };
    let producer = Producer::connect(addr, "bench", 1, options).await.unwrap();
    let payload = Bytes::from(vec![0x5A; size]);
    const BATCH: u64 = 4096;
    const IN_FLIGHT: u64 = 8;
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..IN_FLIGHT {
        let p = producer.clone();
        let payload = payload.clone();
        workers.push(tokio::spawn(async move {
            let mine = messages / IN_FLIGHT + u64::from(w < messages % IN_FLIGHT);
            let mut left = mine;
            while left > 0 {
                let n = left.min(BATCH);
                p.send_batch(vec![payload.clone(); n as usize])
                    .await
                    .unwrap();
                left -= n;
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(delivered.load(Ordering::Relaxed), messages);
    producer.close().await.unwrap();
    let mps = messages as f64 / secs;
    (mps, mps * size as f64 * 8.0 / 1e9)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing:
    // then run a tiny smoke version so the bench stays compiled and working.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (count_small, count_large, base_time) = if quick {
        (20_000, 5_000, Duration::from_millis(100))
    } else {
        (4_000_000, 1_000_000, Duration::from_secs(2))
    };
    println!("transport-only loopback, one producer, durable ack = delivered (no spool)");
    println!(
        "{:<9} {:<9} {:>14} {:>9} | {:>15} {:>9} | {:>6}",
        "datagram", "payload", "sluice msgs/s", "Gbit/s", "plain dgrams/s", "Gbit/s", "ratio"
    );
    for datagram in DATAGRAMS {
        let (bdps, bgbps) = baseline(datagram, base_time);
        for (size, count) in [(128usize, count_small), (1400, count_large)] {
            let count = if datagram < 2000 { count / 4 } else { count };
            let (mps, gbps) = rt.block_on(sluice(datagram, size, count));
            println!(
                "{:<9} {:<9} {:>14.0} {:>9.2} | {:>15.0} {:>9.2} | {:>5.2}x",
                datagram,
                format!("{size} B"),
                mps,
                gbps,
                bdps,
                bgbps,
                gbps / bgbps
            );
        }
    }
}
