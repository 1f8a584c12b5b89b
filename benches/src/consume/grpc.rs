//! A consumer group's member over the gRPC plane: one
//! `sluice.v1.Subscriber/StreamingPull` call (daemon/GRPC.md,
//! "StreamingPull") on a plaintext HTTP/2 connection of its own to the
//! daemon's gRPC port, as a real client would hold one.
//!
//! The flow control is the credit of the other paths (first request's
//! `max_outstanding_messages` / `max_outstanding_bytes`). Each batch of
//! responses that has arrived is counted, then acked in one later request
//! (`ack_offsets`), as the WebSocket path acks a batch of frames.
//!
//! At the stop the last acks go out, and the member stays until the
//! daemon has confirmed each of its acks (`confirmation`: acked once
//! durable in the group's journal, or ignored); leaving earlier would hand
//! them back to the group unacked.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use sluice_daemon::grpc::proto::{
    self, subscriber_client::SubscriberClient, StreamingPullRequest, StreamingPullResponse,
};
use sluice_daemon::grpc::MAX_MESSAGE;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use super::load::{Counter, BATCH};

/// Longest the connection, the call's first answer or the final acks may
/// take.
const WAIT: Duration = Duration::from_secs(30);
/// Requests (acks) waiting to go out: the server reads them all the time,
/// so a few are enough.
const REQUESTS: usize = 16;

/// Where a member joins over gRPC.
#[derive(Clone)]
pub struct Route {
    /// The daemon's gRPC address.
    pub grpc: SocketAddr,
    pub stream: String,
    pub group: String,
    pub token: Option<String>,
}

impl Route {
    /// `msg` with the token, if there is one.
    fn request<T>(&self, msg: T) -> Result<tonic::Request<T>, String> {
        let mut r = tonic::Request::new(msg);
        if let Some(t) = &self.token {
            let v = format!("Bearer {t}")
                .parse()
                .map_err(|_| "a token not ASCII")?;
            r.metadata_mut().insert("authorization", v);
        }
        Ok(r)
    }
}

/// A member of a group over StreamingPull, subscribed.
pub struct Grpc {
    /// Held for the call's life.
    _channel: Channel,
    requests: mpsc::Sender<StreamingPullRequest>,
    responses: Streaming<StreamingPullResponse>,
}

impl Grpc {
    /// Connects, opens the call with the credit `(messages, bytes)` and
    /// waits for `subscribed` (the member has joined).
    pub async fn connect(to: &Route, (messages, bytes): (u32, u64)) -> Result<Grpc, String> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", to.grpc))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect_timeout(WAIT)
            .connect()
            .await
            .map_err(|e| format!("cannot connect to the gRPC port {}: {e}", to.grpc))?;
        let (requests, rx) = mpsc::channel(REQUESTS);
        let first = StreamingPullRequest {
            stream: to.stream.clone(),
            group: to.group.clone(),
            start: Some(proto::StartAt {
                position: Some(proto::start_at::Position::Earliest(
                    proto::start_at::Earliest {},
                )),
            }),
            max_outstanding_messages: messages,
            max_outstanding_bytes: bytes,
            consumer_name: "sluice-bench".into(),
            ..Default::default()
        };
        // The server reads the first request before it answers the call.
        requests
            .try_send(first)
            .map_err(|_| "the request channel is new")?;
        let mut client = SubscriberClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let call = client.streaming_pull(to.request(ReceiverStream::new(rx))?);
        let mut responses = timeout(WAIT, call)
            .await
            .map_err(|_| "no answer to StreamingPull within 30 s")?
            .map_err(|e| format!("StreamingPull: {e}"))?
            .into_inner();
        match timeout(WAIT, responses.message()).await {
            Ok(Ok(Some(r))) if r.subscribed.is_some() => Ok(Grpc {
                _channel: channel,
                requests,
                responses,
            }),
            Ok(Err(e)) => Err(format!("StreamingPull: {e}")),
            other => Err(format!("sluiced did not subscribe us: {other:?}")),
        }
    }
}

/// The offsets a response confirms: acked (durable) or ignored.
fn confirmed(r: &StreamingPullResponse) -> u64 {
    r.confirmation.as_ref().map_or(0, |c| {
        (c.acked_offsets.len() + c.ignored_offsets.len()) as u64
    })
}

/// Receives until `stop`, acking each batch in the next request; then
/// waits until the daemon has confirmed every ack, and ends the call.
pub async fn run_grpc(
    link: Grpc,
    count: &mut Counter,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let Grpc {
        _channel,
        requests,
        mut responses,
    } = link;
    let mut got = Vec::with_capacity(BATCH);
    // Each offset acked comes back once in a confirmation.
    let (mut acked, mut confirmations) = (0u64, 0u64);
    let fail = |e: tonic::Status| format!("StreamingPull: {e}");
    loop {
        let first = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            m = responses.message() => m,
        };
        got.push(first);
        // And what has arrived already, without waiting: one batch, one
        // ack request.
        while got.len() < BATCH {
            match responses.message().now_or_never() {
                Some(m) => got.push(m),
                None => break,
            }
        }
        let now = count.now();
        let mut offsets = Vec::new();
        for m in got.drain(..) {
            let r = m.map_err(fail)?.ok_or("sluiced ended the StreamingPull")?;
            confirmations += confirmed(&r);
            for d in &r.messages {
                count.add(d.offset, &d.payload, now);
                offsets.push(d.offset);
            }
        }
        count.flush();
        if !offsets.is_empty() {
            acked += offsets.len() as u64;
            let ack = StreamingPullRequest {
                ack_offsets: offsets,
                ..Default::default()
            };
            requests
                .send(ack)
                .await
                .map_err(|_| "the request stream closed")?;
        }
    }
    // Deliveries that come meanwhile are not counted nor acked: they go
    // back to the group when the call ends.
    let until = Instant::now() + WAIT;
    while confirmations < acked {
        let left = until.saturating_duration_since(Instant::now());
        let r = timeout(left, responses.message())
            .await
            .map_err(|_| {
                format!("the daemon confirmed {confirmations} of {acked} acks within 30 s")
            })?
            .map_err(fail)?
            .ok_or("sluiced ended the StreamingPull")?;
        confirmations += confirmed(&r);
    }
    // Dropping the call's halves cancels it: the member leaves.
    drop((requests, responses));
    Ok(())
}
