//! sluice-daemon: the parts of `sluiced` that are not transport.

pub mod spool;
