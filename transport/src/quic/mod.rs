//! The QUIC plane (quinn + rustls, TLS 1.3): how producers authenticate,
//! publish over a QUIC stream where raw UDP cannot go, and lease an
//! authenticated raw-UDP session; and how consumers subscribe and receive.
//! See WIRE.md, "QUIC plane" and "Consumers (QUIC plane)".
//!
//! - [`control`]: the messages of the QUIC plane and their codec;
//! - [`consume`]: the messages of a consumer's stream after it subscribed;
//! - [`frame`]: length-prefixed frames on QUIC streams (short and long);
//! - [`tls`]: TLS configuration of both sides: how a client trusts the
//!   daemon (CA, pinned certificate, or, for tests, nothing), ALPN;
//! - [`stream_io`]: a QUIC stream carrying sluice datagrams, as the
//!   [`PacketIo`](crate::serve::PacketIo) of a served endpoint.

pub mod consume;
pub mod control;
pub mod frame;
pub mod stream_io;
pub mod tls;

/// ALPN protocol id of the QUIC plane.
pub const ALPN: &[u8] = b"sluice/1";

/// Application error codes of a QUIC connection close.
pub mod close_code {
    /// The daemon is stopping.
    pub const SHUTTING_DOWN: u32 = 1;
    /// The credentials were missing or wrong.
    pub const AUTH_FAILED: u32 = 2;
    /// The peer broke the QUIC plane's protocol.
    pub const PROTOCOL: u32 = 3;
    /// The client closed the connection normally.
    pub const DONE: u32 = 4;
    /// The daemon holds its most QUIC connections, in all or for this
    /// principal (`quic.max_connections`,
    /// `quic.max_connections_per_principal`): try again later.
    pub const CONNECTION_LIMIT: u32 = 5;
}
