//! `sluiced` as a library: everything between a validated [`Config`] and a
//! clean stop. The binary parses arguments and sets up logging; tests and
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

use crate::admin::{self, AdminState};
use crate::config::{Config, ConfigError};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::spool::{Spool, SpoolError};

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
}

/// Where a running daemon listens (useful when the config asked for port 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub data: SocketAddr,
    pub admin: SocketAddr,
}

/// Runs `sluiced` until `stop` resolves, then drains: no new data is taken,
/// the batches in flight are made durable and acked, every session is
/// closed with "shutting down" (producers reconnect to the next daemon), and
/// the spool's writers finish. `ready` is told the bound addresses once the
/// daemon accepts data.
pub async fn run(
    config: Config,
    stop: impl Future<Output = ()>,
    ready: impl FnOnce(Bound),
) -> Result<(), ServerError> {
    let spool = Arc::new(Spool::open(&config.spool.dir, config.spool_config()?)?);
    for name in &config.streams.names {
        spool.stream(name)?;
    }
    let wanted = config.data.recv_buffer;
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
    if got < wanted {
        warn!(
            asked = wanted,
            got,
            "the kernel capped the data socket's receive buffer (data.recv_buffer): bursts \
             beyond it are dropped and resent; raise it with `sysctl -w net.core.rmem_max={wanted}`"
        );
    }
    let admin_listener = admin::bind(config.admin.listen)
        .await
        .map_err(ServerError::Admin)?;
    let bound = Bound {
        data: socket.local_addr().map_err(ServerError::Admin)?,
        admin: admin_listener.local_addr().map_err(ServerError::Admin)?,
    };
    let metrics = Arc::new(Metrics::default());
    let ingest = Ingest::new(
        spool.clone(),
        config.streams.auto_create,
        config.credit_policy(),
        config.data.max_sessions,
        metrics.clone(),
    );
    let in_flight = ingest.in_flight();
    let receiver = ReceiverConfig {
        max_datagram: config.data.max_datagram,
        ..ReceiverConfig::default()
    };
    let server = serve::serve(UdpIo::new(socket), receiver, ingest);
    let state = Arc::new(AdminState {
        metrics,
        socket: server.stats(),
        spool: spool.clone(),
        stopping: AtomicBool::new(false),
    });
    let app = admin::router(state.clone());
    let admin_task = tokio::spawn(async move {
        if let Err(e) = axum::serve(admin_listener, app).await {
            warn!(error = %e, "admin endpoint stopped");
        }
    });
    info!(
        data = %bound.data,
        admin = %bound.admin,
        spool = %config.spool.dir.display(),
        fsync = %config.spool.fsync,
        "sluiced ready"
    );
    ready(bound);

    stop.await;
    let started = Instant::now();
    info!("stopping: no new data; finishing the batches in flight");
    state.stopping.store(true, Ordering::Relaxed);
    server.pause();
    let deadline = started + DRAIN_TIMEOUT;
    while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let left = in_flight.load(Ordering::Relaxed);
    if left > 0 {
        warn!(
            batches = left,
            "gave up waiting for batches in flight after {DRAIN_TIMEOUT:?}; they are not acked"
        );
    }
    server
        .shutdown(CloseCode::ShuttingDown, "sluiced is stopping")
        .await;
    admin_task.abort();
    let spool_done = tokio::task::spawn_blocking(move || spool.shutdown());
    let remaining = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
    match tokio::time::timeout(remaining, spool_done).await {
        Ok(_) => info!(took = ?started.elapsed(), "stopped cleanly"),
        Err(_) => warn!("gave up waiting for the spool's writers"),
    }
    Ok(())
}
