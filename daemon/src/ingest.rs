//! Ingest: sessions of the UDP endpoint feed the spool. A message's seq is
//! marked durable only when the spool says its batch is on stable storage,
//! and each session's credit follows the spool's health and the session's
//! share of its stream (see [`crate::credit`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use sluice_transport::proto::{Endpoint, EndpointEvent, Incoming, Receiver, ReceiverStats};
use sluice_transport::serve::{Control, Owner};
use sluice_transport::wire::CloseCode;
use tracing::{error, info, warn};

use crate::credit::CreditPolicy;
use crate::log_limit::LogLimit;
use crate::metrics::{Metrics, StreamMetrics};
use crate::spool::writer::now_us;
use crate::spool::{Outcome, Record, Spool, SpoolError, Stream};

/// The endpoint's owner in `sluiced`. It lives in the endpoint's task.
pub struct Ingest {
    spool: Arc<Spool>,
    auto_create: bool,
    policy: CreditPolicy,
    /// Sessions accepted and not yet closed, and the most allowed.
    max_sessions: usize,
    open: usize,
    metrics: Arc<Metrics>,
    sessions: HashMap<u64, Session>,
    /// Appends handed to the spool and not yet answered.
    in_flight: Arc<AtomicU64>,
    /// Anyone can send HELLOs: their refusals are logged at a bounded rate.
    refusals: LogLimit,
}

struct Session {
    stream: Stream,
    metrics: Arc<StreamMetrics>,
    /// The receiver's counters already added to the stream's metrics.
    counted: ReceiverStats,
}

impl Ingest {
    pub fn new(
        spool: Arc<Spool>,
        auto_create: bool,
        policy: CreditPolicy,
        max_sessions: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Ingest {
            spool,
            auto_create,
            policy,
            max_sessions,
            open: 0,
            metrics,
            sessions: HashMap::new(),
            in_flight: Arc::default(),
            refusals: LogLimit::new(5),
        }
    }

    /// How many appends are waiting for the spool: zero once every
    /// delivered message has been answered (a drain waits for that).
    pub fn in_flight(&self) -> Arc<AtomicU64> {
        self.in_flight.clone()
    }

    fn stream_for(&self, name: &str) -> Result<Stream, String> {
        let exists = self.spool.stream_names().iter().any(|n| n == name);
        if !exists && !self.auto_create {
            return Err(format!("no stream {name:?} (streams.auto_create is off)"));
        }
        self.spool.stream(name).map_err(|e| e.to_string())
    }

    /// The session's state, set up on first sight.
    fn session(&mut self, r: &Receiver) -> Option<&mut Session> {
        let id = r.session_id();
        if !self.sessions.contains_key(&id) {
            let stream = match self.spool.stream(r.stream()) {
                Ok(s) => s,
                Err(e) => {
                    error!(error = %e, stream = r.stream(), "stream unavailable under an open session");
                    return None;
                }
            };
            let metrics = self.metrics.stream(stream.name());
            self.sessions.insert(
                id,
                Session {
                    stream,
                    metrics,
                    counted: ReceiverStats::default(),
                },
            );
        }
        self.sessions.get_mut(&id)
    }
}

/// Adds what the receiver counted since `counted` to the stream's metrics.
fn count(m: &StreamMetrics, counted: &mut ReceiverStats, now: &ReceiverStats) {
    m.nacks_sent
        .fetch_add(now.nacks_sent - counted.nacks_sent, Relaxed);
    m.repairs_received
        .fetch_add(now.recovered - counted.recovered, Relaxed);
    m.copies_received
        .fetch_add(now.duplicates - counted.duplicates, Relaxed);
    m.over_credit
        .fetch_add(now.over_credit - counted.over_credit, Relaxed);
    *counted = now.clone();
}

impl Owner for Ingest {
    fn accept(&mut self, inc: &Incoming) -> Result<(u64, u32), (CloseCode, String)> {
        let stream = self.stream_for(&inc.hello.stream).and_then(|s| {
            if self.open >= self.max_sessions {
                Err(format!(
                    "{} sessions open, the most allowed (data.max_sessions)",
                    self.open
                ))
            } else {
                Ok(s)
            }
        });
        let stream = stream.map_err(|reason| {
            self.metrics.sessions_rejected.fetch_add(1, Relaxed);
            if let Some(suppressed) = self.refusals.allow(Instant::now()) {
                warn!(peer = %inc.peer, stream = %inc.hello.stream, %reason, suppressed, "session refused");
            }
            (CloseCode::Rejected, reason)
        })?;
        // Where this producer stands: asked of the writer, so it reflects
        // every batch already durable.
        let ask = stream.highest_seq(inc.hello.producer_id);
        let durable = tokio::task::block_in_place(|| ask.blocking_recv())
            .map_err(|_| (CloseCode::ShuttingDown, "spool is closing".to_owned()))?
            .unwrap_or(0);
        let sessions = self
            .sessions
            .values()
            .filter(|s| s.stream.name() == stream.name())
            .count();
        let credit = self.policy.credit(&stream.health(), sessions + 1, None);
        info!(peer = %inc.peer, producer = inc.hello.producer_id, stream = %inc.hello.stream, durable, "session open");
        self.open += 1;
        Ok((durable, credit))
    }

    fn deliver(&mut self, r: &mut Receiver, control: &Control) {
        let in_flight = self.in_flight.clone();
        let Some(session) = self.session(r) else {
            return;
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
        let m = session.metrics.clone();
        m.messages_in.fetch_add(records.len() as u64, Relaxed);
        m.bytes_in.fetch_add(bytes, Relaxed);
        in_flight.fetch_add(1, Relaxed);
        let control = control.clone();
        let id = r.session_id();
        // Runs on the spool's writer thread once the batch is durable.
        // Batches of one stream complete in order, so acks go out in order.
        let then = move |result: Result<Vec<Outcome>, SpoolError>| {
            match result {
                Ok(outcomes) => {
                    let dups = outcomes
                        .iter()
                        .filter(|o| **o == Outcome::Duplicate)
                        .count() as u64;
                    m.duplicates.fetch_add(dups, Relaxed);
                    m.stored.fetch_add(outcomes.len() as u64 - dups, Relaxed);
                    control.mark_durable(id, last);
                }
                // The spool is closing: nothing is acked.
                Err(SpoolError::Closed) => {}
                Err(e) => {
                    m.append_errors.fetch_add(1, Relaxed);
                    error!(error = %e, session = id, "append failed: not acked; closing the session so the producer resends");
                    control.close(
                        id,
                        CloseCode::StorageError,
                        "the spool could not store a batch",
                    );
                }
            }
            in_flight.fetch_sub(1, Relaxed);
        };
        session.stream.append_batch_then(records, Box::new(then));
    }

    fn closed(&mut self, ev: &EndpointEvent) {
        let EndpointEvent::Closed {
            session_id,
            producer_id,
            stream,
            reason,
            stats,
        } = ev;
        self.open = self.open.saturating_sub(1);
        if let Some(mut s) = self.sessions.remove(session_id) {
            count(&s.metrics, &mut s.counted, stats);
        }
        info!(session = session_id, producer = producer_id, %stream, %reason, "session closed");
    }

    fn tick(&mut self, _now: Instant, ep: &mut Endpoint) {
        for ((_, n), slot) in ep.drops().iter().zip(&self.metrics.drops) {
            slot.store(n, Relaxed);
        }
        let ids: Vec<u64> = ep.session_ids().collect();
        for &id in &ids {
            if let Some(r) = ep.receiver(id) {
                self.session(r);
            }
        }
        // Sessions per stream, for each one's share.
        let mut per_stream: HashMap<String, (usize, u64)> = HashMap::new();
        for s in self.sessions.values() {
            per_stream.entry(s.stream.name().to_owned()).or_default().0 += 1;
        }
        for id in ids {
            let (Some(r), Some(s)) = (ep.receiver_mut(id), self.sessions.get_mut(&id)) else {
                continue;
            };
            let st = r.stats();
            count(&s.metrics, &mut s.counted, st);
            let avg =
                (st.messages_delivered > 0).then(|| st.bytes_delivered / st.messages_delivered);
            let entry = per_stream.get_mut(s.stream.name()).expect("counted above");
            let credit = self.policy.credit(&s.stream.health(), entry.0, avg);
            r.set_credit(credit);
            entry.1 += u64::from(credit);
        }
        for name in self.spool.open_streams().iter().map(Stream::name) {
            let (sessions, credit) = per_stream.get(name).copied().unwrap_or_default();
            let m = self.metrics.stream(name);
            m.sessions.store(sessions as u64, Relaxed);
            m.credit.store(credit, Relaxed);
        }
    }
}
