//! Socket setup: bind with the buffer sizes bulk UDP needs, and say plainly
//! when the kernel caps them.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;
use tokio::net::UdpSocket;

/// Socket buffer sizes; `None` keeps the kernel's default.
#[derive(Debug, Clone, Default)]
pub struct SocketOptions {
    /// SO_RCVBUF in bytes: room for bursts while the receiver is busy
    /// (a daemon wants several MiB).
    pub recv_buffer: Option<usize>,
    /// SO_SNDBUF in bytes.
    pub send_buffer: Option<usize>,
    /// Take what the kernel grants when it caps a buffer below the size
    /// asked for, instead of failing (the caller can read the size back
    /// with [`buffer_sizes`] and warn).
    pub allow_smaller_buffers: bool,
}

#[derive(Debug, Error)]
pub enum UdpError {
    #[error("cannot bind UDP socket to {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error(
        "the kernel capped the {which} buffer at {got} bytes ({requested} asked for): \
         raise it with `sysctl -w {sysctl}={requested}` or ask for less"
    )]
    BufferCapped {
        which: &'static str,
        requested: usize,
        got: usize,
        sysctl: &'static str,
    },
    #[error("socket setup failed: {0}")]
    Io(#[from] io::Error),
}

/// Binds a nonblocking UDP socket registered with tokio, with the requested
/// buffer sizes. As root the sizes are forced past the sysctl caps; otherwise
/// a cap is an error that names the sysctl to raise (unless
/// `allow_smaller_buffers`).
pub fn bind(addr: SocketAddr, opts: &SocketOptions) -> Result<UdpSocket, UdpError> {
    Ok(UdpSocket::from_std(bind_std(addr, opts)?)?)
}

/// As [`bind`], as a standard socket: for QUIC, whose endpoint takes one.
pub fn bind_std(addr: SocketAddr, opts: &SocketOptions) -> Result<std::net::UdpSocket, UdpError> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    for (which, size) in [
        (Buffer::Recv, opts.recv_buffer),
        (Buffer::Send, opts.send_buffer),
    ] {
        let Some(n) = size else { continue };
        match set_buffer(&socket, which, n) {
            Err(UdpError::BufferCapped { .. }) if opts.allow_smaller_buffers => {}
            other => other?,
        }
    }
    socket
        .bind(&addr.into())
        .map_err(|source| UdpError::Bind { addr, source })?;
    Ok(socket.into())
}

/// The socket's (receive, send) buffer sizes as the kernel reports them
/// (Linux reports twice the size asked for: its bookkeeping is included).
pub fn buffer_sizes(socket: &UdpSocket) -> io::Result<(usize, usize)> {
    let s = socket2::SockRef::from(socket);
    Ok((s.recv_buffer_size()?, s.send_buffer_size()?))
}

#[derive(Clone, Copy)]
enum Buffer {
    Recv,
    Send,
}

fn set_buffer(socket: &Socket, which: Buffer, requested: usize) -> Result<(), UdpError> {
    let (name, sysctl) = match which {
        Buffer::Recv => ("receive", "net.core.rmem_max"),
        Buffer::Send => ("send", "net.core.wmem_max"),
    };
    let get = |s: &Socket| match which {
        Buffer::Recv => s.recv_buffer_size(),
        Buffer::Send => s.send_buffer_size(),
    };
    match which {
        Buffer::Recv => socket.set_recv_buffer_size(requested)?,
        Buffer::Send => socket.set_send_buffer_size(requested)?,
    }
    // Linux doubles the value asked for (bookkeeping overhead) and silently
    // caps it at the sysctl maximum: read it back to know.
    if get(socket)? >= requested {
        return Ok(());
    }
    force_buffer(socket, which, requested);
    let got = get(socket)?;
    if got >= requested {
        return Ok(());
    }
    Err(UdpError::BufferCapped {
        which: name,
        requested,
        got,
        sysctl,
    })
}

/// SO_RCVBUFFORCE / SO_SNDBUFFORCE ignore the sysctl caps with CAP_NET_ADMIN;
/// without it they fail, and the caller reports the cap.
fn force_buffer(socket: &Socket, which: Buffer, requested: usize) {
    use std::os::fd::AsRawFd;
    let opt = match which {
        Buffer::Recv => libc::SO_RCVBUFFORCE,
        Buffer::Send => libc::SO_SNDBUFFORCE,
    };
    let value = libc::c_int::try_from(requested).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid fd we own, a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
