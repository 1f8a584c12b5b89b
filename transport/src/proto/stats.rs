use crate::wire::DecodeError;

/// Why an incoming datagram was dropped. Counted per reason so that operators
/// can tell an attack or a misconfigured peer from ordinary loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    BadMagic,
    WrongVersion,
    UnknownType,
    UnknownFlags,
    BadChecksum,
    Truncated,
    Oversized,
    Malformed,
    /// Names a session that does not exist (or no longer does).
    UnknownSession,
    /// Well formed, but not a packet this side expects in its state.
    Unexpected,
    /// A HELLO for a new session from a source address that holds its most
    /// sessions already (`ReceiverConfig::max_sessions_per_source`).
    SourceLimit,
}

impl DropReason {
    pub const ALL: [DropReason; 11] = [
        DropReason::BadMagic,
        DropReason::WrongVersion,
        DropReason::UnknownType,
        DropReason::UnknownFlags,
        DropReason::BadChecksum,
        DropReason::Truncated,
        DropReason::Oversized,
        DropReason::Malformed,
        DropReason::UnknownSession,
        DropReason::Unexpected,
        DropReason::SourceLimit,
    ];

    /// A stable snake_case name, for metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::BadMagic => "bad_magic",
            DropReason::WrongVersion => "wrong_version",
            DropReason::UnknownType => "unknown_type",
            DropReason::UnknownFlags => "unknown_flags",
            DropReason::BadChecksum => "bad_checksum",
            DropReason::Truncated => "truncated",
            DropReason::Oversized => "oversized",
            DropReason::Malformed => "malformed",
            DropReason::UnknownSession => "unknown_session",
            DropReason::Unexpected => "unexpected",
            DropReason::SourceLimit => "source_limit",
        }
    }
}

impl From<DecodeError> for DropReason {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::BadMagic => DropReason::BadMagic,
            DecodeError::WrongVersion(_) => DropReason::WrongVersion,
            DecodeError::UnknownType(_) => DropReason::UnknownType,
            DecodeError::UnknownFlags(_) => DropReason::UnknownFlags,
            DecodeError::BadChecksum => DropReason::BadChecksum,
            DecodeError::Truncated { .. } => DropReason::Truncated,
            DecodeError::Oversized { .. } => DropReason::Oversized,
            DecodeError::TrailingBytes(_) | DecodeError::Malformed(_) => DropReason::Malformed,
        }
    }
}

/// Dropped datagrams, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounts([u64; DropReason::ALL.len()]);

impl DropCounts {
    pub fn add(&mut self, reason: DropReason) {
        self.0[reason as usize] += 1;
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|&r| (r, self.get(r)))
    }
}

/// Producer-side counters.
#[derive(Debug, Clone, Default)]
pub struct SenderStats {
    pub datagrams_sent: u64,
    /// Messages (or first fragments of them) sent for the first time.
    pub messages_sent: u64,
    /// Payload bytes sent for the first time.
    pub bytes_sent: u64,
    /// Entries (whole messages or fragments) sent again after a NACK or probe.
    pub retransmissions: u64,
    /// Payload bytes sent again.
    pub bytes_retransmitted: u64,
    pub nacks_received: u64,
    /// Probe timeouts that fired.
    pub probes: u64,
    pub drops: DropCounts,
    /// Times messages waited unsent because the credit was used up, and
    /// how long in all (until a STATUS granted room).
    pub credit_stalls: u64,
    pub credit_stalled: std::time::Duration,
}

/// Per-session receiver counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    pub datagrams_received: u64,
    pub messages_delivered: u64,
    pub bytes_delivered: u64,
    /// Entries for messages already received (retransmissions that crossed).
    pub duplicates: u64,
    /// Entries that filled a gap after it was NACKed: retransmissions that
    /// repaired loss.
    pub recovered: u64,
    /// Entries beyond the credit the receiver granted.
    pub over_credit: u64,
    /// Fragments refused because the reassembly budget was used up.
    pub reassembly_refused: u64,
    /// Fragments whose message length disagreed with earlier fragments.
    pub inconsistent_fragments: u64,
    pub nacks_sent: u64,
    pub statuses_sent: u64,
}
