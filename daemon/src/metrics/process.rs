//! The process and the build in `/metrics`: the standard `process_*`
//! families (CPU, memory, file descriptors, start time) read at each
//! scrape, and `sluice_build_info`. CPU time comes from `getrusage`
//! (microseconds): `/proc/self/stat` counts it in clock ticks (10 ms), so
//! a daemon that has used less than a tick would read 0. A figure that
//! cannot be read (no `/proc`) is left out; its family stays.

use std::fs;

use super::exposition::{Exposition, Kind};
use super::Collect;

/// What the process and its build export.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessMetrics;

/// The fields of `/proc/self/stat` these metrics read.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    /// Start, in clock ticks after boot.
    starttime: u64,
    vsize: u64,
    /// Resident pages.
    rss: u64,
}

/// Parses `/proc/self/stat`: the command name (field 2) is in parentheses
/// and may hold spaces and parentheses itself, so fields are counted from
/// the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    Some(Stat {
        starttime: field(22)?,
        vsize: field(23)?,
        rss: field(24)?,
    })
}

/// Boot time (Unix seconds): the `btime` line of `/proc/stat`.
fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// User plus system CPU time of the whole process, in seconds.
fn cpu_seconds() -> Option<f64> {
    // SAFETY: an all-zero rusage is a valid value; getrusage overwrites it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes the struct it is given.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return None;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(u.ru_utime) + secs(u.ru_stime))
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf takes a constant and returns a number.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|&v| v > 0)
}

/// The soft limit on open files.
fn max_fds() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return None;
    }
    Some(r.rlim_cur)
}

fn open_fds() -> Option<u64> {
    // The iterator's own descriptor is among those counted, as in the
    // Prometheus clients' figure.
    Some(fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

impl Collect for ProcessMetrics {
    fn collect(&self, e: &mut Exposition) {
        let stat = fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|t| parse_stat(&t));
        let ticks = sysconf(libc::_SC_CLK_TCK);
        let page = sysconf(libc::_SC_PAGESIZE);
        let btime = fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| parse_btime(&t));

        let name = "process_cpu_seconds_total";
        e.family(
            name,
            Kind::Counter,
            "Total user and system CPU time spent in seconds.",
        );
        if let Some(cpu) = cpu_seconds() {
            e.sample(name, &[], cpu);
        }
        let name = "process_resident_memory_bytes";
        e.family(name, Kind::Gauge, "Resident memory size in bytes.");
        if let (Some(s), Some(page)) = (stat, page) {
            e.sample(name, &[], s.rss * page);
        }
        let name = "process_virtual_memory_bytes";
        e.family(name, Kind::Gauge, "Virtual memory size in bytes.");
        if let Some(s) = stat {
            e.sample(name, &[], s.vsize);
        }
        let name = "process_open_fds";
        e.family(name, Kind::Gauge, "Number of open file descriptors.");
        if let Some(n) = open_fds() {
            e.sample(name, &[], n);
        }
        let name = "process_max_fds";
        e.family(
            name,
            Kind::Gauge,
            "Maximum number of open file descriptors.",
        );
        if let Some(n) = max_fds() {
            e.sample(name, &[], n);
        }
        let name = "process_start_time_seconds";
        e.family(
            name,
            Kind::Gauge,
            "Start time of the process since unix epoch in seconds.",
        );
        if let (Some(s), Some(hz), Some(boot)) = (stat, ticks, btime) {
            e.sample(name, &[], boot as f64 + s.starttime as f64 / hz as f64);
        }

        let name = "sluice_build_info";
        e.family(
            name,
            Kind::Gauge,
            "1, labelled with the version of sluiced that runs.",
        )
        .sample(name, &[("version", env!("CARGO_PKG_VERSION"))], 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::scrape::Scrape;

    #[test]
    fn stat_fields_are_counted_from_the_end_of_the_name() {
        // A name with a space and a parenthesis, as a process may be named.
        let line = "4242 (sl uiced) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    123 45 0 0 20 0 9 0 98765 1234567890 2048 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                starttime: 98765,
                vsize: 1_234_567_890,
                rss: 2048,
            })
        );
        assert_eq!(parse_stat("4242 (cut short) S 1 2"), None);
        assert_eq!(parse_stat("no name at all"), None);
    }

    #[test]
    fn btime_is_read_from_its_line() {
        let text = "cpu  1 2 3\nintr 5\nbtime 1765000000\nprocesses 9\n";
        assert_eq!(parse_btime(text), Some(1_765_000_000));
        assert_eq!(parse_btime("cpu 1\n"), None);
    }

    #[test]
    fn this_process_reads_back_with_its_build() {
        let mut e = Exposition::default();
        ProcessMetrics.collect(&mut e);
        let s = Scrape::parse(&e.finish());
        assert!(s.value("process_resident_memory_bytes", &[]) > 1e5);
        assert!(s.value("process_virtual_memory_bytes", &[]) > 1e5);
        let fds = s.value("process_open_fds", &[]);
        assert!(fds >= 3.0 && fds < s.value("process_max_fds", &[]), "{fds}");
        let start = s.value("process_start_time_seconds", &[]);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start > now - 86_400.0 && start <= now + 1.0,
            "{start} vs {now}"
        );
        // A test process has run its code by now: microseconds, not ticks,
        // so even a short life reads above zero.
        assert!(s.value("process_cpu_seconds_total", &[]) > 0.0);
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(s.value("sluice_build_info", &[("version", version)]), 1.0);
    }
}
