//! Any byte string must decode to a packet or a typed error, and a DATA frame
//! that decodes must iterate without panicking.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_transport::wire::Packet;

/// Half the inputs get a valid checksum, so that the fuzzer reaches the body
/// decoders instead of stopping at the CRC.
fn maybe_seal(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    if v.first().is_some_and(|b| b & 1 == 1) && v.len() >= 4 {
        let end = v.len() - 4;
        let sum = crc32c::crc32c(&v[..end]);
        v[end..].copy_from_slice(&sum.to_be_bytes());
    }
    v
}

fuzz_target!(|data: &[u8]| {
    let data = maybe_seal(data);
    if let Ok(d) = Packet::decode(&Bytes::from(data.clone())) {
        if let Packet::Data(frame) = d.packet {
            for entry in frame.entries() {
                assert!(entry.payload.len() <= data.len());
            }
        }
    }
});
