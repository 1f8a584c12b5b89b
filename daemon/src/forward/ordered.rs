//! Forwarding in order: JetStream fast-ingest batches (nats-server 2.14+,
//! ADR-50) with gap = fail.
//!
//! Many publishes in flight are fast, but a failure among them (a leader
//! election, a dropped connection) lets later messages be stored before an
//! earlier one is sent again: a producer's order breaks. In a fast-ingest
//! batch the server numbers the messages and, with gap = fail, stores a
//! batch's messages only as an unbroken run from its start; a batch cut
//! short (a message lost, a leader change) stores nothing after the cut.
//! So what JetStream holds of a batch is always a prefix of it.
//!
//! The forward keeps every message it sent in a queue until the server's
//! flow ack (or the batch's final PubAck) covers it, then acks its offset
//! to the group. When a batch fails, the forward waits a backoff and sends
//! the whole queue again, in order, in a new batch: the prefix JetStream
//! already has is dropped there by its `Nats-Msg-Id`, or skipped before
//! sending when the target's standing says so (standing.rs); the rest is
//! stored after it. Nothing new is sent before the queue is.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::Stream;
use async_nats::jetstream::Context;
use jetstream_extra::batch_publish_fast::{
    FastPublishError, FastPublishErrorKind, FastPublishExt, FastPublisher, GapMode,
};
use tracing::{info, warn};

use super::connect::ACK_TIMEOUT;
use super::message::{ranges, Outgoing};
use super::metrics::ErrorKind;
use super::run::{Run, MAX_BACKOFF, MIN_BACKOFF};
use super::standing::Standing;
use crate::consume::service::Member;
use crate::log_limit::LogLimit;

/// How long the forward waits for more deliveries before it ends the open
/// batch (its final PubAck confirms the tail the flow acks have not). With
/// `ack = "replicated"` producers wait for that PubAck: the batch ends as
/// soon as no delivery is ready, as a group commit does (what arrives
/// meanwhile goes in the next batch, so batches grow with the load).
const LINGER: Duration = Duration::from_millis(5);

/// Why ordered forwarding ended.
pub enum End {
    /// The group stopped (the daemon stops).
    Stopped,
    /// The target stream does not take batches (`allow_batched` unset):
    /// forward one publish at a time instead.
    NotEnabled,
}

/// A message sent in the open batch, awaiting the server's ack.
struct Sent {
    out: Outgoing,
    /// Its sequence in the open batch (0: not sent in it yet).
    batch_seq: u64,
    sent: Instant,
}

/// A failed step: what kind, and what to say; or the target stream does
/// not take batches at all.
enum Failure {
    Failed { kind: ErrorKind, what: String },
    NotEnabled,
}

pub struct Ordered<'a> {
    run: &'a Run,
    js: Context,
    target: Stream<()>,
    queue: VecDeque<Sent>,
    batch: Option<FastPublisher>,
    standing: Standing,
    /// The server's flow ack in batches of this many messages, at most
    /// three outstanding: about `max_in_flight` messages in flight.
    flow: u16,
}

impl<'a> Ordered<'a> {
    pub fn new(run: &'a Run, js: Context, target: Stream<()>) -> Ordered<'a> {
        let flow = (run.forward.max_in_flight / 3).clamp(1, u32::from(u16::MAX)) as u16;
        Ordered {
            run,
            js,
            target,
            queue: VecDeque::new(),
            batch: None,
            standing: Standing::default(),
            flow,
        }
    }

    /// Forwards until the group stops, or until the stream turns out not
    /// to take batches: then what the queue holds goes back to the group
    /// (nacked) for the next way of forwarding.
    pub async fn forward(&mut self, member: &mut Member) -> End {
        let end = self.forward_until_end(member).await;
        if let End::NotEnabled = end {
            let offsets: Vec<u64> = self.queue.drain(..).map(|s| s.out.offset).collect();
            if !offsets.is_empty() {
                member.nack(offsets, Duration::ZERO);
            }
        }
        end
    }

    async fn forward_until_end(&mut self, member: &mut Member) -> End {
        let mut backoff = MIN_BACKOFF;
        let mut failed = false;
        let mut limit = LogLimit::new(2);
        loop {
            if failed {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                // Another daemon may have written meanwhile, and the failed
                // batch stored an unknown prefix: read where each producer
                // stands again, then send the queue again in a new batch.
                self.standing.forget();
                self.batch = None;
                match self.resend(member).await {
                    Ok(()) => failed = false,
                    Err(Failure::NotEnabled) => return End::NotEnabled,
                    Err(Failure::Failed { kind, what }) => {
                        self.fail(&mut limit, kind, &what);
                        continue;
                    }
                }
            }
            let linger = if self.run.confirm.is_some() {
                Duration::ZERO
            } else {
                LINGER
            };
            let next = if self.queue.is_empty() {
                Ok(member.deliveries.recv().await)
            } else {
                // (A zero timeout still takes a delivery that is ready.)
                tokio::time::timeout(linger, member.deliveries.recv()).await
            };
            let step = match next {
                Ok(None) => return End::Stopped,
                Ok(Some(deliveries)) => {
                    let mut r = Ok(());
                    for d in deliveries {
                        // ack = "replicated": what is in flight of each producer.
                        if let Some(c) = &self.run.confirm {
                            c.sending(d.offset, d.record.producer, d.record.seq)
                        }
                        let subject = self
                            .run
                            .forward
                            .subject_for(&self.run.stream, d.record.producer);
                        let out = Outgoing::new(
                            &self.run.stream,
                            &self.run.forward.target_stream,
                            subject,
                            d,
                        );
                        if r.is_ok() {
                            r = self.send(out, member).await;
                        } else {
                            // After a failure the rest is queued unsent:
                            // it goes out with the resend, in order.
                            self.queue_unsent(out);
                        }
                    }
                    r
                }
                // Nothing more for now: end the batch, so that its final
                // PubAck confirms what the flow acks have not.
                Err(_) => self.close(member).await,
            };
            match step {
                Ok(()) => backoff = MIN_BACKOFF,
                Err(Failure::NotEnabled) => return End::NotEnabled,
                Err(Failure::Failed { kind, what }) => {
                    self.fail(&mut limit, kind, &what);
                    failed = true;
                }
            }
        }
    }

    /// Sends one message in the open batch (opening one if none is),
    /// unless the target already has it.
    async fn send(&mut self, out: Outgoing, member: &Member) -> Result<(), Failure> {
        if self.run.forward.per_producer() {
            let stored = self
                .standing
                .stored(&self.target, out.subject(), out.producer, out.seq)
                .await;
            match stored {
                Ok(true) => {
                    // Stored through an earlier run or another daemon.
                    self.run.stats.already.fetch_add(1, Relaxed);
                    if let Some(c) = &self.run.confirm {
                        c.forwarded(&[out.offset])
                    }
                    member.ack(ranges(vec![out.offset]));
                    return Ok(());
                }
                Ok(false) => {}
                Err(what) => {
                    self.queue_unsent(out);
                    // Most often a lookup not answered in time (an
                    // election, a server going away).
                    return Err(Failure::Failed {
                        kind: self.unreachable_or(ErrorKind::Timeout),
                        what,
                    });
                }
            }
        }
        let message = out.message();
        self.queue_unsent(out);
        if self.batch.is_none() {
            let b = self
                .js
                .fast_publish()
                .flow(self.flow)
                .max_outstanding_acks(3)
                .gap_mode(GapMode::Fail)
                .ack_timeout(ACK_TIMEOUT)
                .build()
                .map_err(|e| self.failure(e))?;
            self.batch = Some(b);
        }
        let batch = self.batch.as_mut().expect("opened above");
        match batch.add_message(message).await {
            Ok(ack) => {
                if let Some(s) = self.queue.back_mut() {
                    s.batch_seq = ack.batch_sequence;
                }
                // Also sets the in-flight gauge.
                self.confirm(ack.ack_sequence, member);
                Ok(())
            }
            Err(e) => {
                self.batch = None;
                Err(self.failure(e))
            }
        }
    }

    /// Sends the whole queue again, in order, in a new batch.
    async fn resend(&mut self, member: &Member) -> Result<(), Failure> {
        let again: Vec<Outgoing> = self.queue.drain(..).map(|s| s.out).collect();
        let mut again = again.into_iter();
        while let Some(out) = again.next() {
            if let Err(f) = self.send(out, member).await {
                // What was not sent stays queued behind, in order.
                for out in again {
                    self.queue_unsent(out);
                }
                return Err(f);
            }
        }
        Ok(())
    }

    /// Queues a message not sent in the open batch (yet): it goes out with
    /// the next resend, in order.
    fn queue_unsent(&mut self, out: Outgoing) {
        self.queue.push_back(Sent {
            out,
            batch_seq: 0,
            sent: Instant::now(),
        });
    }

    /// Ends the open batch; its PubAck confirms all it holds.
    async fn close(&mut self, member: &Member) -> Result<(), Failure> {
        let Some(batch) = self.batch.take() else {
            return Ok(());
        };
        if batch.size() == 0 {
            return Ok(());
        }
        match batch.close().await {
            Ok(_) => {
                self.confirm(u64::MAX, member);
                Ok(())
            }
            Err(e) => Err(self.failure(e)),
        }
    }

    /// Acks to the group every queued message the server has stored:
    /// those of the open batch up to `through` (its flow ack).
    fn confirm(&mut self, through: u64, member: &Member) {
        let mut offsets = Vec::new();
        while let Some(front) = self.queue.front() {
            if front.batch_seq == 0 || front.batch_seq > through {
                break;
            }
            let s = self.queue.pop_front().expect("front exists");
            self.run.stats.forwarded(&self.run.stream);
            self.run
                .stats
                .latency
                .observe(s.sent.elapsed().as_micros() as u64);
            offsets.push(s.out.offset);
        }
        if !offsets.is_empty() {
            // ack = "replicated": the producers' acks wait for these.
            if let Some(c) = &self.run.confirm {
                c.forwarded(&offsets)
            }
            member.ack(ranges(offsets));
        }
        self.run
            .stats
            .in_flight(&self.run.stream)
            .store(self.queue.len() as u64, Relaxed);
    }

    fn failure(&self, e: FastPublishError) -> Failure {
        let kind = match e.kind() {
            FastPublishErrorKind::NotEnabled => return Failure::NotEnabled,
            // Serialization: a reply the batch cannot read, such as the
            // empty "no responders" a stream between leaders gives.
            FastPublishErrorKind::GapDetected
            | FastPublishErrorKind::UnknownBatchId
            | FastPublishErrorKind::Serialization => ErrorKind::Interrupted,
            FastPublishErrorKind::FlowError => ErrorKind::Refused,
            FastPublishErrorKind::Timeout => self.unreachable_or(ErrorKind::Timeout),
            _ => self.unreachable_or(ErrorKind::Other),
        };
        Failure::Failed {
            kind,
            what: e.to_string(),
        }
    }

    fn unreachable_or(&self, kind: ErrorKind) -> ErrorKind {
        if self.run.stats.connected.load(Relaxed) == 0 {
            ErrorKind::Unreachable
        } else {
            kind
        }
    }

    /// Counts a failure and says it, a few a second.
    fn fail(&self, limit: &mut LogLimit, kind: ErrorKind, what: &str) {
        self.run.stats.error(kind);
        let Some(n) = limit.allow(Instant::now()) else {
            return;
        };
        let (fw, stream) = (&self.run.forward.name, &self.run.stream);
        let waiting = self.queue.len();
        match kind {
            // connect.rs says an outage once, with the servers tried.
            ErrorKind::Unreachable => {}
            ErrorKind::Refused => warn!(forward = %fw, %stream, waiting, suppressed = n,
                "JetStream stream {} refused a message ({what}): full (max_bytes, discard new)? sent again after a backoff; producers get backpressure at max_backlog",
                self.run.forward.target_stream),
            ErrorKind::Interrupted => info!(forward = %fw, %stream, waiting, suppressed = n,
                "a batch was cut short ({what}): a leader change or a lost message; what it did not store is sent again, in order"),
            _ => warn!(forward = %fw, %stream, waiting, suppressed = n,
                "forwarding failed ({what}); sent again after a backoff, in order"),
        }
    }
}
