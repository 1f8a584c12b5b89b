//! The senders, each on a thread inside namespace a: sendmmsg on one
//! connected UDP socket (optionally paced), or an AF_XDP TX ring.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sluice_testkit::testnet::End;
use sluice_xdp::bpf;
use sluice_xdp::frame;
use sluice_xdp::producer::TxSetup;
use sluice_xdp::xsk::{BindMode, XskSocket};

use super::meter::{Meter, Side, Window};
use super::{BATCH, PACE_BURST, SRC_PORT};
use crate::udp_baseline::MmsgBuffers;
use crate::xdp::{parse_mac, secs};

/// A token bucket checked before each batch.
struct Pacer {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    fn new(rate: f64) -> Pacer {
        Pacer {
            rate,
            tokens: BATCH as f64,
            last: Instant::now(),
        }
    }

    /// Waits until a batch may go.
    fn wait_batch(&mut self) {
        loop {
            let now = Instant::now();
            self.tokens = (self.tokens + secs(now - self.last) * self.rate).min(PACE_BURST);
            self.last = now;
            if self.tokens >= BATCH as f64 {
                return;
            }
            let short = BATCH as f64 - self.tokens;
            std::thread::sleep(Duration::from_secs_f64(short / self.rate));
        }
    }

    fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
}

/// One connected UDP socket and BATCH headers over payloads of one size.
struct Mmsg {
    sock: UdpSocket,
    msgs: MmsgBuffers,
}

impl Mmsg {
    fn open(a: &End, to: SocketAddr, size: usize) -> Result<Mmsg, String> {
        let from: IpAddr = a.ip.parse().map_err(|e| format!("address {}: {e}", a.ip))?;
        let sock = UdpSocket::bind(SocketAddr::new(from, 0)).map_err(|e| format!("bind: {e}"))?;
        sock.connect(to).map_err(|e| format!("connect {to}: {e}"))?;
        let msgs = MmsgBuffers::new(BATCH, size);
        Ok(Mmsg { sock, msgs })
    }

    /// One sendmmsg of up to `n` (at most BATCH) packets: how many went.
    /// Full queues (and an ICMP error for an earlier packet) send none.
    fn send(&mut self, n: usize) -> Result<usize, String> {
        let n = n.min(BATCH);
        // SAFETY: `n` headers pointing at their payloads, all alive for the
        // call; the kernel only reads them.
        let rc = unsafe {
            libc::sendmmsg(
                self.sock.as_raw_fd(),
                self.msgs.headers(),
                n as libc::c_uint,
                0,
            )
        };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR | libc::ECONNREFUSED) => {
                std::thread::yield_now();
                Ok(0)
            }
            _ => Err(format!("sendmmsg: {e}")),
        }
    }
}

pub(super) fn mmsg(
    a: &End,
    to: SocketAddr,
    size: usize,
    pace: Option<f64>,
    w: Window,
    stop_at: Instant,
) -> Result<Side, String> {
    let mut tx = Mmsg::open(a, to, size)?;
    let mut pacer = pace.map(Pacer::new);
    let mut meter = Meter::new(w);
    let (mut sent, mut calls) = (0u64, 0u64);
    while Instant::now() < stop_at {
        if let Some(p) = pacer.as_mut() {
            p.wait_batch();
        }
        let n = tx.send(BATCH)?;
        if n > 0 {
            sent += n as u64;
            calls += 1;
            if let Some(p) = pacer.as_mut() {
                p.spend(n);
            }
        }
        meter.tick(sent, calls);
    }
    Ok(Side {
        total: sent,
        bytes: sent * size as u64,
        window: meter
            .window()
            .ok_or("the window did not close while sending")?,
        drops: 0,
        invalid: 0,
        mode: None,
    })
}

/// Sends a burst of `burst` packets whenever asked on `go` (until it says
/// `false`), and reports each burst's count on `sent` once it is out.
/// Returns the packets sent in all.
pub(super) fn bursts(
    a: &End,
    to: SocketAddr,
    size: usize,
    burst: u64,
    go: mpsc::Receiver<bool>,
    sent: mpsc::Sender<u64>,
) -> Result<u64, String> {
    let mut tx = Mmsg::open(a, to, size)?;
    let mut total = 0;
    let give_up = Duration::from_secs(5);
    while let Ok(true) = go.recv() {
        let mut n = 0u64;
        let started = Instant::now();
        while n < burst && started.elapsed() < give_up {
            n += tx.send((burst - n) as usize)? as u64;
        }
        total += n;
        if sent.send(n).is_err() {
            break;
        }
    }
    Ok(total)
}

pub(super) fn af_xdp(
    a: &End,
    b: &End,
    to: SocketAddr,
    size: usize,
    w: Window,
    stop_at: Instant,
) -> Result<Side, String> {
    let from: IpAddr = a.ip.parse().map_err(|e| format!("address {}: {e}", a.ip))?;
    let from = SocketAddr::new(from, SRC_PORT);
    let (src_mac, dst_mac) = (parse_mac(&a.mac)?, parse_mac(&b.mac)?);
    let ifindex = bpf::ifindex(&a.iface).map_err(|e| e.to_string())?;
    // The producers' TX ring (sluice_xdp::producer), in copy mode.
    let mut config = TxSetup::new(a.iface.clone(), 0).socket;
    config.bind = BindMode::Copy;
    let mut xsk = XskSocket::open(ifindex, 0, &config).map_err(|e| e.to_string())?;
    let mode = Some(format!("TX ring, {}", xsk.bound_mode().as_str()));
    let payload = vec![0x5au8; size];
    let mut meter = Meter::new(w);
    let (mut queued, mut calls) = (0u64, 0u64);
    let completed = |xsk: &mut XskSocket, queued: u64| {
        xsk.reclaim();
        queued - xsk.tx_in_flight() as u64
    };
    while Instant::now() < stop_at {
        let mut n = 0;
        while n < BATCH
            && xsk.tx_frame(|buf| {
                frame::write_udp(buf, src_mac, dst_mac, from, to, &payload).unwrap_or(0)
            })
        {
            n += 1;
        }
        queued += n as u64;
        calls += u64::from(n > 0);
        xsk.flush_tx()
            .map_err(|e| format!("AF_XDP transmit: {e}"))?;
        let done = completed(&mut xsk, queued);
        meter.tick(done, calls);
        if n == 0 {
            // Every frame is in flight: let the kernel catch up.
            std::thread::yield_now();
        }
    }
    // What is still queued goes out (or is given up) before the count.
    let deadline = Instant::now() + Duration::from_millis(500);
    while xsk.tx_in_flight() > 0 && Instant::now() < deadline {
        xsk.flush_tx()
            .map_err(|e| format!("AF_XDP transmit: {e}"))?;
        xsk.reclaim();
    }
    let total = completed(&mut xsk, queued);
    Ok(Side {
        total,
        bytes: total * size as u64,
        window: meter
            .window()
            .ok_or("the window did not close while sending")?,
        drops: 0,
        invalid: 0,
        mode,
    })
}
