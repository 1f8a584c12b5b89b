//! Floods for resource-exhaustion tests: raw HELLOs from one source address,
//! and what a daemon holds (resident memory, open descriptors) before,
//! during and after.

use std::fmt;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sluice_transport::wire::{Hello, Packet};

use crate::daemon::Daemon;

/// What a daemon holds at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Resident memory, bytes (VmRSS).
    pub rss: u64,
    /// Open file descriptors.
    pub fds: usize,
}

impl Usage {
    pub fn of(d: &Daemon) -> Usage {
        Usage {
            rss: d.rss(),
            fds: d.open_fds(),
        }
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RSS {:.1} MiB, {} fds",
            self.rss as f64 / (1 << 20) as f64,
            self.fds
        )
    }
}

/// Sends HELLOs from `from` (an address of this host, any port: loopback
/// has all of 127.0.0.0/8 on Linux) to `to`, each for a new producer
/// (`first_producer` on) of `stream`, about `per_sec` a second, until
/// `stop` is set or `max` are sent. Nothing is read back. Returns how many
/// were sent.
pub fn hello_flood(
    from: IpAddr,
    to: SocketAddr,
    stream: &str,
    first_producer: u64,
    per_sec: u64,
    max: u64,
    stop: &AtomicBool,
) -> u64 {
    let socket = UdpSocket::bind(SocketAddr::new(from, 0))
        .unwrap_or_else(|e| panic!("bind a flooding socket to {from}: {e}"));
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut sent = 0u64;
    while sent < max && !stop.load(Ordering::Relaxed) {
        // Paced in bursts of 64.
        let due = start + Duration::from_secs_f64(sent as f64 / per_sec as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        for _ in 0..64 {
            buf.clear();
            Packet::Hello(Hello {
                producer_id: first_producer + sent,
                nonce: rand::random(),
                first_seq: 1,
                stream: stream.into(),
            })
            .encode(0, &mut buf);
            // A full socket buffer drops it: a flood does not care.
            let _ = socket.send_to(&buf, to);
            sent += 1;
        }
    }
    sent
}
