//! What describes one ingest invocation: the load, its length, the path and
//! the daemon, and how many times the measured run is repeated.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Serialize;

use crate::sizes::{self, SizeWeight};

/// How long each repetition lasts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Length {
    /// Measure for this many seconds after the warm-up.
    Seconds(f64),
    /// Each producer sends this many messages.
    CountPerProducer(u64),
}

/// An external daemon to measure instead of starting one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct External {
    /// Where producers connect: the QUIC address (fast, quic) or the data
    /// address (udp).
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The daemon's certificate, pinned (fast, quic).
    pub server_cert: Option<PathBuf>,
    /// An API token (fast, quic). Never written to reports.
    #[serde(skip)]
    pub token: Option<String>,
}

/// The path producers take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Authenticated over QUIC, sealed raw UDP: the default.
    Fast,
    /// Everything over QUIC.
    Quic,
    /// Raw UDP, unsealed (a started daemon gets `insecure_lan`).
    Udp,
    /// HTTP/1.1 publish requests on the admin address (see
    /// [`crate::publisher`]).
    Http,
    /// gRPC PublishStream on the gRPC address (see [`crate::publisher`]).
    Grpc,
}

impl PathKind {
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Fast => "the fast path (sealed UDP)",
            PathKind::Quic => "QUIC",
            PathKind::Udp => "raw UDP (insecure_lan)",
            PathKind::Http => "HTTP (POST /streams/{stream}/messages)",
            PathKind::Grpc => "gRPC (PublishStream)",
        }
    }
}

/// Everything that describes one ingest run.
#[derive(Debug, Clone, Serialize)]
pub struct IngestConfig {
    pub producers: usize,
    /// Message payload bytes (when `sizes` is empty).
    pub size: usize,
    /// A size mix drawn per message instead of `size` (empty: `size`).
    pub sizes: Vec<SizeWeight>,
    /// Seeds the size draws (producer k draws from `seed + k`).
    pub seed: u64,
    pub length: Length,
    /// Seconds excluded at the start of each repetition (acks, latencies,
    /// CPU).
    pub warmup: f64,
    /// Times the measured run is repeated (warm-up included each time), on
    /// the same daemon, with new producers.
    pub repeat: usize,
    /// Total messages/s over all producers; 0 = closed loop.
    pub rate: f64,
    /// `always`, `interval` or `never` (for a started daemon).
    pub fsync: String,
    /// Messages per `send_batch` call.
    pub batch: usize,
    /// Closed loop: calls outstanding per producer; HTTP (either loop):
    /// connections per producer.
    pub in_flight: usize,
    /// Producers are spread round-robin over this many streams.
    pub streams: usize,
    pub path: PathKind,
    /// The producers' largest datagram (UDP payload).
    pub datagram: usize,
    /// Whether the producers' UDP sends use GSO (off: datagram by
    /// datagram, the comparison for what GSO gives).
    pub gso: bool,
    /// Where the temporary data folder (and the disk baseline) goes.
    pub dir: PathBuf,
    pub external: Option<External>,
    /// More `sluiced` flags for a started daemon.
    pub sluiced_args: Vec<String>,
    /// Seconds for the baselines (0: skip them).
    pub baseline_seconds: f64,
    /// Width of the throughput-over-time intervals, seconds.
    pub interval: f64,
}

/// Throughput is counted per 100 ms, or per second in windows over a
/// minute (a few hundred points are enough for a picture).
pub fn interval_for(length: Length) -> f64 {
    match length {
        Length::Seconds(s) if s > 60.0 => 1.0,
        _ => 0.1,
    }
}

impl IngestConfig {
    pub fn open_loop(&self) -> bool {
        self.rate > 0.0
    }

    /// The mean payload the configuration asks for, bytes.
    pub fn mean_size(&self) -> f64 {
        if self.sizes.is_empty() {
            self.size as f64
        } else {
            sizes::mean_of(&self.sizes)
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.producers == 0 {
            return Err("--producers must be at least 1".into());
        }
        if self.batch == 0 || self.in_flight == 0 || self.streams == 0 {
            return Err("--batch, --in-flight and --streams must be at least 1".into());
        }
        // Beyond the daemon's 64 connections per source address
        // (admin.max_connections_per_source), a new connection closes an
        // idle one of ours; one more is the harness's /metrics scrape.
        let connections = self.producers.saturating_mul(self.in_flight);
        if self.path == PathKind::Http && connections > 63 {
            return Err(format!(
                "--path http: --producers x --in-flight = {connections} connections, over the 63 \
                 sluiced keeps open for one client (admin.max_connections_per_source 64, less \
                 one for /metrics)"
            ));
        }
        if self.repeat == 0 {
            return Err("--repeat must be at least 1".into());
        }
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            return Err("--rate must be a number >= 0".into());
        }
        if !(self.interval > 0.0 && self.interval.is_finite()) {
            return Err("the throughput interval must be more than 0 s".into());
        }
        if !self.sizes.is_empty() && self.sizes.iter().all(|w| w.weight == 0) {
            return Err("--sizes: at least one weight must be more than 0".into());
        }
        match self.length {
            Length::Seconds(s) if !(s > 0.0 && s.is_finite()) => {
                Err("--seconds must be more than 0".into())
            }
            Length::CountPerProducer(0) => Err("--count must be at least 1".into()),
            _ if !(self.warmup >= 0.0 && self.warmup.is_finite()) => {
                Err("--warmup must be >= 0".into())
            }
            _ => Ok(()),
        }
    }
}
