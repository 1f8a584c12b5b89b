//! Runs a receiving [`Endpoint`] on a source of datagrams: the I/O half of
//! the daemon side, as quinn is the I/O half of quinn-proto.
//!
//! Where datagrams come from is a [`PacketIo`] (defined with the UDP
//! datapath, re-exported here): a UDP socket
//! ([`UdpIo`](crate::udp::UdpIo)), a QUIC stream, AF_XDP rings. What happens
//! to messages is the [`Owner`]'s business: it decides whom to accept and
//! where they stand, takes delivered messages, and declares them durable, at
//! once or later through [`ServeHandle::control`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::proto::{Endpoint, EndpointEvent, Incoming, Receiver, ReceiverConfig};
pub use crate::udp::PacketIo;
use crate::udp::SendBatch;
use crate::wire::{CloseCode, MAX_DATAGRAM};

/// The application side of a served endpoint.
pub trait Owner: Send + 'static {
    /// A producer asks for a session. Answer where it stands (its highest
    /// durable seq in the stream) and the credit to grant, or refuse.
    fn accept(&mut self, incoming: &Incoming) -> Result<(u64, u32), (CloseCode, String)>;

    /// Messages are waiting on this session: take them with
    /// [`Receiver::poll_message`], and mark durable what is durable: now with
    /// [`Receiver::mark_durable`], or later (after a group commit) with
    /// [`SessionControl::mark_durable`].
    fn deliver(&mut self, receiver: &mut Receiver, control: &SessionControl);

    /// A session ended.
    fn closed(&mut self, _event: &EndpointEvent) {}

    /// A durable mark given to [`SessionControl::mark_durable`] went out
    /// to its producer (the STATUS handed to the socket) `waited` after
    /// the call: the endpoint task's wake-up, for the latency breakdown.
    fn durable_sent(&mut self, _session: u64, _waited: Duration) {}

    /// Called every [`TICK`]: look at every session (counters, peers) and
    /// adjust what follows from them, such as each session's credit.
    fn tick(&mut self, _now: Instant, _endpoint: &mut Endpoint) {}
}

/// How often [`Owner::tick`] runs.
pub const TICK: Duration = Duration::from_millis(50);

/// Instructions for the served endpoint from outside its task.
#[derive(Debug)]
enum Command {
    MarkDurable {
        session: u64,
        seq: u64,
        /// When the owner marked it (see [`Owner::durable_sent`]).
        at: Instant,
    },
    SetCredit {
        session: u64,
        credit: u32,
    },
    Close {
        session: u64,
        code: CloseCode,
        reason: String,
    },
    /// Stop taking datagrams: nothing new is delivered.
    Pause,
    /// Close every session with this code, send the CLOSEs, and end.
    Shutdown {
        code: CloseCode,
        reason: String,
        done: oneshot::Sender<()>,
    },
}

/// A cloneable way to reach the endpoint task: for owners whose durability
/// completes asynchronously (a spool's group commit).
#[derive(Debug, Clone)]
pub struct SessionControl {
    tx: mpsc::UnboundedSender<Command>,
}

impl SessionControl {
    pub fn mark_durable(&self, session: u64, seq: u64) {
        let _ = self.tx.send(Command::MarkDurable {
            session,
            seq,
            at: Instant::now(),
        });
    }

    pub fn set_credit(&self, session: u64, credit: u32) {
        let _ = self.tx.send(Command::SetCredit { session, credit });
    }

    /// Ends one session, telling its producer why (it will reconnect and
    /// resend what is not durable).
    pub fn close(&self, session: u64, code: CloseCode, reason: &str) {
        let _ = self.tx.send(Command::Close {
            session,
            code,
            reason: reason.to_owned(),
        });
    }
}

/// Counters of the served socket.
#[derive(Debug, Default)]
pub struct ServeStats {
    pub datagrams_in: AtomicU64,
    pub datagrams_out: AtomicU64,
    /// Datagrams the endpoint dropped (malformed, unknown session, …).
    pub dropped: AtomicU64,
}

/// The running endpoint. Dropping it stops the task.
pub struct ServeHandle {
    control: SessionControl,
    stats: Arc<ServeStats>,
    task: JoinHandle<()>,
}

impl ServeHandle {
    pub fn control(&self) -> SessionControl {
        self.control.clone()
    }

    pub fn stats(&self) -> Arc<ServeStats> {
        self.stats.clone()
    }

    /// Whether the endpoint's task has ended (its source of datagrams went
    /// away, or it was shut down).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops taking datagrams, so nothing new reaches the owner; what is
    /// already delivered can still be marked durable and acked.
    pub fn pause(&self) {
        let _ = self.control.tx.send(Command::Pause);
    }

    /// Applies every command sent before it (durable marks, so producers
    /// hear their last acks), closes every session with `code`, sends the
    /// CLOSEs and ends the task. Commands are applied in order, so a
    /// `mark_durable` sent before this call is acked before the CLOSE.
    pub async fn shutdown(mut self, code: CloseCode, reason: &str) {
        let (done, wait) = oneshot::channel();
        let _ = self.control.tx.send(Command::Shutdown {
            code,
            reason: reason.to_owned(),
            done,
        });
        let _ = wait.await;
        let _ = (&mut self.task).await;
    }

    /// Stops the task at once and waits until the socket is closed.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for ServeHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `config`'s endpoint on `io` with `owner`, on the current tokio
/// runtime.
pub fn serve(io: impl PacketIo, config: ReceiverConfig, owner: impl Owner) -> ServeHandle {
    // Unbounded as a channel, bounded by the protocol: an owner marks
    // durable what it was delivered, and a session is delivered at most
    // its credit (`max_credit` messages) beyond what is durable; credit and
    // close commands come once per session per tick at most. So at most
    // sessions × (max_credit + 2) commands wait here, and the owner (a
    // spool's writer thread) is never held by a full queue.
    let (tx, rx) = mpsc::unbounded_channel();
    let stats = Arc::new(ServeStats::default());
    let control = SessionControl { tx };
    let task = tokio::spawn(run(
        io,
        Endpoint::new(config),
        owner,
        control.clone(),
        rx,
        stats.clone(),
    ));
    ServeHandle {
        control,
        stats,
        task,
    }
}

async fn run(
    mut io: impl PacketIo,
    mut ep: Endpoint,
    mut owner: impl Owner,
    control: SessionControl,
    mut commands: mpsc::UnboundedReceiver<Command>,
    stats: Arc<ServeStats>,
) {
    let mut inbox = Vec::new();
    let mut outbox = SendBatch::new();
    let mut out = Vec::with_capacity(MAX_DATAGRAM);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut paused = false;
    let mut finished: Option<oneshot::Sender<()>> = None;
    // Durable marks applied since the last send: (session, marked at).
    let mut marked: Vec<(u64, Instant)> = Vec::new();
    loop {
        let now = Instant::now();
        while let Some(id) = ep.poll_readable() {
            if let Some(r) = ep.receiver_mut(id) {
                owner.deliver(r, &control);
            }
        }
        while let Some(ev) = ep.poll_event() {
            owner.closed(&ev);
        }
        while let Some(to) = ep.poll_transmit(now, &mut out) {
            outbox.push(to, &out);
        }
        if !outbox.is_empty() {
            stats
                .datagrams_out
                .fetch_add(outbox.len() as u64, Ordering::Relaxed);
            if let Err(e) = io.send(&mut outbox).await {
                warn!(error = %e, "sending datagrams failed");
            }
            outbox.clear();
        }
        let sent = Instant::now();
        for (session, at) in marked.drain(..) {
            owner.durable_sent(session, sent.saturating_duration_since(at));
        }
        if let Some(done) = finished.take() {
            let _ = done.send(());
            return;
        }
        let deadline = ep.poll_timeout();
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = io.recv(&mut inbox), if !paused => match r {
                Ok(()) => {
                    stats.datagrams_in.fetch_add(inbox.len() as u64, Ordering::Relaxed);
                    let before = ep.drops().total();
                    let now = Instant::now();
                    for (from, datagram) in inbox.drain(..) {
                        if let Some(inc) = ep.handle_datagram(now, from, datagram) {
                            match owner.accept(&inc) {
                                Ok((durable, credit)) => {
                                    ep.accept(now, inc, durable, credit);
                                }
                                Err((code, reason)) => ep.reject(inc, code, &reason),
                            }
                        }
                    }
                    stats.dropped.fetch_add(ep.drops().total() - before, Ordering::Relaxed);
                }
                Err(e) => {
                    // The source is gone (a QUIC stream ended, a socket
                    // broke): its sessions end with it.
                    debug!(error = %e, "no more datagrams; the endpoint stops");
                    let ids: Vec<u64> = ep.session_ids().collect();
                    for id in ids {
                        ep.close(id, CloseCode::Normal, "the transport closed");
                    }
                    while let Some(ev) = ep.poll_event() {
                        owner.closed(&ev);
                    }
                    return;
                }
            },
            Some(c) = commands.recv() => {
                // Take everything queued, so one wake-up answers a whole group commit.
                let mut next = Some(c);
                while let Some(c) = next {
                    match c {
                        Command::Pause => paused = true,
                        Command::Shutdown { code, reason, done } => {
                            let ids: Vec<u64> = ep.session_ids().collect();
                            for id in ids {
                                ep.close(id, code, &reason);
                            }
                            finished = Some(done);
                            break;
                        }
                        Command::MarkDurable { session, at, .. } if ep.receiver_mut(session).is_some() => {
                            marked.push((session, at));
                            apply(&mut ep, c);
                        }
                        other => apply(&mut ep, other),
                    }
                    next = commands.try_recv().ok();
                }
            }
            _ = tick.tick() => owner.tick(Instant::now(), &mut ep),
            _ = sleep => ep.handle_timeout(Instant::now()),
        }
    }
}

fn apply(ep: &mut Endpoint, c: Command) {
    match c {
        Command::MarkDurable { session, seq, .. } => {
            if let Some(r) = ep.receiver_mut(session) {
                r.mark_durable(seq);
            }
        }
        Command::SetCredit { session, credit } => {
            if let Some(r) = ep.receiver_mut(session) {
                r.set_credit(credit);
            }
        }
        Command::Close {
            session,
            code,
            reason,
        } => ep.close(session, code, &reason),
        Command::Pause | Command::Shutdown { .. } => unreachable!("handled by the loop"),
    }
}
