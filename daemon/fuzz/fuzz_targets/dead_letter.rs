//! Any bytes in a dead-letter stream decode to an envelope or a typed
//! error, never a panic; what decodes encodes to an envelope that decodes
//! the same, and decoding with or without a copy agrees.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_daemon::consume::dead_letter::{decode, decode_bytes, encode};

fuzz_target!(|data: &[u8]| {
    let copied = decode(data);
    let shared = decode_bytes(&Bytes::copy_from_slice(data));
    match (&copied, &shared) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("decode and decode_bytes disagree: {copied:?} {shared:?}"),
    }
    if let Ok(d) = copied {
        assert!(d.payload.len() <= data.len());
        let again = encode(&d);
        assert_eq!(decode(&again).expect("what we encode decodes"), d);
    }
});
