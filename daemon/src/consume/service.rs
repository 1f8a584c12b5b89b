//! The consumer service: the groups of a daemon (each driven by its task,
//! [`super::task`]), their settings and figures, and the handles through
//! which QUIC and HTTP consumers join a group and act on it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_transport::quic::consume::Delivery as WireDelivery;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::budget::{Budget, ConsumerLimits, Grant};
use super::dead_letter;
use super::group::{Credit, Delivery, Group, KeyRule, MemberId};
use super::store::{check_group_name, remove_folder, Event, GroupStore, OnDamage};
use super::task::GroupTask;
use crate::spool::record::now_us;
use crate::spool::recoveries::{Kind as RecoveryKind, Recovery as Recovered};
use crate::spool::{Recovery, Spool, SpoolError, Stream};

/// The consumer service's settings.
#[derive(Debug, Clone, Default)]
pub struct ConsumersConfig {
    /// What consumers may hold, whatever they declare; how many groups.
    pub limits: ConsumerLimits,
    /// For groups not named in `groups`.
    pub defaults: GroupSettings,
    /// Configured groups: (stream, group) → settings. They exist from the
    /// daemon's start on. A stream with `*` is a pattern (a forward's):
    /// its settings hold for every matching stream, made later too.
    pub groups: Vec<(String, String, GroupSettings)>,
}

impl ConsumersConfig {
    fn settings(&self, stream: &str, group: &str) -> GroupSettings {
        self.configured(stream, group)
            .unwrap_or(&self.defaults)
            .clone()
    }

    /// The settings of a group named in `groups`.
    fn configured(&self, stream: &str, group: &str) -> Option<&GroupSettings> {
        self.groups
            .iter()
            .find(|(s, g, _)| g == group && (s == stream || pattern_takes(s, stream)))
            .map(|(_, _, c)| c)
    }
}

/// Whether configured-group pattern `pattern` takes stream `name` (never
/// a dead-letter stream).
fn pattern_takes(pattern: &str, name: &str) -> bool {
    is_pattern(pattern) && !name.ends_with(".dlq") && matches(pattern, name)
}

pub use super::group::Settle;
use super::handle::Cmd;
pub use super::handle::{
    ConsumeError, GroupHandle, GroupSettings, GroupStats, OnBacklog, Settled, StartAt,
};
use crate::pattern::{is_pattern, matches};

/// A member of a group: deliveries arrive on `deliveries` (in batches,
/// one per turn of the group's task); dropping it
/// leaves the group (what it held is delivered again).
pub struct Member {
    pub id: MemberId,
    pub group: Arc<GroupHandle>,
    pub deliveries: mpsc::UnboundedReceiver<Vec<Delivery>>,
    /// The credit it joined with, as the daemon's limits clamped what it
    /// declared (gRPC's StreamingPull tells the client).
    pub granted: Credit,
    /// Its share of the byte credit (push members of a connection).
    grant: Option<Mutex<Grant>>,
}

impl Member {
    pub fn ack(&self, ranges: Vec<Range<u64>>) {
        self.group.ack(ranges);
    }

    /// Acks, nacks and deadline changes of one request at once; the
    /// answer says which offsets took effect (see [`Settled`]).
    pub fn settle(&self, s: Settle) -> oneshot::Receiver<Settled> {
        let (done, rx) = oneshot::channel();
        self.group.send(Cmd::Settle(self.id, s, done));
        rx
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

    /// New credit, as the consumer declares it (clamped like at the join).
    pub fn set_credit(&self, credit: Credit) {
        let credit = match &self.grant {
            Some(g) => {
                let mut g = g.lock().unwrap();
                let budget = g.budget().clone();
                budget.regrant(&mut g, credit)
            }
            None => credit,
        };
        self.group.send(Cmd::Credit(self.id, credit));
    }

    /// Pull: up to `max` messages, as soon as any is there or after `wait`.
    /// The answer comes through the returned receiver (so a caller can
    /// wait for it beside other work).
    /// `max` is clamped like a push member's message credit; the answer's
    /// bytes are bounded by the group's read-ahead, and writing it waits
    /// on the stream's flow control, so a client that never reads stops
    /// its own fetches.
    pub fn fetch(&self, max: u32, wait: Duration) -> oneshot::Receiver<Vec<Delivery>> {
        let max = match &self.grant {
            Some(g) => max.min(g.lock().unwrap().budget().limits().max_member_messages),
            None => max,
        };
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
    /// Replaced by a reload ([`reconfigure`](Self::reconfigure)).
    config: std::sync::RwLock<ConsumersConfig>,
    budget: Arc<Budget>,
    /// Held across a group's creation, so that a group is created once.
    groups: tokio::sync::Mutex<HashMap<GroupKey, Arc<GroupHandle>>>,
    /// The same handles, for readers that must not wait (metrics).
    listed: Mutex<Vec<Arc<GroupHandle>>>,
    next_member: AtomicU64,
    tasks: Mutex<Vec<(GroupKey, JoinHandle<()>)>>,
}

/// A group's (stream, group) names.
type GroupKey = (String, String);

/// What [`Consumers::reconfigure`] did.
#[derive(Debug, Default)]
pub struct Reconfigured {
    /// Running groups whose settings differ, and how (those that apply
    /// now were sent to the group).
    pub changed: Vec<(GroupKey, Vec<super::changes::Change>)>,
    /// Newly configured groups (a pattern's stream, group) and how many
    /// groups that opened (a pattern: one per matching stream; 0: it was
    /// running already).
    pub created: Vec<(String, String, usize)>,
    /// Newly configured groups that could not be opened, and why.
    pub failed: Vec<(String, String, String)>,
    /// Running groups no longer configured: left running.
    pub unconfigured: Vec<GroupKey>,
}

impl Consumers {
    pub fn new(spool: Arc<Spool>, config: ConsumersConfig) -> Arc<Consumers> {
        Arc::new(Consumers {
            spool,
            budget: Budget::new(config.limits),
            config: std::sync::RwLock::new(config),
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
        let configured = self.config.read().unwrap().groups.clone();
        {
            let mut groups = self.groups.lock().await;
            for (stream, group, settings) in configured {
                self.open_configured(&mut groups, &stream, &group, settings.start)
                    .await?;
            }
        }
        for stream in self.spool.stream_names() {
            let s = self.spool.stream(&stream)?;
            let names = s.fs().list(&s.dir().join("groups")).unwrap_or_default();
            for group in names {
                if check_group_name(&group).is_err() {
                    continue;
                }
                let dir = group_dir(&s, &group);
                if GroupStore::exists(&**s.fs(), &dir) {
                    self.group(&stream, &group, StartAt::Earliest).await?;
                } else {
                    // A creation or a deletion a crash cut short: no group.
                    // (Configured groups were created above.)
                    info!(stream, group, "removing a consumer group folder that holds no group (a creation or deletion cut short)");
                    remove_folder(&**s.fs(), &dir)?;
                }
            }
        }
        Ok(())
    }

    /// A configured group (`stream` may be a pattern): opened, or created
    /// where it starts (its stream too, if missing).
    async fn open_configured(
        &self,
        groups: &mut HashMap<GroupKey, Arc<GroupHandle>>,
        stream: &str,
        group: &str,
        start: StartAt,
    ) -> Result<(), ConsumeError> {
        check_group_name(group).map_err(ConsumeError::BadGroup)?;
        if is_pattern(stream) {
            // The streams there are now; those made later get the group
            // when its forward finds them.
            for name in self.spool.stream_names() {
                if pattern_takes(stream, &name) {
                    self.open_group(groups, &name, group, start).await?;
                }
            }
            return Ok(());
        }
        if !self.spool.stream_names().iter().any(|n| n == stream) {
            self.spool.stream(stream)?;
        }
        self.open_group(groups, stream, group, start).await?;
        Ok(())
    }

    /// A reload's settings (SIGHUP), put in force without stopping a
    /// group:
    /// - a running group whose settings change (its own entry, a
    ///   forward's, or the defaults it takes) gets them through its task
    ///   ([`changes`](super::changes) says which apply at once);
    /// - a newly configured group is created (where its `start` says);
    /// - a group no longer configured runs on with the settings it has:
    ///   its state goes only by an explicit deletion, which its removal
    ///   from the configuration now allows.
    ///
    /// The consumers' limits stay as they were (the credit budget is
    /// sized by them at start) but for `max_groups`.
    pub async fn reconfigure(&self, mut new: ConsumersConfig) -> Reconfigured {
        let mut groups = self.groups.lock().await;
        let old = {
            let mut config = self.config.write().unwrap();
            let kept = ConsumerLimits {
                max_groups: new.limits.max_groups,
                ..config.limits
            };
            new.limits = kept;
            std::mem::replace(&mut *config, new.clone())
        };
        let mut done = Reconfigured::default();
        let mut running: Vec<&GroupKey> = groups.keys().collect();
        running.sort();
        for (stream, group) in running {
            let key = (stream.clone(), group.clone());
            let handle = &groups[&key];
            let mut applied = handle.applied.lock().unwrap();
            let configured = new.configured(stream, group).is_some();
            if !configured && (applied.unconfigured || old.configured(stream, group).is_some()) {
                // Taken out of the configuration (now or by an earlier
                // reload): it keeps what it runs with.
                if !applied.unconfigured {
                    applied.unconfigured = true;
                    done.unconfigured.push(key);
                }
                continue;
            }
            applied.unconfigured = false;
            let mut is = new.settings(stream, group);
            let list = super::changes::changes(&applied.settings, &is);
            if list.is_empty() {
                continue;
            }
            // Conflation stays as it runs until the group starts again
            // (`Group::set_config`): a later reload still names it.
            is.machine.conflate = applied.settings.machine.conflate.clone();
            if list
                .iter()
                .any(|c| c.applies == super::changes::Applies::Now)
            {
                handle.send(Cmd::Reconfigure(Box::new(is.clone())));
            }
            applied.settings = is;
            done.changed.push((key, list));
        }
        for (stream, group, settings) in &new.groups {
            if old.groups.iter().any(|(s, g, _)| s == stream && g == group) {
                continue;
            }
            let before = groups.len();
            match self
                .open_configured(&mut groups, stream, group, settings.start)
                .await
            {
                Ok(()) => done
                    .created
                    .push((stream.clone(), group.clone(), groups.len() - before)),
                Err(e) => done
                    .failed
                    .push((stream.clone(), group.clone(), e.to_string())),
            }
        }
        done
    }

    /// The spool's streams (dead-letter streams too).
    pub fn stream_names(&self) -> Vec<String> {
        self.spool.stream_names()
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
        self.open_group(&mut groups, stream, group, start).await
    }

    /// [`group`](Self::group), with the map of running groups held.
    async fn open_group(
        &self,
        groups: &mut HashMap<GroupKey, Arc<GroupHandle>>,
        stream: &str,
        group: &str,
        start: StartAt,
    ) -> Result<Arc<GroupHandle>, ConsumeError> {
        let key = (stream.to_owned(), group.to_owned());
        if let Some(h) = groups.get(&key) {
            return Ok(h.clone());
        }
        if !self.spool.stream_names().iter().any(|n| n == stream) {
            return Err(ConsumeError::NoSuchStream(stream.to_owned()));
        }
        let s = self.spool.stream(stream)?;
        let (settings, configured, max) = {
            let c = self.config.read().unwrap();
            let configured = c.configured(stream, group).is_some();
            (c.settings(stream, group), configured, c.limits.max_groups)
        };
        let dir = group_dir(&s, group);
        // A new group past the limit is refused (each reads ahead of its
        // members: memory); one on disk or configured is always opened.
        if groups.len() >= max && !GroupStore::exists(&**s.fs(), &dir) && !configured {
            return Err(ConsumeError::TooManyGroups { max });
        }
        let fs = s.fs().clone();
        let s2 = s.clone();
        let name = group.to_owned();
        let store = tokio::task::spawn_blocking(move || -> Result<GroupStore, SpoolError> {
            let on_damage = if s2.log_config().recovery == Recovery::Repair {
                // Should the group's snapshot be lost, it starts again at
                // its cursor (a mirror of its floor, written every second,
                // so at or below it), else at the stream's first offset:
                // what it acked after is delivered again, nothing skipped.
                let restart_at = s2.cursor(&name).map_or(s2.first_offset(), |c| c.ack_floor);
                OnDamage::Repair { restart_at }
            } else {
                OnDamage::Refuse
            };
            if let Some(mut store) = GroupStore::open(fs.clone(), &dir, on_damage)? {
                // A journal cut by a repair may have lost acks below the
                // cursor, which mirrors a durable floor (never above it):
                // they were done, they are not delivered again.
                let floor = store.state().floor;
                if let Some(c) = s2
                    .cursor(&name)
                    .filter(|c| store.repaired().is_some() && c.ack_floor > floor)
                {
                    store.append(&[Event::Acked(floor..c.ack_floor)])?;
                }
                return Ok(store);
            }
            let floor = start_offset(&s2, start)?;
            GroupStore::create(fs, &dir, floor)
        })
        .await
        .map_err(|_| ConsumeError::Stopping)??;
        if let Some(r) = store.repaired() {
            let entry = Recovered {
                at_us: now_us(),
                kind: RecoveryKind::GroupRepair,
                from: store.state().floor,
                to: store.state().floor,
                bytes_aside: r.bytes,
                aside: Some(r.aside.clone()),
                reason: r.what.clone(),
            };
            s.record_recovery(entry)
                .await
                .map_err(|_| ConsumeError::Stopping)??;
        }
        check_reach(&s, group, &store).await?;
        let store = self.align_dead_letter_seq(stream, group, store).await?;
        let (cmd, rx) = mpsc::unbounded_channel();
        let handle = Arc::new(GroupHandle::new(stream, group, cmd, settings.clone()));
        let machine = Group::new(settings.machine.clone(), store.state());
        info!(
            stream,
            group,
            floor = machine.floor(),
            dead_pending = store.state().dead_pending.len(),
            "consumer group ready"
        );
        let task = GroupTask::new(
            handle.clone(),
            self.spool.clone(),
            s,
            machine,
            store,
            &settings,
        );
        let run = tokio::spawn(task.run(rx));
        self.tasks.lock().unwrap().push((key.clone(), run));
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
        let highest = self.spool.stream(&dlq)?.highest_seq(producer);
        match highest {
            Some(h) if h > store.state().dlq_stored => tokio::task::spawn_blocking(move || {
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
    /// Joins `group` of `stream` as a new member whose declared `credit`
    /// is clamped to the daemon's limits, its bytes counted against the
    /// share of connection `conn`.
    pub async fn join(
        &self,
        stream: &str,
        group: &str,
        start: StartAt,
        name: String,
        credit: Credit,
        conn: SocketAddr,
    ) -> Result<Member, ConsumeError> {
        let handle = self.group(stream, group, start).await?;
        let id = self.member_id();
        // Bounded by the member's credit (clamped by the budget): the group
        // delivers no more than the member may hold unacked.
        let (to, deliveries) = mpsc::unbounded_channel();
        let (credit, grant) = self.budget.grant(conn, credit);
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
            granted: credit,
            grant: Some(Mutex::new(grant)),
        })
    }

    /// Byte credit held by push members now, in all.
    pub fn credit_reserved(&self) -> u64 {
        self.budget.reserved()
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

    /// Moves a group without members to `start` (as if it were created
    /// there now): what is below counts as acked, the rest as never
    /// delivered. Durable before it returns; returns the new floor.
    pub async fn reset(
        &self,
        stream: &str,
        group: &str,
        start: StartAt,
    ) -> Result<u64, ConsumeError> {
        let no_reset = self
            .config
            .read()
            .unwrap()
            .configured(stream, group)
            .and_then(|s| s.no_reset);
        if let Some(reason) = no_reset {
            return Err(ConsumeError::NoReset {
                group: group.to_owned(),
                reason,
            });
        }
        let mut groups = self.groups.lock().await;
        let s = self.retire(&mut groups, stream, group).await?;
        let (fs, dir) = (s.fs().clone(), group_dir(&s, group));
        let floor = tokio::task::spawn_blocking(move || -> Result<u64, SpoolError> {
            let floor = start_offset(&s, start)?;
            GroupStore::create(fs, &dir, floor)?;
            Ok(floor)
        })
        .await
        .map_err(|_| ConsumeError::Stopping)??;
        self.open_group(&mut groups, stream, group, start).await?;
        info!(stream, group, floor, "consumer group reset");
        Ok(floor)
    }

    /// Deletes a group without members, durably: its state and the
    /// cursor retention reads. A later subscriber of the same name makes a
    /// new group.
    pub async fn delete(&self, stream: &str, group: &str) -> Result<(), ConsumeError> {
        let configured = self
            .config
            .read()
            .unwrap()
            .configured(stream, group)
            .is_some();
        if configured {
            return Err(ConsumeError::ConfiguredGroup {
                group: group.to_owned(),
            });
        }
        let mut groups = self.groups.lock().await;
        let s = self.retire(&mut groups, stream, group).await?;
        // The cursor first: a crash before the state is gone leaves a group
        // that writes its cursor again, never a cursor without a group.
        s.remove_cursor(group)
            .await
            .map_err(|_| ConsumeError::Stopping)??;
        let dir = group_dir(&s, group);
        tokio::task::spawn_blocking(move || GroupStore::delete(&**s.fs(), &dir))
            .await
            .map_err(|_| ConsumeError::Stopping)??;
        info!(stream, group, "consumer group deleted");
        Ok(())
    }

    /// Ends a running group that has no members (its journal written) and
    /// takes it out of the service; returns its stream.
    async fn retire(
        &self,
        groups: &mut HashMap<GroupKey, Arc<GroupHandle>>,
        stream: &str,
        group: &str,
    ) -> Result<Stream, ConsumeError> {
        let key = (stream.to_owned(), group.to_owned());
        let no_such = || ConsumeError::NoSuchGroup {
            stream: stream.to_owned(),
            group: group.to_owned(),
        };
        let handle = groups.get(&key).cloned().ok_or_else(no_such)?;
        let (done, answer) = oneshot::channel();
        handle.send(Cmd::Retire(done));
        match answer.await {
            Ok(Ok(())) => {}
            Ok(Err(members)) => {
                return Err(ConsumeError::GroupBusy {
                    group: group.to_owned(),
                    members,
                })
            }
            Err(_) => return Err(ConsumeError::Stopping),
        }
        groups.remove(&key);
        self.forget(&key, &handle).await;
        Ok(self.spool.stream(stream)?)
    }

    /// Takes a group that was told to end (and is out of the map of
    /// groups) off the list and waits for its task to end.
    async fn forget(&self, key: &GroupKey, handle: &Arc<GroupHandle>) {
        self.listed
            .lock()
            .unwrap()
            .retain(|h| !Arc::ptr_eq(h, handle));
        let run = {
            let mut tasks = self.tasks.lock().unwrap();
            let i = tasks.iter().position(|(k, _)| k == key);
            i.map(|i| tasks.swap_remove(i).1)
        };
        if let Some(run) = run {
            let _ = run.await;
        }
    }

    /// Stops every group of `stream` and of its dead-letter stream,
    /// members or not (a stream's deletion: their members find the group
    /// gone), then runs `then` off the async workers with the map of
    /// groups held, so that none of them starts again meanwhile.
    pub async fn retire_stream<T: Send + 'static>(
        &self,
        stream: &str,
        then: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ConsumeError> {
        let dlq = format!("{stream}.dlq");
        let mut groups = self.groups.lock().await;
        let keys: Vec<GroupKey> = groups
            .keys()
            .filter(|(s, _)| s == stream || *s == dlq)
            .cloned()
            .collect();
        for key in keys {
            let Some(handle) = groups.remove(&key) else {
                continue;
            };
            handle.send(Cmd::Stop);
            self.forget(&key, &handle).await;
            info!(stream = %key.0, group = %key.1, "consumer group retired: its stream is deleted");
        }
        let done = tokio::task::spawn_blocking(then)
            .await
            .map_err(|_| ConsumeError::Stopping)?;
        drop(groups);
        Ok(done)
    }

    /// Stops every group task after its journal is written.
    pub async fn shutdown(&self) {
        self.groups.lock().await.clear();
        for h in self.listed.lock().unwrap().drain(..) {
            h.send(Cmd::Stop);
        }
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap());
        for (_, t) in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

/// A group whose state holds an offset at or past the stream's durable
/// end saw records the stream has lost since (a log cut at a torn tail
/// that nothing proved durable, or a repair). New records must not take
/// those offsets: the group counts them done (or delivered, or
/// dead-lettered) already, and would skip the new records silently. So
/// the stream gives the offsets up (`skip_to`): with `--repair`, or when
/// acks went out before fdatasync (`fsync` = interval or never), where
/// such a loss is expected. Otherwise the group is refused.
async fn check_reach(s: &Stream, group: &str, store: &GroupStore) -> Result<(), ConsumeError> {
    let reach = store.state().reach();
    let end = s.durable_end();
    if reach <= end {
        return Ok(());
    }
    let what = format!(
        "consumer group {group}'s state holds offset {} but the stream ends at {end}: \
         the stream lost records",
        reach - 1
    );
    let expected = s.log_config().early_acks;
    if !expected && s.log_config().recovery != Recovery::Repair {
        return Err(SpoolError::GroupCorrupt {
            stream: s.name().to_owned(),
            group: group.to_owned(),
            file: store.dir().to_path_buf(),
            offset: 0,
            reason: format!(
                "{what} (start with --repair to give those offsets up: new records then \
                 continue after them)"
            ),
        }
        .into());
    }
    warn!(
        stream = s.name(),
        group,
        end,
        to = reach,
        expected_loss = expected,
        "{what}: giving up offsets {end}..{reach}, new records continue after them{}",
        if expected {
            " (acks go out before fdatasync with fsync = interval or never: a crash loses them)"
        } else {
            " (repair)"
        }
    );
    s.skip_to(reach, &what)
        .await
        .map_err(|_| ConsumeError::Stopping)??;
    Ok(())
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

/// A delivery as the wire carries it, its deadline counted from `now`.
pub fn to_wire(d: Delivery, now: Instant) -> WireDelivery {
    WireDelivery {
        offset: d.offset,
        delivery: d.delivery,
        timestamp_us: d.record.timestamp_us,
        producer: d.record.producer,
        seq: d.record.seq,
        deadline_ms: d.deadline.saturating_duration_since(now).as_millis() as u64,
        payload: d.record.payload,
    }
}

/// Parses a start position: `earliest`, `latest`, `offset:N`, `time:RFC3339`.
pub fn parse_start(s: &str) -> Result<StartAt, String> {
    match s {
        "earliest" => return Ok(StartAt::Earliest),
        "latest" => return Ok(StartAt::Latest),
        _ => {}
    }
    if let Some(n) = s.strip_prefix("offset:") {
        return n
            .parse()
            .map(StartAt::Offset)
            .map_err(|_| format!("`{s}`: offset:N takes a whole number"));
    }
    if let Some(t) = s.strip_prefix("time:") {
        let at = humantime::parse_rfc3339_weak(t)
            .map_err(|e| format!("`{s}`: {e} (e.g. time:2026-12-01T10:00:00Z)"))?;
        let us = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| format!("`{s}`: before 1970"))?
            .as_micros() as u64;
        return Ok(StartAt::Time(us));
    }
    Err(format!(
        "`{s}` is not one of earliest, latest, offset:N, time:RFC3339"
    ))
}
