//! A producer that publishes over the fast path and closes cleanly is not
//! an attack: every `sluice_fastpath_dropped_total` stays at 0, and so does
//! every `sluice_datagrams_dropped_total`, however the close's last
//! datagrams and the end of its QUIC connection race at the daemon.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_tests::daemon::DaemonSpec;
use sluice_tests::load;
use sluice_tests::sluiced_bin;
use sluice_transport::client::Producer;

const ROUNDS: u64 = 8;
const MESSAGES: u64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_that_close_cleanly_count_no_drop() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path());
    let d = spec.start();
    // Several producers, one after another and two at once: each close is
    // a chance for its last packets to arrive after its lease ended.
    for round in 0..ROUNDS {
        let mut tasks = Vec::new();
        for p in [2 * round + 1, 2 * round + 2] {
            let target = spec.fast_path();
            tasks.push(tokio::spawn(async move {
                let options = load::patient(target.transport);
                let prod = Producer::connect(target.addr, "closing", p, options)
                    .await
                    .unwrap();
                for i in 0..MESSAGES {
                    prod.send(Bytes::from(format!("p{p} m{i}"))).await.unwrap();
                }
                prod.close().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    // The daemon has had every datagram the producers sent once their
    // sessions are gone and their leases revoked.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = d.metrics();
        let done = m.value("sluice_leases", &[]) == 0.0
            && m.value("sluice_sessions", &[("stream", "closing")]) == 0.0;
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "leases or sessions left open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Late datagrams, if any were still on their way, land meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = d.metrics();
    assert_eq!(
        m.value("sluice_durable_acks_total", &[("stream", "closing")]),
        (2 * ROUNDS * MESSAGES) as f64
    );
    let drops: Vec<_> = m
        .samples
        .iter()
        .filter(|s| {
            (s.name == "sluice_fastpath_dropped_total"
                || s.name == "sluice_datagrams_dropped_total")
                && s.value != 0.0
        })
        .collect();
    assert!(drops.is_empty(), "a clean close counted drops: {drops:?}");
    // The family is there (the check above would pass on no samples).
    assert!(m
        .samples
        .iter()
        .any(|s| s.name == "sluice_fastpath_dropped_total"));
    assert!(d.terminate(Duration::from_secs(15)).success());
}
