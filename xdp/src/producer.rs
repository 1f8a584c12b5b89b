//! The producer's AF_XDP TX ring: a [`TxProvider`] for the client library
//! that writes whole Ethernet frames into an AF_XDP socket's TX ring instead
//! of going through the kernel's UDP stack. On a LAN the sender, not the
//! receiver, is what limits a producer; this is where bypass pays most.
//!
//! The producer keeps its UDP socket: the daemon's answers arrive there,
//! and whatever cannot go out through the ring (no free frame, next hop's
//! MAC not yet known) goes out through it, so the kernel resolves the
//! neighbour and nothing waits on the ring.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_transport::client::{DatagramTx, TxProvider};
use sluice_transport::udp::SendBatch;
use tracing::{debug, info};

use crate::frame;
use crate::neighbour;
use crate::xsk::{XskConfig, XskSocket};

/// Where a producer's TX ring lives.
#[derive(Debug, Clone)]
pub struct TxSetup {
    pub interface: String,
    pub queue: u32,
    pub socket: XskConfig,
}

impl TxSetup {
    /// A transmit-only socket on `interface`'s `queue`: 4096 frames of
    /// 2 KiB (8 MiB), all on the transmit side.
    pub fn new(interface: impl Into<String>, queue: u32) -> TxSetup {
        TxSetup {
            interface: interface.into(),
            queue,
            socket: XskConfig {
                frame_size: 2048,
                frame_count: 4096,
                rx_ring: 0,
                tx_ring: 4096,
                // The kernel wants a fill ring even with nothing to fill.
                fill_ring: 64,
                comp_ring: 4096,
                ..XskConfig::default()
            },
        }
    }
}

/// A provider whose links share one AF_XDP socket (a queue takes one
/// socket at a time; reconnects and several producers in one process all
/// use the same ring).
pub fn tx_provider(setup: TxSetup) -> io::Result<TxProvider> {
    let ifindex = crate::bpf::ifindex(&setup.interface).map_err(io::Error::other)?;
    let mac = neighbour::interface_mac(&setup.interface)?;
    let shared: Arc<Mutex<Option<Arc<Mutex<Ring>>>>> = Arc::default();
    let name = format!("af_xdp {} queue {}", setup.interface, setup.queue);
    Ok(TxProvider::new(name, move |_local, remote| {
        let mut slot = shared.lock().expect("not poisoned");
        let ring = match &*slot {
            Some(r) => r.clone(),
            None => {
                let socket = XskSocket::open(ifindex, setup.queue, &setup.socket)
                    .map_err(|e| io::Error::other(e.to_string()))?;
                info!(interface = %setup.interface, queue = setup.queue, bind = socket.bound_mode().as_str(), "producer AF_XDP TX ring open");
                let r = Arc::new(Mutex::new(Ring { socket }));
                *slot = Some(r.clone());
                r
            }
        };
        Ok(Box::new(XdpTx {
            ring,
            interface: setup.interface.clone(),
            src_mac: mac,
            remote,
            dst_mac: None,
            next_lookup: Instant::now(),
        }) as Box<dyn DatagramTx>)
    }))
}

struct Ring {
    socket: XskSocket,
}

struct XdpTx {
    ring: Arc<Mutex<Ring>>,
    interface: String,
    src_mac: [u8; 6],
    remote: SocketAddr,
    dst_mac: Option<[u8; 6]>,
    next_lookup: Instant,
}

/// How often an unknown next hop is looked up again.
const LOOKUP_EVERY: Duration = Duration::from_millis(100);

impl XdpTx {
    fn next_hop_mac(&mut self) -> Option<[u8; 6]> {
        if self.dst_mac.is_none() && Instant::now() >= self.next_lookup {
            self.next_lookup = Instant::now() + LOOKUP_EVERY;
            self.dst_mac = neighbour::next_hop_mac(&self.interface, self.remote.ip());
            match self.dst_mac {
                Some(mac) => debug!(remote = %self.remote, ?mac, "next hop known: TX ring in use"),
                None => debug!(remote = %self.remote, "next hop not known yet: kernel sends"),
            }
        }
        self.dst_mac
    }
}

impl DatagramTx for XdpTx {
    fn send(&mut self, local: SocketAddr, batch: &SendBatch) -> io::Result<usize> {
        let Some(dst_mac) = self.next_hop_mac() else {
            return Ok(0);
        };
        if matches!(local.ip(), IpAddr::V4(a) if a.is_unspecified())
            || matches!(local.ip(), IpAddr::V6(a) if a.is_unspecified())
        {
            // An unbound source cannot be written into a header.
            return Ok(0);
        }
        let src_mac = self.src_mac;
        let mut ring = self.ring.lock().expect("not poisoned");
        let mut sent = 0;
        for (to, datagram) in batch.iter() {
            let write = |buf: &mut [u8]| {
                frame::write_udp(buf, src_mac, dst_mac, local, to, datagram).unwrap_or(0)
            };
            let mut queued = ring.socket.tx_frame(write);
            if !queued {
                // Ring full: push out what is queued, take back finished
                // frames, and try once more before handing the rest over.
                ring.socket.flush_tx()?;
                ring.socket.reclaim();
                queued = ring.socket.tx_frame(write);
            }
            if !queued {
                break;
            }
            sent += 1;
        }
        ring.socket.flush_tx()?;
        ring.socket.reclaim();
        Ok(sent)
    }
}
