//! `sluiced` as a library: everything between a checked [`Config`] (and
//! the [`Settings`] built from it at load) and a clean stop. The binary parses arguments and sets up logging; tests and
//! the load harness run the same code.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_transport::proto::ReceiverConfig;
use sluice_transport::serve;
use sluice_transport::udp::{self, SocketOptions, UdpIo};
use sluice_transport::wire::CloseCode;
use thiserror::Error;
use tracing::{info, warn};

use crate::api::serve::Http;
use crate::api::{self, AdminState};
use crate::config::{Config, ConfigError, Settings};
use crate::consume::service::{ConsumeError, Consumers};
use crate::gate::Gate;
use crate::grpc::{GrpcPlane, GrpcSetup};
use crate::identity::{self, AdminTls, IdentityError};
use crate::ingest::{Ingest, IngestShared};
use crate::metrics::{Metrics, Registry};
use crate::quic::{QuicPlane, QuicSetup, SecurityMetrics};
use crate::spool::{Spool, SpoolError};
use sluice_transport::lease::{Leases, SealedIo, SealedStats};
use sluice_transport::serve::{PacketIo, ServeHandle};
use sluice_xdp::datapath::{XdpError, XdpIo, XdpPath};

/// How long a stop waits for the batches in flight to become durable.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    #[error("data socket: {0}")]
    Data(#[from] sluice_transport::udp::UdpError),
    #[error("{0}")]
    Admin(std::io::Error),
    #[error("{0}")]
    Quic(String),
    #[error("gRPC listener {addr}: {source}")]
    Grpc {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("{0} (set xdp.fallback = true to run on the socket path instead)")]
    Xdp(#[from] XdpError),
    #[error("consumer groups: {0}")]
    Consumers(#[from] ConsumeError),
    /// Streams (or consumer groups) whose files are damaged: each one's
    /// damage, named. Exit status 3.
    #[error("the spool is damaged; refusing to start:\n{}", .0.join("\n"))]
    Damaged(Vec<String>),
}

impl ServerError {
    /// Damage in the spool (a stream's files or a group's state), as
    /// opposed to a spool that cannot be reached at all.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            ServerError::Damaged(_)
                | ServerError::Spool(SpoolError::Damaged(_) | SpoolError::GroupCorrupt { .. })
                | ServerError::Consumers(ConsumeError::Spool(
                    SpoolError::Damaged(_) | SpoolError::GroupCorrupt { .. }
                ))
        )
    }
}

/// Where a running daemon listens (useful when the config asked for port 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub data: SocketAddr,
    pub quic: SocketAddr,
    pub admin: SocketAddr,
    /// `None` with `grpc.enabled = false`.
    pub grpc: Option<SocketAddr>,
}

/// A daemon that accepts data: where it listens, and what a reload
/// (SIGHUP) changes while it runs.
#[derive(Clone)]
pub struct Running {
    pub bound: Bound,
    /// Whom it admits; a reload replaces its principals.
    pub gate: Arc<Gate>,
    /// Its consumer groups and forwards; a reload changes their settings.
    pub consumers: Arc<Consumers>,
    pub forwarders: Arc<crate::forward::Forwarders>,
}

/// Runs `sluiced` until `stop` resolves, then drains: no new data is taken,
/// the batches in flight are made durable and acked, every session is
/// closed with "shutting down" (producers reconnect to the next daemon), and
/// the spool's writers finish. `ready` is told the bound addresses (and
/// the gate) once every listener is bound and the spool recovered: the
/// daemon accepts data.
pub async fn run(
    config: Config,
    settings: Settings,
    stop: impl Future<Output = ()>,
    ready: impl FnOnce(Running),
) -> Result<(), ServerError> {
    let Settings {
        authenticator,
        loopback_only,
        spool: spool_config,
        consumers: consumers_config,
        scrub,
        credit,
        xdp: xdp_setup,
        admin: admin_limits,
        admin_tls,
        recv_buffer: wanted,
        forwards,
    } = settings;
    let gate = Arc::new(Gate::new(authenticator, loopback_only));
    let spool = Arc::new(Spool::open(&config.spool.dir, spool_config)?);
    let identity = identity::load_or_create(&identity::IdentitySource {
        cert: &config.quic.cert,
        key: &config.quic.key,
        dir: &config.spool.dir,
        listen: config.quic.listen,
    })
    .map_err(|e| configured_identity(e, &config))?;
    // The CA of client certificates, read again by the QUIC plane: one
    // that cannot be read is the configuration's fault (exit status 2).
    if !config.quic.client_ca.as_os_str().is_empty() {
        sluice_transport::quic::tls::load_certs(&config.quic.client_ca).map_err(|e| {
            ConfigError::Invalid {
                key: "quic.client_ca",
                reason: e.to_string(),
            }
        })?;
    }
    // The admin port's HTTPS reuses the QUIC identity unless it has its
    // own (checked with the configuration).
    let admin_tls = match admin_tls {
        AdminTls::Off => None,
        AdminTls::Own(config) => Some(config),
        AdminTls::QuicIdentity => Some(
            identity::https_config(identity.chain.clone(), identity.key.clone_key()).map_err(
                |e| ConfigError::Invalid {
                    key: "admin.tls",
                    reason: format!(
                        "the QUIC certificate {} cannot serve HTTPS: {e}",
                        identity.cert_path.display()
                    ),
                },
            )?,
        ),
    };
    if admin_tls.is_some() {
        info!(
            admin = %config.admin.listen,
            cert = %if config.admin.tls_cert.as_os_str().is_empty() {
                identity.cert_path.display()
            } else {
                config.admin.tls_cert.display()
            },
            "the admin endpoint serves HTTPS (admin.tls)"
        );
    }
    // The gRPC plane's TLS is the QUIC plane's identity (grpc.tls).
    let grpc_tls = if config.grpc.enabled && config.grpc.tls {
        Some(
            identity::grpc_tls_config(identity.chain.clone(), identity.key.clone_key()).map_err(
                |e| ConfigError::Invalid {
                    key: "grpc.tls",
                    reason: format!(
                        "the QUIC certificate {} cannot serve gRPC over TLS: {e}",
                        identity.cert_path.display()
                    ),
                },
            )?,
        )
    } else {
        None
    };
    if config.grpc.enabled && !config.grpc.tls && !config.grpc.listen.ip().is_loopback() {
        warn!(grpc = %config.grpc.listen, "the gRPC plane listens beyond loopback without TLS (grpc.tls = false): tokens and messages travel in clear");
    }
    open_streams(&spool, &config.streams.names)?;
    let consumers = Consumers::new(spool.clone(), consumers_config);
    consumers.start().await?;
    // Forwards are members of configured groups: after the groups start.
    // Who waits for JetStream (ack = "replicated"): the forwards confirm,
    // the ingest planes wait.
    let confirmations = Arc::new(crate::forward::Confirmations::new(&forwards));
    let forwarders = Arc::new(crate::forward::Forwarders::start(
        forwards,
        consumers.clone(),
        confirmations.clone(),
    ));
    let scrub_stop = Arc::new(AtomicBool::new(false));
    crate::spool::scrub::start(Arc::downgrade(&spool), scrub, scrub_stop.clone());
    let socket = udp::bind(
        config.data.listen,
        &SocketOptions {
            recv_buffer: (wanted > 0).then_some(wanted),
            send_buffer: None,
            // A smaller buffer loses bursts, not data (producers resend):
            // warn and run rather than refuse to start.
            allow_smaller_buffers: true,
        },
    )?;
    let (got, _) = udp::buffer_sizes(&socket).map_err(ServerError::Admin)?;
    // Linux reports twice what it grants (its bookkeeping); about half of
    // the rest holds payload.
    let window = config.data.window_bytes.bytes();
    if window > got as u64 / 2 {
        warn!(
            window,
            recv_buffer = got,
            "data.window_bytes exceeds what the data socket can buffer: bursts will be dropped and resent; raise data.recv_buffer or lower data.window_bytes"
        );
    }
    if got < wanted {
        warn!(
            asked = wanted,
            got,
            "the kernel capped the data socket's receive buffer (data.recv_buffer): bursts \
             beyond it are dropped and resent; raise it with `sysctl -w net.core.rmem_max={wanted}`"
        );
    }
    let admin_listener = api::bind(config.admin.listen)
        .await
        .map_err(ServerError::Admin)?;
    let data = socket.local_addr().map_err(ServerError::Admin)?;
    let metrics = Arc::new(Metrics::default());
    let ingest = IngestShared::new(
        spool.clone(),
        config.streams.auto_create,
        credit,
        config.data.max_sessions,
        metrics.clone(),
        confirmations,
    );
    let receiver = ReceiverConfig {
        max_datagram: config.data.max_datagram,
        max_sessions_per_source: config.data.max_sessions_per_source,
        ..ReceiverConfig::default()
    };
    // AF_XDP when configured: the program takes the data port's packets off
    // the interface's queues; the socket stays for replies and the rest.
    let xdp = match xdp_setup {
        None => None,
        Some(setup) => match XdpPath::start(&setup, data.port()) {
            Ok(started) => Some(started),
            Err(e) if config.xdp.fallback => {
                warn!(error = %e, "AF_XDP could not start; xdp.fallback: running on the socket path");
                None
            }
            Err(e) => return Err(e.into()),
        },
    };
    let (xdp_path, xdp_rx) = xdp.unzip();
    let udp = UdpIo::new(socket);
    let (server, leases, sealed) = match xdp_rx {
        Some(rx) => serve_data(XdpIo::new(udp, rx), &config, &receiver, &ingest, data),
        None => serve_data(udp, &config, &receiver, &ingest, data),
    };
    let quic = QuicPlane::start(QuicSetup {
        listen: config.quic.listen,
        identity,
        client_ca: (!config.quic.client_ca.as_os_str().is_empty())
            .then(|| config.quic.client_ca.clone()),
        ingest: ingest.clone(),
        gate: gate.clone(),
        receiver,
        leases: leases.clone(),
        data_addr: data,
        lease_ttl: Duration::from_secs(config.data.lease_seconds),
        reset_key: identity::reset_key(&config.spool.dir)?,
        recv_buffer: wanted,
        consumers: consumers.clone(),
        max_connections: config.quic.max_connections,
        max_connections_per_principal: config.quic.max_connections_per_principal,
    })
    .map_err(ServerError::Quic)?;
    let publisher = crate::publish::Publisher::new(ingest.clone(), &credit);
    let grpc = if config.grpc.enabled {
        Some(
            GrpcPlane::start(GrpcSetup {
                listen: config.grpc.listen,
                tls: grpc_tls,
                gate: gate.clone(),
                publisher: publisher.clone(),
                spool: spool.clone(),
                consumers: consumers.clone(),
                max_connections: config.grpc.max_connections,
                max_streams_per_connection: config.grpc.max_streams_per_connection,
                max_streams_per_principal: config.grpc.max_streams_per_principal,
                keepalive: config.grpc.keepalive.get(),
                max_request_bytes: config.grpc.max_request_bytes.bytes() as usize,
                message_timeout: config.grpc.message_timeout.get(),
            })
            .await
            .map_err(|source| ServerError::Grpc {
                addr: config.grpc.listen,
                source,
            })?,
        )
    } else {
        None
    };
    let bound = Bound {
        data,
        quic: quic.local_addr,
        admin: admin_listener.local_addr().map_err(ServerError::Admin)?,
        grpc: grpc.as_ref().map(|g| g.local_addr),
    };
    let http = Arc::new(Http::new(admin_limits));
    // Each subsystem says what it exports; /metrics shows them in this
    // order.
    let mut registry = Registry::default();
    registry.register(metrics);
    registry.register(server.stats());
    registry.register(spool.clone());
    registry.register(Arc::new(SecurityMetrics {
        gate: gate.clone(),
        quic: quic.stats(),
        leases,
        sealed,
    }));
    registry.register(http.clone());
    if let Some(g) = &grpc {
        registry.register(g.stats());
        registry.register(g.budget());
    }
    registry.register(consumers.clone());
    registry.register(forwarders.stats());
    if let Some(x) = &xdp_path {
        registry.register(x.stats());
    }
    registry.register(Arc::new(crate::metrics::process::ProcessMetrics));
    let state = Arc::new(AdminState {
        metrics: registry,
        spool: spool.clone(),
        stopping: AtomicBool::new(false),
        gate: gate.clone(),
        consumers: consumers.clone(),
        http: http.clone(),
        // One publisher for HTTP and gRPC: one bound on what publish
        // requests in flight hold.
        publisher,
        sessions: ingest.views(),
    });
    // Served within the admin limits (connections, timeouts, pages).
    let admin = api::serve::serve(
        admin_listener,
        api::router(state.clone()),
        http,
        admin_tls.map(tokio_rustls::TlsAcceptor::from),
    );
    info!(
        data = %bound.data,
        quic = %bound.quic,
        admin = %bound.admin,
        grpc = ?bound.grpc,
        spool = %config.spool.dir.display(),
        fsync = %config.spool.fsync,
        "sluiced ready"
    );
    ready(Running {
        bound,
        gate: gate.clone(),
        consumers: consumers.clone(),
        forwarders: forwarders.clone(),
    });

    stop.await;
    let started = Instant::now();
    info!("stopping: no new data; finishing the batches in flight");
    state.stopping.store(true, Ordering::Relaxed);
    server.pause();
    quic.pause();
    if let Some(g) = &grpc {
        g.pause().await;
    }
    let deadline = started + DRAIN_TIMEOUT;
    while ingest.in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let left = ingest.in_flight();
    if left > 0 {
        warn!(
            batches = left,
            "gave up waiting for batches in flight after {DRAIN_TIMEOUT:?}; they are not acked"
        );
    }
    server
        .shutdown(CloseCode::ShuttingDown, "sluiced is stopping")
        .await;
    quic.shutdown().await;
    // Its StreamingPull members leave their groups before the groups stop.
    if let Some(g) = grpc {
        g.shutdown().await;
    }
    // Forwards leave their groups before the groups stop.
    forwarders.shutdown().await;
    // Group journals are written out before the spool stops.
    consumers.shutdown().await;
    drop(consumers);
    // Detaches the program: nothing of sluice stays on the interface.
    drop(xdp_path);
    drop(ingest);
    admin.shutdown().await;
    scrub_stop.store(true, Ordering::Relaxed);
    let spool_done = tokio::task::spawn_blocking(move || spool.shutdown());
    let remaining = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
    match tokio::time::timeout(remaining, spool_done).await {
        Ok(_) => info!(took = ?started.elapsed(), "stopped cleanly"),
        Err(_) => warn!("gave up waiting for the spool's writers"),
    }
    Ok(())
}

/// A configured certificate (`quic.cert`, `quic.key`) that cannot be read
/// is a configuration error (exit status 2: restarting does not help); the
/// self-signed one's trouble is the spool folder's (exit status 1).
fn configured_identity(e: IdentityError, config: &Config) -> ServerError {
    match e {
        IdentityError::Tls(tls) if !config.quic.cert.as_os_str().is_empty() => {
            ConfigError::Invalid {
                key: "quic.cert",
                reason: format!(
                    "{tls} (leave quic.cert and quic.key empty for a self-signed certificate made in {})",
                    config.spool.dir.join("tls").display()
                ),
            }
            .into()
        }
        e => e.into(),
    }
}

/// Opens (recovering) every stream on disk and the configured ones, so
/// that damage is found at start, not by the first producer: every damaged
/// stream is named, then the start is refused.
fn open_streams(spool: &Spool, configured: &[String]) -> Result<(), ServerError> {
    let mut names = spool.stream_names();
    names.extend(configured.iter().cloned());
    names.sort();
    names.dedup();
    let mut damaged = Vec::new();
    for name in names {
        match spool.stream(&name) {
            Ok(_) => {}
            Err(e @ SpoolError::Damaged(_)) => damaged.push(e.to_string()),
            Err(e) => return Err(e.into()),
        }
    }
    if damaged.is_empty() {
        Ok(())
    } else {
        Err(ServerError::Damaged(damaged))
    }
}

/// Serves the raw-UDP data path over `io`: sealed under leases of the QUIC
/// plane, unless the listener is explicitly insecure.
fn serve_data<I: PacketIo>(
    io: I,
    config: &Config,
    receiver: &ReceiverConfig,
    ingest: &Arc<IngestShared>,
    data: SocketAddr,
) -> (ServeHandle, Option<Leases>, Option<Arc<SealedStats>>) {
    if config.data.insecure_lan {
        warn!(data = %data, "data.insecure_lan: raw UDP is accepted from anyone, unauthenticated and unencrypted; anyone who can reach the port can write into any stream");
        let server = serve::serve(io, receiver.clone(), Ingest::new(ingest.clone()));
        return (server, None, None);
    }
    let receiver = ReceiverConfig {
        max_datagram: receiver.max_datagram - sluice_transport::seal::OVERHEAD,
        ..receiver.clone()
    };
    let leases = Leases::default();
    let io = SealedIo::new(io, leases.clone());
    let sealed = io.stats();
    let server = serve::serve(io, receiver, Ingest::new(ingest.clone()));
    (server, Some(leases), Some(sealed))
}
