//! One forwarded stream: the member of group `forward.<name>` that
//! publishes each delivery to JetStream and acks it on its PubAck.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::jetstream::Context;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use sluice_transport::quic::control::StartAt;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::config::{ForwardConfig, Storage};
use super::confirm::ForwardConfirm;
use super::metrics::{ErrorKind, ForwardCounters};
use crate::consume::group::{Credit, Delivery};
use crate::consume::service::Consumers;
use crate::log_limit::LogLimit;

/// The first delay before a failed message comes again; it doubles with
/// each failure in a row, up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// JetStream's duplicate window for a stream the forward creates: resends
/// after a restart of sluiced come within seconds.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

pub struct Run {
    pub forward: Arc<ForwardConfig>,
    pub stream: String,
    pub js: watch::Receiver<Option<Context>>,
    pub consumers: Arc<Consumers>,
    pub stats: Arc<ForwardCounters>,
    pub stop: watch::Receiver<bool>,
    /// `ack = "replicated"`: told what is sent and PubAcked (confirm.rs).
    pub confirm: Option<ForwardConfirm>,
}

/// A publish's outcome: its offset, when it was sent, the PubAck or error.
type Outcome = (u64, Instant, Result<(), PublishError>);

impl Run {
    pub async fn run(mut self) {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {}
            _ = self.forward_all() => {}
        }
        self.stats.in_flight(&self.stream).store(0, Relaxed);
    }

    async fn forward_all(&mut self) {
        let f = self.forward.clone();
        let js = match self.js.wait_for(|c| c.is_some()).await {
            Ok(c) => c.clone().expect("waited for it"),
            Err(_) => return,
        };
        let subject = f.subject_of(&self.stream);
        if f.create.is_some() {
            self.create_stream(&js).await;
        }
        let name = format!("forward {} to {}", f.name, f.target_stream);
        let mut member = match self
            .consumers
            .join(
                &self.stream,
                &f.group(),
                StartAt::Earliest,
                name,
                Credit::Window {
                    messages: f.max_in_flight,
                    bytes: u64::MAX,
                },
                SocketAddr::from(([0, 0, 0, 0], 0)),
            )
            .await
        {
            Ok(m) => m,
            Err(e) => {
                error!(forward = %f.name, stream = %self.stream, "cannot join the forward's consumer group: {e}");
                return;
            }
        };
        // ack = "replicated": below the group's floor all is in JetStream.
        if let Some(c) = &self.confirm {
            c.joined(member.group.stats().floor)
        }
        let mut pending = FuturesUnordered::new();
        let mut backoff = MIN_BACKOFF;
        let mut limit = LogLimit::new(2);
        let in_flight = self.stats.in_flight(&self.stream);
        let id_prefix = format!("{}/", self.stream);
        info!(forward = %f.name, stream = %self.stream, %subject, "forwarding");
        loop {
            tokio::select! {
                done = pending.next(), if !pending.is_empty() => {
                    let Some(first) = done else { continue };
                    let mut acked = Vec::new();
                    let mut nacked = Vec::new();
                    let mut outcome: Option<Outcome> = Some(first);
                    // Every PubAck ready now, then one ack to the group.
                    while let Some((offset, sent, r)) = outcome.take() {
                        in_flight.fetch_sub(1, Relaxed);
                        match r {
                            Ok(()) => {
                                self.stats.forwarded(&self.stream);
                                self.stats.latency.observe(sent.elapsed().as_micros() as u64);
                                acked.push(offset);
                                backoff = MIN_BACKOFF;
                            }
                            Err(e) => {
                                let kind = self.kind_of(&e);
                                self.stats.error(kind);
                                self.say(&mut limit, kind, offset, &subject, &e);
                                nacked.push(offset);
                            }
                        }
                        outcome = pending.next().now_or_never().flatten();
                    }
                    // ack = "replicated": the producers' acks wait for these PubAcks.
                    if let Some(c) = &self.confirm { c.forwarded(&acked) }
                    if !acked.is_empty() {
                        member.ack(ranges(acked));
                    }
                    if !nacked.is_empty() {
                        member.nack(nacked, backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
                batch = member.deliveries.recv() => {
                    let Some(batch) = batch else {
                        // The group stopped (the daemon stops).
                        return;
                    };
                    for d in batch {
                        let offset = d.offset;
                        // ack = "replicated": what is in flight of each producer.
                        if let Some(c) = &self.confirm { c.sending(offset, d.record.producer, d.record.seq) }
                        let msg = message(&id_prefix, &self.stream, &f.target_stream, d);
                        let sent = Instant::now();
                        in_flight.fetch_add(1, Relaxed);
                        match js.send_publish(subject.clone(), msg).await {
                            Ok(ack) => pending.push(async move {
                                (offset, sent, ack.await.map(|_| ()))
                            }.boxed()),
                            Err(e) => pending.push(async move { (offset, sent, Err(e)) }.boxed()),
                        }
                    }
                }
            }
        }
    }

    /// Creates the target stream if it is missing, retrying until the
    /// cluster answers.
    async fn create_stream(&self, js: &Context) {
        let f = &self.forward;
        let Some(c) = &f.create else { return };
        let config = StreamConfig {
            name: f.target_stream.clone(),
            subjects: f.streams.iter().map(|s| f.subject_of(s)).collect(),
            num_replicas: c.replicas,
            storage: match c.storage {
                Storage::File => StorageType::File,
                Storage::Memory => StorageType::Memory,
            },
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        let mut wait = MIN_BACKOFF;
        let mut limit = LogLimit::new(1);
        loop {
            match js.get_or_create_stream(config.clone()).await {
                Ok(_) => return,
                Err(e) => {
                    let down = self.stats.connected.load(Relaxed) == 0;
                    self.stats.error(if down {
                        ErrorKind::Unreachable
                    } else {
                        ErrorKind::CreateStream
                    });
                    if let Some(n) = limit.allow(Instant::now()) {
                        if down {
                            warn!(forward = %f.name, servers = ?f.servers, suppressed = n,
                                  "the NATS cluster is unreachable: cannot create the JetStream stream {} yet ({e}); messages wait in the spool", f.target_stream);
                        } else {
                            warn!(forward = %f.name, target = %f.target_stream, suppressed = n,
                                  "cannot create or find the JetStream stream: {e}; trying again");
                        }
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn kind_of(&self, e: &PublishError) -> ErrorKind {
        match e.kind() {
            PublishErrorKind::StreamNotFound => ErrorKind::NoStream,
            _ if self.stats.connected.load(Relaxed) == 0 => ErrorKind::Unreachable,
            PublishErrorKind::TimedOut => ErrorKind::Timeout,
            PublishErrorKind::BrokenPipe => ErrorKind::Unreachable,
            _ => ErrorKind::Other,
        }
    }

    /// Logs a failed publish, a few a second.
    fn say(
        &self,
        limit: &mut LogLimit,
        kind: ErrorKind,
        offset: u64,
        subject: &str,
        e: &PublishError,
    ) {
        let Some(n) = limit.allow(Instant::now()) else {
            return;
        };
        let f = &self.forward;
        let stream = &self.stream;
        match kind {
            // JetStream's "no responders": nobody stores the subject now.
            // That is a missing stream, or one that lists other subjects,
            // but also a stream between leaders (a leader killed, an
            // election under way): the client cannot tell which.
            ErrorKind::NoStream => error!(forward = %f.name, %stream, offset, suppressed = n,
                "no JetStream stream takes subject {subject}: target_stream {:?} is missing, does not list the subject, or has no leader right now (an election); the message waits in the spool",
                f.target_stream),
            ErrorKind::Unreachable => warn!(forward = %f.name, %stream, offset, suppressed = n,
                "the NATS cluster is unreachable ({e}); the message waits in the spool"),
            _ => warn!(forward = %f.name, %stream, offset, suppressed = n,
                "publish to {subject} failed ({e}); sent again after a backoff"),
        }
    }
}

/// Offsets (any order) as sorted ranges.
fn ranges(mut offsets: Vec<u64>) -> Vec<std::ops::Range<u64>> {
    offsets.sort_unstable();
    let mut out: Vec<std::ops::Range<u64>> = Vec::new();
    for o in offsets {
        match out.last_mut() {
            Some(r) if r.end == o => r.end = o + 1,
            _ => out.push(o..o + 1),
        }
    }
    out
}

/// A delivery as a JetStream message: its id is the same whichever daemon
/// sends it (a producer's seq is its own), so JetStream stores it once.
fn message(id_prefix: &str, stream: &str, target: &str, d: Delivery) -> PublishMessage {
    let r = d.record;
    let mut h = HeaderMap::new();
    h.insert(
        NATS_MESSAGE_ID,
        format!("{id_prefix}{}/{}", r.producer, r.seq).as_str(),
    );
    h.insert(async_nats::header::NATS_EXPECTED_STREAM, target);
    h.insert("Sluice-Stream", stream);
    h.insert("Sluice-Producer", r.producer.to_string().as_str());
    h.insert("Sluice-Seq", r.seq.to_string().as_str());
    h.insert("Sluice-Offset", d.offset.to_string().as_str());
    h.insert("Sluice-Time", r.timestamp_us.to_string().as_str());
    PublishMessage::build().headers(h).payload(r.payload)
}

#[cfg(test)]
mod tests {
    use super::ranges;

    #[test]
    fn offsets_become_sorted_ranges() {
        assert_eq!(ranges(vec![5, 3, 4, 9, 1]), vec![1..2, 3..6, 9..10]);
        assert!(ranges(vec![]).is_empty());
    }
}
