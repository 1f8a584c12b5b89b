//! The consumer client against a fake daemon on loopback: a quinn server
//! with a self-signed certificate that speaks the consumer's side of the
//! QUIC plane by script (authenticate, subscribe, deliver, answer syncs and
//! fetches, drop the connection), so that each test says exactly what the
//! daemon does and checks exactly what the client sends.

// Lists of one range are lists of ack ranges here, not ranges mistyped.
#![allow(clippy::single_range_in_vec_init)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, ConnectionError, SendStream};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sluice_transport::client::{
    ConsumeMode, Consumer, ConsumerError, ConsumerOptions, Delivery, QuicOptions, StartAt,
    SubscriptionInfo,
};
use sluice_transport::quic::close_code;
use sluice_transport::quic::consume::{self, FromConsumer, ToConsumer};
use sluice_transport::quic::control::{Control, RefuseCode};
use sluice_transport::quic::frame::{self, FramedRecv};
use sluice_transport::quic::tls::{self, ClientTls, ServerTrust};

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test step took over 20 s")
}

/// A QUIC listener on loopback that clients trust by fingerprint.
struct Fake {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    fingerprint: [u8; 32],
}

impl Fake {
    fn start() -> Fake {
        let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert = CertificateDer::from(made.cert.der().to_vec());
        let fingerprint = tls::fingerprint(&cert);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.key_pair.serialize_der()));
        let config = tls::server_config(vec![cert], key, None).unwrap();
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        Fake {
            endpoint,
            addr,
            fingerprint,
        }
    }

    fn options(&self, group: &str) -> ConsumerOptions {
        let quic = QuicOptions {
            tls: ClientTls {
                trust: ServerTrust::Fingerprint(self.fingerprint),
                client_cert: None,
                server_name: None,
            },
            token: Some("secret".into()),
        };
        ConsumerOptions::new(quic, group)
    }

    /// Accepts a connection and its control stream, checks the token.
    async fn accept_conn(&self) -> (Connection, SendStream, FramedRecv) {
        let conn = self.endpoint.accept().await.unwrap().await.unwrap();
        let (send, recv) = conn.accept_bi().await.unwrap();
        let mut recv = FramedRecv::new(recv);
        let auth = Control::decode(&recv.next().await.unwrap().unwrap()).unwrap();
        assert_eq!(
            auth,
            Control::Auth {
                token: "secret".into()
            }
        );
        (conn, send, recv)
    }

    /// Accepts a consumer up to its Subscribe (not answered yet).
    async fn accept(&self) -> Peer {
        let (conn, mut control, control_recv) = self.accept_conn().await;
        frame::write(
            &mut control,
            &Control::AuthOk {
                principal: "tester".into(),
            }
            .encode(),
        )
        .await
        .unwrap();
        let (send, recv) = conn.accept_bi().await.unwrap();
        let mut recv = FramedRecv::new(recv);
        let subscribe = Control::decode(&recv.next().await.unwrap().unwrap()).unwrap();
        Peer {
            conn,
            _control: (control, control_recv),
            send,
            recv,
            subscribe,
        }
    }

    /// Accepts a consumer and lets it in as `member`.
    async fn accept_subscribed(&self, member: u64) -> Peer {
        let mut p = self.accept().await;
        p.subscribed(member).await;
        p
    }
}

/// The daemon's end of one consumer's connection.
struct Peer {
    conn: Connection,
    _control: (SendStream, FramedRecv),
    send: SendStream,
    recv: FramedRecv,
    subscribe: Control,
}

impl Peer {
    async fn subscribed(&mut self, member: u64) {
        let ok = Control::Subscribed {
            member,
            ack_deadline_ms: 30_000,
            max_deliveries: 5,
        };
        frame::write(&mut self.send, &ok.encode()).await.unwrap();
        self.recv.set_long();
    }

    async fn send(&mut self, m: ToConsumer) {
        let mut out = Vec::new();
        m.put_frame(&mut out);
        self.send.write_all(&out).await.unwrap();
    }

    async fn deliver(&mut self, offset: u64, delivery: u32) {
        self.send(ToConsumer::Deliver(consume::Delivery {
            offset,
            delivery,
            timestamp_us: 1_700_000_000_000_000 + offset,
            producer: 42,
            seq: offset + 100,
            deadline_ms: 30_000,
            payload: Bytes::from(format!("message {offset}")),
        }))
        .await;
    }

    /// The consumer's next message.
    async fn recv(&mut self) -> FromConsumer {
        let f = within(self.recv.next())
            .await
            .unwrap()
            .expect("the consumer ended its stream");
        FromConsumer::decode(&f).unwrap()
    }

    /// Every message up to and including the next Sync, and its id.
    async fn until_sync(&mut self) -> (Vec<FromConsumer>, u64) {
        let mut got = Vec::new();
        loop {
            match self.recv().await {
                FromConsumer::Sync { id } => return (got, id),
                m => got.push(m),
            }
        }
    }

    /// Answers the next Sync; returns the offsets acked before it.
    async fn sync(&mut self) -> Vec<u64> {
        let (got, id) = self.until_sync().await;
        self.send(ToConsumer::Synced { id }).await;
        acked(&got)
    }
}

/// The offsets of every Ack among `msgs`, in order.
fn acked(msgs: &[FromConsumer]) -> Vec<u64> {
    msgs.iter()
        .flat_map(|m| match m {
            FromConsumer::Ack { ranges } => ranges.iter().cloned().flatten().collect(),
            _ => Vec::new(),
        })
        .collect()
}

async fn next(c: &mut Consumer) -> Delivery {
    within(c.next()).await.unwrap().expect("a delivery")
}

#[tokio::test]
async fn push_deliveries_acks_nacks_extends_and_syncs() {
    let fake = Fake::start();
    let (consumer, mut peer) = tokio::join!(
        Consumer::connect(fake.addr, "orders", fake.options("billing")),
        fake.accept_subscribed(7),
    );
    let mut consumer = consumer.unwrap();
    assert_eq!(
        peer.subscribe,
        Control::Subscribe {
            stream: "orders".into(),
            group: "billing".into(),
            start: StartAt::Earliest,
            mode: ConsumeMode::Push,
            max_messages: 1000,
            max_bytes: 16 << 20,
        }
    );
    assert_eq!(
        consumer.info(),
        SubscriptionInfo {
            member: 7,
            ack_deadline: Duration::from_secs(30),
            max_deliveries: 5,
        }
    );

    for offset in 10..14 {
        peer.deliver(offset, 1).await;
    }
    let mut ds = Vec::new();
    for offset in 10..14 {
        let d = next(&mut consumer).await;
        assert_eq!(
            (d.offset, d.delivery, d.producer, d.seq),
            (offset, 1, 42, offset + 100)
        );
        assert_eq!(d.payload, Bytes::from(format!("message {offset}")));
        let left = d.deadline() - tokio::time::Instant::now();
        assert!(left > Duration::from_secs(25) && left <= Duration::from_secs(30));
        ds.push(d);
    }
    ds[0].ack();
    ds[1].clone().ack();
    ds[1].ack(); // twice: sent once
    ds[2].nack(Duration::from_millis(250));
    ds[3].extend(Duration::from_secs(60));
    assert!(ds[3].deadline() - tokio::time::Instant::now() > Duration::from_secs(55));
    // A clone is the same delivery.
    assert_eq!(ds[3].clone().deadline(), ds[3].deadline());
    consumer.set_credit(10, 1 << 20);

    let (synced, (msgs, id)) = tokio::join!(consumer.sync(), async {
        let (msgs, id) = peer.until_sync().await;
        peer.send(ToConsumer::Synced { id }).await;
        (msgs, id)
    });
    synced.unwrap();
    assert!(id > 0);
    assert_eq!(acked(&msgs), vec![10, 11]);
    assert!(msgs.contains(&FromConsumer::Nack {
        offsets: vec![12],
        delay_ms: 250
    }));
    assert!(msgs.contains(&FromConsumer::Extend {
        offsets: vec![13],
        ms: 60_000
    }));
    assert!(msgs.contains(&FromConsumer::Credit {
        max_messages: 10,
        max_bytes: 1 << 20
    }));

    // A cumulative ack goes as one; closing makes it durable first.
    peer.deliver(14, 1).await;
    peer.deliver(15, 1).await;
    next(&mut consumer).await;
    next(&mut consumer).await;
    consumer.ack_up_to(15);
    let (_, msgs) = tokio::join!(consumer.close(), async {
        let (msgs, id) = peer.until_sync().await;
        peer.send(ToConsumer::Synced { id }).await;
        msgs
    });
    assert_eq!(msgs, vec![FromConsumer::AckUpTo { offset: 15 }]);
    match within(peer.conn.closed()).await {
        ConnectionError::ApplicationClosed(c) => {
            assert_eq!(u64::from(c.error_code), u64::from(close_code::DONE))
        }
        other => panic!("closed with {other:?}"),
    }
}

#[tokio::test]
async fn pull_mode_fetches() {
    let fake = Fake::start();
    let mut options = fake.options("batch");
    options.mode = ConsumeMode::Pull;
    options.start = StartAt::Time(1_700_000_000_000_000);
    let (consumer, mut peer) = tokio::join!(
        Consumer::connect(fake.addr, "orders", options),
        fake.accept_subscribed(1),
    );
    let mut consumer = consumer.unwrap();
    let Control::Subscribe { mode, start, .. } = &peer.subscribe else {
        panic!("not a Subscribe: {:?}", peer.subscribe);
    };
    assert_eq!(
        (*mode, *start),
        (ConsumeMode::Pull, StartAt::Time(1_700_000_000_000_000))
    );
    assert!(matches!(
        consumer.next().await,
        Err(ConsumerError::Config(_))
    ));

    let (got, _) = tokio::join!(consumer.fetch(10, Duration::from_secs(2)), async {
        let m = peer.recv().await;
        let FromConsumer::Fetch { id, max, wait_ms } = m else {
            panic!("expected a fetch, got {m:?}");
        };
        assert_eq!((max, wait_ms), (10, 2000));
        peer.deliver(1, 1).await;
        peer.deliver(2, 3).await;
        peer.send(ToConsumer::FetchDone { id }).await;
    });
    let got = got.unwrap();
    assert_eq!(
        got.iter()
            .map(|d| (d.offset, d.delivery))
            .collect::<Vec<_>>(),
        vec![(1, 1), (2, 3)]
    );

    // An old FetchDone is not this fetch's answer; waits over 30 s are
    // cut to 30 s.
    let (third, _) = tokio::join!(consumer.fetch(5, Duration::from_secs(600)), async {
        let m = peer.recv().await;
        let FromConsumer::Fetch { id, wait_ms, .. } = m else {
            panic!("expected a fetch, got {m:?}");
        };
        assert_eq!(wait_ms, 30_000);
        peer.send(ToConsumer::FetchDone { id: id - 1 }).await;
        peer.deliver(3, 1).await;
        peer.send(ToConsumer::FetchDone { id }).await;
    });
    let third = third.unwrap();
    assert_eq!(third.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![3]);

    // Nothing there: an empty answer.
    let (none, _) = tokio::join!(consumer.fetch(5, Duration::from_millis(100)), async {
        let m = peer.recv().await;
        let FromConsumer::Fetch { id, .. } = m else {
            panic!("expected a fetch, got {m:?}");
        };
        peer.send(ToConsumer::FetchDone { id }).await;
    });
    assert!(none.unwrap().is_empty());

    for d in got.iter().chain(&third) {
        d.ack();
    }
    let (r, acked) = tokio::join!(consumer.sync(), peer.sync());
    r.unwrap();
    assert_eq!(acked, vec![1, 2, 3]);
}

#[tokio::test]
async fn refused_subscription_fails_connect() {
    let fake = Fake::start();
    let (consumer, _peer) = tokio::join!(
        Consumer::connect(fake.addr, "nope", fake.options("g")),
        async {
            let mut p = fake.accept().await;
            let refused = Control::Refused {
                code: RefuseCode::NoSuchStream,
                reason: "no stream \"nope\"".into(),
            };
            frame::write(&mut p.send, &refused.encode()).await.unwrap();
            p.send.finish().unwrap();
            p
        },
    );
    let e = consumer.unwrap_err();
    assert_eq!(
        e,
        ConsumerError::Refused {
            code: RefuseCode::NoSuchStream,
            reason: "no stream \"nope\"".into()
        }
    );
    assert!(e.to_string().contains("no such stream"), "{e}");
}

#[tokio::test]
async fn wrong_credentials_fail_connect() {
    let fake = Fake::start();
    let (consumer, _conn) = tokio::join!(
        Consumer::connect(fake.addr, "orders", fake.options("g")),
        async {
            let (conn, _, _) = fake.accept_conn().await;
            conn.close(close_code::AUTH_FAILED.into(), b"unknown token");
            conn
        },
    );
    assert_eq!(
        consumer.unwrap_err(),
        ConsumerError::Auth("unknown token".into())
    );
}

#[tokio::test]
async fn bad_options_are_refused_before_connecting() {
    let fake = Fake::start();
    let mut o = fake.options("");
    assert!(matches!(
        Consumer::connect(fake.addr, "orders", o.clone()).await,
        Err(ConsumerError::Config(_))
    ));
    o.group = "g".into();
    o.max_messages = 0;
    assert!(matches!(
        Consumer::connect(fake.addr, "orders", o).await,
        Err(ConsumerError::Config(_))
    ));
}

#[tokio::test]
async fn after_a_lost_connection_acks_are_sent_again_and_syncs_answered() {
    let fake = Arc::new(Fake::start());
    let (consumer, mut peer) = tokio::join!(
        Consumer::connect(fake.addr, "orders", fake.options("g")),
        fake.accept_subscribed(1),
    );
    let mut consumer = consumer.unwrap();
    for offset in 1..=3 {
        peer.deliver(offset, 1).await;
    }
    let d1 = next(&mut consumer).await;
    let d2 = next(&mut consumer).await;
    let d3 = next(&mut consumer).await;
    d1.ack();
    d2.ack();

    // The daemon receives the acks and the sync, makes nothing durable and
    // goes away; then takes the consumer back as a new member.
    let f = fake.clone();
    let daemon = tokio::spawn(async move {
        let (msgs, _) = peer.until_sync().await;
        assert_eq!(acked(&msgs), vec![1, 2]);
        peer.conn
            .close(close_code::SHUTTING_DOWN.into(), b"shutting down");
        let mut peer = f.accept().await;
        let Control::Subscribe { group, .. } = &peer.subscribe else {
            panic!("not a Subscribe");
        };
        assert_eq!(group, "g");
        peer.subscribed(2).await;
        // Before anything else: the acks not known durable, as one range,
        // then a sync.
        let (msgs, id) = peer.until_sync().await;
        assert_eq!(
            msgs,
            vec![FromConsumer::Ack { ranges: vec![1..3] }],
            "only the acks before the sync"
        );
        peer.send(ToConsumer::Synced { id }).await;
        peer
    });
    within(consumer.sync()).await.unwrap();
    let mut peer = within(daemon).await.unwrap();
    assert_eq!(consumer.info().member, 2);

    // A delivery from before the reconnect can still be acked; nacks of it
    // mean nothing to the new member and are not sent.
    d3.nack(Duration::ZERO);
    d3.ack();
    peer.deliver(3, 2).await;
    let again = next(&mut consumer).await;
    assert_eq!((again.offset, again.delivery), (3, 2));
    again.ack();
    let (r, acked) = tokio::join!(consumer.sync(), async {
        let (msgs, id) = peer.until_sync().await;
        peer.send(ToConsumer::Synced { id }).await;
        msgs
    });
    r.unwrap();
    assert!(
        acked
            .iter()
            .all(|m| matches!(m, FromConsumer::Ack { ranges } if ranges == &[3..4])),
        "{acked:?}"
    );
    assert!(!acked.is_empty());
}

#[tokio::test]
async fn batches_come_whole_and_acks_go_as_ranges() {
    let fake = Fake::start();
    let (consumer, mut peer) = tokio::join!(
        Consumer::connect(fake.addr, "orders", fake.options("g")),
        fake.accept_subscribed(1),
    );
    let mut consumer = consumer.unwrap();
    // 100..150 without 120, then 300, in one write.
    let offsets: Vec<u64> = (100..150).filter(|&o| o != 120).chain([300]).collect();
    let mut out = Vec::new();
    for &offset in &offsets {
        ToConsumer::Deliver(consume::Delivery {
            offset,
            delivery: 1,
            timestamp_us: 0,
            producer: 1,
            seq: offset,
            deadline_ms: 30_000,
            payload: Bytes::from_static(b"x"),
        })
        .put_frame(&mut out);
    }
    peer.send.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    while got.len() < offsets.len() {
        let batch = within(consumer.next_batch(16)).await.unwrap();
        assert!(
            (1..=16).contains(&batch.len()),
            "{} in a batch",
            batch.len()
        );
        got.extend(batch);
    }
    assert_eq!(got.iter().map(|d| d.offset).collect::<Vec<_>>(), offsets);
    // One at a time and in batches mix.
    peer.deliver(400, 1).await;
    let d = next(&mut consumer).await;
    assert_eq!(d.offset, 400);
    got.push(d);

    // One by one and all at once mix too.
    for d in &got[..7] {
        d.ack();
    }
    Delivery::ack_all(&got[7..]);
    Delivery::ack_all(&[]);
    let (r, msgs) = tokio::join!(within(consumer.sync()), async {
        let (msgs, id) = peer.until_sync().await;
        peer.send(ToConsumer::Synced { id }).await;
        msgs
    });
    r.unwrap();
    let mut all = acked(&msgs);
    all.sort_unstable();
    assert_eq!(all, got.iter().map(|d| d.offset).collect::<Vec<_>>());
    // Each Ack's ranges are sorted and apart: consecutive acks of one turn
    // are one range. Acks taken in a turn each cut a run at most once more.
    let mut ranges = 0;
    for m in &msgs {
        let FromConsumer::Ack { ranges: rs } = m else {
            continue;
        };
        assert!(rs.windows(2).all(|w| w[0].end < w[1].start), "{rs:?}");
        ranges += rs.len();
    }
    assert!(ranges <= msgs.len() + 3, "{ranges} ranges in {msgs:?}");

    // Pull mode has no next_batch.
    drop(consumer);
    let mut options = fake.options("p");
    options.mode = ConsumeMode::Pull;
    let (consumer, _peer) = tokio::join!(
        Consumer::connect(fake.addr, "orders", options),
        fake.accept_subscribed(2),
    );
    assert!(matches!(
        consumer.unwrap().next_batch(5).await,
        Err(ConsumerError::Config(_))
    ));
}

#[tokio::test]
async fn unreachable_after_reconnect_timeout() {
    let fake = Fake::start();
    let mut options = fake.options("g");
    options.reconnect_timeout = Duration::from_millis(800);
    let (consumer, peer) = tokio::join!(
        Consumer::connect(fake.addr, "orders", options),
        fake.accept_subscribed(1),
    );
    let mut consumer = consumer.unwrap();
    let addr = fake.addr;
    // The daemon goes away for good.
    peer.conn
        .close(close_code::SHUTTING_DOWN.into(), b"shutting down");
    fake.endpoint.close(0u32.into(), b"gone");
    drop(peer);
    drop(fake);
    let started = tokio::time::Instant::now();
    match within(consumer.next()).await {
        Err(ConsumerError::Unreachable { addr: a, .. }) => assert_eq!(a, addr),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // And it stays failed.
    assert!(matches!(
        consumer.sync().await,
        Err(ConsumerError::Unreachable { .. })
    ));
}

#[tokio::test]
async fn the_daemon_ending_the_subscription_is_an_error() {
    let fake = Fake::start();
    let (consumer, mut peer) = tokio::join!(
        Consumer::connect(fake.addr, "orders", fake.options("g")),
        fake.accept_subscribed(1),
    );
    let mut consumer = consumer.unwrap();
    peer.deliver(1, 1).await;
    peer.send(ToConsumer::Error {
        reason: "the group was deleted".into(),
    })
    .await;
    peer.send.finish().unwrap();
    // What came before the error is still handed out.
    assert_eq!(next(&mut consumer).await.offset, 1);
    assert_eq!(
        within(consumer.next()).await.unwrap_err(),
        ConsumerError::Ended("the group was deleted".into())
    );
    assert_eq!(
        within(consumer.next_batch(10)).await.unwrap_err(),
        ConsumerError::Ended("the group was deleted".into())
    );
}

#[tokio::test]
async fn garbage_from_the_daemon_is_a_protocol_error() {
    let fake = Fake::start();
    let (consumer, mut peer) = tokio::join!(
        Consumer::connect(fake.addr, "orders", fake.options("g")),
        fake.accept_subscribed(1),
    );
    let mut consumer = consumer.unwrap();
    let mut out = Vec::new();
    frame::put_long(&mut out, &[99, 1, 2, 3]);
    peer.send.write_all(&out).await.unwrap();
    assert!(matches!(
        within(consumer.next()).await,
        Err(ConsumerError::Protocol(_))
    ));
    match within(peer.conn.closed()).await {
        ConnectionError::ApplicationClosed(c) => {
            assert_eq!(u64::from(c.error_code), u64::from(close_code::PROTOCOL))
        }
        other => panic!("closed with {other:?}"),
    }
}

#[tokio::test]
async fn a_dropped_consumer_syncs_its_acks_and_leaves() {
    let fake = Fake::start();
    let (consumer, mut peer) = tokio::join!(
        Consumer::connect(fake.addr, "orders", fake.options("g")),
        fake.accept_subscribed(1),
    );
    let mut consumer = consumer.unwrap();
    peer.deliver(5, 1).await;
    let d = next(&mut consumer).await;
    d.ack();
    drop(consumer);
    assert_eq!(within(peer.sync()).await, vec![5]);
    match within(peer.conn.closed()).await {
        ConnectionError::ApplicationClosed(c) => {
            assert_eq!(u64::from(c.error_code), u64::from(close_code::DONE))
        }
        other => panic!("closed with {other:?}"),
    }
    // The handle outlives its consumer harmlessly.
    d.ack();
}

/// Consumers and deliveries move between tasks, and so do their futures.
#[allow(dead_code)]
fn handles_and_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Delivery>();
    send_sync::<ConsumerError>();
    send_sync::<Consumer>();
    fn futures(c: &mut Consumer) {
        send(&c.next());
        send(&c.next_batch(1));
        send(&c.fetch(1, Duration::ZERO));
    }
    fn more(c: &Consumer) {
        send(&c.sync());
    }
    fn close(c: Consumer) {
        send(&c.close());
    }
    let _ = (futures, more, close);
}
