//! The producer client against a small in-test daemon on loopback: an
//! Endpoint on a real UDP socket whose "spool" is a shared list that keeps
//! each (producer, seq) once and marks it durable at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_transport::client::{Producer, ProducerError, ProducerOptions};
use sluice_transport::proto::{Endpoint, ReceiverConfig};
use sluice_transport::wire::CloseCode;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

#[derive(Default)]
struct Store {
    /// (producer, seq, payload) in the order stored.
    records: Vec<(u64, u64, Bytes)>,
    durable: HashMap<u64, u64>,
}

struct TestDaemon {
    addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    task: JoinHandle<()>,
}

impl TestDaemon {
    async fn start(addr: SocketAddr, store: Arc<Mutex<Store>>, reject: bool) -> TestDaemon {
        let socket = UdpSocket::bind(addr).await.expect("bind");
        let addr = socket.local_addr().unwrap();
        let s = store.clone();
        let task = tokio::spawn(async move {
            let mut ep = Endpoint::new(ReceiverConfig::default());
            let mut buf = vec![0u8; 65_536];
            let mut out = Vec::new();
            loop {
                let now = Instant::now();
                while let Some(to) = ep.poll_transmit(now, &mut out) {
                    let _ = socket.send_to(&out, to).await;
                }
                let deadline = ep.poll_timeout().unwrap_or(now + Duration::from_secs(1));
                tokio::select! {
                    r = socket.recv_from(&mut buf) => {
                        let Ok((n, from)) = r else { continue };
                        let now = Instant::now();
                        if let Some(inc) = ep.handle_datagram(now, from, Bytes::copy_from_slice(&buf[..n])) {
                            if reject {
                                ep.reject(inc, CloseCode::Rejected, "no such stream");
                            } else {
                                let durable = s.lock().unwrap().durable.get(&inc.hello.producer_id).copied().unwrap_or(0);
                                ep.accept(now, inc, durable, 64);
                            }
                        }
                        while let Some(id) = ep.poll_readable() {
                            let r = ep.receiver_mut(id).unwrap();
                            let producer = r.producer_id();
                            let mut st = s.lock().unwrap();
                            let mut last = None;
                            while let Some(m) = r.poll_message() {
                                let d = st.durable.entry(producer).or_insert(0);
                                if m.seq > *d {
                                    *d = m.seq;
                                    st.records.push((producer, m.seq, m.payload));
                                }
                                last = Some(m.seq);
                            }
                            if let Some(l) = last {
                                r.mark_durable(l);
                            }
                        }
                    }
                    _ = tokio::time::sleep_until(deadline.into()) => ep.handle_timeout(Instant::now()),
                }
            }
        });
        TestDaemon { addr, store, task }
    }

    /// Kills the daemon task and waits until its socket is closed.
    async fn stop(self) -> (SocketAddr, Arc<Mutex<Store>>) {
        self.task.abort();
        let _ = self.task.await;
        (self.addr, self.store)
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test step took over 20 s")
}

/// A producer with default options on stream "s" of `d`.
async fn connect(d: &TestDaemon, id: u64) -> Producer {
    within(Producer::connect(
        d.addr,
        "s",
        id,
        ProducerOptions::default(),
    ))
    .await
    .unwrap()
}

#[tokio::test]
async fn sends_resolve_once_durable_and_ids_resume_after_restart() {
    let d = TestDaemon::start(loopback(), Arc::default(), false).await;
    let p = connect(&d, 7).await;
    assert_eq!(within(p.send(Bytes::from("a"))).await, Ok(1));
    let batch: Vec<Bytes> = (0..500).map(|i| Bytes::from(format!("m{i}"))).collect();
    assert_eq!(within(p.send_batch(batch)).await, Ok(2..502));
    within(p.flush()).await.unwrap();
    within(p.close()).await.unwrap();
    // A new producer process with the same id continues after seq 501.
    let p = connect(&d, 7).await;
    assert_eq!(within(p.send(Bytes::from("after restart"))).await, Ok(502));
    let store = d.store.lock().unwrap();
    let seqs: Vec<u64> = store.records.iter().map(|r| r.1).collect();
    assert_eq!(seqs, (1..=502).collect::<Vec<_>>());
    assert_eq!(store.records[501].2, Bytes::from("after restart"));
}

#[tokio::test]
async fn a_daemon_restart_loses_nothing_and_stores_nothing_twice() {
    let d = TestDaemon::start(loopback(), Arc::default(), false).await;
    let p = connect(&d, 9).await;
    within(p.send_batch((0..100).map(|i| Bytes::from(vec![i as u8; 100])).collect()))
        .await
        .unwrap();
    // The daemon dies and comes back on the same port with its store.
    let (addr, store) = d.stop().await;
    let d = TestDaemon::start(addr, store, false).await;
    // The producer's session is unknown to the new daemon: it is told so,
    // reconnects, and carries on.
    let restarted = Instant::now();
    let sends = (0..200).map(|i| p.send(Bytes::from(format!("after {i}"))));
    let seqs = within(futures_join_all(sends)).await;
    // Told at once (not after the 10 s idle timeout) that its session is gone.
    assert!(
        restarted.elapsed() < Duration::from_secs(5),
        "reconnect took {:?}",
        restarted.elapsed()
    );
    for (i, s) in seqs.into_iter().enumerate() {
        assert_eq!(s, Ok(101 + i as u64));
    }
    let st = d.store.lock().unwrap();
    let all: Vec<u64> = st.records.iter().map(|r| r.1).collect();
    assert_eq!(all, (1..=300).collect::<Vec<_>>());
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join_all<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in fs {
        set.push(Box::pin(f));
    }
    let mut out = Vec::with_capacity(set.len());
    for f in set {
        out.push(f.await);
    }
    out
}

#[tokio::test]
async fn errors_name_what_went_wrong() {
    // Nobody listening.
    let silent = UdpSocket::bind(loopback()).await.unwrap();
    let mut opts = ProducerOptions::default();
    opts.sender.handshake_timeout = Duration::from_millis(300);
    let e = within(Producer::connect(
        silent.local_addr().unwrap(),
        "s",
        1,
        opts,
    ))
    .await
    .unwrap_err();
    assert!(matches!(e, ProducerError::Unreachable { .. }), "{e}");

    // A daemon that refuses the stream.
    let d = TestDaemon::start(loopback(), Arc::default(), true).await;
    let e = within(Producer::connect(
        d.addr,
        "nope",
        1,
        ProducerOptions::default(),
    ))
    .await
    .unwrap_err();
    assert_eq!(e, ProducerError::Rejected("no such stream".into()));

    // A message over the configured limit.
    let d = TestDaemon::start(loopback(), Arc::default(), false).await;
    let mut opts = ProducerOptions::default();
    opts.sender.max_message_len = 1000;
    let p = within(Producer::connect(d.addr, "s", 1, opts))
        .await
        .unwrap();
    let e = within(p.send(Bytes::from(vec![0; 1001])))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        ProducerError::TooLarge {
            len: 1001,
            max: 1000
        }
    );
    // The producer still works after a refused message.
    assert_eq!(within(p.send(Bytes::from("ok"))).await, Ok(1));
}

/// Options that notice a silent daemon within a second or so.
fn quick_failover() -> ProducerOptions {
    let mut o = ProducerOptions::default();
    o.sender.heartbeat_interval = Duration::from_millis(100);
    o.sender.idle_timeout = Duration::from_millis(600);
    o.sender.handshake_timeout = Duration::from_millis(600);
    o.max_reconnects = 20;
    o
}

/// The seqs a store holds for `producer`, in the order stored.
fn seqs(store: &Arc<Mutex<Store>>, producer: u64) -> Vec<u64> {
    let st = store.lock().unwrap();
    st.records
        .iter()
        .filter(|r| r.0 == producer)
        .map(|r| r.1)
        .collect()
}

#[tokio::test]
async fn a_producer_fails_over_to_the_next_daemon_and_resends_what_was_not_acked() {
    let a = TestDaemon::start(loopback(), Arc::default(), false).await;
    let b = TestDaemon::start(loopback(), Arc::default(), false).await;
    let (a_addr, b_addr) = (a.addr, b.addr);
    let p = within(Producer::connect_any(
        &[a_addr, b_addr],
        "s",
        9,
        quick_failover(),
    ))
    .await
    .unwrap();
    assert_eq!(p.status().daemon, a_addr);
    let first = within(p.send_batch((0..100).map(|i| Bytes::from(format!("m{i}"))).collect()))
        .await
        .unwrap();
    assert_eq!(first, 1..101);
    // A goes away for good; what is sent now must reach B.
    let (_, a_store) = a.stop().await;
    let second = within(p.send_batch((100..200).map(|i| Bytes::from(format!("m{i}"))).collect()))
        .await
        .unwrap();
    assert_eq!(second, 101..201, "the same numbering continues at B");
    let status = p.status();
    assert_eq!(status.daemon, b_addr);
    assert_eq!(status.failovers, 1);
    let event = status.last_failover.expect("the failover is reported");
    assert_eq!((event.from, event.to), (a_addr, b_addr));
    // B never saw this producer: it starts at the first seq A had not
    // acked (no NACK for 1..=100, which the producer no longer holds).
    assert_eq!(seqs(&a_store, 9), (1..=100).collect::<Vec<_>>());
    assert_eq!(seqs(&b.store, 9), (101..=200).collect::<Vec<_>>());
    within(p.close()).await.unwrap();
    let _ = b.stop().await;
}

#[tokio::test]
async fn a_producer_whose_first_daemon_is_down_starts_at_the_next() {
    // An address where nothing listens.
    let down = TestDaemon::start(loopback(), Arc::default(), false).await;
    let (down_addr, _) = down.stop().await;
    let b = TestDaemon::start(loopback(), Arc::default(), false).await;
    let p = within(Producer::connect_any(
        &[down_addr, b.addr],
        "s",
        3,
        quick_failover(),
    ))
    .await
    .unwrap();
    assert_eq!(p.status().daemon, b.addr);
    assert_eq!(within(p.send(Bytes::from_static(b"x"))).await.unwrap(), 1);
    within(p.close()).await.unwrap();
    // None at all: an error naming the last one tried, not a hang.
    let e = within(Producer::connect_any(
        &[down_addr],
        "s",
        3,
        quick_failover(),
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(e, ProducerError::Unreachable { addr, .. } if addr == down_addr),
        "{e}"
    );
    let e = within(Producer::connect_any(&[], "s", 3, quick_failover()))
        .await
        .unwrap_err();
    assert!(matches!(e, ProducerError::Config(_)), "{e}");
}

#[tokio::test]
async fn sends_fail_with_unreachable_once_every_daemon_is_down_past_the_deadline() {
    let a = TestDaemon::start(loopback(), Arc::default(), false).await;
    let b = TestDaemon::start(loopback(), Arc::default(), false).await;
    let mut options = quick_failover();
    options.max_reconnects = u32::MAX;
    options.unreachable_timeout = Some(Duration::from_secs(2));
    let p = within(Producer::connect_any(&[a.addr, b.addr], "s", 4, options))
        .await
        .unwrap();
    assert_eq!(within(p.send(Bytes::from_static(b"x"))).await.unwrap(), 1);
    let _ = a.stop().await;
    let _ = b.stop().await;
    let started = Instant::now();
    // Not lost silently: the send waits while the producer tries, then
    // fails with the reason.
    let e = within(p.send(Bytes::from_static(b"y"))).await.unwrap_err();
    assert!(matches!(e, ProducerError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("gave up"), "{e}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "gave up after {took:?}, the deadline is 2 s"
    );
    assert!(p.status().failovers >= 2, "{:?}", p.status());
}

#[tokio::test]
async fn a_restarted_producer_continues_after_the_furthest_daemon_not_the_first() {
    let a = TestDaemon::start(loopback(), Arc::default(), false).await;
    let b = TestDaemon::start(loopback(), Arc::default(), false).await;
    let addrs = [a.addr, b.addr];
    let p = within(Producer::connect_any(&addrs, "s", 11, quick_failover()))
        .await
        .unwrap();
    within(p.send_batch((0..100).map(|i| Bytes::from(format!("a{i}"))).collect()))
        .await
        .unwrap();
    let (a_addr, a_store) = a.stop().await;
    let at_b = within(p.send_batch((0..100).map(|i| Bytes::from(format!("b{i}"))).collect()))
        .await
        .unwrap();
    assert_eq!(at_b, 101..201);
    within(p.close()).await.unwrap();
    // The producer restarts and A is back: A knows it up to 100 only, B up
    // to 200. Numbering from A's mark would reuse 101..=200.
    let a = TestDaemon::start(a_addr, a_store, false).await;
    let p = within(Producer::connect_any(&addrs, "s", 11, quick_failover()))
        .await
        .unwrap();
    assert_eq!(p.status().daemon, a.addr);
    assert_eq!(
        within(p.send(Bytes::from_static(b"again"))).await.unwrap(),
        201
    );
    within(p.close()).await.unwrap();
    assert_eq!(
        seqs(&a.store, 11),
        (1..=100).chain([201]).collect::<Vec<_>>()
    );
    // An application that keeps its own mark gives it, and numbering
    // continues after it.
    let mut options = quick_failover();
    options.resume_after = Some(500);
    let p = within(Producer::connect(a.addr, "s", 11, options))
        .await
        .unwrap();
    assert_eq!(
        within(p.send(Bytes::from_static(b"later"))).await.unwrap(),
        501
    );
    within(p.close()).await.unwrap();
    let _ = (a.stop().await, b.stop().await);
}
