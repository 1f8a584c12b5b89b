//! One AF_XDP socket bound to one queue of one interface, with a UMEM of
//! its own (no sharing between sockets: one socket per queue thread).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::ring::{Consumer, Producer};
use super::stats::XdpStatistics;
use super::sys::{self, XdpDesc, XdpMmapOffsets, XdpOptions, XdpRingOffset, XdpUmemReg};
use super::umem::{Mmap, Umem};
use super::{BindMode, XskConfig, XskError};

/// How long `open` retries a bind that fails with EBUSY: a queue whose
/// previous socket just closed stays busy for a few ms (2–30 ms seen).
const BIND_BUSY_RETRY: Duration = Duration::from_secs(1);

/// ENOTSUPP, the kernel-internal errno some drivers leak from their XSK
/// pool setup where EOPNOTSUPP was meant.
const ENOTSUPP: i32 = 524;

/// An AF_XDP socket: its UMEM and four rings.
///
/// Receive with [`recv`](XskSocket::recv) (after [`wait_rx`](XskSocket::wait_rx)
/// when idle); transmit with [`tx_frame`](XskSocket::tx_frame) then
/// [`flush_tx`](XskSocket::flush_tx). Nothing here allocates per packet.
pub struct XskSocket {
    // Field order is drop order: the ring mappings go first, then the
    // socket (which releases the kernel's hold on the UMEM), then the UMEM.
    /// `None` for a transmit-only socket.
    rx: Option<Consumer<XdpDesc>>,
    /// `None` for a receive-only socket.
    tx: Option<Producer<XdpDesc>>,
    fill: Producer<u64>,
    comp: Consumer<u64>,
    fd: OwnedFd,
    umem: Umem,
    /// Receive frames to give back when the fill ring next has room. The
    /// ring has a slot for every receive frame, yet can look full: the
    /// kernel publishes its RX producer index before its fill consumer
    /// index (both in xsk_flush), so we may see a frame arrive before we
    /// see the slot it left. Capacity `rx_frames`: never reallocates.
    fill_backlog: Vec<u64>,
    /// Transmit frames that are ours to write (a stack, so recently used,
    /// cache-warm frames go out again first). Capacity `tx_frames`, never
    /// exceeded, so pushing never reallocates.
    tx_free: Vec<u64>,
    tx_frames: usize,
    frame_size: u32,
    ifindex: u32,
    queue: u32,
    mode: BindMode,
    need_wakeup: bool,
    busy_poll: bool,
}

// SAFETY: the raw pointers inside (rings, UMEM) point into mappings the
// socket owns; nothing else in the process holds them, and the kernel side
// is synchronised through the rings' atomics. Moving the socket to another
// thread moves that ownership whole; it is not Sync, so one thread at a
// time uses it.
unsafe impl Send for XskSocket {}

impl XskSocket {
    /// Opens an AF_XDP socket on `queue` of interface `ifindex`, registers a
    /// fresh UMEM, fills the fill ring and binds. An XDP program must
    /// redirect to it (XSKMAP) for anything to arrive; transmitting needs
    /// no program.
    pub fn open(ifindex: u32, queue: u32, config: &XskConfig) -> Result<XskSocket, XskError> {
        config.validate()?;
        match config.bind {
            BindMode::Auto => match Self::open_as(ifindex, queue, config, BindMode::ZeroCopy) {
                Ok(s) => Ok(s),
                // These would fail the same in copy mode: say so now.
                Err(
                    e @ (XskError::NoSuchQueue { .. }
                    | XskError::NoSuchInterface { .. }
                    | XskError::Busy { .. }
                    | XskError::MemlockLimit { .. }),
                ) => Err(e),
                Err(e) => {
                    tracing::debug!("{e}; binding in copy mode instead");
                    Self::open_as(ifindex, queue, config, BindMode::Copy)
                }
            },
            mode => Self::open_as(ifindex, queue, config, mode),
        }
    }

    /// One attempt in one mode, from a new socket: a failed zero-copy bind
    /// leaves nothing behind to undo.
    fn open_as(
        ifindex: u32,
        queue: u32,
        config: &XskConfig,
        mode: BindMode,
    ) -> Result<XskSocket, XskError> {
        let os = |step| move |e| XskError::os(ifindex, queue, step, e);

        // SAFETY: socket(2) with constant arguments.
        let raw = unsafe { libc::socket(sys::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        let raw = sys::cvt(raw).map_err(os("socket(AF_XDP)"))?;
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let s = fd.as_raw_fd();

        let umem = Umem::new(config.frame_size, config.frame_count).map_err(os("mmap UMEM"))?;
        let reg = XdpUmemReg {
            addr: umem.addr(),
            len: umem.len() as u64,
            chunk_size: config.frame_size,
            ..XdpUmemReg::default()
        };
        sys::setsockopt(s, sys::SOL_XDP, sys::XDP_UMEM_REG, &reg).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                // The pages are charged to RLIMIT_MEMLOCK unless CAP_IPC_LOCK.
                XskError::MemlockLimit {
                    ifindex,
                    queue,
                    bytes: umem.len(),
                }
            } else {
                XskError::os(ifindex, queue, "register UMEM (XDP_UMEM_REG)", e)
            }
        })?;
        for (opt, size, step) in [
            (sys::XDP_UMEM_FILL_RING, config.fill_ring, "size fill ring"),
            (
                sys::XDP_UMEM_COMPLETION_RING,
                config.comp_ring,
                "size completion ring",
            ),
            (sys::XDP_RX_RING, config.rx_ring, "size RX ring"),
            (sys::XDP_TX_RING, config.tx_ring, "size TX ring"),
        ] {
            if size > 0 {
                sys::setsockopt(s, sys::SOL_XDP, opt, &size).map_err(os(step))?;
            }
        }

        let (off, len) = sys::getsockopt::<XdpMmapOffsets>(s, sys::SOL_XDP, sys::XDP_MMAP_OFFSETS)
            .map_err(os("get ring offsets (XDP_MMAP_OFFSETS)"))?;
        if len != std::mem::size_of::<XdpMmapOffsets>() {
            // Kernels before 5.4 have no ring flags word (no need_wakeup).
            return Err(XskError::os(
                ifindex,
                queue,
                "get ring offsets (XDP_MMAP_OFFSETS)",
                io::Error::other(format!(
                    "kernel returned {len} bytes: too old for need_wakeup (5.4+)"
                )),
            ));
        }
        let map = |ring: &XdpRingOffset, entries: u32, slot: usize, pgoff, step| {
            let len = ring.desc as usize + entries as usize * slot;
            Mmap::ring(s, len, pgoff).map_err(os(step))
        };
        let desc = std::mem::size_of::<XdpDesc>();
        let (rx_pg, tx_pg) = (sys::XDP_PGOFF_RX_RING, sys::XDP_PGOFF_TX_RING);
        let rx = (config.rx_ring > 0)
            .then(|| map(&off.rx, config.rx_ring, desc, rx_pg, "mmap RX ring"))
            .transpose()?;
        let tx = (config.tx_ring > 0)
            .then(|| map(&off.tx, config.tx_ring, desc, tx_pg, "mmap TX ring"))
            .transpose()?;
        let fr = map(
            &off.fr,
            config.fill_ring,
            8,
            sys::XDP_UMEM_PGOFF_FILL_RING,
            "mmap fill ring",
        )?;
        let cr = map(
            &off.cr,
            config.comp_ring,
            8,
            sys::XDP_UMEM_PGOFF_COMPLETION_RING,
            "mmap completion ring",
        )?;
        // SAFETY: each mapping is the kernel's ring of that kind, laid out
        // per the offsets it reported, with the slot count we set.
        let (rx, tx, mut fill, comp) = unsafe {
            (
                rx.map(|m| Consumer::new(m, &off.rx, config.rx_ring)),
                tx.map(|m| Producer::new(m, &off.tx, config.tx_ring)),
                Producer::new(fr, &off.fr, config.fill_ring),
                Consumer::new(cr, &off.cr, config.comp_ring),
            )
        };

        // Every receive frame goes to the kernel now, so that it has
        // somewhere to put packets the moment we are bound.
        let fs = u64::from(config.frame_size);
        for i in 0..u64::from(config.rx_frames()) {
            let pushed = fill.push(i * fs);
            debug_assert!(pushed, "the fill ring holds every receive frame");
        }
        fill.submit();
        let tx_start = u64::from(config.rx_frames());
        let tx_free: Vec<u64> = (tx_start..tx_start + u64::from(config.tx_frames()))
            .rev()
            .map(|i| i * fs)
            .collect();

        if let Some(bp) = config.busy_poll {
            let one: libc::c_int = 1;
            let usecs = bp.usecs as libc::c_int;
            let budget = bp.budget as libc::c_int;
            sys::setsockopt(s, libc::SOL_SOCKET, sys::SO_PREFER_BUSY_POLL, &one)
                .map_err(os("SO_PREFER_BUSY_POLL"))?;
            sys::setsockopt(s, libc::SOL_SOCKET, sys::SO_BUSY_POLL, &usecs)
                .map_err(os("SO_BUSY_POLL"))?;
            sys::setsockopt(s, libc::SOL_SOCKET, sys::SO_BUSY_POLL_BUDGET, &budget)
                .map_err(os("SO_BUSY_POLL_BUDGET"))?;
        }

        bind(s, ifindex, queue, mode, config.need_wakeup)?;
        let (opts, _) = sys::getsockopt::<XdpOptions>(s, sys::SOL_XDP, sys::XDP_OPTIONS)
            .map_err(os("get bind mode (XDP_OPTIONS)"))?;
        let mode = if opts.flags & sys::XDP_OPTIONS_ZEROCOPY != 0 {
            BindMode::ZeroCopy
        } else {
            BindMode::Copy
        };

        Ok(XskSocket {
            rx,
            tx,
            fill,
            comp,
            fd,
            umem,
            fill_backlog: Vec::with_capacity(config.rx_frames() as usize),
            tx_frames: tx_free.len(),
            tx_free,
            frame_size: config.frame_size,
            ifindex,
            queue,
            mode,
            need_wakeup: config.need_wakeup,
            busy_poll: config.busy_poll.is_some(),
        })
    }

    /// Takes up to `max` received frames off the RX ring, calls `f` with
    /// each frame's bytes (Ethernet header first), and gives the frames
    /// back to the kernel. Returns how many were taken (0 on a
    /// transmit-only socket).
    pub fn recv(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        if !self.fill_backlog.is_empty() {
            self.refill();
        }
        let Some(rx) = self.rx.as_mut() else {
            return 0;
        };
        let mut n = rx.available(max);
        if n == 0 && self.busy_poll {
            // In busy-poll mode nothing arrives unless a syscall runs NAPI.
            let _ = sys::kick_rx(self.fd.as_raw_fd());
            n = rx.available(max);
        }
        for i in 0..n {
            let desc = rx.get(i);
            // SAFETY: the frame came off the RX ring and goes back to the
            // fill ring only below, after `f` is done with it.
            if let Some(bytes) = unsafe { self.umem.bytes(desc.addr, desc.len) } {
                f(bytes);
                let addr = self.umem.frame_start(desc.addr);
                if !self.fill.push(addr) && self.fill_backlog.len() < self.fill_backlog.capacity() {
                    self.fill_backlog.push(addr);
                }
            }
            // A descriptor outside the UMEM (never seen; a kernel bug) is
            // skipped and its address not handed back.
        }
        if n > 0 {
            rx.release(n);
            self.fill.submit();
        }
        if self.need_wakeup && self.fill.needs_wakeup() {
            // The driver ran out of fill entries and sleeps until told.
            let _ = sys::kick_rx(self.fd.as_raw_fd());
        }
        n as usize
    }

    /// Moves frames from the backlog to the fill ring, as far as it has
    /// room.
    fn refill(&mut self) {
        let room = self.fill.free(self.fill_backlog.len() as u32) as usize;
        let take = room.min(self.fill_backlog.len());
        for addr in self.fill_backlog.drain(..take) {
            self.fill.push(addr);
        }
        if take > 0 {
            self.fill.submit();
        }
    }

    /// Waits until the RX ring has frames or `timeout` passes; `Ok(true)`
    /// when there are frames. poll(2) normally; with busy polling, spins
    /// on recvfrom(MSG_DONTWAIT), each call running the driver's NAPI.
    pub fn wait_rx(&self, timeout: Duration) -> io::Result<bool> {
        let Some(rx) = self.rx.as_ref() else {
            std::thread::sleep(timeout);
            return Ok(false);
        };
        if rx.has_entries() {
            return Ok(true);
        }
        let fd = self.fd.as_raw_fd();
        if self.busy_poll {
            let deadline = Instant::now() + timeout;
            loop {
                match sys::kick_rx(fd) {
                    Ok(()) => {}
                    Err(e) if is_transient(&e) => {}
                    Err(e) => return Err(e),
                }
                if rx.has_entries() {
                    return Ok(true);
                }
                if Instant::now() >= deadline {
                    return Ok(false);
                }
            }
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: one pollfd, a valid timespec, no signal mask change.
        let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(rx.has_entries())
    }

    /// Like [`wait_rx`](XskSocket::wait_rx), then, when fewer than `batch`
    /// frames are waiting, sleeps `linger` so that more land first: one
    /// wake-up then serves several packets. At moderate rates a reader
    /// woken per packet spends most of its time waking (6–8 µs a time on a
    /// 2-vCPU VM against 0.1 µs to take a packet); the RX ring holds what
    /// arrives meanwhile, as a NIC's interrupt coalescing would. No linger
    /// with busy polling, whose point is to take packets at once.
    pub fn wait_rx_lingering(
        &self,
        timeout: Duration,
        linger: Duration,
        batch: u32,
    ) -> io::Result<bool> {
        if !self.wait_rx(timeout)? {
            return Ok(false);
        }
        let pending = self.rx.as_ref().map_or(0, |rx| rx.pending());
        if !linger.is_zero() && !self.busy_poll && pending < batch {
            std::thread::sleep(linger);
        }
        Ok(true)
    }

    /// Writes one frame for transmission: `write` gets a whole UMEM frame,
    /// writes the Ethernet frame at its start and returns its length. The
    /// frame goes out at the next [`flush_tx`](XskSocket::flush_tx).
    /// `false` (and `write` is not called) when no transmit frame is free
    /// or the TX ring is full (or there is none); also `false` if `write`
    /// returns 0.
    pub fn tx_frame(&mut self, write: impl FnOnce(&mut [u8]) -> usize) -> bool {
        if self.tx_free.is_empty() {
            self.reclaim();
        }
        let Some(tx) = self.tx.as_mut() else {
            return false;
        };
        if tx.free(1) == 0 {
            return false;
        }
        let Some(addr) = self.tx_free.pop() else {
            return false;
        };
        // SAFETY: a frame from the free list: not in any ring.
        let Some(buf) = (unsafe { self.umem.frame_mut(addr) }) else {
            return false;
        };
        let len = write(buf);
        debug_assert!(len <= self.frame_size as usize, "wrote past the frame");
        if len == 0 || len > self.frame_size as usize {
            self.tx_free.push(addr);
            return false;
        }
        tx.push(XdpDesc {
            addr,
            len: len as u32,
            options: 0,
        })
    }

    /// Publishes the frames written since the last flush and makes the
    /// kernel send them: in copy mode the kernel transmits only inside
    /// sendto(), at most 32 frames per call, so this calls it until the
    /// ring is drained or the kernel makes no progress; in zero-copy mode
    /// only when the driver asks for a wakeup. EAGAIN, EBUSY and ENOBUFS
    /// mean "try later" (frames stay queued), not errors.
    pub fn flush_tx(&mut self) -> io::Result<()> {
        let Some(tx) = self.tx.as_mut() else {
            return Ok(());
        };
        if tx.unsubmitted() > 0 {
            tx.submit();
        }
        if tx.outstanding() == 0 {
            return Ok(());
        }
        let copy = self.mode == BindMode::Copy;
        if !copy && self.need_wakeup {
            // Our producer store must be visible before we read the flag:
            // else we might read a stale "awake" and the driver, having seen
            // an empty ring, sleeps on our frames.
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            if !tx.needs_wakeup() {
                return Ok(());
            }
        }
        let fd = self.fd.as_raw_fd();
        // Each round sends up to the kernel's budget (32); bounded anyway.
        let rounds = tx.size() / 16 + 4;
        for _ in 0..rounds {
            let before = self.tx_outstanding();
            match sys::kick_tx(fd) {
                Ok(()) if !copy => return Ok(()),
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_transient(&e) => {
                    if !copy {
                        return Ok(());
                    }
                    // EAGAIN also means a full completion ring: empty it.
                    self.reclaim();
                }
                Err(e) => return Err(e),
            }
            let after = self.tx_outstanding();
            if after == 0 || after == before {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Published TX descriptors the kernel has not taken yet.
    fn tx_outstanding(&self) -> u32 {
        self.tx.as_ref().map_or(0, Producer::outstanding)
    }

    /// Takes sent frames off the completion ring and makes them free for
    /// [`tx_frame`](XskSocket::tx_frame); returns how many.
    pub fn reclaim(&mut self) -> usize {
        let n = self.comp.available(u32::MAX);
        for i in 0..n {
            let addr = self.umem.frame_start(self.comp.get(i));
            // The bound keeps a confused kernel from growing the list.
            if self.tx_free.len() < self.tx_frames {
                self.tx_free.push(addr);
            }
        }
        if n > 0 {
            self.comp.release(n);
        }
        n as usize
    }

    /// Transmit frames written and not yet completed (queued, in the
    /// kernel, or on the completion ring awaiting [`reclaim`](XskSocket::reclaim)).
    pub fn tx_in_flight(&self) -> usize {
        self.tx_frames - self.tx_free.len()
    }

    /// How many transmit frames the socket has in all.
    pub fn tx_capacity(&self) -> usize {
        self.tx_frames
    }

    /// The kernel's counters for this socket.
    pub fn statistics(&self) -> io::Result<XdpStatistics> {
        XdpStatistics::read(self.fd.as_raw_fd())
    }

    /// The mode the kernel bound in: `ZeroCopy` or `Copy` (never `Auto`).
    pub fn bound_mode(&self) -> BindMode {
        self.mode
    }

    /// For the XSKMAP entry and for poll/epoll.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn queue(&self) -> u32 {
        self.queue
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }
}

impl std::fmt::Debug for XskSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskSocket")
            .field("fd", &self.fd.as_raw_fd())
            .field("ifindex", &self.ifindex)
            .field("queue", &self.queue)
            .field("mode", &self.mode)
            .field("tx_in_flight", &self.tx_in_flight())
            .finish_non_exhaustive()
    }
}

/// Errnos that mean "the kernel cannot take more right now".
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS)
    )
}

/// bind(2), retrying EBUSY for up to [`BIND_BUSY_RETRY`].
fn bind(
    fd: RawFd,
    ifindex: u32,
    queue: u32,
    mode: BindMode,
    need_wakeup: bool,
) -> Result<(), XskError> {
    let mut flags = match mode {
        BindMode::ZeroCopy => sys::XDP_ZEROCOPY,
        BindMode::Copy => sys::XDP_COPY,
        BindMode::Auto => 0,
    };
    if need_wakeup {
        flags |= sys::XDP_USE_NEED_WAKEUP;
    }
    let addr = sys::SockaddrXdp {
        family: sys::AF_XDP as u16,
        flags,
        ifindex,
        queue_id: queue,
        shared_umem_fd: 0,
    };
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        // SAFETY: a sockaddr_xdp of the size we pass.
        let rc = unsafe {
            libc::bind(
                fd,
                (&addr as *const sys::SockaddrXdp).cast(),
                std::mem::size_of::<sys::SockaddrXdp>() as libc::socklen_t,
            )
        };
        let Err(e) = sys::cvt(rc) else {
            return Ok(());
        };
        return Err(match e.raw_os_error() {
            Some(libc::EBUSY) if start.elapsed() < BIND_BUSY_RETRY => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
                continue;
            }
            Some(libc::EBUSY) => XskError::Busy {
                ifindex,
                queue,
                waited_ms: start.elapsed().as_millis() as u64,
            },
            // The kernel's answer for a queue id at or past the
            // interface's real queue count.
            Some(libc::EINVAL) => XskError::NoSuchQueue { ifindex, queue },
            Some(libc::ENODEV) => XskError::NoSuchInterface { ifindex, queue },
            Some(libc::EOPNOTSUPP) | Some(ENOTSUPP) if mode == BindMode::ZeroCopy => {
                XskError::NoZeroCopy { ifindex, queue }
            }
            _ => XskError::os(ifindex, queue, "bind", e),
        });
    }
}
