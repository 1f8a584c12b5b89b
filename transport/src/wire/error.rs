use thiserror::Error;

/// Why a datagram was not accepted as a packet. Every variant is a drop
/// reason that endpoints count; none of them is fatal to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("datagram of {len} bytes is larger than any UDP payload")]
    Oversized { len: usize },
    #[error("bad magic: not a sluice packet")]
    BadMagic,
    #[error("unsupported protocol version {0}")]
    WrongVersion(u8),
    #[error("unknown packet type {0}")]
    UnknownType(u8),
    #[error("flag bits {0:#04x} are not defined in this version")]
    UnknownFlags(u8),
    #[error("checksum mismatch: the datagram was damaged")]
    BadChecksum,
    #[error("packet truncated: needed {needed} more bytes")]
    Truncated { needed: usize },
    #[error("{0} trailing bytes after the packet body")]
    TrailingBytes(usize),
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
}

/// A checked reader over a body: every read says how many bytes were missing.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                needed: n - self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A short string: one length byte, then that many bytes of UTF-8.
    pub(crate) fn short_str(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.u8()? as usize;
        std::str::from_utf8(self.bytes(len)?)
            .map_err(|_| DecodeError::Malformed("string is not UTF-8"))
    }

    /// Fails unless the whole body was consumed: trailing garbage is rejected
    /// rather than ignored, so that two encodings never mean the same packet.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Writes a short string, cutting it at a character boundary to fit 255 bytes.
pub(crate) fn put_short_str(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&s.as_bytes()[..end]);
}
