//! Stream lifecycle (issue 22, point 2): `GET /streams/{s}` and `sluice
//! stream info|ls` show a stream in full — offsets, records, size on disk,
//! segments, the producers it knows with their highest seq, its consumer
//! groups, retention and fsync policy — to a principal allowed to consume
//! it; an unknown stream is a 404 naming it. `sluice stream
//! create|delete|purge` (`PUT`, `DELETE /streams/{s}`, `POST
//! /streams/{s}/purge`) make a stream now, delete one (refused while in
//! use unless forced; crash-safe through a tombstone folder) and empty one
//! (keeping its idempotence table).

use std::process::Command;
use std::time::Duration;

use sluice_daemon::api::StreamDetail;
use sluice_tests::forward;
use sluice_tests::{sluice_bin, sluiced_bin};

fn publish(url: &str, producer: u64, n: u64) {
    let body: String = (1..=n)
        .map(|i| format!("{{\"data\": \"m{i}\"}}\n"))
        .collect();
    ureq::post(url)
        .timeout(Duration::from_secs(10))
        .set("content-type", "application/x-ndjson")
        .set("sluice-producer-id", &producer.to_string())
        .set("sluice-seq", "1")
        .send_string(&body)
        .expect("a publish");
}

#[test]
fn a_stream_shows_its_offsets_size_producers_groups_and_policies() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluiced.toml");
    std::fs::write(
        &config,
        "[spool]\nretention_bytes = \"1 GiB\"\n\n\
         [[consumers.groups]]\nstream = \"orders\"\ngroup = \"billing\"\n",
    )
    .unwrap();
    let spec = forward::spec(sluiced_bin!(), dir.path(), &config.display().to_string());
    let d = spec.start();
    let url = format!("{}/streams/orders/messages", spec.admin_url());
    publish(&url, 3, 40);
    publish(&url, 9, 25);
    let info: StreamDetail =
        serde_json::from_str(&d.get("/streams/orders")).expect("the stream's JSON");
    assert_eq!(info.name, "orders");
    assert_eq!(
        (info.first_offset, info.durable_end, info.records),
        (0, 65, 65)
    );
    assert!(
        info.bytes > 65 * 2 && info.bytes_on_disk >= info.bytes,
        "{info:?}"
    );
    assert!(info.segments >= 1, "{info:?}");
    assert!(info.last_append_us > 0, "{info:?}");
    assert_eq!(info.producer_count, 2);
    let marks: Vec<(u64, u64, bool)> = info
        .producers
        .iter()
        .map(|p| (p.producer, p.highest_seq, p.connected))
        .collect();
    assert_eq!(marks, [(3, 40, false), (9, 25, false)]);
    assert_eq!(info.groups.len(), 1);
    assert_eq!(info.groups[0].group, "billing");
    assert_eq!(info.groups[0].backlog_messages, 65);
    assert_eq!(info.fsync, "always");
    assert_eq!(info.retention_bytes, Some(1 << 30));
    assert_eq!(info.retention_age_seconds, None);
    // Unknown: 404, named.
    let missing = ureq::get(&format!("{}/streams/ordres", spec.admin_url())).call();
    match missing {
        Err(ureq::Error::Status(404, r)) => {
            let body = r.into_string().unwrap();
            assert!(body.contains("ordres"), "{body}");
        }
        other => panic!("an unknown stream: {other:?}"),
    }
    // The CLI: info as text and JSON, ls as a table.
    let admin = spec.admin.to_string();
    let sluice = |args: &[&str]| {
        let out = Command::new(sluice_bin!())
            .args(args)
            .args(["--admin", &admin])
            .output()
            .expect("sluice runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, text, err) = sluice(&["stream", "info", "orders"]);
    assert_eq!(code, Some(0), "{err}");
    for want in [
        "offsets    0 .. 65 (65 records)",
        "fsync      always",
        "retention  1024.0 MiB at most",
        "producers  2",
        "highest seq           40",
        "billing",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    let (code, json, err) = sluice(&["stream", "info", "orders", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let again: StreamDetail = serde_json::from_str(json.trim()).expect("--json is the JSON");
    assert_eq!(again.records, 65);
    let (code, table, err) = sluice(&["stream", "ls"]);
    assert_eq!(code, Some(0), "{err}");
    let row = table
        .lines()
        .find(|l| l.starts_with("orders"))
        .unwrap_or_else(|| panic!("no row for orders:\n{table}"));
    let f: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(f[1..4], ["0", "65", "65"], "{row}");
    let (code, _, err) = sluice(&["stream", "info", "ordres"]);
    assert_eq!(code, Some(1), "an unknown stream fails");
    assert!(err.contains("ordres"), "{err}");
    let status = d.terminate(Duration::from_secs(10));
    assert!(status.success());
}

/// `sluice` with `args` against the daemon at `admin`: (exit code,
/// stdout, stderr).
fn sluice_at(admin: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(sluice_bin!())
        .args(args)
        .args(["--admin", admin])
        .output()
        .expect("sluice runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Publishes one message as (`producer`, `seq`) over HTTP: (status, JSON).
fn publish_one(admin: &str, stream: &str, producer: u64, seq: u64) -> (u16, serde_json::Value) {
    let r = ureq::post(&format!("{admin}/streams/{stream}/messages"))
        .timeout(Duration::from_secs(10))
        .set("sluice-producer-id", &producer.to_string())
        .set("sluice-seq", &seq.to_string())
        .send_string("m");
    let (code, body) = match r {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap_or_default()),
        Err(e) => panic!("publish: {e}"),
    };
    (code, serde_json::from_str(&body).unwrap_or_default())
}

fn detail(d: &sluice_tests::daemon::Daemon, stream: &str) -> StreamDetail {
    serde_json::from_str(&d.get(&format!("/streams/{stream}"))).expect("the stream's JSON")
}

/// With auto_create off a publish to an unknown stream is refused;
/// `sluice stream create` makes it (empty, offsets from 0), after which
/// the publish is stored; creating it again fails (409, exit 1); a bad
/// name is refused before anything is made.
#[test]
fn create_makes_an_empty_stream_when_auto_create_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let spec = sluice_tests::daemon::DaemonSpec::new(sluiced_bin!(), dir.path())
        .arg("--streams-auto-create")
        .arg("false");
    let d = spec.start();
    let (admin, url) = (spec.admin.to_string(), spec.admin_url());
    let (code, _) = publish_one(&url, "orders", 1, 1);
    assert_ne!(code, 200, "auto_create is off");
    let (code, out, err) = sluice_at(&admin, &["stream", "create", "orders", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let c: serde_json::Value = serde_json::from_str(out.trim()).expect("--json");
    assert_eq!(c["done"], "created");
    assert_eq!(
        (c["first_offset"].as_u64(), c["durable_end"].as_u64()),
        (Some(0), Some(0))
    );
    let info = detail(&d, "orders");
    assert_eq!(
        (info.first_offset, info.durable_end, info.records),
        (0, 0, 0)
    );
    let (code, body) = publish_one(&url, "orders", 1, 1);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["offset"], 0);
    let (code, _, err) = sluice_at(&admin, &["stream", "create", "-s", "orders"]);
    assert_eq!(code, Some(1), "created twice");
    assert!(err.contains("409") && err.contains("exists"), "{err}");
    let (code, _, err) = sluice_at(&admin, &["stream", "create", ".hidden"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("400") && err.contains("invalid stream name"),
        "{err}"
    );
    let (code, _, _) = sluice_at(&admin, &["stream", "create"]);
    assert_eq!(code, Some(2), "no name: a usage error");
    assert!(d.terminate(Duration::from_secs(10)).success());
}

/// Delete is refused (409 naming them) while a producer is connected and
/// while a group has a backlog; forced, the stream, its groups and files
/// go, and the name makes a fresh stream (offsets from 0, no producers).
/// A mistyped stream made by a publish goes the same way.
#[test]
fn delete_refuses_a_stream_in_use_unless_forced_and_the_name_starts_afresh() {
    use sluice_transport::client::Producer;
    let dir = tempfile::tempdir().unwrap();
    let spec = sluice_tests::daemon::DaemonSpec::new(sluiced_bin!(), dir.path());
    let d = spec.start();
    let (admin, url) = (spec.admin.to_string(), spec.admin_url());
    // A typo made by a publish (auto_create is on): deleted at once.
    assert_eq!(publish_one(&url, "ordres", 1, 1).0, 200);
    let (code, out, err) = sluice_at(&admin, &["stream", "delete", "ordres"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("deleted stream ordres"), "{out}");
    assert!(!d.get("/streams").contains("ordres"));
    assert!(!dir.path().join("streams").join("ordres").exists());

    publish(&format!("{url}/streams/orders/messages"), 3, 5);
    // A group with a backlog: a fetch makes it and takes nothing.
    let fetched = sluice_tests::consume::post(
        spec.admin,
        "/streams/orders/groups/billing/fetch",
        r#"{"max": 1, "wait_ms": 0}"#,
        None,
    );
    assert_eq!(fetched.status, 200, "{}", fetched.body);
    let (code, _, err) = sluice_at(&admin, &["stream", "delete", "orders"]);
    assert_eq!(code, Some(1), "a group with a backlog");
    assert!(
        err.contains("409") && err.contains("\"billing\" has a backlog"),
        "{err}"
    );
    // A producer connected too.
    let rt = sluice_tests::runtime();
    let fast = spec.fast_path();
    let producer = rt.block_on(async {
        Producer::connect(
            fast.addr,
            "orders",
            8,
            sluice_tests::load::patient(fast.transport),
        )
        .await
        .expect("a producer session")
    });
    rt.block_on(producer.send(bytes::Bytes::from_static(b"p")))
        .expect("stored");
    // The session shows in /sessions within its first reports.
    let started = std::time::Instant::now();
    while !d.get("/sessions").contains("\"producer\":8") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}",
            d.get("/sessions")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, _, err) = sluice_at(&admin, &["stream", "delete", "orders", "--json"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("producer session(s) connected (producer 8)"),
        "{err}"
    );
    assert!(d.get("/streams").contains("\"orders\""), "refused, so kept");
    let (code, out, err) = sluice_at(&admin, &["stream", "delete", "orders", "--force", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let c: serde_json::Value = serde_json::from_str(out.trim()).expect("--json");
    assert_eq!(c["done"], "deleted");
    assert_eq!(c["forced_past"].as_array().map(Vec::len), Some(2), "{c}");
    assert!(!d.get("/streams").contains("\"orders\""));
    assert!(
        !d.get("/groups").contains("billing"),
        "the group is retired"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path().join("streams"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "files left: {left:?}");
    // The producer's session held the deleted stream: it is closed on
    // its next message, and the producer, reconnecting, makes a fresh
    // stream of the name (auto_create): offsets from 0, the old records
    // and idempotence table gone.
    let seq = rt
        .block_on(producer.send(bytes::Bytes::from_static(b"x")))
        .expect("stored after a reconnection");
    assert_eq!(seq, 2);
    let info = detail(&d, "orders");
    assert_eq!((info.first_offset, info.durable_end), (0, 1), "{info:?}");
    let marks: Vec<(u64, u64)> = info
        .producers
        .iter()
        .map(|p| (p.producer, p.highest_seq))
        .collect();
    assert_eq!(marks, [(8, 2)]);
    rt.block_on(producer.close()).expect("a clean close");
    let started = std::time::Instant::now();
    while d.get("/sessions").contains("\"producer\":8") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the session stays"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nothing uses it now: no --force needed.
    let (code, _, err) = sluice_at(&admin, &["stream", "delete", "orders"]);
    assert_eq!(code, Some(0), "{err}");
    // The name again: a fresh stream.
    let (code, _, err) = sluice_at(&admin, &["stream", "create", "orders"]);
    assert_eq!(code, Some(0), "{err}");
    let info = detail(&d, "orders");
    assert_eq!(
        (info.first_offset, info.durable_end, info.producer_count),
        (0, 0, 0)
    );
    assert!(info.groups.is_empty(), "{info:?}");
    let (code, body) = publish_one(&url, "orders", 3, 1);
    assert_eq!(
        (code, &body["offset"], &body["duplicate"]),
        (200, &0.into(), &false.into())
    );
    // Unknown: 404.
    let (code, _, err) = sluice_at(&admin, &["stream", "delete", "nope"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("404"), "{err}");
    assert!(d.terminate(Duration::from_secs(10)).success());
}

/// A purge removes every record (the first offset moves to the end) and
/// keeps the idempotence table: a resend of a (producer, seq) stored
/// before is a duplicate, not stored again, after a restart too; new
/// messages go on from the old end. Refused while a group has a backlog,
/// unless forced.
#[test]
fn purge_empties_a_stream_and_a_resend_is_still_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let spec = sluice_tests::daemon::DaemonSpec::new(sluiced_bin!(), dir.path());
    let d = spec.start();
    let (admin, url) = (spec.admin.to_string(), spec.admin_url());
    for seq in 1..=4 {
        assert_eq!(publish_one(&url, "orders", 5, seq).0, 200);
    }
    let fetched = sluice_tests::consume::post(
        spec.admin,
        "/streams/orders/groups/billing/fetch",
        r#"{"max": 1, "wait_ms": 0}"#,
        None,
    );
    assert_eq!(fetched.status, 200, "{}", fetched.body);
    let (code, _, err) = sluice_at(&admin, &["stream", "purge", "orders"]);
    assert_eq!(code, Some(1), "a group with a backlog");
    assert!(err.contains("409") && err.contains("billing"), "{err}");
    assert_eq!(detail(&d, "orders").records, 4, "refused, so kept");
    let (code, out, err) = sluice_at(&admin, &["stream", "purge", "orders", "--force"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("4 record(s) removed") && out.contains("offset 4"),
        "{out}"
    );
    let info = detail(&d, "orders");
    assert_eq!(
        (info.first_offset, info.durable_end, info.records),
        (4, 4, 0)
    );
    let (code, body) = publish_one(&url, "orders", 5, 2);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["duplicate"], true, "a resend after the purge: {body}");
    assert_eq!(detail(&d, "orders").records, 0, "the resend was stored");
    assert!(d.terminate(Duration::from_secs(10)).success());
    let d = spec.start();
    let (code, body) = publish_one(&url, "orders", 5, 4);
    assert_eq!(
        (code, &body["duplicate"]),
        (200, &true.into()),
        "after a restart: {body}"
    );
    let (code, body) = publish_one(&url, "orders", 5, 5);
    assert_eq!((code, &body["offset"]), (200, &4.into()), "{body}");
    let (code, out, err) = sluice_at(&admin, &["stream", "purge", "orders", "--json", "--force"]);
    assert_eq!(code, Some(0), "{err}");
    let c: serde_json::Value = serde_json::from_str(out.trim()).expect("--json");
    assert_eq!(
        (c["done"].as_str(), c["first_offset"].as_u64()),
        (Some("purged"), Some(5))
    );
    assert!(d.terminate(Duration::from_secs(10)).success());
}

/// A deletion a crash cut short (`kill -9` after the folder was renamed
/// to its tombstone, before its files were removed: made by hand here)
/// leaves no stream behind: the start removes the tombstone.
#[test]
fn a_tombstone_left_by_a_crash_is_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let spec = sluice_tests::daemon::DaemonSpec::new(sluiced_bin!(), dir.path());
    let d = spec.start();
    publish(
        &format!("{}/streams/orders/messages", spec.admin_url()),
        3,
        5,
    );
    d.kill9();
    let streams = dir.path().join("streams");
    let tomb = streams.join(".deleted-1-orders");
    std::fs::rename(streams.join("orders"), &tomb).unwrap();
    let d = spec.start();
    assert!(!tomb.exists(), "the tombstone is left");
    let listed = d.get("/streams");
    assert!(!listed.contains("orders"), "{listed}");
    let left: Vec<_> = std::fs::read_dir(&streams)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(d.terminate(Duration::from_secs(10)).success());
}
