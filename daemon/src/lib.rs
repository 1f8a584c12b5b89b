//! sluice-daemon: the parts of `sluiced` that are not transport.

pub mod admin;
pub mod config;
pub mod ingest;
pub mod metrics;
pub mod spool;
