//! Real crashes: a process appending with fsync = always is killed with
//! SIGKILL at random moments, 50 times. After each kill the spool is
//! recovered and every seq the process printed as acked must be present
//! exactly once, in order.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_daemon::spool::fs::RealFs;
use sluice_daemon::spool::{LogConfig, StreamLog};

const PRODUCER: u64 = 77;
const ROUNDS: usize = 50;

/// Every (seq) stored for PRODUCER, in offset order, after recovery.
fn stored(dir: &Path) -> Vec<u64> {
    let log = StreamLog::open(
        Arc::new(RealFs),
        &dir.join("streams").join("crash"),
        "crash",
        LogConfig::default(),
    )
    .expect("recovery after kill -9");
    let mut r = log.reader(0);
    let mut seqs = Vec::new();
    while let Some((_, rec)) = r.next_record().expect("read") {
        assert_eq!(rec.producer, PRODUCER);
        assert_eq!(
            rec.payload,
            format!("record {} ", rec.seq).repeat(1 + (rec.seq % 7) as usize),
            "payload of seq {} damaged",
            rec.seq
        );
        seqs.push(rec.seq);
    }
    seqs
}

#[test]
fn acked_appends_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("kill -9 test seed {seed} (replay with CRASH_SEED={seed})");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut acked: BTreeSet<u64> = BTreeSet::new();
    let mut kills_mid_write = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_spool-appender"))
            .arg(dir.path())
            .arg(PRODUCER.to_string())
            .arg("1000000")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start spool-appender");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx
                    .send(line.parse::<u64>().expect("a seq per line"))
                    .is_err()
                {
                    break;
                }
            }
        });
        // Let it run a random while (it has to open and recover first).
        let deadline = Instant::now() + Duration::from_millis(rng.random_range(30..250));
        let mut this_round = 0;
        while Instant::now() < deadline {
            if let Ok(seq) = rx.recv_timeout(Duration::from_millis(5)) {
                acked.insert(seq);
                this_round += 1;
            }
        }
        child.kill().expect("SIGKILL");
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "round {round}: the appender was not killed"
        );
        reader.join().unwrap();
        // Everything it printed before dying counts as acked.
        while let Ok(seq) = rx.try_recv() {
            acked.insert(seq);
            this_round += 1;
        }
        if this_round > 0 {
            kills_mid_write += 1;
        }
        let seqs = stored(dir.path());
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "round {round}: a seq is stored twice or out of order"
        );
        let set: BTreeSet<u64> = seqs.iter().copied().collect();
        let missing: Vec<_> = acked.difference(&set).take(5).collect();
        assert!(
            missing.is_empty(),
            "round {round}: acked seqs missing after kill -9: {missing:?} (seed {seed})"
        );
    }
    assert!(
        kills_mid_write >= ROUNDS / 2,
        "only {kills_mid_write} of {ROUNDS} kills hit a running appender"
    );
    eprintln!(
        "{ROUNDS} kills, {} acked appends, all present once",
        acked.len()
    );
}
