//! The daemon's AF_XDP receive path: the XDP program redirects the data
//! port's packets to one AF_XDP socket per configured queue; a thread per
//! queue takes them off its RX ring, checks their headers and hands the UDP
//! payloads to the served endpoint as [`XdpIo`], the same
//! [`PacketIo`] the socket path uses, so the same `Receiver` runs over it.
//!
//! The kernel's UDP socket on the data port stays: replies (STATUS, NACK,
//! WELCOME) leave through it, so routing and neighbour resolution stay the
//! kernel's, and it receives whatever the program passes on (packets on
//! queues without a socket), so nothing is lost while queues are steered.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_transport::serve::PacketIo;
use sluice_transport::udp::{SendBatch, UdpIo};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::bpf::{self, Attachment, Mode, RedirectProgram};
use crate::frame::{self, FrameError};
use crate::xsk::{self, XdpStatistics, XskConfig, XskSocket};

/// What the daemon's `[xdp]` section asks for.
#[derive(Debug, Clone)]
pub struct XdpSetup {
    pub interface: String,
    pub queues: Vec<u32>,
    /// CPU for each queue's thread, in the order of `queues` (empty: none).
    pub cpus: Vec<usize>,
    pub mode: Mode,
    pub socket: XskConfig,
    /// Remove a program someone else left attached to the interface.
    pub replace_foreign: bool,
    /// After a wake-up with fewer than a batch of frames waiting, let more
    /// arrive for this long before taking them (0: take them at once).
    pub rx_linger: Duration,
}

/// The default [`XdpSetup::rx_linger`]: at most 50 µs added to a packet's
/// way, for a several-fold cut in wake-ups at moderate rates.
pub const DEFAULT_RX_LINGER: Duration = Duration::from_micros(50);

#[derive(Debug, Error)]
pub enum XdpError {
    #[error("xdp.interface {0:?}: {1}")]
    Interface(String, String),
    #[error("xdp.queues: {0}")]
    Queue(String),
    #[error("XDP program on {interface}: {source}")]
    Program {
        interface: String,
        source: bpf::BpfError,
    },
    #[error("AF_XDP socket on {interface} queue {queue}: {source}")]
    Socket {
        interface: String,
        queue: u32,
        source: xsk::XskError,
    },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Counters of one queue, written by its thread, read by `/metrics`.
#[derive(Debug, Default)]
pub struct QueueStats {
    pub queue: u32,
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Frames that reached the socket but were not a well-formed UDP
    /// datagram to the data port, by [`FrameError`].
    pub invalid: [AtomicU64; FrameError::ALL.len()],
    /// Well-formed UDP to another port (the program redirects only the
    /// data port: these mean a program of another configuration).
    pub wrong_port: AtomicU64,
    /// Times the thread found the endpoint's queue full and waited.
    pub endpoint_full: AtomicU64,
    /// The thread's CPU time, nanoseconds.
    pub cpu_nanos: AtomicU64,
    /// The socket's own counters (XDP_STATISTICS), refreshed every
    /// [`STATS_EVERY`].
    pub rx_dropped: AtomicU64,
    pub rx_invalid_descs: AtomicU64,
    pub rx_ring_full: AtomicU64,
    pub fill_ring_empty: AtomicU64,
    pub tx_ring_empty: AtomicU64,
    pub tx_invalid_descs: AtomicU64,
}

impl QueueStats {
    fn store_kernel(&self, s: &XdpStatistics) {
        self.rx_dropped.store(s.rx_dropped, Relaxed);
        self.rx_invalid_descs.store(s.rx_invalid_descs, Relaxed);
        self.rx_ring_full.store(s.rx_ring_full, Relaxed);
        self.fill_ring_empty
            .store(s.rx_fill_ring_empty_descs, Relaxed);
        self.tx_ring_empty.store(s.tx_ring_empty_descs, Relaxed);
        self.tx_invalid_descs.store(s.tx_invalid_descs, Relaxed);
    }
}

/// What the running XDP path looks like, for logs and `/metrics`.
#[derive(Debug)]
pub struct XdpStats {
    pub interface: String,
    /// `native` or `generic`.
    pub mode: &'static str,
    /// `zerocopy` or `copy`.
    pub bind: &'static str,
    pub queues: Vec<QueueStats>,
}

/// How often a queue thread reads its socket's XDP_STATISTICS and CPU time.
const STATS_EVERY: Duration = Duration::from_millis(250);
/// Frames taken off the RX ring per pass.
const RX_BATCH: usize = 64;
/// Batches queued towards the endpoint before a queue thread waits.
const CHANNEL_BATCHES: usize = 256;

type Batch = Vec<(SocketAddr, Bytes)>;

/// The attached program and the queue threads. Dropping it stops the
/// threads, closes the sockets and detaches the program.
pub struct XdpPath {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    stats: Arc<XdpStats>,
    // Dropped after the threads: the program (and its map) outlive the
    // sockets it redirects to.
    attachment: Option<Attachment>,
    _program: RedirectProgram,
}

impl XdpPath {
    /// Attaches the program for UDP to `port` on the interface and opens
    /// the queues' sockets; their datagrams come out of the returned
    /// receiver, to be paired with the data socket in [`XdpIo`].
    pub fn start(setup: &XdpSetup, port: u16) -> Result<(XdpPath, XdpRx), XdpError> {
        let iface = setup.interface.clone();
        let ifindex =
            bpf::ifindex(&iface).map_err(|e| XdpError::Interface(iface.clone(), e.to_string()))?;
        if setup.queues.is_empty() {
            return Err(XdpError::Queue("at least one queue is needed".into()));
        }
        if !setup.cpus.is_empty() && setup.cpus.len() != setup.queues.len() {
            return Err(XdpError::Queue(format!(
                "xdp.cpus names {} CPUs for {} queues: give one per queue, or none",
                setup.cpus.len(),
                setup.queues.len()
            )));
        }
        let program_err = |source| XdpError::Program {
            interface: iface.clone(),
            source,
        };
        // A program left attached by netlink (an old sluiced, or another
        // tool) would keep ours off: ours goes, a foreign one only if told.
        for gone in bpf::clear_stale(ifindex, setup.replace_foreign).map_err(program_err)? {
            warn!(interface = %iface, id = gone.id, name = %gone.name, "removed a stale XDP program");
        }
        warn_if_frames_too_small(&iface, setup.socket.frame_size);
        let highest = *setup.queues.iter().max().expect("not empty");
        let program = RedirectProgram::load(&[port], highest + 1).map_err(program_err)?;
        let mut sockets = Vec::with_capacity(setup.queues.len());
        for &queue in &setup.queues {
            let socket = XskSocket::open(ifindex, queue, &setup.socket).map_err(|source| {
                XdpError::Socket {
                    interface: iface.clone(),
                    queue,
                    source,
                }
            })?;
            program
                .set_socket(queue, socket.fd())
                .map_err(program_err)?;
            sockets.push(socket);
        }
        // Attach last: until now nothing is redirected, so no packet can
        // reach a queue without its socket.
        let attachment = Attachment::attach(&program, ifindex, setup.mode).map_err(program_err)?;
        let mode = attachment.attached_mode();
        let bind = sockets[0].bound_mode();
        let stats = Arc::new(XdpStats {
            interface: iface.clone(),
            mode: mode.as_str(),
            bind: bind.as_str(),
            queues: setup
                .queues
                .iter()
                .map(|&queue| QueueStats {
                    queue,
                    ..QueueStats::default()
                })
                .collect(),
        });
        info!(
            interface = %iface,
            queues = ?setup.queues,
            mode = stats.mode,
            bind = stats.bind,
            port,
            "AF_XDP receive path attached"
        );
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (i, socket) in sockets.into_iter().enumerate() {
            let worker = QueueWorker {
                socket,
                port,
                stats: stats.clone(),
                index: i,
                tx: tx.clone(),
                stop: stop.clone(),
                cpu: setup.cpus.get(i).copied(),
                linger: setup.rx_linger,
            };
            let name = format!("sluice-xsk-{}", setup.queues[i]);
            let handle = std::thread::Builder::new()
                .name(name)
                .spawn(move || worker.run())?;
            threads.push(handle);
        }
        Ok((
            XdpPath {
                stop,
                threads,
                stats,
                attachment: Some(attachment),
                _program: program,
            },
            XdpRx { rx: Some(rx) },
        ))
    }

    pub fn stats(&self) -> Arc<XdpStats> {
        self.stats.clone()
    }
}

impl Drop for XdpPath {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(a) = self.attachment.take() {
            drop(a);
            info!(interface = %self.stats.interface, "XDP program detached");
        }
    }
}

/// A packet longer than a UMEM frame (less the kernel's headroom) is
/// dropped by the kernel; the data port's datagrams are bounded by the
/// producers' max_datagram, not the MTU, so this warns rather than refuses.
fn warn_if_frames_too_small(iface: &str, frame_size: u32) {
    let max = crate::nic::plan::max_mtu(frame_size);
    match crate::nic::ethtool::Ethtool::open().and_then(|e| e.mtu(iface)) {
        Ok(mtu) if mtu > max => warn!(
            interface = %iface,
            mtu,
            frame_size,
            "the interface's MTU exceeds what a UMEM frame holds ({max}): larger packets to the data port are dropped (counted in sluice_xdp_rx_dropped_total); set xdp.frame_size = 4096 or keep producers' datagrams under {max} bytes"
        ),
        Ok(_) => {}
        Err(e) => debug!(interface = %iface, error = %e, "could not read the MTU"),
    }
}

/// The datagrams of the queue threads, for [`XdpIo`].
pub struct XdpRx {
    rx: Option<mpsc::Receiver<Batch>>,
}

/// The data port's [`PacketIo`] with AF_XDP: datagrams from the queue
/// threads and from the kernel socket; replies through the kernel socket.
pub struct XdpIo {
    socket: UdpIo,
    rx: XdpRx,
}

impl XdpIo {
    pub fn new(socket: UdpIo, rx: XdpRx) -> Self {
        XdpIo { socket, rx }
    }
}

/// Datagrams handed to the endpoint per call at most, so a flood on the
/// queues cannot starve its timers.
const MAX_PER_RECV: usize = 1024;

impl PacketIo for XdpIo {
    async fn recv(&mut self, into: &mut Vec<(SocketAddr, Bytes)>) -> io::Result<()> {
        loop {
            let Some(rx) = self.rx.rx.as_mut() else {
                return self.socket.recv(into).await;
            };
            tokio::select! {
                biased;
                batch = rx.recv() => match batch {
                    Some(batch) => {
                        into.extend(batch);
                        while into.len() < MAX_PER_RECV {
                            match rx.try_recv() {
                                Ok(more) => into.extend(more),
                                Err(_) => break,
                            }
                        }
                        return Ok(());
                    }
                    // The queue threads stopped: the socket alone goes on.
                    None => self.rx.rx = None,
                },
                // Cancel-safe: recvmmsg either took datagrams (and this
                // branch completed) or took nothing.
                r = self.socket.recv(into) => return r,
            }
        }
    }

    async fn send(&mut self, batch: &mut SendBatch) -> io::Result<()> {
        self.socket.send(batch).await
    }
}

struct QueueWorker {
    socket: XskSocket,
    port: u16,
    stats: Arc<XdpStats>,
    index: usize,
    tx: mpsc::Sender<Batch>,
    stop: Arc<AtomicBool>,
    cpu: Option<usize>,
    linger: Duration,
}

impl QueueWorker {
    fn run(mut self) {
        let queue = self.socket.queue();
        if let Some(cpu) = self.cpu {
            match xsk::pin_current_thread(cpu) {
                Ok(()) => debug!(queue, cpu, "queue thread pinned"),
                Err(e) => warn!(queue, cpu, error = %e, "could not pin the queue thread"),
            }
        }
        let shared = self.stats.clone();
        let stats = &shared.queues[self.index];
        let mut next_stats = Instant::now();
        // One buffer per pass holds every payload of the batch: the Bytes
        // handed on are slices of it, so there is no allocation per packet.
        let mut payloads = BytesMut::new();
        while !self.stop.load(Relaxed) {
            if Instant::now() >= next_stats {
                next_stats = Instant::now() + STATS_EVERY;
                self.refresh(stats);
            }
            match self.socket.wait_rx_lingering(
                Duration::from_millis(100),
                self.linger,
                RX_BATCH as u32,
            ) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    warn!(queue, error = %e, "waiting on the AF_XDP socket failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
            // Empty the ring before waiting again: the linger is for a
            // fresh wake-up, not between batches of a backlog.
            loop {
                let (n, batch) = self.take_batch(&mut payloads, stats);
                if let Some(batch) = batch {
                    if !self.hand_on(batch, stats) {
                        self.refresh(stats);
                        return;
                    }
                }
                if n < RX_BATCH || self.stop.load(Relaxed) {
                    break;
                }
            }
        }
        self.refresh(stats);
    }

    /// Takes up to a batch of frames off the RX ring: how many, and the
    /// datagrams to the data port among them.
    fn take_batch(
        &mut self,
        payloads: &mut BytesMut,
        stats: &QueueStats,
    ) -> (usize, Option<Batch>) {
        payloads.reserve(RX_BATCH * 1500);
        let mut lens: Vec<(SocketAddr, usize)> = Vec::with_capacity(RX_BATCH);
        let port = self.port;
        let mut bytes = 0u64;
        let n = self.socket.recv(RX_BATCH, |f| {
            bytes += f.len() as u64;
            match frame::parse_udp(f) {
                Ok(udp) if udp.dst.port() == port => {
                    payloads.extend_from_slice(udp.payload);
                    lens.push((udp.src, udp.payload.len()));
                }
                Ok(_) => {
                    stats.wrong_port.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    stats.invalid[e as usize].fetch_add(1, Relaxed);
                }
            }
        });
        stats.rx_frames.fetch_add(n as u64, Relaxed);
        stats.rx_bytes.fetch_add(bytes, Relaxed);
        if lens.is_empty() {
            return (n, None);
        }
        let mut all = payloads.split().freeze();
        let batch = lens
            .into_iter()
            .map(|(from, len)| (from, all.split_to(len)))
            .collect();
        (n, Some(batch))
    }

    /// Passes a batch to the endpoint, waiting while its queue is full (the
    /// RX ring then fills and the kernel counts the drops). False when the
    /// endpoint is gone or the path is stopping.
    fn hand_on(&self, mut batch: Batch, stats: &QueueStats) -> bool {
        let mut waited = false;
        loop {
            match self.tx.try_send(batch) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
                Err(mpsc::error::TrySendError::Full(b)) => {
                    if !waited {
                        stats.endpoint_full.fetch_add(1, Relaxed);
                        waited = true;
                    }
                    if self.stop.load(Relaxed) {
                        return false;
                    }
                    batch = b;
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
    }

    fn refresh(&self, stats: &QueueStats) {
        match self.socket.statistics() {
            Ok(s) => stats.store_kernel(&s),
            Err(e) => debug!(error = %e, "XDP_STATISTICS failed"),
        }
        stats
            .cpu_nanos
            .store(xsk::thread_cpu_time().as_nanos() as u64, Relaxed);
    }
}
