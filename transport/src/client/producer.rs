//! `Producer`: publish messages to a stream of `sluiced` and learn when each
//! one is durable.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

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
        options
            .sender
            .validate()
            .map_err(|e| ProducerError::Config(e.to_string()))?;
        let connector = Connector {
            addr,
            stream: stream.to_owned(),
            producer_id,
            options,
        };
        let link = connector.link().await?;
        let (tx, rx) = mpsc::channel(1024);
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = Task::new(link, connector, rx);
        tokio::spawn(task.run(ready_tx));
        ready_rx.await.map_err(|_| ProducerError::Closed)??;
        Ok(Producer { commands: tx })
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

/// The I/O task: owns the link and the sans-IO sender.
struct Task {
    /// `None` while a new one is being set up.
    link: Option<Link>,
    connector: Connector,
    addr: SocketAddr,
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
    reconnects: u32,
    /// Since when sends have waited for durability with no progress.
    stalled_since: Option<Instant>,
}

impl Task {
    fn new(link: Link, connector: Connector, commands: mpsc::Receiver<Command>) -> Self {
        let options = connector.options.clone();
        let sender = Sender::new(
            sender_config(&options, &link),
            Connect {
                producer_id: connector.producer_id,
                stream: connector.stream.clone(),
                resume_after: None,
                nonce: rand::random(),
            },
            Instant::now(),
        );
        Task {
            link: Some(link),
            addr: connector.addr,
            stream: connector.stream.clone(),
            connector,
            options,
            sender,
            commands,
            blocked: None,
            waiters: VecDeque::new(),
            flushes: Vec::new(),
            closing: None,
            reconnects: 0,
            stalled_since: None,
        }
    }

    async fn run(mut self, ready: oneshot::Sender<Result<(), ProducerError>>) {
        let mut ready = Some(ready);
        let mut out = Vec::with_capacity(MAX_DATAGRAM);
        let mut outbox = SendBatch::new();
        loop {
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
                outbox.push(self.addr, &out);
                if outbox.len() >= SEND_BATCH {
                    self.flush_outbox(&mut outbox).await;
                }
            }
            self.flush_outbox(&mut outbox).await;
            if self.link.is_none() {
                continue;
            }
            if let Err(e) = self.handle_events(&mut ready) {
                self.fail_all(e);
                return;
            }
            if self.closing.is_some() && self.sender.is_closed() {
                if let Some(done) = self.closing.take() {
                    let _ = done.send(Ok(()));
                }
                return;
            }
            self.unblock(now);
            self.check_progress(now);
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
                Wake::Datagram(d) => self.sender.handle_datagram(Instant::now(), d),
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
                // Permanent: the next relink reports it.
                warn!(stream = %self.stream, error = %e, "link failed");
            }
        }
    }

    /// The link stopped working: drop it and carry the unacked messages
    /// over to a new session on a new link, unless retrying cannot help.
    fn link_lost(&mut self, e: ProducerError) -> Result<(), ProducerError> {
        if e.is_permanent() {
            return Err(e);
        }
        warn!(stream = %self.stream, error = %e, transport = self.options.transport.name(), "link to sluiced lost; reconnecting");
        self.link = None;
        self.sender = self.sender.successor(rand::random(), Instant::now());
        Ok(())
    }

    /// Sets up a new link, retrying with backoff up to `max_reconnects`.
    async fn relink(&mut self) -> Result<(), ProducerError> {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.connector.link().await {
                Ok(link) => {
                    self.link = Some(link);
                    return Ok(());
                }
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => {
                    self.reconnects += 1;
                    if self.reconnects > self.options.max_reconnects {
                        return Err(ProducerError::Unreachable {
                            addr: self.addr,
                            reason: format!(
                                "{e}; gave up after {} reconnects",
                                self.reconnects - 1
                            ),
                        });
                    }
                    warn!(stream = %self.stream, error = %e, ?delay, "cannot reach sluiced; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
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
    fn check_progress(&mut self, now: Instant) {
        let waiting = !self.waiters.is_empty() || !self.flushes.is_empty();
        if !waiting || !self.sender.is_established() {
            self.stalled_since = None;
            return;
        }
        let since = *self.stalled_since.get_or_insert(now);
        if now.duration_since(since) < self.options.credit_timeout {
            return;
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

    fn handle_events(
        &mut self,
        ready: &mut Option<oneshot::Sender<Result<(), ProducerError>>>,
    ) -> Result<(), ProducerError> {
        while let Some(ev) = self.sender.poll_event() {
            match ev {
                SenderEvent::Connected {
                    session_id,
                    durable_seq,
                } => {
                    info!(session_id, durable_seq, stream = %self.stream, "session open");
                    self.reconnects = 0;
                    if let Some(r) = ready.take() {
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
                SenderEvent::Closed(reason) => self.on_closed(reason, ready)?,
            }
        }
        Ok(())
    }

    fn on_closed(
        &mut self,
        reason: CloseReason,
        ready: &mut Option<oneshot::Sender<Result<(), ProducerError>>>,
    ) -> Result<(), ProducerError> {
        match reason {
            CloseReason::Local => Ok(()),
            CloseReason::Rejected { reason, .. } => {
                let e = ProducerError::Rejected(reason);
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e.clone()));
                }
                Err(e)
            }
            CloseReason::HandshakeTimedOut if ready.is_some() => {
                let e = ProducerError::Unreachable {
                    addr: self.addr,
                    reason: "no answer to the handshake".into(),
                };
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e.clone()));
                }
                Err(e)
            }
            other => {
                // The session ended under us (daemon restarted, timeout,
                // replaced): open a new one and carry the unacked messages over.
                if self.reconnects >= self.options.max_reconnects {
                    return Err(ProducerError::Unreachable {
                        addr: self.addr,
                        reason: format!("{other}; gave up after {} reconnects", self.reconnects),
                    });
                }
                self.reconnects += 1;
                if matches!(
                    other,
                    CloseReason::Remote {
                        code: CloseCode::UnknownSession,
                        ..
                    }
                ) {
                    info!(stream = %self.stream, "daemon no longer knows our session; reconnecting");
                } else {
                    warn!(stream = %self.stream, reason = %other, "session ended; reconnecting");
                }
                self.reconnect();
                Ok(())
            }
        }
    }

    fn reconnect(&mut self) {
        self.sender = self.sender.successor(rand::random(), Instant::now());
        // Over QUIC a session ends with its stream or connection: start
        // afresh. Raw UDP keeps its socket.
        if !matches!(self.options.transport, Transport::Udp) {
            self.link = None;
        }
    }

    fn fail_all(&mut self, e: ProducerError) {
        warn!(error = %e, stream = %self.stream, "producer failed");
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
