//! The snapshots (marks) at both ends of one repetition's measurement
//! window.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use sluice_daemon::metrics::scrape::Scrape;

use crate::cpu;
use crate::load::Shared;
use crate::measure::Machine;

/// A snapshot at one end of the window.
pub(super) struct Mark {
    pub at: Instant,
    pub acked: u64,
    pub acked_bytes: u64,
    pub self_cpu: f64,
    pub daemon_cpu: Option<f64>,
    pub self_threads: BTreeMap<String, f64>,
    pub daemon_threads: BTreeMap<String, f64>,
    pub machine: Option<Machine>,
    pub scrape: Option<Scrape>,
}

pub(super) async fn mark(shared: &Shared, daemon_pid: Option<u32>, admin: SocketAddr) -> Mark {
    let at = Instant::now();
    let acked = shared.acked.load(Ordering::Relaxed);
    let acked_bytes = shared.acked_bytes.load(Ordering::Relaxed);
    let self_cpu = cpu::self_seconds();
    let daemon_cpu = daemon_pid.and_then(cpu::process_seconds);
    let self_threads = cpu::threads_seconds(std::process::id());
    let daemon_threads = daemon_pid.map(cpu::threads_seconds).unwrap_or_default();
    let machine = Machine::now();
    let scrape = tokio::task::spawn_blocking(move || sluice_testkit::daemon::scrape(admin).ok())
        .await
        .ok()
        .flatten();
    Mark {
        at,
        acked,
        acked_bytes,
        self_cpu,
        daemon_cpu,
        self_threads,
        daemon_threads,
        machine,
        scrape,
    }
}
