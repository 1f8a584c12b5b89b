//! CPU time of processes: this one (getrusage) and another (/proc/PID/stat),
//! and of their threads by name (/proc/PID/task/*/schedstat, in
//! nanoseconds, else the clock ticks of .../stat).

use std::collections::BTreeMap;

/// CPU seconds (user + system, every thread) this process used so far.
pub fn self_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we hand it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU seconds (utime + stime, every thread) of process `pid` so far, from
/// `/proc/PID/stat`; `None` if it cannot be read (gone, not Linux).
pub fn process_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat, clock_ticks())
}

/// CPU seconds of the live threads of `pid`, summed by thread name (e.g.
/// `tokio-rt-worker`, `spool-bench`, `pacer`). Threads that ended are not
/// in it.
pub fn threads_seconds(pid: u32) -> BTreeMap<String, f64> {
    let mut by_name = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    let ticks = clock_ticks();
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let name = stat
            .find('(')
            .zip(stat.rfind(')'))
            .map_or("?", |(a, b)| &stat[a + 1..b])
            .to_owned();
        // Nanoseconds on the CPU where the kernel keeps them: the clock
        // ticks of `stat` (10 ms) are too coarse for a thread's share of
        // a half-second row.
        let precise = std::fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| parse_schedstat(&s));
        if let Some(secs) = precise.or_else(|| parse_stat(&stat, ticks)) {
            *by_name.entry(name).or_insert(0.0) += secs;
        }
    }
    by_name
}

/// The time on the CPU (the first field, nanoseconds) of a
/// `/proc/PID/task/TID/schedstat`, in seconds.
fn parse_schedstat(s: &str) -> Option<f64> {
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 / 1e9)
}

/// `later - earlier` per name (names only in `later` count from zero).
pub fn threads_delta(
    earlier: &BTreeMap<String, f64>,
    later: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    later
        .iter()
        .map(|(k, v)| (k.clone(), (v - earlier.get(k).unwrap_or(&0.0)).max(0.0)))
        .collect()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime (fields 14 and 15) in seconds. The command name (field 2)
/// is in parentheses and may hold spaces, so fields are counted after its
/// closing parenthesis.
fn parse_stat(stat: &str, ticks: f64) -> Option<f64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // After the name: field 3 (state) is index 0, so 14 is index 11.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_spaces_in_the_name() {
        let stat = "1234 (a b) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat(stat, 100.0), Some(3.0));
    }

    #[test]
    fn parses_schedstat() {
        assert_eq!(parse_schedstat("2500000000 100 7\n"), Some(2.5));
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn own_cpu_time_is_readable_both_ways() {
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        assert!(self_seconds() > 0.0);
        assert!(process_seconds(std::process::id()).is_some());
        let threads = threads_seconds(std::process::id());
        assert!(!threads.is_empty());
        assert!(threads.values().sum::<f64>() > 0.0, "{threads:?}");
    }
}
