//! `ack = "replicated"` (issue 21, daemon/FORWARD.md "Ack modes"): a
//! producer's ack waits for JetStream's PubAck, so every message a producer
//! saw acked is in the JetStream stream, whatever happens to sluiced. Real
//! processes: sluiced and a 3-node nats-server cluster with an R3 stream on
//! loopback; producers over the fast path (sealed UDP under a QUIC lease).
//!
//! Needs `nats-server` (scripts/setup.sh installs it): without it each
//! test says why it skips; with `CI=true` a skip fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::Context;
use bytes::Bytes;
use futures_util::StreamExt;
use rand::Rng;
use sluice_testkit::nats::{require_nats_server, Cluster};
use sluice_tests::check::Acked;
use sluice_tests::daemon::{Daemon, DaemonSpec, Target};
use sluice_tests::forward::{self, connect};
use sluice_tests::load::{self, Plan};
use sluice_tests::sluiced_bin;
use sluice_transport::client::{Producer, ProducerOptions};

/// The replicated stream, its forward and JetStream stream.
const REPL: &str = "repl";
const REPL_TARGET: &str = "REPL";
/// Streams made by their first publish, replicated through a pattern.
const SENSORS: &str = "sensors-*";
const SENSORS_TARGET: &str = "SENS";
/// A local-ack stream on the same daemon.
const LOCAL: &str = "loc";
const LOCAL_TARGET: &str = "LOC";

/// Stream `repl` forwarded by `js` with `ack = "replicated"`, streams
/// `sensors-*` (made later) by `jp` with `ack = "replicated"` too, stream
/// `loc` by `jl` with `ack = "local"`, all into R3 streams they create.
fn write_config(dir: &Path, servers: &[String]) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
    let servers = servers.join(", ");
    let text = format!(
        "[streams]\nnames = [\"{REPL}\", \"{LOCAL}\"]\n\n\
         [[forward]]\nname = \"js\"\nstreams = [\"{REPL}\"]\nservers = [{servers}]\n\
         target_stream = \"{REPL_TARGET}\"\ncreate = true\nreplicas = 3\nack = \"replicated\"\n\n\
         [[forward]]\nname = \"jp\"\nstreams = [\"{SENSORS}\"]\nservers = [{servers}]\n\
         subject = \"sensors.{{stream}}.{{producer}}\"\n\
         target_stream = \"{SENSORS_TARGET}\"\ncreate = true\nreplicas = 3\nack = \"replicated\"\n\n\
         [[forward]]\nname = \"jl\"\nstreams = [\"{LOCAL}\"]\nservers = [{servers}]\n\
         target_stream = \"{LOCAL_TARGET}\"\ncreate = true\nreplicas = 3\nack = \"local\"\n"
    );
    let path = dir.join("sluiced.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn spec(dir: &Path, config: &str) -> DaemonSpec {
    forward::spec(sluiced_bin!(), dir, config)
}

/// Producers over `target` that wait for acks as long as a test's
/// cluster may be down.
fn options_for(target: &Target) -> ProducerOptions {
    ProducerOptions {
        credit_timeout: Duration::from_secs(120),
        ..load::patient(target.transport.clone())
    }
}

/// Over the fast path.
fn options(spec: &DaemonSpec) -> ProducerOptions {
    options_for(&spec.fast_path())
}

/// Every (producer, seq) JetStream stream `target` holds, with how many
/// times (read with an ordered consumer; an empty map if the stream does
/// not exist yet).
async fn in_jetstream(js: &Context, target: &str) -> BTreeMap<(u64, u64), u32> {
    let mut held = BTreeMap::new();
    let Ok(mut stream) = js.get_stream(target).await else {
        return held;
    };
    let n = stream.info().await.expect("stream info").state.messages;
    if n == 0 {
        return held;
    }
    let consumer = stream
        .create_consumer(OrderedConfig::default())
        .await
        .expect("an ordered consumer");
    let mut messages = consumer.messages().await.expect("its messages");
    for i in 0..n {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap_or_else(|_| panic!("message {i} of {n} of {target} in 10 s"))
            .expect("a message")
            .expect("a message, not an error");
        let headers = m.headers.as_ref().expect("the forwarder's headers");
        let h = |name: &str| -> u64 {
            headers
                .get(name)
                .unwrap_or_else(|| panic!("no {name}"))
                .as_str()
                .parse()
                .unwrap()
        };
        *held
            .entry((h("Sluice-Producer"), h("Sluice-Seq")))
            .or_insert(0) += 1;
    }
    held
}

/// Panics unless every acked (producer, seq) is in `held`.
fn assert_acked_held(acked: &Acked, held: &BTreeMap<(u64, u64), u32>, when: &str) {
    let missing: Vec<(u64, u64)> = acked
        .iter()
        .flat_map(|(p, seqs)| seqs.iter().map(move |s| (*p, *s)))
        .filter(|k| !held.contains_key(k))
        .take(10)
        .collect();
    let total: usize = acked.values().map(|s| s.len()).sum();
    assert!(
        missing.is_empty(),
        "{when}: acked but not in JetStream (first 10 of {total} acked): {missing:?}"
    );
}

fn metric(d: &Daemon, name: &str) -> f64 {
    d.scrape().map(|s| s.value(name, &[])).unwrap_or(0.0)
}

/// Publishes `n` messages of `producer` from seq 1 over HTTP to `stream`:
/// the status and the body of the answer.
fn http_publish(spec: &DaemonSpec, stream: &str, producer: u64, n: u64) -> (u16, String) {
    let body: String = (1..=n)
        .map(|s| format!("{{\"data\": \"h{s}\"}}\n"))
        .collect();
    let url = format!("{}/streams/{stream}/messages", spec.admin_url());
    let r = ureq::post(&url)
        .timeout(Duration::from_secs(30))
        .set("content-type", "application/x-ndjson")
        .set("sluice-producer-id", &producer.to_string())
        .set("sluice-seq", "1")
        .send_string(&body);
    match r {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("POST {url}: {e}"),
    }
}

/// Asks sluiced to reset `group` of `stream` to the stream's end: the
/// status and the body of the answer.
fn reset_group(spec: &DaemonSpec, stream: &str, group: &str) -> (u16, String) {
    let url = format!("{}/streams/{stream}/groups/{group}/reset", spec.admin_url());
    let r = ureq::post(&url)
        .timeout(Duration::from_secs(30))
        .set("content-type", "application/json")
        .send_string(r#"{"start": "latest"}"#);
    match r {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("POST {url}: {e}"),
    }
}

fn batch(producer: u64, n: u64) -> Vec<Bytes> {
    (0..n).map(|i| load::payload(producer, i)).collect()
}

#[test]
fn without_a_quorum_a_replicated_stream_is_not_acked_and_a_local_one_is() {
    if !require_nats_server("without_a_quorum_a_replicated_stream_is_not_acked_and_a_local_one_is")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    // Two of three nodes down: no quorum, nothing can be stored in an R3
    // stream (a node restarted alone could not become ready either).
    for i in 1..3 {
        cluster.kill9(i);
    }
    let config = write_config(dir.path(), &cluster.client_urls());
    let spec = spec(dir.path(), &config);
    let d = spec.start();
    let rt = sluice_tests::runtime();
    let addr = spec.fast_path().addr;
    let repl = rt
        .block_on(Producer::connect(addr, REPL, 1, options(&spec)))
        .expect("a producer on the replicated stream");
    let local = rt
        .block_on(Producer::connect(addr, LOCAL, 2, options(&spec)))
        .expect("a producer on the local stream");
    let waiting = rt.spawn(repl.send_batch(batch(1, 100)));
    // The local stream is acked after the local fdatasync, cluster or not.
    let seqs = rt
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(20), local.send_batch(batch(2, 100))).await
        })
        .expect("the local stream acks within 20 s")
        .expect("the local stream acks");
    assert_eq!(seqs, 1..101);
    // The replicated one is stored here and waits for JetStream.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&d, "sluice_forward_replicated_waiting") < 100.0 {
        assert!(
            Instant::now() < deadline,
            "sluice_forward_replicated_waiting is {}, not 100",
            metric(&d, "sluice_forward_replicated_waiting")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !waiting.is_finished(),
        "the replicated stream acked with the cluster down: {:?}",
        rt.block_on(waiting)
    );
    let stored = d
        .metrics()
        .value("sluice_durable_acks_total", &[("stream", REPL)]);
    assert_eq!(stored, 100.0, "stored locally meanwhile");
    // An HTTP publish is answered as not yet replicated, never as a success.
    let started = Instant::now();
    let (status, body) = http_publish(&spec, REPL, 9, 5);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not yet replicated"), "{body}");
    eprintln!(
        "HTTP publish without a quorum: {status} after {:?}: {body}",
        started.elapsed()
    );
    let (status, body) = http_publish(&spec, LOCAL, 9, 5);
    assert_eq!(status, 200, "the local stream: {body}");
    // So is one to a stream made now, replicated through a pattern.
    let (status, body) = http_publish(&spec, "sensors-a", 4, 5);
    assert_eq!(status, 503, "a stream of a replicated pattern: {body}");
    // A replicated forward's group is never reset (the acks rely on its
    // floor), even while its forward has not joined it (it waits for the
    // quorum to create its JetStream stream); a local one's is (an
    // operator skips a backlog not worth forwarding).
    let (status, body) = reset_group(&spec, REPL, "forward.js");
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("cannot be reset") && body.contains("replicated"),
        "{body}"
    );
    let (status, body) = reset_group(&spec, LOCAL, "forward.jl");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"floor\":105"),
        "past the 105 stored: {body}"
    );
    // The cluster comes back: the acks come, and what is acked is there.
    for i in 1..3 {
        cluster.restart(i);
    }
    let seqs = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(90), waiting).await })
        .expect("the replicated stream acks within 90 s of the cluster's return")
        .expect("the producer task")
        .expect("the replicated acks");
    assert_eq!(seqs, 1..101);
    // Sent again, the HTTP request is answered, its messages stored once.
    let (status, body) = http_publish(&spec, REPL, 9, 5);
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_publish(&spec, "sensors-a", 4, 5);
    assert_eq!(status, 200, "sensors-a: {body}");
    let js = rt.block_on(connect(&cluster.client_urls()));
    let sensors = rt.block_on(in_jetstream(&js, SENSORS_TARGET));
    let acked: Acked = [(4, (1..=5).collect())].into();
    assert_acked_held(&acked, &sensors, "sensors-a once acked");
    assert!(sensors.values().all(|&n| n == 1), "each once: {sensors:?}");
    let held = rt.block_on(in_jetstream(&js, REPL_TARGET));
    let acked: Acked = [(1, (1..=100).collect()), (9, (1..=5).collect())].into();
    assert_acked_held(&acked, &held, "once acked");
    assert!(held.values().all(|&n| n == 1), "each once: {held:?}");
    let m = d.metrics();
    let waited = m.value("sluice_forward_replicated_wait_seconds_sum", &[]);
    assert!(waited >= 2.0, "the ack waited {waited} s for JetStream");
    assert_eq!(m.value("sluice_forward_replicated_waiting", &[]), 0.0);
    rt.block_on(async {
        repl.close().await.expect("close");
        local.close().await.expect("close");
    });
    let status = d.terminate(Duration::from_secs(10));
    assert!(status.success(), "sluiced stopped with {status}");
}

#[test]
fn every_message_acked_is_in_jetstream_through_kill9s_of_sluiced() {
    if !require_nats_server("every_message_acked_is_in_jetstream_through_kill9s_of_sluiced") {
        return;
    }
    kill9s_of_sluiced(DaemonSpec::fast_path);
}

#[test]
fn every_message_acked_over_quic_is_in_jetstream_through_kill9s_of_sluiced() {
    if !require_nats_server(
        "every_message_acked_over_quic_is_in_jetstream_through_kill9s_of_sluiced",
    ) {
        return;
    }
    kill9s_of_sluiced(DaemonSpec::quic_path);
}

/// 4 producers publish 5,000 messages each over `path` to a replicated
/// stream while sluiced is killed with kill -9 three times at random
/// points: at each kill and at the end, every message a producer saw acked
/// is in JetStream, once.
fn kill9s_of_sluiced(path: fn(&DaemonSpec) -> Target) {
    const PRODUCERS: u64 = 4;
    const EACH: u64 = 5_000;
    const KILLS: usize = 3;
    let mut rng = load::seeded("REPLICATED_SEED");
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3);
    let config = write_config(dir.path(), &cluster.client_urls());
    let spec = spec(dir.path(), &config);
    let mut d = spec.start();
    let rt = sluice_tests::runtime();
    let js = rt.block_on(connect(&cluster.client_urls()));
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let never = Arc::new(AtomicBool::new(false));
    let target = path(&spec);
    let tasks: Vec<_> = (1..=PRODUCERS)
        .map(|p| {
            let plan = Plan {
                addr: target.addr,
                stream: REPL.into(),
                producer: p,
                count: EACH,
                batch: 50,
                options: options_for(&target),
            };
            rt.spawn(load::run(plan, acked.clone(), never.clone()))
        })
        .collect();
    let total = |a: &Acked| a.values().map(|s| s.len()).sum::<usize>();
    let mut kills = Vec::new();
    // Random points of the run: after so many acks (1,000 to 18,000 of
    // the 20,000).
    let mut at: Vec<usize> = (0..KILLS)
        .map(|_| rng.random_range(1_000..18_000))
        .collect();
    at.sort_unstable();
    for (k, at) in at.into_iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(120);
        while total(&acked.lock().unwrap()) < at {
            assert!(
                Instant::now() < deadline,
                "{} acked, not {at}, within 120 s",
                total(&acked.lock().unwrap())
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        d.kill9();
        // sluiced is gone: nothing more is published or acked. Whatever
        // a producer saw acked must be in JetStream already.
        let now = acked.lock().unwrap().clone();
        assert!(
            total(&now) < (PRODUCERS * EACH) as usize,
            "all acked before kill {}",
            k + 1
        );
        let held = rt.block_on(in_jetstream(&js, REPL_TARGET));
        assert_acked_held(&now, &held, &format!("at kill {}", k + 1));
        eprintln!(
            "kill -9 {}: {} acked, {} in JetStream, all acked ones there",
            k + 1,
            total(&now),
            held.len()
        );
        kills.push((total(&now), held.len()));
        d = spec.start();
    }
    for t in tasks {
        let sent = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(180), t).await })
            .expect("producers finish within 180 s")
            .expect("producer task")
            .expect("the producer kept going through the kills");
        assert_eq!(sent, EACH);
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(total(&acked), (PRODUCERS * EACH) as usize);
    // Right after the last ack: everything is there already, once.
    let held = rt.block_on(in_jetstream(&js, REPL_TARGET));
    assert_acked_held(&acked, &held, "at the end");
    let twice: Vec<_> = held.iter().filter(|(_, &n)| n > 1).take(10).collect();
    assert!(twice.is_empty(), "in JetStream more than once: {twice:?}");
    assert_eq!(held.len(), (PRODUCERS * EACH) as usize);
    // Acks waited for JetStream (since the last start): the wait was seen.
    let m = d.metrics();
    let waits = m.value("sluice_forward_replicated_wait_seconds_count", &[]);
    assert!(waits > 0.0, "no replicated wait observed");
    eprintln!(
        "{KILLS} kill -9s (acked, in JetStream at each: {kills:?}); {} messages acked, all in JetStream once; {waits} waits since the last start, {:.3} s in all",
        total(&acked),
        m.value("sluice_forward_replicated_wait_seconds_sum", &[])
    );
    let status = d.terminate(Duration::from_secs(10));
    assert!(status.success(), "sluiced stopped with {status}");
}
