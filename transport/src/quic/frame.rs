//! Frames on QUIC streams: a length, then that many bytes.
//!
//! Ordinary frames have a u16 big-endian length: one frame is one control
//! message or one sluice datagram (at most 65,507 bytes, so a u16 always
//! holds the length). A consumer's stream switches to *long* frames after
//! its subscription is accepted, because a delivery carries a whole message
//! (up to 16 MiB): a u32 big-endian length, at most [`MAX_LONG_FRAME`].

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use quinn::{RecvStream, SendStream};

/// The largest frame body.
pub const MAX_FRAME: usize = u16::MAX as usize;

/// The largest long-frame body: a 16 MiB message and room for its header.
pub const MAX_LONG_FRAME: usize = (16 << 20) + (64 << 10);

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

/// Appends `body` to `out` as one long frame.
pub fn put_long(out: &mut Vec<u8>, body: &[u8]) {
    debug_assert!(body.len() <= MAX_LONG_FRAME);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// Writes one long frame.
pub async fn write_long(send: &mut SendStream, body: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(body.len() + 4);
    put_long(&mut out, body);
    send.write_all(&out).await.map_err(io::Error::other)
}

/// Cuts frames out of the bytes of a stream as they arrive, in whatever
/// chunks: the pure part of [`FramedRecv`].
#[derive(Debug, Default)]
pub struct Deframer {
    buf: BytesMut,
    long: bool,
}

impl Deframer {
    pub fn new() -> Self {
        Deframer::default()
    }

    /// From the next frame on, frames are long. Bytes already buffered stay
    /// and are read as long frames.
    pub fn set_long(&mut self) {
        self.long = true;
    }

    pub fn is_long(&self) -> bool {
        self.long
    }

    /// Nothing is buffered: the stream is between frames.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Appends bytes received from the stream.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame's body, if it has arrived. A long frame longer
    /// than [`MAX_LONG_FRAME`] is an error (the peer is broken or hostile):
    /// it is refused before anything is allocated for it.
    pub fn next_frame(&mut self) -> io::Result<Option<Bytes>> {
        let (header, len) = if self.long {
            let Some(h) = self.buf.get(..4) else {
                return Ok(None);
            };
            let len = u32::from_be_bytes(h.try_into().expect("4 bytes")) as usize;
            if len > MAX_LONG_FRAME {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a frame of {len} bytes is over the limit of {MAX_LONG_FRAME}"),
                ));
            }
            (4, len)
        } else {
            let Some(h) = self.buf.get(..2) else {
                return Ok(None);
            };
            (
                2,
                u16::from_be_bytes(h.try_into().expect("2 bytes")) as usize,
            )
        };
        if self.buf.len() < header + len {
            return Ok(None);
        }
        self.buf.advance(header);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

/// The receiving side of a stream, read frame by frame.
///
/// [`FramedRecv::next`] is cancel-safe: it is used in `select!` loops, and a
/// future dropped halfway through a frame must not lose the half it read
/// (the stream would lose its framing). What has arrived stays buffered here
/// until a whole frame is there.
pub struct FramedRecv {
    recv: RecvStream,
    frames: Deframer,
}

impl FramedRecv {
    pub fn new(recv: RecvStream) -> Self {
        FramedRecv {
            recv,
            frames: Deframer::new(),
        }
    }

    /// Reads long frames from now on (see [`Deframer::set_long`]).
    pub fn set_long(&mut self) {
        self.frames.set_long();
    }

    /// The next frame; `Ok(None)` when the stream ended cleanly between
    /// frames.
    pub async fn next(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if let Some(frame) = self.frames.next_frame()? {
                return Ok(Some(frame));
            }
            // read_chunk is cancel-safe: a chunk is consumed only when returned.
            match self
                .recv
                .read_chunk(MAX_FRAME + 2, true)
                .await
                .map_err(io::Error::other)?
            {
                Some(chunk) => self.frames.extend(&chunk.bytes),
                None if self.frames.is_empty() => return Ok(None),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the stream ended in the middle of a frame",
                    ))
                }
            }
        }
    }
}
