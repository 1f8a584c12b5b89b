//! End to end with a real `sluiced`: producers publish through the client
//! library over loopback UDP with `fsync = always`; afterwards the spool's
//! files are read back and every acked (producer, seq) must be there
//! exactly once, in per-producer order.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_tests::check::{self, Acked};
use sluice_tests::daemon::DaemonSpec;
use sluice_tests::load::{self, plans};
use sluice_tests::sluiced_bin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_messages_all_acked_all_stored_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path());
    let d = spec.start();
    const PRODUCERS: u64 = 8;
    const EACH: u64 = 125_000;
    let started = Instant::now();
    let acked = load::run_all(
        plans(&spec.fast_path(), "events", PRODUCERS, EACH, 1_000),
        Duration::from_secs(300),
    )
    .await;
    let took = started.elapsed();
    let m = d.metrics();
    assert_eq!(
        m.value("sluice_durable_acks_total", &[("stream", "events")]),
        (PRODUCERS * EACH) as f64
    );
    let status = d.terminate(Duration::from_secs(15));
    assert!(status.success(), "sluiced exit status {status}");
    let stored = check::stored(dir.path(), "events");
    assert_eq!(stored.len() as u64, PRODUCERS * EACH);
    check::exactly_once(&stored, &acked);
    for (p, seqs) in &acked {
        assert_eq!(seqs.len() as u64, EACH, "producer {p}");
    }
    eprintln!(
        "{} messages durable in {took:?} ({:.0}/s, debug build)",
        PRODUCERS * EACH,
        (PRODUCERS * EACH) as f64 / took.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_fifty_six_sessions_at_once_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path());
    let d = spec.start();
    const PRODUCERS: u64 = 256;
    const EACH: u64 = 2_000;
    // Connect all first, so that all sessions are open at once.
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let barrier = Arc::new(tokio::sync::Barrier::new(PRODUCERS as usize + 1));
    let mut tasks = Vec::new();
    for plan in plans(&spec.fast_path(), "many", PRODUCERS, EACH, 100) {
        let (acked, barrier) = (acked.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let p = sluice_transport::client::Producer::connect(
                plan.addr,
                &plan.stream,
                plan.producer,
                plan.options.clone(),
            )
            .await
            .expect("connect");
            barrier.wait().await;
            for start in (0..plan.count).step_by(plan.batch as usize) {
                let batch = (start..start + plan.batch)
                    .map(|i| load::payload(plan.producer, i))
                    .collect();
                let seqs = p.send_batch(batch).await.expect("send");
                acked
                    .lock()
                    .unwrap()
                    .entry(plan.producer)
                    .or_default()
                    .extend(seqs);
            }
            // Stay connected until everyone is done, then leave.
            barrier.wait().await;
            p.close().await.expect("close");
        }));
    }
    barrier.wait().await;
    // Every session is open now.
    let open = d.metrics().value("sluice_sessions", &[("stream", "many")]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = open;
    while seen < PRODUCERS as f64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = d.metrics().value("sluice_sessions", &[("stream", "many")]);
    }
    assert_eq!(seen, PRODUCERS as f64, "sessions open at once");
    barrier.wait().await;
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("producers finish in time")
            .expect("producer task");
    }
    let rss = d.peak_rss();
    let status = d.terminate(Duration::from_secs(15));
    assert!(status.success());
    let acked = acked.lock().unwrap().clone();
    let stored = check::stored(dir.path(), "many");
    assert_eq!(stored.len() as u64, PRODUCERS * EACH);
    check::exactly_once(&stored, &acked);
    // 256 sessions must not cost the daemon more than a modest amount.
    assert!(
        rss < 512 << 20,
        "sluiced peaked at {} MiB with {PRODUCERS} sessions",
        rss >> 20
    );
    eprintln!("{PRODUCERS} sessions: sluiced peak RSS {} MiB", rss >> 20);
}

/// SIGTERM under load: the daemon stops taking data, makes durable and acks
/// what it has, closes the sessions and exits 0 quickly. Producers ride it
/// out and finish against the restarted daemon; nothing acked is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_producers_resume_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path());
    let d = spec.start();
    const EACH: u64 = 40_000;
    let run = tokio::spawn(load::run_all(
        plans(&spec.fast_path(), "drain", 4, EACH, 200),
        Duration::from_secs(120),
    ));
    // Let some data flow, then stop the daemon under load.
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.metrics().value("sluice_durable_acks_total", &[]) < 10_000.0 {
        assert!(Instant::now() < deadline, "no data flowed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = Instant::now();
    let status = d.terminate(Duration::from_secs(15));
    let took = stopping.elapsed();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(took < Duration::from_secs(5), "drain took {took:?}");
    let mid = check::stored(dir.path(), "drain").len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = spec.start();
    let acked = run.await.expect("producers");
    let status = d.terminate(Duration::from_secs(15));
    assert!(status.success());
    let stored = check::stored(dir.path(), "drain");
    assert_eq!(stored.len() as u64, 4 * EACH);
    check::exactly_once(&stored, &acked);
    eprintln!(
        "stopped in {took:?} with {mid} stored; all {} stored after restart",
        4 * EACH
    );
}

/// With `streams.auto_create = false`, only configured streams take data;
/// a producer for any other stream gets a clear refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_come_from_the_config_when_auto_create_is_off() {
    use bytes::Bytes;
    use sluice_transport::client::{Producer, ProducerError};
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path())
        .arg("--streams-auto-create")
        .arg("false")
        .arg("--streams")
        .arg("orders,audit");
    let d = spec.start();
    let fast = spec.fast_path();
    let e = Producer::connect(fast.addr, "other", 1, load::patient(fast.transport.clone()))
        .await
        .unwrap_err();
    match e {
        ProducerError::Rejected(reason) => {
            assert!(
                reason.contains("other") && reason.contains("auto_create"),
                "{reason}"
            )
        }
        e => panic!("expected a refusal, got {e:?}"),
    }
    let p = Producer::connect(fast.addr, "audit", 1, load::patient(fast.transport))
        .await
        .unwrap();
    assert_eq!(p.send(Bytes::from_static(b"ok")).await.unwrap(), 1);
    p.close().await.unwrap();
    let listed = d.get("/streams");
    assert!(
        listed.contains("\"orders\"") && listed.contains("\"audit\""),
        "{listed}"
    );
    assert!(!listed.contains("other"), "{listed}");
    assert!(d.terminate(Duration::from_secs(15)).success());
    assert_eq!(check::stored(dir.path(), "audit"), vec![(1, 1)]);
}
