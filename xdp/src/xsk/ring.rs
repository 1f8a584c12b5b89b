//! The four AF_XDP rings: single-producer/single-consumer queues in memory
//! shared with the kernel. We produce on fill and TX, consume on RX and
//! completion.
//!
//! Indices are free-running u32s (wrapping); a slot is `index & mask`. Each
//! side keeps cached copies of both indices so that the shared cache lines
//! are touched once per batch, not once per packet. Ordering pairs with the
//! kernel's (net/xdp/xsk_queue.h): we load the other side's index with
//! Acquire (so the slots it published, or freed, are visible) and store
//! ours with Release (so our slot writes, or reads, happen before the kernel
//! sees the new index).

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};

use super::sys::{XdpRingOffset, XDP_RING_NEED_WAKEUP};
use super::umem::Mmap;

/// Pointers into a ring's mapping, and the mapping itself when we own it.
struct Shared<T> {
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    slots: *mut T,
    mask: u32,
    size: u32,
    // Last: pointers above point into it; kept alive as long as they are.
    _map: Option<Mmap>,
    _slot: PhantomData<T>,
}

impl<T: Copy> Shared<T> {
    /// # Safety
    /// `base` points at a ring laid out per `off` with `size` slots of `T`
    /// (`size` a power of two), valid as long as `map` (or, when `map` is
    /// `None`, as long as the caller keeps it).
    unsafe fn new(base: *mut u8, off: &XdpRingOffset, size: u32, map: Option<Mmap>) -> Self {
        debug_assert!(size.is_power_of_two());
        // SAFETY: offsets are inside the mapping (caller); the kernel aligns
        // the index words to 4 bytes and the slots to their type.
        unsafe {
            Shared {
                producer: base.add(off.producer as usize).cast(),
                consumer: base.add(off.consumer as usize).cast(),
                flags: base.add(off.flags as usize).cast(),
                slots: base.add(off.desc as usize).cast(),
                mask: size - 1,
                size,
                _map: map,
                _slot: PhantomData,
            }
        }
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: valid for our lifetime (see `new`).
        unsafe { &*self.producer }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as above.
        unsafe { &*self.consumer }
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: as above. Relaxed: a hint; callers that must not miss it
        // fence first.
        unsafe { (*self.flags).load(Ordering::Relaxed) & XDP_RING_NEED_WAKEUP != 0 }
    }

    fn slot(&self, index: u32) -> *mut T {
        // SAFETY: masked into the ring.
        unsafe { self.slots.add((index & self.mask) as usize) }
    }
}

/// Our side of a ring we fill: fill (u64 frame addresses) and TX
/// (descriptors).
pub struct Producer<T> {
    ring: Shared<T>,
    /// Next slot we write.
    cached_prod: u32,
    /// The kernel's consumer index plus the ring size: the first slot we
    /// may not write yet.
    cached_end: u32,
}

impl<T: Copy> Producer<T> {
    /// # Safety
    /// As for the ring layout: `map` holds a ring laid out per `off` with
    /// `size` slots of `T`.
    pub unsafe fn new(map: Mmap, off: &XdpRingOffset, size: u32) -> Self {
        // SAFETY: caller.
        unsafe { Self::from_raw(map.as_ptr(), off, size, Some(map)) }
    }

    /// # Safety
    /// See [`Shared::new`].
    unsafe fn from_raw(base: *mut u8, off: &XdpRingOffset, size: u32, map: Option<Mmap>) -> Self {
        // SAFETY: caller.
        let ring = unsafe { Shared::new(base, off, size, map) };
        let cached_prod = ring.producer().load(Ordering::Relaxed);
        let cached_end = ring.consumer().load(Ordering::Acquire).wrapping_add(size);
        Producer {
            ring,
            cached_prod,
            cached_end,
        }
    }

    pub fn size(&self) -> u32 {
        self.ring.size
    }

    /// How many slots we may write now; looks at the kernel's index only
    /// when the cached view has fewer than `want`.
    pub fn free(&mut self, want: u32) -> u32 {
        let free = self.cached_end.wrapping_sub(self.cached_prod);
        if free >= want {
            return free;
        }
        self.cached_end = self
            .ring
            .consumer()
            .load(Ordering::Acquire)
            .wrapping_add(self.ring.size);
        self.cached_end.wrapping_sub(self.cached_prod)
    }

    /// Writes `value` into the next slot, unpublished until [`submit`];
    /// `false` if the ring is full.
    ///
    /// [`submit`]: Producer::submit
    pub fn push(&mut self, value: T) -> bool {
        if self.free(1) == 0 {
            return false;
        }
        // SAFETY: a slot the kernel has consumed (free > 0) and will not
        // read until we publish it.
        unsafe { self.ring.slot(self.cached_prod).write(value) };
        self.cached_prod = self.cached_prod.wrapping_add(1);
        true
    }

    /// Publishes every slot pushed so far.
    pub fn submit(&mut self) {
        self.ring
            .producer()
            .store(self.cached_prod, Ordering::Release);
    }

    /// Slots pushed but not yet published.
    pub fn unsubmitted(&self) -> u32 {
        self.cached_prod
            .wrapping_sub(self.ring.producer().load(Ordering::Relaxed))
    }

    /// Slots published that the kernel has not consumed yet.
    pub fn outstanding(&self) -> u32 {
        self.ring
            .producer()
            .load(Ordering::Relaxed)
            .wrapping_sub(self.ring.consumer().load(Ordering::Acquire))
    }

    pub fn needs_wakeup(&self) -> bool {
        self.ring.needs_wakeup()
    }
}

/// Our side of a ring the kernel fills: RX (descriptors) and completion
/// (u64 frame addresses).
pub struct Consumer<T> {
    ring: Shared<T>,
    /// Next slot we read.
    cached_cons: u32,
    /// The kernel's producer index when we last looked.
    cached_prod: u32,
}

impl<T: Copy> Consumer<T> {
    /// # Safety
    /// As for [`Producer::new`].
    pub unsafe fn new(map: Mmap, off: &XdpRingOffset, size: u32) -> Self {
        // SAFETY: caller.
        unsafe { Self::from_raw(map.as_ptr(), off, size, Some(map)) }
    }

    /// # Safety
    /// See [`Shared::new`].
    unsafe fn from_raw(base: *mut u8, off: &XdpRingOffset, size: u32, map: Option<Mmap>) -> Self {
        // SAFETY: caller.
        let ring = unsafe { Shared::new(base, off, size, map) };
        let cached_cons = ring.consumer().load(Ordering::Relaxed);
        let cached_prod = ring.producer().load(Ordering::Acquire);
        Consumer {
            ring,
            cached_cons,
            cached_prod,
        }
    }

    /// How many filled slots we may read, at most `max`; looks at the
    /// kernel's index only when the cached view has fewer than `max`.
    pub fn available(&mut self, max: u32) -> u32 {
        let mut ready = self.cached_prod.wrapping_sub(self.cached_cons);
        if ready < max {
            self.cached_prod = self.ring.producer().load(Ordering::Acquire);
            ready = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        ready.min(max)
    }

    /// The `i`-th unread slot; `i` below what [`available`] returned.
    ///
    /// [`available`]: Consumer::available
    pub fn get(&self, i: u32) -> T {
        debug_assert!(i < self.cached_prod.wrapping_sub(self.cached_cons));
        // SAFETY: a slot the kernel published (Acquire in `available`) and
        // will not overwrite until we release it.
        unsafe { self.ring.slot(self.cached_cons.wrapping_add(i)).read() }
    }

    /// Gives `n` read slots back to the kernel.
    pub fn release(&mut self, n: u32) {
        self.cached_cons = self.cached_cons.wrapping_add(n);
        self.ring
            .consumer()
            .store(self.cached_cons, Ordering::Release);
    }

    /// How many published slots we have not read (for a waiter that holds
    /// only `&self`).
    pub fn pending(&self) -> u32 {
        self.ring
            .producer()
            .load(Ordering::Acquire)
            .wrapping_sub(self.cached_cons)
    }

    /// Whether the kernel has published slots we have not read (for a
    /// waiter that holds only `&self`).
    pub fn has_entries(&self) -> bool {
        self.ring.producer().load(Ordering::Acquire) != self.cached_cons
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A producer and a consumer over one anonymous mapping: what we
    /// produce, a "kernel" consumer sees, in order, across wrap-around.
    fn pair(size: u32) -> (Producer<u64>, Consumer<u64>) {
        let off = XdpRingOffset {
            producer: 0,
            consumer: 64,
            flags: 128,
            desc: 192,
        };
        let map = Mmap::anonymous(192 + size as usize * 8).unwrap();
        let base = map.as_ptr();
        // SAFETY: both views point into `map`, which the producer owns and
        // which outlives the consumer in each test (dropped in order).
        unsafe {
            let consumer = Consumer::from_raw(base, &off, size, None);
            (Producer::from_raw(base, &off, size, Some(map)), consumer)
        }
    }

    #[test]
    fn fifo_across_wraparound() {
        let (mut p, mut c) = pair(8);
        let mut next_in = 0u64;
        let mut next_out = 0u64;
        for round in 0..100u32 {
            let n = round % 9;
            let published = next_in;
            let mut pushed = 0;
            while pushed < n && p.push(next_in) {
                next_in += 1;
                pushed += 1;
            }
            assert_eq!(
                u64::from(c.available(u32::MAX)),
                published - next_out,
                "unpublished slots are invisible"
            );
            p.submit();
            let ready = c.available(u32::MAX);
            assert_eq!(u64::from(ready), next_in - next_out);
            let take = ready.min(round % 5 + 1);
            for i in 0..take {
                assert_eq!(c.get(i), next_out);
                next_out += 1;
            }
            c.release(take);
        }
        assert!(next_out > 100);
    }

    #[test]
    fn full_ring_refuses_until_consumed() {
        let (mut p, mut c) = pair(4);
        for i in 0..4 {
            assert!(p.push(i));
        }
        assert!(!p.push(99));
        p.submit();
        assert_eq!(p.outstanding(), 4);
        assert_eq!(c.available(2), 2);
        c.release(2);
        assert_eq!(p.free(1), 2);
        assert!(p.push(4) && p.push(5) && !p.push(6));
        assert_eq!(p.unsubmitted(), 2);
    }

    #[test]
    fn indices_wrap_at_u32() {
        let (mut p, mut c) = pair(4);
        // Start both sides just below the u32 wrap.
        let start = u32::MAX - 1;
        p.ring.producer().store(start, Ordering::Relaxed);
        p.ring.consumer().store(start, Ordering::Relaxed);
        p.cached_prod = start;
        p.cached_end = start.wrapping_add(4);
        c.cached_cons = start;
        c.cached_prod = start;
        for i in 0..4 {
            assert!(p.push(i));
        }
        p.submit();
        assert_eq!(c.available(10), 4);
        assert_eq!((0..4).map(|i| c.get(i)).collect::<Vec<_>>(), [0, 1, 2, 3]);
        c.release(4);
        assert_eq!(p.free(4), 4);
    }
}
