//! The two forms a batch of messages takes in one publish request (bytes
//! from anyone: every decoder here refuses what does not parse with a
//! message naming where, and never panics; `daemon/fuzz` has a target).
//!
//! - `application/x-ndjson`: a line per message, `{"data": "<UTF-8
//!   text>"}` or `{"base64": "<bytes, standard base64>"}`; blank lines
//!   are skipped. For scripts and languages where JSON is at hand.
//! - `application/vnd.sluice.frames`: each message as a u32 big-endian
//!   length, then its bytes. For binary payloads without base64's cost.

use base64::Engine;
use bytes::{Buf, Bytes};
use serde::Deserialize;

use super::MAX_MESSAGES;
use crate::spool::record::MAX_PAYLOAD;

pub const NDJSON: &str = "application/x-ndjson";
pub const FRAMES: &str = "application/vnd.sluice.frames";

/// One line of an NDJSON batch.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    data: Option<String>,
    base64: Option<String>,
}

/// The messages of an NDJSON batch.
pub fn ndjson(body: &[u8]) -> Result<Vec<Bytes>, String> {
    let mut out = Vec::new();
    for (n, line) in body.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let at = n + 1;
        let l: Line = serde_json::from_slice(line).map_err(|e| format!("line {at}: {e}"))?;
        let payload = match (l.data, l.base64) {
            (Some(d), None) => Bytes::from(d),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map(Bytes::from)
                .map_err(|e| format!("line {at}: base64: {e}"))?,
            _ => {
                return Err(format!(
                    "line {at}: give one of \"data\" (text) or \"base64\""
                ))
            }
        };
        out.push(payload);
        check_count(out.len())?;
    }
    if out.is_empty() {
        return Err("an empty batch: no lines".into());
    }
    Ok(out)
}

/// The messages of a frames batch.
pub fn frames(mut body: Bytes) -> Result<Vec<Bytes>, String> {
    let mut out = Vec::new();
    while body.has_remaining() {
        let at = out.len() + 1;
        if body.len() < 4 {
            return Err(format!(
                "frame {at}: {} bytes left, less than a length",
                body.len()
            ));
        }
        let len = body.get_u32() as usize;
        if len > MAX_PAYLOAD || len > body.len() {
            return Err(format!(
                "frame {at}: a length of {len} bytes, but {} are left",
                body.len()
            ));
        }
        out.push(body.split_to(len));
        check_count(out.len())?;
    }
    if out.is_empty() {
        return Err("an empty batch: no frames".into());
    }
    Ok(out)
}

/// `messages` as a frames batch.
pub fn encode_frames<'a>(messages: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        out.extend_from_slice(&(m.len() as u32).to_be_bytes());
        out.extend_from_slice(m);
    }
    out
}

fn check_count(n: usize) -> Result<(), String> {
    if n > MAX_MESSAGES {
        return Err(format!("more than {MAX_MESSAGES} messages in one request"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn frames_round_trip(msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 1..20)) {
            let body = encode_frames(msgs.iter().map(Vec::as_slice));
            let back = frames(Bytes::from(body)).unwrap();
            prop_assert_eq!(back.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), msgs);
        }

        #[test]
        fn ndjson_round_trips_base64_and_text(msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 1..20), text in "[a-z ]{0,20}") {
            let mut body = String::new();
            for m in &msgs {
                let b = base64::engine::general_purpose::STANDARD.encode(m);
                body.push_str(&serde_json::json!({ "base64": b }).to_string());
                body.push('\n');
            }
            body.push_str(&serde_json::json!({ "data": text }).to_string());
            let back = ndjson(body.as_bytes()).unwrap();
            prop_assert_eq!(back.len(), msgs.len() + 1);
            for (b, m) in back.iter().zip(&msgs) {
                prop_assert_eq!(&b[..], &m[..]);
            }
            prop_assert_eq!(&back[msgs.len()][..], text.as_bytes());
        }

        #[test]
        fn any_bytes_decode_without_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = frames(Bytes::from(b.clone()));
            let _ = ndjson(&b);
        }
    }

    #[test]
    fn errors_name_where() {
        assert_eq!(
            frames(Bytes::from_static(b"\0\0\0\x02ab\0\0")).unwrap_err(),
            "frame 2: 2 bytes left, less than a length"
        );
        assert!(ndjson(b"{\"data\":\"a\"}\n\n{\"x\":1}")
            .unwrap_err()
            .starts_with("line 3:"));
        assert_eq!(
            frames(Bytes::new()).unwrap_err(),
            "an empty batch: no frames"
        );
    }
}
