//! The group's behaviour, case by case.

use super::*;

fn rec(i: u64, payload: &str) -> (u64, Record) {
    (
        i,
        Record {
            producer: i % 3,
            seq: i + 1,
            timestamp_us: 1_000 + i,
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            key: None,
        },
    )
}

fn group(config: GroupConfig, n: u64) -> Group {
    let mut g = Group::new(config, &GroupState::new(0));
    g.set_end(n);
    g.offer((0..n).map(|i| rec(i, "x")).collect());
    g
}

/// What the group task does each turn: deadlines, records read back,
/// then deliveries.
fn send(g: &mut Group, now: Instant) -> Vec<Delivery> {
    g.check();
    g.tick(now);
    for o in g.unloaded() {
        g.restore(o, Some(rec(o, "x").1));
    }
    let d = g.dispatch(now);
    g.check();
    d
}

#[test]
fn a_message_ready_again_goes_out_once_its_record_is_read_back() {
    let t0 = Instant::now();
    let mut g = group(GroupConfig::default(), 2);
    g.join(1, "a".into(), window(1));
    assert_eq!(g.dispatch(t0)[0].offset, 0);
    g.nack(Some(1), &[0], Duration::ZERO, t0);
    assert_eq!(g.unloaded(), [0], "the delivery took its record");
    assert!(g.dispatch(t0).is_empty(), "not before it is read back");
    g.restore(0, Some(rec(0, "again").1));
    let d = g.dispatch(t0);
    assert_eq!((d[0].offset, d[0].delivery), (0, 2));
    assert_eq!(&d[0].record.payload[..], b"again");
    // Gone from the spool meanwhile: done, and the group goes on.
    g.nack(Some(1), &[0], Duration::ZERO, t0);
    g.restore(0, None);
    assert_eq!(g.counters().lost_to_retention, 1);
    assert_eq!(g.floor(), 1);
    assert_eq!(g.dispatch(t0)[0].offset, 1);
}

fn window(messages: u32) -> Credit {
    Credit::Window {
        messages,
        bytes: u64::MAX,
    }
}

#[test]
fn credit_bounds_what_a_member_holds() {
    let now = Instant::now();
    let mut g = group(GroupConfig::default(), 10);
    g.join(1, "a".into(), window(3));
    let d = send(&mut g, now);
    assert_eq!(d.iter().map(|d| d.offset).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(send(&mut g, now).is_empty(), "no credit left");
    g.ack(&[1]);
    assert_eq!(send(&mut g, now)[0].offset, 3);
    assert_eq!(g.floor(), 0, "0 is not acked yet");
    g.ack(&[0]);
    assert_eq!(g.floor(), 2);
}

#[test]
fn a_byte_window_lets_one_large_message_through() {
    let now = Instant::now();
    let mut g = Group::new(GroupConfig::default(), &GroupState::new(0));
    g.set_end(2);
    g.offer(vec![rec(0, "0123456789"), rec(1, "0123456789")]);
    g.join(
        1,
        "a".into(),
        Credit::Window {
            messages: 10,
            bytes: 4,
        },
    );
    assert_eq!(send(&mut g, now).len(), 1);
    g.ack(&[0]);
    assert_eq!(send(&mut g, now).len(), 1);
}

#[test]
fn expired_messages_go_to_another_member_then_to_dead_letters() {
    let t0 = Instant::now();
    let config = GroupConfig {
        ack_deadline: Duration::from_secs(1),
        max_deliveries: 2,
        ..GroupConfig::default()
    };
    let mut g = group(config, 1);
    g.join(1, "a".into(), window(1));
    assert_eq!(send(&mut g, t0)[0].delivery, 1);
    g.join(2, "b".into(), window(1));
    let t1 = t0 + Duration::from_secs(2);
    let d = send(&mut g, t1);
    assert_eq!((d[0].member, d[0].delivery), (2, 2), "{d:?}");
    let t2 = t1 + Duration::from_secs(2);
    assert!(send(&mut g, t2).is_empty());
    let (events, dead) = g.take_events();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].history.len(), 2);
    assert_eq!(dead[0].history[0].member, "a");
    assert!(events.contains(&Event::Dead {
        offset: 0,
        dlq_seq: 1
    }));
    assert!(events.contains(&Event::Delivered {
        offset: 0,
        count: 2
    }));
    assert_eq!(g.floor(), 1, "the group goes on");
}

#[test]
fn a_dead_letter_keeps_the_latest_attempts() {
    let t0 = Instant::now();
    let config = GroupConfig {
        max_deliveries: 100,
        ..GroupConfig::default()
    };
    let mut g = group(config, 1);
    g.join(1, "a".into(), window(1));
    for _ in 0..100 {
        assert_eq!(send(&mut g, t0).len(), 1);
        g.nack(Some(1), &[0], Duration::ZERO, t0);
    }
    let (_, dead) = g.take_events();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].deliveries, 100);
    assert_eq!(dead[0].history.len(), MAX_HISTORY);
}

#[test]
fn nack_with_delay_waits() {
    let t0 = Instant::now();
    let mut g = group(GroupConfig::default(), 1);
    g.join(1, "a".into(), window(5));
    send(&mut g, t0);
    g.nack(Some(1), &[0], Duration::from_secs(5), t0);
    assert!(send(&mut g, t0 + Duration::from_secs(4)).is_empty());
    assert_eq!(g.next_timer(), Some(t0 + Duration::from_secs(5)));
    assert_eq!(send(&mut g, t0 + Duration::from_secs(5)).len(), 1);
}

#[test]
fn a_nack_delay_is_capped_like_an_extension() {
    let t0 = Instant::now();
    let config = GroupConfig {
        max_ack_extension: Duration::from_secs(60),
        ..GroupConfig::default()
    };
    let mut g = group(config, 1);
    g.join(1, "a".into(), window(5));
    send(&mut g, t0);
    // 2^64 - 1 ms: ~584 million years, without the cap.
    g.nack(Some(1), &[0], Duration::from_millis(u64::MAX), t0);
    assert!(send(&mut g, t0 + Duration::from_secs(59)).is_empty());
    let again = send(&mut g, t0 + Duration::from_secs(60));
    assert_eq!((again.len(), again[0].delivery), (1, 2));
}

#[test]
fn a_leaving_member_hands_back_its_messages() {
    let t0 = Instant::now();
    let mut g = group(GroupConfig::default(), 4);
    g.join(1, "a".into(), window(2));
    g.join(2, "b".into(), window(2));
    let d = send(&mut g, t0);
    assert_eq!(d.len(), 4);
    let of_a: Vec<u64> = d
        .iter()
        .filter(|d| d.member == 1)
        .map(|d| d.offset)
        .collect();
    g.leave(1, t0);
    g.ack(
        &d.iter()
            .filter(|d| d.member == 2)
            .map(|d| d.offset)
            .collect::<Vec<_>>(),
    );
    let again = send(&mut g, t0);
    assert_eq!(again.iter().map(|d| d.offset).collect::<Vec<_>>(), of_a);
    assert!(again.iter().all(|d| d.member == 2 && d.delivery == 2));
}

#[test]
fn conflation_keeps_the_newest_per_key_of_a_backlog() {
    let now = Instant::now();
    let config = GroupConfig {
        conflate: Some(KeyRule::Delimiter(b'=')),
        ..GroupConfig::default()
    };
    let mut g = Group::new(config, &GroupState::new(0));
    g.set_end(5);
    g.offer(vec![
        rec(0, "a=1"),
        rec(1, "b=1"),
        rec(2, "a=2"),
        rec(3, "a=3"),
        rec(4, "b=2"),
    ]);
    g.join(1, "a".into(), window(10));
    let got: Vec<u64> = send(&mut g, now).iter().map(|d| d.offset).collect();
    assert_eq!(got, [3, 4]);
    assert_eq!(g.counters().conflated, 3);
    g.ack(&got);
    assert_eq!(g.floor(), 5);
}

#[test]
fn acks_after_a_restart_count_before_the_message_is_read() {
    let mut g = Group::new(GroupConfig::default(), &GroupState::new(0));
    g.set_end(3);
    assert_eq!(g.ack(&[1, 7]), 1, "7 is past the end");
    g.offer((0..3).map(|i| rec(i, "x")).collect());
    g.join(1, "a".into(), window(10));
    let got: Vec<u64> = g
        .dispatch(Instant::now())
        .iter()
        .map(|d| d.offset)
        .collect();
    assert_eq!(got, [0, 2]);
}

#[test]
fn retention_gaps_are_done() {
    let mut g = Group::new(GroupConfig::default(), &GroupState::new(0));
    g.set_end(10);
    g.offer(vec![rec(5, "x")]);
    assert_eq!(g.floor(), 5);
    assert_eq!(g.counters().lost_to_retention, 5);
}

#[test]
fn a_message_held_long_does_not_pin_the_deadlines_of_acked_ones() {
    let t0 = Instant::now();
    let n = 20_000;
    let config = GroupConfig {
        read_ahead: n as usize,
        ..GroupConfig::default()
    };
    let mut g = group(config, n);
    g.join(1, "a".into(), window(n as u32));
    assert_eq!(send(&mut g, t0).len(), n as usize);
    // Everything acked but the oldest, in batches as a client sends.
    let rest: Vec<u64> = (1..n).collect();
    for batch in rest.chunks(512) {
        g.ack(batch);
    }
    assert_eq!(g.out(), 1);
    assert!(
        g.deadlines.timeline_len() <= 1024 + 2,
        "stale deadlines kept: {}",
        g.deadlines.timeline_len()
    );
    assert_eq!(g.next_timer(), Some(t0 + g.config().ack_deadline));
    g.ack(&[0]);
    assert_eq!(g.floor(), n);
    assert!(g.deadlines.timeline_len() == 0 && g.next_timer().is_none());
    assert_eq!(g.backlog(), 0);
}

#[test]
fn pull_credit_is_per_fetch() {
    let now = Instant::now();
    let mut g = group(GroupConfig::default(), 10);
    g.join(1, "p".into(), Credit::Fetch { left: 0 });
    assert!(send(&mut g, now).is_empty());
    g.set_credit(1, Credit::Fetch { left: 4 });
    assert_eq!(send(&mut g, now).len(), 4);
    assert!(send(&mut g, now).is_empty());
    g.set_credit(1, Credit::Fetch { left: 2 });
    assert_eq!(send(&mut g, now).len(), 2, "held messages do not count");
}

#[test]
fn a_window_lowered_below_what_is_held_takes_nothing_until_it_fits() {
    let now = Instant::now();
    let mut g = group(GroupConfig::default(), 10);
    g.join(1, "a".into(), window(3));
    assert_eq!(send(&mut g, now).len(), 3);
    g.set_credit(1, window(1));
    g.check();
    g.ack(&[0]);
    assert!(send(&mut g, now).is_empty(), "holds 2, may hold 1");
    g.ack(&[1, 2]);
    assert_eq!(send(&mut g, now).len(), 1);
}

#[test]
fn settle_says_which_acks_nacks_and_extensions_took_effect() {
    let now = Instant::now();
    let mut g = group(GroupConfig::default(), 6);
    g.join(1, "a".into(), window(2));
    g.join(2, "b".into(), window(2));
    let d = send(&mut g, now);
    let of = |m: MemberId| -> Vec<u64> {
        d.iter()
            .filter(|d| d.member == m)
            .map(|d| d.offset)
            .collect()
    };
    let (mine, theirs) = (of(1), of(2));
    assert_eq!((mine.len(), theirs.len()), (2, 2), "{d:?}");
    // Acks: one of mine, one of theirs (any member may ack), one never
    // delivered past the end, one twice. A nack and an extension of
    // theirs: not out with member 1, ignored; of mine: taken.
    let s = Settle {
        acks: vec![mine[0], theirs[0], 99, mine[0]],
        nacks: vec![(vec![theirs[1]], Duration::ZERO)],
        extends: vec![(vec![mine[1], theirs[1]], Duration::from_secs(5))],
    };
    let (acked, ignored) = g.settle(1, &s, now);
    let mut want = vec![mine[0], theirs[0]];
    want.sort_unstable();
    assert_eq!(acked, want);
    let mut want = vec![99, theirs[1]];
    want.sort_unstable();
    assert_eq!(ignored, want);
    assert_eq!(g.counters().acked, 2);
    assert_eq!(g.counters().nacked, 0);
    // Acked again: ignored now.
    let (acked, ignored) = g.settle(
        1,
        &Settle {
            acks: vec![mine[0]],
            ..Default::default()
        },
        now,
    );
    assert!(acked.is_empty());
    assert_eq!(ignored, [mine[0]]);
}

#[test]
fn dropping_the_oldest_spares_what_is_out_and_counts_the_rest() {
    let now = Instant::now();
    // 10 read, 10 more past them not read yet.
    let mut g = group(GroupConfig::default(), 10);
    g.set_end(20);
    g.join(1, "a".into(), window(2));
    let out: Vec<u64> = send(&mut g, now).iter().map(|d| d.offset).collect();
    assert_eq!(out, [0, 1]);
    g.ack(&[4]);
    assert_eq!(g.backlog(), 19);
    assert!(
        g.drop_oldest(19).is_empty(),
        "at the limit: nothing to drop"
    );
    // 11 to drop: 2, 3, 5..=9 read, 10..=13 not read yet (0 and 1 are
    // out, 4 is acked).
    assert_eq!(g.drop_oldest(8), [2..4, 5..14]);
    g.check();
    assert_eq!(g.backlog(), 8);
    assert_eq!(g.counters().dropped, 11);
    assert_eq!(g.counters().acked, 1, "a drop is no ack");
    // What is out can still be acked; the next to go out is 14.
    assert_eq!(g.next_read(), 14, "what was dropped unread is not read");
    assert_eq!(g.ack(&[0, 1]), 2);
    assert_eq!(g.floor(), 14);
    g.offer((14..20).map(|i| rec(i, "x")).collect());
    let next: Vec<u64> = send(&mut g, now).iter().map(|d| d.offset).collect();
    assert_eq!(next, [14, 15]);
    assert_eq!(g.drop_oldest(3), vec![Range { start: 16, end: 19 }]);
    assert_eq!(g.counters().dropped, 14);
    assert_eq!(g.ack(&[14, 15]), 2);
    assert_eq!(g.floor(), 19);
    assert_eq!(g.backlog(), 1);
    g.check();
}
