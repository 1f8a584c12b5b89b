//! Consumers that never read: eight QUIC subscriptions declare 16 GiB of
//! credit each and never read their streams. The daemon clamps what they
//! may hold (per member, per connection, in all), so its resident memory
//! stays under a bound made of its limits, a well-behaved producer and
//! consumer are served meanwhile, and the memory comes back when they go.
//! (Before the clamps, the same attack took a daemon from 440 MB to
//! 6.3 GB.)

use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_tests::daemon::{Daemon, DaemonSpec};
use sluice_tests::sluiced_bin;
use sluice_transport::client::{Consumer, ConsumerOptions, Producer, ProducerOptions, Transport};
use sluice_transport::quic::control::{ConsumeMode, Control, StartAt};
use sluice_transport::quic::frame::{self, FramedRecv};
use sluice_transport::quic::tls;

const STREAM: &str = "s";
const MESSAGES: u64 = 512;
const SIZE: usize = 512 << 10;
const MIB: u64 = 1 << 20;
/// The daemon's limits in this test.
const MEMBER: u64 = 4 * MIB;
const CONNECTION: u64 = 8 * MIB;
const OUT: u64 = 16 * MIB;
const READ_AHEAD: u64 = 8 * MIB;
const ATTACKERS: usize = 8;

fn spec(dir: &std::path::Path) -> DaemonSpec {
    DaemonSpec::new(sluiced_bin!(), dir)
        .arg("--consumers-max-member-bytes")
        .arg(MEMBER.to_string())
        .arg("--consumers-max-connection-bytes")
        .arg(CONNECTION.to_string())
        .arg("--consumers-max-out-bytes")
        .arg(OUT.to_string())
        .arg("--consumers-read-ahead-bytes")
        .arg(READ_AHEAD.to_string())
}

/// A QUIC connection subscribed to `group` with 16 GiB of declared credit
/// that never reads what it is sent.
struct Hog {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    _streams: Vec<(quinn::SendStream, FramedRecv)>,
}

async fn hog(spec: &DaemonSpec, group: &str) -> Hog {
    let q = spec.quic_options(None);
    let config = tls::client_config(&q.tls, Duration::from_secs(2)).expect("client config");
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("endpoint");
    let name = tls::server_name(&q.tls, spec.quic);
    let conn = endpoint
        .connect_with(config, spec.quic, &name)
        .expect("connect")
        .await
        .expect("handshake");
    let (mut send, recv) = conn.open_bi().await.expect("control stream");
    let mut recv = FramedRecv::new(recv);
    let auth = Control::Auth {
        token: String::new(),
    };
    frame::write(&mut send, &auth.encode()).await.unwrap();
    let ok = recv.next().await.unwrap().unwrap();
    assert!(matches!(Control::decode(&ok), Ok(Control::AuthOk { .. })));
    let mut streams = vec![(send, recv)];
    let (mut send, recv) = conn.open_bi().await.expect("subscription stream");
    let mut recv = FramedRecv::new(recv);
    let subscribe = Control::Subscribe {
        stream: STREAM.into(),
        group: group.into(),
        start: StartAt::Earliest,
        mode: ConsumeMode::Push,
        max_messages: u32::MAX,
        max_bytes: 1 << 34,
    };
    frame::write(&mut send, &subscribe.encode()).await.unwrap();
    let reply = recv.next().await.unwrap().unwrap();
    assert!(
        matches!(Control::decode(&reply), Ok(Control::Subscribed { .. })),
        "{:?}",
        Control::decode(&reply)
    );
    // From here on nothing is read.
    streams.push((send, recv));
    Hog {
        _endpoint: endpoint,
        conn,
        _streams: streams,
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / MIB as f64
}

/// The daemon's RSS once it has not grown for a second (or after `limit`).
async fn settled_rss(d: &Daemon, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    let mut last = d.rss();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = d.rss();
        if now <= last + MIB || Instant::now() > deadline {
            return now.max(last);
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_that_never_read_cannot_grow_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path());
    let d = spec.start();
    let target = spec.quic_path();
    let options = ProducerOptions::with_transport(target.transport.clone());
    let producer = Producer::connect(target.addr, STREAM, 1, options.clone())
        .await
        .expect("producer");
    let payload = Bytes::from(vec![7u8; SIZE]);
    for _ in 0..MESSAGES / 16 {
        producer
            .send_batch((0..16).map(|_| payload.clone()).collect())
            .await
            .expect("published");
    }
    let before = settled_rss(&d, Duration::from_secs(5)).await;

    let mut hogs = Vec::new();
    for i in 0..ATTACKERS {
        hogs.push(hog(&spec, &format!("hog{i}")).await);
    }
    let during = settled_rss(&d, Duration::from_secs(10)).await;

    // Meanwhile a producer publishes and a well-behaved consumer consumes.
    let seq = producer
        .send(Bytes::from_static(b"still served"))
        .await
        .expect("a producer is served while the hogs hold on");
    let Transport::Quic(q) = &target.transport else {
        unreachable!()
    };
    let copts = ConsumerOptions::new(q.clone(), "good");
    let mut consumer = Consumer::connect(target.addr, STREAM, copts)
        .await
        .expect("consumer");
    for _ in 0..32 {
        let m = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .expect("a well-behaved consumer is served")
            .expect("a message")
            .expect("the stream goes on");
        m.ack();
    }
    let peak = d.rss().max(during);

    for h in &hogs {
        h.conn.close(0u32.into(), b"bye");
    }
    drop(hogs);
    // Freed memory goes back to the system within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    let back = before + (peak.saturating_sub(before)) / 2 + 32 * MIB;
    let after = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = d.rss();
        if now < back || Instant::now() > deadline {
            break now;
        }
    };
    eprintln!(
        "{ATTACKERS} consumers that never read, 16 GiB declared each, {MESSAGES} x {} KiB in the \
         stream: RSS before {:.0} MiB, during {:.0} MiB (peak {:.0}), after they closed {:.0} MiB",
        SIZE >> 10,
        mib(before),
        mib(during),
        mib(peak),
        mib(after)
    );
    // What the limits allow: every group's read-ahead, everything out with
    // members, and what QUIC buffers per connection, with slack for the
    // rest (the good consumer, allocator rounding).
    let quic_buffers = ATTACKERS as u64 * 16 * MIB;
    let bound = ATTACKERS as u64 * READ_AHEAD + OUT + quic_buffers + 96 * MIB;
    assert!(
        peak < before + bound,
        "RSS grew by {:.0} MiB, the limits allow {:.0} MiB",
        mib(peak.saturating_sub(before)),
        mib(bound)
    );
    assert!(
        after < back,
        "memory did not come back after the consumers left: before {:.0} MiB, peak {:.0} MiB, \
         after {:.0} MiB",
        mib(before),
        mib(peak),
        mib(after)
    );
    assert!(seq > MESSAGES);
    let stopped = d.terminate(Duration::from_secs(15));
    assert!(stopped.success());
}
