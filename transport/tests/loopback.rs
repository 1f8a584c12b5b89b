//! Real sockets under loss: producers send through the impairment relay
//! (10 % loss, reordering and duplication, both directions) to an endpoint
//! served on loopback. Every message must arrive exactly once, in order, and
//! be acked only after the owner marked it durable.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sluice_testkit::relay::{self, Impairment, RelayStats};
use sluice_transport::client::{Producer, ProducerOptions};
use sluice_transport::proto::{Incoming, Receiver, ReceiverConfig};
use sluice_transport::serve::{self, Owner, SessionControl};
use sluice_transport::udp::{self, SocketOptions, UdpIo};
use sluice_transport::wire::CloseCode;

/// Keeps every (producer, seq) once, checks order, and marks durable at once.
#[derive(Clone, Default)]
struct Store(Arc<Mutex<HashMap<u64, Log>>>);

/// One producer's messages as stored: (seq, payload).
type Log = Vec<(u64, Bytes)>;

impl Owner for Store {
    fn accept(&mut self, inc: &Incoming) -> Result<(u64, u32), (CloseCode, String)> {
        let m = self.0.lock().unwrap();
        let durable = m
            .get(&inc.hello.producer_id)
            .and_then(|v| v.last())
            .map_or(0, |r| r.0);
        Ok((durable, 256))
    }

    fn deliver(&mut self, r: &mut Receiver, _: &SessionControl) {
        let mut m = self.0.lock().unwrap();
        let log = m.entry(r.producer_id()).or_default();
        let mut last = None;
        while let Some(msg) = r.poll_message() {
            let expect = log.last().map_or(1, |l| l.0 + 1);
            assert_eq!(msg.seq, expect, "delivered out of order or twice");
            log.push((msg.seq, msg.payload));
            last = Some(msg.seq);
        }
        if let Some(l) = last {
            r.mark_durable(l);
        }
    }
}

fn payload(producer: u64, i: u64) -> Bytes {
    // Sizes from tiny to several datagrams, so fragments are lost too.
    let len = [10usize, 100, 1000, 5000][(i % 4) as usize];
    let mut v = format!("{producer}:{i}:").into_bytes();
    v.resize(len.max(v.len()), (i % 251) as u8);
    Bytes::from(v)
}

#[tokio::test]
async fn exactly_once_in_order_through_a_lossy_relay() {
    let socket = udp::bind("127.0.0.1:0".parse().unwrap(), &SocketOptions::default()).unwrap();
    let addr = socket.local_addr().unwrap();
    let store = Store::default();
    let _server = serve::serve(UdpIo::new(socket), ReceiverConfig::default(), store.clone());
    let lossy = Impairment::lossy(0.10);
    let relay = relay::start(
        "127.0.0.1:0".parse().unwrap(),
        addr,
        lossy.clone(),
        lossy,
        2024,
    )
    .await
    .unwrap();
    let to: SocketAddr = relay.local_addr();

    const PRODUCERS: u64 = 3;
    const MESSAGES: u64 = 2000;
    let mut tasks = Vec::new();
    for p in 1..=PRODUCERS {
        tasks.push(tokio::spawn(async move {
            let producer = Producer::connect(to, "loss", p, ProducerOptions::default())
                .await
                .expect("connect through the relay");
            for chunk in (0..MESSAGES).collect::<Vec<_>>().chunks(100) {
                let batch = chunk.iter().map(|&i| payload(p, i)).collect();
                producer.send_batch(batch).await.expect("durable ack");
            }
            producer.close().await.expect("clean close");
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("producers finish within 60 s")
            .unwrap();
    }

    let m = store.0.lock().unwrap();
    for p in 1..=PRODUCERS {
        let log = &m[&p];
        assert_eq!(log.len() as u64, MESSAGES, "producer {p}");
        for (i, (seq, data)) in log.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1);
            assert_eq!(data, &payload(p, i as u64), "producer {p} seq {seq}");
        }
    }
    // The relay really did its damage, and the protocol repaired it.
    let s = relay.stats();
    assert!(
        RelayStats::get(&s.dropped) > 100,
        "dropped {}",
        RelayStats::get(&s.dropped)
    );
    assert!(RelayStats::get(&s.reordered) > 0);
    assert!(RelayStats::get(&s.duplicated) > 0);
}
