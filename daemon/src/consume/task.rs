//! A consumer group's task: it drives the group's [`Group`] machine over
//! the spool, reading records as they become durable, handing deliveries to
//! members, journaling what happened, and writing dead letters.
//!
//! Order of durability, which recovery relies on:
//! - an ack is reported durable (`sync`) only after the journal batch that
//!   holds it was fdatasynced;
//! - a dead letter is appended to the dead-letter stream only after the
//!   journal batch that dead-lettered it is durable; its seq in that stream
//!   is the group's dead-letter counter, so a re-append after a crash is a
//!   duplicate the spool stores once.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::dead_letter::{self, DeadLetter};
use super::group::{Credit, DeadOut, Delivery, Group, MemberId};
use super::handle::{Cmd, GroupHandle, GroupSettings, OnBacklog};
use super::store::{Event, GroupStore};
use crate::log_limit::LogLimit;
use crate::spool::record::now_us;
use crate::spool::{Cursor, Damage, Outcome, Reader, Record, Spool, SpoolError, Stream};

/// Mean stored bytes per record of a stream (for backlog estimates).
fn mean_record_bytes(stream: &Stream) -> u64 {
    let n = stream.durable_end().saturating_sub(stream.first_offset());
    stream.total_bytes().checked_div(n).unwrap_or(0)
}

struct OpenFetch {
    until: Instant,
    detach: bool,
    done: oneshot::Sender<Vec<Delivery>>,
    got: Vec<Delivery>,
}

/// A journal write's result, sent back from its blocking thread.
type WriteDone = (GroupStore, Result<(), SpoolError>, Vec<Event>, Vec<DeadOut>);

pub(super) struct GroupTask {
    handle: Arc<GroupHandle>,
    spool: Arc<Spool>,
    stream: Stream,
    reader: Reader,
    machine: Group,
    /// `None` while a write has it.
    store: Option<GroupStore>,
    retain_until_acked: bool,
    max_backlog: u64,
    on_backlog: OnBacklog,
    /// Drops at the backlog limit are logged at most once a second.
    drops_said: LogLimit,
    /// Whether this group holds the stream's producers back now.
    holding: bool,
    members: HashMap<MemberId, mpsc::UnboundedSender<Vec<Delivery>>>,
    fetches: HashMap<MemberId, OpenFetch>,
    /// Events and dead letters waiting for the next journal write.
    queue: Vec<Event>,
    dead_queue: Vec<DeadOut>,
    batches_started: u64,
    batches_done: u64,
    /// Sync callers: answered once `batches_done` reaches the number.
    waiters: Vec<(u64, oneshot::Sender<()>)>,
    mirrored_floor: Option<u64>,
    mirrored_at: Instant,
    /// After a failed write: when to try again.
    retry_at: Option<Instant>,
    /// Since when acks wait in the machine, not journaled.
    acks_since: Option<Instant>,
    /// Dead letters to append to the dead-letter stream, whether an
    /// append runs, and when to try again after a failed one.
    dead_waiting: Option<DeadBatch>,
    dead_appending: bool,
    dead_retry_at: Option<Instant>,
    /// A reset or deletion waits for the group to end: answered then.
    retiring: Option<oneshot::Sender<Result<(), u64>>>,
    /// The last read stopped at `READ_PER_TURN` with more wanted: read on
    /// after other tasks had their turn.
    read_more: bool,
    /// Dead letters whose messages could not be read (an I/O error):
    /// read again at `dead_retry_at`; newer ones wait behind them.
    dead_unread: Vec<DeadOut>,
    /// Damage a read met: the group reads no further, and reads back
    /// nothing from its first offset affected on. It does not go away by
    /// itself (the operator restores the files or restarts with
    /// `--repair`), so it is not tried again.
    damage: Option<Box<Damage>>,
    /// Read errors that may pass (I/O) are tried again at every turn but
    /// logged at most once a second.
    read_errors: LogLimit,
    /// The append time of the record at the floor while the group has not
    /// read it (no member yet, or none with credit): read once per floor,
    /// not at every turn, for the age of the oldest unacked message.
    floor_time: Option<(u64, Option<u64>)>,
}

/// Dead letters, and the dead-letter seq that their append completes
/// (0: none to record).
struct DeadBatch {
    letters: Vec<(u64, DeadLetter)>,
    up_to: u64,
}

/// A dead-letter append's result, sent back from its task.
type DeadDone = (DeadBatch, Result<(), String>);

/// How often a group's floor is copied to the stream's cursor file, which
/// retention reads.
const MIRROR_EVERY: Duration = Duration::from_secs(1);
/// Wait after a failed journal write (a full disk) before trying again.
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// Longest acks wait to be journaled when nobody waits for them (a Sync
/// is answered at once). Each journal write costs an fdatasync; a group
/// acked at half a million messages a second would otherwise write one
/// after another. An ack not journaled when the daemon dies is delivered
/// again, as at-least-once allows (consumers re-send acks not synced).
const JOURNAL_ACKS_EVERY: Duration = Duration::from_millis(100);
/// Wait after a failed dead-letter append before trying again. (Their
/// Dead events are journaled: a restart meanwhile re-sends them too.)
const DEAD_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Most payload bytes a group reads from the spool in one turn. Reads
/// block the worker thread the task runs on (a cold read waits for the
/// disk): a group catching up on large messages reads in slices and lets
/// other tasks (producers, other groups) run in between.
const READ_PER_TURN: u64 = 4 << 20;

impl GroupTask {
    pub(super) fn new(
        handle: Arc<GroupHandle>,
        spool: Arc<Spool>,
        stream: Stream,
        machine: Group,
        store: GroupStore,
        settings: &GroupSettings,
    ) -> GroupTask {
        GroupTask {
            handle,
            spool,
            reader: stream.reader(machine.floor()),
            stream,
            machine,
            store: Some(store),
            retain_until_acked: settings.retain_until_acked,
            max_backlog: settings.max_backlog,
            on_backlog: settings.on_backlog,
            drops_said: LogLimit::new(1),
            holding: false,
            members: HashMap::new(),
            fetches: HashMap::new(),
            queue: Vec::new(),
            dead_queue: Vec::new(),
            batches_started: 0,
            batches_done: 0,
            waiters: Vec::new(),
            mirrored_floor: None,
            mirrored_at: Instant::now(),
            retry_at: None,
            acks_since: None,
            dead_waiting: None,
            dead_appending: false,
            dead_retry_at: None,
            dead_unread: Vec::new(),
            read_more: false,
            retiring: None,
            damage: None,
            read_errors: LogLimit::new(1),
            floor_time: None,
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let mut end = self.stream.watch_end();
        self.redrive_dead_letters();
        let (write_tx, mut write_rx) = mpsc::unbounded_channel::<WriteDone>();
        let (dead_tx, mut dead_rx) = mpsc::unbounded_channel::<DeadDone>();
        let (mut open, mut end_open) = (true, true);
        loop {
            self.read();
            let now = Instant::now();
            // Messages whose deadline passed are ready again: their records
            // are read back before they can go out.
            self.machine.tick(now);
            self.load_unloaded();
            // A fetch whose asker went away takes nothing more.
            self.answer_fetches(now, true);
            self.deliver(now);
            self.answer_fetches(now, false);
            // Stopping: everything is journaled before the task ends.
            if self.journal_due(now) || !open {
                self.take_events();
            }
            if !self.writing() && self.retry_at.is_none_or(|t| t <= now) {
                self.start_write(&write_tx);
            }
            self.reread_dead_letters(now);
            self.start_dead_append(&dead_tx, now);
            self.answer_waiters();
            self.mirror_cursor(false);
            self.backpressure();
            self.publish_stats();
            // A group retiring also lets a dead-letter append it started
            // finish: the next group of this name numbers its dead letters
            // past the ones stored.
            let dead_letter_landing = self.retiring.is_some() && self.dead_appending;
            if !open && !self.writing() && self.queue.is_empty() && !dead_letter_landing {
                break;
            }
            let timer = [
                self.machine.next_timer(),
                self.fetches.values().map(|f| f.until).min(),
                self.retry_at,
                self.acks_since.map(|t| t + JOURNAL_ACKS_EVERY),
                self.dead_retry_at
                    .filter(|_| self.dead_waiting.is_some() || !self.dead_unread.is_empty()),
                Some(now + MIRROR_EVERY),
            ]
            .into_iter()
            .flatten()
            .min()
            .expect("one is always set");
            tokio::select! {
                c = rx.recv(), if open => match c {
                    Some(Cmd::Stop) | None => open = false,
                    Some(c) => {
                        self.handle.took(1);
                        self.apply(c, Instant::now());
                    }
                },
                r = end.changed(), if end_open => end_open = r.is_ok(),
                Some(done) = write_rx.recv(), if self.writing() => self.write_done(done),
                Some(done) = dead_rx.recv(), if self.dead_appending => self.dead_append_done(done),
                _ = tokio::time::sleep_until(timer.into()) => {}
                _ = tokio::task::yield_now(), if self.read_more => {}
            }
            // Take every command already queued before the next round.
            while open && self.retiring.is_none() {
                match rx.try_recv() {
                    Ok(Cmd::Stop) | Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                    Ok(c) => {
                        self.handle.took(1);
                        self.apply(c, Instant::now());
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                }
            }
            if self.retiring.is_some() {
                open = false;
            }
        }
        self.mirror_cursor(true);
        if self.holding {
            self.stream.hold_producers(false);
        }
        if let Some(done) = self.retiring.take() {
            let dropped =
                self.dead_waiting.as_ref().map_or(0, |b| b.letters.len()) + self.dead_unread.len();
            if dropped > 0 {
                warn!(stream = %self.handle.stream, group = %self.handle.group, dropped,
                    "the group is reset or deleted with dead letters not yet stored: they are dropped");
            }
            let _ = done.send(Ok(()));
        }
    }

    /// Whether what the machine has to journal should be taken now:
    /// someone waits for it, it is more than acks (delivery counts and dead
    /// letters are journaled at once), or acks have waited long enough.
    fn journal_due(&mut self, now: Instant) -> bool {
        if !self.machine.has_events() {
            return false;
        }
        let since = *self.acks_since.get_or_insert(now);
        !self.waiters.is_empty()
            || self.machine.has_other_events()
            || now >= since + JOURNAL_ACKS_EVERY
    }

    /// Moves what the machine has to journal to the queue of the next write.
    fn take_events(&mut self) {
        let (events, dead) = self.machine.take_events();
        self.queue.extend(events);
        self.dead_queue.extend(dead);
        self.acks_since = None;
    }

    /// Holds the stream's producers back while the backlog is at the limit,
    /// and lets them go once it is back under half of it (no flapping).
    fn backpressure(&mut self) {
        if self.max_backlog == 0 {
            return;
        }
        if self.on_backlog == OnBacklog::DropOldest {
            self.drop_oldest();
            return;
        }
        let backlog = self.machine.backlog();
        let hold = if self.holding {
            backlog > self.max_backlog / 2
        } else {
            backlog >= self.max_backlog
        };
        if hold != self.holding {
            self.holding = hold;
            self.stream.hold_producers(hold);
            info!(stream = %self.handle.stream, group = %self.handle.group, backlog, limit = self.max_backlog,
                "{}", if hold { "consumer group at its backlog limit: producers get no credit" } else { "consumer group caught up: producers get credit again" });
        }
    }

    /// Gives up the oldest messages past the backlog limit
    /// (`on_backlog = "drop_oldest"`): counted, and said once a second.
    fn drop_oldest(&mut self) {
        let dropped = self.machine.drop_oldest(self.max_backlog);
        let (Some(first), Some(last)) = (dropped.first(), dropped.last()) else {
            return;
        };
        // What was dropped unread is not read.
        if self.reader.position() < self.machine.next_read() {
            self.reader = self.stream.reader(self.machine.next_read());
        }
        if let Some(suppressed) = self.drops_said.allow(Instant::now()) {
            let n: u64 = dropped.iter().map(|r| r.end - r.start).sum();
            warn!(stream = %self.handle.stream, group = %self.handle.group, dropped = n,
                first = first.start, last = last.end - 1, limit = self.max_backlog, suppressed,
                "consumer group at its backlog limit (on_backlog = \"drop_oldest\"): the oldest messages not out with a member are dropped unacked (sluice_group_dropped_total)");
        }
    }

    /// Reads what the machine wants from the spool.
    fn read(&mut self) {
        self.machine.set_end(self.stream.durable_end());
        self.read_more = false;
        if self.damage.is_some() {
            return;
        }
        let (want, budget) = self.machine.wants();
        if want == 0 {
            return;
        }
        let mut records = Vec::with_capacity(want.min(1024));
        let mut bytes = 0;
        while records.len() < want && bytes < budget {
            if bytes >= READ_PER_TURN {
                self.read_more = true;
                break;
            }
            match self.reader.next_record() {
                Ok(Some(r)) => {
                    bytes += r.1.payload.len() as u64;
                    records.push(r);
                }
                Ok(None) => break,
                Err(e) => {
                    self.read_failed(e, None);
                    break;
                }
            }
        }
        if !records.is_empty() {
            self.machine.offer(records);
        }
    }

    /// A read failed (reading on, or reading back `offset`). Damage stops
    /// the group's reading, once and for all, and is said once (log,
    /// `/groups`, metrics, and the stream's damage list); anything else is
    /// tried again at the next turn, logged at most once a second.
    fn read_failed(&mut self, e: SpoolError, offset: Option<u64>) {
        let (stream, group) = (&self.handle.stream, &self.handle.group);
        match e {
            SpoolError::Damaged(d) => {
                self.stream.report_damage(&d);
                if self.damage.is_none() {
                    error!(%stream, %group, damage = %d,
                        "consumer group stopped at damage in the stream: it reads no further \
                         (what it read is still delivered and acked); restore the stream's \
                         files, or restart sluiced with --repair");
                    self.handle.stats.lock().unwrap().stopped_at_damage = Some(d.to_string());
                    self.damage = Some(d);
                }
            }
            e => {
                if let Some(suppressed) = self.read_errors.allow(Instant::now()) {
                    match offset {
                        None => error!(%stream, %group, error = %e, suppressed,
                            "reading the stream failed; trying again"),
                        Some(offset) => error!(%stream, %group, offset, error = %e, suppressed,
                            "reading a message back failed; trying again"),
                    }
                }
            }
        }
    }

    /// Whether the record at `offset` can be read: not at or past damage
    /// the group met.
    fn readable(&self, offset: u64) -> bool {
        self.damage.as_ref().is_none_or(|d| offset < d.from)
    }

    /// Reads back the records of messages ready again (a delivery took
    /// them from the machine).
    fn load_unloaded(&mut self) {
        let offsets = self.machine.unloaded();
        if offsets.is_empty() {
            return;
        }
        for (offset, record) in self.read_back(&offsets) {
            self.machine.restore(offset, record);
        }
    }

    /// The records at `offsets` (in increasing order), `None` for those
    /// retention deleted. One reader serves each run of consecutive
    /// offsets. A read error leaves the rest out (logged): they are tried
    /// again at the next turn, unless it was damage; nothing at or past
    /// damage the group met is read.
    fn read_back(&mut self, offsets: &[u64]) -> Vec<(u64, Option<Record>)> {
        let mut got = Vec::with_capacity(offsets.len());
        let mut reader: Option<Reader> = None;
        for &offset in offsets {
            if !self.readable(offset) {
                break;
            }
            let r = match &mut reader {
                Some(r) if r.position() == offset => r,
                _ => reader.insert(self.stream.reader(offset)),
            };
            match r.next_record() {
                Ok(Some((o, rec))) if o == offset => got.push((offset, Some(rec))),
                // Past it: the record is gone (retention).
                Ok(Some(_)) => {
                    got.push((offset, None));
                    reader = None;
                }
                Ok(None) => got.push((offset, None)),
                Err(e) => {
                    self.read_failed(e, Some(offset));
                    break;
                }
            }
        }
        got
    }

    fn deliver(&mut self, now: Instant) {
        let mut all = self.machine.dispatch(now);
        if all.is_empty() {
            return;
        }
        // One send per member and turn, not one per message. Members are
        // few: a short list, no hashing per message; with one member (the
        // usual case) the whole batch goes as it is.
        let mut batches: Vec<(MemberId, Vec<Delivery>)> = Vec::new();
        let only = all[0].member;
        if all.iter().all(|d| d.member == only) && !self.fetches.contains_key(&only) {
            batches.push((only, all));
        } else {
            for d in all.drain(..) {
                if let Some(f) = self.fetches.get_mut(&d.member) {
                    f.got.push(d);
                    continue;
                }
                match batches.iter_mut().find(|(m, _)| *m == d.member) {
                    Some((_, b)) => b.push(d),
                    None => batches.push((d.member, vec![d])),
                }
            }
        }
        for (member, batch) in batches {
            let gone = match self.members.get(&member) {
                Some(to) => to.send(batch).is_err(),
                None => true,
            };
            if gone {
                self.members.remove(&member);
                self.machine.leave(member, now);
            }
        }
    }

    /// Answers the fetches that got something or whose wait is over (with
    /// `abandoned_only`, just those whose asker went away).
    fn answer_fetches(&mut self, now: Instant, abandoned_only: bool) {
        let finished: Vec<MemberId> = self
            .fetches
            .iter()
            .filter(|(_, f)| {
                f.done.is_closed() || !abandoned_only && (!f.got.is_empty() || f.until <= now)
            })
            .map(|(&m, _)| m)
            .collect();
        for member in finished {
            let f = self.fetches.remove(&member).expect("listed");
            if f.detach {
                self.machine.detach(member);
                self.members.remove(&member);
            } else {
                self.machine.set_credit(member, Credit::Fetch { left: 0 });
            }
            if let Err(got) = f.done.send(f.got) {
                // The asker went away: what it was handed goes back.
                let offsets: Vec<u64> = got.iter().map(|d| d.offset).collect();
                self.machine
                    .nack(None, &offsets, Duration::ZERO, Instant::now());
            }
        }
    }

    fn apply(&mut self, c: Cmd, now: Instant) {
        match c {
            Cmd::Join {
                member,
                name,
                credit,
                to,
            } => {
                self.members.insert(member, to);
                self.machine.join(member, name, credit);
            }
            Cmd::Leave(member) => {
                self.members.remove(&member);
                if let Some(f) = self.fetches.remove(&member) {
                    let offsets: Vec<u64> = f.got.iter().map(|d| d.offset).collect();
                    self.machine.nack(None, &offsets, Duration::ZERO, now);
                }
                self.machine.leave(member, now);
            }
            Cmd::Credit(member, credit) => self.machine.set_credit(member, credit),
            Cmd::Ack(ranges) => {
                self.machine.set_end(self.stream.durable_end());
                self.machine.ack_ranges(&ranges);
            }
            Cmd::Settle(member, settle, done) => {
                self.machine.set_end(self.stream.durable_end());
                let (acked, ignored) = self.machine.settle(member, &settle, now);
                let _ = done.send(super::handle::Settled { acked, ignored });
            }
            Cmd::AckUpTo(member, offset) => {
                self.machine.ack_up_to(member, offset);
            }
            Cmd::Nack(member, offsets, delay) => self.machine.nack(member, &offsets, delay, now),
            Cmd::Extend(member, offsets, by) => self.machine.extend(member, &offsets, by, now),
            Cmd::Fetch {
                member,
                max,
                until,
                detach,
                done,
            } => {
                // One fetch at a time per member: a new one ends the old.
                if let Some(old) = self.fetches.remove(&member) {
                    let _ = old.done.send(old.got);
                }
                self.machine.set_credit(member, Credit::Fetch { left: max });
                self.fetches.insert(
                    member,
                    OpenFetch {
                        until,
                        detach,
                        done,
                        got: Vec::new(),
                    },
                );
            }
            Cmd::Reconfigure(settings) => self.reconfigure(*settings),
            Cmd::Stop => {}
            Cmd::Retire(done) => {
                let members = self.machine.member_count() as u64;
                if members > 0 {
                    let _ = done.send(Err(members));
                } else {
                    self.retiring = Some(done);
                }
            }
            Cmd::Sync(done) => {
                self.take_events();
                // Answered when the write holding everything queued now is
                // done: the one running, or the next.
                let target = if self.queue.is_empty() {
                    self.batches_started
                } else {
                    self.batches_started + 1
                };
                self.waiters.push((target, done));
            }
        }
    }

    /// A reload's settings. Messages out with members keep the deadline
    /// they were delivered with: the member was told it (`deadline_ms`
    /// on the wire, the HTTP and gRPC answers) and plans its work and its
    /// extensions by it; a shorter one imposed under it would deliver
    /// again work that is being done, and a longer one would hold a
    /// message its member already gave up. Deliveries from now on get the
    /// new deadline. Max deliveries counts at the next failure of each
    /// message (one delivered more often than a lowered limit goes to
    /// the dead-letter stream then); the read-ahead, retention and the
    /// backlog limit hold from the next turn.
    fn reconfigure(&mut self, settings: GroupSettings) {
        self.machine.set_config(settings.machine);
        self.handle.set_config(self.machine.config().clone());
        if self.retain_until_acked != settings.retain_until_acked {
            self.retain_until_acked = settings.retain_until_acked;
            // Retention reads the flag from the cursor: written now.
            self.mirrored_floor = None;
            self.mirror_cursor(true);
        }
        self.max_backlog = settings.max_backlog;
        self.on_backlog = settings.on_backlog;
        // A hold the new settings no longer allow is let go; one they
        // still allow stays until `backpressure` finds the backlog under
        // half the (new) limit, as it would have.
        if self.holding && (self.max_backlog == 0 || self.on_backlog != OnBacklog::Hold) {
            self.holding = false;
            self.stream.hold_producers(false);
        }
    }

    /// Whether a journal write runs (it holds the store meanwhile).
    fn writing(&self) -> bool {
        self.store.is_none()
    }

    /// Starts writing what is queued to the journal (one write and one
    /// fdatasync, on a blocking thread), if anything is.
    fn start_write(&mut self, done: &mpsc::UnboundedSender<WriteDone>) {
        if self.queue.is_empty() {
            return;
        }
        let mut store = self.store.take().expect("no write runs");
        let events = std::mem::take(&mut self.queue);
        let dead = std::mem::take(&mut self.dead_queue);
        self.batches_started += 1;
        let done = done.clone();
        tokio::task::spawn_blocking(move || {
            let r = store.append(&events);
            let _ = done.send((store, r, events, dead));
        });
    }

    fn write_done(
        &mut self,
        (store, result, events, dead): (
            GroupStore,
            Result<(), SpoolError>,
            Vec<Event>,
            Vec<DeadOut>,
        ),
    ) {
        self.store = Some(store);
        match result {
            Ok(()) => {
                self.batches_done += 1;
                self.retry_at = None;
                if !dead.is_empty() {
                    self.store_dead_letters(dead);
                }
            }
            Err(e) => {
                // Nothing of the batch is applied: put it back, try again
                // later; no sync is answered meanwhile.
                warn!(stream = %self.handle.stream, group = %self.handle.group, error = %e, "journal write failed; acks are held until it succeeds");
                let mut events = events;
                events.append(&mut self.queue);
                self.queue = events;
                let mut dead = dead;
                dead.append(&mut self.dead_queue);
                self.dead_queue = dead;
                self.batches_started -= 1;
                self.retry_at = Some(Instant::now() + RETRY_AFTER);
            }
        }
    }

    fn answer_waiters(&mut self) {
        let done = self.batches_done;
        let (ready, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|(t, _)| *t <= done);
        self.waiters = wait;
        for (_, w) in ready {
            let _ = w.send(());
        }
    }

    /// Queues dead letters (whose Dead events are durable) for the
    /// dead-letter stream; their append is started by the loop. Their
    /// messages are read back first; if that fails they are kept, with
    /// every newer one behind them ("stored up to" must not pass one that
    /// is not), and read again after `DEAD_RETRY_AFTER`.
    fn store_dead_letters(&mut self, dead: Vec<DeadOut>) {
        let mut dead = if self.dead_unread.is_empty() {
            dead
        } else {
            let mut all = std::mem::take(&mut self.dead_unread);
            all.extend(dead);
            all
        };
        if dead.is_empty() {
            return;
        }
        let clock = (Instant::now(), now_us());
        let up_to = dead.iter().map(|d| d.dlq_seq).max().unwrap_or(0);
        dead.sort_unstable_by_key(|d| d.offset);
        let offsets: Vec<u64> = dead.iter().map(|d| d.offset).collect();
        let records = self.read_back(&offsets);
        if records.len() < offsets.len() {
            // Held by damage (said once already, and shown), they wait
            // without a word: the stream's repair or restoration frees them.
            if self.readable(offsets[records.len()]) {
                warn!(stream = %self.handle.stream, group = %self.handle.group, count = dead.len(),
                    "dead letters wait: their messages could not be read; trying again in {DEAD_RETRY_AFTER:?}");
            }
            self.dead_unread = dead;
            self.dead_retry_at = Some(clock.0 + DEAD_RETRY_AFTER);
            return;
        }
        let mut letters = Vec::with_capacity(dead.len());
        for (d, (_, record)) in dead.into_iter().zip(records) {
            match record {
                Some(r) => letters.push((d.dlq_seq, self.envelope(d, r, clock))),
                None => {
                    warn!(stream = %self.handle.stream, group = %self.handle.group, offset = d.offset, "a dead letter's message is gone (retention); not stored")
                }
            }
        }
        self.store_batch_after(DeadBatch { letters, up_to });
    }

    /// Reads again the messages of dead letters a read error held back,
    /// once their retry time has come.
    fn reread_dead_letters(&mut self, now: Instant) {
        if !self.dead_unread.is_empty() && self.dead_retry_at.is_none_or(|t| t <= now) {
            self.store_dead_letters(Vec::new());
        }
    }

    /// Starts appending the waiting dead letters, unless an append runs
    /// (one at a time, so that "stored up to" only moves forward) or a
    /// failed one waits for its retry. The append runs apart from the
    /// group: a disk that is full holds it, not the group's deliveries.
    fn start_dead_append(&mut self, done: &mpsc::UnboundedSender<DeadDone>, now: Instant) {
        if self.dead_appending || self.dead_retry_at.is_some_and(|t| t > now) {
            return;
        }
        let Some(batch) = self.dead_waiting.take() else {
            return;
        };
        if batch.letters.is_empty() {
            if batch.up_to > 0 {
                self.queue.push(Event::DeadStored { up_to: batch.up_to });
            }
            return;
        }
        let (stream, group) = (&self.handle.stream, &self.handle.group);
        let dlq = match dead_letter::dlq_stream_name(stream)
            .map_err(|e| e.to_string())
            .and_then(|n| self.spool.stream(&n).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(e) => {
                error!(%stream, %group, error = %e, "cannot open the dead-letter stream; trying again in {DEAD_RETRY_AFTER:?}");
                self.dead_waiting = Some(batch);
                self.dead_retry_at = Some(now + DEAD_RETRY_AFTER);
                return;
            }
        };
        let producer = dead_letter::dlq_producer_id(stream, group);
        let records: Vec<Record> = batch
            .letters
            .iter()
            .map(|(seq, l)| Record {
                producer,
                seq: *seq,
                timestamp_us: now_us(),
                payload: Bytes::from(dead_letter::encode(l)),
                key: None,
            })
            .collect();
        let appended = dlq.append_batch(records);
        let done = done.clone();
        self.dead_appending = true;
        tokio::spawn(async move {
            let result = match appended.await {
                // Refused: behind letters an earlier append failed to store
                // (retried first, so this is not expected): not stored.
                Ok(Ok(outcomes)) if outcomes.contains(&Outcome::Refused) => {
                    Err("refused after an earlier failed append".to_owned())
                }
                Ok(r) => r.map(drop).map_err(|e| e.to_string()),
                Err(_) => Err("the dead-letter stream closed".to_owned()),
            };
            let _ = done.send((batch, result));
        });
    }

    fn dead_append_done(&mut self, (batch, result): DeadDone) {
        self.dead_appending = false;
        let (stream, group) = (&self.handle.stream, &self.handle.group);
        match result {
            Ok(()) => {
                for (_, l) in &batch.letters {
                    warn!(%stream, %group, offset = l.offset, deliveries = l.deliveries, reason = %l.reason, "message dead-lettered");
                }
                if batch.up_to > 0 {
                    self.queue.push(Event::DeadStored { up_to: batch.up_to });
                }
                self.dead_retry_at = None;
            }
            Err(e) => {
                // Their Dead events are journaled: a restart meanwhile
                // re-sends them too (the spool keeps one copy).
                error!(%stream, %group, error = %e, count = batch.letters.len(), "dead-letter append failed; trying again in {DEAD_RETRY_AFTER:?}");
                let newer = self.dead_waiting.take();
                self.dead_waiting = Some(batch);
                if let Some(newer) = newer {
                    self.store_batch_after(newer);
                }
                self.dead_retry_at = Some(Instant::now() + DEAD_RETRY_AFTER);
            }
        }
    }

    /// Adds `newer` behind the waiting letters (older letters go first:
    /// "stored up to" must not pass one that is not).
    fn store_batch_after(&mut self, mut newer: DeadBatch) {
        let w = self.dead_waiting.get_or_insert(DeadBatch {
            letters: Vec::new(),
            up_to: newer.up_to,
        });
        w.up_to = if w.up_to == 0 || newer.up_to == 0 {
            0
        } else {
            w.up_to.max(newer.up_to)
        };
        w.letters.append(&mut newer.letters);
    }

    fn envelope(&self, d: DeadOut, record: Record, (now, now_wall): (Instant, u64)) -> DeadLetter {
        let wall = |t: Instant| {
            now_wall.saturating_sub(now.saturating_duration_since(t).as_micros() as u64)
        };
        DeadLetter {
            stream: self.handle.stream.clone(),
            group: self.handle.group.clone(),
            offset: d.offset,
            producer: record.producer,
            seq: record.seq,
            timestamp_us: record.timestamp_us,
            dead_at_us: now_wall,
            reason: d.reason,
            deliveries: d.deliveries,
            history: d
                .history
                .into_iter()
                .map(|a| dead_letter::Attempt {
                    at_us: wall(a.at),
                    member: a.member,
                    outcome: a.outcome,
                })
                .collect(),
            payload: record.payload,
        }
    }

    /// Dead letters journaled before a crash but maybe not stored in the
    /// dead-letter stream: stored again (the spool keeps one copy).
    fn redrive_dead_letters(&mut self) {
        let pending: Vec<(u64, u64)> = match &self.store {
            Some(s) => s
                .state()
                .dead_pending
                .iter()
                .map(|(&q, &o)| (q, o))
                .collect(),
            None => return,
        };
        if pending.is_empty() {
            return;
        }
        info!(stream = %self.handle.stream, group = %self.handle.group, count = pending.len(), "re-sending dead letters journaled before a restart");
        let dead = pending
            .into_iter()
            .map(|(dlq_seq, offset)| DeadOut {
                offset,
                dlq_seq,
                deliveries: 0,
                reason: "dead-lettered before a restart; history lost".into(),
                history: Vec::new(),
            })
            .collect();
        self.store_dead_letters(dead);
    }

    /// Copies the durable floor to the stream's cursor (retention honours
    /// `retain_until_acked` groups through it).
    fn mirror_cursor(&mut self, now: bool) {
        let Some(store) = &self.store else { return };
        // Below the floor only while a dead letter's message must still be
        // read to store it.
        let floor = store.state().retain_floor();
        if self.mirrored_floor == Some(floor) {
            return;
        }
        if !now && self.mirrored_floor.is_some() && self.mirrored_at.elapsed() < MIRROR_EVERY {
            return;
        }
        self.mirrored_floor = Some(floor);
        self.mirrored_at = Instant::now();
        // The writer thread stores it; nobody waits for the answer.
        drop(self.stream.set_cursor(
            &self.handle.group,
            Cursor {
                ack_floor: floor,
                retain_until_acked: self.retain_until_acked,
            },
        ));
    }

    /// Append time of the oldest message not done: the machine knows it
    /// once the floor is read; before that (a group nobody reads yet, such
    /// as a forward whose cluster was never reached) one record is read at
    /// the floor, again only when the floor moves.
    fn oldest_us(&mut self) -> Option<u64> {
        if let Some(t) = self.machine.oldest_pending_us() {
            return Some(t);
        }
        if self.machine.backlog() == 0 {
            return None;
        }
        let floor = self.machine.floor();
        if let Some((at, t)) = self.floor_time {
            if at == floor {
                return t;
            }
        }
        // Below the stream's first offset (retention took it) the reader
        // returns the first record left, the oldest there is. A read error
        // gives no age here; the group's own reads say what it is.
        let t = self
            .readable(floor)
            .then(|| self.stream.reader(floor).next_record().ok().flatten())
            .flatten()
            .map(|(_, r)| r.timestamp_us);
        self.floor_time = Some((floor, t));
        t
    }

    fn publish_stats(&mut self) {
        // A record's time is never 0 (µs since 1970).
        let oldest = self.oldest_us().unwrap_or(0);
        self.handle.oldest_us.store(oldest, Relaxed);
        let m = &self.machine;
        let unread = self.stream.durable_end().saturating_sub(m.next_read());
        // Updated in place: this runs at every turn of the loop.
        let mut s = self.handle.stats.lock().unwrap();
        s.backlog_messages = m.backlog();
        s.backlog_bytes = m.pending_bytes() + unread * mean_record_bytes(&self.stream);
        s.members = m.member_count() as u64;
        s.credit = m.free_credit();
        s.out = m.out() as u64;
        s.floor = m.floor();
        s.counters.clone_from(m.counters());
        s.retain_until_acked = self.retain_until_acked;
    }
}
