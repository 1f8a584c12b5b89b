//! The promise under `kill -9`: producers publish while the daemon is
//! killed with SIGKILL at random moments and restarted, 20 times. Every
//! (producer, seq) a producer saw acked must be stored exactly once. Run
//! over the fast path (sealed raw UDP under a QUIC lease) and over QUIC.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use sluice_tests::check::{self, Acked};
use sluice_tests::daemon::{DaemonSpec, Target};
use sluice_tests::load::{self, Plan};
use sluice_tests::sluiced_bin;

const ROUNDS: usize = 20;

async fn kill_9_loop(path: impl Fn(&DaemonSpec) -> Target) {
    let mut rng = load::seeded("CRASH_SEED");
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path());
    let mut daemon = Some(spec.start());
    let target = path(&spec);
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (1..=4u64)
        .map(|p| {
            let plan = Plan {
                addr: target.addr,
                stream: "crash".into(),
                producer: p,
                count: u64::MAX,
                batch: 50,
                options: load::patient(target.transport.clone()),
            };
            tokio::spawn(load::run(plan, acked.clone(), stop.clone()))
        })
        .collect();
    let mut acked_before_kill = Vec::new();
    for _ in 0..ROUNDS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..500))).await;
        daemon.take().expect("running").kill9();
        acked_before_kill.push(
            acked
                .lock()
                .unwrap()
                .values()
                .map(|s| s.len())
                .sum::<usize>(),
        );
        daemon = Some(spec.start());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("producers stop in time")
            .expect("producer task")
            .expect("producer kept going through the kills");
    }
    let status = daemon
        .take()
        .expect("running")
        .terminate(Duration::from_secs(15));
    assert!(status.success());
    let acked = acked.lock().unwrap().clone();
    let total: usize = acked.values().map(|s| s.len()).sum();
    // Progress between kills, not only at the end.
    let progressed = acked_before_kill.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(
        progressed >= ROUNDS / 2,
        "acks advanced between only {progressed} of {ROUNDS} kills: {acked_before_kill:?}"
    );
    check::exactly_once(&check::stored(dir.path(), "crash"), &acked);
    eprintln!("{ROUNDS} kill -9 rounds, {total} acked messages, all stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acked_message_on_the_fast_path() {
    kill_9_loop(DaemonSpec::fast_path).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acked_message_over_quic() {
    kill_9_loop(DaemonSpec::quic_path).await;
}
