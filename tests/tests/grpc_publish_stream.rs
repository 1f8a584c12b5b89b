//! gRPC's PublishStream against a real `sluiced` (issue 20): a tonic
//! client streams 10,000 messages in pipelined batches within its credit
//! and gets every ack, stored once in order; a resend of acked seqs is
//! stored once; the credit grows with what the session sends and a batch
//! past it ends the stream with RESOURCE_EXHAUSTED, storing nothing of it;
//! tokens and rights as unary Publish; a kill -9 mid-stream, a restart and
//! a reopen say the durable seq, and a resend from there stores every
//! message exactly once.

use std::time::Duration;

use bytes::Bytes;
use sluice_daemon::grpc::proto::publisher_client::PublisherClient;
use sluice_daemon::grpc::proto::{
    publish_stream_request, publish_stream_response, PublishBatch, PublishStatus,
    PublishStreamOpen, PublishStreamOpened, PublishStreamRequest, PublishStreamResponse,
};
use sluice_tests::check::{records, stored};
use sluice_tests::grpc::{channel, spec, with_token};
use sluice_tests::sluiced_bin;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

fn payload(producer: u64, seq: u64) -> Bytes {
    Bytes::from(format!("{producer}:{seq}"))
}

/// One open PublishStream, as a producer drives it.
struct Pipe {
    producer: u64,
    tx: mpsc::Sender<PublishStreamRequest>,
    answers: Streaming<PublishStreamResponse>,
    /// The durable seq and credit of the last answer.
    acked: u64,
    credit: u64,
    /// The highest seq sent.
    sent: u64,
    /// Statuses received.
    statuses: Vec<PublishStatus>,
}

/// Opens `stream` as `producer`: the opened answer, or the status that
/// refused it (at the call, or as the stream's first answer).
async fn open(
    ch: &Channel,
    token: Option<&str>,
    stream: &str,
    producer: u64,
) -> Result<(Pipe, PublishStreamOpened), Status> {
    let (tx, rx) = mpsc::channel(1024);
    tx.send(PublishStreamRequest {
        kind: Some(publish_stream_request::Kind::Open(PublishStreamOpen {
            stream: stream.into(),
            producer_id: producer,
        })),
    })
    .await
    .unwrap();
    let outbound = ReceiverStream::new(rx);
    let req = match token {
        Some(t) => with_token(outbound, t),
        None => Request::new(outbound),
    };
    let mut answers = PublisherClient::new(ch.clone())
        .publish_stream(req)
        .await?
        .into_inner();
    let first = answers
        .message()
        .await?
        .ok_or_else(|| Status::unknown("the stream ended before `opened`"))?;
    let Some(publish_stream_response::Kind::Opened(opened)) = first.kind else {
        panic!("the first answer is not `opened`: {first:?}");
    };
    let pipe = Pipe {
        producer,
        tx,
        answers,
        acked: opened.durable_seq,
        credit: opened.credit_messages,
        sent: opened.durable_seq,
        statuses: Vec::new(),
    };
    Ok((pipe, opened))
}

impl Pipe {
    async fn send(&mut self, seq: u64, count: u64) {
        let payloads = (seq..seq + count)
            .map(|s| payload(self.producer, s))
            .collect();
        self.tx
            .send(PublishStreamRequest {
                kind: Some(publish_stream_request::Kind::Batch(PublishBatch {
                    seq,
                    payloads,
                })),
            })
            .await
            .expect("the call takes requests");
        self.sent = self.sent.max(seq + count - 1);
    }

    /// The next status (None: the stream ended OK).
    async fn status(&mut self) -> Result<Option<PublishStatus>, Status> {
        let Some(a) = self.answers.message().await? else {
            return Ok(None);
        };
        let Some(publish_stream_response::Kind::Status(s)) = a.kind else {
            panic!("a second `opened`: {a:?}");
        };
        assert!(s.durable_seq >= self.acked, "acks go forward: {s:?}");
        self.acked = s.durable_seq;
        self.credit = s.credit_messages;
        self.statuses.push(s);
        Ok(Some(s))
    }

    /// Sends seqs up to `to` in batches of `batch`, never past the credit,
    /// until all are acked or `stop(acked)` says so.
    async fn run(
        &mut self,
        to: u64,
        batch: u64,
        mut stop: impl FnMut(u64) -> bool,
    ) -> Result<(), Status> {
        loop {
            while self.sent < to {
                let n = batch
                    .min(to - self.sent)
                    .min((self.acked + self.credit).saturating_sub(self.sent));
                if n == 0 {
                    break;
                }
                self.send(self.sent + 1, n).await;
            }
            if self.acked >= to {
                return Ok(());
            }
            if self.status().await?.is_none() {
                return Err(Status::unknown("the stream ended before the last ack"));
            }
            if stop(self.acked) {
                return Ok(());
            }
        }
    }

    /// Half-closes; the stream must end OK with nothing more said.
    async fn close(mut self) {
        drop(self.tx);
        while let Some(s) = self
            .answers
            .message()
            .await
            .expect("the stream ends OK after a half-close")
        {
            assert!(
                matches!(s.kind, Some(publish_stream_response::Kind::Status(_))),
                "{s:?}"
            );
        }
    }
}

fn seqs(producer: u64, range: std::ops::RangeInclusive<u64>) -> Vec<(u64, u64)> {
    range.map(|s| (producer, s)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_pipelined_every_ack_stored_once_in_order_and_resends_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, t) = spec(sluiced_bin!(), dir.path(), "");
    let d = spec.start();
    let ch = channel(&d).await;

    let (mut p, opened) = open(&ch, Some(&t.writer), "ps", 11).await.unwrap();
    assert_eq!(opened.producer_id, 11);
    assert_eq!(opened.durable_seq, 0);
    assert!(
        opened.credit_messages > 0 && opened.credit_bytes > 0,
        "{opened:?}"
    );
    p.run(10_000, 100, |_| false).await.unwrap();
    assert_eq!(p.acked, 10_000);
    // Pipelined: batches went out before the ones ahead were acked, so
    // fewer statuses than batches came back, each further than the last.
    assert!(!p.statuses.is_empty());
    p.close().await;

    // Reopened: the durable seq; acked seqs sent again are duplicates,
    // and the stream goes on after them.
    let (mut p, opened) = open(&ch, Some(&t.writer), "ps", 11).await.unwrap();
    assert_eq!(opened.durable_seq, 10_000);
    p.send(9_901, 100).await;
    p.send(9_951, 100).await;
    p.run(10_100, 100, |_| false).await.unwrap();
    assert_eq!(p.acked, 10_100);
    p.close().await;

    assert!(d.terminate(Duration::from_secs(10)).success());
    let data = dir.path().join("data");
    assert_eq!(stored(&data, "ps"), seqs(11, 1..=10_100));
    for r in records(&data, "ps") {
        assert_eq!(r.payload, payload(11, r.seq));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_grows_with_small_messages_and_a_batch_past_it_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, t) = spec(sluiced_bin!(), dir.path(), "");
    let d = spec.start();
    let ch = channel(&d).await;

    // Rights as unary Publish: no token, a reader's; a bad open.
    let e = open(&ch, None, "credit", 5).await.err().unwrap();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = open(&ch, Some(&t.reader), "credit", 5).await.err().unwrap();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = open(&ch, Some(&t.writer), "credit", 0).await.err().unwrap();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    let (mut p, opened) = open(&ch, Some(&t.writer), "credit", 5).await.unwrap();
    // Before any message the policy assumes 1 KiB ones; these are a few
    // bytes: the status after the first batch grants more.
    p.send(1, 10).await;
    while p.acked < 10 {
        p.status().await.unwrap().expect("a status");
    }
    assert!(
        p.credit > opened.credit_messages,
        "opened {opened:?}, then {:?}",
        p.statuses
    );
    // One seq past the credit: the stream ends, nothing of the batch
    // stored.
    let over = p.credit + 1;
    assert!(over <= 10_000);
    p.send(11, over).await;
    let e = loop {
        match p.status().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended OK after a batch past the credit"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("credit"), "{e:?}");

    // A gap past what was sent is refused too.
    let (mut p, opened) = open(&ch, Some(&t.writer), "credit", 5).await.unwrap();
    assert_eq!(opened.durable_seq, 10);
    p.send(12, 1).await;
    let e = p.status().await.expect_err("a gap is refused");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    assert!(d.terminate(Duration::from_secs(10)).success());
    assert_eq!(stored(&dir.path().join("data"), "credit"), seqs(5, 1..=10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_reopen_says_the_durable_seq_and_a_resend_stores_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, t) = spec(sluiced_bin!(), dir.path(), "");
    let d = spec.start();
    let ch = channel(&d).await;

    const ALL: u64 = 20_000;
    let (mut p, _) = open(&ch, Some(&t.writer), "crash", 21).await.unwrap();
    p.run(ALL, 100, |acked| acked >= 3_000).await.unwrap();
    let acked = p.acked;
    assert!((3_000..ALL).contains(&acked), "{acked}");
    // More in flight than acked when the daemon dies.
    let in_flight = p.sent;
    d.kill9();
    let e = loop {
        match p.status().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended OK under a kill -9"),
            Err(e) => break e,
        }
    };
    assert_ne!(e.code(), Code::Ok);

    let d = spec.start();
    let ch = channel(&d).await;
    let (mut p, opened) = open(&ch, Some(&t.writer), "crash", 21).await.unwrap();
    // Every ack held; what was in flight may or may not have been.
    assert!(
        (p.acked..=in_flight).contains(&opened.durable_seq) && opened.durable_seq >= acked,
        "acked {acked}, sent {in_flight}, opened {opened:?}"
    );
    p.run(ALL, 100, |_| false).await.unwrap();
    p.close().await;
    assert!(d.terminate(Duration::from_secs(10)).success());
    assert_eq!(stored(&dir.path().join("data"), "crash"), seqs(21, 1..=ALL));
}
