//! The spool's families in `/metrics`: group commits, backlog, disk
//! space, and its integrity (damage found, offsets given up, recoveries,
//! the scrub's progress).

use crate::metrics::exposition::{Exposition, Kind};
use crate::metrics::Collect;

use super::writer::{Spool, Stream};

/// Reads one figure of a stream.
type Field = fn(&Stream) -> u64;

/// One number per stream: (metric, kind, help, field), in the order
/// `/metrics` shows them (as `consume/metrics.rs` lists a group's).
const FIGURES: &[(&str, Kind, &str, Field)] = &[
    (
        "sluice_spool_backlog_bytes",
        Kind::Gauge,
        "Bytes waiting for the spool writer.",
        |s| s.health().backlog_bytes,
    ),
    (
        "sluice_spool_disk_full",
        Kind::Gauge,
        "1 while appends are held for lack of disk space.",
        |s| u64::from(s.health().disk_full),
    ),
    (
        "sluice_spool_first_offset",
        Kind::Gauge,
        "Offset of the oldest record retention kept.",
        |s| s.first_offset(),
    ),
    (
        "sluice_spool_stream_bytes",
        Kind::Gauge,
        "Bytes of the records the stream holds (what retention.bytes counts).",
        |s| s.total_bytes(),
    ),
    (
        "sluice_spool_durable_offset",
        Kind::Gauge,
        "Offset after the last durable record.",
        |s| s.durable_end(),
    ),
    (
        "sluice_spool_damage",
        Kind::Gauge,
        "Damage found in the stream's files while running (readers, consumer groups, the scrub); 0 when none. Restart with --repair to set it aside.",
        |s| s.damage().len() as u64,
    ),
    (
        "sluice_spool_lost_offsets",
        Kind::Gauge,
        "Offsets the stream gave up: repairs of damage, and records acked before fdatasync that a power cut took.",
        |s| s.lost_offsets(),
    ),
    (
        "sluice_spool_scrub_bytes_total",
        Kind::Counter,
        "Bytes of sealed segments the background scrub checked.",
        |s| s.scrub_stats().bytes,
    ),
    (
        "sluice_spool_scrub_segments_total",
        Kind::Counter,
        "Sealed segments the background scrub checked.",
        |s| s.scrub_stats().segments,
    ),
    (
        "sluice_spool_scrub_passes_total",
        Kind::Counter,
        "Scrub passes over the stream's sealed segments.",
        |s| s.scrub_stats().passes,
    ),
    (
        "sluice_spool_scrub_last_pass_timestamp_seconds",
        Kind::Gauge,
        "When the last scrub pass over the stream ended (Unix time; 0: none yet).",
        |s| s.scrub_stats().last_pass_us / 1_000_000,
    ),
];

impl Collect for Spool {
    fn collect(&self, e: &mut Exposition) {
        let mut spooled = self.open_streams();
        spooled.sort_by(|a, b| a.name().cmp(b.name()));
        for (name, help, read) in [
            (
                "sluice_spool_fsync_seconds",
                "Duration of each group commit: write and fdatasync.",
                Stream::sync_latency as fn(&Stream) -> _,
            ),
            (
                "sluice_spool_queue_seconds",
                "How long each append waited for the group commit that took it to begin (the previous commit, and the queue ahead of it).",
                Stream::queue_latency,
            ),
            (
                "sluice_spool_write_seconds",
                "Duration of each group commit's write, without its fdatasync.",
                Stream::write_latency,
            ),
            (
                "sluice_spool_fdatasync_seconds",
                "Duration of each group commit's fdatasync alone.",
                Stream::fdatasync_latency,
            ),
            (
                "sluice_spool_batch_records",
                "Records per group commit.",
                Stream::batch_sizes,
            ),
        ] {
            e.family(name, Kind::Histogram, help);
            for s in &spooled {
                e.histogram(name, &[("stream", s.name())], &read(s));
            }
        }
        for &(name, kind, help, field) in FIGURES {
            e.family(name, kind, help);
            for s in &spooled {
                e.sample(name, &[("stream", s.name())], field(s));
            }
        }
        collect_disk(e, self, &spooled);
        collect_recoveries(e, &spooled);
    }
}

/// Space: what each stream's files take on disk, and what the data
/// folder's file system has left. A figure the file system cannot give is
/// left out (a scrape must not fail for it).
fn collect_disk(e: &mut Exposition, spool: &Spool, spooled: &[Stream]) {
    let name = "sluice_spool_disk_bytes";
    e.family(
        name,
        Kind::Gauge,
        "Bytes the stream's files take on disk: segments (preallocated ones whole), indexes, its groups' state.",
    );
    for s in spooled {
        if let Ok(Some(n)) = s.fs().disk_usage(s.dir()) {
            e.sample(name, &[("stream", s.name())], n);
        }
    }
    let space = spool.space().ok();
    let name = "sluice_spool_fs_free_bytes";
    e.family(
        name,
        Kind::Gauge,
        "Bytes free for sluiced on the spool's file system (appends are held below spool.min_free_bytes).",
    );
    if let Some(sp) = space {
        e.sample(name, &[], sp.free);
    }
    let name = "sluice_spool_fs_size_bytes";
    e.family(name, Kind::Gauge, "Size of the spool's file system.");
    if let Some(size) = space.and_then(|sp| sp.size) {
        e.sample(name, &[], size);
    }
}

/// What recovery did, by kind (a second label).
fn collect_recoveries(e: &mut Exposition, spooled: &[Stream]) {
    use super::recoveries::Kind as R;
    let name = "sluice_spool_recoveries_total";
    e.family(
        name,
        Kind::Counter,
        "What recovery did, by kind: torn tails cut at starts (bytes set aside), repairs, losses to early acks, repairs of consumer groups.",
    );
    for s in spooled {
        let all = s.recoveries();
        for (kind, k) in [
            ("torn-tail", R::TornTail),
            ("repair", R::Repair),
            ("early-acks", R::EarlyAcks),
            ("group-repair", R::GroupRepair),
        ] {
            let n = all.iter().filter(|r| r.kind == k).count();
            e.sample(name, &[("stream", s.name()), ("kind", kind)], n);
        }
    }
}
