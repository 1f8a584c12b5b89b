//! Frames on QUIC streams: a u16 big-endian length, then that many bytes.
//! One frame is one control message or one sluice datagram (at most
//! 65,507 bytes, so a u16 always holds the length).

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use quinn::{RecvStream, SendStream};

/// The largest frame body.
pub const MAX_FRAME: usize = u16::MAX as usize;

/// Appends `body` to `out` as one frame.
pub fn put(out: &mut Vec<u8>, body: &[u8]) {
    debug_assert!(body.len() <= MAX_FRAME);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
}

/// Writes one frame.
pub async fn write(send: &mut SendStream, body: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(body.len() + 2);
    put(&mut out, body);
    send.write_all(&out).await.map_err(io::Error::other)
}

/// The receiving side of a stream, read frame by frame.
///
/// [`FramedRecv::next`] is cancel-safe: it is used in `select!` loops, and a
/// future dropped halfway through a frame must not lose the half it read
/// (the stream would lose its framing). What has arrived stays buffered here
/// until a whole frame is there.
pub struct FramedRecv {
    recv: RecvStream,
    buf: BytesMut,
}

impl FramedRecv {
    pub fn new(recv: RecvStream) -> Self {
        FramedRecv {
            recv,
            buf: BytesMut::new(),
        }
    }

    /// The next frame; `Ok(None)` when the stream ended cleanly between
    /// frames.
    pub async fn next(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if let Some(frame) = self.take() {
                return Ok(Some(frame));
            }
            // read_chunk is cancel-safe: a chunk is consumed only when returned.
            match self
                .recv
                .read_chunk(MAX_FRAME + 2, true)
                .await
                .map_err(io::Error::other)?
            {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the stream ended in the middle of a frame",
                    ))
                }
            }
        }
    }

    fn take(&mut self) -> Option<Bytes> {
        let len = u16::from_be_bytes(self.buf.get(..2)?.try_into().ok()?) as usize;
        if self.buf.len() < 2 + len {
            return None;
        }
        self.buf.advance(2);
        Some(self.buf.split_to(len).freeze())
    }
}
