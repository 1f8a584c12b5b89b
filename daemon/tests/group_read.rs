//! A group catching up on a backlog of large messages reads it in slices,
//! a turn of its task each, so that one group's reads (which block the
//! worker thread while the disk answers) never hold the other tasks back
//! for long; every message still arrives, in order.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_daemon::consume::budget::ConsumerLimits;
use sluice_daemon::consume::group::Credit;
use sluice_daemon::consume::service::{Consumers, ConsumersConfig};
use sluice_daemon::spool::simfs::SimFs;
use sluice_daemon::spool::{Record, Spool, SpoolConfig};
use sluice_transport::quic::control::StartAt;

const MESSAGES: u64 = 40;
const SIZE: usize = 1 << 20;

#[tokio::test]
async fn a_large_backlog_is_read_in_slices_and_arrives_whole() {
    let fs = SimFs::new();
    let spool = Arc::new(
        Spool::open_with(Arc::new(fs), Path::new("/data"), SpoolConfig::default()).unwrap(),
    );
    let records = (0..MESSAGES)
        .map(|seq| Record {
            producer: 1,
            seq: seq + 1,
            timestamp_us: seq,
            payload: Bytes::from(vec![seq as u8; SIZE]),
            key: None,
        })
        .collect();
    let s = spool.stream("big").unwrap();
    s.append_batch(records).await.unwrap().unwrap();

    // The whole backlog may be out with the member at once (the daemon's
    // default clamps a member to 16 MiB).
    let limits = ConsumerLimits {
        max_member_bytes: 1 << 30,
        max_connection_bytes: 1 << 30,
        max_out_bytes: 1 << 30,
        ..ConsumerLimits::default()
    };
    let config = ConsumersConfig {
        limits,
        ..ConsumersConfig::default()
    };
    let consumers = Consumers::new(spool.clone(), config);
    let credit = Credit::Window {
        messages: 1_000,
        bytes: u64::MAX,
    };
    let mut member = consumers
        .join(
            "big",
            "g",
            StartAt::Earliest,
            "m".into(),
            credit,
            "127.0.0.1:1".parse().unwrap(),
        )
        .await
        .unwrap();

    // The 40 MiB fit in the group's read-ahead (64 MiB): read at once, they
    // would all come in the first batch. In slices of 4 MiB, the first
    // batch holds what the turns before the member's join and its own read.
    let mut batches = Vec::new();
    let mut got = 0;
    while got < MESSAGES {
        let batch = tokio::time::timeout(Duration::from_secs(30), member.deliveries.recv())
            .await
            .expect("deliveries come")
            .unwrap();
        for d in &batch {
            assert_eq!(d.offset, got, "in order");
            assert_eq!(d.record.payload.len(), SIZE);
            assert!(d.record.payload.iter().all(|&b| b == got as u8));
            got += 1;
        }
        batches.push(batch.len());
    }
    assert_eq!(got, MESSAGES);
    assert!(
        batches[0] <= 12 && batches.len() >= 3,
        "read in slices of about 4 MiB: batches {batches:?}"
    );
}
