//! A stream of arbitrary datagrams fed to a receiving endpoint, interleaved
//! with timer ticks, must never panic it.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_transport::proto::{Endpoint, ReceiverConfig};

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut ep = Endpoint::new(ReceiverConfig {
        seed: Some(0),
        ..ReceiverConfig::default()
    });
    let peer = "127.0.0.1:9".parse().unwrap();
    let mut out = Vec::new();
    // Datagrams are length-prefixed by one byte; every HELLO is accepted.
    let mut rest = data;
    let mut t = 0u64;
    while let Some((&len, tail)) = rest.split_first() {
        let n = ((len & 0x7F) as usize * 4).min(tail.len());
        let (dgram, tail) = tail.split_at(n);
        rest = tail;
        t += 100;
        let now = start + Duration::from_micros(t);
        // Re-seal most datagrams so the fuzzer explores sessions, not the CRC.
        let mut dgram = dgram.to_vec();
        if len & 0x80 == 0 && dgram.len() >= 4 {
            let end = dgram.len() - 4;
            let sum = crc32c::crc32c(&dgram[..end]);
            dgram[end..].copy_from_slice(&sum.to_be_bytes());
        }
        if let Some(inc) = ep.handle_datagram(now, peer, Bytes::from(dgram)) {
            ep.accept(now, inc, 0, 64);
        }
        ep.handle_timeout(now);
        while ep.poll_transmit(now, &mut out).is_some() {}
        while let Some(id) = ep.poll_readable() {
            if let Some(r) = ep.receiver_mut(id) {
                while let Some(m) = r.poll_message() {
                    r.mark_durable(m.seq);
                }
            }
        }
    }
});
