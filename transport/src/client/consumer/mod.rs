//! `Consumer`: receive the messages of a stream of `sluiced` as a member of
//! a consumer group, and settle each one with an ack or a nack.
//!
//! A driver task owns the QUIC connection. Deliveries go to the caller
//! ([`Consumer::next`] in push mode, [`Consumer::fetch`] in pull mode); what
//! the caller says about them (ack, nack, extend) comes back to the driver
//! through a shared inbox, in order (one lock and, when the inbox was empty,
//! one wake-up per call; no allocation), and what the [`Consumer`] asks goes
//! over an unbounded channel. The driver takes the whole inbox at once, and
//! batches whatever is queued into one frame of each kind per turn. Acks are durable at the
//! daemon only after a Sync answered by Synced: until then the driver keeps
//! them, and sends them again on a new subscription if the connection is
//! lost, so an ack the caller made is never forgotten by a reconnect.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use quinn::{ConnectionError, SendStream};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::link::{self, QuicSession};
use super::options::{ProducerError, QuicOptions};
use crate::offsets::{ranges_into, ranges_of, OffsetSet};
use crate::quic::close_code;
use crate::quic::consume::{self, FromConsumer, ToConsumer, MAX_FETCH_WAIT_MS, MAX_OFFSETS};
use crate::quic::control::{ConsumeMode, Control, RefuseCode, StartAt};
use crate::quic::frame::{self, FramedRecv};

mod acks;
mod delivery;
mod driver;

pub use delivery::Delivery;
use driver::{Driver, Pushed};

/// Pings on an otherwise idle connection, as the producer's QUIC path.
const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// How long the daemon may take to answer a Subscribe.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect backoff: from this, doubling, ...
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// ... up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A subscription that lasted this long was healthy: the next loss starts
/// the backoff afresh. Shorter ones keep it growing, so that a daemon that
/// accepts and drops at once is not hammered.
const HEALTHY: Duration = Duration::from_secs(5);
/// Acks not covered by a Sync for this long get one of their own: the
/// driver's memory of unsynced acks (and what a reconnect re-sends) stays
/// small even for a caller that never calls `sync`.
const AUTO_SYNC_AFTER: Duration = Duration::from_secs(1);
/// A fetch whose FetchDone has not come this long after its wait returns
/// what it has: a daemon that forgets one must not hang the caller.
const FETCH_SLACK: Duration = Duration::from_secs(5);
/// Commands taken from the channel per turn at most, so that a flood of
/// acks cannot starve the reading of deliveries.
const COMMANDS_PER_TURN: usize = 4 * MAX_OFFSETS;
/// Frames read per turn at most when more have already arrived, so that
/// acks and commands are still sent while deliveries pour in.
const FRAMES_PER_TURN: usize = 256;

/// How a [`Consumer`] subscribes and behaves.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// How to reach and prove oneself to the daemon's QUIC plane.
    pub quic: QuicOptions,
    /// The consumer group: members of one group share its messages and
    /// its durable position.
    pub group: String,
    /// Where the group starts if it does not exist yet (default: the
    /// earliest retained record). An existing group continues where it is.
    pub start: StartAt,
    /// Push (default): the daemon sends within the credit window. Pull:
    /// only what [`Consumer::fetch`] asks for.
    pub mode: ConsumeMode,
    /// The credit window: at most this many messages (default 1,000) and
    /// bytes of payload (default 16 MiB) delivered and not yet acked or
    /// nacked. It bounds the client's memory.
    pub max_messages: u32,
    pub max_bytes: u64,
    /// Local address to connect from; by default any port of the daemon's
    /// family.
    pub bind: Option<SocketAddr>,
    /// Give up (with [`ConsumerError::Unreachable`]) once the daemon has
    /// been unreachable this long (default 30 s).
    pub reconnect_timeout: Duration,
}

impl ConsumerOptions {
    /// Defaults, for `group`, over `quic`.
    pub fn new(quic: QuicOptions, group: impl Into<String>) -> Self {
        ConsumerOptions {
            quic,
            group: group.into(),
            start: StartAt::Earliest,
            mode: ConsumeMode::Push,
            max_messages: 1000,
            max_bytes: 16 << 20,
            bind: None,
            reconnect_timeout: Duration::from_secs(30),
        }
    }
}

/// What the daemon said about this member when it joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionInfo {
    /// The member's id at the daemon (changes with every reconnect).
    pub member: u64,
    /// A delivery not acked (or extended) within this is delivered again.
    pub ack_deadline: Duration,
    /// After this many deliveries a message moves to the dead-letter stream.
    pub max_deliveries: u32,
}

/// What can go wrong when consuming. Each says what to do about it.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ConsumerError {
    #[error(
        "sluiced at {addr} did not answer: {reason} (is it running, and is the address right?)"
    )]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("sluiced refused the subscription ({}): {reason}", refuse_name(*.code))]
    Refused { code: RefuseCode, reason: String },
    /// The credentials were missing or wrong.
    #[error("sluiced did not accept our credentials: {0}")]
    Auth(String),
    /// The TLS handshake failed: the daemon's certificate is not trusted,
    /// or the daemon refused ours.
    #[error("TLS: {0}")]
    Tls(String),
    /// The daemon ended the subscription and said why.
    #[error("sluiced ended the subscription: {0}")]
    Ended(String),
    #[error("protocol error (are sluiced and this client the same version?): {0}")]
    Protocol(String),
    #[error("the consumer is closed")]
    Closed,
    #[error("invalid consumer options: {0}")]
    Config(String),
    #[error("socket error: {0}")]
    Io(String),
}

impl ConsumerError {
    /// Errors that subscribing again will not fix: give up at once.
    fn is_permanent(&self) -> bool {
        match self {
            ConsumerError::Unreachable { .. } | ConsumerError::Io(_) => false,
            // A daemon that is stopping or busy may take us back soon.
            ConsumerError::Refused { code, .. } => *code != RefuseCode::Unavailable,
            _ => true,
        }
    }

    /// The error of the shared connect-and-authenticate code, as a consumer's.
    fn from_link(e: ProducerError) -> Self {
        match e {
            ProducerError::Unreachable { addr, reason } => {
                ConsumerError::Unreachable { addr, reason }
            }
            ProducerError::AuthFailed(r) => ConsumerError::Auth(r),
            ProducerError::Tls(r) => ConsumerError::Tls(r),
            ProducerError::Config(r) => ConsumerError::Config(r),
            ProducerError::Io(r) => ConsumerError::Io(r),
            // The daemon may take us once another connection closes.
            ProducerError::ConnectionLimit(reason) => ConsumerError::Refused {
                code: RefuseCode::Unavailable,
                reason,
            },
            other => ConsumerError::Protocol(other.to_string()),
        }
    }
}

fn refuse_name(code: RefuseCode) -> String {
    match code {
        RefuseCode::Forbidden => "forbidden".into(),
        RefuseCode::NoSuchStream => "no such stream".into(),
        RefuseCode::Unavailable => "unavailable".into(),
        RefuseCode::BadRequest => "bad request".into(),
        RefuseCode::Other(c) => format!("code {c}"),
    }
}

type Reply<T> = oneshot::Sender<Result<T, ConsumerError>>;

enum Command {
    AckUpTo {
        offset: u64,
    },
    Credit {
        max_messages: u32,
        max_bytes: u64,
    },
    Fetch {
        max: u32,
        wait: Duration,
        reply: Reply<Vec<Delivery>>,
    },
    Sync {
        reply: Reply<()>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// What the caller and the driver share.
struct Shared {
    info: Mutex<SubscriptionInfo>,
    /// Why the driver stopped, once it has.
    failure: Mutex<Option<ConsumerError>>,
}

impl Shared {
    fn failure(&self) -> Option<ConsumerError> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A member of a consumer group of one stream of a `sluiced`.
///
/// Delivery is at least once: a message is delivered again when it is
/// nacked, when its ack deadline passes, and when the connection is lost
/// before its ack was sent. Acks the caller made are kept and sent again
/// after a reconnect until the daemon says they are durable.
///
/// ```no_run
/// use sluice_transport::client::{Consumer, ConsumerOptions, QuicOptions};
/// use sluice_transport::quic::tls::{ClientTls, ServerTrust};
///
/// # async fn demo() -> Result<(), sluice_transport::client::ConsumerError> {
/// let quic = QuicOptions {
///     tls: ClientTls {
///         trust: ServerTrust::CaFile("/etc/sluice/ca.pem".into()),
///         client_cert: None,
///         server_name: Some("sluiced.example".into()),
///     },
///     token: std::env::var("SLUICE_TOKEN").ok(),
/// };
/// let addr = "10.0.0.5:7400".parse().unwrap();
/// let mut consumer = Consumer::connect(addr, "orders", ConsumerOptions::new(quic, "billing")).await?;
/// while let Some(d) = consumer.next().await? {
///     println!("{}: {} bytes", d.offset, d.payload.len());
///     d.ack();
/// }
/// consumer.close().await;
/// # Ok(())
/// # }
/// ```
pub struct Consumer {
    commands: mpsc::UnboundedSender<Command>,
    deliveries: mpsc::UnboundedReceiver<Pushed>,
    /// Received from `deliveries` and not yet returned by `next`: the
    /// driver's batch itself, not a copy of it.
    ready: std::vec::IntoIter<Delivery>,
    shared: Arc<Shared>,
    mode: ConsumeMode,
}

impl Consumer {
    /// Joins `options.group` of `stream` at the daemon whose QUIC plane is
    /// at `addr`. Fails at once when the daemon refuses, the credentials are
    /// wrong or the daemon cannot be reached; later losses are reconnected.
    pub async fn connect(
        addr: SocketAddr,
        stream: &str,
        options: ConsumerOptions,
    ) -> Result<Consumer, ConsumerError> {
        validate(stream, &options)?;
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let (deliveries_tx, deliveries) = mpsc::unbounded_channel();
        let mut driver = Driver::new(
            addr,
            stream,
            options,
            commands_tx.clone(),
            commands,
            deliveries_tx,
        );
        let (sub, info) = driver.subscribe().await?;
        driver.install(sub, info);
        let shared = driver.shared.clone();
        let mode = driver.options.mode;
        tokio::spawn(driver.run());
        Ok(Consumer {
            commands: commands_tx,
            deliveries,
            ready: Vec::new().into_iter(),
            shared,
            mode,
        })
    }

    /// The next delivery (push mode), waiting for one. Cancel-safe.
    /// `Ok(None)` once the consumer has stopped without an error.
    pub async fn next(&mut self) -> Result<Option<Delivery>, ConsumerError> {
        if self.mode != ConsumeMode::Push {
            return Err(ConsumerError::Config(
                "next() is for push mode; this consumer pulls: use fetch()".into(),
            ));
        }
        if let Some(d) = self.ready.next() {
            return Ok(Some(d));
        }
        // Nothing is awaited after a batch is received: cancel-safe.
        match self.deliveries.recv().await {
            Some(Pushed::One(d)) => Ok(Some(d)),
            Some(Pushed::Many(ds)) => {
                self.ready = ds.into_iter();
                Ok(self.ready.next())
            }
            None => self.ended().map(|()| None),
        }
    }

    /// The next deliveries (push mode), at least one and at most `max`
    /// (taken as 1 if 0), waiting for the first: what has arrived, handed
    /// over in one go. For a caller that handles messages in batches, this
    /// is cheaper than [`next`](Consumer::next) per message. Cancel-safe.
    /// Empty once the consumer has stopped without an error.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>, ConsumerError> {
        if self.mode != ConsumeMode::Push {
            return Err(ConsumerError::Config(
                "next_batch() is for push mode; this consumer pulls: use fetch()".into(),
            ));
        }
        let max = max.max(1);
        if self.ready.len() > 0 {
            return Ok(take_batch(&mut self.ready, max));
        }
        // Nothing is awaited after a batch is received: cancel-safe.
        match self.deliveries.recv().await {
            Some(Pushed::One(d)) => Ok(vec![d]),
            Some(Pushed::Many(ds)) if ds.len() <= max => Ok(ds),
            Some(Pushed::Many(ds)) => {
                self.ready = ds.into_iter();
                Ok(take_batch(&mut self.ready, max))
            }
            None => self.ended().map(|()| Vec::new()),
        }
    }

    /// The driver is gone: its error, or none if it stopped as asked.
    fn ended(&self) -> Result<(), ConsumerError> {
        match self.shared.failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Up to `max` deliveries (pull mode): as soon as at least one is
    /// available, or none after `wait` (at most 30 s).
    pub async fn fetch(
        &mut self,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<Delivery>, ConsumerError> {
        if self.mode != ConsumeMode::Pull {
            return Err(ConsumerError::Config(
                "fetch() is for pull mode; this consumer is pushed to: use next()".into(),
            ));
        }
        if max == 0 {
            return Ok(Vec::new());
        }
        let wait = wait.min(Duration::from_millis(MAX_FETCH_WAIT_MS));
        let (reply, answer) = oneshot::channel();
        self.command(Command::Fetch { max, wait, reply })?;
        answer.await.map_err(|_| self.stopped())?
    }

    /// Waits until every ack and nack made so far (by any delivery of this
    /// consumer) is durable at the daemon.
    pub async fn sync(&self) -> Result<(), ConsumerError> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Sync { reply })?;
        answer.await.map_err(|_| self.stopped())?
    }

    /// Acks every message with an offset up to `offset` that is outstanding
    /// on this member: delivered to this consumer and not yet settled,
    /// including deliveries not yet returned by `next`.
    pub fn ack_up_to(&self, offset: u64) {
        let _ = self.command(Command::AckUpTo { offset });
    }

    /// A new credit window (push mode); zero messages pauses delivery.
    pub fn set_credit(&self, max_messages: u32, max_bytes: u64) {
        let _ = self.command(Command::Credit {
            max_messages,
            max_bytes,
        });
    }

    /// What the daemon said when this member (last) joined.
    pub fn info(&self) -> SubscriptionInfo {
        *self.shared.info.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes every ack durable, then leaves the group and closes the
    /// connection. Deliveries not acked are delivered again, to another
    /// member or a later one.
    pub async fn close(self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Close { reply }).is_ok() {
            let _ = done.await;
        }
    }

    fn command(&self, c: Command) -> Result<(), ConsumerError> {
        self.commands.send(c).map_err(|_| self.stopped())
    }

    /// Why the driver is gone.
    fn stopped(&self) -> ConsumerError {
        self.shared.failure().unwrap_or(ConsumerError::Closed)
    }
}

/// Up to `max` of `ready`: all of it (its allocation reused) when it fits.
fn take_batch(ready: &mut std::vec::IntoIter<Delivery>, max: usize) -> Vec<Delivery> {
    if ready.len() <= max {
        std::mem::replace(ready, Vec::new().into_iter()).collect()
    } else {
        ready.by_ref().take(max).collect()
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("mode", &self.mode)
            .field("info", &self.info())
            .finish()
    }
}

fn validate(stream: &str, o: &ConsumerOptions) -> Result<(), ConsumerError> {
    let bad = |m: &str| Err(ConsumerError::Config(m.into()));
    let limit = u16::MAX as usize;
    if stream.is_empty() || stream.len() > limit {
        return bad("the stream name must be 1 to 65,535 bytes");
    }
    if o.group.is_empty() || o.group.len() > limit {
        return bad("the group name must be 1 to 65,535 bytes");
    }
    if o.max_messages == 0 || o.max_bytes == 0 {
        return bad("max_messages and max_bytes must be at least 1");
    }
    if o.reconnect_timeout.is_zero() {
        return bad("reconnect_timeout must be more than zero");
    }
    Ok(())
}
