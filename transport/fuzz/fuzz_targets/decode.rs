//! Any byte string must decode to a packet or a typed error, and a DATA frame
//! that decodes must iterate without panicking.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_transport::wire::Packet;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = Packet::decode(&Bytes::copy_from_slice(data)) {
        if let Packet::Data(frame) = d.packet {
            for entry in frame.entries() {
                assert!(entry.payload.len() <= data.len());
            }
        }
    }
});
