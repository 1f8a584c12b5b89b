//! Free loopback ports for the processes the kits start (`sluiced`,
//! `nats-server`): picked below the kernel's ephemeral range, each once per
//! process.

use std::net::{SocketAddr, UdpSocket};

/// A free UDP port on loopback (bound, then released for the daemon).
pub fn free_udp() -> SocketAddr {
    free_port(|a| UdpSocket::bind(a).is_ok())
}

/// A free TCP port on loopback.
pub fn free_tcp() -> SocketAddr {
    free_port(|a| std::net::TcpListener::bind(a).is_ok())
}

/// A loopback port that `bindable` finds free, taken below the kernel's
/// ephemeral range: a port the kernel hands out (`bind` to port 0) is
/// given up before the daemon (or server) binds it, and in between any
/// outgoing connection of a test running beside this one may take it as
/// its source port (seen in CI: "Address already in use" at a daemon's
/// start). Below the range only another picker could, and this one hands
/// each port of this process out once, from a start that differs between
/// processes.
fn free_port(bindable: impl Fn(SocketAddr) -> bool) -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 10_000;
    let end = ephemeral_start().max(FIRST + 1_000);
    let span = end - FIRST;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let port = FIRST + (start + NEXT.fetch_add(1, Relaxed)) % span;
        let a = SocketAddr::from(([127, 0, 0, 1], port as u16));
        if bindable(a) {
            return a;
        }
    }
    panic!("no free loopback port in {FIRST}..{end}");
}

/// The first port of the kernel's ephemeral range (32768 by default).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
        .min(65_535)
}
