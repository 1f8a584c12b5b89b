//! The NATS client alone, two ways, each publishing the run's messages
//! straight to a stream of its own: the headers the forwarder sets, one
//! subject per producer (`{base}.{producer}`), one task per producer on
//! one connection.
//!
//! - [`windowed`]: `send_publish` and the PubAck futures awaited in
//!   order, at most `window` outstanding per task (async-nats's usual way
//!   to publish fast); each PubAck's latency from its publish call;
//! - [`one_at_a_time`]: one publish awaited before the next: the PubAck
//!   latency of an unloaded stream (what a producer waiting on a
//!   replicated ack pays at least).

use std::collections::VecDeque;
use std::time::Instant;

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;

use super::jetstream::headers;
use crate::load::{histogram, micros};

/// What a publishing run did.
pub struct Published {
    /// From the first publish to the last PubAck.
    pub seconds: f64,
    pub acked: u64,
    /// PubAcks marked duplicate (none expected: every id is new).
    pub duplicates: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Publish call → PubAck, per message.
    pub latency: Histogram<u64>,
}

/// Who publishes what: `producers` tasks of `each` messages of `payload`,
/// to subjects `{base}.{producer}` of stream `target`; the message ids
/// name `stream` as the forwarder's do.
#[derive(Clone)]
pub struct Load {
    pub base: String,
    pub target: String,
    pub stream: String,
    pub producers: usize,
    pub each: u64,
    pub payload: Bytes,
}

impl Load {
    /// Producer `k`'s id (as the sluice producers': 1, 2, ...).
    pub fn producer(k: usize) -> u64 {
        k as u64 + 1
    }

    pub fn subject(&self, producer: u64) -> String {
        format!("{}.{producer}", self.base)
    }

    pub fn message(&self, producer: u64, seq: u64) -> PublishMessage {
        let h = headers(
            &self.target,
            &self.stream,
            producer,
            seq,
            (producer - 1) * self.each + seq - 1,
            0,
        );
        PublishMessage::build()
            .headers(h)
            .payload(self.payload.clone())
    }
}

#[derive(Default)]
struct Tally {
    acked: u64,
    duplicates: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn fail(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| e.to_string());
    }

    fn add(&mut self, o: Tally) {
        self.acked += o.acked;
        self.duplicates += o.duplicates;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

async fn settle(t0: Instant, f: PublishAckFuture, tally: &mut Tally, h: &mut Histogram<u64>) {
    match f.await {
        Ok(ack) => {
            tally.acked += 1;
            tally.duplicates += u64::from(ack.duplicate);
            h.saturating_record(micros(t0.elapsed()));
        }
        Err(e) => tally.fail(format!("PubAck: {e}")),
    }
}

/// One producer's messages, `window` outstanding.
async fn producer(js: Context, load: Load, k: usize, window: usize) -> (Tally, Histogram<u64>) {
    let p = Load::producer(k);
    let subject = load.subject(p);
    let mut tally = Tally::default();
    let mut h = histogram();
    let mut out: VecDeque<(Instant, PublishAckFuture)> = VecDeque::with_capacity(window);
    for seq in 1..=load.each {
        if out.len() >= window {
            let (t0, f) = out.pop_front().expect("a full window");
            settle(t0, f, &mut tally, &mut h).await;
        }
        let t0 = Instant::now();
        match js.send_publish(subject.clone(), load.message(p, seq)).await {
            Ok(f) => out.push_back((t0, f)),
            Err(e) => {
                // The connection is broken: the rest would fail alike.
                tally.fail(format!("publish: {e}"));
                tally.errors += load.each - seq;
                break;
            }
        }
    }
    for (t0, f) in out {
        settle(t0, f, &mut tally, &mut h).await;
    }
    (tally, h)
}

/// Every producer's messages with `window` publishes outstanding each.
pub async fn windowed(js: &Context, load: &Load, window: usize) -> Published {
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..load.producers)
        .map(|k| tokio::spawn(producer(js.clone(), load.clone(), k, window.max(1))))
        .collect();
    let mut tally = Tally::default();
    let mut latency = histogram();
    for t in tasks {
        match t.await {
            Ok((t, h)) => {
                tally.add(t);
                let _ = latency.add(&h);
            }
            Err(e) => tally.fail(format!("a publishing task: {e}")),
        }
    }
    Published {
        seconds: t0.elapsed().as_secs_f64(),
        acked: tally.acked,
        duplicates: tally.duplicates,
        errors: tally.errors,
        first_error: tally.first_error,
        latency,
    }
}

/// `n` messages of producer 1, each awaited before the next.
pub async fn one_at_a_time(js: &Context, load: &Load, n: u64) -> Published {
    let t0 = Instant::now();
    let mut tally = Tally::default();
    let mut latency = histogram();
    let subject = load.subject(1);
    for seq in 1..=n {
        let t = Instant::now();
        match js.send_publish(subject.clone(), load.message(1, seq)).await {
            Ok(f) => settle(t, f, &mut tally, &mut latency).await,
            Err(e) => tally.fail(format!("publish: {e}")),
        }
    }
    Published {
        seconds: t0.elapsed().as_secs_f64(),
        acked: tally.acked,
        duplicates: tally.duplicates,
        errors: tally.errors,
        first_error: tally.first_error,
        latency,
    }
}
