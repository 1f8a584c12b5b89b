//! The kernel's per-socket counters (getsockopt XDP_STATISTICS).

use std::io;
use std::os::fd::RawFd;

use super::sys;

/// `struct xdp_statistics`: counters since the socket was made. Older
/// kernels fill only a prefix; the rest reads 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpStatistics {
    /// Dropped for other reasons: no free frame (in copy mode an empty
    /// fill ring counts here too), a frame larger than a UMEM frame.
    pub rx_dropped: u64,
    /// Dropped because a fill-ring address was invalid.
    pub rx_invalid_descs: u64,
    /// TX descriptors the kernel rejected (address or length outside UMEM).
    pub tx_invalid_descs: u64,
    /// Dropped because the RX ring was full: we read too slowly.
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty: frames came back too
    /// slowly (the packet is dropped).
    pub rx_fill_ring_empty_descs: u64,
    /// Times the kernel found the TX ring empty when woken.
    pub tx_ring_empty_descs: u64,
}

const _: () = assert!(std::mem::size_of::<XdpStatistics>() == 48);

impl XdpStatistics {
    pub(crate) fn read(fd: RawFd) -> io::Result<XdpStatistics> {
        sys::getsockopt::<XdpStatistics>(fd, sys::SOL_XDP, sys::XDP_STATISTICS).map(|(s, _)| s)
    }

    /// Counter increases since `earlier` (saturating, should a socket be
    /// replaced in between).
    pub fn since(&self, earlier: &XdpStatistics) -> XdpStatistics {
        XdpStatistics {
            rx_dropped: self.rx_dropped.saturating_sub(earlier.rx_dropped),
            rx_invalid_descs: self
                .rx_invalid_descs
                .saturating_sub(earlier.rx_invalid_descs),
            tx_invalid_descs: self
                .tx_invalid_descs
                .saturating_sub(earlier.tx_invalid_descs),
            rx_ring_full: self.rx_ring_full.saturating_sub(earlier.rx_ring_full),
            rx_fill_ring_empty_descs: self
                .rx_fill_ring_empty_descs
                .saturating_sub(earlier.rx_fill_ring_empty_descs),
            tx_ring_empty_descs: self
                .tx_ring_empty_descs
                .saturating_sub(earlier.tx_ring_empty_descs),
        }
    }
}
