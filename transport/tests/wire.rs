//! Codec tests: every packet round-trips, and any byte string decodes to a
//! packet or a typed error without panicking (the property CI runs in place of
//! the fuzzer; `transport/fuzz` holds the cargo-fuzz target for long runs).

use bytes::Bytes;
use proptest::prelude::*;
use sluice_transport::wire::{
    Close, CloseCode, DataWriter, DecodeError, Heartbeat, Hello, Nack, NackHole, NackRange, Packet,
    Status, Welcome, HEADER_LEN, MAX_DATAGRAM, MAX_MESSAGE_LEN, TRAILER_LEN,
};

fn encode(p: &Packet, session: u64) -> Bytes {
    let mut out = Vec::new();
    p.encode(session, &mut out);
    Bytes::from(out)
}

fn control_packets() -> Vec<Packet> {
    vec![
        Packet::Hello(Hello {
            producer_id: 42,
            nonce: 7,
            first_seq: 1001,
            stream: "orders.eu".into(),
        }),
        Packet::Welcome(Welcome {
            nonce: 7,
            durable_seq: 1000,
            credit: 512,
        }),
        Packet::Close(Close {
            code: CloseCode::Rejected,
            nonce: 7,
            reason: "unknown stream".into(),
        }),
        Packet::Close(Close {
            code: CloseCode::Other(999),
            nonce: 0,
            reason: String::new(),
        }),
        Packet::Status(Status {
            durable_seq: 10,
            received_seq: 12,
            credit: 0,
        }),
        Packet::Nack(Nack {
            ranges: vec![NackRange { first: 3, last: 5 }],
            holes: vec![NackHole {
                seq: 9,
                offset: 1400,
                len: 1400,
            }],
        }),
        Packet::Heartbeat(Heartbeat {
            pong: true,
            token: u64::MAX,
        }),
    ]
}

#[test]
fn control_packets_round_trip() {
    for p in control_packets() {
        let d = Packet::decode(&encode(&p, 0xDEAD_BEEF)).expect("decodes");
        assert_eq!(d.packet, p);
        assert_eq!(d.header.session_id, 0xDEAD_BEEF);
    }
}

#[test]
fn data_round_trips_runs_and_fragments() {
    let mut out = Vec::new();
    let mut w = DataWriter::new(&mut out, 5, 1452);
    assert!(w.push_whole(10, b"first"));
    assert!(w.push_whole(11, b""));
    assert!(w.push_fragment(12, 5000, 0, &[7u8; 100]));
    // A gap starts a new run.
    assert!(w.push_fragment(40, 5000, 4900, &[8u8; 100]));
    assert!(w.push_whole(41, b"last"));
    w.finish();
    let d = Packet::decode(&Bytes::from(out)).expect("decodes");
    let Packet::Data(frame) = d.packet else {
        panic!("not DATA")
    };
    let got: Vec<_> = frame
        .entries()
        .map(|e| {
            (
                e.seq,
                e.fragment.map(|f| (f.msg_len, f.offset)),
                e.payload.len(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (10, None, 5),
            (11, None, 0),
            (12, Some((5000, 0)), 100),
            (40, Some((5000, 4900)), 100),
            (41, None, 4)
        ]
    );
}

#[test]
fn data_writer_never_exceeds_its_limit() {
    let mut out = Vec::new();
    let mut w = DataWriter::new(&mut out, 1, 300);
    let mut seq = 1;
    while w.push_whole(seq, &[0u8; 50]) {
        seq += 1;
    }
    let room = w.room(seq, true);
    if room > 0 {
        assert!(w.push_fragment(seq, 1000, 0, &vec![1u8; room]));
        assert!(!w.push_fragment(seq, 1000, 0, &[1]));
    }
    // Not even an empty message fits once the datagram is full.
    assert!(!w.push_whole(seq + 5, b""));
    w.finish();
    assert!(out.len() <= 300, "datagram of {} bytes", out.len());
    assert!(Packet::decode(&Bytes::from(out)).is_ok());
}

#[test]
fn typed_errors_for_each_kind_of_damage() {
    let good = encode(&control_packets()[0], 0);
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = good.to_vec();
        f(&mut v);
        Bytes::from(v)
    };
    assert_eq!(
        Packet::decode(&with(&|v| v[0] = b'X')),
        Err(DecodeError::BadMagic)
    );
    assert_eq!(
        Packet::decode(&with(&|v| v[2] = 9)),
        Err(DecodeError::WrongVersion(9))
    );
    assert_eq!(
        Packet::decode(&with(&|v| v[3] = 200)),
        Err(DecodeError::UnknownType(200))
    );
    assert_eq!(
        Packet::decode(&with(&|v| v[4] = 0x80)),
        Err(DecodeError::UnknownFlags(0x80))
    );
    assert_eq!(
        Packet::decode(&with(&|v| {
            let n = v.len();
            v[n - 10] ^= 1;
        })),
        Err(DecodeError::BadChecksum)
    );
    assert!(matches!(
        Packet::decode(&with(&|v| v.truncate(HEADER_LEN + 2))),
        Err(DecodeError::BadChecksum | DecodeError::Truncated { .. })
    ));
    assert!(matches!(
        Packet::decode(&Bytes::from(vec![0x53, 0x4C])),
        Err(DecodeError::Truncated { .. })
    ));
    assert!(matches!(
        Packet::decode(&Bytes::from(vec![0u8; MAX_DATAGRAM + 1])),
        Err(DecodeError::Oversized { .. })
    ));
}

/// Re-seals a body after tampering, so that the checksum does not hide the
/// structural check under test.
fn sealed(session: u64, ty: u8, body: &[u8]) -> Bytes {
    let mut v = vec![0x53, 0x4C, 1, ty, 0];
    v.extend_from_slice(&session.to_be_bytes());
    v.extend_from_slice(body);
    let sum = crc32c::crc32c(&v);
    v.extend_from_slice(&sum.to_be_bytes());
    Bytes::from(v)
}

#[test]
fn structurally_bad_bodies_are_rejected_even_with_a_valid_checksum() {
    // DATA: a run at seq 0, a fragment past its message, a 17 MiB message,
    // a count larger than the entries present, an unknown entry kind.
    let bad_data: Vec<Vec<u8>> = vec![
        [&0u64.to_be_bytes()[..], &1u16.to_be_bytes(), &[0, 0, 0]].concat(),
        [
            &1u64.to_be_bytes()[..],
            &1u16.to_be_bytes(),
            &[1, 0, 4],
            &10u32.to_be_bytes(),
            &8u32.to_be_bytes(),
            b"abcd",
        ]
        .concat(),
        [
            &1u64.to_be_bytes()[..],
            &1u16.to_be_bytes(),
            &[1, 0, 1],
            &(MAX_MESSAGE_LEN as u32 + 1).to_be_bytes(),
            &0u32.to_be_bytes(),
            b"a",
        ]
        .concat(),
        [
            &1u64.to_be_bytes()[..],
            &3u16.to_be_bytes(),
            &[0, 0, 1],
            b"a",
        ]
        .concat(),
        [
            &1u64.to_be_bytes()[..],
            &1u16.to_be_bytes(),
            &[7, 0, 1],
            b"a",
        ]
        .concat(),
        [
            &u64::MAX.to_be_bytes()[..],
            &2u16.to_be_bytes(),
            &[0, 0, 0, 0, 0, 0],
        ]
        .concat(),
        vec![],
    ];
    for body in bad_data {
        let r = Packet::decode(&sealed(1, 4, &body));
        assert!(
            matches!(
                r,
                Err(DecodeError::Malformed(_) | DecodeError::Truncated { .. })
            ),
            "accepted {body:?}: {r:?}"
        );
    }
    // A NACK claiming 65,535 ranges in a few bytes must not allocate for them.
    let r = Packet::decode(&sealed(1, 6, &[0xFF, 0xFF, 0, 0]));
    assert!(matches!(r, Err(DecodeError::Truncated { .. })), "{r:?}");
    // Trailing bytes after a complete STATUS body (three zero fields).
    let mut body = vec![0u8; 20];
    body.push(0xAA);
    assert_eq!(
        Packet::decode(&sealed(1, 5, &body)),
        Err(DecodeError::TrailingBytes(1))
    );
    // A HELLO whose stream name is not UTF-8.
    let mut hello = [0u8; 24].to_vec();
    hello.extend_from_slice(&[2, 0xFF, 0xFE]);
    assert!(matches!(
        Packet::decode(&sealed(0, 1, &hello)),
        Err(DecodeError::Malformed(_))
    ));
}

fn arb_packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        (any::<u64>(), any::<u64>(), any::<u64>(), "[a-z.]{1,60}").prop_map(|(p, n, f, s)| {
            Packet::Hello(Hello {
                producer_id: p,
                nonce: n,
                first_seq: f,
                stream: s,
            })
        }),
        (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(n, d, c)| Packet::Welcome(Welcome {
            nonce: n,
            durable_seq: d,
            credit: c
        })),
        (any::<u16>(), any::<u64>(), ".{0,40}").prop_map(|(c, n, r)| {
            let code = CloseCode::from_u16(c);
            Packet::Close(Close {
                code,
                nonce: n,
                reason: r,
            })
        }),
        (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(a, b, c)| Packet::Status(Status {
            durable_seq: a.min(b),
            received_seq: a.max(b),
            credit: c
        })),
        (
            proptest::collection::vec((1..u64::MAX / 2, 0..1000u64), 0..40),
            proptest::collection::vec((1..u64::MAX, 0..u32::MAX / 2, 1..u32::MAX / 2), 0..40)
        )
            .prop_map(|(r, h)| Packet::Nack(Nack {
                ranges: r
                    .into_iter()
                    .map(|(f, n)| NackRange {
                        first: f,
                        last: f + n
                    })
                    .collect(),
                holes: h
                    .into_iter()
                    .map(|(s, o, l)| NackHole {
                        seq: s,
                        offset: o,
                        len: l
                    })
                    .collect(),
            })),
        (any::<bool>(), any::<u64>())
            .prop_map(|(p, t)| Packet::Heartbeat(Heartbeat { pong: p, token: t })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Byte soup: anything at all decodes or fails with a typed error.
    #[test]
    fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = Packet::decode(&Bytes::from(bytes));
    }

    /// Soup behind a valid header and checksum reaches the body decoders.
    #[test]
    fn any_body_decodes_without_panic(ty in 1u8..8, body in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(d) = Packet::decode(&sealed(3, ty, &body)) {
            if let Packet::Data(f) = d.packet {
                // Iterating a frame that validated must not panic either.
                for e in f.entries() {
                    prop_assert!(e.payload.len() <= body.len());
                }
            }
        }
    }

    /// A single flipped bit anywhere is caught (CRC32C detects every 1-bit error).
    #[test]
    fn any_bit_flip_is_rejected(p in arb_packet(), bit in any::<usize>()) {
        let mut v = encode(&p, 9).to_vec();
        let bit = bit % (v.len() * 8);
        v[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(Packet::decode(&Bytes::from(v)).is_err());
    }

    #[test]
    fn control_packets_round_trip_prop(p in arb_packet(), session in any::<u64>()) {
        let d = Packet::decode(&encode(&p, session)).unwrap();
        prop_assert_eq!(d.packet, p);
        prop_assert_eq!(d.header.session_id, session);
    }

    /// What the writer builds, the decoder reads back exactly.
    #[test]
    fn data_writer_round_trip(
        start in 1u64..u64::MAX / 2,
        msgs in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..700)), 1..30),
        limit in 200usize..4000,
    ) {
        let mut out = Vec::new();
        let mut w = DataWriter::new(&mut out, 1, limit);
        let mut want = Vec::new();
        for (i, (frag, data)) in msgs.iter().enumerate() {
            let seq = start + (i as u64) * if *frag { 2 } else { 1 };
            let ok = if *frag && !data.is_empty() {
                w.push_fragment(seq, data.len() as u32 + 5, 5, data)
            } else {
                w.push_whole(seq, data)
            };
            if ok {
                want.push((seq, data.clone()));
            }
        }
        let empty = w.is_empty();
        w.finish();
        prop_assert!(out.len() <= limit);
        if !empty {
            let Packet::Data(f) = Packet::decode(&Bytes::from(out)).unwrap().packet else {
                panic!("not DATA")
            };
            let got: Vec<_> = f.entries().map(|e| (e.seq, e.payload.to_vec())).collect();
            prop_assert_eq!(got, want);
        }
        prop_assert!(HEADER_LEN + TRAILER_LEN < limit);
    }
}
