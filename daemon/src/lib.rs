//! sluice-daemon: the parts of `sluiced` that are not transport.

pub mod any_bytes;
pub mod api;
pub mod auth;
pub mod config;
pub mod consume;
pub mod credit;
pub mod fatal;
pub mod forward;
pub mod gate;
pub mod grpc;
pub mod histogram;
pub mod identity;
pub mod ingest;
pub mod launch;
pub mod log_limit;
pub mod memory;
pub mod metrics;
pub mod pattern;
pub mod publish;
pub mod quic;
pub mod server;
pub mod spool;
pub mod verify;
