//! Codec tests of the consumer's messages (WIRE.md, "Consumers (QUIC
//! plane)"): every message round-trips, any byte string decodes to a message
//! or a typed error without panicking, cut or padded messages are errors,
//! and long frames are cut out of a stream in any chunking (the property CI
//! runs in place of the fuzzer; `transport/fuzz` has the `consume` target).

// Lists of one range are lists of ack ranges here, not ranges mistyped.
#![allow(clippy::single_range_in_vec_init)]

use std::ops::Range;

use bytes::Bytes;
use proptest::prelude::*;
use sluice_transport::quic::consume::{
    ConsumerMessageError, Delivery, FromConsumer, ToConsumer, DELIVER_HEADER_LEN,
    MAX_FETCH_WAIT_MS, MAX_OFFSETS,
};
use sluice_transport::quic::control::{ConsumeMode, Control, ControlError, StartAt};
use sluice_transport::quic::frame::{self, Deframer, MAX_LONG_FRAME};

fn arb_offsets() -> impl Strategy<Value = Vec<u64>> {
    proptest::collection::vec(any::<u64>(), 1..40)
}

/// Ack ranges: non-empty, ending within u64, anywhere (they may overlap
/// and come in any order: the codec does not mind).
fn arb_ranges() -> impl Strategy<Value = Vec<Range<u64>>> {
    let range = prop_oneof![
        (any::<u64>(), 1..1000u64),
        (0..1_000_000u64, 1..1000u64),
        (Just(u64::MAX - 5), 1..6u64),
    ]
    .prop_map(|(start, len)| {
        let start = start.min(u64::MAX - len);
        start..start + len
    });
    proptest::collection::vec(range, 1..40)
}

fn arb_delivery() -> impl Strategy<Value = Delivery> {
    (
        any::<[u64; 5]>(),
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(
            |([offset, ts, producer, seq, deadline], delivery, payload)| Delivery {
                offset,
                delivery,
                timestamp_us: ts,
                producer,
                seq,
                deadline_ms: deadline,
                payload: Bytes::from(payload),
            },
        )
}

fn arb_to_consumer() -> impl Strategy<Value = ToConsumer> {
    prop_oneof![
        arb_delivery().prop_map(ToConsumer::Deliver),
        any::<u64>().prop_map(|id| ToConsumer::FetchDone { id }),
        any::<u64>().prop_map(|id| ToConsumer::Synced { id }),
        ".{0,60}".prop_map(|reason| ToConsumer::Error { reason }),
    ]
}

fn arb_from_consumer() -> impl Strategy<Value = FromConsumer> {
    prop_oneof![
        arb_ranges().prop_map(|ranges| FromConsumer::Ack { ranges }),
        any::<u64>().prop_map(|offset| FromConsumer::AckUpTo { offset }),
        (arb_offsets(), any::<u64>())
            .prop_map(|(offsets, delay_ms)| FromConsumer::Nack { offsets, delay_ms }),
        (arb_offsets(), any::<u64>())
            .prop_map(|(offsets, ms)| FromConsumer::Extend { offsets, ms }),
        (any::<u32>(), any::<u64>()).prop_map(|(max_messages, max_bytes)| FromConsumer::Credit {
            max_messages,
            max_bytes
        }),
        (any::<u64>(), any::<u32>(), 0..=MAX_FETCH_WAIT_MS)
            .prop_map(|(id, max, wait_ms)| FromConsumer::Fetch { id, max, wait_ms }),
        any::<u64>().prop_map(|id| FromConsumer::Sync { id }),
    ]
}

fn arb_start() -> impl Strategy<Value = StartAt> {
    prop_oneof![
        Just(StartAt::Earliest),
        Just(StartAt::Latest),
        any::<u64>().prop_map(StartAt::Offset),
        any::<u64>().prop_map(StartAt::Time),
    ]
}

fn arb_consumer_control() -> impl Strategy<Value = Control> {
    prop_oneof![
        (
            "[a-z.]{0,40}",
            ".{0,40}",
            arb_start(),
            any::<bool>(),
            any::<u32>(),
            any::<u64>()
        )
            .prop_map(|(stream, group, start, pull, max_messages, max_bytes)| {
                Control::Subscribe {
                    stream,
                    group,
                    start,
                    mode: if pull {
                        ConsumeMode::Pull
                    } else {
                        ConsumeMode::Push
                    },
                    max_messages,
                    max_bytes,
                }
            }),
        (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(
            |(member, ack_deadline_ms, max_deliveries)| Control::Subscribed {
                member,
                ack_deadline_ms,
                max_deliveries,
            }
        ),
    ]
}

fn to_consumer(b: &[u8]) -> Result<ToConsumer, ConsumerMessageError> {
    ToConsumer::decode(&Bytes::copy_from_slice(b))
}

#[test]
fn every_message_round_trips() {
    let deliver = ToConsumer::Deliver(Delivery {
        offset: 1,
        delivery: 2,
        timestamp_us: 3,
        producer: 4,
        seq: 5,
        deadline_ms: 30_000,
        payload: Bytes::from_static(b"hello"),
    });
    let body = deliver.encode();
    assert_eq!(body.len(), DELIVER_HEADER_LEN + 5);
    assert_eq!(body[0], 1);
    assert_eq!(&body[1..9], &1u64.to_be_bytes());
    assert_eq!(&body[9..13], &2u32.to_be_bytes());
    assert_eq!(ToConsumer::decode(&Bytes::from(body)).unwrap(), deliver);

    // Acks go as ranges: a count, then (first offset u64, length u32) each.
    let ack = FromConsumer::Ack {
        ranges: vec![7..8, 9..12],
    };
    let body = ack.encode();
    assert_eq!(body[0], 1);
    assert_eq!(&body[1..5], &2u32.to_be_bytes());
    assert_eq!(&body[5..13], &7u64.to_be_bytes());
    assert_eq!(&body[13..17], &1u32.to_be_bytes());
    assert_eq!(&body[17..25], &9u64.to_be_bytes());
    assert_eq!(&body[25..29], &3u32.to_be_bytes());
    assert_eq!(body.len(), 1 + 4 + 2 * 12);
    assert_eq!(FromConsumer::decode(&body).unwrap(), ack);

    let subscribe = Control::Subscribe {
        stream: "orders".into(),
        group: "billing".into(),
        start: StartAt::Offset(42),
        mode: ConsumeMode::Pull,
        max_messages: 1000,
        max_bytes: 16 << 20,
    };
    let body = subscribe.encode();
    assert_eq!(body[0], 8);
    assert_eq!(Control::decode(&body).unwrap(), subscribe);
    let subscribed = Control::Subscribed {
        member: 3,
        ack_deadline_ms: 30_000,
        max_deliveries: 5,
    };
    assert_eq!(subscribed.encode()[0], 9);
    assert_eq!(Control::decode(&subscribed.encode()).unwrap(), subscribed);
}

#[test]
fn a_delivery_payload_is_a_slice_of_the_frame_and_may_be_empty() {
    let d = Delivery {
        offset: 10,
        delivery: 1,
        timestamp_us: 0,
        producer: 1,
        seq: 1,
        deadline_ms: 0,
        payload: Bytes::new(),
    };
    let body = Bytes::from(ToConsumer::Deliver(d.clone()).encode());
    assert_eq!(body.len(), DELIVER_HEADER_LEN);
    assert_eq!(ToConsumer::decode(&body).unwrap(), ToConsumer::Deliver(d));

    let body = Bytes::from(
        ToConsumer::Deliver(Delivery {
            payload: Bytes::from_static(b"abc"),
            offset: 11,
            delivery: 1,
            timestamp_us: 0,
            producer: 1,
            seq: 2,
            deadline_ms: 0,
        })
        .encode(),
    );
    let ToConsumer::Deliver(got) = ToConsumer::decode(&body).unwrap() else {
        panic!("not a delivery");
    };
    // Zero-copy: the payload points into the frame's buffer.
    assert_eq!(got.payload.as_ptr(), body[DELIVER_HEADER_LEN..].as_ptr());
    // And so when the frame is handed over.
    let ToConsumer::Deliver(owned) = ToConsumer::decode_owned(body.clone()).unwrap() else {
        panic!("not a delivery");
    };
    assert_eq!(owned, got);
    assert_eq!(owned.payload.as_ptr(), body[DELIVER_HEADER_LEN..].as_ptr());
    assert_eq!(
        ToConsumer::decode_owned(Bytes::from_static(&[3, 0, 0])),
        Err(ConsumerMessageError::Truncated)
    );
}

#[test]
fn the_header_for_zero_copy_writes_is_the_frame_up_to_the_payload() {
    let d = Delivery {
        offset: 1,
        delivery: 3,
        timestamp_us: 4,
        producer: 5,
        seq: 6,
        deadline_ms: 7,
        payload: Bytes::from_static(b"payload"),
    };
    let mut framed = Vec::new();
    ToConsumer::Deliver(d.clone()).put_frame(&mut framed);
    let mut by_parts = d.frame_header().to_vec();
    by_parts.extend_from_slice(&d.payload);
    assert_eq!(framed, by_parts);
}

#[test]
fn typed_errors_for_each_kind_of_damage() {
    assert_eq!(to_consumer(&[]), Err(ConsumerMessageError::Empty));
    assert_eq!(FromConsumer::decode(&[]), Err(ConsumerMessageError::Empty));
    assert_eq!(to_consumer(&[0]), Err(ConsumerMessageError::UnknownType(0)));
    assert_eq!(to_consumer(&[5]), Err(ConsumerMessageError::UnknownType(5)));
    assert_eq!(
        FromConsumer::decode(&[8]),
        Err(ConsumerMessageError::UnknownType(8))
    );
    assert_eq!(
        to_consumer(&[2, 0, 0]),
        Err(ConsumerMessageError::Truncated)
    );
    let mut synced = ToConsumer::Synced { id: 1 }.encode();
    synced.push(0);
    assert_eq!(
        to_consumer(&synced),
        Err(ConsumerMessageError::TrailingBytes(1))
    );

    // Offset lists: 1 to 65,536, checked before the bytes are looked for.
    let empty = [3, 0, 0, 0, 0];
    assert!(matches!(
        FromConsumer::decode(&empty),
        Err(ConsumerMessageError::Malformed(_))
    ));
    let too_many = [&[4u8][..], &(MAX_OFFSETS as u32 + 1).to_be_bytes()].concat();
    assert!(matches!(
        FromConsumer::decode(&too_many),
        Err(ConsumerMessageError::Malformed(_))
    ));
    let huge = [&[3u8][..], &u32::MAX.to_be_bytes()].concat();
    assert!(matches!(
        FromConsumer::decode(&huge),
        Err(ConsumerMessageError::Malformed(_))
    ));
    let most = FromConsumer::Nack {
        offsets: (0..MAX_OFFSETS as u64).collect(),
        delay_ms: 0,
    };
    assert_eq!(FromConsumer::decode(&most.encode()).unwrap(), most);

    // Ack ranges: 1 to 65,536 of them, checked before the bytes are looked
    // for; none empty, none past the last offset, and together covering at
    // most 65,536 offsets (a message never asks for unbounded work).
    let ack = |ranges: &[(u64, u32)]| {
        let mut b = vec![1u8];
        b.extend_from_slice(&(ranges.len() as u32).to_be_bytes());
        for (first, len) in ranges {
            b.extend_from_slice(&first.to_be_bytes());
            b.extend_from_slice(&len.to_be_bytes());
        }
        FromConsumer::decode(&b)
    };
    let malformed = |r| matches!(r, Err(ConsumerMessageError::Malformed(_)));
    assert!(malformed(ack(&[])));
    let too_many = [&[1u8][..], &(MAX_OFFSETS as u32 + 1).to_be_bytes()].concat();
    assert!(malformed(FromConsumer::decode(&too_many)));
    let huge = [&[1u8][..], &u32::MAX.to_be_bytes()].concat();
    assert!(malformed(FromConsumer::decode(&huge)));
    assert!(malformed(ack(&[(5, 1), (9, 0)])));
    assert!(malformed(ack(&[(u64::MAX, 1)])));
    assert!(malformed(ack(&[(u64::MAX - 10, 12)])));
    assert!(malformed(ack(&[(0, u32::MAX)])));
    let half = MAX_OFFSETS as u32 / 2;
    assert!(malformed(ack(&[(0, half), (0, half), (7, 1)])));
    assert_eq!(
        ack(&[(0, half), (0, half)]),
        Ok(FromConsumer::Ack {
            ranges: vec![0..half as u64, 0..half as u64]
        })
    );
    assert_eq!(
        ack(&[(u64::MAX - 10, 10)]),
        Ok(FromConsumer::Ack {
            ranges: vec![u64::MAX - 10..u64::MAX]
        })
    );
    assert_eq!(ack(&[(3, 1), (2, 1)]).map(|_| ()), Ok(()));
    let most = FromConsumer::Ack {
        ranges: (0..MAX_OFFSETS as u64).map(|o| 2 * o..2 * o + 1).collect(),
    };
    assert_eq!(FromConsumer::decode(&most.encode()).unwrap(), most);
    let one_long = FromConsumer::Ack {
        ranges: vec![1 << 40..(1 << 40) + MAX_OFFSETS as u64],
    };
    assert_eq!(FromConsumer::decode(&one_long.encode()).unwrap(), one_long);

    // A fetch may wait 30 s at most.
    let long_wait = FromConsumer::Fetch {
        id: 1,
        max: 1,
        wait_ms: MAX_FETCH_WAIT_MS + 1,
    };
    assert!(matches!(
        FromConsumer::decode(&long_wait.encode()),
        Err(ConsumerMessageError::Malformed(_))
    ));

    // The error's reason is UTF-8.
    assert!(matches!(
        to_consumer(&[4, 0, 2, 0xff, 0xfe]),
        Err(ConsumerMessageError::Malformed(_))
    ));

    // Subscribe's start position and mode are from their lists.
    let mut sub = Control::Subscribe {
        stream: "s".into(),
        group: "g".into(),
        start: StartAt::Latest,
        mode: ConsumeMode::Push,
        max_messages: 1,
        max_bytes: 1,
    }
    .encode();
    let start_at = 1 + 3 + 3;
    assert_eq!(sub[start_at], 2);
    sub[start_at] = 5;
    assert!(matches!(
        Control::decode(&sub),
        Err(ControlError::Malformed(_))
    ));
    sub[start_at] = 2;
    sub[start_at + 1] = 0;
    assert!(matches!(
        Control::decode(&sub),
        Err(ControlError::Malformed(_))
    ));
}

#[test]
fn long_frames_and_their_limit() {
    let mut out = Vec::new();
    frame::put_long(&mut out, b"abc");
    assert_eq!(out, [0, 0, 0, 3, b'a', b'b', b'c']);

    // A length over the limit is refused as soon as it is seen, before its
    // bytes arrive (nothing is allocated for it).
    let mut d = Deframer::new();
    d.set_long();
    d.extend(&((MAX_LONG_FRAME + 1) as u32).to_be_bytes());
    let e = d.next_frame().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    let mut d = Deframer::new();
    d.set_long();
    d.extend(&u32::MAX.to_be_bytes());
    assert!(d.next_frame().is_err());

    // The largest frame passes.
    let body = vec![7u8; MAX_LONG_FRAME];
    let mut out = Vec::new();
    frame::put_long(&mut out, &body);
    let mut d = Deframer::new();
    d.set_long();
    d.extend(&out);
    assert_eq!(d.next_frame().unwrap().unwrap().len(), MAX_LONG_FRAME);
    assert!(d.is_empty());
    assert!(d.next_frame().unwrap().is_none());
}

#[test]
fn switching_to_long_frames_keeps_what_is_buffered() {
    // Subscribed as a short frame, then long frames, all in one chunk: as
    // the daemon writes them and a reader may receive them.
    let subscribed = Control::Subscribed {
        member: 1,
        ack_deadline_ms: 2,
        max_deliveries: 3,
    };
    let mut bytes = Vec::new();
    frame::put(&mut bytes, &subscribed.encode());
    ToConsumer::Synced { id: 9 }.put_frame(&mut bytes);
    ToConsumer::FetchDone { id: 10 }.put_frame(&mut bytes);
    let mut d = Deframer::new();
    d.extend(&bytes);
    let first = d.next_frame().unwrap().unwrap();
    assert_eq!(Control::decode(&first).unwrap(), subscribed);
    d.set_long();
    assert!(d.is_long());
    let second = d.next_frame().unwrap().unwrap();
    assert_eq!(
        ToConsumer::decode(&second).unwrap(),
        ToConsumer::Synced { id: 9 }
    );
    let third = d.next_frame().unwrap().unwrap();
    assert_eq!(
        ToConsumer::decode(&third).unwrap(),
        ToConsumer::FetchDone { id: 10 }
    );
    assert!(d.next_frame().unwrap().is_none());
}

#[test]
fn frames_inside_a_chunk_are_slices_of_it_and_only_a_cut_one_is_copied() {
    let mut stream = Vec::new();
    for id in 0..3 {
        ToConsumer::Synced { id }.put_frame(&mut stream);
    }
    let frame = stream.len() / 3;
    let stream = Bytes::from(stream);
    let mut d = Deframer::new();
    d.set_long();
    // The first chunk ends halfway through the second frame.
    let cut = frame + frame / 2;
    d.push(stream.slice(..cut));
    let first = d.next_frame().unwrap().unwrap();
    assert_eq!(first.as_ptr(), stream[4..].as_ptr(), "sliced, not copied");
    assert!(d.next_frame().unwrap().is_none());
    assert!(!d.is_empty());
    d.push(stream.slice(cut..));
    let second = d.next_frame().unwrap().unwrap();
    assert_eq!(
        ToConsumer::decode(&second).unwrap(),
        ToConsumer::Synced { id: 1 }
    );
    let third = d.next_frame().unwrap().unwrap();
    assert_eq!(third.as_ptr(), stream[2 * frame + 4..].as_ptr());
    assert_eq!(
        ToConsumer::decode(&third).unwrap(),
        ToConsumer::Synced { id: 2 }
    );
    assert!(d.next_frame().unwrap().is_none());
    assert!(d.is_empty());

    // A length over the limit in a pushed chunk is refused as well.
    let mut d = Deframer::new();
    d.set_long();
    d.push(Bytes::copy_from_slice(
        &((MAX_LONG_FRAME + 1) as u32).to_be_bytes(),
    ));
    assert!(d.next_frame().is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn to_consumer_round_trips(m in arb_to_consumer()) {
        let body = m.encode();
        prop_assert_eq!(ToConsumer::decode(&Bytes::from(body.clone())).unwrap(), m.clone());
        // put_frame is the long-frame length and the same body.
        let mut framed = Vec::new();
        m.put_frame(&mut framed);
        prop_assert_eq!(&framed[..4], &(body.len() as u32).to_be_bytes());
        prop_assert_eq!(&framed[4..], &body[..]);
    }

    #[test]
    fn from_consumer_round_trips(m in arb_from_consumer()) {
        let body = m.encode();
        prop_assert_eq!(FromConsumer::decode(&body).unwrap(), m.clone());
        let mut framed = Vec::new();
        m.put_frame(&mut framed);
        prop_assert_eq!(&framed[..4], &(body.len() as u32).to_be_bytes());
        prop_assert_eq!(&framed[4..], &body[..]);
    }

    #[test]
    fn consumer_control_messages_round_trip(c in arb_consumer_control()) {
        prop_assert_eq!(Control::decode(&c.encode()).unwrap(), c);
    }

    #[test]
    fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = to_consumer(&bytes);
        let _ = FromConsumer::decode(&bytes);
        let _ = Control::decode(&bytes);
    }

    #[test]
    fn any_body_of_a_known_type_decodes_without_panic(
        ty in 1u8..10,
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut b = vec![ty];
        b.extend_from_slice(&body);
        // The encoding is canonical: what decodes encodes to the same bytes.
        if let Ok(m) = to_consumer(&b) {
            prop_assert_eq!(m.encode(), b.clone());
        }
        if let Ok(m) = FromConsumer::decode(&b) {
            prop_assert_eq!(m.encode(), b.clone());
        }
        let _ = Control::decode(&b);
    }

    /// Cut anywhere, a message is an error; except that a delivery cut in
    /// its payload is a delivery of a shorter payload (the payload is the
    /// rest of the frame: the frame's length is what protects it).
    #[test]
    fn every_strict_prefix_is_an_error(
        to in arb_to_consumer(),
        from in arb_from_consumer(),
        control in arb_consumer_control(),
    ) {
        let body = to.encode();
        for n in 0..body.len() {
            match (&to, to_consumer(&body[..n])) {
                (ToConsumer::Deliver(d), Ok(ToConsumer::Deliver(cut))) => {
                    prop_assert!(n >= DELIVER_HEADER_LEN);
                    prop_assert_eq!(&cut.payload[..], &d.payload[..n - DELIVER_HEADER_LEN]);
                }
                (_, r) => prop_assert!(r.is_err(), "prefix {} of {:?} decoded: {:?}", n, to, r),
            }
        }
        let body = from.encode();
        for n in 0..body.len() {
            prop_assert!(FromConsumer::decode(&body[..n]).is_err());
        }
        let body = control.encode();
        for n in 0..body.len() {
            prop_assert!(Control::decode(&body[..n]).is_err());
        }
    }

    #[test]
    fn trailing_bytes_are_an_error(
        to in arb_to_consumer(),
        from in arb_from_consumer(),
        control in arb_consumer_control(),
        extra in proptest::collection::vec(any::<u8>(), 1..20),
    ) {
        let mut body = to.encode();
        body.extend_from_slice(&extra);
        match (&to, to_consumer(&body)) {
            // Trailing bytes of a delivery are its payload.
            (ToConsumer::Deliver(d), Ok(ToConsumer::Deliver(longer))) => {
                prop_assert_eq!(&longer.payload[..d.payload.len()], &d.payload[..]);
                prop_assert_eq!(&longer.payload[d.payload.len()..], &extra[..]);
            }
            (_, r) => prop_assert_eq!(r, Err(ConsumerMessageError::TrailingBytes(extra.len()))),
        }
        let mut body = from.encode();
        body.extend_from_slice(&extra);
        prop_assert_eq!(FromConsumer::decode(&body), Err(ConsumerMessageError::TrailingBytes(extra.len())));
        let mut body = control.encode();
        body.extend_from_slice(&extra);
        prop_assert_eq!(Control::decode(&body), Err(ControlError::TrailingBytes(extra.len())));
    }

    /// However the stream cuts the bytes into chunks, the same frames come
    /// out, whole and in order.
    #[test]
    fn long_frames_survive_any_chunking(
        msgs in proptest::collection::vec(arb_to_consumer(), 1..12),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        copy_first in any::<bool>(),
    ) {
        let mut stream = Vec::new();
        for m in &msgs {
            m.put_frame(&mut stream);
        }
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        at.push(0);
        at.push(stream.len());
        at.sort_unstable();
        let stream = Bytes::from(stream);
        let mut d = Deframer::new();
        d.set_long();
        let mut got = Vec::new();
        for (i, w) in at.windows(2).enumerate() {
            // Chunks handed over as they come from quinn (sliced without a
            // copy) or copied, in turn.
            if (i + usize::from(copy_first)) % 2 == 0 {
                d.push(stream.slice(w[0]..w[1]));
            } else {
                d.extend(&stream[w[0]..w[1]]);
            }
            while let Some(f) = d.next_frame().unwrap() {
                got.push(ToConsumer::decode(&f).unwrap());
            }
        }
        prop_assert!(d.is_empty());
        prop_assert_eq!(got, msgs);
    }

    /// Any bytes at all fed as long frames: frames or an error, no panic,
    /// and never a frame over the limit.
    #[test]
    fn any_stream_bytes_deframe_without_panic(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..10),
        long in any::<bool>(),
    ) {
        let mut d = Deframer::new();
        if long {
            d.set_long();
        }
        for (i, c) in chunks.into_iter().enumerate() {
            if i % 2 == 0 {
                d.push(Bytes::from(c));
            } else {
                d.extend(&c);
            }
            while let Ok(Some(f)) = d.next_frame() {
                prop_assert!(f.len() <= MAX_LONG_FRAME);
            }
        }
    }
}
