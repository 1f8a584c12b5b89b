//! Bad input at the data port during a real run: random bytes, truncated
//! packets, bit-flipped copies, well-formed DATA for sessions that do not
//! exist, and a HELLO for a stream name that is not allowed. None of it may
//! change what is stored, and all of it is counted.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_tests::check;
use sluice_tests::daemon::DaemonSpec;
use sluice_tests::load;
use sluice_tests::sluiced_bin;
use sluice_transport::wire::{DataWriter, Hello, Packet};

/// Sends a mix of bad datagrams at `to` until `stop`; returns how many.
fn attack(to: std::net::SocketAddr, seed: u64, stop: Arc<AtomicBool>) -> u64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut sent = 0u64;
    let mut buf = Vec::new();
    while !stop.load(Ordering::Relaxed) && sent < 200_000 {
        let kind = sent % 5;
        let datagram: Vec<u8> = match kind {
            // Random bytes of random length.
            0 => (0..rng.random_range(0..1500))
                .map(|_| rng.random())
                .collect(),
            // A well-formed DATA for a session nobody has.
            1..=3 => {
                buf.clear();
                let mut w = DataWriter::new(&mut buf, rng.random::<u64>() | 1, 1452);
                assert!(w.push_whole(rng.random_range(1..1000), b"forged payload"));
                w.finish();
                match kind {
                    1 => buf.clone(),
                    // Cut short.
                    2 => buf[..rng.random_range(0..buf.len())].to_vec(),
                    // One byte flipped: the checksum no longer holds.
                    _ => {
                        let mut v = buf.clone();
                        let i = rng.random_range(0..v.len());
                        v[i] ^= rng.random_range(1..=255u8);
                        v
                    }
                }
            }
            // A HELLO for a stream name that is not allowed.
            _ => {
                Packet::Hello(Hello {
                    producer_id: 666,
                    nonce: rng.random(),
                    first_seq: 0,
                    stream: "../../etc".into(),
                })
                .encode(0, &mut buf);
                buf.clone()
            }
        };
        let _ = s.send_to(&datagram, to);
        sent += 1;
        if sent.is_multiple_of(64) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_at_the_data_port_changes_nothing_stored_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    // Unsealed raw UDP: the endpoint itself meets the garbage (sealed
    // datagrams are tested in fast_path.rs).
    let spec = DaemonSpec::new(sluiced_bin!(), dir.path()).insecure_lan();
    let d = spec.start();
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let stop = stop.clone();
        let to = spec.data;
        std::thread::spawn(move || attack(to, 7, stop))
    };
    const EACH: u64 = 20_000;
    let plans = load::plans(&spec.udp(), "clean", 4, EACH, 100);
    let acked = load::run_all(plans, Duration::from_secs(120)).await;
    stop.store(true, Ordering::Relaxed);
    let bad = attacker.join().unwrap();
    // Let the last datagrams arrive and the counters update.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = d.metrics();
    let dropped = |reason: &str| m.value("sluice_datagrams_dropped_total", &[("reason", reason)]);
    for reason in ["unknown_session", "bad_checksum", "truncated", "bad_magic"] {
        assert!(dropped(reason) > 0.0, "no drops counted as {reason}");
    }
    let rejected = m.value("sluice_sessions_rejected_total", &[]);
    assert!(
        rejected > 0.0,
        "the HELLO for a forbidden stream name was not refused"
    );
    let status = d.terminate(Duration::from_secs(15));
    assert!(status.success());
    // Only the real producers' messages are stored, exactly once.
    let stored = check::stored(dir.path(), "clean");
    assert_eq!(stored.len() as u64, 4 * EACH);
    assert!(stored.iter().all(|(p, _)| (1..=4).contains(p)));
    check::exactly_once(&stored, &acked);
    let streams: Vec<_> = std::fs::read_dir(dir.path().join("streams"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(streams, vec!["clean"], "no other stream was created");
    eprintln!(
        "{bad} bad datagrams sent; dropped: unknown_session {}, bad_checksum {}, truncated {}, \
         bad_magic {}; {rejected} sessions refused",
        dropped("unknown_session"),
        dropped("bad_checksum"),
        dropped("truncated"),
        dropped("bad_magic"),
    );
}
