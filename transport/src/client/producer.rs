//! `Producer`: publish messages to a stream of `sluiced` and learn when each
//! one is durable.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use super::failover::{Failover, Failure, Next};
use super::link::{Connector, Link};
use super::options::{ProducerError, ProducerOptions, Transport};
use crate::proto::{CloseReason, Connect, PushError, Sender, SenderEvent};
use crate::udp::SendBatch;
use crate::wire::{CloseCode, MAX_DATAGRAM};

/// Datagrams per sendmmsg call at most.
const SEND_BATCH: usize = 64;

type Done = oneshot::Sender<Result<Range<u64>, ProducerError>>;

enum Command {
    Send {
        payloads: VecDeque<Bytes>,
        done: Done,
    },
    Flush {
        done: oneshot::Sender<Result<(), ProducerError>>,
    },
    Close {
        done: oneshot::Sender<Result<(), ProducerError>>,
    },
}

/// A connection to one stream of a `sluiced`, as one producer id.
///
/// Every `send` resolves only when the daemon has the message on stable
/// storage: that is the durable ack. Messages not yet acked are kept (up to
/// `max_unacked_bytes`) and sent again after a reconnect; the daemon stores
/// each (producer id, seq) once, so retransmission never duplicates.
///
/// ```no_run
/// use bytes::Bytes;
/// use sluice_transport::client::{Producer, ProducerOptions, QuicOptions, Transport};
/// use sluice_transport::quic::tls::{ClientTls, ServerTrust};
///
/// # async fn demo() -> Result<(), sluice_transport::client::ProducerError> {
/// // Authenticate over QUIC with a token, trusting the daemon by CA, and
/// // publish over the sealed raw-UDP fast path.
/// let quic = QuicOptions {
///     tls: ClientTls {
///         trust: ServerTrust::CaFile("/etc/sluice/ca.pem".into()),
///         client_cert: None,
///         server_name: Some("sluiced.example".into()),
///     },
///     token: std::env::var("SLUICE_TOKEN").ok(),
/// };
/// let options = ProducerOptions::with_transport(Transport::FastPath(quic));
/// let addr = "10.0.0.5:7400".parse().unwrap();
/// let producer = Producer::connect(addr, "orders", 42, options).await?;
/// let seq = producer.send(Bytes::from("hello")).await?; // durable now
/// println!("stored as seq {seq}");
/// producer.close().await?;
/// # Ok(())
/// # }
/// ```
///
/// The same `producer_id` after a restart continues where the daemon says
/// the producer stands: give each producing process its own stable id.
#[derive(Debug, Clone)]
pub struct Producer {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<ProducerStatus>,
}

/// Which daemon a [`Producer`] uses, and how often it moved to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerStatus {
    /// The daemon the producer talks to, or is trying to reach.
    pub daemon: SocketAddr,
    /// Whether a session is open there now.
    pub connected: bool,
    /// How many times the producer moved to another daemon of its list.
    pub failovers: u64,
    /// The last move, if any.
    pub last_failover: Option<FailoverEvent>,
    /// Times messages waited unsent because the daemon's credit was used up
    /// (a hole waiting for its repair, a slow disk), and how long in all,
    /// over every session of this producer.
    pub credit_stalls: u64,
    pub credit_stalled: Duration,
}

/// A producer left one daemon for the next of its list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverEvent {
    pub from: SocketAddr,
    pub to: SocketAddr,
    /// Why it left `from`.
    pub reason: String,
    /// Messages not yet acked then, sent again to `to`.
    pub resent: usize,
}

impl Producer {
    /// Opens a session with the daemon at `addr` for `stream`, as
    /// `producer_id`, and asks where that producer stands (so sequence numbers
    /// continue after a restart). Returns once the session is open.
    pub async fn connect(
        addr: SocketAddr,
        stream: &str,
        producer_id: u64,
        options: ProducerOptions,
    ) -> Result<Producer, ProducerError> {
        Producer::connect_any(&[addr], stream, producer_id, options).await
    }

    /// Like [`connect`](Producer::connect), over an ordered list of daemons
    /// that all take this stream: the producer opens its session with the
    /// first that answers, and when that one becomes unreachable it moves
    /// to the next (round robin), sending again there every message not yet
    /// acked, with the same producer id and seqs. See the module docs of
    /// [`client`](super) for the rules.
    pub async fn connect_any(
        addrs: &[SocketAddr],
        stream: &str,
        producer_id: u64,
        options: ProducerOptions,
    ) -> Result<Producer, ProducerError> {
        options
            .sender
            .validate()
            .map_err(|e| ProducerError::Config(e.to_string()))?;
        if addrs.is_empty() {
            return Err(ProducerError::Config("no daemon address given".into()));
        }
        let mut failover = Failover::new(
            addrs.to_vec(),
            options.max_reconnects,
            options.unreachable_timeout,
        );
        let mut connector = Connector {
            addr: failover.current(),
            stream: stream.to_owned(),
            producer_id,
            options,
        };
        // The first that answers; each is tried once before giving up.
        let link = loop {
            match connector.link().await {
                Ok(link) => break link,
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => {
                    if failover.failures() + 1 >= failover.len() as u32 {
                        return Err(e);
                    }
                    warn!(stream, daemon = %connector.addr, error = %e, "cannot reach sluiced; trying the next daemon");
                    failover.failed(Instant::now(), Failure::ConnectFailed);
                    connector.addr = failover.current();
                }
            }
        };
        // Where the producer stands: what the application says, and, with
        // several daemons, the furthest any reachable one has stored (a
        // producer that restarts may have moved on to another daemon than
        // the one it opens with: numbering from that one alone would reuse
        // seqs, and JetStream would drop those messages as duplicates).
        let mut resume_after = connector.options.resume_after;
        if failover.len() > 1 {
            let others: Vec<_> = addrs
                .iter()
                .filter(|&&a| a != connector.addr)
                .map(|&addr| {
                    let c = Connector {
                        addr,
                        ..connector.clone()
                    };
                    tokio::spawn(async move { (addr, stands_at(&c).await) })
                })
                .collect();
            for probe in others {
                match probe.await {
                    Ok((_, Some(seq))) => resume_after = Some(resume_after.unwrap_or(0).max(seq)),
                    Ok((addr, None)) => {
                        warn!(stream, daemon = %addr, "could not ask where this producer stands (unreachable): numbering continues from what the others know")
                    }
                    Err(_) => {}
                }
            }
        }
        let (tx, rx) = mpsc::channel(1024);
        let (ready_tx, ready_rx) = oneshot::channel();
        let (status_tx, status) = watch::channel(ProducerStatus {
            daemon: connector.addr,
            connected: false,
            failovers: 0,
            last_failover: None,
            credit_stalls: 0,
            credit_stalled: Duration::ZERO,
        });
        let task = Task::new(link, connector, resume_after, failover, status_tx, rx);
        tokio::spawn(task.run(ready_tx));
        ready_rx.await.map_err(|_| ProducerError::Closed)??;
        Ok(Producer {
            commands: tx,
            status,
        })
    }

    /// Which daemon the producer uses now, and its failovers so far.
    pub fn status(&self) -> ProducerStatus {
        self.status.borrow().clone()
    }

    /// The producer's status as it changes (session open or lost, moved to
    /// another daemon): `changed().await` on it wakes on each.
    pub fn watch_status(&self) -> watch::Receiver<ProducerStatus> {
        self.status.clone()
    }

    /// Publishes one message; resolves with its sequence number once it is
    /// durable. Waits (backpressure) while the unacked buffer is full.
    pub fn send(&self, payload: Bytes) -> impl Future<Output = Result<u64, ProducerError>> {
        let batch = self.send_batch(vec![payload]);
        async move { batch.await.map(|r| r.start) }
    }

    /// Publishes messages in order; resolves with their sequence numbers once
    /// all are durable.
    ///
    /// The call queues the messages at once (the future only waits), so
    /// calls made one after another are numbered in that order even when
    /// their futures are awaited together or on other tasks, as long as
    /// fewer than a thousand calls are waiting to be taken.
    pub fn send_batch(
        &self,
        payloads: Vec<Bytes>,
    ) -> impl Future<Output = Result<Range<u64>, ProducerError>> {
        let (done, wait) = oneshot::channel();
        let command = Command::Send {
            payloads: payloads.into(),
            done,
        };
        let queued = match self.commands.try_send(command) {
            Ok(()) => Ok(None),
            Err(mpsc::error::TrySendError::Full(c)) => Ok(Some((self.commands.clone(), c))),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ProducerError::Closed),
        };
        async move {
            if let Some((tx, c)) = queued? {
                tx.send(c).await.map_err(|_| ProducerError::Closed)?;
            }
            wait.await.map_err(|_| ProducerError::Closed)?
        }
    }

    /// Waits until every message sent before this call is durable.
    pub async fn flush(&self) -> Result<(), ProducerError> {
        let (done, wait) = oneshot::channel();
        self.command(Command::Flush { done }).await?;
        wait.await.map_err(|_| ProducerError::Closed)?
    }

    /// Flushes, then ends the session cleanly.
    pub async fn close(self) -> Result<(), ProducerError> {
        let (done, wait) = oneshot::channel();
        self.command(Command::Close { done }).await?;
        wait.await.map_err(|_| ProducerError::Closed)?
    }

    async fn command(&self, c: Command) -> Result<(), ProducerError> {
        self.commands
            .send(c)
            .await
            .map_err(|_| ProducerError::Closed)
    }
}

/// A send waiting for its last message to become durable.
struct Waiter {
    seqs: Range<u64>,
    done: Done,
}

/// Answers `Producer::connect` once the first session is open (or failed).
type Ready = oneshot::Sender<Result<(), ProducerError>>;

/// The I/O task: owns the link and the sans-IO sender.
struct Task {
    /// `None` while a new one is being set up.
    link: Option<Link>,
    /// Says where `link` goes (its `addr` is the current daemon's).
    connector: Connector,
    failover: Failover,
    /// Wait this long before the next link is set up (a whole round of
    /// daemons failed).
    relink_delay: Duration,
    status: watch::Sender<ProducerStatus>,
    /// Until the first session opens.
    ready: Option<Ready>,
    /// Why the producer must stop, found where it could not stop at once.
    fatal: Option<ProducerError>,
    /// The sender's settings for this transport's links.
    sender_config: crate::proto::SenderConfig,
    /// Where the producer stood when it started, if known.
    resume_after: Option<u64>,
    stream: String,
    options: ProducerOptions,
    sender: Sender,
    commands: mpsc::Receiver<Command>,
    /// A send that did not fit the unacked buffer yet, with the seqs of the
    /// part already pushed and when it started waiting.
    blocked: Option<(VecDeque<Bytes>, Option<u64>, Done, Instant)>,
    waiters: VecDeque<Waiter>,
    flushes: Vec<(u64, oneshot::Sender<Result<(), ProducerError>>)>,
    closing: Option<oneshot::Sender<Result<(), ProducerError>>>,
    /// Since when sends have waited for durability with no progress.
    stalled_since: Option<Instant>,
    /// The current sender's credit stalls already added to `status`.
    stalls_published: (u64, Duration),
}

impl Task {
    fn new(
        link: Link,
        connector: Connector,
        resume_after: Option<u64>,
        failover: Failover,
        status: watch::Sender<ProducerStatus>,
        commands: mpsc::Receiver<Command>,
    ) -> Self {
        let options = connector.options.clone();
        let config = sender_config(&options, &link);
        let connect = Connect {
            resume_after,
            ..first_connect(&connector)
        };
        let sender = Sender::new(config.clone(), connect, Instant::now());
        Task {
            link: Some(link),
            stream: connector.stream.clone(),
            connector,
            failover,
            relink_delay: Duration::ZERO,
            status,
            ready: None,
            fatal: None,
            sender_config: config,
            resume_after,
            options,
            sender,
            commands,
            blocked: None,
            waiters: VecDeque::new(),
            flushes: Vec::new(),
            closing: None,
            stalled_since: None,
            stalls_published: (0, Duration::ZERO),
        }
    }

    async fn run(mut self, ready: Ready) {
        self.ready = Some(ready);
        let mut out = Vec::with_capacity(MAX_DATAGRAM);
        let mut outbox = SendBatch::new();
        loop {
            if let Some(e) = self.fatal.take() {
                self.fail_all(e);
                return;
            }
            if self.link.is_none() {
                if let Err(e) = self.relink().await {
                    self.fail_all(e);
                    return;
                }
            }
            let now = Instant::now();
            // Everything due goes out in one batch: at high rates the
            // system call per datagram is most of the cost.
            while self.sender.poll_transmit(now, &mut out) {
                outbox.push(self.connector.addr, &out);
                if outbox.len() >= SEND_BATCH {
                    self.flush_outbox(&mut outbox).await;
                }
            }
            self.flush_outbox(&mut outbox).await;
            if self.link.is_none() || self.fatal.is_some() {
                continue;
            }
            if let Err(e) = self.handle_events() {
                self.fail_all(e);
                return;
            }
            if self.closing.is_some() && self.sender.is_closed() {
                // The CLOSE went out above; then the QUIC connection (the
                // daemon drains the lease's keys for what is still on its
                // way).
                if let Some(link) = self.link.take() {
                    link.close().await;
                }
                if let Some(done) = self.closing.take() {
                    let _ = done.send(Ok(()));
                }
                return;
            }
            self.unblock(now);
            if let Err(e) = self.check_progress(now) {
                self.fail_all(e);
                return;
            }
            if self.link.is_none() {
                continue;
            }
            let deadline = [self.sender.poll_timeout(), self.stall_deadline()]
                .into_iter()
                .flatten()
                .min();
            let sleep = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            let Some(link) = self.link.as_mut() else {
                continue;
            };
            let wake = tokio::select! {
                r = link.recv() => match r {
                    Ok(d) => Wake::Datagram(d),
                    Err(e) => Wake::Lost(e),
                },
                _ = sleep => Wake::Timer,
                cmd = self.commands.recv(), if self.blocked.is_none() && self.closing.is_none() => Wake::Command(cmd),
            };
            match wake {
                Wake::Datagram(d) => {
                    self.sender.handle_datagram(Instant::now(), d);
                    self.publish_stalls();
                }
                Wake::Lost(e) => {
                    if let Err(e) = self.link_lost(e) {
                        self.fail_all(e);
                        return;
                    }
                }
                Wake::Timer => self.sender.handle_timeout(Instant::now()),
                Wake::Command(Some(c)) => self.handle_command(c),
                // Every handle was dropped: end the session politely.
                Wake::Command(None) => {
                    self.sender.close();
                    let (done, _) = oneshot::channel();
                    self.closing = Some(done);
                }
            }
        }
    }

    async fn flush_outbox(&mut self, outbox: &mut SendBatch) {
        let Some(link) = self.link.as_mut() else {
            outbox.clear();
            return;
        };
        if outbox.is_empty() {
            return;
        }
        if let Err(e) = link.send(outbox).await {
            outbox.clear();
            if let Err(e) = self.link_lost(e) {
                // Permanent, or every daemon failed: the loop reports it.
                self.fatal = Some(e);
            }
        }
    }

    /// The link stopped working: move on (to the next daemon, if there are
    /// several) with the unacked messages, unless retrying cannot help.
    fn link_lost(&mut self, e: ProducerError) -> Result<(), ProducerError> {
        if e.is_permanent() {
            return Err(e);
        }
        let failure = if self.sender.is_established() {
            Failure::SessionLost
        } else {
            Failure::ConnectFailed
        };
        let reason = format!("{} link lost: {e}", self.options.transport.name());
        self.fail_over(failure, &reason)
    }

    /// The current daemon failed: go where the failover says (the next
    /// daemon of the list, or the same one when there is only one), or give
    /// up. Every message not yet acked moves to the new session with its seq.
    fn fail_over(&mut self, failure: Failure, reason: &str) -> Result<(), ProducerError> {
        let from = self.connector.addr;
        let now = Instant::now();
        let next = self.failover.failed(now, failure);
        let opened = self.ready.is_none();
        let addr = match next {
            // Before the first session opened, each daemon is tried once:
            // `connect` reports the error rather than retrying for long.
            _ if !opened && self.failover.failures() >= self.failover.len() as u32 => {
                return Err(ProducerError::Unreachable {
                    addr: from,
                    reason: reason.to_owned(),
                });
            }
            Next::GiveUp { rounds, down_for } => {
                return Err(ProducerError::Unreachable {
                    addr: from,
                    reason: format!(
                        "{reason}; gave up after {} failures in a row ({rounds} round(s) of {} daemon(s)), \
                         no session open for {down_for:?}",
                        self.failover.failures(),
                        self.failover.len()
                    ),
                });
            }
            Next::Try { addr, delay, .. } => {
                self.relink_delay = delay;
                addr
            }
        };
        let resent = self.sender.unacked_len();
        self.publish_stalls();
        self.stalls_published = Default::default();
        self.sender = if opened {
            self.sender.successor(rand::random(), now)
        } else {
            // Nothing was pushed yet: ask the next daemon where the
            // producer stands, as the first was to be asked (from the
            // same known mark, if any).
            let connect = Connect {
                resume_after: self.resume_after,
                ..first_connect(&self.connector)
            };
            Sender::new(self.sender_config.clone(), connect, now)
        };
        // Over QUIC a session ends with its stream or connection, and a
        // raw-UDP socket is connected to one daemon: start afresh, unless
        // raw UDP goes back to the same daemon at once (it keeps its socket).
        let keep = matches!(self.options.transport, Transport::Udp)
            && addr == from
            && self.relink_delay.is_zero();
        if !keep {
            self.link = None;
        }
        self.connector.addr = addr;
        if addr != from {
            warn!(stream = %self.stream, %from, to = %addr, reason, resent, "failing over to the next sluiced");
            self.status.send_modify(|s| {
                s.daemon = addr;
                s.connected = false;
                s.failovers += 1;
                s.last_failover = Some(FailoverEvent {
                    from,
                    to: addr,
                    reason: reason.to_owned(),
                    resent,
                });
            });
        } else {
            warn!(stream = %self.stream, daemon = %from, reason, resent, "session ended; reconnecting");
            self.status.send_modify(|s| s.connected = false);
        }
        Ok(())
    }

    /// Adds what the sender counted of credit stalls since the last call
    /// to the status (a stall ends with a STATUS, so after datagrams).
    fn publish_stalls(&mut self) {
        let st = self.sender.stats();
        let now = (st.credit_stalls, st.credit_stalled);
        let (n, t) = self.stalls_published;
        if now != (n, t) {
            self.status.send_modify(|s| {
                s.credit_stalls += now.0 - n;
                s.credit_stalled += now.1.saturating_sub(t);
            });
            self.stalls_published = now;
        }
    }

    /// Sets up a new link to the current daemon, moving on through the list
    /// while they fail, until the failover gives up.
    async fn relink(&mut self) -> Result<(), ProducerError> {
        loop {
            let delay = std::mem::take(&mut self.relink_delay);
            if !delay.is_zero() {
                warn!(stream = %self.stream, ?delay, "no sluiced reachable; waiting before the next round");
                tokio::time::sleep(delay).await;
            }
            match self.connector.link().await {
                Ok(link) => {
                    self.link = Some(link);
                    return Ok(());
                }
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => self.fail_over(Failure::ConnectFailed, &e.to_string())?,
            }
        }
    }

    fn handle_command(&mut self, c: Command) {
        match c {
            Command::Send { payloads, done } => {
                self.blocked = Some((payloads, None, done, Instant::now()));
                self.unblock(Instant::now());
            }
            Command::Flush { done } => {
                let target = self.sender.next_seq() - 1;
                if target <= self.sender.durable_seq() {
                    let _ = done.send(Ok(()));
                } else {
                    self.flushes.push((target, done));
                }
            }
            Command::Close { done } => {
                self.closing = Some(done);
                if self.sender.is_drained() {
                    self.sender.close();
                }
            }
        }
    }

    /// When waiting for durability turns into a stall, if nothing changes.
    fn stall_deadline(&self) -> Option<Instant> {
        self.stalled_since.map(|t| t + self.options.credit_timeout)
    }

    /// Fails what waits for durability once nothing became durable for
    /// `credit_timeout` on an open session (reconnects have their own
    /// bounds). The messages stay queued: the daemon may still store them.
    /// With several daemons, the producer also moves to the next one, where
    /// the messages are sent again.
    fn check_progress(&mut self, now: Instant) -> Result<(), ProducerError> {
        let waiting = !self.waiters.is_empty() || !self.flushes.is_empty();
        if !waiting || !self.sender.is_established() {
            self.stalled_since = None;
            return Ok(());
        }
        let since = *self.stalled_since.get_or_insert(now);
        if now.duration_since(since) < self.options.credit_timeout {
            return Ok(());
        }
        let e = ProducerError::CreditTimeout(self.options.credit_timeout);
        warn!(stream = %self.stream, error = %e, "sends failed");
        for w in self.waiters.drain(..) {
            let _ = w.done.send(Err(e.clone()));
        }
        for (_, done) in self.flushes.drain(..) {
            let _ = done.send(Err(e.clone()));
        }
        self.stalled_since = None;
        if self.failover.len() > 1 {
            let reason = format!("nothing acked for {:?}", self.options.credit_timeout);
            self.fail_over(Failure::SessionLost, &reason)?;
        }
        Ok(())
    }

    /// Pushes as much of the blocked send as the buffer takes.
    fn unblock(&mut self, now: Instant) {
        let Some((mut payloads, mut first, done, since)) = self.blocked.take() else {
            return;
        };
        while let Some(p) = payloads.pop_front() {
            match self.sender.push(p.clone()) {
                Ok(seq) => {
                    first.get_or_insert(seq);
                }
                Err(PushError::BufferFull) | Err(PushError::NotReady) => {
                    payloads.push_front(p);
                    if now.duration_since(since) >= self.options.credit_timeout {
                        let _ = done.send(Err(ProducerError::CreditTimeout(
                            self.options.credit_timeout,
                        )));
                        return;
                    }
                    self.blocked = Some((payloads, first, done, since));
                    return;
                }
                Err(PushError::TooLarge { len, max }) => {
                    let _ = done.send(Err(ProducerError::TooLarge { len, max }));
                    return;
                }
                Err(PushError::Closed) => {
                    let _ = done.send(Err(ProducerError::Closed));
                    return;
                }
            }
        }
        let end = self.sender.next_seq();
        let seqs = first.unwrap_or(end)..end;
        if seqs.is_empty() || seqs.end - 1 <= self.sender.durable_seq() {
            let _ = done.send(Ok(seqs));
        } else {
            self.waiters.push_back(Waiter { seqs, done });
        }
    }

    fn handle_events(&mut self) -> Result<(), ProducerError> {
        while let Some(ev) = self.sender.poll_event() {
            match ev {
                SenderEvent::Connected {
                    session_id,
                    durable_seq,
                } => {
                    info!(session_id, durable_seq, stream = %self.stream, daemon = %self.connector.addr, "session open");
                    self.failover.connected();
                    self.status.send_modify(|s| s.connected = true);
                    if let Some(r) = self.ready.take() {
                        let _ = r.send(Ok(()));
                    }
                }
                SenderEvent::Durable { up_to } => {
                    self.stalled_since = None;
                    while self
                        .waiters
                        .front()
                        .is_some_and(|w| w.seqs.end - 1 <= up_to)
                    {
                        let w = self.waiters.pop_front().expect("front exists");
                        let _ = w.done.send(Ok(w.seqs));
                    }
                    let (done, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flushes)
                        .into_iter()
                        .partition(|(target, _)| *target <= up_to);
                    self.flushes = pending;
                    for (_, d) in done {
                        let _ = d.send(Ok(()));
                    }
                    if self.closing.is_some() && self.sender.is_drained() {
                        self.sender.close();
                    }
                }
                SenderEvent::Closed(reason) => {
                    self.on_closed(reason)?;
                    // A new session replaced the old one: its events are
                    // for the next turn of the loop.
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn on_closed(&mut self, reason: CloseReason) -> Result<(), ProducerError> {
        match reason {
            CloseReason::Local => Ok(()),
            CloseReason::Rejected { reason, .. } => Err(ProducerError::Rejected(reason)),
            CloseReason::HandshakeTimedOut => {
                self.fail_over(Failure::ConnectFailed, "no answer to the handshake")
            }
            // The session ended under us (daemon restarted or went silent,
            // session timed out, replaced): open a new one and carry the
            // unacked messages over.
            other => {
                if matches!(
                    other,
                    CloseReason::Remote {
                        code: CloseCode::UnknownSession,
                        ..
                    }
                ) {
                    info!(stream = %self.stream, daemon = %self.connector.addr, "daemon no longer knows our session");
                }
                self.fail_over(Failure::SessionLost, &other.to_string())
            }
        }
    }

    fn fail_all(&mut self, e: ProducerError) {
        warn!(error = %e, stream = %self.stream, "producer failed");
        if let Some(r) = self.ready.take() {
            let _ = r.send(Err(e.clone()));
        }
        self.status.send_modify(|s| s.connected = false);
        for w in self.waiters.drain(..) {
            let _ = w.done.send(Err(e.clone()));
        }
        if let Some((_, _, done, _)) = self.blocked.take() {
            let _ = done.send(Err(e.clone()));
        }
        for (_, done) in self.flushes.drain(..) {
            let _ = done.send(Err(e.clone()));
        }
        if let Some(done) = self.closing.take() {
            let _ = done.send(Err(e));
        }
    }
}

/// Where `connector`'s producer stands at the daemon it points to: the
/// durable seq that daemon's WELCOME reports, then the session is closed.
/// `None` when it does not answer within the handshake timeout.
async fn stands_at(connector: &Connector) -> Option<u64> {
    let mut link = connector.link().await.ok()?;
    let config = sender_config(&connector.options, &link);
    let deadline = tokio::time::Instant::now() + config.handshake_timeout;
    let mut sender = Sender::new(config, first_connect(connector), Instant::now());
    let mut out = Vec::with_capacity(MAX_DATAGRAM);
    let mut batch = SendBatch::new();
    loop {
        while sender.poll_transmit(Instant::now(), &mut out) {
            batch.push(connector.addr, &out);
        }
        link.send(&mut batch).await.ok()?;
        while let Some(ev) = sender.poll_event() {
            match ev {
                SenderEvent::Connected { durable_seq, .. } => {
                    sender.close();
                    while sender.poll_transmit(Instant::now(), &mut out) {
                        batch.push(connector.addr, &out);
                    }
                    let _ = link.send(&mut batch).await;
                    return Some(durable_seq);
                }
                SenderEvent::Closed(_) => return None,
                SenderEvent::Durable { .. } => {}
            }
        }
        let wake = sender
            .poll_timeout()
            .map_or(deadline, tokio::time::Instant::from_std)
            .min(deadline);
        tokio::select! {
            r = link.recv() => sender.handle_datagram(Instant::now(), r.ok()?),
            _ = tokio::time::sleep_until(wake) => {
                if tokio::time::Instant::now() >= deadline {
                    return None;
                }
                sender.handle_timeout(Instant::now());
            }
        }
    }
}

/// How a producer's first session opens: it does not know where it stands,
/// and asks the daemon.
fn first_connect(connector: &Connector) -> Connect {
    Connect {
        producer_id: connector.producer_id,
        stream: connector.stream.clone(),
        resume_after: None,
        nonce: rand::random(),
    }
}

/// What woke the task.
enum Wake {
    Datagram(Bytes),
    Lost(ProducerError),
    Timer,
    Command(Option<Command>),
}

/// The sender's settings for `link`: datagrams as large as the link
/// carries, and over a QUIC stream (which retransmits by itself) a probe
/// timeout that does not resend what is merely slow to be acked.
fn sender_config(options: &ProducerOptions, link: &Link) -> crate::proto::SenderConfig {
    let mut c = options.sender.clone();
    c.max_datagram = link.max_datagram(c.max_datagram);
    if matches!(link, Link::Quic(_)) {
        c.min_pto = c.min_pto.max(Duration::from_millis(200));
    }
    c
}
