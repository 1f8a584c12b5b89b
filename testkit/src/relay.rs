//! An impairment relay: a UDP proxy between producers and a daemon that
//! drops, reorders, duplicates, delays, corrupts and truncates datagrams,
//! each direction by its own seeded RNG.
//!
//! This kernel has no netem, so this is how real sockets are tested under
//! loss here (tests, and the load harness's `loss` scenario). It needs no root
//! and runs on loopback. Each client address gets its own upstream socket, so
//! the daemon sees as many peers as there are producers.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What one direction of the relay does to datagrams. Probabilities are
/// per datagram, 0.0 to 1.0.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Impairment {
    pub loss: f64,
    /// Chance that a datagram is held back by an extra `reorder_delay`, so
    /// that later ones overtake it.
    pub reorder: f64,
    pub reorder_delay: Duration,
    pub duplicate: f64,
    /// Chance that one random bit of the datagram is flipped.
    pub corrupt: f64,
    /// Chance that the datagram is cut at a random length.
    pub truncate: f64,
    /// Every datagram waits `delay` plus a uniform share of `jitter`.
    pub delay: Duration,
    pub jitter: Duration,
}

impl Impairment {
    /// Loss, reordering and duplication at rates typical of the tests.
    pub fn lossy(loss: f64) -> Self {
        Impairment {
            loss,
            reorder: loss / 2.0,
            reorder_delay: Duration::from_millis(2),
            duplicate: loss / 5.0,
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<(), RelayError> {
        for (name, p) in [
            ("loss", self.loss),
            ("reorder", self.reorder),
            ("duplicate", self.duplicate),
            ("corrupt", self.corrupt),
            ("truncate", self.truncate),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(RelayError::Probability { name, value: p });
            }
        }
        Ok(())
    }
}

#[derive(Debug, Error)]
pub enum RelayError {
    #[error("{name} must be a probability within 0..=1, got {value}")]
    Probability { name: &'static str, value: f64 },
    #[error("relay socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Counters, per direction where it matters.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
    pub corrupted: AtomicU64,
    pub truncated: AtomicU64,
}

impl RelayStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// A running relay; dropping it stops it.
pub struct RelayHandle {
    local_addr: SocketAddr,
    stats: Arc<RelayStats>,
    task: JoinHandle<()>,
}

impl RelayHandle {
    /// Where producers should send: the relay's client-facing address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    Upstream,
    ToClient,
}

/// The client-facing socket's receive buffer (the kernel caps it at
/// net.core.rmem_max). With the default (about 208 KiB) a closed-loop
/// burst of producers overflows it on loopback, and the kernel's drops
/// would add to the loss the relay was asked for.
const FRONT_RECV_BUFFER: usize = 8 << 20;

fn bind_front(listen: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: a smaller buffer still relays, only less well.
    let _ = s.set_recv_buffer_size(FRONT_RECV_BUFFER);
    s.set_nonblocking(true)?;
    s.bind(&listen.into())?;
    UdpSocket::from_std(s.into())
}

/// A datagram waiting for its release time.
type Scheduled = Reverse<(Instant, u64, Dir, SocketAddr, Vec<u8>)>;

/// Starts a relay listening on `listen` that forwards to `upstream`.
/// `to_upstream` impairs client → upstream traffic, `to_client` the replies.
pub async fn start(
    listen: SocketAddr,
    upstream: SocketAddr,
    to_upstream: Impairment,
    to_client: Impairment,
    seed: u64,
) -> Result<RelayHandle, RelayError> {
    to_upstream.validate()?;
    to_client.validate()?;
    let front = bind_front(listen)?;
    let local_addr = front.local_addr()?;
    let stats = Arc::new(RelayStats::default());
    let relay = Relay {
        front,
        upstream,
        impair: [to_upstream, to_client],
        rngs: [
            ChaCha8Rng::seed_from_u64(seed),
            ChaCha8Rng::seed_from_u64(seed ^ 0x5555_5555_5555_5555),
        ],
        stats: stats.clone(),
        clients: HashMap::new(),
        queue: BinaryHeap::new(),
        order: 0,
        readers: Readers::default(),
    };
    let task = tokio::spawn(relay.run());
    Ok(RelayHandle {
        local_addr,
        stats,
        task,
    })
}

struct Relay {
    front: UdpSocket,
    upstream: SocketAddr,
    impair: [Impairment; 2],
    rngs: [ChaCha8Rng; 2],
    stats: Arc<RelayStats>,
    /// Client address → its own socket towards the upstream.
    clients: HashMap<SocketAddr, Arc<UdpSocket>>,
    queue: BinaryHeap<Scheduled>,
    order: u64,
    readers: Readers,
}

/// The per-client reader tasks, stopped with the relay.
#[derive(Default)]
struct Readers(Vec<JoinHandle<()>>);

impl Drop for Readers {
    fn drop(&mut self) {
        for r in &self.0 {
            r.abort();
        }
    }
}

impl Relay {
    async fn run(mut self) {
        let (back_tx, mut back_rx) = mpsc::unbounded_channel::<(SocketAddr, Vec<u8>)>();
        let mut buf = vec![0u8; 65_536];
        loop {
            let next = self.queue.peek().map(|Reverse((t, ..))| *t);
            let sleep = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = self.front.recv_from(&mut buf) => {
                    let Ok((n, client)) = r else { continue };
                    if !self.clients.contains_key(&client) {
                        let Ok(sock) = UdpSocket::bind(unspecified_like(self.upstream)).await else { continue };
                        let sock = Arc::new(sock);
                        let reader = tokio::spawn(read_back(sock.clone(), client, back_tx.clone()));
                        self.readers.0.push(reader);
                        self.clients.insert(client, sock);
                    }
                    let data = buf[..n].to_vec();
                    self.schedule(Dir::Upstream, client, data);
                }
                Some((client, data)) = back_rx.recv() => self.schedule(Dir::ToClient, client, data),
                _ = sleep => self.release().await,
            }
        }
    }

    /// Applies this direction's impairments and queues what survives.
    fn schedule(&mut self, dir: Dir, client: SocketAddr, mut data: Vec<u8>) {
        let i = dir as usize;
        let imp = &self.impair[i];
        let rng = &mut self.rngs[i];
        let s = &self.stats;
        if rng.random_bool(imp.loss) {
            s.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if !data.is_empty() && rng.random_bool(imp.corrupt) {
            let bit = rng.random_range(0..data.len() * 8);
            data[bit / 8] ^= 1 << (bit % 8);
            s.corrupted.fetch_add(1, Ordering::Relaxed);
        }
        if !data.is_empty() && rng.random_bool(imp.truncate) {
            data.truncate(rng.random_range(0..data.len()));
            s.truncated.fetch_add(1, Ordering::Relaxed);
        }
        let copies = if rng.random_bool(imp.duplicate) {
            s.duplicated.fetch_add(1, Ordering::Relaxed);
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut wait = imp.delay + imp.jitter.mul_f64(rng.random::<f64>());
            if rng.random_bool(imp.reorder) {
                wait += imp.reorder_delay;
                s.reordered.fetch_add(1, Ordering::Relaxed);
            }
            self.order += 1;
            self.queue.push(Reverse((
                Instant::now() + wait,
                self.order,
                dir,
                client,
                data.clone(),
            )));
        }
    }

    /// Sends everything whose time has come.
    async fn release(&mut self) {
        let now = Instant::now();
        while self.queue.peek().is_some_and(|Reverse((t, ..))| *t <= now) {
            let Reverse((_, _, dir, client, data)) = self.queue.pop().expect("peeked");
            let sent = match dir {
                Dir::Upstream => match self.clients.get(&client) {
                    Some(sock) => sock.send_to(&data, self.upstream).await,
                    None => continue,
                },
                Dir::ToClient => self.front.send_to(&data, client).await,
            };
            if sent.is_ok() {
                self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Reads replies from the upstream for one client.
async fn read_back(
    sock: Arc<UdpSocket>,
    client: SocketAddr,
    tx: mpsc::UnboundedSender<(SocketAddr, Vec<u8>)>,
) {
    let mut buf = vec![0u8; 65_536];
    while let Ok((n, _)) = sock.recv_from(&mut buf).await {
        if tx.send((client, buf[..n].to_vec())).is_err() {
            return;
        }
    }
}

fn unspecified_like(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_loopback() => "127.0.0.1:0".parse().expect("literal"),
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("literal"),
    }
}
