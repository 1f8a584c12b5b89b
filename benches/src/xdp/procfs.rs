//! What the kernel says about CPU time and UDP counters, from /proc: the
//! whole machine's (/proc/stat), a process's threads by name
//! (/proc/PID/task/*/schedstat) and the calling thread's network namespace
//! (/proc/thread-self/net/snmp).

use serde::Serialize;

/// CPU time of the whole machine from /proc/stat: busy and softirq seconds,
/// in all and per CPU.
#[derive(Debug, Clone, Default)]
pub struct CpuStat {
    pub busy: f64,
    pub softirq: f64,
    pub per_cpu: Vec<(f64, f64)>,
}

/// Busy and softirq seconds of one CPU over a window.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuSplit {
    pub busy: f64,
    pub softirq: f64,
}

impl CpuStat {
    pub fn now() -> CpuStat {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let mut s = CpuStat::default();
        for line in text.lines().filter(|l| l.starts_with("cpu")) {
            let mut words = line.split_whitespace();
            let name = words.next().unwrap_or_default();
            let v: Vec<f64> = words.filter_map(|x| x.parse().ok()).collect();
            let get = |i: usize| v.get(i).copied().unwrap_or(0.0) / hz;
            // user nice system idle iowait irq softirq steal
            let busy = get(0) + get(1) + get(2) + get(5) + get(6);
            let softirq = get(6);
            if name == "cpu" {
                s.busy = busy;
                s.softirq = softirq;
            } else {
                s.per_cpu.push((busy, softirq));
            }
        }
        s
    }

    /// (busy, softirq) seconds from `earlier` to `self`, and per CPU.
    pub fn since(&self, earlier: &CpuStat) -> (CpuSplit, Vec<CpuSplit>) {
        let all = CpuSplit {
            busy: (self.busy - earlier.busy).max(0.0),
            softirq: (self.softirq - earlier.softirq).max(0.0),
        };
        let per = self
            .per_cpu
            .iter()
            .zip(&earlier.per_cpu)
            .map(|(b, a)| CpuSplit {
                busy: (b.0 - a.0).max(0.0),
                softirq: (b.1 - a.1).max(0.0),
            })
            .collect();
        (all, per)
    }
}

/// CPU seconds of the threads of `pid` whose name starts with `prefix`;
/// `None` if there is none.
pub fn threads_cpu_seconds(pid: u32, prefix: &str) -> Option<f64> {
    crate::cpu::threads_seconds(pid)
        .into_iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(_, secs)| secs)
        .reduce(|a, b| a + b)
}

/// (rx_dropped, tx_dropped) of interface `iface` in the calling thread's
/// network namespace (/proc/thread-self/net/dev).
pub fn dev_drops(iface: &str) -> Option<(u64, u64)> {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev").ok()?;
    let line = dev
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{iface}:")))?;
    let fields: Vec<u64> = line
        .split_once(':')?
        .1
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    Some((*fields.get(3)?, *fields.get(11)?))
}

/// Packets the kernel dropped because a CPU's input backlog was full
/// (/proc/net/softnet_stat, second column, summed over CPUs).
pub fn backlog_drops() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
        .sum()
}
