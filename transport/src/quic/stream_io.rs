//! A QUIC stream carrying sluice datagrams, one per frame: the daemon side
//! runs an ordinary served endpoint on it, so sequence numbers, durable
//! acks, idempotence and credit work exactly as over raw UDP (QUIC adds
//! encryption, reliability and congestion control underneath).

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use quinn::SendStream;

use super::frame::{self, FramedRecv};
use crate::serve::PacketIo;
use crate::udp::SendBatch;

pub struct StreamIo {
    send: SendStream,
    recv: FramedRecv,
    /// The connection's remote address: the endpoint's idea of the peer.
    peer: SocketAddr,
    out: Vec<u8>,
}

impl StreamIo {
    pub fn new(send: SendStream, recv: FramedRecv, peer: SocketAddr) -> Self {
        StreamIo {
            send,
            recv,
            peer,
            out: Vec::new(),
        }
    }
}

impl PacketIo for StreamIo {
    async fn recv(&mut self, into: &mut Vec<(SocketAddr, Bytes)>) -> io::Result<()> {
        match self.recv.next().await? {
            Some(datagram) => {
                into.push((self.peer, datagram));
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the producer finished its stream",
            )),
        }
    }

    async fn send(&mut self, batch: &mut SendBatch) -> io::Result<()> {
        // One write for the batch: the stream coalesces it into packets.
        self.out.clear();
        for (_, datagram) in batch.iter() {
            frame::put(&mut self.out, datagram);
        }
        batch.clear();
        self.send
            .write_all(&self.out)
            .await
            .map_err(io::Error::other)
    }
}
