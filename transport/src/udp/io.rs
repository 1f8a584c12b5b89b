//! A UDP socket as the [`PacketIo`] of a served endpoint, with recvmmsg and
//! sendmmsg batches.

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tracing::warn;

use super::batch::{enable_gro, RecvBatch, SendBatch, GRO_SLOT};
use super::PacketIo;
use crate::wire::MAX_DATAGRAM;

/// Datagrams taken from the socket per system call.
const RECV_BATCH: usize = 64;

/// Buffers taken per system call with GRO: as many as without, so that
/// datagrams the kernel did not coalesce (none of a sender's runs on
/// loopback without GSO) are still taken 64 at a time; 64 KiB each, 4 MiB
/// for the daemon's one data socket.
const GRO_BATCH: usize = RECV_BATCH;

pub struct UdpIo {
    socket: UdpSocket,
    inbox: RecvBatch,
}

impl UdpIo {
    /// Serves `socket`, with GRO when the kernel has it (see
    /// [`enable_gro`]).
    pub fn new(socket: UdpSocket) -> Self {
        let inbox = if enable_gro(&socket) {
            RecvBatch::new(GRO_BATCH, GRO_SLOT)
        } else {
            // One byte more than the largest datagram, so that an oversized
            // one shows as such instead of being silently cut to fit.
            RecvBatch::new(RECV_BATCH, MAX_DATAGRAM + 1)
        };
        UdpIo { socket, inbox }
    }

    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }
}

impl PacketIo for UdpIo {
    async fn recv(&mut self, into: &mut Vec<(SocketAddr, Bytes)>) -> io::Result<()> {
        loop {
            match self.inbox.recv(&self.socket).await {
                Ok(n) => {
                    for i in 0..n {
                        let (data, from) = self.inbox.get(i);
                        if let Some(from) = from {
                            into.push((from, Bytes::copy_from_slice(data)));
                        }
                    }
                    if !into.is_empty() {
                        return Ok(());
                    }
                }
                // A UDP socket's receive errors are about single datagrams
                // (or ICMP reports): the socket itself goes on.
                Err(e) => warn!(error = %e, "receiving on the data socket failed"),
            }
        }
    }

    async fn send(&mut self, batch: &mut SendBatch) -> io::Result<()> {
        batch.send(&self.socket).await.map(|_| ())
    }
}
