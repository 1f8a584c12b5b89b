//! Heartbeats: both sides ping on an interval, answer pings with pongs, take
//! RTT samples from the pongs, and declare the peer dead after the idle timeout.

use std::time::{Duration, Instant};

use super::rtt::RttEstimator;
use crate::wire::Heartbeat;

#[derive(Debug)]
pub(crate) struct Liveness {
    epoch: Instant,
    interval: Duration,
    idle_timeout: Duration,
    last_heard: Instant,
    next_ping: Instant,
    /// A pong owed to the peer (only the newest token matters).
    pong_due: Option<u64>,
    pub(crate) rtt: RttEstimator,
}

impl Liveness {
    pub(crate) fn new(
        now: Instant,
        interval: Duration,
        idle_timeout: Duration,
        initial_rtt: Duration,
    ) -> Self {
        Liveness {
            epoch: now,
            interval,
            idle_timeout,
            last_heard: now,
            // Ping at once: the first RTT sample should not wait a whole interval.
            next_ping: now,
            pong_due: None,
            rtt: RttEstimator::new(initial_rtt),
        }
    }

    pub(crate) fn heard(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
    }

    pub(crate) fn on_heartbeat(&mut self, now: Instant, hb: Heartbeat) {
        if !hb.pong {
            self.pong_due = Some(hb.token);
            return;
        }
        // The token is our own clock in microseconds since `epoch`; a token
        // from the future is forged or corrupt and gives no sample.
        let sent = self.epoch + Duration::from_micros(hb.token);
        if sent <= now {
            self.rtt.update(now - sent);
        }
    }

    /// Asks for a ping at the next transmit opportunity (used to elicit a STATUS).
    pub(crate) fn ping_soon(&mut self, now: Instant) {
        self.next_ping = self.next_ping.min(now);
    }

    /// The heartbeat to send now, if any: a pong owed, else a ping that is due.
    pub(crate) fn poll(&mut self, now: Instant) -> Option<Heartbeat> {
        if let Some(token) = self.pong_due.take() {
            return Some(Heartbeat { pong: true, token });
        }
        if now >= self.next_ping {
            self.next_ping = now + self.interval;
            let token = now.saturating_duration_since(self.epoch).as_micros() as u64;
            return Some(Heartbeat { pong: false, token });
        }
        None
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.next_ping.min(self.idle_deadline())
    }

    pub(crate) fn idle_deadline(&self) -> Instant {
        self.last_heard + self.idle_timeout
    }

    pub(crate) fn is_dead(&self, now: Instant) -> bool {
        now >= self.idle_deadline()
    }
}
