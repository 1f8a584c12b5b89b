//! The authenticated fast path under attack. A hand-driven producer leases
//! a raw-UDP session over QUIC (as the client library does), publishes one
//! legitimate message, then sends what an attacker or a broken network
//! could: a replay, a bit-flipped packet, one forged under other keys, one
//! for another session or stream, an unsealed one, and sealed packets for a
//! lease that was revoked or has expired. Each is dropped before its
//! contents are parsed and counted by its reason, and only the legitimate
//! message is stored.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{Connection, SendStream};
use sluice_tests::check;
use sluice_tests::daemon::{Daemon, DaemonSpec};
use sluice_tests::sluiced_bin;
use sluice_transport::quic::control::{Control, Purpose, RefuseCode};
use sluice_transport::quic::frame::{self, FramedRecv};
use sluice_transport::quic::tls::{self, ClientTls, ServerTrust};
use sluice_transport::seal::{self, Opener, Sealer, Side, EXPORTER_LABEL, EXPORTER_LEN};
use sluice_transport::wire::{DataWriter, Decoded, Hello, Packet};
use tokio::net::UdpSocket;

const STREAM: &str = "guarded";
const PRODUCER: u64 = 41;

/// A lease obtained by hand, and a socket to use it from.
struct Lease {
    _endpoint: quinn::Endpoint,
    _conn: Connection,
    _control: (SendStream, FramedRecv),
    stream: (SendStream, FramedRecv),
    id: u64,
    data: SocketAddr,
    sealer: Sealer,
    opener: Opener,
    socket: UdpSocket,
}

async fn lease(spec: &DaemonSpec, producer: u64) -> Lease {
    let trust = ServerTrust::Fingerprint(spec.fingerprint());
    let tls = ClientTls {
        trust,
        client_cert: None,
        server_name: None,
    };
    let config = tls::client_config(&tls, Duration::from_secs(2)).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(config, spec.quic, "127.0.0.1")
        .unwrap()
        .await
        .unwrap();
    let (mut cs, cr) = conn.open_bi().await.unwrap();
    let mut cr = FramedRecv::new(cr);
    frame::write(
        &mut cs,
        &Control::Auth {
            token: String::new(),
        }
        .encode(),
    )
    .await
    .unwrap();
    let ok = cr.next().await.unwrap().unwrap();
    assert!(matches!(Control::decode(&ok), Ok(Control::AuthOk { .. })));
    let (mut ls, lr) = conn.open_bi().await.unwrap();
    let mut lr = FramedRecv::new(lr);
    let open = Control::Open {
        purpose: Purpose::Lease,
        stream: STREAM.into(),
        producer_id: producer,
    };
    frame::write(&mut ls, &open.encode()).await.unwrap();
    let reply = Control::decode(&lr.next().await.unwrap().unwrap()).unwrap();
    let Control::Lease {
        lease_id,
        data_addr,
        ..
    } = reply
    else {
        panic!("no lease: {reply:?}");
    };
    let mut material = [0u8; EXPORTER_LEN];
    conn.export_keying_material(
        &mut material,
        EXPORTER_LABEL,
        &seal::exporter_context(lease_id),
    )
    .unwrap();
    let (sealer, opener) = seal::keys(&material, lease_id, Side::Producer);
    Lease {
        _endpoint: endpoint,
        _conn: conn,
        _control: (cs, cr),
        stream: (ls, lr),
        id: lease_id,
        data: data_addr,
        sealer,
        opener,
        socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
    }
}

impl Lease {
    fn seal(&mut self, inner: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.sealer.seal(inner, &mut out).unwrap();
        out
    }

    async fn send(&self, datagram: &[u8]) {
        self.socket.send_to(datagram, self.data).await.unwrap();
    }

    /// The next datagram from the daemon that opens, decoded.
    async fn recv_decoded(&mut self) -> Decoded {
        let mut buf = vec![0u8; 65_536];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(5), self.socket.recv(&mut buf))
                .await
                .expect("an answer from the daemon")
                .unwrap();
            if let Ok(inner) = self.opener.open(&mut buf[..n]) {
                return Packet::decode(&Bytes::copy_from_slice(inner)).unwrap();
            }
        }
    }

    /// The next inner packet from the daemon.
    async fn recv(&mut self) -> Packet {
        self.recv_decoded().await.packet
    }

    /// Opens a session with a sealed HELLO; returns its id.
    async fn hello(&mut self, stream: &str, producer: u64) -> u64 {
        let mut buf = Vec::new();
        Packet::Hello(Hello {
            producer_id: producer,
            nonce: 7,
            first_seq: 0,
            stream: stream.into(),
        })
        .encode(0, &mut buf);
        let sealed = self.seal(&buf);
        self.send(&sealed).await;
        let d = self.recv_decoded().await;
        assert!(matches!(d.packet, Packet::Welcome(_)), "{:?}", d.packet);
        d.header.session_id
    }
}

fn data(session: u64, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = DataWriter::new(&mut out, session, 1400);
    assert!(w.push_whole(seq, payload));
    w.finish();
    out
}

/// Waits until the daemon has counted `at_least` drops for `reason`.
async fn dropped(d: &Daemon, reason: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = d
            .metrics()
            .value("sluice_fastpath_dropped_total", &[("reason", reason)]);
        if n >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{reason}: {n} drops counted, wanted {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_flipped_and_stale_packets_are_dropped_and_nothing_of_them_stored() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path());
    let d = spec.start();
    let mut l = lease(&spec, PRODUCER).await;
    let session = l.hello(STREAM, PRODUCER).await;

    // The legitimate message, acked durable.
    let legit = l.seal(&data(session, 1, b"legit"));
    l.send(&legit).await;
    loop {
        if let Packet::Status(s) = l.recv().await {
            if s.durable_seq >= 1 {
                break;
            }
        }
    }

    // Replayed: the very same datagram again.
    l.send(&legit).await;
    dropped(&d, "replayed", 1.0).await;

    // Bit-flipped in the ciphertext.
    let mut flipped = l.seal(&data(session, 2, b"flipped"));
    flipped[seal::HEADER_LEN + 3] ^= 0x04;
    l.send(&flipped).await;
    dropped(&d, "auth_failed", 1.0).await;

    // Forged: the right lease id and a fresh packet number, other keys.
    let (mut forger, _) = seal::keys(&[0x5a; EXPORTER_LEN], l.id, Side::Producer);
    // Past any packet number the real sealer used, so that only the tag
    // can fail.
    for _ in 0..100 {
        forger.seal(b"x", &mut Vec::new()).unwrap();
    }
    let mut forged = Vec::new();
    forger
        .seal(&data(session, 3, b"forged"), &mut forged)
        .unwrap();
    l.send(&forged).await;
    dropped(&d, "auth_failed", 2.0).await;

    // Authentic, but for a session and a stream the lease was not granted for.
    let other_session = l.seal(&data(session ^ 1, 1, b"elsewhere"));
    l.send(&other_session).await;
    let mut other_stream = Vec::new();
    Packet::Hello(Hello {
        producer_id: PRODUCER,
        nonce: 8,
        first_seq: 0,
        stream: "someone-elses".into(),
    })
    .encode(0, &mut other_stream);
    let other_stream = l.seal(&other_stream);
    l.send(&other_stream).await;
    dropped(&d, "lease_mismatch", 2.0).await;

    // Unsealed: a plain sluice packet at the data port.
    l.send(&data(session, 4, b"plain")).await;
    dropped(&d, "not_sealed", 1.0).await;

    // Stale: the lease ends with its stream; its keys open nothing after.
    l.stream.0.finish().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.metrics().value("sluice_leases", &[]) > 0.0 {
        assert!(Instant::now() < deadline, "the lease was not revoked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stale = l.seal(&data(session, 5, b"stale"));
    l.send(&stale).await;
    dropped(&d, "unknown_lease", 1.0).await;

    assert!(d.terminate(Duration::from_secs(15)).success());
    let stored = check::records(dir.path(), STREAM);
    let got: Vec<(u64, u64, &[u8])> = stored
        .iter()
        .map(|r| (r.producer, r.seq, &r.payload[..]))
        .collect();
    assert_eq!(got, vec![(PRODUCER, 1, &b"legit"[..])]);
    assert!(
        !dir.path().join("streams/someone-elses").exists(),
        "no stream was created by the mismatched HELLO"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_opens_nothing_and_cannot_be_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path())
        .arg("--data-lease-seconds")
        .arg("5");
    let d = spec.start();
    let mut l = lease(&spec, PRODUCER).await;
    let session = l.hello(STREAM, PRODUCER).await;
    // Not renewed: after five seconds the lease is over.
    tokio::time::sleep(Duration::from_millis(5_300)).await;
    let late = l.seal(&data(session, 1, b"late"));
    l.send(&late).await;
    dropped(&d, "expired_lease", 1.0).await;
    frame::write(&mut l.stream.0, &Control::Renew.encode())
        .await
        .unwrap();
    let reply = Control::decode(&l.stream.1.next().await.unwrap().unwrap()).unwrap();
    assert_eq!(
        reply,
        Control::Refused {
            code: RefuseCode::Unavailable,
            reason: "lease expired".into()
        }
    );
    assert!(d.terminate(Duration::from_secs(15)).success());
    assert!(check::stored(dir.path(), STREAM).is_empty());
}
