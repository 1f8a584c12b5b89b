//! Floods against a real sluiced, with its resident memory and open
//! descriptors measured before, during and after each, while well-behaved
//! clients keep being served:
//!
//! - HELLOs from one source address on an `insecure_lan` data port: that
//!   address holds at most `data.max_sessions_per_source` sessions, the rest
//!   are dropped and counted (`source_limit`), and producers elsewhere keep
//!   publishing;
//! - QUIC connections of one token: it holds at most
//!   `quic.max_connections_per_principal`, the daemon at most
//!   `quic.max_connections`; the rest are closed with the limit's name
//!   (`ProducerError::ConnectionLimit` in the client library) and counted
//!   (`sluice_auth_denied_total{reason}`), other tokens still connect, and
//!   slots come back when connections close.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_daemon::auth::{hash_token, new_token};
use sluice_tests::check;
use sluice_tests::daemon::{Daemon, DaemonSpec};
use sluice_tests::flood::{hello_flood, Usage};
use sluice_tests::load;
use sluice_tests::sluiced_bin;
use sluice_transport::client::{
    Consumer, ConsumerError, ConsumerOptions, Producer, ProducerError, ProducerOptions,
    QuicOptions, Transport,
};
use sluice_transport::quic::close_code;
use sluice_transport::quic::control::{Control, RefuseCode};
use sluice_transport::quic::frame::{self, FramedRecv};
use sluice_transport::quic::tls;

const MIB: f64 = (1 << 20) as f64;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

// ---------------------------------------------------------- HELLO flood

/// Sessions of `stream` the daemon holds now.
fn sessions(d: &Daemon, stream: &str) -> f64 {
    d.metrics().value("sluice_sessions", &[("stream", stream)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_flood_from_one_address_holds_its_limit_and_others_publish() {
    const PER_SOURCE: u64 = 64;
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path())
        .insecure_lan()
        .arg("--data-max-sessions")
        .arg("256")
        .arg("--data-max-sessions-per-source")
        .arg(PER_SOURCE.to_string());
    let d = spec.start();
    let before = Usage::of(&d);

    // Two flooding hosts (127.0.0.2 and .3), each with its own stream,
    // ~20,000 HELLOs a second each, every one for a new producer: hundreds
    // of times the daemon's 256 sessions.
    let stop = Arc::new(AtomicBool::new(false));
    let floods: Vec<_> = [2u8, 3]
        .into_iter()
        .map(|host| {
            let (stop, to) = (stop.clone(), spec.data);
            std::thread::spawn(move || {
                let from = IpAddr::from([127, 0, 0, host]);
                let stream = format!("flood-{host}");
                hello_flood(from, to, &stream, 1_000_000, 20_000, 200_000, &stop)
            })
        })
        .collect();
    // The floods fill their share first.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sessions(&d, "flood-2") < PER_SOURCE as f64 || sessions(&d, "flood-3") < PER_SOURCE as f64
    {
        assert!(Instant::now() < deadline, "the floods opened no sessions");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Meanwhile, producers on 127.0.0.1 publish, and the floods' session
    // counts are watched, for 4 s at least.
    const EACH: u64 = 5_000;
    let watch_until = Instant::now() + Duration::from_secs(4);
    let producers = tokio::spawn(load::run_all(
        load::plans(&spec.udp(), "clean", 4, EACH, 100),
        Duration::from_secs(40),
    ));
    let mut most = (0.0f64, 0.0f64);
    let mut during = Usage::of(&d);
    while !producers.is_finished() || Instant::now() < watch_until {
        most.0 = most.0.max(sessions(&d, "flood-2"));
        most.1 = most.1.max(sessions(&d, "flood-3"));
        let u = Usage::of(&d);
        during.rss = during.rss.max(u.rss);
        during.fds = during.fds.max(u.fds);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acked = producers.await.unwrap();
    let m = d.metrics();
    let source_limit = m.value(
        "sluice_datagrams_dropped_total",
        &[("reason", "source_limit")],
    );
    stop.store(true, Ordering::Relaxed);
    let sent: u64 = floods.into_iter().map(|t| t.join().unwrap()).sum();

    assert_eq!(
        most,
        (PER_SOURCE as f64, PER_SOURCE as f64),
        "sessions per flooding address"
    );
    // (What a busy machine's socket buffer dropped is not counted.)
    assert!(
        source_limit > 1_000.0,
        "{source_limit} HELLOs counted as source_limit of {sent} sent"
    );
    // No descriptor per session (three new streams hold their files open),
    // and little memory for them.
    assert!(
        during.fds <= before.fds + 16,
        "descriptors during the flood: {before} -> {during}"
    );
    assert!(
        mib(during.rss.saturating_sub(before.rss)) < 128.0,
        "memory during the flood: {before} -> {during}"
    );

    // The flooders' sessions time out (10 s of silence) and their slots
    // come back: a producer on 127.0.0.2 is served again.
    let deadline = Instant::now() + Duration::from_secs(25);
    while sessions(&d, "flood-2") + sessions(&d, "flood-3") > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the flood's sessions did not time out"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut options = load::patient(Transport::Udp);
    options.bind = Some("127.0.0.2:0".parse().unwrap());
    let p = Producer::connect(spec.data, "clean", 99, options)
        .await
        .expect("127.0.0.2 is served again once its sessions ended");
    p.send(Bytes::from_static(b"back")).await.unwrap();
    p.close().await.unwrap();
    let after = Usage::of(&d);

    eprintln!(
        "HELLO flood: {sent} HELLOs from 2 addresses, {source_limit} dropped as source_limit, \
         at most {} and {} sessions held (limit {PER_SOURCE}); 4 producers on 127.0.0.1 \
         published {} messages meanwhile",
        most.0,
        most.1,
        4 * EACH
    );
    eprintln!("HELLO flood: before {before}; during (peak) {during}; after {after}");

    assert!(d.terminate(Duration::from_secs(15)).success());
    let stored = check::stored(dir.path(), "clean");
    assert_eq!(stored.len() as u64, 4 * EACH + 1);
    check::exactly_once(
        &stored
            .iter()
            .copied()
            .filter(|(p, _)| *p != 99)
            .collect::<Vec<_>>(),
        &acked,
    );
}

// ---------------------------------------------------- connection flood

/// A raw QUIC connection that authenticated, held open.
struct Held {
    conn: quinn::Connection,
    _control: (quinn::SendStream, FramedRecv),
}

/// Opens a QUIC connection to `addr` from `endpoint` and authenticates with
/// `token`; the connection, or the code and reason it was closed with.
async fn open(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    q: &QuicOptions,
) -> Result<Held, (u64, String)> {
    let config = tls::client_config(&q.tls, Duration::from_secs(5)).unwrap();
    let conn = endpoint
        .connect_with(config, addr, &tls::server_name(&q.tls, addr))
        .unwrap()
        .await
        .map_err(|e| (0, format!("handshake: {e}")))?;
    let closed = |conn: &quinn::Connection| match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c)) => (
            u64::from(c.error_code),
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        other => (0, format!("{other:?}")),
    };
    let (mut send, recv) = conn.open_bi().await.map_err(|_| closed(&conn))?;
    let auth = Control::Auth {
        token: q.token.clone().unwrap_or_default(),
    };
    frame::write(&mut send, &auth.encode())
        .await
        .map_err(|_| closed(&conn))?;
    let mut recv = FramedRecv::new(recv);
    match recv.next().await {
        Ok(Some(f)) if matches!(Control::decode(&f), Ok(Control::AuthOk { .. })) => Ok(Held {
            conn,
            _control: (send, recv),
        }),
        _ => {
            // The close may still be on its way.
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
            Err(closed(&conn))
        }
    }
}

/// Opens `n` connections with `q`, `at_once` at a time: those held, and the
/// refusals' codes and reasons.
async fn flood(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    q: &QuicOptions,
    n: usize,
    at_once: usize,
) -> (Vec<Held>, Vec<(u64, String)>) {
    let (mut held, mut refused) = (Vec::new(), Vec::new());
    let mut left = n;
    while left > 0 {
        let k = left.min(at_once);
        let tries: Vec<_> = (0..k)
            .map(|_| {
                let (endpoint, q) = (endpoint.clone(), q.clone());
                tokio::spawn(async move { open(&endpoint, addr, &q).await })
            })
            .collect();
        for t in tries {
            match t.await.unwrap() {
                Ok(h) => held.push(h),
                Err(e) => refused.push(e),
            }
        }
        left -= k;
    }
    (held, refused)
}

/// Waits (10 s at most) until the daemon counts `want` QUIC connections
/// open: closed ones are let go of at its pace.
async fn settle(d: &Daemon, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = d.metrics().value("sluice_quic_connections_open", &[]);
        if open == want as f64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{open} QUIC connections open, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A producer over the fast path with `q`: connects, publishes one message.
async fn publish_one(
    spec: &DaemonSpec,
    q: QuicOptions,
    producer: u64,
) -> Result<u64, ProducerError> {
    let mut options = ProducerOptions::with_transport(Transport::FastPath(q));
    options.max_reconnects = 0;
    let p = Producer::connect(spec.quic, "orders", producer, options).await?;
    let seq = p.send(Bytes::from_static(b"hi")).await?;
    p.close().await?;
    Ok(seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_of_one_token_holds_its_limit_and_others_connect() {
    const PER_PRINCIPAL: usize = 16;
    const TOTAL: usize = 24;
    const FLOOD: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let (flooder, good, third) = (new_token(), new_token(), new_token());
    let config = dir.path().join("sluiced.toml");
    let entry = |name: &str, token: &str| {
        format!(
            "[[auth.tokens]]\nname = \"{name}\"\nhash = \"{}\"\npublish = [\"orders\"]\nconsume = [\"orders\"]\n\n",
            hash_token(token)
        )
    };
    std::fs::write(
        &config,
        entry("flooder", &flooder) + &entry("good", &good) + &entry("third", &third),
    )
    .unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), &dir.path().join("data"))
        .arg("--config")
        .arg(config.display().to_string())
        .arg("--quic-max-connections")
        .arg(TOTAL.to_string())
        .arg("--quic-max-connections-per-principal")
        .arg(PER_PRINCIPAL.to_string());
    let d = spec.start();
    let q = |t: &str| spec.quic_options(Some(t.to_owned()));
    let denied = |reason: &str| {
        d.metrics()
            .value("sluice_auth_denied_total", &[("reason", reason)])
    };

    // A well-behaved producer holds a connection of its own all along.
    let mut options = load::patient(Transport::FastPath(q(&good)));
    options.max_reconnects = 0;
    let steady = Producer::connect(spec.quic, "orders", 1, options)
        .await
        .unwrap();
    steady.send(Bytes::from_static(b"before")).await.unwrap();
    let before = Usage::of(&d);

    // One token opens 300 connections, 32 at a time, from one socket.
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let started = Instant::now();
    let (held, refused) = flood(&endpoint, spec.quic, &q(&flooder), FLOOD, 32).await;
    let took = started.elapsed();
    let during = Usage::of(&d);
    assert_eq!(
        held.len(),
        PER_PRINCIPAL,
        "connections the flooding token holds"
    );
    assert_eq!(refused.len(), FLOOD - PER_PRINCIPAL);
    for (code, reason) in &refused {
        assert_eq!(*code, u64::from(close_code::CONNECTION_LIMIT), "{reason}");
        assert!(
            reason.contains("\"flooder\"") && reason.contains("quic.max_connections_per_principal"),
            "{reason}"
        );
    }
    assert_eq!(
        denied("principal_connection_limit"),
        (FLOOD - PER_PRINCIPAL) as f64
    );

    // The client library says why, producer and consumer alike; a
    // producer keeps trying (the limit passes), a consumer too.
    let e = publish_one(&spec, q(&flooder), 2).await.unwrap_err();
    assert!(
        matches!(&e, ProducerError::ConnectionLimit(r) if r.contains("quic.max_connections_per_principal")),
        "{e:?}"
    );
    assert!(!e.is_permanent(), "a connection limit passes");
    let mut co = ConsumerOptions::new(q(&flooder), "g");
    co.reconnect_timeout = Duration::from_secs(1);
    let e = Consumer::connect(spec.quic, "orders", co)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&e, ConsumerError::Refused { code: RefuseCode::Unavailable, reason } if reason.contains("max_connections_per_principal")),
        "{e:?}"
    );

    // Other tokens still connect, and the steady producer is served.
    assert_eq!(publish_one(&spec, q(&good), 3).await, Ok(1));
    steady.send(Bytes::from_static(b"during")).await.unwrap();
    // Closed connections are let go of at the daemon's pace.
    settle(&d, PER_PRINCIPAL + 1).await;

    // The total: 16 (flooder) + 1 (steady) held; `third` gets the 7 left.
    let (third_held, third_refused) = flood(&endpoint, spec.quic, &q(&third), 12, 4).await;
    assert_eq!(third_held.len(), TOTAL - PER_PRINCIPAL - 1);
    for (code, reason) in &third_refused {
        assert_eq!(*code, u64::from(close_code::CONNECTION_LIMIT), "{reason}");
        assert!(reason.contains("quic.max_connections"), "{reason}");
        assert!(!reason.contains("per_principal"), "{reason}");
    }
    assert_eq!(denied("connection_limit"), third_refused.len() as f64);
    let e = publish_one(&spec, q(&good), 4).await.unwrap_err();
    assert!(
        matches!(&e, ProducerError::ConnectionLimit(r) if r.contains("quic.max_connections")),
        "{e:?}"
    );
    settle(&d, TOTAL).await;
    let full = Usage::of(&d);

    // Connections that close give their slots back.
    for h in &held {
        h.conn.close(close_code::DONE.into(), b"done");
    }
    drop(held);
    settle(&d, TOTAL - PER_PRINCIPAL).await;
    assert_eq!(publish_one(&spec, q(&good), 5).await, Ok(1));
    assert_eq!(publish_one(&spec, q(&flooder), 6).await, Ok(1));
    for h in &third_held {
        h.conn.close(close_code::DONE.into(), b"done");
    }
    drop(third_held);
    steady.send(Bytes::from_static(b"after")).await.unwrap();
    steady.close().await.unwrap();
    endpoint.wait_idle().await;
    let after = Usage::of(&d);

    eprintln!(
        "connection flood: {FLOOD} connections of one token in {took:.1?}: {} held (limit \
         {PER_PRINCIPAL}), {} refused; a third token got {} of 12 (total limit {TOTAL})",
        PER_PRINCIPAL,
        FLOOD - PER_PRINCIPAL,
        TOTAL - PER_PRINCIPAL - 1
    );
    eprintln!(
        "connection flood: before {before}; during {during}; at the total limit {full}; after {after}"
    );
    assert!(
        during.fds <= before.fds + 8,
        "descriptors: {before} -> {during}"
    );
    assert!(d.terminate(Duration::from_secs(15)).success());
    let stored = check::stored(&spec.dir, "orders");
    let steady_seqs: Vec<u64> = stored
        .iter()
        .filter(|(p, _)| *p == 1)
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(steady_seqs, [1, 2, 3], "the steady producer's messages");
}

// ------------------------------------------------------ stream creation

/// HELLOs that each name a new stream (`insecure_lan`, `auto_create`): the
/// daemon makes at most `streams.max_streams` (each costs a writer thread
/// and a preallocated segment on disk), refuses the rest, and producers of
/// existing streams keep publishing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_new_stream_names_makes_at_most_max_streams() {
    const MAX: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path())
        .insecure_lan()
        .arg("--streams-max-streams")
        .arg(MAX.to_string())
        .arg("--spool-segment-bytes")
        .arg("1048576");
    let d = spec.start();
    let target = spec.udp();
    let good = Producer::connect(
        target.addr,
        "kept",
        1,
        ProducerOptions::with_transport(target.transport.clone()),
    )
    .await
    .expect("a producer of a first stream");
    good.send(Bytes::from_static(b"before")).await.unwrap();
    let before = Usage::of(&d);
    let socket = std::net::UdpSocket::bind("127.0.0.4:0").unwrap();
    let mut buf = Vec::new();
    for n in 0..500u64 {
        buf.clear();
        sluice_transport::wire::Packet::Hello(sluice_transport::wire::Hello {
            producer_id: 1000 + n,
            nonce: rand::random(),
            first_seq: 1,
            stream: format!("flood-{n}"),
        })
        .encode(0, &mut buf);
        let _ = socket.send_to(&buf, spec.data);
        if n % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = Usage::of(&d);
    let streams: Vec<String> = std::fs::read_dir(dir.path().join("streams"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    eprintln!(
        "500 HELLOs naming new streams, streams.max_streams {MAX}: {} streams on disk; \
         before {before}, during {during}",
        streams.len()
    );
    assert_eq!(streams.len(), MAX, "{streams:?}");
    good.send(Bytes::from_static(b"after"))
        .await
        .expect("a producer of an existing stream is still served");
    good.close().await.unwrap();
    assert!(d.terminate(Duration::from_secs(15)).success());
}
