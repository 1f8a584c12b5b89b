//! A Rust client of sluiced's gRPC API, with code generated from
//! proto/sluice/v1/sluice.proto by build.rs: it publishes a few messages
//! exactly once (an idempotency key; the answer comes once they are
//! durable), then joins a consumer group with StreamingPull, receives and
//! acks them, waits for the daemon to confirm the acks durable, and shows
//! the group with DescribeGroup.
//!
//! ```sh
//! cargo run -p sluice-grpc-example -- --addr 127.0.0.1:7402 --stream orders
//! SLUICE_TOKEN=... cargo run -p sluice-grpc-example -- --group billing --count 5
//! ```
//!
//! Flags (or variables): `--addr` (`SLUICE_GRPC`, default 127.0.0.1:7402),
//! `--token` (`SLUICE_TOKEN`, default none: a daemon with no tokens
//! configured, on loopback), `--stream` (default `example`), `--group`
//! (default `example`), `--count` (default 3).

use std::collections::BTreeSet;
use std::error::Error;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Endpoint;
use tonic::{Request, Status};

/// The code build.rs generated.
mod proto {
    tonic::include_proto!("sluice.v1");
}

use proto::admin_client::AdminClient;
use proto::publish_request::Identity;
use proto::publisher_client::PublisherClient;
use proto::start_at::{Earliest, Position};
use proto::subscriber_client::SubscriberClient;
use proto::{DescribeGroupRequest, PublishRequest, StartAt, StreamingPullRequest};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

struct Options {
    addr: String,
    token: Option<String>,
    stream: String,
    group: String,
    count: usize,
}

fn options() -> Result<Options> {
    let mut o = Options {
        addr: std::env::var("SLUICE_GRPC").unwrap_or_else(|_| "127.0.0.1:7402".into()),
        token: std::env::var("SLUICE_TOKEN").ok().filter(|t| !t.is_empty()),
        stream: "example".into(),
        group: "example".into(),
        count: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        const FLAGS: [&str; 5] = ["--addr", "--token", "--stream", "--group", "--count"];
        if !FLAGS.contains(&flag.as_str()) {
            return Err(format!("unknown argument {flag}; the flags: {}", FLAGS.join(", ")).into());
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--addr" => o.addr = value,
            "--token" => o.token = Some(value),
            "--stream" => o.stream = value,
            "--group" => o.group = value,
            "--count" => {
                o.count = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or(format!("--count {value}: a number from 1 to 10000"))?
            }
            _ => unreachable!("checked above"),
        }
    }
    Ok(o)
}

#[tokio::main]
async fn main() -> ExitCode {
    match options() {
        Ok(o) => match run(o).await {
            Ok(()) => ExitCode::SUCCESS,
            // A gRPC status by its code's name (`Unauthenticated: ...`).
            Err(e) => {
                match e.downcast_ref::<Status>() {
                    Some(s) => eprintln!("error: {:?}: {}", s.code(), s.message()),
                    None => eprintln!("error: {e}"),
                }
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(o: Options) -> Result<()> {
    let channel = Endpoint::from_shared(format!("http://{}", o.addr))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| format!("connect to {}: {e}", o.addr))?;
    // Every call carries `authorization: Bearer <token>`, if there is one.
    let bearer: Option<MetadataValue<Ascii>> = match &o.token {
        Some(t) => Some(format!("Bearer {t}").parse()?),
        None => None,
    };
    let auth = move |mut req: Request<()>| -> std::result::Result<Request<()>, Status> {
        if let Some(b) = &bearer {
            req.metadata_mut().insert("authorization", b.clone());
        }
        Ok(req)
    };

    // 1. Publish. The key names this request: sent again (after a timeout,
    // a broken connection, RESOURCE_EXHAUSTED) it is stored once.
    let mut publisher = PublisherClient::with_interceptor(channel.clone(), auth.clone());
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let request = PublishRequest {
        stream: o.stream.clone(),
        payloads: (1..=o.count)
            .map(|i| format!("message {i}").into_bytes())
            .collect(),
        identity: Some(Identity::IdempotencyKey(format!("example-{nanos}"))),
    };
    let answer = publisher.publish(request.clone()).await?.into_inner();
    let offsets = answer
        .messages
        .iter()
        .map(|m| m.offset.ok_or("a new message without an offset"))
        .collect::<std::result::Result<Vec<u64>, _>>()?;
    println!(
        "published {} messages to {} at offsets {offsets:?}, durable",
        offsets.len(),
        o.stream
    );
    // The same request again, as after a lost answer: nothing is stored,
    // the answer is the first one.
    let again = publisher.publish(request).await?.into_inner();
    let again_offsets: Vec<Option<u64>> = again.messages.iter().map(|m| m.offset).collect();
    println!(
        "sent again with the same key: replayed {}, offsets {again_offsets:?}",
        again.replayed
    );

    // 2. StreamingPull: the first request joins the group, later ones ack.
    let (requests, rx) = mpsc::channel(16);
    requests
        .send(StreamingPullRequest {
            stream: o.stream.clone(),
            group: o.group.clone(),
            start: Some(StartAt {
                position: Some(Position::Earliest(Earliest {})),
            }),
            max_outstanding_messages: 100,
            max_outstanding_bytes: 1 << 20,
            consumer_name: "rust-example".into(),
            ..Default::default()
        })
        .await?;
    let mut subscriber = SubscriberClient::with_interceptor(channel.clone(), auth.clone());
    let mut responses = subscriber
        .streaming_pull(ReceiverStream::new(rx))
        .await?
        .into_inner();
    // The group may hold older messages too: ack whatever comes until ours
    // have all come.
    let mut waiting: BTreeSet<u64> = offsets.iter().copied().collect();
    let mut unconfirmed = waiting.clone();
    while !waiting.is_empty() {
        let response = tokio::time::timeout(Duration::from_secs(10), responses.message())
            .await
            .map_err(|_| "no delivery within 10 s")??
            .ok_or("the daemon ended the pull")?;
        if let Some(s) = response.subscribed {
            println!("joined group {} as member {}", o.group, s.member_id);
        }
        if let Some(c) = response.confirmation {
            for offset in c.acked_offsets {
                unconfirmed.remove(&offset);
            }
        }
        let mut acks = Vec::new();
        for m in response.messages {
            println!(
                "received offset {}: {:?} (attempt {})",
                m.offset,
                String::from_utf8_lossy(&m.payload),
                m.delivery_attempt
            );
            waiting.remove(&m.offset);
            acks.push(m.offset);
        }
        if !acks.is_empty() {
            requests
                .send(StreamingPullRequest {
                    ack_offsets: acks,
                    ..Default::default()
                })
                .await?;
        }
    }

    // 3. The daemon confirms acks on the pull once they are durable in the
    // group's journal. Only then end the pull (a member that leaves hands
    // back what it holds unacked).
    while !unconfirmed.is_empty() {
        let response = tokio::time::timeout(Duration::from_secs(10), responses.message())
            .await
            .map_err(|_| "no ack confirmation within 10 s")??
            .ok_or("the daemon ended the pull")?;
        if let Some(c) = response.confirmation {
            for offset in c.acked_offsets {
                unconfirmed.remove(&offset);
            }
        }
    }
    println!("acks of offsets {offsets:?} confirmed durable");

    // 4. What the group says now.
    let mut admin = AdminClient::with_interceptor(channel, auth);
    let group = admin
        .describe_group(DescribeGroupRequest {
            stream: o.stream.clone(),
            group: o.group.clone(),
        })
        .await?
        .into_inner()
        .group
        .ok_or("DescribeGroup answered no group")?;
    println!(
        "group {}: every offset below {} acked, backlog {}",
        o.group, group.ack_floor, group.backlog_messages
    );
    Ok(())
}
