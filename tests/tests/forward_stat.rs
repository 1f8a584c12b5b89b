//! The operators' view of a forward (issue 21, point 6; daemon/FORWARD.md):
//! with its NATS JetStream cluster (one node on loopback) stopped, the lag
//! grows in `/metrics` and `sluice stat` (messages, bytes, age of the
//! oldest message), the forward shows disconnected and the outage is
//! logged once; with the cluster back, the lag drains to 0 and the forward
//! shows connected, to its server.
//!
//! Needs `nats-server` (scripts/setup.sh installs it): without it the test
//! says why it skips; with `CI=true` a skip fails.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_daemon::metrics::scrape::Scrape;
use sluice_testkit::nats::{require_nats_server, Cluster};
use sluice_tests::daemon::{Daemon, DaemonSpec};
use sluice_tests::forward;
use sluice_tests::{sluice_bin, sluiced_bin};

const STREAM: &str = "orders";
const FORWARD: [(&str, &str); 1] = [("forward", "js")];
const LAG: [(&str, &str); 2] = [("forward", "js"), ("stream", STREAM)];

/// sluiced forwarding stream `orders` to `servers` (the target stream
/// created by the forward), logging to `dir`/sluiced.log.
fn spec(dir: &Path, servers: &[String]) -> DaemonSpec {
    let config = forward::write_config(
        dir,
        STREAM,
        servers,
        "SLUICE",
        "create = true\nmax_in_flight = 64",
    );
    forward::spec(sluiced_bin!(), dir, &config)
}

/// Publishes `n` messages of producer 1 from `first_seq` over HTTP as one
/// batch, again until the daemon takes it (10 s at most).
fn publish(spec: &DaemonSpec, first_seq: u64, n: u64) {
    let body: String = (first_seq..first_seq + n)
        .map(|s| format!("{{\"data\": \"payload-{s:06}\"}}\n"))
        .collect();
    let url = format!("{}/streams/{STREAM}/messages", spec.admin_url());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = ureq::post(&url)
            .timeout(Duration::from_secs(5))
            .set("content-type", "application/x-ndjson")
            .set("sluice-producer-id", "1")
            .set("sluice-seq", &first_seq.to_string())
            .send_string(&body);
        match r {
            Ok(_) => return,
            Err(e) => assert!(
                Instant::now() < deadline,
                "batch {first_seq} not taken: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Scrapes until `ok` holds for the metrics (at most `within`); returns
/// that scrape, or panics with `what` and the forward's families.
fn wait_until(d: &Daemon, what: &str, within: Duration, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + within;
    loop {
        let s = d.metrics();
        if ok(&s) {
            return s;
        }
        if Instant::now() >= deadline {
            let forward: Vec<String> = s
                .samples
                .iter()
                .filter(|x| x.name.starts_with("sluice_forward_") && !x.name.contains("puback"))
                .map(|x| format!("{} {:?} {}", x.name, x.labels, x.value))
                .collect();
            panic!("{what}: not within {within:?}; {forward:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One refresh of `sluice stat`.
fn stat(spec: &DaemonSpec) -> String {
    let out = Command::new(sluice_bin!())
        .args([
            "stat",
            "--admin",
            &spec.admin.to_string(),
            "--count",
            "1",
            "--every",
            "0.2",
        ])
        .output()
        .expect("sluice stat runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sluice stat: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The fields of stat's line for forward js and stream orders.
fn stat_row(text: &str) -> Vec<String> {
    let line = text
        .lines()
        .find(|l| l.starts_with("js ") && l.split_whitespace().nth(1) == Some(STREAM))
        .unwrap_or_else(|| panic!("no forward line in:\n{text}"));
    line.split_whitespace().map(str::to_owned).collect()
}

/// Lines of the outage's first warning in the log (connect.rs says it once
/// per outage, then a reminder a minute).
fn outage_lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("sluiced.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.contains("the NATS cluster is unreachable (")
                && l.contains("connecting again until it is back")
        })
        .count()
}

#[test]
fn lag_and_connection_state_show_an_outage_and_its_end() {
    if !require_nats_server("lag_and_connection_state_show_an_outage_and_its_end") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 1);
    let spec = spec(dir.path(), &cluster.client_urls());
    let d = spec.start();
    // Up: connected to the node, what is published forwarded.
    publish(&spec, 1, 100);
    let s = wait_until(
        &d,
        "100 forwarded, connected, lag 0",
        Duration::from_secs(60),
        |s| {
            s.value("sluice_forward_messages_total", &LAG) >= 100.0
                && s.value("sluice_forward_connected", &FORWARD) == 1.0
                && s.value("sluice_forward_lag_messages", &LAG) == 0.0
        },
    );
    assert_eq!(
        s.value("sluice_forward_disconnected_seconds", &FORWARD),
        0.0
    );
    let port = cluster.url(0).rsplit(':').next().unwrap().to_owned();
    let servers = s.label_values("sluice_forward_server_info", "server");
    assert!(
        servers.len() == 1 && servers[0].ends_with(&format!(":{port}")),
        "connected to {servers:?}, the node listens on {port}"
    );
    assert_eq!(outage_lines(dir.path()), 0, "no outage yet");

    // Down: the lag grows, in messages, bytes and age.
    cluster.kill9(0);
    wait_until(&d, "disconnected", Duration::from_secs(30), |s| {
        s.value("sluice_forward_connected", &FORWARD) == 0.0
    });
    let first_at = Instant::now();
    for b in 0..3 {
        publish(&spec, 101 + b * 100, 100);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let s = wait_until(
        &d,
        "lag of the 300 messages",
        Duration::from_secs(30),
        |s| {
            s.value("sluice_forward_lag_messages", &LAG) == 300.0
                && s.value("sluice_forward_lag_seconds", &LAG) > 0.0
        },
    );
    // Each payload is 14 bytes ("payload-000101").
    let bytes = s.value("sluice_forward_lag_bytes", &LAG);
    assert!(
        (300.0 * 14.0..=300.0 * 64.0).contains(&bytes),
        "lag bytes {bytes}"
    );
    // Its age is taken at the scrape: past the 1.5 s slept since the last
    // publish, within the time since the first (a second's slack for the
    // record's clock).
    let age = s.value("sluice_forward_lag_seconds", &LAG);
    assert!(
        (1.5..=first_at.elapsed().as_secs_f64() + 1.0).contains(&age),
        "lag age {age}"
    );
    assert!(s.value("sluice_forward_disconnected_seconds", &FORWARD) >= 1.0);
    assert!(
        s.value(
            "sluice_forward_errors_total",
            &[("forward", "js"), ("kind", "unreachable")]
        ) >= 1.0
    );
    assert!(s
        .label_values("sluice_forward_server_info", "server")
        .is_empty());
    let text = stat(&spec);
    eprintln!("sluice stat with the cluster down:\n{text}");
    let row = stat_row(&text);
    // forward stream conn fwd/s forwarded lag <lag bytes: 2 fields> oldest ...
    assert_eq!(
        (row[2].as_str(), row[4].as_str(), row[5].as_str()),
        ("no", "100", "300"),
        "{text}"
    );
    assert!(row[7] == "KiB" || row[7] == "B", "{text}");
    assert!(row[8].ends_with('s') && row[8] != "-", "oldest: {text}");
    assert!(
        text.contains("! forward js: NATS cluster unreachable for"),
        "{text}"
    );
    assert!(text.contains("unreachable "), "errors by kind: {text}");
    assert_eq!(outage_lines(dir.path()), 1, "the outage is said once");

    // Back: the lag drains, the forward is connected again.
    cluster.restart(0);
    let s = wait_until(
        &d,
        "lag 0 and connected again",
        Duration::from_secs(90),
        |s| {
            s.value("sluice_forward_connected", &FORWARD) == 1.0
                && s.value("sluice_forward_lag_messages", &LAG) == 0.0
        },
    );
    assert_eq!(s.value("sluice_forward_lag_bytes", &LAG), 0.0);
    assert_eq!(s.value("sluice_forward_lag_seconds", &LAG), 0.0);
    assert_eq!(
        s.value("sluice_forward_disconnected_seconds", &FORWARD),
        0.0
    );
    assert!(s.value("sluice_forward_messages_total", &LAG) >= 400.0);
    let text = stat(&spec);
    eprintln!("sluice stat with the cluster back:\n{text}");
    let row = stat_row(&text);
    assert_eq!((row[2].as_str(), row[5].as_str()), ("yes", "0"), "{text}");
    assert!(text.contains("forward js: connected to "), "{text}");
    assert_eq!(outage_lines(dir.path()), 1, "one outage, said once");
    let status = d.terminate(Duration::from_secs(10));
    assert!(status.success(), "sluiced stopped with {status}");
}
