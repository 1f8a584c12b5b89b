//! A member's credit and what it holds against it.
//!
//! Rules it keeps:
//! - a member takes a message only within its credit: under a window, at
//!   most `messages` out, and at most `bytes` unless it holds one message
//!   (one message always fits an empty window, so a message larger than
//!   the byte window cannot stall the group); a fetch takes at most `left`;
//! - what it holds is counted exactly (the group checks the counts against
//!   its messages);
//! - a member may lower its window below what it holds: it then takes
//!   nothing until what it holds fits again. `lowered` records that, so
//!   that a held excess is always explained by a lowered window, never by
//!   a take beyond credit.

use super::Credit;

pub(super) struct Member {
    pub name: String,
    credit: Credit,
    out_messages: u32,
    out_bytes: u64,
    /// The window was lowered below what the member held, and what it
    /// holds has not fit since.
    lowered: bool,
}

impl Member {
    pub fn new(name: String, credit: Credit) -> Member {
        Member {
            name,
            credit,
            out_messages: 0,
            out_bytes: 0,
            lowered: false,
        }
    }

    /// Messages and payload bytes out with the member.
    pub fn held(&self) -> (u32, u64) {
        (self.out_messages, self.out_bytes)
    }

    pub fn set_credit(&mut self, credit: Credit) {
        self.credit = credit;
        self.lowered = !self.fits();
    }

    /// Credit left, in messages (a fetch: what it may still take).
    pub fn free_messages(&self) -> u64 {
        match self.credit {
            Credit::Window { messages, .. } => messages.saturating_sub(self.out_messages) as u64,
            Credit::Fetch { left } => left as u64,
        }
    }

    pub fn can_take(&self, len: u64) -> bool {
        match self.credit {
            Credit::Window { messages, bytes } => {
                self.out_messages < messages
                    && (self.out_messages == 0 || self.out_bytes + len <= bytes)
            }
            Credit::Fetch { left } => left > 0,
        }
    }

    /// The member takes a message of `len` payload bytes.
    pub fn take(&mut self, len: u64) {
        debug_assert!(self.can_take(len), "a member takes beyond its credit");
        self.out_messages += 1;
        self.out_bytes += len;
        if let Credit::Fetch { left } = &mut self.credit {
            *left -= 1;
        }
        debug_assert!(self.fits(), "a take left a member over its window");
    }

    /// A message of `len` bytes the member held is back (done or failed).
    pub fn give_back(&mut self, len: u64) {
        debug_assert!(self.out_messages > 0 && self.out_bytes >= len);
        self.out_messages -= 1;
        self.out_bytes -= len;
        if self.fits() {
            self.lowered = false;
        }
    }

    /// What the member holds is within its window.
    fn fits(&self) -> bool {
        match self.credit {
            Credit::Window { messages, bytes } => {
                self.out_messages <= messages && (self.out_messages <= 1 || self.out_bytes <= bytes)
            }
            // A fetch bounds what it takes, not what is held.
            Credit::Fetch { .. } => true,
        }
    }

    /// Panics if the member holds more than its credit without having
    /// lowered it, or if its counts are not `held` (recounted from the
    /// group's messages).
    pub fn check(&self, id: u64, held: (u32, u64)) {
        assert_eq!(
            self.held(),
            held,
            "member {id}: counts (messages, bytes) out differ from the messages out with it"
        );
        assert!(
            self.out_messages > 0 || self.out_bytes == 0,
            "member {id}: bytes out with no message out"
        );
        assert!(
            self.fits() || self.lowered,
            "member {id}: holds {} messages, {} bytes over its credit {:?}",
            self.out_messages,
            self.out_bytes,
            self.credit
        );
    }
}
