//! Memory maps: the UMEM (the frames the kernel and we share) and the
//! mappings the rings live in.

use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;

/// One mmap'd region, unmapped on drop.
pub struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mmap {
    /// Private anonymous memory, pre-faulted: the kernel pins the UMEM's
    /// pages at registration anyway, and faulting them up front keeps page
    /// faults off the first packets.
    pub fn anonymous(len: usize) -> io::Result<Mmap> {
        Self::map(
            -1,
            len,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            0,
        )
    }

    /// One of a socket's rings (`offset` is an `XDP_*PGOFF_*` constant),
    /// shared with the kernel.
    pub fn ring(fd: RawFd, len: usize, offset: libc::off_t) -> io::Result<Mmap> {
        Self::map(fd, len, libc::MAP_SHARED | libc::MAP_POPULATE, offset)
    }

    fn map(fd: RawFd, len: usize, flags: libc::c_int, offset: libc::off_t) -> io::Result<Mmap> {
        // SAFETY: a fresh mapping chosen by the kernel (no fixed address), so
        // it aliases nothing of ours.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mmap { ptr, len })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once; nothing borrowed from it
        // outlives `self` (borrows are tied to the owner's lifetime).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The UMEM: `frame_count` frames of `frame_size` bytes in one region.
/// Frames `[0, rx_frames)` circulate through the fill and RX rings, the
/// rest through the TX and completion rings, so the two directions never
/// compete for a frame.
pub struct Umem {
    map: Mmap,
    frame_size: u32,
}

impl Umem {
    pub fn new(frame_size: u32, frame_count: u32) -> io::Result<Umem> {
        let len = frame_size as usize * frame_count as usize;
        Ok(Umem {
            map: Mmap::anonymous(len)?,
            frame_size,
        })
    }

    pub fn addr(&self) -> u64 {
        self.map.as_ptr() as u64
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The start of the frame that holds UMEM offset `addr`: descriptors
    /// point past the headroom, the fill ring and our free list take frame
    /// starts (frame sizes are powers of two, so a mask does it).
    pub fn frame_start(&self, addr: u64) -> u64 {
        addr & !(u64::from(self.frame_size) - 1)
    }

    /// The bytes `[addr, addr + len)`, or `None` if they are not inside the
    /// UMEM (a descriptor we cannot trust is skipped, never read past).
    ///
    /// # Safety
    /// The range must not be written by the kernel while the slice lives:
    /// it belongs to a descriptor taken off the RX ring and not yet given
    /// back to the fill ring.
    pub unsafe fn bytes(&self, addr: u64, len: u32) -> Option<&[u8]> {
        let end = addr.checked_add(u64::from(len))?;
        if end > self.len() as u64 {
            return None;
        }
        // SAFETY: in bounds (checked above); not written meanwhile (caller).
        Some(unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().add(addr as usize), len as usize)
        })
    }

    /// The whole frame starting at `addr`, to write a packet into.
    ///
    /// # Safety
    /// The frame must be ours alone: taken from the TX free list, not in
    /// any ring the kernel reads.
    pub unsafe fn frame_mut(&mut self, addr: u64) -> Option<&mut [u8]> {
        let end = addr.checked_add(u64::from(self.frame_size))?;
        if end > self.len() as u64 {
            return None;
        }
        // SAFETY: in bounds; exclusive (caller, and `&mut self`).
        Some(unsafe {
            std::slice::from_raw_parts_mut(
                self.map.as_ptr().add(addr as usize),
                self.frame_size as usize,
            )
        })
    }
}
