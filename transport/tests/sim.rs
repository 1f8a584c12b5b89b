//! Deterministic simulation of a producer and a receiving endpoint over a
//! seeded, hostile network: loss, reordering, duplication, delay and jitter,
//! corruption and truncation, plus an owner whose "fsync" takes time and who
//! starves the producer of credit for a while.
//!
//! For every seed it checks the protocol's promises:
//! - every message reaches the owner exactly once, in order, byte for byte;
//! - the producer is told a message is durable only after the owner said so;
//! - the producer's unacked buffer and the receiver's buffers stay bounded;
//! - the session finishes within a bound of simulated time;
//! - all of this across a crash of the receiving side (in 30 % of seeds),
//!   after which the producer carries its unacked messages to a new session.
//!
//! `SIM_SEEDS=n` sets how many seeds run (default 2,000); `SIM_SEED=s` runs
//! one seed alone, which is how a failure printed here is replayed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_transport::proto::{
    CloseReason, Connect, Endpoint, PushError, ReceiverConfig, Sender, SenderConfig, SenderEvent,
};
use sluice_transport::wire::CloseCode;

const PRODUCER: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(10, 0, 0, 1),
    1000,
));
/// A session must be done within this much simulated time, whatever the seed.
const TIME_BOUND: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    ToReceiver,
    ToSender,
}

#[derive(Debug, Clone)]
struct Impair {
    loss: f64,
    reorder: f64,
    duplicate: f64,
    corrupt: f64,
    truncate: f64,
    delay: Duration,
    jitter: Duration,
}

impl Impair {
    fn random(rng: &mut ChaCha8Rng) -> Self {
        let pick = |rng: &mut ChaCha8Rng, max: f64| {
            if rng.random_bool(0.25) {
                0.0
            } else {
                rng.random_range(0.0..max)
            }
        };
        Impair {
            loss: pick(rng, 0.30),
            reorder: pick(rng, 0.30),
            duplicate: pick(rng, 0.10),
            corrupt: pick(rng, 0.05),
            truncate: pick(rng, 0.03),
            delay: Duration::from_micros(rng.random_range(20..3000)),
            jitter: Duration::from_micros(rng.random_range(0..2000)),
        }
    }
}

/// `SIM_IMPAIR=loss,reorder,duplicate,corrupt,truncate,delay_us,jitter_us`
/// overrides the random impairment in both directions, to study one effect.
fn forced_impairment() -> Option<Impair> {
    let v = std::env::var("SIM_IMPAIR").ok()?;
    let f: Vec<f64> = v
        .split(',')
        .map(|x| x.parse().expect("SIM_IMPAIR numbers"))
        .collect();
    Some(Impair {
        loss: f[0],
        reorder: f[1],
        duplicate: f[2],
        corrupt: f[3],
        truncate: f[4],
        delay: Duration::from_micros(f[5] as u64),
        jitter: Duration::from_micros(f[6] as u64),
    })
}

/// Datagrams in flight, ordered by arrival time (ties by send order).
struct Network {
    rng: ChaCha8Rng,
    impair: [Impair; 2],
    in_flight: BinaryHeap<Reverse<(Instant, u64, Dir, Bytes)>>,
    sent: u64,
}

impl Network {
    fn send(&mut self, now: Instant, dir: Dir, mut datagram: Vec<u8>) {
        let imp = self.impair[dir as usize].clone();
        if self.rng.random_bool(imp.loss) {
            if std::env::var("SIM_TRACE").is_ok() {
                eprintln!("{now:?} {dir:?} lost {} bytes", datagram.len());
            }
            return;
        }
        if self.rng.random_bool(imp.corrupt) {
            let byte = self.rng.random_range(0..datagram.len());
            datagram[byte] ^= 1 << self.rng.random_range(0..8);
        }
        if self.rng.random_bool(imp.truncate) {
            let keep = self.rng.random_range(0..datagram.len());
            datagram.truncate(keep);
        }
        let copies = if self.rng.random_bool(imp.duplicate) {
            2
        } else {
            1
        };
        let datagram = Bytes::from(datagram);
        for _ in 0..copies {
            let mut at = now + imp.delay + imp.jitter.mul_f64(self.rng.random::<f64>());
            if self.rng.random_bool(imp.reorder) {
                at += imp.delay * 3 + Duration::from_micros(self.rng.random_range(0..5000));
            }
            self.sent += 1;
            self.in_flight
                .push(Reverse((at, self.sent, dir, datagram.clone())));
        }
    }

    fn next_arrival(&self) -> Option<Instant> {
        self.in_flight.peek().map(|Reverse((t, ..))| *t)
    }
}

/// Everything a run reports back, for the aggregate sanity check.
#[derive(Debug, Default)]
struct Outcome {
    messages: u64,
    retransmissions: u64,
    bytes_sent: u64,
    bytes_retransmitted: u64,
    datagrams_dropped_by_receiver: u64,
    /// Sessions reopened after a crash of the receiving side.
    reconnects: u64,
}

fn payload_for(seq: u64, len: usize, salt: u64) -> Bytes {
    let mut v = Vec::with_capacity(len);
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

/// What a test may fix instead of drawing it from the seed.
#[derive(Default, Clone)]
struct Overrides {
    impair: Option<Impair>,
    max_reassembly_bytes: Option<usize>,
}

fn run_seed(seed: u64, over: &Overrides) -> Result<Outcome, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let max_datagram = [1200, 1452, 9000][rng.random_range(0..3)];
    let max_message_len = 40_000;
    let scfg = SenderConfig {
        max_datagram,
        max_message_len,
        max_unacked_bytes: rng.random_range(max_message_len + 64..1_000_000),
        ..SenderConfig::default()
    };
    let rcfg = ReceiverConfig {
        max_datagram,
        max_reassembly_bytes: over
            .max_reassembly_bytes
            .unwrap_or_else(|| rng.random_range(50_000..500_000)),
        seed: Some(seed),
        ..ReceiverConfig::default()
    };
    let credit: u32 = rng.random_range(4..512);
    let fsync = Duration::from_micros(rng.random_range(50..3000));
    let n_msgs: u64 = rng.random_range(20..300);
    // Where the producer stands before this session, and whether it knows.
    let already_durable: u64 = if rng.random_bool(0.5) {
        0
    } else {
        rng.random_range(1..10_000)
    };
    let resume_after = rng.random_bool(0.7).then_some(already_durable);
    // A window during which the owner grants no credit at all.
    let starve = rng.random_bool(0.3).then(|| {
        let from = Duration::from_millis(rng.random_range(0..50));
        (from, from + Duration::from_millis(rng.random_range(1..300)))
    });
    let mut impair = [Impair::random(&mut rng), Impair::random(&mut rng)];
    if let Some(forced) = over.impair.clone().or_else(forced_impairment) {
        impair = [forced.clone(), forced];
    }
    let mut net = Network {
        impair,
        rng: ChaCha8Rng::seed_from_u64(seed ^ 0xA5A5),
        in_flight: BinaryHeap::new(),
        sent: 0,
    };
    let sizes: Vec<usize> = (0..n_msgs)
        .map(|_| match rng.random_range(0..100) {
            0..80 => rng.random_range(0..200),
            80..95 => rng.random_range(200..3000),
            _ => rng.random_range(3000..max_message_len),
        })
        .collect();
    // The receiving side may crash: its sessions vanish and the owner loses
    // everything it had not made durable, as a kill -9 of the daemon would.
    let crash_at = rng
        .random_bool(0.3)
        .then(|| Duration::from_millis(rng.random_range(1..100)));
    let mut crashed = false;
    let mut reconnects = 0;

    let t0 = Instant::now();
    let mut now = t0;
    let mut sender = Sender::new(
        scfg.clone(),
        Connect {
            producer_id: 7,
            stream: "sim".into(),
            resume_after,
            nonce: seed | 1,
        },
        now,
    );
    let mut endpoint = Endpoint::new(rcfg.clone());
    let mut session = None;
    let first_seq = already_durable + 1;
    let mut pushed: Vec<Bytes> = Vec::new(); // index i is seq first_seq + i
    let mut stored: Vec<u64> = Vec::new();
    let mut fsync_at: Option<(Instant, u64)> = None;
    let mut owner_durable = already_durable;
    let mut acked = already_durable;
    let mut buf = Vec::new();

    loop {
        if now - t0 > TIME_BOUND {
            return Err(format!(
                "not finished after {TIME_BOUND:?} simulated: acked {acked} of {}",
                already_durable + n_msgs
            ));
        }
        // The application pushes as fast as the buffer allows.
        while (pushed.len() as u64) < n_msgs {
            let data = payload_for(first_seq + pushed.len() as u64, sizes[pushed.len()], seed);
            match sender.push(data.clone()) {
                Ok(seq) => {
                    if seq != first_seq + pushed.len() as u64 {
                        return Err(format!(
                            "push got seq {seq}, expected {}",
                            first_seq + pushed.len() as u64
                        ));
                    }
                    pushed.push(data);
                }
                // Closed: the session ended; the event loop below replaces it.
                Err(PushError::BufferFull | PushError::NotReady | PushError::Closed) => break,
                Err(e) => return Err(format!("push failed: {e}")),
            }
        }
        if sender.unacked_bytes() > scfg.max_unacked_bytes {
            return Err(format!(
                "sender buffer {} over its bound",
                sender.unacked_bytes()
            ));
        }
        if !crashed && crash_at.is_some_and(|c| now - t0 >= c) {
            crashed = true;
            endpoint = Endpoint::new(ReceiverConfig {
                seed: Some(seed ^ 0xC0FFEE),
                ..rcfg.clone()
            });
            session = None;
            fsync_at = None;
            stored.retain(|&s| s <= owner_durable);
        }
        // Owner: credit policy, new sessions, messages, group-commit fsync.
        let starving = starve.is_some_and(|(a, b)| now - t0 >= a && now - t0 < b);
        if let Some(id) = session {
            if let Some(r) = endpoint.receiver_mut(id) {
                r.set_credit(if starving { 0 } else { credit });
            }
        }
        while let Some(id) = endpoint.poll_readable() {
            let r = endpoint.receiver_mut(id).expect("readable session exists");
            while let Some(m) = r.poll_message() {
                let expect = stored.last().map_or(first_seq, |s| s + 1);
                if m.seq != expect {
                    return Err(format!("delivered seq {} but expected {expect}", m.seq));
                }
                let i = (m.seq - first_seq) as usize;
                if pushed.get(i) != Some(&m.payload) {
                    return Err(format!(
                        "payload of seq {} differs from what was pushed",
                        m.seq
                    ));
                }
                stored.push(m.seq);
            }
            if let Some(&last) = stored.last() {
                if fsync_at.is_none() && last > owner_durable {
                    fsync_at = Some((now + fsync, last));
                }
            }
            let r = endpoint.receiver(id).expect("session exists");
            if r.pending_len() > credit as usize {
                return Err(format!(
                    "receiver holds {} pending entries over credit {credit}",
                    r.pending_len()
                ));
            }
            if r.reassembly_bytes() > rcfg.max_reassembly_bytes + max_message_len {
                return Err(format!(
                    "reassembly {} bytes over its bound",
                    r.reassembly_bytes()
                ));
            }
        }
        if let Some((at, upto)) = fsync_at {
            if at <= now {
                owner_durable = upto;
                fsync_at = None;
                if let Some(r) = session.and_then(|id| endpoint.receiver_mut(id)) {
                    r.mark_durable(upto);
                }
                if stored.last().is_some_and(|&l| l > owner_durable) {
                    fsync_at = Some((now + fsync, *stored.last().unwrap()));
                }
            }
        }
        while let Some(ev) = sender.poll_event() {
            match ev {
                SenderEvent::Durable { up_to } => {
                    if up_to > owner_durable {
                        return Err(format!("durable ack for {up_to} before the owner made it durable ({owner_durable})"));
                    }
                    acked = up_to;
                }
                SenderEvent::Connected { durable_seq, .. } => {
                    if durable_seq != owner_durable {
                        return Err(format!(
                            "welcomed at {durable_seq}, but the owner has {owner_durable}"
                        ));
                    }
                }
                // After a crash the producer learns its session is gone (or
                // times out) and carries its unacked messages to a new one.
                SenderEvent::Closed(CloseReason::Remote {
                    code: CloseCode::UnknownSession,
                    ..
                })
                | SenderEvent::Closed(CloseReason::TimedOut)
                    if crashed =>
                {
                    sender = sender.successor(seed.wrapping_add(0x5EED), now);
                    reconnects += 1;
                }
                SenderEvent::Closed(reason) => return Err(format!("sender closed: {reason}")),
            }
        }
        if let Some(ev) = endpoint.poll_event() {
            // After a crash a stale HELLO of the old session may open a
            // session that the producer's new one then replaces.
            if !crashed {
                return Err(format!("unexpected endpoint event {ev:?}"));
            }
        }
        if pushed.len() as u64 == n_msgs && sender.is_drained() && acked == already_durable + n_msgs
        {
            break;
        }
        // Transmit everything both sides have.
        while sender.poll_transmit(now, &mut buf) {
            net.send(now, Dir::ToReceiver, buf.clone());
        }
        while let Some(to) = endpoint.poll_transmit(now, &mut buf) {
            assert_eq!(to, PRODUCER);
            net.send(now, Dir::ToSender, buf.clone());
        }
        // Advance to the next event.
        let mut next = [
            net.next_arrival(),
            sender.poll_timeout(),
            endpoint.poll_timeout(),
            fsync_at.map(|(t, _)| t),
            starve
                .map(|(a, b)| if now - t0 < a { t0 + a } else { t0 + b })
                .filter(|&t| t > now),
        ]
        .into_iter()
        .flatten()
        .min()
        .ok_or("nothing left to happen, yet not finished")?;
        next = next.max(now);
        now = next;
        while net.next_arrival().is_some_and(|t| t <= now) {
            let Reverse((_, _, dir, datagram)) = net.in_flight.pop().expect("peeked");
            if std::env::var("SIM_TRACE").is_ok() {
                match sluice_transport::wire::Packet::decode(&datagram) {
                    Ok(d) => match d.packet {
                        sluice_transport::wire::Packet::Data(f) => eprintln!(
                            "{:?} {dir:?} DATA {:?}",
                            now - t0,
                            f.entries()
                                .map(|e| (e.seq, e.fragment.map(|f| f.offset), e.payload.len()))
                                .collect::<Vec<_>>()
                        ),
                        p => eprintln!("{:?} {dir:?} {p:?}", now - t0),
                    },
                    Err(e) => eprintln!("{:?} {dir:?} bad {e}", now - t0),
                }
            }
            match dir {
                Dir::ToSender => sender.handle_datagram(now, datagram),
                Dir::ToReceiver => {
                    if let Some(inc) = endpoint.handle_datagram(now, PRODUCER, datagram) {
                        if inc.hello.stream != "sim" || inc.hello.producer_id != 7 {
                            return Err("HELLO decoded with wrong fields".into());
                        }
                        session = Some(endpoint.accept(now, inc, owner_durable, credit));
                    }
                }
            }
        }
        if sender.poll_timeout().is_some_and(|t| t <= now) {
            sender.handle_timeout(now);
        }
        if endpoint.poll_timeout().is_some_and(|t| t <= now) {
            endpoint.handle_timeout(now);
        }
    }
    if stored.len() as u64 != n_msgs {
        return Err(format!(
            "owner stored {} messages, {} were sent",
            stored.len(),
            n_msgs
        ));
    }
    if std::env::var("SIM_DEBUG").is_ok() {
        eprintln!(
            "seed {seed}: n={n_msgs} credit={credit} dg={max_datagram} imp={:?} stats={:?} t={:?}",
            net.impair,
            sender.stats(),
            now - t0
        );
    }
    Ok(Outcome {
        messages: n_msgs,
        retransmissions: sender.stats().retransmissions,
        bytes_sent: sender.stats().bytes_sent,
        bytes_retransmitted: sender.stats().bytes_retransmitted,
        datagrams_dropped_by_receiver: endpoint.drops().total(),
        reconnects,
    })
}

#[test]
fn simulated_sessions_deliver_exactly_once_and_ack_only_durable() {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        let seed: u64 = seed.parse().expect("SIM_SEED is a number");
        if let Err(e) = run_seed(seed, &Overrides::default()) {
            panic!("seed {seed}: {e}");
        }
        return;
    }
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let mut failures = Vec::new();
    let mut total = Outcome::default();
    for seed in 0..seeds {
        match run_seed(seed, &Overrides::default()) {
            Ok(o) => {
                total.messages += o.messages;
                total.retransmissions += o.retransmissions;
                total.bytes_sent += o.bytes_sent;
                total.bytes_retransmitted += o.bytes_retransmitted;
                total.reconnects += o.reconnects;
                total.datagrams_dropped_by_receiver += o.datagrams_dropped_by_receiver;
            }
            Err(e) => failures.push(format!("seed {seed}: {e} (replay: SIM_SEED={seed} cargo test -p sluice-transport --test sim)")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "{seeds} seeds, {} messages, {} retransmissions ({:.1} % of payload bytes), \
         {} datagrams dropped by the receiver, {} reconnects after a crash",
        total.messages,
        total.retransmissions,
        100.0 * total.bytes_retransmitted as f64 / total.bytes_sent.max(1) as f64,
        total.datagrams_dropped_by_receiver,
        total.reconnects
    );
    if forced_impairment().is_some() {
        return;
    }
    // The network really was hostile: losses were repaired, damage was caught.
    assert!(
        total.reconnects > 0,
        "no crash was survived in {seeds} seeds"
    );
    assert!(
        total.retransmissions > 0,
        "no retransmission in {seeds} seeds"
    );
    assert!(
        total.datagrams_dropped_by_receiver > 0,
        "no damaged datagram dropped in {seeds} seeds"
    );
}

/// Loss recovery must be efficient, not only correct: with 10 % random loss in
/// both directions (and reassembly memory to spare), the bytes sent again
/// should be close to the ideal 0.1 / 0.9 = 11.1 % of the payload. A NACK
/// storm or a retransmission loop would show up here long before it broke
/// exactly-once delivery.
#[test]
fn retransmission_overhead_matches_loss_rate() {
    let over = Overrides {
        impair: Some(Impair {
            loss: 0.10,
            reorder: 0.0,
            duplicate: 0.0,
            corrupt: 0.0,
            truncate: 0.0,
            delay: Duration::from_micros(500),
            jitter: Duration::ZERO,
        }),
        max_reassembly_bytes: Some(64 << 20),
    };
    let (mut sent, mut resent) = (0u64, 0u64);
    for seed in 0..200 {
        let o = run_seed(seed, &over).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        sent += o.bytes_sent;
        resent += o.bytes_retransmitted;
    }
    let overhead = resent as f64 / sent as f64;
    assert!(
        (0.08..0.15).contains(&overhead),
        "retransmitted {:.1} % of payload bytes at 10 % loss (ideal 11.1 %)",
        overhead * 100.0
    );
}
