//! The machine's own limits, measured in the same run as the figures they
//! scale: raw write + fdatasync on the spool's file system.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Raw disk figures on one file system.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct DiskBaseline {
    /// A loop of 1 MiB write + fdatasync: MB/s (10^6 bytes).
    pub mb_per_sec_1mib: f64,
    /// A loop of 4 KiB append + fdatasync: syncs per second.
    pub syncs_per_sec_4kib: f64,
    /// Latency of one 4 KiB append + fdatasync, microseconds.
    pub sync_p50_us: u64,
    pub sync_p99_us: u64,
}

/// Measures `dir`'s file system for about `duration` in total.
pub fn disk(dir: &Path, duration: Duration) -> std::io::Result<DiskBaseline> {
    disk_detailed(dir, duration, Duration::from_millis(200)).map(|d| d.figures)
}

/// [`disk`]'s figures with what the pictures need: the 4 KiB loop's whole
/// latency histogram (microseconds), and its syncs per second in each
/// `interval` (a disk's stalls, e.g. journal commits, show there).
#[derive(Debug, Clone)]
pub struct DiskDetail {
    pub figures: DiskBaseline,
    pub sync_latency: Histogram<u64>,
    /// (seconds since the 4 KiB loop began, at the interval's end; syncs/s).
    pub syncs_per_sec_series: Vec<(f64, f64)>,
}

/// Half of `duration` for each loop: 1 MiB write + fdatasync, then 4 KiB
/// append + fdatasync.
pub fn disk_detailed(
    dir: &Path,
    duration: Duration,
    interval: Duration,
) -> std::io::Result<DiskDetail> {
    let path = dir.join("baseline.tmp");
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let half = duration / 2;

    let block = vec![0xA5u8; 1 << 20];
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < half {
        f.write_all(&block)?;
        f.sync_data()?;
        bytes += block.len() as u64;
    }
    let mb_per_sec_1mib = bytes as f64 / 1e6 / start.elapsed().as_secs_f64();

    f.set_len(0)?;
    f.sync_all()?;
    let small = vec![0x5Au8; 4096];
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    let mut series = Vec::new();
    let start = Instant::now();
    let (mut n, mut tick_n, mut tick_at) = (0u64, 0u64, start);
    while start.elapsed() < half {
        let t = Instant::now();
        f.write_all(&small)?;
        f.sync_data()?;
        let now = Instant::now();
        h.record((now - t).as_micros() as u64).ok();
        n += 1;
        if now - tick_at >= interval {
            let secs = (now - tick_at).as_secs_f64();
            series.push(((now - start).as_secs_f64(), (n - tick_n) as f64 / secs));
            (tick_n, tick_at) = (n, now);
        }
    }
    let syncs_per_sec_4kib = n as f64 / start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(DiskDetail {
        figures: DiskBaseline {
            mb_per_sec_1mib,
            syncs_per_sec_4kib,
            sync_p50_us: h.value_at_quantile(0.50),
            sync_p99_us: h.value_at_quantile(0.99),
        },
        sync_latency: h,
        syncs_per_sec_series: series,
    })
}

/// The ideal group commit at a fixed offered load, on raw files: arrivals of
/// `record_bytes` at `rate` per second; one thread writes whatever has
/// arrived and fdatasyncs it, then starts over. Latency runs from each
/// arrival's due time to the end of the sync that covered it. This is the
/// floor any spool's ack latency can reach on this disk at this load: its
/// p99 includes the disk's own stalls (journal commits), which a closed-loop
/// fdatasync percentile hides.
pub fn ideal_group_commit(
    dir: &Path,
    rate: f64,
    record_bytes: usize,
    duration: Duration,
) -> std::io::Result<(u64, u64)> {
    let h = ideal_group_commit_histogram(dir, rate, record_bytes, duration)?;
    Ok((h.value_at_quantile(0.5), h.value_at_quantile(0.99)))
}

/// [`ideal_group_commit`]'s whole latency histogram (microseconds).
pub fn ideal_group_commit_histogram(
    dir: &Path,
    rate: f64,
    record_bytes: usize,
    duration: Duration,
) -> std::io::Result<Histogram<u64>> {
    let path = dir.join("ideal.tmp");
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    let mut next_due = start;
    let buf = vec![0x33u8; record_bytes * 4096];
    while next_due < start + duration {
        let now = Instant::now();
        if now < next_due {
            std::thread::sleep(next_due - now);
            continue;
        }
        // Everything due by now goes in this batch.
        let mut dues = Vec::new();
        while next_due <= now && next_due < start + duration {
            dues.push(next_due);
            next_due += interval;
        }
        let bytes = (dues.len() * record_bytes).min(buf.len());
        f.write_all(&buf[..bytes])?;
        f.sync_data()?;
        for d in dues {
            h.record(d.elapsed().as_micros() as u64).ok();
        }
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(h)
}
