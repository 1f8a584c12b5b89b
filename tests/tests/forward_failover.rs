//! Failover into JetStream (issue 21): two daemons forward one stream to
//! one R3 JetStream stream with `ack = "replicated"`; one producer given
//! both publishes 20,000 messages; the first daemon is killed with
//! `kill -9` for good mid-run and the producer finishes through the
//! second. Every message the producer saw acked must be in JetStream
//! exactly once, in the producer's order: what the first daemon forwarded
//! before it died is skipped by the second (it reads where the producer
//! stands in the target), what it had not is sent by the second.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::Context;
use futures_util::StreamExt;
use sluice_testkit::nats::{require_nats_server, Cluster};
use sluice_tests::daemon::DaemonSpec;
use sluice_tests::failover::{Run, Sent};
use sluice_tests::forward::{self, connect};
use sluice_tests::load;
use sluice_tests::sluiced_bin;
use sluice_transport::client::{Producer, ProducerOptions};
use sluice_transport::proto::SenderConfig;

const STREAM: &str = "orders";
const TARGET: &str = "SLUICE";
const PRODUCER: u64 = 31;
const TOTAL: u64 = 20_000;
/// Batches of 200, 8 in flight; the first daemon dies after 6,000 acks.
const RUN: Run = Run {
    total: TOTAL,
    batch: 200,
    in_flight: 8,
    kill_after: 6_000,
    ack_within: Duration::from_secs(90),
};

fn spec(dir: &Path, servers: &[String]) -> DaemonSpec {
    let config = forward::write_config(
        dir,
        STREAM,
        servers,
        TARGET,
        "create = true\nreplicas = 3\nack = \"replicated\"",
    );
    forward::spec(sluiced_bin!(), dir, &config).insecure_lan()
}

/// A producer that notices a dead daemon within about a second, and
/// waits for replicated acks as long as the test may take.
fn options(spec: &DaemonSpec) -> ProducerOptions {
    ProducerOptions {
        sender: SenderConfig {
            heartbeat_interval: Duration::from_millis(100),
            idle_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(2),
            ..SenderConfig::default()
        },
        max_reconnects: 20,
        unreachable_timeout: Some(Duration::from_secs(60)),
        ..load::patient(spec.udp().transport)
    }
}

/// The producer's seqs in the target stream, in the stream's order.
async fn seqs_in_jetstream(js: &Context) -> Vec<u64> {
    let mut stream = js.get_stream(TARGET).await.expect("the target stream");
    let n = stream.info().await.expect("stream info").state.messages;
    let consumer = stream
        .create_consumer(OrderedConfig::default())
        .await
        .expect("an ordered consumer");
    let mut messages = consumer.messages().await.expect("its messages");
    let mut seqs = Vec::new();
    for i in 0..n {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap_or_else(|_| panic!("message {i} of {n} not read in 10 s"))
            .expect("a message")
            .expect("a message, not an error");
        let h = m.headers.as_ref().expect("the forwarder's headers");
        let field = |name: &str| -> u64 { h.get(name).expect(name).as_str().parse().unwrap() };
        assert_eq!(field("Sluice-Producer"), PRODUCER);
        let seq = field("Sluice-Seq");
        assert_eq!(
            m.payload,
            load::payload(PRODUCER, seq - 1),
            "seq {seq} with another message's payload"
        );
        seqs.push(seq);
    }
    seqs
}

async fn wait_for(js: &Context, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let held = match js.get_stream(TARGET).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        };
        if held >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "JetStream holds {held} of {n} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_reach_jetstream_once_in_order_when_the_producer_fails_over() {
    if !require_nats_server(
        "acked_messages_reach_jetstream_once_in_order_when_the_producer_fails_over",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3);
    let urls = cluster.client_urls();
    let (a_spec, b_spec) = (
        spec(&dir.path().join("a"), &urls),
        spec(&dir.path().join("b"), &urls),
    );
    let a = a_spec.start();
    let b = b_spec.start();
    let (ta, tb) = (a_spec.udp(), b_spec.udp());
    let producer = Producer::connect_any(&[ta.addr, tb.addr], STREAM, PRODUCER, options(&a_spec))
        .await
        .expect("the producer opens its session at the first daemon");

    let started = Instant::now();
    let Sent {
        acked,
        acked_at_kill,
    } = RUN.send(&producer, PRODUCER, || a.kill9()).await;
    let status = producer.status();
    producer.close().await.expect("a clean close at B");
    assert_eq!(status.failovers, 1, "{status:?}");
    assert_eq!(acked, (1..=TOTAL).collect::<BTreeSet<_>>());

    let js = connect(&urls).await;
    wait_for(&js, TOTAL, Duration::from_secs(90)).await;
    let seqs = seqs_in_jetstream(&js).await;
    let mut times: BTreeMap<u64, u32> = BTreeMap::new();
    for s in &seqs {
        *times.entry(*s).or_default() += 1;
    }
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let missing: Vec<_> = acked
        .iter()
        .filter(|s| !times.contains_key(s))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "acked but not in JetStream: {missing:?}"
    );
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "the producer's order broke in JetStream"
    );
    let already = b
        .scrape()
        .map(|m| m.value("sluice_forward_already_stored_total", &[("forward", "js")]))
        .unwrap_or(0.0);
    eprintln!(
        "{TOTAL} messages in {:?}; A killed after {} acks; B found {already} of the resent ones already in JetStream; failover: {:?}",
        started.elapsed(),
        acked_at_kill,
        status.last_failover.map(|e| e.reason)
    );
    let b_status = b.terminate(Duration::from_secs(15));
    assert!(b_status.success(), "B stopped with {b_status}");
}
