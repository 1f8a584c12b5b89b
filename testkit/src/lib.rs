//! Test support shared by sluice's tests and benchmarks; never shipped.
//!
//! - [`daemon`] (feature `launcher`): one way to start a real `sluiced`
//!   process, on loopback or in a network namespace, and to watch and stop
//!   it;
//! - [`relay`]: the impairment relay, a UDP proxy that loses, reorders,
//!   duplicates, delays and damages datagrams by a seeded RNG;
//! - [`testnet`]: network namespaces and veth pairs (root);
//! - [`nats`] (feature `nats`): a NATS JetStream server or cluster of real
//!   `nats-server` processes on loopback;
//! - [`ports`]: free loopback ports for the processes above.

#[cfg(feature = "launcher")]
pub mod daemon;
#[cfg(feature = "nats")]
pub mod nats;
pub mod ports;
pub mod relay;
pub mod testnet;
