//! How much credit a producer session gets: the backpressure that reaches
//! producers. Credit is counted in messages past the session's durable seq,
//! so it bounds what a session can have in flight, in memory, at once.
//!
//! The daemon has one window of bytes in flight, shared by all its
//! sessions: they share its memory and, over raw UDP, the data socket's
//! receive buffer, which drops what overflows it (and a drop costs a
//! retransmission, which costs more). Each session's share is turned into
//! messages by its average message size. The share shrinks as its stream's
//! spool backlog grows and is zero while the disk is full or the backlog is
//! at its limit: a slow disk slows producers instead of growing memory. It
//! is zero too while a consumer group configured with backpressure is at
//! its backlog limit.

use crate::spool::Health;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditPolicy {
    /// Most credit one session gets, in messages.
    pub max_credit: u32,
    /// Bytes in flight allowed over all sessions.
    pub window_bytes: u64,
    /// Backlog (bytes waiting for the spool writer) at which credit is zero.
    pub backlog_limit: u64,
}

/// Message size assumed for a session that has sent nothing yet.
const ASSUMED_MESSAGE: u64 = 1024;

impl CreditPolicy {
    /// The credit for one of `sessions` open sessions, whose stream's spool
    /// is in state `health`, given the session's average message size so far
    /// (`None` before its first message).
    pub fn credit(&self, health: &Health, sessions: usize, avg_message: Option<u64>) -> u32 {
        if health.disk_full
            || health.held_by_consumers
            || health.backlog_bytes >= self.backlog_limit
        {
            return 0;
        }
        let size = avg_message.unwrap_or(ASSUMED_MESSAGE).max(1);
        let share = self.window_bytes / sessions.max(1) as u64;
        // Scale down linearly as the backlog approaches its limit.
        let free = self.backlog_limit - health.backlog_bytes;
        let messages = (share / size) as u128 * free as u128 / self.backlog_limit as u128;
        // At least one message, so every session can make progress.
        messages.clamp(1, u128::from(self.max_credit)) as u32
    }

    /// The same share in payload bytes, for planes that count both (gRPC's
    /// PublishStream): zero when [`CreditPolicy::credit`] is, else the
    /// session's share of the window, scaled down as the backlog grows.
    pub fn credit_bytes(&self, health: &Health, sessions: usize) -> u64 {
        if self.credit(health, sessions, None) == 0 {
            return 0;
        }
        let share = self.window_bytes / sessions.max(1) as u64;
        let free = self.backlog_limit - health.backlog_bytes;
        // At least one byte: credit is never "0 bytes but some messages".
        ((share as u128 * free as u128 / self.backlog_limit as u128) as u64).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: CreditPolicy = CreditPolicy {
        max_credit: 4096,
        window_bytes: 64 << 20,
        backlog_limit: 64 << 20,
    };

    fn health(backlog_bytes: u64, disk_full: bool) -> Health {
        Health {
            backlog_bytes,
            disk_full,
            ..Health::default()
        }
    }

    #[test]
    fn idle_spool_small_messages_get_the_most() {
        assert_eq!(POLICY.credit(&health(0, false), 8, Some(128)), 4096);
    }

    #[test]
    fn the_window_is_shared_by_size() {
        // 64 MiB over 256 sessions = 256 KiB each; of 64 KiB messages: 4.
        assert_eq!(POLICY.credit(&health(0, false), 256, Some(64 << 10)), 4);
        // Huge messages still get one, so every session progresses.
        assert_eq!(POLICY.credit(&health(0, false), 256, Some(16 << 20)), 1);
    }

    #[test]
    fn credit_in_bytes_is_the_share_scaled_by_backlog_and_zero_with_credit() {
        assert_eq!(POLICY.credit_bytes(&health(0, false), 4), 16 << 20);
        assert_eq!(POLICY.credit_bytes(&health(32 << 20, false), 4), 8 << 20);
        assert_eq!(POLICY.credit_bytes(&health(0, true), 1), 0);
        assert_eq!(POLICY.credit_bytes(&health(64 << 20, false), 1), 0);
    }

    #[test]
    fn a_group_at_its_backlog_limit_stops_credit() {
        let held = Health {
            held_by_consumers: true,
            ..Health::default()
        };
        assert_eq!(POLICY.credit(&held, 8, Some(128)), 0);
    }

    #[test]
    fn backlog_shrinks_credit_and_a_full_disk_stops_it() {
        let half = POLICY.credit(&health(32 << 20, false), 16, Some(4096));
        let none = POLICY.credit(&health(0, false), 16, Some(4096));
        assert_eq!(none, 1024);
        assert_eq!(half, 512);
        assert_eq!(POLICY.credit(&health(64 << 20, false), 16, Some(128)), 0);
        assert_eq!(POLICY.credit(&health(0, true), 1, Some(128)), 0);
    }
}
