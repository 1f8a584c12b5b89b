//! Which daemon a producer talks to next, and when it gives up: a sans-IO
//! state machine over the ordered list of daemon addresses.
//!
//! - A session that was open and is lost (the daemon went silent, closed
//!   it, or stopped acking) moves the producer to the next address at once.
//! - A failed attempt to open one (no QUIC handshake, no WELCOME) moves it
//!   to the next address too; after a whole round of the list failed in a
//!   row it waits first, 50 ms doubling up to 2 s, so a producer whose
//!   daemons are all down does not spin.
//! - It gives up once the failures in a row (lost sessions and failed
//!   attempts alike) make more than `max_rounds` rounds of the list (one
//!   address: more than `max_rounds` failures, the bound a producer had
//!   before failover existed), or once no session has been open for
//!   `deadline`, whichever comes first.
//!
//! With one address every move is back to that address: the behaviour of a
//! producer with a single daemon is what it was (reconnect at once after a
//! lost session, back off between failed attempts).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// First wait after a whole round failed.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between two rounds.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What went wrong with the current daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// A session was open and ended (or stalled): the daemon was reachable
    /// a moment ago.
    SessionLost,
    /// Opening a link or a session failed.
    ConnectFailed,
}

/// What to do after a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Try `addr` (the index `index` of the list) after `delay`.
    Try {
        addr: SocketAddr,
        index: usize,
        delay: Duration,
    },
    /// Every daemon failed for too long: fail what is pending.
    GiveUp {
        /// Whole rounds of the list that failed in a row.
        rounds: u32,
        /// How long no session has been open.
        down_for: Duration,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Failover {
    addrs: Vec<SocketAddr>,
    current: usize,
    /// Consecutive failures since the last open session, and how many of
    /// them make up the current (incomplete) round.
    failures: u32,
    in_round: usize,
    backoff: Duration,
    /// When the last open session was lost (or the first attempt failed).
    down_since: Option<Instant>,
    max_rounds: u32,
    deadline: Option<Duration>,
}

impl Failover {
    /// Panics on an empty list: callers check it (an empty list is a
    /// configuration error reported to the application).
    pub(crate) fn new(addrs: Vec<SocketAddr>, max_rounds: u32, deadline: Option<Duration>) -> Self {
        assert!(!addrs.is_empty(), "at least one daemon address");
        Failover {
            addrs,
            current: 0,
            failures: 0,
            in_round: 0,
            backoff: FIRST_BACKOFF,
            down_since: None,
            max_rounds,
            deadline,
        }
    }

    /// The daemon the producer uses now.
    pub(crate) fn current(&self) -> SocketAddr {
        self.addrs[self.current]
    }

    pub(crate) fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Consecutive failures since the last open session.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// A session is open at the current daemon: the counts start again.
    pub(crate) fn connected(&mut self) {
        self.failures = 0;
        self.in_round = 0;
        self.backoff = FIRST_BACKOFF;
        self.down_since = None;
    }

    /// The current daemon failed at `now`: where to go next.
    pub(crate) fn failed(&mut self, now: Instant, failure: Failure) -> Next {
        let since = *self.down_since.get_or_insert(now);
        self.failures += 1;
        let mut delay = Duration::ZERO;
        match failure {
            // A round starts with the first daemon that is tried after a
            // session was lost; the lost one closes the previous round
            // only if it was never open (a connect failure).
            Failure::SessionLost => self.in_round = 0,
            Failure::ConnectFailed => {
                self.in_round += 1;
                if self.in_round >= self.addrs.len() {
                    self.in_round = 0;
                    delay = self.backoff;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        // Lost sessions count toward the bound too, so daemons that accept
        // sessions and drop them at once cannot hold the producer forever:
        // the failures in a row, in rounds of the list (rounded up; one
        // address: the failures themselves, the old `max_reconnects`).
        let rounds = self.failures.div_ceil(self.addrs.len() as u32);
        let down_for = now.saturating_duration_since(since);
        if rounds > self.max_rounds || self.deadline.is_some_and(|d| down_for >= d) {
            return Next::GiveUp { rounds, down_for };
        }
        self.current = (self.current + 1) % self.addrs.len();
        Next::Try {
            addr: self.current(),
            index: self.current,
            delay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (1..=n)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], 7000 + p)))
            .collect()
    }

    fn tried(n: &Next) -> (u16, Duration) {
        match n {
            Next::Try { addr, delay, .. } => (addr.port() - 7000, *delay),
            other => panic!("expected a try, got {other:?}"),
        }
    }

    #[test]
    fn a_lost_session_moves_to_the_next_daemon_at_once() {
        let mut f = Failover::new(addrs(3), 5, None);
        let t = Instant::now();
        assert_eq!(f.current().port(), 7001);
        assert_eq!(
            tried(&f.failed(t, Failure::SessionLost)),
            (2, Duration::ZERO)
        );
        f.connected();
        assert_eq!(
            tried(&f.failed(t, Failure::SessionLost)),
            (3, Duration::ZERO)
        );
        f.connected();
        // Round robin: back to the first.
        assert_eq!(
            tried(&f.failed(t, Failure::SessionLost)),
            (1, Duration::ZERO)
        );
    }

    #[test]
    fn backs_off_only_after_a_whole_round_failed() {
        let mut f = Failover::new(addrs(2), 10, None);
        let t = Instant::now();
        assert_eq!(
            tried(&f.failed(t, Failure::SessionLost)),
            (2, Duration::ZERO)
        );
        // 2 is down: back to 1 without waiting (1 was lost, not tried).
        assert_eq!(
            tried(&f.failed(t, Failure::ConnectFailed)),
            (1, Duration::ZERO)
        );
        // 1 is down too: a whole round failed, wait before 2.
        assert_eq!(
            tried(&f.failed(t, Failure::ConnectFailed)),
            (2, Duration::from_millis(50))
        );
        assert_eq!(
            tried(&f.failed(t, Failure::ConnectFailed)),
            (1, Duration::ZERO)
        );
        assert_eq!(
            tried(&f.failed(t, Failure::ConnectFailed)),
            (2, Duration::from_millis(100))
        );
        // A session opens: the backoff starts again.
        f.connected();
        assert_eq!(
            tried(&f.failed(t, Failure::SessionLost)),
            (1, Duration::ZERO)
        );
        assert_eq!(
            tried(&f.failed(t, Failure::ConnectFailed)),
            (2, Duration::ZERO)
        );
        assert_eq!(
            tried(&f.failed(t, Failure::ConnectFailed)),
            (1, Duration::from_millis(50))
        );
    }

    #[test]
    fn one_daemon_keeps_the_old_reconnect_bound() {
        // max_reconnects = 2: two attempts follow a lost session (the
        // first at once, the second after a wait); when both fail, it
        // gives up.
        let mut f = Failover::new(addrs(1), 2, None);
        let t = Instant::now();
        assert_eq!(
            tried(&f.failed(t, Failure::SessionLost)),
            (1, Duration::ZERO)
        );
        assert_eq!(
            tried(&f.failed(t, Failure::ConnectFailed)),
            (1, Duration::from_millis(50))
        );
        assert!(matches!(
            f.failed(t, Failure::ConnectFailed),
            Next::GiveUp { rounds: 3, .. }
        ));
        // And with none allowed, the first lost session is final.
        let mut f = Failover::new(addrs(1), 0, None);
        assert!(matches!(
            f.failed(t, Failure::SessionLost),
            Next::GiveUp { .. }
        ));
    }

    #[test]
    fn sessions_that_keep_dropping_count_toward_the_bound() {
        let mut f = Failover::new(addrs(2), 1, None);
        let t = Instant::now();
        // Lost again each time without a session in between: the third
        // failure begins a second round of two daemons, past the bound.
        for _ in 0..2 {
            assert!(matches!(
                f.failed(t, Failure::SessionLost),
                Next::Try { .. }
            ));
        }
        assert!(matches!(
            f.failed(t, Failure::SessionLost),
            Next::GiveUp { rounds: 2, .. }
        ));
    }

    #[test]
    fn gives_up_once_every_daemon_was_down_for_the_deadline() {
        let mut f = Failover::new(addrs(2), u32::MAX, Some(Duration::from_secs(3)));
        let t = Instant::now();
        assert!(matches!(
            f.failed(t, Failure::SessionLost),
            Next::Try { .. }
        ));
        let later = t + Duration::from_secs(2);
        assert!(matches!(
            f.failed(later, Failure::ConnectFailed),
            Next::Try { .. }
        ));
        let past = t + Duration::from_secs(3);
        match f.failed(past, Failure::ConnectFailed) {
            Next::GiveUp { down_for, .. } => assert_eq!(down_for, Duration::from_secs(3)),
            other => panic!("expected to give up, got {other:?}"),
        }
    }
}
