//! A stream log's settings: what the writer, recovery, the survey and
//! the scrub all read, below all of them.

use super::keys::KeyLimits;
use super::record::{HEADER_LEN, MAX_PAYLOAD};
use super::segment::{COMMIT_HEADER_LEN, SEGMENT_HEADER_LEN};

/// One sparse-index entry per this many bytes of records, by default.
pub const INDEX_EVERY: u64 = 64 << 10;

/// What opening does with what a crash or damage left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Cut a torn tail (its bytes copied aside first); refuse damage.
    Recover,
    /// Also set damage aside and serve the valid log before it
    /// (`sluiced --repair`).
    Repair,
    /// Change nothing (tools reading a data folder); refuse damage.
    ReadOnly,
}

/// Settings of one stream's log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Bound on one batch's bytes (the writer's; a commit is at most one
    /// batch).
    pub max_batch_bytes: usize,
    /// Largest payload accepted (at most the transport's 16 MiB).
    pub max_record_bytes: usize,
    /// One sparse-index entry per this many bytes of records.
    pub index_interval: u64,
    pub recovery: Recovery,
    /// Acks go out before fdatasync (fsync = interval or never): recorded
    /// in the checkpoint, so that the next start knows marks may be ahead
    /// of what a power cut left.
    pub early_acks: bool,
    /// How many request keys the idempotence table keeps, and how long.
    pub keys: KeyLimits,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 256 << 20,
            max_batch_bytes: 8 << 20,
            max_record_bytes: MAX_PAYLOAD,
            index_interval: INDEX_EVERY,
            recovery: Recovery::Recover,
            early_acks: false,
            keys: KeyLimits::default(),
        }
    }
}

impl LogConfig {
    /// The most a commit header may claim: a whole segment, or one
    /// record of the largest size in a segment of its own.
    pub fn max_commit_bytes(&self) -> u64 {
        self.segment_bytes.max(
            (SEGMENT_HEADER_LEN + COMMIT_HEADER_LEN + HEADER_LEN + self.max_record_bytes) as u64,
        )
    }
}
