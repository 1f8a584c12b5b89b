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

/// The least a [`Deframer`] allocates for frames it copies: the frames cut
/// by chunks' ends go one after another into one block, not each into an
/// allocation of its own. Small, because a frame handed out keeps its whole
/// block alive.
const COPY_BLOCK: usize = 4 << 10;

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
///
/// The stream's bytes not yet cut are `buf` followed by `chunk`. A chunk
/// handed over as [`Bytes`] ([`Deframer::push`]) is cut without a copy:
/// its whole frames are slices of it. Only a frame that a chunk's end cuts
/// in two is copied, into `buf`, and completed from the next chunk.
#[derive(Debug, Default)]
pub struct Deframer {
    buf: BytesMut,
    chunk: Bytes,
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
        self.buf.is_empty() && self.chunk.is_empty()
    }

    /// Appends bytes received from the stream (copied).
    pub fn extend(&mut self, bytes: &[u8]) {
        self.spill();
        self.buf.extend_from_slice(bytes);
    }

    /// Appends a chunk received from the stream; the frames wholly inside
    /// it are handed out as slices of it.
    pub fn push(&mut self, chunk: Bytes) {
        self.spill();
        self.chunk = chunk;
    }

    /// Moves what is left of the chunk behind `buf`, so that bytes can be
    /// appended after it.
    fn spill(&mut self) {
        if !self.chunk.is_empty() {
            self.room_for(self.chunk.len());
            self.buf.extend_from_slice(&self.chunk);
            self.chunk = Bytes::new();
        }
    }

    /// Room in `buf` for `n` more bytes, allocated a block at a time.
    fn room_for(&mut self, n: usize) {
        if self.buf.capacity() - self.buf.len() < n {
            self.buf.reserve(n.max(COPY_BLOCK));
        }
    }

    /// The length of the header and of the body of the frame that `head`
    /// starts, if `head` holds its header.
    fn header(&self, head: &[u8]) -> io::Result<Option<(usize, usize)>> {
        if self.long {
            let Some(h) = head.get(..4) else {
                return Ok(None);
            };
            let len = u32::from_be_bytes(h.try_into().expect("4 bytes")) as usize;
            if len > MAX_LONG_FRAME {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a frame of {len} bytes is over the limit of {MAX_LONG_FRAME}"),
                ));
            }
            Ok(Some((4, len)))
        } else {
            let Some(h) = head.get(..2) else {
                return Ok(None);
            };
            Ok(Some((
                2,
                u16::from_be_bytes(h.try_into().expect("2 bytes")) as usize,
            )))
        }
    }

    /// The next whole frame's body, if it has arrived. A long frame longer
    /// than [`MAX_LONG_FRAME`] is an error (the peer is broken or hostile):
    /// it is refused before anything is allocated for it.
    pub fn next_frame(&mut self) -> io::Result<Option<Bytes>> {
        if self.buf.is_empty() {
            // The common case: a frame wholly inside the chunk, sliced out.
            if let Some((header, len)) = self.header(&self.chunk)? {
                if self.chunk.len() >= header + len {
                    let mut frame = self.chunk.split_to(header + len);
                    frame.advance(header);
                    return Ok(Some(frame));
                }
            }
            // Cut by the chunk's end: keep what came, for the next chunk.
            self.spill();
            return Ok(None);
        }
        // A frame begun in `buf`: its header first, then its body, taking
        // from the chunk only what it lacks.
        let header_len = if self.long { 4 } else { 2 };
        if self.buf.len() < header_len {
            self.take_from_chunk(header_len - self.buf.len());
        }
        let Some((header, len)) = self.header(&self.buf)? else {
            return Ok(None);
        };
        if self.buf.len() < header + len {
            self.take_from_chunk(header + len - self.buf.len());
            if self.buf.len() < header + len {
                return Ok(None);
            }
        }
        self.buf.advance(header);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Moves up to `n` bytes from the front of the chunk to the end of `buf`.
    fn take_from_chunk(&mut self, n: usize) {
        let n = n.min(self.chunk.len());
        self.room_for(n);
        self.buf.extend_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
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
                Some(chunk) => self.frames.push(chunk.bytes),
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
