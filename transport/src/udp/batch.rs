//! Batched datagram I/O with recvmmsg(2) and sendmmsg(2): one system call
//! moves many datagrams, which is most of the cost of UDP at high rates.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Buffers for receiving up to `capacity` datagrams in one call.
pub struct RecvBatch {
    slot: usize,
    buf: Vec<u8>,
    lens: Vec<usize>,
    addrs: Vec<libc::sockaddr_storage>,
    count: usize,
}

impl RecvBatch {
    /// `capacity` datagrams of up to `slot` bytes each. A datagram larger
    /// than `slot` is truncated by the kernel and reported as such (its length
    /// is then `slot + 1`, which no decoder accepts).
    pub fn new(capacity: usize, slot: usize) -> Self {
        RecvBatch {
            slot,
            buf: vec![0; capacity * slot],
            lens: vec![0; capacity],
            // SAFETY: sockaddr_storage is plain old data; all zeroes is valid.
            addrs: vec![unsafe { zeroed() }; capacity],
            count: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Datagram `i` of the last receive and who sent it.
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        let start = i * self.slot;
        let len = self.lens[i].min(self.slot);
        (
            &self.buf[start..start + len],
            to_socket_addr(&self.addrs[i]),
        )
    }

    /// Whether datagram `i` was cut short because it exceeded the slot.
    pub fn truncated(&self, i: usize) -> bool {
        self.lens[i] > self.slot
    }

    /// Waits for at least one datagram, then takes as many as are queued (up
    /// to capacity). Returns how many.
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
        let n = self.lens.len();
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
                h
            })
            .collect();
        // SAFETY: every header points at a live iovec, buffer slot and address
        // slot, all sized as declared; the kernel writes only within them.
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
        self.count = got as usize;
        for (i, h) in hdrs.iter().take(self.count).enumerate() {
            // With MSG_TRUNC the length is the datagram's real length.
            self.lens[i] = if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                self.slot + 1
            } else {
                h.msg_len as usize
            };
        }
        Ok(self.count)
    }
}

/// Datagrams queued for one sendmmsg call.
#[derive(Default)]
pub struct SendBatch {
    buf: Vec<u8>,
    entries: Vec<(usize, usize, SocketAddr)>,
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
            match socket.try_io(Interest::WRITABLE, || {
                self.sendmmsg(socket.as_raw_fd(), done)
            }) {
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    refused += 1;
                    done += 1;
                }
            }
        }
        self.clear();
        Ok(refused)
    }

    fn sendmmsg(&mut self, fd: i32, from: usize) -> io::Result<usize> {
        let pending = &self.entries[from..];
        let mut addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)> = pending
            .iter()
            .map(|&(_, _, to)| from_socket_addr(to))
            .collect();
        let mut iovs: Vec<libc::iovec> = pending
            .iter()
            .map(|&(start, len, _)| libc::iovec {
                iov_base: self.buf[start..].as_mut_ptr().cast(),
                iov_len: len,
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = (0..pending.len())
            .map(|i| {
                // SAFETY: plain old data; the pointers set below outlive the call.
                let mut h: libc::mmsghdr = unsafe { zeroed() };
                h.msg_hdr.msg_name = (&mut addrs[i].0 as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = addrs[i].1;
                h.msg_hdr.msg_iov = &mut iovs[i];
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        // SAFETY: every header points at a live iovec and address of the
        // declared sizes; the kernel only reads them.
        let sent = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), hdrs.len() as libc::c_uint, 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }
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
    fn socket_addresses_convert_both_ways() {
        for a in ["127.0.0.1:7401", "[::1]:9", "[fe80::1%3]:1000"] {
            let addr: SocketAddr = a.parse().unwrap();
            let (ss, _) = from_socket_addr(addr);
            assert_eq!(to_socket_addr(&ss), Some(addr));
        }
    }
}
