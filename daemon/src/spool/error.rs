use std::io;
use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "stream {stream}: corrupt record in segment {segment} at byte {offset} ({reason}); \
         refusing to serve the stream: start with --repair to quarantine the damaged part"
    )]
    Corrupt {
        stream: String,
        segment: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(
        "stream {stream}, consumer group {group}: {} is damaged at byte {offset} ({reason}); \
         the group's position is unknown, so it is not served: restore the file, or move the \
         group's folder aside to start the group again from its configured start (what it had \
         acked is then delivered again)",
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
    #[error("invalid stream name {0:?}: use 1-255 of A-Z a-z 0-9 . _ - (not starting with .)")]
    BadStreamName(String),
    #[error("record of {0} bytes exceeds the limit (16 MiB and 32 KiB)")]
    TooLarge(usize),
    #[error("the spool is closed")]
    Closed,
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
