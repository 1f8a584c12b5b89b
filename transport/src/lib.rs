//! sluice-transport: the wire format, the sans-IO reliable-session state
//! machines, and the UDP datapath that drives them.
//!
//! Like quinn-proto and quinn, protocol logic (`wire`, `proto`) does no I/O and
//! reads no clock: it is fed `(now, datagram)` and asked what to send and when
//! to wake up. That is what lets the simulation tests replay any seed exactly.

pub mod client;
pub mod lease;
pub mod offsets;
pub mod proto;
pub mod quic;
pub mod seal;
pub mod serve;
pub mod udp;
pub mod wire;
