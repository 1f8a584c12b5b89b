//! The NATS client alone, the fastest way it offers: jetstream-extra's
//! fast-ingest batch publisher (ADR-50, server 2.14+, a stream with
//! `allow_batched`), one batch per producer task holding all its
//! messages, the server's flow control pacing it (the publisher's
//! defaults: a flow ack at most every 100 messages, two outstanding).
//! Same messages, headers and subjects as [`super::direct`].

use std::time::Instant;

use async_nats::jetstream::message::OutboundMessage;
use async_nats::jetstream::Context;
use jetstream_extra::batch_publish_fast::FastPublishExt;

use super::direct::{Load, Published};
use crate::load::histogram;

/// One producer's batch: how many the server stored, or why it failed.
async fn producer(js: Context, load: Load, k: usize) -> Result<u64, String> {
    let p = Load::producer(k);
    let subject = async_nats::Subject::from(load.subject(p));
    let mut batch = js
        .fast_publish()
        .build()
        .map_err(|e| format!("fast publisher: {e}"))?;
    for seq in 1..=load.each {
        let m: OutboundMessage = load.message(p, seq).outbound_message(subject.clone());
        batch
            .add_message(m)
            .await
            .map_err(|e| format!("fast publish of {seq}: {e}"))?;
    }
    let ack = batch
        .close()
        .await
        .map_err(|e| format!("fast batch commit: {e}"))?;
    Ok(ack.batch_size)
}

/// Every producer's messages, one fast-ingest batch each.
pub async fn batches(js: &Context, load: &Load) -> Published {
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..load.producers)
        .map(|k| tokio::spawn(producer(js.clone(), load.clone(), k)))
        .collect();
    let (mut acked, mut errors, mut first_error) = (0, 0, None);
    for t in tasks {
        match t.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(n) => acked += n,
            Err(e) => {
                errors += load.each;
                first_error.get_or_insert(e);
            }
        }
    }
    Published {
        seconds: t0.elapsed().as_secs_f64(),
        acked,
        duplicates: 0,
        errors,
        first_error,
        // The batch publisher has no per-message ack.
        latency: histogram(),
    }
}
