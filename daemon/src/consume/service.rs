//! The consumer service: one task per consumer group drives its
//! [`Group`] machine over the spool (reading records as they become
//! durable, journaling acks, writing dead letters), and the handles
//! through which QUIC and HTTP consumers join a group.
//!
//! Order of durability, which recovery relies on:
//! - an ack is reported durable (`sync`) only after the journal batch that
//!   holds it was fdatasynced;
//! - a dead letter is appended to the dead-letter stream only after the
//!   journal batch that dead-lettered it is durable; its seq in that stream
//!   is the group's dead-letter counter, so a re-append after a crash is a
//!   duplicate the spool stores once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::dead_letter::{self, DeadLetter};
use super::group::{
    Credit, DeadOut, Delivery, Group, GroupConfig, GroupCounters, KeyRule, MemberId,
};
use super::store::{check_group_name, Event, GroupStore};
use crate::spool::writer::now_us;
use crate::spool::{Cursor, Reader, Record, Spool, SpoolError, Stream};

/// Where a new group starts (an existing group continues from its state):
/// the transport's own type, as subscribers send it.
pub use sluice_transport::quic::control::StartAt;

/// A group's settings as configured.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub machine: GroupConfig,
    /// Retention keeps what this group has not acked.
    pub retain_until_acked: bool,
    /// Where the group starts when it is created at daemon start (groups
    /// created by a subscriber start where it asks).
    pub start: StartAt,
    /// Backpressure: at this many messages of backlog the stream's
    /// producers get no credit until the group catches up (0: never; a
    /// stalled group then holds back nobody).
    pub max_backlog: u64,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            machine: GroupConfig::default(),
            retain_until_acked: false,
            start: StartAt::Earliest,
            max_backlog: 0,
        }
    }
}

/// The consumer service's settings.
#[derive(Debug, Clone, Default)]
pub struct ConsumersConfig {
    /// For groups not named in `groups`.
    pub defaults: GroupSettings,
    /// Configured groups: (stream, group) → settings. They exist from the
    /// daemon's start on.
    pub groups: Vec<(String, String, GroupSettings)>,
}

impl ConsumersConfig {
    fn settings(&self, stream: &str, group: &str) -> GroupSettings {
        self.groups
            .iter()
            .find(|(s, g, _)| s == stream && g == group)
            .map_or_else(|| self.defaults.clone(), |(_, _, c)| c.clone())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("no stream {0:?}")]
    NoSuchStream(String),
    #[error("bad group name: {0}")]
    BadGroup(String),
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    #[error("the consumer service is stopping")]
    Stopping,
}

/// What the service shows of a group (metrics, `sluice stat`, HTTP).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct GroupStats {
    pub stream: String,
    pub group: String,
    /// Messages not yet acked or dead-lettered.
    pub backlog_messages: u64,
    /// Their payload bytes (read ones counted exactly, unread ones
    /// estimated from the stream's mean record size).
    pub backlog_bytes: u64,
    /// Age of the oldest message not acked, seconds (0: none).
    pub oldest_unacked_seconds: f64,
    pub members: u64,
    /// Credit the members have left, messages.
    pub credit: u64,
    /// Messages out with members now.
    pub out: u64,
    pub floor: u64,
    /// What the group did since the daemon started.
    #[serde(flatten)]
    pub counters: GroupCounters,
    pub retain_until_acked: bool,
}

enum Cmd {
    Join {
        member: MemberId,
        name: String,
        credit: Credit,
        to: mpsc::UnboundedSender<Delivery>,
    },
    Leave(MemberId),
    Credit(MemberId, Credit),
    Ack(Vec<u64>),
    AckUpTo(MemberId, u64),
    Nack(Option<MemberId>, Vec<u64>, Duration),
    Extend(Option<MemberId>, Vec<u64>, Duration),
    /// Pull: deliver up to `max` to `member`, answering when any arrived
    /// or at `until`.
    Fetch {
        member: MemberId,
        max: u32,
        until: Instant,
        /// Detach the member once answered (an HTTP fetch).
        detach: bool,
        done: oneshot::Sender<Vec<Delivery>>,
    },
    /// Answer once everything before is durable.
    Sync(oneshot::Sender<()>),
    /// The daemon stops: finish the journal and end.
    Stop,
}

/// A running group, as its members and the operators see it.
pub struct GroupHandle {
    pub stream: String,
    pub group: String,
    cmd: mpsc::UnboundedSender<Cmd>,
    stats: Mutex<GroupStats>,
    /// The group's ack deadline and max deliveries, for subscribers.
    pub config: GroupConfig,
}

impl GroupHandle {
    pub fn stats(&self) -> GroupStats {
        self.stats.lock().unwrap().clone()
    }

    fn send(&self, c: Cmd) -> bool {
        self.cmd.send(c).is_ok()
    }

    pub fn ack(&self, offsets: Vec<u64>) {
        self.send(Cmd::Ack(offsets));
    }

    /// Nack from a client without a session (HTTP).
    pub fn nack_any(&self, offsets: Vec<u64>, delay: Duration) {
        self.send(Cmd::Nack(None, offsets, delay));
    }

    /// Extend from a client without a session (HTTP).
    pub fn extend_any(&self, offsets: Vec<u64>, by: Duration) {
        self.send(Cmd::Extend(None, offsets, by));
    }

    /// Waits until every ack, nack and extension sent before is durable.
    pub async fn sync(&self) -> Result<(), ConsumeError> {
        let (done, rx) = oneshot::channel();
        self.send(Cmd::Sync(done));
        rx.await.map_err(|_| ConsumeError::Stopping)
    }

    /// A one-off pull by a client without a session (HTTP): what it gets
    /// stays out until acked or its deadline.
    pub async fn fetch_detached(
        &self,
        member: MemberId,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<Delivery>, ConsumeError> {
        let (to, _rx) = mpsc::unbounded_channel();
        self.send(Cmd::Join {
            member,
            name: format!("http fetch {member}"),
            credit: Credit::Fetch { left: 0 },
            to,
        });
        let (done, rx) = oneshot::channel();
        self.send(Cmd::Fetch {
            member,
            max,
            until: Instant::now() + wait,
            detach: true,
            done,
        });
        rx.await.map_err(|_| ConsumeError::Stopping)
    }
}

/// A member of a group: deliveries arrive on `deliveries`; dropping it
/// leaves the group (what it held is delivered again).
pub struct Member {
    pub id: MemberId,
    pub group: Arc<GroupHandle>,
    pub deliveries: mpsc::UnboundedReceiver<Delivery>,
}

impl Member {
    pub fn ack(&self, offsets: Vec<u64>) {
        self.group.ack(offsets);
    }

    pub fn ack_up_to(&self, offset: u64) {
        self.group.send(Cmd::AckUpTo(self.id, offset));
    }

    pub fn nack(&self, offsets: Vec<u64>, delay: Duration) {
        self.group.send(Cmd::Nack(Some(self.id), offsets, delay));
    }

    pub fn extend(&self, offsets: Vec<u64>, by: Duration) {
        self.group.send(Cmd::Extend(Some(self.id), offsets, by));
    }

    pub fn set_credit(&self, credit: Credit) {
        self.group.send(Cmd::Credit(self.id, credit));
    }

    /// Pull: up to `max` messages, as soon as any is there or after `wait`.
    /// The answer comes through the returned receiver (so a caller can
    /// wait for it beside other work).
    pub fn fetch(&self, max: u32, wait: Duration) -> oneshot::Receiver<Vec<Delivery>> {
        let (done, rx) = oneshot::channel();
        self.group.send(Cmd::Fetch {
            member: self.id,
            max,
            until: Instant::now() + wait,
            detach: false,
            done,
        });
        rx
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.group.send(Cmd::Leave(self.id));
    }
}

/// Every group of a daemon.
pub struct Consumers {
    spool: Arc<Spool>,
    config: ConsumersConfig,
    /// Held across a group's creation, so that a group is created once.
    groups: tokio::sync::Mutex<HashMap<(String, String), Arc<GroupHandle>>>,
    /// The same handles, for readers that must not wait (metrics).
    listed: Mutex<Vec<Arc<GroupHandle>>>,
    next_member: AtomicU64,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Consumers {
    pub fn new(spool: Arc<Spool>, config: ConsumersConfig) -> Arc<Consumers> {
        Arc::new(Consumers {
            spool,
            config,
            groups: tokio::sync::Mutex::new(HashMap::new()),
            listed: Mutex::new(Vec::new()),
            next_member: AtomicU64::new(1),
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// Starts the configured groups and every group found on disk, so that
    /// their backlog shows and retention honours them before anyone
    /// subscribes.
    pub async fn start(&self) -> Result<(), ConsumeError> {
        for (stream, group, settings) in self.config.groups.clone() {
            if !self.spool.stream_names().contains(&stream) {
                self.spool.stream(&stream)?;
            }
            self.group(&stream, &group, settings.start).await?;
        }
        for stream in self.spool.stream_names() {
            let s = self.spool.stream(&stream)?;
            let names = s.fs().list(&s.dir().join("groups")).unwrap_or_default();
            for group in names {
                if check_group_name(&group).is_ok() {
                    self.group(&stream, &group, StartAt::Earliest).await?;
                }
            }
        }
        Ok(())
    }

    /// A fresh member id.
    pub fn member_id(&self) -> MemberId {
        self.next_member.fetch_add(1, Relaxed)
    }

    /// The group, opened (recovered) or created starting at `start`.
    pub async fn group(
        &self,
        stream: &str,
        group: &str,
        start: StartAt,
    ) -> Result<Arc<GroupHandle>, ConsumeError> {
        check_group_name(group).map_err(ConsumeError::BadGroup)?;
        let mut groups = self.groups.lock().await;
        let key = (stream.to_owned(), group.to_owned());
        if let Some(h) = groups.get(&key) {
            return Ok(h.clone());
        }
        if !self.spool.stream_names().iter().any(|n| n == stream) {
            return Err(ConsumeError::NoSuchStream(stream.to_owned()));
        }
        let s = self.spool.stream(stream)?;
        let settings = self.config.settings(stream, group);
        let dir = group_dir(&s, group);
        let fs = s.fs().clone();
        let s2 = s.clone();
        let store = tokio::task::spawn_blocking(move || -> Result<GroupStore, SpoolError> {
            if let Some(store) = GroupStore::open(fs.clone(), &dir)? {
                return Ok(store);
            }
            let floor = start_offset(&s2, start)?;
            GroupStore::create(fs, &dir, floor)
        })
        .await
        .map_err(|_| ConsumeError::Stopping)??;
        let store = self.align_dead_letter_seq(stream, group, store).await?;
        let (cmd, rx) = mpsc::unbounded_channel();
        let handle = Arc::new(GroupHandle {
            stream: stream.to_owned(),
            group: group.to_owned(),
            cmd,
            stats: Mutex::new(GroupStats::default()),
            config: settings.machine.clone(),
        });
        let machine = Group::new(settings.machine.clone(), store.state());
        info!(
            stream,
            group,
            floor = machine.floor(),
            dead_pending = store.state().dead_pending.len(),
            "consumer group ready"
        );
        let task = GroupTask {
            handle: handle.clone(),
            spool: self.spool.clone(),
            reader: s.reader(machine.floor()),
            stream: s,
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
        };
        let end = task.stream.watch_end();
        self.tasks
            .lock()
            .unwrap()
            .push(tokio::spawn(task.run(rx, end)));
        groups.insert(key, handle.clone());
        self.listed.lock().unwrap().push(handle.clone());
        Ok(handle)
    }

    /// Makes sure the group's dead-letter counter is past every seq its
    /// dead letters already have in the dead-letter stream: a seq used
    /// twice would make the second dead letter look like a duplicate.
    async fn align_dead_letter_seq(
        &self,
        stream: &str,
        group: &str,
        mut store: GroupStore,
    ) -> Result<GroupStore, ConsumeError> {
        let dlq = dead_letter::dlq_stream_name(stream)?;
        if !self.spool.stream_names().contains(&dlq) {
            return Ok(store);
        }
        let producer = dead_letter::dlq_producer_id(stream, group);
        let highest = self.spool.stream(&dlq)?.highest_seq(producer).await;
        match highest {
            Ok(Some(h)) if h > store.state().dlq_stored => tokio::task::spawn_blocking(move || {
                store.append(&[Event::DeadStored { up_to: h }])?;
                Ok::<_, SpoolError>(store)
            })
            .await
            .map_err(|_| ConsumeError::Stopping)?
            .map_err(ConsumeError::from),
            _ => Ok(store),
        }
    }

    /// Joins `group` of `stream` as a new member.
    pub async fn join(
        &self,
        stream: &str,
        group: &str,
        start: StartAt,
        name: String,
        credit: Credit,
    ) -> Result<Member, ConsumeError> {
        let handle = self.group(stream, group, start).await?;
        let id = self.member_id();
        let (to, deliveries) = mpsc::unbounded_channel();
        handle.send(Cmd::Join {
            member: id,
            name,
            credit,
            to,
        });
        Ok(Member {
            id,
            group: handle,
            deliveries,
        })
    }

    /// The group if it is running (HTTP acks need no creation).
    pub async fn existing(&self, stream: &str, group: &str) -> Option<Arc<GroupHandle>> {
        let key = (stream.to_owned(), group.to_owned());
        self.groups.lock().await.get(&key).cloned()
    }

    /// Every running group's figures, by stream then group.
    pub fn stats(&self) -> Vec<GroupStats> {
        let mut v: Vec<GroupStats> = self
            .listed
            .lock()
            .unwrap()
            .iter()
            .map(|h| h.stats())
            .collect();
        v.sort_by(|a, b| (&a.stream, &a.group).cmp(&(&b.stream, &b.group)));
        v
    }

    /// Stops every group task after its journal is written.
    pub async fn shutdown(&self) {
        self.groups.lock().await.clear();
        for h in self.listed.lock().unwrap().drain(..) {
            h.send(Cmd::Stop);
        }
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap());
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

/// The offset a new group starting at `start` begins at.
fn start_offset(stream: &Stream, start: StartAt) -> Result<u64, SpoolError> {
    let end = stream.durable_end();
    Ok(match start {
        StartAt::Earliest => stream.first_offset(),
        StartAt::Latest => end,
        StartAt::Offset(n) => n.clamp(stream.first_offset(), end),
        StartAt::Time(t) => {
            let mut r = stream.reader(stream.first_offset());
            r.seek_time(t)?;
            r.position()
        }
    })
}

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

struct GroupTask {
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
    members: HashMap<MemberId, mpsc::UnboundedSender<Delivery>>,
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
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>, mut end: watch::Receiver<u64>) {
        self.redrive_dead_letters().await;
        let (write_tx, mut write_rx) = mpsc::unbounded_channel::<WriteDone>();
        let mut writing = false;
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
            if !writing && self.retry_at.is_none_or(|t| t <= now) {
                writing = self.start_write(&write_tx);
            }
            self.answer_waiters();
            self.mirror_cursor(false);
            self.backpressure();
            self.publish_stats();
            if !open && !writing && self.queue.is_empty() {
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
                Some(done) = write_rx.recv(), if writing => {
                    writing = false;
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
        for d in self.machine.dispatch(now) {
            if let Some(f) = self.fetches.get_mut(&d.member) {
                f.got.push(d);
                continue;
            }
            let member = d.member;
            let gone = match self.members.get(&member) {
                Some(to) => to.send(d).is_err(),
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

    /// Starts writing what is queued to the journal (one write and one
    /// fdatasync, on a blocking thread); false if there is nothing.
    fn start_write(&mut self, done: &mpsc::UnboundedSender<WriteDone>) -> bool {
        if self.queue.is_empty() {
            return false;
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
        true
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
        let s = GroupStats {
            stream: self.handle.stream.clone(),
            group: self.handle.group.clone(),
            backlog_messages: m.backlog(),
            backlog_bytes: m.pending_bytes() + unread * mean_record_bytes(&self.stream),
            oldest_unacked_seconds: oldest,
            members: m.member_count() as u64,
            credit: m.free_credit(),
            out: m.out() as u64,
            floor: m.floor(),
            counters: m.counters().clone(),
            retain_until_acked: self.retain_until_acked,
        };
        *self.handle.stats.lock().unwrap() = s;
    }
}

/// Parses a conflation key rule: `producer`, `prefix:N`, `delimiter:C`.
pub fn parse_key_rule(s: &str) -> Result<KeyRule, String> {
    if s == "producer" {
        return Ok(KeyRule::Producer);
    }
    if let Some(n) = s.strip_prefix("prefix:") {
        let n: usize = n
            .parse()
            .map_err(|_| format!("`{s}`: prefix:N takes a byte count"))?;
        if n == 0 {
            return Err(format!("`{s}`: the prefix must be at least one byte"));
        }
        return Ok(KeyRule::Prefix(n));
    }
    if let Some(d) = s.strip_prefix("delimiter:") {
        let b = d.as_bytes();
        if b.len() != 1 {
            return Err(format!("`{s}`: delimiter:C takes one ASCII character"));
        }
        return Ok(KeyRule::Delimiter(b[0]));
    }
    Err(format!(
        "`{s}` is not one of producer, prefix:N, delimiter:C"
    ))
}

/// A group's state folder.
pub fn group_dir(stream: &Stream, group: &str) -> PathBuf {
    stream.dir().join("groups").join(group)
}
