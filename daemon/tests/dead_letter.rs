//! The dead-letter envelope (consume::dead_letter): round trips, damage,
//! and the names and producer ids that must never change.

use bytes::Bytes;
use proptest::prelude::*;
use sluice_daemon::consume::dead_letter::{
    decode, decode_bytes, dlq_producer_id, dlq_stream_name, encode, replay_producer_id, Attempt,
    AttemptOutcome, DeadLetter, DeadLetterError,
};
use sluice_daemon::spool::SpoolError;

fn outcome() -> impl Strategy<Value = AttemptOutcome> {
    prop_oneof![
        Just(AttemptOutcome::DeadlineExpired),
        Just(AttemptOutcome::Nacked),
        Just(AttemptOutcome::MemberLeft),
    ]
}

fn attempt() -> impl Strategy<Value = Attempt> {
    (any::<u64>(), ".{0,12}", outcome()).prop_map(|(at_us, member, outcome)| Attempt {
        at_us,
        member,
        outcome,
    })
}

fn dead_letter() -> impl Strategy<Value = DeadLetter> {
    (
        ("[a-z0-9._-]{1,20}", ".{0,10}", ".{0,40}"),
        any::<[u64; 5]>(),
        any::<u32>(),
        proptest::collection::vec(attempt(), 0..6),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(
            |(
                (stream, group, reason),
                [offset, producer, seq, ts, dead],
                deliveries,
                history,
                payload,
            )| {
                DeadLetter {
                    stream,
                    group,
                    offset,
                    producer,
                    seq,
                    timestamp_us: ts,
                    dead_at_us: dead,
                    reason,
                    deliveries,
                    history,
                    payload: Bytes::from(payload),
                }
            },
        )
}

fn sample() -> DeadLetter {
    DeadLetter {
        stream: "orders".into(),
        group: "billing".into(),
        offset: 41,
        producer: 7,
        seq: 9,
        timestamp_us: 1_700_000_000_000_000,
        dead_at_us: 1_700_000_060_000_000,
        reason: "delivered 5 times without an ack".into(),
        deliveries: 5,
        history: vec![
            Attempt {
                at_us: 1_700_000_030_000_000,
                member: "worker-1".into(),
                outcome: AttemptOutcome::DeadlineExpired,
            },
            Attempt {
                at_us: 1_700_000_060_000_000,
                member: "worker-2".into(),
                outcome: AttemptOutcome::Nacked,
            },
        ],
        payload: Bytes::from_static(b"{\"order\": 41}"),
    }
}

proptest! {
    #[test]
    fn round_trip(d in dead_letter()) {
        let b = encode(&d);
        prop_assert_eq!(b.len(), d.encoded_len());
        prop_assert_eq!(&decode(&b).unwrap(), &d);
        prop_assert_eq!(&decode_bytes(&Bytes::from(b.clone())).unwrap(), &d);
        // Every strict prefix fails, and so does anything appended.
        for n in 0..b.len() {
            prop_assert!(decode(&b[..n]).is_err(), "prefix of {} decoded", n);
        }
        let mut longer = b.clone();
        longer.push(0);
        prop_assert_eq!(decode(&longer), Err(DeadLetterError::TrailingBytes(1)));
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode(&b);
        // Also behind a valid magic and version, where the fields are read.
        let _ = decode(&[&b"SLDL\x01"[..], &b].concat());
    }

    #[test]
    fn damaged_envelopes_never_panic(d in dead_letter(), at in any::<prop::sample::Index>(), x in 1u8..) {
        let mut b = encode(&d);
        let i = at.index(b.len());
        b[i] ^= x;
        let _ = decode(&b);
    }
}

#[test]
fn sample_round_trips_and_decode_bytes_shares_memory() {
    let d = sample();
    let b = Bytes::from(encode(&d));
    let back = decode_bytes(&b).unwrap();
    assert_eq!(back, d);
    let p = back.payload.as_ptr() as usize;
    let range = b.as_ptr() as usize..b.as_ptr() as usize + b.len();
    assert!(range.contains(&p), "the payload is a slice of the input");
}

#[test]
fn huge_counts_do_not_allocate() {
    // A history count of 4 billion in a small envelope fails cleanly
    // instead of reserving memory for it.
    let mut d = sample();
    d.history.clear();
    d.payload = Bytes::new();
    let mut b = encode(&d);
    let at = b.len() - 4 - 4;
    b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(decode(&b), Err(DeadLetterError::Truncated("history")));
    // Likewise a string length past the end.
    let mut b = encode(&d);
    b[49..53].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(decode(&b), Err(DeadLetterError::Truncated("stream")));
}

#[test]
fn specific_errors() {
    let b = encode(&sample());
    assert_eq!(decode(b"SLD"), Err(DeadLetterError::BadMagic));
    assert_eq!(decode(b"XLDL\x01"), Err(DeadLetterError::BadMagic));
    let mut v2 = b.clone();
    v2[4] = 2;
    assert_eq!(decode(&v2), Err(DeadLetterError::UnsupportedVersion(2)));
    let mut bad_utf8 = b.clone();
    bad_utf8[53] = 0xFF; // first byte of the stream name
    assert_eq!(decode(&bad_utf8), Err(DeadLetterError::BadUtf8("stream")));
    // The first attempt's outcome byte.
    let d = sample();
    let at = 49 + 12 + d.stream.len() + d.group.len() + d.reason.len() + 4 + 8;
    let mut bad = b.clone();
    assert_eq!(bad[at], 1);
    bad[at] = 9;
    assert_eq!(decode(&bad), Err(DeadLetterError::BadOutcome(9)));
}

#[test]
fn outcomes_print() {
    assert_eq!(AttemptOutcome::DeadlineExpired.as_str(), "deadline-expired");
    assert_eq!(AttemptOutcome::Nacked.to_string(), "nacked");
    assert_eq!(AttemptOutcome::MemberLeft.as_str(), "member-left");
}

#[test]
fn dlq_names() {
    assert_eq!(dlq_stream_name("orders").unwrap(), "orders.dlq");
    assert_eq!(dlq_stream_name("a.b-c_d").unwrap(), "a.b-c_d.dlq");
    let longest = "x".repeat(251);
    assert_eq!(dlq_stream_name(&longest).unwrap().len(), 255);
    for bad in [
        "x".repeat(252),
        String::new(),
        ".hidden".into(),
        "a/b".into(),
    ] {
        assert!(
            matches!(dlq_stream_name(&bad), Err(SpoolError::BadStreamName(_))),
            "{bad:?}"
        );
    }
}

/// These values are stored in spools (the dead-letter stream's idempotence
/// table): they must never change. (Computed independently:
/// python3 -c "import hashlib; print(hashlib.sha256(b'sluice-dlq\\0orders\\0billing').hexdigest()[:16])")
#[test]
fn producer_ids_are_pinned() {
    assert_eq!(dlq_producer_id("orders", "billing"), 0x75a8_dc69_4875_54d9);
    assert_eq!(replay_producer_id("orders"), 0x31dc_5227_7533_33de);
    // Different inputs, different ids; the separator keeps ("ab", "c") and
    // ("a", "bc") apart.
    assert_ne!(dlq_producer_id("ab", "c"), dlq_producer_id("a", "bc"));
    assert_ne!(
        dlq_producer_id("orders", "billing"),
        replay_producer_id("orders")
    );
    assert_eq!(dlq_producer_id("s", "g"), dlq_producer_id("s", "g"));
}
