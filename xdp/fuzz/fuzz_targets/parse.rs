//! Any byte string must parse to a UDP datagram or a typed error, without
//! panicking; what parses must lie inside the frame and survive being
//! written again with `write_udp`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_xdp::frame::{eth_addrs, parse_udp, udp_checksum_ok, write_udp};

/// For inputs with an odd first byte that look like IPv4, a correct IPv4
/// header checksum: the fuzzer then gets past the checksum check and into
/// the fragment, protocol and UDP length checks.
fn maybe_seal(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    if v.first().is_some_and(|b| b & 1 == 1) && v.len() >= 34 && v[12..14] == [0x08, 0x00] {
        let ihl = usize::from(v[14] & 0x0f) * 4;
        if ihl >= 20 && v.len() >= 14 + ihl {
            v[24] = 0;
            v[25] = 0;
            let mut acc: u32 = 0;
            for pair in v[14..14 + ihl].chunks(2) {
                acc += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
            }
            while acc > 0xffff {
                acc = (acc & 0xffff) + (acc >> 16);
            }
            v[24..26].copy_from_slice(&(!(acc as u16)).to_be_bytes());
        }
    }
    v
}

fuzz_target!(|data: &[u8]| {
    let frame = maybe_seal(data);
    let _ = udp_checksum_ok(&frame);
    let Ok(udp) = parse_udp(&frame) else {
        return;
    };
    let start = udp.payload.as_ptr() as usize - frame.as_ptr() as usize;
    assert!(start + udp.payload.len() <= frame.len());
    let (src_mac, dst_mac) = eth_addrs(&frame).expect("a parsed frame has MACs");
    let mut out = vec![0u8; frame.len() + 64];
    let n = write_udp(&mut out, src_mac, dst_mac, udp.src, udp.dst, udp.payload)
        .expect("what parsed fits again");
    let again = parse_udp(&out[..n]).expect("what we write parses");
    assert_eq!(
        (again.src, again.dst, again.payload),
        (udp.src, udp.dst, udp.payload)
    );
    assert!(udp_checksum_ok(&out[..n]));
});
