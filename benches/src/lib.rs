//! Shared support for sluice's benchmarks and the `sluice-bench` harness.

pub mod baseline;
pub mod consume;
pub mod cpu;
pub mod daemon;
pub mod ingest;
pub mod measure;
pub mod spool;
pub mod udp_baseline;
pub mod xdp;
