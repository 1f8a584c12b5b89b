//! What gRPC calls can make a real `sluiced` hold (issue 20: "a client
//! that never reads, server memory stays bounded"): calls that each send
//! most of a large message and then stop hold the daemon to
//! `grpc.max_request_bytes`, not to calls × message size. The same load
//! against a daemon whose budget is far above it shows what the budget
//! prevents (so this test can fail). A call left halfway ends after
//! `grpc.message_timeout` and gives its room back: a small Publish that
//! waited for it then goes through.
//!
//! The clients are raw HTTP/2 (h2): a gRPC library sends a message only
//! once it has it whole, these stop in the middle of one.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_daemon::grpc::proto::publisher_client::PublisherClient;
use sluice_daemon::grpc::proto::PublishRequest;
use sluice_tests::daemon::Daemon;
use sluice_tests::grpc::{channel, spec, with_token, Tokens};
use sluice_tests::sluiced_bin;

/// Calls at once, each on its own connection.
const CALLS: usize = 12;
/// The length each announces.
const LENGTH: usize = 12 << 20;
/// What each sends of it before it stops.
const SENT: usize = 11 << 20;

fn start(dir: &Path, extra: &str) -> (Daemon, Tokens) {
    let (spec, t) = spec(sluiced_bin!(), dir, extra);
    (spec.start(), t)
}

/// A unary Publish whose one message announces `LENGTH` bytes of which
/// `SENT` are sent; the call stays open. Returns what keeps it open.
async fn half_a_message(addr: SocketAddr, token: &str) -> impl Send {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}/sluice.v1.Publisher/Publish"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    let mut data = vec![0u8; 5 + SENT];
    data[1..5].copy_from_slice(&(LENGTH as u32).to_be_bytes());
    // h2 queues what the server's window does not take yet.
    body.send_data(Bytes::from(data), false).unwrap();
    (client, body, response, conn)
}

/// The daemon's resident memory once it stops growing (a second without a
/// change of more than 2 MiB), or after 20 s.
async fn settled_rss(d: &Daemon) -> u64 {
    let until = Instant::now() + Duration::from_secs(20);
    let mut last = d.rss();
    let mut still_since = Instant::now();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = d.rss();
        if now.abs_diff(last) > 2 << 20 {
            still_since = Instant::now();
            last = now;
        } else if still_since.elapsed() >= Duration::from_secs(1) {
            return now;
        }
    }
    last
}

/// How much the daemon's memory grows while the calls hold their halves.
async fn growth_under_load(extra: &str) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let (d, t) = start(dir.path(), extra);
    // Warm the plane up (a first call allocates what any would).
    let ch = channel(&d).await;
    publish_one(&ch, &t.writer).await.expect("a publish");
    let before = settled_rss(&d).await;
    let mut held = Vec::new();
    for _ in 0..CALLS {
        held.push(half_a_message(d.grpc, &t.writer).await);
    }
    let after = settled_rss(&d).await;
    drop(held);
    after.saturating_sub(before)
}

async fn publish_one(ch: &tonic::transport::Channel, token: &str) -> Result<(), tonic::Status> {
    PublisherClient::new(ch.clone())
        .publish(with_token(
            PublishRequest {
                stream: "small".into(),
                payloads: vec![Bytes::from_static(b"x")],
                identity: None,
            },
            token,
        ))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_halves_of_messages_are_held_to_the_budget() {
    const MIB: u64 = 1 << 20;
    let unbounded = growth_under_load("[grpc]\nmax_request_bytes = \"1GiB\"\n").await;
    let bounded = growth_under_load("[grpc]\nmax_request_bytes = \"17MiB\"\n").await;
    eprintln!(
        "daemon memory growth with {CALLS} calls × {} MiB sent: budget 1 GiB +{} MiB, budget 17 MiB +{} MiB",
        SENT as u64 / MIB,
        unbounded / MIB,
        bounded / MIB
    );
    // Without the budget every half is buffered: 132 MiB.
    assert!(
        unbounded >= (CALLS * SENT) as u64 * 3 / 4,
        "the unbudgeted daemon grew only {} MiB: the load did not load it",
        unbounded / MIB
    );
    // With it: one message's room, what HTTP/2 lets each connection buffer
    // below tonic (a window), and slack for the allocator.
    assert!(
        bounded <= 17 * MIB + CALLS as u64 * 2 * MIB + 16 * MIB,
        "the budgeted daemon grew {} MiB",
        bounded / MIB
    );
}

/// A call that stops halfway gives its room back after
/// grpc.message_timeout: a publish waiting behind it then goes through,
/// and the timeout is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_message_gives_its_room_back() {
    let dir = tempfile::tempdir().unwrap();
    let (d, t) = start(
        dir.path(),
        "[grpc]\nmax_request_bytes = \"17MiB\"\nmessage_timeout = \"2s\"\n",
    );
    let ch = channel(&d).await;
    let _half = half_a_message(d.grpc, &t.writer).await;
    // Let the half take its room.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    // A small message of 1 byte and framing needs a few bytes of room;
    // 12 MiB of 17 are taken, so this one fits: the budget is not a
    // lock. One that does not fit waits:
    let mut big = PublisherClient::new(ch.clone()).max_encoding_message_size(16 << 20);
    let waiting = big.publish(with_token(
        PublishRequest {
            stream: "big".into(),
            payloads: vec![Bytes::from(vec![7u8; 8 << 20])],
            identity: None,
        },
        &t.writer,
    ));
    publish_one(&ch, &t.writer)
        .await
        .expect("a small publish beside the half");
    waiting
        .await
        .expect("the large publish, once the half's room is back");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "the large publish did not wait for the half's room ({took:?})"
    );
    let m = d.metrics();
    assert_eq!(
        m.value(
            "sluice_grpc_request_timeouts_total",
            &[("reason", "message")]
        ),
        1.0
    );
}
