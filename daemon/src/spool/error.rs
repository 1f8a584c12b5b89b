use std::fmt;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Damage found in a stream's files: where it is, which offsets it
/// affects, and why it is damage rather than what a crash leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Damage {
    pub stream: String,
    /// The damaged file (a segment, the checkpoint, a cursor, ...).
    #[schema(value_type = String)]
    pub file: PathBuf,
    /// Byte position in it where the damage starts.
    pub byte: u64,
    /// First offset affected.
    pub from: u64,
    /// Offset after the last one known to be affected; `None` when the
    /// extent is not known (everything from `from` on may be).
    pub to: Option<u64>,
    pub reason: String,
}

impl Damage {
    /// The affected offsets, in words.
    pub fn offsets(&self) -> String {
        match self.to {
            Some(to) if to > self.from => {
                format!("offsets {}..{} ({} records)", self.from, to, to - self.from)
            }
            _ => format!("offsets from {} on", self.from),
        }
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stream {}: {} is damaged at byte {} ({}); {} affected",
            self.stream,
            self.file.display(),
            self.byte,
            self.reason,
            self.offsets()
        )
    }
}

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{0}; refusing to serve the stream: restore the files, or start sluiced with \
         --repair to set the damaged part aside (nothing is deleted) and serve what is before it"
    )]
    Damaged(Box<Damage>),
    #[error(
        "stream {stream}, consumer group {group}: {} is damaged at byte {offset} ({reason}); \
         the group is not served: restore the file, or start sluiced with --repair, which sets \
         the damaged file aside (nothing is deleted) and starts the group again from its last \
         known position (what it had acked after it is delivered again)",
        file.display()
    )]
    GroupCorrupt {
        stream: String,
        group: String,
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("disk full: {free} bytes free, floor {floor} bytes; appends wait for space")]
    DiskFull { free: u64, floor: u64 },
    #[error(
        "invalid stream name {0:?}: use 1-251 of A-Z a-z 0-9 . _ - (not starting with .; \
         its dead-letter stream <name>.dlq must fit in 255)"
    )]
    BadStreamName(String),
    #[error("record of {0} bytes exceeds the limit (16 MiB and 32 KiB)")]
    TooLarge(usize),
    #[error("the spool is closed")]
    Closed,
    #[error("stream {0:?} exists already")]
    StreamExists(String),
    #[error("stream {0:?} was deleted")]
    StreamDeleted(String),
    #[error("too many streams: the daemon has {max} (streams.max_streams); no new stream is made")]
    TooManyStreams { max: usize },
    #[error(
        "data folder {} is in use by another process ({holder}): is sluiced already running on it?",
        dir.display()
    )]
    Locked { dir: PathBuf, holder: String },
}

impl SpoolError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> SpoolError {
        let path = path.into();
        move |source| {
            if source.raw_os_error() == Some(libc::ENOSPC) {
                SpoolError::DiskFull { free: 0, floor: 0 }
            } else {
                SpoolError::Io { op, path, source }
            }
        }
    }
}
