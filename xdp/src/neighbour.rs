//! Addresses a producer's TX ring writes into its frames: the interface's
//! own MAC and the next hop's, read from the kernel's tables (the kernel
//! keeps resolving them; a frame we write ourselves cannot ask ARP).

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

/// The interface's index, or an error naming it.
pub fn ifindex(interface: &str) -> io::Result<u32> {
    let name = std::ffi::CString::new(interface)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name with NUL"))?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no network interface named {interface:?} (see `ip link`)"),
        ));
    }
    Ok(index)
}

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
/// when it is on the link, else the route's gateway; None while the kernel
/// has not resolved it (or for IPv6, whose table is not read yet).
pub fn next_hop_mac(interface: &str, to: IpAddr) -> Option<[u8; 6]> {
    let IpAddr::V4(to) = to else {
        return None;
    };
    let routes = fs::read_to_string("/proc/thread-self/net/route").ok()?;
    let hop = route_gateway(&routes, interface, to).unwrap_or(to);
    let arp = fs::read_to_string("/proc/thread-self/net/arp").ok()?;
    arp_lookup(&arp, interface, hop)
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The gateway of the most specific route to `to` on `interface`, if that
/// route has one (`/proc/net/route` holds addresses as little-endian hex).
fn route_gateway(table: &str, interface: &str, to: Ipv4Addr) -> Option<Ipv4Addr> {
    let to = u32::from(to);
    let mut best: Option<(u32, u32)> = None; // (mask, gateway)
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[0] != interface {
            continue;
        }
        // The kernel prints each address's bytes as a little-endian u32.
        let hex = |s: &str| {
            u32::from_str_radix(s, 16)
                .ok()
                .map(|v| u32::from_be_bytes(v.to_le_bytes()))
        };
        let (Some(dest), Some(gw), Some(mask)) = (hex(f[1]), hex(f[2]), hex(f[7])) else {
            continue;
        };
        if to & mask == dest && best.is_none_or(|(m, _)| mask.count_ones() > m.count_ones()) {
            best = Some((mask, gw));
        }
    }
    match best {
        Some((_, 0)) | None => None,
        Some((_, gw)) => Some(Ipv4Addr::from(gw)),
    }
}

/// A complete entry for `ip` on `interface` in `/proc/net/arp`.
fn arp_lookup(table: &str, interface: &str, ip: Ipv4Addr) -> Option<[u8; 6]> {
    const ATF_COM: u32 = 0x2;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[5] != interface || f[0].parse::<Ipv4Addr>().ok()? != ip {
            continue;
        }
        let flags = u32::from_str_radix(f[2].trim_start_matches("0x"), 16).ok()?;
        if flags & ATF_COM == 0 {
            return None;
        }
        return parse_mac(f[3]);
    }
    None
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

    #[test]
    fn arp_table() {
        let t = "IP address       HW type     Flags       HW address            Mask     Device\n\
                 10.199.30.2      0x1         0x6         02:5c:00:00:00:02     *        veth-a\n\
                 10.199.30.9      0x1         0x0         00:00:00:00:00:00     *        veth-a\n";
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            arp_lookup(t, "veth-a", ip("10.199.30.2")),
            Some([2, 0x5c, 0, 0, 0, 2])
        );
        assert_eq!(arp_lookup(t, "veth-b", ip("10.199.30.2")), None);
        // Incomplete entry: not resolved yet.
        assert_eq!(arp_lookup(t, "veth-a", ip("10.199.30.9")), None);
    }

    #[test]
    fn routes() {
        // 10.199.30.0/24 on link; default via 10.199.30.254.
        let t =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 veth-a\t00000000\tFE1EC70A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                 veth-a\t001EC70A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(route_gateway(t, "veth-a", ip("10.199.30.2")), None);
        assert_eq!(
            route_gateway(t, "veth-a", ip("192.0.2.1")),
            Some(ip("10.199.30.254"))
        );
        assert_eq!(route_gateway(t, "eth0", ip("192.0.2.1")), None);
    }
}
