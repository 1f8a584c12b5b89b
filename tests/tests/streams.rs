//! Stream lifecycle, as far as it is built (issue 22, point 2): `GET
//! /streams/{s}` and `sluice stream info|ls` show a stream in full —
//! offsets, records, size on disk, segments, the producers it knows with
//! their highest seq, its consumer groups, retention and fsync policy — to
//! a principal allowed to consume it; an unknown stream is a 404 naming it.

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
