//! SIGHUP and what it changes beyond tokens and the log (issue 22): a real
//! `sluiced` whose configuration file is rewritten, then reloaded.
//!
//! - Consumer groups: a group's new ack deadline and max deliveries hold
//!   for what is delivered after the reload (a message out before keeps
//!   its deadline), a newly configured group (on a new stream too) is
//!   there, a removed one runs on (and may now be deleted), a key that
//!   cannot change live is named as needing a restart.
//! - Forwards, against a real NATS JetStream server (sluice-testkit's
//!   `nats` kit): a forward added by a reload forwards what was published
//!   before and after it; a subject changed while a producer publishes
//!   takes the messages published after the change, none lost or stored
//!   twice; a removed forward stops
//!   while its group stays.
//!
//! The forward test needs `nats-server` (scripts/setup.sh installs it in
//! target/pyenv): without it, it says why it skips; with `CI=true` a skip
//! fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::{self, Context};
use serde_json::{json, Value};
use sluice_testkit::nats::{require_nats_server, Cluster};
use sluice_tests::consume::{get, post, Answer};
use sluice_tests::daemon::{Daemon, DaemonSpec};
use sluice_tests::forward::{connect, log_of, spec};
use sluice_tests::{runtime, sluiced_bin};

/// Writes `dir`/sluiced.toml with `text`; its path.
fn write(dir: &Path, text: &str) -> String {
    let path = dir.join("sluiced.toml");
    std::fs::write(&path, text).expect("write sluiced.toml");
    path.display().to_string()
}

/// SIGHUP to the daemon.
fn hup(d: &Daemon) {
    // SAFETY: kill(2) on the daemon's process, which the kit holds.
    assert_eq!(unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) }, 0);
}

/// Waits (at most 20 s) until the log has a line with every one of
/// `parts` after the first `skip` such lines; that line.
fn wait_log_nth(dir: &Path, parts: &[&str], skip: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = log_of(dir);
        if let Some(l) = text
            .lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .nth(skip)
        {
            return l.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {parts:?} (after {skip}) in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_log(dir: &Path, parts: &[&str]) -> String {
    wait_log_nth(dir, parts, 0)
}

/// Publishes seqs `first..first + n` of `producer` to `stream` over HTTP
/// (payloads `p{producer}-{seq}`), durable when it returns.
fn publish(spec: &DaemonSpec, stream: &str, producer: u64, first: u64, n: u64) {
    let body: String = (first..first + n)
        .map(|s| format!("{{\"data\": \"p{producer}-{s}\"}}\n"))
        .collect();
    let url = format!("{}/streams/{stream}/messages", spec.admin_url());
    ureq::post(&url)
        .timeout(Duration::from_secs(10))
        .set("content-type", "application/x-ndjson")
        .set("sluice-producer-id", &producer.to_string())
        .set("sluice-seq", &first.to_string())
        .send_string(&body)
        .unwrap_or_else(|e| panic!("publish {producer}/{first}: {e}"));
}

/// One fetched message: (offset, delivery, deadline_ms).
fn fetch(d: &Daemon, stream: &str, group: &str, max: u64, wait_ms: u64) -> Vec<(u64, u64, u64)> {
    let a = post(
        d.admin,
        &format!("/streams/{stream}/groups/{group}/fetch"),
        &json!({"max": max, "wait_ms": wait_ms}).to_string(),
        None,
    );
    assert_eq!(a.status, 200, "fetch: {:?}", a.body);
    a.body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["offset"].as_u64().unwrap(),
                m["delivery"].as_u64().unwrap(),
                m["deadline_ms"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The running groups as `/groups` lists them: (stream, group) → entry.
fn groups(d: &Daemon) -> BTreeMap<(String, String), Value> {
    let a: Answer = get(d.admin, "/groups", None);
    assert_eq!(a.status, 200);
    a.body["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| {
            let k = (
                g["stream"].as_str().unwrap().to_owned(),
                g["group"].as_str().unwrap().to_owned(),
            );
            (k, g.clone())
        })
        .collect()
}

fn key(s: &str, g: &str) -> (String, String) {
    (s.into(), g.into())
}

const GROUPS_BEFORE: &str = r#"
[streams]
names = ["jobs"]

[[consumers.groups]]
stream = "jobs"
group = "workers"
ack_deadline = "30s"
max_deliveries = 5

[[consumers.groups]]
stream = "jobs"
group = "old"

[[consumers.groups]]
stream = "jobs"
group = "kept"
ack_deadline = "10s"
"#;

/// `workers` with a 2 s deadline and one delivery; `old` and `kept` gone;
/// `fresh` on jobs and `audit-log` on a stream not there yet; a credit
/// limit changed (needs a restart).
const GROUPS_AFTER: &str = r#"
[streams]
names = ["jobs"]

[consumers]
max_out_bytes = "128MiB"

[[consumers.groups]]
stream = "jobs"
group = "workers"
ack_deadline = "2s"
max_deliveries = 1

[[consumers.groups]]
stream = "jobs"
group = "fresh"

[[consumers.groups]]
stream = "audit"
group = "audit-log"
"#;

#[test]
fn a_sighup_changes_a_running_group_creates_new_groups_and_keeps_a_removed_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), GROUPS_BEFORE);
    let spec = spec(sluiced_bin!(), dir.path(), &config);
    let d = spec.start();
    publish(&spec, "jobs", 1, 1, 3);
    // Before: the 30 s deadline; `old` is configured, so not deletable.
    let first = fetch(&d, "jobs", "workers", 1, 5000);
    assert_eq!(first.len(), 1);
    assert!(first[0].2 > 20_000, "deadline before the reload: {first:?}");
    let del = ureq::delete(&format!("{}/streams/jobs/groups/old", spec.admin_url()))
        .call()
        .map(|r| r.status())
        .unwrap_or_else(|e| match e {
            ureq::Error::Status(c, _) => c,
            e => panic!("{e}"),
        });
    assert_eq!(del, 409, "a configured group is not deleted");

    write(dir.path(), GROUPS_AFTER);
    hup(&d);
    let line = wait_log(
        dir.path(),
        &["reload: consumer group settings applied", "workers"],
    );
    assert!(
        line.contains("ack_deadline 30s → 2s") && line.contains("max_deliveries 5 → 1"),
        "{line}"
    );
    wait_log(dir.path(), &["no longer configured", "group=\"old\""]);
    wait_log(dir.path(), &["no longer configured", "group=\"kept\""]);
    wait_log(dir.path(), &["needs a restart", "consumers.max_out_bytes"]);
    wait_log(
        dir.path(),
        &["consumer group configured and started", "audit-log"],
    );

    // After: a delivery takes the new deadline...
    let second = fetch(&d, "jobs", "workers", 1, 5000);
    assert_eq!(second.len(), 1);
    assert_ne!(second[0].0, first[0].0);
    assert!(
        second[0].2 <= 2_000,
        "deadline after the reload: {second:?}"
    );
    // ... and one delivery is all it gets: past its deadline it goes to
    // the dead-letter stream, not to a consumer again.
    std::thread::sleep(Duration::from_millis(2_500));
    let third = fetch(&d, "jobs", "workers", 10, 2000);
    assert_eq!(
        third.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>(),
        [(2, 1)],
        "only the third message (offsets from 0), delivered once: {third:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let g = groups(&d);
        let dead = g[&key("jobs", "workers")]["dead_lettered"]
            .as_u64()
            .unwrap_or(0);
        if dead == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "not dead-lettered: {g:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The message out before the reload kept its 30 s deadline: after
    // the 2 s ones passed, nothing is delivered again (the fetch above
    // and this one would have had it).
    assert!(fetch(&d, "jobs", "workers", 10, 500).is_empty());

    // The new groups are there (the new one on a stream made for it), and
    // the removed one runs on, now deletable.
    let g = groups(&d);
    for k in [
        key("jobs", "fresh"),
        key("audit", "audit-log"),
        key("jobs", "old"),
    ] {
        assert!(g.contains_key(&k), "{k:?} not in /groups: {g:?}");
    }
    assert_eq!(g[&key("jobs", "fresh")]["backlog_messages"], 3);
    let del = ureq::delete(&format!("{}/streams/jobs/groups/old", spec.admin_url()))
        .call()
        .expect("a group no longer configured is deleted on request");
    assert_eq!(del.status(), 200);
    assert!(!groups(&d).contains_key(&key("jobs", "old")));

    // A second reload with a new default deadline: the groups that take
    // the default get it, the group taken out of the file does not; the
    // key that needs a restart is named again (it still differs).
    write(
        dir.path(),
        &GROUPS_AFTER.replace("[consumers]\n", "[consumers]\nack_deadline = \"20s\"\n"),
    );
    hup(&d);
    let line = wait_log(
        dir.path(),
        &["reload: consumer group settings applied", "group=\"fresh\""],
    );
    assert!(line.contains("ack_deadline 30s → 20s"), "{line}");
    wait_log_nth(
        dir.path(),
        &["needs a restart", "consumers.max_out_bytes"],
        1,
    );
    let text = log_of(dir.path());
    assert!(
        !text
            .lines()
            .any(|l| l.contains("settings applied") && l.contains("group=\"kept\"")),
        "{text}"
    );
    // A group taken out of the file keeps the settings it ran with, through
    // later reloads too (not the defaults: a 30 s deadline).
    let kept = fetch(&d, "jobs", "kept", 1, 5000);
    assert_eq!(kept.len(), 1);
    assert!(
        (5_000..=10_000).contains(&kept[0].2),
        "the removed group's deadline: {kept:?}"
    );
    assert!(d.terminate(Duration::from_secs(30)).success());
}

// ---- forwards ----

const STREAM: &str = "orders";
const TARGET: &str = "SLUICE";

fn forward_config(servers: &[String], subject: Option<&str>) -> String {
    let mut text = format!("[streams]\nnames = [\"{STREAM}\"]\n");
    if let Some(subject) = subject {
        let servers: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
        text += &format!(
            "\n[[forward]]\nname = \"js\"\nstreams = [\"{STREAM}\"]\nservers = [{}]\n\
             target_stream = \"{TARGET}\"\nsubject = \"{subject}\"\nmax_in_flight = 16\n",
            servers.join(", ")
        );
    }
    text
}

/// Every message of the target stream: (subject, Nats-Msg-Id), in order.
async fn read_all(js: &Context) -> Vec<(String, String)> {
    use futures_util::StreamExt;
    let stream = js.get_stream(TARGET).await.expect("the target stream");
    let n = stream.cached_info().state.messages;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("an ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut out = Vec::new();
    for i in 0..n {
        let m = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .unwrap_or_else(|_| panic!("message {i} of {n} not read"))
            .expect("the consumer goes on")
            .expect("a message");
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get(NATS_MESSAGE_ID.as_ref()))
            .map(|v| v.as_str().to_owned())
            .expect("a message id");
        out.push((m.subject.to_string(), id));
    }
    out
}

/// How many messages the target holds, once that is `n` (at most 60 s).
async fn wait_count(js: &Context, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut s = js.get_stream(TARGET).await.expect("the target stream");
        let c = s.info().await.map(|i| i.state.messages).unwrap_or(0);
        if c >= n {
            assert_eq!(c, n, "more messages than published");
            return;
        }
        assert!(Instant::now() < deadline, "{c} messages, not {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ids(first: u64, last: u64) -> BTreeSet<String> {
    (first..=last).map(|s| format!("{STREAM}/1/{s}")).collect()
}

#[test]
fn a_sighup_starts_changes_and_stops_a_forward() {
    let test = "a_sighup_starts_changes_and_stops_a_forward";
    if !require_nats_server(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 1);
    let urls = cluster.client_urls();
    let rt = runtime();
    let js = rt.block_on(connect(&urls));
    // The target takes both subjects the test uses.
    rt.block_on(js.create_stream(jetstream::stream::Config {
        name: TARGET.into(),
        subjects: vec!["a.>".into(), "b.>".into()],
        allow_batch_publish: true,
        ..Default::default()
    }))
    .expect("the target stream");
    let config = write(dir.path(), &forward_config(&urls, None));
    let spec = spec(sluiced_bin!(), dir.path(), &config);
    let d = spec.start();
    publish(&spec, STREAM, 1, 1, 100);

    // Added: what was published before, and what comes after.
    write(
        dir.path(),
        &forward_config(&urls, Some("a.{stream}.{producer}")),
    );
    hup(&d);
    wait_log(dir.path(), &["reload: forward added and started", "js"]);
    publish(&spec, STREAM, 1, 101, 100);
    rt.block_on(wait_count(&js, 200));

    // Changed subject while a producer publishes: what it publishes once
    // the change is done is stored under the new subject; nothing is
    // lost, and JetStream holds each message once.
    write(
        dir.path(),
        &forward_config(&urls, Some("b.{stream}.{producer}")),
    );
    let next = Arc::new(AtomicU64::new(201));
    let producer = {
        let (spec, next) = (spec.clone(), next.clone());
        std::thread::spawn(move || {
            for first in (201..=400).step_by(5) {
                publish(&spec, STREAM, 1, first, 5);
                next.store(first + 5, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    while next.load(Ordering::SeqCst) < 231 {
        std::thread::sleep(Duration::from_millis(5));
    }
    hup(&d);
    let line = wait_log(dir.path(), &["reload: forward changed", "js"]);
    let after = next.load(Ordering::SeqCst);
    assert!(
        line.contains("a.{stream}.{producer} → b.{stream}.{producer}"),
        "{line}"
    );
    producer.join().unwrap();
    assert!(after <= 400, "the producer was done before the change");
    rt.block_on(wait_count(&js, 400));
    let stored = rt.block_on(read_all(&js));
    let all: BTreeSet<String> = stored.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(all.len(), stored.len(), "a message stored twice");
    assert_eq!(all, ids(1, 400), "messages lost");
    for (subject, id) in &stored {
        let seq: u64 = id.rsplit('/').next().unwrap().parse().unwrap();
        if seq <= 200 {
            assert_eq!(subject, "a.orders.1", "message {id}");
        } else if seq >= after {
            assert_eq!(subject, "b.orders.1", "message {id}");
        }
    }

    // Removed: it stops; its group stays, holding what it did not send.
    write(dir.path(), &forward_config(&urls, None));
    hup(&d);
    wait_log(dir.path(), &["reload: forward removed and stopped", "js"]);
    publish(&spec, STREAM, 1, 401, 50);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let g = groups(&d);
        let backlog = g[&key(STREAM, "forward.js")]["backlog_messages"]
            .as_u64()
            .unwrap();
        let members = g[&key(STREAM, "forward.js")]["members"].as_u64().unwrap();
        if backlog == 50 && members == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the forward's group: {g:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    rt.block_on(wait_count(&js, 400));
    let m = d.metrics();
    assert!(
        m.label_values("sluice_forward_connected", "forward")
            .is_empty(),
        "a removed forward is not shown"
    );

    // Added again: it resumes from its group's acked position.
    write(
        dir.path(),
        &forward_config(&urls, Some("b.{stream}.{producer}")),
    );
    hup(&d);
    wait_log_nth(dir.path(), &["reload: forward added and started", "js"], 1);
    // Its group ran on with the forward's settings: nothing to change.
    let text = log_of(dir.path());
    assert!(!text.contains("consumer group settings applied"), "{text}");
    rt.block_on(wait_count(&js, 450));
    let all: BTreeSet<String> = rt
        .block_on(read_all(&js))
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    assert_eq!(all, ids(1, 450));
    assert!(d.terminate(Duration::from_secs(30)).success());
}
