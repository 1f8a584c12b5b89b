//! The spool's families in `/metrics`: group commits, backlog, disk
//! space, and its integrity (damage found, offsets given up, recoveries,
//! the scrub's progress).

use crate::metrics::exposition::{Exposition, Kind};
use crate::metrics::Collect;

use super::writer::{Spool, Stream};

impl Collect for Spool {
    fn collect(&self, e: &mut Exposition) {
        let mut spooled = self.open_streams();
        spooled.sort_by(|a, b| a.name().cmp(b.name()));
        e.family(
            "sluice_spool_fsync_seconds",
            Kind::Histogram,
            "Duration of each group commit: write and fdatasync.",
        );
        for s in &spooled {
            e.histogram(
                "sluice_spool_fsync_seconds",
                &[("stream", s.name())],
                &s.sync_latency(),
            );
        }
        e.family(
            "sluice_spool_batch_records",
            Kind::Histogram,
            "Records per group commit.",
        );
        for s in &spooled {
            e.histogram(
                "sluice_spool_batch_records",
                &[("stream", s.name())],
                &s.batch_sizes(),
            );
        }
        e.family(
            "sluice_spool_backlog_bytes",
            Kind::Gauge,
            "Bytes waiting for the spool writer.",
        );
        for s in &spooled {
            e.sample(
                "sluice_spool_backlog_bytes",
                &[("stream", s.name())],
                s.health().backlog_bytes,
            );
        }
        e.family(
            "sluice_spool_disk_full",
            Kind::Gauge,
            "1 while appends are held for lack of disk space.",
        );
        for s in &spooled {
            e.sample(
                "sluice_spool_disk_full",
                &[("stream", s.name())],
                u8::from(s.health().disk_full),
            );
        }
        e.family(
            "sluice_spool_durable_offset",
            Kind::Gauge,
            "Offset after the last durable record.",
        );
        for s in &spooled {
            e.sample(
                "sluice_spool_durable_offset",
                &[("stream", s.name())],
                s.durable_end(),
            );
        }

        collect_integrity(e, &spooled);
    }
}

/// What the spool found wrong and did about it, and the scrub's progress.
fn collect_integrity(e: &mut Exposition, spooled: &[Stream]) {
    use super::recoveries::Kind as R;
    let name = "sluice_spool_damage";
    e.family(
        name,
        Kind::Gauge,
        "Damage found in the stream's files while running (readers, consumer groups, the scrub); 0 when none. Restart with --repair to set it aside.",
    );
    for s in spooled {
        e.sample(name, &[("stream", s.name())], s.damage().len());
    }
    let name = "sluice_spool_lost_offsets";
    e.family(
        name,
        Kind::Gauge,
        "Offsets the stream gave up: repairs of damage, and records acked before fdatasync that a power cut took.",
    );
    for s in spooled {
        e.sample(name, &[("stream", s.name())], s.lost_offsets());
    }
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
    for (name, help, get) in [
        (
            "sluice_spool_scrub_bytes_total",
            "Bytes of sealed segments the background scrub checked.",
            (|x| x.bytes) as fn(&crate::spool::writer::ScrubStats) -> u64,
        ),
        (
            "sluice_spool_scrub_segments_total",
            "Sealed segments the background scrub checked.",
            |x| x.segments,
        ),
        (
            "sluice_spool_scrub_passes_total",
            "Scrub passes over the stream's sealed segments.",
            |x| x.passes,
        ),
    ] {
        e.family(name, Kind::Counter, help);
        for s in spooled {
            e.sample(name, &[("stream", s.name())], get(&s.scrub_stats()));
        }
    }
    let name = "sluice_spool_scrub_last_pass_timestamp_seconds";
    e.family(
        name,
        Kind::Gauge,
        "When the last scrub pass over the stream ended (Unix time; 0: none yet).",
    );
    for s in spooled {
        e.sample(
            name,
            &[("stream", s.name())],
            s.scrub_stats().last_pass_us / 1_000_000,
        );
    }
}
