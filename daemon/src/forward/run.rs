//! One forwarded stream's run: what it forwards, where, and the handles
//! it needs (publish.rs runs it, ordered.rs and each.rs send with it).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Context;
use tokio::sync::watch;

use super::config::ForwardConfig;
use super::confirm::ForwardConfirm;
use super::metrics::ForwardCounters;
use crate::consume::service::Consumers;

/// The first delay before a failed message is sent again; it doubles with
/// each failure in a row, up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One forwarded stream, the member of group `forward.<name>` on it.
pub struct Run {
    pub forward: Arc<ForwardConfig>,
    pub stream: String,
    pub js: watch::Receiver<Option<Context>>,
    pub consumers: Arc<Consumers>,
    pub stats: Arc<ForwardCounters>,
    pub stop: watch::Receiver<bool>,
    /// `ack = "replicated"`: told what is sent and what JetStream has
    /// (confirm.rs), for the producers' acks.
    pub confirm: Option<ForwardConfirm>,
}
