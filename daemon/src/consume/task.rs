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
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::dead_letter::{self, DeadLetter};
use super::group::{Credit, DeadOut, Delivery, Group, MemberId};
use super::service::{Cmd, GroupHandle, GroupSettings};
use super::store::{Event, GroupStore};
use crate::spool::writer::now_us;
use crate::spool::{Cursor, Reader, Record, Spool, SpoolError, Stream};

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
}

/// How often a group's floor is copied to the stream's cursor file, which
/// retention reads.
const MIRROR_EVERY: Duration = Duration::from_secs(1);
/// Wait after a failed journal write (a full disk) before trying again.
const RETRY_AFTER: Duration = Duration::from_millis(200);

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
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let mut end = self.stream.watch_end();
        self.redrive_dead_letters().await;
        let (write_tx, mut write_rx) = mpsc::unbounded_channel::<WriteDone>();
        let (mut open, mut end_open) = (true, true);
        loop {
            self.read();
            let now = Instant::now();
            // A fetch whose asker went away takes nothing more.
            self.answer_fetches(now, true);
            self.deliver(now);
            self.answer_fetches(now, false);
            let (events, dead) = self.machine.take_events();
            self.queue.extend(events);
            self.dead_queue.extend(dead);
            if !self.writing() && self.retry_at.is_none_or(|t| t <= now) {
                self.start_write(&write_tx);
            }
            self.answer_waiters();
            self.mirror_cursor(false);
            self.backpressure();
            self.publish_stats();
            if !open && !self.writing() && self.queue.is_empty() {
                break;
            }
            let timer = [
                self.machine.next_timer(),
                self.fetches.values().map(|f| f.until).min(),
                self.retry_at,
                Some(now + MIRROR_EVERY),
            ]
            .into_iter()
            .flatten()
            .min()
            .expect("one is always set");
            tokio::select! {
                c = rx.recv(), if open => match c {
                    Some(Cmd::Stop) | None => open = false,
                    Some(c) => self.apply(c, Instant::now()),
                },
                r = end.changed(), if end_open => end_open = r.is_ok(),
                Some(done) = write_rx.recv(), if self.writing() => {
                    self.write_done(done).await;
                }
                _ = tokio::time::sleep_until(timer.into()) => {}
            }
            // Take every command already queued before the next round.
            while open {
                match rx.try_recv() {
                    Ok(Cmd::Stop) | Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                    Ok(c) => self.apply(c, Instant::now()),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                }
            }
        }
        self.mirror_cursor(true);
        if self.holding {
            self.stream.hold_producers(false);
        }
    }

    /// Holds the stream's producers back while the backlog is at the limit,
    /// and lets them go once it is back under half of it (no flapping).
    fn backpressure(&mut self) {
        if self.max_backlog == 0 {
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

    /// Reads what the machine wants from the spool.
    fn read(&mut self) {
        self.machine.set_end(self.stream.durable_end());
        let (want, budget) = self.machine.wants();
        if want == 0 {
            return;
        }
        let mut records = Vec::with_capacity(want.min(1024));
        let mut bytes = 0;
        while records.len() < want && bytes < budget {
            match self.reader.next_record() {
                Ok(Some(r)) => {
                    bytes += r.1.payload.len() as u64;
                    records.push(r);
                }
                Ok(None) => break,
                Err(e) => {
                    error!(stream = %self.handle.stream, group = %self.handle.group, error = %e, "reading the stream failed");
                    break;
                }
            }
        }
        if !records.is_empty() {
            self.machine.offer(records);
        }
    }

    fn deliver(&mut self, now: Instant) {
        // One send per member and turn, not one per message.
        let mut batches: HashMap<MemberId, Vec<Delivery>> = HashMap::new();
        for d in self.machine.dispatch(now) {
            match self.fetches.get_mut(&d.member) {
                Some(f) => f.got.push(d),
                None => batches.entry(d.member).or_default().push(d),
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
            Cmd::Ack(offsets) => {
                self.machine.set_end(self.stream.durable_end());
                self.machine.ack(&offsets);
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
            Cmd::Stop => {}
            Cmd::Sync(done) => {
                let (events, dead) = self.machine.take_events();
                self.queue.extend(events);
                self.dead_queue.extend(dead);
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

    async fn write_done(
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
                    self.store_dead_letters(dead).await;
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

    /// Appends dead letters (whose Dead events are durable) to the
    /// dead-letter stream, then journals that they are stored.
    async fn store_dead_letters(&mut self, dead: Vec<DeadOut>) {
        let clock = (Instant::now(), now_us());
        let letters: Vec<(u64, DeadLetter)> = dead
            .into_iter()
            .map(|d| (d.dlq_seq, self.envelope(d, clock)))
            .collect();
        self.append_dead(letters).await;
    }

    async fn append_dead(&mut self, letters: Vec<(u64, DeadLetter)>) {
        if letters.is_empty() {
            return;
        }
        let (stream, group) = (&self.handle.stream, &self.handle.group);
        let dlq = match dead_letter::dlq_stream_name(stream)
            .map_err(|e| e.to_string())
            .and_then(|n| self.spool.stream(&n).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(e) => {
                error!(%stream, %group, error = %e, "cannot open the dead-letter stream; dead letters are re-sent at the next start");
                return;
            }
        };
        let producer = dead_letter::dlq_producer_id(stream, group);
        let up_to = letters.iter().map(|(s, _)| *s).max().unwrap_or(0);
        let records: Vec<Record> = letters
            .iter()
            .map(|(seq, l)| Record {
                producer,
                seq: *seq,
                timestamp_us: now_us(),
                payload: Bytes::from(dead_letter::encode(l)),
            })
            .collect();
        for (_, l) in &letters {
            warn!(%stream, %group, offset = l.offset, deliveries = l.deliveries, reason = %l.reason, "message dead-lettered");
        }
        match dlq.append_batch(records).await {
            Ok(Ok(_)) => self.queue.push(Event::DeadStored { up_to }),
            Ok(Err(e)) => {
                error!(%stream, %group, error = %e, "dead-letter append failed; re-sent at the next start")
            }
            Err(_) => error!(%stream, %group, "dead-letter stream closed"),
        }
    }

    fn envelope(&self, d: DeadOut, (now, now_wall): (Instant, u64)) -> DeadLetter {
        let wall = |t: Instant| {
            now_wall.saturating_sub(now.saturating_duration_since(t).as_micros() as u64)
        };
        DeadLetter {
            stream: self.handle.stream.clone(),
            group: self.handle.group.clone(),
            offset: d.offset,
            producer: d.record.producer,
            seq: d.record.seq,
            timestamp_us: d.record.timestamp_us,
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
            payload: d.record.payload,
        }
    }

    /// Dead letters journaled before a crash but maybe not stored in the
    /// dead-letter stream: stored again (the spool keeps one copy).
    async fn redrive_dead_letters(&mut self) {
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
        let mut letters = Vec::new();
        for (seq, offset) in pending {
            let mut r = self.stream.reader(offset);
            match r.next_record() {
                Ok(Some((o, rec))) if o == offset => letters.push((
                    seq,
                    DeadLetter {
                        stream: self.handle.stream.clone(),
                        group: self.handle.group.clone(),
                        offset,
                        producer: rec.producer,
                        seq: rec.seq,
                        timestamp_us: rec.timestamp_us,
                        dead_at_us: now_us(),
                        reason: "dead-lettered before a restart; history lost".into(),
                        deliveries: 0,
                        history: Vec::new(),
                        payload: rec.payload,
                    },
                )),
                _ => {
                    warn!(stream = %self.handle.stream, group = %self.handle.group, offset, "a dead letter's message is gone (retention); not re-sent")
                }
            }
        }
        info!(stream = %self.handle.stream, group = %self.handle.group, count = letters.len(), "re-sending dead letters journaled before a restart");
        self.append_dead(letters).await;
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

    fn publish_stats(&self) {
        let m = &self.machine;
        let unread = self.stream.durable_end().saturating_sub(m.next_read());
        let oldest = m
            .oldest_pending_us()
            .map_or(0.0, |t| now_us().saturating_sub(t) as f64 / 1e6);
        // Updated in place: this runs at every turn of the loop.
        let mut s = self.handle.stats.lock().unwrap();
        s.backlog_messages = m.backlog();
        s.backlog_bytes = m.pending_bytes() + unread * mean_record_bytes(&self.stream);
        s.oldest_unacked_seconds = oldest;
        s.members = m.member_count() as u64;
        s.credit = m.free_credit();
        s.out = m.out() as u64;
        s.floor = m.floor();
        s.counters.clone_from(m.counters());
        s.retain_until_acked = self.retain_until_acked;
    }
}
