//! Ingest: sessions of the daemon's endpoints feed the spool. A message's
//! seq is marked durable only when the spool says its batch is on stable
//! storage, and each session's credit follows the spool's health and the
//! session's share of its stream (see [`crate::credit`]).
//!
//! A daemon runs several endpoints (the raw-UDP one, one per QUIC publish
//! stream); each has its own [`Ingest`] owner, and they share an
//! [`IngestShared`]: the spool, the limits, and the counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_transport::proto::{
    DropCounts, Endpoint, EndpointEvent, Incoming, Receiver, ReceiverStats, Repair,
};
use sluice_transport::serve::{Owner, SessionControl};
use sluice_transport::wire::CloseCode;
use tracing::{error, info, warn};

use crate::credit::CreditPolicy;
use crate::forward::Confirmations;
use crate::log_limit::LogLimit;
use crate::metrics::{Metrics, StreamMetrics};
use crate::sessions::{Reading, Sessions};
use crate::spool::record::now_us;
use crate::spool::{Outcome, Record, Spool, SpoolError, Stream};

/// What all of a daemon's ingest endpoints share.
pub struct IngestShared {
    spool: Arc<Spool>,
    auto_create: bool,
    policy: CreditPolicy,
    /// Sessions accepted and not yet closed, and the most allowed.
    max_sessions: usize,
    open: AtomicUsize,
    metrics: Arc<Metrics>,
    /// Appends handed to the spool and not yet answered.
    in_flight: AtomicU64,
    /// Anyone can send HELLOs: their refusals are logged at a bounded rate.
    refusals: Mutex<LogLimit>,
    /// `ack = "replicated"` streams: acks wait for JetStream's PubAck.
    confirm: Arc<Confirmations>,
    /// The open sessions' figures, for `/sessions`.
    views: Arc<Sessions>,
}

impl IngestShared {
    pub fn new(
        spool: Arc<Spool>,
        auto_create: bool,
        policy: CreditPolicy,
        max_sessions: usize,
        metrics: Arc<Metrics>,
        confirm: Arc<Confirmations>,
    ) -> Arc<Self> {
        Arc::new(IngestShared {
            spool,
            auto_create,
            policy,
            max_sessions,
            open: AtomicUsize::new(0),
            metrics,
            in_flight: AtomicU64::new(0),
            refusals: Mutex::new(LogLimit::new(5)),
            views: Arc::new(Sessions::default()),
            confirm,
        })
    }

    /// How many appends are waiting for the spool: zero once every
    /// delivered message has been answered (a drain waits for that).
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// The stream `name`, opened or (if allowed) created, for producers:
    /// a dead-letter stream takes only what its consumer groups move
    /// there.
    pub fn stream_for(&self, name: &str) -> Result<Stream, NoStream> {
        if name.ends_with(".dlq") {
            return Err(NoStream::Refused(format!(
                "{name:?} is a dead-letter stream: only its stream's consumer groups write to it"
            )));
        }
        let exists = self.spool.stream_names().iter().any(|n| n == name);
        if !exists && !self.auto_create {
            return Err(NoStream::Missing(format!(
                "no stream {name:?} (streams.auto_create is off)"
            )));
        }
        self.spool.stream(name).map_err(|e| match e {
            SpoolError::BadStreamName(_) => NoStream::Refused(e.to_string()),
            SpoolError::TooManyStreams { .. } => NoStream::Full(e.to_string()),
            e => NoStream::Unavailable(e.to_string()),
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// What JetStream confirmed of replicated streams (forward/confirm.rs).
    /// The open sessions' figures (`/sessions`).
    pub fn views(&self) -> Arc<Sessions> {
        self.views.clone()
    }

    pub fn confirmations(&self) -> &Arc<Confirmations> {
        &self.confirm
    }

    pub fn policy(&self) -> &CreditPolicy {
        &self.policy
    }

    /// Producer sessions open now, on every plane: what the credit
    /// policy shares the window among.
    pub fn sessions_open(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// Counts a session of another plane (gRPC's PublishStream) among the
    /// open ones, within `data.max_sessions`; [`IngestShared::leave`]
    /// when it closes.
    pub fn join(&self) -> Result<(), String> {
        self.open
            .fetch_update(Relaxed, Relaxed, |n| {
                (n < self.max_sessions).then_some(n + 1)
            })
            .map(|_| ())
            .map_err(|open| format!("{open} sessions open, the most allowed (data.max_sessions)"))
    }

    pub fn leave(&self) {
        let _ = self
            .open
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
    }
}

/// Why a producer's stream is not there for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoStream {
    /// The name is not one a producer may publish to.
    Refused(String),
    /// No such stream, and streams are not made on first use.
    Missing(String),
    /// It would be one stream too many.
    Full(String),
    /// It could not be opened (damage, an I/O error).
    Unavailable(String),
}

impl std::fmt::Display for NoStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (NoStream::Refused(why)
        | NoStream::Missing(why)
        | NoStream::Full(why)
        | NoStream::Unavailable(why)) = self;
        f.write_str(why)
    }
}

/// One endpoint's owner. It lives in the endpoint's task.
pub struct Ingest {
    shared: Arc<IngestShared>,
    /// On a QUIC stream opened for one (stream, producer): only that.
    only: Option<(String, u64)>,
    sessions: HashMap<u64, Session>,
    /// The endpoint's drop counters already added to the metrics.
    drops_counted: DropCounts,
}

struct Session {
    stream: Stream,
    metrics: Arc<StreamMetrics>,
    /// The receiver's counters already added to the stream's metrics.
    counted: ReceiverStats,
    /// The credit last granted, as added to the stream's credit gauge.
    credit: u32,
    /// Gaps repaired whose message is not delivered yet (a gap below it is
    /// still open): timed to their durable ack with a later batch.
    repairs: Vec<Repair>,
}

impl Ingest {
    pub fn new(shared: Arc<IngestShared>) -> Self {
        Ingest {
            shared,
            only: None,
            sessions: HashMap::new(),
            drops_counted: DropCounts::default(),
        }
    }

    /// An owner that accepts only `producer_id` publishing to `stream`:
    /// for a QUIC stream authorized for exactly that.
    pub fn only(shared: Arc<IngestShared>, stream: &str, producer_id: u64) -> Self {
        Ingest {
            only: Some((stream.to_owned(), producer_id)),
            ..Ingest::new(shared)
        }
    }

    /// The session's state, set up on first sight.
    fn session(&mut self, r: &Receiver) -> Option<&mut Session> {
        let id = r.session_id();
        if !self.sessions.contains_key(&id) {
            let stream = match self.shared.spool.stream(r.stream()) {
                Ok(s) => s,
                Err(e) => {
                    error!(error = %e, stream = r.stream(), "stream unavailable under an open session");
                    return None;
                }
            };
            let metrics = self.shared.metrics.stream(stream.name());
            metrics.sessions.fetch_add(1, Relaxed);
            self.sessions.insert(
                id,
                Session {
                    stream,
                    metrics,
                    counted: ReceiverStats::default(),
                    credit: 0,
                    repairs: Vec::new(),
                },
            );
        }
        self.sessions.get_mut(&id)
    }

    fn refuse(&self, inc: &Incoming, reason: String) -> (CloseCode, String) {
        self.shared.metrics.sessions_rejected.fetch_add(1, Relaxed);
        let allowed = self.shared.refusals.lock().unwrap().allow(Instant::now());
        if let Some(suppressed) = allowed {
            warn!(peer = %inc.peer, stream = %inc.hello.stream, %reason, suppressed, "session refused");
        }
        (CloseCode::Rejected, reason)
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
        if let Some((stream, producer)) = &self.only {
            if *stream != inc.hello.stream || *producer != inc.hello.producer_id {
                let reason = format!(
                    "this stream was opened for producer {producer} on {stream:?}, not producer {} on {:?}",
                    inc.hello.producer_id, inc.hello.stream
                );
                return Err(self.refuse(inc, reason));
            }
        }
        let open = self.shared.open.load(Relaxed);
        let stream = if open >= self.shared.max_sessions {
            Err(format!(
                "{open} sessions open, the most allowed (data.max_sessions)"
            ))
        } else {
            self.shared
                .stream_for(&inc.hello.stream)
                .map_err(|e| e.to_string())
        };
        let stream = stream.map_err(|reason| self.refuse(inc, reason))?;
        // Where this producer stands: read from the idempotence table at
        // once, never behind the writer's queue, so a new session is not
        // held by an fdatasync or a full disk (nor is every other session
        // of this endpoint meanwhile). Batches of an earlier session still
        // queued may be durable a moment later: the producer then sends
        // them again and they are stored once. On an `ack = "replicated"`
        // stream no more than JetStream confirmed (see
        // Confirmations::durable_at_open for a producer asking afresh).
        let highest = stream.highest_seq(inc.hello.producer_id).unwrap_or(0);
        let durable = self.shared.confirm.durable_at_open(
            &inc.hello.stream,
            inc.hello.producer_id,
            highest,
            inc.hello.first_seq,
        );
        let sessions = self.shared.open.load(Relaxed);
        let credit = self
            .shared
            .policy
            .credit(&stream.health(), sessions + 1, None);
        info!(peer = %inc.peer, producer = inc.hello.producer_id, stream = %inc.hello.stream, durable, "session open");
        self.shared.open.fetch_add(1, Relaxed);
        Ok((durable, credit))
    }

    fn deliver(&mut self, r: &mut Receiver, control: &SessionControl) {
        let shared = self.shared.clone();
        let Some(session) = self.session(r) else {
            return;
        };
        let producer = r.producer_id();
        let received = Instant::now();
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
                key: None,
            });
        }
        let Some(last) = records.last().map(|r| r.seq) else {
            return;
        };
        let m = session.metrics.clone();
        // Loss's cost in time: a gap's repair (seen → retransmission here)
        // now, and seen → durable ack once this batch is acked.
        for rep in r.take_repairs() {
            m.repair
                .observe_duration(rep.repaired.saturating_duration_since(rep.seen));
            session.repairs.push(rep);
        }
        let (repaired, later): (Vec<Repair>, Vec<Repair>) =
            session.repairs.drain(..).partition(|rep| rep.seq <= last);
        session.repairs = later;
        m.messages_in.fetch_add(records.len() as u64, Relaxed);
        m.bytes_in.fetch_add(bytes, Relaxed);
        shared.in_flight.fetch_add(1, Relaxed);
        let control = control.clone();
        let id = r.session_id();
        let confirm = shared.confirm.clone();
        let stream = session.stream.clone();
        let count = records.len() as u64;
        // Runs on the spool's writer thread once the batch is durable.
        // Batches of one stream complete in order, so acks go out in order.
        let then = move |result: Result<Vec<Outcome>, SpoolError>| {
            match result {
                // After a failed append of this producer: nothing of this
                // batch is acked; the session closes, the producer resends
                // from its durable seq.
                Ok(outcomes) if outcomes.contains(&Outcome::Refused) => {
                    m.append_errors.fetch_add(1, Relaxed);
                    control.close(
                        id,
                        CloseCode::StorageError,
                        "an earlier batch of this producer could not be stored",
                    );
                }
                Ok(outcomes) => {
                    let dups = outcomes
                        .iter()
                        .filter(|o| **o == Outcome::Duplicate)
                        .count() as u64;
                    m.duplicates.fetch_add(dups, Relaxed);
                    m.stored.fetch_add(outcomes.len() as u64 - dups, Relaxed);
                    // On an `ack = "replicated"` stream, once JetStream
                    // has it too (duplicates as well: a resent message the
                    // spool had may not be forwarded yet); at once else.
                    confirm.when(
                        stream.name(),
                        producer,
                        last,
                        stream.durable_end(),
                        count,
                        Some(id),
                        Box::new(move || {
                            control.mark_durable(id, last);
                            m.publish_ack.observe_since(received);
                            for rep in &repaired {
                                m.repair_to_durable.observe_since(rep.seen);
                            }
                        }),
                    );
                }
                // The spool is closing: nothing is acked.
                Err(SpoolError::Closed) => {}
                // An operator deleted the stream (`sluice stream delete
                // --force`): not a fault. The producer opens a new session
                // and resends; the stream is made again only if
                // streams.auto_create allows it.
                Err(SpoolError::StreamDeleted(name)) => {
                    info!(session = id, stream = %name, "the stream was deleted: closing the session");
                    control.close(id, CloseCode::StorageError, "the stream was deleted");
                }
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
            shared.in_flight.fetch_sub(1, Relaxed);
        };
        session.stream.append_batch_then(records, Box::new(then));
    }

    fn durable_sent(&mut self, session: u64, waited: Duration) {
        if let Some(s) = self.sessions.get(&session) {
            s.metrics.status_sent.observe_duration(waited);
        }
    }

    fn closed(&mut self, ev: &EndpointEvent) {
        let EndpointEvent::Closed {
            session_id,
            producer_id,
            stream,
            reason,
            stats,
        } = ev;
        // Accepted sessions only: a refused HELLO never counted.
        let _ = self
            .shared
            .open
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
        // Its acks waiting for JetStream are of no use now.
        self.shared
            .confirm
            .session_closed(stream, *producer_id, *session_id);
        self.shared.views.remove(*session_id);
        if let Some(mut s) = self.sessions.remove(session_id) {
            count(&s.metrics, &mut s.counted, stats);
            s.metrics.sessions.fetch_sub(1, Relaxed);
            s.metrics.credit.fetch_sub(u64::from(s.credit), Relaxed);
        }
        info!(session = session_id, producer = producer_id, %stream, %reason, "session closed");
    }

    fn tick(&mut self, now: Instant, ep: &mut Endpoint) {
        for (((_, now), before), total) in ep
            .drops()
            .iter()
            .zip(self.drops_counted.iter())
            .zip(&self.shared.metrics.drops)
        {
            total.fetch_add(now - before.1, Relaxed);
        }
        self.drops_counted = ep.drops().clone();
        let ids: Vec<u64> = ep.session_ids().collect();
        for id in ids {
            let peer = ep.peer(id);
            let Some(r) = ep.receiver_mut(id) else {
                continue;
            };
            let policy = self.shared.policy;
            let sessions = self.shared.open.load(Relaxed);
            let Some(s) = self.session(r) else {
                continue;
            };
            let st = r.stats();
            count(&s.metrics, &mut s.counted, st);
            let avg =
                (st.messages_delivered > 0).then(|| st.bytes_delivered / st.messages_delivered);
            let credit = policy.credit(&s.stream.health(), sessions, avg);
            r.set_credit(credit);
            s.metrics.credit.fetch_add(u64::from(credit), Relaxed);
            s.metrics.credit.fetch_sub(u64::from(s.credit), Relaxed);
            s.credit = credit;
            let st = r.stats();
            self.shared.views.update(
                Reading {
                    session_id: id,
                    stream: r.stream(),
                    producer: r.producer_id(),
                    peer,
                    via: if self.only.is_some() { "quic" } else { "udp" },
                    messages: st.messages_delivered,
                    bytes: st.bytes_delivered,
                    durable_seq: r.durable_seq(),
                    received_seq: r.received_seq(),
                    credit: r.credit(),
                    nacks_sent: st.nacks_sent,
                    repaired: st.recovered,
                    duplicates: st.duplicates,
                    over_credit: st.over_credit,
                    rtt: r.rtt(),
                },
                now,
            );
        }
    }
}
