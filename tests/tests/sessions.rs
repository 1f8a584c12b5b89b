//! The per-session view (issue 22, point 3; like Aeron's LossStat):
//! `/sessions` and `sluice stat --sessions` show each open producer
//! session with its peer, what it sent, the NACKs and repairs its loss
//! needed, its credit and round trip; a session that closes leaves it.
//! A real daemon; the producer reaches it through the impairment relay
//! (5 % loss), so that repairs are there to count.

use std::process::Command;
use std::time::{Duration, Instant};

use rand::Rng;
use sluice_daemon::api::SessionList;
use sluice_testkit::relay::{self, Impairment};
use sluice_tests::daemon::{Daemon, DaemonSpec};
use sluice_tests::load;
use sluice_tests::{sluice_bin, sluiced_bin};
use sluice_transport::client::{Producer, Transport};

const STREAM: &str = "watched";
const PRODUCER: u64 = 77;
const SENT: u64 = 5_000;

fn sessions(d: &Daemon) -> SessionList {
    serde_json::from_str(&d.get("/sessions")).expect("/sessions is JSON")
}

/// Waits (at most 10 s) until `/sessions` satisfies `done`.
fn wait_for(d: &Daemon, what: &str, done: impl Fn(&SessionList) -> bool) -> SessionList {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = sessions(d);
        if done(&list) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: /sessions shows {list:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_session_shows_its_peer_traffic_repairs_credit_and_rtt() {
    let seed = load::seeded("SESSIONS_SEED").random();
    let dir = tempfile::tempdir().unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path()).insecure_lan();
    let d = spec.start();
    assert!(sessions(&d).sessions.is_empty(), "none before a producer");
    let r = relay::start(
        "127.0.0.1:0".parse().unwrap(),
        spec.data,
        Impairment::lossy(0.05),
        Impairment::lossy(0.05),
        seed,
    )
    .await
    .unwrap();
    let producer = Producer::connect(
        r.local_addr(),
        STREAM,
        PRODUCER,
        load::patient(Transport::Udp),
    )
    .await
    .expect("a session through the relay");
    for b in 0..SENT / 100 {
        let batch = (b * 100..(b + 1) * 100)
            .map(|i| load::payload(PRODUCER, i))
            .collect();
        producer.send_batch(batch).await.expect("acked");
    }
    // Every message is acked: the view shows them at its next tick.
    let list = tokio::task::block_in_place(|| {
        wait_for(&d, "the session with all it sent", |l| {
            l.sessions.len() == 1 && l.sessions[0].durable_seq == SENT
        })
    });
    let s = &list.sessions[0];
    assert_eq!((s.stream.as_str(), s.producer), (STREAM, PRODUCER));
    assert_eq!(s.via, "udp");
    let peer: std::net::SocketAddr = s.peer.parse().expect("a peer address");
    assert!(peer.ip().is_loopback(), "{peer}");
    assert_eq!(s.messages, SENT, "{s:?}");
    assert!(s.bytes >= SENT * 8, "{s:?}");
    assert!(s.nacks_sent > 0 && s.repaired > 0, "5 % loss: {s:?}");
    assert!(s.credit > 0 && s.rtt_us > 0, "{s:?}");
    // Each repair was timed, and (all acked) to its durable ack too.
    let m = tokio::task::block_in_place(|| d.metrics());
    let l = [("stream", STREAM)];
    let repairs = m.value("sluice_repair_seconds_count", &l);
    assert!(repairs > 0.0, "no repair timed at 5 % loss");
    assert_eq!(
        repairs,
        m.value("sluice_repair_to_durable_seconds_count", &l)
    );
    // The same from the CLI.
    let admin = spec.admin.to_string();
    let out = tokio::task::block_in_place(|| {
        Command::new(sluice_bin!())
            .args([
                "stat",
                "--sessions",
                "--count",
                "1",
                "--every",
                "0.2",
                "--admin",
                &admin,
            ])
            .output()
            .expect("sluice runs")
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with(STREAM) && l.contains(&s.peer))
        .unwrap_or_else(|| panic!("no line for the session: {text}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f[1], PRODUCER.to_string(), "{line}");
    assert_eq!(f[3], "udp", "{line}");
    // Closed: gone from the view.
    producer.close().await.expect("a clean close");
    tokio::task::block_in_place(|| {
        wait_for(&d, "no session after the close", |l| l.sessions.is_empty())
    });
    let status = d.terminate(Duration::from_secs(15));
    assert!(status.success());
}
