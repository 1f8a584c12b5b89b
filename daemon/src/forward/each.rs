//! Forwarding one publish per message, many in flight: for servers before
//! 2.14 and target streams without `allow_batched`. Each message is acked
//! to the group on its PubAck and nacked with a backoff on an error, so it
//! comes again; JetStream drops a copy by its `Nats-Msg-Id`. A failure
//! among many in flight can let later messages be stored first: a
//! producer's order is not kept across failures here (ordered.rs keeps it).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::Context;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tracing::{error, info, warn};

use super::message::{ranges, Outgoing};
use super::metrics::ErrorKind;
use super::run::{Run, MAX_BACKOFF, MIN_BACKOFF};
use crate::consume::service::Member;
use crate::log_limit::LogLimit;

/// A publish's outcome: its offset, when it was sent, the PubAck or error.
type Outcome = (u64, Instant, Result<(), PublishError>);

pub async fn forward(run: &Run, js: &Context, member: &mut Member) {
    let f = &run.forward;
    let mut pending = FuturesUnordered::new();
    let mut backoff = MIN_BACKOFF;
    let mut limit = LogLimit::new(2);
    let in_flight = run.stats.in_flight(&run.stream);
    info!(forward = %f.name, stream = %run.stream, "forwarding, one publish per message");
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
                            run.stats.forwarded(&run.stream);
                            run.stats.latency.observe(sent.elapsed().as_micros() as u64);
                            acked.push(offset);
                            backoff = MIN_BACKOFF;
                        }
                        Err(e) => {
                            let kind = kind_of(run, &e);
                            run.stats.error(kind);
                            say(run, &mut limit, kind, offset, &e);
                            nacked.push(offset);
                        }
                    }
                    outcome = pending.next().now_or_never().flatten();
                }
                // ack = "replicated": the producers' acks wait for these.
                if let Some(c) = &run.confirm {
                    c.forwarded(&acked)
                }
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
                    // ack = "replicated": what is in flight of each producer.
                    if let Some(c) = &run.confirm {
                        c.sending(d.offset, d.record.producer, d.record.seq)
                    }
                    let subject = f.subject_for(&run.stream, d.record.producer);
                    let out = Outgoing::new(&run.stream, &f.target_stream, subject, d);
                    let offset = out.offset;
                    let m = out.message();
                    let sent = Instant::now();
                    in_flight.fetch_add(1, Relaxed);
                    let publish = async_nats::jetstream::message::PublishMessage::build()
                        .headers(m.headers.unwrap_or_default())
                        .payload(m.payload);
                    match js.send_publish(m.subject, publish).await {
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

fn kind_of(run: &Run, e: &PublishError) -> ErrorKind {
    match e.kind() {
        PublishErrorKind::StreamNotFound => ErrorKind::NoStream,
        _ if run.stats.connected.load(Relaxed) == 0 => ErrorKind::Unreachable,
        PublishErrorKind::TimedOut => ErrorKind::Timeout,
        PublishErrorKind::BrokenPipe => ErrorKind::Unreachable,
        _ => ErrorKind::Other,
    }
}

/// Logs a failed publish, a few a second.
fn say(run: &Run, limit: &mut LogLimit, kind: ErrorKind, offset: u64, e: &PublishError) {
    let Some(n) = limit.allow(Instant::now()) else {
        return;
    };
    let f = &run.forward;
    let stream = &run.stream;
    let subject = f.subjects_of(stream);
    match kind {
        // JetStream's "no responders": nobody stores the subject now.
        // That is a missing stream, or one that lists other subjects,
        // but also a stream between leaders (a leader killed, an
        // election under way): the client cannot tell which.
        ErrorKind::NoStream => error!(forward = %f.name, %stream, offset, suppressed = n,
            "no JetStream stream takes subject {subject}: target_stream {:?} is missing, does not list the subject, or has no leader right now (an election); the message waits in the spool",
            f.target_stream),
        // connect.rs says an outage once, with the servers tried.
        ErrorKind::Unreachable => {}
        _ => warn!(forward = %f.name, %stream, offset, suppressed = n,
            "publish to {subject} failed ({e}); sent again after a backoff"),
    }
}
