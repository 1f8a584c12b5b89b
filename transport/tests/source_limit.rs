//! The per-source session limit of a receiving endpoint: one address
//! flooding HELLOs holds at most `max_sessions_per_source` sessions (pending
//! or open), the rest are dropped and counted as `source_limit` and answered
//! at a bounded rate with a CLOSE never larger than the HELLO; other
//! addresses are served; slots come back when sessions end; a producer that
//! reconnects or moves is not one more.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use sluice_transport::proto::{
    CloseReason, Connect, DropReason, Endpoint, ReceiverConfig, Sender, SenderConfig, SenderEvent,
};
use sluice_transport::wire::{Close, CloseCode, Heartbeat, Hello, Packet};

const LIMIT: usize = 4;

fn endpoint(limit: usize) -> Endpoint {
    Endpoint::new(ReceiverConfig {
        seed: Some(7),
        max_sessions_per_source: limit,
        ..ReceiverConfig::default()
    })
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn hello(producer_id: u64, nonce: u64, stream: &str) -> Bytes {
    let mut out = Vec::new();
    Packet::Hello(Hello {
        producer_id,
        nonce,
        first_seq: 1,
        stream: stream.into(),
    })
    .encode(0, &mut out);
    Bytes::from(out)
}

fn ping(session: u64) -> Bytes {
    let mut out = Vec::new();
    Packet::Heartbeat(Heartbeat {
        pong: false,
        token: 1,
    })
    .encode(session, &mut out);
    Bytes::from(out)
}

/// Feeds a HELLO; accepts it if the endpoint hands it over. The session id.
fn offer(ep: &mut Endpoint, now: Instant, from: SocketAddr, hello: Bytes) -> Option<u64> {
    let inc = ep.handle_datagram(now, from, hello)?;
    Some(ep.accept(now, inc, 0, 16))
}

/// Everything the endpoint wants to send now, decoded, with its destination
/// and its size.
fn drain(ep: &mut Endpoint, now: Instant) -> Vec<(SocketAddr, u64, Packet, usize)> {
    let mut out = Vec::new();
    let mut sent = Vec::new();
    while let Some(to) = ep.poll_transmit(now, &mut out) {
        let d = Packet::decode(&Bytes::from(out.clone())).unwrap();
        sent.push((to, d.header.session_id, d.packet, out.len()));
    }
    sent
}

/// The per-source counts, recounted from the sessions' peers.
fn recount(ep: &Endpoint) -> HashMap<IpAddr, usize> {
    let mut m = HashMap::new();
    for id in ep.session_ids() {
        *m.entry(ep.peer(id).unwrap().ip().to_canonical())
            .or_insert(0) += 1;
    }
    m
}

#[test]
fn one_address_holds_at_most_its_limit_and_the_rest_is_refused_and_counted() {
    let now = Instant::now();
    let mut ep = endpoint(LIMIT);
    let mut accepted = 0;
    // A flood from one host: new producers, new ports, one stream.
    for i in 0..300u64 {
        let from = SocketAddr::new(addr("10.0.0.1:1").ip(), 1000 + i as u16);
        if offer(&mut ep, now, from, hello(i + 1, i + 100, "s")).is_some() {
            accepted += 1;
        }
    }
    assert_eq!(accepted, LIMIT);
    assert_eq!(ep.session_count(), LIMIT);
    assert_eq!(ep.sessions_from(addr("10.0.0.1:0").ip()), LIMIT);
    assert_eq!(ep.drops().get(DropReason::SourceLimit), 300 - LIMIT as u64);

    // The refused were told so, with their nonce, in no more bytes than
    // their HELLO, and only up to the rate limit (100 a second).
    let hello_len = hello(1, 1, "s").len();
    let sent = drain(&mut ep, now);
    let refusals: Vec<_> = sent
        .iter()
        .filter_map(|(to, sid, p, len)| match p {
            Packet::Close(c) if *sid == 0 => Some((to, c, *len)),
            _ => None,
        })
        .collect();
    assert!(
        !refusals.is_empty() && refusals.len() <= 64,
        "{} refusals answered at once",
        refusals.len()
    );
    for (to, c, len) in &refusals {
        assert_eq!(to.ip(), addr("10.0.0.1:0").ip());
        assert_eq!(c.code, CloseCode::Rejected);
        assert!(c.nonce >= 100 + LIMIT as u64, "nonce {}", c.nonce);
        assert!(
            *len <= hello_len,
            "a {len}-byte answer to a {hello_len}-byte HELLO"
        );
        assert!(!c.reason.is_empty());
    }

    // Another host is served meanwhile.
    let other = addr("10.0.0.2:5000");
    assert!(offer(&mut ep, now, other, hello(9_999, 1, "s")).is_some());
    assert_eq!(ep.sessions_from(other.ip()), 1);
}

#[test]
fn refusals_are_answered_at_a_bounded_rate() {
    let start = Instant::now();
    let mut ep = endpoint(1);
    let from = addr("10.0.0.1:1000");
    assert!(offer(&mut ep, start, from, hello(1, 1, "s")).is_some());
    drain(&mut ep, start);
    let mut answered = 0;
    // Two seconds of 1,000 HELLOs a second over the limit.
    for ms in 0..2_000u64 {
        let now = start + Duration::from_millis(ms);
        assert!(offer(&mut ep, now, from, hello(ms + 2, ms + 2, "s")).is_none());
        answered += drain(&mut ep, now)
            .iter()
            .filter(|(_, sid, p, _)| *sid == 0 && matches!(p, Packet::Close(_)))
            .count();
    }
    assert_eq!(ep.drops().get(DropReason::SourceLimit), 2_000);
    // A full bucket (100) and 100 a second after it.
    assert!(
        (250..=310).contains(&answered),
        "{answered} answers to 2,000 refused HELLOs in 2 s"
    );
}

#[test]
fn a_long_hello_is_told_the_long_reason_and_a_short_one_the_short() {
    let now = Instant::now();
    let mut ep = endpoint(1);
    let from = addr("10.0.0.1:1000");
    offer(&mut ep, now, from, hello(1, 1, "s")).unwrap();
    drain(&mut ep, now);
    let long_stream = "a-stream-with-quite-a-long-name-here";
    for (stream, nonce) in [("s", 2), (long_stream, 3)] {
        assert!(offer(&mut ep, now, from, hello(nonce, nonce, stream)).is_none());
    }
    let reasons: Vec<(u64, String)> = drain(&mut ep, now)
        .into_iter()
        .filter_map(|(_, _, p, _)| match p {
            Packet::Close(Close { nonce, reason, .. }) => Some((nonce, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.len(), 2);
    assert_eq!(reasons[0], (2, "source limit".into()));
    assert_eq!(
        reasons[1],
        (3, "too many sessions from this address".into())
    );
}

#[test]
fn slots_come_back_when_sessions_end() {
    let now = Instant::now();
    let mut ep = endpoint(2);
    let from = addr("10.0.0.1:1000");
    let a = offer(&mut ep, now, from, hello(1, 1, "s")).unwrap();
    offer(&mut ep, now, from, hello(2, 2, "s")).unwrap();
    assert!(offer(&mut ep, now, from, hello(3, 3, "s")).is_none());
    // The owner closes one: a slot is free.
    ep.close(a, CloseCode::Normal, "done");
    assert_eq!(ep.sessions_from(from.ip()), 1);
    offer(&mut ep, now, from, hello(3, 4, "s")).expect("a freed slot");
    assert!(offer(&mut ep, now, from, hello(4, 5, "s")).is_none());
    // The producers go silent: after the idle timeout every slot is free.
    let later = now + ReceiverConfig::default().idle_timeout + Duration::from_secs(1);
    ep.handle_timeout(later);
    assert_eq!(ep.session_count(), 0);
    assert_eq!(ep.sessions_from(from.ip()), 0);
    assert_eq!(ep.source_count(), 0);
    offer(&mut ep, later, from, hello(4, 6, "s")).expect("free again");
}

#[test]
fn a_reconnect_from_the_same_address_replaces_and_is_not_one_more() {
    let now = Instant::now();
    let mut ep = endpoint(2);
    let home = addr("10.0.0.1:1000");
    offer(&mut ep, now, home, hello(1, 1, "s")).unwrap();
    let second = offer(&mut ep, now, home, hello(2, 1, "s")).unwrap();
    // At the limit, producer 2 reconnects (a new nonce) from a new port.
    let again = offer(&mut ep, now, addr("10.0.0.1:2000"), hello(2, 2, "s"))
        .expect("a reconnect replaces its session");
    assert_ne!(again, second);
    assert!(ep.receiver(second).is_none());
    assert_eq!(ep.sessions_from(home.ip()), 2);
    // A retry of its HELLO opens nothing and is not refused.
    assert!(offer(&mut ep, now, home, hello(2, 2, "s")).is_none());
    assert_eq!(ep.drops().get(DropReason::SourceLimit), 0);
    // The same producer from another host that is at its own limit is.
    let away = addr("10.0.0.9:1000");
    let mut ep2 = endpoint(1);
    offer(&mut ep2, now, home, hello(1, 1, "s")).unwrap();
    offer(&mut ep2, now, away, hello(7, 1, "s")).unwrap();
    assert!(offer(&mut ep2, now, away, hello(1, 2, "s")).is_none());
    assert_eq!(ep2.drops().get(DropReason::SourceLimit), 1);
}

#[test]
fn a_producer_that_moves_takes_its_count_with_it() {
    let now = Instant::now();
    let mut ep = endpoint(1);
    let a = addr("10.0.0.1:1000");
    let b = addr("10.0.0.2:1000");
    let id = offer(&mut ep, now, a, hello(1, 1, "s")).unwrap();
    // NAT rebinding: its next packet comes from another address.
    assert!(ep.handle_datagram(now, b, ping(id)).is_none());
    assert_eq!(ep.peer(id), Some(b));
    assert_eq!(ep.sessions_from(a.ip()), 0);
    assert_eq!(ep.sessions_from(b.ip()), 1);
    // `a` is free again, `b` is full.
    offer(&mut ep, now, a, hello(2, 1, "s")).expect("a is free");
    assert!(offer(&mut ep, now, b, hello(3, 1, "s")).is_none());
}

#[test]
fn ipv4_mapped_addresses_count_as_their_ipv4() {
    let now = Instant::now();
    let mut ep = endpoint(1);
    offer(&mut ep, now, addr("10.0.0.1:1000"), hello(1, 1, "s")).unwrap();
    assert!(offer(
        &mut ep,
        now,
        addr("[::ffff:10.0.0.1]:1000"),
        hello(2, 1, "s")
    )
    .is_none());
    assert_eq!(ep.sessions_from(addr("[::ffff:10.0.0.1]:0").ip()), 1);
    offer(&mut ep, now, addr("[2001:db8::1]:1000"), hello(3, 1, "s")).expect("another host");
}

#[test]
fn a_producer_over_the_limit_fails_with_the_reason() {
    let now = Instant::now();
    let mut ep = endpoint(1);
    let from = addr("10.0.0.1:1000");
    offer(&mut ep, now, from, hello(1, 1, "s")).unwrap();
    drain(&mut ep, now);
    let mut sender = Sender::new(
        SenderConfig::default(),
        Connect {
            producer_id: 2,
            stream: "a-stream-named-at-some-length-for-it".into(),
            resume_after: None,
            nonce: 42,
        },
        now,
    );
    let mut buf = Vec::new();
    assert!(sender.poll_transmit(now, &mut buf));
    assert!(ep
        .handle_datagram(now, from, Bytes::from(buf.clone()))
        .is_none());
    for (to, _, p, _) in drain(&mut ep, now) {
        assert_eq!(to, from);
        let mut out = Vec::new();
        p.encode(0, &mut out);
        sender.handle_datagram(now, Bytes::from(out));
    }
    let events: Vec<_> = std::iter::from_fn(|| sender.poll_event()).collect();
    assert!(
        events.iter().any(|e| matches!(
            e,
            SenderEvent::Closed(CloseReason::Rejected { code: CloseCode::Rejected, reason })
                if reason.contains("too many sessions")
        )),
        "{events:?}"
    );
    assert!(sender.is_closed());
}

/// What a random schedule does to the endpoint.
#[derive(Debug, Clone)]
enum Op {
    /// A HELLO from host `host` (of 3), port `port`, producer `producer`.
    Hello {
        host: u8,
        port: u16,
        producer: u8,
        nonce: u8,
    },
    /// A packet of the `n`th session (if any) from host `host`.
    Move { n: usize, host: u8 },
    /// The owner closes the `n`th session.
    Close { n: usize },
    /// Time passes by this many seconds.
    Wait { secs: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3u8, 1..4u16, 0..8u8, 0..3u8).prop_map(|(host, port, producer, nonce)| Op::Hello {
            host,
            port,
            producer,
            nonce
        }),
        2 => (0..16usize, 0..3u8).prop_map(|(n, host)| Op::Move { n, host }),
        1 => (0..16usize).prop_map(|n| Op::Close { n }),
        1 => (0..12u8).prop_map(|secs| Op::Wait { secs }),
    ]
}

proptest! {
    /// Whatever happens, the endpoint's per-source counts are those of its
    /// sessions' peers, and a HELLO never takes a host past its limit.
    #[test]
    fn per_source_counts_follow_the_sessions(ops in prop::collection::vec(op(), 1..200), limit in 1..4usize) {
        let mut now = Instant::now();
        let mut ep = endpoint(limit);
        let host = |h: u8, port: u16| SocketAddr::new(IpAddr::from([10, 0, 0, h + 1]), port);
        for op in ops {
            match op {
                Op::Hello { host: h, port, producer, nonce } => {
                    let from = host(h, port);
                    let before = ep.sessions_from(from.ip());
                    let opened = offer(&mut ep, now, from, hello(u64::from(producer), u64::from(nonce) + 1, "s"));
                    if opened.is_some() {
                        prop_assert!(ep.sessions_from(from.ip()) <= limit.max(before));
                    }
                }
                Op::Move { n, host: h } => {
                    let ids: Vec<u64> = ep.session_ids().collect();
                    if let Some(&id) = ids.get(n) {
                        ep.handle_datagram(now, host(h, 9), ping(id));
                    }
                }
                Op::Close { n } => {
                    let ids: Vec<u64> = ep.session_ids().collect();
                    if let Some(&id) = ids.get(n) {
                        ep.close(id, CloseCode::Normal, "done");
                    }
                }
                Op::Wait { secs } => {
                    now += Duration::from_secs(u64::from(secs));
                    ep.handle_timeout(now);
                }
            }
            drain(&mut ep, now);
            let counted = recount(&ep);
            for h in 0..3u8 {
                let ip = host(h, 0).ip();
                prop_assert_eq!(ep.sessions_from(ip), counted.get(&ip).copied().unwrap_or(0));
            }
            prop_assert_eq!(ep.source_count(), counted.len());
        }
    }
}
