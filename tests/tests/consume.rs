//! Consumers end to end, against real `sluiced` processes: at-least-once
//! delivery across consumer crashes and `kill -9` of the daemon, redelivery
//! after the ack deadline, dead letters, isolation of a stalled group,
//! work sharing in a group, long polling, conflation and retention.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use sluice_daemon::api::consume::GroupList;
use sluice_daemon::consume::dead_letter;
use sluice_daemon::consume::service::GroupStats;
use sluice_tests::daemon::{Daemon, DaemonSpec};
use sluice_tests::load::{self, Plan};
use sluice_tests::{sluice_bin, sluiced_bin};
use sluice_transport::client::{Consumer, ConsumerOptions, Delivery, Producer};
use sluice_transport::quic::control::{ConsumeMode, StartAt};

/// Publishes `payloads` to `stream` as `producer` and waits until durable.
async fn publish(spec: &DaemonSpec, stream: &str, producer: u64, payloads: Vec<Bytes>) {
    let target = spec.fast_path();
    let p = Producer::connect(
        target.addr,
        stream,
        producer,
        load::patient(target.transport),
    )
    .await
    .expect("producer connects");
    p.send_batch(payloads).await.expect("published");
    p.close().await.expect("producer closes");
}

fn options(spec: &DaemonSpec, group: &str) -> ConsumerOptions {
    ConsumerOptions::new(spec.quic_options(None), group)
}

async fn consumer(spec: &DaemonSpec, stream: &str, o: ConsumerOptions) -> Consumer {
    Consumer::connect(spec.quic, stream, o)
        .await
        .expect("consumer connects")
}

/// The next delivery within `limit`.
async fn next(c: &mut Consumer, limit: Duration) -> Delivery {
    tokio::time::timeout(limit, c.next())
        .await
        .expect("a delivery in time")
        .expect("no error")
        .expect("not closed")
}

/// No delivery arrives within `quiet`.
async fn none_within(c: &mut Consumer, quiet: Duration) {
    if let Ok(d) = tokio::time::timeout(quiet, c.next()).await {
        panic!("expected no delivery, got {d:?}");
    }
}

fn groups(d: &Daemon) -> Vec<GroupStats> {
    let list: GroupList = serde_json::from_str(&d.get("/groups")).expect("GET /groups is JSON");
    list.groups
}

fn group_stats(d: &Daemon, stream: &str, group: &str) -> GroupStats {
    groups(d)
        .into_iter()
        .find(|g| g.stream == stream && g.group == group)
        .unwrap_or_else(|| panic!("group {stream}/{group} in /groups"))
}

fn payloads(prefix: &str, n: u64) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("{prefix}{i}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_after_the_deadline_then_dead_letter_after_max_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path())
        .arg("--consumers-ack-deadline")
        .arg("400ms")
        .arg("--consumers-max-deliveries")
        .arg("3");
    let daemon = spec.start();
    publish(&spec, "jobs", 1, payloads("job ", 2)).await;
    let mut c = consumer(&spec, "jobs", options(&spec, "workers")).await;
    assert_eq!(c.info().max_deliveries, 3);
    // Message 0 is never acked: it comes back after each deadline.
    let first = next(&mut c, Duration::from_secs(10)).await;
    assert_eq!((first.offset, first.delivery), (0, 1));
    let second = next(&mut c, Duration::from_secs(10)).await;
    assert_eq!((second.offset, second.delivery), (1, 1));
    second.ack();
    let started = Instant::now();
    let again = next(&mut c, Duration::from_secs(10)).await;
    let waited = started.elapsed();
    assert_eq!((again.offset, again.delivery), (0, 2));
    assert!(
        waited >= Duration::from_millis(200),
        "redelivered after {waited:?}, before the 400 ms deadline"
    );
    // The third delivery is nacked: that was its last chance.
    let third = next(&mut c, Duration::from_secs(10)).await;
    assert_eq!((third.offset, third.delivery), (0, 3));
    third.nack(Duration::ZERO);
    none_within(&mut c, Duration::from_millis(1200)).await;
    // The dead-letter stream has it, with its reason and history.
    let deadline = Instant::now() + Duration::from_secs(10);
    let page: serde_json::Value = loop {
        let page: serde_json::Value =
            serde_json::from_str(&daemon.get("/streams/jobs.dlq/records?from=0")).unwrap();
        if page["records"].as_array().is_some_and(|r| !r.is_empty()) {
            break page;
        }
        assert!(Instant::now() < deadline, "no dead letter: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let records = page["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{page}");
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(records[0]["payload"].as_str().unwrap())
        .unwrap();
    let letter = dead_letter::decode(&raw).expect("a dead-letter envelope");
    assert_eq!(letter.offset, 0);
    assert_eq!(letter.group, "workers");
    assert_eq!(letter.deliveries, 3);
    assert_eq!(&letter.payload[..], b"job 0");
    assert_eq!(letter.history.len(), 3, "{letter:?}");
    assert!(letter.reason.contains("3 deliveries"), "{}", letter.reason);
    // The group went on: both messages are done, nothing is out.
    c.sync().await.unwrap();
    let s = group_stats(&daemon, "jobs", "workers");
    assert_eq!(
        (s.floor, s.out, s.counters.dead_lettered),
        (2, 0, 1),
        "{s:?}"
    );
    let metrics = daemon.get("/metrics");
    assert!(
        metrics.contains("sluice_group_dead_lettered_total{stream=\"jobs\",group=\"workers\"} 1"),
        "{metrics}"
    );
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_the_largest_size_can_be_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path())
        .arg("--consumers-max-deliveries")
        .arg("1");
    let daemon = spec.start();
    let big = Bytes::from(vec![7u8; 16 << 20]);
    publish(&spec, "big", 1, vec![big]).await;
    let mut c = consumer(&spec, "big", options(&spec, "g")).await;
    let d = next(&mut c, Duration::from_secs(30)).await;
    assert_eq!(d.payload.len(), 16 << 20);
    d.nack(Duration::ZERO);
    c.sync().await.unwrap();
    // The dead-letter stream holds it: its durable end moves to 1.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list: serde_json::Value = serde_json::from_str(&daemon.get("/streams")).unwrap();
        let dlq = list["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "big.dlq")
            .map(|s| s["durable_end"].as_u64());
        if dlq == Some(Some(1)) {
            break;
        }
        assert!(Instant::now() < deadline, "no dead letter: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = group_stats(&daemon, "big", "g");
    assert_eq!((s.floor, s.counters.dead_lettered), (1, 1), "{s:?}");
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_deadline_holds_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path())
        .arg("--consumers-ack-deadline")
        .arg("300ms");
    let _daemon = spec.start();
    publish(&spec, "long", 1, payloads("work ", 1)).await;
    let mut c = consumer(&spec, "long", options(&spec, "g")).await;
    let d = next(&mut c, Duration::from_secs(10)).await;
    d.extend(Duration::from_secs(5));
    none_within(&mut c, Duration::from_millis(1200)).await;
    d.ack();
    c.sync().await.unwrap();
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_holds_back_neither_another_group_nor_producers() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path());
    let daemon = spec.start();
    publish(&spec, "feed", 9, payloads("warm ", 1)).await;
    // The slow group takes 10 messages and never acks them.
    let mut slow_options = options(&spec, "slow");
    slow_options.max_messages = 10;
    let mut slow = consumer(&spec, "feed", slow_options).await;
    let mut fast = consumer(&spec, "feed", options(&spec, "fast")).await;
    const N: u64 = 20_000;
    let producers = tokio::spawn({
        let plans = load::plans(&spec.fast_path(), "feed", 2, N / 2, 500);
        async move { load::run_all(plans, Duration::from_secs(120)).await }
    });
    let started = Instant::now();
    let mut got = 0;
    while got < N + 1 {
        let d = next(&mut fast, Duration::from_secs(60)).await;
        d.ack();
        got += 1;
    }
    let took = started.elapsed();
    let acked = producers.await.unwrap();
    assert_eq!(acked.values().map(|s| s.len() as u64).sum::<u64>(), N);
    fast.sync().await.unwrap();
    let mut held = Vec::new();
    while let Ok(Ok(Some(d))) = tokio::time::timeout(Duration::from_millis(300), slow.next()).await
    {
        held.push(d);
    }
    assert_eq!(held.len(), 10, "the slow member holds only its credit");
    let s = group_stats(&daemon, "feed", "slow");
    assert_eq!(s.out, 10, "{s:?}");
    assert_eq!(s.backlog_messages, N + 1, "{s:?}");
    assert!(s.oldest_unacked_seconds > 0.0, "{s:?}");
    let f = group_stats(&daemon, "feed", "fast");
    assert_eq!((f.backlog_messages, f.floor), (0, N + 1), "{f:?}");
    eprintln!("fast group took all {N} messages in {took:?} beside a stalled group");
    slow.close().await;
    fast.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_backpressure_holds_producers_at_its_backlog_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluiced.toml");
    std::fs::write(
        &config,
        "[[consumers.groups]]\nstream = \"orders\"\ngroup = \"ledger\"\nmax_backlog = 200\n",
    )
    .unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path())
        .arg("--config")
        .arg(config.display().to_string());
    let daemon = spec.start();
    // 1,000 messages in batches of 10, one batch every 20 ms: unheld, the
    // producer is done in about 2 s. (Unpaced, it could send all of them
    // within its credit before the group's hold reaches it.)
    let target = spec.fast_path();
    let p = Producer::connect(target.addr, "orders", 1, load::patient(target.transport))
        .await
        .expect("producer connects");
    let producer = tokio::spawn(async move {
        let mut durable = 0;
        for batch in payloads("m", 1_000).chunks(10) {
            let seqs = p.send_batch(batch.to_vec()).await.expect("published");
            durable += seqs.end - seqs.start;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        p.close().await.expect("producer closes");
        durable
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!producer.is_finished(), "the producer was not held back");
    // Held at the limit, past it by at most the credit the producer held
    // when the hold began.
    let s = group_stats(&daemon, "orders", "ledger");
    assert!(
        (200..1_000).contains(&s.backlog_messages),
        "held at the limit: {s:?}"
    );
    // Nobody has read the group yet: the age of its oldest message comes
    // from the record at its floor, sent about 4 s ago.
    assert!(
        (3.0..60.0).contains(&s.oldest_unacked_seconds),
        "age of the unread floor: {s:?}"
    );
    // The group catches up: the producer finishes.
    let mut c = consumer(&spec, "orders", options(&spec, "ledger")).await;
    let mut n = 0;
    while n < 1_000 {
        next(&mut c, Duration::from_secs(30)).await.ack();
        n += 1;
    }
    let durable = tokio::time::timeout(Duration::from_secs(30), producer)
        .await
        .expect("the producer finishes once the group drains")
        .unwrap();
    assert_eq!(durable, 1_000);
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_share_a_group_and_hand_back_what_they_held_when_they_leave() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path());
    let daemon = spec.start();
    const N: u64 = 3_000;
    publish(&spec, "work", 1, payloads("w", N)).await;
    let mut o = options(&spec, "pool");
    o.max_messages = 50;
    let mut a = consumer(&spec, "work", o.clone()).await;
    let mut b = consumer(&spec, "work", o.clone()).await;
    // A takes a batch and leaves without acking it.
    let mut a_held = BTreeSet::new();
    for _ in 0..50 {
        a_held.insert(next(&mut a, Duration::from_secs(10)).await.offset);
    }
    drop(a);
    let mut done: HashMap<u64, &str> = HashMap::new();
    let mut c: Option<Consumer> = None;
    let mut by_b = 0;
    let mut by_c = 0;
    while (done.len() as u64) < N {
        // C joins halfway.
        if c.is_none() && done.len() as u64 >= N / 2 {
            c = Some(consumer(&spec, "work", o.clone()).await);
        }
        let d = match c.as_mut() {
            Some(c) => tokio::select! {
                d = next(&mut b, Duration::from_secs(20)) => { by_b += 1; (d, "b") }
                d = next(c, Duration::from_secs(20)) => { by_c += 1; (d, "c") }
            },
            None => {
                by_b += 1;
                (next(&mut b, Duration::from_secs(20)).await, "b")
            }
        };
        let (d, who) = d;
        if let Some(prev) = done.insert(d.offset, who) {
            panic!(
                "offset {} delivered to {who} after {prev} acked it",
                d.offset
            );
        }
        if a_held.contains(&d.offset) {
            assert_eq!(d.delivery, 2, "handed back by the member that left");
        }
        d.ack();
    }
    assert!(by_c > 0 && by_b > 0, "work is shared: b {by_b}, c {by_c}");
    b.sync().await.unwrap();
    let s = group_stats(&daemon, "work", "pool");
    assert_eq!((s.floor, s.backlog_messages), (N, 0), "{s:?}");
    assert!(s.counters.redelivered >= 50, "{s:?}");
    eprintln!("shared: b took {by_b}, c took {by_c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_returns_as_soon_as_a_message_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path());
    let _daemon = spec.start();
    publish(&spec, "poll", 1, payloads("first ", 1)).await;
    let mut o = options(&spec, "pullers");
    o.mode = ConsumeMode::Pull;
    let mut c = consumer(&spec, "poll", o).await;
    let got = c.fetch(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.len(), 1);
    got[0].ack();
    // Nothing there: the wait runs out.
    let started = Instant::now();
    let got = c.fetch(10, Duration::from_millis(600)).await.unwrap();
    let waited = started.elapsed();
    assert!(got.is_empty());
    assert!(
        waited >= Duration::from_millis(500),
        "returned empty after {waited:?}"
    );
    // Something arrives during a long wait: the fetch returns with it.
    let fetch = tokio::spawn(async move {
        let started = Instant::now();
        let got = c.fetch(10, Duration::from_secs(20)).await.unwrap();
        (got, started.elapsed(), c)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let published = Instant::now();
    publish(&spec, "poll", 2, payloads("late ", 1)).await;
    let (got, waited, c) = fetch.await.unwrap();
    let since_publish = published.elapsed();
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"late 0");
    assert!(
        waited < Duration::from_secs(10),
        "the fetch waited {waited:?} of 20 s"
    );
    eprintln!("long poll returned {since_publish:?} after the publish began");
    got[0].ack();
    c.sync().await.unwrap();
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_delay_past_the_longest_extension_is_cut_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path())
        .arg("--consumers-max-ack-extension")
        .arg("1s");
    let _daemon = spec.start();
    publish(&spec, "parked", 1, payloads("m", 1)).await;
    let mut c = consumer(&spec, "parked", options(&spec, "g")).await;
    let first = next(&mut c, Duration::from_secs(10)).await;
    // Duration::MAX goes on the wire as 2^64 - 1 ms.
    first.nack(Duration::MAX);
    let nacked = Instant::now();
    let again = next(&mut c, Duration::from_secs(10)).await;
    assert_eq!((again.offset, again.delivery), (first.offset, 2));
    assert!(
        nacked.elapsed() >= Duration::from_millis(800),
        "came back after {:?}",
        nacked.elapsed()
    );
    again.ack();
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_gets_at_most_a_members_message_credit() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path())
        .arg("--consumers-max-member-messages")
        .arg("5");
    let _daemon = spec.start();
    publish(&spec, "pulled", 1, payloads("m", 20)).await;
    let mut o = options(&spec, "pullers");
    o.mode = ConsumeMode::Pull;
    let mut c = consumer(&spec, "pulled", o).await;
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        let got = c.fetch(1_000_000, Duration::from_secs(5)).await.unwrap();
        assert!(
            (1..=5).contains(&got.len()),
            "a fetch of a million got {}",
            got.len()
        );
        for d in &got {
            assert!(seen.insert(d.offset), "offset {} twice", d.offset);
            d.ack();
        }
        if seen.len() == 20 {
            break;
        }
    }
    assert!(seen.len() >= 4, "four fetches got {}", seen.len());
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflating_group_that_fell_behind_gets_the_latest_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluiced.toml");
    std::fs::write(
        &config,
        "[[consumers.groups]]\nstream = \"prices\"\ngroup = \"latest\"\n\
         conflate = \"latest_per_key\"\nconflate_key = \"delimiter:=\"\n",
    )
    .unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path())
        .arg("--config")
        .arg(config.display().to_string());
    let daemon = spec.start();
    let mut msgs = Vec::new();
    for i in 0..200 {
        for key in ["a", "b", "c"] {
            msgs.push(Bytes::from(format!("{key}={i}")));
        }
    }
    publish(&spec, "prices", 1, msgs).await;
    let mut latest = consumer(&spec, "prices", options(&spec, "latest")).await;
    let mut every = consumer(&spec, "prices", options(&spec, "every")).await;
    let mut seen = BTreeMap::new();
    let mut count = 0;
    loop {
        let d = match tokio::time::timeout(Duration::from_millis(800), latest.next()).await {
            Ok(d) => d.unwrap().unwrap(),
            Err(_) => break,
        };
        let text = String::from_utf8(d.payload.to_vec()).unwrap();
        let (k, v) = text.split_once('=').unwrap();
        seen.insert(k.to_owned(), v.parse::<u32>().unwrap());
        count += 1;
        d.ack();
    }
    assert_eq!(
        seen,
        BTreeMap::from([("a".into(), 199), ("b".into(), 199), ("c".into(), 199)])
    );
    assert!(count < 600, "conflated: {count} of 600 delivered");
    for _ in 0..600 {
        next(&mut every, Duration::from_secs(10)).await.ack();
    }
    latest.sync().await.unwrap();
    let s = group_stats(&daemon, "prices", "latest");
    assert_eq!(s.counters.conflated + count, 600, "{s:?}");
    assert_eq!(s.backlog_messages, 0, "{s:?}");
    latest.close().await;
    every.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_what_a_retaining_group_has_not_acked() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluiced.toml");
    std::fs::write(
        &config,
        "[spool]\nsegment_bytes = 1048576\nretention_bytes = 1048576\n\
         [[consumers.groups]]\nstream = \"logs\"\ngroup = \"archive\"\nretain_until_acked = true\n",
    )
    .unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path())
        .arg("--config")
        .arg(config.display().to_string());
    let daemon = spec.start();
    // About 4 MiB: four segments, three over the retention bound.
    let big: Vec<Bytes> = (0..1000)
        .map(|i| Bytes::from(format!("{i:08} {}", "x".repeat(4000))))
        .collect();
    publish(&spec, "logs", 1, big).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first = |d: &Daemon| -> u64 {
        let page: serde_json::Value =
            serde_json::from_str(&d.get("/streams/logs/records?from=0&limit=1")).unwrap();
        page["records"][0]["offset"].as_u64().unwrap()
    };
    assert_eq!(
        first(&daemon),
        0,
        "retention kept what the group has not acked"
    );
    let mut c = consumer(&spec, "logs", options(&spec, "archive")).await;
    for _ in 0..1000 {
        next(&mut c, Duration::from_secs(10)).await.ack();
    }
    c.sync().await.unwrap();
    // The floor reaches the stream's cursor within a second or so, then
    // retention deletes the old segments.
    let deadline = Instant::now() + Duration::from_secs(15);
    while first(&daemon) == 0 {
        assert!(
            Instant::now() < deadline,
            "retention never ran after the acks"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synced_acks_survive_kill_9_and_unacked_messages_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path());
    let daemon = spec.start();
    publish(&spec, "orders", 1, payloads("o", 100)).await;
    let mut o = options(&spec, "billing");
    o.max_messages = 100;
    let mut c = consumer(&spec, "orders", o.clone()).await;
    let mut acked = BTreeSet::new();
    for _ in 0..100 {
        let d = next(&mut c, Duration::from_secs(10)).await;
        if d.offset % 3 != 0 {
            d.ack();
            acked.insert(d.offset);
        }
    }
    c.sync().await.unwrap();
    daemon.kill9();
    let _daemon = spec.start();
    // The same consumer reconnects by itself; what it did not ack comes back.
    let mut again = BTreeSet::new();
    while again.len() < 34 {
        let d = next(&mut c, Duration::from_secs(30)).await;
        assert!(
            !acked.contains(&d.offset),
            "offset {} was acked and synced before the kill, delivered again",
            d.offset
        );
        again.insert(d.offset);
        d.ack();
    }
    assert_eq!(again, (0..100).filter(|o| o % 3 == 0).collect());
    c.sync().await.unwrap();
    none_within(&mut c, Duration::from_millis(500)).await;
    c.close().await;
}

/// A `sluice consume` process printing `offset\tdelivery\tproducer\tseq\tpayload`
/// lines into `out`.
fn consume_process(spec: &DaemonSpec, stream: &str, group: &str, out: &std::path::Path) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .unwrap();
    Command::new(sluice_bin!())
        .args([
            "consume",
            stream,
            "--group",
            group,
            "--print",
            "line",
            "--to",
            &spec.quic.to_string(),
            "--server-cert",
            &spec.server_cert().display().to_string(),
        ])
        .env("SLUICE_LOG", "error")
        .stdout(file)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start sluice consume")
}

/// The (producer, seq) of every line a consumer process printed; lines cut
/// by a kill are ignored.
fn processed(out: &std::path::Path) -> BTreeSet<(u64, u64)> {
    let f = std::fs::File::open(out).unwrap();
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() >= 5).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_across_consumer_crashes_and_daemon_kill_9() {
    let mut rng = load::seeded("CONSUME_SEED");
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path())
        .arg("--consumers-ack-deadline")
        .arg("2s");
    let mut daemon = Some(spec.start());
    let out = dir.path().join("consumed.txt");
    let target = spec.fast_path();
    let acked: Arc<Mutex<sluice_tests::check::Acked>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Producers publish through every kill, until told to stop.
    let producers: Vec<_> = (1..=3u64)
        .map(|p| {
            let plan = Plan {
                addr: target.addr,
                stream: "events".into(),
                producer: p,
                count: u64::MAX,
                batch: 20,
                options: load::patient(target.transport.clone()),
            };
            tokio::spawn(load::run(plan, acked.clone(), stop.clone()))
        })
        .collect();
    let mut consumers = vec![
        consume_process(&spec, "events", "etl", &out),
        consume_process(&spec, "events", "etl", &out),
    ];
    for round in 0..10 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..700))).await;
        if round % 2 == 0 {
            // A consumer dies without a word; another takes its place.
            let i = rng.random_range(0..consumers.len());
            let mut victim = consumers.swap_remove(i);
            victim.kill().unwrap();
            victim.wait().unwrap();
            consumers.push(consume_process(&spec, "events", "etl", &out));
        } else {
            daemon.take().expect("running").kill9();
            daemon = Some(spec.start());
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in producers {
        tokio::time::timeout(Duration::from_secs(120), p)
            .await
            .expect("producers finish")
            .unwrap()
            .expect("producers ride out the kills");
    }
    let acked = acked.lock().unwrap().clone();
    let want: BTreeSet<(u64, u64)> = acked
        .iter()
        .flat_map(|(&p, seqs)| seqs.iter().map(move |&s| (p, s)))
        .collect();
    // Every durable message is processed: wait for the consumers to catch up.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = processed(&out);
        let missing: Vec<_> = want.difference(&got).take(5).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} durable messages never processed, e.g. {missing:?}",
            want.difference(&got).count(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lines = std::fs::read_to_string(&out).unwrap().lines().count();
    eprintln!(
        "{} durable messages all processed; {} lines printed ({} again after crashes)",
        want.len(),
        lines,
        lines - want.len()
    );
    for mut c in consumers {
        let _ = c.kill();
        let _ = c.wait();
    }
    let d = daemon.take().unwrap();
    let s = group_stats(&d, "events", "etl");
    assert_eq!(s.counters.dead_lettered, 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_starts_where_it_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path());
    let _daemon = spec.start();
    publish(&spec, "s", 1, payloads("m", 10)).await;
    let mut o = options(&spec, "from-six");
    o.start = StartAt::Offset(6);
    let mut c = consumer(&spec, "s", o).await;
    assert_eq!(next(&mut c, Duration::from_secs(10)).await.offset, 6);
    let mut o = options(&spec, "from-now");
    o.start = StartAt::Latest;
    let mut late = consumer(&spec, "s", o).await;
    none_within(&mut late, Duration::from_millis(300)).await;
    publish(&spec, "s", 2, payloads("n", 1)).await;
    assert_eq!(next(&mut late, Duration::from_secs(10)).await.offset, 10);
    // Refusals: a stream that does not exist, a bad group name.
    let e = Consumer::connect(spec.quic, "nope", options(&spec, "g"))
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("nope"), "{e}");
    let e = Consumer::connect(spec.quic, "s", options(&spec, "../etc"))
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("group"), "{e}");
}
