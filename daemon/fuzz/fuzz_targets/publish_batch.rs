//! Any bytes as an HTTP publish batch (NDJSON or frames) are messages or a
//! refusal naming where, never a panic; what frames decode to encodes back
//! to the same bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_daemon::publish::batch::{encode_frames, frames, ndjson};

fuzz_target!(|data: &[u8]| {
    let _ = ndjson(data);
    if let Ok(msgs) = frames(Bytes::copy_from_slice(data)) {
        assert!(!msgs.is_empty());
        assert_eq!(encode_frames(msgs.iter().map(|m| &m[..])), data);
    }
});
