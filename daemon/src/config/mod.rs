//! `sluiced`'s configuration: embedded defaults, then a TOML file, then
//! environment variables, then flags (each later one wins). Every key of the
//! file is also a flag and an environment variable; a bad value is an error
//! that names the key and says why.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::api::serve::AdminLimits;
use crate::auth::{AuthConfig, Authenticator};
use crate::consume::budget::ConsumerLimits;
use crate::consume::group::GroupConfig;
use crate::consume::service::{parse_key_rule, parse_start, ConsumersConfig, GroupSettings};
use crate::consume::store::check_group_name;
use crate::credit::CreditPolicy;
use crate::spool::{FsyncPolicy, LogConfig, SpoolConfig};
use sluice_transport::quic::control::StartAt;
use sluice_xdp::bpf::Mode;
use sluice_xdp::datapath::XdpSetup;
use sluice_xdp::xsk::{BindMode, BusyPoll, XskConfig, XskError};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("invalid value for {0}")]
    Auth(String),
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The whole configuration, as the TOML file spells it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data: DataSection,
    pub quic: QuicSection,
    pub admin: AdminSection,
    pub spool: SpoolSection,
    pub streams: StreamsSection,
    pub auth: AuthConfig,
    pub xdp: XdpSection,
    pub consumers: ConsumersSection,
    pub log: LogSection,
}

/// The fast data path: raw UDP from producers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// UDP address producers send to.
    pub listen: SocketAddr,
    /// SO_RCVBUF of the data socket, bytes (0: the kernel's default). Too
    /// small a buffer drops bursts, which producers must then resend.
    pub recv_buffer: usize,
    /// Largest datagram sent (NACKs, STATUS): the path MTU less headers.
    pub max_datagram: usize,
    /// Most credit one session gets: messages past its durable seq.
    pub credit: u32,
    /// Bytes in flight (sent by producers, not yet durable) allowed over
    /// all sessions: bounds ingest memory and what can pile up in the data
    /// socket's receive buffer (keep it well under `recv_buffer`).
    pub window_bytes: u64,
    /// Most producer sessions open at once; more HELLOs are refused.
    pub max_sessions: usize,
    /// Accept unsealed raw-UDP packets from anyone (no authentication on
    /// this listener). Off: producers lease a sealed session over QUIC.
    pub insecure_lan: bool,
    /// How long a raw-UDP lease lasts unless its producer renews it.
    pub lease_seconds: u64,
    /// Producer sessions (pending and open) from one source address.
    pub max_sessions_per_source: usize,
}

/// The QUIC plane: authentication, publishing over QUIC, fast-path leases.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QuicSection {
    /// UDP address of the QUIC listener.
    pub listen: SocketAddr,
    /// Certificate chain (PEM). Empty: a self-signed certificate made at
    /// first start and kept in the data folder.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to; empty:
    /// no client certificates (tokens only).
    pub client_ca: PathBuf,
    /// QUIC connections open at once, in all and per principal (a token or
    /// a client certificate); more are refused and counted.
    pub max_connections: usize,
    pub max_connections_per_principal: usize,
}

/// Metrics and health over HTTP.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    pub listen: SocketAddr,
    /// Connections open at once, in all and from one source address; one
    /// more takes the place of an idle one, or is closed at once (a reserve
    /// of file descriptors stays for the spool and `/health`).
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    /// A request's headers must arrive within this, e.g. "10s".
    pub header_timeout: String,
    /// A connection with no request for this long is closed, e.g. "60s".
    pub idle_timeout: String,
    /// Most payload bytes one page carries (records, dead letters,
    /// fetch); one message of the largest size always fits.
    pub page_bytes: u64,
    /// Page-returning requests served at once (the rest wait): with
    /// `page_bytes`, the memory pages can take.
    pub max_page_requests: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSection {
    /// Data folder (streams, segments, cursors).
    pub dir: PathBuf,
    /// `always` (the promise holds), `interval` or `never` (benchmarks only).
    pub fsync: String,
    /// With `fsync = "interval"`: how often.
    pub fsync_interval: String,
    pub segment_bytes: u64,
    pub max_batch_bytes: usize,
    /// Hold acks when the file system has less free than this.
    pub min_free_bytes: u64,
    /// Bytes waiting for the writer at which producers get no credit.
    pub max_backlog_bytes: u64,
    /// Delete old segments past this many bytes per stream (0: keep all).
    pub retention_bytes: u64,
    /// Delete segments older than this, e.g. "7d" ("" keeps all).
    pub retention_age: String,
    /// Set damaged parts of the spool aside (never deleted) and serve what
    /// is before them, instead of refusing to start (exit status 3).
    pub repair: bool,
    /// The background scrub: sealed segments read again and checked at
    /// most this many bytes a second (0: no scrub).
    pub scrub_bytes_per_sec: u64,
    /// A scrub pass starts at most this often, e.g. "24h".
    pub scrub_interval: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsSection {
    /// Streams opened at start.
    pub names: Vec<String>,
    /// Create a stream when a producer first publishes to it.
    pub auto_create: bool,
    /// Streams at most (dead-letter streams not counted); a new one past
    /// it is refused.
    pub max_streams: usize,
}

/// The AF_XDP receive path: the data port's packets straight from the NIC
/// queues (Linux, root or CAP_BPF + CAP_NET_ADMIN + CAP_NET_RAW).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct XdpSection {
    /// Interface to attach to; empty: off (the socket path only).
    pub interface: String,
    /// RX queues to take the data port from, one AF_XDP socket and thread
    /// each (steer the port to them: `sluice nic plan`).
    pub queues: Vec<u32>,
    /// `auto` (native, else generic), `native` (driver) or `generic` (SKB).
    pub mode: String,
    /// `auto` (zero-copy, else copy), `zerocopy` or `copy`.
    pub bind: String,
    /// UMEM frame size: 2048 (MTU up to ~1,750) or 4096.
    pub frame_size: u32,
    /// UMEM frames per queue (power of two, at least fill_ring + tx_ring).
    pub frame_count: u32,
    /// Ring sizes (powers of two): RX descriptors, TX descriptors (0: none;
    /// replies leave through the kernel socket, and in copy mode a TX ring
    /// costs a transmit pass at every wake-up), and frames handed to the
    /// kernel to fill (also the completion ring's size).
    pub rx_ring: u32,
    pub tx_ring: u32,
    pub fill_ring: u32,
    /// Busy-poll the queues (SO_PREFER_BUSY_POLL) instead of waiting on
    /// interrupts: lower latency, a CPU spent per queue.
    pub busy_poll: bool,
    /// CPU to pin each queue's thread to, in the order of `queues`.
    pub cpus: Vec<usize>,
    /// Microseconds a woken queue thread lets packets gather before taking
    /// them, when fewer than a batch wait (0: take them at once): fewer
    /// wake-ups for at most this much added latency.
    pub rx_linger_us: u64,
    /// If XDP cannot start, warn and run on the socket path instead of
    /// refusing to start.
    pub fallback: bool,
    /// Remove an XDP program someone else left attached to the interface
    /// (sluice's own stale program is always replaced).
    pub replace_foreign: bool,
}

impl Default for XdpSection {
    fn default() -> Self {
        XdpSection {
            interface: String::new(),
            queues: vec![0],
            mode: "auto".into(),
            bind: "auto".into(),
            frame_size: 2048,
            frame_count: 16384,
            rx_ring: 8192,
            tx_ring: 0,
            fill_ring: 8192,
            busy_poll: false,
            cpus: Vec::new(),
            rx_linger_us: 50,
            fallback: false,
            replace_foreign: false,
        }
    }
}

/// Consumer groups: their defaults, and groups that exist from the start.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumersSection {
    /// How long a consumer may hold a message before it is delivered
    /// again, e.g. "30s" (a consumer can extend it for long work).
    pub ack_deadline: String,
    /// Longest deadline a consumer may extend a message to.
    pub max_ack_extension: String,
    /// Deliveries after which an unacked message moves to the stream's
    /// dead-letter stream (`<stream>.dlq`).
    pub max_deliveries: u32,
    /// Records a group reads ahead of delivery, and their payload bytes
    /// (bound its memory).
    pub read_ahead: usize,
    pub read_ahead_bytes: u64,
    /// The credit a consumer declares is clamped to these: messages and
    /// payload bytes out (delivered, not acked) with one member, with the
    /// members of one connection together, and with all members.
    pub max_member_messages: u32,
    pub max_member_bytes: u64,
    pub max_connection_bytes: u64,
    pub max_out_bytes: u64,
    /// Consumer groups in all; a subscriber naming a new one past it is
    /// refused.
    pub max_groups: usize,
    /// Groups that exist from the daemon's start, with their own settings.
    pub groups: Vec<GroupEntry>,
}

/// One configured consumer group (`[[consumers.groups]]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GroupEntry {
    pub stream: String,
    pub group: String,
    /// Where the group starts when first created: `earliest`, `latest`,
    /// `offset:N` or `time:RFC3339`.
    pub start: String,
    /// Overrides `consumers.ack_deadline` ("" keeps it).
    pub ack_deadline: String,
    /// Overrides `consumers.max_deliveries` (0 keeps it).
    pub max_deliveries: u32,
    /// Retention keeps every record this group has not acked.
    pub retain_until_acked: bool,
    /// Backpressure: at this many messages of backlog, producers to the
    /// stream get no credit until the group catches up (0: never).
    pub max_backlog: u64,
    /// `none`, or `latest_per_key`: a group that falls behind gets the
    /// newest message of each key instead of every one.
    pub conflate: String,
    /// What the key is: `producer`, `prefix:N` (first N bytes of the
    /// payload) or `delimiter:C` (the payload up to the first C).
    pub conflate_key: String,
}

impl Default for ConsumersSection {
    fn default() -> Self {
        ConsumersSection {
            ack_deadline: "30s".into(),
            max_ack_extension: "12h".into(),
            max_deliveries: 5,
            read_ahead: 4096,
            read_ahead_bytes: 16 << 20,
            max_member_messages: 10_000,
            max_member_bytes: 16 << 20,
            max_connection_bytes: 64 << 20,
            max_out_bytes: 256 << 20,
            max_groups: 64,
            groups: Vec::new(),
        }
    }
}

impl Default for GroupEntry {
    fn default() -> Self {
        GroupEntry {
            stream: String::new(),
            group: String::new(),
            start: "earliest".into(),
            ack_deadline: String::new(),
            max_deliveries: 0,
            retain_until_acked: false,
            max_backlog: 0,
            conflate: "none".into(),
            conflate_key: "producer".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// error, warn, info, debug, trace (or a tracing filter directive).
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            listen: "127.0.0.1:7401".parse().expect("literal"),
            recv_buffer: 8 << 20,
            max_datagram: 1452,
            credit: 4096,
            window_bytes: 2 << 20,
            max_sessions: 4096,
            insecure_lan: false,
            lease_seconds: 60,
            max_sessions_per_source: 1024,
        }
    }
}

impl Default for QuicSection {
    fn default() -> Self {
        QuicSection {
            listen: "127.0.0.1:7400".parse().expect("literal"),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            client_ca: PathBuf::new(),
            max_connections: 1024,
            max_connections_per_principal: 64,
        }
    }
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: "127.0.0.1:7480".parse().expect("literal"),
            max_connections: 1024,
            max_connections_per_source: 64,
            header_timeout: "10s".into(),
            idle_timeout: "60s".into(),
            page_bytes: 8 << 20,
            max_page_requests: 8,
        }
    }
}

impl Default for SpoolSection {
    fn default() -> Self {
        let log = LogConfig::default();
        SpoolSection {
            dir: PathBuf::from("./sluice-data"),
            fsync: "always".into(),
            fsync_interval: "10ms".into(),
            segment_bytes: log.segment_bytes,
            max_batch_bytes: log.max_batch_bytes,
            min_free_bytes: 256 << 20,
            max_backlog_bytes: 64 << 20,
            retention_bytes: 0,
            retention_age: String::new(),
            repair: false,
            scrub_bytes_per_sec: 16 << 20,
            scrub_interval: "24h".into(),
        }
    }
}

impl Default for StreamsSection {
    fn default() -> Self {
        StreamsSection {
            names: Vec::new(),
            auto_create: true,
            max_streams: 1024,
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// `sluiced`'s command line. Every option can also be set in the config file
/// (the key in brackets) and in the environment variable named.
#[derive(Debug, Parser, Default)]
#[command(
    name = "sluiced",
    version,
    about = "sluice daemon: durable reliable-UDP ingest",
    long_about = "sluiced receives messages from producers over sluice's reliable UDP \
protocol and acknowledges each one only after it is fsynced to the spool.\n\n\
With no options it runs on embedded defaults: data on 127.0.0.1:7401/udp, metrics \
and health on http://127.0.0.1:7480, spool in ./sluice-data.\n\n\
Settings come from the defaults, then --config FILE (TOML), then SLUICED_* \
environment variables, then flags; later ones win.\n\n\
Exit status: 0 after a clean stop (SIGTERM, SIGINT); 1 when it cannot run \
(a socket, the data folder); 2 for a bad configuration; 3 when the spool is \
damaged: the message names stream, file, byte and the offsets affected \
(check it with `sluice spool verify --data-dir DIR`; restore the files, or \
start with --repair)."
)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "SLUICED_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (as TOML) and exit.
    #[arg(long)]
    pub print_config: bool,

    /// [data.listen] UDP address producers send to.
    #[arg(long, env = "SLUICED_DATA_LISTEN")]
    pub data_listen: Option<SocketAddr>,
    /// [data.recv_buffer] data socket receive buffer, bytes (0: kernel
    /// default); if the kernel caps it (net.core.rmem_max), sluiced warns.
    #[arg(long, env = "SLUICED_DATA_RECV_BUFFER")]
    pub data_recv_buffer: Option<usize>,
    /// [data.max_datagram] largest datagram sent: path MTU less IP/UDP headers.
    #[arg(long, env = "SLUICED_DATA_MAX_DATAGRAM")]
    pub data_max_datagram: Option<usize>,
    /// [data.credit] most messages one session may send past its durable seq.
    #[arg(long, env = "SLUICED_DATA_CREDIT")]
    pub data_credit: Option<u32>,
    /// [data.window_bytes] bytes in flight over all sessions (under recv_buffer).
    #[arg(long, env = "SLUICED_DATA_WINDOW_BYTES")]
    pub data_window_bytes: Option<u64>,
    /// [data.max_sessions] most producer sessions open at once.
    #[arg(long, env = "SLUICED_DATA_MAX_SESSIONS")]
    pub data_max_sessions: Option<usize>,
    /// [data.insecure_lan] accept unsealed raw UDP from anyone: no
    /// authentication on the data port (true/false).
    #[arg(long, env = "SLUICED_DATA_INSECURE_LAN")]
    pub data_insecure_lan: Option<bool>,
    /// [data.lease_seconds] lifetime of a raw-UDP lease unless renewed.
    #[arg(long, env = "SLUICED_DATA_LEASE_SECONDS")]
    pub data_lease_seconds: Option<u64>,
    /// [data.max_sessions_per_source] producer sessions (pending and open)
    /// from one source address.
    #[arg(long, env = "SLUICED_DATA_MAX_SESSIONS_PER_SOURCE")]
    pub data_max_sessions_per_source: Option<usize>,
    /// [quic.listen] UDP address of the QUIC listener.
    #[arg(long, env = "SLUICED_QUIC_LISTEN")]
    pub quic_listen: Option<SocketAddr>,
    /// [quic.cert] certificate chain (PEM); empty: self-signed, made at
    /// first start in the data folder.
    #[arg(long, env = "SLUICED_QUIC_CERT")]
    pub quic_cert: Option<PathBuf>,
    /// [quic.key] private key of the certificate (PEM).
    #[arg(long, env = "SLUICED_QUIC_KEY")]
    pub quic_key: Option<PathBuf>,
    /// [quic.client_ca] CA certificates (PEM) for client certificates.
    #[arg(long, env = "SLUICED_QUIC_CLIENT_CA")]
    pub quic_client_ca: Option<PathBuf>,
    /// [quic.max_connections] QUIC connections open at once.
    #[arg(long, env = "SLUICED_QUIC_MAX_CONNECTIONS")]
    pub quic_max_connections: Option<usize>,
    /// [quic.max_connections_per_principal] QUIC connections one token or
    /// client certificate may have open at once.
    #[arg(long, env = "SLUICED_QUIC_MAX_CONNECTIONS_PER_PRINCIPAL")]
    pub quic_max_connections_per_principal: Option<usize>,
    /// [admin.listen] HTTP address for /metrics and /health.
    #[arg(long, env = "SLUICED_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// [admin.max_connections] HTTP connections open at once.
    #[arg(long, env = "SLUICED_ADMIN_MAX_CONNECTIONS")]
    pub admin_max_connections: Option<usize>,
    /// [admin.max_connections_per_source] HTTP connections from one address.
    #[arg(long, env = "SLUICED_ADMIN_MAX_CONNECTIONS_PER_SOURCE")]
    pub admin_max_connections_per_source: Option<usize>,
    /// [admin.header_timeout] a request's headers must arrive within this.
    #[arg(long, env = "SLUICED_ADMIN_HEADER_TIMEOUT")]
    pub admin_header_timeout: Option<String>,
    /// [admin.idle_timeout] close an HTTP connection idle for this long.
    #[arg(long, env = "SLUICED_ADMIN_IDLE_TIMEOUT")]
    pub admin_idle_timeout: Option<String>,
    /// [admin.page_bytes] most payload bytes one page of records, dead
    /// letters or fetched messages carries (one message always fits).
    #[arg(long, env = "SLUICED_ADMIN_PAGE_BYTES")]
    pub admin_page_bytes: Option<u64>,
    /// [admin.max_page_requests] page-returning requests served at once.
    #[arg(long, env = "SLUICED_ADMIN_MAX_PAGE_REQUESTS")]
    pub admin_max_page_requests: Option<usize>,
    /// [spool.dir] data folder.
    #[arg(long, env = "SLUICED_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// [spool.fsync] always | interval | never. Anything but `always` breaks
    /// the durability promise (for benchmarks).
    #[arg(long, env = "SLUICED_SPOOL_FSYNC")]
    pub spool_fsync: Option<String>,
    /// [spool.fsync_interval] with --spool-fsync interval, e.g. 10ms.
    #[arg(long, env = "SLUICED_SPOOL_FSYNC_INTERVAL")]
    pub spool_fsync_interval: Option<String>,
    /// [spool.segment_bytes] segment file size.
    #[arg(long, env = "SLUICED_SPOOL_SEGMENT_BYTES")]
    pub spool_segment_bytes: Option<u64>,
    /// [spool.max_batch_bytes] bytes per group commit at most.
    #[arg(long, env = "SLUICED_SPOOL_MAX_BATCH_BYTES")]
    pub spool_max_batch_bytes: Option<usize>,
    /// [spool.min_free_bytes] hold acks below this much free disk.
    #[arg(long, env = "SLUICED_SPOOL_MIN_FREE_BYTES")]
    pub spool_min_free_bytes: Option<u64>,
    /// [spool.max_backlog_bytes] bytes waiting for the writer at which
    /// producers get no more credit.
    #[arg(long, env = "SLUICED_SPOOL_MAX_BACKLOG_BYTES")]
    pub spool_max_backlog_bytes: Option<u64>,
    /// [spool.retention_bytes] per stream; 0 keeps everything.
    #[arg(long, env = "SLUICED_SPOOL_RETENTION_BYTES")]
    pub spool_retention_bytes: Option<u64>,
    /// [spool.retention_age] e.g. 7d; empty keeps everything.
    #[arg(long, env = "SLUICED_SPOOL_RETENTION_AGE")]
    pub spool_retention_age: Option<String>,
    /// [spool.repair] set damaged parts of the spool aside (moved under
    /// streams/<s>/aside/, never deleted) and serve the valid log before
    /// them, instead of refusing to start with exit status 3. Offsets given
    /// up are logged, counted, and shown by /health and /streams.
    #[arg(long, env = "SLUICED_SPOOL_REPAIR")]
    pub repair: bool,
    /// [spool.scrub_bytes_per_sec] read sealed segments again in the
    /// background and check every record, at most this fast (0: off).
    #[arg(long, env = "SLUICED_SPOOL_SCRUB_BYTES_PER_SEC")]
    pub spool_scrub_bytes_per_sec: Option<u64>,
    /// [spool.scrub_interval] start a scrub pass at most this often, e.g. 24h.
    #[arg(long, env = "SLUICED_SPOOL_SCRUB_INTERVAL")]
    pub spool_scrub_interval: Option<String>,
    /// [streams.names] streams to open at start (comma-separated).
    #[arg(long, env = "SLUICED_STREAMS", value_delimiter = ',')]
    pub streams: Option<Vec<String>>,
    /// [streams.auto_create] create streams on first publish (true/false).
    #[arg(long, env = "SLUICED_STREAMS_AUTO_CREATE")]
    pub streams_auto_create: Option<bool>,
    /// [streams.max_streams] streams at most; a new one past it is refused.
    #[arg(long, env = "SLUICED_STREAMS_MAX_STREAMS")]
    pub streams_max_streams: Option<usize>,
    /// [xdp.interface] attach the AF_XDP receive path to this interface
    /// (empty: off).
    #[arg(long, env = "SLUICED_XDP_INTERFACE")]
    pub xdp_interface: Option<String>,
    /// [xdp.queues] RX queues to serve, comma-separated.
    #[arg(long, env = "SLUICED_XDP_QUEUES", value_delimiter = ',')]
    pub xdp_queues: Option<Vec<u32>>,
    /// [xdp.mode] auto | native | generic.
    #[arg(long, env = "SLUICED_XDP_MODE")]
    pub xdp_mode: Option<String>,
    /// [xdp.bind] auto | zerocopy | copy.
    #[arg(long, env = "SLUICED_XDP_BIND")]
    pub xdp_bind: Option<String>,
    /// [xdp.frame_size] UMEM frame size, 2048 or 4096.
    #[arg(long, env = "SLUICED_XDP_FRAME_SIZE")]
    pub xdp_frame_size: Option<u32>,
    /// [xdp.frame_count] UMEM frames per queue.
    #[arg(long, env = "SLUICED_XDP_FRAME_COUNT")]
    pub xdp_frame_count: Option<u32>,
    /// [xdp.rx_ring] RX ring entries per queue.
    #[arg(long, env = "SLUICED_XDP_RX_RING")]
    pub xdp_rx_ring: Option<u32>,
    /// [xdp.tx_ring] TX ring entries per queue.
    #[arg(long, env = "SLUICED_XDP_TX_RING")]
    pub xdp_tx_ring: Option<u32>,
    /// [xdp.fill_ring] fill (and completion) ring entries per queue.
    #[arg(long, env = "SLUICED_XDP_FILL_RING")]
    pub xdp_fill_ring: Option<u32>,
    /// [xdp.busy_poll] busy-poll the queues (true/false).
    #[arg(long, env = "SLUICED_XDP_BUSY_POLL")]
    pub xdp_busy_poll: Option<bool>,
    /// [xdp.cpus] CPU per queue thread, comma-separated, in queue order.
    #[arg(long, env = "SLUICED_XDP_CPUS", value_delimiter = ',')]
    pub xdp_cpus: Option<Vec<usize>>,
    /// [xdp.rx_linger_us] microseconds a woken queue thread lets packets
    /// gather before taking them (0: at once).
    #[arg(long, env = "SLUICED_XDP_RX_LINGER_US")]
    pub xdp_rx_linger_us: Option<u64>,
    /// [xdp.fallback] run on the socket path if XDP cannot start (true/false).
    #[arg(long, env = "SLUICED_XDP_FALLBACK")]
    pub xdp_fallback: Option<bool>,
    /// [xdp.replace_foreign] remove another tool's XDP program from the
    /// interface (true/false).
    #[arg(long, env = "SLUICED_XDP_REPLACE_FOREIGN")]
    pub xdp_replace_foreign: Option<bool>,
    /// [consumers.ack_deadline] how long a consumer may hold a message
    /// before it is delivered again, e.g. 30s.
    #[arg(long, env = "SLUICED_CONSUMERS_ACK_DEADLINE")]
    pub consumers_ack_deadline: Option<String>,
    /// [consumers.max_ack_extension] longest deadline a consumer may extend to.
    #[arg(long, env = "SLUICED_CONSUMERS_MAX_ACK_EXTENSION")]
    pub consumers_max_ack_extension: Option<String>,
    /// [consumers.max_deliveries] deliveries after which an unacked message
    /// moves to the dead-letter stream.
    #[arg(long, env = "SLUICED_CONSUMERS_MAX_DELIVERIES")]
    pub consumers_max_deliveries: Option<u32>,
    /// [consumers.read_ahead] records a group reads ahead of delivery.
    #[arg(long, env = "SLUICED_CONSUMERS_READ_AHEAD")]
    pub consumers_read_ahead: Option<usize>,
    /// [consumers.read_ahead_bytes] payload bytes a group reads ahead.
    #[arg(long, env = "SLUICED_CONSUMERS_READ_AHEAD_BYTES")]
    pub consumers_read_ahead_bytes: Option<u64>,
    /// [consumers.max_member_messages] most messages out with one consumer,
    /// whatever it declares.
    #[arg(long, env = "SLUICED_CONSUMERS_MAX_MEMBER_MESSAGES")]
    pub consumers_max_member_messages: Option<u32>,
    /// [consumers.max_member_bytes] most payload bytes out with one consumer.
    #[arg(long, env = "SLUICED_CONSUMERS_MAX_MEMBER_BYTES")]
    pub consumers_max_member_bytes: Option<u64>,
    /// [consumers.max_connection_bytes] most payload bytes out with the
    /// consumers of one QUIC connection together.
    #[arg(long, env = "SLUICED_CONSUMERS_MAX_CONNECTION_BYTES")]
    pub consumers_max_connection_bytes: Option<u64>,
    /// [consumers.max_out_bytes] most payload bytes out with all consumers.
    #[arg(long, env = "SLUICED_CONSUMERS_MAX_OUT_BYTES")]
    pub consumers_max_out_bytes: Option<u64>,
    /// [consumers.max_groups] consumer groups in all.
    #[arg(long, env = "SLUICED_CONSUMERS_MAX_GROUPS")]
    pub consumers_max_groups: Option<usize>,
    /// [log.level] error | warn | info | debug | trace, or a filter directive.
    #[arg(long, env = "SLUICED_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// [log.format] text | json.
    #[arg(long, env = "SLUICED_LOG_FORMAT")]
    pub log_format: Option<String>,
}

/// The heading `--help` shows a section's options under.
fn heading(section: &str) -> Option<&'static str> {
    Some(match section {
        "data" => "Data port: raw UDP from producers [data]",
        "quic" => "QUIC plane: TLS, leases, consumers [quic]",
        "admin" => "Admin and HTTP API port [admin]",
        "spool" => "Spool: the durable log [spool]",
        "streams" => "Streams [streams]",
        "auth" => "Authentication [auth]",
        "xdp" => "AF_XDP receive path [xdp]",
        "consumers" => "Consumer groups [consumers]",
        "log" => "Logging [log]",
        _ => return None,
    })
}

/// The configuration key an option's help names first (`[spool.fsync] ...`).
fn key_of(help: &str) -> Option<(&str, &str)> {
    let key = help.strip_prefix('[')?.split_once(']')?.0;
    key.split_once('.')
}

impl Args {
    /// The command line as `--help` shows it: each option under its
    /// section's heading, with its default, read from `Config::default()`
    /// (where defaults are declared, once).
    pub fn command() -> clap::Command {
        let defaults = toml::Value::try_from(Config::default()).expect("config serializes");
        <Args as clap::CommandFactory>::command().mut_args(|a| {
            let Some(help) = a.get_help().map(|h| h.to_string()) else {
                return a;
            };
            let Some((section, key)) = key_of(&help) else {
                return a;
            };
            let a = a.help_heading(heading(section));
            let Some(value) = defaults.get(section).and_then(|t| t.get(key)) else {
                return a;
            };
            let shown = format!("[default: {value}]");
            let long = a.get_long_help().map(|h| format!("{h}\n{shown}"));
            let a = a.help(format!("{help} {shown}"));
            match long {
                Some(l) => a.long_help(l),
                None => a,
            }
        })
    }

    /// The arguments of this process (exits with clap's message on an
    /// error, or after `--help` and `--version`).
    pub fn from_env() -> Args {
        Args::parse_args_from(std::env::args_os())
    }

    /// `args` (the program's name first) as [`Args::from_env`] reads them.
    pub fn parse_args_from<I, T>(args: I) -> Args
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Args::command().get_matches_from(args);
        <Args as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

impl Config {
    /// Builds the effective configuration from `args` (and the file it names).
    pub fn load(args: &Args) -> Result<Config, ConfigError> {
        let mut c = match &args.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($field:expr, $arg:expr) => {
                if let Some(v) = $arg.clone() {
                    $field = v;
                }
            };
        }
        set!(c.data.listen, args.data_listen);
        set!(c.data.recv_buffer, args.data_recv_buffer);
        set!(c.data.max_datagram, args.data_max_datagram);
        set!(c.data.credit, args.data_credit);
        set!(c.data.window_bytes, args.data_window_bytes);
        set!(c.data.max_sessions, args.data_max_sessions);
        set!(c.data.insecure_lan, args.data_insecure_lan);
        set!(c.data.lease_seconds, args.data_lease_seconds);
        set!(
            c.data.max_sessions_per_source,
            args.data_max_sessions_per_source
        );
        set!(c.quic.listen, args.quic_listen);
        set!(c.quic.cert, args.quic_cert);
        set!(c.quic.key, args.quic_key);
        set!(c.quic.client_ca, args.quic_client_ca);
        set!(c.quic.max_connections, args.quic_max_connections);
        set!(
            c.quic.max_connections_per_principal,
            args.quic_max_connections_per_principal
        );
        set!(c.admin.listen, args.admin_listen);
        set!(c.admin.max_connections, args.admin_max_connections);
        set!(
            c.admin.max_connections_per_source,
            args.admin_max_connections_per_source
        );
        set!(c.admin.header_timeout, args.admin_header_timeout);
        set!(c.admin.idle_timeout, args.admin_idle_timeout);
        set!(c.admin.page_bytes, args.admin_page_bytes);
        set!(c.admin.max_page_requests, args.admin_max_page_requests);
        set!(c.spool.dir, args.spool_dir);
        set!(c.spool.fsync, args.spool_fsync);
        set!(c.spool.fsync_interval, args.spool_fsync_interval);
        set!(c.spool.segment_bytes, args.spool_segment_bytes);
        set!(c.spool.max_batch_bytes, args.spool_max_batch_bytes);
        set!(c.spool.min_free_bytes, args.spool_min_free_bytes);
        set!(c.spool.max_backlog_bytes, args.spool_max_backlog_bytes);
        set!(c.spool.retention_bytes, args.spool_retention_bytes);
        set!(c.spool.retention_age, args.spool_retention_age);
        set!(c.spool.scrub_bytes_per_sec, args.spool_scrub_bytes_per_sec);
        set!(c.spool.scrub_interval, args.spool_scrub_interval);
        set!(c.streams.names, args.streams);
        set!(c.streams.auto_create, args.streams_auto_create);
        set!(c.streams.max_streams, args.streams_max_streams);
        set!(c.xdp.interface, args.xdp_interface);
        set!(c.xdp.queues, args.xdp_queues);
        set!(c.xdp.mode, args.xdp_mode);
        set!(c.xdp.bind, args.xdp_bind);
        set!(c.xdp.frame_size, args.xdp_frame_size);
        set!(c.xdp.frame_count, args.xdp_frame_count);
        set!(c.xdp.rx_ring, args.xdp_rx_ring);
        set!(c.xdp.tx_ring, args.xdp_tx_ring);
        set!(c.xdp.fill_ring, args.xdp_fill_ring);
        set!(c.xdp.busy_poll, args.xdp_busy_poll);
        set!(c.xdp.cpus, args.xdp_cpus);
        set!(c.xdp.rx_linger_us, args.xdp_rx_linger_us);
        set!(c.xdp.fallback, args.xdp_fallback);
        set!(c.xdp.replace_foreign, args.xdp_replace_foreign);
        set!(c.consumers.ack_deadline, args.consumers_ack_deadline);
        set!(
            c.consumers.max_ack_extension,
            args.consumers_max_ack_extension
        );
        set!(c.consumers.max_deliveries, args.consumers_max_deliveries);
        set!(c.consumers.read_ahead, args.consumers_read_ahead);
        set!(
            c.consumers.read_ahead_bytes,
            args.consumers_read_ahead_bytes
        );
        set!(
            c.consumers.max_member_messages,
            args.consumers_max_member_messages
        );
        set!(
            c.consumers.max_member_bytes,
            args.consumers_max_member_bytes
        );
        set!(
            c.consumers.max_connection_bytes,
            args.consumers_max_connection_bytes
        );
        set!(c.consumers.max_out_bytes, args.consumers_max_out_bytes);
        set!(c.consumers.max_groups, args.consumers_max_groups);
        set!(c.log.level, args.log_level);
        set!(c.log.format, args.log_format);
        c.spool.repair |= args.repair;
        c.validate()?;
        Ok(c)
    }

    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(256..=65_507).contains(&self.data.max_datagram) {
            return Err(invalid("data.max_datagram", "must be within 256..=65507"));
        }
        if self.data.credit == 0 {
            return Err(invalid("data.credit", "must be at least 1"));
        }
        if self.data.max_sessions == 0 {
            return Err(invalid("data.max_sessions", "must be at least 1"));
        }
        if self.data.lease_seconds < 5 {
            return Err(invalid("data.lease_seconds", "must be at least 5"));
        }
        for (key, v) in [
            (
                "data.max_sessions_per_source",
                self.data.max_sessions_per_source,
            ),
            ("quic.max_connections", self.quic.max_connections),
            (
                "quic.max_connections_per_principal",
                self.quic.max_connections_per_principal,
            ),
            ("admin.max_connections", self.admin.max_connections),
            (
                "admin.max_connections_per_source",
                self.admin.max_connections_per_source,
            ),
            ("admin.max_page_requests", self.admin.max_page_requests),
            ("consumers.max_groups", self.consumers.max_groups),
            ("streams.max_streams", self.streams.max_streams),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        self.admin_limits()?;
        if self.quic.cert.as_os_str().is_empty() != self.quic.key.as_os_str().is_empty() {
            let missing = if self.quic.cert.as_os_str().is_empty() {
                "quic.cert"
            } else {
                "quic.key"
            };
            return Err(invalid(missing, "quic.cert and quic.key go together"));
        }
        let auth = self.authenticator()?;
        if auth.is_empty() && !self.loopback_only() {
            let why = if self.xdp.interface.is_empty() || self.xdp.interface == "lo" {
                "while listening beyond loopback"
            } else {
                "while xdp.interface takes packets from a NIC (from off the machine)"
            };
            return Err(invalid(
                "auth",
                format!(
                    "no principals (auth.tokens, auth.clients) {why}: anonymous clients are \
                     allowed only when nothing can reach the daemon from off the machine; mint a \
                     token with `sluice token new`"
                ),
            ));
        }
        if self.data.window_bytes < 64 << 10 {
            return Err(invalid("data.window_bytes", "must be at least 64 KiB"));
        }
        if self.spool.max_backlog_bytes < 1 << 20 {
            return Err(invalid("spool.max_backlog_bytes", "must be at least 1 MiB"));
        }
        self.fsync_policy()?;
        self.retention_age()?;
        self.scrub_config()?;
        if self.spool.segment_bytes < 1 << 20 {
            return Err(invalid("spool.segment_bytes", "must be at least 1 MiB"));
        }
        if self.spool.max_batch_bytes < 64 << 10 {
            return Err(invalid("spool.max_batch_bytes", "must be at least 64 KiB"));
        }
        for n in &self.streams.names {
            crate::spool::writer::check_name(n)
                .map_err(|e| invalid("streams.names", e.to_string()))?;
        }
        self.xdp_setup()?;
        self.consumers_config()?;
        if !["text", "json"].contains(&self.log.format.as_str()) {
            return Err(invalid("log.format", "must be `text` or `json`"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", e.to_string()))?;
        Ok(())
    }

    pub fn fsync_policy(&self) -> Result<FsyncPolicy, ConfigError> {
        match self.spool.fsync.as_str() {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            "interval" => {
                let d = humantime::parse_duration(&self.spool.fsync_interval)
                    .map_err(|e| invalid("spool.fsync_interval", e.to_string()))?;
                if d.is_zero() {
                    return Err(invalid("spool.fsync_interval", "must be more than zero"));
                }
                Ok(FsyncPolicy::Interval(d))
            }
            other => Err(invalid(
                "spool.fsync",
                format!("`{other}` is not one of always, interval, never"),
            )),
        }
    }

    pub fn retention_age(&self) -> Result<Option<Duration>, ConfigError> {
        if self.spool.retention_age.is_empty() {
            return Ok(None);
        }
        humantime::parse_duration(&self.spool.retention_age)
            .map(Some)
            .map_err(|e| invalid("spool.retention_age", e.to_string()))
    }

    /// The admin endpoint's limits, checked.
    pub fn admin_limits(&self) -> Result<AdminLimits, ConfigError> {
        let a = &self.admin;
        let duration = |key: &'static str, v: &str| {
            let d = humantime::parse_duration(v).map_err(|e| invalid(key, e.to_string()))?;
            if d < Duration::from_millis(100) {
                return Err(invalid(key, "must be at least 100ms"));
            }
            Ok(d)
        };
        if a.page_bytes < 64 << 10 {
            return Err(invalid("admin.page_bytes", "must be at least 64 KiB"));
        }
        Ok(AdminLimits {
            max_connections: a.max_connections,
            max_connections_per_source: a.max_connections_per_source,
            header_timeout: duration("admin.header_timeout", &a.header_timeout)?,
            idle_timeout: duration("admin.idle_timeout", &a.idle_timeout)?,
            page_bytes: a.page_bytes,
            max_page_requests: a.max_page_requests,
        })
    }

    /// The background scrub's settings.
    pub fn scrub_config(&self) -> Result<crate::spool::scrub::ScrubConfig, ConfigError> {
        let interval = humantime::parse_duration(&self.spool.scrub_interval)
            .map_err(|e| invalid("spool.scrub_interval", e.to_string()))?;
        if interval < Duration::from_secs(1) {
            return Err(invalid("spool.scrub_interval", "must be at least 1s"));
        }
        Ok(crate::spool::scrub::ScrubConfig {
            bytes_per_sec: self.spool.scrub_bytes_per_sec,
            interval,
        })
    }

    /// The principals of [auth], checked.
    pub fn authenticator(&self) -> Result<Authenticator, ConfigError> {
        Authenticator::new(&self.auth).map_err(|e| ConfigError::Auth(e.to_string()))
    }

    /// Whether every listener is on a loopback address: then, with no
    /// principals configured, local clients may act anonymously (the
    /// embedded default).
    pub fn loopback_only(&self) -> bool {
        // The AF_XDP path takes the data port's packets from a NIC's
        // queues: from off the machine, whatever data.listen says.
        let xdp_off_machine = !self.xdp.interface.is_empty() && self.xdp.interface != "lo";
        !xdp_off_machine
            && [self.data.listen, self.quic.listen, self.admin.listen]
                .iter()
                .all(|a| a.ip().is_loopback())
    }

    /// The AF_XDP path's settings, checked; None when it is off.
    pub fn xdp_setup(&self) -> Result<Option<XdpSetup>, ConfigError> {
        let x = &self.xdp;
        if x.interface.is_empty() {
            return Ok(None);
        }
        let mode = match x.mode.as_str() {
            "auto" => Mode::Auto,
            "native" => Mode::Native,
            "generic" => Mode::Generic,
            other => {
                return Err(invalid(
                    "xdp.mode",
                    format!("`{other}` is not one of auto, native, generic"),
                ))
            }
        };
        let bind = match x.bind.as_str() {
            "auto" => BindMode::Auto,
            "zerocopy" => BindMode::ZeroCopy,
            "copy" => BindMode::Copy,
            other => {
                return Err(invalid(
                    "xdp.bind",
                    format!("`{other}` is not one of auto, zerocopy, copy"),
                ))
            }
        };
        if x.rx_linger_us > 1_000 {
            return Err(invalid(
                "xdp.rx_linger_us",
                "at most 1000: it adds up to this much latency to every packet",
            ));
        }
        if x.queues.is_empty() {
            return Err(invalid("xdp.queues", "name at least one queue"));
        }
        let mut sorted = x.queues.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != x.queues.len() {
            return Err(invalid("xdp.queues", "a queue is named twice"));
        }
        if !x.cpus.is_empty() && x.cpus.len() != x.queues.len() {
            return Err(invalid(
                "xdp.cpus",
                format!(
                    "{} CPUs for {} queues: give one per queue, in the order of xdp.queues, or none",
                    x.cpus.len(),
                    x.queues.len()
                ),
            ));
        }
        let socket = XskConfig {
            frame_size: x.frame_size,
            frame_count: x.frame_count,
            rx_ring: x.rx_ring,
            tx_ring: x.tx_ring,
            fill_ring: x.fill_ring,
            comp_ring: x.fill_ring.max(x.tx_ring),
            bind,
            need_wakeup: true,
            busy_poll: x.busy_poll.then_some(BusyPoll {
                usecs: 20,
                budget: 64,
            }),
        };
        socket.validate().map_err(|e| match e {
            XskError::Config { field, problem } => invalid(xdp_key(field), problem),
            other => invalid("xdp", other.to_string()),
        })?;
        Ok(Some(XdpSetup {
            interface: x.interface.clone(),
            queues: x.queues.clone(),
            cpus: x.cpus.clone(),
            mode,
            socket,
            replace_foreign: x.replace_foreign,
            rx_linger: Duration::from_micros(x.rx_linger_us),
        }))
    }

    /// How ingest grants credit.
    pub fn credit_policy(&self) -> CreditPolicy {
        CreditPolicy {
            max_credit: self.data.credit,
            window_bytes: self.data.window_bytes,
            backlog_limit: self.spool.max_backlog_bytes,
        }
    }

    /// The spool's settings.
    pub fn spool_config(&self) -> Result<SpoolConfig, ConfigError> {
        Ok(SpoolConfig {
            log: LogConfig {
                segment_bytes: self.spool.segment_bytes,
                max_batch_bytes: self.spool.max_batch_bytes,
                recovery: if self.spool.repair {
                    crate::spool::Recovery::Repair
                } else {
                    crate::spool::Recovery::Recover
                },
                ..LogConfig::default()
            },
            fsync: self.fsync_policy()?,
            min_free_bytes: self.spool.min_free_bytes,
            retention_bytes: (self.spool.retention_bytes > 0).then_some(self.spool.retention_bytes),
            retention_age: self.retention_age()?,
            max_streams: self.streams.max_streams,
        })
    }
}

impl Config {
    /// The consumer groups' settings, checked.
    pub fn consumers_config(&self) -> Result<ConsumersConfig, ConfigError> {
        let c = &self.consumers;
        let duration = |key: &'static str, v: &str| {
            let d = humantime::parse_duration(v).map_err(|e| invalid(key, e.to_string()))?;
            if d.is_zero() {
                return Err(invalid(key, "must be more than zero"));
            }
            Ok(d)
        };
        if c.max_deliveries == 0 {
            return Err(invalid("consumers.max_deliveries", "must be at least 1"));
        }
        if c.read_ahead == 0 {
            return Err(invalid("consumers.read_ahead", "must be at least 1"));
        }
        let defaults = GroupSettings {
            machine: GroupConfig {
                ack_deadline: duration("consumers.ack_deadline", &c.ack_deadline)?,
                max_ack_extension: duration("consumers.max_ack_extension", &c.max_ack_extension)?,
                max_deliveries: c.max_deliveries,
                read_ahead: c.read_ahead,
                read_ahead_bytes: c.read_ahead_bytes.max(1),
                conflate: None,
            },
            retain_until_acked: false,
            start: StartAt::Earliest,
            max_backlog: 0,
        };
        let mut groups = Vec::new();
        for g in &c.groups {
            let key = "consumers.groups";
            let at = |reason: String| {
                invalid(
                    key,
                    format!("group {:?} of stream {:?}: {reason}", g.group, g.stream),
                )
            };
            crate::spool::writer::check_name(&g.stream).map_err(|e| at(e.to_string()))?;
            check_group_name(&g.group).map_err(at)?;
            if groups
                .iter()
                .any(|(s, n, _): &(String, String, GroupSettings)| *s == g.stream && *n == g.group)
            {
                return Err(at("named twice".into()));
            }
            let mut machine = defaults.machine.clone();
            if !g.ack_deadline.is_empty() {
                machine.ack_deadline =
                    duration(key, &g.ack_deadline).map_err(|e| at(e.to_string()))?;
            }
            if g.max_deliveries > 0 {
                machine.max_deliveries = g.max_deliveries;
            }
            machine.conflate = match g.conflate.as_str() {
                "none" => None,
                "latest_per_key" => Some(
                    parse_key_rule(&g.conflate_key)
                        .map_err(|e| at(format!("conflate_key: {e}")))?,
                ),
                other => {
                    return Err(at(format!(
                        "conflate: `{other}` is not one of none, latest_per_key"
                    )))
                }
            };
            let start = parse_start(&g.start).map_err(|e| at(format!("start: {e}")))?;
            groups.push((
                g.stream.clone(),
                g.group.clone(),
                GroupSettings {
                    machine,
                    retain_until_acked: g.retain_until_acked,
                    start,
                    max_backlog: g.max_backlog,
                },
            ));
        }
        for (key, v) in [
            ("consumers.max_member_bytes", c.max_member_bytes),
            ("consumers.max_connection_bytes", c.max_connection_bytes),
            ("consumers.max_out_bytes", c.max_out_bytes),
            (
                "consumers.max_member_messages",
                c.max_member_messages as u64,
            ),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        let limits = ConsumerLimits {
            max_member_messages: c.max_member_messages,
            max_member_bytes: c.max_member_bytes,
            max_connection_bytes: c.max_connection_bytes,
            max_out_bytes: c.max_out_bytes,
            max_groups: c.max_groups,
        };
        Ok(ConsumersConfig {
            limits,
            defaults,
            groups,
        })
    }
}

/// The `[xdp]` key of an AF_XDP socket setting.
fn xdp_key(field: &str) -> &'static str {
    match field {
        "frame_size" => "xdp.frame_size",
        "frame_count" => "xdp.frame_count",
        "rx_ring" => "xdp.rx_ring",
        "tx_ring" => "xdp.tx_ring",
        "fill_ring" | "comp_ring" => "xdp.fill_ring",
        _ => "xdp",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_names_a_key_of_the_configuration_and_help_shows_its_default() {
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let command = Args::command();
        let mut named = 0;
        for a in command.get_arguments() {
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            let Some((section, key)) = key_of(&help) else {
                continue;
            };
            named += 1;
            let value = defaults.get(section).and_then(|t| t.get(key));
            assert!(
                value.is_some(),
                "--{} names [{section}.{key}], which the configuration lacks",
                a.get_long().unwrap_or_default()
            );
            assert!(help.contains("[default: "), "{help}");
            assert!(
                a.get_help_heading()
                    .is_some_and(|h| h.ends_with(&format!("[{section}]"))),
                "--{} is not under its section's heading",
                a.get_long().unwrap_or_default()
            );
        }
        assert!(named > 50, "only {named} options name a key");
    }

    fn parse(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
        assert_eq!(c.data.listen.to_string(), "127.0.0.1:7401");
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:7480");
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("[spool]\nfsync = \"sometimes\"\n").unwrap_err();
        assert!(e.contains("spool.fsync") && e.contains("sometimes"), "{e}");
        let e = parse("[data]\ncredit = 0\n").unwrap_err();
        assert!(e.contains("data.credit"), "{e}");
        let e = parse("[data]\nlisten = \"not an address\"\n").unwrap_err();
        assert!(e.contains("listen"), "{e}");
        let e = parse("[spool]\nretention_age = \"soon\"\n").unwrap_err();
        assert!(e.contains("spool.retention_age"), "{e}");
        let e = parse("[spool]\nfsnyc = \"always\"\n").unwrap_err();
        assert!(e.contains("fsnyc"), "unknown keys are named: {e}");
    }

    #[test]
    fn xdp_settings_are_checked_with_their_keys() {
        // A token: an XDP interface takes packets from off the machine.
        let on = "[[auth.tokens]]\nname = \"t\"\nhash = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\n[xdp]\ninterface = \"eth1\"\n";
        assert!(parse(on).unwrap().xdp_setup().unwrap().is_some());
        assert!(
            Config::default().xdp_setup().unwrap().is_none(),
            "off by default"
        );
        for (extra, key) in [
            ("mode = \"fast\"", "xdp.mode"),
            ("bind = \"maybe\"", "xdp.bind"),
            ("queues = []", "xdp.queues"),
            ("queues = [1, 1]", "xdp.queues"),
            ("queues = [0, 1]\ncpus = [3]", "xdp.cpus"),
            ("frame_size = 3000", "xdp.frame_size"),
            ("rx_ring = 1000", "xdp.rx_ring"),
            ("frame_count = 1024", "xdp.frame_count"),
        ] {
            let e = parse(&format!("{on}{extra}\n")).unwrap_err();
            assert!(e.contains(key), "{extra}: {e}");
        }
    }

    #[test]
    fn consumer_settings_are_checked_with_their_keys() {
        let g = "[[consumers.groups]]\nstream = \"orders\"\ngroup = \"billing\"\n";
        let c = parse(&format!("{g}conflate = \"latest_per_key\"\nconflate_key = \"delimiter:=\"\nmax_deliveries = 2\nstart = \"offset:7\"\n")).unwrap();
        let cc = c.consumers_config().unwrap();
        let (_, _, s) = &cc.groups[0];
        assert_eq!(s.machine.max_deliveries, 2);
        assert_eq!(s.start, StartAt::Offset(7));
        assert!(s.machine.conflate.is_some());
        for (text, key) in [
            (
                "[consumers]\nack_deadline = \"soon\"\n".to_owned(),
                "consumers.ack_deadline",
            ),
            (
                "[consumers]\nmax_deliveries = 0\n".to_owned(),
                "consumers.max_deliveries",
            ),
            (format!("{g}conflate = \"sometimes\"\n"), "conflate"),
            (
                format!("{g}conflate = \"latest_per_key\"\nconflate_key = \"prefix:x\"\n"),
                "conflate_key",
            ),
            (format!("{g}start = \"yesterday\"\n"), "start"),
            (
                "[[consumers.groups]]\nstream = \"s\"\ngroup = \"../x\"\n".to_owned(),
                "consumers.groups",
            ),
            (format!("{g}{g}"), "named twice"),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
        assert!(parse_start("time:2026-12-01T10:00:00Z").is_ok());
    }

    #[test]
    fn an_xdp_interface_refuses_anonymous_clients() {
        let e = parse("[xdp]\ninterface = \"eth1\"\n").unwrap_err();
        assert!(e.contains("auth") && e.contains("xdp.interface"), "{e}");
        // On loopback's own interface nothing comes from off the machine.
        parse("[xdp]\ninterface = \"lo\"\n").unwrap();
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "[data]\ncredit = 10\n[spool]\ndir = \"/from/file\"\n",
        )
        .unwrap();
        let args = Args {
            config: Some(path),
            spool_dir: Some("/from/flag".into()),
            ..Args::default()
        };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.data.credit, 10);
        assert_eq!(c.spool.dir, PathBuf::from("/from/flag"));
    }
}
