//! Shared support for sluice's benchmarks and the `sluice-bench` harness.

pub mod args;
pub mod baseline;
pub mod baseline_scenario;
pub mod compare;
pub mod consume;
pub mod cpu;
pub mod filesystem;
pub mod forward;
pub mod http;
pub mod ingest;
pub mod interrupt;
pub mod load;
pub mod loss;
pub mod measure;
pub mod plot;
pub mod progress;
pub mod publisher;
pub mod sizes;
pub mod spool;
pub mod spool_scenario;
pub mod udp_baseline;
pub mod xdp;
