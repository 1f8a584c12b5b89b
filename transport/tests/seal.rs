//! Sealed packets (the authenticated fast path): round trips, who can open
//! what, tampering, replay, truncation, and a known-answer test that pins the
//! format of WIRE.md ("Sealed packets"). The byte-soup properties stand in for
//! the fuzzer in CI (`transport/fuzz` has the `open` target for long runs).

use bytes::Bytes;
use proptest::prelude::*;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use sluice_transport::seal::{
    exporter_context, keys, peek, Direction, Header, OpenError, Opener, SealError, Sealer, Side,
    EXPORTER_LABEL, EXPORTER_LEN, HEADER_LEN, MAGIC, OVERHEAD, REPLAY_WINDOW, TAG_LEN,
};
use sluice_transport::wire::{self, DecodeError, Heartbeat, Packet};

const LEASE: u64 = 7;

/// Stand-in for the exporter's output: bytes 0, 1, …, 87.
fn material() -> [u8; EXPORTER_LEN] {
    std::array::from_fn(|i| i as u8)
}

/// The producer's and the daemon's (sealer, opener) for one lease.
fn pair(material: &[u8; EXPORTER_LEN], lease: u64) -> ((Sealer, Opener), (Sealer, Opener)) {
    (
        keys(material, lease, Side::Producer),
        keys(material, lease, Side::Daemon),
    )
}

fn seal(tx: &mut Sealer, inner: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    tx.seal(inner, &mut out).expect("seals");
    out
}

#[test]
fn round_trips_both_directions() {
    let ((mut p_tx, mut p_rx), (mut d_tx, mut d_rx)) = pair(&material(), LEASE);
    for i in 0..10u8 {
        let inner = vec![i; 100 * i as usize];
        let mut up = seal(&mut p_tx, &inner);
        assert_eq!(up.len(), inner.len() + OVERHEAD);
        assert_eq!(
            peek(&up),
            Ok(Header {
                direction: Direction::ProducerToDaemon,
                lease_id: LEASE,
                packet_number: u64::from(i) + 1,
            })
        );
        assert_eq!(d_rx.open(&mut up), Ok(&inner[..]));

        let mut down = seal(&mut d_tx, &inner);
        assert_eq!(peek(&down).unwrap().direction, Direction::DaemonToProducer);
        assert_eq!(p_rx.open(&mut down), Ok(&inner[..]));
    }
    assert_eq!(p_tx.packets_sealed(), 10);
    assert_eq!(d_rx.window().highest(), 10);
    assert_eq!(Sealer::overhead(), 36);
}

#[test]
fn ciphertext_hides_the_inner_packet() {
    let ((mut tx, _), _) = pair(&material(), LEASE);
    let inner = [0u8; 64];
    let a = seal(&mut tx, &inner);
    let b = seal(&mut tx, &inner);
    assert_ne!(&a[HEADER_LEN..HEADER_LEN + 64], &inner[..]);
    // Same plaintext, next packet number: another nonce, other bytes.
    assert_ne!(a[HEADER_LEN..], b[HEADER_LEN..]);
}

#[test]
fn only_the_peer_of_the_same_lease_and_session_can_open() {
    let ((mut p_tx, mut p_rx), (_, mut d_rx)) = pair(&material(), LEASE);
    let packet = seal(&mut p_tx, b"for the daemon");

    // The producer's own opener is for the other direction: a packet
    // reflected back at its sender is refused.
    assert_eq!(
        p_rx.open(&mut packet.clone()),
        Err(OpenError::WrongDirection)
    );

    // Keys of another TLS session (other exporter output), same lease id.
    let mut other = material();
    other[0] ^= 1;
    let (_, mut stranger) = keys(&other, LEASE, Side::Daemon);
    assert_eq!(
        stranger.open(&mut packet.clone()),
        Err(OpenError::AuthFailed)
    );
    // A difference in the producer→daemon IV alone is enough too.
    let mut other = material();
    other[40] ^= 1;
    let (_, mut stranger) = keys(&other, LEASE, Side::Daemon);
    assert_eq!(
        stranger.open(&mut packet.clone()),
        Err(OpenError::AuthFailed)
    );

    // Another lease: refused by the header, and by the keys when an attacker
    // rewrites the lease id to match (the id is in the AAD, and each lease
    // has its own exporter context, hence its own keys).
    let (_, mut other_lease) = keys(&material(), LEASE + 1, Side::Daemon);
    assert_eq!(
        other_lease.open(&mut packet.clone()),
        Err(OpenError::WrongLease)
    );
    let mut relabelled = packet.clone();
    relabelled[4..12].copy_from_slice(&(LEASE + 1).to_be_bytes());
    assert_eq!(
        other_lease.open(&mut relabelled),
        Err(OpenError::AuthFailed)
    );

    // None of that disturbed the real opener.
    assert_eq!(d_rx.open(&mut packet.clone()), Ok(&b"for the daemon"[..]));
}

#[test]
fn every_single_bit_flip_is_rejected() {
    let ((mut tx, _), (_, mut rx)) = pair(&material(), LEASE);
    let inner: Vec<u8> = (0..40).collect();
    let packet = seal(&mut tx, &inner);
    for bit in 0..packet.len() * 8 {
        let mut bad = packet.clone();
        let byte = bit / 8;
        bad[byte] ^= 1 << (bit % 8);
        let expected = match byte {
            0..=1 => OpenError::NotSealed,
            2 => OpenError::BadVersion,
            3 => OpenError::WrongDirection,
            4..=11 => OpenError::WrongLease,
            // A flip in the packet number is caught by the tag (the header is
            // the AAD and the number forms the nonce), except 1 → 0, which
            // the replay window refuses before any AES work.
            12..=19 if bit == 19 * 8 => OpenError::TooOld,
            _ => OpenError::AuthFailed,
        };
        assert_eq!(rx.open(&mut bad), Err(expected), "bit {bit} (byte {byte})");
    }
    // Rejections moved nothing: the untouched packet still opens.
    assert_eq!(rx.window().highest(), 0);
    assert_eq!(rx.open(&mut packet.clone()), Ok(&inner[..]));
}

#[test]
fn a_replayed_packet_is_refused() {
    let ((mut tx, _), (_, mut rx)) = pair(&material(), LEASE);
    let packet = seal(&mut tx, b"once");
    assert!(rx.open(&mut packet.clone()).is_ok());
    assert_eq!(rx.open(&mut packet.clone()), Err(OpenError::Replayed));
    // Still refused after later packets arrive, as long as it is in the window.
    for _ in 0..100 {
        let mut p = seal(&mut tx, b"more");
        rx.open(&mut p).unwrap();
    }
    assert_eq!(rx.open(&mut packet.clone()), Err(OpenError::Replayed));
}

#[test]
fn reordering_within_the_window_is_accepted_and_older_is_too_old() {
    let ((mut tx, _), (_, mut rx)) = pair(&material(), LEASE);
    let n = REPLAY_WINDOW + 100;
    let packets: Vec<Vec<u8>> = (1..=n).map(|pn| seal(&mut tx, &pn.to_be_bytes())).collect();
    let open = |rx: &mut Opener, pn: u64| {
        let mut p = packets[(pn - 1) as usize].clone();
        rx.open(&mut p).map(|inner| inner.to_vec())
    };

    // A burst arriving backwards: every one is new.
    for pn in (1..=10).rev() {
        assert_eq!(open(&mut rx, pn), Ok(pn.to_be_bytes().to_vec()));
    }
    // The newest arrives long before the rest.
    assert!(open(&mut rx, n).is_ok());
    let oldest_in_window = n - REPLAY_WINDOW + 1;
    assert!(open(&mut rx, oldest_in_window).is_ok());
    assert!(open(&mut rx, n - 1).is_ok());
    assert_eq!(open(&mut rx, oldest_in_window - 1), Err(OpenError::TooOld));
    assert_eq!(open(&mut rx, 11), Err(OpenError::TooOld));
    assert_eq!(open(&mut rx, oldest_in_window), Err(OpenError::Replayed));
    // Everything still inside the window and not yet seen opens, in any order.
    for pn in (oldest_in_window + 1..n - 1).rev() {
        assert!(open(&mut rx, pn).is_ok(), "pn {pn}");
    }
}

#[test]
fn a_forgery_with_a_correct_header_fails_and_moves_nothing() {
    let ((mut tx, _), (_, mut rx)) = pair(&material(), LEASE);
    let real: Vec<Vec<u8>> = (0..5).map(|i| seal(&mut tx, &[i; 300])).collect();
    assert!(rx.open(&mut real[0].clone()).is_ok());

    // Packet number 5, right lease and direction, random body and tag.
    let mut forged = real[4][..HEADER_LEN].to_vec();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    forged.extend((0..300 + TAG_LEN).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    assert_eq!(peek(&forged).unwrap(), peek(&real[4]).unwrap());
    assert_eq!(rx.open(&mut forged.clone()), Err(OpenError::AuthFailed));
    // A forgery far ahead must not slide the window past real packets either.
    let mut far = forged.clone();
    far[12..20].copy_from_slice(&(1u64 << 40).to_be_bytes());
    assert_eq!(rx.open(&mut far), Err(OpenError::AuthFailed));
    assert_eq!(rx.window().highest(), 1);

    // The real packets with those numbers still open.
    for p in &real[1..] {
        assert!(rx.open(&mut p.clone()).is_ok());
    }
}

#[test]
fn every_length_below_the_overhead_is_truncated() {
    let ((mut tx, _), (_, mut rx)) = pair(&material(), LEASE);
    let packet = seal(&mut tx, b"");
    assert_eq!(packet.len(), OVERHEAD);
    for len in 0..OVERHEAD {
        assert_eq!(peek(&packet[..len]), Err(OpenError::Truncated), "len {len}");
        let mut short = packet[..len].to_vec();
        assert_eq!(rx.open(&mut short), Err(OpenError::Truncated), "len {len}");
    }
    // The shortest sealed packet (an empty inner datagram) is fine.
    assert_eq!(rx.open(&mut packet.clone()), Ok(&b""[..]));
}

#[test]
fn plain_and_sealed_packets_cannot_be_mistaken_for_each_other() {
    assert_eq!(MAGIC, 0x5345);
    assert_ne!(MAGIC, wire::MAGIC);
    // A short plain packet counts as not sealed, not as truncated.
    let mut plain = Vec::new();
    Packet::Heartbeat(Heartbeat {
        pong: false,
        token: 1,
    })
    .encode(9, &mut plain);
    assert!(plain.len() < OVERHEAD);
    assert_eq!(peek(&plain), Err(OpenError::NotSealed));
    assert_eq!(peek(&[0x53; 100]), Err(OpenError::NotSealed));

    let ((mut tx, _), _) = pair(&material(), LEASE);
    let sealed = seal(&mut tx, &plain);
    assert_eq!(
        Packet::decode(&Bytes::from(sealed)),
        Err(DecodeError::BadMagic)
    );
}

#[test]
fn header_errors_in_order() {
    let ((mut tx, _), (_, mut rx)) = pair(&material(), LEASE);
    let packet = seal(&mut tx, b"x");
    let mut v2 = packet.clone();
    v2[2] = 2;
    assert_eq!(peek(&v2), Err(OpenError::BadVersion));
    for dir in 2..=255u8 {
        let mut bad = packet.clone();
        bad[3] = dir;
        assert_eq!(peek(&bad), Err(OpenError::WrongDirection));
        assert_eq!(rx.open(&mut bad), Err(OpenError::WrongDirection));
    }
}

#[test]
fn exhausted_and_oversized_are_the_only_seal_errors() {
    let ((mut tx, _), _) = pair(&material(), LEASE);
    let mut out = vec![1, 2, 3];
    let too_big = vec![0; wire::MAX_DATAGRAM - OVERHEAD + 1];
    assert_eq!(
        tx.seal(&too_big, &mut out),
        Err(SealError::TooLarge { len: too_big.len() })
    );
    // Sealing replaces the buffer's contents.
    tx.seal(b"ok", &mut out).unwrap();
    assert_eq!(out.len(), 2 + OVERHEAD);
    assert_eq!(peek(&out).unwrap().packet_number, 1);
}

#[test]
fn drop_reasons_have_stable_metric_names() {
    let names: Vec<&str> = OpenError::ALL.iter().map(|e| e.as_str()).collect();
    assert_eq!(
        names,
        [
            "truncated",
            "not_sealed",
            "bad_version",
            "wrong_direction",
            "wrong_lease",
            "too_old",
            "replayed",
            "auth_failed"
        ]
    );
}

#[test]
fn exporter_parameters() {
    assert_eq!(EXPORTER_LABEL, b"EXPORTER-sluice-fast-path-v1");
    assert_eq!(EXPORTER_LEN, 88);
    assert_eq!(exporter_context(7), [0, 0, 0, 0, 0, 0, 0, 7]);
}

/// Material 0..88, lease 7, the producer seals b"hello" as its first packet.
/// This pins the whole format: header layout, AAD, key and IV offsets in the
/// exported material, nonce construction, AES-256-GCM, tag placement. (The
/// expected bytes were also reproduced with OpenSSL's AES-256-GCM through
/// Python's `cryptography`, outside ring.)
#[test]
fn known_answer() {
    const EXPECTED: &str = concat!(
        "5345",                             // magic
        "01",                               // version
        "00",                               // producer → daemon
        "0000000000000007",                 // lease id
        "0000000000000001",                 // packet number
        "6a7095e6b2",                       // "hello", encrypted
        "c5dd904f021b99cb3456efe592ae6b19", // tag
    );
    let ((mut tx, _), (_, mut rx)) = pair(&material(), LEASE);
    let sealed = seal(&mut tx, b"hello");
    assert_eq!(hex(&sealed), EXPECTED);

    // The same construction straight from ring, independently of the module.
    let m = material();
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &m[0..32]).unwrap());
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&m[32..44]);
    nonce[11] ^= 1; // packet number 1 in the last 8 bytes
    let aad = &sealed[..HEADER_LEN];
    let mut body = b"hello".to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut body,
    )
    .unwrap();
    assert_eq!(&sealed[HEADER_LEN..], &body[..]);

    assert_eq!(rx.open(&mut sealed.clone()), Ok(&b"hello"[..]));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A header that passes `peek` and the opener's lease and direction checks,
/// so that random bodies reach the AEAD.
fn valid_header(pn: u64) -> Vec<u8> {
    let mut h = vec![0x53, 0x45, 1, 0];
    h.extend_from_slice(&LEASE.to_be_bytes());
    h.extend_from_slice(&pn.to_be_bytes());
    h
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Any byte string yields a header or a typed error from `peek`, and an
    /// error (never a panic, never an inner packet) from `open`.
    #[test]
    fn random_bytes_never_panic_or_open(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        with_header in any::<bool>(),
        pn in 0u64..4,
    ) {
        let (_, mut rx) = keys(&material(), LEASE, Side::Daemon);
        let mut d = if with_header { valid_header(pn) } else { Vec::new() };
        d.extend_from_slice(&bytes);
        let _ = peek(&d);
        let got = rx.open(&mut d);
        prop_assert!(got.is_err());
        prop_assert_eq!(rx.window().highest(), 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_inner_payload_round_trips(
        len in prop_oneof![0usize..2000, 0usize..=65_000],
        seed in any::<u8>(),
        lease in any::<u64>(),
    ) {
        let inner: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
        let ((mut tx, _), (_, mut rx)) = pair(&material(), lease);
        let mut out = Vec::new();
        tx.seal(&inner, &mut out).unwrap();
        prop_assert_eq!(out.len(), len + OVERHEAD);
        prop_assert_eq!(rx.open(&mut out).unwrap(), &inner[..]);
    }
}
