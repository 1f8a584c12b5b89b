//! What one client can hold on the gRPC plane (issue 20, bad input):
//! 1,000 idle StreamingPull calls of one token over several connections
//! stay open while the daemon serves a Publish and a health check at once
//! and its memory stays within a stated bound; a flood of stream openings
//! from one token past `grpc.max_streams_per_principal` is refused with
//! RESOURCE_EXHAUSTED (RetryInfo, counted) while another token gets in, and
//! once the flood's calls close the token gets in again; a PublishStream
//! client that never reads its acks is held by backpressure (the server
//! stops reading it) and the daemon's memory stays bounded; credit 0
//! reaching an open PublishStream (a group at its max_backlog) refuses a
//! batch past the most granted; publishes are counted per plane.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_daemon::grpc::proto::publisher_client::PublisherClient;
use sluice_daemon::grpc::proto::subscriber_client::SubscriberClient;
use sluice_daemon::grpc::proto::{
    publish_stream_request, publish_stream_response, start_at, PublishBatch, PublishRequest,
    PublishStreamOpen, PublishStreamOpened, PublishStreamRequest, PublishStreamResponse, StartAt,
    StreamingPullRequest, StreamingPullResponse,
};
use sluice_tests::daemon::Daemon;
use sluice_tests::grpc::{channel, spec, with_token, Tokens};
use sluice_tests::sluiced_bin;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_types::StatusExt;

const MIB: u64 = 1 << 20;

fn start(dir: &Path, extra: &str) -> (Daemon, Tokens) {
    let (spec, t) = spec(sluiced_bin!(), dir, extra);
    (spec.start(), t)
}

/// Publishes one payload; how long it took.
async fn publish(ch: &Channel, token: &str, stream: &str) -> Duration {
    let at = Instant::now();
    PublisherClient::new(ch.clone())
        .publish(with_token(
            PublishRequest {
                stream: stream.into(),
                payloads: vec![Bytes::from_static(b"x")],
                identity: None,
            },
            token,
        ))
        .await
        .expect("publish");
    at.elapsed()
}

/// A health check of the whole server; how long it took.
async fn health(ch: &Channel) -> Duration {
    let at = Instant::now();
    let mut client = HealthClient::new(ch.clone());
    let check = client.check(HealthCheckRequest {
        service: String::new(),
    });
    let r = tokio::time::timeout(Duration::from_secs(10), check)
        .await
        .expect("a health check answered within 10 s")
        .expect("health check")
        .into_inner();
    assert_eq!(r.status, ServingStatus::Serving as i32);
    at.elapsed()
}

/// An idle pull's first request: group `group` from the stream's end.
fn idle(stream: &str, group: &str) -> StreamingPullRequest {
    StreamingPullRequest {
        stream: stream.into(),
        group: group.into(),
        max_outstanding_messages: 10,
        max_outstanding_bytes: 64 << 10,
        start: Some(StartAt {
            position: Some(start_at::Position::Latest(Default::default())),
        }),
        ..Default::default()
    }
}

/// An open StreamingPull: requests go in through `tx` (held open while
/// the pull is).
struct Pull {
    tx: mpsc::Sender<StreamingPullRequest>,
    rx: Streaming<StreamingPullResponse>,
}

async fn pull(ch: &Channel, token: &str, first: StreamingPullRequest) -> Result<Pull, Status> {
    let (tx, reqs) = mpsc::channel(4);
    tx.send(first).await.unwrap();
    let mut rx = SubscriberClient::new(ch.clone())
        .streaming_pull(with_token(ReceiverStream::new(reqs), token))
        .await?
        .into_inner();
    let first = rx.message().await?.expect("a first response");
    assert!(first.subscribed.is_some(), "{first:?}");
    Ok(Pull { tx, rx })
}

/// `n` channels (each its own HTTP/2 connection).
async fn channels(d: &Daemon, n: usize) -> Vec<Channel> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(channel(d).await);
    }
    out
}

fn gauge(d: &Daemon, name: &str, labels: &[(&str, &str)]) -> f64 {
    d.metrics().value(name, labels)
}

/// Waits (10 s at most) until `f` holds of the metric's value.
async fn until_metric(d: &Daemon, name: &str, labels: &[(&str, &str)], f: impl Fn(f64) -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let v = gauge(d, name, labels);
        if f(v) {
            return;
        }
        assert!(Instant::now() < until, "{name}{labels:?} stuck at {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_pulls_of_one_token_and_the_daemon_serves_within_its_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (d, t) = start(dir.path(), "");
    // 64 calls per connection by default: 1,000 need 16 connections.
    let chs = channels(&d, 16).await;
    publish(&chs[0], &t.writer, "quiet").await;
    let before = d.rss();
    let mut pulls = Vec::new();
    for i in 0..1_000 {
        let ch = &chs[i % chs.len()];
        // All in one group: a member each, nothing to deliver.
        pulls.push(
            pull(ch, &t.reader, idle("quiet", "idle"))
                .await
                .expect("pull"),
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(gauge(&d, "sluice_grpc_streaming_calls", &[]), 1_000.0);
    let held = d.rss();
    // A publish and a health check on a connection of their own, and on
    // one carrying pulls: answered at once (a loaded test machine still
    // answers within a second).
    let fresh = channel(&d).await;
    for ch in [&fresh, &chs[3]] {
        let took = publish(ch, &t.writer, "quiet").await;
        assert!(took < Duration::from_secs(1), "publish took {took:?}");
        let took = health(ch).await;
        assert!(took < Duration::from_secs(1), "health took {took:?}");
    }
    // Every pull is still open: the group has its thousand members, and
    // the one message went to one of them.
    let mut got = 0;
    for p in &mut pulls {
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(1), p.rx.message()).await {
            let r = r.expect("the pull goes on").expect("not ended");
            got += r.messages.len();
        }
    }
    assert!(got <= 2, "{got} deliveries of 2 messages to one group");
    assert_eq!(gauge(&d, "sluice_grpc_streaming_calls", &[]), 1_000.0);
    // The bound: an idle pull costs a task, a member, HTTP/2 stream state
    // and its response channel, a few KiB; 64 KiB each is room to spare
    // for the allocator and the tokio runtime's growth.
    let grown = held.saturating_sub(before);
    eprintln!(
        "RSS before {:.1} MiB, with 1,000 idle pulls {:.1} MiB (+{:.1} MiB)",
        before as f64 / MIB as f64,
        held as f64 / MIB as f64,
        grown as f64 / MIB as f64
    );
    assert!(grown < 1_000 * (64 << 10), "RSS grew {grown} bytes");
    drop(pulls);
    until_metric(&d, "sluice_grpc_streaming_calls", &[], |v| v == 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_stream_openings_from_one_token_is_refused_past_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (d, t) = start(dir.path(), "[grpc]\nmax_streams_per_principal = 50\n");
    let chs = channels(&d, 4).await;
    publish(&chs[0], &t.writer, "jobs").await;

    // 200 openings at once from one token over four connections: 50 get
    // in, the rest are refused with RESOURCE_EXHAUSTED and RetryInfo.
    let mut opening = Vec::new();
    for i in 0..200 {
        let (ch, token) = (chs[i % 4].clone(), t.writer.clone());
        opening.push(tokio::spawn(async move {
            pull(&ch, &token, idle("jobs", "flood")).await
        }));
    }
    let mut open = Vec::new();
    let mut refused = 0;
    for o in opening {
        match o.await.unwrap() {
            Ok(p) => open.push(p),
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(
                    e.message().contains("grpc.max_streams_per_principal"),
                    "{e:?}"
                );
                assert!(e.get_details_retry_info().is_some(), "{e:?}");
                refused += 1;
            }
        }
    }
    assert_eq!((open.len(), refused), (50, 150));
    let counted = |d: &Daemon| {
        gauge(
            d,
            "sluice_grpc_calls_refused_total",
            &[("reason", "principal_streams")],
        )
    };
    assert_eq!(counted(&d), 150.0);
    // PublishStream counts against the same limit.
    let e = publish_stream(&chs[1], &t.writer).await.err().unwrap();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // Another token gets in, on the flooded connections too; and unary
    // calls of the flooding token are not limited.
    for ch in &chs {
        drop(
            pull(ch, &t.reader, idle("jobs", "other"))
                .await
                .expect("another token"),
        );
    }
    publish(&chs[2], &t.writer, "jobs").await;

    // The flood's calls close: the token gets in again.
    drop(open);
    until_metric(&d, "sluice_grpc_streaming_calls", &[], |v| v == 0.0).await;
    let again: Vec<Pull> = {
        let mut v = Vec::new();
        for i in 0..50 {
            v.push(
                pull(&chs[i % 4], &t.writer, idle("jobs", "flood"))
                    .await
                    .expect("in again"),
            );
        }
        v
    };
    assert_eq!(again.len(), 50);
    let e = pull(&chs[0], &t.writer, idle("jobs", "flood"))
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(counted(&d), 152.0);
}

/// Opens a PublishStream of producer 7 on "acks"; the request sender and
/// the answers, `opened` read, and its credit in messages.
async fn publish_stream(
    ch: &Channel,
    token: &str,
) -> Result<
    (
        mpsc::Sender<PublishStreamRequest>,
        Streaming<PublishStreamResponse>,
        u64,
    ),
    Status,
> {
    let (tx, answers, o) = open_stream(ch, token, "acks").await?;
    Ok((tx, answers, o.credit_messages))
}

/// Opens a PublishStream of producer 7 on `stream`.
async fn open_stream(
    ch: &Channel,
    token: &str,
    stream: &str,
) -> Result<
    (
        mpsc::Sender<PublishStreamRequest>,
        Streaming<PublishStreamResponse>,
        PublishStreamOpened,
    ),
    Status,
> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(PublishStreamRequest {
        kind: Some(publish_stream_request::Kind::Open(PublishStreamOpen {
            stream: stream.into(),
            producer_id: 7,
        })),
    })
    .await
    .unwrap();
    let mut answers = PublisherClient::new(ch.clone())
        .publish_stream(with_token(ReceiverStream::new(rx), token))
        .await?
        .into_inner();
    let first = answers.message().await?.expect("opened");
    let Some(publish_stream_response::Kind::Opened(o)) = first.kind else {
        panic!("not opened: {first:?}");
    };
    Ok((tx, answers, o))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_stream_that_never_reads_its_acks_is_held_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (d, t) = start(dir.path(), "");
    // A small receive window: the client's HTTP/2 holds few unread acks,
    // so the server's answer queue fills soon.
    let ch = Endpoint::from_shared(format!("http://{}", d.grpc))
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    let (tx, mut answers, credit) = publish_stream(&ch, &t.writer).await.unwrap();
    assert!(credit >= 1_000, "opened with credit {credit}");
    let before = d.rss();
    // One 1 KiB message a batch, each a new seq within the credit: each
    // ack is a status the client never reads.
    let payload = Bytes::from(vec![b'a'; 1024]);
    let mut sent = 0u64;
    let stalled = loop {
        if sent == credit {
            break false;
        }
        let batch = PublishStreamRequest {
            kind: Some(publish_stream_request::Kind::Batch(PublishBatch {
                seq: sent + 1,
                payloads: vec![payload.clone()],
            })),
        };
        match tokio::time::timeout(Duration::from_secs(2), tx.send(batch)).await {
            Ok(r) => r.expect("the call takes requests"),
            Err(_) => break true,
        }
        sent += 1;
    };
    // The server stopped reading: its answers wait for the client, the
    // client's requests for the server, long before the credit.
    assert!(
        stalled,
        "all {credit} batches were taken without an ack read"
    );
    // How many get through first depends on how many acks one status
    // covers (the spool commits batches in groups) and on the windows: not
    // a number to assert, but below the credit (else the credit, not the
    // unread acks, would have stopped the client).
    eprintln!("the client was held after {sent} unread batches (credit {credit})");
    let held = d.rss();
    assert!(
        held.saturating_sub(before) < 32 * MIB,
        "RSS {before} then {held}"
    );
    // The daemon serves meanwhile. On another connection: on this one,
    // the held call's unread requests may fill the connection's HTTP/2
    // receive window (the server's stream window is as large as its
    // connection window), which holds every call of the connection.
    let other = channel(&d).await;
    assert!(health(&other).await < Duration::from_secs(1));
    // Reading again: every batch taken is acked, in order, and the call
    // ends OK after a half-close.
    drop(tx);
    let mut durable = 0;
    while let Some(a) = tokio::time::timeout(Duration::from_secs(10), answers.message())
        .await
        .expect("answers come once read")
        .expect("the stream ends OK")
    {
        if let Some(publish_stream_response::Kind::Status(s)) = a.kind {
            assert!(s.durable_seq >= durable);
            durable = s.durable_seq;
        }
    }
    assert_eq!(durable, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_are_counted_by_the_plane_they_came_over() {
    let dir = tempfile::tempdir().unwrap();
    let (d, t) = start(dir.path(), "");
    let ch = channel(&d).await;
    // One over HTTP; two Publish calls and two PublishStream batches over
    // gRPC.
    let a = sluice_tests::consume::post(d.admin, "/streams/acks/messages", "h", Some(&t.writer));
    assert_eq!(a.status, 200, "{:?}", a.body);
    publish(&ch, &t.writer, "acks").await;
    publish(&ch, &t.writer, "acks").await;
    let (tx, mut answers, _) = publish_stream(&ch, &t.writer).await.unwrap();
    for seq in [1, 2] {
        tx.send(PublishStreamRequest {
            kind: Some(publish_stream_request::Kind::Batch(PublishBatch {
                seq,
                payloads: vec![Bytes::from_static(b"s")],
            })),
        })
        .await
        .unwrap();
    }
    drop(tx);
    while answers.message().await.expect("ends OK").is_some() {}
    let m = d.metrics();
    let stream = [("stream", "acks")];
    assert_eq!(m.value("sluice_http_publish_requests_total", &stream), 1.0);
    assert_eq!(m.value("sluice_grpc_publish_requests_total", &stream), 4.0);
    assert_eq!(m.value("sluice_messages_in_total", &stream), 5.0);
}

fn batch(seq: u64, n: u64) -> PublishStreamRequest {
    PublishStreamRequest {
        kind: Some(publish_stream_request::Kind::Batch(PublishBatch {
            seq,
            payloads: (0..n).map(|_| Bytes::from_static(b"held")).collect(),
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_0_reaching_an_open_publish_stream_stops_it_taking_more() {
    let dir = tempfile::tempdir().unwrap();
    // A group that holds producers at a backlog of 50.
    let (d, t) = start(
        dir.path(),
        "[[consumers.groups]]\nstream = \"held\"\ngroup = \"ledger\"\nmax_backlog = 50\n",
    );
    let ch = channel(&d).await;
    let (tx, mut answers, opened) = open_stream(&ch, &t.writer, "held").await.unwrap();
    // Within the credit, batches of 10, reading every status, until one
    // says 0 (the backlog reached 50). The most any answer granted: the
    // server holds the client to it.
    let (mut acked, mut credit) = (opened.durable_seq, opened.credit_messages);
    let mut granted = acked + credit;
    let mut sent = 0;
    let until = Instant::now() + Duration::from_secs(10);
    while credit > 0 {
        assert!(
            Instant::now() < until,
            "credit never reached 0: sent {sent}"
        );
        let n = 10.min((acked + credit).saturating_sub(sent));
        if n > 0 {
            tx.send(batch(sent + 1, n)).await.unwrap();
            sent += n;
        }
        let a = answers.message().await.unwrap().expect("a status");
        let Some(publish_stream_response::Kind::Status(s)) = a.kind else {
            panic!("{a:?}");
        };
        (acked, credit) = (s.durable_seq, s.credit_messages);
        granted = granted.max(acked + credit);
    }
    assert!(sent >= 50, "credit 0 after {sent}");
    // Every batch sent is acked; the credit stays 0 (statuses keep coming
    // while the ones in flight are acked).
    while acked < sent {
        let a = answers.message().await.unwrap().expect("a status");
        if let Some(publish_stream_response::Kind::Status(s)) = a.kind {
            acked = s.durable_seq;
            granted = granted.max(acked + s.credit_messages);
            assert_eq!(s.credit_messages, 0, "{s:?}");
        }
    }
    // One seq past the most granted: refused, nothing of it stored.
    tx.send(batch(sent + 1, granted + 1 - sent)).await.unwrap();
    let e = loop {
        match answers.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended OK after a batch past the credit"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    drop(tx);
    // Reopened while the group is behind: still no credit, and the
    // durable seq says nothing of the refused batch was stored.
    let (tx, _answers, o) = open_stream(&ch, &t.writer, "held").await.unwrap();
    assert_eq!((o.durable_seq, o.credit_messages), (sent, 0));
    drop(tx);
    // The group catches up: credit comes back.
    let mut p = pull(&ch, &t.reader, {
        let mut r = idle("held", "ledger");
        r.start = None;
        r.max_outstanding_messages = 1_000;
        r
    })
    .await
    .unwrap();
    let mut n = 0;
    while n < sent {
        let r = tokio::time::timeout(Duration::from_secs(10), p.rx.message())
            .await
            .expect("deliveries")
            .unwrap()
            .unwrap();
        n += r.messages.len() as u64;
        p.tx.send(StreamingPullRequest {
            ack_offsets: r.messages.iter().map(|m| m.offset).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (tx, _answers, o) = open_stream(&ch, &t.writer, "held").await.unwrap();
        drop(tx);
        if o.credit_messages > 0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "no credit after the group caught up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
