//! A full disk stops acks and pushes back on producers; it never loses or
//! corrupts anything. Here the daemon's free-space floor is set above what
//! the disk has, so the spool holds appends as it would on a full disk.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_tests::check;
use sluice_tests::daemon::{Daemon, DaemonSpec};
use sluice_tests::load;
use sluice_tests::sluiced_bin;
use sluice_transport::client::{Producer, ProducerError, ProducerOptions};

/// A daemon whose free-space floor is above what any disk has (so the
/// spool holds appends as on a full disk), and producer options that give
/// up waiting for credit after 1 s.
fn full_disk(dir: &Path) -> (DaemonSpec, Daemon, ProducerOptions) {
    let mut full = DaemonSpec::new(sluiced_bin!(), dir)
        .arg("--spool-min-free-bytes")
        .arg((1u64 << 62).to_string());
    full.log_file = Some(dir.join("sluiced.log"));
    let d = full.start();
    let options = ProducerOptions {
        credit_timeout: Duration::from_secs(1),
        ..load::patient(full.fast_path().transport)
    };
    (full, d, options)
}

/// Space returns: the daemon started again on the same addresses, without
/// the floor.
fn space_returned(full: &DaemonSpec, dir: &Path) -> Daemon {
    let mut spec = DaemonSpec::new(sluiced_bin!(), dir);
    spec.data = full.data;
    spec.quic = full.quic;
    spec.admin = full.admin;
    spec.start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_acks_times_out_senders_and_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (full, d, options) = full_disk(dir.path());
    let fast = full.fast_path();
    let p = Producer::connect(fast.addr, "held", 5, options)
        .await
        .unwrap();
    let started = Instant::now();
    let e = p.send(Bytes::from_static(b"kept")).await.unwrap_err();
    assert_eq!(e, ProducerError::CreditTimeout(Duration::from_secs(1)));
    assert!(started.elapsed() < Duration::from_secs(5));

    // Operators see it: unhealthy, disk full, no credit.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = d.metrics();
        let l = [("stream", "held")];
        if m.value("sluice_spool_disk_full", &l) == 1.0 && m.value("sluice_credit", &l) == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no disk-full signs in the metrics"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = ureq::get(&format!("http://{}/health", d.admin)).call();
    match health {
        Err(ureq::Error::Status(503, r)) => {
            let body = r.into_string().unwrap();
            assert!(
                body.contains("disk full") && body.contains("held"),
                "{body}"
            );
        }
        other => panic!("health with a full disk: {other:?}"),
    }
    // And its log says why, once.
    let log = std::fs::read_to_string(dir.path().join("sluiced.log")).unwrap();
    let said = log
        .matches("free space below spool.min_free_bytes: holding appends")
        .count();
    assert_eq!(said, 1, "the hold is logged once when it begins:\n{log}");

    // Space returns (here: the daemon restarts without the floor). The
    // producer, still running, reconnects and its queued message is stored
    // once.
    d.kill9();
    assert!(
        check::stored(dir.path(), "held").is_empty(),
        "nothing was durable"
    );
    let d = space_returned(&full, dir.path());
    tokio::time::timeout(Duration::from_secs(30), p.flush())
        .await
        .expect("flush in time")
        .expect("the queued message becomes durable");
    let seq = p.send(Bytes::from_static(b"after")).await.unwrap();
    assert_eq!(seq, 2);
    p.close().await.unwrap();
    assert!(d.terminate(Duration::from_secs(15)).success());
    let stored = check::records(dir.path(), "held");
    let got: Vec<(u64, &[u8])> = stored.iter().map(|r| (r.seq, &r.payload[..])).collect();
    assert_eq!(got, vec![(1, &b"kept"[..]), (2, &b"after"[..])]);
}

/// While the spool holds a stream's appends (the disk full), its writer
/// waits; a new producer's HELLO must not wait with it: the endpoint that
/// answers it serves every other session too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_writer_holds_neither_a_new_session_nor_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let (full, d, options) = full_disk(dir.path());
    let fast = full.fast_path();
    let first = Producer::connect(fast.addr, "held", 5, options.clone())
        .await
        .unwrap();
    let _ = first.send(Bytes::from_static(b"kept")).await;
    // The writer is in its wait now: the message is with it, held.
    let deadline = Instant::now() + Duration::from_secs(10);
    while d
        .metrics()
        .value("sluice_spool_disk_full", &[("stream", "held")])
        != 1.0
    {
        assert!(Instant::now() < deadline, "the disk never looked full");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A new producer on the same stream, and one on another: answered.
    let mut later = Vec::new();
    for (stream, producer) in [("held", 6), ("other", 7)] {
        let asked = Instant::now();
        let p = tokio::time::timeout(
            Duration::from_secs(4),
            Producer::connect(fast.addr, stream, producer, options.clone()),
        )
        .await
        .unwrap_or_else(|_| panic!("the HELLO of producer {producer} is not answered"))
        .expect("connects");
        eprintln!("producer {producer} connected in {:?}", asked.elapsed());
        later.push(p);
    }
    // Past the idle timeout (10 s): every session kept its heartbeats.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(d.metrics().value("sluice_sessions", &[]), 3.0);

    // Space returns: what was held is stored, once.
    d.kill9();
    let d = space_returned(&full, dir.path());
    tokio::time::timeout(Duration::from_secs(30), first.flush())
        .await
        .expect("flush in time")
        .expect("the held message becomes durable");
    first.close().await.unwrap();
    for p in later {
        p.close().await.unwrap();
    }
    assert!(d.terminate(Duration::from_secs(15)).success());
    let stored = check::records(dir.path(), "held");
    let got: Vec<(u64, &[u8])> = stored.iter().map(|r| (r.seq, &r.payload[..])).collect();
    assert_eq!(got, vec![(1, &b"kept"[..])]);
}
