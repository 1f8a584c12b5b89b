//! Any byte string must decode to a consumer message or a typed error, in
//! both directions, and any stream of bytes must cut into long frames (none
//! over the limit) or stop with an error.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_transport::quic::consume::{FromConsumer, ToConsumer};
use sluice_transport::quic::control::Control;
use sluice_transport::quic::frame::{Deframer, MAX_LONG_FRAME};

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(ToConsumer::Deliver(d)) = ToConsumer::decode(&bytes) {
        assert!(d.payload.len() <= data.len());
    }
    if let Ok(m) = FromConsumer::decode(data) {
        // What decodes encodes back to the same bytes.
        assert_eq!(m.encode(), data);
    }
    let _ = Control::decode(data);

    // The first byte picks the chunk size, the rest is the stream; chunks
    // are handed over in turn as slices (cut without a copy) and copied.
    if let Some((&chunk, stream)) = data.split_first() {
        let stream = Bytes::copy_from_slice(stream);
        let mut d = Deframer::new();
        d.set_long();
        for (i, c) in stream.chunks(usize::from(chunk).max(1)).enumerate() {
            if i % 2 == 0 {
                d.push(stream.slice_ref(c));
            } else {
                d.extend(c);
            }
            loop {
                match d.next_frame() {
                    Ok(Some(f)) => {
                        assert!(f.len() <= MAX_LONG_FRAME);
                        let _ = ToConsumer::decode(&f);
                        let _ = FromConsumer::decode(&f);
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
    }
});
