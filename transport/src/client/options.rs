//! How a [`Producer`](super::Producer) connects and behaves, and what can
//! go wrong.

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

use super::tx::TxProvider;
use crate::proto::SenderConfig;
use crate::quic::tls::ClientTls;

/// How a [`Producer`](super::Producer) behaves.
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    /// Which path the messages take (and so what address `connect` wants).
    pub transport: Transport,
    /// Protocol settings: datagram size, unacked-buffer bound, timers.
    pub sender: SenderConfig,
    /// Fail what is pending when the daemon has made nothing durable for
    /// this long while messages wait (no credit, disk full or stalled), and
    /// a send that has waited this long for buffer space.
    pub credit_timeout: Duration,
    /// How many times in a row to try opening a new session after one ends
    /// (daemon restarted, session timed out) before failing what is pending.
    /// With several daemons ([`Producer::connect_any`](super::Producer::connect_any)):
    /// how many rounds of the list, each failure (a lost session or a failed
    /// attempt) counting as one daemon tried.
    pub max_reconnects: u32,
    /// Fail what is pending once no session has been open at any daemon for
    /// this long, however many attempts that was (`None`: only
    /// `max_reconnects` bounds the attempts). Meanwhile sends queue up to
    /// the unacked buffer and then wait: backpressure, nothing is dropped.
    pub unreachable_timeout: Option<Duration>,
    /// The highest seq of this producer the application knows was acked
    /// (kept across its restarts), if it keeps one: numbering continues
    /// after it, or after the daemon's durable seq if that is further.
    /// Without it a producer that starts asks the daemons where it stands.
    pub resume_after: Option<u64>,
    /// Local address to send from; by default any port of the daemon's family.
    pub bind: Option<SocketAddr>,
    /// Send raw-UDP datagrams (udp and fast path) through this instead of
    /// the kernel's UDP stack, e.g. an AF_XDP TX ring (`sluice-xdp`).
    pub tx: Option<TxProvider>,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions {
            transport: Transport::Udp,
            sender: SenderConfig::default(),
            credit_timeout: Duration::from_secs(30),
            max_reconnects: 5,
            unreachable_timeout: None,
            resume_after: None,
            bind: None,
            tx: None,
        }
    }
}

impl ProducerOptions {
    /// Defaults, over `transport`.
    pub fn with_transport(transport: Transport) -> Self {
        ProducerOptions {
            transport,
            ..ProducerOptions::default()
        }
    }
}

/// The path to the daemon.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Raw UDP, unauthenticated: only to a daemon whose data port is
    /// `insecure_lan`. `connect` takes the data address (default port 7401).
    Udp,
    /// Everything over one QUIC stream: TLS, authentication, congestion
    /// control; crosses firewalls and WANs. `connect` takes the QUIC address
    /// (default port 7400).
    Quic(QuicOptions),
    /// Authenticate over QUIC, then publish over raw UDP sealed with keys
    /// derived from that TLS session: the LAN fast path. `connect` takes the
    /// QUIC address; the daemon says where its data port is.
    FastPath(QuicOptions),
}

impl Transport {
    pub fn name(&self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Quic(_) => "quic",
            Transport::FastPath(_) => "fast path",
        }
    }
}

/// How to reach and prove oneself to the QUIC plane.
#[derive(Debug, Clone)]
pub struct QuicOptions {
    /// How to trust the daemon, and an optional client certificate.
    pub tls: ClientTls,
    /// An API token (`sluice token new`); none when the client certificate
    /// is the credential, or the daemon runs anonymously on loopback.
    pub token: Option<String>,
}

/// What can go wrong when publishing. Each says what to do about it.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ProducerError {
    #[error(
        "sluiced at {addr} did not answer: {reason} (is it running, and is the address right?)"
    )]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("sluiced refused the session: {0}")]
    Rejected(String),
    /// The credentials were missing or wrong.
    #[error("sluiced did not accept our credentials: {0}")]
    AuthFailed(String),
    /// Authenticated, but not allowed to publish to this stream.
    #[error("not allowed: {0}")]
    Forbidden(String),
    /// The TLS handshake failed: the daemon's certificate is not trusted,
    /// or the daemon refused ours.
    #[error("TLS: {0}")]
    Tls(String),
    /// The daemon holds its most connections (in all, or of our principal):
    /// one of them must close first. Not permanent: a reconnect retries.
    #[error("sluiced refused the connection: {0}")]
    ConnectionLimit(String),
    /// The raw-UDP lease ran out and could not be renewed.
    #[error("the fast-path lease expired: {0}")]
    LeaseExpired(String),
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The messages of the failed call stay queued and may still become
    /// durable later (a retry of them would be stored again, as new seqs).
    #[error(
        "nothing became durable at sluiced for {0:?}: the daemon is not keeping up \
         (disk full or slow, no credit granted); the messages stay queued and may still be stored"
    )]
    CreditTimeout(Duration),
    #[error("the producer is closed")]
    Closed,
    #[error("invalid producer options: {0}")]
    Config(String),
    #[error("socket error: {0}")]
    Io(String),
}

impl ProducerError {
    /// Errors that trying again will not fix: give up at once.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ProducerError::AuthFailed(_)
                | ProducerError::Forbidden(_)
                | ProducerError::Tls(_)
                | ProducerError::Rejected(_)
                | ProducerError::Config(_)
        )
    }
}
