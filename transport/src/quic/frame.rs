//! Frames on QUIC streams: a u16 big-endian length, then that many bytes.
//! One frame is one control message or one sluice datagram (at most
//! 65,507 bytes, so a u16 always holds the length).

use std::io;

use bytes::Bytes;
use quinn::{RecvStream, SendStream};

/// The largest frame body.
pub const MAX_FRAME: usize = u16::MAX as usize;

/// Appends `body` to `out` as one frame.
pub fn put(out: &mut Vec<u8>, body: &[u8]) {
    debug_assert!(body.len() <= MAX_FRAME);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
}

/// Reads one frame. `Ok(None)` when the stream ended cleanly between frames.
pub async fn read(recv: &mut RecvStream) -> io::Result<Option<Bytes>> {
    let mut len = [0u8; 2];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(io::Error::other(e)),
    }
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    recv.read_exact(&mut body).await.map_err(io::Error::other)?;
    Ok(Some(Bytes::from(body)))
}

/// Writes one frame.
pub async fn write(send: &mut SendStream, body: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(body.len() + 2);
    put(&mut out, body);
    send.write_all(&out).await.map_err(io::Error::other)
}
