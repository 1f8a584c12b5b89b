//! The producer's TX ring learns where to send from the kernel's tables:
//! the next hop's MAC over netlink, IPv4 and IPv6, on the link and through
//! a gateway. Root (namespaces): skips say why; CI=true makes a skip fail.

use std::net::IpAddr;

use sluice_testkit::testnet::{require_netns, Link};
use sluice_xdp::neighbour::{interface_mac, next_hop_mac, parse_mac};

#[test]
fn next_hops_come_from_the_kernels_tables() {
    if !require_netns("neighbour_next_hops", false) {
        return;
    }
    let net = Link::create("nb", 1);
    let b_mac = parse_mac(&net.b.mac).unwrap();
    let a = &net.a;
    // IPv6 on the link (no duplicate-address wait), with a permanent
    // neighbour entry as Link makes for IPv4.
    a.ns.ip(&format!("-6 addr add fd00:199::1/64 dev {} nodad", a.iface));
    a.ns.ip(&format!(
        "-6 neigh replace fd00:199::2 lladdr {} dev {} nud permanent",
        net.b.mac, a.iface
    ));
    // A network behind the peer, and one on the link nobody answered for.
    a.ns.ip(&format!(
        "route add 192.0.2.0/24 via {} dev {}",
        net.b.ip, a.iface
    ));
    let iface = a.iface.clone();
    let b_ip: IpAddr = net.b.ip.parse().unwrap();
    let a_mac = parse_mac(&a.mac).unwrap();
    let (own, v4, v6, via, unknown, elsewhere) = a.ns.enter(move || {
        (
            interface_mac(&iface).unwrap(),
            next_hop_mac(&iface, b_ip),
            next_hop_mac(&iface, "fd00:199::2".parse().unwrap()),
            next_hop_mac(&iface, "192.0.2.7".parse().unwrap()),
            // On the link's subnet, never resolved.
            next_hop_mac(&iface, subnet_host(b_ip, 99)),
            // The loopback route leaves by `lo`, not this interface.
            next_hop_mac(&iface, "127.0.0.1".parse().unwrap()),
        )
    });
    assert_eq!(own, a_mac, "the interface's own MAC");
    assert_eq!(v4, Some(b_mac), "IPv4 on the link");
    assert_eq!(v6, Some(b_mac), "IPv6 on the link");
    assert_eq!(via, Some(b_mac), "through the gateway: the gateway's MAC");
    assert_eq!(unknown, None, "an unresolved neighbour");
    assert_eq!(elsewhere, None, "a route by another interface");
}

/// Host `n` of `ip`'s /24.
fn subnet_host(ip: IpAddr, n: u8) -> IpAddr {
    let IpAddr::V4(v4) = ip else { unreachable!() };
    let [a, b, c, _] = v4.octets();
    IpAddr::from([a, b, c, n])
}
