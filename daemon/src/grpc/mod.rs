//! The gRPC plane: tonic on its own listener (`grpc.listen`), serving the
//! services of proto/sluice/v1/sluice.proto, the standard
//! `grpc.health.v1` health service and server reflection. daemon/GRPC.md
//! documents it for clients.
//!
//! A plane, not a second set of semantics: a Publish goes through the same
//! [`crate::publish::Publisher`] as an HTTP publish (one idempotence table,
//! one credit policy, one fdatasync rule), principals and rights are the
//! same [`Gate`]'s, and consumers join the same groups.
//!
//! One file per service: `publish.rs` (Publisher: Publish, PublishStream),
//! `pull.rs` (Subscriber: StreamingPull), `admin.rs` (Admin: ListStreams,
//! DescribeGroup); `caller.rs` finds a call's principal, `conn.rs` accepts
//! connections within the limits.
//!
//! What one client can hold is bounded: connections (`grpc.max_connections`,
//! more are closed at once), calls per connection
//! (`grpc.max_streams_per_connection`, HTTP/2's SETTINGS), streaming calls
//! per principal over all its connections
//! (`grpc.max_streams_per_principal`, [`caller::StreamLimits`]), one message
//! ([`MAX_MESSAGE`]: the largest payload plus framing; larger is refused
//! before it is read whole), the bytes of messages all calls are receiving
//! at once (`grpc.max_request_bytes`, budget.rs: a call waits for room,
//! its client held by HTTP/2's flow control; `grpc.message_timeout` ends
//! one stopped halfway), headers ([`MAX_HEADERS`]), TLS handshakes
//! ([`HANDSHAKE_TIMEOUT`]) and dead peers (HTTP/2 keepalive pings,
//! `grpc.keepalive`, [`KEEPALIVE_TIMEOUT`]).

mod admin;
mod budget;
mod caller;
mod conn;
mod publish;
mod pull;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

use crate::consume::service::Consumers;
use crate::gate::Gate;
use crate::metrics::exposition::{Exposition, Kind};
use crate::metrics::Collect;
use crate::publish::Publisher;
use crate::spool::Spool;

/// The code generated from proto/sluice/v1/sluice.proto (daemon/build.rs),
/// public for clients in Rust (the tests, examples).
pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("sluice.v1");

    /// The encoded descriptors of sluice.proto (and what it imports), for
    /// server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/sluice_v1_descriptor.bin"));
}

/// The most room one request message takes of `grpc.max_request_bytes`.
pub const MAX_REQUEST_TAKE: usize = budget::MAX_TAKE;

/// Largest gRPC message read or written: a request of the largest
/// payload (16 MiB, as HTTP's body) plus its protobuf framing (a few bytes
/// a message for up to 10,000 messages, the stream name, the key) with
/// room to spare.
pub const MAX_MESSAGE: usize = (16 << 20) + (256 << 10);
/// Most bytes of one call's headers (metadata).
pub const MAX_HEADERS: u32 = 16 << 10;
/// A TLS handshake must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A keepalive ping unanswered for this long closes the connection.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a stop lets calls in progress finish before it cuts them.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the plane is started with.
pub struct GrpcSetup {
    pub listen: SocketAddr,
    /// TLS (`grpc.tls`): the QUIC plane's identity, ALPN h2; `None`: h2c.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub gate: Arc<Gate>,
    pub publisher: Arc<Publisher>,
    pub spool: Arc<Spool>,
    pub consumers: Arc<Consumers>,
    pub max_connections: usize,
    pub max_streams_per_connection: u32,
    /// Streaming calls (PublishStream, StreamingPull) one principal may
    /// have open at once over all its connections.
    pub max_streams_per_principal: usize,
    pub keepalive: Duration,
    /// `grpc.max_request_bytes`: request messages received at once.
    pub max_request_bytes: usize,
    /// `grpc.message_timeout`: a request message arrives whole within it.
    pub message_timeout: Duration,
}

/// Counters of the gRPC plane.
#[derive(Debug, Default)]
pub struct GrpcStats {
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    /// Closed at once: `grpc.max_connections` were open.
    pub connections_refused: AtomicU64,
    /// TLS handshakes that failed or took too long.
    pub handshake_failures: AtomicU64,
    /// Streaming calls open (PublishStream, StreamingPull).
    pub streaming_calls: AtomicU64,
    /// Streaming calls refused: their principal held
    /// `grpc.max_streams_per_principal`.
    pub refused_principal_streams: AtomicU64,
}

impl Collect for GrpcStats {
    fn collect(&self, e: &mut Exposition) {
        for (name, kind, help, v) in [
            (
                "sluice_grpc_connections_open",
                Kind::Gauge,
                "gRPC connections open.",
                &self.connections,
            ),
            (
                "sluice_grpc_connections_total",
                Kind::Counter,
                "gRPC connections accepted.",
                &self.connections_total,
            ),
            (
                "sluice_grpc_connections_refused_total",
                Kind::Counter,
                "gRPC connections closed at once because grpc.max_connections were open.",
                &self.connections_refused,
            ),
            (
                "sluice_grpc_tls_handshake_failures_total",
                Kind::Counter,
                "gRPC TLS handshakes that failed or timed out (grpc.tls).",
                &self.handshake_failures,
            ),
            (
                "sluice_grpc_streaming_calls",
                Kind::Gauge,
                "gRPC streaming calls open (PublishStream, StreamingPull).",
                &self.streaming_calls,
            ),
        ] {
            e.family(name, kind, help);
            e.sample(name, &[], v.load(Relaxed) as f64);
        }
        // By reason, so that later limits on calls join the same family.
        let name = "sluice_grpc_calls_refused_total";
        e.family(
            name,
            Kind::Counter,
            "gRPC calls refused with RESOURCE_EXHAUSTED by a limit: principal_streams \
             (grpc.max_streams_per_principal).",
        );
        e.sample(
            name,
            &[("reason", "principal_streams")],
            self.refused_principal_streams.load(Relaxed) as f64,
        );
    }
}

/// What every service of the plane reads.
struct Shared {
    gate: Arc<Gate>,
    publisher: Arc<Publisher>,
    spool: Arc<Spool>,
    consumers: Arc<Consumers>,
    /// Streaming calls open by principal (`grpc.max_streams_per_principal`).
    streams: Arc<caller::StreamLimits>,
    /// The daemon is stopping: new publishes are refused (UNAVAILABLE).
    stopping: AtomicBool,
}

/// The running plane.
pub struct GrpcPlane {
    pub local_addr: SocketAddr,
    shared: Arc<Shared>,
    health: HealthReporter,
    stats: Arc<GrpcStats>,
    budget: Arc<budget::Budget>,
    stop: Option<oneshot::Sender<()>>,
    serve: JoinHandle<()>,
    accept: JoinHandle<()>,
    watch: JoinHandle<()>,
}

impl GrpcPlane {
    /// Binds the listener and serves; the health service says SERVING.
    pub async fn start(setup: GrpcSetup) -> std::io::Result<GrpcPlane> {
        let listener = TcpListener::bind(setup.listen).await?;
        let local_addr = listener.local_addr()?;
        let stats = Arc::new(GrpcStats::default());
        let shared = Arc::new(Shared {
            gate: setup.gate,
            publisher: setup.publisher,
            spool: setup.spool,
            consumers: setup.consumers,
            streams: caller::StreamLimits::new(setup.max_streams_per_principal, stats.clone()),
            stopping: AtomicBool::new(false),
        });
        let budget = budget::Budget::new(setup.max_request_bytes, setup.message_timeout);
        let (incoming, accept) = conn::accept(
            listener,
            setup.tls.clone().map(tokio_rustls::TlsAcceptor::from),
            setup.max_connections,
            stats.clone(),
        );
        let (health, health_service) = tonic_health::server::health_reporter();
        let publisher =
            proto::publisher_server::PublisherServer::new(publish::Service::new(shared.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
        let subscriber =
            proto::subscriber_server::SubscriberServer::new(pull::Service::new(shared.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
        let admin = proto::admin_server::AdminServer::new(admin::Service::new(shared.clone()))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        // Both reflection versions: grpcurl and most tools speak v1 now,
        // older ones v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1().map_err(std::io::Error::other)?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(std::io::Error::other)?;
        set_health(&health, true).await;
        let watch = tokio::spawn(watch_health(shared.clone(), health.clone()));
        let router = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(setup.max_streams_per_connection))
            .http2_keepalive_interval(Some(setup.keepalive))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .http2_max_header_list_size(Some(MAX_HEADERS))
            .layer(budget::MeterLayer(budget.clone()))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(publisher)
            .add_service(subscriber)
            .add_service(admin);
        let (stop, stopped) = oneshot::channel::<()>();
        let serve = tokio::spawn(async move {
            let done = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = done {
                warn!(error = %e, "the gRPC server stopped with an error");
            }
        });
        info!(grpc = %local_addr, tls = setup.tls.is_some(), "gRPC plane listening");
        Ok(GrpcPlane {
            local_addr,
            shared,
            health,
            stats,
            budget,
            stop: Some(stop),
            serve,
            accept,
            watch,
        })
    }

    pub fn stats(&self) -> Arc<GrpcStats> {
        self.stats.clone()
    }

    /// The request budget, for its metrics.
    pub fn budget(&self) -> Arc<dyn Collect> {
        self.budget.clone()
    }

    /// No new publishes (UNAVAILABLE), and health says NOT_SERVING, so
    /// that balancers and clients go elsewhere while the daemon drains.
    pub async fn pause(&self) {
        self.shared.stopping.store(true, Relaxed);
        self.watch.abort();
        set_health(&self.health, false).await;
    }

    /// Stops accepting, lets calls in progress finish for a short grace,
    /// then cuts what is left (streaming calls can last for ever).
    pub async fn shutdown(mut self) {
        self.watch.abort();
        self.accept.abort();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(STOP_GRACE, &mut self.serve)
            .await
            .is_err()
        {
            warn!("gRPC calls still open after {STOP_GRACE:?}: cut");
            self.serve.abort();
        }
    }
}

/// The names the health service answers for: the whole server (`""`) and
/// each service of sluice.proto.
const SERVICES: [&str; 4] = [
    "",
    "sluice.v1.Publisher",
    "sluice.v1.Subscriber",
    "sluice.v1.Admin",
];

/// How often the health service looks at the daemon's health.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

async fn set_health(health: &HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for name in SERVICES {
        health.set_service_status(name, status).await;
    }
}

/// Keeps the health service saying what `GET /health` says: NOT_SERVING
/// while acks are held (a stream's disk is full: publishes would only be
/// refused) or the daemon stops, SERVING otherwise (damage found in the
/// spool degrades, it does not stop the service).
async fn watch_health(s: Arc<Shared>, health: HealthReporter) {
    let mut serving = true;
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    loop {
        tick.tick().await;
        let now = !s.stopping.load(Relaxed)
            && !s
                .spool
                .open_streams()
                .iter()
                .any(|st| st.health().disk_full);
        if now != serving {
            serving = now;
            info!(serving, "gRPC health changes (acks held: a disk is full)");
            set_health(&health, serving).await;
        }
    }
}

/// The gRPC status of a publish refused by the domain, shared by
/// Publish and PublishStream (daemon/GRPC.md lists them).
fn publish_status(e: crate::publish::PublishError, stopping: bool) -> tonic::Status {
    use crate::publish::PublishError as E;
    use tonic::{Code, Status};
    use tonic_types::{ErrorDetails, StatusExt};
    match e {
        E::Busy(_) if stopping => Status::unavailable("sluiced is stopping"),
        // Retrying later helps: say when, in the standard detail.
        E::Busy(why) => Status::with_error_details(
            Code::ResourceExhausted,
            why,
            ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
        ),
        e @ E::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
        E::NoStream(why) => Status::not_found(why),
        E::Refused(why) => Status::failed_precondition(why),
        e @ E::KeyConflict => Status::already_exists(
            e.to_string()
                .replace("Idempotency-Key", "idempotency_key")
                .replace("another body", "other payloads"),
        ),
        E::Bad(why) => Status::invalid_argument(why),
    }
}
