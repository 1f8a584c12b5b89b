//! The NATS JetStream test kit (sluice-testkit's `nats`, issue 21) with
//! real `nats-server` processes on loopback and the async-nats client the
//! forwarder uses: a 3-node cluster holds an R3 file stream that drops a
//! republished `Nats-Msg-Id`; after `kill -9` of the stream's leader a new
//! one is elected and publishing goes on; every acked message is there at
//! the end, once; the killed node rejoins and catches up. A single server
//! refuses a publish with a wrong expected last sequence.
//!
//! Needs `nats-server` (scripts/setup.sh installs it in target/pyenv): without it
//! each test says why it skips; with `CI=true` a skip fails.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::context::{Context, ContextBuilder, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config, StorageType, Stream};
use async_nats::ServerAddr;
use bytes::Bytes;
use sluice_testkit::nats::{require_nats_server, Cluster};
use sluice_tests::runtime;
use tokio::runtime::Runtime;

const STREAM: &str = "FWD";
const SUBJECT: &str = "fwd.test";
/// How long a new stream leader may take after the old one is killed (the
/// election timeouts of 2.9 are a few seconds).
const ELECTION_WITHIN: Duration = Duration::from_secs(30);
/// Each publish's wait for its ack.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one message may be retried across a failover.
const PUBLISH_WITHIN: Duration = Duration::from_secs(60);

/// A JetStream context on a client that knows every node and reconnects
/// to whichever is up.
async fn connect(cluster: &Cluster) -> Context {
    let addrs: Vec<ServerAddr> = cluster
        .client_urls()
        .iter()
        .map(|u| u.parse().expect("a NATS URL"))
        .collect();
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(ACK_TIMEOUT))
        .connect(addrs)
        .await
        .expect("connect to the cluster");
    ContextBuilder::new().timeout(ACK_TIMEOUT).build(client)
}

async fn create_stream(js: &Context, replicas: usize) -> Stream {
    js.create_stream(Config {
        name: STREAM.into(),
        subjects: vec![SUBJECT.into()],
        num_replicas: replicas,
        storage: StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .expect("create the stream")
}

/// Publishes `payload` with the message id `id`, again and again (the
/// same id: the stream drops a copy it already holds) until it is acked;
/// the ack's sequence and whether it was a duplicate. Panics after
/// [`PUBLISH_WITHIN`].
async fn publish_acked(js: &Context, id: &str, payload: &Bytes) -> (u64, bool) {
    let deadline = Instant::now() + PUBLISH_WITHIN;
    let mut last_err = String::new();
    while Instant::now() < deadline {
        let msg = PublishMessage::build()
            .payload(payload.clone())
            .message_id(id);
        let ack = match js.send_publish(SUBJECT, msg).await {
            Ok(fut) => fut.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(ack) => return (ack.sequence, ack.duplicate),
            Err(e) => last_err = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{id} not acked within {PUBLISH_WITHIN:?}: {last_err}");
}

/// Every message of the stream by sequence: its id and payload; checks
/// that the stream holds exactly `acked` (id → payload), each once.
async fn assert_holds(js: &Context, acked: &BTreeMap<String, Bytes>) {
    let mut stream = js.get_stream(STREAM).await.expect("the stream");
    let info = stream.info().await.expect("stream info").clone();
    assert_eq!(
        info.state.messages,
        acked.len() as u64,
        "the stream holds {} messages, {} were acked: {:?}",
        info.state.messages,
        acked.len(),
        info.state
    );
    let mut seen = BTreeMap::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let m = stream
            .get_raw_message(seq)
            .await
            .unwrap_or_else(|e| panic!("message {seq}: {e}"));
        let id = m
            .headers
            .get(NATS_MESSAGE_ID)
            .unwrap_or_else(|| panic!("message {seq} has no Nats-Msg-Id: {m:?}"))
            .as_str()
            .to_owned();
        assert!(
            seen.insert(id.clone(), m.payload).is_none(),
            "{id} is in the stream twice (again at {seq})"
        );
    }
    assert_eq!(&seen, acked, "the stream's messages are not the acked ones");
}

/// Publishes `m-N` for each N of `range` until acked, and notes each.
fn publish_range(
    rt: &Runtime,
    js: &Context,
    acked: &mut BTreeMap<String, Bytes>,
    range: std::ops::Range<usize>,
) {
    for n in range {
        let id = format!("m-{n}");
        let p = payload(&id);
        rt.block_on(publish_acked(js, &id, &p));
        acked.insert(id, p);
    }
}

fn payload(id: &str) -> Bytes {
    Bytes::from(format!("payload of {id}"))
}

#[test]
fn r3_stream_survives_its_leaders_kill9_and_the_node_rejoins() {
    if !require_nats_server("r3_stream_survives_its_leaders_kill9_and_the_node_rejoins") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let rt = runtime();
    let js = rt.block_on(connect(&cluster));
    rt.block_on(create_stream(&js, 3));
    let mut acked = BTreeMap::new();

    // The same Nats-Msg-Id twice: one message, the second ack a duplicate.
    let p = payload("m-0");
    let (first, dup) = rt.block_on(publish_acked(&js, "m-0", &p));
    assert!(!dup, "the first publish of m-0 was called a duplicate");
    let (again, dup) = rt.block_on(publish_acked(&js, "m-0", &p));
    assert!(dup, "the second publish of m-0 was not called a duplicate");
    assert_eq!(again, first, "a duplicate's ack names the first's sequence");
    acked.insert("m-0".to_owned(), p);
    rt.block_on(assert_holds(&js, &acked));

    publish_range(&rt, &js, &mut acked, 1..100);

    // kill -9 of the stream's leader: another node takes over.
    let old = cluster.wait_leader(STREAM, None, ELECTION_WITHIN);
    cluster.kill9(old);
    let killed_at = Instant::now();
    let new = cluster.wait_leader(STREAM, Some(old), ELECTION_WITHIN);
    let elected = killed_at.elapsed();
    publish_range(&rt, &js, &mut acked, 100..101);
    eprintln!(
        "stream leader {} killed; {} leads after {elected:?}, the first publish acked after {:?}",
        cluster.name(old),
        cluster.name(new),
        killed_at.elapsed()
    );
    publish_range(&rt, &js, &mut acked, 101..200);
    rt.block_on(assert_holds(&js, &acked));

    // The killed node comes back on its ports and store and catches up.
    cluster.restart(old);
    let total = acked.len() as u64;
    let state = cluster.wait_stream_state(old, STREAM, ELECTION_WITHIN, |s| {
        s.messages == total && s.leader.is_some()
    });
    assert_eq!(state.last_seq, total, "{state:?}");
    // Publishing still works with all three up, and nothing was lost.
    let p = payload("m-last");
    rt.block_on(publish_acked(&js, "m-last", &p));
    acked.insert("m-last".to_owned(), p);
    rt.block_on(assert_holds(&js, &acked));
    cluster.wait_stream_state(old, STREAM, ELECTION_WITHIN, |s| s.messages == total + 1);

    drop(js);
    drop(rt);
    cluster.stop();
}

#[test]
fn one_server_refuses_a_wrong_expected_last_sequence() {
    if !require_nats_server("one_server_refuses_a_wrong_expected_last_sequence") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let err = Cluster::try_start(dir.path(), 0).err();
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("at least one node")),
        "a cluster of no node: {err:?}"
    );
    let mut cluster = Cluster::start(dir.path(), 1);
    let rt = runtime();
    let js = rt.block_on(connect(&cluster));
    rt.block_on(async {
        create_stream(&js, 1).await;
        let (seq, _) = publish_acked(&js, "a", &payload("a")).await;
        assert_eq!(seq, 1);
        // What a forwarder that lost track would send: the server refuses.
        let wrong = PublishMessage::build()
            .payload(payload("b"))
            .message_id("b")
            .expected_last_sequence(5);
        let err = js
            .send_publish(SUBJECT, wrong)
            .await
            .expect("sent")
            .await
            .expect_err("a wrong expected last sequence was accepted");
        assert_eq!(err.kind(), PublishErrorKind::WrongLastSequence, "{err}");
        let right = PublishMessage::build()
            .payload(payload("b"))
            .message_id("b")
            .expected_last_sequence(1);
        let ack = js
            .send_publish(SUBJECT, right)
            .await
            .expect("sent")
            .await
            .expect("the right expected last sequence is accepted");
        assert_eq!(ack.sequence, 2);
    });
    assert_eq!(cluster.leader_of(STREAM), Some(0));
    let state = cluster.stream_state(0, STREAM).expect("the stream's state");
    assert_eq!((state.messages, state.last_seq), (2, 2), "{state:?}");
    drop(js);
    drop(rt);
    cluster.stop();
}
