//! What is in a spool after a run, and the checks of the one promise:
//! every acked (producer, seq) is stored, exactly once, in per-producer
//! order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use sluice_daemon::spool::fs::RealFs;
use sluice_daemon::spool::{LogConfig, Record, StreamLog};

/// Every record of `stream` in the data folder `dir`, in offset order
/// (opened as the daemon would: run it only once the daemon has stopped).
pub fn records(dir: &Path, stream: &str) -> Vec<Record> {
    let log = StreamLog::open(
        Arc::new(RealFs),
        &dir.join("streams").join(stream),
        stream,
        LogConfig::default(),
    )
    .unwrap_or_else(|e| panic!("open stream {stream} in {}: {e}", dir.display()));
    let mut r = log.reader(0);
    let mut v = Vec::new();
    while let Some((_, rec)) = r.next_record().expect("read the spool") {
        v.push(rec);
    }
    v
}

/// Every (producer, seq) of `stream`, in offset order.
pub fn stored(dir: &Path, stream: &str) -> Vec<(u64, u64)> {
    records(dir, stream)
        .into_iter()
        .map(|r| (r.producer, r.seq))
        .collect()
}

/// Acked seqs by producer.
pub type Acked = BTreeMap<u64, BTreeSet<u64>>;

/// Panics unless every acked (producer, seq) is in `records` and no
/// producer's seq is stored twice or out of order.
pub fn exactly_once(records: &[(u64, u64)], acked: &Acked) {
    let mut by_producer: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for &(p, s) in records {
        by_producer.entry(p).or_default().push(s);
    }
    for (p, seqs) in &by_producer {
        if let Some(w) = seqs.windows(2).find(|w| w[0] >= w[1]) {
            panic!(
                "producer {p}: seq {} stored after seq {} (a duplicate or out of order)",
                w[1], w[0]
            );
        }
    }
    for (p, want) in acked {
        let have: BTreeSet<u64> = by_producer.get(p).into_iter().flatten().copied().collect();
        let missing: Vec<_> = want.difference(&have).take(5).collect();
        assert!(
            missing.is_empty(),
            "producer {p}: acked but not stored: {missing:?} (of {} acked)",
            want.len()
        );
    }
}
