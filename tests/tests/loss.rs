//! A lossy path: producers reach the daemon through the impairment relay,
//! which loses 5 % of datagrams each way and reorders and duplicates
//! others (this kernel has no netem). The guarantees are the same: every
//! acked message stored exactly once, in order; and the daemon's counters
//! show the repairs it made.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_tests::check::{self, Acked};
use sluice_tests::daemon::DaemonSpec;
use sluice_tests::load::{self, Plan};
use sluice_tests::sluiced_bin;
use sluice_transport::relay::{self, Impairment, RelayStats};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_loss_with_reordering_and_duplication() {
    let seed = std::env::var("LOSS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("relay seed {seed} (replay: LOSS_SEED={seed})");
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path());
    let d = spec.start();
    let r = relay::start(
        "127.0.0.1:0".parse().unwrap(),
        spec.data,
        Impairment::lossy(0.05),
        Impairment::lossy(0.05),
        seed,
    )
    .await
    .unwrap();
    const EACH: u64 = 20_000;
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (1..=4u64)
        .map(|p| {
            let plan = Plan {
                addr: r.local_addr(),
                stream: "lossy".into(),
                producer: p,
                count: EACH,
                batch: 100,
                options: load::patient(),
            };
            tokio::spawn(load::run(plan, acked.clone(), stop.clone()))
        })
        .collect();
    for t in tasks {
        let sent = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("producers finish in time")
            .expect("producer task")
            .expect("producer");
        assert_eq!(sent, EACH);
    }
    let s = r.stats();
    let (dropped, duplicated, reordered) = (
        RelayStats::get(&s.dropped),
        RelayStats::get(&s.duplicated),
        RelayStats::get(&s.reordered),
    );
    assert!(
        dropped > 100 && duplicated > 10 && reordered > 10,
        "the relay impaired little: {s:?}"
    );
    let m = d.metrics();
    let l = [("stream", "lossy")];
    let retransmits = |kind| {
        m.value(
            "sluice_retransmits_received_total",
            &[("stream", "lossy"), ("kind", kind)],
        )
    };
    let (nacks, repairs, copies, dups) = (
        m.value("sluice_nacks_sent_total", &l),
        retransmits("repair"),
        retransmits("copy"),
        m.value("sluice_duplicates_total", &l),
    );
    assert!(nacks > 0.0, "no NACKs under 5 % loss");
    assert!(repairs > 0.0, "no gap repaired under 5 % loss");
    assert_eq!(m.value("sluice_durable_acks_total", &l), (4 * EACH) as f64);
    let status = d.terminate(Duration::from_secs(15));
    assert!(status.success());
    let stored = check::stored(dir.path(), "lossy");
    assert_eq!(stored.len() as u64, 4 * EACH);
    check::exactly_once(&stored, &acked.lock().unwrap());
    eprintln!(
        "relay dropped {dropped}, duplicated {duplicated}, reordered {reordered}; \
         daemon sent {nacks} NACKs, got {repairs} repairs and {copies} copies, \
         acked {dups} resent messages again"
    );
}
