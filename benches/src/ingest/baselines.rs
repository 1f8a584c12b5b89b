//! The machine's own limits, measured once per invocation on the same file
//! system and loopback the run uses, so that every figure can be printed as
//! a ratio to them.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::baseline;
use crate::cpu;
use crate::udp_baseline::{self, RateLatency, UdpBaseline};

/// The machine's limits, measured in the same run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Baselines {
    /// 4 KiB append + fdatasync loop on the data folder's file system.
    pub fdatasync_per_sec: f64,
    pub fdatasync_p50_us: u64,
    pub fdatasync_p99_us: u64,
    /// 1 MiB write + fdatasync loop, MB/s.
    pub disk_mb_per_sec: f64,
    /// Plain UDP loop on loopback, 128 B and 1,452 B datagrams.
    pub udp_128: UdpBaseline,
    pub udp_1452: UdpBaseline,
    /// Open loop only, at the run's rate and message size, latency from
    /// the due time: the ideal raw group commit (one thread writes whatever
    /// is due and fdatasyncs it: the disk's and the timer's floor), and a
    /// UDP echo (the network's and the scheduler's floor).
    pub ideal_commit_at_rate: Option<RateLatency>,
    pub udp_echo_at_rate: Option<RateLatency>,
}

/// Measures the baselines on `dir`'s file system, about `seconds` each
/// (disk, and each UDP size); with `at_rate` (messages/s, bytes), twice that
/// for each fixed-rate baseline too.
pub fn measure_baselines(
    dir: &Path,
    seconds: f64,
    at_rate: Option<(f64, usize)>,
) -> std::io::Result<Baselines> {
    let d = Duration::from_secs_f64(seconds);
    let disk = baseline::disk(dir, 2 * d)?;
    let udp_128 = udp_baseline::udp_loop(128, d)?;
    let udp_1452 = udp_baseline::udp_loop(1452, d)?;
    let (mut ideal_commit_at_rate, mut udp_echo_at_rate) = (None, None);
    if let Some((rate, size)) = at_rate {
        let cpu_before = cpu::self_seconds();
        let (p50, p99) = baseline::ideal_group_commit(dir, rate, size.max(1), 2 * d)?;
        let ops = rate * (2 * d).as_secs_f64();
        ideal_commit_at_rate = Some(RateLatency {
            rate,
            count: ops as u64,
            p50_us: p50,
            p99_us: p99,
            cpu_us_per_op: (cpu::self_seconds() - cpu_before) * 1e6 / ops.max(1.0),
            ..RateLatency::default()
        });
        udp_echo_at_rate = Some(udp_baseline::echo_at_rate(rate, size, 2 * d)?);
    }
    Ok(Baselines {
        fdatasync_per_sec: disk.syncs_per_sec_4kib,
        fdatasync_p50_us: disk.sync_p50_us,
        fdatasync_p99_us: disk.sync_p99_us,
        disk_mb_per_sec: disk.mb_per_sec_1mib,
        udp_128,
        udp_1452,
        ideal_commit_at_rate,
        udp_echo_at_rate,
    })
}

/// About how long [`measure_baselines`] takes, seconds (for the progress
/// bar).
pub fn planned_seconds(seconds: f64, at_rate: bool) -> f64 {
    // Disk twice, UDP once per size; at a rate: commit and echo twice each.
    seconds * if at_rate { 8.0 } else { 4.0 }
}
