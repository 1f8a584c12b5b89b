//! A dead letter whose append to the dead-letter stream is held by a full
//! disk, or whose message cannot be read back, is stored once the disk has
//! room or reads work again, without a restart, and the group goes on
//! meanwhile.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_daemon::consume::dead_letter;
use sluice_daemon::consume::group::{Credit, GroupConfig};
use sluice_daemon::consume::service::{Consumers, ConsumersConfig, GroupSettings, Member};
use sluice_daemon::spool::fs::SpoolFs;
use sluice_daemon::spool::simfs::SimFs;
use sluice_daemon::spool::{Record, Spool, SpoolConfig};
use sluice_transport::offsets::ranges_of;
use sluice_transport::quic::control::StartAt;

fn rec(seq: u64) -> Record {
    Record {
        producer: 7,
        seq,
        timestamp_us: 1_000 * seq,
        payload: Bytes::from(format!("message {seq}")),
        key: None,
    }
}

/// The dead-letter stream's records (none if it does not exist yet).
fn dead_letters(spool: &Spool, name: &str) -> Vec<dead_letter::DeadLetter> {
    if !spool.stream_names().iter().any(|n| n == name) {
        return Vec::new();
    }
    let mut r = spool.stream(name).unwrap().reader(0);
    let mut got = Vec::new();
    while let Some((_, rec)) = r.next_record().unwrap() {
        got.push(dead_letter::decode(&rec.payload).unwrap());
    }
    got
}

/// A spool on `fs` with messages 1..=3 in stream "s", and the one member
/// of group "g" (one message of credit, ack deadline 1 s, dead after one
/// delivery), which holds message 0 (offset 0).
async fn one_member(fs: &SimFs, min_free_bytes: u64) -> (Arc<Spool>, Arc<Consumers>, Member) {
    let spool = Arc::new(
        Spool::open_with(
            Arc::new(fs.clone()),
            Path::new("/data"),
            SpoolConfig {
                min_free_bytes,
                ..SpoolConfig::default()
            },
        )
        .unwrap(),
    );
    let s = spool.stream("s").unwrap();
    s.append_batch(vec![rec(1), rec(2), rec(3)])
        .await
        .unwrap()
        .unwrap();
    let consumers = Consumers::new(
        spool.clone(),
        ConsumersConfig {
            defaults: GroupSettings {
                machine: GroupConfig {
                    max_deliveries: 1,
                    ack_deadline: Duration::from_secs(1),
                    ..GroupConfig::default()
                },
                ..GroupSettings::default()
            },
            groups: Vec::new(),
            ..ConsumersConfig::default()
        },
    );
    let window = Credit::Window {
        messages: 1,
        bytes: u64::MAX,
    };
    let mut member = consumers
        .join(
            "s",
            "g",
            StartAt::Earliest,
            "m".into(),
            window,
            "127.0.0.1:1".parse().unwrap(),
        )
        .await
        .unwrap();
    let first = member.deliveries.recv().await.unwrap();
    assert_eq!(first[0].offset, 0);
    (spool, consumers, member)
}

/// The group goes on: the member's next delivery, within 5 s, is `offset`.
async fn next_is(member: &mut Member, offset: u64) {
    let next = tokio::time::timeout(Duration::from_secs(5), member.deliveries.recv())
        .await
        .expect("the group goes on")
        .unwrap();
    assert_eq!(next[0].offset, offset);
}

/// Message 0 (payload "message 1", delivered once) reaches the dead-letter
/// stream within 10 s, and is there once 1.5 s later still.
async fn message_0_is_stored_once(spool: &Spool, dlq: &str) {
    let until = Instant::now() + Duration::from_secs(10);
    let mut got = dead_letters(spool, dlq);
    while got.is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        got = dead_letters(spool, dlq);
    }
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].offset, got[0].deliveries), (0, 1));
    assert_eq!(&got[0].payload[..], b"message 1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(dead_letters(spool, dlq).len(), 1, "stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_could_not_be_stored_is_stored_once_there_is_room() {
    let fs = SimFs::new();
    let (spool, _consumers, mut member) = one_member(&fs, 50_000).await;

    // The disk fills up (below the spool's free-space floor, which holds
    // appends; room for the group's journal), and message 0's deadline
    // passes: it is dead.
    fs.set_capacity(Some(u64::MAX / 4));
    let used = u64::MAX / 4 - fs.available_space(Path::new("/data")).unwrap();
    fs.set_capacity(Some(used + 20_000));
    // The group goes on while the dead letter's append is held: message 1
    // comes, its ack frees the member's credit, message 2 comes.
    for offset in [1, 2] {
        next_is(&mut member, offset).await;
        // Time for the dead letter's append to start (and be held).
        tokio::time::sleep(Duration::from_millis(300)).await;
        member.ack(ranges_of(&[offset]));
    }
    let dlq = dead_letter::dlq_stream_name("s").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        dead_letters(&spool, &dlq).is_empty(),
        "stored on a full disk?"
    );

    // Room again: stored within a retry or two, once.
    fs.set_capacity(None);
    message_0_is_stored_once(&spool, &dlq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_whose_message_could_not_be_read_is_stored_once_reads_work() {
    let fs = SimFs::new();
    let (spool, _consumers, mut member) = one_member(&fs, 0).await;

    // Reads fail (the group read all three messages ahead already), and
    // message 0's deadline passes: it is dead, journaled (writes work), but
    // its message cannot be read back for the dead letter.
    fs.fail_reads(true);
    for offset in [1, 2] {
        next_is(&mut member, offset).await;
        member.ack(ranges_of(&[offset]));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let dlq = dead_letter::dlq_stream_name("s").unwrap();
    assert!(
        !spool.stream_names().contains(&dlq),
        "a dead letter stored without its message?"
    );

    // Reads work again: stored within a retry or two, once, with its
    // message.
    fs.fail_reads(false);
    message_0_is_stored_once(&spool, &dlq).await;
}
