//! Group commit: one writer thread per stream takes appends from every
//! session, writes them as one batch and issues one fdatasync for it; every
//! waiter of the batch is answered after the sync returned.
//!
//! What to do is decided by the sans-IO [`Committer`] (`commit.rs`): which
//! queued requests make a batch (up to `max_batch_bytes`, in the order they
//! came), whether it is fdatasynced, each waiter's outcomes, when the
//! interval fdatasync, the checkpoint and housekeeping are due, and the
//! disk-full hold (a batch that met a full disk is held, unanswered, and
//! given back for a retry every 100 ms). This file is its I/O shell, the
//! writer thread: it waits on the stream's channel until a request comes
//! or the committer's next deadline, runs the timers that are due, takes
//! what is queued while the batch has room (cursor, skip and recovery
//! requests are done at once, in their place), checks the free space
//! against `min_free_bytes` and appends the batch with one
//! `StreamLog::append`, and answers the waiters (oneshots or callbacks)
//! after the durable end is published; it keeps the gauges (`disk_full`
//! while the committer holds a batch: producers get no credit) and logs.
//! While a batch is held it only sleeps until the retry: requests wait in
//! the channel, as they always did. When the last handle is gone it closes
//! the log (a clean stop).
//! The whole-path simulation (`daemon/tests/path_sim.rs`) drives the same
//! committer on a simulated clock and file system.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use super::commit::{Batch, CommitConfig, Committer, Timer};
pub use super::commit::{FsyncPolicy, CHECKPOINT_EVERY};
use super::config::LogConfig;
use super::error::{Damage, SpoolError};
use super::fs::{RealFs, SpoolFs};
use super::index::SharedSegments;
use super::lock::DirLock;
use super::log::{Outcome, SharedProducers, StreamLog};
use super::marks::Cursor;
use super::reader::Reader;
use super::record::{now_us, Record};
use super::recoveries::{Kind, Recovery};
use crate::histogram::{Histogram, Snapshot};

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub log: LogConfig,
    pub fsync: FsyncPolicy,
    /// Stop acking when the file system has less free than this.
    pub min_free_bytes: u64,
    pub retention_bytes: Option<u64>,
    pub retention_age: Option<Duration>,
    /// Streams at most (dead-letter streams not counted): each costs a
    /// writer thread and a preallocated segment.
    pub max_streams: usize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            log: LogConfig::default(),
            fsync: FsyncPolicy::Always,
            min_free_bytes: 256 << 20,
            retention_bytes: None,
            retention_age: None,
            max_streams: 1024,
        }
    }
}

/// What a producer-facing layer needs to turn into credit.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// Records and bytes waiting for the writer.
    pub backlog_records: u64,
    pub backlog_bytes: u64,
    /// Appends are held: the disk is full or below the free-space floor.
    pub disk_full: bool,
    /// Duration of the last fdatasync, in microseconds.
    pub last_sync_us: u64,
    /// A consumer group with backpressure has reached its backlog limit:
    /// producers get no credit until it drains.
    pub held_by_consumers: bool,
}

type Reply<T> = oneshot::Sender<Result<T, SpoolError>>;

/// Runs on the writer thread when a batch is answered: must be quick and
/// must not block (send on a channel, bump a counter).
pub type Completion = Box<dyn FnOnce(Result<Vec<Outcome>, SpoolError>) + Send>;

/// Whom to answer for an append: a single record, a batch, or a callback.
enum Done {
    One(Reply<Outcome>),
    Many(Reply<Vec<Outcome>>),
    Call(Completion),
}

impl Done {
    fn send(self, r: Result<Vec<Outcome>, SpoolError>) {
        match self {
            Done::One(d) => {
                let _ = d.send(r.map(|v| v[0]));
            }
            Done::Many(d) => {
                let _ = d.send(r);
            }
            Done::Call(f) => f(r),
        }
    }
}

/// An append waiting in the committer: whom to answer, and since when it
/// waits (for the queue-wait histogram).
struct Waiter {
    done: Done,
    queued: Instant,
}

enum Request {
    Append {
        records: Vec<Record>,
        waiter: Waiter,
    },
    SetCursor {
        group: String,
        cursor: Cursor,
        done: Reply<()>,
    },
    RemoveCursor {
        group: String,
        done: Reply<()>,
    },
    SkipTo {
        to: u64,
        reason: String,
        done: Reply<()>,
    },
    Record {
        recovery: Recovery,
        done: Reply<()>,
    },
    /// Removes every record (see [`StreamLog::purge`]); answers the new
    /// first offset.
    Purge {
        done: Reply<u64>,
    },
    /// The stream is being deleted: the writer closes the log and stops,
    /// whatever handles are left; their requests are refused from then on.
    Retire {
        done: Reply<()>,
    },
}

/// Counters shared between the writer thread and handles.
#[derive(Debug)]
struct Gauges {
    backlog_records: AtomicU64,
    backlog_bytes: AtomicU64,
    disk_full: AtomicBool,
    last_sync_us: AtomicU64,
    /// Consumer groups holding producers back (at their backlog limit).
    consumer_holds: AtomicU64,
    /// Group commit durations (write and fdatasync), microseconds.
    sync_us: Histogram,
    /// The stages of a group commit, microseconds: an append's wait in the
    /// queue (until its batch's write began), the batch's write without its
    /// fdatasync, the fdatasync alone.
    queue_us: Histogram,
    write_us: Histogram,
    fdatasync_us: Histogram,
    /// Records per group commit.
    batch_records: Histogram,
    /// Damage found while the stream runs (by readers, consumer groups,
    /// the scrub): the stream still serves what is before it.
    damage: Mutex<Vec<Damage>>,
    /// What the scrub checked and when its last pass ended.
    scrubbed_bytes: AtomicU64,
    scrubbed_segments: AtomicU64,
    scrub_passes: AtomicU64,
    scrub_last_pass_us: AtomicU64,
    /// The stream is deleted (or being deleted): appends are refused.
    deleted: AtomicBool,
}

impl Default for Gauges {
    fn default() -> Self {
        Gauges {
            backlog_records: AtomicU64::new(0),
            backlog_bytes: AtomicU64::new(0),
            disk_full: AtomicBool::new(false),
            last_sync_us: AtomicU64::new(0),
            consumer_holds: AtomicU64::new(0),
            sync_us: Histogram::latency(),
            queue_us: Histogram::latency(),
            write_us: Histogram::latency(),
            fdatasync_us: Histogram::latency(),
            batch_records: Histogram::batch_sizes(),
            damage: Mutex::new(Vec::new()),
            scrubbed_bytes: AtomicU64::new(0),
            scrubbed_segments: AtomicU64::new(0),
            scrub_passes: AtomicU64::new(0),
            scrub_last_pass_us: AtomicU64::new(0),
            deleted: AtomicBool::new(false),
        }
    }
}

/// A handle on one stream. Cheap to clone; the writer thread stops when the
/// last handle is dropped.
#[derive(Clone)]
pub struct Stream {
    name: String,
    dir: PathBuf,
    fs: Arc<dyn SpoolFs>,
    tx: Sender<Request>,
    shared: SharedSegments,
    producers: SharedProducers,
    durable_end: watch::Receiver<u64>,
    gauges: Arc<Gauges>,
    recoveries: Arc<Mutex<Vec<Recovery>>>,
    log_config: LogConfig,
}

/// What the scrub has done on a stream.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
pub struct ScrubStats {
    pub bytes: u64,
    pub segments: u64,
    pub passes: u64,
    /// When the last whole pass ended (µs since the Unix epoch; 0: none yet).
    pub last_pass_us: u64,
}

impl Stream {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one message; the receiver resolves once it is durable (or a
    /// duplicate of a durable one). Works from async code (`.await`) and from
    /// plain threads (`blocking_recv`).
    pub fn append(
        &self,
        producer: u64,
        seq: u64,
        payload: Bytes,
    ) -> oneshot::Receiver<Result<Outcome, SpoolError>> {
        let (done, rx) = oneshot::channel();
        let record = Record {
            producer,
            seq,
            timestamp_us: now_us(),
            payload,
            key: None,
        };
        self.submit(vec![record], Done::One(done));
        rx
    }

    /// Appends records in order; resolves with one outcome per record once
    /// all are durable.
    pub fn append_batch(
        &self,
        records: Vec<Record>,
    ) -> oneshot::Receiver<Result<Vec<Outcome>, SpoolError>> {
        let (done, rx) = oneshot::channel();
        self.submit(records, Done::Many(done));
        rx
    }

    /// Appends records in order and calls `then` (on the writer thread)
    /// with one outcome per record once all are durable, or with the error.
    /// Cheaper than [`append_batch`](Self::append_batch) when the answer
    /// only needs forwarding: no task waits for it.
    pub fn append_batch_then(&self, records: Vec<Record>, then: Completion) {
        self.submit(records, Done::Call(then));
    }

    fn submit(&self, records: Vec<Record>, done: Done) {
        if self.gauges.deleted.load(Ordering::Relaxed) {
            // A session or group that still holds the handle of a deleted
            // stream: refused (a session closes, its producer learns why).
            done.send(Err(SpoolError::StreamDeleted(self.name.clone())));
            return;
        }
        let bytes: usize = records.iter().map(Record::encoded_len).sum();
        self.gauges
            .backlog_records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        self.gauges
            .backlog_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        let waiter = Waiter {
            done,
            queued: Instant::now(),
        };
        if let Err(mpsc::SendError(Request::Append { waiter, .. })) =
            self.tx.send(Request::Append { records, waiter })
        {
            waiter.done.send(Err(self.closed_error()));
        }
    }

    /// Why a request finds the writer gone.
    fn closed_error(&self) -> SpoolError {
        if self.gauges.deleted.load(Ordering::Relaxed) {
            SpoolError::StreamDeleted(self.name.clone())
        } else {
            SpoolError::Closed
        }
    }

    /// Removes every record of the stream, keeping its idempotence table
    /// (see [`StreamLog::purge`]); what was queued before is written (and
    /// purged) first. Resolves with the new first offset.
    pub fn purge(&self) -> oneshot::Receiver<Result<u64, SpoolError>> {
        let (done, rx) = oneshot::channel();
        if let Err(mpsc::SendError(Request::Purge { done })) = self.tx.send(Request::Purge { done })
        {
            let _ = done.send(Err(self.closed_error()));
        }
        rx
    }

    /// Whether the stream was deleted (this handle is of no use then).
    pub fn is_deleted(&self) -> bool {
        self.gauges.deleted.load(Ordering::Relaxed)
    }

    /// The highest durable seq of `producer` in this stream, read at once:
    /// never behind the writer's queue (an fdatasync, a full disk). Batches
    /// still queued may raise it a moment later; their records are then
    /// stored once all the same (the log drops what it already has).
    pub fn highest_seq(&self, producer: u64) -> Option<u64> {
        self.producers.read().unwrap().get(&producer).copied()
    }

    /// Every producer the idempotence table knows, with its highest stored
    /// seq, by producer id.
    pub fn producers(&self) -> Vec<(u64, u64)> {
        let mut all: Vec<(u64, u64)> = self
            .producers
            .read()
            .unwrap()
            .iter()
            .map(|(&p, &s)| (p, s))
            .collect();
        all.sort_unstable();
        all
    }

    /// Stores a consumer group's cursor durably.
    pub fn set_cursor(
        &self,
        group: &str,
        cursor: Cursor,
    ) -> oneshot::Receiver<Result<(), SpoolError>> {
        let (done, rx) = oneshot::channel();
        let _ = self.tx.send(Request::SetCursor {
            group: group.to_owned(),
            cursor,
            done,
        });
        rx
    }

    /// Removes a consumer group's cursor durably, after every cursor store
    /// asked for before (one queue serves both).
    pub fn remove_cursor(&self, group: &str) -> oneshot::Receiver<Result<(), SpoolError>> {
        let (done, rx) = oneshot::channel();
        let _ = self.tx.send(Request::RemoveCursor {
            group: group.to_owned(),
            done,
        });
        rx
    }

    /// Gives up the offsets from the stream's end to `to` (see
    /// [`StreamLog::skip_to`]): a repair of a consumer group whose state is
    /// past the end of a stream that lost records.
    pub fn skip_to(&self, to: u64, reason: &str) -> oneshot::Receiver<Result<(), SpoolError>> {
        let (done, rx) = oneshot::channel();
        let _ = self.tx.send(Request::SkipTo {
            to,
            reason: reason.to_owned(),
            done,
        });
        rx
    }

    /// Adds to the stream's record of recoveries (a consumer group's repair).
    pub fn record_recovery(&self, recovery: Recovery) -> oneshot::Receiver<Result<(), SpoolError>> {
        let (done, rx) = oneshot::channel();
        let _ = self.tx.send(Request::Record { recovery, done });
        rx
    }

    /// Reads a cursor stored with [`set_cursor`](Self::set_cursor), if
    /// there is one (the file's last complete version: stores are atomic).
    pub fn cursor(&self, group: &str) -> Option<Cursor> {
        let path = super::marks::cursor_path(&self.dir, group);
        let b = super::fs::read_all(&*self.fs, &path).ok()?;
        super::marks::decode_cursor(&b)
    }

    /// Records damage found while the stream runs (once per file and
    /// byte): `/health`, `/streams` and `/metrics` show it.
    pub fn report_damage(&self, d: &Damage) {
        let mut all = self.gauges.damage.lock().unwrap();
        if !all.iter().any(|x| x.file == d.file && x.byte == d.byte) {
            tracing::error!(stream = %self.name, damage = %d, "damage found in the spool");
            all.push(d.clone());
        }
    }

    /// Damage found while the stream runs.
    pub fn damage(&self) -> Vec<Damage> {
        self.gauges.damage.lock().unwrap().clone()
    }

    /// What recovery and repair did to the stream (from its `recoveries`).
    pub fn recoveries(&self) -> Vec<Recovery> {
        self.recoveries.lock().unwrap().clone()
    }

    /// Offsets given up by recoveries.
    pub fn lost_offsets(&self) -> u64 {
        self.recoveries
            .lock()
            .unwrap()
            .iter()
            .map(Recovery::lost)
            .sum()
    }

    /// Torn tails cut at starts.
    pub fn torn_tails(&self) -> u64 {
        let r = self.recoveries.lock().unwrap();
        r.iter().filter(|r| r.kind == Kind::TornTail).count() as u64
    }

    pub fn scrub_stats(&self) -> ScrubStats {
        let g = &self.gauges;
        ScrubStats {
            bytes: g.scrubbed_bytes.load(Ordering::Relaxed),
            segments: g.scrubbed_segments.load(Ordering::Relaxed),
            passes: g.scrub_passes.load(Ordering::Relaxed),
            last_pass_us: g.scrub_last_pass_us.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn count_scrubbed(&self, bytes: u64) {
        self.gauges
            .scrubbed_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        self.gauges
            .scrubbed_segments
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_scrub_pass(&self) {
        self.gauges.scrub_passes.fetch_add(1, Ordering::Relaxed);
        self.gauges
            .scrub_last_pass_us
            .store(now_us(), Ordering::Relaxed);
    }

    /// The segments as they are now (the scrub reads the sealed ones).
    pub fn segments(&self) -> Vec<super::index::SegmentMeta> {
        self.shared.read().unwrap().clone()
    }

    /// The settings its log was opened with.
    pub fn log_config(&self) -> &LogConfig {
        &self.log_config
    }

    pub fn health(&self) -> Health {
        Health {
            backlog_records: self.gauges.backlog_records.load(Ordering::Relaxed),
            backlog_bytes: self.gauges.backlog_bytes.load(Ordering::Relaxed),
            disk_full: self.gauges.disk_full.load(Ordering::Relaxed),
            last_sync_us: self.gauges.last_sync_us.load(Ordering::Relaxed),
            held_by_consumers: self.gauges.consumer_holds.load(Ordering::Relaxed) > 0,
        }
    }

    /// A consumer group starts (`true`) or stops (`false`) holding the
    /// stream's producers back; calls must pair up.
    pub fn hold_producers(&self, hold: bool) {
        if hold {
            self.gauges.consumer_holds.fetch_add(1, Ordering::Relaxed);
        } else {
            self.gauges.consumer_holds.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// How long each group commit's fdatasync took (seconds).
    pub fn sync_latency(&self) -> Snapshot {
        self.gauges.sync_us.snapshot()
    }

    /// How long appends waited for their group commit to begin.
    pub fn queue_latency(&self) -> Snapshot {
        self.gauges.queue_us.snapshot()
    }

    /// How long each group commit's write took, without its fdatasync.
    pub fn write_latency(&self) -> Snapshot {
        self.gauges.write_us.snapshot()
    }

    /// How long each group commit's fdatasync alone took.
    pub fn fdatasync_latency(&self) -> Snapshot {
        self.gauges.fdatasync_us.snapshot()
    }

    /// Records per group commit.
    pub fn batch_sizes(&self) -> Snapshot {
        self.gauges.batch_records.snapshot()
    }

    /// Offset after the last durable record.
    pub fn durable_end(&self) -> u64 {
        *self.durable_end.borrow()
    }

    /// Bytes of records in the stream.
    pub fn total_bytes(&self) -> u64 {
        self.shared.read().unwrap().iter().map(|s| s.len).sum()
    }

    /// Changes of the durable end, for tasks that wait for new records.
    pub fn watch_end(&self) -> watch::Receiver<u64> {
        self.durable_end.clone()
    }

    /// Offset of the oldest record retention kept.
    pub fn first_offset(&self) -> u64 {
        self.shared.read().unwrap().first().map_or(0, |s| s.base)
    }

    /// The spool's file system (consumer groups keep their state beside
    /// the stream's segments).
    pub fn fs(&self) -> &Arc<dyn SpoolFs> {
        &self.fs
    }

    /// A reader starting at `offset` (clamped to what retention kept).
    pub fn reader(&self, offset: u64) -> Reader {
        Reader::new(
            self.fs.clone(),
            self.name.clone(),
            self.shared.clone(),
            self.durable_end.clone(),
            offset,
        )
    }
}

/// All streams of one data directory.
pub struct Spool {
    fs: Arc<dyn SpoolFs>,
    root: PathBuf,
    config: SpoolConfig,
    streams: Mutex<HashMap<String, Stream>>,
    writers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Streams being deleted: not opened until their folders are gone.
    deleting: Mutex<std::collections::HashSet<String>>,
    /// The data folder's lock (real file systems only).
    lock: Option<DirLock>,
}

impl Spool {
    /// Opens the spool in `root` (creating it), on the real file system,
    /// and holds the folder's lock until dropped: one process per spool.
    pub fn open(root: &Path, config: SpoolConfig) -> Result<Spool, SpoolError> {
        let lock = DirLock::acquire(root)?;
        let mut spool = Self::open_with(Arc::new(RealFs), root, config)?;
        spool.lock = Some(lock);
        Ok(spool)
    }

    pub fn open_with(
        fs: Arc<dyn SpoolFs>,
        root: &Path,
        mut config: SpoolConfig,
    ) -> Result<Spool, SpoolError> {
        config.log.early_acks = config.fsync != FsyncPolicy::Always;
        let streams = root.join("streams");
        fs.create_dir_all(&streams)
            .map_err(SpoolError::io("create directory", &streams))?;
        if config.fsync != FsyncPolicy::Always {
            warn!(policy = ?config.fsync, "fsync is not `always`: acks are NOT durable, a crash loses acked messages");
        }
        remove_tombstones(&*fs, &streams)?;
        Ok(Spool {
            fs,
            root: root.to_path_buf(),
            config,
            streams: Mutex::new(HashMap::new()),
            writers: Mutex::new(Vec::new()),
            deleting: Mutex::new(Default::default()),
            lock: None,
        })
    }

    /// The settings the spool was opened with.
    pub fn config(&self) -> &SpoolConfig {
        &self.config
    }

    /// Names of the streams on disk.
    pub fn stream_names(&self) -> Vec<String> {
        self.fs
            .list(&self.root.join("streams"))
            .unwrap_or_default()
            .into_iter()
            .filter(|n| valid_name(n))
            .collect()
    }

    /// Opens (recovering) or creates a stream and starts its writer.
    pub fn stream(&self, name: &str) -> Result<Stream, SpoolError> {
        check_name(name)?;
        let mut streams = self.streams.lock().unwrap();
        self.open_in(&mut streams, name)
    }

    /// Creates stream `name`, empty, now: refused if it exists (on disk).
    pub fn create(&self, name: &str) -> Result<Stream, SpoolError> {
        check_name(name)?;
        let mut streams = self.streams.lock().unwrap();
        if self.stream_names().iter().any(|n| n == name) {
            return Err(SpoolError::StreamExists(name.to_owned()));
        }
        self.open_in(&mut streams, name)
    }

    /// Deletes stream `name` and its dead-letter stream, with everything
    /// in their folders (their consumer groups' state too; stop the
    /// groups first). Blocks until their writers stopped and the files are
    /// gone. Crash-safe: each folder is renamed to a tombstone (a name
    /// starting with `.`, never taken for a stream) and the rename made
    /// durable before anything in it is removed; a start removes the
    /// tombstones a crash left. The dead-letter stream goes first, so a
    /// crash between the two leaves a stream without dead letters, never
    /// dead letters without their stream. Returns whether `name` existed.
    pub fn delete(&self, name: &str) -> Result<bool, SpoolError> {
        check_name(name)?;
        let root = self.root.join("streams");
        let dlq = format!("{name}.dlq");
        // Taken out of the map and marked: nobody opens them again while
        // their writers stop (which the map's lock is not held for: a
        // writer holding a batch for disk space would hold every stream).
        let (names, handles) = {
            let mut streams = self.streams.lock().unwrap();
            let on_disk = self.stream_names();
            if !on_disk.iter().any(|n| n == name) {
                return Ok(false);
            }
            let mut deleting = self.deleting.lock().unwrap();
            if deleting.contains(name) {
                return Err(SpoolError::StreamDeleted(name.to_owned()));
            }
            let names: Vec<String> = [dlq.as_str(), name]
                .into_iter()
                .filter(|n| on_disk.iter().any(|d| d == n))
                .map(str::to_owned)
                .collect();
            deleting.extend(names.iter().cloned());
            let handles: Vec<Stream> = names.iter().filter_map(|n| streams.remove(n)).collect();
            (names, handles)
        };
        let result = self.entomb(&root, &names, handles);
        {
            let mut deleting = self.deleting.lock().unwrap();
            for n in &names {
                deleting.remove(n);
            }
        }
        let tombs = result?;
        // The names are free from here: what is left is only files.
        for tomb in &tombs {
            remove_tree(&*self.fs, tomb)?;
        }
        self.fs
            .sync_dir(&root)
            .map_err(SpoolError::io("fsync directory", &root))?;
        info!(stream = name, "stream deleted");
        Ok(true)
    }

    /// Stops the writers of streams being deleted (their handles) and
    /// renames their folders (`names`, the dead-letter stream first) to
    /// tombstones, durably; returns the tombstones.
    fn entomb(
        &self,
        root: &Path,
        names: &[String],
        handles: Vec<Stream>,
    ) -> Result<Vec<PathBuf>, SpoolError> {
        for s in handles {
            s.gauges.deleted.store(true, Ordering::Relaxed);
            let (done, rx) = oneshot::channel();
            if s.tx.send(Request::Retire { done }).is_ok() {
                // Err: the writer stopped already (its log closed).
                if let Ok(r) = rx.blocking_recv() {
                    r?;
                }
            }
        }
        let mut tombs = Vec::new();
        for n in names {
            let tomb = root.join(format!(
                "{TOMBSTONE}{}-{n}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos()
            ));
            let dir = root.join(n);
            self.fs
                .rename(&dir, &tomb)
                .map_err(SpoolError::io("rename", &dir))?;
            self.fs
                .sync_dir(root)
                .map_err(SpoolError::io("fsync directory", root))?;
            tombs.push(tomb);
        }
        Ok(tombs)
    }

    /// [`stream`](Self::stream), with the map of open streams held.
    fn open_in(
        &self,
        streams: &mut HashMap<String, Stream>,
        name: &str,
    ) -> Result<Stream, SpoolError> {
        if let Some(s) = streams.get(name) {
            return Ok(s.clone());
        }
        if self.deleting.lock().unwrap().contains(name) {
            return Err(SpoolError::StreamDeleted(name.to_owned()));
        }
        let dir = self.root.join("streams").join(name);
        let on_disk = self.stream_names();
        if !on_disk.iter().any(|n| n == name) && !name.ends_with(".dlq") {
            let streams = on_disk.iter().filter(|n| !n.ends_with(".dlq")).count();
            if streams >= self.config.max_streams {
                return Err(SpoolError::TooManyStreams {
                    max: self.config.max_streams,
                });
            }
        }
        let log = StreamLog::open(self.fs.clone(), &dir, name, self.config.log.clone())?;
        // Unbounded as a channel, bounded by what may be asked of it:
        // appends by the credit producers hold (credit is zero once the
        // backlog counted in `Health` reaches its limit), cursor and
        // recovery writes by the stream's consumer groups (one in flight
        // each), and the rest by operators. A full disk holds appends here
        // without growing it further: producers get no credit meanwhile.
        let (tx, rx) = mpsc::channel();
        let (end_tx, end_rx) = watch::channel(log.next_offset());
        let shared = log.shared();
        let producers = log.producers();
        let recoveries = log.recoveries();
        let gauges = Arc::new(Gauges::default());
        let writer = Writer::new(log, &self.config, gauges.clone(), end_tx);
        // The thread ends by itself once every handle (sender) is gone, after
        // the appends already queued.
        let thread = std::thread::Builder::new()
            .name(format!("spool-{name}"))
            .spawn(move || writer.run(rx))
            .map_err(SpoolError::io("spawn writer for", &dir))?;
        self.writers.lock().unwrap().push(thread);
        let s = Stream {
            name: name.to_owned(),
            dir,
            fs: self.fs.clone(),
            tx,
            shared,
            producers,
            durable_end: end_rx,
            gauges,
            recoveries,
            log_config: self.config.log.clone(),
        };
        streams.insert(name.to_owned(), s.clone());
        Ok(s)
    }

    /// Streams opened so far.
    pub fn open_streams(&self) -> Vec<Stream> {
        self.streams.lock().unwrap().values().cloned().collect()
    }

    /// Names of the streams opened so far, in order.
    pub fn open_stream_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.streams.lock().unwrap().keys().cloned().collect();
        v.sort();
        v
    }

    /// The stream `name` if it is open (never opens one).
    pub fn open_stream(&self, name: &str) -> Option<Stream> {
        self.streams.lock().unwrap().get(name).cloned()
    }

    /// Stops every stream's writer after the appends already queued, and
    /// waits for them. Every other `Stream` handle must be dropped first.
    /// The data folder's file system: size and free bytes (metrics).
    pub fn space(&self) -> std::io::Result<super::fs::Space> {
        self.fs.space(&self.root)
    }

    pub fn shutdown(&self) {
        self.streams.lock().unwrap().clear();
        for t in self.writers.lock().unwrap().drain(..) {
            let _ = t.join();
        }
    }
}

/// How a deleted stream's folder is renamed before its files are removed
/// (`.deleted-<time>-<name>`): the leading dot makes it no stream name.
pub const TOMBSTONE: &str = ".deleted-";

/// Removes the tombstones of deletions a crash cut short.
fn remove_tombstones(fs: &dyn SpoolFs, streams: &Path) -> Result<(), SpoolError> {
    let names = fs.list(streams).map_err(SpoolError::io("list", streams))?;
    let mut removed = false;
    for n in names.iter().filter(|n| n.starts_with(TOMBSTONE)) {
        warn!(folder = %n, "removing what a stream deletion cut short by a stop left");
        remove_tree(fs, &streams.join(n))?;
        removed = true;
    }
    if removed {
        fs.sync_dir(streams)
            .map_err(SpoolError::io("fsync directory", streams))?;
    }
    Ok(())
}

/// Removes a folder and everything below it (a stream's folder is a few
/// levels deep: groups, cursors, files set aside).
fn remove_tree(fs: &dyn SpoolFs, dir: &Path) -> Result<(), SpoolError> {
    for n in fs.list(dir).map_err(SpoolError::io("list", dir))? {
        let path = dir.join(n);
        if fs.remove_file(&path).is_err() {
            // A folder (unlink refuses those).
            remove_tree(fs, &path)?;
        }
    }
    fs.remove_dir(dir)
        .map_err(SpoolError::io("remove directory", dir))
}

/// Longest stream name: its dead-letter stream's name (`<name>.dlq`)
/// must fit in the file system's 255 bytes too. A dead-letter stream's
/// own name is up to 255.
pub const MAX_STREAM_NAME: usize = 255 - ".dlq".len();

fn valid_name(n: &str) -> bool {
    let max = if n.ends_with(".dlq") {
        255
    } else {
        MAX_STREAM_NAME
    };
    !n.is_empty()
        && n.len() <= max
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Checks a stream name (it becomes a folder name).
pub fn check_name(n: &str) -> Result<(), SpoolError> {
    if valid_name(n) {
        Ok(())
    } else {
        Err(SpoolError::BadStreamName(n.to_owned()))
    }
}

/// The I/O shell around the [`Committer`]: the thread that receives
/// requests, appends the committer's batches to the log (or, below the
/// free-space floor, tells the committer the disk is full without
/// appending), answers waiters, and runs the timers the committer keeps
/// (the retry of a held batch among them).
struct Writer {
    log: StreamLog,
    committer: Committer<Waiter>,
    min_free_bytes: u64,
    retention_bytes: Option<u64>,
    retention_age: Option<Duration>,
    gauges: Arc<Gauges>,
    durable_end: watch::Sender<u64>,
    /// The stream is being deleted: whom to answer once the log is closed.
    retired: Option<Reply<()>>,
}

impl Writer {
    fn new(
        log: StreamLog,
        config: &SpoolConfig,
        gauges: Arc<Gauges>,
        durable_end: watch::Sender<u64>,
    ) -> Self {
        let retention = config.retention_bytes.is_some() || config.retention_age.is_some();
        let commit = CommitConfig::new(config.log.max_batch_bytes, config.fsync, retention);
        Writer {
            log,
            committer: Committer::new(commit, Instant::now()),
            min_free_bytes: config.min_free_bytes,
            retention_bytes: config.retention_bytes,
            retention_age: config.retention_age,
            gauges,
            durable_end,
            retired: None,
        }
    }

    fn run(mut self, rx: Receiver<Request>) {
        loop {
            let now = Instant::now();
            while let Some(timer) = self.committer.handle_timeout(now) {
                self.on_timer(timer);
            }
            if self.committer.holding() {
                // A batch is held (the disk is full): nothing else is
                // taken until its retry succeeds; requests wait in the
                // channel, producers get no credit (the gauge).
                if let Some(at) = self.committer.poll_timeout() {
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                }
                continue;
            }
            // Sleeps until a request comes or the next timer is due; with
            // no timer armed, until a request comes.
            let first = match self.committer.poll_timeout() {
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            let first = match first {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            // Take what is queued, up to the batch bound.
            let mut next = Some(first);
            while let Some(req) = next.take() {
                self.handle(req);
                if self.committer.has_room() {
                    next = rx.try_recv().ok();
                }
            }
            if let Some(batch) = self.committer.take_batch() {
                self.commit(batch);
            }
            if self.retired.is_some() {
                break;
            }
        }
        // A clean stop: synced, and a checkpoint that says the log ends here.
        let name = self.log.name().to_owned();
        let closed = self.log.close();
        if let Err(e) = &closed {
            error!(stream = %name, error = %e, "closing the log failed: the next start checks it as after a crash");
        }
        if let Some(done) = self.retired {
            // Whatever came after the deletion began is refused, each
            // waiter answered (a session's callback must run).
            while let Ok(req) = rx.try_recv() {
                refuse(req, &name);
            }
            let _ = done.send(closed);
        }
    }

    /// An append joins the batch being gathered; anything else is done at
    /// once, in the order it came.
    fn handle(&mut self, req: Request) {
        match req {
            Request::Append { records, waiter } => self.committer.push(records, waiter),
            Request::SetCursor {
                group,
                cursor,
                done,
            } => {
                let _ = done.send(self.log.set_cursor(&group, cursor));
            }
            Request::RemoveCursor { group, done } => {
                let _ = done.send(self.log.remove_cursor(&group));
            }
            Request::Record { recovery, done } => {
                let _ = done.send(self.log.record(recovery));
            }
            Request::Purge { done } => {
                // What was queued before the purge is written first, and
                // purged with the rest.
                if let Some(batch) = self.committer.take_batch() {
                    self.commit(batch);
                }
                let _ = done.send(self.log.purge());
            }
            Request::Retire { done } => self.retired = Some(done),
            Request::SkipTo { to, reason, done } => {
                let r = self.log.skip_to(to, Kind::Repair, &reason);
                if r.is_ok() {
                    let _ = self.durable_end.send(self.log.next_offset());
                    self.committer.durable_end_moved();
                }
                let _ = done.send(r);
            }
        }
    }

    fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::Retry => {
                if let Some(batch) = self.committer.take_batch() {
                    self.commit(batch);
                }
            }
            Timer::Sync => {
                if let Err(e) = self.log.sync() {
                    error!(stream = self.log.name(), error = %e, "periodic fdatasync failed");
                }
            }
            Timer::Housekeeping => self.housekeeping(),
            Timer::Checkpoint => {
                if self.log.checkpoint_behind() {
                    if let Err(e) = self.log.checkpoint(false) {
                        error!(stream = self.log.name(), error = %e, "writing the checkpoint failed");
                        // Tried again a period later.
                        self.committer.durable_end_moved();
                    }
                }
            }
        }
    }

    /// Writes one batch and answers its waiters, unless the disk is full
    /// or below the free-space floor: then the committer holds the batch
    /// (nobody is answered, nothing dropped) and gives it back on its
    /// retry timer.
    fn commit(&mut self, batch: Batch<Waiter>) {
        let (records, bytes, sync) = (batch.records().len(), batch.bytes(), batch.sync());
        let mut enospc = false;
        let mut free_at_hold = 0;
        let mut started = Instant::now();
        let result = if let Some(free) = self.free_below_floor() {
            free_at_hold = free;
            Err(SpoolError::DiskFull {
                free,
                floor: self.min_free_bytes,
            })
        } else {
            started = Instant::now();
            let from = self.log.next_offset();
            let appended = self.log.append(batch.records(), sync);
            match &appended {
                // ENOSPC: nothing was acked; the log is cut back to its
                // last durable end before the retry.
                Err(SpoolError::DiskFull { .. }) => enospc = true,
                other => {
                    if let Ok(outcomes) = other {
                        debug_assert_contiguous(from, outcomes, records, self.log.next_offset());
                    }
                    let us = started.elapsed().as_micros() as u64;
                    let fdatasync = self.log.last_sync_time().as_micros() as u64;
                    if sync {
                        self.gauges.last_sync_us.store(us, Ordering::Relaxed);
                        self.gauges.sync_us.observe(us);
                        self.gauges.fdatasync_us.observe(fdatasync);
                    }
                    self.gauges.write_us.observe(us.saturating_sub(fdatasync));
                    self.gauges.batch_records.observe(records as u64);
                }
            }
            appended
        };
        let answers = self.committer.finish(batch, result, Instant::now());
        if self.committer.holding() {
            debug_assert_eq!(answers.size_hint().0, 0, "a held batch answers nobody");
            // Said once, when the hold begins, with what began it: the
            // file system refused a write, or free space fell below the
            // configured floor before one was tried.
            if !self.gauges.disk_full.swap(true, Ordering::Relaxed) {
                if enospc {
                    warn!(
                        stream = self.log.name(),
                        "disk full: holding appends until space returns"
                    );
                } else {
                    warn!(
                        stream = self.log.name(),
                        free = free_at_hold,
                        floor = self.min_free_bytes,
                        "free space below spool.min_free_bytes: holding appends until space returns"
                    );
                }
            }
            return;
        }
        if self.gauges.disk_full.swap(false, Ordering::Relaxed) {
            warn!(
                stream = self.log.name(),
                "disk space is back: appends resume"
            );
        }
        self.gauges
            .backlog_records
            .fetch_sub(records as u64, Ordering::Relaxed);
        self.gauges
            .backlog_bytes
            .fetch_sub(bytes as u64, Ordering::Relaxed);
        match answers.result() {
            Ok(_) => {
                let _ = self.durable_end.send(self.log.next_offset());
            }
            Err(e) => error!(stream = self.log.name(), error = %e, "append failed"),
        }
        for (waiter, answer) in answers {
            let waited = started.saturating_duration_since(waiter.queued);
            self.gauges.queue_us.observe_duration(waited);
            waiter.done.send(answer);
        }
    }

    /// The free space, if the floor is set and it is below.
    fn free_below_floor(&self) -> Option<u64> {
        if self.min_free_bytes == 0 {
            return None;
        }
        match self.log.fs().available_space(self.log.dir()) {
            Ok(free) => (free < self.min_free_bytes).then_some(free),
            Err(_) => None,
        }
    }

    fn housekeeping(&mut self) {
        let (bytes, age) = (self.retention_bytes, self.retention_age);
        if bytes.is_none() && age.is_none() {
            return;
        }
        let min_ts = age.map(|a| now_us().saturating_sub(a.as_micros() as u64));
        if let Err(e) = self.log.enforce_retention(bytes, min_ts) {
            error!(stream = self.log.name(), error = %e, "retention failed");
        }
    }
}

/// Answers a request sent to a stream being deleted.
fn refuse(req: Request, name: &str) {
    let e = || SpoolError::StreamDeleted(name.to_owned());
    match req {
        Request::Append { waiter, .. } => waiter.done.send(Err(e())),
        Request::SetCursor { done, .. }
        | Request::RemoveCursor { done, .. }
        | Request::SkipTo { done, .. }
        | Request::Record { done, .. }
        | Request::Retire { done } => {
            let _ = done.send(Err(e()));
        }
        Request::Purge { done } => {
            let _ = done.send(Err(e()));
        }
    }
}

/// A successful append answers every record, and stores the new ones at
/// contiguous offsets from where the log ended before (`from`) to where it
/// ends now (`to`): no offset skipped, none given twice.
fn debug_assert_contiguous(from: u64, outcomes: &[Outcome], records: usize, to: u64) {
    if !cfg!(debug_assertions) {
        return;
    }
    assert_eq!(outcomes.len(), records, "append: one outcome per record");
    let mut next = from;
    for o in outcomes {
        if let Outcome::Stored { offset } = o {
            assert_eq!(*offset, next, "append: stored offsets not contiguous");
            next += 1;
        }
    }
    assert_eq!(
        next, to,
        "append: the log's end is not after its last record"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_leave_room_for_their_dead_letter_stream() {
        let longest = "x".repeat(MAX_STREAM_NAME);
        check_name(&longest).unwrap();
        check_name(&format!("{longest}.dlq")).unwrap();
        let e = check_name(&"x".repeat(MAX_STREAM_NAME + 1)).unwrap_err();
        assert!(
            e.to_string().contains("1-251") && e.to_string().contains(".dlq"),
            "{e}"
        );
        assert!(check_name(&format!("{}.dlq", "x".repeat(MAX_STREAM_NAME + 1))).is_err());
    }

    /// Each append is timed in its queue, and each group commit's write
    /// and fdatasync apart; with fsync = "never" no fdatasync is counted.
    #[test]
    fn group_commit_stages_are_observed() {
        use super::super::simfs::SimFs;
        for (fsync, syncs) in [(FsyncPolicy::Always, 3), (FsyncPolicy::Never, 0)] {
            let config = SpoolConfig {
                min_free_bytes: 0,
                fsync,
                ..SpoolConfig::default()
            };
            let spool = Spool::open_with(Arc::new(SimFs::new()), Path::new("/d"), config).unwrap();
            let s = spool.stream("s").unwrap();
            for seq in 1..=3 {
                let o = s.append(1, seq, Bytes::from_static(b"m")).blocking_recv();
                assert!(matches!(o, Ok(Ok(Outcome::Stored { .. }))), "{o:?}");
            }
            assert_eq!(s.queue_latency().count, 3);
            assert_eq!(s.write_latency().count, 3);
            assert_eq!(s.fdatasync_latency().count, syncs, "{fsync:?}");
            assert_eq!(s.sync_latency().count, syncs, "{fsync:?}");
        }
    }

    /// The writer sleeps when idle, and the checkpoint still follows the
    /// durable end within a period. (Before the committer, a checkpoint
    /// not yet due when the last batch was written was never written
    /// until the next request, and the writer spun on a zero timeout
    /// meanwhile.)
    #[test]
    fn an_idle_stream_checkpoints_its_durable_end() {
        use super::super::checkpoint::{self, Loaded};
        use super::super::simfs::SimFs;
        let fs = SimFs::new();
        let config = SpoolConfig {
            min_free_bytes: 0,
            ..SpoolConfig::default()
        };
        let spool = Spool::open_with(Arc::new(fs.clone()), Path::new("/d"), config).unwrap();
        let s = spool.stream("s").unwrap();
        for seq in 1..=3 {
            let o = s.append(1, seq, Bytes::from_static(b"m")).blocking_recv();
            assert!(matches!(o, Ok(Ok(Outcome::Stored { .. }))), "{o:?}");
        }
        let end = |fs: &SimFs| match checkpoint::load(fs, s.dir()).unwrap() {
            Loaded::Found { checkpoint, .. } => checkpoint.end,
            other => panic!("{other:?}"),
        };
        let started = Instant::now();
        while end(&fs) != 3 {
            assert!(
                started.elapsed() < 10 * CHECKPOINT_EVERY,
                "the checkpoint still says {} after {:?} idle",
                end(&fs),
                started.elapsed()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(s);
        spool.shutdown();
    }

    /// The shell's part of the hold: while the disk is full (ENOSPC) or
    /// below the floor, an append is not answered and the gauge is set;
    /// what comes after waits behind it; once space returns both are
    /// stored, in order, and the gauge clears.
    #[test]
    fn a_full_disk_holds_appends_unanswered_until_space_returns() {
        use super::super::commit::HOLD_RETRY;
        use super::super::simfs::SimFs;
        use tokio::sync::oneshot::error::TryRecvError;
        // (floor, headroom): ENOSPC with no floor; the floor before any
        // write would fail.
        for (floor, headroom) in [(0, 0), (1000, 500)] {
            let fs = SimFs::new();
            let config = SpoolConfig {
                min_free_bytes: floor,
                ..SpoolConfig::default()
            };
            let spool = Spool::open_with(Arc::new(fs.clone()), Path::new("/d"), config).unwrap();
            let s = spool.stream("s").unwrap();
            let o = s.append(1, 1, Bytes::from_static(b"m")).blocking_recv();
            assert!(matches!(o, Ok(Ok(Outcome::Stored { offset: 0 }))), "{o:?}");
            fs.set_capacity(Some(fs.used() + headroom));
            let mut first = s.append(1, 2, Bytes::from(vec![2; 100]));
            let started = Instant::now();
            while !s.health().disk_full {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "floor {floor}: no hold"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            let mut second = s.append(1, 3, Bytes::from(vec![3; 100]));
            // Two retries and more: still held, nobody answered.
            std::thread::sleep(3 * HOLD_RETRY);
            assert!(s.health().disk_full, "floor {floor}");
            assert_eq!(first.try_recv().unwrap_err(), TryRecvError::Empty);
            assert_eq!(second.try_recv().unwrap_err(), TryRecvError::Empty);
            assert_eq!(s.durable_end(), 1);
            fs.set_capacity(None);
            let o = first.blocking_recv();
            assert!(matches!(o, Ok(Ok(Outcome::Stored { offset: 1 }))), "{o:?}");
            let o = second.blocking_recv();
            assert!(matches!(o, Ok(Ok(Outcome::Stored { offset: 2 }))), "{o:?}");
            assert!(!s.health().disk_full);
            assert_eq!(s.health().backlog_records, 0);
            drop(s);
            spool.shutdown();
        }
    }

    fn real_spool(dir: &Path) -> Spool {
        let config = SpoolConfig {
            min_free_bytes: 0,
            ..SpoolConfig::default()
        };
        Spool::open(dir, config).unwrap()
    }

    fn stored(o: Result<Result<Outcome, SpoolError>, oneshot::error::RecvError>) -> Outcome {
        o.expect("answered").expect("no error")
    }

    /// A purge removes every record and moves the first offset to the
    /// end, and the idempotence table stays: a resend of a (producer, seq)
    /// stored before the purge is a duplicate, before and after a restart;
    /// new records continue the offsets.
    #[test]
    fn a_purge_keeps_the_idempotence_table_and_never_reuses_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let spool = real_spool(dir.path());
        let s = spool.stream("s").unwrap();
        for seq in 1..=5 {
            let o = stored(s.append(7, seq, Bytes::from_static(b"m")).blocking_recv());
            assert_eq!(o, Outcome::Stored { offset: seq - 1 });
        }
        assert_eq!(s.purge().blocking_recv().unwrap().unwrap(), 5);
        assert_eq!((s.first_offset(), s.durable_end()), (5, 5));
        assert!(
            s.reader(0).next_record().unwrap().is_none(),
            "a record is left"
        );
        let o = stored(s.append(7, 3, Bytes::from_static(b"m")).blocking_recv());
        assert_eq!(
            o,
            Outcome::Duplicate,
            "a resend after the purge was stored again"
        );
        // Purging an empty stream changes nothing.
        assert_eq!(s.purge().blocking_recv().unwrap().unwrap(), 5);
        drop(s);
        spool.shutdown();
        drop(spool);

        let spool = real_spool(dir.path());
        let s = spool.stream("s").unwrap();
        assert_eq!((s.first_offset(), s.durable_end()), (5, 5));
        assert_eq!(s.highest_seq(7), Some(5));
        let o = stored(s.append(7, 5, Bytes::from_static(b"m")).blocking_recv());
        assert_eq!(o, Outcome::Duplicate, "after a restart");
        let o = stored(s.append(7, 6, Bytes::from_static(b"m")).blocking_recv());
        assert_eq!(o, Outcome::Stored { offset: 5 });
        drop(s);
        spool.shutdown();
    }

    /// A deleted stream's folder and its dead-letter stream are gone, a
    /// handle still held is refused, and the name makes a fresh stream.
    #[test]
    fn a_deleted_stream_is_gone_and_its_name_makes_a_fresh_one() {
        let dir = tempfile::tempdir().unwrap();
        let spool = real_spool(dir.path());
        let s = spool.stream("s").unwrap();
        let dlq = spool.stream("s.dlq").unwrap();
        stored(s.append(1, 1, Bytes::from_static(b"m")).blocking_recv());
        stored(dlq.append(1, 1, Bytes::from_static(b"d")).blocking_recv());
        assert!(matches!(
            spool.create("s"),
            Err(SpoolError::StreamExists(_))
        ));
        assert!(spool.delete("s").unwrap());
        assert!(
            spool.stream_names().is_empty(),
            "{:?}",
            spool.stream_names()
        );
        let left: Vec<_> = std::fs::read_dir(dir.path().join("streams"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let o = s
            .append(1, 2, Bytes::from_static(b"m"))
            .blocking_recv()
            .unwrap();
        assert!(matches!(o, Err(SpoolError::StreamDeleted(_))), "{o:?}");
        assert!(!spool.delete("s").unwrap(), "deleted twice");
        let fresh = spool.create("s").unwrap();
        assert_eq!((fresh.first_offset(), fresh.durable_end()), (0, 0));
        assert_eq!(fresh.highest_seq(1), None);
        let o = stored(fresh.append(1, 1, Bytes::from_static(b"m")).blocking_recv());
        assert_eq!(o, Outcome::Stored { offset: 0 });
        drop((s, dlq, fresh));
        spool.shutdown();
    }

    /// A tombstone a crash left (the rename done, the removal not) is
    /// removed at the next start and never taken for a stream.
    #[test]
    fn a_start_removes_the_tombstones_of_cut_short_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let tomb = dir.path().join("streams").join(format!("{TOMBSTONE}1-s"));
        std::fs::create_dir_all(tomb.join("groups").join("g")).unwrap();
        std::fs::write(tomb.join("groups").join("g").join("state"), b"x").unwrap();
        std::fs::write(tomb.join("checkpoint"), b"x").unwrap();
        let spool = real_spool(dir.path());
        assert!(!tomb.exists());
        assert!(spool.stream_names().is_empty());
        spool.shutdown();
    }
}
