//! Every key of `sluiced`'s configuration, each declared once: its
//! documentation (the first paragraph is its line in `sluiced -h`; all of
//! it shows in `--help`), name, type and default. The file's struct, the
//! flags, the variables and `--help` are made from these (`declare.rs`).
//!
//! Flags are `--section-key` and variables `SLUICED_SECTION_KEY`, but for
//! `--streams` / `SLUICED_STREAMS` (`streams.names`) and the switch
//! `--repair` (`spool.repair`). `[auth]`, `consumers.groups` and
//! `[[forward]]` are tables of the file only.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::declare::{file_table, section, switch_on};
use super::values::{Conflate, FsyncMode, LogFormat, OptionalSpan, Size, Span, XdpBind, XdpMode};
use crate::consume::service::OnBacklog;
use crate::spool::keys::KeyLimits;
use crate::spool::LogConfig;

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

section! {
    /// The fast data path: raw UDP from producers.
    [data] DataSection, DataFlags, "Data port: raw UDP from producers" {
        /// UDP address producers send to.
        listen: SocketAddr = loopback(7401),
        /// SO_RCVBUF of the data socket (0: the kernel's default).
        ///
        /// Too small a buffer drops bursts, which producers must then
        /// resend. If the kernel caps it (net.core.rmem_max), sluiced warns.
        recv_buffer: Size = Size::mib(8),
        /// Largest datagram sent (NACKs, STATUS): the path MTU less IP and UDP headers.
        max_datagram: usize = 1452,
        /// Most messages one session may send past its durable seq.
        credit: u32 = 4096,
        /// Bytes in flight (sent by producers, not yet durable) over all sessions.
        ///
        /// Bounds ingest memory and what can pile up in the data socket's
        /// receive buffer: keep it well under data.recv_buffer.
        window_bytes: Size = Size::mib(2),
        /// Most producer sessions open at once; more HELLOs are refused.
        max_sessions: usize = 4096,
        /// Accept unsealed raw UDP from anyone: no authentication on the data port.
        ///
        /// Off: producers lease a sealed session over QUIC.
        insecure_lan: bool = false,
        /// Seconds a raw-UDP lease lasts unless its producer renews it.
        lease_seconds: u64 = 60,
        /// Producer sessions (pending and open) from one source address.
        max_sessions_per_source: usize = 1024,
    }
}

section! {
    /// The QUIC plane: authentication, publishing over QUIC, fast-path leases.
    [quic] QuicSection, QuicFlags, "QUIC plane: TLS, leases, consumers" {
        /// UDP address of the QUIC listener.
        listen: SocketAddr = loopback(7400),
        /// Certificate chain (PEM); empty: a self-signed one.
        ///
        /// The self-signed certificate is made at first start and kept in
        /// the data folder.
        cert: PathBuf = PathBuf::new(),
        /// Private key of the certificate (PEM).
        key: PathBuf = PathBuf::new(),
        /// CA certificates (PEM) that client certificates must chain to; empty: tokens only.
        client_ca: PathBuf = PathBuf::new(),
        /// QUIC connections open at once; more are refused and counted.
        max_connections: usize = 1024,
        /// QUIC connections one principal (a token or a client certificate) may have open.
        max_connections_per_principal: usize = 64,
    }
}

section! {
    /// Metrics, health and the HTTP API.
    [admin] AdminSection, AdminFlags, "Admin and HTTP API port" {
        /// HTTP address of /metrics, /health and the API.
        listen: SocketAddr = loopback(7480),
        /// HTTP connections open at once.
        ///
        /// One more takes the place of an idle one, or is closed at once (a
        /// reserve of file descriptors stays for the spool and /health).
        max_connections: usize = 1024,
        /// HTTP connections from one source address.
        max_connections_per_source: usize = 64,
        /// A request's headers must arrive within this.
        header_timeout: Span = Span::secs(10),
        /// A connection with no request for this long is closed.
        idle_timeout: Span = Span::secs(60),
        /// Most payload bytes one page of records, dead letters or fetched messages carries.
        ///
        /// One message of the largest size always fits.
        page_bytes: Size = Size::mib(8),
        /// Page-returning requests served at once (the rest wait).
        ///
        /// With admin.page_bytes, this bounds the memory pages can take.
        max_page_requests: usize = 8,
        /// Serve the admin port over HTTPS (TLS via rustls; ALPN http/1.1).
        ///
        /// With admin.tls_cert and admin.tls_key empty, it serves the QUIC
        /// plane's certificate (quic.cert, or the self-signed one in the
        /// data folder: tls/server.crt, which clients then trust).
        tls: bool = false,
        /// Certificate chain (PEM) of the admin port's HTTPS; empty: the QUIC plane's.
        tls_cert: PathBuf = PathBuf::new(),
        /// Private key (PEM) of admin.tls_cert.
        tls_key: PathBuf = PathBuf::new(),
    }
}

section! {
    /// The gRPC plane: clients generated from proto/sluice/v1/sluice.proto
    /// (daemon/GRPC.md).
    [grpc] GrpcSection, GrpcFlags, "gRPC plane: publish, streaming pull, admin views" {
        /// Serve the gRPC API (off: no gRPC listener).
        enabled: bool = true,
        /// TCP address of the gRPC listener (HTTP/2).
        listen: SocketAddr = loopback(7402),
        /// Serve gRPC over TLS (rustls, ALPN h2) with the QUIC plane's certificate.
        ///
        /// That is quic.cert, or the self-signed one in the data folder
        /// (tls/server.crt, which clients then trust). Off: plaintext
        /// HTTP/2 (h2c), as the admin port is plain HTTP by default; sluiced
        /// warns when it listens beyond loopback without TLS (tokens would
        /// travel in clear).
        tls: bool = false,
        /// gRPC connections open at once; more are closed at once and counted.
        max_connections: usize = 1024,
        /// Calls (HTTP/2 streams) one gRPC connection may have open at once.
        max_streams_per_connection: u32 = 64,
        /// Streaming calls (PublishStream, StreamingPull) one principal may have open at once.
        ///
        /// Counted over all its connections; one more is refused with
        /// RESOURCE_EXHAUSTED and RetryInfo and counted. Without it one
        /// token could hold max_connections × max_streams_per_connection
        /// calls (65,536 by default), each a task, a member or a producer
        /// session. 1,024 is sixteen connections full of calls: more than
        /// a client process's pool of pulls and producers, 1/64 of what
        /// the plane holds. The anonymous principal (loopback only) is not
        /// limited.
        max_streams_per_principal: usize = 1024,
        /// Interval of HTTP/2 pings on a gRPC connection; one unanswered within 20 s closes it.
        keepalive: Span = Span::secs(30),
        /// Bytes of request messages all gRPC calls together may be receiving at once.
        ///
        /// A message takes its length from this before its first byte is
        /// read and gives it back once decoded; a call finding it spent
        /// waits (HTTP/2's flow control holds its client). At least one
        /// largest message (16 MiB and framing).
        max_request_bytes: Size = Size::mib(64),
        /// A request message must arrive whole within this of its first bytes, else its call ends.
        ///
        /// Its room in grpc.max_request_bytes is held meanwhile: a client
        /// that stops halfway must not keep it from everyone (16 MiB in
        /// 60 s is 280 KB/s).
        message_timeout: Span = Span::secs(60),
    }
}

section! {
    /// The durable log.
    [spool] SpoolSection, SpoolFlags, "Spool: the durable log" {
        /// Data folder (streams, segments, cursors).
        dir: PathBuf = PathBuf::from("./sluice-data"),
        /// When appends are made durable.
        ///
        /// Anything but `always` breaks the durability promise: a crash
        /// loses acked messages. For benchmarks only.
        fsync: FsyncMode = FsyncMode::Always,
        /// With spool.fsync = interval: how often.
        fsync_interval: Span = Span::millis(10),
        /// Segment file size (preallocated).
        segment_bytes: Size = Size(LogConfig::default().segment_bytes),
        /// Most bytes one group commit writes.
        max_batch_bytes: Size = Size(LogConfig::default().max_batch_bytes as u64),
        /// Below this much free disk, acks are held and producers get no credit.
        min_free_bytes: Size = Size::mib(256),
        /// Bytes waiting for the writer at which producers get no credit.
        max_backlog_bytes: Size = Size::mib(64),
        /// Per stream, delete the oldest whole segments past this size (0: keep all).
        retention_bytes: Size = Size(0),
        /// Delete whole segments older than this, e.g. 7d (empty: keep all).
        retention_age: OptionalSpan = OptionalSpan::NONE,
        /// Set damaged parts of the spool aside instead of refusing to start (exit status 3).
        ///
        /// They are moved under streams/<s>/aside/, never deleted, and the
        /// valid log before them is served. Offsets given up are logged,
        /// counted, and shown by /health and /streams. The flag takes no
        /// value: given, it turns repair on whatever the file says.
        #[arg(long = "repair", action = clap::ArgAction::SetTrue)]
        #[merge = switch_on]
        repair: bool = false,
        /// Rate of the background scrub, which reads sealed segments again and checks them (0: off).
        scrub_bytes_per_sec: Size = Size::mib(16),
        /// A scrub pass starts at most this often.
        scrub_interval: Span = Span::secs(24 * 3600),
        /// How long an HTTP publish's Idempotency-Key is remembered: a retry within it stores nothing.
        idempotency_window: Span = Span::secs(24 * 3600),
        /// Most Idempotency-Keys remembered per stream (the oldest go first).
        idempotency_keys: u64 = KeyLimits::default().max as u64,
    }
}

section! {
    /// Streams.
    [streams] StreamsSection, StreamsFlags, "Streams" {
        /// Streams opened at start.
        #[arg(long = "streams", env = "SLUICED_STREAMS")]
        names: Vec<String> = Vec::new(),
        /// Create a stream when a producer first publishes to it.
        auto_create: bool = true,
        /// Streams at most (dead-letter streams not counted); a new one past it is refused.
        max_streams: usize = 1024,
    }
}

section! {
    /// The AF_XDP receive path: the data port's packets straight from the
    /// NIC queues (Linux, root or CAP_BPF + CAP_NET_ADMIN + CAP_NET_RAW).
    [xdp] XdpSection, XdpFlags, "AF_XDP receive path" {
        /// Interface to attach the AF_XDP receive path to (empty: off, the socket path only).
        interface: String = String::new(),
        /// RX queues to take the data port from.
        ///
        /// One AF_XDP socket and thread each; steer the port to them with
        /// `sluice nic plan`.
        queues: Vec<u32> = vec![0],
        /// How the XDP program is attached.
        mode: XdpMode = XdpMode::Auto,
        /// How the AF_XDP sockets bind.
        bind: XdpBind = XdpBind::Auto,
        /// UMEM frame size: 2048 (MTU up to ~1,750) or 4096.
        frame_size: u32 = 2048,
        /// UMEM frames per queue (a power of two, at least fill_ring + tx_ring).
        frame_count: u32 = 16384,
        /// RX ring entries per queue (a power of two).
        rx_ring: u32 = 8192,
        /// TX ring entries per queue (0: none).
        ///
        /// Without one, replies leave through the kernel socket; in copy
        /// mode a TX ring costs a transmit pass at every wake-up.
        tx_ring: u32 = 0,
        /// Fill (and completion) ring entries per queue: frames handed to the kernel to fill.
        fill_ring: u32 = 8192,
        /// Busy-poll the queues instead of waiting on interrupts.
        ///
        /// SO_PREFER_BUSY_POLL: lower latency, a CPU spent per queue.
        busy_poll: bool = false,
        /// CPU to pin each queue's thread to, in the order of xdp.queues.
        cpus: Vec<usize> = Vec::new(),
        /// Microseconds a woken queue thread lets packets gather (0: take them at once).
        ///
        /// When fewer than a batch wait: fewer wake-ups, for at most this
        /// much added latency.
        rx_linger_us: u64 = 50,
        /// If XDP cannot start, warn and run on the socket path instead of refusing to start.
        fallback: bool = false,
        /// Remove an XDP program another tool left attached to the interface.
        ///
        /// sluice's own stale program is always replaced.
        replace_foreign: bool = false,
    }
}

section! {
    /// Consumer groups: their defaults, and groups that exist from the start.
    [consumers] ConsumersSection, ConsumersFlags, "Consumer groups" {
        /// How long a consumer may hold a message before it is delivered again.
        ///
        /// A consumer can extend it for long work.
        ack_deadline: Span = Span::secs(30),
        /// Longest deadline a consumer may extend a message to.
        max_ack_extension: Span = Span::secs(12 * 3600),
        /// Deliveries after which an unacked message moves to the dead-letter stream.
        ///
        /// The dead-letter stream of `<stream>` is `<stream>.dlq`.
        max_deliveries: u32 = 5,
        /// Records a group reads ahead of delivery.
        read_ahead: usize = 4096,
        /// Payload bytes a group reads ahead of delivery.
        read_ahead_bytes: Size = Size::mib(16),
        /// Most messages out (delivered, not acked) with one consumer, whatever it declares.
        max_member_messages: u32 = 10_000,
        /// Most payload bytes out with one consumer, whatever it declares.
        max_member_bytes: Size = Size::mib(16),
        /// Most payload bytes out with the consumers of one QUIC connection together.
        max_connection_bytes: Size = Size::mib(64),
        /// Most payload bytes out with all consumers.
        max_out_bytes: Size = Size::mib(256),
        /// Consumer groups in all; a subscriber naming a new one past it is refused.
        max_groups: usize = 64,
    }
    file_only {
        /// Groups that exist from the daemon's start, with their own
        /// settings (`[[consumers.groups]]`).
        groups: Vec<GroupEntry> = Vec::new(),
    }
}

section! {
    /// Logging.
    [log] LogSection, LogFlags, "Logging" {
        /// error, warn, info, debug, trace, or a tracing filter directive.
        level: String = "info".into(),
        /// How log lines are written (to stderr).
        format: LogFormat = LogFormat::Text,
    }
}

file_table! {
    /// One configured consumer group (`[[consumers.groups]]`).
    GroupEntry {
        /// The stream the group reads.
        stream: String = String::new(),
        /// The group's name.
        group: String = String::new(),
        /// Where the group starts when first created: `earliest`, `latest`,
        /// `offset:N` or `time:RFC3339`.
        start: String = "earliest".into(),
        /// Overrides `consumers.ack_deadline` (empty: keep it).
        ack_deadline: OptionalSpan = OptionalSpan::NONE,
        /// Overrides `consumers.max_deliveries` (0: keep it).
        max_deliveries: u32 = 0,
        /// Retention keeps every record this group has not acked.
        retain_until_acked: bool = false,
        /// Backpressure: at this many messages of backlog, producers to the
        /// stream get no credit until the group catches up (0: never).
        max_backlog: u64 = 0,
        /// At `max_backlog`: `hold` (producers get no credit, nothing is
        /// lost) or `drop_oldest` (the oldest messages not out with a
        /// consumer are dropped unacked and counted; producers never wait).
        on_backlog: OnBacklog = OnBacklog::Hold,
        /// `none`, or `latest_per_key`: a group that falls behind gets the
        /// newest message of each key instead of every one.
        conflate: Conflate = Conflate::None,
        /// What the key is: `producer`, `prefix:N` (first N bytes of the
        /// payload) or `delimiter:C` (the payload up to the first C).
        conflate_key: String = "producer".into(),
    }
}

file_table! {
    /// One forward into a NATS JetStream cluster (`[[forward]]`, daemon/FORWARD.md).
    ForwardEntry {
        /// The forward's name: its consumer group is `forward.<name>`.
        name: String = String::new(),
        /// The sluice streams it forwards: exact names, or patterns where
        /// `*` stands for any run of characters (`orders-*`, `*`; streams
        /// made later too, found within a second; never `.dlq` streams).
        streams: Vec<String> = Vec::new(),
        /// NATS server URLs (`nats://host:port`), any node of the cluster.
        servers: Vec<String> = Vec::new(),
        /// The subject of a stream's messages; `{stream}` is its name,
        /// `{producer}` the producer's id (with it, a restart resumes each
        /// producer where the target stands, beyond the duplicate window).
        subject: String = "sluice.{stream}.{producer}".into(),
        /// The JetStream stream that must store them (checked by the server
        /// with `Nats-Expected-Stream`).
        target_stream: String = String::new(),
        /// Create the target stream if it is missing (its subjects: those
        /// of the forwarded streams).
        create: bool = false,
        /// With `create`: the stream's replicas (1 to 5).
        replicas: usize = 1,
        /// With `create`: `file` or `memory`.
        storage: String = "file".into(),
        /// Token to authenticate with (empty: none).
        token: String = String::new(),
        /// User name to authenticate with, with `password`.
        user: String = String::new(),
        /// Password of `user`.
        password: String = String::new(),
        /// NATS credentials file (JWT and NKey seed; empty: none).
        creds_file: PathBuf = PathBuf::new(),
        /// File holding a user NKey seed (`SU...`; empty: none), for servers
        /// that list the user's public NKey.
        nkey_file: PathBuf = PathBuf::new(),
        /// CA certificates (PEM) the servers' TLS certificates must chain to
        /// (given: TLS required).
        tls_ca: PathBuf = PathBuf::new(),
        /// Most publishes awaiting their PubAck at once, per stream.
        max_in_flight: u32 = 1024,
        /// Retention keeps what is not forwarded yet (the group's
        /// `retain_until_acked`).
        retain: bool = true,
        /// Backpressure: at this many messages not yet forwarded, producers
        /// to the stream get no credit (0: never).
        max_backlog: u64 = 0,
        /// At `max_backlog`: `hold` (producers get no credit, nothing is
        /// lost) or `drop_oldest` (the oldest messages not yet sent to
        /// JetStream are dropped and counted, `sluice_group_dropped_total`;
        /// producers never wait; not with `ack = "replicated"`).
        on_backlog: OnBacklog = OnBacklog::Hold,
        /// When a producer's message counts as acked: `local` (after the
        /// local fdatasync) or `replicated` (also after JetStream's PubAck:
        /// stored by a quorum of the target stream; for every stream of
        /// this forward).
        ack: String = "local".into(),
    }
}
