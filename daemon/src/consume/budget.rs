//! What push consumers may hold: the credit a consumer declares is a wish;
//! the daemon clamps it. Messages out with one member are capped; their
//! bytes are capped per member, and reserved from the member's connection's
//! share and from the daemon's, so that what is delivered and not acked —
//! and so what can pile up toward clients that never read — is bounded
//! whatever they declare. A member always gets room for one message (else a
//! message larger than its share would never go out).
//!
//! A [`Grant`] holds a member's reservation and gives it back when dropped
//! (the member left: its connection closed).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::group::Credit;

/// The daemon's limits on what consumers hold (`[consumers]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerLimits {
    pub max_member_messages: u32,
    pub max_member_bytes: u64,
    /// All the members of one QUIC connection together.
    pub max_connection_bytes: u64,
    /// All members of the daemon together.
    pub max_out_bytes: u64,
    /// Consumer groups in all.
    pub max_groups: usize,
}

impl Default for ConsumerLimits {
    fn default() -> Self {
        ConsumerLimits {
            max_member_messages: 10_000,
            max_member_bytes: 16 << 20,
            max_connection_bytes: 64 << 20,
            max_out_bytes: 256 << 20,
            max_groups: 64,
        }
    }
}

/// Bytes reserved: in all and by connection.
#[derive(Debug, Default)]
struct Reserved {
    total: u64,
    by_conn: HashMap<SocketAddr, u64>,
}

#[derive(Debug)]
pub struct Budget {
    limits: ConsumerLimits,
    reserved: Mutex<Reserved>,
}

/// A member's reservation; given back when dropped.
#[derive(Debug)]
pub struct Grant {
    budget: Arc<Budget>,
    conn: SocketAddr,
    bytes: u64,
}

impl Budget {
    pub fn new(limits: ConsumerLimits) -> Arc<Budget> {
        Arc::new(Budget {
            limits,
            reserved: Mutex::new(Reserved::default()),
        })
    }

    pub fn limits(&self) -> &ConsumerLimits {
        &self.limits
    }

    /// The credit a member of connection `conn` gets for what it declared,
    /// and its reservation. Pull credit (a fetch) reserves nothing: a
    /// fetch's messages are capped where it is answered.
    pub fn grant(self: &Arc<Self>, conn: SocketAddr, declared: Credit) -> (Credit, Grant) {
        let mut g = Grant {
            budget: self.clone(),
            conn,
            bytes: 0,
        };
        let credit = self.regrant(&mut g, declared);
        (credit, g)
    }

    /// A member's new credit: its old reservation given back, a new one
    /// taken.
    pub fn regrant(&self, g: &mut Grant, declared: Credit) -> Credit {
        let Credit::Window { messages, bytes } = declared else {
            self.give_back(g);
            return declared;
        };
        let mut r = self.reserved.lock().unwrap();
        let conn = r.by_conn.get(&g.conn).copied().unwrap_or(0) - g.bytes;
        let total = r.total - g.bytes;
        let granted = clamp(bytes, &self.limits, conn, total);
        r.total = total + granted;
        *r.by_conn.entry(g.conn).or_insert(0) = conn + granted;
        if conn + granted == 0 {
            r.by_conn.remove(&g.conn);
        }
        g.bytes = granted;
        Credit::Window {
            messages: messages.min(self.limits.max_member_messages),
            // Room for one message, whatever is left.
            bytes: granted.max(1),
        }
    }

    fn give_back(&self, g: &mut Grant) {
        if g.bytes == 0 {
            return;
        }
        let mut r = self.reserved.lock().unwrap();
        r.total -= g.bytes;
        let left = r.by_conn.get(&g.conn).copied().unwrap_or(0) - g.bytes;
        if left == 0 {
            r.by_conn.remove(&g.conn);
        } else {
            r.by_conn.insert(g.conn, left);
        }
        g.bytes = 0;
    }

    /// Bytes reserved now, in all (for metrics and tests).
    pub fn reserved(&self) -> u64 {
        self.reserved.lock().unwrap().total
    }
}

impl Grant {
    /// The budget it is part of.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        let budget = self.budget.clone();
        budget.give_back(self);
    }
}

/// The bytes granted for `declared`: at most the member's cap and what is
/// left of the connection's and the daemon's shares (`conn` and `total`
/// are what others hold now).
fn clamp(declared: u64, l: &ConsumerLimits, conn: u64, total: u64) -> u64 {
    declared
        .min(l.max_member_bytes)
        .min(l.max_connection_bytes.saturating_sub(conn))
        .min(l.max_out_bytes.saturating_sub(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConsumerLimits {
        ConsumerLimits {
            max_member_messages: 100,
            max_member_bytes: 10,
            max_connection_bytes: 25,
            max_out_bytes: 40,
            max_groups: 8,
        }
    }

    fn window(messages: u32, bytes: u64) -> Credit {
        Credit::Window { messages, bytes }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn what_a_member_declares_is_clamped_per_member_connection_and_daemon() {
        let b = Budget::new(limits());
        let (c, g1) = b.grant(addr(1), window(1 << 30, 1 << 34));
        assert_eq!(c, window(100, 10), "the member's caps");
        let (_, g2) = b.grant(addr(1), window(5, 10));
        let (c, g3) = b.grant(addr(1), window(5, 10));
        assert_eq!(c, window(5, 5), "what is left of the connection's 25");
        let (c, _g4) = b.grant(addr(1), window(5, 10));
        assert_eq!(c, window(5, 1), "none left: room for one message");
        let (c, g5) = b.grant(addr(2), window(5, 10));
        assert_eq!(c, window(5, 10));
        let (c, _g6) = b.grant(addr(3), window(5, 10));
        assert_eq!(c, window(5, 5), "what is left of the daemon's 40");
        assert_eq!(b.reserved(), 40);
        drop((g1, g2, g3, g5));
        assert_eq!(b.reserved(), 5, "given back when members leave");
    }

    #[test]
    fn a_new_credit_gives_the_old_reservation_back_first() {
        let b = Budget::new(limits());
        let (_, mut g) = b.grant(addr(1), window(5, 10));
        assert_eq!(b.regrant(&mut g, window(5, 3)), window(5, 3));
        assert_eq!(b.reserved(), 3);
        assert_eq!(
            b.regrant(&mut g, Credit::Fetch { left: 4 }),
            Credit::Fetch { left: 4 }
        );
        assert_eq!(b.reserved(), 0);
        drop(g);
        assert_eq!(b.reserved(), 0);
    }
}
