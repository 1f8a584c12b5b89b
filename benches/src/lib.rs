//! Shared support for sluice's benchmarks and the `sluice-bench` harness.

pub mod baseline;
pub mod spool;
