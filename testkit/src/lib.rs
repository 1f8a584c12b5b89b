//! Test support shared by sluice's tests and benchmarks; never shipped.
//!
//! - [`daemon`] (feature `launcher`): one way to start a real `sluiced`
//!   process, on loopback or in a network namespace, and to watch and stop
//!   it;
//! - [`relay`]: the impairment relay, a UDP proxy that loses, reorders,
//!   duplicates, delays and damages datagrams by a seeded RNG;
//! - [`testnet`]: network namespaces and veth pairs (root).

#[cfg(feature = "launcher")]
pub mod daemon;
pub mod relay;
pub mod testnet;
