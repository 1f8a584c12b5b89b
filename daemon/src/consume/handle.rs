//! What the consumer service and a group's task share: a group's settings,
//! the commands its task takes, the handle that sends them, and the
//! figures the task publishes. Below both, so that neither imports the
//! other's internals.

use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::group::{Credit, Delivery, GroupConfig, GroupCounters, MemberId};
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
    #[error("too many consumer groups: the daemon has {max} (consumers.max_groups); delete one, or raise the limit")]
    TooManyGroups { max: usize },
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
    /// The group met damage in the stream (what it says): it reads no
    /// further until the stream is repaired (`sluiced --repair`); what it
    /// had read is still served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at_damage: Option<String>,
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
    /// The daemon stops: finish the journal and end.
    Stop,
}

/// A running group, as its members and the operators see it.
pub struct GroupHandle {
    pub stream: String,
    pub group: String,
    pub(super) cmd: mpsc::UnboundedSender<Cmd>,
    /// Written by the group's task at every turn.
    pub(super) stats: Mutex<GroupStats>,
    /// The group's ack deadline and max deliveries, for subscribers.
    pub config: GroupConfig,
}

impl GroupHandle {
    pub fn stats(&self) -> GroupStats {
        self.stats.lock().unwrap().clone()
    }

    pub(super) fn send(&self, c: Cmd) -> bool {
        self.cmd.send(c).is_ok()
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
