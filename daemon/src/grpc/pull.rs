//! The Subscriber service: `StreamingPull`, a consumer group member over a
//! bidirectional gRPC stream (Google Pub/Sub's StreamingPull as the model).
//!
//! The QUIC subscriber's semantics (quic/subscriber.rs) on another wire:
//! the call joins the group as a push member with a credit window
//! ([`Credit::Window`], the first request's max outstanding messages and
//! bytes, clamped by the daemon's budget as on every plane), so the group
//! hands it no more than the window of messages not yet acked, nacked or
//! expired. Acks, nacks (with their delay) and deadline changes go to the
//! [`Member`]; a new flow control is a new credit. When the call ends (the
//! client cancels, the connection breaks, an error) the
//! member is dropped, and what it held is delivered again at once.
//! Conflation and dead letters are the group's, as over QUIC.
//!
//! Memory: what is out is bounded by the window; the responses wait in a
//! channel of [`OUTBOUND`] and then in HTTP/2's flow-control window, so a
//! client that never reads stops its member (no more deliveries once the
//! window is full) and nothing piles up. Acks keep being read meanwhile
//! (up to the confirmations' bound below):
//! the loop takes a new batch only once the last one went into the
//! channel, but reads requests all the time, so a client whose acks are
//! what would let it read is never deadlocked.
//!
//! Confirmations: each request's acks, nacks and deadline changes go to
//! the group as one command, which answers which offsets took effect.
//! Offsets newly acked are confirmed (`confirmation.acked_offsets`) once
//! the group's journal holding them is fdatasynced; offsets that changed
//! nothing (`ignored_offsets`) ride with the next confirmation. What waits
//! to be confirmed is bounded ([`MAX_UNCONFIRMED_REQUESTS`],
//! [`MAX_CONFIRM_OFFSETS`]): a client that sends acks but never reads its
//! responses is held there (its requests are not read further).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use super::caller::Caller;
use super::proto::{
    self, start_at, AckConfirmation, ReceivedMessage, StreamingPullRequest, StreamingPullResponse,
    Subscribed,
};
use super::Shared;
use crate::auth::Action;
use crate::consume::group::{Credit, Delivery};
use crate::consume::service::{to_wire, ConsumeError, Member, Settle, Settled, StartAt};

/// Responses waiting for the client to take them: few, since HTTP/2's
/// window buffers more behind them and each may be [`RESPONSE_BYTES`].
const OUTBOUND: usize = 2;
/// Most payload bytes gathered into one response (a larger message still
/// goes alone: the largest fits [`super::MAX_MESSAGE`]).
const RESPONSE_BYTES: usize = 1 << 20;
/// Most offsets one nack or deadline change may name (a member holds at
/// most `consumers.max_member_messages` anyway), as HTTP's push routes.
const MAX_SETTLE_OFFSETS: usize = 65_536;
/// Requests whose acks the group has not answered yet, at most; past it
/// no more requests are read until it has.
const MAX_UNCONFIRMED_REQUESTS: usize = 64;
/// Offsets waiting to be confirmed (acked and not yet synced, or synced
/// and not yet sent, or ignored), at most; past it no more requests are
/// read until the client takes its confirmations.
const MAX_CONFIRM_OFFSETS: usize = 1 << 18;
/// How long a call may take to send its first request.
const FIRST_REQUEST: Duration = Duration::from_secs(30);
/// How often a pull looks whether the daemon is stopping.
const STOP_CHECK: Duration = Duration::from_secs(1);
/// Longest consumer name kept (it goes into logs and metrics).
const MAX_NAME: usize = 128;

pub(super) struct Service {
    s: Arc<Shared>,
}

impl Service {
    pub fn new(s: Arc<Shared>) -> Service {
        Service { s }
    }
}

type Deliveries = Pin<Box<dyn Stream<Item = Result<StreamingPullResponse, Status>> + Send>>;

#[tonic::async_trait]
impl proto::subscriber_server::Subscriber for Service {
    type StreamingPullStream = Deliveries;

    async fn streaming_pull(
        &self,
        req: Request<Streaming<StreamingPullRequest>>,
    ) -> Result<Response<Deliveries>, Status> {
        let caller = Caller::of(&self.s.gate, &req)?;
        // Taken before the first request is waited for (that holds the
        // call too); given back when the call ends, however it ends.
        let slot = self.s.streams.open(&caller.principal)?;
        let mut inbound = req.into_inner();
        // A call that never says what it wants holds an HTTP/2 stream of
        // its connection: not for long.
        let first = tokio::time::timeout(FIRST_REQUEST, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!("no first request within {FIRST_REQUEST:?}"))
            })??
            .ok_or_else(|| Status::invalid_argument("the stream ended before its first request"))?;
        // Its shape first (that tells nothing of the daemon's streams),
        // then rights before anything that tells whether the stream exists.
        let open = Open::of(&first)?;
        caller.may(&self.s.gate, Action::Consume, &first.stream)?;
        let name = match first.consumer_name.trim() {
            "" => format!("grpc {}", caller.peer),
            // The client's words go into logs: no control characters.
            n => format!(
                "grpc {} {}",
                caller.peer,
                clip(n, MAX_NAME).replace(char::is_control, "?")
            ),
        };
        let member = self
            .s
            .consumers
            .join(
                &first.stream,
                &first.group,
                open.start,
                name,
                Credit::Window {
                    messages: open.messages,
                    bytes: open.bytes,
                },
                caller.peer,
            )
            .await
            .map_err(consume_status)?;
        let (messages, bytes) = match member.granted {
            Credit::Window { messages, bytes } => (messages, bytes),
            Credit::Fetch { .. } => (open.messages, open.bytes),
        };
        let subscribed = StreamingPullResponse {
            subscribed: Some(Subscribed {
                member_id: member.id,
                ack_deadline: prost_types::Duration::try_from(member.group.config().ack_deadline)
                    .ok(),
                max_deliveries: member.group.config().max_deliveries,
                max_outstanding_messages: messages,
                max_outstanding_bytes: bytes,
            }),
            ..Default::default()
        };
        let (tx, rx) = mpsc::channel(OUTBOUND);
        // Room for it: the channel is new.
        let _ = tx.try_send(Ok(subscribed));
        debug!(peer = %caller.peer, stream = %first.stream, group = %first.group,
               member = member.id, "gRPC subscriber joined");
        // Acks (and the rest) of the first request count too, as Pub/Sub's.
        let declared = (open.messages, open.bytes);
        let peer = caller.peer;
        let s = self.s.clone();
        tokio::spawn(async move {
            let why = serve(&s, member, inbound, first, declared, tx).await;
            drop(slot);
            debug!(%peer, why, "gRPC subscriber left");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// What the first request asks for.
struct Open {
    start: StartAt,
    messages: u32,
    bytes: u64,
}

impl Open {
    fn of(r: &StreamingPullRequest) -> Result<Open, Status> {
        if r.stream.is_empty() {
            return Err(Status::invalid_argument(
                "the first request must name the stream",
            ));
        }
        if r.group.is_empty() {
            return Err(Status::invalid_argument(
                "the first request must name the group",
            ));
        }
        if r.max_outstanding_messages == 0 || r.max_outstanding_bytes == 0 {
            return Err(Status::invalid_argument(
                "the first request must set max_outstanding_messages and max_outstanding_bytes \
                 (not 0)",
            ));
        }
        let start = match r.start.as_ref().and_then(|s| s.position.as_ref()) {
            None | Some(start_at::Position::Earliest(_)) => StartAt::Earliest,
            Some(start_at::Position::Latest(_)) => StartAt::Latest,
            Some(start_at::Position::Offset(o)) => StartAt::Offset(*o),
            Some(start_at::Position::Time(t)) => {
                let us = u64::try_from(t.seconds)
                    .ok()
                    .filter(|_| (0..1_000_000_000).contains(&t.nanos))
                    .and_then(|s| s.checked_mul(1_000_000))
                    .and_then(|us| us.checked_add(t.nanos as u64 / 1_000))
                    .ok_or_else(|| {
                        Status::invalid_argument(
                            "start.time must be a valid timestamp at or after 1970",
                        )
                    })?;
                StartAt::Time(us)
            }
        };
        Ok(Open {
            start,
            messages: r.max_outstanding_messages,
            bytes: r.max_outstanding_bytes,
        })
    }
}

/// The gRPC status of a join the group refused.
fn consume_status(e: ConsumeError) -> Status {
    match e {
        ConsumeError::NoSuchStream(_) | ConsumeError::NoSuchGroup { .. } => {
            Status::not_found(e.to_string())
        }
        ConsumeError::BadGroup(_) => Status::invalid_argument(e.to_string()),
        ConsumeError::Stopping => Status::unavailable(e.to_string()),
        ConsumeError::TooManyGroups { .. }
        | ConsumeError::GroupBusy { .. }
        | ConsumeError::ConfiguredGroup { .. }
        | ConsumeError::NoReset { .. } => Status::failed_precondition(e.to_string()),
        ConsumeError::Spool(_) => Status::internal(e.to_string()),
    }
}

/// Serves one member until its call ends; returns why.
async fn serve(
    s: &Shared,
    mut member: Member,
    mut inbound: Streaming<StreamingPullRequest>,
    first: StreamingPullRequest,
    mut declared: (u32, u64),
    tx: mpsc::Sender<Result<StreamingPullResponse, Status>>,
) -> &'static str {
    let mut confirm = Confirm::default();
    match settle(&member, &first, &mut declared, false).await {
        Ok(o) => confirm.asked(o),
        Err(s) => {
            let _ = tx.send(Err(s)).await;
            return "a bad first request";
        }
    }
    drop(first);
    // Deliveries taken from the member and not yet in a response: at most
    // the window.
    let mut pending: VecDeque<Delivery> = VecDeque::new();
    // Requests still come: a half-close ends them, not the deliveries
    // (grpcurl, or a client that only reads, half-closes after its first
    // request); the call ends when the client cancels or goes.
    let mut reading = true;
    // A stop ends pulls at once (UNAVAILABLE: the client goes elsewhere or
    // comes back), rather than have the server wait out its grace for
    // calls that never end by themselves. Looked at once a second: a flag
    // is all a pause sets.
    let mut watch = tokio::time::interval(STOP_CHECK);
    let why = loop {
        confirm.start_sync(&member);
        tokio::select! {
            settled = next_answer(&mut confirm.answers), if confirm.answering() => {
                confirm.answered(settled)
            }
            synced = synced(&mut confirm.sync), if confirm.syncing() => confirm.durable(synced),
            batch = member.deliveries.recv(), if pending.is_empty() => {
                let Some(batch) = batch else {
                    let _ = tx.send(Err(Status::unavailable("sluiced is stopping"))).await;
                    break "the daemon is stopping";
                };
                pending.extend(batch);
                // Whatever else the group handed meanwhile joins it.
                while let Ok(more) = member.deliveries.try_recv() {
                    pending.extend(more);
                }
            }
            permit = tx.reserve(), if !pending.is_empty() || confirm.ready.is_some() => {
                let Ok(permit) = permit else { break "the client went away" };
                let mut r = response(&mut pending);
                r.confirmation = confirm.ready.take();
                permit.send(Ok(r));
            }
            r = inbound.message(), if reading && confirm.has_room() => match r {
                Ok(Some(r)) => match settle(&member, &r, &mut declared, true).await {
                    Ok(o) => confirm.asked(o),
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        break "a bad request";
                    }
                },
                Ok(None) => reading = false,
                Err(_) => break "the stream broke",
            },
            _ = tx.closed() => break "the client went away",
            _ = watch.tick() => if s.stopping.load(Relaxed) {
                // Handed back first, so the status is the last thing sent.
                drop(member);
                let _ = tx.send(Err(Status::unavailable("sluiced is stopping"))).await;
                return "the daemon is stopping";
            },
        }
    };
    // Leave now: what the member held (and `pending`) goes back to the
    // group at once.
    drop(member);
    why
}

/// One response of deliveries from `pending`: up to [`RESPONSE_BYTES`] of
/// payload, at least one message if there is one.
fn response(pending: &mut VecDeque<Delivery>) -> StreamingPullResponse {
    let now = Instant::now();
    let mut messages = Vec::new();
    let mut bytes = 0;
    while let Some(d) = pending.front() {
        let len = d.record.payload.len();
        if !messages.is_empty() && bytes + len > RESPONSE_BYTES {
            break;
        }
        bytes += len;
        let Some(d) = pending.pop_front() else { break };
        messages.push(received(d, now));
    }
    StreamingPullResponse {
        messages,
        ..Default::default()
    }
}

fn received(d: Delivery, now: Instant) -> ReceivedMessage {
    let w = to_wire(d, now);
    ReceivedMessage {
        offset: w.offset,
        delivery_attempt: w.delivery,
        publish_time: Some(prost_types::Timestamp {
            seconds: (w.timestamp_us / 1_000_000) as i64,
            nanos: (w.timestamp_us % 1_000_000) as i32 * 1_000,
        }),
        producer_id: w.producer,
        seq: w.seq,
        payload: w.payload,
        ack_deadline: Some(prost_types::Duration {
            seconds: (w.deadline_ms / 1_000) as i64,
            nanos: (w.deadline_ms % 1_000) as i32 * 1_000_000,
        }),
    }
}

/// Hands a request's acks, nacks, deadline changes and flow control to the
/// member. `later`: not the first request (whose flow control is the
/// join's). The group's answer (which offsets took effect), if the
/// request had any to settle.
async fn settle(
    member: &Member,
    r: &StreamingPullRequest,
    declared: &mut (u32, u64),
    later: bool,
) -> Result<Option<oneshot::Receiver<Settled>>, Status> {
    if r.nacks.iter().any(|n| n.offsets.len() > MAX_SETTLE_OFFSETS)
        || r.deadline_changes
            .iter()
            .any(|c| c.offsets.len() > MAX_SETTLE_OFFSETS)
    {
        return Err(Status::invalid_argument(format!(
            "a nack or deadline change names at most {MAX_SETTLE_OFFSETS} offsets"
        )));
    }
    // A full group queue holds this reader (and so the client, through
    // HTTP/2's window), not memory.
    member.group.room().await;
    let s = Settle {
        acks: r.ack_offsets.clone(),
        nacks: r
            .nacks
            .iter()
            .filter(|n| !n.offsets.is_empty())
            .map(|n| (n.offsets.clone(), duration(n.delay.as_ref())))
            .collect(),
        extends: r
            .deadline_changes
            .iter()
            .filter(|c| !c.offsets.is_empty())
            .map(|c| {
                let by = match &c.extension {
                    None => member.group.config().ack_deadline,
                    Some(d) => duration(Some(d)),
                };
                (c.offsets.clone(), by)
            })
            .collect(),
    };
    let answer = (!s.acks.is_empty() || !s.nacks.is_empty() || !s.extends.is_empty())
        .then(|| member.settle(s));
    if later && (r.max_outstanding_messages != 0 || r.max_outstanding_bytes != 0) {
        if r.max_outstanding_messages != 0 {
            declared.0 = r.max_outstanding_messages;
        }
        if r.max_outstanding_bytes != 0 {
            declared.1 = r.max_outstanding_bytes;
        }
        member.set_credit(Credit::Window {
            messages: declared.0,
            bytes: declared.1,
        });
    }
    Ok(answer)
}

/// The oldest of the group's answers (never, with none to come). Apart
/// from [`Confirm`] so that it and [`synced`] borrow different fields.
async fn next_answer(answers: &mut VecDeque<oneshot::Receiver<Settled>>) -> Option<Settled> {
    match answers.front_mut() {
        Some(rx) => rx.await.ok(),
        None => std::future::pending().await,
    }
}

/// The running sync's end (never, with none running).
async fn synced(sync: &mut Option<(Sync, Settled)>) -> Result<(), ConsumeError> {
    match sync {
        Some((f, _)) => f.await,
        None => std::future::pending().await,
    }
}

type Sync = Pin<Box<dyn Future<Output = Result<(), ConsumeError>> + Send>>;

/// What one pull owes its client in confirmations: the group's answers
/// to come, the acks waiting for the journal's fdatasync, the
/// confirmation ready to send.
#[derive(Default)]
struct Confirm {
    /// The group's answers, in the order the requests were read.
    answers: VecDeque<oneshot::Receiver<Settled>>,
    /// Answered, not yet synced (acked), or to go with the next sync
    /// (ignored).
    unsynced: Settled,
    /// The sync running, and what it makes durable.
    sync: Option<(Sync, Settled)>,
    /// To send with the next response.
    ready: Option<AckConfirmation>,
}

impl Confirm {
    fn asked(&mut self, answer: Option<oneshot::Receiver<Settled>>) {
        self.answers.extend(answer);
    }

    fn answering(&self) -> bool {
        !self.answers.is_empty()
    }

    /// The oldest answer came (`None`: the group is gone, which ends the
    /// pull anyway).
    fn answered(&mut self, settled: Option<Settled>) {
        self.answers.pop_front();
        if let Some(s) = settled {
            self.unsynced.acked.extend(s.acked);
            self.unsynced.ignored.extend(s.ignored);
        }
    }

    /// Starts a sync of what was answered, if none runs. With nothing
    /// acked, nothing waits for a sync: the ignored offsets are ready.
    fn start_sync(&mut self, member: &Member) {
        if self.sync.is_some() {
            return;
        }
        let s = std::mem::take(&mut self.unsynced);
        if s.acked.is_empty() {
            if !s.ignored.is_empty() {
                self.durable_now(s);
            }
            return;
        }
        let group = member.group.clone();
        self.sync = Some((Box::pin(async move { group.sync().await }), s));
    }

    fn syncing(&self) -> bool {
        self.sync.is_some()
    }

    /// The sync ended: what it covered is confirmed (if it failed, the
    /// daemon is stopping and the pull ends: nothing is said durable).
    fn durable(&mut self, r: Result<(), ConsumeError>) {
        if let Some((_, s)) = self.sync.take() {
            if r.is_ok() {
                self.durable_now(s);
            }
        }
    }

    fn durable_now(&mut self, s: Settled) {
        let c = self.ready.get_or_insert_with(AckConfirmation::default);
        c.acked_offsets.extend(s.acked);
        c.ignored_offsets.extend(s.ignored);
    }

    /// Whether another request may be read.
    fn has_room(&self) -> bool {
        let waiting = self.unsynced.acked.len()
            + self.unsynced.ignored.len()
            + self
                .sync
                .as_ref()
                .map_or(0, |(_, s)| s.acked.len() + s.ignored.len())
            + self
                .ready
                .as_ref()
                .map_or(0, |c| c.acked_offsets.len() + c.ignored_offsets.len());
        self.answers.len() < MAX_UNCONFIRMED_REQUESTS && waiting < MAX_CONFIRM_OFFSETS
    }
}

/// A protobuf duration as a std one: negative is zero, too long is cut by
/// the group (consumers.max_ack_extension).
fn duration(d: Option<&prost_types::Duration>) -> Duration {
    match d {
        None => Duration::ZERO,
        Some(d) if d.seconds < 0 || (d.seconds == 0 && d.nanos <= 0) => Duration::ZERO,
        Some(d) => Duration::new(d.seconds as u64, d.nanos.clamp(0, 999_999_999) as u32),
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn clip(s: &str, max: usize) -> &str {
    let mut at = s.len().min(max);
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    &s[..at]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_never_negative() {
        let d = |seconds, nanos| duration(Some(&prost_types::Duration { seconds, nanos }));
        assert_eq!(d(-5, 0), Duration::ZERO);
        assert_eq!(d(1, 500_000_000), Duration::from_millis(1500));
        assert_eq!(duration(None), Duration::ZERO);
    }
}
