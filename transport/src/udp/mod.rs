//! The UDP datapath: sockets set up for bulk traffic, batched receive and
//! send (recvmmsg/sendmmsg), and [`PacketIo`], what a served endpoint
//! takes datagrams from and gives them to: a socket ([`UdpIo`]), or a QUIC
//! stream, a sealed lease, AF_XDP rings carrying the same datagrams.

mod batch;
mod io;
mod socket;

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;

pub use batch::{enable_gro, gso_enabled, set_gso, RecvBatch, SendBatch, GRO_SLOT};
pub use io::UdpIo;
pub use socket::{bind, bind_std, buffer_sizes, SocketOptions, UdpError};

/// Datagrams in and out of a served endpoint.
pub trait PacketIo: Send + 'static {
    /// Waits until at least one datagram has arrived, then appends what has
    /// (a batch's worth) to `into` with the address it came from.
    fn recv(
        &mut self,
        into: &mut Vec<(SocketAddr, Bytes)>,
    ) -> impl Future<Output = std::io::Result<()>> + Send;

    /// Sends every datagram of `batch` to its address and empties it. A
    /// datagram that cannot be delivered is dropped: the protocol recovers.
    fn send(&mut self, batch: &mut SendBatch) -> impl Future<Output = std::io::Result<()>> + Send;
}
