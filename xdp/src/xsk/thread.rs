//! The queue thread's helpers: pinning it to the CPU that services its
//! queue's interrupts, and measuring what it costs.

use std::io;
use std::time::Duration;

/// Pins the calling thread to `cpu` (sched_setaffinity): a queue's reader
/// next to the CPU its interrupts land on keeps the frames in that cache.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain bits; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {cpu} is beyond the affinity mask"),
        ));
    }
    // SAFETY: `cpu` is within the set (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid mask of its size.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CPU time the calling thread has used (CLOCK_THREAD_CPUTIME_ID): per
/// packet, what the queue thread costs, apart from the rest of the process.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec; this clock exists on every Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_advances_with_work() {
        let before = thread_cpu_time();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(thread_cpu_time() > before);
    }

    #[test]
    fn pin_to_current_cpu_and_refuse_absurd_cpu() {
        std::thread::spawn(|| {
            // SAFETY: no preconditions. The CPU we run on is one we may use
            // (a cpuset may exclude CPU 0).
            let cpu = unsafe { libc::sched_getcpu() };
            pin_current_thread(cpu as usize).unwrap();
            // SAFETY: as above.
            assert_eq!(unsafe { libc::sched_getcpu() }, cpu);
            assert!(pin_current_thread(1 << 20).is_err());
        })
        .join()
        .unwrap();
    }
}
