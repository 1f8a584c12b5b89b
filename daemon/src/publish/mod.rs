//! Publishing whole requests: what the HTTP plane (and any plane whose
//! requests carry their messages whole) hands to the spool. The same
//! ingest as the fast path: the stream is found or created by the same
//! rule, the same idempotence table answers, the same credit policy
//! turns requests away when the spool or its consumers fall behind, and
//! the answer comes only once the records are durable.
//!
//! A request is identified one of three ways:
//! - **a producer's seq** (`Sluice-Producer-Id`, `Sluice-Seq`): exactly
//!   the fast path's idempotence; a seq at or below the producer's
//!   highest stored one is a duplicate, stored nothing;
//! - **a request key** (`Idempotency-Key`): the key, with a hash of the
//!   body, is stored in the same commit as the request's records (see
//!   `spool/keys.rs`); a retry is answered with the original offsets;
//! - **nothing**: stored once per request received (a retry after a lost
//!   answer stores it again, as with any POST).
//!
//! Requests with a key or with nothing are stored under a producer id the
//! daemon takes for the stream (random, a new one at every start), with
//! seqs it numbers: so they cost the idempotence table one entry per
//! stream, not one per request. After an append of that producer fails,
//! its later records would be refused (the table must not pass a hole):
//! the daemon then takes a new id.

pub mod batch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{info, warn};

use crate::credit::CreditPolicy;
use crate::ingest::{IngestShared, NoStream};
use crate::metrics::StreamMetrics;
use crate::spool::record::{now_us, RequestKey, MAX_KEY_LEN};
use crate::spool::{Outcome, Record, SpoolError, Stream};

/// How a request is told from its retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The producer's own id and the seq of the request's first message
    /// (the others follow on).
    Producer {
        id: u64,
        seq: u64,
    },
    /// A request key (1 to 255 bytes) and the SHA-256 of the body.
    Key {
        key: String,
        hash: [u8; 32],
    },
    None,
}

/// Which plane a request came over: each counts its own requests
/// (`sluice_http_publish_requests_total`,
/// `sluice_grpc_publish_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    Http,
    Grpc,
}

/// One message of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Where it is stored; `None` for a duplicate of a producer's seq
    /// (stored before, where is not kept).
    pub offset: Option<u64>,
    pub seq: u64,
    pub duplicate: bool,
}

/// What became of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub producer: u64,
    pub messages: Vec<Placed>,
    /// The request's key was known: this is the original answer.
    pub replayed: bool,
}

/// Why a request was not (or not all) stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// No such stream, and streams are not created on first use.
    NoStream(String),
    /// The stream cannot take requests: a name no producer may use, or
    /// one stream too many.
    Refused(String),
    /// Try again later: the spool or consumers are behind, the disk is
    /// full, too much is being published at once, or an append failed.
    Busy(String),
    /// A message above the largest stored.
    TooLarge { len: usize, max: usize },
    /// The key was used with another body.
    KeyConflict,
    /// The request itself is wrong.
    Bad(String),
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::NoStream(why)
            | PublishError::Refused(why)
            | PublishError::Busy(why)
            | PublishError::Bad(why) => f.write_str(why),
            PublishError::TooLarge { len, max } => {
                write!(f, "a message of {len} bytes, more than the {max} allowed")
            }
            PublishError::KeyConflict => f.write_str(
                "this Idempotency-Key was used with another body: a key names one request",
            ),
        }
    }
}

/// Most messages in one request.
pub const MAX_MESSAGES: usize = 10_000;

/// The daemon's producer for one stream's key-less and keyed requests.
struct Own {
    id: u64,
    next_seq: u64,
}

impl Own {
    fn new() -> Own {
        // Not 0 (no producer is 0 on the fast path either).
        Own {
            id: rand::random::<u64>().max(1),
            next_seq: 1,
        }
    }
}

/// Publishes requests into the spool.
pub struct Publisher {
    ingest: Arc<IngestShared>,
    own: Mutex<HashMap<String, Own>>,
    /// Bytes of requests being read or stored and not yet answered, and
    /// the most allowed: what requests in flight may hold of memory.
    in_flight: AtomicU64,
    max_in_flight: u64,
}

impl Publisher {
    pub fn new(ingest: Arc<IngestShared>, policy: &CreditPolicy) -> Arc<Publisher> {
        Arc::new(Publisher {
            ingest,
            own: Mutex::new(HashMap::new()),
            in_flight: AtomicU64::new(0),
            // As much as the fast path lets one session's window hold.
            max_in_flight: policy.window_bytes,
        })
    }

    /// Room for a request of up to `bytes`, taken before its body is read
    /// (so that many large requests at once cannot take the daemon's
    /// memory) and held until it is answered. One request alone may
    /// always go, else a large one never could.
    pub fn reserve(&self, bytes: u64) -> Result<Reserved<'_>, PublishError> {
        let before = self.in_flight.fetch_add(bytes, Relaxed);
        let r = Reserved(&self.in_flight, bytes);
        if before > 0 && before + bytes > self.max_in_flight {
            return Err(PublishError::Busy(format!(
                "{before} bytes of publish requests are being read or stored, the most held at once: try again"
            )));
        }
        Ok(r)
    }

    /// Stores `payloads` in `stream` as one request, in room `reserved`;
    /// answers once they are durable.
    pub async fn publish(
        &self,
        reserved: Reserved<'_>,
        stream: &str,
        identity: Identity,
        payloads: Vec<Bytes>,
        plane: Plane,
    ) -> Result<Published, PublishError> {
        self.start(reserved, stream, identity, payloads, Credit::Check, plane)?
            .durable()
            .await
    }

    /// Queues `payloads` for `stream` as one request, at once: requests
    /// started one after another reach the spool's writer in that order
    /// (a stream of batches of one producer relies on it, since a seq
    /// queued after a higher one would be taken for a duplicate). The
    /// answer comes from [`Pending::durable`].
    pub fn start<'a>(
        &'a self,
        reserved: Reserved<'a>,
        stream: &str,
        identity: Identity,
        payloads: Vec<Bytes>,
        credit: Credit,
        plane: Plane,
    ) -> Result<Pending<'a>, PublishError> {
        if payloads.is_empty() || payloads.len() > MAX_MESSAGES {
            return Err(PublishError::Bad(format!(
                "a request holds 1 to {MAX_MESSAGES} messages, not {}",
                payloads.len()
            )));
        }
        if let Identity::Key { key, .. } = &identity {
            check_key(key).map_err(PublishError::Bad)?;
        }
        let s = self.stream_for(stream)?;
        let max = s.log_config().max_record_bytes;
        if let Some(p) = payloads.iter().find(|p| p.len() > max) {
            return Err(PublishError::TooLarge { len: p.len(), max });
        }
        if credit == Credit::Check && self.ingest.policy().credit(&s.health(), 1, None) == 0 {
            return Err(PublishError::Busy(format!(
                "stream {stream:?} takes nothing now (disk full, or the spool or its consumers are behind): try again"
            )));
        }
        let bytes: u64 = payloads.iter().map(|p| p.len() as u64).sum();
        let metrics = self.ingest.metrics().stream(s.name());
        match plane {
            Plane::Http => &metrics.http_requests,
            Plane::Grpc => &metrics.grpc_requests,
        }
        .fetch_add(1, Relaxed);
        metrics
            .messages_in
            .fetch_add(payloads.len() as u64, Relaxed);
        metrics.bytes_in.fetch_add(bytes, Relaxed);
        let received = Instant::now();
        let (producer, first_seq, done) = self.submit(&s, identity, payloads);
        Ok(Pending {
            received,
            publisher: self,
            _reserved: reserved,
            stream: s,
            metrics,
            producer,
            first_seq,
            done,
        })
    }

    /// The stream `name` for a publish, found or created by the ingest's
    /// rule.
    fn stream_for(&self, name: &str) -> Result<Stream, PublishError> {
        self.ingest.stream_for(name).map_err(|e| match e {
            NoStream::Missing(why) => PublishError::NoStream(why),
            NoStream::Refused(why) => PublishError::Bad(why),
            NoStream::Full(why) => PublishError::Refused(why),
            NoStream::Unavailable(why) => PublishError::Busy(why),
        })
    }

    /// Opens a long-lived session of `producer` on `stream` (gRPC's
    /// PublishStream): counted with the fast path's sessions, within
    /// `data.max_sessions`, so that they all share one window and one
    /// credit policy.
    pub fn session(&self, stream: &str, producer: u64) -> Result<Session<'_>, PublishError> {
        if producer == 0 {
            return Err(PublishError::Bad(
                "producer_id: 0 is not a producer id".into(),
            ));
        }
        let s = self.stream_for(stream)?;
        self.ingest.join().map_err(PublishError::Busy)?;
        Ok(Session {
            publisher: self,
            stream: s,
            producer,
        })
    }

    /// Makes the request's records and queues them: under the lock that
    /// numbers the daemon's producer's seqs, so that they reach the writer
    /// in the order they were numbered (a seq queued after a higher one
    /// would be taken for a duplicate).
    fn submit(
        &self,
        s: &Stream,
        identity: Identity,
        payloads: Vec<Bytes>,
    ) -> (
        u64,
        u64,
        tokio::sync::oneshot::Receiver<Result<Vec<Outcome>, SpoolError>>,
    ) {
        let ts = now_us();
        let count = payloads.len() as u32;
        let make = |producer: u64, first_seq: u64, key: Option<Arc<RequestKey>>| {
            let mut key = key;
            payloads
                .into_iter()
                .enumerate()
                .map(|(i, payload)| Record {
                    producer,
                    seq: first_seq + i as u64,
                    timestamp_us: ts,
                    payload,
                    key: key.take(),
                })
                .collect::<Vec<Record>>()
        };
        match identity {
            Identity::Producer { id, seq } => (id, seq, s.append_batch(make(id, seq, None))),
            Identity::Key { .. } | Identity::None => {
                let key = match identity {
                    Identity::Key { key, hash } => Some(Arc::new(RequestKey { key, hash, count })),
                    _ => None,
                };
                let mut own = self.own.lock().unwrap();
                let o = own.entry(s.name().to_owned()).or_insert_with(Own::new);
                let (id, seq) = (o.id, o.next_seq);
                o.next_seq += u64::from(count);
                (id, seq, s.append_batch(make(id, seq, key)))
            }
        }
    }

    /// An append of `producer` failed: if it was the daemon's, its later
    /// records would be refused; the stream's next requests take a new id.
    fn failed(&self, stream: &str, producer: u64) {
        let mut own = self.own.lock().unwrap();
        if let Some(o) = own.get_mut(stream) {
            if o.id == producer {
                *o = Own::new();
                info!(
                    stream,
                    old = producer,
                    new = o.id,
                    "an append of the daemon's producer failed: a new producer id for the stream's HTTP publishes"
                );
            }
        }
    }
}

/// The answer to a request whose append returned `outcomes`.
fn answer(producer: u64, first_seq: u64, outcomes: &[Outcome]) -> Result<Published, PublishError> {
    match outcomes.first() {
        Some(Outcome::Repeated {
            first,
            count,
            producer,
            seq,
        }) => {
            return Ok(Published {
                producer: *producer,
                messages: (0..u64::from(*count))
                    .map(|i| Placed {
                        offset: Some(first + i),
                        seq: seq + i,
                        duplicate: true,
                    })
                    .collect(),
                replayed: true,
            })
        }
        Some(Outcome::KeyConflict) => return Err(PublishError::KeyConflict),
        _ => {}
    }
    let mut messages = Vec::with_capacity(outcomes.len());
    for (i, o) in outcomes.iter().enumerate() {
        let seq = first_seq + i as u64;
        messages.push(match *o {
            Outcome::Stored { offset } => Placed {
                offset: Some(offset),
                seq,
                duplicate: false,
            },
            Outcome::Duplicate => Placed {
                offset: None,
                seq,
                duplicate: true,
            },
            Outcome::Refused => {
                warn!(producer, "a publish refused: an earlier append of its producer failed");
                return Err(PublishError::Busy(
                    "an earlier request of this producer could not be stored; send again from its durable seq".into(),
                ));
            }
            Outcome::Repeated { .. } | Outcome::KeyConflict => {
                return Err(PublishError::Bad("a request key in the middle of a request".into()))
            }
        });
    }
    Ok(Published {
        producer,
        messages,
        replayed: false,
    })
}

/// Whether [`Publisher::start`] turns a request away while its stream's
/// credit is zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credit {
    /// A whole request: refused (Busy) while the stream takes nothing.
    Check,
    /// A session's batch, sent within the credit it was granted (the
    /// session checks it): taken, as the fast path takes what a session
    /// sends within its credit even if the spool fell behind since.
    Granted,
}

/// A request queued for the spool, not yet durable.
pub struct Pending<'a> {
    /// When the request was read: its ack's latency runs from here.
    received: Instant,
    publisher: &'a Publisher,
    _reserved: Reserved<'a>,
    stream: Stream,
    metrics: Arc<StreamMetrics>,
    producer: u64,
    first_seq: u64,
    done: tokio::sync::oneshot::Receiver<Result<Vec<Outcome>, SpoolError>>,
}

impl Pending<'_> {
    /// The answer, once the request's records are durable.
    pub async fn durable(self) -> Result<Published, PublishError> {
        let Pending {
            received,
            publisher,
            _reserved,
            stream: s,
            metrics,
            producer,
            first_seq,
            done,
        } = self;
        let outcomes = match done.await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                metrics.append_errors.fetch_add(1, Relaxed);
                publisher.failed(s.name(), producer);
                return Err(PublishError::Busy(match e {
                    SpoolError::Closed => "the daemon is stopping".to_owned(),
                    e => format!("the spool could not store the request ({e}): try again"),
                }));
            }
            Err(_) => return Err(PublishError::Busy("the daemon is stopping".into())),
        };
        let answer = answer(producer, first_seq, &outcomes);
        match &answer {
            Ok(p) => {
                let dups = p.messages.iter().filter(|m| m.duplicate).count() as u64;
                metrics.duplicates.fetch_add(dups, Relaxed);
                metrics
                    .stored
                    .fetch_add(p.messages.len() as u64 - dups, Relaxed);
                if p.replayed {
                    metrics.key_repeats.fetch_add(1, Relaxed);
                }
            }
            Err(PublishError::KeyConflict) => {
                metrics.key_conflicts.fetch_add(1, Relaxed);
            }
            Err(_) => {
                metrics.append_errors.fetch_add(1, Relaxed);
                publisher.failed(s.name(), producer);
            }
        }
        let p = answer?;
        // ack = "replicated": answered once JetStream has the request's
        // messages too (duplicates included: the spool had them, JetStream
        // may not yet), or refused as not yet replicated; sent again, the
        // messages are stored once.
        let confirm = publisher.ingest.confirmations();
        if let Some(last) = p.messages.iter().map(|m| m.seq).max() {
            if confirm.is_replicated(s.name()) {
                let wait = confirm.confirmed_to(
                    s.name(),
                    p.producer,
                    last,
                    s.durable_end(),
                    p.messages.len() as u64,
                );
                if tokio::time::timeout(REPLICATED_WAIT, wait).await.is_err() {
                    return Err(PublishError::Busy(format!(
                        "stored here but not yet replicated: JetStream has not acknowledged it within {REPLICATED_WAIT:?} (ack = \"replicated\"); send the same messages again (stored once)"
                    )));
                }
            }
        }
        metrics.publish_ack.observe_since(received);
        Ok(p)
    }
}

/// How long a publish to an `ack = "replicated"` stream waits for
/// JetStream before it is answered as not yet replicated.
pub const REPLICATED_WAIT: Duration = Duration::from_secs(10);

/// One producer's session on one stream (gRPC's PublishStream), counted
/// among the daemon's open sessions until dropped.
pub struct Session<'a> {
    publisher: &'a Publisher,
    stream: Stream,
    producer: u64,
}

impl Session<'_> {
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    pub fn producer(&self) -> u64 {
        self.producer
    }

    /// The producer's highest durable seq (0: none), read from the
    /// idempotence table at once as the fast path's accept does: never
    /// behind the writer's queue, so that opening is not held by an
    /// fdatasync or a full disk. Batches of an earlier session still
    /// queued may be durable a moment later: resent, they are stored once.
    pub fn durable_seq(&self) -> u64 {
        self.stream.highest_seq(self.producer).unwrap_or(0)
    }

    /// The session's credit now, in messages and bytes past its durable
    /// seq, by the fast path's policy, given its average message so far.
    pub fn credit(&self, avg_message: Option<u64>) -> (u32, u64) {
        let ingest = &self.publisher.ingest;
        let health = self.stream.health();
        let sessions = ingest.sessions_open();
        let policy = ingest.policy();
        (
            policy.credit(&health, sessions, avg_message),
            policy.credit_bytes(&health, sessions),
        )
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.publisher.ingest.leave();
    }
}

/// Room a request holds of the in-flight bytes, given back when dropped.
pub struct Reserved<'a>(&'a AtomicU64, u64);

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Relaxed);
    }
}

/// Whether `key` may be a request key: 1 to 255 bytes of visible ASCII
/// (what an HTTP header carries without encoding).
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} bytes, not {}",
            key.len()
        ));
    }
    if !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err("Idempotency-Key must be visible ASCII (no spaces)".into());
    }
    Ok(())
}
