//! AF_XDP kernel-bypass datapath for sluice.
//!
//! - [`testnet`]: network namespaces and veth pairs for tests and
//!   benchmarks.

pub mod testnet;
