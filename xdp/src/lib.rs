//! AF_XDP kernel-bypass datapath for sluice: on NICs with XDP, the data
//! port's packets go from the NIC's queues straight to `sluiced`, past the
//! kernel's UDP stack; and producers can transmit the same way.
//!
//! - [`bpf`]: bpf(2), the XDP program (eBPF written in Rust) that redirects
//!   the data port to AF_XDP sockets, attaching and detaching it;
//! - [`netlink`]: rtnetlink and generic netlink for interfaces' XDP
//!   programs and features;
//! - [`xsk`]: AF_XDP sockets: UMEM, the fill/completion/RX/TX rings;
//! - [`frame`]: Ethernet, IPv4/IPv6 and UDP headers, read and written;
//! - [`nic`]: what `sluice nic` shows and plans (ethtool, queues, IRQs);
//! - [`datapath`]: the daemon's receive path over them ([`datapath::XdpIo`]);
//! - [`producer`]: a producer's TX ring for the client library.
//!
//! The namespaces and veth pairs of its tests are in `sluice-testkit`.
//!
//! Everything is a thin layer over `libc`: no clang, no libbpf or libxdp.

pub mod bpf;
pub mod datapath;
pub mod frame;
pub mod neighbour;
pub mod netlink;
pub mod nic;
pub mod producer;
pub mod xsk;
