//! `PublishStream`: one producer's session on one stream over a gRPC
//! bidirectional stream, with the fast path's flow control.
//!
//! The client opens (stream, producer id); the server answers `opened`
//! with the producer's durable seq, read from the idempotence table at
//! once, and the credit policy's credit. Each batch then goes through the
//! same publisher as a unary Publish with the producer's own id
//! (`Identity::Producer`): a seq at or below the stored ones is a
//! duplicate, stored once; after a failed append the producer's later
//! records are refused and the stream ends (the client reopens and
//! resends from the durable seq).
//!
//! Batches are pipelined: each is queued for the spool as soon as it is
//! read, in the order read (the spool's writer completes one stream's
//! batches in order), and answered in that order. What one session holds
//! is bounded three ways: the seqs it may send (credit in messages past
//! its durable seq), the payload bytes in flight (credit in bytes, and the
//! publisher's room shared with HTTP and unary Publish), and the number of
//! batches in flight ([`MAX_BATCHES_IN_FLIGHT`]; past it the session stops
//! reading and HTTP/2's flow control holds the client).
//!
//! A batch past the credit ends the stream with RESOURCE_EXHAUSTED
//! (without RetryInfo: a retry of the same batch would be refused again;
//! the client reopens and keeps within the credit). The batches before it
//! are still acked first, so the client learns how far it got.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::super::caller::Caller;
use super::super::proto::{
    publish_stream_request, publish_stream_response, PublishBatch, PublishStatus,
    PublishStreamOpened, PublishStreamRequest, PublishStreamResponse,
};
use super::super::{publish_status, Shared};
use super::MAX_PAYLOAD_BYTES;
use crate::auth::Action;
use crate::publish::{
    Credit, Identity, Plane, PublishError, Published, Reserved, Session, MAX_MESSAGES,
};

/// Most batches of one session queued for the spool and not yet acked:
/// past this the session reads no more until the oldest is durable.
pub const MAX_BATCHES_IN_FLIGHT: usize = 256;
/// How often the credit is looked at again while the spool's health may
/// change without a batch completing (a backlog draining, a disk freed).
const CREDIT_TICK: Duration = Duration::from_millis(50);

type Answer = Result<PublishStreamResponse, Status>;
type Durable<'a> = Pin<Box<dyn Future<Output = Result<Published, PublishError>> + Send + 'a>>;

/// A batch queued for the spool.
struct InFlight<'a> {
    last_seq: u64,
    bytes: u64,
    durable: Durable<'a>,
}

/// A batch read and checked, waiting for room in the publisher.
struct Held {
    seq: u64,
    last_seq: u64,
    bytes: u64,
    payloads: Vec<bytes::Bytes>,
}

/// Serves one PublishStream call until the client half-closes and all it
/// sent is acked (Ok), or with the status that ends it.
pub(in super::super) async fn serve(
    s: &Shared,
    caller: Caller,
    mut inbound: Streaming<PublishStreamRequest>,
    tx: &mpsc::Sender<Answer>,
) -> Result<(), Status> {
    let stopping = || s.stopping.load(Relaxed);
    let open = match inbound.message().await? {
        Some(PublishStreamRequest {
            kind: Some(publish_stream_request::Kind::Open(o)),
        }) => o,
        Some(_) => {
            return Err(Status::invalid_argument(
                "the first request must be `open` (stream and producer id)",
            ))
        }
        None => return Err(Status::invalid_argument("closed before `open`")),
    };
    if open.stream.is_empty() {
        return Err(Status::invalid_argument(
            "open.stream: empty; name the stream",
        ));
    }
    caller.may(&s.gate, Action::Publish, &open.stream)?;
    if stopping() {
        return Err(Status::unavailable("sluiced is stopping"));
    }
    if open.producer_id == 0 {
        return Err(Status::invalid_argument(
            "open.producer_id: 0 is not a producer id",
        ));
    }
    let session = s
        .publisher
        .session(&open.stream, open.producer_id)
        .map_err(|e| publish_status(e, stopping()))?;
    let mut st = State::new(&session);
    let (credit_messages, credit_bytes) = st.grant(&session);
    let opened = publish_stream_response::Kind::Opened(PublishStreamOpened {
        producer_id: open.producer_id,
        durable_seq: st.acked,
        credit_messages,
        credit_bytes,
    });
    send(tx, opened).await?;

    let mut in_flight: VecDeque<InFlight<'_>> = VecDeque::new();
    let mut held: Option<Held> = None;
    let mut half_closed = false;
    // The status that ends the stream once what is in flight is answered.
    let mut failure: Option<Status> = None;
    let mut tick = tokio::time::interval(CREDIT_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A held batch goes as soon as the publisher has room for it.
        if let Some(h) = held.take() {
            if failure.is_some() {
                // Not queued: nothing of it is acked.
            } else if stopping() {
                failure = Some(Status::unavailable("sluiced is stopping"));
            } else {
                match s.publisher.reserve(h.bytes) {
                    Ok(room) => match queue(s, &session, room, h) {
                        Ok(f) => {
                            st.in_flight_bytes += f.bytes;
                            in_flight.push_back(f);
                        }
                        Err(e) => failure = Some(publish_status(e, stopping())),
                    },
                    // Publishes of every plane hold the room: wait for
                    // ours or theirs to be answered.
                    Err(_) => held = Some(h),
                }
            }
        }
        if in_flight.is_empty() && held.is_none() && (half_closed || failure.is_some()) {
            break;
        }
        let reading = !half_closed
            && failure.is_none()
            && held.is_none()
            && in_flight.len() < MAX_BATCHES_IN_FLIGHT;
        tokio::select! {
            // Acks first: they free room and credit.
            done = oldest(&mut in_flight) => {
                let Some(f) = in_flight.pop_front() else { continue };
                st.in_flight_bytes -= f.bytes;
                match done {
                    // After a failure nothing later is acked: the
                    // producer resends from the durable seq it was told.
                    Ok(_) if failure.is_none() => {
                        st.acked = st.acked.max(f.last_seq);
                        st.update(&session, tx).await?;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        failure.get_or_insert(publish_status(e, stopping()));
                    }
                }
            }
            msg = inbound.message(), if reading => match msg {
                Ok(None) => half_closed = true,
                // The client reset the call or sent what cannot be read:
                // it hears nothing more (tonic ends the call).
                Err(status) => failure = Some(status),
                Ok(Some(PublishStreamRequest { kind: Some(publish_stream_request::Kind::Batch(b)) })) => {
                    match st.check(b) {
                        Ok(h) => held = Some(h),
                        Err(status) => failure = Some(status),
                    }
                }
                Ok(Some(_)) => {
                    failure = Some(Status::invalid_argument(
                        "`open` again: a stream is opened once; every later request is a `batch`",
                    ))
                }
            },
            _ = tick.tick() => {
                if failure.is_none() {
                    st.update(&session, tx).await?;
                }
            }
        }
    }
    match failure {
        Some(status) => Err(status),
        None => Ok(()),
    }
}

/// The oldest batch's answer (never, with none in flight).
async fn oldest<'a>(in_flight: &mut VecDeque<InFlight<'a>>) -> Result<Published, PublishError> {
    match in_flight.front_mut() {
        Some(f) => f.durable.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Queues a checked batch for the spool, in room `room`.
fn queue<'a>(
    s: &'a Shared,
    session: &Session<'_>,
    room: Reserved<'a>,
    h: Held,
) -> Result<InFlight<'a>, PublishError> {
    let pending = s.publisher.start(
        room,
        session.stream().name(),
        Identity::Producer {
            id: session.producer(),
            seq: h.seq,
        },
        h.payloads,
        // Checked against what the session granted (State::check).
        Credit::Granted,
        Plane::Grpc,
    )?;
    Ok(InFlight {
        last_seq: h.last_seq,
        bytes: h.bytes,
        durable: Box::pin(pending.durable()),
    })
}

async fn send(
    tx: &mpsc::Sender<Answer>,
    kind: publish_stream_response::Kind,
) -> Result<(), Status> {
    tx.send(Ok(PublishStreamResponse { kind: Some(kind) }))
        .await
        // The client is gone: nothing more to say to it. What it sent is
        // queued and will be durable; it learns so when it reopens.
        .map_err(|_| Status::cancelled("the client went away"))
}

/// What the session has acked and granted.
struct State {
    /// The highest seq acked (every seq at or below it is durable).
    acked: u64,
    /// The seq after the highest read: a batch may start at or below it
    /// (a resend), not past it (a gap).
    next: u64,
    /// The highest seq and the most bytes in flight any answer so far
    /// allowed. The client may act on an older answer than the latest
    /// (answers and batches cross), so a batch is refused only past the
    /// most any answer granted.
    max_seq: u64,
    max_bytes: u64,
    in_flight_bytes: u64,
    /// Messages and bytes received, for the average message size the
    /// credit policy turns bytes into messages with.
    messages: u64,
    bytes: u64,
    /// The last status sent (durable seq, credit in messages and bytes).
    said: (u64, u64, u64),
}

impl State {
    fn new(session: &Session<'_>) -> State {
        let acked = session.durable_seq();
        State {
            acked,
            next: acked.saturating_add(1),
            max_seq: acked,
            max_bytes: 0,
            in_flight_bytes: 0,
            messages: 0,
            bytes: 0,
            said: (acked, u64::MAX, u64::MAX),
        }
    }

    /// The credit now, noted as granted.
    fn grant(&mut self, session: &Session<'_>) -> (u64, u64) {
        let avg = (self.messages > 0).then(|| self.bytes / self.messages);
        let (messages, bytes) = session.credit(avg);
        let messages = u64::from(messages);
        self.max_seq = self.max_seq.max(self.acked.saturating_add(messages));
        self.max_bytes = self.max_bytes.max(bytes);
        self.said = (self.acked, messages, bytes);
        (messages, bytes)
    }

    /// Sends a status if the durable seq or the credit changed since the
    /// last one.
    async fn update(
        &mut self,
        session: &Session<'_>,
        tx: &mpsc::Sender<Answer>,
    ) -> Result<(), Status> {
        let before = self.said;
        let (credit_messages, credit_bytes) = self.grant(session);
        if self.said == before {
            return Ok(());
        }
        let status = publish_stream_response::Kind::Status(PublishStatus {
            durable_seq: self.acked,
            credit_messages,
            credit_bytes,
        });
        send(tx, status).await
    }

    /// A batch read: checked against the protocol and the credit.
    fn check(&mut self, b: PublishBatch) -> Result<Held, Status> {
        let n = b.payloads.len();
        if n == 0 || n > MAX_MESSAGES {
            return Err(Status::invalid_argument(format!(
                "batch: 1 to {MAX_MESSAGES} payloads, not {n}"
            )));
        }
        if b.seq == 0 {
            return Err(Status::invalid_argument("batch.seq: seqs start at 1"));
        }
        let last_seq = b.seq.checked_add(n as u64 - 1).ok_or_else(|| {
            Status::invalid_argument("batch.seq: its payloads would number past 2^64")
        })?;
        if b.seq > self.next {
            return Err(Status::invalid_argument(format!(
                "batch.seq {}: a gap; the next seq after those sent is {}",
                b.seq, self.next
            )));
        }
        let bytes: u64 = b.payloads.iter().map(|p| p.len() as u64).sum();
        if bytes > MAX_PAYLOAD_BYTES {
            return Err(Status::resource_exhausted(format!(
                "{bytes} bytes of payloads; a batch may carry at most {MAX_PAYLOAD_BYTES}"
            )));
        }
        if last_seq > self.max_seq {
            return Err(Status::resource_exhausted(format!(
                "batch to seq {last_seq}: past the credit granted (to seq {}); wait for a status with more",
                self.max_seq
            )));
        }
        // One batch alone always goes (else a large one never could).
        if self.in_flight_bytes > 0 && self.in_flight_bytes + bytes > self.max_bytes {
            return Err(Status::resource_exhausted(format!(
                "{} payload bytes in flight with this batch: past the credit granted ({} bytes); wait for a status",
                self.in_flight_bytes + bytes,
                self.max_bytes
            )));
        }
        self.next = self.next.max(last_seq.saturating_add(1));
        self.messages += n as u64;
        self.bytes += bytes;
        Ok(Held {
            seq: b.seq,
            last_seq,
            bytes,
            payloads: b.payloads,
        })
    }
}
