//! Batched datagram I/O with recvmmsg(2) and sendmmsg(2): one system call
//! moves many datagrams, which is most of the cost of UDP at high rates.
//!
//! On Linux the batches also use segmentation offload. Sending, each run of
//! same-sized datagrams to one destination (a producer's data, back to
//! back in the batch) goes as one message with a `UDP_SEGMENT` size
//! (GSO): the kernel cuts it into datagrams, after routing and the socket
//! layer were passed once. Receiving, a socket with [`enable_gro`] gets
//! consecutive datagrams of a flow coalesced in one buffer (GRO), with the
//! segment size in a control message; [`RecvBatch`] hands them out one by
//! one again. quinn-udp does the same for quinn, but sends one `sendmsg`
//! per destination run: a daemon answering many producers at once would
//! give up sendmmsg's batching, so this is written here, beside the
//! sendmmsg it extends.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Most datagrams one GSO message carries (the kernel's `UDP_MAX_SEGMENTS`
/// is 128; 64 keeps one message within 64 KiB for 1 KiB datagrams).
const GSO_MAX_SEGMENTS: usize = 64;

/// Most bytes of one GSO message: a UDP payload's limit over IPv4.
const GSO_MAX_BYTES: usize = 65_507;

/// A receive slot that can hold any GRO-coalesced buffer (and any single
/// datagram).
pub const GRO_SLOT: usize = 65_536;

/// Room for one `int` control message (a GRO or GSO segment size).
const CMSG_WORDS: usize = 4;

/// Set when the kernel refused a GSO send (a device without checksum
/// offload says EIO, a kernel before 4.18 EINVAL): every batch then sends
/// datagram by datagram. Process-wide, as the cause is.
static GSO_OFF: AtomicBool = AtomicBool::new(false);

/// Asks the kernel to coalesce received datagrams (UDP_GRO, Linux 5.0).
/// Returns whether it agreed; a [`RecvBatch`] receiving on the socket must
/// then have slots of [`GRO_SLOT`] bytes, or coalesced data is cut short.
pub fn enable_gro(socket: &UdpSocket) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: a valid fd, an int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// Whether sends still use GSO (see [`GSO_OFF`]).
pub fn gso_enabled() -> bool {
    !GSO_OFF.load(Relaxed)
}

/// Turns GSO on or off for every batch this process sends from now on:
/// for tests and benchmarks whose impairment (an nftables drop) acts on
/// whole GSO messages, where a wire would lose datagrams one by one.
pub fn set_gso(on: bool) {
    GSO_OFF.store(!on, Relaxed);
}

/// Where one received datagram is in a [`RecvBatch`].
#[derive(Clone, Copy)]
struct Datagram {
    start: usize,
    len: usize,
    slot: usize,
    truncated: bool,
}

/// Buffers for receiving up to `capacity` buffers in one call; with GRO,
/// each may hold many datagrams.
pub struct RecvBatch {
    slot: usize,
    buf: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    /// One control buffer per slot, u64 words for alignment.
    controls: Vec<[u64; CMSG_WORDS]>,
    datagrams: Vec<Datagram>,
}

impl RecvBatch {
    /// `capacity` buffers of up to `slot` bytes each. A datagram larger
    /// than `slot` is truncated by the kernel and reported as such (its length
    /// is then `slot + 1`, which no decoder accepts).
    pub fn new(capacity: usize, slot: usize) -> Self {
        RecvBatch {
            slot,
            buf: vec![0; capacity * slot],
            // SAFETY: sockaddr_storage is plain old data; all zeroes is valid.
            addrs: vec![unsafe { zeroed() }; capacity],
            controls: vec![[0; CMSG_WORDS]; capacity],
            datagrams: Vec::with_capacity(capacity),
        }
    }

    /// Receive buffers the last receive filled (fewer than its datagrams
    /// when the kernel coalesced them: GRO).
    pub fn buffers(&self) -> usize {
        self.datagrams.last().map_or(0, |d| d.slot + 1)
    }

    /// Datagrams the last receive took.
    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    /// Datagram `i` of the last receive and who sent it.
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        let d = self.datagrams[i];
        (
            &self.buf[d.start..d.start + d.len],
            to_socket_addr(&self.addrs[d.slot]),
        )
    }

    /// Whether datagram `i` was cut short because it exceeded the slot.
    pub fn truncated(&self, i: usize) -> bool {
        self.datagrams[i].truncated
    }

    /// Waits for at least one datagram, then takes as many as are queued (up
    /// to capacity buffers). Returns how many datagrams.
    pub async fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        loop {
            socket.readable().await?;
            match socket.try_io(Interest::READABLE, || self.recvmmsg(socket.as_raw_fd())) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn recvmmsg(&mut self, fd: i32) -> io::Result<usize> {
        let n = self.addrs.len();
        let mut iovs: Vec<libc::iovec> = self
            .buf
            .chunks_mut(self.slot)
            .map(|c| libc::iovec {
                iov_base: c.as_mut_ptr().cast(),
                iov_len: c.len(),
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = (0..n)
            .map(|i| {
                // SAFETY: plain old data; the pointers set below outlive the call.
                let mut h: libc::mmsghdr = unsafe { zeroed() };
                h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_hdr.msg_iov = &mut iovs[i];
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_control = self.controls[i].as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = size_of::<[u64; CMSG_WORDS]>() as _;
                h
            })
            .collect();
        // SAFETY: every header points at a live iovec, buffer slot, address
        // slot and control buffer, all sized as declared; the kernel writes
        // only within them.
        let got = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        self.datagrams.clear();
        for (i, h) in hdrs.iter().take(got as usize).enumerate() {
            let start = i * self.slot;
            // With MSG_TRUNC the length is the datagram's real length.
            if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                self.datagrams.push(Datagram {
                    start,
                    len: self.slot,
                    slot: i,
                    truncated: true,
                });
                continue;
            }
            let len = h.msg_len as usize;
            // A coalesced buffer: datagrams of `stride` bytes, the last
            // one possibly shorter.
            let stride = gro_segment_size(&h.msg_hdr).filter(|&s| s > 0 && s < len);
            let stride = stride.unwrap_or(len.max(1));
            let mut at = 0;
            loop {
                let take = stride.min(len - at);
                self.datagrams.push(Datagram {
                    start: start + at,
                    len: take,
                    slot: i,
                    truncated: false,
                });
                at += take;
                if at >= len {
                    break;
                }
            }
        }
        Ok(self.datagrams.len())
    }
}

/// The segment size of a GRO-coalesced receive, from its control message.
fn gro_segment_size(msg: &libc::msghdr) -> Option<usize> {
    // SAFETY: `msg` was filled in by recvmmsg: its control pointer and
    // length describe the control buffer it wrote; CMSG_* walk within it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let v: libc::c_int = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return usize::try_from(v).ok();
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    None
}

/// Datagrams queued for one sendmmsg call.
#[derive(Default)]
pub struct SendBatch {
    buf: Vec<u8>,
    entries: Vec<(usize, usize, SocketAddr)>,
}

/// One message of a sendmmsg call: `count` queued datagrams from entry
/// `first`, back to back in the buffer, sent as one GSO message when more
/// than one.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Run {
    first: usize,
    count: usize,
}

impl SendBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, to: SocketAddr, datagram: &[u8]) {
        self.entries.push((self.buf.len(), datagram.len(), to));
        self.buf.extend_from_slice(datagram);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The queued datagrams and their destinations, in order.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.entries
            .iter()
            .map(|&(start, len, to)| (to, &self.buf[start..start + len]))
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.buf.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sends every queued datagram, waiting while the socket buffer is full,
    /// and clears the batch. A datagram the kernel refuses outright (no route,
    /// too large) is dropped and counted in the return value: UDP promises
    /// nothing, and the protocol above recovers.
    pub async fn send(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let mut done = 0;
        let mut refused = 0;
        while done < self.entries.len() {
            socket.writable().await?;
            let gso = gso_enabled();
            let runs = self.runs(done, gso);
            match socket.try_io(Interest::WRITABLE, || {
                self.sendmmsg(socket.as_raw_fd(), &runs)
            }) {
                Ok(n) => done += runs[..n].iter().map(|r| r.count).sum::<usize>(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The first message was refused: with GSO, maybe for GSO
                // itself; it is tried again without.
                Err(e) if gso && runs[0].count > 1 && gso_refused(&e) => {
                    GSO_OFF.store(true, Relaxed);
                    tracing::info!(error = %e, "the kernel refused UDP segmentation offload (GSO): sending datagram by datagram");
                }
                Err(_) => {
                    refused += runs[0].count;
                    done += runs[0].count;
                }
            }
        }
        self.clear();
        Ok(refused)
    }

    /// The messages for the datagrams from entry `from` on: with `gso`,
    /// each run of datagrams to one destination that have one size (the
    /// last may be shorter) within the GSO bounds; else one each.
    fn runs(&self, from: usize, gso: bool) -> Vec<Run> {
        let mut runs = Vec::new();
        let mut i = from;
        while i < self.entries.len() {
            let (_, size, to) = self.entries[i];
            let mut count = 1;
            let mut bytes = size;
            if gso && size > 0 {
                while let Some(&(_, len, dest)) = self.entries.get(i + count) {
                    if dest != to
                        || len > size
                        || len == 0
                        || count == GSO_MAX_SEGMENTS
                        || bytes + len > GSO_MAX_BYTES
                    {
                        break;
                    }
                    count += 1;
                    bytes += len;
                    // A shorter datagram ends a run.
                    if len < size {
                        break;
                    }
                }
            }
            runs.push(Run { first: i, count });
            i += count;
        }
        runs
    }

    /// One sendmmsg of `runs`; returns how many of them were sent.
    fn sendmmsg(&mut self, fd: i32, runs: &[Run]) -> io::Result<usize> {
        let mut addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)> = runs
            .iter()
            .map(|r| from_socket_addr(self.entries[r.first].2))
            .collect();
        let mut iovs: Vec<libc::iovec> = runs
            .iter()
            .map(|r| {
                let (start, _, _) = self.entries[r.first];
                let (last, len, _) = self.entries[r.first + r.count - 1];
                libc::iovec {
                    iov_base: self.buf[start..].as_mut_ptr().cast(),
                    iov_len: last + len - start,
                }
            })
            .collect();
        let mut controls = vec![[0u64; CMSG_WORDS]; runs.len()];
        let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(runs.len());
        for (i, r) in runs.iter().enumerate() {
            // SAFETY: plain old data; the pointers set below outlive the call.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = (&mut addrs[i].0 as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = addrs[i].1;
            h.msg_hdr.msg_iov = &mut iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            if r.count > 1 {
                let segment = self.entries[r.first].1 as u16;
                // SAFETY: the control buffer is large and aligned enough
                // for one cmsghdr with a u16; CMSG_* stay within it.
                unsafe {
                    h.msg_hdr.msg_control = controls[i].as_mut_ptr().cast();
                    h.msg_hdr.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as _;
                    let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment);
                }
            }
            hdrs.push(h);
        }
        // SAFETY: every header points at a live iovec, address and control
        // buffer of the declared sizes; the kernel only reads them.
        let sent = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), hdrs.len() as libc::c_uint, 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }
}

/// Whether a send's error says the kernel or the device cannot do GSO.
fn gso_refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL))
}

fn to_socket_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn from_socket_addr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: plain old data; all zeroes is valid.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_group_same_sized_datagrams_to_one_destination() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut batch = SendBatch::new();
        for (to, len) in [(a, 100), (a, 100), (a, 40), (a, 100), (b, 100), (b, 120)] {
            batch.push(to, &vec![7; len]);
        }
        let run = |first, count| Run { first, count };
        // The shorter one ends a run; another destination or a larger
        // datagram starts one.
        assert_eq!(
            batch.runs(0, true),
            [run(0, 3), run(3, 1), run(4, 1), run(5, 1)]
        );
        assert_eq!(batch.runs(4, true), [run(4, 1), run(5, 1)]);
        assert_eq!(batch.runs(0, false).len(), 6);
        // Bounded in count and in bytes.
        let mut many = SendBatch::new();
        for _ in 0..200 {
            many.push(a, &[1; 1000]);
        }
        let runs = many.runs(0, true);
        assert!(runs
            .iter()
            .all(|r| r.count <= GSO_MAX_SEGMENTS && r.count * 1000 <= GSO_MAX_BYTES));
        assert_eq!(runs.iter().map(|r| r.count).sum::<usize>(), 200);
    }

    #[test]
    fn socket_addresses_convert_both_ways() {
        for a in ["127.0.0.1:7401", "[::1]:9", "[fe80::1%3]:1000"] {
            let addr: SocketAddr = a.parse().unwrap();
            let (ss, _) = from_socket_addr(addr);
            assert_eq!(to_socket_addr(&ss), Some(addr));
        }
    }
}
