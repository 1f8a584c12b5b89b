//! What `sluice publish` reads its messages from, as bytes (any bytes:
//! nothing here assumes UTF-8), in one of three forms (`--format`):
//!
//! - `lines`: a message per line; the line's `\n` (or `\r\n`) is not part
//!   of it; a last line without one is a message too.
//! - `raw`: all of stdin is one message; with files, each file is one.
//! - `length-prefixed`: each message as a u32 big-endian length, then its
//!   bytes, back to back (the HTTP API's `application/vnd.sluice.frames`
//!   body). An input that ends inside a frame is an error naming where.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;

use bytes::Bytes;
use sluice_transport::wire::MAX_MESSAGE_LEN;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Lines,
    Raw,
    LengthPrefixed,
}

/// The messages of an input, in order; an error ends them.
pub type Messages = Box<dyn Iterator<Item = std::io::Result<Bytes>>>;

/// The messages of stdin.
pub fn stdin(format: Format) -> Messages {
    from_reader(format, std::io::stdin().lock(), "stdin".into())
}

/// The messages of `files`, one after the other (for `raw`, each file is
/// one message).
pub fn files(format: Format, files: Vec<PathBuf>) -> Messages {
    Box::new(files.into_iter().flat_map(move |path| {
        let name = path.display().to_string();
        match std::fs::File::open(&path) {
            Ok(f) => from_reader(format, f, name),
            Err(e) => Box::new(std::iter::once(Err(std::io::Error::new(
                e.kind(),
                format!("{name}: {e}"),
            )))),
        }
    }))
}

/// The messages of `r`, named `name` in errors.
fn from_reader(format: Format, r: impl Read + 'static, name: String) -> Messages {
    match format {
        Format::Lines => Box::new(Lines {
            r: BufReader::new(r),
            name,
            done: false,
        }),
        Format::Raw => Box::new(std::iter::once(whole(r, &name))),
        Format::LengthPrefixed => Box::new(Frames {
            r: BufReader::new(r),
            name,
            at: 0,
            done: false,
        }),
    }
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// All of `r`, refused past the largest message (read no further).
fn whole(r: impl Read, name: &str) -> std::io::Result<Bytes> {
    let mut buf = Vec::new();
    r.take(MAX_MESSAGE_LEN as u64 + 1).read_to_end(&mut buf)?;
    if buf.len() > MAX_MESSAGE_LEN {
        return Err(invalid(format!(
            "{name} is larger than a message can be ({} MiB)",
            MAX_MESSAGE_LEN >> 20
        )));
    }
    Ok(Bytes::from(buf))
}

struct Lines<R> {
    r: BufReader<R>,
    name: String,
    done: bool,
}

impl<R: Read> Iterator for Lines<R> {
    type Item = std::io::Result<Bytes>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut line = Vec::new();
        match self.r.read_until(b'\n', &mut line) {
            Ok(0) => {
                self.done = true;
                None
            }
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                Some(Ok(Bytes::from(line)))
            }
            Err(e) => {
                self.done = true;
                Some(Err(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", self.name),
                )))
            }
        }
    }
}

struct Frames<R> {
    r: BufReader<R>,
    name: String,
    /// Bytes read so far: where the next frame starts.
    at: u64,
    done: bool,
}

impl<R: Read> Frames<R> {
    /// Fills `buf` from the input; how many bytes came (fewer at its end).
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    fn frame(&mut self) -> std::io::Result<Option<Bytes>> {
        let start = self.at;
        let mut head = [0u8; 4];
        match self.fill(&mut head)? {
            0 => return Ok(None),
            4 => {}
            n => {
                return Err(invalid(format!(
                    "{}: the input ends inside a frame's length, at byte {} ({n} of 4 bytes)",
                    self.name,
                    start + n as u64
                )))
            }
        }
        let len = u32::from_be_bytes(head) as usize;
        if len > MAX_MESSAGE_LEN {
            return Err(invalid(format!(
                "{}: the frame at byte {start} says {len} bytes, more than a message can be \
                 ({} MiB): is this length-prefixed input (u32 big-endian length, then the bytes)?",
                self.name,
                MAX_MESSAGE_LEN >> 20
            )));
        }
        let mut body = vec![0u8; len];
        let got = self.fill(&mut body)?;
        if got < len {
            return Err(invalid(format!(
                "{}: the frame at byte {start} says {len} bytes, but the input ends after {got}",
                self.name
            )));
        }
        self.at = start + 4 + len as u64;
        Ok(Some(Bytes::from(body)))
    }
}

impl<R: Read> Iterator for Frames<R> {
    type Item = std::io::Result<Bytes>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.frame() {
            Ok(Some(m)) => Some(Ok(m)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(format: Format, input: &'static [u8]) -> Result<Vec<Vec<u8>>, String> {
        from_reader(format, input, "input".into())
            .map(|m| m.map(|b| b.to_vec()).map_err(|e| e.to_string()))
            .collect()
    }

    #[test]
    fn lines_are_bytes_without_their_end() {
        assert_eq!(
            all(Format::Lines, b"caf\xe9\nplain\r\n\nlast").unwrap(),
            [&b"caf\xe9"[..], b"plain", b"", b"last"]
        );
        assert!(all(Format::Lines, b"").unwrap().is_empty());
    }

    #[test]
    fn raw_is_one_message_even_when_empty() {
        assert_eq!(all(Format::Raw, b"a\nb\0\xff").unwrap(), [b"a\nb\0\xff"]);
        assert_eq!(all(Format::Raw, b"").unwrap(), [b""]);
    }

    #[test]
    fn frames_read_back_and_a_cut_one_is_named() {
        let input: &'static [u8] = b"\0\0\0\x03x\ny\0\0\0\0\0\0\0\x02\xff\xfe";
        assert_eq!(
            all(Format::LengthPrefixed, input).unwrap(),
            [&b"x\ny"[..], b"", b"\xff\xfe"]
        );
        let e = all(Format::LengthPrefixed, b"\0\0\0\x03xy").unwrap_err();
        assert!(e.contains("frame at byte 0 says 3 bytes"), "{e}");
        let e = all(Format::LengthPrefixed, b"\0\0\0\x01x\0\0").unwrap_err();
        assert!(e.contains("at byte 7 (2 of 4 bytes)"), "{e}");
        let e = all(Format::LengthPrefixed, b"hello world\n").unwrap_err();
        assert!(e.contains("more than a message can be"), "{e}");
    }
}
