//! Giving freed memory back to the system. glibc's allocator keeps what
//! threads free in their arenas for reuse; after a burst (consumers that
//! held their whole credit, then left; pages of records) the daemon's
//! resident memory would stay at its peak. Two things bring it back:
//! - blocks of 1 MiB and more are always mapped apart and unmapped when
//!   freed (glibc otherwise raises that threshold as large blocks are
//!   freed, and the next ones then stay in the arenas);
//! - a thread asks the allocator every few seconds to return the free
//!   pages of every arena (`malloc_trim`).

use std::time::Duration;

/// How often free memory is given back.
pub const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Sets the allocator up to give large blocks back when freed, and starts
/// the thread that gives the arenas' free pages back (glibc only;
/// elsewhere the allocator does it by itself). Call first thing in `main`.
pub fn start_trimmer() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets the allocator's own parameter; it is
        // called before the other threads start.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
        let _ = std::thread::Builder::new()
            .name("mem-trim".into())
            .spawn(|| loop {
                std::thread::sleep(TRIM_EVERY);
                // SAFETY: malloc_trim only walks the allocator's own arenas.
                unsafe { libc::malloc_trim(0) };
            });
    }
}
