//! The measured window as a sender or receiver thread sees it, and how a
//! receiver knows it is done.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use sluice_xdp::xsk;

use super::{DRAIN_IDLE, DRAIN_MAX};
use crate::xdp::secs;

/// What a thread saw when the window opened or closed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Snap {
    at: Instant,
    packets: u64,
    /// Calls that moved packets (recvmmsg/sendmmsg returning some, AF_XDP
    /// passes with frames).
    calls: u64,
    cpu: Duration,
    /// Voluntary context switches: times the thread slept.
    sleeps: u64,
}

/// Takes the window's snapshots in the measuring thread.
pub(super) struct Meter {
    start: Instant,
    end: Instant,
    first: Option<Snap>,
    last: Option<Snap>,
}

impl Meter {
    pub(super) fn new(w: Window) -> Meter {
        Meter {
            start: w.start,
            end: w.end,
            first: None,
            last: None,
        }
    }

    /// After each call (or wait): `packets` and `calls` so far.
    pub(super) fn tick(&mut self, packets: u64, calls: u64) {
        if self.last.is_some() {
            return;
        }
        let now = Instant::now();
        if now < self.start {
            return;
        }
        let snap = || Snap {
            at: now,
            packets,
            calls,
            cpu: xsk::thread_cpu_time(),
            sleeps: thread_voluntary_switches(),
        };
        if self.first.is_none() {
            self.first = Some(snap());
        } else if now >= self.end {
            self.last = Some(snap());
        }
    }

    pub(super) fn window(&self) -> Option<(Snap, Snap)> {
        self.first.zip(self.last)
    }
}

/// The calling thread's voluntary context switches (getrusage
/// RUSAGE_THREAD): how often it went to sleep.
fn thread_voluntary_switches() -> u64 {
    // SAFETY: getrusage fills the struct we hand it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return 0;
    }
    ru.ru_nvcsw as u64
}

/// The measured window and the end of sending.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub(super) start: Instant,
    pub(super) end: Instant,
}

/// What one side reports.
pub(super) struct Side {
    /// The whole run.
    pub(super) total: u64,
    pub(super) bytes: u64,
    pub(super) window: (Snap, Snap),
    pub(super) drops: u64,
    pub(super) invalid: u64,
    pub(super) mode: Option<String>,
}

/// One side's window.
pub(super) struct InWindow {
    pub(super) seconds: f64,
    pub(super) packets: u64,
    pub(super) cpu_seconds: f64,
    pub(super) calls: u64,
    pub(super) sleeps: u64,
}

impl Side {
    pub(super) fn in_window(&self) -> InWindow {
        let (a, b) = self.window;
        InWindow {
            seconds: secs(b.at - a.at),
            packets: b.packets - a.packets,
            cpu_seconds: secs(b.cpu) - secs(a.cpu),
            calls: b.calls - a.calls,
            sleeps: b.sleeps.saturating_sub(a.sleeps),
        }
    }
}

/// Waits for the window from the coordinator (`None`: the run is off).
pub(super) fn await_window(rx: &mpsc::Receiver<Option<Window>>) -> Result<Window, String> {
    match rx.recv() {
        Ok(Some(w)) => Ok(w),
        _ => Err("the run was called off".into()),
    }
}

/// Receives until the sender is done and the link is quiet.
pub(super) struct Drain {
    last_packet: Instant,
    since_done: Option<Instant>,
}

impl Drain {
    pub(super) fn new() -> Drain {
        Drain {
            last_packet: Instant::now(),
            since_done: None,
        }
    }

    /// After each batch: whether to stop.
    pub(super) fn over(&mut self, got: usize, sender_done: bool) -> bool {
        let now = Instant::now();
        if got > 0 {
            self.last_packet = now;
        }
        if !sender_done {
            return false;
        }
        let since = *self.since_done.get_or_insert(now);
        now - self.last_packet >= DRAIN_IDLE || now - since >= DRAIN_MAX
    }
}
