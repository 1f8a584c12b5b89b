//! Consumer groups managed by operators with `sluice group`: a reset
//! replays or skips (durable across kill -9 of sluiced), a deletion forgets
//! the group (for good, across a restart), and both are refused while
//! members are connected, for a configured group's deletion, or for a
//! group that does not exist.

use std::process::{Command, Output};
use std::time::Duration;

use bytes::Bytes;
use sluice_daemon::api::consume::GroupList;
use sluice_tests::consume::succeeded;
use sluice_tests::daemon::{Daemon, DaemonSpec};
use sluice_tests::load;
use sluice_tests::{sluice_bin, sluiced_bin};
use sluice_transport::client::{Consumer, ConsumerOptions, Producer};
use sluice_transport::quic::control::StartAt;

async fn publish(spec: &DaemonSpec, from: u64, n: u64) {
    let target = spec.fast_path();
    let p = Producer::connect(target.addr, "orders", 1, load::patient(target.transport))
        .await
        .expect("producer connects");
    let payloads = (from..from + n)
        .map(|i| Bytes::from(format!("m{i}")))
        .collect();
    p.send_batch(payloads).await.expect("published");
    p.close().await.expect("producer closes");
}

async fn consumer(spec: &DaemonSpec, group: &str, start: StartAt) -> Consumer {
    let mut o = ConsumerOptions::new(spec.quic_options(None), group);
    o.start = start;
    Consumer::connect(spec.quic, "orders", o)
        .await
        .expect("consumer connects")
}

/// Receives and acks deliveries until none comes for 700 ms; their
/// offsets, in order of arrival. Syncs the acks and closes.
async fn drain(mut c: Consumer) -> Vec<u64> {
    let mut got = Vec::new();
    while let Ok(d) = tokio::time::timeout(Duration::from_millis(700), c.next()).await {
        let d = d.expect("no error").expect("not closed");
        got.push(d.offset);
        d.ack();
    }
    c.sync().await.expect("acks durable");
    c.close().await;
    got
}

/// `sluice group ARGS` against `spec`'s admin port.
fn group(spec: &DaemonSpec, args: &[&str]) -> Output {
    Command::new(sluice_bin!())
        .arg("group")
        .args(args)
        .args(["--admin", &spec.admin.to_string()])
        .env_remove("SLUICE_TOKEN")
        .env_remove("SLUICE_ADMIN")
        .output()
        .expect("run sluice group")
}

/// The command failed with exit code 1, saying `what`.
fn refused(o: &Output, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(what), "expected {what:?} in: {err}");
}

fn group_names(d: &Daemon) -> Vec<String> {
    let list: GroupList = serde_json::from_str(&d.get("/groups")).expect("GET /groups is JSON");
    list.groups.into_iter().map(|g| g.group).collect()
}

/// Waits (up to 5 s) until the daemon shows no member in `group`: a
/// consumer's close reaches the group a moment after the client returns.
fn no_members(d: &Daemon, group: &str) {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let list: GroupList = serde_json::from_str(&d.get("/groups")).expect("GET /groups");
        let g = list
            .groups
            .iter()
            .find(|g| g.group == group)
            .expect("the group");
        if g.members == 0 {
            return;
        }
        assert!(std::time::Instant::now() < until, "members stay: {g:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn range(r: std::ops::Range<u64>) -> Vec<u64> {
    r.collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_replays_or_skips_and_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path());
    let daemon = spec.start();
    publish(&spec, 0, 10).await;
    let c = consumer(&spec, "billing", StartAt::Earliest).await;
    assert_eq!(drain(c).await, range(0..10));

    // Back to offset 4: durable before the answer, so a kill -9 right
    // after keeps it.
    no_members(&daemon, "billing");
    let said = succeeded(&group(
        &spec,
        &["reset", "orders", "billing", "--start", "offset:4"],
    ));
    assert!(said.contains("now starts at offset 4"), "{said}");
    daemon.kill9();
    let daemon = spec.start();
    let c = consumer(&spec, "billing", StartAt::Earliest).await;
    assert_eq!(drain(c).await, range(4..10), "replayed from offset 4");

    // Refused while a member is connected; the member goes on unharmed.
    let mut c = consumer(&spec, "billing", StartAt::Earliest).await;
    refused(
        &group(
            &spec,
            &["reset", "orders", "billing", "--start", "earliest"],
        ),
        "member",
    );
    publish(&spec, 10, 1).await;
    let d = tokio::time::timeout(Duration::from_secs(10), c.next())
        .await
        .expect("the member still gets deliveries")
        .unwrap()
        .unwrap();
    assert_eq!(d.offset, 10);
    d.ack();
    c.sync().await.unwrap();
    c.close().await;

    // Skip the backlog: to the end.
    publish(&spec, 11, 5).await;
    no_members(&daemon, "billing");
    let said = succeeded(&group(
        &spec,
        &["reset", "orders", "billing", "--start", "latest", "--json"],
    ));
    let answer: serde_json::Value = serde_json::from_str(&said).unwrap();
    assert_eq!(answer["floor"], 16, "{said}");
    publish(&spec, 16, 1).await;
    let c = consumer(&spec, "billing", StartAt::Earliest).await;
    assert_eq!(drain(c).await, vec![16], "only what came after the reset");

    // Bad input: named, usage errors exit 2, unknown groups 1.
    let bad = group(
        &spec,
        &["reset", "orders", "billing", "--start", "yesterday"],
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--start"));
    assert_eq!(
        group(&spec, &["reset", "orders", "billing"]).status.code(),
        Some(2)
    );
    refused(
        &group(&spec, &["reset", "orders", "nobody", "--start", "earliest"]),
        "no consumer group",
    );
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_group_is_gone_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluiced.toml");
    std::fs::write(
        &config,
        "[[consumers.groups]]\nstream = \"orders\"\ngroup = \"audit\"\n",
    )
    .unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path())
        .arg("--config")
        .arg(config.display().to_string());
    let daemon = spec.start();
    publish(&spec, 0, 10).await;
    let c = consumer(&spec, "billing", StartAt::Earliest).await;
    assert_eq!(drain(c).await, range(0..10));
    let listed = succeeded(&group(&spec, &["list", "orders"]));
    assert!(
        listed.contains("billing") && listed.contains("audit"),
        "{listed}"
    );
    let group_dir = dir.path().join("streams/orders/groups/billing");
    let cursor = dir.path().join("streams/orders/cursors/billing");

    // Refused while a member is connected.
    let c = consumer(&spec, "billing", StartAt::Earliest).await;
    refused(&group(&spec, &["delete", "orders", "billing"]), "member");
    c.close().await;

    no_members(&daemon, "billing");
    let said = succeeded(&group(&spec, &["delete", "orders", "billing"]));
    assert!(said.contains("deleted group billing of orders"), "{said}");
    assert!(!group_names(&daemon).contains(&"billing".to_owned()));
    assert!(!group_dir.exists(), "{} is left", group_dir.display());
    assert!(!cursor.exists(), "{} is left", cursor.display());

    // Not back after a restart; a consumer of the name starts a new group
    // where it says.
    assert!(daemon.terminate(Duration::from_secs(10)).success());
    let daemon = spec.start();
    assert!(!group_names(&daemon).contains(&"billing".to_owned()));
    publish(&spec, 10, 2).await;
    let c = consumer(&spec, "billing", StartAt::Offset(11)).await;
    assert_eq!(drain(c).await, vec![11], "a new group, at its start");

    // A configured group and an unknown one cannot be deleted.
    refused(&group(&spec, &["delete", "orders", "audit"]), "configured");
    refused(
        &group(&spec, &["delete", "orders", "nobody"]),
        "no consumer group",
    );
    assert!(group_names(&daemon).contains(&"audit".to_owned()));
}
