//! A UDP socket as the [`PacketIo`] of a served endpoint, with recvmmsg and
//! sendmmsg batches.

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tracing::warn;

use super::batch::{RecvBatch, SendBatch};
use super::PacketIo;
use crate::wire::MAX_DATAGRAM;

/// Datagrams taken from the socket per system call.
const RECV_BATCH: usize = 64;

pub struct UdpIo {
    socket: UdpSocket,
    inbox: RecvBatch,
}

impl UdpIo {
    pub fn new(socket: UdpSocket) -> Self {
        UdpIo {
            socket,
            // One byte more than the largest datagram, so that an oversized
            // one shows as such instead of being silently cut to fit.
            inbox: RecvBatch::new(RECV_BATCH, MAX_DATAGRAM + 1),
        }
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
