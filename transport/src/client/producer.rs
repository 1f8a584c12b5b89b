//! `Producer`: publish messages to a stream of `sluiced` and learn when each
//! one is durable.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::proto::{CloseReason, Connect, PushError, Sender, SenderConfig, SenderEvent};
use crate::udp::SendBatch;
use crate::wire::{CloseCode, MAX_DATAGRAM};

/// How a [`Producer`] behaves.
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    /// Protocol settings: datagram size, unacked-buffer bound, timers.
    pub sender: SenderConfig,
    /// Fail what is pending when the daemon has made nothing durable for
    /// this long while messages wait (no credit, disk full or stalled), and
    /// a send that has waited this long for buffer space.
    pub credit_timeout: Duration,
    /// How many times in a row to try opening a new session after one ends
    /// (daemon restarted, session timed out) before failing what is pending.
    pub max_reconnects: u32,
    /// Local address to send from; by default any port of the daemon's family.
    pub bind: Option<SocketAddr>,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions {
            sender: SenderConfig::default(),
            credit_timeout: Duration::from_secs(30),
            max_reconnects: 5,
            bind: None,
        }
    }
}

/// What can go wrong when publishing. Each says what to do about it.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ProducerError {
    #[error(
        "sluiced at {addr} did not answer: {reason} (is it running, and is the address right?)"
    )]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("sluiced refused the session: {0}")]
    Rejected(String),
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The messages of the failed call stay queued and may still become
    /// durable later (a retry of them would be stored again, as new seqs).
    #[error(
        "nothing became durable at sluiced for {0:?}: the daemon is not keeping up \
         (disk full or slow, no credit granted); the messages stay queued and may still be stored"
    )]
    CreditTimeout(Duration),
    #[error("the producer is closed")]
    Closed,
    #[error("invalid producer options: {0}")]
    Config(String),
    #[error("socket error: {0}")]
    Io(String),
}

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
/// use sluice_transport::client::{Producer, ProducerOptions};
///
/// # async fn demo() -> Result<(), sluice_transport::client::ProducerError> {
/// let addr = "127.0.0.1:7401".parse().unwrap();
/// let producer = Producer::connect(addr, "orders", 42, ProducerOptions::default()).await?;
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
        let bind = options.bind.unwrap_or(match addr {
            SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
            SocketAddr::V6(_) => "[::]:0".parse().expect("literal"),
        });
        let io = |e: std::io::Error| ProducerError::Io(e.to_string());
        let socket = UdpSocket::bind(bind).await.map_err(io)?;
        socket.connect(addr).await.map_err(io)?;
        let (tx, rx) = mpsc::channel(1024);
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = Task::new(socket, addr, stream.to_owned(), producer_id, options, rx);
        tokio::spawn(task.run(ready_tx));
        ready_rx.await.map_err(|_| ProducerError::Closed)??;
        Ok(Producer { commands: tx })
    }

    /// Publishes one message; resolves with its sequence number once it is
    /// durable. Waits (backpressure) while the unacked buffer is full.
    pub async fn send(&self, payload: Bytes) -> Result<u64, ProducerError> {
        self.send_batch(vec![payload]).await.map(|r| r.start)
    }

    /// Publishes messages in order; resolves with their sequence numbers once
    /// all are durable.
    pub async fn send_batch(&self, payloads: Vec<Bytes>) -> Result<Range<u64>, ProducerError> {
        let (done, wait) = oneshot::channel();
        self.command(Command::Send {
            payloads: payloads.into(),
            done,
        })
        .await?;
        wait.await.map_err(|_| ProducerError::Closed)?
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

/// The I/O task: owns the socket and the sans-IO sender.
struct Task {
    socket: UdpSocket,
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
    fn new(
        socket: UdpSocket,
        addr: SocketAddr,
        stream: String,
        producer_id: u64,
        options: ProducerOptions,
        commands: mpsc::Receiver<Command>,
    ) -> Self {
        let sender = Sender::new(
            options.sender.clone(),
            Connect {
                producer_id,
                stream: stream.clone(),
                resume_after: None,
                nonce: rand::random(),
            },
            Instant::now(),
        );
        Task {
            socket,
            addr,
            stream,
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
        let mut inbuf = vec![0u8; MAX_DATAGRAM];
        loop {
            let now = Instant::now();
            // Everything due goes out in one sendmmsg: at high rates the
            // system call per datagram is most of the cost.
            while self.sender.poll_transmit(now, &mut out) {
                outbox.push(self.addr, &out);
                if outbox.len() >= SEND_BATCH {
                    self.flush_outbox(&mut outbox).await;
                }
            }
            self.flush_outbox(&mut outbox).await;
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
            tokio::select! {
                r = self.socket.recv(&mut inbuf) => match r {
                    Ok(n) => self.sender.handle_datagram(Instant::now(), Bytes::copy_from_slice(&inbuf[..n])),
                    Err(e) => debug!(error = %e, "receive from sluiced failed"),
                },
                _ = sleep => self.sender.handle_timeout(Instant::now()),
                cmd = self.commands.recv(), if self.blocked.is_none() && self.closing.is_none() => match cmd {
                    Some(c) => self.handle_command(c),
                    // Every handle was dropped: end the session politely.
                    None => {
                        self.sender.close();
                        let (done, _) = oneshot::channel();
                        self.closing = Some(done);
                    }
                },
            }
        }
    }

    async fn flush_outbox(&self, outbox: &mut SendBatch) {
        if outbox.is_empty() {
            return;
        }
        // A send error (e.g. ICMP port unreachable surfacing) is not fatal:
        // the protocol's timers retry, and give up in time.
        match outbox.send(&self.socket).await {
            Ok(0) => {}
            Ok(n) => debug!(dropped = n, "the kernel refused datagrams to sluiced"),
            Err(e) => debug!(error = %e, "send to sluiced failed"),
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
