//! Sans-IO reliable sessions: the producer's [`Sender`], the daemon's
//! [`Receiver`], and the [`Endpoint`] that demultiplexes many receivers.
//!
//! Nothing here touches a socket or reads a clock. Each state machine is fed
//! `(now, datagram)`, asked for datagrams to send with `poll_transmit`, and
//! told when its timer fires with `handle_timeout` (after `poll_timeout` said
//! when). This is the quinn-proto model, and it is what lets the simulation
//! tests run thousands of seeded sessions deterministically.

mod config;
mod endpoint;
mod liveness;
mod reassembly;
mod receiver;
mod rtt;
mod sender;
mod stats;

pub use config::{ConfigError, ReceiverConfig, SenderConfig};
pub use endpoint::{Endpoint, EndpointEvent, Incoming};
pub use receiver::{Message, Receiver, Repair};
pub use rtt::RttEstimator;
pub use sender::{Connect, PushError, Sender, SenderEvent};
pub use stats::{DropCounts, DropReason, ReceiverStats, SenderStats};

use crate::wire::CloseCode;

/// Why a session ended, as seen by the side that reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// This side closed it.
    Local,
    /// The peer closed it, with its code and reason.
    Remote { code: CloseCode, reason: String },
    /// The peer refused the handshake.
    Rejected { code: CloseCode, reason: String },
    /// Nothing was heard from the peer for the idle timeout.
    TimedOut,
    /// No WELCOME came back within the handshake timeout.
    HandshakeTimedOut,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Local => write!(f, "closed locally"),
            CloseReason::Remote { code, reason } => {
                write!(f, "closed by peer ({code:?}): {reason}")
            }
            CloseReason::Rejected { code, reason } => {
                write!(f, "refused by receiver ({code:?}): {reason}")
            }
            CloseReason::TimedOut => write!(f, "peer silent for the idle timeout"),
            CloseReason::HandshakeTimedOut => {
                write!(f, "no answer to HELLO within the handshake timeout")
            }
        }
    }
}
