//! What recovery and repair did to a stream, kept for operators: every
//! torn tail cut (its bytes set aside), every repair (damage set aside,
//! offsets given up) and every loss to acks sent before fdatasync. One
//! JSON object a line in `<stream>/recoveries`, replaced atomically.
//! `/streams`, `/health` and `/metrics` show it; nothing depends on it
//! for correctness (segment headers carry the gaps themselves).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::SpoolError;
use super::fs::{read_all, write_atomic, SpoolFs};

pub const FILE: &str = "recoveries";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
#[schema(as = RecoveryKind)]
pub enum Kind {
    /// A crash's torn write at the end of the log, cut at start; its
    /// bytes were never acknowledged.
    TornTail,
    /// `--repair` set damage aside.
    Repair,
    /// Records acknowledged before fdatasync (fsync = interval or never)
    /// that a power cut took.
    EarlyAcks,
    /// `--repair` set a consumer group's damaged journal or snapshot
    /// aside: acks were lost (their messages are delivered again), no
    /// offset was.
    GroupRepair,
}

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Recovery {
    /// When (µs since the Unix epoch).
    pub at_us: u64,
    pub kind: Kind,
    /// Offsets given up: `from..to` (empty when only bytes nobody was
    /// acknowledged for were set aside). New records continue at `to`.
    pub from: u64,
    pub to: u64,
    /// Bytes set aside, and where.
    pub bytes_aside: u64,
    #[schema(value_type = Option<String>)]
    pub aside: Option<PathBuf>,
    pub reason: String,
}

impl Recovery {
    pub fn lost(&self) -> u64 {
        self.to.saturating_sub(self.from)
    }
}

/// The entries of the stream in `dir` (none if the file is missing or
/// unreadable: it is informational).
pub fn read(fs: &dyn SpoolFs, dir: &Path) -> Vec<Recovery> {
    let Ok(b) = read_all(fs, &dir.join(FILE)) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&b)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Adds an entry, durably.
pub fn append(fs: &dyn SpoolFs, dir: &Path, r: &Recovery) -> Result<(), SpoolError> {
    let mut all = read(fs, dir);
    all.push(r.clone());
    let mut text = String::new();
    for e in &all {
        text.push_str(&serde_json::to_string(e).expect("serializes"));
        text.push('\n');
    }
    let path: PathBuf = dir.join(FILE);
    write_atomic(fs, &path, text.as_bytes()).map_err(SpoolError::io("write", &path))
}
