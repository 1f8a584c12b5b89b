//! A producer failing over to a second daemon, simulated: its session with
//! daemon A acked everything up to seq `k`, A is gone, and the producer
//! carries its unacked messages `k+1..=k+u` to daemon B over a lossy,
//! reordering network. B's owner may never have seen this producer
//! (durable 0), may know it from further back (durable below `k`), or may
//! hold some of the unacked messages already (an earlier session stored
//! them but its ack was lost).
//!
//! For every seed it checks what failover relies on:
//! - B starts the producer where the producer says it stands (the HELLO's
//!   first seq): it never NACKs a seq at or below `k`, which the producer
//!   no longer holds, and delivers exactly the seqs after what it has;
//! - the WELCOME's durable seq is the larger of B's and the producer's, and
//!   the producer's acked mark never goes back;
//! - every message ends up acked, each stored once at B.
//!
//! `FAILOVER_SEEDS=n` sets how many seeds run (default 500).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_transport::proto::{
    Connect, Endpoint, ReceiverConfig, Sender, SenderConfig, SenderEvent,
};
use sluice_transport::wire::Packet;

const PRODUCER: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(10, 0, 0, 2),
    2000,
));
const TIME_BOUND: Duration = Duration::from_secs(60);

/// A datagram on its way: (arrival, order sent, to the receiver?, bytes).
type InFlight = Reverse<(Instant, u64, bool, Vec<u8>)>;

fn payload(seq: u64) -> Bytes {
    Bytes::from(format!("message {seq} ").repeat((seq % 7 + 1) as usize))
}

fn run_seed(seed: u64) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let k: u64 = rng.random_range(1..5_000);
    let u: u64 = rng.random_range(1..200);
    // Where B's owner stands for this producer.
    let b_durable = match rng.random_range(0..3) {
        0 => 0,
        1 => rng.random_range(0..k),
        _ => k + rng.random_range(1..=u),
    };
    let loss = if rng.random_bool(0.3) {
        0.0
    } else {
        rng.random_range(0.0..0.3)
    };
    let credit: u32 = rng.random_range(4..256);

    let t0 = Instant::now();
    let mut now = t0;
    // The producer's session with A: acked up to k, then u more pushed.
    let mut at_a = Sender::new(
        SenderConfig::default(),
        Connect {
            producer_id: 7,
            stream: "s".into(),
            resume_after: Some(k),
            nonce: 1,
        },
        now,
    );
    for seq in k + 1..=k + u {
        match at_a.push(payload(seq)) {
            Ok(s) if s == seq => {}
            other => return Err(format!("push of {seq} gave {other:?}")),
        }
    }
    // A is gone: the same messages, the same seqs, a new session at B.
    let mut sender = at_a.successor(seed | 2, now);
    if sender.unacked_len() as u64 != u {
        return Err(format!(
            "the successor holds {} of {u}",
            sender.unacked_len()
        ));
    }
    let mut endpoint = Endpoint::new(ReceiverConfig {
        seed: Some(seed),
        ..ReceiverConfig::default()
    });
    let mut net_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5A5A);
    let mut in_flight: BinaryHeap<InFlight> = BinaryHeap::new();
    let mut sent = 0u64;
    let mut stored: Vec<u64> = Vec::new();
    let mut owner_durable = b_durable;
    let mut acked = k;
    let mut session = None;
    let mut buf = Vec::new();
    let expect_welcome = b_durable.max(k);

    loop {
        if now - t0 > TIME_BOUND {
            return Err(format!(
                "not done after {TIME_BOUND:?}: acked {acked} of {}",
                k + u
            ));
        }
        while let Some(id) = endpoint.poll_readable() {
            let r = endpoint.receiver_mut(id).expect("readable session");
            let mut last = None;
            while let Some(m) = r.poll_message() {
                let expect = stored.last().map_or(expect_welcome + 1, |s| s + 1);
                if m.seq != expect {
                    return Err(format!("B got seq {} but expected {expect}", m.seq));
                }
                if m.payload != payload(m.seq) {
                    return Err(format!("payload of {} differs", m.seq));
                }
                stored.push(m.seq);
                last = Some(m.seq);
            }
            // The owner's "fsync" is instant here: the point is the seqs.
            if let Some(l) = last {
                owner_durable = l;
                r.mark_durable(l);
            }
        }
        while let Some(ev) = sender.poll_event() {
            match ev {
                SenderEvent::Connected { durable_seq, .. } => {
                    if durable_seq != expect_welcome {
                        return Err(format!(
                            "welcomed at {durable_seq}, expected max(B {b_durable}, producer {k})"
                        ));
                    }
                }
                SenderEvent::Durable { up_to } => {
                    if up_to <= acked || up_to > owner_durable.max(k) {
                        return Err(format!(
                            "durable {up_to} after {acked} (owner at {owner_durable})"
                        ));
                    }
                    acked = up_to;
                }
                SenderEvent::Closed(r) => return Err(format!("sender closed: {r}")),
            }
        }
        if sender.durable_seq() < k {
            return Err(format!("acked mark went back to {}", sender.durable_seq()));
        }
        if acked == k + u && sender.is_drained() {
            break;
        }
        while sender.poll_transmit(now, &mut buf) {
            if !net_rng.random_bool(loss) {
                let at = now + Duration::from_micros(net_rng.random_range(200..3000));
                in_flight.push(Reverse((at, sent, true, buf.clone())));
            }
            sent += 1;
        }
        while endpoint.poll_transmit(now, &mut buf).is_some() {
            if let Ok(Packet::Nack(n)) = Packet::decode(&Bytes::from(buf.clone())).map(|d| d.packet)
            {
                if let Some(r) = n.ranges.iter().find(|r| r.first <= k) {
                    return Err(format!(
                        "B NACKed {}..={}, at or below the producer's acked {k}",
                        r.first, r.last
                    ));
                }
                if let Some(h) = n.holes.iter().find(|h| h.seq <= k) {
                    return Err(format!("B NACKed a hole in {}, at or below {k}", h.seq));
                }
            }
            if !net_rng.random_bool(loss) {
                let at = now + Duration::from_micros(net_rng.random_range(200..3000));
                in_flight.push(Reverse((at, sent, false, buf.clone())));
            }
            sent += 1;
        }
        let next = [
            in_flight.peek().map(|Reverse((t, ..))| *t),
            sender.poll_timeout(),
            endpoint.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
        .ok_or("nothing left to happen, yet not finished")?;
        now = now.max(next);
        while in_flight.peek().is_some_and(|Reverse((t, ..))| *t <= now) {
            let Reverse((_, _, to_receiver, d)) = in_flight.pop().expect("peeked");
            if to_receiver {
                if let Some(inc) = endpoint.handle_datagram(now, PRODUCER, Bytes::from(d)) {
                    session = Some(endpoint.accept(now, inc, owner_durable, credit));
                }
            } else {
                sender.handle_datagram(now, Bytes::from(d));
            }
        }
        if let Some(r) = session.and_then(|id| endpoint.receiver_mut(id)) {
            r.set_credit(credit);
        }
        if sender.poll_timeout().is_some_and(|t| t <= now) {
            sender.handle_timeout(now);
        }
        if endpoint.poll_timeout().is_some_and(|t| t <= now) {
            endpoint.handle_timeout(now);
        }
    }
    // B stored exactly what it did not have, once each.
    let want: Vec<u64> = (expect_welcome + 1..=k + u).collect();
    if stored != want {
        return Err(format!(
            "B stored {} seqs ({:?}..), expected {}..={}",
            stored.len(),
            stored.first(),
            expect_welcome + 1,
            k + u
        ));
    }
    Ok(())
}

#[test]
fn a_producer_resumes_at_a_daemon_that_never_saw_it_from_its_own_acked_mark() {
    let seeds: u64 = std::env::var("FAILOVER_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let failed: Vec<String> = (0..seeds)
        .filter_map(|seed| run_seed(seed).err().map(|e| format!("seed {seed}: {e}")))
        .take(5)
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
}
