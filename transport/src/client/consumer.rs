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

/// One message delivered to this consumer. Settle it with [`ack`], or
/// [`nack`] to have it delivered again; a delivery neither acked nor
/// extended by its [`deadline`] is delivered again anyway, to this member
/// or another. Clones are the same delivery.
///
/// [`ack`]: Delivery::ack
/// [`nack`]: Delivery::nack
/// [`deadline`]: Delivery::deadline
pub struct Delivery {
    /// The record's offset in its stream.
    pub offset: u64,
    /// How many times this message has been delivered, this one included
    /// (1: the first time; more: it was nacked or its deadline passed).
    pub delivery: u32,
    /// When the daemon stored it (unix microseconds).
    pub timestamp_us: u64,
    /// The producer that published it, and the sequence number it gave it:
    /// together they identify the message across redeliveries and replays.
    pub producer: u64,
    pub seq: u64,
    pub payload: Bytes,
    /// Where acks, nacks and extends go: one per consumer, shared by every
    /// delivery (cloned, not allocated, per delivery).
    inbox: Arc<Inbox>,
    /// Which subscription it came from: nacks and extends make sense only
    /// to that one.
    epoch: u64,
    received: Instant,
    /// The ack deadline, in microseconds after `received`.
    deadline_us: Mutex<DeadlineCell>,
}

/// A delivery's ack deadline (microseconds after its receipt). Its own
/// until the delivery is first cloned; from then on shared by the clones,
/// so that an extend through one is seen by all. Deliveries are seldom
/// cloned: the common one costs no allocation.
enum DeadlineCell {
    Own(u64),
    Shared(Arc<AtomicU64>),
}

impl Clone for Delivery {
    fn clone(&self) -> Self {
        let shared = {
            let mut cell = lock(&self.deadline_us);
            match &*cell {
                DeadlineCell::Shared(a) => a.clone(),
                DeadlineCell::Own(us) => {
                    let a = Arc::new(AtomicU64::new(*us));
                    *cell = DeadlineCell::Shared(a.clone());
                    a
                }
            }
        };
        Delivery {
            offset: self.offset,
            delivery: self.delivery,
            timestamp_us: self.timestamp_us,
            producer: self.producer,
            seq: self.seq,
            payload: self.payload.clone(),
            inbox: self.inbox.clone(),
            epoch: self.epoch,
            received: self.received,
            deadline_us: Mutex::new(DeadlineCell::Shared(shared)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What deliveries say, on its way to the driver.
#[derive(Debug, Clone, Copy)]
enum Op {
    Ack {
        offset: u64,
    },
    Nack {
        offset: u64,
        epoch: u64,
        delay_ms: u64,
    },
    Extend {
        offset: u64,
        epoch: u64,
        ms: u64,
    },
}

/// The deliveries' side of the driver: what they said, in order, until the
/// driver takes it all at once.
struct Inbox {
    state: Mutex<InboxState>,
    /// Told when the inbox stops being empty.
    wake: Notify,
}

struct InboxState {
    ops: Vec<Op>,
    /// The driver is gone: nobody will read what is put here.
    closed: bool,
}

impl Inbox {
    fn new() -> Self {
        Inbox {
            state: Mutex::new(InboxState {
                ops: Vec::new(),
                closed: false,
            }),
            wake: Notify::new(),
        }
    }

    fn put(&self, op: Op) {
        self.put_all(std::iter::once(op));
    }

    /// Puts `ops` in order, under one lock.
    fn put_all(&self, ops: impl Iterator<Item = Op>) {
        let mut s = lock(&self.state);
        // A closed consumer has nobody to tell: the daemon delivers the
        // message again, as for any delivery not settled.
        if s.closed {
            return;
        }
        let first = s.ops.is_empty();
        s.ops.extend(ops);
        drop(s);
        // Whoever made it non-empty wakes the driver; the rest ride along
        // (the driver empties it only when it takes it all).
        if first {
            self.wake.notify_one();
        }
    }

    /// Swaps everything put so far with `into` (empty, kept for its
    /// capacity).
    fn take(&self, into: &mut Vec<Op>) {
        debug_assert!(into.is_empty());
        std::mem::swap(&mut lock(&self.state).ops, into);
    }

    fn close(&self) {
        let mut s = lock(&self.state);
        s.closed = true;
        s.ops = Vec::new();
    }
}

impl Delivery {
    /// Done with this message: the daemon will not deliver it again (once
    /// the ack is durable; see [`Consumer::sync`]). After the consumer is
    /// closed, does nothing.
    pub fn ack(&self) {
        self.inbox.put(Op::Ack {
            offset: self.offset,
        });
    }

    /// Acks each of `deliveries`, as [`ack`](Delivery::ack) on each would,
    /// but with one lock per consumer instead of one per delivery: for
    /// callers that handle messages in batches
    /// ([`Consumer::next_batch`]).
    pub fn ack_all(deliveries: &[Delivery]) {
        let mut rest = deliveries;
        while let Some(first) = rest.first() {
            // The deliveries of one consumer share its inbox.
            let n = rest
                .iter()
                .position(|d| !Arc::ptr_eq(&d.inbox, &first.inbox))
                .unwrap_or(rest.len());
            let (same, after) = rest.split_at(n);
            first
                .inbox
                .put_all(same.iter().map(|d| Op::Ack { offset: d.offset }));
            rest = after;
        }
    }

    /// Not done: deliver it again after `delay` (at once for zero).
    pub fn nack(&self, delay: Duration) {
        self.inbox.put(Op::Nack {
            offset: self.offset,
            epoch: self.epoch,
            delay_ms: millis(delay),
        });
    }

    /// Still working on it: move its ack deadline to `by` from now.
    pub fn extend(&self, by: Duration) {
        let due = Instant::now()
            .saturating_duration_since(self.received)
            .saturating_add(by);
        match &mut *lock(&self.deadline_us) {
            DeadlineCell::Own(us) => *us = micros(due),
            DeadlineCell::Shared(a) => a.store(micros(due), Relaxed),
        }
        self.inbox.put(Op::Extend {
            offset: self.offset,
            epoch: self.epoch,
            ms: millis(by),
        });
    }

    /// When the daemon delivers this message again unless it is acked or
    /// extended first (measured from its receipt here).
    pub fn deadline(&self) -> Instant {
        let us = match &*lock(&self.deadline_us) {
            DeadlineCell::Own(us) => *us,
            DeadlineCell::Shared(a) => a.load(Relaxed),
        };
        after(self.received, Duration::from_micros(us))
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("offset", &self.offset)
            .field("delivery", &self.delivery)
            .field("timestamp_us", &self.timestamp_us)
            .field("producer", &self.producer)
            .field("seq", &self.seq)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// `d` after `t`, where "never" (any `d` beyond a century, as a daemon or
/// a caller may say) is a century: `Instant` arithmetic must not overflow.
fn after(t: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    t + d.min(CENTURY)
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
        let mut driver = Driver {
            addr,
            stream: stream.to_owned(),
            options,
            _commands_tx: commands_tx.clone(),
            commands,
            inbox: Arc::new(Inbox::new()),
            ops: Vec::new(),
            deliveries: deliveries_tx,
            pushed: Vec::new(),
            shared: Arc::new(Shared {
                info: Mutex::new(SubscriptionInfo {
                    member: 0,
                    ack_deadline: Duration::ZERO,
                    max_deliveries: 0,
                }),
                failure: Mutex::new(None),
            }),
            sub: None,
            epoch: 0,
            outstanding: OffsetSet::default(),
            acks: Vec::new(),
            ranges: Vec::new(),
            unsynced: VecDeque::new(),
            unsynced_new: 0,
            unsynced_since: None,
            next_sync: 1,
            syncs: Vec::new(),
            fetch: None,
            next_fetch: 1,
            spare: VecDeque::new(),
            closing: None,
            backoff: BACKOFF_MIN,
            out: Vec::new(),
        };
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

/// One subscription: a QUIC connection and the consumer's stream on it.
struct Subscription {
    session: QuicSession,
    send: SendStream,
    recv: FramedRecv,
    since: Instant,
}

/// Someone waiting for a Synced.
enum SyncWaiter {
    Sync(Reply<()>),
    /// [`Consumer::close`] (or the consumer was dropped: `None`).
    Close(Option<oneshot::Sender<()>>),
}

/// The fetch in progress (pull mode).
struct Fetch {
    id: u64,
    max: u32,
    /// When the daemon's wait ends.
    wait_until: Instant,
    got: Vec<Delivery>,
    reply: Reply<Vec<Delivery>>,
}

/// What the driver pushes to [`Consumer::next`]: the deliveries of one
/// turn, as one message.
enum Pushed {
    One(Delivery),
    Many(Vec<Delivery>),
}

/// Why a turn of the driver ended the loop.
enum Stop {
    /// The connection or stream is gone: subscribe again.
    Lost(ConsumerError),
    /// Give up.
    Fatal(ConsumerError),
    /// Closed as asked.
    Done,
}

/// What woke the driver.
enum Wake {
    Frame(std::io::Result<Option<Bytes>>),
    Command(Command),
    /// Deliveries put something in the inbox.
    Ops,
    Timer,
    Dropped,
}

/// Polls `fut` once: its output if it is ready now. For cancel-safe
/// futures only (it is dropped when not ready).
fn ready_now<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    // The driver is woken by the next `select!` anyway: no waker needed.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

/// The task that owns the connection.
struct Driver {
    addr: SocketAddr,
    stream: String,
    /// The credit window in here is the latest one set.
    options: ConsumerOptions,
    /// Keeps `commands` open: its `recv` never says `None`.
    _commands_tx: mpsc::UnboundedSender<Command>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// What the deliveries say; closed when the driver goes.
    inbox: Arc<Inbox>,
    /// The inbox taken, kept for its capacity.
    ops: Vec<Op>,
    deliveries: mpsc::UnboundedSender<Pushed>,
    /// Push mode: deliveries of this turn, sent to the caller at its end.
    pushed: Vec<Delivery>,
    shared: Arc<Shared>,
    /// `None` only between a loss and the next subscription.
    sub: Option<Subscription>,
    /// Counts subscriptions.
    epoch: u64,
    /// Offsets delivered on this subscription and not settled yet.
    outstanding: OffsetSet,
    /// The acks of this turn, and as ranges: kept for their capacity.
    acks: Vec<u64>,
    ranges: Vec<Range<u64>>,
    /// Acks sent and not yet known durable, as ranges in order sent (an ack
    /// following the one before merges with it), each with the id of the
    /// first Sync sent after it.
    unsynced: VecDeque<(u64, Range<u64>)>,
    /// Of those, how many offsets no Sync has been sent after yet, and
    /// since when.
    unsynced_new: usize,
    unsynced_since: Option<Instant>,
    next_sync: u64,
    /// Waiting for `Synced { id }` with id at least theirs.
    syncs: Vec<(u64, SyncWaiter)>,
    fetch: Option<Fetch>,
    next_fetch: u64,
    /// Pull mode: deliveries that came when no fetch asked for them.
    spare: VecDeque<Delivery>,
    /// Give up waiting for the last Synced at this time when closing.
    closing: Option<Instant>,
    backoff: Duration,
    /// Frames to write at the end of the turn.
    out: Vec<u8>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Acks and the rest from now on go nowhere, as they did to a
        // closed channel.
        self.inbox.close();
    }
}

impl Driver {
    async fn run(mut self) {
        loop {
            let stop = match self.turn().await {
                Ok(()) => continue,
                Err(stop) => stop,
            };
            match stop {
                Stop::Done => return,
                Stop::Fatal(e) => return self.fail(e),
                Stop::Lost(e) => {
                    if let Err(e) = self.resubscribe(e).await {
                        return self.fail(e);
                    }
                }
            }
        }
    }

    /// Waits for one thing to happen, handles it, and writes what it asks.
    async fn turn(&mut self) -> Result<(), Stop> {
        let Some(sub) = self.sub.as_mut() else {
            return Err(Stop::Lost(ConsumerError::Io("not subscribed".into())));
        };
        let timer = [
            self.unsynced_since.map(|t| t + AUTO_SYNC_AFTER),
            self.fetch.as_ref().map(|f| f.wait_until + FETCH_SLACK),
            self.closing,
        ]
        .into_iter()
        .flatten()
        .min();
        let sleep = async {
            match timer {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let wake = tokio::select! {
            f = sub.recv.next() => Wake::Frame(f),
            // The driver holds a sender itself: never `None`.
            Some(c) = self.commands.recv() => Wake::Command(c),
            _ = self.inbox.wake.notified() => Wake::Ops,
            _ = sleep => Wake::Timer,
            _ = self.deliveries.closed(), if self.closing.is_none() => Wake::Dropped,
        };
        let r = match wake {
            Wake::Frame(f) => self.on_frames(f),
            Wake::Command(c) => {
                self.on_commands(Some(c));
                Ok(())
            }
            Wake::Ops => {
                self.on_commands(None);
                Ok(())
            }
            Wake::Timer => self.on_timer(),
            // Nobody is left to receive: leave as close() would, after
            // sending what the deliveries said before.
            Wake::Dropped => {
                while let Ok(c) = self.commands.try_recv() {
                    self.on_commands(Some(c));
                }
                self.on_commands(None);
                self.closing_waiter(None);
                self.send_sync();
                Ok(())
            }
        };
        self.push_deliveries();
        r?;
        self.auto_sync(Instant::now());
        self.flush().await
    }

    /// Hands the deliveries of this turn to [`Consumer::next`], in one go.
    fn push_deliveries(&mut self) {
        let d = match self.pushed.len() {
            0 => return,
            1 => Pushed::One(self.pushed.pop().expect("one")),
            n => Pushed::Many(std::mem::replace(&mut self.pushed, Vec::with_capacity(n))),
        };
        // Nobody reads any more: the daemon delivers them again.
        let _ = self.deliveries.send(d);
    }

    /// Handles `first`, then every frame already arrived (up to
    /// [`FRAMES_PER_TURN`]): a chunk read from the stream holds many.
    fn on_frames(&mut self, first: std::io::Result<Option<Bytes>>) -> Result<(), Stop> {
        // One clock reading for the lot: they all arrived by now.
        let now = Instant::now();
        self.on_frame(first, now)?;
        for _ in 1..FRAMES_PER_TURN {
            let Some(sub) = self.sub.as_mut() else {
                break;
            };
            match ready_now(sub.recv.next()) {
                Some(f) => self.on_frame(f, now)?,
                None => break,
            }
        }
        Ok(())
    }

    /// Connects, authenticates and subscribes.
    async fn subscribe(&self) -> Result<(Subscription, SubscriptionInfo), ConsumerError> {
        let addr = self.addr;
        let o = &self.options;
        let session = link::quic_session(addr, &o.quic, KEEP_ALIVE, o.bind)
            .await
            .map_err(ConsumerError::from_link)?;
        let conn = &session.conn;
        let stream_error =
            |e: std::io::Error| ConsumerError::from_link(link::stream_error(addr, conn, e));
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| ConsumerError::from_link(link::connection_error(addr, e)))?;
        let mut recv = FramedRecv::new(recv);
        let subscribe = Control::Subscribe {
            stream: self.stream.clone(),
            group: o.group.clone(),
            start: o.start,
            mode: o.mode,
            max_messages: o.max_messages,
            max_bytes: o.max_bytes,
        };
        frame::write(&mut send, &subscribe.encode())
            .await
            .map_err(stream_error)?;
        let reply = match tokio::time::timeout(SUBSCRIBE_TIMEOUT, recv.next()).await {
            Err(_) => {
                return Err(ConsumerError::Unreachable {
                    addr,
                    reason: format!("no answer to the subscription within {SUBSCRIBE_TIMEOUT:?}"),
                })
            }
            Ok(Ok(Some(f))) => Control::decode(&f)
                .map_err(|e| ConsumerError::Protocol(format!("answer to Subscribe: {e}")))?,
            Ok(Ok(None)) => {
                return Err(stream_error(std::io::Error::other(
                    "the daemon ended the stream without answering",
                )))
            }
            Ok(Err(e)) => return Err(stream_error(e)),
        };
        match reply {
            Control::Subscribed {
                member,
                ack_deadline_ms,
                max_deliveries,
            } => {
                // The daemon's next bytes on this stream are long frames:
                // switch before reading any.
                recv.set_long();
                let info = SubscriptionInfo {
                    member,
                    ack_deadline: Duration::from_millis(ack_deadline_ms),
                    max_deliveries,
                };
                let sub = Subscription {
                    session,
                    send,
                    recv,
                    since: Instant::now(),
                };
                Ok((sub, info))
            }
            Control::Refused { code, reason } => Err(ConsumerError::Refused { code, reason }),
            other => Err(ConsumerError::Protocol(format!(
                "unexpected answer to Subscribe: {other:?}"
            ))),
        }
    }

    fn install(&mut self, sub: Subscription, info: SubscriptionInfo) {
        info!(
            stream = %self.stream,
            group = %self.options.group,
            member = info.member,
            ack_deadline = ?info.ack_deadline,
            max_deliveries = info.max_deliveries,
            "subscribed"
        );
        *self.shared.info.lock().unwrap_or_else(|e| e.into_inner()) = info;
        self.sub = Some(sub);
        self.epoch += 1;
        self.outstanding.clear();
    }

    /// The subscription was lost: subscribe again, with backoff, until
    /// `reconnect_timeout`; then send again what it may have lost.
    async fn resubscribe(&mut self, cause: ConsumerError) -> Result<(), ConsumerError> {
        warn!(stream = %self.stream, group = %self.options.group, error = %cause, "subscription lost; reconnecting");
        if let Some(old) = self.sub.take() {
            if old.since.elapsed() >= HEALTHY {
                self.backoff = BACKOFF_MIN;
            }
            old.session
                .conn
                .close(close_code::DONE.into(), b"reconnecting");
        }
        let started = Instant::now();
        let mut last = cause;
        loop {
            let left = self
                .options
                .reconnect_timeout
                .saturating_sub(started.elapsed());
            if left.is_zero() {
                let last = match last {
                    ConsumerError::Unreachable { reason, .. } => reason,
                    other => other.to_string(),
                };
                return Err(ConsumerError::Unreachable {
                    addr: self.addr,
                    reason: format!(
                        "{last}; gave up after {:?} of reconnecting",
                        self.options.reconnect_timeout
                    ),
                });
            }
            tokio::time::sleep(self.backoff.min(left)).await;
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            let left = self
                .options
                .reconnect_timeout
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(1));
            match tokio::time::timeout(left, self.subscribe()).await {
                Ok(Ok((sub, info))) => {
                    self.install(sub, info);
                    self.replay();
                    match self.flush().await {
                        Ok(()) => return Ok(()),
                        Err(Stop::Lost(e)) => {
                            debug!(error = %e, "lost again at once");
                            self.sub = None;
                            last = e;
                        }
                        Err(Stop::Fatal(e)) => return Err(e),
                        Err(Stop::Done) => return Err(ConsumerError::Closed),
                    }
                }
                Ok(Err(e)) if e.is_permanent() => return Err(e),
                Ok(Err(e)) => {
                    debug!(error = %e, "reconnect attempt failed");
                    last = e;
                }
                Err(_) => {}
            }
        }
    }

    /// On a new subscription, before anything else: every ack not known
    /// durable (the daemon takes acks for any offset idempotently), a Sync
    /// for whoever waits for one, and the fetch in progress.
    fn replay(&mut self) {
        let mut ranges: Vec<Range<u64>> = self.unsynced.drain(..).map(|(_, r)| r).collect();
        merge_ranges(&mut ranges);
        self.unsynced_new = 0;
        self.unsynced_since = None;
        self.send_acks(&ranges, Instant::now());
        if !self.unsynced.is_empty() || !self.syncs.is_empty() {
            let id = self.send_sync();
            for (waits_for, _) in &mut self.syncs {
                *waits_for = id;
            }
        }
        let Some(mut f) = self.fetch.take() else {
            return;
        };
        if !f.got.is_empty() {
            return self.answer_fetch(f);
        }
        f.id = self.next_fetch;
        self.next_fetch += 1;
        let wait = f.wait_until.saturating_duration_since(Instant::now());
        FromConsumer::Fetch {
            id: f.id,
            max: f.max,
            wait_ms: millis(wait),
        }
        .put_frame(&mut self.out);
        self.fetch = Some(f);
    }

    fn on_frame(&mut self, f: std::io::Result<Option<Bytes>>, now: Instant) -> Result<(), Stop> {
        let body = match f {
            Ok(Some(body)) => body,
            Ok(None) => return Err(self.lost("the daemon ended the subscription's stream")),
            // A frame over the limit: the daemon is broken.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(Stop::Fatal(ConsumerError::Protocol(e.to_string())))
            }
            Err(e) => return Err(self.lost(&e.to_string())),
        };
        let m = ToConsumer::decode_owned(body)
            .map_err(|e| Stop::Fatal(ConsumerError::Protocol(format!("from the daemon: {e}"))))?;
        match m {
            ToConsumer::Deliver(d) => self.on_deliver(d, now),
            ToConsumer::FetchDone { id } => {
                if self.fetch.as_ref().is_some_and(|f| f.id == id) {
                    let f = self.fetch.take().expect("a fetch");
                    self.answer_fetch(f);
                }
            }
            ToConsumer::Synced { id } => return self.on_synced(id),
            ToConsumer::Error { reason } => return Err(Stop::Fatal(ConsumerError::Ended(reason))),
        }
        Ok(())
    }

    fn on_deliver(&mut self, d: consume::Delivery, received: Instant) {
        self.outstanding.insert(d.offset);
        let delivery = Delivery {
            offset: d.offset,
            delivery: d.delivery,
            timestamp_us: d.timestamp_us,
            producer: d.producer,
            seq: d.seq,
            payload: d.payload,
            inbox: self.inbox.clone(),
            epoch: self.epoch,
            received,
            deadline_us: Mutex::new(DeadlineCell::Own(micros(Duration::from_millis(
                d.deadline_ms,
            )))),
        };
        match self.options.mode {
            // Nobody reads after close(): the daemon delivers it again.
            ConsumeMode::Push if self.closing.is_some() => {}
            ConsumeMode::Push => self.pushed.push(delivery),
            ConsumeMode::Pull => match &mut self.fetch {
                Some(f) => f.got.push(delivery),
                None => self.spare.push_back(delivery),
            },
        }
    }

    /// Answers a fetch; if its caller went away, what it got waits for the
    /// next one.
    fn answer_fetch(&mut self, f: Fetch) {
        if let Err(Ok(got)) = f.reply.send(Ok(f.got)) {
            self.spare.extend(got);
        }
    }

    fn on_synced(&mut self, id: u64) -> Result<(), Stop> {
        while self.unsynced.front().is_some_and(|(s, _)| *s <= id) {
            self.unsynced.pop_front();
        }
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.syncs)
            .into_iter()
            .partition(|(s, _)| *s <= id);
        self.syncs = waiting;
        let mut close = Vec::new();
        for (_, w) in done {
            match w {
                SyncWaiter::Sync(reply) => {
                    let _ = reply.send(Ok(()));
                }
                SyncWaiter::Close(reply) => close.push(reply),
            }
        }
        if close.is_empty() {
            return Ok(());
        }
        self.finish_close(close);
        Err(Stop::Done)
    }

    /// Takes what the deliveries said, in order: acks, nacks, extends.
    fn take_ops(
        &mut self,
        nacks: &mut BTreeMap<u64, Vec<u64>>,
        extends: &mut BTreeMap<u64, Vec<u64>>,
    ) {
        let mut ops = std::mem::take(&mut self.ops);
        self.inbox.take(&mut ops);
        for op in ops.drain(..) {
            match op {
                Op::Ack { offset } => {
                    // Sent whatever the bookkeeping says (the daemon takes
                    // acks idempotently): an ack from an earlier
                    // subscription still counts, and so does one for a
                    // redelivery whose first delivery was nacked.
                    self.outstanding.remove(&offset);
                    self.acks.push(offset);
                }
                Op::Nack {
                    offset,
                    epoch,
                    delay_ms,
                } => {
                    if epoch == self.epoch && self.outstanding.remove(&offset) {
                        nacks.entry(delay_ms).or_default().push(offset);
                    }
                }
                Op::Extend { offset, epoch, ms } => {
                    if epoch == self.epoch && self.outstanding.contains(&offset) {
                        extends.entry(ms).or_default().push(offset);
                    }
                }
            }
        }
        self.ops = ops;
    }

    /// Handles `first` and the commands queued after it, and everything in
    /// the inbox; queues the frames they ask for.
    fn on_commands(&mut self, first: Option<Command>) {
        let now = Instant::now();
        debug_assert!(self.acks.is_empty());
        let mut up_to = None;
        let mut nacks: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut extends: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut credit = None;
        let mut sync = false;
        let mut next = first;
        let mut taken = 0;
        while let Some(c) = next.take() {
            taken += 1;
            // What deliveries said before this command was sent comes
            // before it (a sync covers every ack made before it).
            self.take_ops(&mut nacks, &mut extends);
            match c {
                Command::AckUpTo { offset } => {
                    // What the daemon will ack, remembered one by one: a
                    // new member has other messages outstanding, so only
                    // these offsets may be sent again after a reconnect.
                    let covered = ranges_of(&self.outstanding.take_up_to(offset));
                    self.remember_acks(&covered, now);
                    up_to = up_to.max(Some(offset));
                }
                Command::Credit {
                    max_messages,
                    max_bytes,
                } => {
                    self.options.max_messages = max_messages;
                    self.options.max_bytes = max_bytes;
                    credit = Some((max_messages, max_bytes));
                }
                Command::Fetch { max, wait, reply } => self.start_fetch(max, wait, reply, now),
                Command::Sync { reply } => {
                    self.syncs.push((self.next_sync, SyncWaiter::Sync(reply)));
                    sync = true;
                }
                Command::Close { reply } => {
                    self.closing_waiter(Some(reply));
                    sync = true;
                }
            }
            if taken < COMMANDS_PER_TURN {
                next = self.commands.try_recv().ok();
            }
        }
        self.take_ops(&mut nacks, &mut extends);
        // Extends first: a delivery extended and then acked in one turn
        // ends up acked.
        for (ms, offsets) in extends {
            for chunk in offsets.chunks(MAX_OFFSETS) {
                FromConsumer::Extend {
                    offsets: chunk.to_vec(),
                    ms,
                }
                .put_frame(&mut self.out);
            }
        }
        if !self.acks.is_empty() {
            // Reuses the buffers: no allocation per turn.
            let mut ranges = std::mem::take(&mut self.ranges);
            ranges_into(&mut self.acks, &mut ranges);
            self.acks.clear();
            self.send_acks(&ranges, now);
            ranges.clear();
            self.ranges = ranges;
        }
        if let Some(offset) = up_to {
            FromConsumer::AckUpTo { offset }.put_frame(&mut self.out);
        }
        for (delay_ms, offsets) in nacks {
            for chunk in offsets.chunks(MAX_OFFSETS) {
                FromConsumer::Nack {
                    offsets: chunk.to_vec(),
                    delay_ms,
                }
                .put_frame(&mut self.out);
            }
        }
        if let Some((max_messages, max_bytes)) = credit {
            FromConsumer::Credit {
                max_messages,
                max_bytes,
            }
            .put_frame(&mut self.out);
        }
        // Last, so that it covers everything above.
        if sync {
            self.send_sync();
        }
    }

    fn start_fetch(&mut self, max: u32, wait: Duration, reply: Reply<Vec<Delivery>>, now: Instant) {
        // A fetch whose caller gave up leaves what it got to this one.
        if let Some(old) = self.fetch.take() {
            self.spare.extend(old.got);
        }
        let take = self.spare.len().min(max as usize);
        let got: Vec<Delivery> = self.spare.drain(..take).collect();
        let f = Fetch {
            id: self.next_fetch,
            max,
            wait_until: after(now, wait),
            got,
            reply,
        };
        self.next_fetch += 1;
        if !f.got.is_empty() {
            return self.answer_fetch(f);
        }
        FromConsumer::Fetch {
            id: f.id,
            max,
            wait_ms: millis(wait),
        }
        .put_frame(&mut self.out);
        self.fetch = Some(f);
    }

    /// Leaves once every ack is durable: the close waits for the Synced of
    /// the next Sync (at most `reconnect_timeout`).
    fn closing_waiter(&mut self, reply: Option<oneshot::Sender<()>>) {
        self.syncs.push((self.next_sync, SyncWaiter::Close(reply)));
        if self.closing.is_none() {
            self.closing = Some(after(Instant::now(), self.options.reconnect_timeout));
        }
    }

    fn on_timer(&mut self) -> Result<(), Stop> {
        let now = Instant::now();
        if self.closing.is_some_and(|t| t <= now) {
            warn!(stream = %self.stream, "closing without every ack confirmed durable: the daemon did not answer");
            let close = self
                .syncs
                .drain(..)
                .filter_map(|(_, w)| match w {
                    SyncWaiter::Sync(reply) => {
                        let _ = reply.send(Err(ConsumerError::Closed));
                        None
                    }
                    SyncWaiter::Close(reply) => Some(reply),
                })
                .collect();
            self.finish_close(close);
            return Err(Stop::Done);
        }
        if self
            .fetch
            .as_ref()
            .is_some_and(|f| f.wait_until + FETCH_SLACK <= now)
        {
            debug!("no FetchDone from the daemon; the fetch returns what it has");
            let f = self.fetch.take().expect("a fetch");
            self.answer_fetch(f);
        }
        Ok(())
    }

    /// Sends a Sync of its own when acks have waited long enough for one.
    fn auto_sync(&mut self, now: Instant) {
        let due = self
            .unsynced_since
            .is_some_and(|t| t + AUTO_SYNC_AFTER <= now);
        if due || self.unsynced_new >= MAX_OFFSETS {
            self.send_sync();
        }
    }

    /// Queues Ack frames for `ranges` (sorted, apart) and remembers them
    /// until synced.
    fn send_acks(&mut self, ranges: &[Range<u64>], now: Instant) {
        put_acks(&mut self.out, ranges);
        self.remember_acks(ranges, now);
    }

    fn remember_acks(&mut self, ranges: &[Range<u64>], now: Instant) {
        let tag = self.next_sync;
        let mut added = 0;
        for r in ranges {
            added += (r.end - r.start) as usize;
            match self.unsynced.back_mut() {
                // Acks in order, between the same Syncs: one range.
                Some((t, last)) if *t == tag && last.end == r.start => last.end = r.end,
                _ => self.unsynced.push_back((tag, r.clone())),
            }
        }
        if added > 0 {
            self.unsynced_new += added;
            self.unsynced_since.get_or_insert(now);
        }
    }

    /// Queues a Sync covering everything queued so far; returns its id.
    fn send_sync(&mut self) -> u64 {
        let id = self.next_sync;
        self.next_sync += 1;
        FromConsumer::Sync { id }.put_frame(&mut self.out);
        self.unsynced_new = 0;
        self.unsynced_since = None;
        id
    }

    /// Writes the frames queued this turn.
    async fn flush(&mut self) -> Result<(), Stop> {
        if self.out.is_empty() {
            return Ok(());
        }
        let Some(sub) = self.sub.as_mut() else {
            // Nothing to write to: what matters is replayed on the next one.
            self.out.clear();
            return Ok(());
        };
        let r = sub.send.write_all(&self.out).await;
        self.out.clear();
        r.map_err(|e| self.lost(&e.to_string()))
    }

    /// What a failed stream means: the connection's reason when it closed.
    fn lost(&self, what: &str) -> Stop {
        let reason = self
            .sub
            .as_ref()
            .and_then(|s| s.session.conn.close_reason());
        let e = match reason {
            Some(ConnectionError::ApplicationClosed(c))
                if u64::from(c.error_code) == u64::from(close_code::PROTOCOL) =>
            {
                return Stop::Fatal(ConsumerError::Protocol(format!(
                    "sluiced closed the connection: {}",
                    String::from_utf8_lossy(&c.reason)
                )));
            }
            Some(reason) => ConsumerError::from_link(link::connection_error(self.addr, reason)),
            None => ConsumerError::Io(what.to_owned()),
        };
        if e.is_permanent() {
            Stop::Fatal(e)
        } else {
            Stop::Lost(e)
        }
    }

    /// Closes the connection as done, and tells whoever waits for that.
    fn finish_close(&mut self, replies: Vec<Option<oneshot::Sender<()>>>) {
        let endpoint = self.sub.take().map(|sub| {
            sub.session.conn.close(close_code::DONE.into(), b"done");
            sub.session.endpoint.clone()
        });
        self.settle_all(ConsumerError::Closed);
        // `close()` returns once the close has reached the daemon (or after
        // a second): a process that exits right after is no longer a member
        // there, and nothing more is pushed to it.
        tokio::spawn(async move {
            if let Some(endpoint) = endpoint {
                let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
            }
            for reply in replies.into_iter().flatten() {
                let _ = reply.send(());
            }
        });
        debug!(stream = %self.stream, group = %self.options.group, "consumer closed");
    }

    /// The end: says why to everyone still waiting.
    fn fail(mut self, e: ConsumerError) {
        warn!(stream = %self.stream, group = %self.options.group, error = %e, "consumer failed");
        *self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
        if let Some(sub) = self.sub.take() {
            let (code, reason): (u32, &[u8]) = match e {
                ConsumerError::Protocol(_) => (close_code::PROTOCOL, b"protocol error"),
                _ => (close_code::DONE, b"consumer stopped"),
            };
            sub.session.conn.close(code.into(), reason);
        }
        self.settle_all(e);
    }

    /// Answers every fetch and sync still waiting with `e`.
    fn settle_all(&mut self, e: ConsumerError) {
        if let Some(f) = self.fetch.take() {
            let _ = f.reply.send(Err(e.clone()));
        }
        for (_, w) in self.syncs.drain(..) {
            match w {
                SyncWaiter::Sync(reply) => {
                    let _ = reply.send(Err(e.clone()));
                }
                SyncWaiter::Close(Some(reply)) => {
                    let _ = reply.send(());
                }
                SyncWaiter::Close(None) => {}
            }
        }
    }
}

trait TakeUpTo {
    /// Removes and returns every offset up to `offset` (rare: a cumulative
    /// ack), in no particular order.
    fn take_up_to(&mut self, offset: u64) -> Vec<u64>;
}

impl TakeUpTo for OffsetSet {
    fn take_up_to(&mut self, offset: u64) -> Vec<u64> {
        let mut covered = Vec::new();
        self.retain(|&o| {
            let take = o <= offset;
            if take {
                covered.push(o);
            }
            !take
        });
        covered
    }
}

/// Sorts `ranges` and merges those that overlap or touch.
fn merge_ranges(ranges: &mut Vec<Range<u64>>) {
    ranges.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges.drain(..) {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    *ranges = merged;
}

/// Appends Ack frames for `ranges`, each covering at most [`MAX_OFFSETS`]
/// offsets (a range longer than what is left of a frame is split).
fn put_acks(out: &mut Vec<u8>, ranges: &[Range<u64>]) {
    let mut frame: Vec<Range<u64>> = Vec::new();
    let mut room = MAX_OFFSETS as u64;
    for r in ranges {
        let mut r = r.clone();
        while !r.is_empty() {
            let n = (r.end - r.start).min(room);
            frame.push(r.start..r.start + n);
            r.start += n;
            room -= n;
            if room == 0 {
                put_ack(out, &mut frame);
                room = MAX_OFFSETS as u64;
            }
        }
    }
    if !frame.is_empty() {
        put_ack(out, &mut frame);
    }
}

/// One Ack frame of `frame`'s ranges, which it empties (keeping its
/// capacity).
fn put_ack(out: &mut Vec<u8>, frame: &mut Vec<Range<u64>>) {
    let ack = FromConsumer::Ack {
        ranges: std::mem::take(frame),
    };
    ack.put_frame(out);
    if let FromConsumer::Ack { ranges } = ack {
        *frame = ranges;
        frame.clear();
    }
}

#[cfg(test)]
// Lists of one range are lists of ack ranges here, not ranges mistyped.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    fn decode_acks(out: &[u8]) -> Vec<Vec<Range<u64>>> {
        let mut d = frame::Deframer::new();
        d.set_long();
        d.extend(out);
        let mut got = Vec::new();
        while let Some(f) = d.next_frame().unwrap() {
            match FromConsumer::decode(&f).unwrap() {
                FromConsumer::Ack { ranges } => got.push(ranges),
                other => panic!("not an ack: {other:?}"),
            }
        }
        got
    }

    #[test]
    fn ranges_merge_when_they_overlap_or_touch() {
        let mut r = vec![10..12, 0..3, 3..5, 11..15, 20..21, 1..2];
        merge_ranges(&mut r);
        assert_eq!(r, vec![0..5, 10..15, 20..21]);
    }

    #[test]
    fn ack_frames_cover_at_most_the_limit_each() {
        let max = MAX_OFFSETS as u64;
        let mut out = Vec::new();
        put_acks(&mut out, &[0..10, 20..20 + 2 * max, 5 * max..5 * max + 1]);
        let frames = decode_acks(&out);
        assert_eq!(
            frames,
            vec![
                vec![0..10, 20..20 + max - 10],
                vec![20 + max - 10..20 + 2 * max - 10],
                vec![20 + 2 * max - 10..20 + 2 * max, 5 * max..5 * max + 1],
            ]
        );
        let mut out = Vec::new();
        put_acks(&mut out, &[0..max]);
        assert_eq!(decode_acks(&out), vec![vec![0..max]]);
    }

    #[test]
    fn taking_up_to_an_offset_leaves_the_rest() {
        let mut s = OffsetSet::default();
        s.extend([1, 5, 9, 10, 200, u64::MAX]);
        let mut taken = s.take_up_to(9);
        taken.sort_unstable();
        assert_eq!(taken, vec![1, 5, 9]);
        let mut left: Vec<u64> = s.iter().copied().collect();
        left.sort_unstable();
        assert_eq!(left, vec![10, 200, u64::MAX]);
        assert_eq!(s.take_up_to(u64::MAX).len(), 3);
        assert!(s.is_empty());
    }
}
