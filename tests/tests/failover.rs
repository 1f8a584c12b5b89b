//! Producer failover between two real daemons: one producer given both
//! addresses publishes 20,000 messages; the first daemon is killed with
//! `kill -9` for good mid-run (after some acks), and the producer finishes
//! through the second, sending again there what the first had not acked.
//!
//! Checked afterwards, from both spools (the dead daemon's read offline):
//! every message the producer saw acked is stored at one daemon or the
//! other, under its seq and with its payload; every message sent was acked
//! in the end; each spool holds the producer's seqs in order, once each;
//! the second daemon took the producer up where the first left it (no
//! renumbering); and the producer reported the failover (which daemon,
//! why). Run over raw UDP and over the fast path (QUIC lease, sealed UDP).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use sluice_tests::check::{self, Acked};
use sluice_tests::daemon::{DaemonSpec, Target};
use sluice_tests::failover::{Run, Sent};
use sluice_tests::load;
use sluice_tests::pki::Ca;
use sluice_tests::sluiced_bin;
use sluice_transport::client::{Producer, ProducerOptions, QuicOptions, Transport};
use sluice_transport::proto::SenderConfig;
use sluice_transport::quic::tls::{ClientTls, ServerTrust};

const STREAM: &str = "failover";
const PRODUCER: u64 = 21;
const TOTAL: u64 = 20_000;
const BATCH: u64 = 200;
/// 8 batches in flight; the first daemon dies after 6,000 acks.
const RUN: Run = Run {
    total: TOTAL,
    batch: BATCH,
    in_flight: 8,
    kill_after: 6_000,
    ack_within: Duration::from_secs(60),
};

/// A producer that notices a dead daemon within about a second.
fn options(transport: Transport) -> ProducerOptions {
    ProducerOptions {
        transport,
        sender: SenderConfig {
            heartbeat_interval: Duration::from_millis(100),
            idle_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(2),
            ..SenderConfig::default()
        },
        max_reconnects: 20,
        unreachable_timeout: Some(Duration::from_secs(30)),
        ..ProducerOptions::default()
    }
}

/// Every (seq, payload) of the producer in the spool at `dir`, in offset
/// order; panics unless its seqs are in order, once each.
fn spool(dir: &Path) -> Vec<(u64, bytes::Bytes)> {
    let records: Vec<_> = check::records(dir, STREAM)
        .into_iter()
        .filter(|r| r.producer == PRODUCER)
        .map(|r| (r.seq, r.payload))
        .collect();
    let seqs: Vec<(u64, u64)> = records.iter().map(|r| (PRODUCER, r.0)).collect();
    // Order only: which acked seqs are where is checked over both spools.
    check::exactly_once(&seqs, &Acked::new());
    records
}

async fn fail_over(a_spec: DaemonSpec, b_spec: DaemonSpec, path: impl Fn(&DaemonSpec) -> Target) {
    let a = a_spec.start();
    let b = b_spec.start();
    let (ta, tb) = (path(&a_spec), path(&b_spec));
    let producer = Producer::connect_any(
        &[ta.addr, tb.addr],
        STREAM,
        PRODUCER,
        options(ta.transport.clone()),
    )
    .await
    .expect("the producer opens its session at the first daemon");
    assert_eq!(producer.status().daemon, ta.addr);

    let started = Instant::now();
    let Sent {
        acked,
        acked_at_kill,
    } = RUN.send(&producer, PRODUCER, || a.kill9()).await;
    let elapsed = started.elapsed();
    let status = producer.status();
    producer.close().await.expect("a clean close at B");
    let b_status = b.terminate(Duration::from_secs(15));
    assert!(b_status.success());

    // Every message sent was acked in the end, numbered 1..=TOTAL: the
    // second daemon continued the producer's numbering.
    assert_eq!(acked, (1..=TOTAL).collect::<BTreeSet<_>>());
    // The failover is reported: from A, to B, with a reason.
    assert!(status.connected);
    assert_eq!(status.daemon, tb.addr, "{status:?}");
    assert_eq!(status.failovers, 1, "{status:?}");
    let event = status.last_failover.expect("the failover event");
    assert_eq!((event.from, event.to), (ta.addr, tb.addr));
    assert!(!event.reason.is_empty());

    let at_a = spool(&a_spec.dir);
    let at_b = spool(&b_spec.dir);
    for (seq, payload) in at_a.iter().chain(&at_b) {
        assert_eq!(
            *payload,
            load::payload(PRODUCER, seq - 1),
            "seq {seq} stored with another message's payload"
        );
    }
    let seqs_a: BTreeSet<u64> = at_a.iter().map(|r| r.0).collect();
    let seqs_b: BTreeSet<u64> = at_b.iter().map(|r| r.0).collect();
    let missing: Vec<_> = acked
        .iter()
        .filter(|s| !seqs_a.contains(s) && !seqs_b.contains(s))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "acked but stored at neither daemon: {missing:?}"
    );
    // What A acked before it died is at A; B starts after the producer's
    // acked mark, not at 1 (B never saw this producer).
    let a_last = *seqs_a.last().expect("A stored some");
    assert!(
        a_last >= acked_at_kill,
        "A holds up to {a_last}, {acked_at_kill} were acked"
    );
    let b_first = *seqs_b.first().expect("B stored some");
    assert!(
        b_first > acked_at_kill && b_first <= a_last + 1,
        "B starts at {b_first}: A acked {acked_at_kill}, holds up to {a_last}"
    );
    let both = seqs_a.intersection(&seqs_b).count();
    // Only what was unacked when A died can be at both (stored at A, its
    // ack lost with A): within the producer's window.
    assert!(
        both as u64 <= BATCH * RUN.in_flight as u64,
        "{both} seqs stored at both daemons"
    );
    eprintln!(
        "{TOTAL} messages in {elapsed:?}; A killed after {acked_at_kill} acks holding 1..={a_last}; \
         B from {b_first}; {both} stored at both (acks lost with A); failover: {}",
        event.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_fails_over_to_the_second_daemon_over_raw_udp() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = DaemonSpec::new(sluiced_bin!(), da.path()).insecure_lan();
    let b = DaemonSpec::new(sluiced_bin!(), db.path()).insecure_lan();
    fail_over(a, b, DaemonSpec::udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_fails_over_to_the_second_daemon_over_the_fast_path() {
    // One CA vouches for both daemons, so one trust setting fits both.
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "failover");
    let server = ca.server(pki.path(), "server", &["127.0.0.1"]);
    let config = pki.path().join("sluiced.toml");
    std::fs::write(
        &config,
        format!("[quic]\ncert = {:?}\nkey = {:?}\n", server.cert, server.key),
    )
    .unwrap();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let spec = |dir: &Path| {
        DaemonSpec::new(sluiced_bin!(), dir)
            .arg("--config")
            .arg(config.display().to_string())
    };
    let quic = QuicOptions {
        tls: ClientTls {
            trust: ServerTrust::CaFile(ca.pem.clone()),
            client_cert: None,
            server_name: None,
        },
        token: None,
    };
    fail_over(spec(da.path()), spec(db.path()), move |s| Target {
        addr: s.quic,
        transport: Transport::FastPath(quic.clone()),
    })
    .await;
}

/// `sluice publish` takes several daemons (a comma list, or `--to`
/// repeated) and fails over between them: here the first is down from the
/// start, and every message goes to the second.
#[test]
fn sluice_publish_takes_several_daemons_and_moves_past_one_that_is_down() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A is never started: nothing answers at its address.
    let a = DaemonSpec::new(sluiced_bin!(), da.path()).insecure_lan();
    let b_spec = DaemonSpec::new(sluiced_bin!(), db.path()).insecure_lan();
    let b = b_spec.start();
    let (a_addr, b_addr) = (a.data.to_string(), b_spec.data.to_string());
    let list = format!("{a_addr},{b_addr}");
    let publish = |to: &[&str]| {
        let out = std::process::Command::new(sluice_tests::sluice_bin!())
            .args(["publish", "-s", STREAM, "--transport", "udp"])
            .args(to)
            .args(["--producer", "5", "--count", "500", "--size", "32"])
            .env_remove("SLUICE_ADDR")
            .output()
            .expect("run sluice publish");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "sluice publish failed: {err}");
        err
    };
    let first = publish(&["--to", &list]);
    assert!(first.contains("published 500 messages"), "{first}");
    assert!(first.contains("seqs 1..=500"), "{first}");
    // Repeated --to; the producer continues its numbering at B.
    let second = publish(&["--to", &a_addr, "--to", &b_addr]);
    assert!(second.contains("seqs 501..=1000"), "{second}");
    assert!(b.terminate(Duration::from_secs(15)).success());
    let stored: Vec<(u64, u64)> = check::stored(db.path(), STREAM);
    assert_eq!(
        stored,
        (1..=1000).map(|s| (5, s)).collect::<Vec<_>>(),
        "B holds every message once, in order"
    );
}
