//! The network ceiling, measured in the same run as the figures it scales: a
//! plain UDP datagram loop on loopback, one sender thread (`sendmmsg`, 64
//! datagrams per call) and one receiver thread (`recvmmsg`), no protocol.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Datagrams per sendmmsg/recvmmsg call.
const BATCH: usize = 64;

/// What a plain loop moved.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct UdpBaseline {
    pub datagram_bytes: usize,
    /// Datagrams that arrived, per second.
    pub datagrams_per_sec: f64,
    /// Datagrams the sender handed to the kernel, per second (the excess
    /// over `datagrams_per_sec` was dropped: the receiver is the limit).
    pub sent_per_sec: f64,
    /// Payload that arrived, MB/s (10^6 bytes).
    pub mb_per_sec: f64,
}

/// Runs the loop with `datagram_bytes` datagrams for about `duration` (plus
/// a short warm-up).
pub fn udp_loop(datagram_bytes: usize, duration: Duration) -> std::io::Result<UdpBaseline> {
    let rx = UdpSocket::bind("127.0.0.1:0")?;
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    tx.connect(rx.local_addr()?)?;
    rx.connect(tx.local_addr()?)?;
    rx.set_read_timeout(Some(Duration::from_millis(100)))?;
    let _ = set_int(&rx, libc::SO_RCVBUF, 4 << 20);
    let _ = set_int(&tx, libc::SO_SNDBUF, 4 << 20);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut m = MmsgBuffers::new(BATCH, datagram_bytes);
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: the headers point into `m`'s buffers, alive here.
                let n = unsafe {
                    libc::sendmmsg(tx.as_raw_fd(), m.headers(), BATCH as libc::c_uint, 0)
                };
                if n > 0 {
                    sent.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        })
    };

    let mut m = MmsgBuffers::new(BATCH, datagram_bytes.max(1) + 1);
    let recv = |m: &mut MmsgBuffers| {
        // SAFETY: as above; MSG_WAITFORONE blocks (up to SO_RCVTIMEO) for
        // the first datagram only.
        let n = unsafe {
            libc::recvmmsg(
                rx.as_raw_fd(),
                m.headers(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        n.max(0) as u64
    };
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(100) {
        recv(&mut m);
    }
    let sent_before = sent.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut got = 0u64;
    while start.elapsed() < duration {
        got += recv(&mut m);
    }
    let secs = start.elapsed().as_secs_f64();
    let sent_n = sent.load(Ordering::Relaxed) - sent_before;
    stop.store(true, Ordering::Relaxed);
    sender
        .join()
        .map_err(|_| std::io::Error::other("sender panicked"))?;
    let dps = got as f64 / secs;
    Ok(UdpBaseline {
        datagram_bytes,
        datagrams_per_sec: dps,
        sent_per_sec: sent_n as f64 / secs,
        mb_per_sec: dps * datagram_bytes as f64 / 1e6,
    })
}

/// Latency percentiles of a fixed-rate baseline, microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RateLatency {
    /// Operations per second offered.
    pub rate: f64,
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// CPU microseconds this process spent per operation (0: not measured).
    pub cpu_us_per_op: f64,
}

impl RateLatency {
    pub fn of(rate: f64, h: &Histogram<u64>) -> RateLatency {
        RateLatency {
            rate,
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            cpu_us_per_op: 0.0,
        }
    }
}

/// The floor of a request/ack round trip at `rate` per second on this
/// machine, with no protocol and no disk, driven as the open-loop ingest is:
/// a pacer thread sends each `size`-byte datagram (its index in the first 8
/// bytes) at its due time `start + i / rate` — everything due at a wake-up,
/// so a late wake-up sends a burst — an echo thread sends each back, and a
/// receiver thread records arrival − due. Latency so holds the timer's and
/// the scheduler's wake-up delays and loopback's round trip, and a pacer
/// that falls behind counts against every late datagram (coordinated
/// omission corrected). An earlier version waited for each echo before the
/// next send: one thread's sleep and two wake-ups per datagram took longer
/// than 100 µs, so it fell behind at 10,000/s and measured its own queue.
/// Datagrams lost on loopback (a full buffer) are not counted. The CPU per
/// round trip counts this whole process, so nothing else should run in it
/// meanwhile.
pub fn echo_at_rate(rate: f64, size: usize, duration: Duration) -> std::io::Result<RateLatency> {
    let size = size.max(8);
    let server = UdpSocket::bind("127.0.0.1:0")?;
    let client = UdpSocket::bind("127.0.0.1:0")?;
    client.connect(server.local_addr()?)?;
    server.connect(client.local_addr()?)?;
    for s in [&server, &client] {
        let _ = set_int(s, libc::SO_RCVBUF, 4 << 20);
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = server.recv(&mut buf) {
                    let _ = server.send(&buf[..n]);
                }
            }
        })
    };
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = (duration.as_secs_f64() * rate).round() as u64;
    let start = Instant::now() + Duration::from_millis(10);
    let due = move |i: u64| start + interval.mul_f64(i as f64);
    let receiver = {
        let client = client.try_clone()?;
        std::thread::spawn(move || {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut buf = vec![0u8; 65_536];
            // Bounded: every datagram back, or the last due time plus a
            // second for stragglers.
            let give_up = due(total) + Duration::from_secs(1);
            while h.len() < total && Instant::now() < give_up {
                let Ok(n) = client.recv(&mut buf) else {
                    continue;
                };
                let Some(index) = buf[..n].first_chunk::<8>() else {
                    continue;
                };
                let i = u64::from_le_bytes(*index);
                h.saturating_record(due(i).elapsed().as_micros() as u64);
            }
            h
        })
    };
    let mut out = vec![0x5Au8; size];
    let cpu_before = crate::cpu::self_seconds();
    let mut result = Ok(());
    let mut i = 0;
    while i < total {
        let now = Instant::now();
        if now < due(i) {
            std::thread::sleep(due(i) - now);
            continue;
        }
        while i < total && due(i) <= now {
            out[..8].copy_from_slice(&i.to_le_bytes());
            if let Err(e) = client.send(&out) {
                result = Err(e);
                i = total;
                break;
            }
            i += 1;
        }
    }
    let h = receiver
        .join()
        .map_err(|_| std::io::Error::other("receiver panicked"))?;
    stop.store(true, Ordering::Relaxed);
    echo.join()
        .map_err(|_| std::io::Error::other("echo panicked"))?;
    let cpu = crate::cpu::self_seconds() - cpu_before;
    result.map(|()| RateLatency {
        cpu_us_per_op: cpu * 1e6 / h.len().max(1) as f64,
        ..RateLatency::of(rate, &h)
    })
}

/// Sets an int socket option (a buffer size) on `s`.
pub(crate) fn set_int(s: &UdpSocket, opt: libc::c_int, value: libc::c_int) -> std::io::Result<()> {
    // SAFETY: setsockopt with an int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `n` buffers of one size with their iovecs and mmsghdrs, for sendmmsg
/// and recvmmsg on connected sockets (no addresses).
pub(crate) struct MmsgBuffers {
    _bufs: Vec<Vec<u8>>,
    _iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers point into the owned, heap-allocated vectors,
// which move with the struct without their heap contents moving.
unsafe impl Send for MmsgBuffers {}

impl MmsgBuffers {
    pub(crate) fn new(n: usize, size: usize) -> Self {
        let mut bufs: Vec<Vec<u8>> = (0..n).map(|_| vec![0x5Au8; size]).collect();
        let mut iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        let hdrs = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: an all-zero mmsghdr is a valid empty header.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        MmsgBuffers {
            _bufs: bufs,
            _iovs: iovs,
            hdrs,
        }
    }

    pub(crate) fn headers(&mut self) -> *mut libc::mmsghdr {
        self.hdrs.as_mut_ptr()
    }

    /// Bytes the first `n` headers received.
    pub(crate) fn received(&self, n: usize) -> u64 {
        self.hdrs[..n].iter().map(|m| u64::from(m.msg_len)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_loop_moves_datagrams() {
        let b = udp_loop(128, Duration::from_millis(100)).unwrap();
        assert!(b.datagrams_per_sec > 0.0, "{b:?}");
        assert!(b.sent_per_sec >= b.datagrams_per_sec * 0.5, "{b:?}");
    }

    #[test]
    fn echo_at_rate_measures_every_due_time() {
        let e = echo_at_rate(1000.0, 128, Duration::from_millis(100)).unwrap();
        assert_eq!(e.count, 100, "{e:?}");
        assert!(
            e.p50_us > 0 && e.p50_us <= e.p99_us && e.p99_us <= e.max_us,
            "{e:?}"
        );
    }
}
