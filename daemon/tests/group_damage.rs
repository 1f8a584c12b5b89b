//! A consumer group and damage, driven through the consumer service over a
//! spool on the simulated file system:
//! - a group whose reader meets damage in the stream stops there and says
//!   so (`/groups`, the stream's damage list), keeps serving what it read,
//!   and does not retry;
//! - a group whose state holds offsets the stream no longer has is
//!   refused, or with `--repair` (or with acks before fdatasync) the
//!   stream gives those offsets up so that new records never take them;
//! - a group whose snapshot is lost is refused, or with `--repair` starts
//!   again at its cursor's floor.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_daemon::consume::group::Credit;
use sluice_daemon::consume::service::{
    ConsumeError, Consumers, ConsumersConfig, GroupStats, Member,
};
use sluice_daemon::consume::store::{Event, GroupStore};
use sluice_daemon::spool::fs::{read_all, SpoolFs};
use sluice_daemon::spool::simfs::SimFs;
use sluice_daemon::spool::{
    FsyncPolicy, LogConfig, Outcome, Record, Recovery, Spool, SpoolConfig, SpoolError, Stream,
};
use sluice_transport::offsets::ranges_of;
use sluice_transport::quic::control::StartAt;

const STREAM_DIR: &str = "/data/streams/s";

fn rec(seq: u64) -> Record {
    Record {
        producer: 7,
        seq,
        timestamp_us: 1_000 * seq,
        payload: Bytes::from(format!("message {seq:06}")),
        key: None,
    }
}

fn spool(fs: &SimFs, recovery: Recovery, fsync: FsyncPolicy) -> Arc<Spool> {
    Arc::new(
        Spool::open_with(
            Arc::new(fs.clone()),
            Path::new("/data"),
            SpoolConfig {
                log: LogConfig {
                    recovery,
                    ..LogConfig::default()
                },
                fsync,
                min_free_bytes: 0,
                ..SpoolConfig::default()
            },
        )
        .unwrap(),
    )
}

/// Stream "s" with records 1..=n (offsets 0..n).
async fn stream_with(spool: &Spool, n: u64) -> Stream {
    let s = spool.stream("s").unwrap();
    s.append_batch((1..=n).map(rec).collect())
        .await
        .unwrap()
        .unwrap();
    s
}

async fn join(consumers: &Consumers) -> Result<Member, ConsumeError> {
    let credit = Credit::Window {
        messages: 1_000,
        bytes: u64::MAX,
    };
    consumers
        .join(
            "s",
            "g",
            StartAt::Earliest,
            "m".into(),
            credit,
            "127.0.0.1:1".parse().unwrap(),
        )
        .await
}

/// The offsets delivered within `wait`.
async fn delivered(member: &mut Member, wait: Duration) -> Vec<u64> {
    let mut got = Vec::new();
    while let Ok(Some(batch)) = tokio::time::timeout(wait, member.deliveries.recv()).await {
        got.extend(batch.iter().map(|d| d.offset));
    }
    got
}

fn stats(consumers: &Consumers) -> GroupStats {
    consumers
        .stats()
        .into_iter()
        .find(|g| g.stream == "s" && g.group == "g")
        .expect("group g runs")
}

/// Waits (up to 5 s) until the group's figures pass `ok`.
async fn until(consumers: &Consumers, ok: impl Fn(&GroupStats) -> bool) -> GroupStats {
    for _ in 0..100 {
        let g = stats(consumers);
        if ok(&g) {
            return g;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stats(consumers)
}

/// The stream's (only) segment file.
fn segment(fs: &SimFs) -> PathBuf {
    let names = fs.list(Path::new(STREAM_DIR)).unwrap();
    let segs: Vec<&String> = names.iter().filter(|n| n.ends_with(".seg")).collect();
    assert_eq!(segs.len(), 1, "{names:?}");
    Path::new(STREAM_DIR).join(segs[0])
}

/// Flips a byte of `payload` where the segment holds it.
fn corrupt_payload(fs: &SimFs, payload: &[u8]) -> (PathBuf, u64) {
    let seg = segment(fs);
    let bytes = read_all(fs, &seg).unwrap();
    let at = bytes
        .windows(payload.len())
        .position(|w| w == payload)
        .expect("the payload is in the segment") as u64
        + 3;
    fs.corrupt(&seg, at, 0x20);
    (seg, at)
}

async fn stop(consumers: Arc<Consumers>, spool: Arc<Spool>) {
    consumers.shutdown().await;
    drop(consumers);
    spool.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_meets_damage_stops_there_and_says_so() {
    let fs = SimFs::new();
    let spool = spool(&fs, Recovery::Recover, FsyncPolicy::Always);
    let s = stream_with(&spool, 20).await;
    // Record 11 (offset 10) rots on the disk.
    let (seg, _) = corrupt_payload(&fs, b"message 000011");
    let consumers = Consumers::new(spool.clone(), ConsumersConfig::default());
    let mut member = join(&consumers).await.unwrap();

    // What is before the damage is delivered; nothing after it.
    let got = delivered(&mut member, Duration::from_millis(500)).await;
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    let g = until(&consumers, |g| g.stopped_at_damage.is_some()).await;
    let said = g
        .stopped_at_damage
        .clone()
        .expect("the group says it stopped");
    let seg_name = seg.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        said.contains(&seg_name) && said.contains("offsets from 10"),
        "{said}"
    );
    // /groups shows it; a group without damage does not have the field.
    let json = serde_json::to_value(&g).unwrap();
    assert_eq!(json["stopped_at_damage"], said.as_str());
    let healthy = serde_json::to_value(GroupStats::default()).unwrap();
    assert!(healthy.get("stopped_at_damage").is_none(), "{healthy}");
    // The stream knows of it (/health, /streams, /metrics).
    let damage = s.damage();
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert_eq!((damage[0].file.clone(), damage[0].from), (seg.clone(), 10));

    // What it read is still served: acks move the floor up to the damage.
    member.ack(ranges_of(&(0..10).collect::<Vec<_>>()));
    member.group.sync().await.unwrap();
    let g = until(&consumers, |g| g.floor == 10).await;
    assert_eq!(g.floor, 10);
    // New records are not read (the group stays stopped, once said).
    s.append_batch((21..=25).map(rec).collect())
        .await
        .unwrap()
        .unwrap();
    assert!(delivered(&mut member, Duration::from_millis(400))
        .await
        .is_empty());
    assert_eq!(s.damage().len(), 1);
    assert_eq!(stats(&consumers).stopped_at_damage, Some(said));
    drop((member, s));
    stop(consumers, spool).await;
}

/// A read-back of a message to deliver again (its ack deadline passed,
/// its record dropped from memory) that meets damage stops the group the
/// same way, and does not count the message as gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_back_that_meets_damage_stops_the_group() {
    let fs = SimFs::new();
    let spool = spool(&fs, Recovery::Recover, FsyncPolicy::Always);
    let s = stream_with(&spool, 5).await;
    let consumers = Consumers::new(spool.clone(), ConsumersConfig::default());
    let mut member = join(&consumers).await.unwrap();
    assert_eq!(
        delivered(&mut member, Duration::from_millis(300)).await,
        vec![0, 1, 2, 3, 4]
    );
    // Message 2 is nacked (its record is handed out, so it is read back
    // for the next delivery), after its record rotted.
    corrupt_payload(&fs, b"message 000003");
    member.nack(vec![2], Duration::ZERO);
    let g = until(&consumers, |g| g.stopped_at_damage.is_some()).await;
    assert!(g.stopped_at_damage.is_some(), "{g:?}");
    assert_eq!(g.counters.lost_to_retention, 0, "not taken for gone");
    assert!(delivered(&mut member, Duration::from_millis(300))
        .await
        .is_empty());
    assert_eq!(s.damage().len(), 1);
    // Acks of what it holds still work; the damaged message holds the floor.
    member.ack(ranges_of(&[0, 1, 3, 4]));
    member.group.sync().await.unwrap();
    assert_eq!(until(&consumers, |g| g.floor == 2).await.floor, 2);
    drop((member, s));
    stop(consumers, spool).await;
}

/// Writes a group "g" of stream "s" by hand that has acked 0..acked.
fn group_acked(fs: &SimFs, acked: u64) {
    let dir = Path::new(STREAM_DIR).join("groups/g");
    let mut g = GroupStore::create(Arc::new(fs.clone()), &dir, 0).unwrap();
    g.append(&[Event::Acked(0..acked)]).unwrap();
}

/// A group that acked offsets the stream does not have (the stream lost
/// records it had seen): refused without repair; with repair, or when
/// acks go out before fdatasync, the stream gives those offsets up and
/// the next record takes the first offset after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_state_past_the_streams_end_is_refused_or_skipped() {
    for (recovery, fsync, refused) in [
        (Recovery::Recover, FsyncPolicy::Always, true),
        (Recovery::Repair, FsyncPolicy::Always, false),
        (
            Recovery::Recover,
            FsyncPolicy::Interval(Duration::from_millis(5)),
            false,
        ),
    ] {
        let case = format!("{recovery:?}, {fsync:?}");
        let fs = SimFs::new();
        let spool = spool(&fs, recovery, fsync);
        let s = stream_with(&spool, 10).await;
        group_acked(&fs, 50);
        let consumers = Consumers::new(spool.clone(), ConsumersConfig::default());
        match join(&consumers).await {
            Err(ConsumeError::Spool(e @ SpoolError::GroupCorrupt { .. })) => {
                assert!(refused, "{case}: {e}");
                let msg = e.to_string();
                assert!(
                    msg.contains("holds offset 49 but the stream ends at 10")
                        && msg.contains("--repair"),
                    "{msg}"
                );
                assert_eq!(s.durable_end(), 10, "{case}: nothing given up");
            }
            Err(e) => panic!("{case}: {e}"),
            Ok(mut member) => {
                assert!(!refused, "{case}: not refused");
                assert_eq!(s.durable_end(), 50, "{case}: offsets 10..50 given up");
                assert_eq!(s.lost_offsets(), 40, "{case}");
                let o = s
                    .append(7, 11, Bytes::from_static(b"new"))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(o, Outcome::Stored { offset: 50 }, "{case}");
                let got = delivered(&mut member, Duration::from_millis(400)).await;
                assert_eq!(got, vec![50], "{case}: the new record is delivered");
                drop(member);
            }
        }
        drop(s);
        stop(consumers, spool).await;
    }
}

/// A group whose snapshot is damaged is refused; with repair its files
/// go aside and it starts again at its cursor's floor (what it acked
/// after the cursor was written is delivered again; nothing is skipped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_snapshot_restarts_the_group_at_its_cursor_with_repair() {
    let fs = SimFs::new();
    {
        let spool = spool(&fs, Recovery::Recover, FsyncPolicy::Always);
        drop(stream_with(&spool, 30).await);
        let consumers = Consumers::new(spool.clone(), ConsumersConfig::default());
        let mut member = join(&consumers).await.unwrap();
        assert_eq!(
            delivered(&mut member, Duration::from_millis(300))
                .await
                .len(),
            30
        );
        member.ack(ranges_of(&(0..20).collect::<Vec<_>>()));
        member.group.sync().await.unwrap();
        drop(member);
        // The cursor is written as the group stops.
        stop(consumers, spool).await;
    }
    let snapshot = Path::new(STREAM_DIR).join("groups/g/snapshot");
    fs.corrupt(&snapshot, 9, 0x01);

    let spool_r = spool(&fs, Recovery::Recover, FsyncPolicy::Always);
    assert_eq!(
        spool_r.stream("s").unwrap().cursor("g").unwrap().ack_floor,
        20
    );
    let consumers = Consumers::new(spool_r.clone(), ConsumersConfig::default());
    match consumers.start().await {
        Err(ConsumeError::Spool(SpoolError::GroupCorrupt { file, .. })) => {
            assert_eq!(file, snapshot)
        }
        other => panic!("expected the group refused, got {other:?}"),
    }
    stop(consumers, spool_r).await;

    let spool_r = spool(&fs, Recovery::Repair, FsyncPolicy::Always);
    let consumers = Consumers::new(spool_r.clone(), ConsumersConfig::default());
    consumers.start().await.unwrap();
    assert_eq!(until(&consumers, |g| g.floor == 20).await.floor, 20);
    let mut member = join(&consumers).await.unwrap();
    let got = delivered(&mut member, Duration::from_millis(300)).await;
    assert_eq!(got, (20..30).collect::<Vec<_>>());
    let aside: Vec<String> = fs
        .list(&Path::new(STREAM_DIR).join("aside"))
        .unwrap()
        .into_iter()
        .filter(|d| d.contains("group-g-lost-snapshot"))
        .collect();
    assert_eq!(aside.len(), 1);
    let folder = Path::new(STREAM_DIR).join("aside").join(&aside[0]);
    let files = fs.list(&folder).unwrap();
    assert!(
        files.contains(&"snapshot".into()) && files.contains(&"journal".into()),
        "{files:?}"
    );
    drop(member);
    stop(consumers, spool_r).await;
}
