//! The AF_XDP user-space ABI (include/uapi/linux/if_xdp.h, kernel 6.18) and
//! the few syscalls around it. `libc` has the socket constants but not these
//! structs, so they are spelled out here, with size checks against the uapi.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::RawFd;

pub const AF_XDP: libc::c_int = 44;
pub const SOL_XDP: libc::c_int = 283;

// Socket options at SOL_XDP.
pub const XDP_MMAP_OFFSETS: libc::c_int = 1;
pub const XDP_RX_RING: libc::c_int = 2;
pub const XDP_TX_RING: libc::c_int = 3;
pub const XDP_UMEM_REG: libc::c_int = 4;
pub const XDP_UMEM_FILL_RING: libc::c_int = 5;
pub const XDP_UMEM_COMPLETION_RING: libc::c_int = 6;
pub const XDP_STATISTICS: libc::c_int = 7;
pub const XDP_OPTIONS: libc::c_int = 8;

// sockaddr_xdp.sxdp_flags.
pub const XDP_COPY: u16 = 1 << 1;
pub const XDP_ZEROCOPY: u16 = 1 << 2;
pub const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;

/// xdp_options.flags: the socket is bound in zero-copy mode.
pub const XDP_OPTIONS_ZEROCOPY: u32 = 1 << 0;

/// Ring `flags` word: the kernel wants a syscall before it looks at the ring
/// again.
pub const XDP_RING_NEED_WAKEUP: u32 = 1 << 0;

// mmap offsets ("page offsets", in bytes) selecting which ring to map.
pub const XDP_PGOFF_RX_RING: libc::off_t = 0;
pub const XDP_PGOFF_TX_RING: libc::off_t = 0x8000_0000;
pub const XDP_UMEM_PGOFF_FILL_RING: libc::off_t = 0x1_0000_0000;
pub const XDP_UMEM_PGOFF_COMPLETION_RING: libc::off_t = 0x1_8000_0000;

// Busy polling, at SOL_SOCKET (asm-generic/socket.h).
pub const SO_BUSY_POLL: libc::c_int = 46;
pub const SO_PREFER_BUSY_POLL: libc::c_int = 69;
pub const SO_BUSY_POLL_BUDGET: libc::c_int = 70;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockaddrXdp {
    pub family: u16,
    pub flags: u16,
    pub ifindex: u32,
    pub queue_id: u32,
    pub shared_umem_fd: u32,
}

/// The current (v3) registration struct. Its size (32, no tail padding)
/// tells the kernel which fields we know; `flags` and `tx_metadata_len`
/// stay zero (aligned chunks, no TX metadata).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct XdpUmemReg {
    pub addr: u64,
    pub len: u64,
    pub chunk_size: u32,
    pub headroom: u32,
    pub flags: u32,
    pub tx_metadata_len: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct XdpRingOffset {
    pub producer: u64,
    pub consumer: u64,
    pub desc: u64,
    pub flags: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct XdpMmapOffsets {
    pub rx: XdpRingOffset,
    pub tx: XdpRingOffset,
    pub fr: XdpRingOffset,
    pub cr: XdpRingOffset,
}

/// An RX or TX descriptor: a UMEM address (the frame's data, headroom
/// included in the offset) and a length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpDesc {
    pub addr: u64,
    pub len: u32,
    pub options: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct XdpOptions {
    pub flags: u32,
}

const _: () = {
    assert!(size_of::<SockaddrXdp>() == 16);
    assert!(size_of::<XdpUmemReg>() == 32);
    assert!(size_of::<XdpRingOffset>() == 32);
    assert!(size_of::<XdpMmapOffsets>() == 128);
    assert!(size_of::<XdpDesc>() == 16);
};

/// `-1` → the thread's errno.
pub fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// setsockopt(2) with a plain-old-data value.
pub fn setsockopt<T: Copy>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is a live `T` and we pass its exact size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// getsockopt(2) into a zeroed `T`; returns it and how many bytes the kernel
/// filled (older kernels fill shorter versions of some structs).
pub fn getsockopt<T: Copy>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<(T, usize)> {
    let mut value = MaybeUninit::<T>::zeroed();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `value`.
    cvt(unsafe { libc::getsockopt(fd, level, name, value.as_mut_ptr().cast(), &mut len) })?;
    // SAFETY: zeroed and then (partly) written: every T used here is
    // plain integers, valid for any bytes.
    Ok((unsafe { value.assume_init() }, len as usize))
}

/// A zero-length, non-blocking sendto: in copy mode this is what makes the
/// kernel transmit the TX ring; in zero-copy mode it wakes the driver.
pub fn kick_tx(fd: RawFd) -> io::Result<()> {
    // SAFETY: no buffer is read (length 0, null pointers allowed).
    let rc = unsafe {
        libc::sendto(
            fd,
            std::ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null(),
            0,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A zero-length, non-blocking recvfrom: wakes the driver to refill from
/// the fill ring, or drives NAPI in busy-poll mode.
pub fn kick_rx(fd: RawFd) -> io::Result<()> {
    // SAFETY: no buffer is written (length 0, null pointers allowed).
    let rc = unsafe {
        libc::recvfrom(
            fd,
            std::ptr::null_mut(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
