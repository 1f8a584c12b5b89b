//! The group commit, sans I/O: what the spool writer decides, without the
//! writing. No clock is read, no thread or channel is held, no file is
//! touched: time comes in as an argument, and the work to do goes out as
//! return values, so the daemon's writer thread (`writer.rs`) and the
//! whole-path simulation (`daemon/tests/path_sim.rs`) run the same logic.
//!
//! A [`Committer`] is given appends (records and a waiter token `W`: a
//! oneshot in the daemon, a session in the simulation) with
//! [`push`](Committer::push), as long as [`has_room`](Committer::has_room)
//! says the batch being gathered is below `max_batch_bytes` (a request is
//! never split: one larger than the bound goes alone). Then:
//!
//! 1. [`take_batch`](Committer::take_batch) gives the [`Batch`] to write:
//!    every record of the gathered requests in the order they came, their
//!    bytes, and whether the policy wants it fdatasynced. One batch is out
//!    at a time.
//! 2. The caller appends it (`StreamLog::append`, one commit per batch).
//! 3. [`finish`](Committer::finish) takes the append's result and gives
//!    back [`Answers`]: each waiter with its own outcomes, in order, or a
//!    copy of the error for every waiter of the batch.
//!
//! **The disk-full hold.** A full disk stops acks; it never fails or drops
//! an append. When the append failed with [`SpoolError::DiskFull`]
//! (ENOSPC: the log cut itself back to its durable end), or the caller
//! found the free space below its floor and did not append (it finishes
//! with `DiskFull { free, floor }`), `finish` answers nobody: the batch is
//! *held* ([`holding`](Committer::holding) says so, for the gauge that
//! turns producers' credit to zero) and [`Timer::Retry`] is armed
//! ([`HOLD_RETRY`]). When it fires, [`take_batch`](Committer::take_batch)
//! gives the same batch again, whole, before anything gathered since;
//! the caller checks the floor and appends it. The hold ends with the
//! first `finish` of another result, which answers the batch's waiters as
//! any other. Meanwhile requests may still be pushed (they are the next
//! batch), and no other timer fires: the fdatasync, checkpoint and
//! housekeeping wait until the hold ends, as the writer thread always did
//! (it did nothing else while it held a batch).
//!
//! It also owns the writer's timers, one table of deadlines:
//! [`poll_timeout`](Committer::poll_timeout) says when the next is due and
//! [`handle_timeout`](Committer::handle_timeout) which one is due now
//! ([`Timer`]): the retry of a held batch, an fdatasync (`fsync =
//! "interval"`, once written data is unsynced), the checkpoint (at most
//! every [`CHECKPOINT_EVERY`] once the durable end may have moved),
//! housekeeping (retention, every [`HOUSEKEEPING_EVERY`] when configured).
//! With nothing due, there is no deadline: an idle writer sleeps.
//!
//! What is left to the caller: the I/O itself (the free-space check
//! included), answering waiters, metrics and logs.

use std::mem;
use std::time::{Duration, Instant};

use super::error::SpoolError;
use super::log::Outcome;
use super::record::Record;

/// When appends become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// One fdatasync per batch, before any ack: the promise holds.
    Always,
    /// Acks at once, fdatasync on a timer: a crash loses up to this much.
    Interval(Duration),
    /// Never fdatasync: for benchmarks only.
    Never,
}

/// How often at most the checkpoint follows the durable end. It bounds
/// what a crash can leave unproven: damage to records made durable after
/// the last checkpoint, in the last commit written, cannot be told from a
/// torn write (such a tail is cut and set aside, not silently dropped).
/// One more small fdatasync per period, on another file.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// How often housekeeping (retention) runs, when there is any to do.
pub const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(100);

/// How long a held batch waits before it is appended again, while the
/// disk is full or below the free-space floor.
pub const HOLD_RETRY: Duration = Duration::from_millis(100);

/// A committer's settings.
#[derive(Debug, Clone)]
pub struct CommitConfig {
    /// Requests are gathered into a batch while it holds fewer bytes
    /// (records as encoded) than this.
    pub max_batch_bytes: usize,
    pub fsync: FsyncPolicy,
    /// Least time between two checkpoint timers ([`CHECKPOINT_EVERY`]).
    pub checkpoint_every: Duration,
    /// Housekeeping's period; `None`: no housekeeping timer.
    pub housekeeping_every: Option<Duration>,
    /// How long a held batch waits before its retry ([`HOLD_RETRY`]).
    pub hold_retry: Duration,
}

impl CommitConfig {
    /// The writer's settings: the given bound and policy, the standard
    /// periods, housekeeping only if there is some (`housekeeping`).
    pub fn new(max_batch_bytes: usize, fsync: FsyncPolicy, housekeeping: bool) -> Self {
        CommitConfig {
            max_batch_bytes,
            fsync,
            checkpoint_every: CHECKPOINT_EVERY,
            housekeeping_every: housekeeping.then_some(HOUSEKEEPING_EVERY),
            hold_retry: HOLD_RETRY,
        }
    }
}

/// What is due, from [`Committer::handle_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Append the held batch again ([`Committer::take_batch`] gives it):
    /// the disk was full or below the floor. The only timer that fires
    /// while a batch is held.
    Retry,
    /// fdatasync what was written (`fsync = "interval"`).
    Sync,
    /// Retention and the like.
    Housekeeping,
    /// Write the checkpoint if it is behind the durable end (the caller
    /// asks the log: a roll may have written it already).
    Checkpoint,
}

impl Timer {
    /// The order in which timers due at once fire: an fdatasync first, so
    /// that a checkpoint due at the same time covers what it made durable.
    /// (A retry is armed only while a batch is held, when nothing else
    /// fires.)
    const ORDER: [Timer; 4] = [
        Timer::Retry,
        Timer::Sync,
        Timer::Housekeeping,
        Timer::Checkpoint,
    ];
}

/// A batch to append: the records of one or more requests, in the order
/// the requests came and each request's records in its order.
#[derive(Debug)]
pub struct Batch<W> {
    records: Vec<Record>,
    /// Each request's waiter and how many of `records` are its own.
    waiters: Vec<(W, usize)>,
    bytes: usize,
    sync: bool,
}

impl<W> Batch<W> {
    /// The records to append, as one `StreamLog::append`.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Their encoded size (what the backlog counted).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the append must fdatasync before it returns (`always`).
    pub fn sync(&self) -> bool {
        self.sync
    }

    /// Each request's waiter and its number of records, in order.
    pub fn waiters(&self) -> impl Iterator<Item = (&W, usize)> {
        self.waiters.iter().map(|(w, n)| (w, *n))
    }
}

/// The vector that gathers requests is kept between batches only up to
/// this many entries, so that one burst does not pin its memory for the
/// life of the stream.
const KEEP_SPARE: usize = 1024;

/// The group commit's state: the batch being gathered, whether one is
/// out or held, and the timers. See the module's documentation.
#[derive(Debug)]
pub struct Committer<W> {
    config: CommitConfig,
    /// Requests gathered for the next batch, in order.
    requests: Vec<(Vec<Record>, W)>,
    gathered_records: usize,
    gathered_bytes: usize,
    /// A batch was taken and not finished.
    out: bool,
    /// The batch held while the disk is full, between a `DiskFull`
    /// finish and its retry (then it is out again).
    held: Option<Batch<W>>,
    /// The hold is on: from a `DiskFull` finish to the next finish of
    /// another result.
    holding: bool,
    /// Deadlines, by `Timer as usize`; `None`: not armed.
    timers: [Option<Instant>; 4],
    last_sync: Instant,
    last_checkpoint: Instant,
}

impl<W> Committer<W> {
    /// A committer started at `now`: nothing unsynced, the checkpoint just
    /// written (a log writes it when it opens), housekeeping due at once.
    pub fn new(config: CommitConfig, now: Instant) -> Self {
        let mut timers = [None; 4];
        timers[Timer::Housekeeping as usize] = config.housekeeping_every.map(|_| now);
        Committer {
            config,
            requests: Vec::new(),
            gathered_records: 0,
            gathered_bytes: 0,
            out: false,
            held: None,
            holding: false,
            timers,
            last_sync: now,
            last_checkpoint: now,
        }
    }

    pub fn config(&self) -> &CommitConfig {
        &self.config
    }

    /// Adds a request to the batch being gathered: its records, in order,
    /// are appended together with what was gathered before, and `waiter`
    /// is answered with one outcome each. An empty request is answered
    /// with no outcomes.
    pub fn push(&mut self, records: Vec<Record>, waiter: W) {
        self.gathered_records += records.len();
        self.gathered_bytes += records.iter().map(Record::encoded_len).sum::<usize>();
        self.requests.push((records, waiter));
    }

    /// Whether the batch being gathered takes more: it holds fewer bytes
    /// than the bound (so the first request always fits, however large).
    pub fn has_room(&self) -> bool {
        self.gathered_bytes < self.config.max_batch_bytes
    }

    /// Requests gathered and not yet taken.
    pub fn gathered(&self) -> usize {
        self.requests.len()
    }

    /// Whether a batch is out (taken, not finished).
    pub fn writing(&self) -> bool {
        self.out
    }

    /// Whether a batch is held because the disk is full (or below the
    /// free-space floor): from the `DiskFull` finish until a retry of it
    /// finishes otherwise. Nobody is answered meanwhile; producers should
    /// get no credit (`Health::disk_full`).
    pub fn holding(&self) -> bool {
        self.holding
    }

    /// The batch to append next, unless a batch is out: the held batch,
    /// once its [`Timer::Retry`] fired (none before); else the gathered
    /// requests as one batch, if any. Records are moved, not copied: the
    /// first request's vector becomes the batch's.
    pub fn take_batch(&mut self) -> Option<Batch<W>> {
        if self.out {
            return None;
        }
        if self.held.is_some() {
            if self.timers[Timer::Retry as usize].is_some() {
                return None;
            }
            self.out = true;
            return self.held.take();
        }
        if self.requests.is_empty() {
            return None;
        }
        let total = mem::take(&mut self.gathered_records);
        let bytes = mem::take(&mut self.gathered_bytes);
        let mut waiters = Vec::with_capacity(self.requests.len());
        let mut requests = self.requests.drain(..);
        let (mut records, first) = requests.next().expect("not empty");
        waiters.push((first, records.len()));
        records.reserve_exact(total - records.len());
        for (more, waiter) in requests {
            waiters.push((waiter, more.len()));
            records.extend(more);
        }
        if self.requests.capacity() > KEEP_SPARE {
            self.requests = Vec::new();
        }
        debug_assert_eq!(records.len(), total, "batch: records gathered");
        debug_assert_eq!(
            waiters.iter().map(|(_, n)| n).sum::<usize>(),
            records.len(),
            "batch: each record belongs to one waiter"
        );
        debug_assert_eq!(
            records.iter().map(Record::encoded_len).sum::<usize>(),
            bytes,
            "batch: bytes counted"
        );
        self.out = true;
        Some(Batch {
            records,
            waiters,
            bytes,
            sync: self.config.fsync == FsyncPolicy::Always,
        })
    }

    /// The append of `batch` returned `result` at `now`: gives back each
    /// waiter's answer, in the order the requests came. `Ok` holds one
    /// outcome per record of the batch, in order; each waiter gets its
    /// own. An error answers every waiter of the batch. Arms the interval
    /// fdatasync (data was written unsynced) and the checkpoint (the
    /// durable end may have moved, whatever the result: a commit before a
    /// roll stays).
    ///
    /// Except [`SpoolError::DiskFull`] (ENOSPC, or the caller found the
    /// disk below its free-space floor and did not append): that answers
    /// nobody. The batch is held, [`Timer::Retry`] armed for `now` +
    /// [`HOLD_RETRY`], and `take_batch` gives it again when it fired; see
    /// the module's documentation.
    ///
    /// Every answer should be taken: waiters left in a dropped [`Answers`]
    /// are dropped unanswered.
    pub fn finish(
        &mut self,
        batch: Batch<W>,
        result: Result<Vec<Outcome>, SpoolError>,
        now: Instant,
    ) -> Answers<W> {
        debug_assert!(self.out, "finish: no batch is out");
        self.out = false;
        if let Err(SpoolError::DiskFull { .. }) = result {
            // Held whole, in its place: nothing gathered since goes first,
            // nobody is answered, nothing is dropped.
            self.holding = true;
            self.held = Some(batch);
            self.timers[Timer::Retry as usize] = Some(now + self.config.hold_retry);
            return Answers {
                waiters: Vec::new().into_iter(),
                result,
                at: 0,
            };
        }
        self.holding = false;
        if let Ok(outcomes) = &result {
            assert_eq!(
                outcomes.len(),
                batch.records.len(),
                "append: one outcome per record"
            );
        }
        if matches!(self.config.fsync, FsyncPolicy::Interval(_)) {
            self.arm(Timer::Sync);
        }
        self.arm(Timer::Checkpoint);
        let Batch {
            records, waiters, ..
        } = batch;
        // The records are dropped here, appended.
        drop(records);
        Answers {
            waiters: waiters.into_iter(),
            result,
            at: 0,
        }
    }

    /// The durable end moved outside a batch (a skip, a roll), or a
    /// checkpoint could not be written: the checkpoint timer is armed.
    pub fn durable_end_moved(&mut self) {
        self.arm(Timer::Checkpoint);
    }

    /// When the next timer is due; `None`: none is armed. While a batch
    /// is held, only its retry counts.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.holding {
            return self.timers[Timer::Retry as usize];
        }
        self.timers.iter().flatten().min().copied()
    }

    /// The next timer due at `now`, if any; call until `None`. Timers due
    /// at once come in [`Timer`]'s order (sync, housekeeping, checkpoint);
    /// while a batch is held, only its retry fires (the others stay armed
    /// for after the hold). A fired timer is disarmed or, for
    /// housekeeping, set a period on.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Timer> {
        let t = Timer::ORDER.into_iter().find(|&t| {
            (!self.holding || t == Timer::Retry)
                && self.timers[t as usize].is_some_and(|d| d <= now)
        })?;
        self.timers[t as usize] = None;
        match t {
            // The held batch may be taken again.
            Timer::Retry => {}
            Timer::Sync => {
                self.last_sync = now;
                // What the fdatasync makes durable, the checkpoint follows.
                self.arm(Timer::Checkpoint);
            }
            Timer::Checkpoint => self.last_checkpoint = now,
            Timer::Housekeeping => {
                self.timers[t as usize] = self.config.housekeeping_every.map(|p| now + p);
            }
        }
        debug_assert!(
            self.timers[t as usize].is_none_or(|d| d > now),
            "a timer fired is not due again at once"
        );
        Some(t)
    }

    /// Arms the fdatasync (an interval after the last one) or the
    /// checkpoint (a period after the last one), unless it is armed: due
    /// at once if that time is past. Housekeeping is always armed; the
    /// retry is armed by `finish`.
    fn arm(&mut self, t: Timer) {
        let at = match t {
            Timer::Sync => match self.config.fsync {
                FsyncPolicy::Interval(d) => self.last_sync + d,
                FsyncPolicy::Always | FsyncPolicy::Never => return,
            },
            Timer::Checkpoint => self.last_checkpoint + self.config.checkpoint_every,
            Timer::Housekeeping | Timer::Retry => return,
        };
        self.timers[t as usize].get_or_insert(at);
    }
}

/// Each waiter of a finished batch with its answer, in order: its own
/// outcomes (one per record it asked for), or the batch's error.
pub struct Answers<W> {
    waiters: std::vec::IntoIter<(W, usize)>,
    result: Result<Vec<Outcome>, SpoolError>,
    /// Outcomes handed out so far.
    at: usize,
}

impl<W> Answers<W> {
    /// The batch's result as a whole (every record's outcome, in order).
    pub fn result(&self) -> &Result<Vec<Outcome>, SpoolError> {
        &self.result
    }
}

impl<W> Iterator for Answers<W> {
    type Item = (W, Result<Vec<Outcome>, SpoolError>);

    fn next(&mut self) -> Option<Self::Item> {
        let Some((waiter, n)) = self.waiters.next() else {
            if let Ok(all) = &self.result {
                debug_assert!(
                    self.at == all.len() || all.is_empty(),
                    "answers: every outcome handed out"
                );
            }
            return None;
        };
        let answer = match &mut self.result {
            Ok(all) => {
                let mine = if n == 0 {
                    Vec::new()
                } else if self.at == 0 && n == all.len() {
                    // The only waiter with records: its outcomes are all.
                    mem::take(all)
                } else {
                    all[self.at..self.at + n].to_vec()
                };
                self.at += n;
                Ok(mine)
            }
            Err(e) => Err(copy_error(e)),
        };
        Some((waiter, answer))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.waiters.size_hint()
    }
}

/// SpoolError holds an io::Error, which is not Clone: rebuilt per waiter.
fn copy_error(e: &SpoolError) -> SpoolError {
    match e {
        SpoolError::Io { op, path, source } => SpoolError::Io {
            op,
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        SpoolError::Damaged(d) => SpoolError::Damaged(d.clone()),
        SpoolError::StreamExists(n) => SpoolError::StreamExists(n.clone()),
        SpoolError::StreamDeleted(n) => SpoolError::StreamDeleted(n.clone()),
        SpoolError::GroupCorrupt {
            stream,
            group,
            file,
            offset,
            reason,
        } => SpoolError::GroupCorrupt {
            stream: stream.clone(),
            group: group.clone(),
            file: file.clone(),
            offset: *offset,
            reason: reason.clone(),
        },
        SpoolError::DiskFull { free, floor } => SpoolError::DiskFull {
            free: *free,
            floor: *floor,
        },
        SpoolError::BadStreamName(n) => SpoolError::BadStreamName(n.clone()),
        SpoolError::TooLarge(n) => SpoolError::TooLarge(*n),
        SpoolError::Closed => SpoolError::Closed,
        SpoolError::TooManyStreams { max } => SpoolError::TooManyStreams { max: *max },
        SpoolError::Locked { dir, holder } => SpoolError::Locked {
            dir: dir.clone(),
            holder: holder.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::path::PathBuf;

    const MS: Duration = Duration::from_millis(1);

    fn config(max_batch_bytes: usize, fsync: FsyncPolicy, housekeeping: bool) -> CommitConfig {
        CommitConfig::new(max_batch_bytes, fsync, housekeeping)
    }

    /// `n` records of `producer` from `seq`, each `len` payload bytes
    /// (so `HEADER_LEN + len` encoded).
    fn records(producer: u64, seq: u64, n: usize, len: usize) -> Vec<Record> {
        (0..n as u64)
            .map(|i| Record {
                producer,
                seq: seq + i,
                timestamp_us: 0,
                payload: Bytes::from(vec![7; len]),
                key: None,
            })
            .collect()
    }

    /// As the writer does: pushes queued requests while the batch has room.
    fn gather(c: &mut Committer<u32>, queue: &mut std::collections::VecDeque<(Vec<Record>, u32)>) {
        while c.has_room() {
            let Some((r, w)) = queue.pop_front() else {
                break;
            };
            c.push(r, w);
        }
    }

    fn stored(from: u64, n: usize) -> Vec<Outcome> {
        (from..from + n as u64)
            .map(|offset| Outcome::Stored { offset })
            .collect()
    }

    fn io_error() -> SpoolError {
        SpoolError::Io {
            op: "fdatasync",
            path: PathBuf::from("/x/0.seg"),
            source: std::io::Error::other("EIO"),
        }
    }

    /// The batches the writer makes of seven requests of two records of
    /// 60 encoded bytes (120 bytes each), under `bound`: each batch's
    /// waiters and their counts, records, bytes.
    #[allow(clippy::type_complexity)]
    fn batches_of_seven(bound: usize) -> Vec<(Vec<(u32, usize)>, usize, usize)> {
        let mut c = Committer::new(config(bound, FsyncPolicy::Always, false), Instant::now());
        let mut queue: std::collections::VecDeque<_> = (0..7)
            .map(|i| (records(1, 1 + 2 * i, 2, 20), i as u32))
            .collect();
        let mut batches = Vec::new();
        while !queue.is_empty() {
            gather(&mut c, &mut queue);
            let b = c.take_batch().expect("gathered");
            let ws: Vec<(u32, usize)> = b.waiters().map(|(w, n)| (*w, n)).collect();
            let n = b.records().len();
            batches.push((ws, n, b.bytes()));
            let _ = c
                .finish(b, Ok(vec![Outcome::Duplicate; n]), Instant::now())
                .count();
        }
        batches
    }

    #[test]
    fn a_batch_takes_requests_while_below_the_bound_and_never_splits_one() {
        // 120 < 300, 240 < 300, 360: three requests, then the next batch.
        assert_eq!(
            batches_of_seven(300),
            vec![
                (vec![(0, 2), (1, 2), (2, 2)], 6, 360),
                (vec![(3, 2), (4, 2), (5, 2)], 6, 360),
                (vec![(6, 2)], 2, 120),
            ]
        );
        // 240 is not below 240: two requests a batch.
        assert_eq!(
            batches_of_seven(240),
            vec![
                (vec![(0, 2), (1, 2)], 4, 240),
                (vec![(2, 2), (3, 2)], 4, 240),
                (vec![(4, 2), (5, 2)], 4, 240),
                (vec![(6, 2)], 2, 120),
            ]
        );
        // A bound below one request: one request a batch, none split.
        assert_eq!(batches_of_seven(1).len(), 7);
        assert!(batches_of_seven(1)
            .iter()
            .all(|(w, n, _)| w.len() == 1 && *n == 2));
    }

    #[test]
    fn a_request_larger_than_the_bound_goes_alone_when_it_comes_first() {
        let t0 = Instant::now();
        let mut c = Committer::new(config(100, FsyncPolicy::Always, false), t0);
        assert!(c.has_room(), "an empty batch takes anything");
        c.push(records(1, 1, 3, 100), 1u32);
        assert!(!c.has_room(), "420 bytes: the batch is full");
        let b = c.take_batch().expect("gathered");
        assert_eq!(b.records().len(), 3);
        assert_eq!(b.waiters().count(), 1);
        let _ = c.finish(b, Ok(stored(0, 3)), t0).count();
        // After a small request there is room: the large one joins it (the
        // bound is checked before taking, as the writer always did).
        c.push(records(2, 1, 1, 10), 2);
        assert!(c.has_room());
        c.push(records(3, 1, 1, 500), 3);
        assert!(!c.has_room());
        let b = c.take_batch().expect("gathered");
        assert_eq!(b.bytes(), 50 + 540);
        assert_eq!(b.waiters().count(), 2);
    }

    #[test]
    fn each_waiter_gets_its_own_outcomes_in_order() {
        let t0 = Instant::now();
        let mut c = Committer::new(config(1 << 20, FsyncPolicy::Always, false), t0);
        c.push(records(1, 1, 2, 5), "a");
        c.push(Vec::new(), "empty");
        c.push(records(2, 1, 3, 5), "b");
        c.push(records(1, 3, 1, 5), "c");
        let b = c.take_batch().expect("gathered");
        let seqs: Vec<(u64, u64)> = b.records().iter().map(|r| (r.producer, r.seq)).collect();
        assert_eq!(seqs, [(1, 1), (1, 2), (2, 1), (2, 2), (2, 3), (1, 3)]);
        let outcomes = vec![
            Outcome::Stored { offset: 10 },
            Outcome::Duplicate,
            Outcome::Stored { offset: 11 },
            Outcome::Refused,
            Outcome::Stored { offset: 12 },
            Outcome::Stored { offset: 13 },
        ];
        let answers: Vec<(&str, Vec<Outcome>)> = c
            .finish(b, Ok(outcomes), t0)
            .map(|(w, r)| (w, r.expect("ok")))
            .collect();
        assert_eq!(
            answers,
            vec![
                (
                    "a",
                    vec![Outcome::Stored { offset: 10 }, Outcome::Duplicate]
                ),
                ("empty", vec![]),
                (
                    "b",
                    vec![
                        Outcome::Stored { offset: 11 },
                        Outcome::Refused,
                        Outcome::Stored { offset: 12 }
                    ]
                ),
                ("c", vec![Outcome::Stored { offset: 13 }]),
            ]
        );
        // A lone waiter is handed the whole vector.
        c.push(records(3, 1, 2, 5), "d");
        let b = c.take_batch().expect("gathered");
        let all = stored(20, 2);
        let ptr = all.as_ptr();
        let (w, r) = c.finish(b, Ok(all), t0).next().expect("one answer");
        let r = r.expect("ok");
        assert_eq!((w, r.as_ptr()), ("d", ptr));
    }

    #[test]
    fn an_error_answers_every_waiter_of_its_batch_and_only_them() {
        let t0 = Instant::now();
        let mut c = Committer::new(config(200, FsyncPolicy::Always, false), t0);
        c.push(records(1, 1, 1, 100), 1u32);
        c.push(records(2, 1, 1, 100), 2);
        c.push(Vec::new(), 3);
        assert!(!c.has_room());
        let b = c.take_batch().expect("gathered");
        c.push(records(1, 2, 1, 10), 4);
        let answers: Vec<(u32, String)> = c
            .finish(b, Err(io_error()), t0)
            .map(|(w, r)| (w, r.expect_err("failed").to_string()))
            .collect();
        let e = io_error().to_string();
        assert_eq!(answers, vec![(1, e.clone()), (2, e.clone()), (3, e)]);
        // The request gathered meanwhile is the next batch, and succeeds.
        let b = c.take_batch().expect("gathered");
        let answers: Vec<_> = c.finish(b, Ok(stored(0, 1)), t0).collect();
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].0, 4);
        assert_eq!(answers[0].1.as_ref().ok(), Some(&stored(0, 1)));
    }

    #[test]
    fn one_batch_is_out_at_a_time_and_records_are_moved() {
        let t0 = Instant::now();
        let mut c = Committer::new(config(1 << 20, FsyncPolicy::Always, false), t0);
        assert!(c.take_batch().is_none(), "nothing gathered");
        let mut first = Vec::with_capacity(8);
        first.extend(records(1, 1, 2, 5));
        let ptr = first.as_ptr();
        c.push(first, 1u32);
        c.push(records(2, 1, 2, 5), 2);
        let b = c.take_batch().expect("gathered");
        assert_eq!(b.records().as_ptr(), ptr, "the first request's vector");
        assert!(c.writing());
        c.push(records(1, 3, 1, 5), 3);
        assert!(c.take_batch().is_none(), "one batch out at a time");
        assert_eq!(c.gathered(), 1);
        let _ = c.finish(b, Ok(stored(0, 4)), t0).count();
        assert!(!c.writing());
        let b = c.take_batch().expect("the next");
        assert_eq!(b.waiters().map(|(w, _)| *w).collect::<Vec<_>>(), [3]);
    }

    #[test]
    #[should_panic(expected = "one outcome per record")]
    fn an_append_must_answer_every_record() {
        let t0 = Instant::now();
        let mut c = Committer::new(config(1 << 20, FsyncPolicy::Always, false), t0);
        c.push(records(1, 1, 3, 5), 1u32);
        let b = c.take_batch().expect("gathered");
        let _ = c.finish(b, Ok(stored(0, 2)), t0).count();
    }

    /// Runs one batch of one record through `c`.
    fn one_batch(c: &mut Committer<u32>) -> bool {
        c.push(records(1, 1, 1, 5), 1);
        let b = c.take_batch().expect("gathered");
        let sync = b.sync();
        let _ = c.finish(b, Ok(stored(0, 1)), Instant::now()).count();
        sync
    }

    #[test]
    fn always_syncs_each_batch_and_arms_no_sync_timer() {
        let t0 = Instant::now();
        let mut c = Committer::new(config(1 << 20, FsyncPolicy::Always, false), t0);
        assert_eq!(c.poll_timeout(), None, "idle: nothing due, no wake-up");
        assert!(one_batch(&mut c));
        // Only the checkpoint, a period after the last (the start).
        assert_eq!(c.poll_timeout(), Some(t0 + CHECKPOINT_EVERY));
        assert_eq!(c.handle_timeout(t0 + CHECKPOINT_EVERY - MS), None);
        assert_eq!(
            c.handle_timeout(t0 + CHECKPOINT_EVERY),
            Some(Timer::Checkpoint)
        );
        assert_eq!(c.handle_timeout(t0 + CHECKPOINT_EVERY), None);
        assert_eq!(c.poll_timeout(), None, "nothing moved since");
    }

    #[test]
    fn the_checkpoint_follows_at_most_once_a_period() {
        let t0 = Instant::now();
        let mut c = Committer::new(config(1 << 20, FsyncPolicy::Always, false), t0);
        let t1 = t0 + 500 * MS;
        // Long after the last checkpoint: due at once.
        one_batch(&mut c);
        assert_eq!(c.poll_timeout(), Some(t0 + CHECKPOINT_EVERY));
        assert_eq!(c.handle_timeout(t1), Some(Timer::Checkpoint));
        // Batches right after it: due a period after it, not before.
        one_batch(&mut c);
        one_batch(&mut c);
        assert_eq!(c.poll_timeout(), Some(t1 + CHECKPOINT_EVERY));
        assert_eq!(c.handle_timeout(t1 + 150 * MS), None);
        assert_eq!(
            c.handle_timeout(t1 + CHECKPOINT_EVERY),
            Some(Timer::Checkpoint)
        );
        // A checkpoint that failed is tried again a period later.
        c.durable_end_moved();
        assert_eq!(c.poll_timeout(), Some(t1 + 2 * CHECKPOINT_EVERY));
    }

    #[test]
    fn interval_syncs_on_its_timer_then_checkpoints() {
        let t0 = Instant::now();
        let d = 30 * MS;
        let mut c = Committer::new(config(1 << 20, FsyncPolicy::Interval(d), false), t0);
        assert_eq!(c.poll_timeout(), None, "nothing written: no sync due");
        let t1 = t0 + 10 * MS;
        assert!(!one_batch(&mut c), "interval: the append does not sync");
        assert_eq!(
            c.poll_timeout(),
            Some(t0 + d),
            "an interval after the last sync"
        );
        assert_eq!(c.handle_timeout(t1), None);
        assert_eq!(c.handle_timeout(t0 + d - MS), None);
        let t2 = t0 + d;
        assert_eq!(c.handle_timeout(t2), Some(Timer::Sync));
        assert_eq!(c.handle_timeout(t2), None, "the checkpoint is not due yet");
        // More batches: the next sync an interval after the last.
        one_batch(&mut c);
        one_batch(&mut c);
        assert_eq!(c.poll_timeout(), Some(t2 + d));
        assert_eq!(c.handle_timeout(t2 + d), Some(Timer::Sync));
        let t3 = t2 + 10 * d + CHECKPOINT_EVERY;
        assert_eq!(c.handle_timeout(t3), Some(Timer::Checkpoint));
        assert_eq!(c.poll_timeout(), None, "all synced and checkpointed");
        // Long idle, then one batch: the sync is overdue, due at once, and
        // the checkpoint it arms too, after it.
        let t4 = t3 + CHECKPOINT_EVERY;
        one_batch(&mut c);
        assert_eq!(c.handle_timeout(t4), Some(Timer::Sync));
        assert_eq!(c.handle_timeout(t4), Some(Timer::Checkpoint));
        assert_eq!(c.handle_timeout(t4), None);
    }

    #[test]
    fn never_syncs() {
        let t0 = Instant::now();
        let mut c = Committer::new(config(1 << 20, FsyncPolicy::Never, false), t0);
        assert!(!one_batch(&mut c));
        let t1 = t0 + 10 * CHECKPOINT_EVERY;
        // The checkpoint timer still fires (the log says whether it is
        // behind: a roll syncs); a sync never does.
        assert_eq!(c.handle_timeout(t1), Some(Timer::Checkpoint));
        assert_eq!(c.handle_timeout(t1), None);
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn housekeeping_runs_at_start_then_every_period_when_configured() {
        let t0 = Instant::now();
        let mut c = Committer::new(config(1 << 20, FsyncPolicy::Always, true), t0);
        assert_eq!(c.poll_timeout(), Some(t0));
        assert_eq!(c.handle_timeout(t0), Some(Timer::Housekeeping));
        assert_eq!(c.handle_timeout(t0), None);
        assert_eq!(c.poll_timeout(), Some(t0 + HOUSEKEEPING_EVERY));
        assert_eq!(c.handle_timeout(t0 + HOUSEKEEPING_EVERY - MS), None);
        // Late: the next period counts from when it ran.
        let late = t0 + 3 * HOUSEKEEPING_EVERY;
        assert_eq!(c.handle_timeout(late), Some(Timer::Housekeeping));
        assert_eq!(c.poll_timeout(), Some(late + HOUSEKEEPING_EVERY));
        // Due together with the checkpoint: housekeeping first.
        one_batch(&mut c);
        let t = late + HOUSEKEEPING_EVERY;
        assert_eq!(c.handle_timeout(t), Some(Timer::Housekeeping));
        assert_eq!(c.handle_timeout(t), Some(Timer::Checkpoint));
        assert_eq!(c.handle_timeout(t), None);
    }

    fn disk_full() -> SpoolError {
        SpoolError::DiskFull { free: 0, floor: 0 }
    }

    /// Who a batch answers, in order.
    fn waiters_of(b: &Batch<u32>) -> Vec<u32> {
        b.waiters().map(|(w, _)| *w).collect()
    }

    #[test]
    fn a_full_disk_answers_nobody_and_holds_the_batch_for_a_retry() {
        let t0 = Instant::now();
        let mut c = Committer::new(config(1 << 20, FsyncPolicy::Always, false), t0);
        c.push(records(1, 1, 2, 5), 1u32);
        c.push(records(2, 1, 1, 5), 2);
        let b = c.take_batch().expect("gathered");
        let ptr = b.records().as_ptr();
        assert!(!c.holding());
        let t1 = t0 + 10 * MS;
        let answers = c.finish(b, Err(disk_full()), t1);
        assert!(
            matches!(answers.result(), Err(SpoolError::DiskFull { .. })),
            "the result as a whole is still told"
        );
        assert_eq!(answers.count(), 0, "nobody is answered while held");
        assert!(c.holding());
        assert!(!c.writing(), "held is not out");
        // Meanwhile requests queue behind it; nothing is taken before
        // the retry, neither the held batch nor what came after.
        c.push(records(1, 3, 1, 5), 3);
        assert!(c.take_batch().is_none(), "the retry is not due");
        assert_eq!(c.poll_timeout(), Some(t1 + HOLD_RETRY));
        assert_eq!(c.handle_timeout(t1 + HOLD_RETRY - MS), None);
        assert_eq!(c.handle_timeout(t1 + HOLD_RETRY), Some(Timer::Retry));
        assert_eq!(c.handle_timeout(t1 + HOLD_RETRY), None);
        // The retry gives the same batch, whole: same records (the same
        // vector, not a copy), same waiters with the same counts.
        let b = c.take_batch().expect("the held batch");
        assert_eq!(b.records().as_ptr(), ptr);
        let seqs: Vec<(u64, u64)> = b.records().iter().map(|r| (r.producer, r.seq)).collect();
        assert_eq!(seqs, [(1, 1), (1, 2), (2, 1)]);
        assert_eq!(
            b.waiters().map(|(w, n)| (*w, n)).collect::<Vec<_>>(),
            [(1, 2), (2, 1)]
        );
        assert!(b.sync());
        assert!(c.writing());
        assert!(c.holding(), "the hold lasts until the retry succeeds");
        assert!(c.take_batch().is_none(), "one batch out at a time");
        assert_eq!(c.poll_timeout(), None);
        // It succeeds: each waiter answered once, in order; the hold ends.
        let t2 = t1 + HOLD_RETRY + 5 * MS;
        let answers: Vec<(u32, Vec<Outcome>)> = c
            .finish(b, Ok(stored(0, 3)), t2)
            .map(|(w, r)| (w, r.expect("ok")))
            .collect();
        assert_eq!(answers, vec![(1, stored(0, 2)), (2, stored(2, 1))]);
        assert!(!c.holding());
        // Then what was pushed meanwhile.
        let b = c.take_batch().expect("the request behind it");
        assert_eq!(waiters_of(&b), [3]);
        let answers: Vec<_> = c.finish(b, Ok(stored(3, 1)), t2).collect();
        assert_eq!(answers.len(), 1);
        assert_eq!(c.poll_timeout(), Some(t0 + CHECKPOINT_EVERY));
    }

    #[test]
    fn a_hold_is_retried_every_period_until_space_returns_and_keeps_the_order() {
        let t0 = Instant::now();
        let mut c = Committer::new(config(300, FsyncPolicy::Always, false), t0);
        let mut queue: std::collections::VecDeque<_> = (0..5)
            .map(|i| (records(1, 1 + 2 * i, 2, 20), i as u32))
            .collect();
        gather(&mut c, &mut queue);
        let mut now = t0;
        let mut b = c.take_batch().expect("gathered");
        assert_eq!(waiters_of(&b), [0, 1, 2]);
        // Full three times (ENOSPC, then below the floor twice): each
        // time the same batch comes back a period later, never answered.
        for (i, e) in [
            disk_full(),
            SpoolError::DiskFull {
                free: 10,
                floor: 100,
            },
            disk_full(),
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(c.finish(b, Err(e), now).count(), 0, "retry {i}");
            // Requests keep queueing behind the held batch.
            gather(&mut c, &mut queue);
            assert!(c.holding());
            assert_eq!(c.poll_timeout(), Some(now + HOLD_RETRY));
            now += HOLD_RETRY;
            assert_eq!(c.handle_timeout(now), Some(Timer::Retry));
            b = c.take_batch().expect("the held batch again");
            assert_eq!(waiters_of(&b), [0, 1, 2], "retry {i}: the same batch");
            assert_eq!(b.records().len(), 6);
        }
        assert_eq!(c.gathered(), 2, "what came meanwhile waits, in order");
        let answered: Vec<u32> = c.finish(b, Ok(stored(0, 6)), now).map(|(w, _)| w).collect();
        assert_eq!(answered, [0, 1, 2], "each answered once");
        let b = c.take_batch().expect("next");
        assert_eq!(waiters_of(&b), [3, 4]);
        let answered: Vec<u32> = c.finish(b, Ok(stored(6, 4)), now).map(|(w, _)| w).collect();
        assert_eq!(answered, [3, 4]);
        assert!(!c.holding());
        assert!(c.take_batch().is_none());
    }

    #[test]
    fn a_hold_ended_by_another_error_answers_every_waiter_with_it() {
        let t0 = Instant::now();
        let mut c = Committer::new(config(1 << 20, FsyncPolicy::Always, false), t0);
        c.push(records(1, 1, 1, 5), 1u32);
        c.push(records(2, 1, 1, 5), 2);
        let b = c.take_batch().expect("gathered");
        assert_eq!(c.finish(b, Err(disk_full()), t0).count(), 0);
        assert_eq!(c.handle_timeout(t0 + HOLD_RETRY), Some(Timer::Retry));
        let b = c.take_batch().expect("held");
        let answers: Vec<(u32, bool)> = c
            .finish(b, Err(io_error()), t0 + HOLD_RETRY)
            .map(|(w, r)| (w, matches!(r, Err(SpoolError::Io { .. }))))
            .collect();
        assert_eq!(answers, [(1, true), (2, true)]);
        assert!(!c.holding());
    }

    #[test]
    fn while_a_batch_is_held_no_other_timer_fires() {
        let t0 = Instant::now();
        let d = 30 * MS;
        let mut c = Committer::new(config(1 << 20, FsyncPolicy::Interval(d), true), t0);
        assert_eq!(c.handle_timeout(t0), Some(Timer::Housekeeping));
        // A batch written (sync and checkpoint armed), then one held.
        one_batch(&mut c);
        c.push(records(1, 2, 1, 5), 2);
        let b = c.take_batch().expect("gathered");
        let t1 = t0 + 5 * MS;
        assert_eq!(c.finish(b, Err(disk_full()), t1).count(), 0);
        // The sync (due at t0 + d), housekeeping (t0 + 100 ms) and the
        // checkpoint (t0 + 200 ms) wait; only the retry is due.
        assert_eq!(c.poll_timeout(), Some(t1 + HOLD_RETRY));
        let late = t0 + 10 * CHECKPOINT_EVERY;
        assert_eq!(c.handle_timeout(late), Some(Timer::Retry));
        assert_eq!(c.handle_timeout(late), None, "held: nothing else fires");
        let b = c.take_batch().expect("held");
        assert_eq!(c.handle_timeout(late), None, "still held while out");
        assert_eq!(c.finish(b, Err(disk_full()), late).count(), 0);
        assert_eq!(c.handle_timeout(late + HOLD_RETRY), Some(Timer::Retry));
        let b = c.take_batch().expect("held");
        assert_eq!(c.finish(b, Ok(stored(1, 1)), late).count(), 1);
        // The hold over, the timers kept come due, in their order.
        assert_eq!(c.handle_timeout(late), Some(Timer::Sync));
        assert_eq!(c.handle_timeout(late), Some(Timer::Housekeeping));
        assert_eq!(c.handle_timeout(late), Some(Timer::Checkpoint));
        assert_eq!(c.handle_timeout(late), None);
    }
}
