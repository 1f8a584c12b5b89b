//! The Publisher service: `Publish` (a batch, answered once durable) over
//! the same [`crate::publish::Publisher`] as HTTP's
//! `POST /streams/{s}/messages`, and `PublishStream` (a producer's
//! session with durable acks and credit, in `publish/stream.rs`).

mod stream;

use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::caller::Caller;
use super::proto::{
    self, publish_request, PublishRequest, PublishResponse, PublishStreamRequest,
    PublishStreamResponse, PublishedMessage,
};
use super::{publish_status, Shared};
use crate::auth::Action;
use crate::publish::{Identity, Plane, Published};

/// Most payload bytes of one Publish: as an HTTP publish's body.
pub const MAX_PAYLOAD_BYTES: u64 = 16 << 20;

pub(super) struct Service {
    s: Arc<Shared>,
}

impl Service {
    pub fn new(s: Arc<Shared>) -> Service {
        Service { s }
    }
}

type Answers = Pin<Box<dyn Stream<Item = Result<PublishStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl proto::publisher_server::Publisher for Service {
    async fn publish(
        &self,
        req: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let s = &self.s;
        let caller = Caller::of(&s.gate, &req)?;
        let r = req.into_inner();
        if r.stream.is_empty() {
            return Err(Status::invalid_argument("stream: empty; name the stream"));
        }
        caller.may(&s.gate, Action::Publish, &r.stream)?;
        let stopping = || s.stopping.load(Relaxed);
        if stopping() {
            return Err(Status::unavailable("sluiced is stopping"));
        }
        let bytes: u64 = r.payloads.iter().map(|p| p.len() as u64).sum();
        if bytes > MAX_PAYLOAD_BYTES {
            return Err(Status::resource_exhausted(format!(
                "{bytes} bytes of payloads; a request may carry at most {MAX_PAYLOAD_BYTES}"
            )));
        }
        let identity = identity(&r)?;
        // The message is in memory already (tonic read it whole, within
        // MAX_MESSAGE); the room is taken all the same, so that requests
        // in flight on every plane share one bound.
        let reserved = s
            .publisher
            .reserve(bytes)
            .map_err(|e| publish_status(e, stopping()))?;
        let published = s
            .publisher
            .publish(reserved, &r.stream, identity, r.payloads, Plane::Grpc)
            .await
            .map_err(|e| publish_status(e, stopping()))?;
        Ok(Response::new(answer(r.stream, published)))
    }

    type PublishStreamStream = Answers;

    async fn publish_stream(
        &self,
        req: Request<Streaming<PublishStreamRequest>>,
    ) -> Result<Response<Answers>, Status> {
        let caller = Caller::of(&self.s.gate, &req)?;
        // Held by the session's task: given back however the call ends.
        let slot = self.s.streams.open(&caller.principal)?;
        let inbound = req.into_inner();
        // Room for a few answers: a client that stops reading holds the
        // session at this many, and then its batches wait (bounded: see
        // MAX_BATCHES_IN_FLIGHT).
        let (tx, rx) = mpsc::channel(8);
        let s = self.s.clone();
        // The call is answered (headers) at once: `open` is read in the
        // session's task, so a client that waits for the headers before
        // it sends is not held.
        tokio::spawn(async move {
            if let Err(status) = stream::serve(&s, caller, inbound, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
            drop(slot);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// How the request is told from its retries: as HTTP's headers, checked
/// the same way.
fn identity(r: &PublishRequest) -> Result<Identity, Status> {
    match &r.identity {
        None => Ok(Identity::None),
        Some(publish_request::Identity::Producer(p)) => {
            if p.producer_id == 0 {
                return Err(Status::invalid_argument(
                    "producer.producer_id: 0 is not a producer id",
                ));
            }
            if p.seq == 0 {
                return Err(Status::invalid_argument("producer.seq: seqs start at 1"));
            }
            Ok(Identity::Producer {
                id: p.producer_id,
                seq: p.seq,
            })
        }
        Some(publish_request::Identity::IdempotencyKey(key)) => {
            crate::publish::check_key(key).map_err(|e| {
                Status::invalid_argument(e.replace("Idempotency-Key", "idempotency_key"))
            })?;
            Ok(Identity::Key {
                key: key.clone(),
                hash: frames_hash(&r.payloads),
            })
        }
    }
}

/// SHA-256 of the payloads as HTTP's frames form spells them (a u32
/// big-endian length, then the bytes, each): a key's request compares
/// equal whether it came as gRPC or as an HTTP frames body.
fn frames_hash(payloads: &[bytes::Bytes]) -> [u8; 32] {
    let mut d = ring::digest::Context::new(&ring::digest::SHA256);
    for p in payloads {
        // Each payload is below 4 GiB: MAX_MESSAGE bounds the request.
        d.update(&(p.len() as u32).to_be_bytes());
        d.update(p);
    }
    d.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
}

fn answer(stream: String, p: Published) -> PublishResponse {
    PublishResponse {
        stream,
        producer_id: p.producer,
        messages: p
            .messages
            .into_iter()
            .map(|m| PublishedMessage {
                offset: m.offset,
                seq: m.seq,
                duplicate: m.duplicate,
            })
            .collect(),
        replayed: p.replayed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_hash_is_the_frames_bodys() {
        let payloads = vec![bytes::Bytes::from_static(b"ab"), bytes::Bytes::new()];
        let body = [&[0, 0, 0, 2][..], b"ab", &[0, 0, 0, 0]].concat();
        let want = ring::digest::digest(&ring::digest::SHA256, &body);
        assert_eq!(&frames_hash(&payloads)[..], want.as_ref());
    }
}
