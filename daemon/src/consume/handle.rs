//! What the consumer service and a group's task share: a group's settings,
//! the commands its task takes, the handle that sends them, and the
//! figures the task publishes. Below both, so that neither imports the
//! other's internals.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Notify};

use super::group::{Credit, Delivery, GroupConfig, GroupCounters, MemberId, Settle};
use crate::spool::record::now_us;
use crate::spool::SpoolError;

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
    /// What the group does at `max_backlog`.
    pub on_backlog: OnBacklog,
    /// Why the group must not be reset, if it must not (its floor means
    /// more than where its consumers are).
    pub no_reset: Option<&'static str>,
}

/// What a group at its `max_backlog` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBacklog {
    /// The stream's producers get no credit until the group's backlog is
    /// back under half the limit: nothing is lost, producers wait.
    #[default]
    Hold,
    /// The oldest messages not out with a member are given up (done
    /// unacked, counted as dropped, logged): producers never wait.
    DropOldest,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            machine: GroupConfig::default(),
            retain_until_acked: false,
            start: StartAt::Earliest,
            max_backlog: 0,
            on_backlog: OnBacklog::Hold,
            no_reset: None,
        }
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
    #[error("no consumer group {group:?} on stream {stream:?}")]
    NoSuchGroup { stream: String, group: String },
    #[error("consumer group {group:?} has {members} member(s) connected: stop them first")]
    GroupBusy { group: String, members: u64 },
    #[error("consumer group {group:?} is configured ([[consumers.groups]]): remove it from the configuration first, or it comes back at the next start")]
    ConfiguredGroup { group: String },
    #[error("consumer group {group:?} cannot be reset: {reason}")]
    NoReset { group: String, reason: &'static str },
    #[error("too many consumer groups: the daemon has {max} (consumers.max_groups); delete one, or raise the limit")]
    TooManyGroups { max: usize },
}

/// What the service shows of a group (metrics, `sluice stat`, HTTP).
#[derive(
    Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema,
)]
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
    /// The group met damage in the stream (what it says): it reads no
    /// further until the stream is repaired (`sluiced --repair`); what it
    /// had read is still served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at_damage: Option<String>,
    /// Commands (acks, nacks, credit...) waiting for the group's task.
    #[serde(default)]
    pub queued: u64,
    /// Times a consumer waited for room in that queue.
    #[serde(default)]
    pub queue_waits: u64,
}

/// What a member's [`Settle`] did: the offsets newly acked (not durable
/// yet: [`GroupHandle::sync`] says when) and those that changed nothing
/// (never delivered, done already, not out with the member).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settled {
    pub acked: Vec<u64>,
    pub ignored: Vec<u64>,
}

pub(super) enum Cmd {
    Join {
        member: MemberId,
        name: String,
        credit: Credit,
        to: mpsc::UnboundedSender<Vec<Delivery>>,
    },
    Leave(MemberId),
    Credit(MemberId, Credit),
    Ack(Vec<Range<u64>>),
    AckUpTo(MemberId, u64),
    Nack(Option<MemberId>, Vec<u64>, Duration),
    Extend(Option<MemberId>, Vec<u64>, Duration),
    /// A member's acks, nacks and deadline changes, answered at once
    /// with the offsets newly acked and those ignored
    /// ([`super::group::Group::settle`]).
    Settle(MemberId, Settle, oneshot::Sender<Settled>),
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
    /// End the group for a reset or a deletion, if it has no member (else
    /// answer how many it has and go on): finish the journal, answer, end.
    Retire(oneshot::Sender<Result<(), u64>>),
    /// New settings from a reload (SIGHUP): applied from the next turn
    /// on (see `GroupTask::reconfigure` for what they change).
    Reconfigure(Box<GroupSettings>),
    /// The daemon stops: finish the journal and end.
    Stop,
}

/// Commands a group's queue holds before clients wait for room: what a
/// consumer sends (acks above all, up to 65,536 offsets each) cannot pile
/// up faster than the group's task takes it. The daemon's own commands
/// (members joining and leaving, a stop) never wait.
pub const MAX_QUEUED: usize = 4096;

/// A running group, as its members and the operators see it.
pub struct GroupHandle {
    pub stream: String,
    pub group: String,
    /// To the group's task. Unbounded as a channel, bounded by
    /// [`room`](Self::room): clients wait for it before they send.
    pub(super) cmd: mpsc::UnboundedSender<Cmd>,
    /// Commands sent and not yet taken by the task.
    pub(super) queued: AtomicUsize,
    /// Told when the queue is down to half of [`MAX_QUEUED`].
    pub(super) drained: Notify,
    /// Times a client waited for room (`sluice_group_queue_waits_total`).
    pub(super) waits: AtomicU64,
    /// Written by the group's task at every turn.
    pub(super) stats: Mutex<GroupStats>,
    /// Append time (µs) of the oldest message not acked, 0 for none: its
    /// age is taken when the stats are read, not when the task last
    /// turned (an idle group's task turns about once a second).
    pub(super) oldest_us: AtomicU64,
    /// The group's ack deadline and max deliveries, for subscribers
    /// (a reload may change them: read with [`config`](Self::config)).
    config: Mutex<GroupConfig>,
    /// The consumer service's to keep: it compares a reload's settings
    /// with these.
    pub(super) applied: Mutex<Applied>,
}

/// What a group runs with, as far as a reload is concerned.
#[derive(Debug)]
pub(super) struct Applied {
    pub settings: GroupSettings,
    /// A reload took the group out of the configuration: it runs on with
    /// `settings` until it is configured again, reset, deleted or the
    /// daemon restarts.
    pub unconfigured: bool,
}

impl GroupHandle {
    pub(super) fn new(
        stream: &str,
        group: &str,
        cmd: mpsc::UnboundedSender<Cmd>,
        settings: GroupSettings,
    ) -> GroupHandle {
        let config = settings.machine.clone();
        GroupHandle {
            stream: stream.to_owned(),
            group: group.to_owned(),
            cmd,
            queued: AtomicUsize::new(0),
            drained: Notify::new(),
            waits: AtomicU64::new(0),
            oldest_us: AtomicU64::new(0),
            stats: Mutex::new(GroupStats {
                stream: stream.to_owned(),
                group: group.to_owned(),
                ..GroupStats::default()
            }),
            config: Mutex::new(config),
            applied: Mutex::new(Applied {
                settings,
                unconfigured: false,
            }),
        }
    }

    /// The group's settings now, as told to a subscriber when it joins.
    pub fn config(&self) -> GroupConfig {
        self.config.lock().unwrap().clone()
    }

    /// A reload changed them (the group's task says so).
    pub(super) fn set_config(&self, config: GroupConfig) {
        *self.config.lock().unwrap() = config;
    }

    pub fn stats(&self) -> GroupStats {
        let mut s = self.stats.lock().unwrap().clone();
        s.queued = self.queued.load(Relaxed) as u64;
        s.queue_waits = self.waits.load(Relaxed);
        s.oldest_unacked_seconds = match self.oldest_us.load(Relaxed) {
            0 => 0.0,
            t => now_us().saturating_sub(t) as f64 / 1e6,
        };
        s
    }

    pub(super) fn send(&self, c: Cmd) -> bool {
        self.queued.fetch_add(1, Relaxed);
        self.cmd.send(c).is_ok()
    }

    /// The task took `n` commands.
    pub(super) fn took(&self, n: usize) {
        let before = self.queued.fetch_sub(n, Relaxed);
        if before - n <= MAX_QUEUED / 2 && before > MAX_QUEUED / 2 {
            self.drained.notify_waiters();
        }
    }

    /// Once the queue holds [`MAX_QUEUED`] commands, waits until the task
    /// has taken it down to half: a client's reader calls it before it
    /// sends, so a flood of acks holds the client (its stream is not read
    /// meanwhile) instead of the daemon's memory.
    pub async fn room(&self) {
        if self.queued.load(Relaxed) < MAX_QUEUED {
            return;
        }
        self.waits.fetch_add(1, Relaxed);
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.queued.load(Relaxed) < MAX_QUEUED {
                return;
            }
            drained.await;
        }
    }

    pub fn ack(&self, ranges: Vec<Range<u64>>) {
        self.send(Cmd::Ack(ranges));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_waits_for_room_while_the_queue_is_full_and_goes_on_once_half_is_taken() {
        let (cmd, mut rx) = mpsc::unbounded_channel();
        let h = std::sync::Arc::new(GroupHandle::new("s", "g", cmd, GroupSettings::default()));
        h.room().await; // empty: at once
        for _ in 0..MAX_QUEUED {
            h.ack(std::iter::once(0..1).collect());
        }
        assert_eq!(h.stats().queued, MAX_QUEUED as u64);
        let waiting = tokio::spawn({
            let h = h.clone();
            async move { h.room().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "room with the queue full");
        // The task takes a few: still over half, still waiting.
        for _ in 0..10 {
            rx.recv().await.unwrap();
        }
        h.took(10);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "room before the queue drained to half"
        );
        let rest = MAX_QUEUED / 2 - 10;
        for _ in 0..rest {
            rx.recv().await.unwrap();
        }
        h.took(rest);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("room once the queue is at half")
            .unwrap();
        let s = h.stats();
        assert_eq!((s.queued, s.queue_waits), ((MAX_QUEUED / 2) as u64, 1));
    }
}
