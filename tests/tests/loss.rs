//! A lossy path: producers reach the daemon through the impairment relay,
//! which loses 5 % of datagrams each way and reorders and duplicates
//! others (this kernel has no netem). The guarantees are the same: every
//! acked message stored exactly once, in order; and the daemon's counters
//! show the repairs it made.

use std::time::Duration;

use rand::Rng;
use sluice_testkit::relay::{self, Impairment, RelayStats};
use sluice_tests::check;
use sluice_tests::daemon::{DaemonSpec, Target};
use sluice_tests::load;
use sluice_tests::sluiced_bin;
use sluice_transport::client::Transport;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_loss_with_reordering_and_duplication() {
    let seed = load::seeded("LOSS_SEED").random();
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path()).insecure_lan();
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
    // Raw UDP through the relay: the protocol's own recovery under loss.
    let through_relay = Target {
        addr: r.local_addr(),
        transport: Transport::Udp,
    };
    let plans = load::plans(&through_relay, "lossy", 4, EACH, 100);
    let acked = load::run_all(plans, Duration::from_secs(120)).await;
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
    check::exactly_once(&stored, &acked);
    eprintln!(
        "relay dropped {dropped}, duplicated {duplicated}, reordered {reordered}; \
         daemon sent {nacks} NACKs, got {repairs} repairs and {copies} copies, \
         acked {dups} resent messages again"
    );
}
