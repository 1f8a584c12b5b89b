//! End to end with real `sluiced` processes on loopback: producers publish
//! through the client library; the spool is then read back from its files.
//!
//! (These live in the daemon package because Cargo hands a test the path of
//! its own package's binaries only.)

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_daemon::spool::fs::RealFs;
use sluice_daemon::spool::{LogConfig, StreamLog};
use sluice_transport::client::{Producer, ProducerOptions};
use sluice_transport::proto::SenderConfig;

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Daemon {
    child: Child,
    data: SocketAddr,
}

impl Daemon {
    fn start(dir: &Path, data: SocketAddr, admin: SocketAddr) -> Daemon {
        let child = Command::new(env!("CARGO_BIN_EXE_sluiced"))
            .arg("--spool-dir")
            .arg(dir)
            .arg("--data-listen")
            .arg(data.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .arg("--spool-min-free-bytes")
            .arg("0")
            .arg("--log-level")
            .arg("warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sluiced");
        // Ready when the admin port answers.
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(admin).is_err() {
            assert!(Instant::now() < deadline, "sluiced did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { child, data }
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "sluiced did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Every (producer, seq) in `stream`, in offset order.
fn stored(dir: &Path, stream: &str) -> Vec<(u64, u64)> {
    let log = StreamLog::open(
        Arc::new(RealFs),
        &dir.join("streams").join(stream),
        stream,
        LogConfig::default(),
    )
    .unwrap();
    let mut r = log.reader(0);
    let mut v = Vec::new();
    while let Some((_, rec)) = r.next_record().unwrap() {
        v.push((rec.producer, rec.seq));
    }
    v
}

fn check_exactly_once(records: &[(u64, u64)], acked: &BTreeMap<u64, BTreeSet<u64>>) {
    let mut by_producer: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for &(p, s) in records {
        by_producer.entry(p).or_default().push(s);
    }
    for (p, seqs) in &by_producer {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "producer {p}: a seq stored twice or out of order"
        );
    }
    for (p, want) in acked {
        let have: BTreeSet<u64> = by_producer
            .get(p)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let missing: Vec<_> = want.difference(&have).take(5).collect();
        assert!(
            missing.is_empty(),
            "producer {p}: acked but missing {missing:?}"
        );
    }
}

fn options() -> ProducerOptions {
    ProducerOptions {
        sender: SenderConfig {
            handshake_timeout: Duration::from_secs(30),
            ..SenderConfig::default()
        },
        max_reconnects: 1000,
        ..ProducerOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_producers_all_acked_all_stored_once_then_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), free_udp(), free_tcp());
    const PRODUCERS: u64 = 8;
    const EACH: u64 = 25_000;
    let mut tasks = Vec::new();
    for p in 1..=PRODUCERS {
        let addr = d.data;
        tasks.push(tokio::spawn(async move {
            let producer = Producer::connect(addr, "events", p, options())
                .await
                .unwrap();
            for chunk in 0..EACH / 500 {
                let batch = (0..500)
                    .map(|i| Bytes::from(format!("p{p} m{}", chunk * 500 + i)))
                    .collect();
                producer.send_batch(batch).await.unwrap();
            }
            producer.close().await.unwrap();
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .unwrap()
            .unwrap();
    }
    let status = d.terminate();
    assert!(status.success(), "sluiced exit status {status}");
    let records = stored(dir.path(), "events");
    assert_eq!(records.len() as u64, PRODUCERS * EACH);
    let acked = (1..=PRODUCERS).map(|p| (p, (1..=EACH).collect())).collect();
    check_exactly_once(&records, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acked_message() {
    let dir = tempfile::tempdir().unwrap();
    let (data, admin) = (free_udp(), free_tcp());
    let mut daemon = Some(Daemon::start(dir.path(), data, admin));
    let acked: Arc<Mutex<BTreeMap<u64, BTreeSet<u64>>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for p in 1..=4u64 {
        let (acked, stop) = (acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let producer = Producer::connect(data, "crash", p, options())
                .await
                .unwrap();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let batch = (0..50)
                    .map(|k| Bytes::from(format!("{p}:{}", i + k)))
                    .collect();
                i += 50;
                // A send resolves only once durable; record what was acked.
                match producer.send_batch(batch).await {
                    Ok(seqs) => acked.lock().unwrap().entry(p).or_default().extend(seqs),
                    Err(e) => panic!("producer {p}: {e}"),
                }
            }
        }));
    }
    const ROUNDS: usize = 20;
    for round in 0..ROUNDS {
        tokio::time::sleep(Duration::from_millis(150 + 37 * (round as u64 % 5))).await;
        daemon.take().unwrap().kill9();
        daemon = Some(Daemon::start(dir.path(), data, admin));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
    }
    daemon.take().unwrap().terminate();
    let acked = acked.lock().unwrap().clone();
    let total: usize = acked.values().map(BTreeSet::len).sum();
    assert!(
        total > 1000,
        "only {total} messages acked across {ROUNDS} kills"
    );
    check_exactly_once(&stored(dir.path(), "crash"), &acked);
    eprintln!("{ROUNDS} kill -9 rounds, {total} acked messages, all stored once");
}
