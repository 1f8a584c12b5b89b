//! A consumer's QUIC stream: it joins its group as a member, deliveries go
//! out as long frames, and its acks, nacks, extensions, credit, fetches and
//! syncs come in. The member leaves when the stream or connection ends, and
//! what it held is delivered again.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quinn::SendStream;
use sluice_transport::quic::consume::{self, FromConsumer, ToConsumer};
use sluice_transport::quic::control::{ConsumeMode, Control, RefuseCode, StartAt};
use sluice_transport::quic::frame::{self, FramedRecv};
use tokio::sync::mpsc;
use tracing::debug;

use crate::consume::group::{Credit, Delivery};
use crate::consume::service::{to_wire, ConsumeError, Consumers, Member};

/// Most bytes of deliveries gathered into one write.
const WRITE_BATCH: usize = 256 << 10;

/// What a subscriber asked for.
pub struct Subscription {
    pub stream: String,
    pub group: String,
    pub start: StartAt,
    pub mode: ConsumeMode,
    pub max_messages: u32,
    pub max_bytes: u64,
}

/// The credit a subscription starts with.
fn credit(mode: ConsumeMode, max_messages: u32, max_bytes: u64) -> Credit {
    match mode {
        ConsumeMode::Push => Credit::Window {
            messages: max_messages,
            bytes: max_bytes.max(1),
        },
        ConsumeMode::Pull => Credit::Fetch { left: 0 },
    }
}

/// Serves one subscriber's stream until it ends.
pub async fn serve(
    mut send: SendStream,
    mut recv: FramedRecv,
    consumers: &Consumers,
    sub: Subscription,
    peer: SocketAddr,
) {
    let name = format!("{peer}");
    let joined = consumers
        .join(
            &sub.stream,
            &sub.group,
            sub.start,
            name,
            credit(sub.mode, sub.max_messages, sub.max_bytes),
            peer,
        )
        .await;
    let mut member = match joined {
        Ok(m) => m,
        Err(e) => {
            let code = match e {
                ConsumeError::NoSuchStream(_) => RefuseCode::NoSuchStream,
                ConsumeError::BadGroup(_) => RefuseCode::BadRequest,
                ConsumeError::TooManyGroups { .. } => RefuseCode::Unavailable,
                _ => RefuseCode::Unavailable,
            };
            crate::quic::refuse(&mut send, code, &e.to_string()).await;
            return;
        }
    };
    let ok = Control::Subscribed {
        member: member.id,
        ack_deadline_ms: member.group.config().ack_deadline.as_millis() as u64,
        max_deliveries: member.group.config().max_deliveries,
    };
    if frame::write(&mut send, &ok.encode()).await.is_err() {
        return;
    }
    recv.set_long();
    debug!(%peer, stream = %sub.stream, group = %sub.group, member = member.id, "subscribed");
    // Answers that complete later (syncs, fetches) come back through here,
    // so that only this task writes to the stream. Bounded: one fetch at a
    // time per member (its messages within the group's read-ahead), and
    // syncs only as fast as the group's queue lets this reader send them.
    let (answers, mut answered) = mpsc::unbounded_channel::<ToConsumer>();
    let mut out = Vec::new();
    loop {
        out.clear();
        tokio::select! {
            batch = member.deliveries.recv() => {
                let Some(batch) = batch else { break };
                let mut bytes = frames_len(&batch);
                let mut batches = vec![batch];
                while bytes < WRITE_BATCH {
                    match member.deliveries.try_recv() {
                        Ok(batch) => {
                            bytes += frames_len(&batch);
                            batches.push(batch);
                        }
                        Err(_) => break,
                    }
                }
                // Encoded into a buffer of the exact size, handed to the
                // stream as it is (no copy into the stream's own buffer).
                // One clock reading for it all: deadlines are in ms.
                let now = Instant::now();
                let mut frames = Vec::with_capacity(bytes);
                for batch in batches {
                    put_deliveries(&mut frames, batch, now);
                }
                if send.write_chunk(frames.into()).await.is_err() {
                    break;
                }
            }
            a = answered.recv() => {
                let Some(a) = a else { break };
                a.put_frame(&mut out);
                while let Ok(a) = answered.try_recv() {
                    a.put_frame(&mut out);
                }
            }
            f = recv.next() => match f {
                Ok(Some(body)) => match FromConsumer::decode(&body) {
                    Ok(m) => {
                        // A full group queue holds this reader, and so the
                        // consumer (its stream's window fills), not memory.
                        member.group.room().await;
                        handle(m, &member, &answers);
                    }
                    Err(e) => {
                        ToConsumer::Error { reason: format!("bad message: {e}") }.put_frame(&mut out);
                        let _ = send.write_all(&out).await;
                        let _ = send.finish();
                        break;
                    }
                },
                Ok(None) | Err(_) => break,
            },
        }
        if !out.is_empty() && send.write_all(&out).await.is_err() {
            break;
        }
    }
    debug!(%peer, member = member.id, "subscriber left");
}

/// Bytes of the Deliver frames of `batch`.
fn frames_len(batch: &[Delivery]) -> usize {
    batch
        .iter()
        .map(|d| 4 + consume::DELIVER_HEADER_LEN + d.record.payload.len())
        .sum()
}

fn put_deliveries(out: &mut Vec<u8>, batch: Vec<Delivery>, now: Instant) {
    for d in batch {
        ToConsumer::Deliver(to_wire(d, now)).put_frame(out);
    }
}

fn handle(m: FromConsumer, member: &Member, answers: &mpsc::UnboundedSender<ToConsumer>) {
    match m {
        FromConsumer::Ack { ranges } => member.ack(ranges),
        FromConsumer::AckUpTo { offset } => member.ack_up_to(offset),
        FromConsumer::Nack { offsets, delay_ms } => {
            member.nack(offsets, Duration::from_millis(delay_ms))
        }
        FromConsumer::Extend { offsets, ms } => member.extend(offsets, Duration::from_millis(ms)),
        FromConsumer::Credit {
            max_messages,
            max_bytes,
        } => member.set_credit(credit(ConsumeMode::Push, max_messages, max_bytes)),
        FromConsumer::Fetch { id, max, wait_ms } => {
            let wait = Duration::from_millis(wait_ms.min(consume::MAX_FETCH_WAIT_MS));
            let got = member.fetch(max, wait);
            let answers = answers.clone();
            tokio::spawn(async move {
                let Ok(got) = got.await else { return };
                // The deliveries, then FetchDone: one channel keeps the order.
                let now = Instant::now();
                for d in got {
                    let _ = answers.send(ToConsumer::Deliver(to_wire(d, now)));
                }
                let _ = answers.send(ToConsumer::FetchDone { id });
            });
        }
        FromConsumer::Sync { id } => {
            let group = member.group.clone();
            let answers = answers.clone();
            tokio::spawn(async move {
                let answer = match group.sync().await {
                    Ok(()) => ToConsumer::Synced { id },
                    // The group stopped (the daemon is stopping): say so
                    // rather than leave the consumer waiting.
                    Err(e) => ToConsumer::Error {
                        reason: e.to_string(),
                    },
                };
                let _ = answers.send(answer);
            });
        }
    }
}
