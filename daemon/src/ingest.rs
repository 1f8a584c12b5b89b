//! Ingest: sessions of the UDP endpoint feed the spool. A message's seq is
//! marked durable only when the spool says its batch is on stable storage,
//! and the credit each session gets follows the spool's health, so a slow or
//! full disk slows producers instead of growing memory.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_transport::proto::{EndpointEvent, Incoming, Receiver};
use sluice_transport::udp::{Control, Owner};
use sluice_transport::wire::CloseCode;
use tracing::{error, info, warn};

use crate::metrics::Metrics;
use crate::spool::writer::now_us;
use crate::spool::{Outcome, Record, Spool, Stream};

/// Above this much data waiting for the spool writer, no new credit.
const BACKLOG_LIMIT: u64 = 256 << 20;

/// The endpoint's owner in `sluiced`.
pub struct Ingest {
    spool: Arc<Spool>,
    auto_create: bool,
    credit: u32,
    metrics: Arc<Metrics>,
    /// Open sessions and their stream, for credit updates.
    sessions: Arc<Mutex<HashMap<u64, Stream>>>,
}

impl Ingest {
    pub fn new(spool: Arc<Spool>, auto_create: bool, credit: u32, metrics: Arc<Metrics>) -> Self {
        Ingest {
            spool,
            auto_create,
            credit,
            metrics,
            sessions: Arc::default(),
        }
    }

    /// The credit updater for this owner's sessions (started once the
    /// endpoint is served and its `Control` exists).
    pub fn credits(&self) -> Credits {
        Credits {
            sessions: self.sessions.clone(),
            metrics: self.metrics.clone(),
            full: self.credit,
        }
    }

    fn stream_for(&self, name: &str) -> Result<Stream, String> {
        let exists = self.spool.stream_names().iter().any(|n| n == name);
        if !exists && !self.auto_create {
            return Err(format!("no stream {name:?} (streams.auto_create is off)"));
        }
        self.spool.stream(name).map_err(|e| e.to_string())
    }
}

/// Re-grants credit to every open session from its stream's health.
pub struct Credits {
    sessions: Arc<Mutex<HashMap<u64, Stream>>>,
    metrics: Arc<Metrics>,
    full: u32,
}

impl Credits {
    /// Every `every`: full credit, or none while the disk is full or the
    /// writer is far behind.
    pub fn spawn(self, control: Control, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let sessions: Vec<(u64, Stream)> = self
                    .sessions
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (*k, v.clone()))
                    .collect();
                for (id, stream) in sessions {
                    let credit = credit_for(&stream, self.full);
                    self.metrics
                        .stream(stream.name())
                        .credit
                        .store(credit as u64, Ordering::Relaxed);
                    control.set_credit(id, credit);
                }
            }
        })
    }
}

fn credit_for(stream: &Stream, full: u32) -> u32 {
    let h = stream.health();
    if h.disk_full || h.backlog_bytes > BACKLOG_LIMIT {
        0
    } else {
        full
    }
}

impl Owner for Ingest {
    fn accept(&mut self, inc: &Incoming) -> Result<(u64, u32), (CloseCode, String)> {
        let stream = self.stream_for(&inc.hello.stream).map_err(|reason| {
            self.metrics
                .sessions_rejected
                .fetch_add(1, Ordering::Relaxed);
            warn!(peer = %inc.peer, stream = %inc.hello.stream, %reason, "session refused");
            (CloseCode::Rejected, reason)
        })?;
        // Where this producer stands: asked of the writer, so it reflects
        // every batch already durable.
        let ask = stream.highest_seq(inc.hello.producer_id);
        let durable = tokio::task::block_in_place(|| ask.blocking_recv())
            .map_err(|_| (CloseCode::ShuttingDown, "spool is closing".to_owned()))?
            .unwrap_or(0);
        info!(peer = %inc.peer, producer = inc.hello.producer_id, stream = %inc.hello.stream, durable, "session open");
        Ok((durable, credit_for(&stream, self.credit)))
    }

    fn deliver(&mut self, r: &mut Receiver, control: &Control) {
        let session = r.session_id();
        let stream = {
            let mut sessions = self.sessions.lock().unwrap();
            match sessions.get(&session) {
                Some(s) => s.clone(),
                None => match self.spool.stream(r.stream()) {
                    Ok(s) => {
                        sessions.insert(session, s.clone());
                        self.metrics
                            .sessions
                            .store(sessions.len() as u64, Ordering::Relaxed);
                        s
                    }
                    Err(e) => {
                        error!(error = %e, "stream vanished under an open session");
                        return;
                    }
                },
            }
        };
        let producer = r.producer_id();
        let ts = now_us();
        let mut records = Vec::new();
        let mut bytes = 0;
        while let Some(m) = r.poll_message() {
            bytes += m.payload.len() as u64;
            records.push(Record {
                producer,
                seq: m.seq,
                timestamp_us: ts,
                payload: m.payload,
            });
        }
        let Some(last) = records.last().map(|r| r.seq) else {
            return;
        };
        let m = self.metrics.stream(stream.name());
        m.messages_in
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        m.bytes_in.fetch_add(bytes, Ordering::Relaxed);
        let ack = stream.append_batch(records);
        let control = control.clone();
        // Batches of one stream complete in order, so acks go out in order.
        tokio::spawn(async move {
            match ack.await {
                Ok(Ok(outcomes)) => {
                    let dups = outcomes
                        .iter()
                        .filter(|o| **o == Outcome::Duplicate)
                        .count() as u64;
                    m.duplicates.fetch_add(dups, Ordering::Relaxed);
                    m.stored
                        .fetch_add(outcomes.len() as u64 - dups, Ordering::Relaxed);
                    control.mark_durable(session, last);
                }
                Ok(Err(e)) => {
                    m.append_errors.fetch_add(1, Ordering::Relaxed);
                    error!(error = %e, session, "append failed: not acked, the producer will retransmit");
                }
                Err(_) => {}
            }
        });
    }

    fn closed(&mut self, ev: &EndpointEvent) {
        let EndpointEvent::Closed {
            session_id,
            producer_id,
            stream,
            reason,
        } = ev;
        let mut sessions = self.sessions.lock().unwrap();
        sessions.remove(session_id);
        self.metrics
            .sessions
            .store(sessions.len() as u64, Ordering::Relaxed);
        info!(session = session_id, producer = producer_id, %stream, %reason, "session closed");
    }
}
