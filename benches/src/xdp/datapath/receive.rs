//! The receivers, each on a thread inside namespace b: a UDP socket read
//! with recvmmsg, or the XDP program and a receive-only AF_XDP socket. Two
//! loops over them: [`stream`] (wait when there is nothing, as a server
//! does) and [`drain`] (empty a backlog the sender left, with no waiting:
//! what a packet costs without the wake-ups).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sluice_testkit::testnet::End;
use sluice_xdp::bpf::{self, Attachment, Mode, RedirectProgram};
use sluice_xdp::datapath::DEFAULT_RX_LINGER;
use sluice_xdp::frame;
use sluice_xdp::xsk::{self, BindMode, XdpStatistics, XskConfig, XskSocket};

use super::meter::{await_window, Drain, Meter, Side, Window};
use super::{ReceiverKind, BATCH, POLL, PORT, RCVBUF};
use crate::udp_baseline::{set_int, MmsgBuffers};
use sluice_testkit::testnet::udp_counter;

/// A receiver, open and counting.
pub(super) struct Rx {
    kind: Kind,
    /// Packets to [`PORT`] and their payload bytes; AF_XDP frames that were
    /// not; receive calls that got any.
    total: u64,
    bytes: u64,
    invalid: u64,
    calls: u64,
}

enum Kind {
    Socket(SocketRx),
    Xdp(Box<XdpRx>),
}

struct SocketRx {
    sock: UdpSocket,
    msgs: MmsgBuffers,
    drops_before: u64,
}

struct XdpRx {
    // Field order is drop order: the program leaves the interface before
    // its socket closes.
    attachment: Attachment,
    xsk: XskSocket,
    _prog: RedirectProgram,
    stats_before: XdpStatistics,
}

impl Rx {
    /// Opens `kind` on `b` (call on a thread inside b's namespace).
    pub(super) fn open(kind: ReceiverKind, b: &End, at: SocketAddr) -> Result<Rx, String> {
        let kind = match kind {
            ReceiverKind::Socket => {
                Kind::Socket(SocketRx::open(at).map_err(|e| format!("UDP socket on {at}: {e}"))?)
            }
            ReceiverKind::AfXdp => Kind::Xdp(Box::new(XdpRx::open(b)?)),
        };
        Ok(Rx {
            kind,
            total: 0,
            bytes: 0,
            invalid: 0,
            calls: 0,
        })
    }

    /// Takes up to [`BATCH`] packets; with `wait`, first waits up to
    /// [`POLL`] while there are none. Returns how many it took.
    pub(super) fn recv(&mut self, wait: bool) -> Result<usize, String> {
        let got = match &mut self.kind {
            Kind::Socket(s) => {
                let flags = if wait {
                    libc::MSG_WAITFORONE
                } else {
                    libc::MSG_DONTWAIT
                };
                // SAFETY: BATCH headers, each pointing at its own iovec and
                // buffer, all alive for the call.
                let rc = unsafe {
                    libc::recvmmsg(
                        s.sock.as_raw_fd(),
                        s.msgs.headers(),
                        BATCH as libc::c_uint,
                        flags,
                        std::ptr::null_mut(),
                    )
                };
                if rc < 0 {
                    let e = io::Error::last_os_error();
                    return match e.kind() {
                        io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted => Ok(0),
                        _ => Err(format!("recvmmsg: {e}")),
                    };
                }
                let n = rc as usize;
                self.total += n as u64;
                self.bytes += s.msgs.received(n);
                n
            }
            Kind::Xdp(x) => {
                let (total, bytes, invalid) = (&mut self.total, &mut self.bytes, &mut self.invalid);
                let n = x.xsk.recv(BATCH, |f| match frame::parse_udp(f) {
                    Ok(udp) if udp.dst.port() == PORT => {
                        *total += 1;
                        *bytes += udp.payload.len() as u64;
                    }
                    _ => *invalid += 1,
                });
                // The daemon's way of waiting (see sluice_xdp::datapath).
                if n == 0 && wait {
                    x.xsk
                        .wait_rx_lingering(POLL, DEFAULT_RX_LINGER, BATCH as u32)
                        .map_err(|e| format!("waiting on the AF_XDP socket: {e}"))?;
                }
                n
            }
        };
        self.calls += u64::from(got > 0);
        Ok(got)
    }

    /// "native XDP, copy" for AF_XDP.
    pub(super) fn mode(&self) -> Option<String> {
        match &self.kind {
            Kind::Socket(_) => None,
            Kind::Xdp(x) => Some(format!(
                "{} XDP, {}",
                x.attachment.attached_mode(),
                x.xsk.bound_mode().as_str()
            )),
        }
    }

    /// Drops the kernel counted since the receiver opened (socket: UDP
    /// RcvbufErrors of the namespace; AF_XDP: the socket's rx_dropped,
    /// rx_ring_full and rx_invalid_descs).
    fn drops(&self) -> u64 {
        match &self.kind {
            Kind::Socket(s) => udp_counter("RcvbufErrors")
                .unwrap_or(0)
                .saturating_sub(s.drops_before),
            Kind::Xdp(x) => {
                let d = x
                    .xsk
                    .statistics()
                    .unwrap_or_default()
                    .since(&x.stats_before);
                d.rx_dropped + d.rx_ring_full + d.rx_invalid_descs
            }
        }
    }

    fn side(
        &self,
        window: Option<(super::meter::Snap, super::meter::Snap)>,
    ) -> Result<Side, String> {
        Ok(Side {
            total: self.total,
            bytes: self.bytes,
            window: window.ok_or("the window did not close while receiving")?,
            drops: self.drops(),
            invalid: self.invalid,
            mode: self.mode(),
        })
    }
}

impl SocketRx {
    fn open(at: SocketAddr) -> io::Result<SocketRx> {
        let sock = UdpSocket::bind(at)?;
        let size = RCVBUF as libc::c_int;
        // As root SO_RCVBUFFORCE passes net.core.rmem_max; else SO_RCVBUF.
        if set_int(&sock, libc::SO_RCVBUFFORCE, size).is_err() {
            set_int(&sock, libc::SO_RCVBUF, size)?;
        }
        sock.set_read_timeout(Some(POLL))?;
        Ok(SocketRx {
            sock,
            msgs: MmsgBuffers::new(BATCH, 2048),
            drops_before: udp_counter("RcvbufErrors").unwrap_or(0),
        })
    }
}

impl XdpRx {
    /// The redirect program on `b`'s interface and a receive-only socket on
    /// its queue 0: 8192 frames, all on the fill ring, copy mode (veth has
    /// no zero-copy).
    fn open(b: &End) -> Result<XdpRx, String> {
        let config = XskConfig {
            frame_count: 8192,
            tx_ring: 0,
            bind: BindMode::Copy,
            ..XskConfig::default()
        };
        let ifindex = bpf::ifindex(&b.iface).map_err(|e| e.to_string())?;
        let prog = RedirectProgram::load(&[PORT], 1).map_err(|e| e.to_string())?;
        let xsk = XskSocket::open(ifindex, 0, &config).map_err(|e| e.to_string())?;
        prog.set_socket(0, xsk.fd()).map_err(|e| e.to_string())?;
        let attachment =
            Attachment::attach(&prog, ifindex, Mode::Auto).map_err(|e| e.to_string())?;
        let stats_before = xsk.statistics().unwrap_or_default();
        Ok(XdpRx {
            attachment,
            xsk,
            _prog: prog,
            stats_before,
        })
    }
}

/// Opens the receiver and says so on `ready` (or why not).
pub(super) fn open_and_report(
    kind: ReceiverKind,
    b: &End,
    at: SocketAddr,
    ready: &mpsc::Sender<Result<(), String>>,
) -> Result<Rx, String> {
    let rx = Rx::open(kind, b, at);
    let _ = ready.send(rx.as_ref().map(|_| ()).map_err(Clone::clone));
    rx
}

/// The streaming receiver: waits for packets, takes them as they come,
/// until the sender is done and the link is quiet.
pub(super) fn stream(
    kind: ReceiverKind,
    b: &End,
    at: SocketAddr,
    ready: mpsc::Sender<Result<(), String>>,
    window: mpsc::Receiver<Option<Window>>,
    sender_done: impl Fn() -> bool,
) -> Result<Side, String> {
    let mut rx = open_and_report(kind, b, at, &ready)?;
    let w = await_window(&window)?;
    let mut meter = Meter::new(w);
    let mut drain = Drain::new();
    loop {
        let got = rx.recv(true)?;
        meter.tick(rx.total, rx.calls);
        if drain.over(got, sender_done()) {
            break;
        }
    }
    rx.side(meter.window())
}

/// What [`drain`] measured.
pub(super) struct Drained {
    pub(super) received: u64,
    pub(super) cpu_seconds: f64,
    pub(super) calls: u64,
    pub(super) drops: u64,
    pub(super) mode: Option<String>,
}

/// How long the receiver lets the sender's last packets land before it
/// drains (they are processed on the sender's CPU).
const SETTLE: Duration = Duration::from_millis(3);

/// The draining receiver: per round, asks the sender (on `go`) for a burst,
/// waits until it is sent (`sent`), then empties the backlog without ever
/// waiting, timing only that.
pub(super) fn drain(
    kind: ReceiverKind,
    b: &End,
    at: SocketAddr,
    rounds: usize,
    ready: mpsc::Sender<Result<(), String>>,
    go: mpsc::Sender<bool>,
    sent: mpsc::Receiver<u64>,
) -> Result<Drained, String> {
    let mut rx = match open_and_report(kind, b, at, &ready) {
        Ok(rx) => rx,
        Err(e) => {
            let _ = go.send(false);
            return Err(e);
        }
    };
    let (mut received, mut cpu, mut calls) = (0u64, Duration::ZERO, 0u64);
    let result = (|| {
        for _ in 0..rounds {
            // Whatever came late from the last burst is not measured.
            while rx.recv(false)? > 0 {}
            go.send(true).map_err(|_| "the sender is gone")?;
            sent.recv().map_err(|_| "the sender is gone")?;
            let settle = Instant::now() + SETTLE;
            while Instant::now() < settle {
                std::thread::sleep(SETTLE);
            }
            let (n0, c0, k0) = (rx.total, xsk::thread_cpu_time(), rx.calls);
            while rx.recv(false)? > 0 {}
            cpu += xsk::thread_cpu_time() - c0;
            received += rx.total - n0;
            calls += rx.calls - k0;
        }
        Ok::<_, String>(())
    })();
    let _ = go.send(false);
    result?;
    Ok(Drained {
        received,
        cpu_seconds: cpu.as_secs_f64(),
        calls,
        drops: rx.drops(),
        mode: rx.mode(),
    })
}
