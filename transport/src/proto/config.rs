use std::time::Duration;

use thiserror::Error;

use crate::wire::{MAX_DATAGRAM, MAX_MESSAGE_LEN};

/// Smallest datagram we agree to build: a header, a run and a fragment header
/// with room to spare. Below it, fragmentation would make no progress.
const MIN_DATAGRAM: usize = 256;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("max_datagram must be within {MIN_DATAGRAM}..={MAX_DATAGRAM}, got {0}")]
    MaxDatagram(usize),
    #[error("max_message_len must be 1..=16 MiB, got {0}")]
    MaxMessage(usize),
    #[error("max_unacked_bytes ({buffer}) must hold at least one largest message ({message})")]
    BufferTooSmall { buffer: usize, message: usize },
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
    #[error("max_reorder_delay must not be below reorder_delay")]
    ReorderRange,
    #[error("max_sessions_per_source must be at least 1")]
    NoSessionsPerSource,
}

/// Producer-side settings.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Largest UDP payload we send: the path MTU less IP and UDP headers
    /// (1452 for a 1500-byte Ethernet MTU over IPv6; up to 65,507 on loopback).
    pub max_datagram: usize,
    /// Largest message accepted by `push`.
    pub max_message_len: usize,
    /// Bound on the bytes of messages pushed but not yet durably acked. When a
    /// push would exceed it, `push` reports backpressure instead of growing.
    pub max_unacked_bytes: usize,
    /// RTT assumed before the first sample.
    pub initial_rtt: Duration,
    /// Floor and ceiling of the probe timeout.
    pub min_pto: Duration,
    pub max_pto: Duration,
    /// A ping is sent this often; it keeps the session alive and samples RTT.
    pub heartbeat_interval: Duration,
    /// The session is declared dead after this long without a packet.
    pub idle_timeout: Duration,
    /// Give up on the handshake after this long.
    pub handshake_timeout: Duration,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            max_datagram: 1452,
            max_message_len: MAX_MESSAGE_LEN,
            max_unacked_bytes: 64 * 1024 * 1024,
            initial_rtt: Duration::from_millis(5),
            min_pto: Duration::from_millis(2),
            max_pto: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

impl SenderConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_datagram(self.max_datagram)?;
        if self.max_message_len == 0 || self.max_message_len > MAX_MESSAGE_LEN {
            return Err(ConfigError::MaxMessage(self.max_message_len));
        }
        if self.max_unacked_bytes < self.max_message_len {
            return Err(ConfigError::BufferTooSmall {
                buffer: self.max_unacked_bytes,
                message: self.max_message_len,
            });
        }
        check_nonzero(&[
            ("initial_rtt", self.initial_rtt),
            ("min_pto", self.min_pto),
            ("max_pto", self.max_pto),
            ("heartbeat_interval", self.heartbeat_interval),
            ("idle_timeout", self.idle_timeout),
            ("handshake_timeout", self.handshake_timeout),
        ])
    }
}

/// Receiver-side settings (one set for all sessions of an [`Endpoint`](super::Endpoint)).
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Largest datagram we send (NACKs are cut to fit) and accept.
    pub max_datagram: usize,
    /// How long a gap may stay open before it is NACKed: tolerates
    /// reordering. This is the floor; each session raises it to a little more
    /// than the reordering it observes, up to `max_reorder_delay`.
    pub reorder_delay: Duration,
    pub max_reorder_delay: Duration,
    /// How long a STATUS may be held back after new data arrives, so that one
    /// STATUS covers many datagrams. Durability and duplicates send at once.
    pub ack_delay: Duration,
    pub initial_rtt: Duration,
    pub heartbeat_interval: Duration,
    pub idle_timeout: Duration,
    /// Bound on bytes held for messages being reassembled (beyond the one at
    /// the head of the line, which is always admitted so progress is certain).
    pub max_reassembly_bytes: usize,
    /// Most sessions one source address (IP, any port) may hold in the
    /// endpoint at once, pending (accepted, nothing heard since the HELLO)
    /// or open. A HELLO for one more is dropped (counted as
    /// `source_limit`) and answered, at a bounded rate, with CLOSE
    /// `rejected`. A HELLO that replaces a session of the same producer and
    /// stream from the same address is not one more.
    pub max_sessions_per_source: usize,
    /// Seed for session ids; `None` draws one from the OS. Tests set it.
    pub seed: Option<u64>,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            max_datagram: 1452,
            reorder_delay: Duration::from_millis(1),
            max_reorder_delay: Duration::from_millis(25),
            ack_delay: Duration::from_micros(500),
            initial_rtt: Duration::from_millis(5),
            heartbeat_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            max_reassembly_bytes: 64 * 1024 * 1024,
            max_sessions_per_source: 1024,
            seed: None,
        }
    }
}

impl ReceiverConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_datagram(self.max_datagram)?;
        if self.max_reorder_delay < self.reorder_delay {
            return Err(ConfigError::ReorderRange);
        }
        if self.max_sessions_per_source == 0 {
            return Err(ConfigError::NoSessionsPerSource);
        }
        check_nonzero(&[
            ("reorder_delay", self.reorder_delay),
            ("initial_rtt", self.initial_rtt),
            ("heartbeat_interval", self.heartbeat_interval),
            ("idle_timeout", self.idle_timeout),
        ])
    }
}

fn check_datagram(n: usize) -> Result<(), ConfigError> {
    if !(MIN_DATAGRAM..=MAX_DATAGRAM).contains(&n) {
        return Err(ConfigError::MaxDatagram(n));
    }
    Ok(())
}

fn check_nonzero(items: &[(&'static str, Duration)]) -> Result<(), ConfigError> {
    match items.iter().find(|(_, d)| d.is_zero()) {
        Some((name, _)) => Err(ConfigError::ZeroDuration(name)),
        None => Ok(()),
    }
}
