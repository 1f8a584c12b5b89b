//! The durable spool: where the one promise is kept. A message is reported
//! stored only after the fdatasync that covers it returned, and each
//! (producer, seq) is stored once.
//!
//! - [`log`]: one stream's segmented log (recovery, batched appends, index,
//!   idempotence table, cursors, retention), synchronous and I/O-agnostic;
//! - [`writer`]: the group-commit thread in front of it, which many sessions
//!   append to and which issues one fdatasync per batch;
//! - [`reader`]: iteration from an offset or a time, and following the tail;
//! - [`fs`] and [`simfs`]: the file I/O trait, the real file system, and the
//!   simulated one that crashes on purpose in tests.

pub mod error;
pub mod fs;
pub mod lock;
pub mod log;
pub mod reader;
pub mod record;
pub mod simfs;
pub mod writer;

pub use error::SpoolError;
pub use lock::DirLock;
pub use log::{Cursor, LogConfig, Outcome, StreamLog};
pub use reader::Reader;
pub use record::Record;
pub use writer::{FsyncPolicy, Health, Spool, SpoolConfig, Stream};
