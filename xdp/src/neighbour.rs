//! Addresses a producer's TX ring writes into its frames: the interface's
//! own MAC and the next hop's, read from the kernel's tables (the kernel
//! keeps resolving them; a frame we write ourselves cannot ask ARP). All
//! of it is asked in the calling thread's network namespace.

use std::io;
use std::net::IpAddr;

use crate::{bpf, netlink};

/// The interface's MAC address (SIOCGIFHWADDR: answered in the calling
/// thread's network namespace, unlike /sys, which shows the namespace it
/// was mounted in).
pub fn interface_mac(interface: &str) -> io::Result<[u8; 6]> {
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = interface.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {interface:?} is too long"),
        ));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR reads and writes the ifreq we own.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    let err = io::Error::last_os_error();
    // SAFETY: our own fd, closed once.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(io::Error::new(
            err.kind(),
            format!("MAC address of {interface:?}: {err}"),
        ));
    }
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data) {
        *m = d as u8;
    }
    Ok(mac)
}

/// The MAC of the next hop towards `to` through `interface`: `to` itself
/// when it is on the link, else the route's gateway (both asked of the
/// kernel over netlink, IPv4 and IPv6 alike). None while the kernel has not
/// resolved it, or when the route to `to` leaves by another interface.
pub fn next_hop_mac(interface: &str, to: IpAddr) -> Option<[u8; 6]> {
    let ifindex = bpf::ifindex(interface).ok()?;
    let (gateway, oif) = netlink::route_to(to).ok()?;
    if oif != ifindex {
        return None;
    }
    netlink::neighbour(ifindex, gateway.unwrap_or(to)).ok()?
}

/// "02:5c:00:00:00:01" → bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:5c:00:00:00:0a"), Some([2, 0x5c, 0, 0, 0, 10]));
        assert_eq!(parse_mac("02:5c:00:00:00"), None);
        assert_eq!(parse_mac("02:5c:00:00:00:00:01"), None);
        assert_eq!(parse_mac("zz:5c:00:00:00:00"), None);
    }
}
