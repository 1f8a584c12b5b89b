//! Malformed, truncated, oversized, wrong-version, corrupted and
//! unknown-session datagrams reaching a receiving endpoint are dropped and
//! counted by reason; they never panic and never change what is delivered.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use sluice_transport::proto::{
    Connect, DropReason, Endpoint, ReceiverConfig, Sender, SenderConfig,
};
use sluice_transport::wire::{DataWriter, Heartbeat, Packet, MAX_DATAGRAM};

const PEER: &str = "127.0.0.1:4000";

/// An endpoint with one established session carrying messages 1..=3.
fn established() -> (Endpoint, u64, Instant) {
    let now = Instant::now();
    let peer: SocketAddr = PEER.parse().unwrap();
    let mut sender = Sender::new(
        SenderConfig::default(),
        Connect {
            producer_id: 1,
            stream: "s".into(),
            resume_after: Some(0),
            nonce: 99,
        },
        now,
    );
    let mut ep = Endpoint::new(ReceiverConfig {
        seed: Some(1),
        ..ReceiverConfig::default()
    });
    let mut buf = Vec::new();
    for m in ["a", "b", "c"] {
        sender.push(Bytes::from(m)).unwrap();
    }
    let mut session = None;
    // A few lossless exchanges bring the session up and the messages over.
    for _ in 0..4 {
        while sender.poll_transmit(now, &mut buf) {
            if let Some(inc) = ep.handle_datagram(now, peer, Bytes::from(buf.clone())) {
                session = Some(ep.accept(now, inc, 0, 100));
            }
        }
        while ep.poll_transmit(now, &mut buf).is_some() {
            sender.handle_datagram(now, Bytes::from(buf.clone()));
        }
    }
    let id = session.expect("session accepted");
    let r = ep.receiver_mut(id).unwrap();
    let got: Vec<_> = std::iter::from_fn(|| r.poll_message())
        .map(|m| m.seq)
        .collect();
    assert_eq!(got, vec![1, 2, 3]);
    (ep, id, now)
}

fn data(session: u64, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = DataWriter::new(&mut out, session, 1452);
    assert!(w.push_whole(seq, payload));
    w.finish();
    out
}

#[test]
fn each_kind_of_bad_datagram_is_counted_by_reason() {
    let (mut ep, id, now) = established();
    let peer: SocketAddr = PEER.parse().unwrap();
    let good = data(id, 4, b"d");
    let mut send = |v: Vec<u8>| assert!(ep.handle_datagram(now, peer, Bytes::from(v)).is_none());

    send(b"GET / HTTP/1.1\r\n\r\n".to_vec());
    let mut v = good.clone();
    v[2] = 2;
    send(v);
    let mut v = good.clone();
    v[3] = 99;
    send(v);
    let mut v = good.clone();
    let n = v.len();
    v[n - 6] ^= 0x10;
    send(v);
    send(good[..5].to_vec());
    send(vec![0x53; MAX_DATAGRAM + 10]);
    send(data(id ^ 1, 4, b"d"));
    let mut hb = Vec::new();
    Packet::Heartbeat(Heartbeat {
        pong: false,
        token: 1,
    })
    .encode(0xBAD, &mut hb);
    send(hb);

    let d = ep.drops();
    assert_eq!(d.get(DropReason::BadMagic), 1);
    assert_eq!(d.get(DropReason::WrongVersion), 1);
    assert_eq!(d.get(DropReason::UnknownType), 1);
    assert_eq!(d.get(DropReason::BadChecksum), 1);
    assert_eq!(d.get(DropReason::Truncated), 1);
    assert_eq!(d.get(DropReason::Oversized), 1);
    assert_eq!(d.get(DropReason::UnknownSession), 2);
    assert_eq!(d.total(), 8);

    // Nothing of that was delivered; the session still works.
    let r = ep.receiver_mut(id).unwrap();
    assert!(r.poll_message().is_none());
    assert!(ep.handle_datagram(now, peer, Bytes::from(good)).is_none());
    let r = ep.receiver_mut(id).unwrap();
    assert_eq!(r.poll_message().map(|m| m.seq), Some(4));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Random datagrams, and valid ones with random damage, never panic the
    /// endpoint and never deliver anything but the real message stream.
    #[test]
    fn random_traffic_never_disturbs_a_session(
        junk in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..40),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..40),
    ) {
        let (mut ep, id, now) = established();
        let peer: SocketAddr = PEER.parse().unwrap();
        for j in junk {
            prop_assert!(ep.handle_datagram(now, peer, Bytes::from(j)).is_none());
        }
        for (at, x) in flips {
            let mut v = data(id, 4, b"forged");
            let i = at % v.len();
            v[i] ^= x.max(1);
            prop_assert!(ep.handle_datagram(now, peer, Bytes::from(v)).is_none());
        }
        ep.handle_timeout(now + Duration::from_millis(5));
        let r = ep.receiver_mut(id).unwrap();
        prop_assert!(r.poll_message().is_none());
    }
}
