//! gRPC's StreamingPull against a real `sluiced` (issue 20): a puller that
//! acks everything gets each message once; a nack brings it again after
//! its delay (attempt 2); the flow control is never exceeded; a puller
//! that drops its stream hands what it held to the next one; rights give
//! UNAUTHENTICATED and PERMISSION_DENIED, a bad first request
//! INVALID_ARGUMENT, a missing stream NOT_FOUND; a half-closed pull still
//! receives; deadlines expire and deadline changes extend them; a stop ends
//! pulls with UNAVAILABLE at once; 200 idle pulls on one connection leave
//! the daemon serving.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_daemon::grpc::proto::admin_client::AdminClient;
use sluice_daemon::grpc::proto::publisher_client::PublisherClient;
use sluice_daemon::grpc::proto::subscriber_client::SubscriberClient;
use sluice_daemon::grpc::proto::{
    AckConfirmation, DeadlineChange, DescribeGroupRequest, GroupInfo, Nack, PublishRequest,
    ReceivedMessage, StreamingPullRequest, StreamingPullResponse, Subscribed,
};
use sluice_tests::daemon::Daemon;
use sluice_tests::grpc::{channel, spec, with_token, Tokens};
use sluice_tests::sluiced_bin;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

/// A daemon with the shared principals; `extra` goes at the end of its
/// configuration.
fn start(dir: &Path, extra: &str) -> (Daemon, Tokens) {
    let (spec, t) = spec(sluiced_bin!(), dir, extra);
    (spec.start(), t)
}

/// Publishes `n` payloads `m0`, `m1`, ... to `stream`.
async fn publish(ch: &Channel, token: &str, stream: &str, n: usize) {
    PublisherClient::new(ch.clone())
        .publish(with_token(
            PublishRequest {
                stream: stream.into(),
                payloads: (0..n).map(|i| Bytes::from(format!("m{i}"))).collect(),
                identity: None,
            },
            token,
        ))
        .await
        .expect("publish");
}

fn open(stream: &str, group: &str, messages: u32, bytes: u64) -> StreamingPullRequest {
    StreamingPullRequest {
        stream: stream.into(),
        group: group.into(),
        max_outstanding_messages: messages,
        max_outstanding_bytes: bytes,
        ..Default::default()
    }
}

fn acks(offsets: impl IntoIterator<Item = u64>) -> StreamingPullRequest {
    StreamingPullRequest {
        ack_offsets: offsets.into_iter().collect(),
        ..Default::default()
    }
}

/// One StreamingPull call: requests go in through `tx`, responses come
/// from `rx`.
struct Pull {
    tx: mpsc::Sender<StreamingPullRequest>,
    rx: Streaming<StreamingPullResponse>,
    subscribed: Subscribed,
    /// Confirmations received so far, in order.
    confirmations: Vec<AckConfirmation>,
}

impl Pull {
    async fn open(ch: &Channel, token: &str, first: StreamingPullRequest) -> Result<Pull, Status> {
        let (tx, reqs) = mpsc::channel(16);
        // The first request must be there before the call's answer: the
        // server reads it before it answers.
        tx.send(first).await.unwrap();
        let mut rx = SubscriberClient::new(ch.clone())
            .streaming_pull(with_token(ReceiverStream::new(reqs), token))
            .await?
            .into_inner();
        let first = rx.message().await?.expect("a first response");
        let subscribed = first
            .subscribed
            .expect("the first response says subscribed");
        assert!(first.messages.is_empty());
        Ok(Pull {
            tx,
            rx,
            subscribed,
            confirmations: Vec::new(),
        })
    }

    /// The next deliveries, or `None` if none come within `wait`
    /// (confirmations meanwhile are kept in `confirmations`).
    async fn next(&mut self, wait: Duration) -> Option<Vec<ReceivedMessage>> {
        let until = Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let r = match tokio::time::timeout(left, self.rx.message()).await {
                Err(_) => return None,
                Ok(r) => r.expect("the pull goes on").expect("not ended"),
            };
            self.confirmations.extend(r.confirmation);
            if !r.messages.is_empty() {
                return Some(r.messages);
            }
        }
    }

    /// Waits (10 s at most) until the confirmations received name every
    /// offset of `acked` as acked and of `ignored` as ignored; what they
    /// said, in all. Deliveries meanwhile go to `seen`.
    async fn confirmed(
        &mut self,
        acked: &[u64],
        ignored: &[u64],
        seen: &mut Vec<u64>,
    ) -> (Vec<u64>, Vec<u64>) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let all = |f: fn(&AckConfirmation) -> &Vec<u64>| -> Vec<u64> {
                let mut v: Vec<u64> = self
                    .confirmations
                    .iter()
                    .flat_map(|c| f(c).clone())
                    .collect();
                v.sort_unstable();
                v
            };
            let (a, i) = (all(|c| &c.acked_offsets), all(|c| &c.ignored_offsets));
            if acked.iter().all(|o| a.contains(o)) && ignored.iter().all(|o| i.contains(o)) {
                return (a, i);
            }
            let left = until.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "confirmed so far: acked {a:?}, ignored {i:?}"
            );
            if let Some(m) = self.next(left).await {
                seen.extend(m.iter().map(|m| m.offset));
            }
        }
    }

    /// Exactly `n` deliveries (within 10 s).
    async fn take(&mut self, n: usize) -> Vec<ReceivedMessage> {
        let mut got = Vec::new();
        let until = Instant::now() + Duration::from_secs(10);
        while got.len() < n {
            let left = until.saturating_duration_since(Instant::now());
            let m = self
                .next(left)
                .await
                .unwrap_or_else(|| panic!("{} of {n} deliveries in 10 s", got.len()));
            got.extend(m);
        }
        assert_eq!(got.len(), n, "more deliveries than expected");
        got
    }

    async fn send(&self, r: StreamingPullRequest) {
        self.tx.send(r).await.expect("the request stream is open");
    }
}

async fn describe(ch: &Channel, token: &str, stream: &str, group: &str) -> GroupInfo {
    AdminClient::new(ch.clone())
        .describe_group(with_token(
            DescribeGroupRequest {
                stream: stream.into(),
                group: group.into(),
            },
            token,
        ))
        .await
        .expect("DescribeGroup")
        .into_inner()
        .group
        .unwrap()
}

/// Waits (10 s at most) until `f` holds of the group.
async fn until_group(ch: &Channel, t: &str, s: &str, g: &str, f: impl Fn(&GroupInfo) -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let info = describe(ch, t, s, g).await;
        if f(&info) {
            return;
        }
        assert!(Instant::now() < until, "group never got there: {info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_acks_once_nacks_redeliver_after_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let (d, t) = start(dir.path(), "");
    let ch = channel(&d).await;
    publish(&ch, &t.writer, "orders", 20).await;

    // Acking everything: each message once, attempt 1, with what it was
    // stored with.
    let mut p = Pull::open(&ch, &t.reader, open("orders", "all", 100, 1 << 20))
        .await
        .unwrap();
    assert_eq!(p.subscribed.max_outstanding_messages, 100);
    assert!(p.subscribed.ack_deadline.is_some());
    let got = p.take(20).await;
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.offset, i as u64);
        assert_eq!(m.delivery_attempt, 1);
        assert_eq!(m.payload, Bytes::from(format!("m{i}")));
        assert!(m.publish_time.is_some() && m.ack_deadline.is_some());
        assert_eq!(m.seq, i as u64 + 1, "{m:?}");
    }
    p.send(acks(got.iter().map(|m| m.offset))).await;
    until_group(&ch, &t.reader, "orders", "all", |g| g.acked == 20).await;
    assert!(p.next(Duration::from_millis(500)).await.is_none());
    // Acks for offsets never delivered (and acked twice) are ignored: the
    // group counts nothing and the pull goes on.
    p.send(acks([3, 500, u64::MAX])).await;
    publish(&ch, &t.writer, "orders", 1).await;
    let more = p.take(1).await;
    assert_eq!(more[0].offset, 20);
    p.send(acks([20])).await;
    until_group(&ch, &t.reader, "orders", "all", |g| {
        g.acked == 21 && g.backlog_messages == 0
    })
    .await;

    // A client that half-closes after its first request still receives.
    publish(&ch, &t.writer, "orders", 1).await;
    let mut rx = SubscriberClient::new(ch.clone())
        .streaming_pull(with_token(
            tokio_stream::iter([open("orders", "reads-only", 10, 1 << 20)]),
            &t.reader,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut offsets = Vec::new();
    while offsets.len() < 10 {
        let r = tokio::time::timeout(Duration::from_secs(10), rx.message())
            .await
            .expect("deliveries after a half-close")
            .unwrap()
            .unwrap();
        offsets.extend(r.messages.iter().map(|m| m.offset));
    }
    // Ten out at most, none acked: the first ten, nothing more.
    assert_eq!(offsets, (0..10).collect::<Vec<_>>());
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.message())
            .await
            .is_err(),
        "more than the flow control"
    );
    drop(rx);
    let _ = p.take(1).await;

    // A nack with a delay: delivered again after it, attempt 2.
    let mut p = Pull::open(&ch, &t.reader, open("orders", "nacking", 100, 1 << 20))
        .await
        .unwrap();
    let got = p.take(22).await;
    let nacked_at = Instant::now();
    p.send(StreamingPullRequest {
        ack_offsets: got.iter().map(|m| m.offset).filter(|o| *o != 5).collect(),
        nacks: vec![Nack {
            offsets: vec![5],
            delay: Some(Duration::from_millis(700).try_into().unwrap()),
        }],
        ..Default::default()
    })
    .await;
    let again = p.take(1).await;
    assert!(
        nacked_at.elapsed() >= Duration::from_millis(600),
        "{:?}",
        nacked_at.elapsed()
    );
    assert_eq!((again[0].offset, again[0].delivery_attempt), (5, 2));
    p.send(acks([5])).await;
    until_group(&ch, &t.reader, "orders", "nacking", |g| {
        g.backlog_messages == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_control_is_never_exceeded_and_a_dropped_pull_hands_back() {
    let dir = tempfile::tempdir().unwrap();
    let (d, t) = start(dir.path(), "");
    let ch = channel(&d).await;
    publish(&ch, &t.writer, "jobs", 60).await;

    // Five at most: acked slowly, one at a time, the client's count of
    // unacked deliveries never passes five.
    let mut p = Pull::open(&ch, &t.reader, open("jobs", "slow", 5, 1 << 20))
        .await
        .unwrap();
    assert_eq!(p.subscribed.max_outstanding_messages, 5);
    let mut out = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut most = 0;
    while seen.len() < 60 {
        if let Some(got) = p.next(Duration::from_millis(20)).await {
            for m in got {
                assert!(seen.insert(m.offset), "offset {} twice", m.offset);
                out.insert(m.offset);
            }
        }
        most = most.max(out.len());
        assert!(
            out.len() <= 5,
            "{} unacked deliveries out, max 5",
            out.len()
        );
        if let Some(o) = out.pop_first() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            p.send(acks([o])).await;
        }
    }
    assert_eq!(most, 5, "the window was used");
    p.send(acks(out.iter().copied())).await;

    // A new flow control: one at a time.
    publish(&ch, &t.writer, "jobs", 10).await;
    p.send(StreamingPullRequest {
        max_outstanding_messages: 1,
        ..Default::default()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // What the old window let out before the change came may be out; ack
    // it, then one at a time.
    let mut left = 10;
    while left > 0 {
        let got = p.next(Duration::from_secs(5)).await.expect("deliveries");
        left -= got.len();
        p.send(acks(got.iter().map(|m| m.offset))).await;
        if left < 5 {
            assert!(got.len() <= 1, "{got:?}");
        }
    }

    // Bytes: payloads of 2 bytes ("m0".."m9"), a window of 5 bytes: two
    // out at most.
    publish(&ch, &t.writer, "small", 10).await;
    let mut p = Pull::open(&ch, &t.reader, open("small", "bytes", 100, 5))
        .await
        .unwrap();
    let mut n = 0;
    while n < 10 {
        let got = p.next(Duration::from_secs(5)).await.expect("deliveries");
        assert!(got.len() <= 2, "{got:?}");
        // Nothing more until these are acked.
        assert!(p.next(Duration::from_millis(100)).await.is_none());
        n += got.len();
        p.send(acks(got.iter().map(|m| m.offset))).await;
    }

    // A pull that drops its stream: what it held comes to the next
    // puller, attempt 2.
    publish(&ch, &t.writer, "handover", 10).await;
    let mut first = Pull::open(&ch, &t.reader, open("handover", "g", 100, 1 << 20))
        .await
        .unwrap();
    let held = first.take(10).await;
    assert!(held.iter().all(|m| m.delivery_attempt == 1));
    drop(first);
    let mut second = Pull::open(&ch, &t.reader, open("handover", "g", 100, 1 << 20))
        .await
        .unwrap();
    let again = second.take(10).await;
    let offsets: Vec<u64> = again.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, (0..10).collect::<Vec<_>>());
    assert!(again.iter().all(|m| m.delivery_attempt == 2), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rights_and_bad_first_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (d, t) = start(dir.path(), "");
    let ch = channel(&d).await;
    publish(&ch, &t.writer, "orders", 1).await;
    let code = |r: Result<Pull, Status>| r.err().map(|e| e.code());

    let ok = open("orders", "g", 10, 1 << 20);
    assert_eq!(
        code(Pull::open(&ch, "", ok.clone()).await),
        Some(Code::Unauthenticated)
    );
    assert_eq!(
        code(Pull::open(&ch, "slc_nobody", ok.clone()).await),
        Some(Code::Unauthenticated)
    );
    assert_eq!(
        code(Pull::open(&ch, &t.producer, ok.clone()).await),
        Some(Code::PermissionDenied)
    );
    // Denied before anything says whether the stream exists.
    assert_eq!(
        code(Pull::open(&ch, &t.producer, open("nowhere", "g", 10, 1 << 20)).await),
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        code(Pull::open(&ch, &t.reader, open("nowhere", "g", 10, 1 << 20)).await),
        Some(Code::NotFound)
    );
    for bad in [
        open("orders", "g", 0, 1 << 20),
        open("orders", "g", 10, 0),
        open("orders", "", 10, 1 << 20),
        open("", "g", 10, 1 << 20),
        open("orders", "bad/group name", 10, 1 << 20),
    ] {
        assert_eq!(
            code(Pull::open(&ch, &t.reader, bad.clone()).await),
            Some(Code::InvalidArgument),
            "{bad:?}"
        );
    }
    // No first request at all: the request stream ends at once.
    let e = SubscriberClient::new(ch.clone())
        .streaming_pull(with_token(
            tokio_stream::iter(Vec::<StreamingPullRequest>::new()),
            &t.reader,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // A reader may pull (its name, whatever it holds, only goes to logs).
    let mut named = ok.clone();
    named.consumer_name = format!("billing\n\u{1b}[31m{}", "x".repeat(1000));
    let mut p = Pull::open(&ch, &t.reader, named).await.unwrap();
    assert_eq!(p.take(1).await[0].payload, Bytes::from("m0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_idle_pulls_on_one_connection_and_the_daemon_serves() {
    let dir = tempfile::tempdir().unwrap();
    let (d, t) = start(
        dir.path(),
        "[grpc]\nmax_streams_per_connection = 256\n\n[consumers]\nmax_groups = 256\n",
    );
    let ch = channel(&d).await;
    publish(&ch, &t.writer, "quiet", 1).await;
    let mut pulls = Vec::new();
    for i in 0..200 {
        // Each its own group, all starting after the one message: idle.
        let mut first = open("quiet", &format!("idle{i}"), 10, 1 << 20);
        first.start = Some(sluice_daemon::grpc::proto::StartAt {
            position: Some(sluice_daemon::grpc::proto::start_at::Position::Latest(
                Default::default(),
            )),
        });
        pulls.push(Pull::open(&ch, &t.reader, first).await.expect("pull"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The daemon still serves: on the same connection a publish and a new
    // pull; every idle pull is still open and gets the new message.
    publish(&ch, &t.writer, "quiet", 1).await;
    let mut p = Pull::open(&ch, &t.reader, open("quiet", "busy", 10, 1 << 20))
        .await
        .unwrap();
    // 200 windows of 1 MiB on one connection are more than its share of
    // the daemon's byte budget: the later pulls were granted less, and
    // Subscribed says so. One message at a time still goes.
    assert!(
        p.subscribed.max_outstanding_bytes < 1 << 20,
        "{:?}",
        p.subscribed
    );
    for offset in 0..2 {
        let got = p.take(1).await;
        assert_eq!(got[0].offset, offset);
        p.send(acks([offset])).await;
    }
    for p in &mut pulls {
        let got = p.take(1).await;
        assert_eq!(got[0].offset, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_ends_pulls_with_unavailable_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (d, t) = start(dir.path(), "");
    let ch = channel(&d).await;
    publish(&ch, &t.writer, "orders", 1).await;
    let mut p = Pull::open(&ch, &t.reader, open("orders", "g", 10, 1 << 20))
        .await
        .unwrap();
    p.take(1).await;
    let stopping = Instant::now();
    let stop = tokio::task::spawn_blocking(move || d.terminate(Duration::from_secs(20)));
    let end = tokio::time::timeout(Duration::from_secs(4), p.rx.message())
        .await
        .expect("the pull ends within the stop's grace");
    assert_eq!(end.unwrap_err().code(), Code::Unavailable);
    let status = stop.await.unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_expire_and_deadline_changes_extend_them() {
    let dir = tempfile::tempdir().unwrap();
    let (d, t) = start(dir.path(), "[consumers]\nack_deadline = \"1s\"\n");
    let ch = channel(&d).await;
    publish(&ch, &t.writer, "orders", 2).await;
    let mut p = Pull::open(&ch, &t.reader, open("orders", "g", 10, 1 << 20))
        .await
        .unwrap();
    assert_eq!(
        p.subscribed.ack_deadline,
        Some(Duration::from_secs(1).try_into().unwrap())
    );
    let got = p.take(2).await;
    // Offset 1 gets 4 s more; offset 0 expires after its 1 s and comes
    // again, attempt 2; offset 1 does not within 2 s.
    p.send(StreamingPullRequest {
        deadline_changes: vec![DeadlineChange {
            offsets: vec![1],
            extension: Some(Duration::from_secs(4).try_into().unwrap()),
        }],
        ..Default::default()
    })
    .await;
    let sent = Instant::now();
    let again = p.take(1).await;
    assert_eq!((again[0].offset, again[0].delivery_attempt), (0, 2));
    assert!(got.iter().all(|m| m.delivery_attempt == 1));
    p.send(acks([0])).await;
    let left = Duration::from_secs(3).saturating_sub(sent.elapsed());
    if let Some(m) = p.next(left).await {
        panic!(
            "the extended one came again: {m:?} after {:?}",
            sent.elapsed()
        );
    }
    p.send(acks([1])).await;
    until_group(&ch, &t.reader, "orders", "g", |g| g.backlog_messages == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_are_confirmed_once_durable_and_what_changed_nothing_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (d, t) = start(dir.path(), "");
    let ch = channel(&d).await;
    publish(&ch, &t.writer, "confirm", 5).await;
    let mut p = Pull::open(&ch, &t.reader, open("confirm", "g", 3, 1 << 20))
        .await
        .unwrap();
    // Three out (the flow control); 3 and 4 never delivered to anyone.
    let got = p.take(3).await;
    assert_eq!(got.iter().map(|m| m.offset).collect::<Vec<_>>(), [0, 1, 2]);
    // Acks of 0 and 1, of 900 (never delivered: past the end), a nack of
    // 4 (not out with this member), a deadline change of 2 (out: it
    // takes effect, so it is named nowhere).
    p.send(StreamingPullRequest {
        ack_offsets: vec![0, 1, 900],
        nacks: vec![Nack {
            offsets: vec![4],
            delay: None,
        }],
        deadline_changes: vec![DeadlineChange {
            offsets: vec![2],
            extension: None,
        }],
        ..Default::default()
    })
    .await;
    // (The acks free the window: 3 and 4 may come meanwhile.)
    let mut seen = Vec::new();
    let (acked, ignored) = p.confirmed(&[0, 1], &[4, 900], &mut seen).await;
    assert_eq!((acked, ignored), (vec![0, 1], vec![4, 900]));
    // The group counts them acked: durable with its journal.
    until_group(&ch, &t.reader, "confirm", "g", |g| g.acked == 2).await;
    // An ack of 0 again changes nothing: ignored, not acked twice.
    p.send(acks([0, 2])).await;
    let (acked, ignored) = p.confirmed(&[0, 1, 2], &[0, 4, 900], &mut seen).await;
    assert_eq!((acked, ignored), (vec![0, 1, 2], vec![0, 4, 900]));
    // The window freed: 3 and 4 came; now out with this member, a nack
    // of 4 takes effect (named nowhere) and 4 comes again.
    while seen.len() < 2 {
        let m = p.next(Duration::from_secs(10)).await.expect("3 and 4");
        seen.extend(m.iter().map(|m| m.offset));
    }
    assert_eq!(seen, [3, 4]);
    p.send(StreamingPullRequest {
        ack_offsets: vec![3],
        nacks: vec![Nack {
            offsets: vec![4],
            delay: None,
        }],
        ..Default::default()
    })
    .await;
    let again = p.take(1).await;
    assert_eq!((again[0].offset, again[0].delivery_attempt), (4, 2));
    let (acked, ignored) = p.confirmed(&[3], &[], &mut seen).await;
    assert_eq!((acked, ignored), (vec![0, 1, 2, 3], vec![0, 4, 900]));
}
