//! Any byte string must give `peek` a header or a typed error, and must never
//! open under keys the fuzzer does not have, whatever the replay window holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_transport::seal::{keys, peek, Side, EXPORTER_LEN, HEADER_LEN};

const LEASE: u64 = 7;

fuzz_target!(|data: &[u8]| {
    let material: [u8; EXPORTER_LEN] = std::array::from_fn(|i| i as u8);
    let (mut tx, _) = keys(&material, LEASE, Side::Producer);
    let (_, mut rx) = keys(&material, LEASE, Side::Daemon);

    // Datagrams are length-prefixed by two bytes. A first byte with the low bit
    // set gets a valid header for this lease written over its start, so that
    // the fuzzer reaches the replay window and the AEAD instead of stopping at
    // the magic.
    let mut rest = data;
    let mut sealed = Vec::new();
    while rest.len() >= 2 {
        let (len, tail) = rest.split_at(2);
        let n = (u16::from_be_bytes([len[0], len[1]]) as usize >> 1).min(tail.len());
        let (dgram, tail) = tail.split_at(n);
        rest = tail;
        let mut dgram = dgram.to_vec();
        if len[0] & 1 == 1 && dgram.len() >= HEADER_LEN {
            dgram[..12].copy_from_slice(&[0x53, 0x45, 1, 0, 0, 0, 0, 0, 0, 0, 0, LEASE as u8]);
        }
        let peeked = peek(&dgram);
        let opened = rx.open(&mut dgram);
        assert!(opened.is_err(), "a forgery opened");
        if let Err(e) = peeked {
            assert_eq!(
                opened,
                Err(e),
                "open must refuse what peek refuses, for the same reason"
            );
        }

        // Interleave genuine packets, so that the window moves while the
        // fuzzer's datagrams arrive, and check they still open.
        tx.seal(&dgram[..dgram.len().min(64)], &mut sealed).unwrap();
        assert!(rx.open(&mut sealed).is_ok(), "a genuine packet was refused");
    }
});
