//! The durable spool: where the one promise is kept. A message is reported
//! stored only after the fdatasync that covers it returned, and each
//! (producer, seq) is stored once.
//!
//! - [`log`]: one stream's segmented log (opening, batched appends,
//!   idempotence table, cursors, retention), synchronous and I/O-agnostic;
//! - [`segment`], [`checkpoint`], [`index`], [`marks`]: what is on disk;
//! - [`survey`]: what a stream's files hold, read without changing them:
//!   the valid log, a torn tail, damage; [`repair`] and [`aside`]: what is
//!   done about them (nothing is ever deleted); [`recoveries`]: the record
//!   of it for operators; [`scrub`]: sealed segments read again in the
//!   background;
//! - [`commit`]: the group commit, sans I/O: batches bounded in bytes,
//!   each waiter's outcomes, the fsync policy, the writer's timers;
//!   [`writer`]: the thread that runs it in front of the log, which many
//!   sessions append to and which issues one fdatasync per batch;
//! - [`reader`]: iteration from an offset or a time, and following the tail;
//! - [`fs`] and [`simfs`]: the file I/O trait, the real file system, and the
//!   simulated one that crashes on purpose in tests.

pub mod aside;
pub mod checkpoint;
pub mod commit;
pub mod config;
pub mod error;
pub mod fs;
pub mod index;
pub mod keys;
pub mod lock;
pub mod log;
pub mod marks;
mod metrics;
pub mod reader;
pub mod record;
pub mod recoveries;
pub mod repair;
pub mod scrub;
pub mod segment;
pub mod segment_file;
pub mod simfs;
pub mod survey;
pub mod writer;

pub use config::{LogConfig, Recovery};
pub use error::{Damage, SpoolError};
pub use lock::DirLock;
pub use log::{Outcome, StreamLog};
pub use marks::Cursor;
pub use reader::Reader;
pub use record::Record;
pub use writer::{FsyncPolicy, Health, Spool, SpoolConfig, Stream};
