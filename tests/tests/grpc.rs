//! The gRPC plane against a real `sluiced` (issue 20): a tonic client of
//! the code generated from proto/sluice/v1/sluice.proto publishes with an
//! idempotency key, with a producer's seqs and with neither; tokens and
//! rights give UNAUTHENTICATED and PERMISSION_DENIED; malformed protobuf and
//! oversized messages are refused without a crash and store nothing; the
//! admin views, health and reflection answer; TLS with the daemon's
//! certificate works.

use std::path::Path;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use sluice_daemon::grpc::proto::admin_client::AdminClient;
use sluice_daemon::grpc::proto::publisher_client::PublisherClient;
use sluice_daemon::grpc::proto::{
    publish_request, DescribeGroupRequest, ListStreamsRequest, ProducerSeq, PublishRequest,
    PublishResponse,
};
use sluice_tests::consume::post;
use sluice_tests::daemon::Daemon;
use sluice_tests::grpc::{channel, spec, with_token, Tokens};
use sluice_tests::sluiced_bin;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// A daemon with the shared principals (writer, reader, producer) and
/// more flags.
fn start(dir: &Path, args: &[&str]) -> (Daemon, Tokens) {
    let (spec, t) = spec(sluiced_bin!(), dir, "");
    (spec.args(args.iter().copied()).start(), t)
}

fn request(
    stream: &str,
    payloads: &[&[u8]],
    id: Option<publish_request::Identity>,
) -> PublishRequest {
    PublishRequest {
        stream: stream.into(),
        payloads: payloads.iter().map(|p| Bytes::copy_from_slice(p)).collect(),
        identity: id,
    }
}

fn key(k: &str) -> Option<publish_request::Identity> {
    Some(publish_request::Identity::IdempotencyKey(k.into()))
}

fn producer(id: u64, seq: u64) -> Option<publish_request::Identity> {
    Some(publish_request::Identity::Producer(ProducerSeq {
        producer_id: id,
        seq,
    }))
}

fn offsets(r: &PublishResponse) -> Vec<Option<u64>> {
    r.messages.iter().map(|m| m.offset).collect()
}

/// The durable end of `stream` as ListStreams says (`None`: no such
/// stream).
async fn durable_end(ch: &Channel, token: &str, stream: &str) -> Option<u64> {
    let list = AdminClient::new(ch.clone())
        .list_streams(with_token(ListStreamsRequest {}, token))
        .await
        .expect("ListStreams")
        .into_inner();
    list.streams
        .into_iter()
        .find(|s| s.name == stream)
        .and_then(|s| s.durable_end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_is_the_http_planes_publish_keys_seqs_and_rights() {
    let dir = tempfile::tempdir().unwrap();
    let (d, t) = start(dir.path(), &[]);
    let ch = channel(&d).await;
    let mut p = PublisherClient::new(ch.clone());

    // Rights first: no token, a token of nobody, a reader's.
    let e = p
        .publish(request("orders", &[b"x"], None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = p
        .publish(with_token(request("orders", &[b"x"], None), "slc_nobody"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = p
        .publish(with_token(request("orders", &[b"x"], None), &t.reader))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("reader"), "{e:?}");
    assert_eq!(durable_end(&ch, &t.reader, "orders").await, None);

    // A key thrice: stored once, the retries get the original answer.
    let first = p
        .publish(with_token(
            request("orders", &[b"a", b"b"], key("order-42")),
            &t.writer,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(offsets(&first), vec![Some(0), Some(1)]);
    assert!(!first.replayed);
    for _ in 0..2 {
        let again = p
            .publish(with_token(
                request("orders", &[b"a", b"b"], key("order-42")),
                &t.writer,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(again.replayed, "{again:?}");
        assert_eq!(offsets(&again), offsets(&first));
        assert_eq!(again.producer_id, first.producer_id);
    }
    assert_eq!(durable_end(&ch, &t.writer, "orders").await, Some(2));
    // The key with other payloads: a key names one request.
    let e = p
        .publish(with_token(
            request("orders", &[b"other"], key("order-42")),
            &t.writer,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");

    // A producer's seqs: a resend is a duplicate, stored nothing.
    let r = p
        .publish(with_token(
            request("orders", &[b"c", b"d"], producer(7, 1)),
            &t.writer,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(offsets(&r), vec![Some(2), Some(3)]);
    assert_eq!(r.producer_id, 7);
    let r = p
        .publish(with_token(
            request("orders", &[b"c", b"d"], producer(7, 1)),
            &t.writer,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.messages.iter().all(|m| m.duplicate && m.offset.is_none()),
        "{r:?}"
    );
    let r = p
        .publish(with_token(
            request("orders", &[b"d", b"e"], producer(7, 2)),
            &t.writer,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(offsets(&r), vec![None, Some(4)]);
    assert_eq!(durable_end(&ch, &t.writer, "orders").await, Some(5));

    // Neither: every request stored.
    for _ in 0..2 {
        p.publish(with_token(request("orders", &[b"f"], None), &t.writer))
            .await
            .unwrap();
    }
    assert_eq!(durable_end(&ch, &t.writer, "orders").await, Some(7));

    // What a request cannot be.
    for (bad, what) in [
        (request("orders", &[], None), "no messages"),
        (request("orders", &[b"x"], producer(0, 1)), "producer 0"),
        (request("orders", &[b"x"], producer(7, 0)), "seq 0"),
        (request("orders", &[b"x"], key("")), "empty key"),
        (request("orders", &[b"x"], key("a key")), "key with a space"),
        (request("", &[b"x"], None), "no stream"),
    ] {
        let e = p.publish(with_token(bad, &t.writer)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
    }
    assert_eq!(durable_end(&ch, &t.writer, "orders").await, Some(7));

    // PublishStream checks its first request (tests/grpc_publish_stream.rs
    // serves it whole): a call closed before `open` is refused.
    let mut answers = p
        .publish_stream(with_token(tokio_stream::iter(vec![]), &t.writer))
        .await
        .unwrap()
        .into_inner();
    let e = answers.message().await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        d.terminate(Duration::from_secs(10)).success(),
        "a clean stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_views_read_what_http_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (d, t) = start(dir.path(), &["--streams", "jobs"]);
    let ch = channel(&d).await;
    let mut admin = AdminClient::new(ch.clone());
    let e = admin.list_streams(ListStreamsRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    PublisherClient::new(ch.clone())
        .publish(with_token(
            request("jobs", &[b"1", b"2", b"3"], None),
            &t.writer,
        ))
        .await
        .unwrap();
    let list = admin
        .list_streams(with_token(ListStreamsRequest {}, &t.reader))
        .await
        .unwrap()
        .into_inner();
    let jobs = list.streams.iter().find(|s| s.name == "jobs").unwrap();
    assert_eq!((jobs.durable_end, jobs.first_offset), (Some(3), Some(0)));
    assert!(jobs.damage.is_empty());

    let describe = |group: &str| {
        with_token(
            DescribeGroupRequest {
                stream: "jobs".into(),
                group: group.into(),
            },
            &t.reader,
        )
    };
    let e = admin.describe_group(describe("workers")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // A fetch over HTTP makes the group and takes one message out.
    let a = post(
        d.admin,
        "/streams/jobs/groups/workers/fetch",
        r#"{"max": 1, "wait_ms": 0}"#,
        Some(&t.reader),
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    let g = admin
        .describe_group(describe("workers"))
        .await
        .unwrap()
        .into_inner()
        .group
        .unwrap();
    assert_eq!((g.stream.as_str(), g.group.as_str()), ("jobs", "workers"));
    assert_eq!(g.backlog_messages, 3, "{g:?}");
    assert_eq!(g.delivered, 1, "{g:?}");
    assert_eq!(g.outstanding, 1, "{g:?}");
    assert!(
        d.terminate(Duration::from_secs(10)).success(),
        "a clean stop"
    );
}

/// Bytes as they are: a gRPC call of any method with a body of our own.
#[derive(Clone, Copy)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

async fn raw_publish(ch: &Channel, token: &str, body: Bytes) -> Result<Bytes, Status> {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.expect("ready");
    grpc.unary(
        with_token(body, token),
        PathAndQuery::from_static("/sluice.v1.Publisher/Publish"),
        Raw,
    )
    .await
    .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_are_refused_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (d, t) = start(dir.path(), &[]);
    let ch = channel(&d).await;
    // Not protobuf: a field 1 (the stream) whose length runs past the end;
    // then a tag of wire type 7, which does not exist.
    for garbage in [&b"\x0a\xff\xff\x03abc"[..], b"\x0f\xff\xff\xff\xff"] {
        let e = raw_publish(&ch, &t.writer, Bytes::from_static(garbage))
            .await
            .unwrap_err();
        // tonic's code for a body it cannot decode (daemon/GRPC.md).
        assert_eq!(e.code(), Code::Internal, "{e:?}");
    }
    // Larger than any message may be (16 MiB of payload plus framing):
    // refused before it is read whole.
    let mut p = PublisherClient::new(ch.clone());
    let huge = vec![7u8; 17 << 20];
    let e = p
        .publish(with_token(request("big", &[&huge], None), &t.writer))
        .await
        .unwrap_err();
    // tonic's code for a message over the limit, read from its length
    // prefix (daemon/GRPC.md).
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    // Within one message's bound but over a request's 16 MiB of payload.
    let half = vec![7u8; (8 << 20) + 1];
    let e = p
        .publish(with_token(request("big", &[&half, &half], None), &t.writer))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.get_details_retry_info().is_none(), "{e:?}");
    // The daemon lives, and nothing was stored.
    let ok = p
        .publish(with_token(request("small", &[b"x"], None), &t.writer))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(offsets(&ok), vec![Some(0)]);
    assert_eq!(durable_end(&ch, &t.writer, "big").await, None);
    assert!(
        d.terminate(Duration::from_secs(10)).success(),
        "a clean stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_and_tls_serves_the_daemons_certificate() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let dir = tempfile::tempdir().unwrap();
    let (d, t) = start(dir.path(), &["--grpc-tls", "true"]);
    let pem = std::fs::read(dir.path().join("data/tls/server.crt")).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pem))
        .domain_name("localhost");
    let ch = Endpoint::from_shared(format!("https://{}", d.grpc))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("connect over TLS");
    // Health is open (no token), as a balancer asks it.
    let mut health = HealthClient::new(ch.clone());
    for service in ["", "sluice.v1.Publisher", "sluice.v1.Admin"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    // Reflection names the services.
    let mut reflection = ServerReflectionClient::new(ch.clone());
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(vec![ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .unwrap()
        .into_inner();
    let first = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("{first:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "sluice.v1.Publisher",
        "sluice.v1.Subscriber",
        "sluice.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    // A publish over TLS.
    let r = PublisherClient::new(ch)
        .publish(with_token(request("tls", &[b"x"], None), &t.writer))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(offsets(&r), vec![Some(0)]);
    // Plaintext is not served on a TLS port.
    let plain = Endpoint::from_shared(format!("http://{}", d.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let e = HealthClient::new(plain)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_ne!(e.code(), Code::Ok);
    assert!(
        d.terminate(Duration::from_secs(10)).success(),
        "a clean stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_resource_exhausted_with_retry_info_and_not_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let dir = tempfile::tempdir().unwrap();
    // A free-space floor above what any disk has: the spool holds appends
    // as on a full disk (as tests/disk_full.rs does).
    let floor = (1u64 << 62).to_string();
    let (d, t) = start(
        dir.path(),
        &["--streams", "jobs", "--spool-min-free-bytes", &floor],
    );
    let ch = channel(&d).await;
    let mut p = PublisherClient::new(ch.clone());
    // The first publish finds the floor only when the writer tries to
    // commit it: held, it is not answered (an answer means durable), and
    // the client's deadline ends the call (its outcome unknown: a retry
    // with a key or seq would be safe). From then on the stream gives no
    // credit: RESOURCE_EXHAUSTED at once, with RetryInfo.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let e = loop {
        let mut r = with_token(request("jobs", &[b"x"], None), &t.writer);
        r.set_timeout(Duration::from_millis(500));
        let e = p.publish(r).await.unwrap_err();
        if e.code() == Code::ResourceExhausted {
            break e;
        }
        // The deadline passed: the server's DEADLINE_EXCEEDED, or the
        // client's own CANCELLED when its timer fires first.
        assert!(
            matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{e:?}"
        );
        assert!(std::time::Instant::now() < until, "still {e:?}");
    };
    let retry = e
        .get_details_retry_info()
        .expect("RetryInfo in the details");
    assert!(
        retry.retry_delay.is_some_and(|d| d > Duration::ZERO),
        "{retry:?}"
    );
    // Health follows GET /health: acks held, not serving (within the
    // watcher's second).
    let mut health = HealthClient::new(ch.clone());
    let until = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = health
            .check(HealthCheckRequest {
                service: "sluice.v1.Publisher".into(),
            })
            .await
            .unwrap()
            .into_inner();
        if r.status == ServingStatus::NotServing as i32 {
            break;
        }
        assert!(std::time::Instant::now() < until, "still {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(durable_end(&ch, &t.writer, "jobs").await, Some(0));
    // A spool holding a batch for free space does not stop on SIGTERM (it
    // waits for the disk; tests/disk_full.rs kills it too).
    d.kill9();
}
